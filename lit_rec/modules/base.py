"""RecModule: the evaluation, logging and step-counting shared by every lit_rec method."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from lit_rec.evaluation import FullRankingMetrics, OnePlusKMetrics
from lit_rec.functional.next_item import Columns, greedy_hits, random_rivals
from lit_rec.popularity import PopularityScorer
from lit_rec.recommend import recommend_top_k
from lit_rec.sampling import load_rng_state, save_rng_state
from lit_rec.wandb_utils import CHECKPOINT_KEY as WANDB_CHECKPOINT_KEY, run_reference

DEFAULT_KS = (1, 10, 20, 50, 100)


class RecModule(L.LightningModule):
    """Base LightningModule: One-Plus-K validation/test, the popularity reference, `train/episodes`.

    Subclasses implement `score_candidates(batch, candidates) -> (B, C)` and their own
    `training_step`. Scores of every item (`score_all_items`) default to scoring the whole
    catalogue as candidates, in chunks. Full-ranking evaluation asks for both at once through
    `score_candidates_and_all`, which a method that encodes the state first overrides to encode
    it once.
    """

    last_metrics: dict[str, float]
    """The latest epoch's `val/*` and `test/*` values (global across ranks), kept for callers after `fit` or `test`."""
    trained_steps: int | None
    """The training step of the checkpoint the weights came from (None: not loaded from one), for reports of a `test`."""

    def __init__(
        self,
        num_items: int,
        num_users: int,
        eval_ks: list[int] | None = None,
        full_ranking: bool = True,
        eval_chunk_size: int = 256,
        history_len: int = 10,
        train_negatives: int = 10,
        predict_top_k: int = 10,
    ) -> None:
        """Settings (each a config key).

        Args:
            num_items: catalogue size (items are 1..num_items, 0 is PAD); linked from the data.
            num_users: number of users; linked from the data.
            history_len: items in a state and in a training window; linked from the data's `history_len`.
            train_negatives: random items beside the logged one in a training candidate set (`train/ctr`,
                LinUCB's decisions, DRL-Rec's lessons); linked from the data's `train_negatives`.
            eval_ks: numbers of random negatives per positive for CTR@k.
            full_ranking: also compute hr@10_full / ndcg@10_full against every item.
            eval_chunk_size: rows scored at once against the full catalogue.
            predict_top_k: recommendations per user that `predict_step` returns (what `callbacks.PredictionWriter` writes).
        """
        super().__init__()
        if num_items < 2:
            raise ValueError(f"num_items must be >= 2, got {num_items}")
        self.num_items = num_items
        self.num_users = num_users
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len}")
        self.history_len = history_len
        if train_negatives < 0:
            raise ValueError(f"train_negatives must be >= 0, got {train_negatives}")
        self.train_negatives = train_negatives
        if predict_top_k < 1:
            raise ValueError(f"predict_top_k must be >= 1, got {predict_top_k}")
        self.predict_top_k = predict_top_k
        self.eval_ks = list(eval_ks or DEFAULT_KS)
        self.full_ranking = full_ranking
        self.eval_chunk_size = eval_chunk_size
        self.metrics = torch.nn.ModuleDict(
            {
                stage: OnePlusKMetrics(ks=self.eval_ks)
                for stage in ("val", "test", "val_pop", "test_pop")
            }
        )
        self.full_metrics = torch.nn.ModuleDict({s: FullRankingMetrics() for s in ("val", "test")})
        self.popularity: PopularityScorer | None = None
        self.last_metrics: dict[str, float] = {}
        self.trained_steps: int | None = None
        # events processed by this process; converted to episodes with the data's mean episode length
        self.register_buffer("events_seen", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ data hooks
    @property
    def tensors(self) -> Any:
        """The datamodule's `RecTensors` (see docs/ARCHITECTURE.md)."""
        return self.trainer.datamodule.tensors

    def setup(self, stage: str) -> None:
        """Builds the popularity reference from the train split."""
        if self.trainer.world_size > 1 and self.device.type == "cpu":
            torch.set_num_threads(1)  # two ranks on two cores: more threads oversubscribe (PITFALLS.md)
        tensors = self.tensors
        self.popularity = PopularityScorer(tensors.item_popularity).to(self.device)
        self._seen_offsets = tensors.seen_offsets
        self._seen_items = tensors.seen_items
        self._episode_len = max(1.0, float(tensors.train.item.numel()) / max(1, tensors.num_users))

    # ------------------------------------------------------------------ scoring API
    def score_candidates(self, batch: dict[str, Tensor], candidates: Tensor) -> Tensor:
        """Scores `(B, C)` candidate items for the states in `batch`; higher is better."""
        raise NotImplementedError

    def score_all_items(self, batch: dict[str, Tensor]) -> Tensor:
        """Scores `(B, num_items + 1)` for every item id (column 0, PAD, is ignored by callers)."""
        b = batch["history"].shape[0]
        all_items = torch.arange(self.num_items + 1, device=self.device).expand(b, -1)
        return self.score_candidates(batch, all_items)

    def score_candidates_and_all(self, batch: dict[str, Tensor], candidates: Tensor) -> tuple[Tensor, Tensor]:
        """Scores `(B, C)` of the candidates and `(B, num_items + 1)` of every item for the same states.

        Full-ranking evaluation calls this once per chunk of `eval_chunk_size` events. The default
        calls `score_candidates` and `score_all_items`; methods whose two scorings share work (the
        sequence encoder's pass over the histories) override it to do that work once.
        """
        return self.score_candidates(batch, candidates), self.score_all_items(batch)

    def scores_from_all_items(self, batch: dict[str, Tensor], candidates: Tensor) -> tuple[Tensor, Tensor]:
        """`score_candidates_and_all` for a method whose catalogue scoring encodes each state once.

        The candidates' scores `(B, C)` are read from every item's `(B, num_items + 1)` (the same
        bilinear form): one product with the catalogue is cheaper than gathering `(B, C, H)` item
        vectors once B x C exceeds the catalogue several times (full ranking: C = 1 + K_max).
        """
        scores_all = self.score_all_items(batch)
        return scores_all.gather(1, candidates.long()), scores_all

    def item_vectors_of(self, encoder: torch.nn.Module) -> Tensor:
        """Every item's vector `(num_items + 1, H)` of a `SeqEncoder`, computed once while its weights are unchanged."""
        return self.cached_while_unchanged(f"all_item_vectors/{id(encoder)}", encoder.all_item_vectors, encoder.item_embedding.weight)

    def cached_while_unchanged(self, key: str, compute: Any, *tensors: Tensor) -> Any:
        """`compute()`, reused outside autograd until one of `tensors` changes in place.

        For values derived from the weights alone (e.g. every item's vector), computed once per chunk
        of an evaluation otherwise. The key holds each tensor's identity and version counter, which
        every in-place update (optimizer steps, target copies, `load_state_dict`) advances; with
        gradients enabled nothing is cached.
        """
        if torch.is_grad_enabled():
            return compute()
        stamp = tuple((id(t), t._version) for t in tensors)
        cache: dict[str, tuple[tuple[tuple[int, int], ...], Any]] = self.__dict__.setdefault("_weights_cache", {})
        hit = cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = compute()
        cache[key] = (stamp, value)
        return value

    def __getstate__(self) -> dict[str, Any]:
        """Pickles (`ddp_spawn`, `deepcopy`) without the transient caches of `cached_while_unchanged` and `log_step`."""
        state = super().__getstate__()
        state.pop("_weights_cache", None)
        state.pop("_log_window", None)
        return state

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        candidates = batch["candidates"]
        if self.full_ranking:
            # one scoring per chunk gives both the candidates' and the catalogue's scores
            chunks = []
            for start in range(0, candidates.shape[0], self.eval_chunk_size):
                part = {k: v[start : start + self.eval_chunk_size] for k, v in batch.items()}
                part_scores, full = self.score_candidates_and_all(part, part["candidates"])
                chunks.append(part_scores)
                self._update_full_ranking(stage, full, part)
            scores = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        else:
            scores = self.score_candidates(batch, candidates)
        assert scores.shape == candidates.shape, f"scores {tuple(scores.shape)} != candidates {tuple(candidates.shape)}"
        self.metrics[stage].update(scores.float())
        assert self.popularity is not None
        self.metrics[f"{stage}_pop"].update(self.popularity(candidates))

    def _update_full_ranking(self, stage: str, full: Tensor, part: dict[str, Tensor]) -> None:
        """Full-ranking metrics of a chunk: `full` `(B, num_items + 1)` scores, `part` its batch rows."""
        self.full_metrics[stage].update_from_candidates(full, part["candidates"], part["user"], self._seen_offsets, self._seen_items)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accumulates One-Plus-K metrics of the model and of the popularity reference."""
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accumulates One-Plus-K metrics on the test split."""
        self._evaluate(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> dict[str, float]:
        # torchmetrics sums the states across ranks in compute(): values are already global
        values = {f"{stage}/{k}": v for k, v in self.metrics[stage].compute().items()}
        values.update({f"{stage}/pop_{k}": v for k, v in self.metrics[f"{stage}_pop"].compute().items() if k.startswith("ctr@")})
        if self.full_ranking:
            values.update({f"{stage}/{k}": v for k, v in self.full_metrics[stage].compute().items()})
            self.full_metrics[stage].reset()
        self.metrics[stage].reset()
        self.metrics[f"{stage}_pop"].reset()
        values.update(self.epoch_metrics(stage))
        self.log_dict(values, sync_dist=False)
        result = {k: float(v) for k, v in values.items()}
        self.last_metrics = {**self.last_metrics, **result}
        return result

    def epoch_metrics(self, stage: str) -> dict[str, float]:
        """A method's own values logged with a validation's or test's metrics (none here)."""
        return {}

    def on_validation_epoch_end(self) -> None:
        """Logs `val/ctr@k`, `val/pop_ctr@k`, `val/auc`, ... once per validation."""
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        """Logs `test/ctr@k`, `test/auc`, `test/ndcg@10`, `test/mrr`, ..."""
        self._log_epoch_metrics("test")

    # ------------------------------------------------------------------ predict
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Each user's top `predict_top_k` unseen items: `{"user", "items" (B, k), "scores" (B, k)}`."""
        items, scores = recommend_top_k(self, batch, self.predict_top_k, self.tensors)
        return {"user": batch["user"], "items": items, "scores": scores}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Saves random-number state so a resumed fit draws what the uninterrupted one would, and the reference
        of the W&B run that trained it (a later `test`/`predict` from the checkpoint links to it)."""
        save_rng_state(self, checkpoint)
        reference = run_reference(self.trainer) if self._trainer is not None else None
        if reference:
            checkpoint[WANDB_CHECKPOINT_KEY] = reference

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores random-number state and notes the checkpoint's training step (`trained_steps`)."""
        load_rng_state(self, checkpoint)
        self.trained_steps = checkpoint.get("global_step")

    # ------------------------------------------------------------------ training helpers
    def logs_this_step(self) -> bool:
        """Whether this training step's logs are written: Lightning's own rule (every `log_every_n_steps`
        steps, and when the fit is asked to stop), plus the fit's last step, so that a fit shorter than
        `log_every_n_steps` still leaves its `train/*` values in `trainer.callback_metrics`."""
        trainer = self._trainer
        if trainer is None:
            return True
        connector = getattr(trainer, "_logger_connector", None)
        if connector is None or trainer._active_loop is not trainer.fit_loop or connector.should_update_logs:
            return True
        if trainer.max_steps >= 0 and trainer.global_step + 1 >= trainer.max_steps:
            return True  # the last step (or, with manual optimisation, the one before it)
        max_epochs = trainer.max_epochs
        return (
            max_epochs is not None
            and max_epochs >= 0
            and trainer.current_epoch + 1 >= max_epochs
            and bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        )

    def log_step(self, name: str, value: Tensor | float, mean: bool = True, prog_bar: bool = False) -> None:
        """Logs a per-step training scalar at no per-step cost (no `self.log`, no device sync).

        `self.log` costs about 2 ms a call, so the value is kept and handed to it only on steps whose
        logs are written (`logs_this_step`): with `mean` the mean over the steps since the last written
        one (summed on the value's device), else the value itself.
        """
        window: dict[str, tuple[Tensor | float, int]] = self.__dict__.setdefault("_log_window", {})
        if mean:
            value = value.detach() if isinstance(value, Tensor) else torch.tensor(float(value))
            total, count = window.get(name, (0.0, 0))
            total, count = value.float() + total, count + 1
        else:
            total, count = value, 1
        if not self.logs_this_step():
            window[name] = (total, count)
            return
        window.pop(name, None)
        self.log(name, total / count if mean else total, on_step=True, on_epoch=False, prog_bar=prog_bar)

    def window_events(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """`(history (E, L), item (E,))` of every train event a batch of windows predicts, each with its full history."""
        train, offsets = self.tensors.train, self.tensors.train_offsets
        index = batch["index"].cpu()
        events = index.unsqueeze(1) - self.history_len + 1 + torch.arange(self.history_len)
        events = events[events >= offsets[batch["user"].cpu()].unsqueeze(1)]
        return train.history[events].to(self.device), train.item[events].to(self.device)

    def log_window_ctr(self, columns: Columns, generator: torch.Generator) -> None:
        """Logs `train/ctr` of the trained states `(P,)`: how often the greedy policy ranks each state's logged item
        first among it and `train_negatives` random items (the rate Figure 2 plots)."""
        rivals = random_rivals(columns, max(1, self.train_negatives), generator)
        hits = greedy_hits(columns.masked_scores().detach(), columns.target, rivals)
        self.log_train_ctr(hits.float(), hits.numel())

    def log_train_ctr(self, reward: Tensor, events: int) -> None:
        """Logs `train/ctr` (mean reward of the policy's own choices) against `train/episodes`.

        Written every `log_every_n_steps` steps (`log_step`): `train/ctr` is the mean of the per-step
        CTRs since the last written step, `train/episodes` the count at the written step.
        """
        self.events_seen.add_(events * self.trainer.world_size)  # in place: no sync
        self.log_step("train/ctr", reward.float().mean(), prog_bar=True)
        if self.logs_this_step():
            self.log("train/episodes", float(self.events_seen) / self._episode_len, on_step=True, on_epoch=False)

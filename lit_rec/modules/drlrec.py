"""DRL-Rec (Xie et al., CIKM 2021): a narrow DDQN student distilled from a wide DDQN teacher.

The teacher is a plain `DQN(double=True)` (configs/drlrec_teacher.yaml), read frozen from its
checkpoint at fit start (and never saved with the student), or co-trained from scratch as in the
official code. The student is the same network, narrower; it is a `DQN` too (same windows, TD and
supervised terms, target network), whose loss adds the distillation terms. One training step on a
batch of windows, top to bottom:

1. the student's own DQN loss (`DQN.q_losses`: every position, the whole catalogue);
2. the teacher's squared TD error delta at every position with a next state gives that state a confidence
   c(delta) (`confidence_formula`: official batch-max, or exp(-delta / sigma^2), sigma^2 a running buffer);
3. exploring/filtering: per state a candidate set of `num_candidates` items (the logged item and
   `train_negatives` random items, then popularity- and uniform-sampled items), scored by both
   networks; the lessons are the teacher's top-k united with the student's top-k, de-duplicated
   (vectorised, no loop per state);
4. `w_rl * RL + w_kl * mean(c * KL) + w_hint * mean(c * hint)`, with per state
   KL = tau^2 KL(softmax(Q_T/tau) || softmax(Q_S/tau)) over the training candidates plus the same
   over the filtered lessons, and hint = the MSE of the vectors whose product is Q: the state
   (the hint layer) and the lessons' item vectors, the student's projected to the teacher's width
   by a learned map when widths differ. Explored items take their state's confidence.

The teacher never receives a gradient from distillation (its outputs are detached), and a frozen
teacher has `requires_grad=False` and stays in eval mode. The math is in `lit_rec.functional.distill`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_rec.functional.distill import batch_max_confidence, exp_confidence, explore_and_filter
from lit_rec.functional.distill import hint_mse, listwise_kl, running_mean_update, weighted_mean
from lit_rec.functional.next_item import Columns, cross_entropy
from lit_rec.functional.td import next_state_values, replay_td_loss
from lit_rec.modules.dqn import DQN
from lit_rec.modules.teacher import fresh_teacher_networks, teacher_networks
from lit_rec.networks import EncoderConfig, QNetwork
from lit_rec.sampling import SeededGenerator

LOGGED_TERMS = {"rl": "train/loss_rl", "teacher_rl": "train/loss_teacher", "kl": "distill/kl", "hint": "distill/hint",
                "filtered_size": "distill/filtered_size"}
FROZEN_TEACHER_KEYS = ("teacher.", "teacher_target.")  # state-dict prefixes of a frozen teacher, never saved with the student


class DRLRecStudent(DQN):
    """DRL-Rec student: a narrow Double DQN trained with confidence-weighted KL and hint distillation from a teacher."""

    def __init__(
        self,
        teacher_ckpt: str | None = None,
        distill: bool = True,
        co_train: bool = False,
        w_rl: float = 0.4,
        w_kl: float = 0.3,
        w_hint: float = 0.3,
        temperature: float = 1.0,
        explore_filter: bool = True,
        confidence: bool = True,
        confidence_formula: Literal["batch_max", "exp"] = "batch_max",
        min_confidence: float = 0.0,
        confidence_momentum: float = 0.99,
        kl: bool = True,
        hint: bool = True,
        distill_states: int | None = None,
        num_candidates: int = 1000,
        top_k: int = 10,
        popularity_fraction: float = 0.5,
        teacher_encoder: EncoderConfig = EncoderConfig(),
        double: bool = True,
        encoder: EncoderConfig = EncoderConfig(dim=32),
        **kwargs: Any,
    ) -> None:
        """Settings (each a config key).

        Args:
            teacher_ckpt: checkpoint of the teacher (a `DQN` run, e.g. configs/drlrec_teacher.yaml): frozen, read at
                fit start, never saved with the student; none: a teacher of shape `teacher_encoder` is co-trained
                from scratch (official code).
            distill: learn from the teacher at all; false gives the student alone (`w_rl` x its own DDQN loss).
            co_train: keep training the loaded teacher on its own DDQN loss alongside the student (it is then
                read at construction and saved in the student's checkpoints).
            w_rl: weight of the student's own DDQN loss.
            w_kl: weight of the list-wise KL loss.
            w_hint: weight of the hint loss.
            temperature: softmax temperature tau of the KL (the loss is multiplied by tau^2).
            explore_filter: distil on each state's filtered lessons (teacher top-k + student top-k of
                `num_candidates` explored items); false distils on the transition's own candidates.
            confidence: weight each state's distillation terms by the teacher's confidence; false: weight 1.
            confidence_formula: `batch_max` (official code: 1 - delta / max delta over the batch) or `exp`
                (exp(-delta / sigma^2), sigma^2 a running mean of delta over the batches of every rank).
            min_confidence: lower clamp of every confidence (1 is the upper clamp).
            confidence_momentum: weight of the past in the running sigma^2 of `exp`.
            kl: include the KL term.
            hint: include the hint term.
            distill_states: distil at this many of a batch's states, drawn at random each step (the student's own
                loss still covers every position); none: at every state with a next state.
            num_candidates: explored candidates per state (the transition's candidates first, then samples).
            top_k: lessons taken from the teacher's ranking and, separately, from the student's.
            popularity_fraction: share of the sampled candidates drawn by popularity (the rest uniformly).
            teacher_encoder: the teacher's encoder: its width is the hint's (sizes the hint projection; a loaded
                teacher must match it); its whole shape builds a teacher co-trained from scratch.
            double: Double-DQN target for the student (the official "DDQN").
            encoder: the student's encoder: the teacher's shape, narrower (its width is that of the hint and item vectors).
        """
        encoder, teacher_encoder = EncoderConfig.of(encoder), EncoderConfig.of(teacher_encoder)
        super().__init__(double=double, encoder=encoder, **kwargs)
        if w_rl < 0 or w_kl < 0 or w_hint < 0 or temperature <= 0:
            raise ValueError(f"DRLRecStudent needs weights >= 0 and temperature > 0, got {w_rl}, {w_kl}, {w_hint}, {temperature}")
        self.distill = distill
        self.co_train = distill and (co_train or teacher_ckpt is None)
        self.w_rl, self.w_kl, self.w_hint, self.temperature = w_rl, w_kl, w_hint, temperature
        self.explore_filter, self.use_confidence, self.use_kl, self.use_hint = explore_filter, confidence, kl, hint
        if distill_states is not None and distill_states < 1:
            raise ValueError(f"distill_states must be >= 1 or null (every state), got {distill_states}")
        self.distill_states = distill_states
        self.num_candidates, self.top_k, self.popularity_fraction = num_candidates, top_k, popularity_fraction
        if confidence_formula not in ("batch_max", "exp") or not 0 <= min_confidence <= 1 or not 0 <= confidence_momentum < 1:
            raise ValueError(f"DRLRecStudent needs confidence_formula 'batch_max' or 'exp', 0 <= min_confidence <= 1 and 0 <= confidence_momentum "
                             f"< 1, got {confidence_formula!r}, {min_confidence}, {confidence_momentum}")
        self.confidence_formula, self.min_confidence, self.confidence_momentum = confidence_formula, min_confidence, confidence_momentum
        if confidence_formula == "exp":  # its running mean of delta and the batches behind it, checkpointed (batch_max has no state)
            self.register_buffer("confidence_sigma2", torch.zeros(()))
            self.register_buffer("confidence_batches", torch.zeros((), dtype=torch.long))
        self.last_confidence: Tensor | None = None  # the last training step's confidences `(S,)`, for callbacks.ConfidenceLogger
        self.explore_rng = SeededGenerator(self.seed + 3)
        self.teacher_ckpt, self.teacher_dim = teacher_ckpt, teacher_encoder.dim
        self.teacher: QNetwork | None = None
        self.teacher_target: QNetwork | None = None
        if self.co_train:  # a trained teacher is part of the module and of its checkpoints
            if teacher_ckpt is not None:
                online, target = teacher_networks(teacher_ckpt, self)
            else:
                online, target = fresh_teacher_networks(self, teacher_encoder)
            self.teacher, self.teacher_target = online, target.requires_grad_(False).eval()
            self.teacher_dim = online.encoder.dim
        # a frozen teacher is read from teacher_ckpt in setup("fit") and never saved with the student
        with torch.random.fork_rng(devices=[]):  # initialised from `seed` only, like the networks
            torch.manual_seed(self.seed + 4)
            # FitNets regressor: the student's hint space mapped onto the teacher's when the widths differ
            project = distill and hint and self.teacher_dim != encoder.dim  # no unused parameters (DDP)
            self.hint_projection: nn.Module = nn.Linear(encoder.dim, self.teacher_dim, bias=False) if project else nn.Identity()
        self._item_popularity: Tensor | None = None

    def load_frozen_teacher(self, device: torch.device | str = "cpu") -> None:
        """Reads the frozen teacher from `teacher_ckpt` (no gradient, eval mode) unless it is already there."""
        if not self.distill or self.teacher is not None or self.teacher_ckpt is None:
            return
        online, target = teacher_networks(self.teacher_ckpt, self, self.teacher_dim)
        self.teacher, self.teacher_target = (net.requires_grad_(False).eval().to(device) for net in (online, target))

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Reads a frozen teacher and keeps the train popularity for exploring."""
        super().setup(stage)
        if stage == "fit":
            self.load_frozen_teacher(self.trainer.strategy.root_device)
            self._item_popularity = self.tensors.item_popularity.to(self.trainer.strategy.root_device)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One Adam over the student, its hint projection and, when co-trained, the teacher (disjoint losses)."""
        params = [*self.online.parameters(), *self.hint_projection.parameters()]
        if self.co_train and self.teacher is not None:
            params += list(self.teacher.parameters())
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    def train(self, mode: bool = True) -> "DRLRecStudent":
        """Target networks and a frozen teacher always run in eval mode (no dropout)."""
        super().train(mode)
        if self.teacher_target is not None:
            self.teacher_target.eval()
        if self.teacher is not None and not self.co_train:
            self.teacher.eval()
        return self

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """The student's `(online, target)`, and the teacher's when it is co-trained."""
        co_trained = self.co_train and self.teacher is not None and self.teacher_target is not None
        return super().target_pairs() + ([(self.teacher, self.teacher_target)] if co_trained else [])

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """DQN's state (generators) without a frozen teacher's weights (they stay in teacher_ckpt)."""
        super().on_save_checkpoint(checkpoint)
        if not self.co_train and self.teacher is not None:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(FROZEN_TEACHER_KEYS)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """DQN's restore; a frozen teacher read from teacher_ckpt keeps its weights (strict loading sees them)."""
        super().on_load_checkpoint(checkpoint)
        if not self.co_train and self.teacher is not None:
            own = {k: v for k, v in self.state_dict().items() if k.startswith(FROZEN_TEACHER_KEYS)}
            checkpoint["state_dict"] = {**checkpoint["state_dict"], **own}

    # ------------------------------------------------------------------ learning
    def confidence_weights(self, td_error: Tensor) -> Tensor:
        """Per-state confidence `(S,)` in `[min_confidence, 1]` of the teacher's squared TD errors `(S,)`; 1 when disabled."""
        if not self.use_confidence:
            return torch.ones_like(td_error)
        delta = td_error.detach()
        if self.confidence_formula == "batch_max":
            return batch_max_confidence(delta, self.min_confidence)
        batch_mean = delta.mean()
        if self._trainer is not None and self.trainer.world_size > 1:  # every rank weights alike
            batch_mean = self.trainer.strategy.reduce(batch_mean, reduce_op="mean")
        sigma2 = running_mean_update(self.confidence_sigma2, batch_mean, self.confidence_momentum, int(self.confidence_batches))
        self.confidence_sigma2.copy_(sigma2)
        self.confidence_batches.add_(1)
        return exp_confidence(delta, self.confidence_sigma2, self.min_confidence)

    def distillation_terms(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """The unweighted terms of one batch of windows.

        `rl`: the student's own DQN loss (`ce_weight * CE + td_weight * TD`) and `columns` for
        `train/ctr`. With a teacher also `confidence (S,)` (one per trained state with a next state),
        `filtered_size` (mean lessons per state), `kl` and `hint` when enabled (confidence-weighted
        means over those states), and `teacher_rl` when the teacher is co-trained.
        """
        history = batch["history"]
        own = self.q_losses(history, batch["item"])
        terms: dict[str, Any] = {"rl": self.ce_weight * own.ce + self.td_weight * own.td, "columns": own.columns}
        if self.teacher is None or self.teacher_target is None or not bool(own.has_next.any()):
            return terms

        # distil at the trained states with a next state (its teacher TD error gives the confidence), or a
        # random `distill_states` of them
        keep = own.has_next.nonzero().squeeze(1)
        if self.distill_states is not None and keep.numel() > self.distill_states:
            g = self.explore_rng.generator
            keep = keep[torch.randperm(keep.numel(), generator=g, device=g.device)[: self.distill_states].to(keep.device)]
        with nullcontext() if self.co_train else torch.no_grad():
            states_t = self.teacher.encoder.sequence(history)[own.where]
            item_vectors_t = self.teacher.encoder.all_item_vectors()
            if self.co_train:  # the teacher learns from every position: score them all
                q_t_all = self.teacher.head.score_all(states_t, item_vectors_t)  # (P, num_items + 1)
        if not self.co_train:  # a frozen teacher's own V(s') is the max of its next row: score only the kept states and their next
            with torch.no_grad():
                q_t_now, q_t_next = self.teacher.head.score_all(states_t[torch.cat([keep, keep + 1])], item_vectors_t).chunk(2)
            next_value = next_state_values(q_t_next[:, 1:])
        else:  # the teacher learns: its TD target comes from its target network
            teacher_columns = Columns(q_t_all[:, 1:], own.targets - 1, 0.0, torch.ones((), dtype=torch.bool, device=q_t_all.device))
            next_values = self.next_values(self.teacher_target, history, own.where, own.targets, teacher_columns)
            teacher_td = replay_td_loss(
                teacher_columns.scores[:-1], teacher_columns.target[:-1], teacher_columns.valid, next_values, self.gamma, self.loss_kind, self.td_sample(teacher_columns)
            )
            terms["teacher_rl"] = self.ce_weight * cross_entropy(teacher_columns).mean() + self.td_weight * teacher_td[own.has_next].mean()
            q_t_now, next_value = q_t_all[keep], next_values[keep]

        logged_item = own.targets[keep]
        q_t_all, hint_t = q_t_now.detach(), states_t[keep].detach()  # distillation never reaches the teacher
        td_error = (1.0 + self.gamma * next_value - q_t_all.gather(1, logged_item[:, None]).squeeze(1)).pow(2)
        confidence = self.confidence_weights(td_error)
        terms["confidence"] = confidence.detach()
        hint_s = own.states[keep]
        with torch.no_grad():  # the student's score of every item, for exploring: its own training columns when they are the catalogue
            if own.columns.negatives is None:
                q_s_all = torch.nn.functional.pad(own.columns.scores[keep], (1, 0))  # column 0: PAD
            else:
                q_s_all = self.online.head.score_all(hint_s, self.online.encoder.all_item_vectors())

        # lessons: the logged item with `train_negatives` random items (a training candidate set), plus the explored/filtered items;
        # the student scores only its lessons (the gradient never touches a whole catalogue row)
        g = self.explore_rng.generator
        rivals = torch.randint(1, self.num_items + 1, (logged_item.numel(), max(1, self.train_negatives)), generator=g, device=g.device)
        logged = torch.cat([logged_item[:, None], rivals.to(logged_item.device)], dim=1)
        vectors_t_all = self.teacher.encoder.all_item_vectors().detach()
        everything = torch.ones_like(logged, dtype=torch.bool)
        vectors_s = self.online.encoder.item_vectors(logged)
        lessons = [(self.online.head(hint_s, vectors_s), q_t_all.gather(1, logged), vectors_s, vectors_t_all[logged], everything)]
        if self.explore_filter:
            assert self._item_popularity is not None
            with torch.no_grad():
                items, mask_items = explore_and_filter(logged, q_t_all, q_s_all, self.num_candidates, self._item_popularity,
                                                       self.explore_rng.generator, self.popularity_fraction, self.top_k)
            vectors_s = self.online.encoder.item_vectors(items)
            lessons.append((self.online.head(hint_s, vectors_s), q_t_all.gather(1, items), vectors_s, vectors_t_all[items], mask_items))
            terms["filtered_size"] = mask_items.sum(1).float().mean()

        if self.use_kl:
            kl = sum(listwise_kl(q_t, q_s, self.temperature, lesson_mask) for q_s, q_t, _, _, lesson_mask in lessons)
            terms["kl"] = weighted_mean(kl, confidence)
        if self.use_hint:
            vectors_s, vectors_t, lesson_mask = (torch.cat([lesson[i] for lesson in lessons], dim=1) for i in (2, 3, 4))
            per_state = hint_mse(self.hint_projection(hint_s), hint_t)
            per_item = hint_mse(self.hint_projection(vectors_s), vectors_t, lesson_mask)
            terms["hint"] = weighted_mean(0.5 * (per_state + per_item), confidence)
        return terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """`w_rl * RL + w_kl * KL + w_hint * hint` (+ a co-trained teacher's own loss); logs the terms."""
        terms = self.distillation_terms(batch)
        loss = self.w_rl * terms["rl"]
        loss = loss + self.w_kl * terms.get("kl", 0.0) + self.w_hint * terms.get("hint", 0.0) + terms.get("teacher_rl", 0.0)
        self.last_confidence = terms.get("confidence")
        for key, name in LOGGED_TERMS.items():
            if key in terms:
                self.log_step(name, terms[key].detach())
        self.log_step("train/loss", loss, prog_bar=True)
        self.log_window_ctr(terms["columns"], self.rng.generator)
        return loss

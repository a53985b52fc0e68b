"""RecDataModule: the one LightningDataModule of lit_rec, for every data format."""

from __future__ import annotations

import os
import sys
from typing import Any

import lightning as L

from datamodules.errors import DataArgumentError
from datamodules.loaders import EvalLoader, PredictLoader, ResumableLoader
from datamodules.cache import load_or_prepare
from datamodules.pipeline import SPLIT_NAMES, PipelineConfig, Prepared, format_dropped
from datamodules.readers import FORMATS, Source
from datamodules.synthetic import SyntheticConfig
from datamodules.tensors import RecTensors, build_tensors, window_anchors

SPLITS = ("user", "time")
EVAL_MAX_EVENTS = 100_000  # per split: exact on MovieLens-size logs (<= 56k test events), bounded on large ones


class RecDataModule(L.LightningDataModule):
    """Reads a log (or simulates one), prepares it once (cached) and serves gathered batches.

    Args:
        format: Input format: synthetic | movielens | outbrain | csv | parquet.
        path: File or folder to read (MovieLens: folder with u.data or ratings.dat; Outbrain: folder with
            clicks_train.csv + events.csv, or one pre-joined CSV); unused for synthetic.
        sep: CSV field separator (may be longer than one character).
        user_col: CSV/Parquet column holding the user id.
        item_col: CSV/Parquet column holding the item id.
        time_col: CSV/Parquet column holding the timestamp (integer, float or datetime).
        rating_col: CSV/Parquet rating column; None means every row is a click.
        positive_threshold: A row is a positive (click) when its rating is >= this (Outbrain: clicked = 1).
        split: user (per-user chronological hold-out) or time (one global cut by time).
        test_fraction: Held out for test: a value < 1 is a fraction, a whole number n >= 1 the last n events.
        val_fraction: Held out for validation just before test, same convention (0: no validation events).
        min_user_interactions: k-core: users keep at least this many positives.
        min_item_interactions: k-core: items keep at least this many positives.
        history_len: Items in a state (the user's previous items, left-padded with 0).
        eval_ks: Candidate-set sizes k of CTR@k; max(eval_ks) frozen negatives per held-out event.
        eval_max_events: Val and test each evaluate at most this many events, a seeded uniform sample (with a
            95% interval printed beside CTR@k); a split no larger is evaluated whole, exactly. None: always whole.
        train_negatives: random items beside the logged one in a training candidate set (linked to the model's).
        batch_size: Training windows (runs of up to history_len + 1 consecutive train items) per global batch, split across DDP ranks.
        eval_batch_size: Val/test/predict rows per batch.
        num_workers: Kept for CLI compatibility; batches are in-process tensor gathers (no workers needed).
        cache_dir: Folder of the Parquet cache of prepared frames (None: no cache).
        seed: Seed of the train order and the frozen negatives.
        synthetic_users: Simulated users.
        synthetic_items: Simulated items.
        synthetic_events_per_user: Mean simulated events per user (each gets 0.5x to 1.5x).
        synthetic_taste_dim: Dimension of the simulated tastes and item vectors.
    """

    def __init__(
        self,
        format: str = "synthetic",  # noqa: A002 - the public argument name
        path: str | None = None,
        sep: str = ",",
        user_col: str = "user",
        item_col: str = "item",
        time_col: str = "ts",
        rating_col: str | None = None,
        positive_threshold: float = 4.0,
        split: str = "user",
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        min_user_interactions: int = 5,
        min_item_interactions: int = 1,
        history_len: int = 10,
        eval_ks: list[int] = [1, 10, 20, 50, 100],  # noqa: B006 - copied below; jsonargparse shows it
        eval_max_events: int | None = EVAL_MAX_EVENTS,
        train_negatives: int = 10,
        batch_size: int = 64,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        cache_dir: str | None = ".cache/lit_rec",
        seed: int = 0,
        synthetic_users: int = 500,
        synthetic_items: int = 300,
        synthetic_events_per_user: int = 40,
        synthetic_taste_dim: int = 16,
    ) -> None:
        super().__init__()
        # logger=False: Lightning would refuse to log a module whose argument shares a name but not the value
        # (SeqRec's train_negatives 50 vs 10 here); the CLI logs the whole resolved config (LogConfigCallback)
        self.save_hyperparameters(logger=False)
        if path:  # checkpoints keep these arguments (a test/predict restores them): the path from any folder
            self.hparams["path"] = os.path.abspath(os.path.expanduser(path))
        self.format, self.path, self.split = format, path, split
        self.history_len, self.eval_ks, self.train_negatives = history_len, list(eval_ks), train_negatives
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.cache_dir, self.seed = cache_dir, seed
        synthetic = SyntheticConfig(
            num_users=synthetic_users,
            num_items=synthetic_items,
            events_per_user=synthetic_events_per_user,
            taste_dim=synthetic_taste_dim,
            seed=seed,
        )
        _validate(dict(self.hparams), synthetic)
        self.pipeline_config = PipelineConfig(
            source=Source(format, path, sep, user_col, item_col, time_col, rating_col),
            positive_threshold=float(positive_threshold),  # 4 and 4.0 must key the same cache entry
            split=split,
            test_fraction=float(test_fraction),
            val_fraction=float(val_fraction),
            min_user_interactions=min_user_interactions,
            min_item_interactions=min_item_interactions,
            num_negatives=max(self.eval_ks),
            seed=seed,
            eval_max_events=eval_max_events,
            synthetic=synthetic if format == "synthetic" else SyntheticConfig(),
        )
        self._prepared: Prepared | None = None
        self._tensors: RecTensors | None = None
        self._reported = False

    # ------------------------------------------------------------------ lazily prepared data
    @property
    def prepared(self) -> Prepared:
        """The pipeline's frames (run on first use, read from the cache when it holds them)."""
        if self._prepared is None:
            self._prepared = load_or_prepare(self.pipeline_config, self.cache_dir)
        return self._prepared

    @property
    def num_users(self) -> int:
        """Users 0..num_users-1 (runs the cached pipeline on first use)."""
        return self.prepared.num_users

    @property
    def num_items(self) -> int:
        """Items 1..num_items, 0 is PAD (runs the cached pipeline on first use)."""
        return self.prepared.num_items

    @property
    def dropped(self) -> dict[str, int]:
        """Rows dropped per reason (null_user, below_threshold, duplicate, k_core, ...)."""
        return dict(self.prepared.dropped)

    @property
    def tensors(self) -> RecTensors:
        """The tensor contract of docs/ARCHITECTURE.md (built once)."""
        if self._tensors is None:
            self._tensors = build_tensors(self.prepared, self.history_len)
        return self._tensors

    def statistics(self) -> dict[str, Any]:
        """`{"users", "items", "train_events", "val_events", "test_events", "dropped": {reason: rows}}`."""
        counts = dict(self.prepared.events.group_by("split").len().iter_rows())
        stats: dict[str, Any] = {"users": self.num_users, "items": self.num_items}
        stats.update({f"{name}_events": int(counts.get(code, 0)) for code, name in SPLIT_NAMES.items()})
        stats.update({f"{SPLIT_NAMES[code]}_eval_events": int(negatives.shape[0])
                      for code, negatives in self.prepared.negatives.items()})
        stats["dropped"] = self.dropped
        return stats

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Fills the cache (Lightning calls this on one process per node)."""
        _ = self.prepared

    def setup(self, stage: str | None = None) -> None:
        """Builds the tensors and reports the statistics once (on global rank 0)."""
        _ = self.tensors
        if not self._reported and self._rank_and_world()[0] == 0:
            for line in self.describe():
                print(line, file=sys.stderr)
        self._reported = True

    def describe(self) -> list[str]:
        """Human-readable statistics and dropped-row lines."""
        s = self.statistics()
        source = "simulator" if self.format == "synthetic" else f"{self.format} {self.path}"
        head = (
            f"data: {source}: {s['users']} users, {s['items']} items; events train {s['train_events']}, "
            f"val {s['val_events']}, test {s['test_events']} (split={self.split})"
        )
        sampled = [f"{name} {s[f'{name}_eval_events']} of {s[f'{name}_events']}" for name in ("val", "test")
                   if s[f"{name}_eval_events"] < s[f"{name}_events"]]
        sample = [f"data: evaluating a seeded sample (eval_max_events={self.hparams['eval_max_events']}): "
                  + ", ".join(sampled)] if sampled else []
        return [head, *sample, *(f"data: {line}" for line in format_dropped(s["dropped"]))]

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled, resumable batches of training windows `{"user", "history", "item", "index"}`.

        A row is a window anchor (`window_anchors`): its `history` followed by its `item` is a run of
        `history_len + 1` consecutive train items of one user, and over an epoch every train event is
        a target once. Per-event methods expand a window into its events with `index`.
        """
        rank, world = self._rank_and_world()
        anchors = window_anchors(self.tensors.train.user, self.history_len)
        return ResumableLoader(self.tensors.train, self.batch_size, self.seed, rank, world, rows=anchors)

    def val_dataloader(self) -> EvalLoader:
        """Validation batches `{"user", "history", "candidates", "index"}`, one shard per rank."""
        rank, world = self._rank_and_world()
        return EvalLoader(self.tensors.val, self.eval_batch_size, rank, world)

    def test_dataloader(self) -> EvalLoader:
        """Test batches `{"user", "history", "candidates", "index"}`, one shard per rank."""
        rank, world = self._rank_and_world()
        return EvalLoader(self.tensors.test, self.eval_batch_size, rank, world)

    def predict_dataloader(self) -> PredictLoader:
        """One row per user `{"user", "history"}` with the user's last items over all splits."""
        rank, world = self._rank_and_world()
        return PredictLoader(self.tensors, self.eval_batch_size, rank, world)

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size


def _validate(args: dict[str, Any], synthetic: SyntheticConfig) -> None:
    """Raises DataArgumentError (a DataError and a ValueError) naming the first bad argument."""

    def bad(name: str, expected: str) -> DataArgumentError:
        return DataArgumentError(f"{name}={args[name]!r}: expected {expected}")

    if args["format"] not in FORMATS:
        raise bad("format", " | ".join(FORMATS))
    if args["format"] != "synthetic" and not args["path"]:
        raise bad("path", f"a file or folder for format {args['format']!r}")
    if args["split"] not in SPLITS:
        raise bad("split", " | ".join(SPLITS))
    for name in ("sep", "user_col", "item_col", "time_col"):
        if not args[name]:
            raise bad(name, "a non-empty string")
    if args["rating_col"] == "":
        raise bad("rating_col", "a column name or None")
    for name, lowest in (("test_fraction", 0.0), ("val_fraction", -1.0)):
        value = args[name]
        if value < 0 or value <= lowest or (value >= 1 and value != int(value)):
            raise bad(name, "a fraction in (0, 1) or a whole number of events >= 1" + (" (or 0)" if lowest < 0 else ""))
    if args["test_fraction"] < 1 and args["val_fraction"] < 1 and args["test_fraction"] + args["val_fraction"] >= 1:
        raise bad("val_fraction", f"test_fraction + val_fraction < 1 (test_fraction={args['test_fraction']})")
    for name in ("min_user_interactions", "min_item_interactions", "history_len", "batch_size", "eval_batch_size"):
        if args[name] < 1:
            raise bad(name, "an integer >= 1")
    for name in ("train_negatives", "num_workers"):
        if args[name] < 0:
            raise bad(name, "an integer >= 0")
    if not args["eval_ks"] or min(args["eval_ks"]) < 1:
        raise bad("eval_ks", "a non-empty list of integers >= 1")
    if args["eval_max_events"] is not None and args["eval_max_events"] < 1:
        raise bad("eval_max_events", "an integer >= 1 or None (every event)")
    if args["format"] != "synthetic":
        return
    try:
        synthetic.validate()
    except ValueError as error:
        raise DataArgumentError(str(error)) from error


__all__ = ["RecDataModule"]

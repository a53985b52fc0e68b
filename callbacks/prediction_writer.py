"""PredictionWriter: the recommendations that `predict_step` returns, written to one Parquet file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import polars as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from lit_rec.run_dir import free_path, run_dir


class PredictionWriter(BasePredictionWriter):
    """Writes one row per (user, rank): `user`, `rank` (1 = best), `item`, `score`, with original ids.

    It observes what the module's `predict_step` returns, `{"user" (B,), "items" (B, k), "scores" (B, k)}`
    (`RecModule.predict_step`: each user's top `predict_top_k` unseen items); slots with a non-finite
    score (a user with fewer unseen items) are dropped. Under DDP each rank writes a part file, and
    rank 0 merges them into the file and removes them.
    """

    def __init__(self, output_path: str | None = None) -> None:
        """Settings (each a config key).

        Args:
            output_path: the Parquet file to write (parent folders are created; a file there is replaced). None: a
                new file in the run folder (`lit_rec.run_dir`), `predictions.parquet`, or `predictions-1.parquet`,
                ... when the name is taken.
        """
        super().__init__(write_interval="batch")
        self.output_path = None if output_path is None else Path(output_path)
        self._parts: list[tuple[Tensor, Tensor, Tensor]] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Clears what an earlier run left."""
        self._parts = []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: dict[str, Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keeps the batch's recommendations on the CPU."""
        if not isinstance(prediction, dict) or not {"user", "items", "scores"} <= prediction.keys():
            raise TypeError(
                f"PredictionWriter: {type(pl_module).__name__}.predict_step returned {type(prediction).__name__}, "
                'expected {"user" (B,), "items" (B, k), "scores" (B, k)} (RecModule.predict_step)'
            )
        self._parts.append((prediction["user"].cpu(), prediction["items"].cpu(), prediction["scores"].float().cpu()))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Writes this rank's rows; under DDP rank 0 then merges every rank's part. Prints the file's path."""
        tensors = trainer.datamodule.tensors
        frame = self._frame(tensors.user_ids, tensors.item_ids)
        self._parts = []
        target = self._target(trainer)
        target.parent.mkdir(parents=True, exist_ok=True)
        if trainer.world_size == 1:
            _write_atomic(frame, target)
            _announce(trainer, target)
            return
        part = target.with_suffix(f".rank{trainer.global_rank}.parquet")
        _write_atomic(frame, part)
        trainer.strategy.barrier("prediction_writer")
        if trainer.is_global_zero:
            parts = [target.with_suffix(f".rank{r}.parquet") for r in range(trainer.world_size)]
            merged = pl.concat([pl.read_parquet(p) for p in parts])
            # a sampler that pads uneven shards repeats some users: keep each (user, rank) once
            merged = merged.unique(subset=["user", "rank"], keep="first", maintain_order=True)
            _write_atomic(merged, target)
            for p in parts:
                p.unlink()
            _announce(trainer, target)
        trainer.strategy.barrier("prediction_writer_merged")

    def _target(self, trainer: L.Trainer) -> Path:
        """`output_path`, or a free name in the run folder (chosen on rank 0, broadcast: call it on every rank)."""
        if self.output_path is not None:
            return self.output_path
        folder = run_dir(trainer)
        name = free_path(folder / "predictions.parquet").name if trainer.is_global_zero else None
        return folder / trainer.strategy.broadcast(name)

    def _frame(self, user_ids: list[str], item_ids: list[str]) -> pl.DataFrame:
        """The rows of every kept batch, dropping slots a user had no unseen item for."""
        if not self._parts:
            return pl.DataFrame(schema={"user": pl.String, "rank": pl.Int32, "item": pl.String, "score": pl.Float32})
        users, items, scores = (torch.cat(column) for column in zip(*self._parts))
        k = items.shape[1]
        keep = torch.isfinite(scores).flatten()
        user_index = users.repeat_interleave(k)[keep]
        rank = torch.arange(1, k + 1, dtype=torch.int32).repeat(users.numel())[keep]
        frame = pl.DataFrame(
            {
                "user": pl.Series(user_ids).gather(pl.Series(user_index.numpy())),
                "rank": rank.numpy(),
                "item": pl.Series(item_ids).gather(pl.Series(items.flatten()[keep].numpy())),
                "score": scores.flatten()[keep].numpy(),
            }
        )
        return frame


def _announce(trainer: L.Trainer, path: Path) -> None:
    """One line `predictions: <absolute path>` on stdout, through the progress bar (a line of its own) when there is one."""
    bar = getattr(trainer, "progress_bar_callback", None)
    (bar.print if bar is not None else print)(f"predictions: {path.resolve()}")


def _write_atomic(frame: pl.DataFrame, path: Path) -> None:
    """Writes Parquet to a temporary name, then renames, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    frame.write_parquet(tmp)
    os.replace(tmp, path)

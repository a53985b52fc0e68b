"""A run's curves: CurveRecorder keeps `train/ctr` against `train/episodes` (Figure 2) and every validation's
`val/*`; `best_validation` and `best_epoch` read them."""

from __future__ import annotations

import math
from typing import Any

import lightning as L

from lit_rec.reproduce.methods import KS, MONITOR


class CurveRecorder(L.Callback):
    """Records `(train/episodes, train/ctr)` after every `every_n_steps` training batches on rank 0.

    The values are read from `trainer.callback_metrics` (what the module logged last with
    `log_train_ctr`), so the recorder works with any logger or none; a step that logged nothing new
    (the x value unchanged) adds no point. `points` is a list of `(global_step, episodes, ctr)`, and
    `val_points` one dict of `val/*` metrics (plus `step`, `epoch` (0-based) and the x value) per
    validation; both are kept in checkpoints so a resumed fit continues the curves.
    """

    def __init__(self, every_n_steps: int = 1, x: str = "train/episodes", y: str = "train/ctr") -> None:
        """Settings (each a config key).

        Args:
            every_n_steps: record one point per this many training batches.
            x: the logged metric used as the x-axis.
            y: the logged metric used as the y-axis.
        """
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.x, self.y = every_n_steps, x, y
        self.points: list[tuple[int, float, float]] = []
        self.val_points: list[dict[str, float]] = []
        self._batches = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Appends the latest logged point every `every_n_steps` batches."""
        self._batches += 1
        if not trainer.is_global_zero or self._batches % self.every_n_steps:
            return
        metrics = trainer.callback_metrics
        if self.x in metrics and self.y in metrics:
            x = float(metrics[self.x])
            if self.points and self.points[-1][1] == x:
                return  # nothing logged since the last point (a step without events)
            self.points.append((int(trainer.global_step), x, float(metrics[self.y])))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Appends the validation's `val/ctr@k`, `val/auc`, ... with the step, the epoch and the episodes so far."""
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = getattr(pl_module, "last_metrics", {}) or {}
        point = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
        if point:
            episodes = trainer.callback_metrics.get(self.x)
            point.update({"step": float(trainer.global_step), "epoch": float(trainer.current_epoch),
                          self.x: float(episodes) if episodes is not None else float("nan")})
            self.val_points.append(point)

    def state_dict(self) -> dict[str, Any]:
        """The points so far and the batch counter."""
        return {"points": list(self.points), "val_points": list(self.val_points), "batches": self._batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        self.points = [tuple(p) for p in state_dict.get("points", [])]  # type: ignore[misc]
        self.val_points = list(state_dict.get("val_points", []))
        self._batches = int(state_dict.get("batches", 0))


def best_validation(val_curve: list[dict[str, float]]) -> dict[str, float]:
    """The best `val/ctr@k` of a run over its validations, keyed by k."""
    best: dict[str, float] = {}
    for point in val_curve:
        for k in KS:
            value = point.get(f"val/ctr@{k}")
            if value is not None and not math.isnan(value):
                best[str(k)] = max(best.get(str(k), -math.inf), value)
    return best


def best_epoch(val_curve: list[dict[str, float]]) -> int | None:
    """The 0-based epoch of the first validation with the highest `MONITOR`: the one ModelCheckpoint keeps
    (it replaces its best only on a strict improvement)."""
    points = [p for p in val_curve if p.get(MONITOR) is not None and not math.isnan(p[MONITOR]) and "epoch" in p]
    if not points:
        return None
    best = max(p[MONITOR] for p in points)
    return int(next(p["epoch"] for p in points if p[MONITOR] == best))

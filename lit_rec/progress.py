"""Progress without a terminal: one line per training epoch instead of a redrawn bar."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


class EpochLineProgress(ProgressBar):
    """Prints `epoch N/M  batch B/T  step S[/max_steps]  <metrics>  (T s)` once per training epoch on rank 0,
    and within a long epoch the same line with the rate and the epoch's ETA every `every_s` seconds.

    The CLI uses it when stdout is not a terminal (a log file, CI, a batch job), where a tqdm bar writes
    every refresh as text (about 38 KB for 177 steps). `T` is the epoch's batches as Lightning will run
    them (`limit_train_batches` applied); an epoch over a 10M-row log is hours on CPU, so a silent epoch
    would say nothing of a `max_steps` budget until it ended."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self._enabled = True
        self._epoch_start = 0.0
        self._last_line = 0.0
        self._batches = 0  # batches done in this epoch
        self.every_s = every_s

    def disable(self) -> None:
        """Stops printing (Lightning disables the bar on ranks other than 0)."""
        self._enabled = False

    def enable(self) -> None:
        """Prints again."""
        self._enabled = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Starts the epoch's clock."""
        self._epoch_start = self._last_line = time.perf_counter()
        self._batches = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """A line with the rate and the ETA when `every_s` seconds passed since the last one."""
        self._batches = batch_idx + 1
        now = time.perf_counter()
        if self._enabled and now - self._last_line >= self.every_s:
            self._last_line = now
            done, elapsed = self._batches, now - self._epoch_start
            left, goal = trainer.num_training_batches - done, "epoch end"
            if trainer.max_steps and trainer.max_steps > 0:  # a step budget that ends first is what the ETA is for
                budget = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
                left, goal = (budget, "max_steps") if budget < left else (left, goal)
            eta = f", eta {left * elapsed / done:.0f} s to {goal}" if done and left != float("inf") else ""
            print(self._line(trainer, pl_module) + f"  ({elapsed:.1f} s, {done / elapsed:.2f} batch/s{eta})",
                  file=sys.stdout, flush=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One line: the epoch, the batches, the step, the progress-bar metrics and the epoch's seconds."""
        if not self._enabled:
            return
        print(self._line(trainer, pl_module) + f"  ({time.perf_counter() - self._epoch_start:.1f} s)",
              file=sys.stdout, flush=True)

    def _line(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        """`epoch N/M  batch B/T  step S[/max_steps]  <metrics>`."""
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        cap = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        total = trainer.num_training_batches
        batches = f"  batch {self._batches}/{total if total != float('inf') else '?'}"
        steps = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        return f"epoch {trainer.current_epoch + 1}{cap}{batches}  step {trainer.global_step}{steps}  {shown}"


def plain_progress_wanted(trainer_config: dict[str, Any], callbacks: list[Any]) -> bool:
    """Whether a run should print epoch lines: a progress bar is on, none is given, and stdout is not a terminal."""
    given = list(trainer_config.get("callbacks") or []) + list(callbacks)
    return (trainer_config.get("enable_progress_bar", True) is not False and not sys.stdout.isatty()
            and not any(isinstance(c, ProgressBar) for c in given))

"""Progress without a terminal: one line per training epoch instead of a redrawn bar."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


class EpochLineProgress(ProgressBar):
    """Prints `epoch N/M  step S  <metrics>  (T s)` once per training epoch on rank 0, nothing in between.

    The CLI uses it when stdout is not a terminal (a log file, CI, a batch job), where a tqdm bar writes
    every refresh as text (about 38 KB for 177 steps)."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._epoch_start = 0.0

    def disable(self) -> None:
        """Stops printing (Lightning disables the bar on ranks other than 0)."""
        self._enabled = False

    def enable(self) -> None:
        """Prints again."""
        self._enabled = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Starts the epoch's clock."""
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One line: the epoch, the step, the progress-bar metrics and the epoch's seconds."""
        if not self._enabled:
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        cap = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(f"epoch {trainer.current_epoch + 1}{cap}  step {trainer.global_step}  {shown}  "
              f"({time.perf_counter() - self._epoch_start:.1f} s)", file=sys.stdout, flush=True)


def plain_progress_wanted(trainer_config: dict[str, Any], callbacks: list[Any]) -> bool:
    """Whether a run should print epoch lines: a progress bar is on, none is given, and stdout is not a terminal."""
    given = list(trainer_config.get("callbacks") or []) + list(callbacks)
    return (trainer_config.get("enable_progress_bar", True) is not False and not sys.stdout.isatty()
            and not any(isinstance(c, ProgressBar) for c in given))

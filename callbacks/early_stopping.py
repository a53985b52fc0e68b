"""WarmupEarlyStopping: Lightning's EarlyStopping that starts watching after a few epochs (Keras' `start_from_epoch`)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping


class WarmupEarlyStopping(EarlyStopping):
    """`EarlyStopping` whose patience starts counting at epoch `start_from_epoch` (0-based).

    A learner can sit at the popularity level for its first epochs before it improves (DDQN on the
    synthetic simulator: val CTR@10 .292/.288/.277/.289, then .331/.393/.421/...). Plain early stopping
    with patience 3 ends such a run at epoch 3; `Trainer(min_epochs=...)` only delays that stop, since
    `should_stop` stays set even when a later validation improves. Validations before
    `start_from_epoch` record an improvement of the best score but never count as misses (nor stop a
    run for any other criterion of EarlyStopping).
    """

    def __init__(self, *args: Any, start_from_epoch: int = 0, **kwargs: Any) -> None:
        """Settings (each a config key).

        Args:
            start_from_epoch: first epoch whose validation early stopping looks at; the rest as `EarlyStopping`.
        """
        super().__init__(*args, **kwargs)
        if start_from_epoch < 0:
            raise ValueError(f"start_from_epoch must be >= 0, got {start_from_epoch}")
        self.start_from_epoch = start_from_epoch

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        """The usual check; during the warm-up epochs only its record of the best score stays."""
        stop_before = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        if trainer.current_epoch < self.start_from_epoch:
            self.wait_count = 0
            self.stopped_epoch = 0
            trainer.should_stop = stop_before

"""DataStatsLogger: logs the data layer's statistics and dropped-row counts once per fit."""

from __future__ import annotations

import lightning as L


class DataStatsLogger(L.Callback):
    """Logs `data/users`, `data/items`, `data/*_events` and `data/rows_dropped_<reason>` at fit start."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sends the statistics to every logger (rank 0 only)."""
        datamodule = trainer.datamodule
        if datamodule is None or not trainer.is_global_zero or not trainer.loggers:
            return
        stats = datamodule.statistics()
        values: dict[str, float] = {}
        for name, value in stats.items():
            if isinstance(value, dict):
                values.update({f"data/rows_dropped_{reason}": float(n) for reason, n in value.items()})
            elif isinstance(value, (int, float)):
                values[f"data/{name}"] = float(value)
        for logger in trainer.loggers:
            logger.log_metrics(values, step=0)

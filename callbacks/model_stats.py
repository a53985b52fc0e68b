"""ModelStatsLogger: logs a Q-learner's parameters and scoring latency (and its teacher's, with the ratios) at fit start."""

from __future__ import annotations

import lightning as L
from torch import nn

from lit_rec.serving import num_parameters, scoring_latency_ms


class ModelStatsLogger(L.Callback):
    """Logs `model/params`, `model/latency_ms` and, with a teacher, `model/teacher_params`, `model/teacher_latency_ms`,
    `model/param_ratio` and `model/latency_ratio` once at fit start (rank 0), and keeps them in `stats`.

    It reads the module's `online` network (a `QNetwork`: DQN, DRLRecStudent) and, when not None, its `teacher`;
    a module without an `online` network is skipped quietly. Latency is the median over `repeats` requests of
    `candidates` items (`lit_rec.serving.scoring_latency_ms`).
    """

    def __init__(self, candidates: int = 1000, repeats: int = 20) -> None:
        """Settings (each a config key).

        Args:
            candidates: candidate items scored per timed request.
            repeats: timed requests per network (after 3 warm-up rounds).
        """
        self.candidates, self.repeats = candidates, repeats
        self.stats: dict[str, float] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Times the networks and logs their sizes and latencies."""
        online: nn.Module | None = getattr(pl_module, "online", None)
        if online is None:
            return
        teacher: nn.Module | None = getattr(pl_module, "teacher", None)
        networks = {"student": online} if teacher is None else {"student": online, "teacher": teacher}
        latency = scoring_latency_ms(networks, pl_module.num_items, pl_module.history_len, self.candidates, repeats=self.repeats)
        stats = {"model/params": float(num_parameters(online)), "model/latency_ms": latency["student"]}
        if teacher is not None:
            teacher_params = num_parameters(teacher)
            stats.update(
                {
                    "model/teacher_params": float(teacher_params),
                    "model/teacher_latency_ms": latency["teacher"],
                    "model/param_ratio": stats["model/params"] / teacher_params,
                    "model/latency_ratio": latency["student"] / latency["teacher"],
                }
            )
        self.stats = stats
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=trainer.global_step)

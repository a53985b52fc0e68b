"""StalenessCallback: logs how stale the federated updates are, with a W&B histogram on rank 0."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from callbacks.wandb_utils import find_wandb_logger
from lit_rec.federated.stats import FederatedStats


class StalenessCallback(L.Callback):
    """Logs `staleness/*` and `federated/*` after every server step of a module whose `federated_stats` is a `FederatedStats`.

    The module (`lit_rec.federated.ReportsFederatedStats`: DADRL, A2C-F, A2C-D) sets its last server
    step's `lit_rec.federated.FederatedStats`; the callback reads only that. The staleness settings
    (weighting, max staleness, stale policy, arrival model) belong to the method and its server:
    they define the algorithm and a run without this callback trains the same. The callback observes: per step it logs
    `staleness/mean`, `staleness/max`, `staleness/weight_mean` of the accepted updates,
    `staleness/dropped_frac` (dropped / reported, cumulative over the run), `federated/updates`
    (accepted client updates so far), `federated/clients` (clients reporting this step) and, with
    differential privacy, `privacy/epsilon` (spent so far at the module's delta); every
    `histogram_every_n_steps` steps, and at every validation during a fit, it draws the Δ histogram of
    the steps since the last one in W&B (rank 0, only when a WandbLogger is attached), so even a short
    run gets one per validation. Counters and the pending histogram are in `state_dict`, so a
    resumed run continues them. Other modules (no `FederatedStats`) are skipped quietly.
    """

    def __init__(self, histogram_every_n_steps: int = 100, histogram_bins: int = 64) -> None:
        """Settings (each a config key).

        Args:
            histogram_every_n_steps: server steps between two W&B histograms of Δ.
            histogram_bins: histogram bins for Δ = 0 .. bins-1 (larger Δ fall in the last bin).
        """
        self.histogram_every_n_steps = histogram_every_n_steps
        self.histogram_bins = histogram_bins
        self.updates = 0
        self.reported = 0
        self.dropped = 0
        self.counts = torch.zeros(histogram_bins, dtype=torch.long)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Logs this step's staleness statistics and the run's counters."""
        stats = getattr(pl_module, "federated_stats", None)
        if not isinstance(stats, FederatedStats):
            return
        staleness = stats.staleness.detach().cpu()
        weights = stats.weights.detach().cpu()
        self.updates += stats.updates
        self.reported += stats.reporting
        self.dropped += stats.dropped
        self.counts += torch.bincount(staleness.clamp_max(self.histogram_bins - 1), minlength=self.histogram_bins)
        values = {
            "staleness/dropped_frac": self.dropped / max(1, self.reported),
            "federated/updates": float(self.updates),
            "federated/clients": float(stats.reporting),
        }
        if stats.epsilon is not None:  # differential privacy on: the privacy spent so far
            values["privacy/epsilon"] = stats.epsilon
        if staleness.numel():
            values.update(
                {
                    "staleness/mean": float(staleness.float().mean()),
                    "staleness/max": float(staleness.max()),
                    "staleness/weight_mean": float(weights.mean()),
                }
            )
        for name, value in values.items():
            pl_module.log(name, value, on_step=True, on_epoch=False)
        if trainer.global_step % self.histogram_every_n_steps == 0:
            self._log_histogram(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draws the steps' Δ histogram since the last one, so every validation of a fit has one."""
        if int(self.counts.sum()) > 0:
            self._log_histogram(trainer)

    def _log_histogram(self, trainer: L.Trainer) -> None:
        """Sends the pending Δ histogram to W&B on rank 0 and starts a new one (every rank resets alike)."""
        counts, self.counts = self.counts, torch.zeros_like(self.counts)
        wandb_logger = find_wandb_logger(trainer)
        if wandb_logger is None or not trainer.is_global_zero or int(counts.sum()) == 0:
            return
        import wandb

        edges = torch.arange(self.histogram_bins + 1, dtype=torch.float64) - 0.5
        histogram = wandb.Histogram(np_histogram=(counts.numpy(), edges.numpy()))
        wandb_logger.experiment.log({"staleness/histogram": histogram, "trainer/global_step": trainer.global_step}, commit=False)

    def state_dict(self) -> dict[str, Any]:
        """Run counters and the pending histogram counts."""
        return {"updates": self.updates, "reported": self.reported, "dropped": self.dropped, "counts": self.counts.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        self.updates, self.reported, self.dropped = state_dict["updates"], state_dict["reported"], state_dict["dropped"]
        self.counts = state_dict["counts"].clone()

"""Popularity: recommends the items clicked most often in the train split (the floor of Table 1)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_rec.distributed import all_gather_rows
from lit_rec.modules.statistics import StatisticsModule
from lit_rec.sampling import SeededGenerator, training_candidates


class Popularity(StatisticsModule):
    """Counts train clicks per item while iterating the train split, and scores items by count."""

    def __init__(self, seed: int = 0, **kwargs: Any) -> None:
        """Settings (each a config key).

        Args:
            seed: seed of the training-time candidate sampler.
        """
        super().__init__(**kwargs)
        self.rng = SeededGenerator(seed)
        self.register_buffer("counts", torch.zeros(self.num_items + 1, dtype=torch.long))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """For every event of the windows, picks among the positive and random items by count, then adds the clicks."""
        _, item = self.window_events(batch)
        items = all_gather_rows(self, item)  # every rank counts every rank's clicks
        # The learned counts only: one pass over the train split reproduces item_popularity.
        candidates = training_candidates(item, self.train_negatives, self.num_items, self.rng.generator)
        choice = self.counts[candidates].argmax(dim=1)  # the policy's own pick, before this batch is counted
        self.log_train_ctr((choice == 0).float(), item.numel())
        self.counts.index_add_(0, items, torch.ones_like(items))
        self.advance_step()

    def score_candidates(self, batch: dict[str, Tensor], candidates: Tensor) -> Tensor:
        """Scores candidates by their train click count."""
        return self.counts[candidates].float()

    def score_all_items(self, batch: dict[str, Tensor]) -> Tensor:
        """Every item's count, the same for every state."""
        return self.counts.float().expand(batch["history"].shape[0], -1)

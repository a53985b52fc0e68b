"""Popularity reference scorer: an item's score is its number of training interactions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PopularityScorer", "log_popularity_features"]


def _check_item_popularity(item_popularity: Tensor) -> None:
    """Raise ValueError unless item_popularity is a 1-D non-negative integer count vector with PAD (0) at 0."""
    if item_popularity.ndim != 1 or item_popularity.numel() < 2:
        raise ValueError(f"item_popularity must have shape (num_items + 1,), got {tuple(item_popularity.shape)}")
    if item_popularity.is_floating_point() or item_popularity.is_complex() or item_popularity.dtype == torch.bool:
        raise ValueError(f"item_popularity must hold integer counts, got dtype {item_popularity.dtype}")
    if int(item_popularity.min()) < 0:
        raise ValueError("item_popularity has negative counts")
    # A non-zero PAD count almost always means the vector is indexed from item 1, off by one.
    if int(item_popularity[0]) != 0:
        raise ValueError(f"item_popularity[0] is PAD and must be 0, got {int(item_popularity[0])}")


class PopularityScorer(nn.Module):
    """Scores candidates by their training counts; equal counts give equal scores (ties)."""

    item_popularity: Tensor

    def __init__(self, item_popularity: Tensor) -> None:
        """Build from train counts `(num_items + 1,)`, index 0 PAD with count 0."""
        super().__init__()
        _check_item_popularity(item_popularity)
        self.register_buffer("item_popularity", item_popularity.detach().clone().long(), persistent=False)

    @property
    def num_items(self) -> int:
        """Number of real items (ids 1..num_items)."""
        return self.item_popularity.numel() - 1

    def forward(self, candidates: Tensor) -> Tensor:
        """Scores `(B, C)` float64 of candidate item ids `(B, C)`: their training counts."""
        if candidates.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"candidates must be integer item ids, got dtype {candidates.dtype}")
        # float64 represents every count exactly, so distinct counts never collapse into ties.
        return self.item_popularity[candidates.long()].to(torch.float64)

    def score_all(self, batch_size: int) -> Tensor:
        """Scores `(batch_size, num_items + 1)` float64 of every item (column 0 PAD) for each row."""
        return self.item_popularity.to(torch.float64).expand(batch_size, -1).clone()


def log_popularity_features(item_popularity: Tensor) -> Tensor:
    """Per-item float feature `(num_items + 1,)`: log1p(count) scaled to [0, 1] by the largest count."""
    _check_item_popularity(item_popularity)
    log_counts = torch.log1p(item_popularity.to(torch.float32))
    largest = log_counts.max()
    return log_counts / largest if largest > 0 else torch.zeros_like(log_counts)

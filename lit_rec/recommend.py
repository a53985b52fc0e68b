"""Top-k recommendation: each user's best-scored items, PAD and the user's own items excluded."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_rec.evaluation import seen_mask_from_csr


def recommend_top_k(module: Any, batch: dict[str, Tensor], k: int, tensors: Any) -> tuple[Tensor, Tensor]:
    """Items `(B, k)` and scores `(B, k)`, best first, among items the user never interacted with.

    `module` is a `RecModule` (`score_all_items`), `batch` holds `user (B,)` and `history (B, L)`,
    `tensors` the data's `RecTensors` (its `seen_offsets`/`seen_items` CSR). Users with fewer than k
    unseen items get `-inf` scores (and arbitrary items) in their last columns.
    """
    assert k >= 1, f"k must be >= 1, got {k}"
    scores = module.score_all_items(batch).float()
    b, width = scores.shape
    assert width == tensors.num_items + 1, f"score_all_items gave {width} columns, expected num_items + 1 = {tensors.num_items + 1}"
    seen = seen_mask_from_csr(batch["user"].cpu(), tensors.seen_offsets, tensors.seen_items, tensors.num_items)
    seen = seen.to(scores.device)
    seen[:, 0] = True  # PAD is never recommended
    scores = scores.masked_fill(seen, float("-inf"))
    top_scores, top_items = torch.topk(scores, min(k, width - 1), dim=1)
    return top_items, top_scores

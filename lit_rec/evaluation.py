"""One-Plus-K sampled metrics and full-ranking metrics, exact under DDP (DESIGN.md section 4).

Protocol: a test event has one positive and K_max frozen negatives; the model's scores
arrive as a `(B, 1 + K_max)` matrix, column 0 the positive, columns 1.. the negatives in
their stored order. Ties never favour the positive: CTR@k gives `1 / (1 + ties)` and the
rank metrics take the expected value under a uniformly random order of the tied items.
Every metric keeps float64 sums plus an event count, so summing states across ranks and
dividing once gives the same number as one process seeing every event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "FullRankingMetrics",
    "OnePlusKMetrics",
    "auc_per_event",
    "ctr_at_k",
    "ctr_at_ks",
    "mrr_per_event",
    "ndcg_per_event",
    "seen_mask_from_csr",
]

# Per-event values such as 1/3 are summed over many events; float64 keeps those sums
# far below any reported digit and makes state dtypes independent of the model's dtype.
_DTYPE = torch.float64


# --------------------------------------------------------------------------- checks


def _check_one_plus_k(scores: Tensor, min_negatives: int = 1) -> None:
    """Raise ValueError unless scores is a finite `(B, 1 + K)` matrix with K >= min_negatives."""
    if scores.ndim != 2 or scores.shape[1] < 1 + min_negatives:
        raise ValueError(
            f"scores must have shape (B, 1 + K) with column 0 the positive and K >= {min_negatives} "
            f"negatives, got shape {tuple(scores.shape)}"
        )
    bad_rows = ~torch.isfinite(scores).all(dim=1)
    num_bad = int(bad_rows.sum())
    if num_bad:
        first = int(bad_rows.nonzero()[0, 0])
        raise ValueError(
            f"scores has {num_bad} of {scores.shape[0]} rows with non-finite values (NaN or inf), "
            f"first at row {first}; a non-finite score would be silently ranked"
        )


# ------------------------------------------------------------- rank arithmetic


def _greater_and_ties(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean `(B, K)` masks: which negatives score above the positive, which tie with it."""
    positive, negatives = scores[:, :1], scores[:, 1:]
    return negatives > positive, negatives == positive


def _expected_discount(greater: Tensor, ties: Tensor, cumulative: Tensor) -> Tensor:
    """Mean of a rank discount over rank = greater + 1 + j, j uniform on 0..ties.

    `cumulative[r]` is the discount summed over ranks 1..r; the discount must be zero
    beyond the table's last rank, which is why indices may be clamped to it.
    """
    last = cumulative.numel() - 1
    upper = (greater + 1 + ties).clamp(max=last)
    lower = greater.clamp(max=last)
    return (cumulative[upper] - cumulative[lower]) / (ties + 1).to(_DTYPE)


def _cumulative_ndcg_discount(at: int, device: torch.device) -> Tensor:
    """Cumulative DCG discount 1/log2(1 + rank) over ranks 0..at (zero beyond `at`)."""
    ranks = torch.arange(1, at + 1, dtype=_DTYPE, device=device)
    return torch.cat([ranks.new_zeros(1), (1.0 / torch.log2(ranks + 1)).cumsum(0)])


def _cumulative_reciprocal_rank(max_rank: int, device: torch.device) -> Tensor:
    """Cumulative reciprocal rank 1/rank over ranks 0..max_rank (harmonic numbers)."""
    ranks = torch.arange(1, max_rank + 1, dtype=_DTYPE, device=device)
    return torch.cat([ranks.new_zeros(1), (1.0 / ranks).cumsum(0)])


def _ctr_from_masks(greater: Tensor, ties: Tensor, ks: Sequence[int]) -> Tensor:
    """Per-event CTR `(B, len(ks))` from the greater/tie masks, each k using the first k negatives."""
    columns = torch.as_tensor([k - 1 for k in ks], dtype=torch.long, device=greater.device)
    greater_first_k = greater.cumsum(dim=1)[:, columns]
    ties_first_k = ties.cumsum(dim=1)[:, columns]
    return (greater_first_k == 0).to(_DTYPE) / (1 + ties_first_k).to(_DTYPE)


def _auc_from_counts(greater: Tensor, ties: Tensor, num_negatives: int) -> Tensor:
    """Per-event AUC of the positive against its negatives, ties counting one half."""
    below = num_negatives - greater - ties
    return (below.to(_DTYPE) + 0.5 * ties.to(_DTYPE)) / num_negatives


# ------------------------------------------------------------ per-event functions


def ctr_at_ks(scores: Tensor, ks: Sequence[int]) -> Tensor:
    """Per-event One-Plus-K hit values `(B, len(ks))`: 1/(1+ties) if no negative of the first k beats the positive."""
    _check_one_plus_k(scores, min_negatives=max(ks))
    return _ctr_from_masks(*_greater_and_ties(scores), ks)


def ctr_at_k(scores: Tensor, k: int) -> Tensor:
    """Per-event One-Plus-K hit values `(B,)` against the positive plus the first k negatives."""
    return ctr_at_ks(scores, (k,))[:, 0]


def auc_per_event(scores: Tensor) -> Tensor:
    """Per-event AUC `(B,)`: (negatives below + 0.5 * ties) / K over all K negatives."""
    _check_one_plus_k(scores)
    greater, ties = _greater_and_ties(scores)
    return _auc_from_counts(greater.sum(dim=1), ties.sum(dim=1), scores.shape[1] - 1)


def ndcg_per_event(scores: Tensor, at: int = 10) -> Tensor:
    """Per-event expected NDCG@at `(B,)` of the positive among all K negatives, ties in random order."""
    _check_one_plus_k(scores)
    greater, ties = _greater_and_ties(scores)
    cumulative = _cumulative_ndcg_discount(at, scores.device)
    return _expected_discount(greater.sum(dim=1), ties.sum(dim=1), cumulative)


def mrr_per_event(scores: Tensor) -> Tensor:
    """Per-event expected reciprocal rank `(B,)` of the positive among all K negatives, ties in random order."""
    _check_one_plus_k(scores)
    greater, ties = _greater_and_ties(scores)
    cumulative = _cumulative_reciprocal_rank(scores.shape[1], scores.device)
    return _expected_discount(greater.sum(dim=1), ties.sum(dim=1), cumulative)


# -------------------------------------------------------------------- metrics


class OnePlusKMetrics(Metric):
    """CTR@k for each k, AUC, NDCG@ndcg_at and MRR on `(B, 1 + K_max)` One-Plus-K scores."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: Sequence[int] = (1, 10, 20, 50, 100), ndcg_at: int = 10, **kwargs: Any) -> None:
        """Metric over the candidate list sizes `ks` (each k: positive + first k negatives)."""
        super().__init__(**kwargs)
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
            raise ValueError(f"ks must be distinct positive integers, got {ks}")
        if ndcg_at < 1:
            raise ValueError(f"ndcg_at must be >= 1, got {ndcg_at}")
        self.ks = ks
        self.ndcg_at = int(ndcg_at)
        self.add_state("ctr_sum", default=torch.zeros(len(ks), dtype=_DTYPE), dist_reduce_fx="sum")
        self.add_state("auc_sum", default=torch.zeros((), dtype=_DTYPE), dist_reduce_fx="sum")
        self.add_state("ndcg_sum", default=torch.zeros((), dtype=_DTYPE), dist_reduce_fx="sum")
        self.add_state("mrr_sum", default=torch.zeros((), dtype=_DTYPE), dist_reduce_fx="sum")
        self.add_state("events", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor) -> None:
        """Add a batch of events: scores `(B, 1 + K_max)`, column 0 the positive, K_max >= max(ks)."""
        _check_one_plus_k(scores, min_negatives=max(self.ks))
        num_negatives = scores.shape[1] - 1
        greater, ties = _greater_and_ties(scores)
        greater_all, ties_all = greater.sum(dim=1), ties.sum(dim=1)
        ndcg_table = _cumulative_ndcg_discount(self.ndcg_at, scores.device)
        mrr_table = _cumulative_reciprocal_rank(num_negatives + 1, scores.device)

        self.ctr_sum += _ctr_from_masks(greater, ties, self.ks).sum(dim=0)
        self.auc_sum += _auc_from_counts(greater_all, ties_all, num_negatives).sum()
        self.ndcg_sum += _expected_discount(greater_all, ties_all, ndcg_table).sum()
        self.mrr_sum += _expected_discount(greater_all, ties_all, mrr_table).sum()
        self.events += scores.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Means over all events seen: `ctr@{k}` for each k, `auc`, `ndcg@{ndcg_at}`, `mrr` (0-d tensors)."""
        events = self.events.to(_DTYPE)
        ctr = self.ctr_sum / events
        result = {f"ctr@{k}": ctr[i] for i, k in enumerate(self.ks)}
        result["auc"] = self.auc_sum / events
        result[f"ndcg@{self.ndcg_at}"] = self.ndcg_sum / events
        result["mrr"] = self.mrr_sum / events
        return result


class FullRankingMetrics(Metric):
    """HR@k and NDCG@k of the positive ranked against every item, PAD and the user's other items excluded."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 10, **kwargs: Any) -> None:
        """Metric at cut-off `k`, logged as `hr@{k}_full` and `ndcg@{k}_full`."""
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self.add_state("hit_sum", default=torch.zeros((), dtype=_DTYPE), dist_reduce_fx="sum")
        self.add_state("ndcg_sum", default=torch.zeros((), dtype=_DTYPE), dist_reduce_fx="sum")
        self.add_state("events", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor, positive: Tensor, seen_mask: Tensor) -> None:
        """Add a batch: scores and bool seen_mask `(B, num_items + 1)` (column 0 PAD), positive item ids `(B,)`."""
        greater, ties = _full_ranking_counts(scores, positive, seen_mask)
        # A hit is a rank <= k: the "discount" is 1 on ranks 1..k, so its cumulative table is 0..k.
        hit_table = torch.arange(self.k + 1, dtype=_DTYPE, device=scores.device)
        ndcg_table = _cumulative_ndcg_discount(self.k, scores.device)
        self.hit_sum += _expected_discount(greater, ties, hit_table).sum()
        self.ndcg_sum += _expected_discount(greater, ties, ndcg_table).sum()
        self.events += scores.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """Means over all events seen: `hr@{k}_full` and `ndcg@{k}_full` (0-d tensors)."""
        events = self.events.to(_DTYPE)
        return {
            f"hr@{self.k}_full": self.hit_sum / events,
            f"ndcg@{self.k}_full": self.ndcg_sum / events,
        }


def _full_ranking_counts(scores: Tensor, positive: Tensor, seen_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per event, how many eligible items score above the positive and how many tie with it."""
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must have shape (B, num_items + 1), got {tuple(scores.shape)}")
    batch, width = scores.shape
    if positive.shape != (batch,) or positive.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"positive must be integer item ids of shape ({batch},), got {positive.dtype} {tuple(positive.shape)}"
        )
    if seen_mask.shape != scores.shape or seen_mask.dtype != torch.bool:
        raise ValueError(
            f"seen_mask must be bool of shape {tuple(scores.shape)}, got {seen_mask.dtype} {tuple(seen_mask.shape)}"
        )
    if batch and (int(positive.min()) < 1 or int(positive.max()) >= width):
        raise ValueError(f"positive item ids must lie in 1..{width - 1} (0 is PAD)")

    rows = torch.arange(batch, device=scores.device)
    positive = positive.long()
    positive_score = scores[rows, positive].unsqueeze(1)
    # Models may mask items with -inf, so only NaN anywhere or a non-finite positive is an error.
    bad_rows = torch.isnan(scores[:, 1:]).any(dim=1) | ~torch.isfinite(positive_score[:, 0])
    num_bad = int(bad_rows.sum())
    if num_bad:
        raise ValueError(
            f"scores has {num_bad} of {batch} rows with a NaN item score or a non-finite positive score, "
            f"first at row {int(bad_rows.nonzero()[0, 0])}"
        )

    competitors = ~seen_mask
    competitors[:, 0] = False  # PAD is never a candidate
    competitors[rows, positive] = False  # the positive is ranked, not a competitor, even if marked seen
    greater = ((scores > positive_score) & competitors).sum(dim=1)
    ties = ((scores == positive_score) & competitors).sum(dim=1)
    return greater, ties


def seen_mask_from_csr(users: Tensor, offsets: Tensor, items: Tensor, num_items: int) -> Tensor:
    """Bool mask `(B, num_items + 1)` of each user's items from a CSR (`items[offsets[u]:offsets[u+1]]`)."""
    if users.ndim != 1 or offsets.ndim != 1 or items.ndim != 1:
        raise ValueError(
            f"users, offsets and items must be 1-D, got shapes {tuple(users.shape)}, "
            f"{tuple(offsets.shape)}, {tuple(items.shape)}"
        )
    device = users.device
    users, offsets = users.long(), offsets.long().to(device)
    starts = offsets[users]
    lengths = offsets[users + 1] - starts
    rows = torch.repeat_interleave(torch.arange(users.numel(), device=device), lengths)
    # Entry e of the output belongs to row rows[e]; its position in `items` is that row's
    # start plus how far e lies past the row's first output entry.
    first_entry = lengths.cumsum(0) - lengths
    positions = torch.repeat_interleave(starts - first_entry, lengths) + torch.arange(rows.numel(), device=device)
    columns = items.to(device).long()[positions]
    mask = torch.zeros(users.numel(), num_items + 1, dtype=torch.bool, device=device)
    mask.index_put_((rows, columns), torch.ones((), dtype=torch.bool, device=device))
    return mask

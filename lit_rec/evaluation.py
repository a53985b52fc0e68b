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
    "seen_index_from_csr",
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
    # A row sum is finite only when every score in the row is (the converse fails only on overflow):
    # a cheap first check, confirmed element by element when it fails.
    if bool(torch.isfinite(scores.sum(dim=1)).all()):
        return
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
        ndcg_table, mrr_table = self._tables(num_negatives, scores.device)

        # in place: `self.x += ...` would go through Module.__setattr__ on every batch
        self.ctr_sum.add_(_ctr_from_masks(greater, ties, self.ks).sum(dim=0))
        self.auc_sum.add_(_auc_from_counts(greater_all, ties_all, num_negatives).sum())
        self.ndcg_sum.add_(_expected_discount(greater_all, ties_all, ndcg_table).sum())
        self.mrr_sum.add_(_expected_discount(greater_all, ties_all, mrr_table).sum())
        self.events.add_(scores.shape[0])

    def _tables(self, num_negatives: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The NDCG and reciprocal-rank tables for `num_negatives`, built once per size and device."""
        cache = self.__dict__.setdefault("_table_cache", {})
        key = (num_negatives, str(device))
        if key not in cache:
            cache[key] = (
                _cumulative_ndcg_discount(self.ndcg_at, device),
                _cumulative_reciprocal_rank(num_negatives + 1, device),
            )
        return cache[key]

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

    def update(
        self, scores: Tensor, positive: Tensor, seen_mask: Tensor | tuple[Tensor, Tensor], misses: int = 0
    ) -> None:
        """Add a batch: scores `(B, num_items + 1)` (column 0 PAD), positive item ids `(B,)`, and the items each
        event's user has seen: a bool `seen_mask` `(B, num_items + 1)`, or the same as an index pair
        `(rows, columns)` of its True entries (`seen_index_from_csr`; cheaper, no dense mask is built).

        `misses`: further events known to rank below k (k eligible items score above their positive),
        counted with hr = ndcg = 0 without their scores.
        """
        if misses < 0:
            raise ValueError(f"misses must be >= 0, got {misses}")
        self.events.add_(misses)
        if scores.ndim == 2 and scores.shape[0] == 0 and misses:
            return
        greater, ties = _full_ranking_counts(scores, positive, seen_mask)
        cache = self.__dict__.setdefault("_table_cache", {})
        key = str(scores.device)
        if key not in cache:
            # A hit is a rank <= k: the "discount" is 1 on ranks 1..k, so its cumulative table is 0..k.
            cache[key] = (
                torch.arange(self.k + 1, dtype=_DTYPE, device=scores.device),
                _cumulative_ndcg_discount(self.k, scores.device),
            )
        hit_table, ndcg_table = cache[key]
        self.hit_sum.add_(_expected_discount(greater, ties, hit_table).sum())
        self.ndcg_sum.add_(_expected_discount(greater, ties, ndcg_table).sum())
        self.events.add_(scores.shape[0])

    def update_from_candidates(self, full: Tensor, candidates: Tensor, users: Tensor, seen_offsets: Tensor, seen_items: Tensor) -> None:
        """Add a chunk of events: every item's scores `full (B, num_items + 1)`, the One-Plus-K `candidates (B, 1 + K)`
        (positive first), the events' `users (B,)` and every user's seen items as CSR (`seen_offsets`, `seen_items`).

        The frozen negatives (candidate columns 1..) are items the user never touched, so eligible
        competitors: an event where k of them score above its positive ranks below k among all items
        and adds hr@k = ndcg@k = 0 without a full count (most events, unless the model is strong).
        """
        on_candidates = full.gather(1, candidates.to(full.device).long())  # the same values the count compares
        ranked = (on_candidates[:, 1:] > on_candidates[:, :1]).sum(dim=1) < self.k
        misses = int(candidates.shape[0] - ranked.sum())
        positive = candidates[:, 0]
        if misses:
            keep = ranked.nonzero()[:, 0]
            full, users, positive = full[keep], users[keep.to(users.device)], positive[keep.to(positive.device)]
        # the seen items as (row, column) pairs: no dense (rows, num_items + 1) mask
        rows, columns = seen_index_from_csr(users.cpu(), seen_offsets, seen_items)
        self.update(full.float(), positive.to(full.device), (rows.to(full.device), columns.to(full.device)), misses)

    def compute(self) -> dict[str, Tensor]:
        """Means over all events seen: `hr@{k}_full` and `ndcg@{k}_full` (0-d tensors)."""
        events = self.events.to(_DTYPE)
        return {
            f"hr@{self.k}_full": self.hit_sum / events,
            f"ndcg@{self.k}_full": self.ndcg_sum / events,
        }


def _full_ranking_counts(
    scores: Tensor, positive: Tensor, seen: Tensor | tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """Per event, how many eligible items score above the positive and how many tie with it.

    Eligible: every item but PAD (column 0), the user's seen items and the positive itself. One
    copy holds `sign(score - positive score)` with the ineligible cells set to -1 (below), so that
    per row `sum` = greater - below and `sum |.|` = greater + below, and ties = width - the latter:
    a few dense float passes, several times cheaper than boolean masks and their counts
    (bench/eval.py, BENCHMARKS.md). The sign of a difference of two finite floats is the result of
    comparing them (IEEE 754 gradual underflow; only `torch.set_flush_denormal(True)` could turn a
    difference below 1e-38 into a tie). `seen` is a dense bool mask or its `(rows, columns)`.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must have shape (B, num_items + 1), got {tuple(scores.shape)}")
    batch, width = scores.shape
    if positive.shape != (batch,) or positive.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"positive must be integer item ids of shape ({batch},), got {positive.dtype} {tuple(positive.shape)}"
        )
    if isinstance(seen, Tensor):
        if seen.shape != scores.shape or seen.dtype != torch.bool:
            raise ValueError(
                f"seen_mask must be bool of shape {tuple(scores.shape)}, got {seen.dtype} {tuple(seen.shape)}"
            )
        seen_rows, seen_columns = seen.nonzero(as_tuple=True)
    else:
        seen_rows, seen_columns = seen
        if (
            seen_rows.ndim != 1
            or seen_rows.shape != seen_columns.shape
            or seen_rows.is_floating_point()
            or seen_columns.is_floating_point()
        ):
            raise ValueError(
                "seen index must be two 1-D integer tensors (rows, columns) of equal length, got shapes "
                f"{tuple(seen_rows.shape)} and {tuple(seen_columns.shape)}"
            )
        if seen_rows.numel() and not all(
            0 <= int(low) and int(high) < bound
            for (low, high), bound in ((torch.aminmax(seen_rows), batch), (torch.aminmax(seen_columns), width))
        ):
            raise ValueError(f"seen index must lie in rows 0..{batch - 1} and columns 0..{width - 1}")
    if batch and not 1 <= int((extremes := torch.aminmax(positive))[0]) <= int(extremes[1]) < width:
        raise ValueError(f"positive item ids must lie in 1..{width - 1} (0 is PAD)")

    rows = torch.arange(batch, device=scores.device)
    positive = positive.long()
    positive_score = scores[rows, positive].unsqueeze(1)
    # float32 at least: the sums of +-1 below are exact up to 2**24 columns
    work_dtype = torch.promote_types(scores.dtype, torch.float32)
    sign = scores.to(work_dtype) - positive_score.to(work_dtype)  # the one copy of the scores
    sign[:, 0] = -1.0  # PAD is never a candidate (and may hold anything, NaN included)
    flat = sign.view(-1)
    seen_flat = seen_rows.long() * width + seen_columns.long()
    # Models may mask items with -inf, so only NaN anywhere or a non-finite positive is an error.
    # `sign_` maps NaN to 0, a tie: rows with a tie are checked below; the seen items, overwritten
    # next, are checked here.
    nan_at_seen = torch.isnan(flat[seen_flat])
    flat.index_fill_(0, seen_flat, -1.0)  # a seen item is no competitor
    flat.index_fill_(0, rows * width + positive, -1.0)  # the positive is ranked, not a competitor, even if seen
    sign.sign_()
    above_minus_below = sign.sum(dim=1)
    above_plus_below = sign.abs_().sum(dim=1)
    ties = (width - above_plus_below).round().long()
    suspect = (ties > 0) | ~torch.isfinite(positive_score[:, 0])
    if bool(nan_at_seen.any()):
        suspect[seen_rows[nan_at_seen].long()] = True
    if bool(suspect.any()):  # rare with real-valued scores: confirm on those rows alone
        checked = suspect.nonzero()[:, 0]
        bad = torch.isnan(scores[checked, 1:]).any(dim=1) | ~torch.isfinite(positive_score[checked, 0])
        if bool(bad.any()):
            raise ValueError(
                f"scores has {int(bad.sum())} of {batch} rows with a NaN item score or a non-finite positive score, "
                f"first at row {int(checked[bad][0])}"
            )
    greater = ((above_minus_below + above_plus_below) / 2).round().long()
    return greater, ties


def seen_index_from_csr(users: Tensor, offsets: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
    """`(rows, columns)` of each user's items from a CSR (`items[offsets[u]:offsets[u+1]]`): row r lists
    the items of `users[r]`; the True entries of `seen_mask_from_csr`, without the dense mask."""
    if users.ndim != 1 or offsets.ndim != 1 or items.ndim != 1:
        raise ValueError(
            f"users, offsets and items must be 1-D, got shapes {tuple(users.shape)}, "
            f"{tuple(offsets.shape)}, {tuple(items.shape)}"
        )
    device = users.device
    users, offsets = users.long(), offsets.long().to(device)
    starts = offsets[users]
    lengths = offsets[users + 1] - starts
    ends = lengths.cumsum(0)
    total = int(ends[-1]) if users.numel() else 0
    rows = torch.repeat_interleave(lengths, output_size=total)
    # Entry e of the output belongs to row rows[e]; its position in `items` is that row's
    # start plus how far e lies past the row's first output entry (ends - lengths).
    positions = torch.arange(total, device=device) + (starts - (ends - lengths))[rows]
    return rows, items.to(device).long()[positions]


def seen_mask_from_csr(users: Tensor, offsets: Tensor, items: Tensor, num_items: int) -> Tensor:
    """Bool mask `(B, num_items + 1)` of each user's items from a CSR (`items[offsets[u]:offsets[u+1]]`)."""
    rows, columns = seen_index_from_csr(users, offsets, items)
    mask = torch.zeros(users.numel(), num_items + 1, dtype=torch.bool, device=rows.device)
    mask.index_put_((rows, columns), torch.ones((), dtype=torch.bool, device=rows.device))
    return mask

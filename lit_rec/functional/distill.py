"""DRL-Rec math: explore/filter candidate sets, list-wise KL, hint MSE and confidence (PAPERS.md section 2).

Shapes: `B` states, `C` candidates per state, `F` filtered items per state, `H` hint width.
Every loss here returns one value per instance `(B,)`, so confidence weights it before reduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "batch_max_confidence",
    "explore_candidates",
    "exp_confidence",
    "explore_and_filter",
    "filter_topk_union",
    "hint_mse",
    "listwise_kl",
    "running_mean_update",
    "weighted_mean",
]


# ----------------------------------------------------------------------------- exploring & filtering


def popularity_draws(counts: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """`n` item ids drawn with replacement in proportion to `counts (num_items + 1,)` (as `torch.multinomial`, but O(1) a draw).

    Integer counts up to 2^24 in total: a uniform index into the table where item i fills counts[i] slots
    (exact probabilities); otherwise inverse-CDF draws.
    """
    total = float(counts.sum())
    if total <= 2**24 and bool((counts == counts.round()).all()):
        table = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts.long())
        return table[torch.randint(0, table.numel(), (n,), generator=generator, device=generator.device)]
    cdf = counts.double().cumsum(0)
    draws = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, draws, right=True).clamp_max(counts.numel() - 1)


def explore_candidates(
    logged: Tensor,
    num_candidates: int,
    item_popularity: Tensor,
    generator: torch.Generator,
    popularity_fraction: float = 0.5,
) -> Tensor:
    """Candidate sets `(B, num_candidates)`: the logged items `(B, n)`, then popularity- and uniform-sampled items.

    Samples are drawn with replacement (duplicates are removed later by `filter_topk_union`);
    `item_popularity (num_items + 1,)` holds train counts with PAD (0) at index 0.
    """
    assert logged.dim() == 2, f"logged must be (B, n) item ids, got shape {tuple(logged.shape)}"
    b, n = logged.shape
    if num_candidates <= n:
        return logged[:, :num_candidates]
    extra = num_candidates - n
    n_pop = int(round(extra * popularity_fraction))
    num_items = item_popularity.numel() - 1
    weights = item_popularity.to(generator.device, torch.float64)
    if n_pop > 0 and weights.sum() > 0:
        popular = popularity_draws(weights, b * n_pop, generator).view(b, n_pop)
    else:  # no counts to follow: every sample is uniform
        popular, n_pop = torch.empty(b, 0, dtype=torch.long, device=generator.device), 0
    uniform = torch.randint(1, num_items + 1, (b, extra - n_pop), generator=generator, device=generator.device)
    sampled = torch.cat([popular, uniform], dim=1).to(logged.device)
    return torch.cat([logged, sampled], dim=1)


def filter_topk_union(candidates: Tensor, teacher_q: Tensor, student_q: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Columns `(B, 2k)` of the teacher's top-k then the student's top-k, and a mask `(B, 2k)` keeping each item once.

    De-duplication is by item id (a candidate set may hold an item twice): the columns are sorted
    by item id (stable, so the teacher's copy comes first) and a column is dropped when its item
    equals its sorted predecessor. `mask.sum(1)` is the filtered set's size, between k and 2k.
    """
    assert candidates.shape == teacher_q.shape == student_q.shape, (
        f"candidates {tuple(candidates.shape)}, teacher_q {tuple(teacher_q.shape)}, student_q {tuple(student_q.shape)} differ"
    )
    k = min(k, candidates.shape[1])
    columns = torch.cat([teacher_q.topk(k, dim=1).indices, student_q.topk(k, dim=1).indices], dim=1)
    items = candidates.gather(1, columns)
    sorted_items, order = items.sort(dim=1, stable=True)
    first = torch.ones_like(sorted_items, dtype=torch.bool)
    first[:, 1:] = sorted_items[:, 1:] != sorted_items[:, :-1]
    mask = torch.empty_like(first).scatter_(1, order, first)
    return columns, mask


# ----------------------------------------------------------------------------- distillation losses


def listwise_kl(teacher_q: Tensor, student_q: Tensor, temperature: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """`tau^2 * KL(softmax(Q_T / tau) || softmax(Q_S / tau))` per row `(B,)` over the columns where `mask` is true.

    The teacher side is detached. Rows need at least one unmasked column.
    """
    assert teacher_q.shape == student_q.shape, f"teacher_q {tuple(teacher_q.shape)} != student_q {tuple(student_q.shape)}"
    teacher, student = teacher_q.detach() / temperature, student_q / temperature
    if mask is not None:
        teacher = teacher.masked_fill(~mask, float("-inf"))
        student = student.masked_fill(~mask, float("-inf"))
    log_p = F.log_softmax(teacher, dim=1)
    log_q = F.log_softmax(student, dim=1)
    if mask is not None:  # masked columns have p = 0 and log p = log q = -inf: make their term 0, not NaN
        log_p, log_q = log_p.masked_fill(~mask, 0.0), log_q.masked_fill(~mask, 0.0)
    p = F.softmax(teacher, dim=1)
    return (p * (log_p - log_q)).sum(dim=1) * temperature**2


def hint_mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-instance hint loss `(B,)`: mean over the hint width of `(h_S - h_T)^2`, teacher detached.

    `student`/`teacher` are `(B, H)` or `(B, F, H)`; for the latter the per-item values are
    averaged over the items where `mask (B, F)` is true.
    """
    assert student.shape == teacher.shape, f"student hint {tuple(student.shape)} != teacher hint {tuple(teacher.shape)}"
    per_vector = (student - teacher.detach()).pow(2).mean(dim=-1)
    if per_vector.dim() == 1:
        return per_vector
    if mask is None:
        return per_vector.mean(dim=1)
    weights = mask.to(per_vector.dtype)
    return (per_vector * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def weighted_mean(values: Tensor, weights: Tensor | None = None) -> Tensor:
    """`mean_i w_i * v_i` of per-instance values `(B,)`: weights act before the reduction."""
    if weights is None:
        return values.mean()
    assert weights.shape == values.shape, f"weights {tuple(weights.shape)} != values {tuple(values.shape)}"
    return (weights.detach() * values).mean()


def explore_and_filter(
    logged: Tensor, teacher_q_all: Tensor, student_q_all: Tensor, num_candidates: int, item_popularity: Tensor,
    generator: torch.Generator, popularity_fraction: float, k: int,
) -> tuple[Tensor, Tensor]:
    """Lessons per state: `items (B, 2k)` (the teacher's top-k then the student's top-k of `num_candidates` explored
    candidates around `logged (B, n)`) and their de-duplication mask, from both networks' scores of every item
    `(B, num_items + 1)`."""
    candidates = explore_candidates(logged, num_candidates, item_popularity, generator, popularity_fraction)
    columns, mask = filter_topk_union(candidates, teacher_q_all.gather(1, candidates), student_q_all.gather(1, candidates), k)
    return candidates.gather(1, columns), mask


# ----------------------------------------------------------------------------- confidence


def batch_max_confidence(td_error: Tensor, min_confidence: float = 0.0, eps: float = 1e-6) -> Tensor:
    """Official DRL-Rec confidence `1 - delta / (max delta + eps)` of squared TD errors `(B,)`, clamped to [min, 1]."""
    delta = td_error.detach()
    return (1.0 - delta / (delta.max() + eps)).clamp(min_confidence, 1.0)


def exp_confidence(td_error: Tensor, sigma2: Tensor | float, min_confidence: float = 0.0, eps: float = 1e-12) -> Tensor:
    """Batch-independent confidence `exp(-delta / sigma^2)` `(B,)`, clamped to [min, 1]."""
    delta = td_error.detach()
    sigma2 = torch.as_tensor(sigma2, dtype=delta.dtype, device=delta.device)
    return torch.exp(-delta / sigma2.clamp_min(eps)).clamp(min_confidence, 1.0)


def running_mean_update(running: Tensor, value: Tensor, momentum: float, count: int) -> Tensor:
    """Exponential moving average; the first value (`count == 0`) initialises it."""
    if count == 0:
        return value.detach().clone()
    return momentum * running + (1.0 - momentum) * value.detach()

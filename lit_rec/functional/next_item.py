"""Next-item training on windows: every prefix's state against the whole catalogue (or a logQ-corrected sample).

A training window is a run of consecutive train items of one user: `history (B, L)` (left-padded)
followed by `item (B,)`. Position t's state has seen `history[:, :t+1]`; its logged next item is
`targets[:, t]`. Shapes: `scores (..., C)` over C columns for states `(...)` (every position of a
batch of windows `(B, L)`, or the positions that hold an item, flattened `(P,)`); `target (...)`
the logged item's column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SOFTMAX = ("full", "sampled")


def window_targets(history: Tensor, item: Tensor) -> tuple[Tensor, Tensor]:
    """`(targets (..., L), mask (..., L))`: the logged next item after every prefix, and the prefixes whose next item exists.

    `history (..., L)` is a window's items before its last `item (...)`. The prefix before a user's
    first item is empty (a PAD input): its target is the first item, so every train event is a target
    once and the empty-history state (a cold user's) is trained too.
    """
    assert history.dim() >= 1 and item.shape == history.shape[:-1], f"history (..., L) and item (...) expected, got {history.shape}, {item.shape}"
    targets = torch.cat([history[..., 1:], item.unsqueeze(-1)], dim=-1)
    return targets, targets > 0


@dataclass
class Columns:
    """Training scores of a batch of states: `scores (..., C)`, the logged item's column `target (...)`,
    the logQ correction `log_q` (broadcastable to scores; 0 for the full catalogue) and the columns that
    compete `valid` (broadcastable bool: a sample's accidental hits are out). Full catalogue: column j is
    item j + 1 (PAD has no column); sampled: column 0 is the logged item, then the shared negatives."""

    scores: Tensor
    target: Tensor
    log_q: Tensor | float
    valid: Tensor
    negatives: Tensor | None = None  # the sampled softmax's shared items `(M,)`; None: the full catalogue

    def logits(self) -> Tensor:
        """Softmax logits `(..., C)`: scores minus logQ, non-competing columns at -inf."""
        if self.negatives is None:
            return self.scores  # the full catalogue: no correction, every column competes
        return (self.scores - self.log_q).masked_fill(~self.valid, float("-inf"))

    def masked_scores(self) -> Tensor:
        """Raw scores with non-competing columns at -inf (for a max over actions)."""
        if self.negatives is None:
            return self.scores
        return self.scores.masked_fill(~self.valid, float("-inf"))


def full_catalogue(query: Tensor, item_table: Tensor, targets: Tensor) -> Columns:
    """Columns = every item (column j is item j + 1: PAD never competes) for head-transformed states `query (..., D)`."""
    scores = query @ item_table[1:].T
    # a PAD target (a position the caller masks out) reads column 0
    return Columns(scores, (targets - 1).clamp_min(0), 0.0, torch.ones((), dtype=torch.bool, device=scores.device))


def sampled_catalogue(query: Tensor, item_table: Tensor, targets: Tensor, negatives: Tensor, log_q_items: Tensor) -> Columns:
    """Columns = the logged item, then `negatives (M,)` shared by the batch (sampled softmax, Jean et al. 2015),
    with logQ correction (Yi et al. 2019) from `log_q_items (num_items + 1,)`; a negative equal to the logged item does not compete.

    `query (..., D)` are the head-transformed states, `item_table (num_items + 1, D)` the item vectors.
    """
    positive = (query * item_table[targets]).sum(-1, keepdim=True)
    scores = torch.cat([positive, query @ item_table[negatives].T], dim=-1)
    column_items = torch.cat([targets.unsqueeze(-1), negatives.expand(*targets.shape, -1)], dim=-1)
    valid = column_items != targets.unsqueeze(-1)
    valid[..., 0] = True
    return Columns(scores, torch.zeros_like(targets), log_q_items[column_items], valid, negatives)


def score_columns(query: Tensor, item_table: Tensor, targets: Tensor, columns: Columns) -> Tensor:
    """Scores `(..., C)` of another network's `query (..., D)` and `item_table` on the same columns as `columns`."""
    if columns.negatives is None:
        return query @ item_table[1:].T
    positive = (query * item_table[targets]).sum(-1, keepdim=True)
    return torch.cat([positive, query @ item_table[columns.negatives].T], dim=-1)


def cross_entropy(columns: Columns) -> Tensor:
    """Softmax cross-entropy of the logged item for every state `(...)` (masking is the caller's)."""
    logits = columns.logits()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), columns.target.reshape(-1), reduction="none").view(columns.target.shape)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over the positions where `mask` holds (0 when none does).

    Positions outside the mask may hold inf (a PAD target's cross-entropy): they are selected out, not multiplied by 0.
    """
    mask = mask.bool()
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1).to(values.dtype)


def greedy_hits(scores: Tensor, target: Tensor, rivals: Tensor) -> Tensor:
    """Whether the logged column outscores every rival column `(...)`: `rivals (..., K)` columns (the logged one among them is ignored)."""
    logged = scores.gather(-1, target.unsqueeze(-1))
    others = scores.gather(-1, rivals).masked_fill(rivals == target.unsqueeze(-1), float("-inf"))
    return (others < logged).all(-1)


def random_rivals(columns: Columns, count: int, generator: torch.Generator) -> Tensor:
    """`count` uniformly drawn columns per state `(..., count)` (a draw of the logged column is ignored by `greedy_hits`)."""
    drawn = torch.randint(0, columns.scores.shape[-1], (*columns.scores.shape[:-1], count), generator=generator, device=generator.device)
    return drawn.to(columns.scores.device)


class TrainingSoftmax:
    """Which columns a training step scores: the `full` catalogue (default) or a `sampled` softmax with logQ correction.

    The sample is `sampled_negatives` items per batch drawn from the train items' popularity (smoothed by
    one count), so its logQ correction removes the sampler's popularity bias.
    """

    def __init__(self, softmax: str = "full", sampled_negatives: int = 1024) -> None:
        if softmax not in SOFTMAX:
            raise ValueError(f"softmax must be one of {SOFTMAX}, got {softmax!r}")
        if softmax == "sampled" and sampled_negatives < 1:
            raise ValueError(f"sampled_negatives must be >= 1 with softmax 'sampled', got {sampled_negatives}")
        self.softmax, self.sampled_negatives = softmax, sampled_negatives
        self.sampling_probability: Tensor | None = None

    def fit(self, item_popularity: Tensor) -> None:
        """Sets the sampling distribution from train counts `(num_items + 1,)` (PAD never drawn)."""
        counts = item_popularity.double() + 1.0
        counts[0] = 0.0
        self.sampling_probability = (counts / counts.sum()).float()

    def negatives(self, generator: torch.Generator) -> Tensor:
        """`sampled_negatives` items `(M,)` drawn from the train popularity (with replacement)."""
        assert self.sampling_probability is not None, "TrainingSoftmax.fit(item_popularity) comes first"
        probability = self.sampling_probability.to(generator.device)
        return torch.multinomial(probability, self.sampled_negatives, replacement=True, generator=generator)

    def log_q(self, device: torch.device) -> Tensor:
        """The logQ correction of every item id `(num_items + 1,)`: log of its expected draws in a sample."""
        assert self.sampling_probability is not None, "TrainingSoftmax.fit(item_popularity) comes first"
        return torch.log(self.sampling_probability.to(device).clamp_min(1e-12) * self.sampled_negatives)

    def columns(self, query: Tensor, item_table: Tensor, targets: Tensor, generator: torch.Generator) -> Columns:
        """Training columns of head-transformed states `query (..., D)` for the logged `targets (...)`."""
        if self.softmax == "full":
            return full_catalogue(query, item_table, targets)
        return sampled_catalogue(query, item_table, targets, self.negatives(generator).to(query.device), self.log_q(query.device))

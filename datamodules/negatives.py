"""Frozen negatives: k items per event, uniform without replacement over the items its user never touched."""

from __future__ import annotations

import math

import torch

_DRAWS_PER_CHUNK = 1 << 22  # random keys per chunk of events (bounds memory: 32 MiB of float64)


def csr_rows(offsets: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For CSR `offsets` and selected `rows`: (position in `rows`, index into the CSR values) of every entry."""
    counts = offsets[rows + 1] - offsets[rows]
    owner = torch.repeat_interleave(torch.arange(rows.numel()), counts)
    first = torch.cumsum(counts, 0) - counts
    within = torch.arange(int(counts.sum())) - first[owner]
    return owner, offsets[rows][owner] + within


def sample_unseen(
    users: torch.Tensor,
    excluded_offsets: torch.Tensor,
    excluded_items: torch.Tensor,
    num_items: int,
    k: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """`(E, k)` items in 1..num_items, none excluded for `users[e]`, in random order (so any prefix is uniform too).

    `excluded_items[excluded_offsets[u]:excluded_offsets[u+1]]` are user u's items. Events go in
    chunks with a dense excluded mask. When items are many, a chunk first tries rejection
    sampling (about k draws per event instead of num_items random keys; a scatter-min finds each
    item's first draw); rows that come out short, and every row when items are few, take random
    keys over all items with the excluded ones at +inf, then top-k. Both are exactly uniform (the order is random too), and the result
    depends only on the inputs and the generator's seed.
    """
    counts = excluded_offsets[1:] - excluded_offsets[:-1]
    out = torch.empty(users.numel(), k, dtype=torch.long)
    rows_per_chunk = max(1, _DRAWS_PER_CHUNK // (num_items + 1))
    scratch: dict[torch.dtype, torch.Tensor] = {}  # the rejection's (rows, num_items + 1) table, reused by every chunk
    for start in range(0, users.numel(), rows_per_chunk):
        chunk = users[start : start + rows_per_chunk]
        draws = _draws_needed(int(counts[chunk].max()), num_items, k)
        out[start : start + chunk.numel()] = _sample_chunk(
            chunk, excluded_offsets, excluded_items, num_items, k, draws, generator, scratch
        )
    return out


def _draws_needed(most_excluded: int, num_items: int, k: int) -> int:
    """Draws with replacement that likely give k acceptable distinct items; 0 when random keys are cheaper."""
    distinct = k * num_items / max(num_items - most_excluded, 1)
    if distinct >= 0.8 * num_items:
        return 0
    draws = math.ceil(-num_items * math.log1p(-distinct / num_items) * 1.25) + 16
    return draws if 4 * draws <= num_items else 0


def _sample_chunk(
    users: torch.Tensor,
    offsets: torch.Tensor,
    items: torch.Tensor,
    num_items: int,
    k: int,
    draws: int,
    generator: torch.Generator,
    scratch: dict[torch.dtype, torch.Tensor],
) -> torch.Tensor:
    excluded, inverse = _excluded_table(users, offsets, items, num_items)
    out = torch.empty(users.numel(), k, dtype=torch.long)
    short = torch.ones(users.numel(), dtype=torch.bool)
    if draws:
        sample, ok = _rejection(excluded, inverse, k, draws, generator, scratch)
        out[ok], short = sample, ~ok
    if short.any():
        out[short] = _masked_topk(excluded[inverse[short]], k, generator)
    return out


def _excluded_table(
    users: torch.Tensor, offsets: torch.Tensor, items: torch.Tensor, num_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(distinct users, num_items + 1)` bool (PAD and the user's items) and each row's line in it."""
    distinct, inverse = torch.unique(users, return_inverse=True)
    table = torch.zeros(distinct.numel(), num_items + 1, dtype=torch.bool)
    owner, index = csr_rows(offsets, distinct)
    table[owner, items[index]] = True
    table[:, 0] = True
    return table, inverse


def _rejection(
    excluded: torch.Tensor,
    inverse: torch.Tensor,
    k: int,
    draws: int,
    generator: torch.Generator,
    scratch: dict[torch.dtype, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """For the rows that got k: the first k distinct non-excluded of `draws` uniform draws; and which rows did.

    Row r's user is line `inverse[r]` of `excluded`. A draw counts if it is the first of its row to hit
    its item (a scatter-min of the draw steps into a (rows, items) table, no sort) and the item is not
    excluded. Only the cells drawn are reset and read, so the table is allocated once per call.
    """
    rows, width = inverse.numel(), excluded.shape[1]
    drawn = torch.randint(1, width, (rows, draws), generator=generator)
    dtype = torch.int16 if draws < torch.iinfo(torch.int16).max else torch.int32
    table = scratch.get(dtype)
    if table is None or table.shape[0] < rows or table.shape[1] != width:
        table = scratch[dtype] = torch.empty(rows, width, dtype=dtype)
    first_step = table[:rows]
    steps = torch.arange(draws, dtype=dtype).expand(rows, draws)
    first_step.scatter_(1, drawn, torch.tensor(draws, dtype=dtype).expand(rows, draws))
    first_step.scatter_reduce_(1, drawn, steps, "amin")
    valid = (first_step.gather(1, drawn) == steps) & ~excluded[inverse[:, None], drawn]
    ok = valid.sum(dim=1) >= k
    take = valid & (valid.cumsum(dim=1) <= k) & ok[:, None]
    return drawn.masked_select(take).view(-1, k), ok


def _masked_topk(excluded: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Random keys over all items, excluded ones (and PAD) set to +inf, the k smallest in key order."""
    random_keys = torch.rand(excluded.shape, generator=generator, dtype=torch.float64)
    random_keys[excluded] = math.inf
    return random_keys.topk(k, dim=1, largest=False, sorted=True).indices


_SPARSE_ROWS = 1 << 13  # events per chunk of the sparse sampler


def sample_unseen_sparse(
    users: torch.Tensor,
    excluded_offsets: torch.Tensor,
    excluded_items: torch.Tensor,
    num_items: int,
    k: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """`sample_unseen`'s distribution without a dense `(rows, num_items)` table: for large catalogues.

    Each row draws uniformly with replacement; a draw counts if it is its row's first of that item and
    the item is not excluded (a binary search in the sorted `user * (num_items + 1) + item` keys); the
    first k that count are the row's negatives (uniform without replacement, in random order). A row
    short of k draws again with twice the draws; rows still short after draws exceed num_items take
    `sample_unseen`'s random keys. Cost follows the events and k, not num_items (the dense sampler's
    tables are rows x num_items: 546k items made 2 x 100k events 13 s). Used for sampled splits only,
    so the exact evaluation of small logs keeps `sample_unseen`'s draws bit for bit.
    """
    counts = excluded_offsets[1:] - excluded_offsets[:-1]
    owner = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    keys = owner * (num_items + 1) + excluded_items  # sorted: users ascending, items ascending within a user
    out = torch.empty(users.numel(), k, dtype=torch.long)
    for start in range(0, users.numel(), _SPARSE_ROWS):
        chunk = users[start : start + _SPARSE_ROWS]
        pending, draws = torch.arange(chunk.numel()), k + k // 4 + 16
        while pending.numel() and draws <= num_items:
            sample, ok = _sparse_draws(chunk[pending], keys, num_items, k, draws, generator)
            out[start + pending[ok]] = sample
            pending, draws = pending[~ok], draws * 2
        if pending.numel():
            excluded, inverse = _excluded_table(chunk[pending], excluded_offsets, excluded_items, num_items)
            out[start + pending] = _masked_topk(excluded[inverse], k, generator)
    return out


def _sparse_draws(
    users: torch.Tensor, keys: torch.Tensor, num_items: int, k: int, draws: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """For the rows whose `draws` uniform draws hold k first-of-their-item unexcluded items: those k; and which rows."""
    drawn = torch.randint(1, num_items + 1, (users.numel(), draws), generator=generator)
    ordered, order = torch.sort(drawn, dim=1, stable=True)  # equal items adjacent, in draw order
    first_sorted = torch.ones_like(ordered, dtype=torch.bool)
    first_sorted[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = torch.empty_like(first_sorted).scatter_(1, order, first_sorted)
    wanted = users[:, None] * (num_items + 1) + drawn
    found = torch.searchsorted(keys, wanted).clamp_(max=max(keys.numel() - 1, 0))
    excluded = keys[found] == wanted if keys.numel() else torch.zeros_like(first)
    valid = first & ~excluded
    ok = valid.sum(dim=1) >= k
    take = valid & (valid.cumsum(dim=1) <= k) & ok[:, None]
    return drawn.masked_select(take).view(-1, k), ok

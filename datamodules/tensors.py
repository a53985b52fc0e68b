"""The tensor contract of docs/ARCHITECTURE.md, built once from the pipeline's frames."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
from torch import Tensor

from datamodules.pipeline import TEST, TRAIN, VAL, Prepared, single_threaded

PAD = 0


@dataclass
class Histories:
    """States `(E, L)` gathered on demand: row e is `sequence[end[e] - L : end[e]]`, positions before `start[e]` PAD.

    Stands in for a stored `(E, L)` table (index it, `shape`, `to`): a batch gathers its rows from the
    events' item sequence, so the train histories cost two indices per event, not L items (at 100M
    logged rows the stored table was 1 GB and 7 s of the data's set-up)."""

    sequence: torch.Tensor  # (N,) every event's item, grouped by user, chronological
    end: torch.Tensor  # (E,) the row's event: its state is the items before it
    start: torch.Tensor  # (E,) its user's first event
    length: int

    @property
    def shape(self) -> torch.Size:
        """`(E, L)`."""
        return torch.Size((self.end.numel(), self.length))

    @property
    def device(self) -> torch.device:
        """Where the gathered rows are made."""
        return self.end.device

    def __len__(self) -> int:
        return self.end.numel()

    def __getitem__(self, index: torch.Tensor | slice | int) -> torch.Tensor:
        """The states of rows `index` (any shape `S`), as `(*S, L)` int64."""
        end, start = self.end[index], self.start[index]
        rows = histories(self.sequence, end.reshape(-1), start.reshape(-1), self.length)
        return rows.view(*end.shape, self.length)

    def to(self, device: torch.device | str) -> Histories:
        """The same rows, gathered on `device`."""
        return Histories(self.sequence.to(device), self.end.to(device), self.start.to(device), self.length)


@dataclass
class EventTensors:
    """Train events: `user (E,)`, `history (E, L)` (previous L items, left-padded, most recent last), `item (E,)`.

    `history` is a `Histories` (rows gathered when indexed) from the pipeline, or any `(E, L)` tensor."""

    user: torch.Tensor
    history: torch.Tensor | Histories
    item: torch.Tensor

    def __len__(self) -> int:
        return self.user.numel()


@dataclass
class EvalTensors:
    """Held-out events: `user (E,)`, `history (E, L)`, `positive (E,)`, frozen `negatives (E, K_max)`.

    `negatives` may be a narrow integer view of the memory-mapped cache (batches gather from it; torch
    promotes to int64 where it meets the positive). `population` is the split's size when the events are
    the seeded evaluation sample (`eval_max_events`), else None: all events.
    """

    user: torch.Tensor
    history: torch.Tensor
    positive: torch.Tensor
    negatives: torch.Tensor
    population: int | None = None

    def __len__(self) -> int:
        return self.user.numel()

    @property
    def candidates(self) -> torch.Tensor:
        """`(E, 1 + K_max)`: the positive in column 0, then the negatives."""
        return torch.cat([self.positive[:, None], self.negatives.long()], dim=1)

    @property
    def split_size(self) -> int:
        """Events of the whole split (more than `len(self)` when this is a sample)."""
        return len(self) if self.population is None else self.population


@dataclass
class RecTensors:
    """Everything the models and loaders read (see docs/ARCHITECTURE.md, "Tensor contract")."""

    num_users: int
    num_items: int
    history_len: int
    item_popularity: torch.Tensor
    train: EventTensors
    val: EvalTensors
    test: EvalTensors
    train_offsets: torch.Tensor
    train_sequence: torch.Tensor
    seen_offsets: torch.Tensor
    seen_items: torch.Tensor
    item_ids: list[str]
    user_ids: list[str]
    dropped: dict[str, int] = field(default_factory=dict)
    all_offsets: torch.Tensor | None = None  # CSR of every split, chronological (for predict histories)
    all_sequence: torch.Tensor | None = None

    def last_items(self, users: torch.Tensor) -> torch.Tensor:
        """`(B, L)`: each user's last L items over all splits (the state after their whole log)."""
        assert self.all_offsets is not None and self.all_sequence is not None
        return histories(self.all_sequence, self.all_offsets[users + 1], self.all_offsets[users], self.history_len)


def _column(frame: pl.DataFrame, name: str) -> torch.Tensor:
    """A writable int64 tensor of a column (Polars' numpy views are read-only)."""
    return frame[name].cast(pl.Int64).to_torch().clone()


def csr_offsets(keys: torch.Tensor, size: int) -> torch.Tensor:
    """`(size+1,)` offsets of a CSR whose rows are the sorted `keys`."""
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(torch.bincount(keys, minlength=size), 0)])


def histories(sequence: torch.Tensor, end: torch.Tensor, start: torch.Tensor, length: int) -> torch.Tensor:
    """`(E, L)`: `sequence[end-L:end]` per row, positions before `start` (another user) set to PAD."""
    index = end[:, None] - length + torch.arange(length, device=end.device)[None, :]
    if not sequence.numel():
        return torch.full_like(index, PAD)
    before = index < start[:, None]
    return sequence[index.clamp_min_(0)].long().masked_fill_(before, PAD)  # in place: 1.5x faster than a where


def _sorted(keys: Tensor) -> Tensor:
    """`keys (N,)` int64 in ascending order (Polars' parallel sort: 2x torch's on a large log)."""
    return torch.from_numpy(pl.Series(keys.numpy()).sort().to_numpy().copy()) if keys.numel() else keys


def window_anchors(user: torch.Tensor, length: int) -> torch.Tensor:
    """Indices of the train events that end a training window: each user's last event, then every `length`-th before it.

    `user (E,)` is sorted (the train events grouped by user, chronological). The window of an anchor
    `e` is its history `history[e]` (the `length` items before it) followed by `item[e]`: its causal
    outputs predict the window's `length` items, so over all anchors every train event is a target once.
    """
    if not user.numel():
        return torch.zeros(0, dtype=torch.long)
    offsets = csr_offsets(user, int(user.max()) + 1)
    from_end = offsets[user + 1] - 1 - torch.arange(user.numel())
    return torch.nonzero(from_end % length == 0).squeeze(1)


def _eval_tensors(
    user: Tensor, history: Histories, item: Tensor, in_split: Tensor, negatives: Tensor, rows: np.ndarray | None
) -> EvalTensors:
    """One held-out split's `EvalTensors`, only its sampled `rows` (in event order) when given; histories stored."""
    index = torch.nonzero(in_split).squeeze(1)
    if rows is None:
        return EvalTensors(user[index], history[index], item[index], negatives)
    population = index.numel()
    index = index[torch.from_numpy(rows)]
    return EvalTensors(user[index], history[index], item[index], negatives, population=population)


def build_tensors(prepared: Prepared, history_len: int) -> RecTensors:
    """Builds `RecTensors`; histories are one gather on the all-splits CSR (events sorted by user, pos)."""
    with single_threaded():
        return _build_tensors(prepared, history_len)


def _build_tensors(prepared: Prepared, history_len: int) -> RecTensors:
    events = prepared.events  # sorted by (user, pos)
    user, item, split, pos = (_column(events, c) for c in ("user", "item", "split", "pos"))
    mapped = prepared.mapped.get("item")  # the cache's item column: states are gathered from the map itself
    return tensors_from_events(
        user, item, split, pos, prepared.negatives, history_len,
        item_ids=["<PAD>", *prepared.item_ids.to_list()], user_ids=prepared.user_ids.to_list(), dropped=dict(prepared.dropped),
        eval_rows=prepared.eval_rows, sequence=torch.from_numpy(mapped) if mapped is not None else None,
    )


def tensors_from_events(
    user: Tensor, item: Tensor, split: Tensor, pos: Tensor, negatives: dict[int, Tensor], history_len: int,
    item_ids: list[str], user_ids: list[str], dropped: dict[str, int],
    eval_rows: dict[int, np.ndarray | None] | None = None,
    sequence: Tensor | None = None,
) -> RecTensors:
    """`RecTensors` from the encoded events `(E,)` sorted by (user, pos) and each eval split's frozen negatives
    (for the rows `eval_rows[split]` of the split when it is sampled); `sequence`: `item` in any integer dtype
    (a memory-mapped column), what the train states are gathered from."""
    num_users, num_items = len(user_ids), len(item_ids) - 1
    offsets = csr_offsets(user, num_users)
    index = torch.arange(user.numel())
    history = Histories(item if sequence is None else sequence, index, index - pos, history_len)  # gathered when indexed

    train_rows = torch.nonzero(split == TRAIN).squeeze(1)
    train = EventTensors(user[train_rows], Histories(history.sequence, train_rows, history.start[train_rows], history_len), item[train_rows])
    val, test = (_eval_tensors(user, history, item, split == code, negatives[code], (eval_rows or {}).get(code))
                 for code in (VAL, TEST))

    seen = _sorted(user * (num_items + 1) + item)  # (user, item) pairs, items ascending per user
    return RecTensors(
        num_users=num_users,
        num_items=num_items,
        history_len=history_len,
        item_popularity=torch.bincount(train.item, minlength=num_items + 1),
        train=train,
        val=val,
        test=test,
        train_offsets=csr_offsets(train.user, num_users),
        train_sequence=train.item.clone(),
        seen_offsets=offsets,
        seen_items=seen % (num_items + 1),
        item_ids=item_ids,
        user_ids=user_ids,
        dropped=dropped,
        all_offsets=offsets,
        all_sequence=item,
    )

"""Batch iterables over RecTensors: one gather per batch, DDP sharding by hand, resumable training order.

They are plain iterables rather than DataLoaders on purpose: Lightning then neither injects
a padding DistributedSampler nor re-instantiates them, and a batch is one tensor gather
(~1 ms) instead of per-row __getitem__ + collate (PITFALLS.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from datamodules.tensors import EvalTensors, EventTensors, RecTensors

Batch = dict[str, torch.Tensor]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders epoch `epoch` (the same in every process and on resume)."""
    return torch.Generator().manual_seed(seed * 100003 + epoch)


def rank_slice(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous part `[lo, hi)` of `[start, stop)` that rank `rank` of `world_size` takes."""
    size = stop - start
    return start + rank * size // world_size, start + (rank + 1) * size // world_size


class ResumableLoader:
    """Shuffled train batches `{"user", "history", "item", "index"}` whose position survives a checkpoint.

    With `rows` (e.g. `window_anchors`), only those train events are served (`index` is still the
    event's index in `events`): a batch of window anchors is a batch of training sequences.

    Each fresh `iter()` runs one epoch; epoch e is ordered by `randperm` from `epoch_generator(seed, e)`.
    Every rank sees the same global batches of `batch_size` events and takes its contiguous
    slice `[r*b/w, (r+1)*b/w)` of each, so ranks get equally many batches (a final global batch
    smaller than the world size is skipped, so that no rank gets an empty one).

    Resume: `state_dict()` is `{"epoch": e, "consumed": c}`, the batches of epoch e that the
    training loop has finished; after `load_state_dict()` the next `iter()` starts epoch e at
    batch c (epoch e + 1 at batch 0 when c is the epoch's length) and later `iter()`s advance
    the epoch. The loader counts the batches it has yielded; `lookahead` is how many of those
    the consumer holds unprocessed when it checkpoints. Lightning 2.6's fit loop prefetches one
    batch ahead only for iterables without a length; this loader has `__len__`, so Lightning
    fetches exactly one batch per step and a checkpoint taken in `on_train_batch_end` of batch
    n has seen n + 1 yielded: `lookahead=0`, the default (verified end to end in
    tests/datamodules/test_loaders.py). A consumer that prefetches one batch uses
    `lookahead=1`: then n + 2 were yielded unless the epoch was exhausted, and c = yielded - 1.
    """

    def __init__(
        self,
        events: EventTensors,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        lookahead: int = 0,
        rows: torch.Tensor | None = None,
    ) -> None:
        self.events, self.batch_size, self.seed = events, batch_size, seed
        self.rows = rows
        self.rank, self.world_size, self.lookahead = rank, world_size, lookahead
        self._next_epoch, self._next_start = 0, 0  # where the next fresh iteration starts
        self._epoch: int | None = None  # the epoch being (or last) iterated
        self._yielded = 0  # batches of `_epoch` handed out, counting those skipped on resume
        self._exhausted = False

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        total = self._total()
        batches = -(-total // self.batch_size)
        if batches and total - (batches - 1) * self.batch_size < self.world_size:
            batches -= 1
        return batches

    def __iter__(self) -> Iterator[Batch]:
        # a generator: the bookkeeping runs on the first next(), so Lightning's probing iter() is harmless
        epoch, start = self._next_epoch, self._next_start
        self._epoch, self._yielded, self._exhausted = epoch, start, False
        self._next_epoch, self._next_start = epoch + 1, 0
        total = self._total()
        order = torch.randperm(total, generator=epoch_generator(self.seed, epoch))
        if self.rows is not None:
            order = self.rows[order]
        for batch in range(start, len(self)):
            first, last = batch * self.batch_size, min((batch + 1) * self.batch_size, total)
            lo, hi = rank_slice(first, last, self.rank, self.world_size)
            index = order[lo:hi]
            self._yielded = batch + 1
            yield {
                "user": self.events.user[index],
                "history": self.events.history[index],
                "item": self.events.item[index],
                "index": index,
            }
        self._exhausted = True

    def _total(self) -> int:
        return len(self.events) if self.rows is None else self.rows.numel()

    def state_dict(self) -> dict[str, int]:
        """`{"epoch", "consumed"}`: batches of that epoch the training step has finished (see class doc)."""
        if self._epoch is None:
            return {"epoch": self._next_epoch, "consumed": self._next_start}
        consumed = self._yielded if self._exhausted else max(self._yielded - self.lookahead, 0)
        return {"epoch": self._epoch, "consumed": consumed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Makes the next `iter()` continue after the checkpointed batch."""
        epoch, consumed = int(state_dict["epoch"]), int(state_dict["consumed"])
        if consumed >= len(self):
            epoch, consumed = epoch + 1, 0
        self._next_epoch, self._next_start = epoch, consumed
        self._epoch, self._yielded, self._exhausted = None, 0, False


class EvalLoader:
    """Val/test batches `{"user", "history", "candidates" (B, 1+K), "index"}`: an unpadded shard per rank.

    Rank r takes events `[r*E/w, (r+1)*E/w)` in order, so under DDP every event is evaluated
    exactly once (ranks may differ by one batch); `index` is the event's index in its split.
    """

    def __init__(self, events: EvalTensors, batch_size: int, rank: int = 0, world_size: int = 1):
        self.events, self.batch_size = events, batch_size
        self.start, self.stop = rank_slice(0, len(events), rank, world_size)

    def __len__(self) -> int:
        """Batches of this rank."""
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for lo in range(self.start, self.stop, self.batch_size):
            index = torch.arange(lo, min(lo + self.batch_size, self.stop))
            yield {
                "user": self.events.user[index],
                "history": self.events.history[index],
                "candidates": torch.cat([self.events.positive[index, None], self.events.negatives[index]], dim=1),
                "index": index,
            }


class PredictLoader:
    """Predict batches `{"user", "history"}`: one row per user, the last L items of all splits, sharded by rank."""

    def __init__(self, tensors: RecTensors, batch_size: int, rank: int = 0, world_size: int = 1):
        self.tensors, self.batch_size = tensors, batch_size
        self.start, self.stop = rank_slice(0, tensors.num_users, rank, world_size)

    def __len__(self) -> int:
        """Batches of this rank."""
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for lo in range(self.start, self.stop, self.batch_size):
            users = torch.arange(lo, min(lo + self.batch_size, self.stop))
            yield {"user": users, "history": self.tensors.last_items(users)}

"""ReplayBuffer: a preallocated ring buffer of transitions whose content goes into checkpoints."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

FIELDS = ("history", "candidates", "action", "reward", "next_history", "next_candidates", "done")


class ReplayBuffer:
    """Fixed-capacity ring buffer of `(s, C, a, r, s', C', done)` transitions held in device tensors.

    A state is a history `(L,)` of item ids and its candidate items `(C,)`; the action is a
    column of the candidates. When full, new transitions overwrite the oldest ones.
    """

    def __init__(self, capacity: int, history_len: int, num_candidates: int, device: torch.device | str = "cpu") -> None:
        """Allocates `capacity` transitions with histories of `history_len` and `num_candidates` candidates."""
        if capacity < 1:
            raise ValueError(f"ReplayBuffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.device = torch.device(device)
        long = dict(dtype=torch.long, device=self.device)
        self.storage: dict[str, Tensor] = {
            "history": torch.zeros(capacity, history_len, **long),
            "candidates": torch.zeros(capacity, num_candidates, **long),
            "action": torch.zeros(capacity, **long),
            "reward": torch.zeros(capacity, dtype=torch.float32, device=self.device),
            "next_history": torch.zeros(capacity, history_len, **long),
            "next_candidates": torch.zeros(capacity, num_candidates, **long),
            "done": torch.zeros(capacity, dtype=torch.bool, device=self.device),
        }
        self.position = 0  # next row to write
        self.size = 0  # rows filled

    def __len__(self) -> int:
        return self.size

    def add(self, batch: dict[str, Tensor]) -> None:
        """Appends a batch of `n` transitions (keys `FIELDS`, leading dim `n`), wrapping around at capacity."""
        n = batch["action"].shape[0]
        missing = set(FIELDS) - set(batch)
        if missing:
            raise KeyError(f"ReplayBuffer.add: batch lacks {sorted(missing)}")
        start = 0
        if n > self.capacity:  # only the newest `capacity` rows survive
            start, self.position = n - self.capacity, (self.position + n - self.capacity) % self.capacity
        rows = (self.position + torch.arange(n - start, device=self.device)) % self.capacity
        for name in FIELDS:
            self.storage[name][rows] = batch[name][start:].to(self.device, self.storage[name].dtype)
        self.position = (self.position + n - start) % self.capacity
        self.size = min(self.size + n - start, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """Draws `batch_size` stored transitions uniformly with replacement (indices from `generator`)."""
        if self.size == 0:
            raise RuntimeError("ReplayBuffer.sample: the buffer is empty")
        index = torch.randint(0, self.size, (batch_size,), generator=generator, device=generator.device)
        index = index.to(self.device)
        return {name: value[index] for name, value in self.storage.items()}

    def to(self, device: torch.device | str) -> "ReplayBuffer":
        """Moves the storage to `device` (in place) and returns self."""
        self.device = torch.device(device)
        self.storage = {name: value.to(self.device) for name, value in self.storage.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        """The filled rows and the write position (the content is part of an exact resume)."""
        return {
            "position": self.position,
            "size": self.size,
            "capacity": self.capacity,
            "storage": {name: value[: self.size].cpu().clone() for name, value in self.storage.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned into the preallocated storage."""
        if state["capacity"] != self.capacity:
            raise ValueError(f"ReplayBuffer: checkpoint capacity {state['capacity']} != buffer capacity {self.capacity}")
        size = state["size"]
        for name, value in state["storage"].items():
            if value.shape[1:] != self.storage[name].shape[1:]:
                raise ValueError(f"ReplayBuffer: checkpoint {name} rows {tuple(value.shape[1:])} != {tuple(self.storage[name].shape[1:])}")
            self.storage[name][:size] = value.to(self.device)
        self.position, self.size = state["position"], size

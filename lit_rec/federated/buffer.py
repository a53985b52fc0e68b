"""VersionBuffer: the last few versions of the global parameters, as flat vectors in a ring."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class VersionBuffer:
    """Ring buffer of the last `capacity` flat parameter vectors, addressed by version number.

    Version v lives in row `v % capacity`; memory is `capacity x num_params`, whatever the number
    of clients. Versions count from 0; `latest` is -1 while the buffer is empty.
    """

    def __init__(self, capacity: int, num_params: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        """Settings (each a config key).

        Args:
            capacity: versions kept (max_staleness + 1).
            num_params: length of a flat parameter vector.
            dtype: storage type of the versions.
            device: where the versions live.
        """
        if capacity < 1:
            raise ValueError(f"VersionBuffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.rows = torch.zeros(capacity, num_params, dtype=dtype, device=device)
        self.latest = -1

    @property
    def oldest(self) -> int:
        """The oldest version still stored (-1 when empty)."""
        return max(0, self.latest - self.capacity + 1) if self.latest >= 0 else -1

    def __contains__(self, version: int) -> bool:
        """Whether `version` is still stored."""
        return self.oldest <= version <= self.latest and self.latest >= 0

    def push(self, flat: Tensor) -> int:
        """Stores `flat (P,)` as the next version (overwriting the oldest when full); returns its number."""
        assert flat.shape == self.rows.shape[1:], f"flat parameters {tuple(flat.shape)} != buffer rows {tuple(self.rows.shape[1:])}"
        self.latest += 1
        self.rows[self.latest % self.capacity].copy_(flat)
        return self.latest

    def get(self, version: int) -> Tensor:
        """The stored vector `(P,)` of `version`; KeyError if it has left the buffer."""
        if version not in self:
            raise KeyError(f"version {version} is not stored (buffer holds {self.oldest}..{self.latest})")
        return self.rows[version % self.capacity]

    def get_many(self, versions: Tensor) -> Tensor:
        """The stored vectors `(n, P)` of `versions (n,)` (a gather, not n copies made one by one); KeyError if any left the buffer."""
        if versions.numel() and (int(versions.min()) < self.oldest or int(versions.max()) > self.latest or self.latest < 0):
            raise KeyError(f"versions {versions.tolist()} are not all stored (buffer holds {self.oldest}..{self.latest})")
        return self.rows[versions.to(self.rows.device) % self.capacity]

    def state_dict(self) -> dict[str, Any]:
        """The stored rows and the latest version number."""
        return {"rows": self.rows.clone(), "latest": self.latest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        if state["rows"].shape != self.rows.shape:
            raise ValueError(f"VersionBuffer: checkpoint rows {tuple(state['rows'].shape)} != {tuple(self.rows.shape)}")
        self.rows.copy_(state["rows"])
        self.latest = int(state["latest"])

"""Clients: every simulated device's small state, vectorised over devices."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Clients:
    """One client per user: its own train events, the version it downloaded, and its private parameters.

    Client u's events are `offsets[u]:offsets[u+1]` of the train CSR (chronological); `cursor[u]`
    is how far its device has replayed them (it starts over after the end). With `private_dim > 0`
    each client keeps a private user vector, stored as one `(num_clients, private_dim)` tensor on
    the client side; it is updated locally and is never part of what a client sends. Memory:
    O(num_clients) integers plus the private vectors.
    """

    def __init__(self, offsets: Tensor, private_dim: int = 0, private_lr: float = 0.1) -> None:
        """Settings (each a config key).

        Args:
            offsets: train CSR offsets `(U+1,)`.
            private_dim: width of each client's private user vector (0: no personalisation).
            private_lr: step size of the clients' local SGD on their private vectors.
        """
        self.offsets = offsets
        self.lengths = offsets[1:] - offsets[:-1]
        num_clients = self.lengths.numel()
        self.version = torch.zeros(num_clients, dtype=torch.long, device=offsets.device)
        self.cursor = torch.zeros(num_clients, dtype=torch.long, device=offsets.device)
        self.private_lr = private_lr
        self.private = torch.zeros(num_clients, private_dim, device=offsets.device) if private_dim > 0 else None

    @property
    def num_clients(self) -> int:
        """Number of clients (users)."""
        return self.lengths.numel()

    def events(self, clients: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """The next `count` event indices of each client `(n, count)` and whether they exist (episode not over)."""
        position = self.cursor[clients].unsqueeze(1) + torch.arange(count, device=clients.device)
        valid = position < self.lengths[clients].unsqueeze(1)
        index = self.offsets[clients].unsqueeze(1) + position
        return torch.where(valid, index, self.offsets[clients].unsqueeze(1)), valid

    def advance(self, clients: Tensor, steps: int) -> None:
        """Moves the clients' cursors on by `steps` events, starting their episodes over after the end."""
        moved = self.cursor[clients] + steps
        self.cursor[clients] = torch.where(moved >= self.lengths[clients], torch.zeros_like(moved), moved)

    def download(self, clients: Tensor, version: int) -> None:
        """The clients fetch the server's `version`."""
        self.version[clients] = version

    def update_private(self, clients: Tensor, gradients: Tensor) -> Tensor:
        """Local SGD step on the clients' private vectors with `gradients (n, d)`; returns the change `(n, d)`."""
        assert self.private is not None, "update_private needs private_dim > 0"
        delta = -self.private_lr * gradients
        self.private.index_add_(0, clients, delta)
        return delta

    def state_dict(self) -> dict[str, Any]:
        """Versions, cursors and private vectors."""
        state: dict[str, Any] = {"version": self.version.cpu().clone(), "cursor": self.cursor.cpu().clone()}
        if self.private is not None:
            state["private"] = self.private.cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        if state["version"].numel() != self.num_clients:
            raise ValueError(f"Clients: checkpoint has {state['version'].numel()} clients, the data {self.num_clients}")
        self.version.copy_(state["version"])
        self.cursor.copy_(state["cursor"])
        if self.private is not None:
            if "private" not in state or state["private"].shape != self.private.shape:
                raise ValueError("Clients: checkpoint has no private vectors of this shape (personalization changed?)")
            self.private.copy_(state["private"])

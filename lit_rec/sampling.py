"""Training-time candidate sampling: the logged positive plus uniform random negatives."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def sample_negatives(positive: Tensor, n: int, num_items: int, generator: torch.Generator) -> Tensor:
    """Draws `(B, n)` items uniformly from `1..num_items` without the positive (with replacement)."""
    b = positive.shape[0]
    draws = torch.randint(1, num_items, (b, n), generator=generator, device=generator.device)
    # draws lie in 1..num_items-1; shifting those >= positive by one skips the positive exactly
    return draws + (draws >= positive.unsqueeze(1)).long()


def training_candidates(positive: Tensor, n: int, num_items: int, generator: torch.Generator) -> Tensor:
    """Candidates `(B, 1 + n)` with the positive in column 0."""
    negatives = sample_negatives(positive.to(generator.device), n, num_items, generator)
    return torch.cat([positive.to(generator.device).unsqueeze(1), negatives], dim=1).to(positive.device)


class SeededGenerator:
    """A torch.Generator whose state goes into checkpoints, so resumed runs draw the same numbers."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Tensor]:
        """The generator's state."""
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restores the generator's state."""
        self.generator.set_state(state["state"])


def _generators(module: torch.nn.Module) -> dict[str, Any]:
    return {name: value for name, value in vars(module).items() if isinstance(value, SeededGenerator)}


def save_rng_state(module: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """Stores the module's own generators and torch's global RNG (dropout) in the checkpoint."""
    checkpoint["lit_rec_rng"] = {
        "generators": {name: g.state_dict() for name, g in _generators(module).items()},
        "torch": torch.get_rng_state(),
    }


def load_rng_state(module: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """Restores what `save_rng_state` stored."""
    state = checkpoint.get("lit_rec_rng")
    if state is None:
        return
    for name, g in _generators(module).items():
        g.load_state_dict(state["generators"][name])
    torch.set_rng_state(state["torch"])

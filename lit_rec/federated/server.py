"""Server: the global model's side of DADRL; its only input is `(gradients, base_version)`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lit_rec.federated.buffer import VersionBuffer
from lit_rec.federated.privacy import GaussianMechanism
from lit_rec.functional.staleness import staleness_weight


@dataclass
class ServerStep:
    """What one server step did: updates applied (all ranks) and the step-size multiplier used."""

    updates: int
    lr_scale: float
    version: int


class Server:
    """Holds the global parameters, a version counter and a ring buffer of the last versions.

    Clients hand in `receive(gradients (n, P), base_version (n,))`: flat gradients (or any update
    direction, such as FedAvg's model deltas) computed on the stored version `base_version`. The
    server weights each by s(Δ), Δ = version - base_version, and by its share n_i (1, or the events
    it averages: FedAvg's n_k), sums them, and `step()` applies `Σ s_i n_i g_i / Σ s_i n_i` with the
    step size multiplied by the mean weight `Σ s_i n_i / Σ n_i` (Adam ignores a gradient's scale, so
    the weights must reach the step size). Under torch.distributed the sums
    are all-reduced, so every rank takes the identical step. Nothing else enters the server:
    no client ids, no data, no private parameters.
    """

    def __init__(
        self,
        parameters: Sequence[nn.Parameter],
        apply_step: Callable[[float], None],
        max_staleness: int,
        weighting: str = "constant",
        weight_a: float = 0.5,
        weight_b: float = 4.0,
        privacy: GaussianMechanism | None = None,
    ) -> None:
        """Args:
        parameters: the global model's parameters (updated in place).
        apply_step: steps the optimiser with its learning rate multiplied by the given factor,
            reading `p.grad` (None grads: the parameter is left alone).
        max_staleness: versions older than `version - max_staleness` are not stored.
        weighting: staleness weighting (`lit_rec.functional.staleness.WEIGHTINGS`).
        weight_a: exponent (polynomial) or slope (hinge) of the weighting.
        weight_b: hinge point b of the hinge weighting.
        privacy: with a mechanism, every step applies its noisy mean of the weighted sum (fixed
            denominator, step size not rescaled: the count must not leak), even for an empty cohort.
        """
        self.parameters = list(parameters)
        self._apply_step = apply_step
        self.max_staleness = max_staleness
        self.weighting, self.weight_a, self.weight_b = weighting, weight_a, weight_b
        self.privacy = privacy
        staleness_weight(torch.zeros(1), weighting)  # fail early on an unknown name
        reference = self.parameters[0]
        self.num_params = sum(p.numel() for p in self.parameters)
        self.buffer = VersionBuffer(max_staleness + 1, self.num_params, reference.dtype, reference.device)
        self._weighted_sum = torch.zeros(self.num_params, dtype=reference.dtype, device=reference.device)
        self._weight_total = 0.0
        self._share_total = 0.0
        self._count = 0

    # ------------------------------------------------------------------ versions (downloads)
    @property
    def version(self) -> int:
        """The latest version (-1 before `start`)."""
        return self.buffer.latest

    @property
    def oldest_version(self) -> int:
        """The oldest version a client can still compute with."""
        return self.buffer.oldest

    def start(self) -> None:
        """Stores the current parameters as version 0 (no-op when versions exist, e.g. after a resume)."""
        if self.version < 0:
            self.buffer.push(self.flat_parameters())

    def flat_parameters(self) -> Tensor:
        """The current global parameters as one vector `(P,)`."""
        return torch.cat([p.detach().reshape(-1) for p in self.parameters])

    def parameters_at(self, version: int | Tensor) -> Tensor:
        """The flat parameters `(P,)` of a stored version (a client's downloaded copy), or `(n, P)` of versions `(n,)`."""
        if isinstance(version, Tensor):
            return self.buffer.get_many(version)
        return self.buffer.get(version)

    # ------------------------------------------------------------------ updates
    def receive(self, gradients: Tensor, base_version: Tensor, shares: Tensor | None = None, clients: Tensor | None = None) -> Tensor:
        """Buffers client gradients `(n, P)` computed on `base_version (n,)`, staleness-weighted; returns the weights `(n,)`.

        `shares (n,)`: each row's weight in the mean before staleness, e.g. the events its gradient
        averages (FedAvg's n_k); None: 1 each. `clients (n,)`: how many client updates a row holds
        (a row may average several clients of one version); None: 1 each. Counts only, never who.
        """
        n = base_version.numel()
        assert gradients.dim() == 2 and gradients.shape == (n, self.num_params), (
            f"gradients must be (n, {self.num_params}) for {n} base versions, got {tuple(gradients.shape)}"
        )
        if shares is not None and (shares.shape != base_version.shape or bool((shares < 0).any())):
            raise ValueError(f"shares must be a non-negative weight per row {tuple(base_version.shape)}, got {tuple(shares.shape)}")
        if clients is not None and (clients.shape != base_version.shape or clients.is_floating_point() or bool((clients < 1).any())):
            raise ValueError(f"clients must be a positive count per row {tuple(base_version.shape)}, got {clients.dtype} {tuple(clients.shape)}")
        if self.privacy is not None and ((shares is not None and not bool((shares == 1).all())) or clients is not None):
            raise ValueError("Server: differential privacy needs each client's clipped update on its own row, with equal shares")
        staleness = self.version - base_version
        if bool((staleness < 0).any()) or bool((staleness > self.max_staleness).any()):
            raise ValueError(f"base versions must lie in {self.oldest_version}..{self.version}, got {base_version.tolist()}")
        weights = staleness_weight(staleness, self.weighting, self.weight_a, self.weight_b).to(gradients)
        share = torch.ones_like(weights) if shares is None else shares.to(weights)
        self._weighted_sum += (weights * share) @ gradients
        self._weight_total += float((weights * share).sum())
        self._share_total += float(share.sum())
        self._count += n if clients is None else int(clients.sum())
        return weights

    def step(self) -> ServerStep:
        """Applies the buffered updates of this cohort (every rank's) as one optimiser step; stores the new version."""
        totals = [self._weight_total, self._share_total, self._count]
        packed = torch.cat([self._weighted_sum, self._weighted_sum.new_tensor(totals)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(packed)  # hand-written gradients: DDP's hooks never see them
        weighted_sum, weight_total, share_total = packed[:-3], float(packed[-3]), float(packed[-2])
        count = int(round(float(packed[-1])))
        self._weighted_sum.zero_()
        self._weight_total, self._share_total, self._count = 0.0, 0.0, 0
        if self.privacy is not None:
            self._set_gradients(self.privacy.privatise(weighted_sum))
            self._apply_step(1.0)
            self.buffer.push(self.flat_parameters())
            return ServerStep(updates=count, lr_scale=1.0, version=self.version)
        if count == 0 or weight_total <= 0.0:
            for p in self.parameters:
                p.grad = None  # the optimiser skips them; its step still advances global_step
            self._apply_step(0.0)
            return ServerStep(updates=0, lr_scale=0.0, version=self.version)
        self._set_gradients(weighted_sum / weight_total)
        lr_scale = weight_total / share_total
        self._apply_step(lr_scale)
        self.buffer.push(self.flat_parameters())
        return ServerStep(updates=count, lr_scale=lr_scale, version=self.version)

    def _set_gradients(self, gradient: Tensor) -> None:
        """Writes a flat gradient `(P,)` into the parameters' `.grad`."""
        offset = 0
        for p in self.parameters:
            p.grad = gradient[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The version ring buffer and the privacy mechanism (the parameters are in the module's state_dict)."""
        state: dict[str, Any] = {"buffer": self.buffer.state_dict()}
        if self.privacy is not None:
            state["privacy"] = self.privacy.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        self.buffer.load_state_dict(state["buffer"])
        if self.privacy is not None:
            if "privacy" not in state:
                raise ValueError("Server: checkpoint has no privacy state (differential privacy was off when it was saved)")
            self.privacy.load_state_dict(state["privacy"])

"""Server: the global model's side of DADRL; its only input is `(gradients, base_version)`, its output a `ServerStep`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lit_rec.federated.buffer import VersionBuffer
from lit_rec.federated.privacy import GaussianMechanism
from lit_rec.functional.staleness import staleness_weight, staleness_weighted_mean, staleness_weighted_sums


@dataclass
class ServerStep:
    """One aggregated server step, for the owner of the optimiser to apply.

    `gradient (P,)`: the flat update direction to write into the parameters' `.grad` (None: no
    update, step with every grad None so the optimiser still counts the step); `lr_scale`: the
    learning-rate multiplier to step with; `updates`: client updates it aggregates (all ranks).
    After applying a step with a gradient, call `Server.publish()` to store the new version.
    """

    gradient: Tensor | None
    lr_scale: float
    updates: int


class Server:
    """Holds the global parameters, a version counter and a ring buffer of the last versions.

    Clients hand in `receive(gradients (n, P), base_version (n,))`: flat gradients (or any update
    direction, such as FedAvg's model deltas) computed on the stored version `base_version`. The
    server weights each by s(Δ), Δ = version - base_version, and by its share n_i (1, or the events
    it averages: FedAvg's n_k), sums them, and `step()` returns `Σ s_i n_i g_i / Σ s_i n_i` with the
    step-size multiplier `Σ s_i n_i / Σ n_i` (`lit_rec.functional.staleness.staleness_weighted_mean`);
    the module applies it with its optimiser and calls `publish()`, which stores the new version.
    Under torch.distributed the sums are all-reduced, so every rank returns the identical step.
    Nothing else enters the server: no client ids, no data, no private parameters; the server
    never calls into the module.
    """

    def __init__(
        self,
        parameters: Sequence[nn.Parameter],
        max_staleness: int,
        weighting: str = "constant",
        weight_a: float = 0.5,
        weight_b: float = 4.0,
        privacy: GaussianMechanism | None = None,
    ) -> None:
        """Settings (each a config key).

        Args:
            parameters: the global model's parameters (read to store versions; the module's optimiser updates them).
            max_staleness: versions older than `version - max_staleness` are not stored.
            weighting: staleness weighting (`lit_rec.functional.staleness.WEIGHTINGS`).
            weight_a: exponent (polynomial) or slope (hinge) of the weighting.
            weight_b: hinge point b of the hinge weighting.
            privacy: with a mechanism, every step applies its noisy mean of the weighted sum (fixed
                denominator, step size not rescaled: the count must not leak), even for an empty cohort.
        """
        self.parameters = list(parameters)
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

    def publish(self) -> int:
        """Stores the current global parameters (after a step was applied) as the next version; returns it."""
        return self.buffer.push(self.flat_parameters())

    def flat_parameters(self) -> Tensor:
        """The current global parameters as one vector `(P,)`."""
        return torch.cat([p.detach().reshape(-1) for p in self.parameters])

    def parameters_at(self, version: int | Tensor) -> Tensor:
        """The flat parameters `(P,)` of a stored version (a client's downloaded copy), or `(n, P)` of versions `(n,)`."""
        if isinstance(version, Tensor):
            return self.buffer.get_many(version)
        return self.buffer.get(version)

    # ------------------------------------------------------------------ updates
    def weights(self, staleness: Tensor) -> Tensor:
        """The staleness weights s(Δ) `(n,)` this server gives updates computed Δ `(n,)` versions ago."""
        return staleness_weight(staleness, self.weighting, self.weight_a, self.weight_b)

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
        weights = self.weights(staleness).to(gradients)
        share = torch.ones_like(weights) if shares is None else shares.to(weights)
        weighted_sum, weight_total, share_total = staleness_weighted_sums(gradients, weights, share)
        self._weighted_sum += weighted_sum
        self._weight_total += float(weight_total)
        self._share_total += float(share_total)
        self._count += n if clients is None else int(clients.sum())
        return weights

    def step(self) -> ServerStep:
        """Aggregates the buffered updates of this cohort (every rank's) into one `ServerStep` and empties the buffer."""
        totals = [self._weight_total, self._share_total, self._count]
        packed = torch.cat([self._weighted_sum, self._weighted_sum.new_tensor(totals)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(packed)  # hand-written gradients: DDP's hooks never see them
        weighted_sum, weight_total, share_total = packed[:-3], float(packed[-3]), float(packed[-2])
        count = int(round(float(packed[-1])))
        self._weighted_sum.zero_()
        self._weight_total, self._share_total, self._count = 0.0, 0.0, 0
        if self.privacy is not None:  # a noisy step every round, at the unscaled step size
            return ServerStep(gradient=self.privacy.privatise(weighted_sum), lr_scale=1.0, updates=count)
        if count == 0 or weight_total <= 0.0:
            return ServerStep(gradient=None, lr_scale=0.0, updates=0)
        gradient, lr_scale = staleness_weighted_mean(weighted_sum, weight_total, share_total)
        return ServerStep(gradient=gradient, lr_scale=lr_scale, updates=count)

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

"""Client gradients on flat parameter versions: vmapped per client, or one backward pass per stored version."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from lit_rec.federated.server import Server
from lit_rec.functional.a2c import clip_rows

Windows = dict[str, Tensor]
"""Clients' training windows: per-client tensors `(n, ...)` (`history`, `targets`, `mask`, `rivals`) plus shared `negatives`."""

WindowLoss = Callable[[Tensor, Tensor | None, Windows], tuple[Tensor, dict[str, Tensor]]]
"""`(flat version (P,), user vectors (n, D) | None, windows (n, ...)) -> (summed loss per window (n,), aux per window (n,))`;
aux holds at least `count`, the positions each window's loss sums."""

SHARED = ("negatives",)  # window entries shared by every client (not indexed by client)


def client_rows(windows: Windows, rows: Tensor | int | slice, step: int | None = None) -> Windows:
    """The windows of clients `rows` (and of local step `step` when the windows are `(n, steps, ...)`)."""
    index = rows if step is None else (rows, step)
    return {k: v if k in SHARED else v[index] for k, v in windows.items()}


class FlatParameters:
    """A module's parameters as one flat vector `(P,)`: views of a stored version as named tensors for `functional_call`."""

    def __init__(self, module: nn.Module) -> None:
        """Records the names and shapes of `module`'s parameters, in `parameters()` order."""
        named = list(module.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numel = sum(p.numel() for _, p in named)

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """Named views of one flat version `(P,)`."""
        chunks = torch.split(flat, [s.numel() for s in self.shapes])
        return {name: chunk.view(shape) for name, chunk, shape in zip(self.names, chunks, self.shapes)}


def write_flat_gradient(parameters: Sequence[nn.Parameter], gradient: Tensor | None) -> None:
    """Writes a flat gradient `(P,)` into the parameters' `.grad` (None: every grad None, so an optimiser skips them)."""
    offset = 0
    for p in parameters:
        p.grad = None if gradient is None else gradient[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def clipped(rows: Tensor, clip_norm: float | None) -> Tensor:
    """Each row of `(n, P)` clipped to L2 norm `clip_norm` (unchanged when it is None)."""
    return rows if clip_norm is None else clip_rows(rows, clip_norm)[0]


def client_shares(events: Tensor, aggregation: Literal["events", "clients"]) -> Tensor:
    """Each client's share of the server's mean `(n,)`: its trained events (`events`) or 1 (`clients`)."""
    return events.to(torch.float32) if aggregation == "events" else torch.ones_like(events, dtype=torch.float32)


def per_client_gradients(
    loss: WindowLoss, flat: Tensor, private: Tensor | None, windows: Windows, randomness: Literal["different", "error"]
) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
    """Each client's gradient `(n, P)` of its mean loss on its version, and of its private vector `(n, D)`; aux `(n,)`.

    `flat`: one shared version `(P,)` or each client's own `(n, P)`; one `vmap(grad(...))`, no loop over clients.
    """

    def one_client(f: Tensor, u: Tensor | None, d: Windows) -> tuple[Tensor, dict[str, Tensor]]:
        batch = {k: v if k in SHARED else v.unsqueeze(0) for k, v in d.items()}
        summed, aux = loss(f, None if u is None else u.unsqueeze(0), batch)
        return (summed / aux["count"].clamp_min(1.0)).squeeze(0), {k: v.squeeze(0) for k, v in aux.items()}

    argnums = (0, 1) if private is not None else 0
    in_dims = (0 if flat.dim() == 2 else None, None if private is None else 0, {k: None if k in SHARED else 0 for k in windows})
    grads, aux = vmap(grad(one_client, argnums=argnums, has_aux=True), in_dims=in_dims, randomness=randomness)(flat, private, windows)
    if private is not None:
        return grads[0], grads[1], aux
    return grads, None, aux


def version_gradient(
    loss: WindowLoss, flat: Tensor, user_vector: Tensor | None, windows: Windows, aggregation: Literal["events", "clients"]
) -> tuple[Tensor, Tensor, Tensor | None, dict[str, Tensor]]:
    """One backward pass for clients that share the version `flat (P,)`: `(gradient (P,), share, private gradients (n, D) | None, aux)`.

    The gradient is of the shares-weighted mean of the clients' mean losses (`client_shares`), `share`
    their total; each private vector's gradient is of its own client's mean loss.
    """
    flat = flat.detach().requires_grad_(True)
    user_vector = user_vector.clone().requires_grad_(True) if user_vector is not None else None
    summed, aux = loss(flat, user_vector, windows)
    shares = client_shares(aux["count"], aggregation)
    inputs = [flat] if user_vector is None else [flat, user_vector]
    grads = torch.autograd.grad((summed * shares / aux["count"].clamp_min(1.0)).sum(), inputs)
    share = shares.sum()
    g_private = grads[1] / shares.clamp_min(1e-12).unsqueeze(1) if user_vector is not None else None
    return grads[0] / share.clamp_min(1e-12), share, g_private, {k: x.detach() for k, x in aux.items()}


def send_per_version(
    server: Server, loss: WindowLoss, version: Tensor, mine: Tensor, windows: Windows, user_vectors: Tensor | None, aggregation: Literal["events", "clients"]
) -> list[tuple[Tensor, dict[str, Tensor], Tensor | None]]:
    """Hands `server`, per stored version among the clients `mine`, their shares-weighted mean gradient (one backward pass each).

    `version (n,)`, `windows (n, ...)` and `user_vectors (n, D)` are the cohort's; returns per version
    the cohort positions of its clients, their aux and their private-vector gradients.
    """
    out = []
    for v in torch.unique(version[mine]).tolist():
        group = mine[version[mine] == v]
        user_vector = user_vectors[group] if user_vectors is not None else None
        row, share, g_private, aux = version_gradient(loss, server.parameters_at(int(v)), user_vector, client_rows(windows, group), aggregation)
        server.receive(row.unsqueeze(0), version[group[:1]], shares=share.reshape(1), clients=torch.tensor([group.numel()]))
        out.append((group, aux, g_private))
    return out

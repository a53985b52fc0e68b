"""Size and scoring latency of networks as served: eager `QNetwork`s and their exported TorchScript artefacts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lit_rec.export import export

if TYPE_CHECKING:
    from lit_rec.modules.dqn import DQN

__all__ = ["num_parameters", "scoring_latency_ms", "serving_latency_ms"]


def num_parameters(network: nn.Module) -> int:
    """Parameters of a network, trainable or frozen (target networks are separate modules, never counted)."""
    return sum(p.numel() for p in network.parameters())


@torch.inference_mode()
def scoring_latency_ms(
    networks: dict[str, nn.Module],
    num_items: int,
    history_len: int,
    num_candidates: int = 1000,
    repeats: int = 50,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median milliseconds per network to score `num_candidates` items for one request, the networks interleaved.

    A network is a module with `score(history, candidates)` (a `QNetwork`) or one called that way (an
    exported TorchScript artefact). Uses the current torch thread count and each network's device;
    the networks are put in eval mode for the measurement and restored after it. `clock` may be
    `time.thread_time` (CPU time of this thread) to ignore other processes on a shared machine when
    torch runs one thread.
    """
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(1, num_items + 1, (1, history_len), generator=g)
    candidates = torch.randint(1, num_items + 1, (1, num_candidates), generator=g)
    modes = {name: net.training for name, net in networks.items() if hasattr(net, "training")}  # frozen TorchScript has none
    times: dict[str, list[float]] = {name: [] for name in networks}
    for name in modes:
        networks[name].eval()
    try:
        for i in range(repeats + 3):  # 3 warm-up rounds
            for name, net in networks.items():
                first = next(iter(net.parameters()), None)
                device = first.device if first is not None else torch.device("cpu")
                h, c = history.to(device), candidates.to(device)
                start = clock()
                getattr(net, "score", net)(h, c)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= 3:
                    times[name].append(clock() - start)
    finally:
        for name, mode in modes.items():
            networks[name].train(mode)
    return {name: 1000.0 * statistics.median(values) for name, values in times.items()}


def serving_latency_ms(teacher: DQN, student: DQN, workdir: str | Path, repeats: int = 200) -> dict[str, float]:
    """Median ms to score 1000 candidates for one request: `teacher`, `student` (eager online networks) and
    `teacher_artefact`, `student_artefact` (their `lit_rec.export` TorchScript files, written to `workdir`).

    The four are interleaved and timed on this thread's CPU time (`time.thread_time`), so other processes on
    a shared machine do not inflate the figures when torch runs one thread.
    """
    networks: dict[str, nn.Module] = {"teacher": teacher.online, "student": student.online}
    for role, module in (("teacher", teacher), ("student", student)):
        path = Path(workdir) / f"{role}.pt"
        export(module, path)
        networks[f"{role}_artefact"] = torch.jit.load(str(path))
    return scoring_latency_ms(networks, student.num_items, student.history_len, 1000, repeats, clock=time.thread_time)

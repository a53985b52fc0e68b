"""Figure 2 of the DADRL paper (training CTR against training episodes, one line per method) and its companion,
validation CTR@10 against simulated time for the federated methods."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lit_rec.reproduce.fit import RunResult


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def mean_curve(curves: list[list[tuple[int, float, float]]], points: int = 200) -> tuple[list[float], list[float], list[float]]:
    """Seeds' smoothed curves on a common episode grid (up to the shortest): x, mean, std."""
    import numpy as np

    smoothed = []
    for curve in curves:
        xs = [p[1] for p in curve]
        ys = smooth([p[2] for p in curve], max(1, len(curve) // 25))
        smoothed.append((np.asarray(xs), np.asarray(ys)))
    end = min(x[-1] for x, _ in smoothed)
    start = max(x[0] for x, _ in smoothed)
    if len(smoothed) == 1:
        x, y = smoothed[0]
        return list(x), list(y), [0.0] * len(x)
    grid = np.linspace(start, end, points)
    ys = np.stack([np.interp(grid, x, y) for x, y in smoothed])
    return list(grid), list(ys.mean(axis=0)), list(ys.std(axis=0, ddof=1))


def plot_fig2(results: list[RunResult], order: list[str], path: Path, meta: dict[str, Any]) -> None:
    """`train/ctr` (moving average) against training episodes, one line per method (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=110)
    colours = plt.get_cmap("tab20").colors
    chance: set[int] = set()
    for i, name in enumerate(order):
        runs = [r for r in results if r.method == name and len(r.curve) >= 2]
        if not runs:
            continue
        x, y, s = mean_curve([r.curve for r in runs])
        negatives = runs[0].train_negatives
        label = name + (f"  (n={negatives})" if negatives is not None else "")
        style = "--" if name.startswith("DRL-Rec") else "-"
        colour = colours[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]
        ax.plot(x, y, style, color=colour, lw=1.8, label=label)
        if len(runs) > 1:
            import numpy as np

            ax.fill_between(x, np.asarray(y) - np.asarray(s), np.asarray(y) + np.asarray(s), color=colour, alpha=0.15, lw=0)
        if negatives is not None:
            chance.add(int(negatives))
    for n in sorted(chance):
        ax.axhline(1 / (n + 1), color="grey", ls=":", lw=1)
        ax.annotate(f"random, n={n}: 1/{n + 1}", xy=(0.995, 1 / (n + 1)), xycoords=("axes fraction", "data"),
                    ha="right", va="bottom", fontsize=8, color="grey")
    seeds = len(meta["seeds"])
    ax.set_title(f"Figure 2: training CTR against training episodes - {meta['dataset']}, budget {meta['budget']}, "
                 + (f"mean ± std of {seeds} seeds" if seeds > 1 else "1 seed"), fontsize=11)
    ax.set_xlabel("training episodes (train/episodes: events / mean events per user)")
    ax.set_ylabel("train/ctr, moving average\n(the logged item chosen among it and n random items)")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


SIM_TIME_METHODS = ("DADRL", "A2C-D", "A2C-F")  # the federated methods, timed by the device clock
SIM_TIME = "val/sim_time"


def sim_time_unit(seconds: float) -> tuple[str, float]:
    """The unit of a simulated-time axis reaching `seconds`: hours from 2 h, minutes from 2 min, else seconds."""
    if seconds >= 7200:
        return "hours", 3600.0
    if seconds >= 120:
        return "minutes", 60.0
    return "seconds", 1.0


def plot_sim_time(results: list[RunResult], path: Path, meta: dict[str, Any], methods: tuple[str, ...] = SIM_TIME_METHODS) -> bool:
    """Figure 2's companion: validation CTR@10 against simulated time (`val/sim_time`), one line per run of
    DADRL, A2C-D and A2C-F; False (no file) when no run recorded a simulated time."""
    curves = {name: [[(p[SIM_TIME], p["val/ctr@10"]) for p in r.val_curve if SIM_TIME in p and "val/ctr@10" in p]
                     for r in results if r.method == name] for name in methods}
    curves = {name: [c for c in runs if c] for name, runs in curves.items() if any(runs)}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit, scale = sim_time_unit(max(x for runs in curves.values() for c in runs for x, _ in c))
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    colours = plt.get_cmap("tab10").colors
    for i, (name, runs) in enumerate(curves.items()):
        for j, curve in enumerate(runs):
            xs, ys = [x / scale for x, _ in curve], [y for _, y in curve]
            ax.plot(xs, ys, "-o", color=colours[i], lw=1.6, ms=3, alpha=1.0 if j == 0 else 0.6, label=name if j == 0 else None)
    seeds = len(meta["seeds"])
    ax.set_title(f"CTR@10 against simulated time - {meta['dataset']}, budget {meta['budget']}, "
                 + (f"{seeds} seeds (one line each)" if seeds > 1 else "1 seed"), fontsize=11)
    ax.set_xlabel(f"simulated {unit} of federated training (device clock: val/sim_time)")
    ax.set_ylabel("val/ctr@10")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True

"""Table 1 of the DADRL paper from a reproduction's runs: `table1.json` rows and the `table1.md` layout."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from datamodules.eval_sample import ctr_half_width
from lit_rec.reproduce.methods import CAPS, KS, MONITOR, PATIENCE, cap_text

if TYPE_CHECKING:
    from lit_rec.reproduce.fit import RunResult

EXTRA_COLUMNS = ("auc", "ndcg@10_full")


def table_rows(results: list[RunResult], order: list[str]) -> list[dict[str, Any]]:
    """Random, then one row per method (means over seeds, `<key>_std` beside each mean): test metrics, the
    best epoch (`best_epoch`, 0-based; `best_epochs` per seed), epochs run, what stopped each seed's fit and
    the seconds of training (`train_s`, wall time of fit)."""
    rows: list[dict[str, Any]] = [{"method": "Random", **{f"ctr@{k}": 1 / (k + 1) for k in KS}, "auc": 0.5,
                                   "ndcg@10_full": None, "seeds": 0, "best_epoch": None, "train_s": None}]
    for name in order:
        runs = [r for r in results if r.method == name]
        if not runs:
            continue
        row: dict[str, Any] = {"method": name, "seeds": len(runs)}
        for key in (*(f"ctr@{k}" for k in KS), *EXTRA_COLUMNS):
            values = [r.metrics[f"test/{key}"] for r in runs if f"test/{key}" in r.metrics]
            row[key] = statistics.fmean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        best_epochs = [r.best_epoch for r in runs if r.best_epoch is not None]
        row["best_epochs"] = best_epochs
        row["best_epoch"] = statistics.fmean(best_epochs) if best_epochs else None
        row["best_epoch_std"] = statistics.stdev(best_epochs) if len(best_epochs) > 1 else (0.0 if best_epochs else None)
        row["epochs"] = statistics.fmean(r.epochs for r in runs)
        row["stopped_by"] = [r.stopped_by for r in runs]
        row["train_s"] = round(statistics.fmean(r.train_s for r in runs), 1)
        row["train_s_std"] = round(statistics.stdev(r.train_s for r in runs), 1) if len(runs) > 1 else 0.0
        row["wall_s"] = round(statistics.fmean(r.wall_s for r in runs), 1)
        row["cpu_s"] = round(statistics.fmean(r.cpu_s for r in runs), 1)
        row["test_sample"] = next((list(r.test_sample) for r in runs if r.test_sample), None)
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], key: str, best: float | None, digits: int = 3) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    if row.get("seeds", 0) > 1 and row.get(f"{key}_std") is not None:
        text += f" ± {row[f'{key}_std']:.{digits}f}"
    if best is not None and row["method"] != "Random" and abs(value - best) < 1e-12:
        text = f"**{text}**"
    return text


def sample_line(methods: list[dict[str, Any]]) -> str | None:
    """`test: n of N events evaluated; 95% CI of CTR@10 ± x` (the widest over the methods' CTR@10), or None."""
    sample = next((r["test_sample"] for r in methods if r.get("test_sample")), None)
    if sample is None:
        return None
    evaluated, population = sample
    widths = [ctr_half_width(r["ctr@10"], evaluated, population) for r in methods if r.get("ctr@10") is not None]
    width = max(widths, default=0.0)
    how = "every event, exact" if evaluated >= population else "a seeded sample, eval_max_events"
    return (f"test: {evaluated} of {population} events evaluated ({how}); "
            f"95% CI of CTR@10 ± {width:.4f} (the widest over the methods; sampling only, not seeds).")


def heading(title: str, meta: dict[str, Any]) -> str:
    """A report's Markdown title: `# <title>: <data>, budget `<budget>`, <seeds>`."""
    seeds = len(meta["seeds"])
    return (f"# {title}: {meta['dataset']}, budget `{meta['budget']}`, "
            + (f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"))


def format_table1(rows: list[dict[str, Any]], meta: dict[str, Any], failures: list[dict[str, Any]]) -> str:
    """Table 1's layout (Method | k=1 ... k=100) plus AUC and ndcg@10_full, best learned value in bold, then
    the best epoch and the seconds of training; under it the test events evaluated and CTR@10's 95% interval."""
    keys = [*(f"ctr@{k}" for k in KS), *EXTRA_COLUMNS]
    methods = [r for r in rows if r["method"] != "Random"]
    best = {key: max((r[key] for r in methods if r.get(key) is not None), default=None) for key in keys}
    seeds = len(meta["seeds"])
    lines = [
        heading("Table 1", meta),
        "",
        "Test split, One-Plus-K CTR@k (the positive ranked first among itself and k frozen random negatives; "
        "ties share), AUC against the 100 negatives, full-ranking NDCG@10. Best learned value in bold; "
        "Random is 1/(k+1).",
        "",
        f"Each method trained until {meta.get('monitor', MONITOR)} stopped improving for "
        f"{meta.get('patience', PATIENCE)} validations"
        + (f" from epoch {meta['start_from_epoch']} on" if meta.get("start_from_epoch") else "")
        + ", within the same cap for all "
        f"({cap_text(meta.get('cap', CAPS[meta['budget']]))}), and was tested with its best-validation "
        "checkpoint. *best epoch*: the epoch (from 0) of that checkpoint; *train s*: wall seconds of the fit "
        "(validations included).",
        "",
        "| Method | k=1 | k=10 | k=20 | k=50 | k=100 | AUC | NDCG@10 (full) | best epoch | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = f"*{row['method']} (1/(k+1))*" if row["method"] == "Random" else row["method"]
        digits = {"ndcg@10_full": 4}
        cells = [_cell(row, key, best[key], digits.get(key, 3)) for key in keys]
        cells.append(_cell(row, "best_epoch", None, 0 if seeds == 1 else 1))
        cells.append(_cell(row, "train_s", None, 1))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sample = sample_line(methods)
    if sample:
        lines += ["", sample]
    lines += ["", f"`{meta['command']}`  ", f"{meta['date']}, {meta['wall_s'] / 60:.1f} min wall "
              f"({meta['cpu_s'] / 60:.1f} min CPU of this process; load average {meta['load_average_at_start']} at the start), "
              f"torch threads {meta['torch_threads']}, W&B group `{meta['wandb_group']}`."]
    capped_runs = [f"{r['method']} ({', '.join(sorted(set(r['stopped_by'])))})" for r in methods
                   if any(s != "early_stopping" for s in r.get("stopped_by", [])) and r.get("epochs", 0) > 1]
    if capped_runs:
        lines += ["", "Stopped by the cap, not by early stopping (validation may still have been improving): "
                  + ", ".join(capped_runs) + "."]
    if failures:
        lines += ["", "Failed runs: " + "; ".join(f"{f['method']} seed {f['seed']}: {f['error']}" for f in failures)]
    return "\n".join(lines) + "\n"

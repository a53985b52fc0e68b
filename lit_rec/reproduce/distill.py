"""The DRL-Rec distillation report: parameters, latency, AUC and CTR@k of teacher, student and student alone
(`distill.json`, `distill.md`)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lit_rec.reproduce.methods import KS, Method
from lit_rec.reproduce.report import heading

if TYPE_CHECKING:
    from lit_rec.reproduce.fit import RunResult

# DESIGN.md section 9: the product claim the student must meet or beat
DISTILL_TARGETS = {"param_ratio": 0.497, "latency_ratio": 0.767}
ROLES = ("teacher", "student", "student_alone")
LATENCY_REPEATS = {"smoke": 5, "quick": 100, "full": 200}


def distill_report(results: list[RunResult], methods: list[Method], budget: str, work: Path) -> dict[str, Any] | None:
    """Teacher vs student vs student alone, when the three ran; latency is timed on the last seed's teacher and
    student (their `module`), with the exported artefacts written under `work`."""
    roles = {m.role: m.name for m in methods if m.role in ROLES}
    if set(roles) != set(ROLES):
        return None
    by_role = {role: [r for r in results if r.method == name] for role, name in roles.items()}
    if not all(by_role.values()):
        return None
    from lit_rec.serving import num_parameters, serving_latency_ms

    teacher, student = by_role["teacher"][-1].module, by_role["student"][-1].module
    if teacher is None or student is None:
        return None
    repeats = LATENCY_REPEATS[budget]
    work.mkdir(parents=True, exist_ok=True)
    times = serving_latency_ms(teacher, student, work, repeats)
    params = {"teacher": num_parameters(teacher.online), "student": num_parameters(student.online)}
    params["student_alone"] = params["student"]  # the same network, trained without the teacher
    report: dict[str, Any] = {"roles": {}}
    for role, runs in by_role.items():
        entry: dict[str, Any] = {"method": roles[role], "seeds": [r.seed for r in runs], "params": params[role]}
        network = "teacher" if role == "teacher" else "student"
        entry["latency_ms"] = round(times[f"{network}_artefact"], 4)
        entry["latency_ms_eager"] = round(times[network], 4)
        for key in ("auc", *(f"ctr@{k}" for k in KS)):
            values = [r.metrics[f"test/{key}"] for r in runs if f"test/{key}" in r.metrics]
            entry[key] = statistics.fmean(values) if values else math.nan
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        report["roles"][role] = entry
    t, s = report["roles"]["teacher"], report["roles"]["student"]
    report["param_ratio"] = s["params"] / t["params"]
    report["latency_ratio"] = s["latency_ms"] / t["latency_ms"]
    report["latency_ratio_eager"] = s["latency_ms_eager"] / t["latency_ms_eager"]
    report["student_minus_teacher_auc"] = s["auc"] - t["auc"]
    report["latency"] = f"median of {repeats} interleaved repeats, 1000 candidates, one request, thread CPU time"
    report["meets"] = {
        "param_ratio": report["param_ratio"] <= DISTILL_TARGETS["param_ratio"],
        "latency_ratio": report["latency_ratio"] <= DISTILL_TARGETS["latency_ratio"],
        "student_auc_at_least_teacher": report["student_minus_teacher_auc"] >= 0,
    }
    return report


def format_distill(report: dict[str, Any], meta: dict[str, Any]) -> str:
    """The DRL-Rec table: parameters, latency, AUC and CTR@k of teacher, student and student alone."""
    roles = report["roles"]
    seeds = len(meta["seeds"])
    lines = [
        heading("DRL-Rec distillation", meta),
        "",
        "| Model | Parameters | Latency (ms) | AUC | CTR@1 | CTR@10 | CTR@20 | CTR@50 | CTR@100 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"teacher": "Teacher", "student": "Student (distilled)", "student_alone": "Student alone"}
    for role in ROLES:
        e = roles[role]
        cells = []
        for key in ("auc", *(f"ctr@{k}" for k in KS)):
            cell = f"{e[key]:.4f}" if key == "auc" else f"{e[key]:.3f}"
            if seeds > 1:
                cell += f" ± {e[key + '_std']:.4f}" if key == "auc" else f" ± {e[key + '_std']:.3f}"
            cells.append(cell)
        lines.append(f"| {names[role]} | {e['params']:,} | {e['latency_ms']:.3f} | " + " | ".join(cells) + " |")
    verdict = report["meets"]
    lines += [
        "",
        f"- Student / teacher parameters: {report['param_ratio']:.3f} (claim <= {DISTILL_TARGETS['param_ratio']}: "
        f"{'meets' if verdict['param_ratio'] else 'misses'}).",
        f"- Student / teacher latency: {report['latency_ratio']:.3f} on the exported TorchScript artefacts "
        f"({report['latency_ratio_eager']:.3f} eager; claim <= {DISTILL_TARGETS['latency_ratio']}: "
        f"{'meets' if verdict['latency_ratio'] else 'misses'}); {report['latency']}.",
        f"- Student AUC minus teacher AUC: {report['student_minus_teacher_auc']:+.4f} "
        f"({'meets' if verdict['student_auc_at_least_teacher'] else 'misses'} the claim >= 0).",
        "",
        f"`{meta['command']}`",
    ]
    return "\n".join(lines) + "\n"

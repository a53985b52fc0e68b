"""The method registry: Table 1's rows (`METHODS`), the budgets and the common cap every method trains under.

The one list of methods: `lit_rec.reproduce` runs it, `tests/cli_harness.py` fits every config in it,
and a test checks it against the README. A new method is one line here plus its config
(docs/ADDING_A_METHOD.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
KS = (1, 10, 20, 50, 100)
BUDGETS = ("smoke", "quick", "full")

# The budget rule: every method trains until validation stops improving, within the same cap for all.
MONITOR = "val/ctr@10"
PATIENCE = 3  # validations without a better MONITOR before a run stops (EarlyStopping, every method alike)
# epochs before early stopping starts watching: a Q-learner can sit at the popularity level for its first
# epochs (DDQN on the synthetic simulator: val CTR@10 .292/.288/.277/.289, then .331/.393/.421 ... .453)
MIN_EPOCHS = 5  # early stopping's `start_from_epoch` (not in the smoke budget)
# The cap of every learned method per budget. `max_time` counts the whole fit, validations included.
CAPS: dict[str, dict[str, Any]] = {
    # two epochs of three steps (each logged, so that even they draw a curve): validation, early stopping
    # and the best checkpoint all run
    "smoke": {"max_epochs": 2, "max_steps": -1, "limit_train_batches": 3, "log_every_n_steps": 1},
    # ML-100K, all methods, one seed: 10 learned runs x 45 s + evaluation <= 10 minutes of one core
    "quick": {"max_epochs": 40, "max_steps": -1, "max_time": "00:00:00:45"},
    # ML-1M users 1-2999, one seed: 10 learned runs x 5 min + evaluation <= 60 minutes of one core
    "full": {"max_epochs": 40, "max_steps": -1, "max_time": "00:00:05:00"},
}


def capped(only: tuple[str, ...] = BUDGETS, **overrides: Any) -> dict[str, dict[str, Any]]:
    """Every budget's common cap (`CAPS`), with `overrides` on top in the budgets `only`: for a method that
    needs less than the cap."""
    return {name: {**cap, **(overrides if name in only else {})} for name, cap in CAPS.items()}


DEFAULT_BUDGETS = capped()


@dataclass(frozen=True)
class Method:
    """One row of Table 1: a config under `configs/`, its budgets and extra CLI arguments.

    `budgets` maps each budget name (`smoke`, `quick`, `full`) to trainer overrides; the default,
    `DEFAULT_BUDGETS`, is the common cap `CAPS` (every run also stops early on `val/ctr@10`). `role`
    wires DRL-Rec: a `student` run gets `--model.init_args.teacher_ckpt=` the best checkpoint of the
    same seed's `teacher` run (`requires` names the teacher method); `student_alone` is reported beside
    them in `distill.md`. `trainer` holds more trainer overrides for every budget.
    """

    name: str
    config: str
    budgets: dict[str, dict[str, Any]] = field(default_factory=lambda: DEFAULT_BUDGETS)
    args: tuple[str, ...] = ()
    role: str = "table"
    requires: str | None = None
    trainer: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The name as a file/run name: lower case, `[a-z0-9_]`."""
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")


# Table 1's rows in order. A new method is one line here plus its config (docs/ADDING_A_METHOD.md).
METHODS: list[Method] = [
    # counts clicks: one pass is all (smoke keeps its two short epochs, so that even it draws a curve)
    Method("Popularity", "configs/popularity.yaml", capped(only=("quick", "full"), max_epochs=1)),
    Method("LinUCB", "configs/linucb.yaml"),
    Method("SeqRec", "configs/seqrec.yaml"),
    Method("DQN", "configs/dqn.yaml"),
    Method("DDQN", "configs/ddqn.yaml"),
    Method("A2C-F", "configs/a2c_f.yaml"),
    Method("A2C-D", "configs/a2c_d.yaml"),
    Method("DADRL", "configs/dadrl.yaml"),
    Method("DRL-Rec teacher", "configs/drlrec_teacher.yaml", role="teacher"),
    Method("DRL-Rec student", "configs/drlrec_student.yaml", role="student", requires="DRL-Rec teacher"),
    Method("DRL-Rec student alone", "configs/drlrec_student.yaml", args=("--model.init_args.distill=false",),
           role="student_alone"),
]


def config_names(methods: list[Method] | None = None) -> list[str]:
    """The method configs in registry order, each once, by file stem (`dqn`, `drlrec_student`)."""
    return list(dict.fromkeys(Path(m.config).stem for m in (METHODS if methods is None else methods)))


def select_methods(names: str | None) -> list[Method]:
    """`METHODS`, or the comma-separated subset (case-insensitive names or slugs), with the teachers they need."""
    if not names:
        return list(METHODS)
    wanted = {n.strip().lower() for n in names.split(",") if n.strip()}
    known = {m.name.lower(): m for m in METHODS} | {m.slug: m for m in METHODS}
    unknown = sorted(wanted - set(known))
    if unknown:
        raise SystemExit(f"error: unknown method(s) {', '.join(unknown)}; known: {', '.join(m.name for m in METHODS)}")
    chosen = {known[n].name for n in wanted}
    for m in METHODS:
        if m.name in chosen and m.requires:
            chosen.add(m.requires)
    return [m for m in METHODS if m.name in chosen]


def cap_text(cap: dict[str, Any]) -> str:
    """A budget's cap in words: `40 epochs, 45 s`."""
    parts = []
    if cap.get("max_epochs", -1) not in (-1, None):
        parts.append(f"{cap['max_epochs']} epochs")
    if cap.get("max_steps", -1) not in (-1, None):
        parts.append(f"{cap['max_steps']} steps")
    if cap.get("limit_train_batches") is not None:
        parts.append(f"{cap['limit_train_batches']} batches an epoch")
    if cap.get("max_time"):
        parts.append(f"{cap_seconds(cap):.0f} s")
    return ", ".join(parts) or "none"


def cap_seconds(cap: dict[str, Any]) -> float:
    """A cap's `max_time` (Lightning's `DD:HH:MM:SS`) in seconds; inf without one."""
    if not cap.get("max_time"):
        return math.inf
    days, hours, minutes, seconds = (int(x) for x in str(cap["max_time"]).split(":"))
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)

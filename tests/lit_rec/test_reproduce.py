"""`python -m lit_rec.reproduce`: every method on tiny synthetic data writes sane tables, a figure and W&B runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lit_rec import reproduce
from lit_rec.reproduce import KS, METHODS, RunResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_rows(rows: list[dict]) -> None:
    """Every row's CTR@k lies in [0, 1] and does not increase with k."""
    for row in rows:
        values = [row[f"ctr@{k}"] for k in KS]
        assert all(0.0 <= v <= 1.0 for v in values), row
        assert all(a >= b - 1e-12 for a, b in zip(values, values[1:])), row


@pytest.mark.slow
def test_reproduce_smoke_writes_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    out = tmp_path / "out"
    code = reproduce.main([
        "--out", str(out), "--budget", "smoke", "--seeds", "1", "--wandb", "offline", "--group", "test-group",
        "--data.synthetic_users=50", "--data.synthetic_events_per_user=30", f"--data.cache_dir={tmp_path / 'cache'}",
    ])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]

    for name in ("table1.md", "table1.json", "fig2_ctr.png", "distill.md", "distill.json", "runs.json"):
        assert (out / name).is_file(), name
    # a progress line per method
    assert sum("[reproduce]" in line and "seed 0: test ctr@1" in line for line in printed.err.splitlines()) == len(METHODS)

    table = json.loads((out / "table1.json").read_text())
    rows = {row["method"]: row for row in table["rows"]}
    assert set(rows) == {"Random", *(m.name for m in METHODS)}
    check_rows(table["rows"])
    assert rows["Random"]["ctr@10"] == pytest.approx(1 / 11)
    for method in METHODS:
        assert 0.0 <= rows[method.name]["auc"] <= 1.0 and 0.0 <= rows[method.name]["ndcg@10_full"] <= 1.0
    markdown = (out / "table1.md").read_text()
    assert "| Method | k=1 | k=10 | k=20 | k=50 | k=100 | AUC | NDCG@10 (full) |" in markdown
    assert all(f"| {m.name} |" in markdown for m in METHODS) and "Random (1/(k+1))" in markdown

    png = (out / "fig2_ctr.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert all(len(run["curve"]) >= 2 for run in runs), [(r["method"], len(r["curve"])) for r in runs]

    distill = json.loads((out / "distill.json").read_text())
    roles = distill["roles"]
    assert set(roles) == {"teacher", "student", "student_alone"}
    assert roles["student"]["params"] < roles["teacher"]["params"]
    assert distill["param_ratio"] == pytest.approx(roles["student"]["params"] / roles["teacher"]["params"])
    assert roles["teacher"]["latency_ms"] > 0 and roles["student"]["latency_ms"] > 0
    check_rows(list(roles.values()))
    assert "Student alone" in (out / "distill.md").read_text()

    # one offline W&B run per training run plus the report, every config in the same group
    run_dirs = sorted(p.parents[2].name for p in (out / "runs").glob("*/wandb/offline-run-*/files"))
    assert run_dirs == sorted([f"{m.slug}-seed0" for m in METHODS] + ["report"])
    for method in METHODS:
        config = (out / "configs" / f"{method.slug}-seed0.yaml").read_text()
        assert "group: test-group" in config and "CurveRecorder" in config and "ModelCheckpoint" not in config


def fake_result(method: str, seed: int, shift: float) -> RunResult:
    metrics = {f"test/ctr@{k}": min(1.0, 0.9 / math.sqrt(k) + shift) for k in KS}
    metrics.update({"test/auc": 0.7 + shift, "test/ndcg@10_full": 0.05 + shift})
    curve = [(i, 10.0 * i + seed, 0.2 + 0.5 * i / 50 + shift) for i in range(1, 51)]
    return RunResult(method, seed, metrics, curve, [{"val/ctr@10": 0.3 + shift}], 10, 1.0)


def test_tables_and_figure_from_two_seeds(tmp_path: Path) -> None:
    results = [fake_result(name, seed, 0.01 * seed) for name in ("DQN", "DADRL") for seed in (0, 1)]
    rows = reproduce.table_rows(results, ["DQN", "DADRL", "LinUCB"])
    assert [r["method"] for r in rows] == ["Random", "DQN", "DADRL"]  # a method without runs has no row
    check_rows(rows)
    assert rows[1]["ctr@1"] == pytest.approx(0.905) and rows[1]["ctr@1_std"] == pytest.approx(0.00707, abs=1e-4)
    meta = {"dataset": "toy", "budget": "smoke", "seeds": [0, 1], "command": "python -m lit_rec.reproduce", "date": "d",
            "wall_s": 60.0, "cpu_s": 50.0, "load_average_at_start": "1.00", "torch_threads": 1, "wandb_group": "g"}
    text = reproduce.format_table1(rows, meta, [])
    assert "mean ± std over 2 seeds" in text and "0.905 ± 0.007" in text
    assert reproduce.best_validation(results[0].val_curve) == {"10": pytest.approx(0.3)}
    reproduce.plot_fig2(results, ["DQN", "DADRL"], tmp_path / "fig.png", meta)
    assert (tmp_path / "fig.png").read_bytes().startswith(PNG_MAGIC)


def test_method_selection_adds_the_teacher_and_rejects_unknown_names() -> None:
    chosen = [m.name for m in reproduce.select_methods("drl_rec_student,dqn")]
    assert chosen == ["DQN", "DRL-Rec teacher", "DRL-Rec student"]
    with pytest.raises(SystemExit, match="unknown method"):
        reproduce.select_methods("nope")


def test_every_registered_method_has_a_config_and_every_budget() -> None:
    root = Path(reproduce.__file__).resolve().parents[1]
    for method in METHODS:
        assert (root / method.config).is_file(), method.config
        assert set(method.budgets) == set(reproduce.BUDGETS), method.name
    assert len({m.slug for m in METHODS}) == len(METHODS)

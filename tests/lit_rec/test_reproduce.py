"""`python -m lit_rec.reproduce`: every method on tiny synthetic data writes sane tables, a figure and W&B runs;
each run stops when val/ctr@10 stops improving and is tested with its best checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor

from lit_rec import reproduce
from lit_rec.modules.popularity import Popularity
from lit_rec.reproduce import KS, METHODS, Method, RunResult
from lit_rec.reproduce import methods as registry
from lit_rec.reproduce.figures import plot_sim_time, sim_time_unit

ROOT = Path(__file__).resolve().parents[2]
TINY_DATA = ["--data.synthetic_users=60", "--data.synthetic_items=150", "--data.synthetic_events_per_user=10"]
TABLE_HEADER = "| Method | k=1 | k=10 | k=20 | k=50 | k=100 | AUC | NDCG@10 (full) | best epoch | train s |"

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
    assert TABLE_HEADER in markdown
    assert all(f"| {m.name} |" in markdown for m in METHODS) and "Random (1/(k+1))" in markdown
    runs_by_method = {run["method"]: run for run in json.loads((out / "runs.json").read_text())["runs"]}
    for method in METHODS:  # smoke: two epochs of three steps, a validation after each
        row, run = rows[method.name], runs_by_method[method.name]
        assert row["train_s"] > 0 and run["train_s"] > 0, method.name
        assert 0 <= run["best_epoch"] < run["epochs"] <= 2 and row["best_epochs"] == [run["best_epoch"]], method.name
        assert Path(run["checkpoint"]).is_file(), method.name

    png = (out / "fig2_ctr.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    assert (out / "fig2_sim_time.png").read_bytes().startswith(PNG_MAGIC)
    runs = json.loads((out / "runs.json").read_text())["runs"]
    for run in runs:  # the clock-timed methods' validations carry the simulated seconds (shipped DADRL: exponential's own units, none)
        if run["method"] in ("A2C-D", "A2C-F"):
            assert run["val_curve"][-1]["val/sim_time"] > run["val_curve"][0]["val/sim_time"] > 0, run["method"]
        else:
            assert "val/sim_time" not in run["val_curve"][-1], run["method"]
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
        assert "group: test-group" in config and "CurveRecorder" in config
        check_selection_callbacks(yaml.safe_load(config))
    # the student distilled from the teacher's best checkpoint
    teacher = runs_by_method["DRL-Rec teacher"]["checkpoint"]
    assert teacher.endswith("drl_rec_teacher-seed0/best.ckpt")
    assert f"--model.init_args.teacher_ckpt={teacher}" in (out / "logs" / "drl_rec_student-seed0.log").read_text()


def check_selection_callbacks(spec: dict[str, Any]) -> None:
    """A run config keeps one checkpoint, the best val/ctr@10, and stops early on it with the common patience
    (by `early_stopping`, the key the CLI adds after `trainer.callbacks`)."""
    callbacks = spec["trainer"]["callbacks"]
    checkpoints = [c["init_args"] for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert not [c for c in callbacks if c["class_path"].endswith("EarlyStopping")], callbacks
    assert spec["early_stopping"]["class_path"] == "callbacks.early_stopping.WarmupEarlyStopping"
    stopping = [spec["early_stopping"]["init_args"]]
    assert len(checkpoints) == 1, callbacks
    assert checkpoints[0]["monitor"] == "val/ctr@10" and checkpoints[0]["mode"] == "max" and checkpoints[0]["save_top_k"] == 1
    assert stopping[0]["monitor"] == "val/ctr@10" and stopping[0]["mode"] == "max" and stopping[0]["patience"] == reproduce.PATIENCE


def fake_result(method: str, seed: int, shift: float) -> RunResult:
    metrics = {f"test/ctr@{k}": min(1.0, 0.9 / math.sqrt(k) + shift) for k in KS}
    metrics.update({"test/auc": 0.7 + shift, "test/ndcg@10_full": 0.05 + shift})
    curve = [(i, 10.0 * i + seed, 0.2 + 0.5 * i / 50 + shift) for i in range(1, 51)]
    return RunResult(method, seed, metrics, curve, [{"val/ctr@10": 0.3 + shift, "epoch": 0.0}], 10, 1.0,
                     train_s=20.0 + 10 * seed, best_epoch=4 + seed, epochs=8 + seed, stopped_by="early_stopping")


def test_tables_and_figure_from_two_seeds(tmp_path: Path) -> None:
    results = [fake_result(name, seed, 0.01 * seed) for name in ("DQN", "DADRL") for seed in (0, 1)]
    rows = reproduce.table_rows(results, ["DQN", "DADRL", "LinUCB"])
    assert [r["method"] for r in rows] == ["Random", "DQN", "DADRL"]  # a method without runs has no row
    check_rows(rows)
    assert rows[1]["ctr@1"] == pytest.approx(0.905) and rows[1]["ctr@1_std"] == pytest.approx(0.00707, abs=1e-4)
    assert rows[1]["best_epochs"] == [4, 5] and rows[1]["best_epoch"] == pytest.approx(4.5) and rows[1]["train_s"] == 25.0
    assert rows[1]["epochs"] == pytest.approx(8.5) and rows[0]["best_epoch"] is None and rows[0]["train_s"] is None
    meta = {"dataset": "toy", "budget": "quick", "seeds": [0, 1], "command": "python -m lit_rec.reproduce", "date": "d",
            "wall_s": 60.0, "cpu_s": 50.0, "load_average_at_start": "1.00", "torch_threads": 1, "wandb_group": "g",
            "cap": reproduce.CAPS["quick"], "monitor": "val/ctr@10", "patience": 3}
    text = reproduce.format_table1(rows, meta, [])
    assert "mean ± std over 2 seeds" in text and "0.905 ± 0.007" in text
    assert TABLE_HEADER in text and "| 4.5 ± 0.7 | 25.0 ± 7.1 |" in text and "(40 epochs, 45 s)" in text
    assert "Stopped by the cap" not in text
    assert reproduce.best_validation(results[0].val_curve) == {"10": pytest.approx(0.3)}
    reproduce.plot_fig2(results, ["DQN", "DADRL"], tmp_path / "fig.png", meta)
    assert (tmp_path / "fig.png").read_bytes().startswith(PNG_MAGIC)
    assert not plot_sim_time(results, tmp_path / "sim.png", meta)  # no run recorded a simulated time
    for seed, result in enumerate(results):
        result.val_curve = [{"val/ctr@10": 0.3 + 0.01 * i, "val/sim_time": 4000.0 * i + seed, "epoch": float(i)} for i in range(4)]
    assert plot_sim_time(results, tmp_path / "sim.png", meta) and (tmp_path / "sim.png").read_bytes().startswith(PNG_MAGIC)
    assert sim_time_unit(12000.0) == ("hours", 3600.0) and sim_time_unit(300.0) == ("minutes", 60.0)


def test_method_selection_adds_the_teacher_and_rejects_unknown_names() -> None:
    chosen = [m.name for m in reproduce.select_methods("drl_rec_student,dqn")]
    assert chosen == ["DQN", "DRL-Rec teacher", "DRL-Rec student"]
    with pytest.raises(SystemExit, match="unknown method"):
        reproduce.select_methods("nope")


def test_every_registered_method_has_a_config_and_every_budget() -> None:
    assert registry.ROOT == ROOT
    for method in METHODS:
        assert (ROOT / method.config).is_file(), method.config
        assert set(method.budgets) == set(reproduce.BUDGETS), method.name
    assert len({m.slug for m in METHODS}) == len(METHODS)


def test_every_learned_method_has_the_same_cap() -> None:
    """Fair comparison: one cap per budget for every method that learns (Popularity counts in one pass)."""
    for budget in reproduce.BUDGETS:
        caps = {json.dumps(m.budgets[budget], sort_keys=True) for m in METHODS if m.name != "Popularity"}
        assert caps == {json.dumps(reproduce.CAPS[budget], sort_keys=True)}, budget
    for budget in ("quick", "full"):
        assert reproduce.CAPS[budget]["max_epochs"] >= 20 and "max_time" in reproduce.CAPS[budget]
    # all runs of `quick` (10 learned methods) fit in 10 minutes, of `full` in 60, evaluation included
    learned = len(METHODS) - 1
    assert learned * reproduce.cap_seconds(reproduce.CAPS["quick"]) <= 0.8 * 600
    assert learned * reproduce.cap_seconds(reproduce.CAPS["full"]) <= 0.9 * 3600


def test_best_epoch_is_the_first_validation_with_the_highest_ctr() -> None:
    curve = [{"val/ctr@10": v, "epoch": float(e)} for e, v in enumerate([0.1, 0.3, 0.2, 0.3, float("nan")])]
    assert reproduce.best_epoch(curve) == 1  # a tie is no improvement: ModelCheckpoint keeps the first
    assert reproduce.best_epoch([]) is None


class ScriptedPopularity(Popularity):
    """Popularity whose scores are multiplied by `schedule[epoch]` (its last value after its end) from the
    start of each training epoch: 1 is Popularity, 0 a constant scorer, -1 the reversed ranking. So the
    validation of chosen epochs is worse, and a test shows which epoch's checkpoint was loaded."""

    def __init__(self, schedule: list[float] | None = None, teacher_ckpt: str | None = None, **kwargs: Any) -> None:
        """Args:
        schedule: the factor on the scores per epoch.
        teacher_ckpt: accepted (and kept) so that the DRL-Rec wiring can be tested.
        """
        super().__init__(**kwargs)
        self.schedule = list(schedule or [1.0])
        self.teacher_ckpt = teacher_ckpt
        self.register_buffer("factor", torch.ones(()))

    def on_train_epoch_start(self) -> None:
        self.factor.fill_(self.schedule[min(self.current_epoch, len(self.schedule) - 1)])

    def score_candidates(self, batch: dict[str, Tensor], candidates: Tensor) -> Tensor:
        return self.factor * super().score_candidates(batch, candidates)

    def score_all_items(self, batch: dict[str, Tensor]) -> Tensor:
        return self.factor * super().score_all_items(batch)


def scripted_config(folder: Path, name: str, schedule: list[float]) -> str:
    """configs/popularity.yaml with ScriptedPopularity(schedule) as the model."""
    spec = yaml.safe_load((ROOT / "configs" / "popularity.yaml").read_text())
    spec["model"] = {"class_path": f"{__name__}.ScriptedPopularity",
                     "init_args": {**spec["model"].get("init_args", {}), "schedule": schedule}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_runs_stop_early_and_are_tested_with_their_best_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    # Scripted: val CTR@10 of a constant scorer (1/11) at epoch 0, Popularity's at epoch 1, then reversed (worse):
    # best epoch 1; misses count from epoch MIN_EPOCHS (5) on, so it stops after epochs 5, 6, 7 (8 epochs). It is the
    # DRL-Rec "teacher" of Student, which is Popularity at every epoch (counts grow, the ranking stays): no
    # improvement after epoch 0, stopped after 8 epochs too.
    methods = [
        Method("Popularity", "configs/popularity.yaml", reproduce.capped(max_epochs=1)),
        Method("Scripted", scripted_config(tmp_path, "scripted", [0.0, 1.0, -1.0]), role="teacher"),
        Method("Student", scripted_config(tmp_path, "student", [1.0]), role="student", requires="Scripted"),
    ]
    monkeypatch.setattr(registry, "METHODS", methods)  # the registry `select_methods` reads
    out = tmp_path / "out"
    code = reproduce.main(["--out", str(out), "--budget", "quick", "--wandb", "none", *TINY_DATA,
                           f"--data.cache_dir={tmp_path / 'cache'}"])
    assert code == 0, capsys.readouterr().err[-3000:]
    runs = {run["method"]: run for run in json.loads((out / "runs.json").read_text())["runs"]}
    popularity, scripted, student = runs["Popularity"], runs["Scripted"], runs["Student"]

    val = [point["val/ctr@10"] for point in scripted["val_curve"]]
    assert len(val) == reproduce.MIN_EPOCHS + 3 == 8 and val[1] > max(val[0], *val[2:]) and val[0] == pytest.approx(1 / 11)
    assert scripted["best_epoch"] == 1 and scripted["epochs"] == 8 and scripted["stopped_by"] == "early_stopping"
    # tested with the epoch-1 checkpoint: Popularity's ranking, not the reversed one of the last epoch
    assert scripted["metrics"] == pytest.approx(popularity["metrics"])
    assert torch.load(scripted["checkpoint"], weights_only=True)["epoch"] == 1
    assert student["best_epoch"] == 0 and student["epochs"] == 8 and student["stopped_by"] == "early_stopping"
    assert f"--model.init_args.teacher_ckpt={scripted['checkpoint']}" in (out / "logs" / "student-seed0.log").read_text()
    assert popularity["epochs"] == 1 and popularity["stopped_by"] == "max_epochs"

    table = {row["method"]: row for row in json.loads((out / "table1.json").read_text())["rows"]}
    assert table["Scripted"]["best_epoch"] == 1 and table["Student"]["best_epoch"] == 0
    assert all(table[m]["train_s"] > 0 for m in ("Popularity", "Scripted", "Student"))
    assert table["Random"]["best_epoch"] is None
    markdown = (out / "table1.md").read_text()
    assert TABLE_HEADER in markdown
    assert f"| Scripted | {' | '.join(['%.3f' % table['Scripted'][f'ctr@{k}'] for k in KS])}" in markdown.replace("**", "")


def test_own_options_are_parsed_and_every_other_argument_passes_to_the_runs() -> None:
    from lit_rec.reproduce.cli import build_parser, split_argv

    parser = build_parser()
    data = str(ROOT / "configs" / "data" / "ml100k.yaml")
    own, passthrough = split_argv(parser, [
        "--data", data, "--data.path", "../x", "--out=o", "--trainer", "t.yaml", "--seeds", "2", "--data.format=csv",
        "--methods", "dqn", "--trainer.max_epochs=3", "--wandb=none"])
    assert own == ["--data", data, "--out=o", "--seeds", "2", "--methods", "dqn", "--wandb=none"]
    assert passthrough == ["--data.path", "../x", "--trainer", "t.yaml", "--data.format=csv", "--trainer.max_epochs=3"]
    options = parser.parse_args(own)
    assert (Path(options.data), options.out, options.seeds, options.methods, options.wandb) == (Path(data), "o", 2, "dqn", "none")
    assert (options.budget, options.project, options.group) == ("quick", "lit_rec", "")


@pytest.mark.parametrize("args, message", [
    (["--budget", "big"], "error: --budget: Expected a typing.Literal['smoke', 'quick', 'full']. Got value: big"),
    (["--seeds", "0"], "error: --seeds: Not of type PositiveInt"),
    (["--data", "no/such.yaml"], "error: --data: Not of type Path_fr: File does not exist"),
    (["--methods", "nope,dqn"], "error: unknown method(s) nope; known: Popularity, LinUCB"),
    (["--wandb", "loud"], "error: --wandb: Expected"),
])
def test_a_bad_option_is_one_line_and_exit_code_2(args: list[str], message: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert reproduce.main(["--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
    assert reproduce.main([]) == 2 and capsys.readouterr().err == "error: the following arguments are required: out\n"


def test_a_bad_run_argument_stops_the_reproduction_with_the_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert reproduce.main(["--out", str(out), "--methods", "popularity", "--wandb", "none", "--data.no_such_key=1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"error: bad arguments (code 2); see {out}/logs"
    assert err[-2].startswith("[reproduce] Popularity seed 0: ") and "no_such_key" in err[-2], err


def test_the_report_charts_every_complete_row_as_one_line_per_method() -> None:
    from lit_rec.reproduce.wandb_runs import ctr_by_method

    rows = [{"method": "Random", **{f"ctr@{k}": 1 / (k + 1) for k in reproduce.KS}},
            {"method": "DQN", **{f"ctr@{k}": 0.5 for k in reproduce.KS}},
            {"method": "Failed", "ctr@1": None}]
    ks, ctrs, methods = ctr_by_method(rows)
    assert ks == list(reproduce.KS) and methods == ["Random", "DQN"]
    assert ctrs[0] == [1 / (k + 1) for k in reproduce.KS] and ctrs[1] == [0.5] * len(reproduce.KS)


def test_table1_prints_the_test_sample_and_its_interval() -> None:
    results = [fake_result(name, 0, 0.0) for name in ("DQN", "DADRL")]
    meta = {"dataset": "toy", "budget": "quick", "seeds": [0], "command": "c", "date": "d", "wall_s": 60.0,
            "cpu_s": 50.0, "load_average_at_start": "1.00", "torch_threads": 1, "wandb_group": "g",
            "cap": reproduce.CAPS["quick"], "monitor": "val/ctr@10", "patience": 3}
    assert "events evaluated" not in reproduce.format_table1(reproduce.table_rows(results, ["DQN"]), meta, [])
    for result in results:
        result.test_sample = (1000, 5000)
    text = reproduce.format_table1(reproduce.table_rows(results, ["DQN", "DADRL"]), meta, [])
    ctr = 0.9 / math.sqrt(10)
    width = 1.959963984540054 * math.sqrt(ctr * (1 - ctr) / 1000 * 4000 / 4999)
    assert f"test: 1000 of 5000 events evaluated (a seeded sample, eval_max_events); 95% CI of CTR@10 ± {width:.4f}" in text
    for result in results:
        result.test_sample = (5000, 5000)
    assert "5000 of 5000 events evaluated (every event, exact); 95% CI of CTR@10 ± 0.0000" in reproduce.format_table1(
        reproduce.table_rows(results, ["DQN"]), meta, [])

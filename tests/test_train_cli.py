"""The command line: every shipped config loads, LinUCB fits end to end, bad input is one line + exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_rec.cli import DEFAULT_CALLBACKS, main, make_cli, method_config

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
METHOD_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml"))
DATA_CONFIGS = sorted((ROOT / "configs" / "data").glob("*.yaml"))
TRAINER_CONFIGS = sorted((ROOT / "configs" / "trainer").glob("*.yaml"))
CALLBACK_CONFIGS = sorted((ROOT / "configs" / "callbacks").glob("*.yaml"))


def test_every_shipped_yaml_is_loaded_by_a_test() -> None:
    """The method files, the data and trainer groups below, the callbacks group read before every `--config`."""
    shipped = sorted((ROOT / "configs").rglob("*.yaml"))
    assert shipped == sorted(METHOD_CONFIGS + DATA_CONFIGS + TRAINER_CONFIGS + CALLBACK_CONFIGS)
    assert CALLBACK_CONFIGS == [DEFAULT_CALLBACKS]


def _print_config(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=lambda p: p.name)
def test_every_method_config_parses(config: Path, capsys: pytest.CaptureFixture) -> None:
    _print_config(["--config", str(config)])
    assert "class_path" in capsys.readouterr().out


@pytest.mark.parametrize("config", DATA_CONFIGS + TRAINER_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_group_config_parses_with_a_method(config: Path) -> None:
    group = config.parent.name
    _print_config(["--config", str(ROOT / "configs" / "linucb.yaml"), f"--{group}", str(config)])


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_every_subcommand_reads_the_callbacks_group_before_the_config(subcommand: str, capsys: pytest.CaptureFixture) -> None:
    config = ROOT / "configs" / "dadrl.yaml"
    with pytest.raises(SystemExit) as exit_info:
        make_cli([subcommand, "--config", str(config), "--early_stopping.patience=4", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = method_config(config)
    assert [c["class_path"] for c in printed["trainer"]["callbacks"]] == [c["class_path"] for c in expected["trainer"]["callbacks"]]
    assert printed["early_stopping"]["class_path"] == expected["early_stopping"]["class_path"]
    assert printed["early_stopping"]["init_args"] == {**printed["early_stopping"]["init_args"],
                                                      **expected["early_stopping"]["init_args"], "patience": 4}


def test_trainer_group_files_keep_the_method_callbacks(capsys: pytest.CaptureFixture) -> None:
    _print_config(["--config", str(ROOT / "configs" / "linucb.yaml"), "--trainer", str(ROOT / "configs/trainer/ddp_sim.yaml")])
    out = capsys.readouterr().out
    assert "CTRLogger" in out and "ModelCheckpoint" in out and "ddp" in out


def run_train(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs train.py in a subprocess with W&B off."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("LIT_REC_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def test_bad_file_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "ratings.csv"
    bad.write_bytes(b"user,item,ts\n\x00\xff\xfe binary junk\x00\x01")
    result = run_train(
        ["fit", "--config", str(ROOT / "configs/linucb.yaml"), "--data.format=csv", f"--data.path={bad}",
         f"--data.cache_dir={tmp_path / 'cache'}", "--trainer.logger=false"],
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "ratings.csv" in lines[0]


def test_missing_path_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    result = run_train(
        ["fit", "--config", str(ROOT / "configs/linucb.yaml"), "--data", str(ROOT / "configs/data/ml100k.yaml"),
         f"--data.path={tmp_path / 'nowhere'}", f"--data.cache_dir={tmp_path / 'cache'}", "--trainer.logger=false"],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr


def _main_stderr(args: list[str], capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """`train.py ARGS` in-process (lit_rec.cli.main): its exit code and stderr."""
    monkeypatch.delenv("LIT_REC_DEBUG", raising=False)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capfd.readouterr().err


def _assert_short(code: int, stderr: str, *expected: str) -> None:
    """Exit 2 and at most 5 stderr lines, no usage, no Union-subtype report, each of `expected` in them."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and 1 <= len(lines) <= 5, stderr
    assert lines[0].startswith("error: ") and "usage:" not in stderr and "Union" not in stderr, stderr
    for text in expected:
        assert text in stderr, (text, stderr)


FLAG_TYPOS = {  # flag: (the key as named, the suggestion)
    "model": ("--model.init_args.lrr=0.1", "--model.init_args.lr"),
    "model-short": ("--model.gama=0.9", "--model.gamma"),
    "model-nested": ("--model.init_args.encoder.dimm=8", "--model.init_args.encoder.dim"),
    "trainer": ("--trainer.max_stepz=2", "--trainer.max_steps"),
    "data": ("--data.histroy_len=20", "--data.history_len"),
    "early_stopping": ("--early_stopping.patiense=2", "--early_stopping.patience"),
}


@pytest.mark.parametrize("case", FLAG_TYPOS, ids=str)
def test_a_flag_typo_is_a_short_error_with_a_suggestion(case: str, capfd, monkeypatch) -> None:
    flag, suggestion = FLAG_TYPOS[case]
    code, stderr = _main_stderr(["fit", "--config", str(ROOT / "configs/dqn.yaml"), flag], capfd, monkeypatch)
    _assert_short(code, stderr, flag.split("=")[0], "on the command line", f"did you mean {suggestion}")


YAML_TYPOS = {  # YAML text: (the key as named, its line, the suggestion)
    "model": ("model:\n  init_args:\n    gama: 0.9\n", "model.init_args.gama", 3, "model.init_args.gamma"),
    "trainer": ("trainer:\n  max_epochs: 1\n  max_stepz: 2\n", "trainer.max_stepz", 3, "trainer.max_steps"),
    "data": ("data:\n  histroy_len: 20\n", "data.histroy_len", 2, "data.history_len"),
    "top": ("trainr:\n  max_steps: 2\n", "trainr.max_steps", 2, "trainer.max_steps"),
}


@pytest.mark.parametrize("case", YAML_TYPOS, ids=str)
def test_a_yaml_typo_is_a_short_error_naming_file_and_line(case: str, tmp_path: Path, capfd, monkeypatch) -> None:
    text, key, line, suggestion = YAML_TYPOS[case]
    typo = tmp_path / "typo.yaml"
    typo.write_text(text)
    code, stderr = _main_stderr(["fit", "--config", str(ROOT / "configs/dqn.yaml"), "--config", str(typo)],
                                capfd, monkeypatch)
    _assert_short(code, stderr, key, f"{typo}, line {line}", f"did you mean {suggestion}")


def test_a_group_file_typo_names_the_group_file(tmp_path: Path, capfd, monkeypatch) -> None:
    typo = tmp_path / "data.yaml"
    typo.write_text("format: synthetic\nhistroy_len: 20\n")
    code, stderr = _main_stderr(["fit", "--config", str(ROOT / "configs/linucb.yaml"), "--data", str(typo)],
                                capfd, monkeypatch)
    _assert_short(code, stderr, "data.histroy_len", f"{typo}, line 2", "did you mean data.history_len")


def test_a_bad_value_is_a_short_error(capfd, monkeypatch) -> None:
    code, stderr = _main_stderr(["fit", "--config", str(ROOT / "configs/dqn.yaml"), "--model.init_args.gamma=abc"],
                                capfd, monkeypatch)
    _assert_short(code, stderr, "model.init_args.gamma", "abc")
    code, stderr = _main_stderr(["fit", "--config", str(ROOT / "configs/dqn.yaml"), "--trainer.max_steps=abc"],
                                capfd, monkeypatch)
    _assert_short(code, stderr, "trainer.max_steps", "abc")


@pytest.mark.parametrize("flag", ["--optimizer=Adam", "--lr_scheduler=StepLR", "--optimizer.lr=0.1"])
def test_optimizer_and_lr_scheduler_are_not_keys(flag: str, capfd, monkeypatch) -> None:
    """Every lit_rec module owns its optimiser (DADRL's server Adam included): LightningCLI's would replace it."""
    code, stderr = _main_stderr(["fit", "--config", str(ROOT / "configs/dadrl.yaml"), flag], capfd, monkeypatch)
    _assert_short(code, stderr, flag.split("=")[0], "is not a key", "own optimiser")


def test_print_config_has_no_optimizer_keys(capsys: pytest.CaptureFixture) -> None:
    _print_config(["--config", str(ROOT / "configs/dadrl.yaml")])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "optimizer" not in printed and "lr_scheduler" not in printed


def test_full_usage_only_with_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", "--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "--trainer.max_steps" in out and "--data.history_len" in out and "--optimizer" not in out


def test_a_typo_in_a_real_process_is_short_and_as_the_readme_shows(tmp_path: Path) -> None:
    command = "python train.py fit --config configs/dqn.yaml --model.init_args.lrr=0.1"
    readme = (ROOT / "README.md").read_text()
    shown = readme.split(f"$ {command}\n", 1)[1].split("```", 1)[0]
    result = run_train(command.split()[2:], cwd=ROOT)
    _assert_short(result.returncode, result.stderr, "--model.init_args.lrr", "did you mean --model.init_args.lr?")
    assert "Traceback" not in result.stderr
    assert result.stderr == shown


def test_a_method_s_keys_are_listed_with_types_and_defaults(capsys: pytest.CaptureFixture) -> None:
    """README: `train.py fit --model.help lit_rec.modules.linucb.LinUCB`."""
    with pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", "--model.help", "lit_rec.modules.linucb.LinUCB"])
    assert exit_info.value.code in (0, None)
    out = " ".join(capsys.readouterr().out.split())
    assert "--model.alpha ALPHA width of the exploration bonus during training. (type: float, default: 0.5)" in out


def test_help_documents_every_key_of_every_method(capsys: pytest.CaptureFixture) -> None:
    """`--print_config` has no comments (no ruamel.yaml); `--model.help CLASS` and `--help` carry each key's doc."""
    from lit_rec.reproduce.methods import config_names

    for class_path in sorted({method_config(ROOT / "configs" / f"{m}.yaml")["model"]["class_path"] for m in config_names()}):
        with pytest.raises(SystemExit):
            make_cli(["fit", "--model.help", class_path])
        out = capsys.readouterr().out
        options = out[out.index("\n  --model."):]
        blocks = [" ".join(b.split()) for b in re.split(r"\n  (?=--model\.)", options)[1:]]
        undocumented = [b.split()[0] for b in blocks if "(type:" in b and len(b.split("(type:", 1)[0].split()) <= 2]
        assert not undocumented, f"{class_path}: {undocumented}"


def test_a_wandb_run_is_named_grouped_and_tagged_by_method_data_and_seed() -> None:
    from lit_rec.cli import make_cli

    cli = make_cli(["--config", str(ROOT / "configs" / "ddqn.yaml"), "--seed_everything=3", "--trainer.max_steps=1"], run=False)
    init = cli.trainer.logger._wandb_init
    assert (init["name"], init["group"], init["job_type"]) == ("ddqn-synthetic-3", "ddqn-synthetic", "fit")
    assert init["tags"] == ["ddqn", "synthetic", "seed3", "fit"]
    given = make_cli(["--config", str(ROOT / "configs" / "ddqn.yaml"), "--trainer.logger.init_args.name=mine",
                      "--trainer.max_steps=1"], run=False)
    assert given.trainer.logger._wandb_init["name"] == "mine"  # what a user (or reproduce) sets is kept


@pytest.mark.parametrize("method", ["dqn", "seqrec", "dadrl"])
def test_the_run_config_reaches_a_logger_once_nested(method: str, tmp_path: Path) -> None:
    """The resolved config is logged once, as `model`/`data`/`trainer`; the model's own hparams are not sent again flat."""
    args = ["fit", "--config", str(ROOT / "configs" / f"{method}.yaml"), "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"]
    main(args)
    logged = yaml.safe_load(next(tmp_path.rglob("hparams.yaml")).read_text())
    assert {"model", "data", "trainer"} <= logged.keys()
    assert not {"lr", "encoder", "seed"} & logged.keys(), sorted(logged)


def test_without_a_terminal_the_progress_is_one_line_per_epoch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "popularity.yaml"),
         "--trainer.max_epochs=2", "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
         "--data.synthetic_users=60", "--data.synthetic_items=150", "--data.synthetic_events_per_user=10"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"], lines
    assert "\r" not in result.stdout + result.stderr  # no redrawn bar


def test_a_test_from_a_checkpoint_is_linked_to_the_wandb_run_that_trained_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`test --ckpt_path` after `fit` (two processes): the same name and group, job type `test`, a `fit:<id>` tag."""
    monkeypatch.chdir(tmp_path)
    small = ["--data.synthetic_users=60", "--data.synthetic_items=150", "--data.synthetic_events_per_user=10",
             "--trainer.enable_progress_bar=false"]
    fit = make_cli(["fit", "--config", str(ROOT / "configs" / "popularity.yaml"), "--trainer.max_epochs=1", *small])
    trained_by = fit.trainer.logger.experiment.id
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    test = make_cli(["test", "--config", str(ROOT / "configs" / "popularity.yaml"), "--ckpt_path", str(checkpoint),
                     "--trainer.enable_progress_bar=false"])
    init = test.trainer.logger._wandb_init
    assert (init["name"], init["group"], init["job_type"]) == ("popularity-synthetic-0", "popularity-synthetic", "test")
    assert f"fit:{trained_by}" in init["tags"] and trained_by in init["notes"]

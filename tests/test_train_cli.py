"""The command line: every shipped config loads, LinUCB fits end to end, bad input is one line + exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_rec.cli import DEFAULT_CALLBACKS, make_cli, method_config

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

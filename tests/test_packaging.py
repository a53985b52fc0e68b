"""The wheel: `pip install .` into a fresh venv, then `lit-rec fit --config dqn` from an empty folder; config names."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from lit_rec.cli import DEFAULT_CALLBACKS
from lit_rec.config_files import config_dir, resolve_config, resolve_config_args

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "lit_rec", "datamodules", "callbacks", "configs")


def test_a_bare_name_is_a_shipped_config_and_anything_else_is_left_as_given(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_dir() == ROOT / "configs" and DEFAULT_CALLBACKS == ROOT / "configs" / "callbacks" / "default.yaml"
    assert resolve_config("dqn") == str(ROOT / "configs" / "dqn.yaml")
    for value in ("configs/dqn.yaml", "dqn.yaml", "run/config.yaml", "{trainer: {max_steps: 1}}"):
        assert resolve_config(value) == value
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dqn").write_text("seed_everything: 1\n")
    assert resolve_config("dqn") == "dqn"  # a file of that name in the working folder wins
    with pytest.raises(FileNotFoundError, match=r"--config dqnn: .*shipped config name \(a2c_d, .*dqn, "):
        resolve_config("dqnn")
    assert resolve_config_args(["fit", "--config", "ddqn", "-c=dadrl", "--trainer.max_steps=1"]) == [
        "fit", "--config", str(ROOT / "configs" / "ddqn.yaml"), f"-c={ROOT / 'configs' / 'dadrl.yaml'}",
        "--trainer.max_steps=1"]


def test_data_and_trainer_take_the_names_of_shipped_configs_too() -> None:
    assert resolve_config_args(["test", "--data", "ml100k", "--trainer=ddp_sim", "--data.path", "x"]) == [
        "test", "--data", str(ROOT / "configs" / "data" / "ml100k.yaml"), f"--trainer={ROOT / 'configs' / 'trainer' / 'ddp_sim.yaml'}",
        "--data.path", "x"]
    assert resolve_config_args(["fit", "--trainer", "null", "--data=None"]) == ["fit", "--trainer", "null", "--data=None"]
    with pytest.raises(FileNotFoundError, match=r"--data ml10m: .*shipped config name \(ml100k, ml1m, outbrain, synthetic\)"):
        resolve_config_args(["fit", "--data", "ml10m"])


def test_train_py_takes_shipped_names_as_lit_rec_does(tmp_path: Path) -> None:
    """README: `python train.py fit --config dqn --data synthetic ...` from any folder."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", "--config", "popularity", "--data", "synthetic", "--trainer", "cpu",
         "--trainer.max_epochs=1", "--trainer.logger=false", "--data.synthetic_users=60", "--data.synthetic_items=150",
         "--data.synthetic_events_per_user=10"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    config = Path(result.stderr.split("config: ", 1)[1].split()[0])
    assert config.is_file() and config.is_relative_to(tmp_path)


def test_the_wheel_lists_every_package_and_config_folder() -> None:
    """pyproject.toml names its packages (configs/ is mapped to lit_rec.configs, which `find` cannot see)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("lit_rec", "datamodules", "callbacks")
             for p in (ROOT / top).rglob("__init__.py")}
    found |= {"lit_rec.configs"} | {f"lit_rec.configs.{d.name}" for d in (ROOT / "configs").iterdir() if d.is_dir()}
    assert sorted(setuptools["packages"]) == sorted(found)
    assert setuptools["package-dir"] == {"lit_rec.configs": "configs"}


def _offline_install_missing() -> str | None:
    """Why `pip install --no-index --no-build-isolation` cannot build the wheel here, or None."""
    if importlib.util.find_spec("pip") is None:
        return "pip is not importable in the test environment"
    try:
        version = tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return "setuptools is not installed in the test environment (no index to fetch the build backend from)"
    if version < (70, 1) and importlib.util.find_spec("wheel") is None:
        return f"setuptools {'.'.join(map(str, version))} needs the wheel package to build, and it is not installed"
    return None


@pytest.mark.slow
def test_pip_install_then_lit_rec_fit_in_an_empty_folder(tmp_path: Path) -> None:
    """A venv of its own whose site-packages sees this environment's (the dependencies, through a .pth line,
    which leaves this environment's own editable lit_rec out), `pip install --no-deps --no-index` of a copy
    of the sources, then the console command with a bare config name, from a folder with nothing in it."""
    reason = _offline_install_missing()
    if reason:
        pytest.skip(f"offline install impossible: {reason}")
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:  # a copy: setuptools builds in the source tree (build/, *.egg-info)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    here = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (purelib / "lit_rec_dependencies.pth").write_text("".join(f"{path}\n" for path in here))
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                              str(source)], env=env, capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run([str(python), "-c", "import lit_rec, callbacks; print(lit_rec.__file__, callbacks.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(path).is_relative_to(purelib) for path in where), where
    fit = subprocess.run([str(venv / "bin" / "lit-rec"), "fit", "--config", "dqn", "--trainer.max_steps=2",
                          "--trainer.logger=false"], cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "max_steps=2` reached" in fit.stderr + fit.stdout
    assert (empty / "checkpoints" / "last.ckpt").is_file()
    config = (empty / "config.yaml").read_text()  # the resolved run config: dqn.yaml over the callbacks group
    assert "lit_rec.modules.dqn.DQN" in config and "callbacks.DataStatsLogger" in config

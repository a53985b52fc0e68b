"""Checkpoints: a real LinUCB checkpoint loads with weights_only=True; a missing, truncated or corrupt
`--ckpt_path` is one `error:` line and exit 2 through the CLI, before Lightning touches the file."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from lit_rec.checkpoints import CheckpointError, check_ckpt_path, load_checkpoint
from lit_rec.cli import main, make_cli

ROOT = Path(__file__).resolve().parents[1]
ML_100K = ROOT.parent / "shared" / "data" / "ml-100k"
TIMEOUT_S = 120
# a small simulator (150 items: max(eval_ks) = 100 negatives per held-out event still fit); 60 training windows
# (one per user) in batches of 16: 4 steps an epoch
DATA_ARGS = [
    "--data.synthetic_users=60", "--data.synthetic_items=150", "--data.synthetic_events_per_user=10", "--data.batch_size=16",
    "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=1",
]


def cli_args(subcommand: str, root: Path, *extra: str) -> list[str]:
    return [subcommand, "--config", str(ROOT / "configs/linucb.yaml"), *DATA_ARGS,
            f"--data.cache_dir={root / 'cache'}", f"--trainer.default_root_dir={root}", *extra]


def run_main(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_info:
        return exit_info.code if isinstance(exit_info.code, int) else int(exit_info.code is not None)
    return 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LinUCB checkpoint after 3 training steps (fit in-process, under umask 022)."""
    root = tmp_path_factory.mktemp("linucb")
    umask = os.umask(0o022)
    try:
        assert run_main(cli_args("fit", root, "--trainer.max_steps=3")) == 0
    finally:
        os.umask(umask)
    checkpoint = root / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    return checkpoint


def test_linucb_checkpoint_loads_with_weights_only(trained: Path) -> None:
    raw = torch.load(trained, map_location="cpu", weights_only=True)
    checkpoint = load_checkpoint(trained)
    assert checkpoint.keys() == raw.keys()
    assert {"state_dict", "loops", "callbacks", "optimizer_states", "lit_rec_rng"} <= checkpoint.keys()
    assert checkpoint["global_step"] == 3
    assert checkpoint["state_dict"]["a_inv"].dtype == torch.float64


def test_cli_test_accepts_a_good_checkpoint(trained: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    assert run_main(cli_args("test", tmp_path, f"--ckpt_path={trained}")) == 0
    out, err = capfd.readouterr()
    assert "error:" not in err
    assert "[test @ step 3]" in out  # the tested checkpoint's training step, not the new trainer's 0


def _damage(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "bitflip":  # bytes of the pickle replaced: the zip directory is intact, its CRC is not
        start = data.index(b"data.pkl") + 200
        path.write_bytes(data[:start] + bytes(b ^ 0xFF for b in data[start : start + 64]) + data[start + 64 :])
    return path  # "missing": never written


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing", "found nothing there"),
        ("empty", "found an empty file"),
        ("truncated", "truncated or corrupt file"),
        ("random", "truncated or corrupt file"),
        ("bitflip", "CRC mismatch"),
    ],
)
def test_load_checkpoint_names_the_file_and_the_reason(kind: str, reason: str, trained: Path, tmp_path: Path) -> None:
    path = _damage(kind, trained, tmp_path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


class NotAllowed:
    """A class torch's weights_only unpickler refuses."""


def test_load_checkpoint_reports_what_weights_only_refuses(tmp_path: Path) -> None:
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "extra": NotAllowed()}, path)
    with pytest.raises(CheckpointError, match=r"weights_only=True, found Unsupported global.*NotAllowed"):
        load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="expected a checkpoint dict, found list"):
        load_checkpoint(path)


def test_lightning_names_are_left_to_lightning(tmp_path: Path) -> None:
    for name in (None, "last", "hpc", "registry:model:latest", "s3://bucket/x.ckpt", str(tmp_path)):
        check_ckpt_path(name)  # no error: Lightning resolves these
    with pytest.raises(CheckpointError):
        check_ckpt_path(tmp_path / "nope.ckpt")
    # "best" resolves only in the process of a fit: a fresh train.py is told which file to pass
    with pytest.raises(CheckpointError, match="checkpoints/best.ckpt"):
        check_ckpt_path("best")


def _assert_one_line_error(code: int, stderr: str, path: Path) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and str(path) in lines[0], stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("kind", ["missing", "truncated", "random"])
def test_cli_test_with_a_bad_checkpoint_is_one_line_and_exit_2(
    kind: str, trained: Path, tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIT_REC_DEBUG", raising=False)
    path = _damage(kind, trained, tmp_path)
    code = run_main(cli_args("test", tmp_path, f"--ckpt_path={path}"))
    _assert_one_line_error(code, capfd.readouterr().err, path)


@pytest.mark.slow
def test_cli_subprocess_truncated_checkpoint(trained: Path, tmp_path: Path) -> None:
    path = _damage("truncated", trained, tmp_path)
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    env.pop("LIT_REC_DEBUG", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *cli_args("test", tmp_path, f"--ckpt_path={path}")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    _assert_one_line_error(result.returncode, result.stderr, path)


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_fails(tmp_path, monkeypatch) -> None:
    from lit_rec.checkpoints import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 1

    def crash(obj, handle):  # a crash half-way through writing
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind


def test_atomic_checkpoint_io_honours_the_umask(tmp_path) -> None:
    from lit_rec.checkpoints import AtomicCheckpointIO

    umask = os.umask(0o022)
    try:
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "a.ckpt")
        os.umask(0o027)
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, tmp_path / "b.ckpt")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o644  # -rw-r--r--
    assert (tmp_path / "b.ckpt").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt"]


def test_cli_checkpoints_are_rw_r_r_under_umask_022(trained: Path) -> None:
    modes = {p.name: p.stat().st_mode & 0o777 for p in trained.parent.glob("*.ckpt")}
    assert modes and set(modes.values()) == {0o644}, modes


# ------------------------------------------------------------------------------------------- run folders

def test_each_run_writes_its_config_into_its_run_folder(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    import wandb as wandb_module

    """Default (W&B) logger: a folder per run, `runs/lit_rec/<run id>/{config.yaml,checkpoints/}`; without a
    logger the run folder is default_root_dir, and a second run there keeps the first config (config-1.yaml)."""
    runs = tmp_path / "runs"
    wandb = cli_args("fit", tmp_path, "--trainer.max_steps=1", f"--trainer.logger.init_args.save_dir={runs}")
    for _ in range(2):
        assert run_main([a for a in wandb if a != "--trainer.logger=false"]) == 0
        wandb_module.finish()  # as the end of a train.py process does
    configs = sorted((runs / "lit_rec").glob("*/config.yaml"))
    assert len(configs) == 2 and configs[0] != configs[1]
    assert all((c.parent / "checkpoints" / "last.ckpt").is_file() for c in configs)
    assert not (runs / "config.yaml").exists()
    for _ in range(2):
        assert run_main(cli_args("fit", tmp_path / "plain", "--trainer.max_steps=1")) == 0
    assert sorted(p.name for p in (tmp_path / "plain").glob("config*.yaml")) == ["config-1.yaml", "config.yaml"]
    printed = [line for line in capfd.readouterr().err.splitlines() if line.startswith("config: ")]
    assert printed[-1] == f"config: {(tmp_path / 'plain' / 'config-1.yaml').resolve()}"


def test_predict_writes_a_new_file_into_the_run_folder(trained: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """`predict --top_k N`: N items per user, `<run folder>/predictions.parquet`, then predictions-1.parquet; the
    absolute path printed."""
    writer = "--trainer.callbacks+=callbacks.PredictionWriter"
    for top_k in (3, 2):
        assert run_main(cli_args("predict", tmp_path, writer, f"--top_k={top_k}", f"--ckpt_path={trained}")) == 0
    printed = [line for line in capfd.readouterr().out.splitlines() if line.startswith("predictions: ")]
    files = [tmp_path / "predictions.parquet", tmp_path / "predictions-1.parquet"]
    assert printed == [f"predictions: {file.resolve()}" for file in files]
    for file, top_k in zip(files, (3, 2)):
        frame = pl.read_parquet(file)
        assert frame["user"].n_unique() == 60 and frame["rank"].max() == top_k


# ------------------------------------------------------------------------- a checkpoint is self-contained

@pytest.fixture(scope="module")
def ml100k_fit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A SeqRec fit of 3 steps on a copy of MovieLens 100K: (best.ckpt, the copy, the fit's --data arguments)."""
    if not (ML_100K / "u.data").is_file():
        pytest.skip(f"needs {ML_100K}")
    root = tmp_path_factory.mktemp("ml100k")
    (root / "ml-100k").mkdir()
    (root / "ml-100k" / "u.data").write_bytes((ML_100K / "u.data").read_bytes())
    data = ["--data", str(ROOT / "configs/data/ml100k.yaml"), f"--data.path={root / 'ml-100k'}", f"--data.cache_dir={root / 'cache'}"]
    fit = ["fit", "--config", str(ROOT / "configs/seqrec.yaml"), *data, "--trainer.max_epochs=1",
           "--trainer.limit_train_batches=3", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
           f"--trainer.default_root_dir={root / 'fit'}"]
    assert run_main(fit) == 0
    return root / "fit" / "checkpoints" / "best.ckpt", root / "ml-100k", data


def _test_metrics(ckpt: Path, folder: Path, *data: str) -> dict[str, float]:
    cli = make_cli(["test", "--config", str(ROOT / "configs/seqrec.yaml"), *data, f"--ckpt_path={ckpt}",
                    "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={folder}"])
    assert cli.datamodule.format == "movielens"
    return {key: float(value) for key, value in cli.trainer.callback_metrics.items()}


@pytest.mark.real_data
def test_test_without_data_arguments_restores_them_from_the_checkpoint(ml100k_fit, tmp_path: Path) -> None:
    ckpt, _, data = ml100k_fit
    restored = _test_metrics(ckpt, tmp_path / "restored")
    repeated = _test_metrics(ckpt, tmp_path / "repeated", *data)
    assert restored and restored == repeated



@pytest.mark.real_data
def test_data_arguments_given_anew_win_over_the_checkpoints(ml100k_fit, capsys: pytest.CaptureFixture) -> None:
    ckpt, copy, _ = ml100k_fit
    with pytest.raises(SystemExit):
        make_cli(["test", "--config", str(ROOT / "configs/seqrec.yaml"), f"--ckpt_path={ckpt}", "--data.batch_size=7",
                  "--print_config"])
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["batch_size"] == 7  # given
    assert (data["format"], data["path"], data["history_len"]) == ("movielens", str(copy), 50)  # the checkpoint's


@pytest.mark.real_data
def test_a_checkpoint_whose_data_is_gone_is_one_line(ml100k_fit, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    ckpt, copy, _ = ml100k_fit
    (copy / "u.data").rename(tmp_path / "u.data")
    copy.rmdir()
    try:
        code = run_main(["test", "--config", str(ROOT / "configs/seqrec.yaml"), f"--ckpt_path={ckpt}", "--trainer.logger=false",
                         f"--trainer.default_root_dir={tmp_path}"])
        err = capfd.readouterr().err
        _assert_one_line_error(code, err, ckpt)
        assert f"data.path {copy} " in err and "no longer exists" in err
    finally:
        copy.mkdir()
        (tmp_path / "u.data").rename(copy / "u.data")


def test_resume_without_data_arguments_restores_them(trained: Path, tmp_path: Path) -> None:
    """The fixture's simulator (60 users x 150 items, not the default 500 x 300) comes back from the checkpoint."""
    cli = make_cli(["fit", "--config", str(ROOT / "configs/linucb.yaml"), f"--ckpt_path={trained}", "--trainer.max_steps=4",
                    "--trainer.limit_val_batches=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                    f"--trainer.default_root_dir={tmp_path}"])
    saved = load_checkpoint(trained)["state_dict"]
    assert {k: v.shape for k, v in cli.model.state_dict().items()} == {k: v.shape for k, v in saved.items()}
    assert cli.datamodule.hparams["synthetic_users"] == 60 and cli.datamodule.hparams["synthetic_items"] == 150
    assert cli.trainer.global_step == 4

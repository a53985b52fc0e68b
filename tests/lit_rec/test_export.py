"""lit_rec.export: the TorchScript artefact scores exactly like the checkpoint; bad input is one line, exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lit_rec.cli import make_cli
from lit_rec.export import ExportError, load_module, main, scoring_network
from lit_rec.modules.linucb import LinUCB

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`last.ckpt` of a one-epoch SeqRec fit on a tiny simulated log."""
    folder = tmp_path_factory.mktemp("export")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        make_cli([
            "fit", "--config", str(ROOT / "configs" / "seqrec.yaml"), "--trainer.logger=false",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.max_epochs=1",
            "--data.synthetic_users=60", "--data.synthetic_items=50", "--data.synthetic_events_per_user=12",
            "--data.eval_ks=[1,5,10]", f"--data.cache_dir={folder / 'cache'}", "--model.init_args.encoder.dim=16",
        ])
    finally:
        os.chdir(cwd)
    return folder / "checkpoints" / "last.ckpt"


def test_exported_scores_equal_the_checkpoint(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "seqrec.pt"
    main(["--ckpt", str(checkpoint), "--out", str(out)])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["class"] == "SeqRec" and report["max_abs_difference"] == 0.0

    module = load_module(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert torch.equal(module.network.encoder.item_embedding.weight, saved["network.encoder.item_embedding.weight"])
    artefact = torch.jit.load(str(out))
    g = torch.Generator().manual_seed(1)
    for b, length, c in ((1, 10, 1), (7, 10, 33), (5, 4, 60)):  # any batch, candidate count, shorter histories
        history = torch.randint(0, module.num_items + 1, (b, length), generator=g)
        history[0] = 0  # an empty history too
        candidates = torch.randint(1, module.num_items + 1, (b, c), generator=g)
        with torch.no_grad():
            expected = module.score_candidates({"user": torch.zeros(b, dtype=torch.long), "history": history}, candidates)
        assert torch.equal(artefact(history, candidates), expected)


def test_missing_and_corrupt_checkpoints_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(os.urandom(512))
    for path in (tmp_path / "missing.ckpt", corrupt):
        with pytest.raises(SystemExit) as exit_info:
            main(["--ckpt", str(path), "--out", str(tmp_path / "x.pt")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and path.name in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()


def test_checkpoint_without_class_needs_config(checkpoint: Path, tmp_path: Path) -> None:
    stripped = torch.load(checkpoint, weights_only=True)
    del stripped["hyper_parameters"]
    torch.save(stripped, tmp_path / "stripped.ckpt")
    with pytest.raises(ExportError, match="pass --config"):
        load_module(tmp_path / "stripped.ckpt")


def test_a_method_without_a_network_is_refused() -> None:
    with pytest.raises(ExportError, match="no neural scoring network"):
        scoring_network(LinUCB(num_items=10, num_users=3))

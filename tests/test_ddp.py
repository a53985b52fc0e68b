"""Every method under DDP (configs/trainer/ddp_sim.yaml: 2 CPU ranks, gloo): fits exit 0 on both ranks,
and evaluation (every event counted once) gives the figures of one process."""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl
import pytest
import torch

from lit_rec.reproduce.methods import config_names

ALL_METHODS = config_names()  # every config of the method registry


@pytest.mark.slow
def test_every_method_on_ddp_sim_evaluates_as_one_process(cli_runs, tmp_path: Path) -> None:
    """Every method config on ddp_sim (2 CPU ranks, gloo), through the CLI on the small simulator of
    tests/cli_harness.py (one process per side runs every command: the second rank starts once):
    1. a fit (one epoch) on ddp_sim exits 0 on both ranks, and its last validation, under DDP, equals a
       1-process `validate` of its final checkpoint (DDP-trained weights need not equal 1-process ones);
    2. the method's 1-process fit (shared with the resume tests) tested on ddp_sim gives the 1-process
       `test` figures, on both ranks; its 1-process `validate` equals the fit's own last validation;
    3. a plain `train.py test` on ddp_sim (LinUCB; Lightning relaunches train.py) exits 0 with them too.
    CTR@k bitwise, the other figures to 1e-12 (`assert_same_figures`)."""
    from cli_harness import read_metrics

    references = {method: cli_runs.reference(method) for method in ALL_METHODS}
    one, ddp, ddp_fits = tmp_path / "one", tmp_path / "ddp", tmp_path / "ddp_fit"
    one_items = [{"args": cli_runs.eval_args(m, stage, "cpu", one), "metrics": str(one / f"{m}.{stage}")}
                 for m in ALL_METHODS for stage in ("validate", "test")]
    ddp_items = []
    for m in ALL_METHODS:
        fit = [*cli_runs.fit_args(m, ddp_fits / m, trainer="ddp_sim"), "--trainer.max_epochs=1"]
        ddp_items.append({"args": fit, "metrics": str(ddp / f"{m}.fit")})
        ddp_items.append({"args": cli_runs.eval_args(m, "test", "ddp_sim", ddp), "metrics": str(ddp / f"{m}.test")})
    pids = {one: cli_runs.start_sequence(one_items, one), ddp: cli_runs.start_sequence(ddp_items, ddp)}
    for folder, pid in pids.items():
        code, other_codes, log = cli_runs.finish_sequence(pid, folder)
        assert code == 0 and other_codes == ([0] if folder == ddp else []), f"{folder.name}: exit {code}, other ranks {other_codes}\n{log[-4000:]}"
    # the DDP-trained checkpoints validated in one process, beside a plain `train.py test` on ddp_sim
    check, plain = tmp_path / "one_of_ddp", tmp_path / "plain"
    items = [{"args": cli_runs.eval_args(m, "validate", "cpu", check, ckpt_path=ddp_fits / m / "final.ckpt"),
              "metrics": str(check / m)} for m in ALL_METHODS]
    check_pid = cli_runs.start_sequence(items, check)
    plain.mkdir()
    plain_pid = cli_runs.server.start(
        [*cli_runs.eval_args("linucb", "test", "ddp_sim", plain), "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
         f"--trainer.logger.init_args.save_dir={plain}"], plain, plain / "log.txt")
    code, _, log = cli_runs.finish_sequence(check_pid, check)
    assert code == 0, log[-4000:]
    assert cli_runs.server.wait(plain_pid) == 0, (plain / "log.txt").read_text()[-4000:]
    assert_same_figures(csv_test_metrics(plain), read_metrics(one / "linucb.test")[0], "train.py test on ddp_sim")
    # `train.py predict` on ddp_sim without a path: one file in the run folder, no rank parts left, the rows of one process
    frames = {}
    for trainer in ("ddp_sim", "cpu"):
        folder = tmp_path / f"predict_{trainer}"
        folder.mkdir()
        pid = cli_runs.server.start(cli_runs.eval_args("seqrec", "predict", trainer, folder), folder, folder / "log.txt")
        assert cli_runs.server.wait(pid) == 0, (folder / "log.txt").read_text()[-4000:]
        (written,) = [p for p in folder.rglob("*.parquet") if "cache" not in p.parts]
        assert written.name == "predictions.parquet", written
        frames[trainer] = pl.read_parquet(written).sort("user", "rank")
    assert frames["cpu"].height > 0 and frames["ddp_sim"].equals(frames["cpu"])

    for method in ALL_METHODS:
        fit = read_metrics(ddp / f"{method}.fit")
        assert set(fit) == {0, 1} and val_figures(fit[1]) == val_figures(fit[0]), f"{method}: ranks' validations differ"
        assert val_figures(fit[0])["val/ctr@10"] > 0
        assert_same_figures(val_figures(fit[0]), read_metrics(check / method)[0], f"{method} ddp fit: validation vs one process")
        single, double = read_metrics(one / f"{method}.test"), read_metrics(ddp / f"{method}.test")
        assert set(single) == {0} and set(double) == {0, 1} and single[0]["test/ctr@10"] > 0
        assert_same_figures(double[0], single[0], f"{method} test: ddp_sim vs one process")
        assert double[1] == double[0], f"{method} test: rank 1 {double[1]} != rank 0 {double[0]}"
        assert val_figures(read_metrics(one / f"{method}.validate")[0]) == val_figures(references[method].metrics)
    # Popularity's counts are a sum over the train events: under DDP every rank counts every rank's clicks
    # (a global batch of 15 windows is split 7/8 between the ranks, and windows expand to unequal numbers of
    # events), so one DDP epoch counts what half of the 2-epoch 1-process fit counted
    from lit_rec.checkpoints import load_checkpoint

    counts = {run: load_checkpoint(path)["state_dict"]["counts"]
              for run, path in (("one", references["popularity"].final), ("ddp", ddp_fits / "popularity" / "final.ckpt"))}
    assert counts["ddp"].sum() > 0 and torch.equal(2 * counts["ddp"], counts["one"])


def csv_test_metrics(log_dir: Path) -> dict[str, float]:
    """The test/* row of a CSVLogger's metrics.csv."""
    (metrics_file,) = log_dir.rglob("metrics.csv")
    row = next(r for r in csv.DictReader(metrics_file.open()) if r.get("test/ctr@1"))
    return {k: float(v) for k, v in row.items() if k.startswith("test/") and v}


def val_figures(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith("val/")}


def assert_same_figures(ours: dict[str, float], theirs: dict[str, float], what: str) -> None:
    """CTR@k (the model's and popularity's) bitwise; the other figures to 1e-12: they are float64 sums of
    per-event values such as 1/3 or 1/log2(r), and two rank sums added together may round differently in
    the last bit than one sum over every event."""
    assert ours.keys() == theirs.keys(), what
    for key, value in theirs.items():
        if "ctr@" in key:
            assert ours[key] == value, f"{what}: {key} {ours[key]!r} != {value!r}"
        else:
            assert ours[key] == pytest.approx(value, rel=1e-12, abs=0), f"{what}: {key} {ours[key]!r} != {value!r}"

"""Exact resume after SIGKILL, every method, through the real CLI (`train.py fit`, tests/cli_harness.py):
a fit freezes itself right after its checkpoint of step 4 (mid first epoch; 7 steps an epoch, 2 epochs)
and is SIGKILLed; `train.py fit --ckpt_path .../step=4.ckpt` then ends bitwise where the uninterrupted fit
with the same seed ends: the same last validation and train figures, and the same end-of-fit checkpoint
(weights, optimizers, loops, callbacks, RNG, environments, replay buffers, federated clients)."""

from __future__ import annotations

import signal

import pytest

from lit_rec.reproduce.methods import config_names

METHODS = config_names()  # every config of the method registry
MID_EPOCH, EPOCH_END = 4, 7


def kill_and_resume(cli_runs, method: str, step: int):
    """(resumed run, uninterrupted run): a fit of `method` killed after its checkpoint of `step`, resumed from it."""
    if method == "drlrec_student":
        cli_runs.reference("drlrec_teacher")
    cli_runs.start_reference(method)  # runs beside the fit to be killed: two processes, two cores
    pid, killed = cli_runs.start(method, f"killed@{step}", freeze_step=step, every=step)
    code = cli_runs.kill_when_frozen(pid, killed)
    assert code == -signal.SIGKILL, f"exit {code}\n{(killed / 'log.txt').read_text()[-4000:]}"
    assert (killed / "frozen").read_text() == str(step)
    checkpoint = killed / "ckpt" / f"step={step}.ckpt"
    assert checkpoint.is_file() and not (killed / "metrics.json").exists()
    pid, folder = cli_runs.start(method, f"resumed@{step}", ckpt_path=checkpoint, every=step)
    resumed = cli_runs.finish(pid, folder).check()
    reference = cli_runs.reference(method)
    assert reference.metrics["global_step"] == 14 and any(k.startswith("val/ctr@") for k in reference.metrics)
    return resumed, reference


def final_states(*runs) -> list[dict]:
    """The runs' end-of-fit checkpoints without ModelCheckpoint's state (paths of the run folders)."""
    from lit_rec.checkpoints import load_checkpoint

    states = []
    for run in runs:
        state = load_checkpoint(run.final)
        state["callbacks"] = {k: v for k, v in state["callbacks"].items() if not k.startswith("ModelCheckpoint")}
        state["datamodule_hyper_parameters"].pop("cache_dir", None)
        states.append(state)
    return states


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_fit_killed_after_a_mid_epoch_checkpoint_resumes_exactly(method: str, cli_runs) -> None:
    from cli_harness import differences

    resumed, reference = kill_and_resume(cli_runs, method, MID_EPOCH)
    assert resumed.metrics == reference.metrics
    assert differences(*final_states(resumed, reference)) == []


@pytest.mark.slow
def test_fit_killed_after_the_last_checkpoint_of_an_epoch_resumes_exactly(cli_runs) -> None:
    """The checkpoint of an epoch's last step is written before that epoch's validation. Lightning resumes
    from it at the next epoch and does not run the lost validation again: the run ends where the
    uninterrupted one does, but has one validation fewer in its logs and in the loops' progress counters (and
    in EarlyStopping's best score and wait count, which count validations)."""
    from cli_harness import differences

    resumed, reference = kill_and_resume(cli_runs, "seqrec", EPOCH_END)
    assert resumed.metrics == reference.metrics
    ours, theirs = final_states(resumed, reference)
    loops = differences(ours.pop("loops"), theirs.pop("loops"))
    for state in (ours, theirs):
        stopping = [k for k in state["callbacks"] if k.startswith(("EarlyStopping", "WarmupEarlyStopping"))]
        assert len(stopping) == 1, list(state["callbacks"])
        state["callbacks"].pop(stopping[0])
    assert differences(ours, theirs) == []
    assert all("val_loop" in d or "epoch_progress" in d for d in loops), loops
    assert "[val @ step 7]" in (reference.folder / "log.txt").read_text()
    assert "[val @ step 7]" not in (resumed.folder / "log.txt").read_text()

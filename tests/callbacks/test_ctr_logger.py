"""CTRLogger: every validation metric on one W&B x-axis, the training CTR against episodes."""

from __future__ import annotations

from types import SimpleNamespace

from lightning.pytorch.loggers import WandbLogger

from callbacks.ctr_logger import CTRLogger


def test_every_validation_metric_shares_the_global_step_axis(tmp_path, monkeypatch) -> None:
    defined: dict[str, dict] = {}
    run = SimpleNamespace(define_metric=lambda name, **kw: defined.__setitem__(name, kw))
    logger = WandbLogger(save_dir=str(tmp_path), mode="disabled")
    monkeypatch.setattr(type(logger), "experiment", property(lambda self: run))
    trainer = SimpleNamespace(loggers=[logger], is_global_zero=True)
    CTRLogger().on_fit_start(trainer, SimpleNamespace(eval_ks=[1, 10]))
    assert defined["train/ctr"]["step_metric"] == "train/episodes"
    for name in ("val/*", "val/ctr@1", "val/ctr@10"):
        assert defined[name]["step_metric"] == "trainer/global_step", name
    assert defined["val/ctr@10"]["summary"] == "max"
    assert defined["val/sim_time"]["step_metric"] == "trainer/global_step" and "federated/sim_time" in defined

"""Model selection in the shipped configs: every method, through the callbacks group it shares
(configs/callbacks/default.yaml), keeps the best `val/ctr@10` (the first ModelCheckpoint, so `ckpt_path="best"`
resolves to it), the periodic checkpoints of DESIGN.md section 2, and stops early when `val/ctr@10` stops
improving (patience 3 from epoch 5 on, overridable with `--early_stopping.patience` and
`--early_stopping.start_from_epoch`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from lightning.pytorch.callbacks import EarlyStopping
import torch
import yaml

from lit_rec.checkpoints import CheckpointError
from lit_rec.cli import DEFAULT_CALLBACKS, main, make_cli, method_config

ROOT = Path(__file__).resolve().parents[1]
METHOD_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
MONITOR = "val/ctr@10"
TINY_DATA = ["--data.synthetic_users=60", "--data.synthetic_items=150", "--data.synthetic_events_per_user=10",
             "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def shipped_callbacks(config: Path) -> list[dict[str, Any]]:
    """The method's `trainer.callbacks` as the CLI reads them: the default group's, then the method's own."""
    return method_config(config)["trainer"]["callbacks"]


def named(callbacks: list[dict[str, Any]], name: str) -> list[tuple[int, dict[str, Any]]]:
    return [(i, c.get("init_args") or {}) for i, c in enumerate(callbacks) if c["class_path"] == f"lightning.pytorch.callbacks.{name}"]


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=lambda p: p.name)
def test_every_method_config_keeps_the_best_validation_and_stops_early(config: Path) -> None:
    callbacks = shipped_callbacks(config)
    checkpoints = named(callbacks, "ModelCheckpoint")
    assert len(checkpoints) == 2, callbacks
    (first, best), (_, periodic) = checkpoints
    # the first ModelCheckpoint is trainer.checkpoint_callback, which ckpt_path="best" reads
    assert best == {"monitor": MONITOR, "mode": "max", "save_top_k": 1, "filename": "best"}
    assert periodic == {"every_n_train_steps": 100, "save_last": True}  # DESIGN.md section 2
    # early stopping is a key of its own (`--early_stopping.patience=N`), not in the list
    assert not [c for c in callbacks if c["class_path"].endswith("EarlyStopping")], callbacks
    stopping = method_config(config)["early_stopping"]
    assert stopping["class_path"] == "callbacks.early_stopping.WarmupEarlyStopping"
    args = stopping["init_args"]
    assert args["monitor"] == MONITOR and args["mode"] == "max" and args["patience"] == 3
    assert args["start_from_epoch"] == 5  # misses count from epoch 5 on (the popularity plateau of the first epochs)
    # checked after each validation only: a fit without validation (limit_val_batches=0) is never stopped
    assert args.get("check_on_train_epoch_end") is False


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=lambda p: p.name)
def test_every_method_file_appends_to_the_default_callbacks_and_repeats_none(config: Path) -> None:
    """A method file holds only its own callbacks (`trainer.callbacks+`), after the group's; it replaces neither
    the group's list nor its early stopping."""
    group = yaml.safe_load(DEFAULT_CALLBACKS.read_text())
    method = yaml.safe_load(config.read_text())
    assert "callbacks" not in method["trainer"] and "early_stopping" not in method, config.name
    own = method["trainer"].get("callbacks+", [])
    shared = {c["class_path"] for c in group["trainer"]["callbacks"]} | {group["early_stopping"]["class_path"]}
    assert not [c for c in own if c["class_path"] in shared or c["class_path"].endswith(("ModelCheckpoint", "EarlyStopping"))]
    assert shipped_callbacks(config) == group["trainer"]["callbacks"] + own


def class_path(callback: object) -> str:
    return f"{type(callback).__module__}.{type(callback).__qualname__}"


def configured_class(spec: dict[str, Any]) -> type:
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=lambda p: p.stem)
def test_a_method_file_alone_gets_the_default_callbacks_its_own_and_early_stopping(config: Path, tmp_path: Path) -> None:
    """`--config configs/<method>.yaml` alone: the group's callbacks, the method's, then early stopping (patience 3
    from epoch 5 on); the first ModelCheckpoint, on val/ctr@10, is the trainer's checkpoint callback."""
    cli = make_cli(["--config", str(config), *TINY_DATA, f"--trainer.default_root_dir={tmp_path}",
                    f"--data.cache_dir={tmp_path / 'cache'}"], run=False)
    spec = method_config(config)
    expected = [configured_class(c) for c in spec["trainer"]["callbacks"]] + [configured_class(spec["early_stopping"])]
    built = [c for c in cli.trainer.callbacks if any(type(c) is cls for cls in expected)]
    # Lightning moves the checkpoint callbacks to the end; every other one keeps the configured order
    others = [cls for cls in expected if cls.__name__ != "ModelCheckpoint"]
    assert [type(c) for c in built] == others + [cls for cls in expected if cls.__name__ == "ModelCheckpoint"]
    assert len(cli.trainer.checkpoint_callbacks) == 2 and cli.trainer.checkpoint_callback.monitor == MONITOR
    stopping = cli.trainer.early_stopping_callback
    assert class_path(stopping) == "callbacks.early_stopping.WarmupEarlyStopping"
    assert (stopping.monitor, stopping.mode, stopping.patience, stopping.start_from_epoch) == (MONITOR, "max", 3, 5)
    assert len([c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]) == 1


class Scripted(L.LightningModule):
    """Logs `val/ctr@10 = schedule[epoch]`; its buffer `trained_epoch` is the last epoch it trained, so a test
    of a restored checkpoint shows which epoch the checkpoint holds."""

    def __init__(self, schedule: list[float]) -> None:
        super().__init__()
        self.schedule = schedule
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("trained_epoch", torch.tensor(-1.0))
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.trained_epoch.fill_(self.current_epoch)
        self.optimizers().step()  # a step that changes nothing, but counts (ModelCheckpoint skips step 0)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        self.log(MONITOR, self.schedule[min(self.current_epoch, len(self.schedule) - 1)])

    def test_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def on_test_epoch_end(self) -> None:
        self.log("test/trained_epoch", self.trained_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=2)

    val_dataloader = test_dataloader = train_dataloader


def lightning_callbacks(config: Path) -> list[L.Callback]:
    """The config's ModelCheckpoint and EarlyStopping callbacks, built as the CLI builds them (early stopping last)."""
    built = []
    for callback in [*shipped_callbacks(config), method_config(config)["early_stopping"]]:
        module, _, name = callback["class_path"].rpartition(".")
        if module in ("lightning.pytorch.callbacks", "callbacks.early_stopping"):
            built.append(getattr(importlib.import_module(module), name)(**(callback.get("init_args") or {})))
    return built


def test_shipped_callbacks_stop_after_three_worse_validations_and_test_the_best_epoch(tmp_path: Path) -> None:
    # best at epoch 1; misses count from epoch 5 on (the warm-up epochs 2-4 do not), so three validations without
    # improvement (a tie is no improvement) at epochs 5, 6, 7 stop the run after epoch 7
    trainer = L.Trainer(max_epochs=20, callbacks=lightning_callbacks(ROOT / "configs" / "linucb.yaml"), logger=False,
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    model = Scripted([0.2, 0.5, 0.4, 0.3, 0.3, 0.4, 0.5, 0.3, 0.9])
    trainer.fit(model)
    assert trainer.current_epoch == 8 and trainer.early_stopping_callback.stopped_epoch == 7
    assert trainer.checkpoint_callback.monitor == MONITOR
    assert Path(trainer.checkpoint_callback.best_model_path) == tmp_path / "checkpoints" / "best.ckpt"
    assert trainer.checkpoint_callback.best_model_score == pytest.approx(0.5)
    with pytest.warns(UserWarning, match="multiple `ModelCheckpoint`"):  # Lightning reads the first one
        (best,) = trainer.test(model, ckpt_path="best", verbose=False)
    assert best["test/trained_epoch"] == 1
    (last,) = trainer.test(model, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"), verbose=False)
    assert last["test/trained_epoch"] == 7


def test_misses_during_the_warm_up_epochs_do_not_stop_a_run_that_improves_later(tmp_path: Path) -> None:
    # the popularity plateau: four flat epochs, then learning (plain patience 3 would stop after epoch 3)
    trainer = L.Trainer(max_epochs=8, callbacks=lightning_callbacks(ROOT / "configs" / "ddqn.yaml"), logger=False,
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(Scripted([0.29, 0.29, 0.28, 0.29, 0.33, 0.39, 0.42, 0.45]))
    assert trainer.current_epoch == 8 and trainer.early_stopping_callback.stopped_epoch == 0
    assert trainer.checkpoint_callback.best_model_score == pytest.approx(0.45)


def test_a_validation_that_keeps_improving_runs_to_max_epochs(tmp_path: Path) -> None:
    trainer = L.Trainer(max_epochs=6, callbacks=lightning_callbacks(ROOT / "configs" / "linucb.yaml"), logger=False,
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(Scripted([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))
    assert trainer.current_epoch == 6 and trainer.early_stopping_callback.stopped_epoch == 0
    assert trainer.checkpoint_callback.best_model_score == pytest.approx(0.6)


def test_patience_is_set_on_the_command_line(tmp_path: Path) -> None:
    cli = make_cli(["--config", str(ROOT / "configs" / "dqn.yaml"), *TINY_DATA, "--early_stopping.patience=7",
                    "--early_stopping.start_from_epoch=2", f"--trainer.default_root_dir={tmp_path}",
                    f"--data.cache_dir={tmp_path / 'cache'}"], run=False)
    stopping = cli.trainer.early_stopping_callback
    assert (stopping.patience, stopping.start_from_epoch, stopping.monitor) == (7, 2, MONITOR)
    assert cli.trainer.checkpoint_callback.monitor == MONITOR
    assert len([c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]) == 1


def test_early_stopping_can_be_turned_off(tmp_path: Path) -> None:
    cli = make_cli(["--config", str(ROOT / "configs" / "linucb.yaml"), *TINY_DATA, "--early_stopping=null",
                    f"--trainer.default_root_dir={tmp_path}", f"--data.cache_dir={tmp_path / 'cache'}"], run=False)
    assert cli.trainer.early_stopping_callback is None and cli.trainer.checkpoint_callback.monitor == MONITOR


def test_a_saved_run_config_replaces_the_default_callbacks(tmp_path: Path) -> None:
    """A config whose `trainer.callbacks` is a full list (a run's saved config.yaml, reproduce's run configs)
    replaces the group's list instead of adding to it; its `early_stopping` replaces the group's values."""
    spec = method_config(ROOT / "configs" / "dqn.yaml")
    spec["trainer"]["callbacks"] = [c for c in spec["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")][:1]
    spec["early_stopping"]["init_args"]["patience"] = 9
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(spec))
    cli = make_cli(["--config", str(path), *TINY_DATA, f"--trainer.default_root_dir={tmp_path}",
                    f"--data.cache_dir={tmp_path / 'cache'}"], run=False)
    assert len(cli.trainer.checkpoint_callbacks) == 1 and cli.trainer.checkpoint_callback.monitor == MONITOR
    assert not [c for c in cli.trainer.callbacks if class_path(c).startswith("callbacks.")
                and not isinstance(c, EarlyStopping)]
    assert cli.trainer.early_stopping_callback.patience == 9


class ValRecorder(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics[MONITOR]))


def run_main(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exit_info:
        return exit_info.code if isinstance(exit_info.code, int) else int(exit_info.code is not None)
    return 0


def test_linucb_fit_writes_the_best_checkpoint_and_test_reads_it(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """`train.py fit --config configs/linucb.yaml --trainer.max_epochs=3 --trainer.logger=false` keeps the best
    validation in `checkpoints/best.ckpt`; `ckpt_path="best"` resolves in the process of the fit, and a later
    `train.py test` is pointed at the file (`--ckpt_path best` there is one error line naming it)."""
    common = ["--config", str(ROOT / "configs" / "linucb.yaml"), *TINY_DATA, f"--data.cache_dir={tmp_path / 'cache'}",
              f"--trainer.default_root_dir={tmp_path}"]
    cli = make_cli([*common, "--trainer.max_epochs=3"], run=False)
    recorder = ValRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = tmp_path / "checkpoints" / "best.ckpt"
    assert best.is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert len(recorder.values) == 3
    assert Path(cli.trainer.checkpoint_callback.best_model_path) == best
    assert cli.trainer.checkpoint_callback.best_model_score == pytest.approx(max(recorder.values))
    assert torch.load(best, weights_only=True)["epoch"] == recorder.values.index(max(recorder.values))
    with pytest.warns(UserWarning, match="multiple `ModelCheckpoint`"):  # the first one, on val/ctr@10
        (in_process,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)

    fresh = make_cli(["test", *common, f"--ckpt_path={best}"])  # a later `train.py test`, given the file
    assert fresh.model.last_metrics["test/ctr@10"] == pytest.approx(in_process["test/ctr@10"])
    capfd.readouterr()
    with pytest.raises(CheckpointError, match="checkpoints/best.ckpt"):
        make_cli(["test", *common, "--ckpt_path=best"], run=True)
    assert run_main(["test", *common, "--ckpt_path=best"]) == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: best:") and "best.ckpt" in lines[0]
    assert 0.0 <= in_process["test/ctr@10"] <= 1.0


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=lambda p: p.stem)
def test_data_facts_reach_every_model_from_the_data_alone(config: Path) -> None:
    """`--data.history_len` and `--data.train_negatives` are set once, on the data: every method follows."""
    cli = make_cli(["--config", str(config), *TINY_DATA, "--data.history_len=7", "--data.train_negatives=4"], run=False)
    assert (cli.model.history_len, cli.model.train_negatives) == (7, 4)
    assert (cli.model.num_items, cli.model.num_users) == (cli.datamodule.num_items, cli.datamodule.num_users)


def test_a_method_file_may_change_the_group_s_early_stopping(tmp_path: Path) -> None:
    """A method file's `early_stopping: {init_args: ...}` changes the named values and keeps the rest, in
    `method_config` as in the CLI."""
    path = tmp_path / "patient.yaml"
    path.write_text((ROOT / "configs" / "linucb.yaml").read_text() + "early_stopping: {init_args: {patience: 5}}\n")
    stopping = method_config(path)["early_stopping"]
    assert stopping["class_path"] == "callbacks.early_stopping.WarmupEarlyStopping"
    assert (stopping["init_args"]["patience"], stopping["init_args"]["start_from_epoch"]) == (5, 5)
    cli = make_cli(["--config", str(path), *TINY_DATA, f"--trainer.default_root_dir={tmp_path}",
                    f"--data.cache_dir={tmp_path / 'cache'}"], run=False)
    built = cli.trainer.early_stopping_callback
    assert (built.patience, built.start_from_epoch, built.monitor) == (5, 5, MONITOR)


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=lambda p: p.stem)
def test_every_method_fits_with_the_data_s_history_len_and_negatives(config: Path, tmp_path: Path) -> None:
    """The linked facts are used, not only passed: two training steps of every method with a non-default
    `--data.history_len=20` and `--data.train_negatives=5`."""
    cli = make_cli(["fit", "--config", str(config), *TINY_DATA, "--data.history_len=20", "--data.train_negatives=5",
                    "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
                    f"--trainer.default_root_dir={tmp_path}", f"--data.cache_dir={tmp_path / 'cache'}"])
    assert (cli.model.history_len, cli.model.train_negatives) == (20, 5)
    assert cli.trainer.state.finished

"""The lit_rec command line: LightningCLI with the model in subclass mode and RecDataModule as data."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any, Optional

import torch
import lightning as L
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from datamodules import DataError, RecDataModule
from lit_rec.checkpoints import CheckpointError, check_ckpt_path, check_saved_data_path, saved_data_arguments
from lit_rec.cli_errors import short_parse_error
from lit_rec.config_files import shipped_config
from lit_rec.modules.base import RecModule
from lit_rec.progress import EpochLineProgress, plain_progress_wanted
from lit_rec.run_dir import free_path, run_dir
from lit_rec.runtime import keep_large_buffers_on_heap
from lit_rec.wandb_utils import CHECKPOINT_KEY as WANDB_CHECKPOINT_KEY

DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"offline": True, "save_dir": "runs", "project": "lit_rec"},
}
# the callbacks group every method shares (both ModelCheckpoints, the loggers, early stopping): read before each
# subcommand's `--config`, so a method file only appends its own (`trainer: callbacks+: [...]`)
DEFAULT_CALLBACKS = shipped_config("callbacks/default.yaml")  # the checkout's configs/ or the wheel's lit_rec/configs


class LogConfigCallback(SaveConfigCallback):
    """Saves `config.yaml` in the run folder, beside its `checkpoints/` (`lit_rec.run_dir`), and sends the
    full resolved config to every logger. A config already there is kept: the new one is `config-1.yaml`, ..."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Writes the config on rank 0 into the run folder (every rank resolves it: a broadcast) and prints its path."""
        if self.already_saved:
            return
        folder = run_dir(trainer)
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            path = free_path(folder / self.config_filename)
            self.parser.save(self.config, str(path), skip_none=False, multifile=self.multifile)
            print(f"config: {path.resolve()}", file=sys.stderr)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Logs the resolved CLI config as the run's hyper-parameters (the W&B run config)."""
        config = self.parser.dump(self.config, skip_none=False, format="json")
        for logger in trainer.loggers:
            logger.log_hyperparams(json.loads(config))


class LitRecCLI(LightningCLI):
    """LightningCLI with early stopping as a key of its own (`early_stopping`); links the data's sizes into the model."""

    _trained_by: dict[str, str] | None = None  # the W&B run saved in `--ckpt_path` (test/predict link to it)

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Early stopping as a key of its own (`--early_stopping.patience=N`; class and values in
        configs/callbacks/default.yaml), added after `trainer.callbacks`. Links `num_items`/`num_users` at
        instantiation and `eval_ks`, `history_len`, `train_negatives` at parse time."""
        parser.add_lightning_class_args(EarlyStopping, "early_stopping", subclass_mode=True, required=False)
        parser.link_arguments("data.num_items", "model.init_args.num_items", apply_on="instantiate")
        parser.link_arguments("data.num_users", "model.init_args.num_users", apply_on="instantiate")
        parser.link_arguments("data.eval_ks", "model.init_args.eval_ks")
        parser.link_arguments("data.history_len", "model.init_args.history_len")
        parser.link_arguments("data.train_negatives", "model.init_args.train_negatives")

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> L.Trainer:
        """`--early_stopping=null` runs without early stopping (LightningCLI would pass the None on); without a
        terminal the progress is one line per epoch (`lit_rec.progress.EpochLineProgress`)."""
        extra = [c for c in callbacks if c is not None]
        if plain_progress_wanted(config, extra):
            extra.append(EpochLineProgress())
        return super()._instantiate_trainer(config, extra)

    def init_parser(self, **kwargs: Any) -> Any:
        """A parser that raises ArgumentError instead of printing the full usage (`parse_arguments` shortens it)."""
        return super().init_parser(**{"exit_on_error": False, **kwargs})

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parses, then loads `--ckpt_path` once: a bad file is one line before Lightning reads it. The data
        arguments saved in it become the defaults of a second parse (`_restore_data_arguments`); a
        `--print_config` waits for that one. A bad key or value is a short paragraph (`_parse_or_exit_short`)."""
        first = _without_print_config(args)
        if first is args:
            self._parse_or_exit_short(parser, args)
        else:  # not through LightningCLI, which warns about a list beside sys.argv
            self._parse_or_exit_short(parser, first, lambda: setattr(self, "config", parser.parse_args(first)))
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        checkpoint = check_ckpt_path(self.config[subcommand].get("ckpt_path"))
        self._trained_by = (checkpoint or {}).get(WANDB_CHECKPOINT_KEY) if subcommand != "fit" else None
        saved = self._restore_data_arguments(subcommand, checkpoint)
        if saved or first is not args:
            self._parse_or_exit_short(parser, args)
        if saved:
            check_saved_data_path(self.config[subcommand]["ckpt_path"], saved, self.config[subcommand]["data"])

    def _restore_data_arguments(self, subcommand: str, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
        """A checkpoint is self-contained: the RecDataModule arguments of its fit become this subcommand's
        `data` defaults, so that what `--data...` or a `--config` sets still wins. Returns them ({}: none)."""
        saved = saved_data_arguments(checkpoint)
        if saved:
            self._subcommand_parsers[subcommand].set_defaults({f"data.{key}": value for key, value in saved.items()})
        return saved

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        """`predict` takes `--top_k N` (recommendations per user; the model's `predict_top_k` when not given)."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument("--top_k", type=Optional[int], default=None,
                                help="Recommendations per user (default: the model's predict_top_k, 10).")
        return parser

    def before_instantiate_classes(self) -> None:
        """`predict --top_k N` sets the model's `predict_top_k` (checked by its constructor); a W&B run gets a
        name, group, job type and tags it was not given (`_name_wandb_run`), linked to the run that trained
        the `--ckpt_path` checkpoint when it names one."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        if config.get("top_k") is not None:
            config["model"]["init_args"]["predict_top_k"] = config["top_k"]
        _name_wandb_run(config, subcommand or "fit", self._trained_by)

    def _parse_or_exit_short(self, parser: Any, args: Any, parse: Callable[[], None] | None = None) -> None:
        """LightningCLI's parse (or `parse`); a bad key or value is a short paragraph on stderr and exit code 2
        (`lit_rec.cli_errors`; `LIT_REC_DEBUG=1` raises jsonargparse's full message)."""
        try:
            if parse is None:
                super().parse_arguments(parser, args)
            else:
                parse()
        except ArgumentError as error:
            if os.environ.get("LIT_REC_DEBUG") == "1":
                raise
            argv = list(sys.argv[1:] if args is None else args if isinstance(args, (list, tuple)) else [])
            subcommand = next((a for a in argv if a in getattr(self, "_subcommand_parsers", {})), None)
            print(short_parse_error(str(error), self._subcommand_parsers[subcommand] if subcommand else parser, argv),
                  file=sys.stderr)
            sys.exit(2)



def _name_wandb_run(config: Any, job_type: str, trained_by: dict[str, str] | None = None) -> None:
    """Fills what a WandbLogger run was not given: name `<method>-<data>-<seed>` (the method is the `--config`
    file's name), group `<method>-<data>` (the runs of one experiment), `job_type` (fit, validate, test,
    predict) and those as tags, so runs can be compared and filtered in W&B. A run from a checkpoint whose fit
    logged to W&B (`trained_by`, saved by `RecModule.on_save_checkpoint`) takes that run's name and group, a
    `fit:<id>` tag and a note naming it: the fit's `test` sits beside it in the group's table."""
    logger = config.get("trainer", {}).get("logger")
    if not hasattr(logger, "get") or not str(logger.get("class_path", "")).endswith("WandbLogger"):
        return
    args = logger["init_args"]
    configs = [Path(str(path)) for path in config.get("config") or []]
    method = configs[-1].stem if configs else str(config["model"]["class_path"]).rsplit(".", 1)[-1].lower()
    data = config["data"]
    dataset = Path(str(data["path"])).name if data.get("path") else str(data["format"])
    seed = config.get("seed_everything")
    defaults = {"name": f"{method}-{dataset}-{seed}", "group": f"{method}-{dataset}", "job_type": job_type,
                "tags": [method, dataset, f"seed{seed}", job_type]}
    if trained_by and trained_by.get("id"):
        defaults["name"] = trained_by.get("name") or defaults["name"]
        defaults["group"] = trained_by.get("group") or defaults["group"]
        defaults["tags"].append(f"fit:{trained_by['id']}")
        defaults["notes"] = f"{job_type} of the checkpoint trained by W&B run {trained_by['id']} ({defaults['name']})"
    for key, value in defaults.items():
        if args.get(key) is None:
            args[key] = value


def _without_print_config(args: Any) -> Any:
    """`args` (sys.argv when None) less `--print_config[=flags]` when they name a `--ckpt_path` (whose data
    arguments the printed config should show), else `args` itself."""
    argv = sys.argv[1:] if args is None else args
    if not isinstance(argv, list) or not any(str(a).startswith("--print_config") for a in argv) \
            or not any(str(a).startswith("--ckpt_path") for a in argv):
        return args
    kept: list[Any] = []
    after_flag = False
    for arg in argv:
        text = str(arg)
        if after_flag and re.fullmatch(r"[a-z_,]+", text):  # `--print_config comments`
            after_flag = False
            continue
        after_flag = text == "--print_config"
        if not text.startswith("--print_config"):
            kept.append(arg)
    return kept


def make_cli(args: list[str] | None = None, run: bool = True) -> LitRecCLI:
    """Builds (and by default runs) the CLI on `args` (sys.argv when None), configs/callbacks/default.yaml
    read before them."""
    defaults = {"default_config_files": [str(DEFAULT_CALLBACKS)]}
    # with subcommands (run) each subcommand's parser reads it, else the one parser
    parser_kwargs = {name: dict(defaults) for name in LitRecCLI.subcommands()} if run else defaults
    return LitRecCLI(
        RecModule,
        RecDataModule,
        subclass_mode_model=True,
        subclass_mode_data=False,
        save_config_callback=LogConfigCallback,
        parser_kwargs=parser_kwargs,
        trainer_defaults={"logger": DEFAULT_LOGGER, "plugins": [{"class_path": "lit_rec.checkpoints.AtomicCheckpointIO"}]},
        args=args,
        run=run,
        auto_configure_optimizers=False,  # every lit_rec module owns its optimiser: no --optimizer/--lr_scheduler
    )


def method_config(path: str | Path) -> dict[str, Any]:
    """The plain config that `--config path` gives the CLI, for code that edits a method's config before a run
    (reproduce, bench, tests): configs/callbacks/default.yaml with the file over it (`trainer.callbacks+` appended
    to the group's list), the file's keys first. Written back as one `--config` file, its `trainer.callbacks`
    replaces the group's list."""
    return _merged(yaml.safe_load(DEFAULT_CALLBACKS.read_text()), yaml.safe_load(Path(path).read_text()) or {})


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on `base` as jsonargparse layers two config files: mappings key by key (a class_path that changes
    replaces the whole mapping), `key+` appends to the list `key`, anything else replaces."""
    merged: dict[str, Any] = {}
    for key, value in over.items():
        name = key.removesuffix("+")
        old = base.get(name)
        if key.endswith("+"):
            merged[name] = copy.deepcopy(list(old or []) + (value if isinstance(value, list) else [value]))
        elif isinstance(value, dict) and isinstance(old, dict) \
                and value.get("class_path", old.get("class_path")) == old.get("class_path"):
            merged[name] = _merged(old, value)
        else:
            merged[name] = copy.deepcopy(value)
    return {**merged, **{key: copy.deepcopy(value) for key, value in base.items() if key not in merged}}


def _silence_known_noise() -> None:
    # "Seed set to N" on stderr would make a DataError more than one line; the seed is in the config
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    # lightning's pytree helper triggers a torch FutureWarning on every fit (PITFALLS.md)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Couldn't infer the batch indices.*")
    # manual-optimisation methods checkpoint their post-step state on purpose (that is what resume needs)
    warnings.filterwarnings("ignore", message=".*no pre-optimization state was saved.*")


def prepare_process() -> None:
    """What every entry point (`train.py`, `python -m lit_rec.reproduce`) does first: known noise silenced, one
    torch thread unless OMP_NUM_THREADS says otherwise, large buffers kept on the heap."""
    _silence_known_noise()
    if "OMP_NUM_THREADS" not in os.environ:
        # small recommender networks: one thread is as fast, and far faster on a busy machine (PITFALLS.md)
        torch.set_num_threads(1)
    keep_large_buffers_on_heap()  # per-step buffers reused, not page-faulted in anew (BENCHMARKS.md, clients)


def print_error(message: object) -> None:
    """An error as one line on stderr: `error: <message>`."""
    print(f"error: {message}".replace("\n", " "), file=sys.stderr)


def main(args: list[str] | None = None) -> None:
    """Entry point: runs the CLI; a DataError or CheckpointError becomes one line on stderr and exit code 2."""
    prepare_process()
    try:
        make_cli(args)
    except (DataError, CheckpointError) as error:
        if os.environ.get("LIT_REC_DEBUG") == "1":
            raise
        print_error(error)
        sys.exit(2)
    finally:
        # CPU ddp aborted at exit in 3 of 26 runs without this (PITFALLS.md)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

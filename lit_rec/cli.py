"""The lit_rec command line: LightningCLI with the model in subclass mode and RecDataModule as data."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from lightning.pytorch.cli import LightningCLI

from datamodules import DataError, RecDataModule
from lit_rec.modules.base import RecModule

DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"offline": True, "save_dir": "runs", "project": "lit_rec"},
}


class LitRecCLI(LightningCLI):
    """LightningCLI that links the data's sizes into the model."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Links `num_items`/`num_users` at instantiation and `eval_ks` at parse time."""
        parser.link_arguments("data.num_items", "model.init_args.num_items", apply_on="instantiate")
        parser.link_arguments("data.num_users", "model.init_args.num_users", apply_on="instantiate")
        parser.link_arguments("data.eval_ks", "model.init_args.eval_ks")


def make_cli(args: list[str] | None = None, run: bool = True) -> LitRecCLI:
    """Builds (and by default runs) the CLI on `args` (sys.argv when None)."""
    return LitRecCLI(
        RecModule,
        RecDataModule,
        subclass_mode_model=True,
        subclass_mode_data=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"logger": DEFAULT_LOGGER},
        args=args,
        run=run,
    )


def _silence_known_warnings() -> None:
    # lightning's pytree helper triggers a torch FutureWarning on every fit (PITFALLS.md)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def main(args: list[str] | None = None) -> None:
    """Entry point: runs the CLI; a DataError becomes one line on stderr and exit code 2."""
    _silence_known_warnings()
    try:
        make_cli(args)
    except DataError as error:
        if os.environ.get("LIT_REC_DEBUG") == "1":
            raise
        print(f"error: {error}".replace("\n", " "), file=sys.stderr)
        sys.exit(2)

"""The command line of `python -m lit_rec.reproduce`: its own options (jsonargparse) and every other argument
passed through to each run's CLI, as in `train.py`."""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ArgumentError, ArgumentParser, Namespace
from jsonargparse.typing import Path_fr, PositiveInt

from lit_rec.reproduce.fit import Settings
from lit_rec.reproduce.methods import BUDGETS, METHODS, select_methods
from lit_rec.reproduce.runner import Reproduction

WANDB_MODES = ("offline", "online", "disabled", "none")


def wandb_mode_from_env() -> str:
    """`$WANDB_MODE` as a mode of `--wandb` (its old names mapped), else offline."""
    mode = os.environ.get("WANDB_MODE", "offline")
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    return mode if mode in ("offline", "online", "disabled") else "offline"


def build_parser() -> ArgumentParser:
    """reproduce's own options; `split_argv` leaves every other argument to the runs."""
    parser = ArgumentParser(
        prog="python -m lit_rec.reproduce",
        description="Trains every method of Table 1 and DRL-Rec on one data set and writes the paper's tables "
                    "and figure (table1.md/json, fig2_ctr.png, distill.md/json, runs.json) to --out.",
        epilog="Other arguments (--data.path PATH, --data.format=csv, --trainer FILE, --trainer.max_epochs=N, ...) "
               "are passed to every run, after its config, as in train.py.",
        exit_on_error=False,
        default_env=False,
    )
    parser.add_argument("--data", type=Path_fr, default=None,
                        help="data config file (configs/data/<d>.yaml); default: synthetic")
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument("--budget", type=Literal[BUDGETS], default="quick",  # type: ignore[valid-type]
                        help="training budget per method (CAPS in lit_rec/reproduce/methods.py); smoke is for tests")
    parser.add_argument("--seeds", type=PositiveInt, default=1, help="model seeds 0..N-1 (the data seed stays fixed)")
    parser.add_argument("--methods", type=str, default="",
                        help=f"comma-separated subset of {', '.join(m.name for m in METHODS)} (names or slugs; "
                             "default: all)")
    parser.add_argument("--wandb", type=Literal[WANDB_MODES], default=wandb_mode_from_env(),  # type: ignore[valid-type]
                        help="W&B mode of every run (default: $WANDB_MODE, else offline); none: no logger at all")
    parser.add_argument("--project", type=str, default="lit_rec", help="W&B project")
    parser.add_argument("--group", type=str, default="", help="W&B group (default: reproduce-<data>-<budget>-<time>)")
    return parser


def split_argv(parser: ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(the parser's own options, every other argument): `--data FILE` is reproduce's, `--data.path X` a run's."""
    own_actions = {flag: action for action in parser._actions for flag in action.option_strings}
    own: list[str] = []
    passthrough: list[str] = []
    i = 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        action = own_actions.get(flag)
        takes_value = action is not None and action.nargs != 0 and "=" not in argv[i]
        (own if action is not None else passthrough).extend(argv[i: i + 1 + takes_value])
        i += 1 + takes_value
    return own, passthrough


def dataset_name(data_spec: dict[str, Any], passthrough: list[str]) -> str:
    """A short name for the data: the last part of `--data.path` (or the data file's), else its format."""
    path, fmt = data_spec.get("path"), data_spec.get("format", "synthetic")
    for i, arg in enumerate(passthrough):
        if arg.startswith("--data.path="):
            path = arg.split("=", 1)[1]
        elif arg == "--data.path" and i + 1 < len(passthrough):
            path = passthrough[i + 1]
        elif arg.startswith("--data.format="):
            fmt = arg.split("=", 1)[1]
    if fmt == "synthetic" or not path:
        return str(fmt)
    return Path(str(path)).name or str(fmt)


def make_settings(options: Namespace, passthrough: list[str]) -> Settings:
    """What every run shares, from the parsed options and the passed-through arguments."""
    data_spec = (yaml.safe_load(Path(options.data).read_text()) or {}) if options.data else {}
    dataset = dataset_name(data_spec, passthrough)
    group = options.group or f"reproduce-{dataset}-{options.budget}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    return Settings(out=Path(options.out), budget=options.budget, dataset=dataset, data_spec=data_spec,
                    passthrough=tuple(passthrough), wandb=options.wandb, project=options.project, group=group)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m lit_rec.reproduce`; bad options and bad data are one line on stderr, exit code 2."""
    from datamodules import DataError
    from lit_rec.cli import prepare_process, print_error

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    own, passthrough = split_argv(parser, argv)
    try:
        options = parser.parse_args(own)
        methods = select_methods(options.methods)
    except (ArgumentError, SystemExit) as error:
        if isinstance(error, SystemExit) and error.code in (0, None):
            raise  # --help
        message = str(error.code) if isinstance(error, SystemExit) else " ".join(str(error).split())
        print_error(re.sub(r'Parser key "([^"]+)":', r"--\1:", message.removeprefix("error: ")))
        return 2
    prepare_process()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # "GPU available", tips: not per run
    os.environ.setdefault("WANDB_SILENT", "true")
    reproduction = Reproduction(make_settings(options, passthrough), methods, options.seeds,
                                "python -m lit_rec.reproduce " + " ".join(argv))
    try:
        return reproduction.execute()
    except (DataError, SystemExit) as error:
        if isinstance(error, SystemExit) and error.code in (0, None):
            raise
        print_error(error if isinstance(error, DataError) else f"bad arguments (code {error.code}); see {options.out}/logs")
        return 2
    finally:
        gc.collect()

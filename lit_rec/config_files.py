"""The shipped configs by name: `--config dqn` is configs/dqn.yaml, `--data ml100k` configs/data/ml100k.yaml and
`--trainer ddp_sim` configs/trainer/ddp_sim.yaml, in a checkout or in an installed wheel."""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_YAML_WORDS = {"null", "none", "true", "false", "~"}  # values the parser reads itself
# the flags whose value may be a shipped config's bare name, and the configs/ subfolder it is looked up in
NAMED_FLAGS = {"--config": "", "-c": "", "--data": "data", "--trainer": "trainer"}


def config_dir() -> Path:
    """The shipped configs folder: `lit_rec/configs` in an installed wheel (its package data), else the
    checkout's `configs/` beside `lit_rec/`."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def shipped_config(relative: str | Path) -> Path:
    """A shipped file by its path under configs/, e.g. `callbacks/default.yaml`."""
    return config_dir() / relative


def resolve_config(value: str, folder: str = "", flag: str = "--config") -> str:
    """A config flag's value as the CLI should read it: a bare name (no `/`, no `.yaml`), e.g. `dqn`, is the shipped
    configs/<folder>/<name>.yaml unless a file of that name is in the working folder; anything else is left as given.

    Raises FileNotFoundError for a bare name that is neither, naming the shipped configs."""
    if not _NAME.fullmatch(value) or value.endswith((".yaml", ".yml")) or value.lower() in _YAML_WORDS \
            or Path(value).exists():
        return value
    shipped = config_dir() / folder
    path = shipped / f"{value}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in shipped.glob("*.yaml")))
        raise FileNotFoundError(f"{flag} {value}: expected a config file or a shipped config name ({names}), "
                                f"found neither")
    return str(path)


def resolve_config_args(args: list[str]) -> list[str]:
    """`args` with each `--config`/`-c`/`--data`/`--trainer` value passed through `resolve_config` (both `--flag X`
    and `--flag=X`)."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        flag, eq, value = arg.partition("=")
        if flag in NAMED_FLAGS and eq:
            resolved[i] = f"{flag}={resolve_config(value, NAMED_FLAGS[flag], flag)}"
        elif arg in NAMED_FLAGS and i + 1 < len(resolved):
            resolved[i + 1] = resolve_config(resolved[i + 1], NAMED_FLAGS[arg], arg)
    return resolved

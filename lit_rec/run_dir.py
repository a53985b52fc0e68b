"""Where a run's files go: the folder that holds its `checkpoints/`, and file names that never overwrite."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


def run_dir(trainer: L.Trainer) -> Path:
    """The run folder: `<save_dir>/<name>/<version>` of the first logger (the default W&B logger:
    `runs/lit_rec/<run id>`), `default_root_dir` without a logger; the folder whose `checkpoints/` the
    ModelCheckpoints without a `dirpath` fill (Lightning resolves theirs the same way). Call it on every
    rank: rank 0's answer is broadcast."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        version = logger.version if trainer.is_global_zero else None
        version = version if isinstance(version, str) else f"version_{version}"
        folder = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)
    else:
        folder = trainer.default_root_dir
    return Path(trainer.strategy.broadcast(folder))


def free_path(path: Path) -> Path:
    """`path` when nothing is there, else the first free `<stem>-1<suffix>`, `<stem>-2<suffix>`, ..."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate

"""lit_rec's data layer: readers, the one Polars pipeline, the Parquet cache, tensors and RecDataModule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datamodules.errors import DataError

if TYPE_CHECKING:
    from datamodules.datamodule import RecDataModule
    from datamodules.tensors import EvalTensors, EventTensors, RecTensors

__all__ = ["DataError", "EvalTensors", "EventTensors", "RecDataModule", "RecTensors"]
_LAZY = {
    "RecDataModule": "datamodules.datamodule",
    "RecTensors": "datamodules.tensors",
    "EventTensors": "datamodules.tensors",
    "EvalTensors": "datamodules.tensors",
}


def __getattr__(name: str) -> Any:
    """Imports lazily, so that `datamodules.pipeline` & co. load without Lightning (e.g. in workers)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")

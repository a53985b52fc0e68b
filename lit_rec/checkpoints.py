"""Checkpoint loading that turns a missing, truncated or corrupt file into one line (`CheckpointError`)."""

from __future__ import annotations

import inspect
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

# ckpt_path values that Lightning resolves itself (not files on this machine)
LIGHTNING_CKPT_NAMES = ("last", "hpc")
# Lightning resolves "best" from the ModelCheckpoint of a fit in the same process; every train.py command
# builds a fresh Trainer, whose callback has no best path yet (Lightning would raise a ValueError)
BEST_FILE_HINT = (
    "`best` names the best checkpoint of a fit in the same process only; pass the file that the method "
    "configs' monitored ModelCheckpoint wrote: runs/lit_rec/<run id>/checkpoints/best.ckpt with the default "
    "W&B logger, <default_root_dir>/checkpoints/best.ckpt with --trainer.logger=false"
)


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded; the message is one line, `<path>: <reason>`."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{self.path}: {self.reason}")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """`torch.load(path, map_location="cpu", weights_only=True)`; CheckpointError when the file is missing,
    unreadable, empty, truncated, corrupt, holds objects weights_only refuses, or is not a dict."""
    file = Path(path).expanduser()
    try:
        with file.open("rb") as handle:
            empty = not handle.read(1)
    except FileNotFoundError as error:
        raise CheckpointError(path, "expected a checkpoint file, found nothing there") from error
    except IsADirectoryError as error:
        raise CheckpointError(path, "expected a checkpoint file, found a folder") from error
    except OSError as error:
        raise CheckpointError(path, f"expected a readable checkpoint file, found {error.strerror or error}") from error
    if empty:
        raise CheckpointError(path, "expected a checkpoint file, found an empty file")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every load failure is a bad checkpoint; _diagnose says which
        raise CheckpointError(path, _diagnose(file, error)) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"expected a checkpoint dict, found {type(checkpoint).__name__}")
    return checkpoint


def check_ckpt_path(ckpt_path: str | Path | None) -> dict[str, Any] | None:
    """Loads a local `--ckpt_path` once so that a bad file fails before Lightning reads it; names that
    Lightning resolves (last, hpc, registry), URLs and folders (sharded checkpoints) are left to it. `best`
    is a CheckpointError naming the file to pass (`BEST_FILE_HINT`). Returns the loaded checkpoint (None
    when Lightning resolves the name)."""
    if ckpt_path is None:
        return None
    text = str(ckpt_path)
    if text == "best":
        raise CheckpointError(text, BEST_FILE_HINT)
    if text in LIGHTNING_CKPT_NAMES or text.startswith("registry") or "://" in text or Path(text).is_dir():
        return None
    return load_checkpoint(text)


def saved_data_arguments(checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    """The RecDataModule arguments of the fit that wrote `checkpoint` (Lightning saves the data module's
    `save_hyperparameters()` under `datamodule_hyper_parameters`); {} for a checkpoint without them."""
    from datamodules import RecDataModule

    saved = (checkpoint or {}).get(RecDataModule.CHECKPOINT_HYPER_PARAMS_KEY) or {}
    known = inspect.signature(RecDataModule).parameters
    return {key: value for key, value in saved.items() if key in known}


def check_saved_data_path(ckpt_path: str | Path, saved: dict[str, Any], data: Any) -> None:
    """CheckpointError when the data path restored from the checkpoint (not given anew) is gone."""
    path = saved.get("path")
    if path and data["path"] == path and data["format"] != "synthetic" and not Path(path).exists():
        raise CheckpointError(
            ckpt_path, f"its data.path {path} (format {data['format']}) no longer exists; pass --data.path"
        )


def _diagnose(file: Path, error: Exception) -> str:
    """Why torch.load failed: no zip directory (truncated / not a checkpoint), a CRC mismatch, or a refused object."""
    if not zipfile.is_zipfile(file):
        # torch.save writes a zip archive whose directory is at the end: a cut-off file has none
        return "expected a zip-format torch checkpoint, found a truncated or corrupt file (no zip directory)"
    try:
        with zipfile.ZipFile(file) as archive:
            bad_member = archive.testzip()
    except Exception as zip_error:  # noqa: BLE001
        return f"expected a torch checkpoint, found a corrupt zip archive ({_first_line(zip_error)})"
    if bad_member is not None:
        return f"expected a torch checkpoint, found a corrupt file (CRC mismatch in {bad_member})"
    if isinstance(error, pickle.UnpicklingError) and "weights_only" in str(error):
        return f"expected a checkpoint loadable with weights_only=True, found {_weights_only_reason(error)}"
    return f"expected a torch checkpoint, found {type(error).__name__}: {_first_line(error)}"


def _weights_only_reason(error: Exception) -> str:
    """The WeightsUnpickler's own reason (e.g. an unsupported global), without torch's advice around it."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    return _first_line(text)


def _first_line(error: object) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, then renames it into place.

    Lightning's default goes through an fsspec transaction whose temporary file lives in the
    system temp folder, so the final move is a copy (not atomic) when that is another filesystem.
    The file gets the mode a plain `open()` would give it (0o666 less the umask: -rw-r--r-- under 022),
    not mkstemp's private 0o600.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Saves `checkpoint` to `path` atomically."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as handle:
                torch.save(checkpoint, handle)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _umask() -> int:
    """The process umask, read from /proc (setting it to read it back would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

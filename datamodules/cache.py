"""The prepared frames' cache: one `.npy` per column, memory-mapped on open; keyed by the arguments and input files.

An entry is `cache_dir/<key>/`: `events.<column>.npy` (user, item, ts, row, pos, split, in their narrowest
dtypes), `negatives.<split>.npy` (`(E_eval, K)`, narrowest), `eval_rows.<split>.npy` (only for a sampled
split), `users.parquet`, `items.parquet` and `meta.json`. `read_cache` maps the arrays (`np.load(mmap_mode="c")`:
copy-on-write, so pages are shared between the processes that open them, DDP ranks included, and nothing is
read until used); the events frame and the negatives tensors are views of those maps, not copies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import torch

from datamodules import pipeline, readers
from datamodules.pipeline import PIPELINE_VERSION, TEST, VAL, PipelineConfig, Prepared

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("user", "item", "ts", "row", "pos", "split")
EVAL_SPLITS = {VAL: "val", TEST: "test"}
CACHE_FILES = (  # an entry whose splits are evaluated whole; a sampled split adds `eval_rows.<split>.npy`
    *(f"events.{c}.npy" for c in EVENT_COLUMNS), *(f"negatives.{n}.npy" for n in EVAL_SPLITS.values()),
    "users.parquet", "items.parquet", "meta.json",
)


def cache_key(config: PipelineConfig) -> str:
    """Hash of the pipeline arguments, the input files' path, size and mtime, and the pipeline version."""
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in readers.source_files(config.source)]
    payload = {"version": PIPELINE_VERSION, "config": dataclasses.asdict(config), "files": files}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_or_prepare(config: PipelineConfig, cache_dir: str | Path | None) -> Prepared:
    """The prepared frames from `cache_dir/<key>/`, or computed and then cached there (None: no cache)."""
    if cache_dir is None:
        return pipeline.prepare(config)
    folder = Path(cache_dir) / cache_key(config)
    if (folder / "meta.json").is_file():
        try:
            return read_cache(folder)
        except Exception as error:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            log.warning("rebuilding the damaged data cache %s (%s)", folder, error)
            shutil.rmtree(folder, ignore_errors=True)
    write_cache(pipeline.prepare(config), folder, config)
    return read_cache(folder)  # the mapped arrays: the pipeline's copies are freed, pages shared with other ranks


def write_cache(prepared: Prepared, folder: Path, config: PipelineConfig) -> None:
    """Writes into a temporary folder, then renames it: readers never see a partial entry."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        for column in EVENT_COLUMNS:
            np.save(temp / f"events.{column}.npy", prepared.events[column].to_numpy())
        for code, name in EVAL_SPLITS.items():
            np.save(temp / f"negatives.{name}.npy", narrow_items(prepared.negatives[code], prepared.num_items))
            rows = prepared.eval_rows.get(code)
            if rows is not None:
                np.save(temp / f"eval_rows.{name}.npy", rows)
        pl.DataFrame({"id": prepared.user_ids}).write_parquet(temp / "users.parquet")
        pl.DataFrame({"id": prepared.item_ids}).write_parquet(temp / "items.parquet")
        meta = {
            "version": PIPELINE_VERSION,
            "dropped": prepared.dropped,
            "num_negatives": prepared.num_negatives,
            "config": dataclasses.asdict(config),
        }
        (temp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        os.rename(temp, folder)
    except OSError:
        if not (folder / "meta.json").is_file():  # another process (a DDP rank) won the rename: fine
            raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def narrow_items(values: torch.Tensor, num_items: int) -> np.ndarray:
    """Item ids `0..num_items` as int32 (int64 past 2^31): the narrowest dtype torch accepts as an index."""
    dtype = np.int32 if num_items <= np.iinfo(np.int32).max else np.int64
    return values.numpy().astype(dtype, copy=False)


def mapped(path: Path) -> np.ndarray:
    """The array of a `.npy` file, memory-mapped copy-on-write (shared pages; writable views for torch)."""
    return np.load(path, mmap_mode="c")


def read_cache(folder: Path) -> Prepared:
    """Opens one cache entry; the events and negatives are views of memory-mapped files."""
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {column: mapped(folder / f"events.{column}.npy") for column in EVENT_COLUMNS}
    events = pl.DataFrame(arrays)
    k = int(meta["num_negatives"])
    eval_rows = {}
    for code, name in EVAL_SPLITS.items():
        path = folder / f"eval_rows.{name}.npy"
        eval_rows[code] = np.load(path) if path.is_file() else None
    return Prepared(
        events=events,
        negatives={code: torch.from_numpy(mapped(folder / f"negatives.{name}.npy")).view(-1, k)
                   for code, name in EVAL_SPLITS.items()},
        user_ids=pl.read_parquet(folder / "users.parquet")["id"],
        item_ids=pl.read_parquet(folder / "items.parquet")["id"],
        dropped={str(key): int(v) for key, v in meta["dropped"].items()},
        num_negatives=k,
        eval_rows=eval_rows,
        mapped=arrays,
    )

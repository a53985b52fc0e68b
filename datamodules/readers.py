"""Readers: MovieLens, Outbrain, CSV and Parquet logs -> the canonical Polars frame.

The canonical frame has `user` (Utf8), `item` (Utf8), `ts` (Int64), `row` (Int64, file
order) and, only when the source has ratings, `rating` (Float64); without it every row
is a click. Nulls in user/item/ts are kept here and dropped (and counted) by the
pipeline; a value that is present but cannot be parsed raises `DataError`.

Timestamp policy: integers are kept as they are (MovieLens: unix seconds); floats are
floored; datetimes and datetime strings become unix milliseconds (Outbrain's ms since its
own epoch are shifted to unix ms, so both Outbrain layouts agree).

Every CSV is scanned lazily (`pl.scan_csv`) with explicit dtypes and only the columns used.
The Outbrain pair (clicks_train.csv + events.csv, the 100M-row case) takes a typed fast path
(`scan_outbrain_pair`): integer ids and timestamps, the user strings made an Enum on the small
events table, the join run in Polars' streaming engine; its `item` is Int64 and its `user` an Enum
(both stand for the same strings as the text path's). If that typed read fails, the text path
runs and reports the bad value with its line. The pipeline reads through `read_source_coded`: a pair of
Kaggle's shape (hex uuids, near-dense display ids) is then read by `outbrain_pair_by_arrays`, users coded
by one integer sort and joined through a lookup array (half the time of the lazy join at 100M rows).
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from datamodules.arrays import ROWS_PER_SLICE, on_slices, run_starts, sorted_with_positions
from datamodules.errors import DataError

FORMATS = ("synthetic", "movielens", "outbrain", "csv", "parquet")
OUTBRAIN_EPOCH_MS = 1465876799998  # Outbrain's events.csv timestamps are ms after this unix ms
MOVIELENS_FILES = ("u.data", "ratings.dat")
MOVIELENS_COLUMNS = ["user", "item", "rating", "ts"]
_SNIFF_BYTES = 1 << 16
_TEMP_SEP = "\x1f"  # stands in for a multi-byte separator such as MovieLens-1M's '::'

Locate = Callable[[int], str]


@dataclass(frozen=True)
class Source:
    """Where a log is and how its columns are named (csv/parquet use the column names)."""

    format: str
    path: str | None
    sep: str = ","
    user_col: str = "user"
    item_col: str = "item"
    time_col: str = "ts"
    rating_col: str | None = None


# ---------------------------------------------------------------------------- files


def source_files(source: Source) -> list[Path]:
    """The input files `source` reads (their size and mtime key the cache); DataError if absent."""
    if source.format not in FORMATS:
        raise DataError(f"format {source.format!r}: expected one of {', '.join(FORMATS)}")
    if source.format == "synthetic":
        return []
    if source.path is None:
        raise DataError(f"format {source.format!r}: expected a path (--data.path), found none")
    path = Path(source.path).expanduser()
    if not path.exists():
        raise DataError.at(path, "path", f"an existing {source.format} file or folder", "nothing there")
    if source.format == "movielens":
        return [_movielens_file(path)]
    if source.format == "outbrain":
        return _outbrain_files(path)
    if source.format == "parquet":
        return _parquet_files(path)
    if not path.is_file():
        raise DataError.at(path, "path", "a CSV file", "a folder")
    return [path]


def _movielens_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in MOVIELENS_FILES:
        if (path / name).is_file():
            return path / name
    raise DataError.at(path, "folder", "a MovieLens u.data or ratings.dat file in it", "neither")


def _outbrain_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    clicks, events = path / "clicks_train.csv", path / "events.csv"
    if clicks.is_file():
        if not events.is_file():
            raise DataError.at(events, "file", "events.csv beside clicks_train.csv (joined on display_id)", "none")
        return [clicks, events]
    csvs = sorted(path.glob("*.csv"))
    if len(csvs) == 1:
        return csvs
    raise DataError.at(
        path, "folder", "clicks_train.csv + events.csv, or exactly one pre-joined CSV", f"{len(csvs)} CSV files"
    )


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.parquet"))
    if not files:
        raise DataError.at(path, "folder", "at least one *.parquet file", "none")
    return files


# ---------------------------------------------------------------------------- readers


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_strings(values: np.ndarray, width: int) -> pl.Series:
    """Non-negative integers as lowercase hex strings of `width` digits (zero-padded), built as one Arrow buffer
    (gathering 14M strings took 5 s at 100M rows; this takes 1)."""
    shifts = 4 * np.arange(width - 1, -1, -1, dtype=np.int64)
    chars = np.empty((values.size, width), dtype=np.uint8)
    for start in range(0, values.size, ROWS_PER_SLICE // 16):  # (slice, width) int64 temporaries: ~30 MB
        part = values[start : start + ROWS_PER_SLICE // 16].astype(np.int64)
        chars[start : start + part.size] = _HEX_DIGITS[(part[:, None] >> shifts) & 15]
    offsets = np.arange(0, (values.size + 1) * width, width, dtype=np.int64)
    strings = pa.LargeStringArray.from_buffers(values.size, pa.py_buffer(offsets), pa.py_buffer(chars.reshape(-1)))
    return pl.Series(pl.from_arrow(strings))


def read_source(source: Source) -> pl.DataFrame:
    """Reads `source` into the canonical frame (not for the synthetic format)."""
    files = source_files(source)
    if source.format == "movielens":
        return read_movielens(files[0])
    if source.format == "outbrain":
        return read_outbrain(files[0].parent if len(files) == 2 else files[0])
    if source.format == "csv":
        return read_csv(files[0], source.sep, source.user_col, source.item_col, source.time_col, source.rating_col)
    if source.format == "parquet":
        return read_parquet(files, source.user_col, source.item_col, source.time_col, source.rating_col)
    raise DataError(f"format {source.format!r}: expected a file format, not {source.format!r}")


def read_source_coded(source: Source) -> tuple[pl.DataFrame, pl.Series | None]:
    """`read_source`, or, where a reader codes the users itself (`outbrain_pair_by_arrays`), the frame with
    `user` as UInt32 codes and the id of each code."""
    files = source_files(source)
    if source.format == "outbrain" and len(files) == 2:
        return _read_outbrain_pair(*files, code_users=True)
    return read_source(source), None


def read_movielens(path: str | Path) -> pl.DataFrame:
    """Reads MovieLens `u.data` (tab separated) or `ratings.dat` (`::` separated): user item rating ts."""
    file = _movielens_file(Path(path))
    sep = "::" if "::" in _first_line(file) else "\t"
    frame = _read_table(file, sep, has_header=False, names=MOVIELENS_COLUMNS)
    if frame.width < len(MOVIELENS_COLUMNS):
        raise DataError.at(file, "line 1", "4 fields: user, item, rating, timestamp", f"{frame.width}")
    return _canonical(frame, file, "user", "item", "ts", "rating", _line_locator(first_data_line=1))


def read_outbrain(path: str | Path) -> pl.DataFrame:
    """Reads Outbrain clicks: a folder with clicks_train.csv + events.csv, or one pre-joined CSV."""
    files = _outbrain_files(Path(path))
    if len(files) == 2:
        return _read_outbrain_pair(*files, code_users=False)[0]
    file = files[0]
    header = _csv_header(file, ",")
    time_col = next((c for c in header if c.startswith("timestamp")), None)
    if time_col is None:
        raise DataError.at(file, "header", "a timestamp* column (e.g. timestamp_view)", ", ".join(header))
    frame = _read_table(file, ",", columns=["uuid", "ad_id", time_col, "clicked"])
    return _canonical(frame, file, "uuid", "ad_id", time_col, "clicked", _line_locator(first_data_line=2))


OUTBRAIN_CLICKS_DTYPES = {"display_id": pl.Int64, "ad_id": pl.Int64, "clicked": pl.Int8}
OUTBRAIN_EVENTS_DTYPES = {"display_id": pl.Int64, "uuid": pl.String, "timestamp": pl.Int64}


def scan_outbrain_pair(clicks_file: Path, events_file: Path, events: pl.DataFrame | None = None) -> pl.LazyFrame:
    """The typed, lazy join of clicks_train.csv and events.csv: user (Enum), item (Int64), ts, rating (Int8), row.

    `events`: events.csv as `_outbrain_events` read it, when the caller has it already."""
    events = _outbrain_events(clicks_file, events_file) if events is None else events
    users = pl.Enum(events["uuid"].drop_nulls().unique(maintain_order=True))
    events = events.select("display_id", pl.col("uuid").cast(users).alias("user"), "ts")
    clicks = _scan_typed(clicks_file, OUTBRAIN_CLICKS_DTYPES, row_index="row")
    # a click whose display is missing from events.csv gets a null user (dropped as null_user)
    joined = clicks.join(events.lazy(), on="display_id", how="left", maintain_order="left")
    return joined.select("user", pl.col("ad_id").alias("item"), "ts", pl.col("clicked").alias("rating"), "row")


def _outbrain_events(clicks_file: Path, events_file: Path) -> pl.DataFrame:
    """events.csv's first row per display: display_id, uuid (null when blank), ts (unix ms); both headers checked."""
    for file, dtypes in ((clicks_file, OUTBRAIN_CLICKS_DTYPES), (events_file, OUTBRAIN_EVENTS_DTYPES)):
        _require_columns(_csv_header(file, ","), list(dtypes), file)
    uuid = pl.col("uuid").str.strip_chars()
    events = (
        _scan_typed(events_file, OUTBRAIN_EVENTS_DTYPES)
        .select("display_id", pl.when(uuid.str.len_bytes() > 0).then(uuid).alias("uuid"),  # as the text path's ids
                (pl.col("timestamp") + OUTBRAIN_EPOCH_MS).alias("ts"))
        .collect(engine="streaming")
    )
    display = events["display_id"]
    if display.null_count() == 0 and bool((display.diff().drop_nulls() > 0).all()):
        return events  # strictly increasing display ids (Kaggle's file): already one row per display
    return events.unique("display_id", keep="first", maintain_order=True)


_DENSE_DISPLAYS = 4  # display ids spanning at most this many slots per events.csv row: joined through a lookup array


def outbrain_pair_by_arrays(
    clicks_file: Path, events_file: Path, events: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, pl.Series] | None:
    """The Outbrain pair with its users already coded, for logs of Kaggle's shape (None otherwise).

    Kaggle's uuids are hex strings of one width and its display ids nearly dense integers. Then each
    uuid's code is its rank among the distinct uuids (the hex values' order is the strings' byte order,
    so codes come in the order `pipeline.id_index` sorts ids), found by one sort of 64-bit integers
    instead of a hash of every string, and the join is a lookup array from display id to events.csv's
    row. Returns the canonical frame with `user` as UInt32 codes (null: no user) and the uuid of each
    code: the rows and values of `scan_outbrain_pair` (whose Enum stands for the same strings). `events`:
    events.csv as `_outbrain_events` read it, when the caller has it already.
    """
    events = _outbrain_events(clicks_file, events_file) if events is None else events
    coded = hex_codes(events["uuid"])
    display = events["display_id"]
    if coded is None or display.null_count() or display.len() == 0:
        return None
    low, high = int(display.min()), int(display.max())
    if high - low + 1 > _DENSE_DISPLAYS * display.len() + 1024:
        return None
    codes, ids = coded
    row_of = np.full(high - low + 2, -1, dtype=np.int64)  # the last slot: displays outside the range (or null)
    row_of[display.to_numpy() - low] = np.arange(display.len())
    clicks = _scan_typed(clicks_file, OUTBRAIN_CLICKS_DTYPES, row_index="row").collect(engine="streaming")
    user, ts = _join_by_display(clicks["display_id"], low, row_of, codes, events["ts"])
    frame = pl.DataFrame({"user": user, "item": clicks["ad_id"], "ts": ts, "rating": clicks["clicked"], "row": clicks["row"]})
    return frame, ids


def _join_by_display(
    display: pl.Series, low: int, row_of: np.ndarray, codes: pl.Series, stamps: pl.Series
) -> tuple[pl.Series, pl.Series]:
    """Each click's user code and ts through `row_of[display - low]` (the events row; -1 none), in slices of
    `ROWS_PER_SLICE` on Polars' thread count (no whole-log temporaries); null where the display or the value is missing."""
    outside = row_of.size - 1
    code_of, ts_of = codes.fill_null(0).to_numpy(), stamps.fill_null(0).to_numpy()
    code_known = codes.is_not_null().to_numpy() if codes.null_count() else None
    ts_known = stamps.is_not_null().to_numpy() if stamps.null_count() else None
    rows = display.len()
    user, ts = np.empty(rows, dtype=np.uint32), np.empty(rows, dtype=np.int64)
    has_user, has_ts = np.empty(rows, dtype=bool), np.empty(rows, dtype=bool)

    def join(start: int) -> None:
        part = slice(start, start + ROWS_PER_SLICE)
        slot = display.slice(start, ROWS_PER_SLICE).fill_null(low - 1).to_numpy() - low
        slot[(slot < 0) | (slot >= outside)] = outside
        event = row_of[slot]
        found = event >= 0
        event[~found] = 0
        user[part], ts[part] = code_of[event], ts_of[event]
        has_user[part] = found if code_known is None else found & code_known[event]
        has_ts[part] = found if ts_known is None else found & ts_known[event]

    on_slices(join, rows)
    return _with_nulls(pl.Series("user", user), has_user), _with_nulls(pl.Series("ts", ts), has_ts)


def _with_nulls(values: pl.Series, known: np.ndarray) -> pl.Series:
    """`values`, null where not `known`."""
    if bool(known.all()):
        return values
    return pl.select(pl.when(pl.Series(known)).then(values).alias(values.name)).to_series()


_HEX_WIDTH = 15  # hex digits that fit a signed 64-bit integer


def hex_codes(ids: pl.Series) -> tuple[pl.Series, pl.Series] | None:
    """Codes of string ids that are all lowercase hex of one width (Outbrain's uuids), by rank; None otherwise.

    Returns the UInt32 code of each id (null stays null) and the distinct ids by code, in byte order."""
    present = ids.drop_nulls()
    if present.len() == 0:
        return None
    width = present.str.len_bytes()
    digits = int(width.max())
    if int(width.min()) != digits or digits > _HEX_WIDTH or not present.str.contains(f"^[0-9a-f]{{{digits}}}$").all():
        return None
    ordered, order = sorted_with_positions(present.str.to_integer(base=16))
    starts = run_starts(ordered)
    codes = np.empty(ordered.size, dtype=np.uint32)
    codes[order] = np.cumsum(starts, dtype=np.int64) - 1
    distinct = hex_strings(ordered[starts], digits).rename("id")
    if present.len() == ids.len():
        return pl.Series(ids.name, codes), distinct
    valid = ids.is_not_null()
    full = np.zeros(ids.len(), dtype=np.uint32)
    full[valid.to_numpy()] = codes
    return pl.select(pl.when(valid).then(pl.Series(full)).alias(ids.name)).to_series(), distinct


def _scan_typed(file: Path, dtypes: dict[str, pl.DataType], row_index: str | None = None) -> pl.LazyFrame:
    """A lazy scan of `file` reading only the columns of `dtypes`, each with its dtype."""
    _check_text(file)
    scan = pl.scan_csv(file, infer_schema=False, schema_overrides=dtypes, row_index_name=row_index)
    return scan.select(*([row_index] if row_index else []), *dtypes)


def _read_outbrain_pair(clicks_file: Path, events_file: Path, code_users: bool) -> tuple[pl.DataFrame, pl.Series | None]:
    """The typed read, events.csv read once: the array join when `code_users` and the pair fits it (users as codes,
    and their ids), else the lazy join (`scan_outbrain_pair`); if a typed read cannot parse a value, the text path
    names it."""
    try:
        events = _outbrain_events(clicks_file, events_file)
        coded = outbrain_pair_by_arrays(clicks_file, events_file, events) if code_users else None
        frame, ids = coded or (scan_outbrain_pair(clicks_file, events_file, events).collect(engine="streaming"), None)
    except DataError:
        raise
    except Exception:  # noqa: BLE001 - a value the typed reader rejects: the text path reports or accepts it
        return _read_outbrain_pair_text(clicks_file, events_file), None
    if frame.height == 0:
        raise DataError.at(clicks_file, "rows", "at least one data row after the header", "none (header only)")
    return frame, ids


def _read_outbrain_pair_text(clicks_file: Path, events_file: Path) -> pl.DataFrame:
    """Joins clicks_train.csv (display_id, ad_id, clicked) with events.csv (display_id, uuid, timestamp)."""
    clicks = _read_table(clicks_file, ",", columns=["display_id", "ad_id", "clicked"])
    events = _read_table(events_file, ",", columns=["display_id", "uuid", "timestamp"])
    located = _line_locator(first_data_line=2)
    clicks = pl.DataFrame(
        [
            _parse_id(clicks["display_id"], clicks_file, located).alias("display_id"),
            _parse_id(clicks["ad_id"], clicks_file, located).alias("item"),
            _parse_rating(clicks["clicked"], clicks_file, located).alias("rating"),
        ]
    ).with_row_index("row")
    events = pl.DataFrame(
        [
            _parse_id(events["display_id"], events_file, located).alias("display_id"),
            _parse_id(events["uuid"], events_file, located).alias("user"),
            (_parse_ts(events["timestamp"], events_file, located) + OUTBRAIN_EPOCH_MS).alias("ts"),
        ]
    )
    # a click whose display is missing from events.csv gets a null user (dropped as null_user)
    joined = clicks.join(events.unique("display_id", keep="first"), on="display_id", how="left", maintain_order="left")
    return joined.select(
        pl.col("user"), pl.col("item"), pl.col("ts"), pl.col("rating"), pl.col("row").cast(pl.Int64)
    )


def read_csv(
    path: str | Path,
    sep: str = ",",
    user_col: str = "user",
    item_col: str = "item",
    time_col: str = "ts",
    rating_col: str | None = None,
) -> pl.DataFrame:
    """Reads a CSV with a header; `rating_col=None` means every row is a click."""
    file = Path(path)
    wanted = [c for c in (user_col, item_col, time_col, rating_col) if c is not None]
    frame = _read_table(file, sep, columns=list(dict.fromkeys(wanted)))
    return _canonical(frame, file, user_col, item_col, time_col, rating_col, _line_locator(first_data_line=2))


def read_parquet(
    paths: str | Path | list[Path],
    user_col: str = "user",
    item_col: str = "item",
    time_col: str = "ts",
    rating_col: str | None = None,
) -> pl.DataFrame:
    """Reads Parquet file(s); ids may be strings or integers, ts integers/floats/datetimes/strings."""
    files = _parquet_files(Path(paths)) if isinstance(paths, (str, Path)) else list(paths)
    label = files[0] if len(files) == 1 else files[0].parent
    wanted = list(dict.fromkeys(c for c in (user_col, item_col, time_col, rating_col) if c is not None))
    try:
        found = pl.scan_parquet(files).collect_schema().names()
    except Exception as error:  # noqa: BLE001 - any reader failure is bad input
        raise DataError.at(label, "file", "a Parquet file", _first_line_of(error)) from error
    _require_columns(found, wanted, label)
    frame = pl.read_parquet(files, columns=wanted)
    if frame.height == 0:
        raise DataError.at(label, "rows", "at least one row", "none")
    return _canonical(frame, label, user_col, item_col, time_col, rating_col, lambda i: f"row {i + 1}")


# ---------------------------------------------------------------------------- raw tables


def _read_table(
    file: Path,
    sep: str,
    has_header: bool = True,
    names: list[str] | None = None,
    columns: list[str] | None = None,
) -> pl.DataFrame:
    """Reads a delimited UTF-8 text file with every column as a string."""
    _check_text(file)
    if has_header and columns is not None:
        _require_columns(_csv_header(file, sep), columns, file)
    source, separator = _source_and_sep(file, sep)
    try:  # a lazy scan: only `columns` are parsed, each as a string (explicitly; parsed by _canonical)
        scan = pl.scan_csv(source, separator=separator, has_header=has_header, new_columns=names, infer_schema=False)
        frame = (scan.select(columns) if columns is not None else scan).collect()
    except pl.exceptions.NoDataError as error:
        raise DataError.at(file, "file", "at least one row", "an empty file") from error
    except Exception as error:  # noqa: BLE001 - every parser failure is bad input
        reason = _first_line_of(error)
        expected = "UTF-8 text" if "utf" in reason.lower() else f"a table separated by {sep!r}"
        raise DataError.at(file, "file", expected, f"a parse error ({reason})") from error
    if frame.height == 0:
        raise DataError.at(file, "rows", "at least one data row after the header", "none (header only)")
    return frame


def _check_text(file: Path) -> None:
    """Rejects empty, binary and non-UTF-8 files from their first bytes."""
    if not file.is_file():
        raise DataError.at(file, "path", "a file", "a folder" if file.is_dir() else "nothing")
    with file.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if not head.strip():
        raise DataError.at(file, "file", "at least one row", "an empty file")
    if b"\x00" in head:
        raise DataError.at(file, "file", "UTF-8 text", "binary data (NUL bytes)")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as error:
        raise DataError.at(file, f"byte {error.start}", "UTF-8 text", "a non-UTF-8 byte") from error


def _source_and_sep(file: Path, sep: str) -> tuple[Path | io.BytesIO, str]:
    """Polars splits on one byte only: a longer separator is replaced in memory first."""
    if len(sep.encode()) == 1:
        return file, sep
    return io.BytesIO(file.read_bytes().replace(sep.encode(), _TEMP_SEP.encode())), _TEMP_SEP


def _csv_header(file: Path, sep: str) -> list[str]:
    _check_text(file)
    source, separator = _source_and_sep(file, sep)
    try:
        return pl.read_csv(source, separator=separator, n_rows=0, infer_schema=False).columns
    except Exception as error:  # noqa: BLE001
        raise DataError.at(file, "header", f"a header separated by {sep!r}", _first_line_of(error)) from error


def _first_line(file: Path) -> str:
    _check_text(file)
    with file.open("rb") as handle:
        return handle.readline(_SNIFF_BYTES).decode("utf-8", errors="replace")


def _first_line_of(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _require_columns(found: list[str], wanted: list[str], file: Path) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise DataError.at(
            file, f"column {missing[0]!r}", f"columns {', '.join(wanted)}", f"only {', '.join(found) or 'none'}"
        )


def _line_locator(first_data_line: int) -> Locate:
    return lambda index: f"line {index + first_data_line}"


# ---------------------------------------------------------------------------- parsing


def _canonical(
    frame: pl.DataFrame,
    file: Path,
    user_col: str,
    item_col: str,
    time_col: str,
    rating_col: str | None,
    locate: Locate,
) -> pl.DataFrame:
    """Parses the named columns into the canonical frame (`row` = file order)."""
    _require_columns(frame.columns, [c for c in (user_col, item_col, time_col, rating_col) if c], file)
    columns = [
        _parse_id(frame[user_col], file, locate).alias("user"),
        _parse_id(frame[item_col], file, locate).alias("item"),
        _parse_ts(frame[time_col], file, locate).alias("ts"),
    ]
    if rating_col is not None:
        columns.append(_parse_rating(frame[rating_col], file, locate).alias("rating"))
    frame = pl.DataFrame(columns).with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    return frame.select(*(c.name for c in columns), "row")


def _blank_to_null(raw: pl.Series) -> pl.Series:
    stripped = raw.str.strip_chars()
    return pl.select(pl.when(stripped.str.len_bytes() > 0).then(stripped)).to_series().rename(raw.name)


def _raise_first_bad(raw: pl.Series, parsed: pl.Series, file: Path, locate: Locate, expected: str) -> None:
    """Raises DataError at the first value that is present in `raw` but null after parsing."""
    bad = (raw.is_not_null() & parsed.is_null()).arg_true()
    if bad.len():
        index = int(bad[0])
        raise DataError.at(file, f"column {raw.name!r} {locate(index)}", expected, repr(raw[index]))


def _parse_id(raw: pl.Series, file: Path, locate: Locate) -> pl.Series:
    """Ids become strings; integers and integral floats are accepted, other types are not."""
    dtype = raw.dtype
    if dtype == pl.String:
        return _blank_to_null(raw)
    if dtype.is_integer() or dtype in (pl.Categorical, pl.Enum):
        return raw.cast(pl.String)
    if dtype.is_float():
        present = raw.fill_nan(None)
        as_int = present.cast(pl.Int64, strict=False)
        exact = pl.select(pl.when(as_int.cast(pl.Float64) == present).then(as_int)).to_series()
        _raise_first_bad(present, exact, file, locate, "an integer or string id")
        return exact.cast(pl.String).rename(raw.name)
    raise DataError.at(file, f"column {raw.name!r}", "string or integer ids", f"dtype {dtype}")


def _parse_ts(raw: pl.Series, file: Path, locate: Locate) -> pl.Series:
    """Timestamps as Int64: integers as is, floats floored, datetimes as unix milliseconds."""
    dtype = raw.dtype
    expected = "an integer timestamp or a datetime"
    if dtype.is_integer():
        return raw.cast(pl.Int64)
    if dtype.is_float():
        parsed = raw.fill_nan(None).floor().cast(pl.Int64, strict=False)
        _raise_first_bad(raw, parsed, file, locate, expected)
        return parsed
    if dtype in (pl.Datetime, pl.Date):
        return raw.cast(pl.Datetime("ms")).dt.epoch("ms")
    if dtype != pl.String:
        raise DataError.at(file, f"column {raw.name!r}", "integer, float, datetime or string timestamps", str(dtype))
    as_int = raw.cast(pl.Int64, strict=False)
    if as_int.null_count() == raw.null_count():  # plain integers (the common case): no stripping needed
        return as_int
    text = _blank_to_null(raw)
    as_int = text.cast(pl.Int64, strict=False)
    if as_int.null_count() == text.null_count():
        return as_int
    as_float = text.cast(pl.Float64, strict=False).fill_nan(None).floor().cast(pl.Int64, strict=False)
    if as_float.null_count() == text.null_count():
        return as_float
    try:
        as_datetime = text.str.to_datetime(strict=False, time_unit="ms").dt.epoch("ms")
    except Exception:  # noqa: BLE001 - no datetime format fits: report against the integer reading
        as_datetime = as_int
    if as_datetime.null_count() == text.null_count():
        return as_datetime
    # blame the reading that fits the first present value, so the message points at the odd one
    first = text.drop_nulls()[0]
    looks_numeric = pl.Series([first]).cast(pl.Float64, strict=False)[0] is not None
    _raise_first_bad(text, as_float if looks_numeric else as_datetime, file, locate, expected)
    raise AssertionError("unreachable: some timestamp failed to parse")  # pragma: no cover


def _parse_rating(raw: pl.Series, file: Path, locate: Locate) -> pl.Series:
    """Ratings (or Outbrain's clicked) as Float64."""
    dtype = raw.dtype
    if dtype.is_numeric() or dtype == pl.Boolean:
        return raw.cast(pl.Float64).fill_nan(None)  # NaN >= threshold is true in Polars: NaN is a null rating
    if dtype != pl.String:
        raise DataError.at(file, f"column {raw.name!r}", "numeric ratings", f"dtype {dtype}")
    parsed = raw.cast(pl.Float64, strict=False)
    if parsed.null_count() == raw.null_count():  # plain numbers (the common case): no stripping needed
        return parsed.fill_nan(None)
    text = _blank_to_null(raw)
    parsed = text.cast(pl.Float64, strict=False)
    _raise_first_bad(text, parsed, file, locate, "a numeric rating")
    return parsed.fill_nan(None)

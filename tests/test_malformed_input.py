"""Malformed input end to end through the CLI: one `error:` line naming the file and exit 2, or a load that says what it dropped.

Every case runs `train.py fit --config configs/popularity.yaml --data.format=... --data.path=...` in-process
through `lit_rec.cli.main` (an interpreter start costs ~5-8 s here, a case in-process well under 1 s when it
fails); three representative cases also run as real subprocesses. A hang is a failure (120 s alarm).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from lit_rec.cli import main

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120
USERS, PER_USER, ITEMS = 20, 10, 200  # every user keeps >= 100 unseen items for the default eval_ks (max 100)


def good_rows(users: int = USERS, per_user: int = PER_USER, items: int = ITEMS) -> list[tuple[str, str, int, float]]:
    """(user, item, ts, rating) rows that load: user u rates `per_user` distinct items at increasing times, all 5."""
    return [
        (f"u{u}", f"i{(u * per_user + j) % items + 1}", 1000 + u * per_user + j, 5.0)
        for u in range(users)
        for j in range(per_user)
    ]


def csv_text(rows: list[tuple], sep: str = ",", header: str | None = "user,item,ts,rating") -> str:
    lines = [header.replace(",", sep)] if header is not None else []
    lines += [sep.join(str(value) for value in row) for row in rows]
    return "\n".join(lines) + "\n"


def numeric(rows: list[tuple]) -> list[tuple]:
    """MovieLens/Outbrain style integer ids: user item rating ts."""
    return [(int(u[1:]) + 1, int(i[1:]), int(r), ts) for u, i, ts, r in rows]


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def junk(size: int = 4096, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


# ---------------------------------------------------------------------------- the corpus


def csv_missing_path(d: Path) -> Path:
    return d / "nowhere.csv"


def csv_empty_file(d: Path) -> Path:
    return write(d / "empty.csv", b"")


def csv_header_only(d: Path) -> Path:
    return write(d / "header.csv", "user,item,ts,rating\r\n")


def csv_missing_column(d: Path) -> Path:
    return write(d / "nots.csv", csv_text([r[:2] + r[3:] for r in good_rows()], header="user,item,rating"))


def csv_unparsable_ts(d: Path) -> Path:
    rows = good_rows()
    rows[5] = (*rows[5][:2], "yesterday", rows[5][3])
    return write(d / "badts.csv", csv_text(rows))


def csv_binary_junk(d: Path) -> Path:
    return write(d / "junk.csv", junk())


def csv_binary_junk_after_header(d: Path) -> Path:
    return write(d / "junk2.csv", b"user,item,ts,rating\n" + junk(seed=1))


def csv_too_few_events(d: Path) -> Path:
    return write(d / "few.csv", csv_text(good_rows(users=3, per_user=2)))  # nobody reaches the 5-core


def csv_too_few_to_split(d: Path) -> Path:
    return write(d / "single.csv", csv_text(good_rows(users=3, per_user=1)))  # 1-core: all train, no test


def csv_too_few_items(d: Path) -> Path:
    return write(d / "narrow.csv", csv_text(good_rows(items=30)))  # 20 unseen items < max(eval_ks) = 100


def csv_wrong_separator(d: Path) -> Path:
    return write(d / "semicolon.csv", csv_text(good_rows(), sep=";"))


def csv_mixed_id_types(d: Path) -> Path:
    # text, integer and float-looking ids in one column: all are read as text, so all are ids
    users = {"u0": "7", "u1": "7.5"}
    rows = [(users.get(u, u), i[1:] if k % 2 else i, ts, r) for k, (u, i, ts, r) in enumerate(good_rows())]
    return write(d / "mixed_ids.csv", csv_text(rows))


def csv_mixed_ts_types(d: Path) -> Path:
    rows = good_rows()
    rows[7] = (*rows[7][:2], "2016-06-14 04:00:00", rows[7][3])
    return write(d / "mixed_ts.csv", csv_text(rows))


def csv_one_mb_line(d: Path) -> Path:
    text = csv_text(good_rows())
    head, tail = text.split("\n", 40)[:40], text.split("\n", 40)[40]
    return write(d / "long_line.csv", "\n".join([*head, "x" * (1 << 20)]) + "\n" + tail)


def csv_non_utf8(d: Path) -> Path:
    text = csv_text(good_rows()).replace("u3,", "Jos\xe9,")
    return write(d / "latin1.csv", text.encode("latin-1"))


def csv_non_utf8_past_sniff(d: Path) -> Path:
    # the reader sniffs the first 64 KiB: put the bad byte after them (filler users fall to the k-core)
    filler = [(f"f{k}", "i1", 1, 5.0) for k in range(7000)]
    data = csv_text(good_rows() + filler).encode() + "late\xe9,i2,3,5\n".encode("latin-1")
    assert len(data) > 1 << 16
    return write(d / "latin1_late.csv", data)


def csv_nan_ratings(d: Path) -> Path:
    rows = good_rows()
    for k in (3, 14, 25):
        rows[k] = (*rows[k][:3], "NaN")
    return write(d / "nan_ratings.csv", csv_text(rows))


def csv_negative_ts(d: Path) -> Path:
    return write(d / "negative_ts.csv", csv_text([(u, i, ts - 10_000, r) for u, i, ts, r in good_rows()]))


def csv_repeated_header(d: Path) -> Path:
    text = csv_text(good_rows())
    lines = text.splitlines()
    return write(d / "two_headers.csv", "\n".join([*lines[:51], lines[0], *lines[51:]]) + "\n")


def csv_crlf_bom(d: Path) -> Path:
    return write(d / "crlf_bom.csv", b"\xef\xbb\xbf" + csv_text(good_rows()).replace("\n", "\r\n").encode())


def movielens_folder_without_ratings(d: Path) -> Path:
    write(d / "ml" / "README", "no ratings here\n")
    return d / "ml"


def movielens_empty(d: Path) -> Path:
    write(d / "ml" / "u.data", b"")
    return d / "ml"


def movielens_wrong_separator(d: Path) -> Path:
    write(d / "ml" / "u.data", csv_text(numeric(good_rows()), header=None))  # commas, not tabs
    return d / "ml"


def movielens_binary_junk(d: Path) -> Path:
    write(d / "ml" / "ratings.dat", junk(seed=2))
    return d / "ml"


def movielens_crlf_bom(d: Path) -> Path:
    text = csv_text(numeric(good_rows()), sep="\t", header=None).replace("\n", "\r\n")
    write(d / "ml" / "u.data", b"\xef\xbb\xbf" + text.encode())
    return d / "ml"


def _outbrain_pair(folder: Path, timestamp: Callable[[int], str] = str) -> None:
    rows = numeric(good_rows())
    clicks = ["display_id,ad_id,clicked", *(f"{k},{item},1" for k, (_, item, _, _) in enumerate(rows))]
    events = ["display_id,uuid,document_id,timestamp,platform,geo_location"]
    events += [f"{k},user{user},1,{timestamp(ts)},1,US" for k, (user, _, _, ts) in enumerate(rows)]
    write(folder / "clicks_train.csv", "\n".join(clicks) + "\n")
    write(folder / "events.csv", "\n".join(events) + "\n")


def outbrain_without_events_csv(d: Path) -> Path:
    _outbrain_pair(d / "ob")
    (d / "ob" / "events.csv").unlink()
    return d / "ob"


def outbrain_unparsable_timestamp(d: Path) -> Path:
    _outbrain_pair(d / "ob", timestamp=lambda ts: "noon" if ts == 1100 else str(ts))
    return d / "ob"


def outbrain_header_only_clicks(d: Path) -> Path:
    _outbrain_pair(d / "ob")
    write(d / "ob" / "clicks_train.csv", "display_id,ad_id,clicked\n")
    return d / "ob"


def outbrain_unknown_displays(d: Path) -> Path:
    _outbrain_pair(d / "ob")
    with (d / "ob" / "clicks_train.csv").open("a") as handle:
        handle.write("9999,3,1\n9998,4,1\n")  # displays absent from events.csv: null users
    return d / "ob"


def _frame(**overrides: list) -> pl.DataFrame:
    rows = good_rows()
    columns = {"user": [r[0] for r in rows], "item": [r[1] for r in rows], "ts": [r[2] for r in rows],
               "rating": [r[3] for r in rows]}
    return pl.DataFrame({**columns, **overrides})


def parquet(path: Path, frame: pl.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


def parquet_ts_not_dates(d: Path) -> Path:
    return parquet(d / "ts_strings.parquet", _frame(ts=[f"day {k}" for k in range(USERS * PER_USER)]))


def parquet_fractional_float_user(d: Path) -> Path:
    return parquet(d / "float_user.parquet", _frame(user=[u + 0.5 for u in range(USERS) for _ in range(PER_USER)]))


def parquet_integral_float_user(d: Path) -> Path:
    return parquet(d / "float_user_ok.parquet", _frame(user=[float(u) for u in range(USERS) for _ in range(PER_USER)]))


def parquet_bool_ts(d: Path) -> Path:
    return parquet(d / "bool_ts.parquet", _frame(ts=[True] * (USERS * PER_USER)))


def parquet_binary_junk(d: Path) -> Path:
    return write(d / "junk.parquet", junk(seed=3))


def parquet_zero_rows(d: Path) -> Path:
    return parquet(d / "zero.parquet", _frame().head(0))


def parquet_missing_column(d: Path) -> Path:
    return parquet(d / "no_item.parquet", _frame().drop("item"))


def parquet_nan_ratings(d: Path) -> Path:
    return parquet(d / "nan_rating.parquet", _frame(rating=[float("nan") if k in (3, 14) else 5.0 for k in range(USERS * PER_USER)]))


@dataclass(frozen=True)
class Case:
    """One malformed input and what the CLI must do with it."""

    make: Callable[[Path], Path]  # writes the input under a folder; returns --data.path
    format: str
    outcome: str  # "error": one `error:` line naming `names`, exit 2; "loads": exit 0 and these dropped lines
    names: str | None = None  # what the error line must name (default: the path's file or folder name)
    expect: str = ""  # a fragment the error line must contain (what was expected / where)
    dropped: tuple[str, ...] = ()  # `data: dropped ...` lines a load must print
    args: tuple[str, ...] = ("--data.rating_col=rating",)

    @property
    def id(self) -> str:
        return self.make.__name__


RATED = ("--data.rating_col=rating",)
CASES = [
    Case(csv_missing_path, "csv", "error", expect="nothing there"),
    Case(csv_empty_file, "csv", "error", expect="empty file"),
    Case(csv_header_only, "csv", "error", expect="header only"),
    Case(csv_missing_column, "csv", "error", expect="column 'ts'"),
    Case(csv_unparsable_ts, "csv", "error", expect="'ts' line 7"),
    Case(csv_binary_junk, "csv", "error", expect="UTF-8"),
    Case(csv_binary_junk_after_header, "csv", "error", expect="UTF-8"),
    Case(csv_too_few_events, "csv", "error", expect="some left after the filters"),
    Case(csv_too_few_to_split, "csv", "error", expect="test split", args=(*RATED, "--data.min_user_interactions=1")),
    Case(csv_too_few_items, "csv", "error", expect="items the user never interacted with"),
    Case(csv_wrong_separator, "csv", "error", expect="column 'user'"),
    Case(csv_mixed_id_types, "csv", "loads"),
    Case(csv_mixed_ts_types, "csv", "error", expect="'ts' line 9"),
    Case(csv_one_mb_line, "csv", "loads", dropped=("dropped 1 row with a null item",)),
    Case(csv_non_utf8, "csv", "error", expect="UTF-8"),
    Case(csv_non_utf8_past_sniff, "csv", "error", expect="UTF-8"),
    Case(csv_nan_ratings, "csv", "loads", dropped=("dropped 3 rows with a null rating",)),
    Case(csv_negative_ts, "csv", "loads"),
    Case(csv_repeated_header, "csv", "error", expect="'ts' line 52"),
    Case(csv_crlf_bom, "csv", "loads"),
    Case(movielens_folder_without_ratings, "movielens", "error", expect="u.data or ratings.dat"),
    Case(movielens_empty, "movielens", "error", names="u.data", expect="empty file"),
    Case(movielens_wrong_separator, "movielens", "error", names="u.data", expect="separated by '\\t'"),
    Case(movielens_binary_junk, "movielens", "error", names="ratings.dat", expect="UTF-8"),
    Case(movielens_crlf_bom, "movielens", "loads"),
    Case(outbrain_without_events_csv, "outbrain", "error", names="events.csv", expect="beside clicks_train.csv"),
    Case(outbrain_unparsable_timestamp, "outbrain", "error", names="events.csv", expect="'timestamp' line 102"),
    Case(outbrain_header_only_clicks, "outbrain", "error", names="clicks_train.csv", expect="header only"),
    Case(outbrain_unknown_displays, "outbrain", "loads", dropped=("dropped 2 rows with a null user",)),
    Case(parquet_ts_not_dates, "parquet", "error", expect="'ts' row 1"),
    Case(parquet_fractional_float_user, "parquet", "error", expect="'user' row 1"),
    Case(parquet_integral_float_user, "parquet", "loads"),
    Case(parquet_bool_ts, "parquet", "error", expect="column 'ts'"),
    Case(parquet_binary_junk, "parquet", "error", expect="a Parquet file"),
    Case(parquet_zero_rows, "parquet", "error", expect="at least one row"),
    Case(parquet_missing_column, "parquet", "error", expect="column 'item'"),
    Case(parquet_nan_ratings, "parquet", "loads", dropped=("dropped 2 rows with a null rating",)),
]
SUBPROCESS_CASES = ["csv_binary_junk", "outbrain_without_events_csv", "csv_crlf_bom"]
BY_ID = {case.id: case for case in CASES}


def cli_args(case: Case, path: Path, tmp: Path) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs/popularity.yaml"), f"--data.format={case.format}", f"--data.path={path}",
        f"--data.cache_dir={tmp / 'cache'}", "--trainer.logger=false", "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp / 'run'}", *case.args,
    ]


def check_outcome(case: Case, path: Path, code: int | None, stdout: str, stderr: str) -> None:
    """The contract: an error is exactly one stderr line `error: ...<file>...` and exit 2; a load exits 0
    and prints the data line and each expected dropped line; never a traceback."""
    assert "Traceback" not in stderr + stdout, stderr
    if case.outcome == "error":
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2, f"exit {code}, stderr:\n{stderr}"
        assert len(lines) == 1 and lines[0].startswith("error:"), stderr
        assert (case.names or path.name) in lines[0], lines[0]
        assert case.expect in lines[0], lines[0]
    else:
        assert code in (0, None), f"exit {code}, stderr:\n{stderr}"
        assert f"data: {case.format} {path}: " in stderr, stderr
        reported = {line.removeprefix("data: ") for line in stderr.splitlines() if line.startswith("data: dropped")}
        assert reported >= set(case.dropped), stderr


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Fails the test instead of hanging (SIGALRM; the tests run in the main thread)."""

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError(f"no outcome after {seconds} s: the CLI hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_malformed_input_in_process(case: Case, tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIT_REC_DEBUG", raising=False)
    path = case.make(tmp_path / "input")
    code: int | None = 0
    with alarm(TIMEOUT_S):
        try:
            main(cli_args(case, path, tmp_path))
        except SystemExit as exit_info:
            code = exit_info.code if isinstance(exit_info.code, int) or exit_info.code is None else 1
    captured = capfd.readouterr()
    check_outcome(case, path, code, captured.out, captured.err)


@pytest.mark.slow
@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_malformed_input_subprocess(case_id: str, tmp_path: Path) -> None:
    case = BY_ID[case_id]
    path = case.make(tmp_path / "input")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    env.pop("LIT_REC_DEBUG", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *cli_args(case, path, tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    check_outcome(case, path, result.returncode, result.stdout, result.stderr)

"""Readers on tiny files: every format, odd but valid files, and every kind of bad input."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from datamodules import DataError
from datamodules.readers import OUTBRAIN_EPOCH_MS, read_csv, read_movielens, read_outbrain, read_parquet

CANONICAL = {"user": pl.String, "item": pl.String, "ts": pl.Int64, "row": pl.Int64}


def _schema(frame: pl.DataFrame) -> dict[str, pl.DataType]:
    return dict(frame.schema)


def test_movielens_u_data_and_ratings_dat(tmp_path: Path, write_text) -> None:
    write_text(tmp_path / "ml100k" / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    write_text(tmp_path / "ml1m" / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    small, large = read_movielens(tmp_path / "ml100k"), read_movielens(tmp_path / "ml1m")
    assert _schema(small) == {**CANONICAL, "rating": pl.Float64}
    assert small.select("user", "item", "ts", "rating", "row").rows() == [
        ("196", "242", 881250949, 3.0, 0),
        ("186", "302", 891717742, 3.0, 1),
    ]
    assert large.select("user", "item", "ts", "rating").rows() == [
        ("1", "1193", 978300760, 5.0),
        ("1", "661", 978302109, 3.0),
    ]


def test_movielens_folder_without_ratings(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*u.data or ratings.dat"):
        read_movielens(tmp_path / "empty")


OUTBRAIN_HEADER = "uuid,display_id,ad_id,document_id,timestamp_view,platform,geo_location,clicked,day\n"


def test_outbrain_prejoined_and_two_files_agree(tmp_path: Path, write_text) -> None:
    joined = write_text(
        tmp_path / "joined.csv",
        OUTBRAIN_HEADER
        + "cb8c55702adb93,1,42337,379743,2016-06-14 04:06:19.061,3.0,US>SC>519,0,14\n"
        + "cb8c55702adb93,1,144739,379743,2016-06-14 04:06:19.061,3.0,US>SC>519,1,14\n"
        + "79a85fa78311b9,2,125211,1794259,2016-06-14 04:07:20.311,2.0,US>CA>807,1,14\n",
    )
    folder = tmp_path / "kaggle"
    write_text(folder / "clicks_train.csv", "display_id,ad_id,clicked\n1,42337,0\n1,144739,1\n2,125211,1\n")
    write_text(
        folder / "events.csv",
        "display_id,uuid,document_id,timestamp,platform,geo_location\n"
        "1,cb8c55702adb93,379743,379063,3,US>SC>519\n2,79a85fa78311b9,1794259,440313,2,US>CA>807\n",
    )
    one, two = read_outbrain(joined), read_outbrain(folder)
    assert _schema(one) == {**CANONICAL, "rating": pl.Float64}
    # the pair takes the typed path: the same values, in integer / Enum columns
    assert dict(two.schema) == {"user": two["user"].dtype, "item": pl.Int64, "ts": pl.Int64, "rating": pl.Int8,
                                "row": pl.UInt32}
    assert isinstance(two["user"].dtype, pl.Enum)
    assert one.rows() == two.with_columns(pl.col("user", "item").cast(pl.String), pl.col("rating").cast(pl.Float64),
                                          pl.col("row").cast(pl.Int64)).rows()
    expected_ms = int(datetime(2016, 6, 14, 4, 6, 19, 61000, tzinfo=timezone.utc).timestamp() * 1000)
    assert one["ts"][0] == expected_ms == OUTBRAIN_EPOCH_MS + 379063
    assert one["rating"].to_list() == [0.0, 1.0, 1.0]


def test_outbrain_missing_events_csv(tmp_path: Path, write_text) -> None:
    write_text(tmp_path / "clicks_train.csv", "display_id,ad_id,clicked\n1,42337,0\n")
    with pytest.raises(DataError, match="events.csv"):
        read_outbrain(tmp_path)


def test_outbrain_through_the_datamodule_uses_clicked_1(tmp_path: Path, make_dm, write_text) -> None:
    lines = [f"user{u},{u},{100 + (u + j) % 7},9,2016-06-14 04:0{j}:00.000,1,US,{int(j != 2)},14" for u in range(4)
             for j in range(5)]
    path = write_text(tmp_path / "ob.csv", OUTBRAIN_HEADER + "\n".join(lines) + "\n")
    dm = make_dm(format="outbrain", path=str(path), split="time", positive_threshold=4.0)  # 4 is ignored
    assert dm.dropped["below_threshold"] == 4
    assert sum(dm.statistics()[f"{s}_events"] for s in ("train", "val", "test")) == 16


def test_csv_with_bom_crlf_string_ids_and_extra_columns(tmp_path: Path, make_dm, tiny_rows, write_text) -> None:
    body = "".join(f"{u};note {i};{i};{ts};{r}\n" for u, i, ts, r in tiny_rows())
    path = write_text(tmp_path / "log.csv", "\ufeffwho;comment;what;when;stars\n" + body, newline="\r\n")
    frame = read_csv(path, ";", "who", "what", "when", "stars")
    assert _schema(frame) == {**CANONICAL, "rating": pl.Float64}
    assert frame["user"][0] == "u0" and frame["item"][0] == "i1" and frame.height == 36
    dm = make_dm(format="csv", path=str(path), sep=";", user_col="who", item_col="what", time_col="when")
    assert dm.num_users == 6 and dm.num_items == 11  # no rating column: every row is a click
    assert dm.tensors.user_ids[0] == "u0" and dm.tensors.item_ids[:3] == ["<PAD>", "i1", "i10"]


def test_csv_multichar_separator_and_datetime_ts(tmp_path: Path, write_text) -> None:
    path = write_text(tmp_path / "log.txt", "user::item::ts\na::x::2020-01-01T00:00:01\nb::y::2020-01-01T00:00:02\n")
    frame = read_csv(path, "::")
    assert frame["ts"].to_list() == [1577836801000, 1577836802000]


def test_csv_nulls_are_dropped_and_counted(tmp_path: Path, make_dm, tiny_rows, write_text) -> None:
    body = "".join(f"{u},{i},{ts}\n" for u, i, ts, _ in tiny_rows())
    path = write_text(tmp_path / "log.csv", "user,item,ts\n" + body + ",i1,5\n , i2,6\nu1,,7\nu1,i3,\n")
    dm = make_dm(format="csv", path=str(path))
    dropped = dm.dropped
    assert (dropped["null_user"], dropped["null_item"], dropped["null_ts"]) == (2, 1, 1)


def test_parquet_typed_columns_and_policy(tmp_path: Path, make_dm, tiny_rows) -> None:
    rows = tiny_rows()
    frame = pl.DataFrame(
        {
            "uid": [int(u[1:]) for u, *_ in rows],
            "iid": [int(i[1:]) for _, i, *_ in rows],
            "when": [datetime.fromtimestamp(ts, tz=timezone.utc) for *_, ts, _ in rows],
            "score": [r for *_, r in rows],
        }
    )
    path = tmp_path / "log.parquet"
    frame.write_parquet(path)
    canonical = read_parquet(path, "uid", "iid", "when", "score")
    assert _schema(canonical) == {**CANONICAL, "rating": pl.Float64}
    assert canonical["ts"][0] == 1_000_000 and canonical["user"][0] == "0"
    dm = make_dm(format="parquet", path=str(path), user_col="uid", item_col="iid", time_col="when",
                 rating_col="score", positive_threshold=3)
    assert dm.num_users == 6 and dm.dropped["below_threshold"] > 0
    ids = dm.tensors.item_ids[1:]
    assert ids == sorted(ids, key=int) and ids != sorted(ids)  # integer ids sort numerically


def test_parquet_wrong_dtype_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pl.DataFrame({"user": [1.5, 2.0], "item": ["a", "b"], "ts": [1, 2]}).write_parquet(path)
    with pytest.raises(DataError, match=r"bad.parquet.*'user' row 1.*integer or string id"):
        read_parquet(path)
    pl.DataFrame({"user": ["a"], "item": ["b"], "ts": [True]}).write_parquet(path)
    with pytest.raises(DataError, match=r"bad.parquet.*'ts'"):
        read_parquet(path)


def _bad_inputs(tmp: Path, write_text) -> dict[str, tuple[Path, dict, str]]:
    good = "user,item,ts\na,x,1\nb,y,2\n"
    return {
        "missing path": (tmp / "nope.csv", {}, "nothing there"),
        "empty file": (write_text(tmp / "empty.csv", ""), {}, "empty file"),
        "header only": (write_text(tmp / "header.csv", "user,item,ts\n"), {}, "header only"),
        "missing column": (write_text(tmp / "cols.csv", "user,item,time\na,x,1\n"), {}, "column 'ts'"),
        "rating absent": (write_text(tmp / "rating.csv", good), {"rating_col": "stars"}, "column 'stars'"),
        "bad timestamp": (write_text(tmp / "ts.csv", "user,item,ts\na,x,1\nb,y,soon\n"), {}, r"'ts' line 3.*'soon'"),
        "bad rating": (write_text(tmp / "r.csv", "user,item,ts,r\na,x,1,good\n"), {"rating_col": "r"}, "line 2"),
        "binary junk": (_write_bytes(tmp / "junk.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), {}, "binary"),
        "not utf-8": (_write_bytes(tmp / "latin.csv", "user,item,ts\nJos\xe9,x,1\n".encode("latin-1")), {}, "UTF-8"),
        "too few events": (write_text(tmp / "one.csv", "user,item,ts\na,x,1\n"), {}, "test split"),
    }


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "case",
    ["missing path", "empty file", "header only", "missing column", "rating absent", "bad timestamp", "bad rating",
     "binary junk", "not utf-8", "too few events"],
)
def test_bad_input_raises_data_error_naming_the_file(tmp_path: Path, make_dm, case: str, write_text) -> None:
    path, kwargs, pattern = _bad_inputs(tmp_path, write_text)[case]
    dm = make_dm(format="csv", path=str(path), **kwargs)
    with pytest.raises(DataError, match=pattern) as caught:
        _ = dm.num_items
    message = str(caught.value)
    assert path.name in message and "\n" not in message

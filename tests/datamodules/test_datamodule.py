"""RecDataModule: defaults, argument checks, the CLI signature, sizes before setup, reporting."""

from __future__ import annotations

import time

import pytest
from jsonargparse import ArgumentParser

from datamodules import DataError, RecDataModule, RecTensors


def test_default_synthetic_pipeline_is_fast_and_sized_before_setup(tmp_path) -> None:
    start = time.process_time()
    dm = RecDataModule(cache_dir=None)
    assert dm.num_users == 500 and 250 <= dm.num_items <= 300  # long-tail items may never be drawn
    dm.setup("fit")
    elapsed = time.process_time() - start
    assert isinstance(dm.tensors, RecTensors) and dm.tensors.test.negatives.shape[1] == 100
    assert elapsed < 4.0, f"pipeline + setup took {elapsed:.2f} s of CPU (budget 2 s on an idle machine)"


def test_synthetic_long_tail_and_sequences(make_dm) -> None:
    t = make_dm(min_user_interactions=5, eval_ks=[1, 10]).tensors
    popularity = t.item_popularity[1:].sort(descending=True).values.double()
    top_decile = popularity[: len(popularity) // 10].sum() / popularity.sum()
    assert top_decile > 0.2  # long tail: the top 10 % of items get a large share of the clicks
    lengths = t.train_offsets.diff()
    assert lengths.min() >= 1 and lengths.max() > lengths.min()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("format", "excel"),
        ("split", "random"),
        ("test_fraction", 0),
        ("test_fraction", 2.5),
        ("val_fraction", -0.1),
        ("min_user_interactions", 0),
        ("history_len", 0),
        ("eval_ks", []),
        ("batch_size", 0),
        ("num_workers", -1),
        ("synthetic_items", 20),
    ],
)
def test_bad_arguments_name_the_argument(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^synthetic_events_per_user|^{name}") as caught:
        RecDataModule(**{name: value})
    assert isinstance(caught.value, DataError)


def test_file_formats_need_a_path() -> None:
    with pytest.raises(DataError, match="^path=None"):
        RecDataModule(format="movielens")


def test_signature_is_a_cli_schema() -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(RecDataModule, "data")
    args = parser.parse_args(["--data.format", "movielens", "--data.path", "x", "--data.eval_ks", "[1, 5]",
                              "--data.rating_col", "stars"])
    assert args.data.format == "movielens" and args.data.eval_ks == [1, 5] and args.data.rating_col == "stars"
    help_text = parser.format_help()
    assert "Items in a state" in help_text and "synthetic | movielens" in help_text


def test_setup_reports_once_and_statistics(make_dm, capsys: pytest.CaptureFixture[str]) -> None:
    dm = make_dm(synthetic_users=30, synthetic_items=50, synthetic_events_per_user=8)
    dm.setup("fit")
    dm.setup("validate")
    err = capsys.readouterr().err
    assert err.count("data: simulator: 30 users") == 1
    stats = dm.statistics()
    assert set(stats) == {"users", "items", "train_events", "val_events", "test_events",
                          "val_eval_events", "test_eval_events", "dropped"}
    assert dm.hparams["synthetic_users"] == 30

"""Frozen negatives: stable across constructions and processes, never the user's items, uniform."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datamodules.negatives import sample_unseen
from datamodules.pipeline import PipelineConfig, single_threaded
from datamodules.readers import Source
from datamodules.synthetic import SyntheticConfig
from datamodules.tensors import csr_offsets

REPO = Path(__file__).parents[2]
SMALL = {"synthetic_users": 80, "synthetic_items": 120, "synthetic_events_per_user": 16, "eval_ks": [1, 10, 50]}


def _digest(dm) -> str:
    t = dm.tensors
    return hashlib.sha256(t.val.negatives.long().numpy().tobytes() + t.test.negatives.long().numpy().tobytes()).hexdigest()


def test_stable_across_constructions_and_a_subprocess(make_dm) -> None:
    first, second = make_dm(cache_dir=None, **SMALL), make_dm(cache_dir=None, **SMALL)
    assert _digest(first) == _digest(second)
    # the subprocess runs the same pipeline without importing Lightning (faster to start)
    code = (
        "import hashlib\n"
        "from datamodules.pipeline import PipelineConfig, prepare\n"
        "from datamodules.readers import Source\n"
        "from datamodules.synthetic import SyntheticConfig\n"
        "from datamodules.tensors import build_tensors\n"
        "synthetic = SyntheticConfig(num_users=80, num_items=120, events_per_user=16)\n"
        "config = PipelineConfig(Source('synthetic', None), min_user_interactions=1, num_negatives=50,"
        " synthetic=synthetic)\n"
        "t = build_tensors(prepare(config), 10)\n"
        "print(hashlib.sha256(t.val.negatives.long().numpy().tobytes() + t.test.negatives.long().numpy().tobytes()).hexdigest())\n"
    )
    synthetic = SyntheticConfig(num_users=80, num_items=120, events_per_user=16)
    same = PipelineConfig(Source("synthetic", None), min_user_interactions=1, num_negatives=50, synthetic=synthetic,
                          eval_max_events=100_000)  # the data module's default: these splits are evaluated whole
    assert first.pipeline_config == same
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest(first)
    other_seed = make_dm(cache_dir=None, seed=1, **SMALL)
    assert _digest(other_seed) != _digest(first)


def test_never_an_item_of_the_user_distinct_and_in_range(make_dm) -> None:
    t = make_dm(**SMALL).tensors
    seen = torch.zeros(t.num_users, t.num_items + 1, dtype=torch.bool)
    owners = torch.repeat_interleave(torch.arange(t.num_users), t.seen_offsets.diff())
    seen[owners, t.seen_items] = True
    for split in (t.val, t.test):
        assert split.negatives.shape == (len(split), 50)
        assert not seen[split.user[:, None], split.negatives].any()
        assert split.negatives.min() >= 1 and split.negatives.max() <= t.num_items
        ordered = split.negatives.sort(dim=1).values
        assert (ordered[:, 1:] != ordered[:, :-1]).all()
    assert not torch.equal(t.val.negatives[:, :5], t.test.negatives[: len(t.val), :5])


def test_items_rated_below_the_threshold_are_never_negatives(tmp_path: Path, make_dm) -> None:
    # every user rates item "bad" 1 star; other users make "bad" a positive so it is indexed
    rows = [(f"u{u}", f"i{(u + j) % 30}", 10 * u + j, 5) for u in range(20) for j in range(8)]
    rows += [(f"u{u}", "bad", 10 * u + 9, 1) for u in range(10)] + [(f"u{u}", "bad", 10 * u + 9, 5) for u in
                                                                     range(10, 20)]
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts,rating\n" + "".join(f"{u},{i},{ts},{r}\n" for u, i, ts, r in rows))
    dm = make_dm(format="csv", path=str(path), rating_col="rating", eval_ks=[1, 15])
    t = dm.tensors
    bad = t.item_ids.index("bad")
    low_raters = t.test.user < 10
    assert not (t.test.negatives[low_raters] == bad).any()
    assert (t.test.negatives[~low_raters] == bad).sum() == 0  # positives of u10..u19 are excluded too
    assert (t.test.negatives == bad).sum() == 0


@pytest.mark.parametrize("num_items", [40, 2000])  # few items: random keys; many: rejection sampling
def test_sample_unseen_is_uniform(num_items: int) -> None:
    users = torch.zeros(20_000, dtype=torch.long)
    excluded = torch.arange(1, 11)  # user 0 touched items 1..10
    offsets = csr_offsets(torch.zeros(10, dtype=torch.long), 1)
    k = 4
    with single_threaded():  # as in the pipeline: tiny ops, and threads thrash on a busy machine
        sample = sample_unseen(users, offsets, excluded, num_items, k, torch.Generator().manual_seed(0))
    assert sample.shape == (20_000, k) and sample.min() >= 11 and sample.max() <= num_items
    assert (sample.sort(1).values.diff(dim=1) > 0).all()
    for column in (sample[:, 0], sample.flatten()):
        counts = torch.bincount(column, minlength=num_items + 1)[11:].double()
        expected = column.numel() / (num_items - 10)
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        dof = num_items - 11
        assert chi2 < dof + 5 * (2 * dof) ** 0.5, chi2  # ~5 sigma


def test_sample_unseen_falls_back_when_rejection_comes_out_short() -> None:
    # user 1 has touched 1500 of 2000 items: its rows need far more draws than user 0's
    users = torch.tensor([0, 1] * 500)
    touched = torch.cat([torch.arange(1, 11), torch.arange(1, 1501)])
    offsets = torch.tensor([0, 10, 1510])
    with single_threaded():
        sample = sample_unseen(users, offsets, touched, 2000, 100, torch.Generator().manual_seed(3))
    assert (sample[users == 0] > 10).all() and (sample[users == 1] > 1500).all()
    assert (sample.sort(1).values.diff(dim=1) > 0).all()


@pytest.mark.parametrize("num_items", [30, 400])
def test_the_sparse_sampler_avoids_the_excluded_items_and_is_uniform(num_items: int) -> None:
    from datamodules.negatives import sample_unseen_sparse

    excluded = [torch.tensor([1, 2, 3]), torch.arange(1, num_items - 9), torch.tensor([], dtype=torch.long)]
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor([e.numel() for e in excluded]), 0).tolist()])
    items = torch.cat(excluded)
    users = torch.tensor([0, 1, 2]).repeat(3000)
    k = 10
    first = sample_unseen_sparse(users, offsets, items, num_items, k, torch.Generator().manual_seed(5))
    again = sample_unseen_sparse(users, offsets, items, num_items, k, torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and first.shape == (users.numel(), k)
    assert ((first >= 1) & (first <= num_items)).all()
    for user, out in enumerate(excluded):
        rows = first[users == user]
        assert all(torch.unique(row).numel() == k for row in rows[:200])  # without replacement
        assert not torch.isin(rows, out).any()
        allowed = num_items - out.numel()
        counts = torch.bincount(rows[:, 0], minlength=num_items + 1).float()  # the first column alone is uniform too
        expected = rows.shape[0] / allowed
        chi2 = ((counts[counts > 0] - expected) ** 2 / expected).sum() + (allowed - (counts > 0).sum()) * expected
        assert chi2 < allowed + 6 * (2 * allowed) ** 0.5, (user, float(chi2), allowed)

"""Popularity scorer: counts as scores, ties kept, CTR@k against a brute-force count."""

from __future__ import annotations

import math

import pytest
import torch

from lit_rec.evaluation import FullRankingMetrics, OnePlusKMetrics
from lit_rec.popularity import PopularityScorer, log_popularity_features

# PAD, then items 1..6; items 1 and 3 tie, items 4 and 6 tie.
COUNTS = torch.tensor([0, 5, 2, 5, 1, 9, 1])


def _brute_popularity_ctr(candidates: list[list[int]], counts: list[int], k: int) -> float:
    """CTR@k of the popularity scorer, counted event by event in plain Python."""
    total = 0.0
    for row in candidates:
        positive, negatives = counts[row[0]], [counts[item] for item in row[1 : k + 1]]
        if all(count <= positive for count in negatives):
            total += 1.0 / (1 + negatives.count(positive))
    return total / len(candidates)


def test_scores_are_counts_and_ties_stay_ties() -> None:
    scorer = PopularityScorer(COUNTS)
    scores = scorer(torch.tensor([[1, 3, 2], [4, 6, 5]]))
    assert scores.dtype == torch.float64
    assert scores.tolist() == [[5.0, 5.0, 2.0], [1.0, 1.0, 9.0]]
    all_scores = scorer.score_all(3)
    assert all_scores.shape == (3, 7)
    assert torch.equal(all_scores[1], COUNTS.double())
    assert scorer.num_items == 6


def test_ctr_matches_brute_force_count() -> None:
    # Column 0 the positive, the rest frozen negatives; no candidate is the positive again.
    candidates = torch.tensor(
        [
            [1, 3, 2, 4],  # ties item 3 at k >= 1
            [5, 1, 2, 3],  # most popular: hit
            [2, 5, 4, 6],  # beaten by item 5 at k = 1
            [4, 2, 6, 5],  # beaten by item 2 at k = 1
            [6, 4, 2, 1],  # ties item 4 at k = 1, beaten at k = 2
            [3, 2, 4, 6],  # above all: hit
        ]
    )
    scorer = PopularityScorer(COUNTS)
    ks = (1, 2, 3)
    metric = OnePlusKMetrics(ks=ks, ndcg_at=2)
    metric.update(scorer(candidates))
    result = metric.compute()
    for k in ks:
        expected = _brute_popularity_ctr(candidates.tolist(), COUNTS.tolist(), k)
        assert result[f"ctr@{k}"].item() == pytest.approx(expected, abs=1e-15)
    assert result["ctr@1"].item() == pytest.approx((0.5 + 1 + 0 + 0 + 0.5 + 1) / 6)


def test_score_all_feeds_full_ranking() -> None:
    scorer = PopularityScorer(COUNTS)
    metric = FullRankingMetrics(k=1)
    seen = torch.zeros(2, 7, dtype=torch.bool)
    seen[1, 5] = True  # user 2 has seen item 5, the most popular
    metric.update(scorer.score_all(2), torch.tensor([1, 3]), seen)
    # User 1: item 5 beats item 1. User 2: item 5 masked, item 3 ties item 1: 1/2.
    assert metric.compute()["hr@1_full"].item() == pytest.approx(0.25)


def test_counts_are_a_buffer_rebuilt_from_data_not_checkpointed() -> None:
    scorer = PopularityScorer(COUNTS)
    assert "item_popularity" in dict(scorer.named_buffers())
    # the reference is derived from the train split at setup, so checkpoints need not carry it
    assert "item_popularity" not in scorer.state_dict()
    assert scorer.to("meta").item_popularity.device.type == "meta"
    # The scorer keeps its own copy.
    counts = COUNTS.clone()
    copy = PopularityScorer(counts)
    counts[1] = 100
    assert copy.item_popularity[1].item() == 5


def test_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="PAD"):
        PopularityScorer(torch.tensor([3, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        PopularityScorer(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="negative"):
        PopularityScorer(torch.tensor([0, -1, 2]))


def test_log_popularity_features() -> None:
    features = log_popularity_features(COUNTS)
    assert features.shape == COUNTS.shape
    assert features[0].item() == 0.0
    assert features.max().item() == pytest.approx(1.0)
    assert features.min().item() >= 0.0
    assert features[1].item() == pytest.approx(math.log1p(5) / math.log1p(9))
    assert torch.equal(features[1], features[3])
    assert torch.equal(log_popularity_features(torch.zeros(4, dtype=torch.long)), torch.zeros(4))

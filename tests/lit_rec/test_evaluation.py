"""Hand-computed and brute-force checks of the One-Plus-K and full-ranking metrics."""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch

from lit_rec.evaluation import (
    FullRankingMetrics,
    OnePlusKMetrics,
    auc_per_event,
    ctr_at_k,
    ctr_at_ks,
    mrr_per_event,
    ndcg_per_event,
    seen_mask_from_csr,
)

KS = (1, 10, 20, 50, 100)


def _one_row(positive: float, negatives: list[float]) -> torch.Tensor:
    """A single event's `(1, 1 + K)` score row."""
    return torch.tensor([[positive, *negatives]], dtype=torch.float32)


# ----------------------------------------------------------------- brute force


def _brute_ctr(row: list[float], k: int) -> float:
    """CTR@k of one event straight from the protocol's words."""
    positive, negatives = row[0], row[1 : k + 1]
    if any(n > positive for n in negatives):
        return 0.0
    return 1.0 / (1 + sum(n == positive for n in negatives))


def _brute_auc(row: list[float]) -> float:
    """Pairwise AUC of the positive against all negatives, ties one half."""
    positive, negatives = row[0], row[1:]
    return sum(1.0 if n < positive else 0.5 if n == positive else 0.0 for n in negatives) / len(negatives)


def _brute_rank_metrics(row: list[float], at: int) -> tuple[float, float]:
    """Expected NDCG@at and reciprocal rank, enumerating every order of the positive's tie group."""
    positive, negatives = row[0], row[1:]
    greater = sum(n > positive for n in negatives)
    tied_group = ["pos"] + [f"neg{i}" for i, n in enumerate(negatives) if n == positive]
    ndcg_total, rr_total, orders = 0.0, 0.0, 0
    for order in itertools.permutations(tied_group):
        rank = greater + 1 + order.index("pos")
        ndcg_total += 1.0 / math.log2(rank + 1) if rank <= at else 0.0
        rr_total += 1.0 / rank
        orders += 1
    return ndcg_total / orders, rr_total / orders


def _tied_scores(batch: int, num_negatives: int, levels: int, seed: int) -> torch.Tensor:
    """Integer-valued float scores with many ties."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (batch, 1 + num_negatives), generator=generator).float()


# ------------------------------------------------------------- One-Plus-K cases


def test_constant_scorer_gets_one_over_k_plus_one() -> None:
    metric = OnePlusKMetrics(ks=KS)
    metric.update(torch.full((7, 101), 0.3))
    result = metric.compute()
    for k in KS:
        assert result[f"ctr@{k}"].item() == pytest.approx(1 / (k + 1), abs=1e-15)
    assert result["auc"].item() == 0.5
    # All 101 candidates tied: the positive's rank is uniform on 1..101.
    expected_ndcg = sum(1 / math.log2(r + 1) for r in range(1, 11)) / 101
    expected_mrr = sum(1 / r for r in range(1, 102)) / 101
    assert result["ndcg@10"].item() == pytest.approx(expected_ndcg, abs=1e-14)
    assert result["mrr"].item() == pytest.approx(expected_mrr, abs=1e-14)


def test_perfect_and_worst_scorers() -> None:
    perfect = torch.cat([torch.ones(4, 1), torch.zeros(4, 100)], dim=1)
    worst = torch.cat([torch.zeros(4, 1), torch.ones(4, 100)], dim=1)
    best_metric, worst_metric = OnePlusKMetrics(ks=KS), OnePlusKMetrics(ks=KS)
    best_metric.update(perfect)
    worst_metric.update(worst)
    best, bad = best_metric.compute(), worst_metric.compute()
    for k in KS:
        assert best[f"ctr@{k}"].item() == 1.0
        assert bad[f"ctr@{k}"].item() == 0.0
    assert best["auc"].item() == 1.0 and bad["auc"].item() == 0.0
    assert best["ndcg@10"].item() == 1.0 and bad["ndcg@10"].item() == 0.0
    assert best["mrr"].item() == 1.0 and bad["mrr"].item() == pytest.approx(1 / 101, abs=1e-15)


def test_ties_inside_first_k() -> None:
    negatives = [0.0] * 100
    negatives[2] = negatives[6] = 1.0  # tied with the positive, both among the first 10
    row = _one_row(1.0, negatives)
    assert ctr_at_k(row, 1).item() == 1.0
    assert ctr_at_k(row, 3).item() == pytest.approx(1 / 2)
    assert ctr_at_k(row, 10).item() == pytest.approx(1 / 3)
    assert ctr_at_k(row, 100).item() == pytest.approx(1 / 3)
    assert auc_per_event(row).item() == pytest.approx((98 + 0.5 * 2) / 100)


def test_tie_and_win_beyond_k_do_not_count_at_k() -> None:
    tie_negatives = [0.0] * 100
    tie_negatives[14] = 1.0  # the 15th negative ties
    tie_row = _one_row(1.0, tie_negatives)
    assert ctr_at_ks(tie_row, (10, 20)).tolist() == [[1.0, 0.5]]

    beaten_negatives = [0.0] * 100
    beaten_negatives[11] = 2.0  # the 12th negative scores above the positive
    beaten_row = _one_row(1.0, beaten_negatives)
    assert ctr_at_ks(beaten_row, (1, 10, 20)).tolist() == [[1.0, 1.0, 0.0]]
    # Rank 2 among all 100 negatives.
    assert ndcg_per_event(beaten_row).item() == pytest.approx(1 / math.log2(3))
    assert mrr_per_event(beaten_row).item() == pytest.approx(0.5)


def test_hand_case_rank_metrics_with_ties() -> None:
    # Positive 2: one negative above (3), two tied (2, 2), two below: rank uniform on 2..4.
    row = _one_row(2.0, [3.0, 2.0, 1.0, 2.0, 0.0])
    expected_ndcg = (1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)) / 3
    expected_mrr = (1 / 2 + 1 / 3 + 1 / 4) / 3
    assert ndcg_per_event(row, at=10).item() == pytest.approx(expected_ndcg, abs=1e-15)
    assert ndcg_per_event(row, at=3).item() == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3, abs=1e-15)
    assert mrr_per_event(row).item() == pytest.approx(expected_mrr, abs=1e-15)
    assert auc_per_event(row).item() == pytest.approx((2 + 0.5 * 2) / 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_metrics_match_brute_force_on_tied_scores(seed: int) -> None:
    ks, at = (1, 3, 8), 5
    scores = _tied_scores(batch=40, num_negatives=8, levels=4, seed=seed)
    metric = OnePlusKMetrics(ks=ks, ndcg_at=at)
    metric.update(scores[:25])
    metric.update(scores[25:])
    result = metric.compute()

    rows = scores.tolist()
    for k in ks:
        assert result[f"ctr@{k}"].item() == pytest.approx(sum(_brute_ctr(r, k) for r in rows) / len(rows), abs=1e-14)
    assert result["auc"].item() == pytest.approx(sum(_brute_auc(r) for r in rows) / len(rows), abs=1e-14)
    brute = [_brute_rank_metrics(r, at) for r in rows]
    assert result[f"ndcg@{at}"].item() == pytest.approx(sum(n for n, _ in brute) / len(rows), abs=1e-14)
    assert result["mrr"].item() == pytest.approx(sum(m for _, m in brute) / len(rows), abs=1e-14)
    assert set(result) == {"ctr@1", "ctr@3", "ctr@8", "auc", "ndcg@5", "mrr"}
    assert all(value.ndim == 0 for value in result.values())


def test_per_event_functions_match_metric() -> None:
    scores = _tied_scores(batch=30, num_negatives=100, levels=6, seed=3)
    metric = OnePlusKMetrics(ks=KS)
    metric.update(scores)
    result = metric.compute()
    for k in KS:
        assert result[f"ctr@{k}"] == ctr_at_k(scores, k).mean()
    assert torch.allclose(result["auc"], auc_per_event(scores).mean(), rtol=1e-14, atol=0)
    assert torch.allclose(result["ndcg@10"], ndcg_per_event(scores).mean(), rtol=1e-14, atol=0)
    assert torch.allclose(result["mrr"], mrr_per_event(scores).mean(), rtol=1e-14, atol=0)


def test_forward_returns_batch_value_and_accumulates() -> None:
    scores = _tied_scores(batch=20, num_negatives=10, levels=3, seed=4)
    metric = OnePlusKMetrics(ks=(1, 10))
    first = metric(scores[:10])
    assert first["ctr@10"] == ctr_at_k(scores[:10], 10).mean()
    metric(scores[10:])
    assert torch.allclose(metric.compute()["ctr@10"], ctr_at_k(scores, 10).mean(), rtol=1e-14, atol=0)


def test_non_finite_scores_raise_with_row_count() -> None:
    scores = torch.zeros(5, 11)
    scores[1, 0] = float("nan")
    scores[3, 7] = float("inf")
    metric = OnePlusKMetrics(ks=(1, 10))
    with pytest.raises(ValueError, match="2 of 5 rows"):
        metric.update(scores)
    assert metric.events.item() == 0
    with pytest.raises(ValueError, match="1 of 1 rows"):
        ctr_at_k(torch.tensor([[float("nan"), 0.0, 0.0]]), 1)


def test_shape_is_checked() -> None:
    metric = OnePlusKMetrics(ks=(1, 10))
    with pytest.raises(ValueError, match=r"K >= 10"):
        metric.update(torch.zeros(3, 10))  # only 9 negatives
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(11))
    with pytest.raises(ValueError, match="ks"):
        OnePlusKMetrics(ks=(0, 10))


# --------------------------------------------------------------- DDP exactness


def test_disjoint_halves_merged_equal_single_object_exactly() -> None:
    scores = _tied_scores(batch=37, num_negatives=100, levels=5, seed=5)
    first, second = scores[:20], scores[20:]

    rank0, rank1, single = OnePlusKMetrics(ks=KS), OnePlusKMetrics(ks=KS), OnePlusKMetrics(ks=KS)
    rank0.update(first)
    rank1.update(second)
    single.update(first)
    single.update(second)
    # What a DDP sync does: sum every state over ranks, then compute once.
    by_hand = OnePlusKMetrics(ks=KS)
    by_hand.update(scores[:0])  # an empty update, so the metric counts as updated
    for name in by_hand._defaults:
        setattr(by_hand, name, getattr(rank0, name) + getattr(rank1, name))
    rank0.merge_state(rank1)

    expected = single.compute()
    for merged in (rank0.compute(), by_hand.compute()):
        assert merged.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(merged[key], value), key
    assert rank0.events.item() == 37

    one_batch = OnePlusKMetrics(ks=KS)
    one_batch.update(scores)
    for key, value in one_batch.compute().items():
        assert torch.allclose(expected[key], value, rtol=1e-14, atol=0), key


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One CPU rank: update on its shard, let torchmetrics sync, save the result."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        scores = _tied_scores(batch=23, num_negatives=100, levels=5, seed=6)
        metric = OnePlusKMetrics(ks=KS)
        metric.update(scores[rank::world_size])
        torch.save(metric.compute(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_real_gloo_sync_equals_single_process(tmp_path) -> None:
    world_size = 2
    torch.multiprocessing.spawn(
        _ddp_worker, args=(world_size, str(tmp_path / "pg_init"), str(tmp_path)), nprocs=world_size
    )
    scores = _tied_scores(batch=23, num_negatives=100, levels=5, seed=6)
    single = OnePlusKMetrics(ks=KS)
    for rank in range(world_size):
        single.update(scores[rank::world_size])
    expected = single.compute()
    for rank in range(world_size):
        synced = torch.load(tmp_path / f"rank{rank}.pt")
        for key, value in expected.items():
            assert torch.equal(synced[key], value), (rank, key)


# ------------------------------------------------------------- full ranking


def _brute_full(scores: list[float], positive: int, seen: set[int], k: int) -> tuple[float, float]:
    """Expected HR@k and NDCG@k over every order of the positive's tie group among eligible items."""
    eligible = [i for i in range(1, len(scores)) if i != positive and i not in seen]
    greater = sum(scores[i] > scores[positive] for i in eligible)
    tied = [i for i in eligible if scores[i] == scores[positive]]
    hits, ndcg, orders = 0.0, 0.0, 0
    for order in itertools.permutations([positive, *tied]):
        rank = greater + 1 + order.index(positive)
        hits += rank <= k
        ndcg += 1 / math.log2(rank + 1) if rank <= k else 0.0
        orders += 1
    return hits / orders, ndcg / orders


def test_full_ranking_hand_case() -> None:
    # Items 1..6; PAD scores highest but never counts; items 2 and 5 are seen and beat the positive.
    scores = torch.tensor([[100.0, 5.0, 9.0, 5.0, 1.0, 7.0, 3.0]])
    positive = torch.tensor([1])
    seen = torch.zeros(1, 7, dtype=torch.bool)
    seen[0, [1, 2, 5]] = True  # the positive itself is marked seen: it must still be ranked

    at_1, at_10 = FullRankingMetrics(k=1), FullRankingMetrics(k=10)
    at_1.update(scores, positive, seen)
    at_10.update(scores, positive, seen)
    # Eligible competitors: item 3 ties, items 4 and 6 lie below: rank 1 or 2.
    assert at_1.compute() == {"hr@1_full": pytest.approx(0.5), "ndcg@1_full": pytest.approx(0.5)}
    result = at_10.compute()
    assert result["hr@10_full"].item() == 1.0
    assert result["ndcg@10_full"].item() == pytest.approx((1 + 1 / math.log2(3)) / 2, abs=1e-15)

    unmasked = FullRankingMetrics(k=1)
    unmasked.update(scores, positive, torch.zeros_like(seen))
    assert unmasked.compute()["hr@1_full"].item() == 0.0


def test_full_ranking_matches_brute_force() -> None:
    generator = torch.Generator().manual_seed(7)
    batch, num_items, k = 25, 15, 4
    scores = torch.randint(0, 4, (batch, num_items + 1), generator=generator).float()
    positive = torch.randint(1, num_items + 1, (batch,), generator=generator)
    seen = torch.rand(batch, num_items + 1, generator=generator) < 0.3
    metric = FullRankingMetrics(k=k)
    metric.update(scores[:10], positive[:10], seen[:10])
    metric.update(scores[10:], positive[10:], seen[10:])
    result = metric.compute()

    brute = [
        _brute_full(scores[b].tolist(), int(positive[b]), set(seen[b].nonzero()[:, 0].tolist()), k)
        for b in range(batch)
    ]
    assert result[f"hr@{k}_full"].item() == pytest.approx(sum(h for h, _ in brute) / batch, abs=1e-14)
    assert result[f"ndcg@{k}_full"].item() == pytest.approx(sum(n for _, n in brute) / batch, abs=1e-14)


def test_full_ranking_merge_is_exact_and_validates() -> None:
    generator = torch.Generator().manual_seed(8)
    scores = torch.randint(0, 5, (12, 9), generator=generator).float()
    positive = torch.randint(1, 9, (12,), generator=generator)
    seen = torch.zeros(12, 9, dtype=torch.bool)
    rank0, rank1, single = FullRankingMetrics(), FullRankingMetrics(), FullRankingMetrics()
    rank0.update(scores[:5], positive[:5], seen[:5])
    rank1.update(scores[5:], positive[5:], seen[5:])
    single.update(scores[:5], positive[:5], seen[:5])
    single.update(scores[5:], positive[5:], seen[5:])
    rank0.merge_state(rank1)
    for key, value in single.compute().items():
        assert torch.equal(rank0.compute()[key], value)

    metric = FullRankingMetrics()
    nan_scores = scores.clone()
    nan_scores[2, 3] = float("nan")
    with pytest.raises(ValueError, match="1 of 12 rows"):
        metric.update(nan_scores, positive, seen)
    with pytest.raises(ValueError, match="PAD"):
        metric.update(scores, torch.zeros(12, dtype=torch.long), seen)
    with pytest.raises(ValueError, match="seen_mask"):
        metric.update(scores, positive, seen[:, :5])
    # -inf on items a model masks itself is allowed.
    masked = scores.clone()
    masked[:, 0] = float("-inf")
    metric.update(masked, positive, seen)


def test_seen_mask_from_csr() -> None:
    # User 0: items {2, 5}; user 1: none; user 2: items {1, 3, 4}.
    offsets = torch.tensor([0, 2, 2, 5])
    items = torch.tensor([2, 5, 1, 3, 4])
    users = torch.tensor([2, 1, 0, 2])
    mask = seen_mask_from_csr(users, offsets, items, num_items=6)

    expected = torch.zeros(4, 7, dtype=torch.bool)
    per_user = {0: [2, 5], 1: [], 2: [1, 3, 4]}
    for row, user in enumerate(users.tolist()):
        expected[row, per_user[user]] = True
    assert torch.equal(mask, expected)
    assert seen_mask_from_csr(torch.tensor([1]), offsets, items, num_items=6).sum() == 0

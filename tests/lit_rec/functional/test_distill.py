"""DRL-Rec math on hand numbers: KL, hint, confidence, explore/filter de-duplication."""

from __future__ import annotations

import math

import pytest
import torch

from lit_rec.functional.distill import (
    batch_max_confidence,
    exp_confidence,
    explore_candidates,
    popularity_draws,
    filter_topk_union,
    hint_mse,
    listwise_kl,
    running_mean_update,
    weighted_mean,
)

# p = softmax([0, ln 3]) = [1/4, 3/4], q = softmax([0, 0]) = [1/2, 1/2]
KL_HAND = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)


def test_listwise_kl_on_hand_numbers_and_tau_squared_scaling() -> None:
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    student = torch.zeros(1, 2)
    assert listwise_kl(teacher, student, temperature=1.0).item() == pytest.approx(KL_HAND, abs=1e-6)
    # tau = 2 on Q-values twice as large gives the same distributions, times tau^2 = 4
    assert listwise_kl(2 * teacher, student, temperature=2.0).item() == pytest.approx(4 * KL_HAND, abs=1e-6)
    assert listwise_kl(teacher, teacher.clone(), temperature=3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_listwise_kl_ignores_masked_columns_and_keeps_gradients_finite() -> None:
    teacher = torch.tensor([[0.0, math.log(3.0), 50.0], [1.0, 2.0, 3.0]])
    student = torch.tensor([[0.0, 0.0, -40.0], [0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    kl = listwise_kl(teacher, student, mask=mask)
    assert kl[0].item() == pytest.approx(KL_HAND, abs=1e-6)
    kl.sum().backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[0, 2].item() == 0.0


def test_listwise_kl_does_not_reach_the_teacher() -> None:
    teacher = torch.tensor([[1.0, 2.0]], requires_grad=True)
    student = torch.zeros(1, 2, requires_grad=True)
    listwise_kl(teacher, student).sum().backward()
    assert teacher.grad is None and student.grad is not None


def test_hint_mse_per_instance_and_masked_items() -> None:
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert hint_mse(student, teacher).tolist() == [2.5, 1.0]
    items_s = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 0.0]]])
    items_t = torch.zeros(1, 3, 2)
    mask = torch.tensor([[True, True, False]])
    # (1 + 9) / 2 items; the masked third item is ignored
    assert hint_mse(items_s, items_t, mask).tolist() == [5.0]


def test_batch_max_confidence_on_hand_numbers() -> None:
    delta = torch.tensor([0.0, 1.0, 3.0])
    assert torch.allclose(batch_max_confidence(delta, eps=0.0), torch.tensor([1.0, 2 / 3, 0.0]))
    assert torch.allclose(batch_max_confidence(delta, min_confidence=0.1, eps=0.0), torch.tensor([1.0, 2 / 3, 0.1]))
    # all-zero errors: the teacher is exact everywhere
    assert batch_max_confidence(torch.zeros(2)).tolist() == [1.0, 1.0]


def test_exp_confidence_and_running_sigma2() -> None:
    delta = torch.tensor([0.0, 2.0])
    assert torch.allclose(exp_confidence(delta, 2.0), torch.tensor([1.0, math.exp(-1.0)]))
    assert torch.allclose(exp_confidence(delta, 2.0, min_confidence=0.5), torch.tensor([1.0, 0.5]))
    sigma2 = running_mean_update(torch.tensor(0.0), torch.tensor(4.0), momentum=0.9, count=0)
    assert sigma2.item() == 4.0
    assert running_mean_update(sigma2, torch.tensor(2.0), momentum=0.9, count=1).item() == pytest.approx(3.8)


def test_weighted_mean_weights_before_reduction() -> None:
    values = torch.tensor([1.0, 2.0])
    assert weighted_mean(values, torch.tensor([1.0, 0.5])).item() == 1.0
    assert weighted_mean(values).item() == 1.5


def test_filter_topk_union_deduplicates_by_item_id() -> None:
    candidates = torch.tensor([[5, 7, 5, 9, 3], [1, 2, 3, 4, 6], [1, 2, 3, 4, 6]])
    teacher = torch.tensor([[5.0, 4, 3, 2, 1], [5.0, 4, 3, 2, 1], [5.0, 4, 3, 2, 1]])
    student = torch.tensor([[0.0, 0, 9, 8, 0], [0.0, 0, 0, 8, 9], [9.0, 8, 0, 0, 0]])
    columns, mask = filter_topk_union(candidates, teacher, student, k=2)
    assert columns.tolist() == [[0, 1, 2, 3], [0, 1, 4, 3], [0, 1, 0, 1]]
    # row 0: item 5 appears in column 0 (teacher) and column 2 (student): kept once
    assert mask.tolist() == [[True, True, False, True], [True, True, True, True], [True, True, False, False]]
    assert mask.sum(1).tolist() == [3, 4, 2]


def test_explore_candidates_layout_and_sources() -> None:
    logged = torch.tensor([[4, 2], [1, 3]])
    popularity = torch.tensor([0, 0, 0, 5, 0, 0])  # only item 3 is popular; 5 items
    g = torch.Generator().manual_seed(0)
    cands = explore_candidates(logged, 12, popularity, g, popularity_fraction=0.5)
    assert cands.shape == (2, 12)
    assert torch.equal(cands[:, :2], logged)
    assert (cands[:, 2:7] == 3).all()  # 5 popularity samples
    assert ((cands[:, 7:] >= 1) & (cands[:, 7:] <= 5)).all()  # 5 uniform samples, never PAD
    again = explore_candidates(logged, 12, popularity, torch.Generator().manual_seed(0), popularity_fraction=0.5)
    assert torch.equal(cands, again)


@pytest.mark.parametrize("counts", [torch.tensor([0, 6, 0, 3, 1]), torch.tensor([0.0, 0.6, 0.0, 0.3, 0.1])], ids=["counts", "weights"])
def test_popularity_draws_follow_the_counts_and_never_draw_an_unseen_item(counts) -> None:
    draws = popularity_draws(counts, 20000, torch.Generator().manual_seed(0))
    share = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert share[0] == 0 and share[2] == 0  # PAD and an item never seen
    assert torch.allclose(share, counts.float() / counts.float().sum(), atol=0.015)

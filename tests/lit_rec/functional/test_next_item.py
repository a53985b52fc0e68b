"""Next-item training on windows on hand numbers: targets, the full and the sampled (logQ) softmax, greedy hits."""

from __future__ import annotations

import math

import pytest
import torch

from lit_rec.functional.next_item import (
    TrainingSoftmax,
    cross_entropy,
    full_catalogue,
    greedy_hits,
    masked_mean,
    random_rivals,
    sampled_catalogue,
    score_columns,
    window_targets,
)


def test_window_targets_are_the_next_items_and_the_first_item_is_learned_from_the_empty_prefix() -> None:
    history = torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8]])
    item = torch.tensor([9, 2])
    targets, mask = window_targets(history, item)
    assert targets.tolist() == [[0, 3, 4, 9], [6, 7, 8, 2]]
    # row 0 is a user's first window: its first item 3 is predicted from the empty prefix (a cold user's state)
    assert mask.tolist() == [[False, True, True, True], [True, True, True, True]]
    with pytest.raises(AssertionError, match="history"):
        window_targets(history, item[:1])


def test_full_catalogue_cross_entropy_never_lets_pad_compete() -> None:
    # D = 1: item i scores its vector; PAD's row would score highest, but PAD has no column
    item_table = torch.tensor([[50.0], [1.0], [2.0], [0.0]])
    columns = full_catalogue(torch.ones(1, 1, 1), item_table, torch.tensor([[2]]))
    assert columns.scores.tolist() == [[[1.0, 2.0, 0.0]]]  # column j is item j + 1
    assert columns.target.tolist() == [[1]]
    ce = cross_entropy(columns)
    expected = -(2.0 - math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.0)))
    assert ce.shape == (1, 1) and ce.item() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(columns.masked_scores(), columns.scores) and torch.equal(columns.logits(), columns.scores)


def _sampled_case():
    """D = 1: item i's vector is (i,), the query is (1,): item i scores i. Logged item 2, negatives 1, 3 and 2 (an accidental hit)."""
    item_table = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    query = torch.tensor([[[1.0]]])
    targets = torch.tensor([[2]])
    negatives = torch.tensor([1, 3, 2])
    log_q = torch.log(torch.tensor([1e-12, 0.5, 0.3, 0.2]))
    return query, item_table, targets, negatives, log_q


def test_sampled_softmax_subtracts_log_q_and_excludes_accidental_hits() -> None:
    query, item_table, targets, negatives, log_q = _sampled_case()
    columns = sampled_catalogue(query, item_table, targets, negatives, log_q)
    assert columns.scores.tolist() == [[[2.0, 1.0, 3.0, 2.0]]]  # the logged item first, then the negatives
    assert columns.target.tolist() == [[0]]
    assert columns.valid.tolist() == [[[True, True, True, False]]]  # the negative equal to the logged item is out
    # CE over {logged 2 - log 0.3, item 1: 1 - log 0.5, item 3: 3 - log 0.2}
    logits = [2.0 - math.log(0.3), 1.0 - math.log(0.5), 3.0 - math.log(0.2)]
    expected = -(logits[0] - math.log(sum(math.exp(x) for x in logits)))
    assert cross_entropy(columns).item() == pytest.approx(expected, rel=1e-6)
    # without the correction (log_q = 0) it is the plain sampled softmax
    uncorrected = sampled_catalogue(query, item_table, targets, negatives, torch.zeros(4))
    assert cross_entropy(uncorrected).item() == pytest.approx(-(2.0 - math.log(math.exp(2.0) + math.exp(1.0) + math.exp(3.0))), rel=1e-6)


def test_score_columns_scores_another_network_on_the_same_columns() -> None:
    query, item_table, targets, negatives, log_q = _sampled_case()
    columns = sampled_catalogue(query, item_table, targets, negatives, log_q)
    other_table = 2 * item_table
    assert torch.equal(score_columns(query, other_table, targets, columns), 2 * columns.scores)
    full = full_catalogue(query, item_table, targets)
    assert torch.equal(score_columns(query, other_table, targets, full), 2 * full.scores)


def test_masked_mean_and_greedy_hits() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0]])
    assert masked_mean(values, torch.tensor([[False, True, True]])).item() == pytest.approx(2.5)
    assert masked_mean(values, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0
    scores = torch.tensor([[[0.0, 3.0, 1.0, 2.0], [0.0, 1.0, 2.0, 0.5]]])
    target = torch.tensor([[1, 1]])
    rivals = torch.tensor([[[2, 3, 1], [3, 1, 2]]])  # the logged column among the rivals is ignored
    assert greedy_hits(scores, target, rivals).tolist() == [[True, False]]


def test_random_rivals_draw_every_column() -> None:
    columns = full_catalogue(torch.zeros(2, 3, 4), torch.zeros(6, 4), torch.ones(2, 3, dtype=torch.long))
    rivals = random_rivals(columns, 200, torch.Generator().manual_seed(0))
    assert rivals.shape == (2, 3, 200) and rivals.min() == 0 and rivals.max() == 4  # 5 items: columns 0..4


def test_training_softmax_samples_by_smoothed_popularity_with_its_log_q() -> None:
    with pytest.raises(ValueError, match="softmax must be one of"):
        TrainingSoftmax("nope")
    with pytest.raises(ValueError, match="sampled_negatives"):
        TrainingSoftmax("sampled", 0)
    softmax = TrainingSoftmax("sampled", sampled_negatives=6)
    softmax.fit(torch.tensor([5, 0, 3, 1]))  # PAD's count is never drawn
    assert softmax.sampling_probability.tolist() == pytest.approx([0.0, 1 / 7, 4 / 7, 2 / 7])
    query = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    table = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[1, 2, 3], [3, 2, 1]])
    columns = softmax.columns(query, table, targets, torch.Generator().manual_seed(2))
    assert columns.scores.shape == (2, 3, 7) and columns.negatives.shape == (6,) and columns.negatives.min() >= 1
    expected_log_q = torch.log(softmax.sampling_probability * 6)
    assert torch.allclose(columns.log_q[..., 1:], expected_log_q[columns.negatives].expand(2, 3, 6))
    assert torch.allclose(columns.log_q[..., 0], expected_log_q[targets])
    full = TrainingSoftmax().columns(query, table, targets, torch.Generator())
    assert torch.allclose(full.scores, query @ table[1:].T) and torch.equal(full.target, targets - 1)


def test_a_padded_window_has_a_finite_loss_and_gradient() -> None:
    # two PADs: position 0's target is PAD; it is masked out and adds neither to the loss nor to the gradient
    # (position 1, the empty prefix before the first item 3, is trained)
    history, item = torch.tensor([[0, 0, 3, 4]]), torch.tensor([5])
    targets, mask = window_targets(history, item)
    query = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    table = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    per_position = cross_entropy(full_catalogue(query, table, targets))
    loss = masked_mean(per_position, mask)
    assert loss.item() == pytest.approx(per_position[0, 1:].mean().item())
    loss.backward()
    assert torch.isfinite(query.grad).all() and torch.equal(query.grad[0, :1], torch.zeros(1, 3))
    # an infinite value outside the mask is selected out, not multiplied by 0 into a NaN
    values = torch.tensor([float("inf"), 1.0, 3.0], requires_grad=True)
    masked = masked_mean(values, torch.tensor([False, True, True]))
    masked.backward()
    assert masked.item() == 2.0 and values.grad.tolist() == [0.0, 0.5, 0.5]

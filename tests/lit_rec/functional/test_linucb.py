"""LinUCB's update rule and scores on hand numbers."""

import torch

from lit_rec.functional.linucb import linucb_features, sherman_morrison_update, ucb_scores


def test_batched_sherman_morrison_equals_inverse_of_updated_matrix():
    torch.manual_seed(0)
    a = torch.eye(4, dtype=torch.float64) * 2.0
    x = torch.randn(5, 4, dtype=torch.float64)
    updated = sherman_morrison_update(torch.linalg.inv(a), x)
    assert torch.allclose(updated, torch.linalg.inv(a + x.T @ x), atol=1e-12)


def test_single_rank_one_update_matches_sherman_morrison_formula():
    a_inv = torch.eye(2, dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    # (I + x x^T)^-1 = I - x x^T / (1 + |x|^2) = I - x x^T / 6
    expected = torch.eye(2, dtype=torch.float64) - x.T @ x / 6
    assert torch.allclose(sherman_morrison_update(a_inv, x), expected)


def test_ucb_adds_exploration_width_only_when_alpha_positive():
    features = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    theta = torch.tensor([0.5, 0.1], dtype=torch.float64)
    a_inv = torch.eye(2, dtype=torch.float64)
    assert torch.allclose(ucb_scores(features, theta, a_inv, 0.0), torch.tensor([[0.5, 0.2]], dtype=torch.float64))
    # widths are |x|: 1 and 2
    assert torch.allclose(ucb_scores(features, theta, a_inv, 1.0), torch.tensor([[1.5, 2.2]], dtype=torch.float64))


def test_features_layout():
    state = torch.tensor([[1.0, 2.0]])
    items = torch.tensor([[[3.0, 4.0]]])
    bias = torch.tensor([[0.5]])
    assert linucb_features(state, items, bias).tolist() == [[[3.0, 8.0, 3.0, 4.0, 0.5, 1.0]]]

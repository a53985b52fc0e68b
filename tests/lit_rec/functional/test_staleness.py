"""Staleness weights and the stale-version policies on hand numbers."""

import pytest
import torch

from lit_rec.functional.staleness import (
    constant_weight,
    fedbuff_weight,
    hinge_weight,
    polynomial_weight,
    resolve_stale_versions,
    staleness_weight,
)

DELTA = torch.tensor([0, 3, 8])


def test_constant_weight_is_one():
    assert torch.equal(constant_weight(DELTA), torch.ones(3))


def test_polynomial_weight_is_one_plus_delta_to_minus_a():
    # (1+0)^-0.5 = 1, (1+3)^-0.5 = 1/2, (1+8)^-0.5 = 1/3
    assert torch.allclose(polynomial_weight(DELTA, 0.5), torch.tensor([1.0, 0.5, 1 / 3]))
    assert torch.allclose(polynomial_weight(DELTA, 1.0), torch.tensor([1.0, 0.25, 1 / 9]))


def test_hinge_weight_is_flat_up_to_b_then_decays():
    delta = torch.tensor([2, 4, 6, 10])
    # b = 4: 1, 1, then 1/(0.5*(6-4)+1) = 1/2 and 1/(0.5*(10-4)+1) = 1/4
    assert torch.allclose(hinge_weight(delta, 0.5, 4.0), torch.tensor([1.0, 1.0, 0.5, 0.25]))


def test_fedbuff_weight_is_inverse_square_root():
    assert torch.allclose(fedbuff_weight(torch.tensor([0, 3, 15])), torch.tensor([1.0, 0.5, 0.25]))


def test_dispatch_by_name_matches_the_functions_and_rejects_unknown_names():
    assert torch.allclose(staleness_weight(DELTA, "polynomial", a=0.5), polynomial_weight(DELTA, 0.5))
    assert torch.allclose(staleness_weight(DELTA, "hinge", a=0.5, b=4.0), hinge_weight(DELTA, 0.5, 4.0))
    assert torch.allclose(staleness_weight(DELTA, "fedbuff"), fedbuff_weight(DELTA))
    assert torch.equal(staleness_weight(DELTA, "constant"), torch.ones(3))
    with pytest.raises(ValueError, match="weighting"):
        staleness_weight(DELTA, "linear")


def test_stale_policies_drop_clamp_or_refresh_versions_that_left_the_buffer():
    base = torch.tensor([10, 6, 5, 0])  # latest 10, max staleness 4: versions 6..10 are stored
    version, keep = resolve_stale_versions(base, 10, 4, "drop")
    assert version.tolist() == [10, 6, 5, 0] and keep.tolist() == [True, True, False, False]
    version, keep = resolve_stale_versions(base, 10, 4, "clamp")
    assert version.tolist() == [10, 6, 6, 6] and keep.all()
    version, keep = resolve_stale_versions(base, 10, 4, "refresh")
    assert version.tolist() == [10, 6, 10, 10] and keep.all()
    with pytest.raises(ValueError, match="stale_policy"):
        resolve_stale_versions(base, 10, 4, "ignore")


def test_early_versions_are_all_stored():
    version, keep = resolve_stale_versions(torch.tensor([0, 1]), 2, 4, "drop")
    assert version.tolist() == [0, 1] and keep.all()


def test_staleness_weighted_mean_and_lr_scale_on_hand_numbers():
    from lit_rec.functional.staleness import staleness_weighted_mean, staleness_weighted_sums

    rows = torch.tensor([[1.0, 2.0], [4.0, 0.0], [0.0, -2.0]])
    weights = torch.tensor([1.0, 0.5, 0.25])
    shares = torch.tensor([2.0, 4.0, 4.0])  # events each update averages
    weighted_sum, weight_total, share_total = staleness_weighted_sums(rows, weights, shares)
    # s n = (2, 2, 1): Σ s n g = 2 (1, 2) + 2 (4, 0) + 1 (0, -2) = (10, 2)
    assert torch.equal(weighted_sum, torch.tensor([10.0, 2.0]))
    assert float(weight_total) == 5.0 and float(share_total) == 10.0
    mean, lr_scale = staleness_weighted_mean(weighted_sum, float(weight_total), float(share_total))
    assert torch.equal(mean, torch.tensor([2.0, 0.4])) and lr_scale == 0.5

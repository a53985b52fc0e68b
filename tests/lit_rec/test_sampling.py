"""Training-time candidates never repeat the logged positive among the negatives."""

import torch

from lit_rec.sampling import training_candidates


def test_positive_first_and_never_among_negatives():
    g = torch.Generator().manual_seed(0)
    positive = torch.randint(1, 6, (1000,))
    candidates = training_candidates(positive, 8, 5, g)
    assert candidates.shape == (1000, 9)
    assert torch.equal(candidates[:, 0], positive)
    assert not (candidates[:, 1:] == positive[:, None]).any()
    assert candidates.min() >= 1 and candidates.max() <= 5
    # every other item is drawn
    assert set(candidates[:, 1:].unique().tolist()) == {1, 2, 3, 4, 5}

"""LinUCB: a shared-parameter contextual bandit over low-rank state and item features."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_rec.distributed import all_gather_rows
from lit_rec.functional.linucb import linucb_features, sherman_morrison_update, ucb_scores
from lit_rec.modules.statistics import StatisticsModule
from lit_rec.sampling import SeededGenerator, training_candidates


def item_factors_from_interactions(user: Tensor, item: Tensor, num_users: int, num_items: int, rank: int, seed: int) -> Tensor:
    """Item factors `(num_items+1, rank)` from a truncated SVD of the binary train matrix (row 0 = PAD = 0)."""
    values = torch.ones(user.numel())
    matrix = torch.sparse_coo_tensor(torch.stack([user, item]), values, (num_users, num_items + 1), check_invariants=True).coalesce()
    matrix = torch.sparse_coo_tensor(matrix.indices(), torch.ones_like(matrix.values()), matrix.shape, check_invariants=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(matrix, q=min(rank, num_items - 1), niter=6)
    factors = v * s.sqrt()
    factors = factors / factors.norm(dim=1, keepdim=True).clamp_min(1e-8)
    factors[0] = 0
    if factors.shape[1] < rank:
        factors = torch.nn.functional.pad(factors, (0, rank - factors.shape[1]))
    return factors


class LinUCB(StatisticsModule):
    """Shared-parameter LinUCB (Li et al. 2010) choosing one of the logged item and random items.

    Features: item factors from a truncated SVD of the train interaction matrix, the state as the
    mean factor of the last `context_len` items of the history, their product, and the item's log-popularity. Each training step
    the bandit picks the arm with the highest upper confidence bound, observes reward 1 if it is
    the logged item, and updates its statistics with the chosen arms only (bandit feedback).
    Evaluation is greedy (the mean, no exploration bonus).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        ridge: float = 1.0,
        rank: int = 16,
        context_len: int = 10,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """Settings (each a config key).

        Args:
            alpha: width of the exploration bonus during training.
            ridge: ridge regulariser lambda (A starts at lambda * I).
            rank: dimension of the SVD item factors.
            context_len: most recent items of the history whose mean factor is the state (at most history_len);
                the whole 50-item history of the MovieLens configs diluted it (BENCHMARKS.md, Learning).
            seed: seed of the SVD and of the training-time candidate sampler.
        """
        super().__init__(**kwargs)
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        self.context_len = context_len
        self.alpha = alpha
        self.rank = rank
        self.seed = seed
        self.rng = SeededGenerator(seed)
        dim = 2 * rank + 2
        self.register_buffer("a_inv", torch.eye(dim, dtype=torch.float64) / ridge)
        self.register_buffer("b", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("item_factors", torch.zeros(self.num_items + 1, rank))
        self.register_buffer("item_bias", torch.zeros(self.num_items + 1))

    def setup(self, stage: str) -> None:
        """Learns item features from the train split (deterministic, so every rank agrees)."""
        super().setup(stage)
        if stage != "fit" or self.item_factors.abs().sum() > 0:
            return
        train = self.tensors.train
        factors = item_factors_from_interactions(train.user, train.item, self.num_users, self.num_items, self.rank, self.seed)
        pop = self.tensors.item_popularity.float()
        self.item_factors.copy_(factors)
        self.item_bias.copy_(torch.log1p(pop) / torch.log1p(pop.max()))

    @property
    def theta(self) -> Tensor:
        """Ridge estimate `A^-1 b`."""
        return self.a_inv @ self.b

    def _state(self, history: Tensor) -> Tensor:
        history = history[:, -self.context_len :]
        mask = (history > 0).unsqueeze(-1).float()
        return (self.item_factors[history] * mask).sum(1) / mask.sum(1).clamp_min(1)

    def _features(self, history: Tensor, candidates: Tensor) -> Tensor:
        state = self._state(history)
        return linucb_features(state, self.item_factors[candidates], self.item_bias[candidates]).double()

    def _state_weights(self, history: Tensor) -> tuple[Tensor, Tensor]:
        """theta·x factorised as `item_factor · w(state) + bias_weight * bias + const`."""
        theta, r = self.theta.float(), self.rank
        weights = self._state(history) * theta[:r] + theta[r : 2 * r]
        return weights, theta[2 * r :]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """For every event of the windows, chooses by UCB among the logged item and random items; updates with the chosen arm's reward."""
        history, item = self.window_events(batch)
        candidates = training_candidates(item, self.train_negatives, self.num_items, self.rng.generator)
        features = self._features(history, candidates)
        choice = ucb_scores(features, self.theta, self.a_inv, self.alpha).argmax(dim=1)
        reward = (choice == 0).double()
        chosen = features[torch.arange(features.shape[0], device=self.device), choice]
        # every rank applies the same global update: rank-ordered concatenation of all shards
        chosen, reward_all = all_gather_rows(self, chosen), all_gather_rows(self, reward)
        self.a_inv.copy_(sherman_morrison_update(self.a_inv, chosen))
        self.b.add_(chosen.T @ reward_all)
        self.log_train_ctr(reward, item.numel())
        self.advance_step()

    def score_candidates(self, batch: dict[str, Tensor], candidates: Tensor) -> Tensor:
        """Greedy scores `theta·x` of the candidates `(B, C)`."""
        weights, (w_bias, const) = self._state_weights(batch["history"])
        scores = torch.einsum("bcr,br->bc", self.item_factors[candidates], weights)
        return scores + w_bias * self.item_bias[candidates] + const

    def score_all_items(self, batch: dict[str, Tensor]) -> Tensor:
        """Greedy scores of every item `(B, num_items+1)` as one matrix product."""
        weights, (w_bias, const) = self._state_weights(batch["history"])
        return weights @ self.item_factors.T + w_bias * self.item_bias + const

    def score_candidates_and_all(self, batch: dict[str, Tensor], candidates: Tensor) -> tuple[Tensor, Tensor]:
        """Greedy scores of the candidates `(B, C)` and of every item `(B, num_items+1)`, the state weights computed once."""
        weights, (w_bias, const) = self._state_weights(batch["history"])
        scores = torch.einsum("bcr,br->bc", self.item_factors[candidates], weights) + w_bias * self.item_bias[candidates] + const
        return scores, weights @ self.item_factors.T + w_bias * self.item_bias + const

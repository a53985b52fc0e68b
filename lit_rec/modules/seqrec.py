"""SeqRec: the supervised sequential reference (SASRec: every position, full-catalogue softmax) on the agents' backbone."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lit_rec.functional.next_item import TrainingSoftmax, cross_entropy, window_targets
from lit_rec.modules.base import RecModule
from lit_rec.networks import EncoderConfig, QHead, QNetwork
from lit_rec.sampling import SeededGenerator


class SeqRec(RecModule):
    """Next-item cross-entropy at every position of each training window, over the whole catalogue (SASRec).

    The network is the RL agents' `QNetwork` (SeqEncoder + bilinear head), so this is the
    non-RL reference for the same architecture: what an RL method must beat to be worth its cost.
    """

    def __init__(
        self,
        encoder: EncoderConfig = EncoderConfig(),
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        softmax: Literal["full", "sampled"] = "full",
        sampled_negatives: int = 1024,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """Settings (each a config key).

        Args:
            encoder: the SASRec encoder's shape (`lit_rec.networks.EncoderConfig`).
            lr: Adam learning rate.
            weight_decay: Adam L2 penalty.
            softmax: `full` (every item, one matrix product) or `sampled` (logQ-corrected, for huge catalogues).
            sampled_negatives: items per batch of the sampled softmax.
            seed: seed of the network's initialisation and of the samplers.
        """
        super().__init__(**kwargs)
        self.save_hyperparameters(logger=False)  # the run config reaches the loggers once, nested (LogConfigCallback)
        encoder = EncoderConfig.of(encoder)
        self.lr = lr
        self.weight_decay = weight_decay
        self.training_softmax = TrainingSoftmax(softmax, sampled_negatives)
        self.rng = SeededGenerator(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = QNetwork(encoder.build(self.num_items, self.history_len), QHead(encoder.dim))

    def setup(self, stage: str) -> None:
        """Fits the sampled softmax's distribution to the train items."""
        super().setup(stage)
        self.training_softmax.fit(self.tensors.item_popularity)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of the logged next item at every position of the windows."""
        targets, mask = window_targets(batch["history"], batch["item"])
        encoder = self.network.encoder
        query = self.network.head.query(encoder.sequence(batch["history"])[mask])  # the states that hold an item (P, D)
        columns = self.training_softmax.columns(query, encoder.all_item_vectors(), targets[mask], self.rng.generator)
        loss = cross_entropy(columns).mean()
        self.log_step("train/loss", loss, prog_bar=True)
        self.log_window_ctr(columns, self.rng.generator)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the network."""
        return torch.optim.Adam(self.network.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def score_candidates(self, batch: dict[str, Tensor], candidates: Tensor) -> Tensor:
        """Network scores `(B, C)` of the candidates."""
        return self.network.score(batch["history"], candidates)

    def score_all_items(self, batch: dict[str, Tensor]) -> Tensor:
        """Scores of every item id `(B, num_items + 1)` as one matrix product."""
        encoder = self.network.encoder
        return self.network.head.score_all(encoder(batch["history"]), self.item_vectors_of(encoder))

    def score_candidates_and_all(self, batch: dict[str, Tensor], candidates: Tensor) -> tuple[Tensor, Tensor]:
        """Scores of the candidates `(B, C)` and of every item `(B, num_items + 1)`, the states encoded once."""
        return self.scores_from_all_items(batch, candidates)

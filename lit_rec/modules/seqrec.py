"""SeqRec: the supervised sequential baseline (next-item sampled softmax) on the agents' encoder."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_rec.modules.base import RecModule
from lit_rec.networks import QHead, QNetwork, SeqEncoder
from lit_rec.sampling import SeededGenerator, training_candidates


class SeqRec(RecModule):
    """Predicts the logged next item among it and `train_negatives` uniform random items (sampled softmax).

    The network is the RL agents' `QNetwork` (SeqEncoder + bilinear head), so this is the
    non-RL reference for the same architecture. `train/ctr` is the hit rate of the argmax
    among the training candidates.
    """


    def __init__(
        self,
        dim: int = 64,
        num_layers: int = 1,
        num_heads: int = 2,
        hint_dim: int = 32,
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        train_negatives: int = 50,
        seed: int = 0,
        history_len: int = 10,
        **kwargs: Any,
    ) -> None:
        """Args:
        dim: width of the encoder (embeddings, Transformer, GRU).
        num_layers: causal Transformer blocks.
        num_heads: attention heads per block.
        hint_dim: width of the state and item vectors.
        dropout: dropout rate during training.
        lr: Adam learning rate.
        weight_decay: Adam L2 penalty.
        train_negatives: uniform random items beside the logged one in each softmax.
        seed: seed of the network's initialisation and of the negative sampler.
        history_len: longest history the encoder accepts (the data's `history_len` or more).
        """
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.lr = lr
        self.weight_decay = weight_decay
        self.train_negatives = train_negatives
        self.rng = SeededGenerator(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = SeqEncoder(self.num_items, dim, history_len, num_layers, num_heads, hint_dim, dropout)
            self.network = QNetwork(encoder, QHead(hint_dim))

    def setup(self, stage: str) -> None:
        """Checks that the data's states fit the encoder."""
        super().setup(stage)
        data_len, model_len = self.tensors.history_len, self.network.encoder.history_len
        if data_len > model_len:
            raise ValueError(f"data history_len={data_len} exceeds SeqRec history_len={model_len}: set --model.init_args.history_len={data_len}")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of the logged item (column 0) against the sampled negatives."""
        candidates = training_candidates(batch["item"], self.train_negatives, self.num_items, self.rng.generator)
        logits = self.network.score(batch["history"], candidates)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, target)
        self.log_step("train/loss", loss, prog_bar=True)
        self.log_train_ctr((logits.argmax(dim=1) == 0).float(), batch["item"].numel())
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

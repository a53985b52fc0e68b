"""Networks shared by every neural lit_rec agent: the sequence encoder and its Q, actor and critic heads.

Shapes: `history (B, L)` item ids, left-padded with PAD = 0, most recent last (L <= history_len);
`candidates (B, C)` item ids; `state` (the hint DRL-Rec distils) `(B, D)`, or `(B, L, D)` for every
prefix of a window, with D = `dim`. Every module here is TorchScript-compatible, so `lit_rec.export`
can write a self-contained artefact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ActorCritic", "ActorHead", "CriticHead", "EncoderConfig", "QHead", "QNetwork", "SeqEncoder", "count_parameters"]

def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _check_items(name: str, items: Tensor, batch: int) -> None:
    """Asserts `items` is a `(batch, C)` integer id matrix."""
    assert items.dim() == 2, f"{name} must be (B, C) item ids, got {items.dim()} dims with shape {items.shape}"
    assert items.shape[0] == batch, f"{name} has {items.shape[0]} rows but history has {batch}"
    assert not items.is_floating_point(), f"{name} must hold integer item ids, got {items.dtype}"


class CausalBlock(nn.Module):
    """Pre-norm Transformer block: masked multi-head self-attention, then a 2x MLP."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} must be divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim), nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """`x (B, L, D)`, `allowed (B, 1, L, L)` bool (query row attends to key column) -> `(B, L, D)`."""
        b, l, d = x.shape
        qkv = self.qkv(self.norm_attn(x)).view(b, l, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, l, d)))
        return x + self.mlp(self.norm_mlp(x))


@dataclass(frozen=True)
class EncoderConfig:
    """The shape of a `SeqEncoder`: one nested argument of every neural method (`--model.init_args.encoder.dim=32`).

    Args:
        dim: width of the item embeddings, the Transformer and the state (the teacher/student knob).
        num_layers: causal Transformer blocks.
        num_heads: attention heads per block (must divide dim).
        dropout: dropout of embeddings, attention and MLPs during training.
        item_init_std: standard deviation of the item embeddings at initialisation.
    """

    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    item_init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.dim < 1 or self.num_layers < 0 or self.num_heads < 1 or self.dim % self.num_heads or not 0 <= self.dropout < 1:
            raise ValueError(f"encoder needs dim >= 1 divisible by num_heads >= 1, num_layers >= 0 and 0 <= dropout < 1, got {self}")

    @classmethod
    def of(cls, value: EncoderConfig | Mapping[str, Any]) -> EncoderConfig:
        """The config itself, or one from its fields (what a checkpoint written by the CLI holds in its hyper-parameters)."""
        return value if isinstance(value, cls) else cls(**value)

    def build(self, num_items: int, history_len: int) -> SeqEncoder:
        """A `SeqEncoder` of this shape over items 1..`num_items` and states of up to `history_len` items."""
        return SeqEncoder(num_items, self.dim, history_len, self.num_layers, self.num_heads, self.dropout, self.item_init_std)


class SeqEncoder(nn.Module):
    """SASRec (Kang and McAuley 2018): item embedding + learned positions -> causal Transformer blocks -> LayerNorm.

    `sequence(history)` gives the state after every prefix of a window in one pass (causal
    attention); `forward(history)` the state after the whole history (its last position). Items
    are scored by the dot product of a (head-transformed) state with their embedding (tied
    input and output embeddings), so the whole catalogue is one matrix product. PAD keys are
    masked and positions count from the most recent item, so a state depends only on the non-PAD
    items: left-padding invariant. Every empty prefix (PAD inputs only) gives the same finite state,
    the one a user with no history gets.
    """

    def __init__(
        self,
        num_items: int,
        dim: int = 64,
        history_len: int = 50,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.2,
        item_init_std: float = 0.02,
    ) -> None:
        """Settings (each a config key).

        Args:
            num_items: catalogue size (ids 1..num_items; 0 is PAD).
            dim: width of the embeddings, the Transformer and the state (the teacher/student knob).
            history_len: longest history; histories are `(B, L)` with L <= history_len.
            num_layers: causal Transformer blocks.
            num_heads: attention heads per block (must divide dim).
            dropout: dropout of embeddings, attention and MLPs during training.
            item_init_std: standard deviation of the item embeddings at initialisation.
        """
        super().__init__()
        self.num_items = num_items
        self.dim = dim
        self.history_len = history_len
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=item_init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        # index history_len - 1 is the most recent item; a shorter history uses the last L rows
        self.positions = nn.Parameter(torch.randn(history_len, dim) * 0.02)
        self.input_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([CausalBlock(dim, num_heads, dropout) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim)

    def sequence(self, history: Tensor) -> Tensor:
        """States `(B, L, D)` after every prefix of left-padded histories `(B, L)` (position t has seen items 0..t)."""
        assert history.dim() == 2, f"history must be (B, L) item ids, got shape {history.shape}"
        assert not history.is_floating_point(), f"history must hold integer item ids, got {history.dtype}"
        l = history.shape[1]
        assert 0 < l <= self.history_len, f"history length {l} must be in 1..history_len={self.history_len}"
        is_item = history > 0
        # a PAD input takes the most recent position: every empty prefix gives the state of an empty history (a cold user's)
        x = torch.where(is_item.unsqueeze(-1), self.item_embedding(history) + self.positions[self.history_len - l :], self.positions[-1])
        x = self.input_drop(x)
        causal = torch.ones(l, l, dtype=torch.bool, device=history.device).tril()
        diagonal = torch.eye(l, dtype=torch.bool, device=history.device)
        # PAD keys are hidden; every query may see itself, so a fully-PAD row never softmaxes over nothing
        allowed = (causal & (is_item.unsqueeze(1) | diagonal)).unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)

    def forward(self, history: Tensor) -> Tensor:
        """State `(B, D)` after the whole of each left-padded history `(B, L)`."""
        return self.sequence(history)[:, -1]

    @torch.jit.export
    def item_vectors(self, items: Tensor) -> Tensor:
        """Item vectors `(..., D)` of item ids `(...)`: their embeddings."""
        return self.item_embedding(items)

    @torch.jit.export
    def all_item_vectors(self) -> Tensor:
        """Vectors of every item id `(num_items + 1, D)` (row 0 is PAD)."""
        return self.item_embedding.weight


class QHead(nn.Module):
    """Q(state, item) = <W state + b, item vector>: a bilinear score of every candidate (W starts as the identity: SASRec's dot product)."""

    def __init__(self, dim: int) -> None:
        """Settings (each a config key).

        Args:
            dim: width of the state and of the item vectors.
        """
        super().__init__()
        self.query = nn.Linear(dim, dim)
        with torch.no_grad():
            self.query.weight.copy_(torch.eye(dim))
            self.query.bias.zero_()

    def forward(self, state: Tensor, item_vectors: Tensor) -> Tensor:
        """Scores `(B, C)` of `item_vectors (B, C, H)` in `state (B, H)`."""
        return torch.bmm(item_vectors, self.query(state).unsqueeze(2)).squeeze(2)

    @torch.jit.export
    def score_all(self, state: Tensor, all_item_vectors: Tensor) -> Tensor:
        """Scores `(..., N)` of the same items `(N, H)` for every state `(..., H)`, as one matrix product."""
        return self.query(state) @ all_item_vectors.T


class ActorHead(QHead):
    """Policy logits over candidates, same bilinear form as `QHead` (its own parameters)."""


class CriticHead(nn.Module):
    """State value V(state) from a small MLP."""

    def __init__(self, dim: int) -> None:
        """Settings (each a config key).

        Args:
            dim: width of the state.
        """
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, state: Tensor) -> Tensor:
        """Values `(...)` of `state (..., D)`."""
        return self.mlp(state).squeeze(-1)


class QNetwork(nn.Module):
    """Encoder + Q head: Q-values of candidates, and the state (the hint used for distillation)."""

    def __init__(self, encoder: SeqEncoder, head: QHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, history: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """`(q (B, C), hint (B, H))` for `history (B, L)` and `candidates (B, C)`."""
        _check_items("candidates", candidates, history.shape[0])
        hint = self.encoder(history)
        return self.head(hint, self.encoder.item_vectors(candidates)), hint

    @torch.jit.export
    def score(self, history: Tensor, candidates: Tensor) -> Tensor:
        """Q-values `(B, C)`."""
        return self.forward(history, candidates)[0]

    @torch.jit.export
    def score_all(self, history: Tensor) -> Tensor:
        """Q-values of every item id `(B, num_items + 1)` (column 0 is PAD)."""
        return self.head.score_all(self.encoder(history), self.encoder.all_item_vectors())

    def sequence_scores(self, history: Tensor) -> tuple[Tensor, Tensor]:
        """`(Q-values of every item after every prefix (B, L, num_items + 1), states (B, L, D))` of windows `(B, L)`."""
        states = self.encoder.sequence(history)
        return self.head.score_all(states, self.encoder.all_item_vectors()), states


class ActorCritic(nn.Module):
    """Encoder shared by an actor (logits over candidates) and a critic (state value)."""

    def __init__(self, encoder: SeqEncoder, actor: ActorHead, critic: CriticHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.actor = actor
        self.critic = critic

    def forward(self, history: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """`(logits (B, C), value (B,))` for `history (B, L)` and `candidates (B, C)`."""
        _check_items("candidates", candidates, history.shape[0])
        state = self.encoder(history)
        return self.actor(state, self.encoder.item_vectors(candidates)), self.critic(state)

    @torch.jit.export
    def score(self, history: Tensor, candidates: Tensor) -> Tensor:
        """Actor logits `(B, C)` (the critic is not evaluated)."""
        _check_items("candidates", candidates, history.shape[0])
        return self.actor(self.encoder(history), self.encoder.item_vectors(candidates))

    @torch.jit.export
    def score_all(self, history: Tensor) -> Tensor:
        """Actor logits of every item id `(B, num_items + 1)` (column 0 is PAD)."""
        return self.actor.score_all(self.encoder(history), self.encoder.all_item_vectors())

    def sequence_scores(self, history: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`(actor logits of every item (B, L, num_items + 1), values (B, L), states (B, L, D))` after every prefix of windows `(B, L)`."""
        states = self.encoder.sequence(history)
        return self.actor.score_all(states, self.encoder.all_item_vectors()), self.critic(states), states

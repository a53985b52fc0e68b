"""Seeded click-sequence simulator: latent tastes, Zipf-like item popularity, drifting sessions.

Items live in taste clusters; a user's next item depends on their (slowly drifting) taste
and on an exponentially decaying sum of their recent items, plus a long-tail popularity
bias. A model that reads the history therefore beats popularity, which is what the
sequence agents must show. Everything is vectorised over users; the only Python loop is
over the sequence position t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl
import torch

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class SyntheticConfig:
    """Simulator sizes and dynamics (defaults: a log that prepares in well under a second)."""

    num_users: int = 500
    num_items: int = 300
    events_per_user: int = 40  # mean; each user gets uniformly 0.5x .. 1.5x of it
    taste_dim: int = 16
    num_clusters: int = 12
    cluster_noise: float = 1.0  # spread of item and user vectors around their cluster centre
    zipf_exponent: float = 1.0  # popularity logit = -exponent * log(1 + rank)
    sharpness: float = 6.0  # weight of the taste/recency match against popularity
    recency_decay: float = 0.6  # recent = decay * recent + item vector
    session_break: float = 0.15  # chance that the next event starts a new session
    taste_drift: float = 0.5  # norm of the taste noise added at each session start
    seed: int = 0

    def validate(self) -> None:
        """Raises ValueError naming the offending `synthetic_*` argument."""
        for name in ("num_users", "num_items", "events_per_user", "taste_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic_{name.replace('num_', '')}: expected >= 1, got {getattr(self, name)}")
        if self.max_length >= self.num_items:
            raise ValueError(
                f"synthetic_events_per_user={self.events_per_user}: a user draws up to {self.max_length} distinct "
                f"items, so synthetic_items must exceed it (got {self.num_items})"
            )

    @property
    def min_length(self) -> int:
        """Fewest events a simulated user has."""
        return max(1, math.ceil(self.events_per_user / 2))

    @property
    def max_length(self) -> int:
        """Most events a simulated user has."""
        return max(self.min_length, (3 * self.events_per_user) // 2)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _noise(rows: int, dim: int, scale: float, g: torch.Generator) -> torch.Tensor:
    """Gaussian noise whose vectors have norm ~`scale`."""
    return scale * torch.randn(rows, dim, generator=g) / math.sqrt(dim)


def simulate(config: SyntheticConfig) -> pl.DataFrame:
    """Simulates the canonical frame (`user`, `item` as strings, `ts` seconds, `row`), all clicks."""
    config.validate()
    g = torch.Generator().manual_seed(config.seed)
    users, items, dim = config.num_users, config.num_items, config.taste_dim

    centers = _unit(torch.randn(config.num_clusters, dim, generator=g))
    item_cluster = torch.randint(config.num_clusters, (items,), generator=g)
    item_vec = _unit(centers[item_cluster] + _noise(items, dim, config.cluster_noise, g))
    popularity = -config.zipf_exponent * torch.log1p(torch.randperm(items, generator=g).double()).float()
    user_cluster = torch.randint(config.num_clusters, (users,), generator=g)
    taste = _unit(centers[user_cluster] + _noise(users, dim, config.cluster_noise, g))

    lengths = torch.randint(config.min_length, config.max_length + 1, (users,), generator=g)
    steps = config.max_length
    chosen = torch.zeros(users, steps, dtype=torch.long)
    stamps = torch.zeros(users, steps, dtype=torch.long)
    clock = torch.randint(30 * SECONDS_PER_DAY, (users,), generator=g)
    consumed = torch.zeros(users, items, dtype=torch.bool)
    recent = torch.zeros(users, dim)
    rows = torch.arange(users)
    for t in range(steps):
        context = _unit(taste + recent)
        logits = (config.sharpness * context @ item_vec.T + popularity).masked_fill(consumed, -math.inf)
        item = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=g).squeeze(1)
        consumed[rows, item] = True
        chosen[:, t], stamps[:, t] = item, clock
        recent = config.recency_decay * recent + item_vec[item]
        new_session = torch.rand(users, generator=g) < config.session_break
        gap_mean = torch.where(new_session, float(SECONDS_PER_DAY), 120.0)
        clock = clock + 1 + (torch.empty(users).exponential_(generator=g) * gap_mean).long()
        drifted = _unit(taste + _noise(users, dim, config.taste_drift, g))
        taste = torch.where(new_session[:, None], drifted, taste)

    keep = torch.arange(steps)[None, :] < lengths[:, None]
    user_index = rows[:, None].expand(users, steps)[keep]
    frame = pl.DataFrame(
        {
            "user": pl.Series(user_index.numpy()).cast(pl.String),
            "item": pl.Series((chosen[keep] + 1).numpy()).cast(pl.String),
            "ts": pl.Series(stamps[keep].numpy()).cast(pl.Int64),
        }
    )
    # a log file is written in time order: file order = (ts, user)
    order = pl.Series(user_index.numpy()).cast(pl.Int64)
    frame = frame.with_columns(order.alias("_u")).sort("ts", "_u").drop("_u")
    return frame.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64)).select("user", "item", "ts", "row")

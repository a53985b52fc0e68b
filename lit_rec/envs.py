"""Training environments: the replay of users' logged train events (`replay_windows`), its per-step form, and a user-model MDP.

Both environments hold `num_envs` user slots. A slot walks through one user's chronological
train positives; at each step the agent picks one column of a candidate set (the logged
positive plus `train_negatives` items the user never had in train, the positive at a random
column) and gets a reward. When a user's episode ends, the slot takes the next user of a
seeded permutation of the users (one permutation = one epoch over users). All state is
tensors on `device`; random numbers come from one seeded CPU generator whose state, with the
slots' positions and the user order, is in `state_dict()` so a resumed run continues exactly.

Interface (docs/ARCHITECTURE.md, "Environments"):
`observe() -> {"user" (B,), "history" (B, L), "candidates" (B, 1+n)}`,
`step(action (B,)) -> (reward (B,), done (B,))`, then `observe()` gives the next states.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_rec.functional.next_item import window_targets
from lit_rec.sampling import SeededGenerator


def replay_windows(history: Tensor, item: Tensor, index: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The one training window of each row's consecutive logged events: `(history, targets, mask)`, each `(..., L)`.

    `history (E, L)` and `item (E,)` are the train events' tables (`RecTensors.train`); `index (..., T)`
    a row's next T train events (consecutive, of one user) and `valid (..., T)` which exist (a prefix:
    the episode may end inside them). The window ends at the last valid event: its `history` row (the
    L items before it), `targets` the item after every prefix (the history shifted, then the event's
    item), `mask` the positions of the row's valid events whose target is an item (a user's first
    event is learned from the empty prefix). Actions do not change states in replay, so one causal
    pass over `history` gives every state of the T steps.
    """
    length = history.shape[1]
    new = valid.sum(-1)  # events of each row that exist
    last = index.gather(-1, (new - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1)
    window = history[last]  # (..., L): the L items before the row's last event
    targets, has_item = window_targets(window, item[last])  # the same targets as the Q-learners' window batches
    counted = torch.arange(length, device=history.device) >= (length - new).unsqueeze(-1)
    return window, targets, counted & has_item


class ExcludedItemSampler:
    """Draws items uniformly from `1..num_items` outside each user's own set, exactly, without rejection.

    With a user's items sorted as s_0 < s_1 < ..., `g_j = s_j - 1 - j` counts the allowed items
    below s_j, so the r-th allowed item (0-based) is `r + 1 + #{j : g_j <= r}`: one searchsorted
    over all users' `g` keyed by user.
    """

    def __init__(self, offsets: Tensor, items: Tensor, num_items: int) -> None:
        """`items[offsets[u]:offsets[u+1]]` are user u's items (any order, repeats allowed)."""
        num_users = offsets.numel() - 1
        span = num_items + 1
        owner = torch.repeat_interleave(torch.arange(num_users, device=offsets.device), offsets[1:] - offsets[:-1])
        keys = torch.unique(owner * span + items)  # sorted by (user, item), repeats removed
        owner, item = keys // span, keys % span
        counts = torch.bincount(owner, minlength=num_users)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(keys.numel(), device=keys.device) - starts[owner]
        self.span = span
        self.num_items = num_items
        self.keys = owner * span + (item - 1 - rank)  # nondecreasing: g grows within a user, users are span apart
        self.starts = starts
        self.allowed = (num_items - counts).clamp_min(1)

    def to(self, device: torch.device | str) -> "ExcludedItemSampler":
        """Moves the index to `device`."""
        self.keys, self.starts, self.allowed = (t.to(device) for t in (self.keys, self.starts, self.allowed))
        return self

    def sample(self, users: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """`(B, n)` items drawn independently (with replacement) and uniformly outside each user's set."""
        uniform = torch.rand(users.shape[0], n, generator=generator, dtype=torch.float64, device=generator.device)
        allowed = self.allowed[users].unsqueeze(1)
        rank = (uniform.to(allowed.device) * allowed).long().clamp_max(allowed - 1)
        below = torch.searchsorted(self.keys, users.unsqueeze(1) * self.span + rank, right=True) - self.starts[users].unsqueeze(1)
        return (rank + 1 + below).clamp_max(self.num_items)


class ReplayEnv:
    """Offline replay one step at a time (a contextual bandit): the state is `replay_windows`' history of the current event."""

    def __init__(self, tensors: Any, num_envs: int, train_negatives: int, seed: int, device: torch.device | str = "cpu") -> None:
        """Settings (each a config key).

        Args:
            tensors: the datamodule's `RecTensors` (uses `train`, `train_offsets`, `train_sequence`, sizes).
            num_envs: user slots stepped at once (the batch size of the environment).
            train_negatives: random items beside the logged positive at each step.
            seed: seed of the user order and of every candidate draw.
            device: where the environment's tensors live.
        """
        self.device = torch.device(device)
        self.num_envs = num_envs
        self.train_negatives = train_negatives
        self.num_items = tensors.num_items
        self.history_len = tensors.history_len
        self.offsets = tensors.train_offsets.to(self.device)
        self.sequence = tensors.train_sequence.to(self.device)
        self.train_history, self.train_item = tensors.train.history.to(self.device), tensors.train.item.to(self.device)
        self.lengths = self.offsets[1:] - self.offsets[:-1]
        self.users_with_events = torch.nonzero(self.lengths > 0).squeeze(1)
        if self.users_with_events.numel() == 0:
            raise ValueError(f"{type(self).__name__}: no user has a train event")
        self.negatives = ExcludedItemSampler(self.offsets, self.sequence, self.num_items).to(self.device)
        self.rng = SeededGenerator(seed)
        self.order = torch.zeros(0, dtype=torch.long, device=self.device)  # upcoming users
        self.cursor = 0
        self.epoch = 0  # permutations of the users drawn so far
        self.user = self._next_users(num_envs)
        self.position = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._start_episodes(torch.ones(num_envs, dtype=torch.bool, device=self.device))
        self._draw_candidates()

    @property
    def num_candidates(self) -> int:
        """Candidates per state: the logged positive plus `train_negatives`."""
        return 1 + self.train_negatives

    # ------------------------------------------------------------------ interface
    def observe(self) -> dict[str, Tensor]:
        """The current states: `user (B,)`, `history (B, L)`, `candidates (B, 1+n)`."""
        return {"user": self.user, "history": self._history(), "candidates": self.candidates}

    def step(self, action: Tensor) -> tuple[Tensor, Tensor]:
        """Applies the chosen columns `(B,)`; returns `reward (B,)` float and `done (B,)` (episode ended)."""
        action = action.to(self.device)
        reward = self._reward_and_transition(action)
        self.position = self.position + 1
        done = self.position >= self.lengths[self.user]
        n_done = int(done.sum())
        if n_done:  # new tensors, not in-place: earlier observations stay valid
            self.user = self.user.masked_scatter(done, self._next_users(n_done))
            self.position = self.position.masked_fill(done, 0)
            self._start_episodes(done)
        self._draw_candidates()
        return reward, done

    # ------------------------------------------------------------------ dynamics
    def _window(self) -> tuple[Tensor, Tensor]:
        """`replay_windows` of each slot's current event: its history `(B, L)` and targets `(B, L)` (the logged item last)."""
        index = (self.offsets[self.user] + self.position).unsqueeze(1)
        history, targets, _ = replay_windows(self.train_history, self.train_item, index, torch.ones_like(index, dtype=torch.bool))
        return history, targets

    def logged_item(self) -> Tensor:
        """`(B,)` the logged positive of each slot's current step."""
        return self._window()[1][:, -1]

    def _history(self) -> Tensor:
        """The last L logged items before the current position, left-padded with 0."""
        return self._window()[0]

    def _reward_and_transition(self, action: Tensor) -> Tensor:
        """Reward 1 for the logged column; the replayed state moves on by itself."""
        return (action == self.target_column).float()

    def _start_episodes(self, mask: Tensor) -> None:
        """Hook for subclasses: slots in `mask` just started a new user's episode."""

    def _draw_candidates(self) -> None:
        """Logged positive + negatives outside the user's train items, the positive at a random column."""
        b, c, g = self.num_envs, self.num_candidates, self.rng.generator
        negatives = self.negatives.sample(self.user, self.train_negatives, g)
        column = torch.randint(0, c, (b,), generator=g, device=g.device).to(self.device)
        candidates = torch.cat([self.logged_item()[:, None], negatives], dim=1)
        # swap column 0 (the positive) with `column`; negatives are i.i.d., so this is a uniform shuffle
        order = torch.arange(c, device=self.device).repeat(b, 1)
        order.scatter_(1, column[:, None], 0)
        order[:, 0] = column
        self.candidates = candidates.gather(1, order)
        self.target_column = column

    def _next_users(self, n: int) -> Tensor:
        """The next `n` users of the seeded order, drawing a new permutation (epoch) when it runs out."""
        while self.order.numel() - self.cursor < n:
            g = self.rng.generator
            permutation = torch.randperm(self.users_with_events.numel(), generator=g, device=g.device).to(self.device)
            self.order = torch.cat([self.order[self.cursor :], self.users_with_events[permutation]])
            self.cursor = 0
            self.epoch += 1
        users = self.order[self.cursor : self.cursor + n]
        self.cursor += n
        return users.clone()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Slots, positions, user order, current candidates and generator state."""
        return {
            "user": self.user.cpu().clone(),
            "position": self.position.cpu().clone(),
            "order": self.order[self.cursor :].cpu().clone(),
            "epoch": self.epoch,
            "candidates": self.candidates.cpu().clone(),
            "target_column": self.target_column.cpu().clone(),
            "rng": self.rng.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        if state["user"].numel() != self.num_envs or state["candidates"].shape[1] != self.num_candidates:
            raise ValueError(
                f"{type(self).__name__}: checkpoint has {state['user'].numel()} slots x {state['candidates'].shape[1]} candidates, "
                f"this environment {self.num_envs} x {self.num_candidates}"
            )
        for name in ("user", "position", "candidates", "target_column"):
            setattr(self, name, state[name].to(self.device))
        self.order, self.cursor, self.epoch = state["order"].to(self.device), 0, state["epoch"]
        self.rng.load_state_dict(state["rng"])


class ClickModel(torch.nn.Module):
    """Logistic click model `sigmoid((p_u + mean_{j in h} q_j) . w_i + b_i + b)` of user, history and item."""

    def __init__(self, num_users: int, num_items: int, rank: int, generator: torch.Generator) -> None:
        """Factors drawn from N(0, 0.1) with `generator` (deterministic from the env's seed)."""
        super().__init__()

        def init(*shape: int) -> torch.nn.Parameter:
            return torch.nn.Parameter(0.1 * torch.randn(*shape, generator=generator))

        self.user = init(num_users, rank)
        self.history_item = init(num_items + 1, rank)
        self.item = init(num_items + 1, rank)
        self.item_bias = torch.nn.Parameter(torch.zeros(num_items + 1))
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def state(self, user: Tensor, history: Tensor) -> Tensor:
        """`(B, rank)` user vector plus the mean vector of the non-PAD history items."""
        mask = (history > 0).unsqueeze(-1).float()
        mean = (self.history_item[history] * mask).sum(1) / mask.sum(1).clamp_min(1)
        return self.user[user] + mean

    def forward(self, user: Tensor, history: Tensor, items: Tensor) -> Tensor:
        """Click logits `(B, C)` of items `(B, C)` for users `(B,)` with histories `(B, L)`."""
        state = self.state(user, history)
        return torch.einsum("br,bcr->bc", state, self.item[items]) + self.item_bias[items] + self.bias


def fit_click_model(tensors: Any, rank: int, negatives: int, epochs: int, batch_size: int, lr: float, seed: int) -> ClickModel:
    """Fits `ClickModel` on the train events: each logged item against `negatives` items unseen in train, Adam on minibatches."""
    generator = torch.Generator().manual_seed(seed)
    model = ClickModel(tensors.num_users, tensors.num_items, rank, generator)
    sampler = ExcludedItemSampler(tensors.train_offsets, tensors.train_sequence, tensors.num_items)
    train = tensors.train
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            for index in torch.randperm(len(train), generator=generator).split(batch_size):
                user = train.user[index]
                items = torch.cat([train.item[index, None], sampler.sample(user, negatives, generator)], dim=1)
                labels = torch.zeros(items.shape)
                labels[:, 0] = 1
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(user, train.history[index], items), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.requires_grad_(False)


class UserModelEnv(ReplayEnv):
    """A simulated MDP: a click model fitted on the train split decides clicks, and clicks become the state.

    Candidates are drawn as in `ReplayEnv` (the user's next logged item plus unseen-in-train
    items). The reward is a click drawn as Bernoulli(p) with the environment's generator, p
    from the click model for (user, current history, recommended item); a clicked item is
    appended to the history, without a click the state stays. Episodes start from an empty
    history and last the user's train length, so the agent's choices shape its own future.
    The click model is fitted once per construction, deterministically from `seed`.
    """

    def __init__(
        self,
        tensors: Any,
        num_envs: int,
        train_negatives: int,
        seed: int,
        device: torch.device | str = "cpu",
        click_rank: int = 16,
        click_negatives: int = 4,
        click_epochs: int = 10,
        click_batch_size: int = 4096,
        click_lr: float = 0.02,
    ) -> None:
        """Args (beyond `ReplayEnv`'s):
        click_rank: dimension of the click model's factors.
        click_negatives: sampled non-clicks per logged click when fitting it.
        click_epochs: passes over the train events.
        click_batch_size: train events per Adam step.
        click_lr: learning rate of the fit.
        """
        self.click_model = fit_click_model(
            tensors, click_rank, click_negatives, click_epochs, click_batch_size, click_lr, seed
        ).to(device)
        self.clicked = torch.zeros(num_envs, tensors.history_len, dtype=torch.long, device=device)
        super().__init__(tensors, num_envs, train_negatives, seed, device)

    def click_probability(self, user: Tensor, history: Tensor, items: Tensor) -> Tensor:
        """`(B, C)` probabilities that users `(B,)` with histories `(B, L)` click items `(B, C)`."""
        return torch.sigmoid(self.click_model(user, history, items))

    def _history(self) -> Tensor:
        """The slot's own clicks so far (left-padded with 0, most recent last)."""
        return self.clicked

    def _reward_and_transition(self, action: Tensor) -> Tensor:
        """Bernoulli click on the chosen item; a clicked item enters the history."""
        chosen = self.candidates.gather(1, action[:, None])
        p = self.click_probability(self.user, self.clicked, chosen).squeeze(1)
        g = self.rng.generator
        click = torch.rand(self.num_envs, generator=g, device=g.device).to(self.device) < p
        appended = torch.cat([self.clicked[:, 1:], chosen], dim=1)
        self.clicked = torch.where(click[:, None], appended, self.clicked)
        return click.float()

    def _start_episodes(self, mask: Tensor) -> None:
        """New users start from an empty history."""
        self.clicked = self.clicked.masked_fill(mask[:, None], 0)

    def state_dict(self) -> dict[str, Any]:
        """`ReplayEnv`'s state plus the slots' click histories and the click model.

        The click model is small and refitting it on another machine could differ in the last
        bits, so the fitted weights travel with the checkpoint.
        """
        click_model = {k: v.cpu().clone() for k, v in self.click_model.state_dict().items()}
        return {**super().state_dict(), "clicked": self.clicked.cpu().clone(), "click_model": click_model}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""
        super().load_state_dict(state)
        self.clicked = state["clicked"].to(self.device)
        self.click_model.load_state_dict(state["click_model"])

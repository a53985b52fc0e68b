"""DQN and Double DQN over the whole catalogue on logged sequences, beside a supervised term (SQN, Xin et al. 2020).

The algorithm, top to bottom (one `training_step` on a batch of training windows):
1. the online network encodes every prefix of each window in one causal pass and scores the whole
   catalogue: Q(s_t, .) for every position t (`softmax: sampled` scores a logQ-corrected sample);
2. the target network does the same without gradient; the next state of position t is position
   t + 1 of the same window (replayed actions do not change states), so
   V(s_{t+1}) = max Q_target(s_{t+1}, .) (DQN) or Q_target(s_{t+1}, argmax Q_online(s_{t+1}, .)) (DDQN);
3. the TD loss is the logged action's: Q(s_t, a_t) -> 1 + gamma V(s_{t+1}) (SQN's Q-learning on the
   logged transition); `td_actions` > 0 adds that many unclicked actions a step with their replay
   targets gamma V(s_{t+1}) (in replay every action's reward is known and actions do not change
   states; `lit_rec.functional.td.replay_td_loss`). The last position of a window has no next state
   in it and takes no TD term;
4. the supervised term is the softmax cross-entropy of the logged item over the same Q-values (the
   demonstrations' large-margin term of DQfD, Hester et al. 2018, in its softmax form; SQN's
   supervised head shares the backbone, here it shares the head too, so the greedy policy is the
   Q-learner's own): `loss = ce_weight * CE + td_weight * TD`.
After every `target_every_n_steps` optimizer steps the module moves its target networks (`target_pairs()`)
towards the online ones: a `soft` Polyak blend with weight `target_tau`, or a `hard` copy; no callback is
needed. The math lives in `lit_rec.functional.td` and `.next_item`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lit_rec.functional.next_item import Columns, TrainingSoftmax, cross_entropy, score_columns, window_targets
from lit_rec.functional.td import next_state_values, replay_td_loss, update_target
from lit_rec.modules.base import RecModule
from lit_rec.networks import EncoderConfig, QHead, QNetwork
from lit_rec.sampling import SeededGenerator


@dataclass
class QLosses:
    """What `DQN.q_losses` computes at the P positions of a batch that hold an item (row order):
    the mean `ce` and `td`, the online `columns (P, C)` and `states (P, D)`, `has_next (P - 1,)` (entry k's next
    state is entry k + 1), the logged `targets (P,)` (item ids) and `where`, the positions' (row, column) indices."""

    ce: Tensor
    td: Tensor
    columns: Columns
    states: Tensor
    has_next: Tensor
    targets: Tensor
    where: tuple[Tensor, Tensor]


class DQN(RecModule):
    """Deep Q-learning (Mnih et al. 2015) over the catalogue; `double=True` gives Double DQN (van Hasselt et al. 2016)."""

    def __init__(
        self,
        double: bool = False,
        gamma: float = 0.5,
        td_weight: float = 1.0,
        ce_weight: float = 1.0,
        loss: Literal["huber", "mse"] = "huber",
        td_actions: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        max_grad_norm: float = 5.0,
        encoder: EncoderConfig = EncoderConfig(),
        softmax: Literal["full", "sampled"] = "full",
        sampled_negatives: int = 1024,
        target_update: Literal["soft", "hard"] = "soft",
        target_tau: float = 0.05,
        target_every_n_steps: int = 1,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """Settings (each a config key).

        Args:
            double: Double DQN target (argmax by the online network, value by the target network).
            gamma: discount factor.
            td_weight: weight of the TD loss.
            ce_weight: weight of the supervised cross-entropy over the Q-values (0: pure Q-learning).
            loss: TD loss: `huber` or `mse`.
            td_actions: unclicked actions per step (drawn uniformly, shared by the batch) whose TD errors (target
                gamma V(s'), reward 0) join the logged action's; 0: the logged action only (SQN).
            lr: Adam learning rate.
            weight_decay: Adam weight decay.
            max_grad_norm: gradient clipping by global norm (0 disables it).
            encoder: the SASRec encoder's shape (`lit_rec.networks.EncoderConfig`).
            softmax: columns of a training step: `full` catalogue, or a `sampled` logQ-corrected softmax.
            sampled_negatives: items per batch of the sampled softmax.
            target_update: `soft` blends the online weights into the target networks with weight `target_tau`; `hard` copies them.
            target_tau: blend weight of the soft update (ignored by `hard`).
            target_every_n_steps: optimizer steps between two target updates.
            seed: seed of the network initialisation and of the samplers.
        """
        super().__init__(**kwargs)
        encoder = EncoderConfig.of(encoder)
        if gamma < 0 or gamma >= 1 or td_weight < 0 or ce_weight < 0 or td_weight + ce_weight == 0:
            raise ValueError(f"DQN needs 0 <= gamma < 1 and weights >= 0, not both 0: got gamma={gamma}, td_weight={td_weight}, ce_weight={ce_weight}")
        if loss not in ("huber", "mse"):
            raise ValueError(f"DQN loss must be 'huber' or 'mse', got {loss!r}")
        self.save_hyperparameters(logger=False)  # the run config reaches the loggers once, nested (LogConfigCallback)
        self.double, self.gamma, self.td_weight, self.ce_weight = double, gamma, td_weight, ce_weight
        self.lr, self.weight_decay = lr, weight_decay
        if td_actions < 0:
            raise ValueError(f"td_actions must be >= 0, got {td_actions}")
        self.loss_kind, self.td_actions, self.max_grad_norm, self.seed = loss, td_actions, max_grad_norm, seed
        if target_update not in ("soft", "hard") or target_every_n_steps < 1 or not 0 < target_tau <= 1:
            raise ValueError(
                f"DQN needs target_update 'soft' or 'hard', target_every_n_steps >= 1 and 0 < target_tau <= 1, "
                f"got {target_update!r}, {target_every_n_steps}, {target_tau}"
            )
        self.target_update, self.target_tau, self.target_every_n_steps = target_update, target_tau, target_every_n_steps
        self.training_softmax = TrainingSoftmax(softmax, sampled_negatives)
        with torch.random.fork_rng(devices=[]):  # the initialisation depends on `seed` only
            torch.manual_seed(seed)
            self.online = self.build_network(encoder)
        self.target = copy.deepcopy(self.online).requires_grad_(False).eval()  # Lightning does not call train() at fit start
        self.rng = SeededGenerator(seed + 1)

    def build_network(self, encoder: EncoderConfig) -> QNetwork:
        """A `QNetwork` with an encoder of that shape on this data's catalogue and history length."""
        return QNetwork(encoder.build(self.num_items, self.history_len), QHead(encoder.dim))

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Fits the sampled softmax's distribution to the train items."""
        super().setup(stage)
        self.training_softmax.fit(self.tensors.item_popularity)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the online network (the target follows it through `sync_targets`)."""
        return torch.optim.Adam(self.online.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None) -> None:
        """Clips by `max_grad_norm` (the trainer's own `gradient_clip_val`, when set, wins)."""
        value = gradient_clip_val if gradient_clip_val else self.max_grad_norm
        if value and value > 0:
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def train(self, mode: bool = True) -> "DQN":
        """The target network always computes targets without dropout."""
        super().train(mode)
        self.target.eval()
        return self

    def target_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """The `(online, target)` networks that `sync_targets` updates."""
        return [(self.online, self.target)]

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Steps the optimizer, then syncs the target networks every `target_every_n_steps` optimizer steps."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning counts this step once the hook returns (hence + 1); syncing here, before the callbacks'
        # on_train_batch_end, puts the synced targets in a checkpoint written at this step
        if (self.trainer.global_step + 1) % self.target_every_n_steps == 0:
            self.sync_targets()

    def sync_targets(self) -> None:
        """Moves every target network towards its online one: a `hard` copy or a `soft` blend with `target_tau`."""
        tau = 1.0 if self.target_update == "hard" else self.target_tau
        for online, target in self.target_pairs():
            update_target(online, target, tau)

    # ------------------------------------------------------------------ learning
    def q_losses(self, history: Tensor, item: Tensor) -> QLosses:
        """CE and TD of a batch of windows, at the P positions that hold an item (flattened in row order)."""
        targets, mask = window_targets(history, item)
        where = mask.nonzero(as_tuple=True)
        # positions of a window are consecutive in row order and end at its last position, so the next
        # state of entry k is entry k + 1 unless k is its window's last position
        has_next = where[1][:-1] < history.shape[1] - 1
        states = self.online.encoder.sequence(history)[where]
        columns = self.training_softmax.columns(self.online.head.query(states), self.online.encoder.all_item_vectors(), targets[where], self.rng.generator)
        ce = cross_entropy(columns).mean()
        next_value = self.next_values(self.target, history, where, targets[where], columns)
        competing = columns.valid[:-1] if columns.valid.dim() == 2 else columns.valid
        td = replay_td_loss(columns.scores[:-1], columns.target[:-1], competing, next_value, self.gamma, self.loss_kind, self.td_sample(columns))
        td = td[has_next].mean() if bool(has_next.any()) else td.sum() * 0.0
        return QLosses(ce, td, columns, states, has_next, targets[where], where)

    def td_sample(self, columns: Columns) -> Tensor:
        """The `td_actions` unclicked columns (uniform, without replacement) whose TD errors join the logged action's (none for 0)."""
        count = columns.scores.shape[-1]
        g = self.rng.generator
        return torch.randperm(count, generator=g, device=g.device)[: self.td_actions].to(columns.scores.device)

    def next_values(self, target: QNetwork, history: Tensor, where: tuple[Tensor, Tensor], targets: Tensor, columns: Columns) -> Tensor:
        """V of the next entry `(P - 1,)` for every entry but the last, from the target network (and the online one for DDQN)."""
        with torch.no_grad():
            query = target.head.query(target.encoder.sequence(history)[where])
            next_q_target = score_columns(query, target.encoder.all_item_vectors(), targets, columns)
            if columns.negatives is not None:
                next_q_target = next_q_target.masked_fill(~columns.valid, float("-inf"))
            next_q_online = columns.masked_scores().detach()[1:] if self.double else None
            return next_state_values(next_q_target[1:], next_q_online)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """`ce_weight * CE + td_weight * TD` on every position of the windows."""
        losses = self.q_losses(batch["history"], batch["item"])
        loss = self.ce_weight * losses.ce + self.td_weight * losses.td
        self.log_step("train/loss", loss, prog_bar=True)
        self.log_step("train/loss_td", losses.td)
        self.log_step("train/loss_ce", losses.ce)
        self.log_window_ctr(losses.columns, self.rng.generator)
        return loss

    # ------------------------------------------------------------------ scoring
    def score_candidates(self, batch: dict[str, Tensor], candidates: Tensor) -> Tensor:
        """Greedy Q-values `(B, C)` of the online network."""
        return self.online.score(batch["history"], candidates)

    def score_all_items(self, batch: dict[str, Tensor]) -> Tensor:
        """Q-values of every item `(B, num_items + 1)` as one matrix product."""
        encoder = self.online.encoder
        return self.online.head.score_all(encoder(batch["history"]), self.item_vectors_of(encoder))

    def score_candidates_and_all(self, batch: dict[str, Tensor], candidates: Tensor) -> tuple[Tensor, Tensor]:
        """Q-values of the candidates `(B, C)` and of every item `(B, num_items + 1)`, the states encoded once."""
        return self.scores_from_all_items(batch, candidates)

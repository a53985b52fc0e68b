"""DQN and Double DQN on the shared sequence encoder, trained in a replay or user-model environment.

The algorithm, top to bottom (one `training_step`):
1. every environment slot observes its state (history + candidates) and acts epsilon-greedily on Q;
2. the environment steps, giving rewards and next states; the transitions go into a replay buffer;
3. once the buffer holds `learning_starts` transitions, every `train_freq` environment steps a
   minibatch is sampled and Q takes `updates_per_step` TD steps towards
   `r + gamma * max Q_target(s', .)` (DQN) or `r + gamma * Q_target(s', argmax Q(s', .))` (DDQN).
The target network follows the online one through the `callbacks.TargetNetworkUpdate` callback
(it finds them with `target_pairs()`); the math lives in `lit_rec.functional.td`.

The training DataLoader of RecDataModule only paces the loop: each of its batches is one
environment step (its content is ignored), so an epoch has as many steps as the data has train
batches. Every training step takes exactly `updates_per_step` optimizer steps (no-op steps before
`learning_starts` and between `train_freq` updates), so `trainer.global_step` =
environment steps x `updates_per_step`, and `max_steps`, validation and checkpoint schedules
keep their meaning.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import Tensor

from lit_rec.envs import ReplayEnv, UserModelEnv
from lit_rec.functional.td import double_dqn_target, dqn_target, epsilon_at, td_loss
from lit_rec.modules.base import RecModule
from lit_rec.networks import QHead, QNetwork, SeqEncoder
from lit_rec.replay_buffer import ReplayBuffer
from lit_rec.sampling import SeededGenerator

ENVIRONMENTS = {"replay": ReplayEnv, "user_model": UserModelEnv}


class DQN(RecModule):
    """Deep Q-learning (Mnih et al. 2015) over candidate sets; `double=True` gives Double DQN (van Hasselt et al. 2016)."""

    def __init__(
        self,
        double: bool = False,
        env: Literal["replay", "user_model"] = "replay",
        num_envs: int = 256,
        train_negatives: int = 10,
        gamma: float = 0.4,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        buffer_size: int = 100_000,
        batch_size_rl: int = 256,
        learning_starts: int = 1024,
        train_freq: int = 1,
        updates_per_step: int = 1,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.05,
        epsilon_decay_steps: int = 200,
        loss: Literal["huber", "mse"] = "huber",
        max_grad_norm: float = 5.0,
        history_len: int = 10,
        dim: int = 64,
        num_layers: int = 1,
        num_heads: int = 2,
        hint_dim: int = 32,
        dropout: float = 0.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        """Args:
        double: Double DQN target (argmax by the online network, value by the target network).
        env: training environment: `replay` (logged sessions) or `user_model` (a fitted click model).
        num_envs: user slots stepped at once; each training step adds this many transitions.
        train_negatives: random items beside the logged one in each training candidate set.
        gamma: discount factor.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        buffer_size: replay buffer capacity in transitions.
        batch_size_rl: transitions per TD update.
        learning_starts: transitions in the buffer before the first TD update.
        train_freq: environment steps between two rounds of TD updates.
        updates_per_step: TD updates (optimizer steps) per training step.
        epsilon_start: exploration rate at step 0.
        epsilon_end: exploration rate after the decay.
        epsilon_decay_steps: environment steps of the linear decay.
        loss: TD loss: `huber` or `mse`.
        max_grad_norm: gradient clipping by global norm (0 disables it).
        history_len: items in a state; must equal the data's `history_len`.
        dim: width of the encoder's embeddings, Transformer and GRU.
        num_layers: causal Transformer blocks.
        num_heads: attention heads (must divide dim).
        hint_dim: width of the state (hint layer) and item vectors.
        dropout: dropout of the encoder during TD updates.
        seed: seed of the network initialisation, the environment, exploration and replay sampling.
        """
        super().__init__(**kwargs)
        if env not in ENVIRONMENTS:
            raise ValueError(f"DQN env must be one of {sorted(ENVIRONMENTS)}, got {env!r}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.double = double
        self.env_name = env
        self.num_envs, self.train_negatives, self.gamma = num_envs, train_negatives, gamma
        self.lr, self.weight_decay = lr, weight_decay
        self.buffer_size, self.batch_size_rl, self.learning_starts = buffer_size, batch_size_rl, learning_starts
        self.train_freq, self.updates_per_step = train_freq, updates_per_step
        self.epsilon_start, self.epsilon_end, self.epsilon_decay_steps = epsilon_start, epsilon_end, epsilon_decay_steps
        self.loss_kind, self.max_grad_norm = loss, max_grad_norm
        self.history_len, self.seed = history_len, seed
        with torch.random.fork_rng(devices=[]):  # the initialisation depends on `seed` only
            torch.manual_seed(seed)
            encoder = SeqEncoder(self.num_items, dim, history_len, num_layers, num_heads, hint_dim, dropout)
            self.online = QNetwork(encoder, QHead(hint_dim))
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.act_rng = SeededGenerator(seed + 1)
        self.replay_rng = SeededGenerator(seed + 2)
        self.env: ReplayEnv | None = None
        self.buffer: ReplayBuffer | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Builds the environment and the replay buffer on the training device (fit only)."""
        super().setup(stage)
        if stage != "fit" or self.env is not None:
            return
        tensors = self.tensors
        if tensors.history_len != self.history_len:
            raise ValueError(f"DQN history_len={self.history_len} but the data's history_len={tensors.history_len}")
        device = self.trainer.strategy.root_device
        # each rank replays its own users: the seed differs per rank
        env_seed = self.seed + 1000 * self.trainer.global_rank
        self.env = ENVIRONMENTS[self.env_name](tensors, self.num_envs, self.train_negatives, env_seed, device)
        self.buffer = ReplayBuffer(self.buffer_size, self.history_len, 1 + self.train_negatives, device)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the online network (the target follows it through TargetNetworkUpdate)."""
        return torch.optim.Adam(self.online.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def train(self, mode: bool = True) -> "DQN":
        """The target network always computes targets without dropout."""
        super().train(mode)
        self.target.eval()
        return self

    def target_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """`(online, target)` for `callbacks.TargetNetworkUpdate`."""
        return [(self.online, self.target)]

    # ------------------------------------------------------------------ acting
    @property
    def env_steps(self) -> int:
        """Environment steps taken so far (derived from the optimizer steps)."""
        return self.global_step // self.updates_per_step

    @property
    def epsilon(self) -> float:
        """Exploration rate of the current step (linear schedule)."""
        return epsilon_at(self.env_steps, self.epsilon_start, self.epsilon_end, self.epsilon_decay_steps)

    @torch.no_grad()
    def act(self, history: Tensor, candidates: Tensor, epsilon: float) -> Tensor:
        """Epsilon-greedy candidate columns `(B,)`: a uniform column with probability epsilon, else argmax Q."""
        was_training = self.online.training
        self.online.eval()
        greedy = self.online.score(history, candidates).argmax(dim=1)
        self.online.train(was_training)
        b, c, g = candidates.shape[0], candidates.shape[1], self.act_rng.generator
        explore = torch.rand(b, generator=g, device=g.device) < epsilon
        uniform = torch.randint(0, c, (b,), generator=g, device=g.device)
        return torch.where(explore.to(self.device), uniform.to(self.device), greedy)

    # ------------------------------------------------------------------ learning
    def td_update(self, batch: dict[str, Tensor]) -> Tensor:
        """One TD loss on a replay minibatch (DQN or Double-DQN target)."""
        q = self.online.score(batch["history"], batch["candidates"])
        q_taken = q.gather(1, batch["action"][:, None]).squeeze(1)
        return td_loss(q_taken, self.td_target(self.online, self.target, batch), self.loss_kind)

    def td_target(self, online: QNetwork, target: QNetwork, batch: dict[str, Tensor]) -> Tensor:
        """The (Double) DQN target `(B,)` of a network pair on a replay minibatch, without gradient."""
        with torch.no_grad():
            next_q_target = target.score(batch["next_history"], batch["next_candidates"])
            if self.double:
                next_q_online = online.score(batch["next_history"], batch["next_candidates"])
                return double_dqn_target(batch["reward"], next_q_online, next_q_target, batch["done"], self.gamma)
            return dqn_target(batch["reward"], next_q_target, batch["done"], self.gamma)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """One environment step for every slot, then the TD updates (the data batch only paces the loop)."""
        assert self.env is not None and self.buffer is not None, "DQN.setup('fit') builds the environment"
        optimizer = self.optimizers()
        epsilon, env_step = self.epsilon, self.env_steps
        state = self.env.observe()
        action = self.act(state["history"], state["candidates"], epsilon)
        reward, done = self.env.step(action)
        next_state = self.env.observe()
        self.buffer.add(
            {
                "history": state["history"],
                "candidates": state["candidates"],
                "action": action,
                "reward": reward,
                "next_history": next_state["history"],
                "next_candidates": next_state["candidates"],
                "done": done,
            }
        )
        learn = len(self.buffer) >= self.learning_starts and env_step % self.train_freq == 0
        for _ in range(self.updates_per_step):
            optimizer.zero_grad(set_to_none=True)
            if learn:
                loss = self.td_update(self.buffer.sample(self.batch_size_rl, self.replay_rng.generator))
                self.manual_backward(loss)
                if self.max_grad_norm > 0:
                    self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
                self.log_step("train/loss", loss, prog_bar=True)
            optimizer.step()  # without gradients a no-op that still advances global_step
        self.log_train_ctr(reward, self.num_envs)
        self.log_step("train/epsilon", epsilon, mean=False)

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

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds the environment and the replay buffer to the random state (both are part of an exact resume)."""
        super().on_save_checkpoint(checkpoint)
        if self.env is not None and self.buffer is not None:
            checkpoint["dqn"] = {"env": self.env.state_dict(), "buffer": self.buffer.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores the random state, the environment and the replay buffer (when training)."""
        super().on_load_checkpoint(checkpoint)
        if self.env is not None and self.buffer is not None and "dqn" in checkpoint:
            self.env.load_state_dict(checkpoint["dqn"]["env"])
            self.buffer.load_state_dict(checkpoint["dqn"]["buffer"])

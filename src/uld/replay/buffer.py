"""Replay of H-step subsequences with LAP priorities (spec: Replay buffer).

Layout. Slots form a ring. An episode's transitions occupy consecutive slots; slot p holds the
observation s_t, the action a_t, and the reward r_{t+1} and terminal flag d_{t+1} that followed it.
When an episode ends, the slot after its last transition holds the true final observation (and no
transition), so each observation is stored exactly once and the dynamics target at a terminal is
the real final observation (spec: "correct" item 2).

Valid starts. A start p may be sampled when its window of H transitions p..p+H-1 and H+1
observations p..p+H lies in one episode, or when the episode terminates inside the window (the
steps after the terminal are masked by the losses). Windows that run past a time-limit truncation
are never sampled. Validity is kept incrementally: each added transition validates at most H
starts, and overwriting a slot invalidates only that slot, so adding is O(H); the sum tree is brought up to date in one batch before the next draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from uld.replay.sum_tree import SumTree


@dataclass
class Batch:
    """A batch of subsequences. Index t of `obs` is s_t; index t of the others belongs to step t -> t+1."""

    index: np.ndarray  # (B,) start slots, to update priorities
    obs: torch.Tensor  # (B, h + 1, *obs_shape)
    action: torch.Tensor  # (B, h, action_dim)
    reward: torch.Tensor  # (B, h)
    terminated: torch.Tensor  # (B, h) float, 1.0 where the episode terminated after that step


class ReplayBuffer:
    """Ring buffer of episodes with subsequence sampling and LAP priorities.

    Args:
        obs_shape: shape of one stored observation.
        action_dim: width of a stored action (continuous: scaled to [-1, 1]; discrete: one-hot).
        capacity: number of slots (transitions plus one final-observation slot per finished episode).
        horizon: H, the subsequence length every sampled start must support.
        prioritized: LAP sampling (spec: on); False samples valid starts uniformly.
        alpha: LAP exponent applied to |TD error|.
        min_priority: LAP clamp below which |TD error| does not lower a priority.
        seed: seed of the buffer's own random generator.
        obs_dtype: storage dtype of observations (float32 vectors, uint8 frames).
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_dim: int,
        capacity: int,
        horizon: int,
        *,
        prioritized: bool = True,
        alpha: float = 0.4,
        min_priority: float = 1.0,
        seed: int = 0,
        obs_dtype: np.dtype = np.float32,
    ):
        if capacity < horizon + 2:
            raise ValueError(f"capacity {capacity} must exceed the horizon {horizon} by at least 2")
        self.capacity, self.horizon = capacity, horizon
        self.prioritized, self.alpha, self.min_priority = prioritized, alpha, min_priority
        self.obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.action = np.zeros((capacity, action_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.is_transition = np.zeros(capacity, dtype=bool)
        self.valid = np.zeros(capacity, dtype=bool)
        # Empty slots start at priority 0, never at uninitialised memory (spec: "correct" item 3).
        self.priority = np.zeros(capacity, dtype=np.float64)
        self.tree = SumTree(capacity)
        self._dirty: list[int] = []  # slots whose tree leaf is stale; refreshed before the next draw
        self.rng = np.random.default_rng(seed)
        self.max_priority = 1.0
        self.ptr = 0  # slot of the next transition
        self.used = 0  # slots ever written (checkpoints store only these)
        self.episode_step = 0  # transitions of the episode in progress
        self.num_transitions = 0
        self.abs_reward_sum = 0.0
        self.ever_terminated = False

    def __len__(self) -> int:
        return self.num_transitions

    @property
    def can_sample(self) -> bool:
        """True once at least one complete subsequence is stored."""
        self._refresh_tree()
        return self.tree.total > 0

    def sampling_weight(self, index: np.ndarray | int) -> np.ndarray | float:
        """The weight each start is drawn with (its priority if valid, else 0)."""
        self._refresh_tree()
        return self.tree.get(index)

    @property
    def total_weight(self) -> float:
        self._refresh_tree()
        return self.tree.total

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())

    def reward_scale(self) -> float:
        """Mean |r| over stored transitions (spec: reward scale), floored at 1e-8."""
        return max(self.abs_reward_sum / max(self.num_transitions, 1), 1e-8)

    def add(self, obs, action, reward: float, next_obs, terminated: bool, truncated: bool) -> None:
        """Store one transition (s, a, r, s', terminated, truncated)."""
        p, nxt = self.ptr, (self.ptr + 1) % self.capacity
        self._forget(p)
        self._forget(nxt)
        self.obs[p] = obs
        self.action[p] = action
        self.reward[p] = reward
        self.terminated[p] = float(terminated)
        self.is_transition[p] = True
        self.num_transitions += 1
        self.abs_reward_sum += abs(float(reward))
        self.priority[p] = self.max_priority
        # s' goes to the next slot: the next transition's s_t when the episode goes on, the final
        # observation when it ends. Writing it now makes the window ending here complete at once.
        self.obs[nxt] = next_obs
        self.used = max(self.used, min(p + 2, self.capacity))

        k, H = self.episode_step, self.horizon
        if terminated:
            self.ever_terminated = True
            # Every start of this episode whose window reaches the terminal becomes valid.
            for start in range(p - min(k, H - 1), p + 1):
                self._validate(start % self.capacity)
        elif k >= H - 1:
            # The window that ends exactly at this step is complete (also at a truncation).
            self._validate((p - H + 1) % self.capacity)

        if terminated or truncated:
            self.reward[nxt], self.terminated[nxt] = 0.0, 0.0
            self.action[nxt] = 0.0
            self.ptr = (p + 2) % self.capacity
            self.episode_step = 0
        else:
            self.ptr = nxt
            self.episode_step = k + 1

    def _forget(self, slot: int) -> None:
        """Drop whatever transition a slot held before it is overwritten."""
        if self.is_transition[slot]:
            self.is_transition[slot] = False
            self.num_transitions -= 1
            self.abs_reward_sum -= abs(float(self.reward[slot]))
        if self.valid[slot]:
            self.valid[slot] = False
            self._dirty.append(slot)

    def _validate(self, slot: int) -> None:
        self.valid[slot] = True
        self._dirty.append(slot)

    def _refresh_tree(self) -> None:
        """Bring the sum tree's leaves up to date with `valid` and `priority` (batched: adds stay O(1))."""
        if self._dirty:
            slots = np.array(self._dirty, dtype=np.int64)
            self._dirty.clear()
            weight = self.priority[slots] if self.prioritized else np.ones(len(slots))
            self.tree.set_many(slots, np.where(self.valid[slots], weight, 0.0))

    def sample_index(self, batch_size: int) -> np.ndarray:
        """Start slots drawn in proportion to priority among valid starts."""
        self._refresh_tree()
        if self.tree.total <= 0:
            raise RuntimeError("the replay buffer holds no complete subsequence yet")
        return self.tree.sample(batch_size, self.rng)

    def gather(self, index: np.ndarray, horizon: int, device: torch.device | str = "cpu") -> Batch:
        """The h-step subsequences that start at the given slots."""
        if horizon > self.horizon:
            raise ValueError(f"horizon {horizon} exceeds the buffer's horizon {self.horizon}")
        steps = (index[:, None] + np.arange(horizon + 1)) % self.capacity
        trans = steps[:, :horizon]
        return Batch(
            index=index,
            obs=torch.from_numpy(self.obs[steps]).to(device),
            action=torch.from_numpy(self.action[trans]).to(device),
            reward=torch.from_numpy(self.reward[trans]).to(device),
            terminated=torch.from_numpy(self.terminated[trans]).to(device),
        )

    def sample(self, batch_size: int, horizon: int, device: torch.device | str = "cpu") -> Batch:
        """Sample a batch of h-step subsequences (h <= H)."""
        return self.gather(self.sample_index(batch_size), horizon, device)

    def update_priorities(self, index: np.ndarray, td_error: np.ndarray) -> None:
        """LAP: priority = max(|TD error|, min_priority) ** alpha (spec: Update schedule)."""
        priority = np.maximum(np.abs(np.asarray(td_error, dtype=np.float64)), self.min_priority) ** self.alpha
        if len(index) == 0:
            return
        self.priority[index] = priority
        self.max_priority = max(self.max_priority, float(priority.max()))
        if self.prioritized:
            self._refresh_tree()
            self.tree.set_many(index, priority * self.valid[index])

    _ARRAYS = ("obs", "action", "reward", "terminated", "is_transition", "valid", "priority")
    _SCALARS = ("max_priority", "ptr", "used", "episode_step", "num_transitions", "abs_reward_sum",
                "ever_terminated")

    def state_dict(self) -> dict:
        """Everything needed to continue sampling exactly as before: the written slots (views, not
        copies), counters and the generator. The sum tree is rebuilt from `valid` and `priority`."""
        state = {name: getattr(self, name)[: self.used] for name in self._ARRAYS}
        state.update({name: getattr(self, name) for name in self._SCALARS})
        state["rng"] = self.rng.bit_generator.state
        return state

    def load_state_dict(self, state: dict) -> None:
        used = int(state["used"])
        for name in self._ARRAYS:
            array = getattr(self, name)
            array[:used] = np.asarray(state[name])
            array[used:] = 0
        for name in self._SCALARS:
            setattr(self, name, type(getattr(self, name))(state[name]))
        self.rng.bit_generator.state = state["rng"]
        self.tree = SumTree(self.capacity)
        self._dirty = list(range(used))
        self._refresh_tree()

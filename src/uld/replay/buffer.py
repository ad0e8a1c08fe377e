"""Replay of H-step subsequences with LAP priorities (docs/algorithm.md, Replay), held on the training device.

Layout. Slots form a ring. An episode's transitions occupy consecutive slots; slot p holds the
observation s_t, the action a_t, and the reward r_{t+1} and terminal flag d_{t+1} that followed it.
When an episode ends, the slot after its last transition holds the true final observation (and no
transition), so each observation is stored exactly once and the dynamics target at a terminal is
the real final observation (docs/algorithm.md, difference 2).

Valid starts. A start p may be sampled when its window of H transitions p..p+H-1 and H+1
observations p..p+H lies in one episode, or when the episode terminates inside the window (the
steps after the terminal are masked by the losses). Windows that run past a time-limit truncation
are never sampled. Validity is kept incrementally: each added transition validates at most H
starts, and overwriting a slot invalidates only that slot, so adding is O(H); the sum tree is
brought up to date in one batch before the next draw.

Device. Every per-slot array, the sum tree, the running maximum priority, the count and |r| sum of
the overwritten transitions, the "ever terminated" flag and the sampling generator are tensors on
one device (the agent's). Drawing, gathering and the priority update are tensor operations with
fixed shapes, so an update runs them without synchronising with the host, or replays them inside a
CUDA graph. The host keeps only what the environment tells it: the write position, the step in the
episode, the count and |r| sum of the transitions added, and the slots whose sampling weight changed
since the last draw.

Collection. `add` is the only host-to-device traffic, and it never reads a device value back. What
an add changes follows from what the environment reported and is decided on the host; the values
wait there (`_Stage`) and go to the device in one batch before the next read of the buffer (a draw,
a priority update, a checkpoint, or any of the public arrays), at most STAGE_LIMIT adds or about half
the ring at a time. A batch applies the forgets of overwritten slots to the contents from before it,
then writes the new slots, then marks the starts they complete. Within half a ring, no slot that a
batch forgets was written or validated earlier in the same batch, so this is the result of one add
at a time (tests/test_device_replay.py compares both tensor for tensor). Slots never written hold
nothing to forget: until the ring wraps, forgetting costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from uld.devices import load_generator_state, new_generator
from uld.errors import UldError
from uld.replay.faded import FadedTree
from uld.replay.sum_tree import SumTree


@dataclass
class Batch:
    """A batch of subsequences. Index t of `obs` is s_t; index t of the others belongs to step t -> t+1."""

    index: Tensor  # (B,) int64 start slots, to update priorities
    obs: Tensor  # (B, h + 1, *obs_shape)
    action: Tensor  # (B, h, action_dim)
    reward: Tensor  # (B, h)
    terminated: Tensor  # (B, h) float, 1.0 where the episode terminated after that step


def _last_occurrence(index: Tensor) -> Tensor:
    """For each position i of `index`, the last position j with index[j] == index[i].

    Lets a batch write repeated slots in a defined order (the last value wins, as sequential writes
    would) with tensor operations only: every occurrence then writes the same value. Computed by
    sorting, O(B log B) with fixed shapes and no host sync (a B x B comparison would need B^2 bytes:
    80 GB for a batch of 100,000).
    """
    sorted_index, order = torch.sort(index)
    run_start = torch.ones_like(sorted_index, dtype=torch.bool)
    run_start[1:] = sorted_index[1:] != sorted_index[:-1]
    run = run_start.cumsum(0) - 1  # the run of equal values each sorted position belongs to
    last_of_run = torch.zeros_like(order).scatter_reduce(0, run, order, "amax", include_self=False)
    last = torch.empty_like(order)
    last[order] = last_of_run[run]
    return last


STAGE_LIMIT = 1024
"""Most adds held on the host before they are written to the device."""


@dataclass
class _Stage:
    """Adds not yet written to the device: per slot, the last value written (as sequential writes leave it)."""

    adds: int = 0
    obs: dict = field(default_factory=dict)  # slot -> observation
    transitions: dict = field(default_factory=dict)  # slot -> (action, reward, terminated), None: final observation
    forget: dict = field(default_factory=dict)  # slot -> how far back its observation must reach to be forgotten
    valid: list = field(default_factory=list)  # starts that became valid
    back: dict = field(default_factory=dict)  # slot -> back-reference of its frame stack (FrameStackBuffer)
    terminal: bool = False


class ReplayBuffer:
    """Ring buffer of episodes with subsequence sampling and LAP priorities, on one torch device.

    Args:
        obs_shape: shape of one stored observation.
        action_dim: width of a stored action (continuous: scaled to [-1, 1]; discrete: one-hot).
        capacity: number of slots (transitions plus one final-observation slot per finished episode).
        horizon: H, the subsequence length every sampled start must support.
        prioritized: LAP sampling (docs/algorithm.md, Replay); False samples valid starts uniformly.
        alpha: LAP exponent applied to |TD error|.
        min_priority: LAP clamp below which |TD error| does not lower a priority.
        fade: faded sampling (uld/replay/faded.py): weights times max(fade^age, fade_floor); None or 1: none.
        fade_floor: the floor of the fade factor.
        seed: seed of the buffer's own random generator (a torch.Generator on `device`).
        obs_dtype: storage dtype of observations (float32 vectors, uint8 frames).
        device: where everything is stored and sampled (the agent's device).
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
        fade: float | None = None,
        fade_floor: float = 0.1,
        seed: int = 0,
        obs_dtype: torch.dtype | np.dtype | type = torch.float32,
        device: torch.device | str = "cpu",
    ):
        if capacity < horizon + 2:
            raise ValueError(f"capacity {capacity} must exceed the horizon {horizon} by at least 2")
        self.capacity, self.horizon = capacity, horizon
        self.prioritized, self.alpha, self.min_priority = prioritized, alpha, min_priority
        self.device = torch.device(device)
        if not isinstance(obs_dtype, torch.dtype):
            obs_dtype = torch.from_numpy(np.zeros(0, dtype=obs_dtype)).dtype
        zeros = lambda *shape, dtype=torch.float32: _zeros(shape, dtype, self.device)  # noqa: E731
        self._obs = zeros(capacity, *obs_shape, dtype=obs_dtype)
        self._action = zeros(capacity, action_dim)
        self._reward = zeros(capacity)
        self._terminated = zeros(capacity)
        self._is_transition = zeros(capacity, dtype=torch.bool)
        self._valid = zeros(capacity, dtype=torch.bool)
        # Empty slots start at priority 0, never at uninitialised memory (docs/algorithm.md, difference 3).
        self._priority = zeros(capacity, dtype=torch.float64)
        self.max_priority = torch.ones((), dtype=torch.float64, device=self.device)
        # Stored transitions and their sum |r| = what was added (known on the host) minus what was
        # overwritten (known only on the device, from the slots' contents).
        self.transitions_added, self.abs_reward_added = 0, 0.0
        self._transitions_forgotten = zeros(dtype=torch.int64)
        self._abs_reward_forgotten = zeros(dtype=torch.float64)
        self._ever_terminated = zeros(dtype=torch.bool)
        self._fade = FadedTree(capacity, fade, fade_floor, self.device) if fade is not None and fade < 1 else None
        self.tree: SumTree | FadedTree = self._fade or SumTree(capacity, self.device)
        self.generator = new_generator(self.device, seed)
        self._dirty: list[int] = []  # slots whose tree leaf is stale; refreshed before the next draw
        # The valid starts as the host knows them (a subset of `valid`: see can_sample), and how many.
        self._valid_on_host = np.zeros(capacity, dtype=bool)
        self._num_valid_on_host = 0
        self._offsets = torch.arange(horizon + 1, device=self.device)  # ring offsets of a window
        self.ptr = 0  # slot of the next transition
        self.used = 0  # slots ever written (checkpoints store only these)
        self.episode_step = 0  # transitions of the episode in progress
        self._stage = _Stage()
        # Staged adds may span at most this many slots less than the ring (module docstring, Collection).
        self._stage_limit = max(1, min(STAGE_LIMIT, (capacity - horizon - self._history() - 1) // 2))

    def _history(self) -> int:
        """How far back an observation reaches into earlier slots (frame stacks), plus one."""
        return 1

    # The stored arrays, always current: reading one first writes the staged adds to the device.
    obs = property(lambda self: self._flushed()._obs)
    action = property(lambda self: self._flushed()._action)
    reward = property(lambda self: self._flushed()._reward)
    terminated = property(lambda self: self._flushed()._terminated)
    is_transition = property(lambda self: self._flushed()._is_transition)
    valid = property(lambda self: self._flushed()._valid)
    priority = property(lambda self: self._flushed()._priority)
    ever_terminated = property(lambda self: self._flushed()._ever_terminated)
    transitions_forgotten = property(lambda self: self._flushed()._transitions_forgotten)
    abs_reward_forgotten = property(lambda self: self._flushed()._abs_reward_forgotten)

    def __len__(self) -> int:
        """Transitions stored (reads a device value: for logging, not inside an update)."""
        return int(self.num_transitions)

    @property
    def num_transitions(self) -> Tensor:
        """Transitions stored, a 0-d device tensor."""
        return self.transitions_added - self.transitions_forgotten

    @property
    def abs_reward_sum(self) -> Tensor:
        """Sum of |r| over the stored transitions, a 0-d float64 device tensor."""
        return self.abs_reward_added - self.abs_reward_forgotten

    @property
    def can_sample(self) -> bool:
        """True once at least one complete subsequence is stored with a positive sampling weight.

        Known on the host, without reading the device, whenever the host's record of valid starts holds
        one: that record is a subset of `valid` (a start is entered when an add completes it and removed
        whenever its slot may be forgotten), and every valid start weighs at least min_priority ** alpha
        > 0 (or 1 without priorities). Otherwise the tree's root is read back: before the first
        subsequence is complete, or with min_priority 0, where a start's weight can be 0.
        """
        if self._num_valid_on_host > 0 and (not self.prioritized or self.min_priority > 0):
            return True
        self.refresh()
        return bool(self.tree.total > 0)

    def sampling_weight(self, index) -> Tensor:
        """The weight each start is drawn with (its priority if valid, else 0)."""
        self.refresh()
        return self.tree.get(self._as_index(index))

    @property
    def total_weight(self) -> Tensor:
        self.refresh()
        return self.tree.total

    def reward_scale(self) -> Tensor:
        """Mean |r| over stored transitions (docs/algorithm.md, Update schedule), floored at 1e-8: a 0-d float64 tensor."""
        return (self.abs_reward_sum / self.num_transitions.clamp(min=1)).clamp(min=1e-8)

    def _as_index(self, index) -> Tensor:
        if isinstance(index, Tensor):  # the buffer's own draws are already int64 on its device
            return index if index.device == self.device and index.dtype == torch.int64 else \
                index.to(self.device, torch.int64)
        return torch.as_tensor(np.asarray(index, dtype=np.int64), device=self.device)

    def _tensor(self, values, dtype: torch.dtype) -> Tensor:
        """Host values as a tensor on the device: the one host-to-device copy of collection."""
        return torch.as_tensor(np.asarray(values), dtype=dtype).to(self.device, non_blocking=True)

    # ---- collection ---------------------------------------------------------------------------

    def add(self, obs, action, reward: float, next_obs, terminated: bool, truncated: bool) -> None:
        """Store one transition (s, a, r, s', terminated, truncated).

        The bookkeeping is decided here, on the host, from what the environment reported; the
        writes wait on the host until the next read of the buffer (module docstring, Collection).
        """
        if self._stage.adds >= self._stage_limit:
            self._flush()
        stage = self._stage
        stage.adds += 1
        p, nxt = self.ptr, (self.ptr + 1) % self.capacity
        self._forget(p)
        self._forget(nxt)
        stage.obs[p] = np.array(obs, copy=True)
        # s' goes to the next slot: the next transition's s_t when the episode goes on, the final
        # observation when it ends. Writing it now makes the window ending here complete at once.
        stage.obs[nxt] = np.array(next_obs, copy=True)
        stage.transitions[p] = (np.array(action, dtype=np.float32, copy=True), float(reward), float(terminated))
        self.transitions_added += 1
        self.abs_reward_added += abs(float(reward))
        stage.terminal |= bool(terminated)
        self.used = max(self.used, min(p + 2, self.capacity))
        if self._fade is not None:  # the insertion ages every slot; the one that reaches the floor changes tree
            self._dirty.extend(self._fade.insert(p))

        k, H = self.episode_step, self.horizon
        if terminated:
            # Every start of this episode whose window reaches the terminal becomes valid.
            starts = [(p - i) % self.capacity for i in range(min(k, H - 1) + 1)]
        elif k >= H - 1:
            # The window that ends exactly at this step is complete (also at a truncation).
            starts = [(p - H + 1) % self.capacity]
        else:
            starts = []
        stage.valid.extend(starts)
        for start in starts:
            if not self._valid_on_host[start]:
                self._valid_on_host[start] = True
                self._num_valid_on_host += 1

        if terminated or truncated:
            stage.transitions[nxt] = None  # the final observation's slot holds no transition
            self.ptr = (p + 2) % self.capacity
            self.episode_step = 0
        else:
            self.ptr = nxt
            self.episode_step = k + 1

    def _forget(self, slot: int, reach: int = 0) -> None:
        """Drop whatever transition and start a slot held before it is overwritten; with `reach` > 0,
        only if the observation stored there reaches at least `reach` slots back (frame stacks).

        A slot never written holds nothing. Otherwise its contents are on the device: the forget is
        done there, from the contents before the staged adds, at the next flush.
        """
        if slot < self.used:
            forget = self._stage.forget
            forget[slot] = min(reach, forget.get(slot, reach))
            if self._valid_on_host[slot]:  # whether it goes is known on the device only: assume it does
                self._valid_on_host[slot] = False
                self._num_valid_on_host -= 1

    def _flushed(self) -> ReplayBuffer:
        if self._stage.adds:
            self._flush()
        return self

    def _flush(self) -> None:
        """Write the staged adds to the device: forgets (on the contents before them), then the new
        slots, then the starts they complete; the slots whose sampling weight changed become stale."""
        stage, self._stage = self._stage, _Stage()
        if stage.forget:
            slots = self._tensor(list(stage.forget), torch.int64)
            reach = self._tensor(list(stage.forget.values()), torch.int64)
            gone = self._reaches_back(slots, reach)
            lost = self._is_transition[slots] & gone
            self._transitions_forgotten += lost.sum()
            self._abs_reward_forgotten += (self._reward[slots].abs().double() * lost).sum()
            self._is_transition[slots] = self._is_transition[slots] & ~gone
            self._valid[slots] = self._valid[slots] & ~gone
            self._dirty.extend(stage.forget)
        slots = self._tensor(list(stage.obs), torch.int64)
        self._obs[slots] = self._tensor(np.stack(list(stage.obs.values())), self._obs.dtype)
        transitions = {slot: t for slot, t in stage.transitions.items() if t is not None}
        if transitions:
            slots = self._tensor(list(transitions), torch.int64)
            action, reward, terminated = zip(*transitions.values())
            self._action[slots] = self._tensor(np.stack(action), torch.float32)
            self._reward[slots] = self._tensor(reward, torch.float32)
            self._terminated[slots] = self._tensor(terminated, torch.float32)
            self._is_transition[slots] = True
            self._priority[slots] = self.max_priority  # LAP: new transitions enter at the maximum priority
        finals = [slot for slot, t in stage.transitions.items() if t is None]
        if finals:
            slots = self._tensor(finals, torch.int64)
            self._action[slots] = 0.0
            self._reward[slots] = 0.0
            self._terminated[slots] = 0.0
        if stage.valid:
            self._valid[self._tensor(stage.valid, torch.int64)] = True
            self._dirty.extend(stage.valid)
        if stage.terminal:
            self._ever_terminated.fill_(True)

    def _reaches_back(self, slots: Tensor, reach: Tensor) -> Tensor:
        """Which of the slots to forget, given how far back their observation must reach (all, here)."""
        return torch.ones_like(slots, dtype=torch.bool)

    def refresh(self) -> None:
        """Write the staged adds, then bring the sum tree's leaves up to date with `valid` and
        `priority` (batched: adds stay O(1)).

        An update calls this before it draws; with graphs, it runs before the captured updates, which
        then find nothing stale (the slot list varies in length, which a graph cannot replay).
        """
        self._flushed()
        if self._dirty:
            slots = self._tensor(self._dirty, torch.int64)
            self._dirty.clear()
            weight = self._priority[slots] if self.prioritized else torch.ones_like(self._priority[slots])
            self.tree.set(slots, torch.where(self._valid[slots], weight, 0.0))

    # ---- sampling -----------------------------------------------------------------------------

    def sample_index(self, batch_size: int) -> Tensor:
        """Start slots drawn in proportion to priority among valid starts; raises when there are none."""
        if not self.can_sample:
            raise RuntimeError("the replay buffer holds no complete subsequence yet")
        return self.draw(batch_size)

    def draw(self, batch_size: int) -> Tensor:
        """Start slots drawn in proportion to priority, with no check that any start is valid (that
        check reads a device value; an update relies on `can_sample` having been checked before)."""
        self.refresh()
        return self.tree.sample(batch_size, self.generator)

    def gather(self, index, horizon: int) -> Batch:
        """The h-step subsequences that start at the given slots."""
        if horizon > self.horizon:
            raise ValueError(f"horizon {horizon} exceeds the buffer's horizon {self.horizon}")
        index = self._as_index(index)
        steps = (index[:, None] + self._offsets[: horizon + 1]) % self.capacity
        trans = steps[:, :horizon]
        return Batch(index=index, obs=self.obs[steps], action=self.action[trans], reward=self.reward[trans],
                     terminated=self.terminated[trans])

    def sample(self, batch_size: int, horizon: int) -> Batch:
        """Sample a batch of h-step subsequences (h <= H), on the buffer's device, without a host sync."""
        return self.gather(self.draw(batch_size), horizon)

    def update_priorities(self, index, td_error) -> None:
        """LAP: priority = max(|TD error|, min_priority) ** alpha (docs/algorithm.md, Priorities).

        Where a start appears more than once in a batch, its last TD error sets its priority; the
        maximum priority, which new transitions enter with, is over every error of the batch (as
        before, when repeated starts were written in turn), and stays on the device.
        """
        self._flushed()  # staged transitions enter at the maximum priority from before this update
        index = self._as_index(index)
        if index.shape[0] == 0:
            return
        td_error = torch.as_tensor(td_error, device=self.device)
        priority = td_error.double().abs().clamp(min=self.min_priority) ** self.alpha
        torch.maximum(self.max_priority, priority.max(), out=self.max_priority)  # over every error seen
        priority = priority[_last_occurrence(index)]
        self.priority[index] = priority
        if self.prioritized:
            self.tree.set(index, torch.where(self.valid[index], priority, 0.0))

    def update_written_tensors(self) -> list[Tensor]:
        """The tensors update_priorities writes in place (with the generator, what an update changes here):
        what a failed CUDA graph capture must restore (uld/agents/uld/graphs.py)."""
        return [self._priority, *self.tree.written_tensors(), self.max_priority]

    # ---- state --------------------------------------------------------------------------------

    _ARRAYS = ("obs", "action", "reward", "terminated", "is_transition", "valid", "priority")
    _TENSORS = ("max_priority", "transitions_forgotten", "abs_reward_forgotten", "ever_terminated")
    # state_dict writes the staged adds first (through the properties); load_state_dict writes into
    # the tensors behind them.
    _COUNTERS = ("ptr", "used", "episode_step", "transitions_added", "abs_reward_added")

    def state_dict(self) -> dict:
        """Everything needed to continue sampling exactly as before, as CPU tensors: the written slots
        (on a CPU, tensors over the same memory, not copies), the device scalars, counters and the
        generator's state. The sum tree is rebuilt from `valid` and `priority`."""
        state = {name: _cpu_prefix(getattr(self, name), self.used) for name in self._ARRAYS}
        state.update({name: getattr(self, name).cpu().clone() for name in self._TENSORS})
        state.update({name: getattr(self, name) for name in self._COUNTERS})
        state["generator"] = self.generator.get_state()
        if self._fade is not None:
            state["fade"] = self._fade.state_dict(self.used)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned, writing into this buffer's tensors in place."""
        if "generator" not in state:
            raise UldError("this checkpoint was written by a uld whose replay lived in numpy on the host; it cannot "
                           "continue with the device replay: finish it with the uld version that started it, or "
                           "start a new run")
        self._stage, self._dirty = _Stage(), []
        used = int(state["used"])
        for name in self._ARRAYS:
            tensor = getattr(self, "_" + name)
            tensor[:used] = torch.as_tensor(np.asarray(state[name]) if not isinstance(state[name], Tensor)
                                            else state[name]).to(self.device, tensor.dtype)
            tensor[used:] = 0
        for name in self._TENSORS:
            getattr(self, name if name == "max_priority" else "_" + name).copy_(torch.as_tensor(state[name]))
        for name in self._COUNTERS:
            setattr(self, name, type(getattr(self, name))(state[name]))
        self._valid_on_host[:] = False
        self._valid_on_host[:used] = np.asarray(state["valid"], dtype=bool)
        self._num_valid_on_host = int(self._valid_on_host.sum())
        load_generator_state(self.generator, state["generator"])  # exact on the device that saved it
        if self._fade is not None:
            if "fade" not in state:
                raise UldError("this checkpoint's replay has no fade ages, so it cannot continue with faded sampling: "
                               "resume it with the fade it was started with (1: none), or start a new run")
            self._fade.load_state_dict(state["fade"])
        weight = self._priority if self.prioritized else torch.ones_like(self._priority)
        self.tree.rebuild(torch.where(self._valid, weight, 0.0))


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Zeros on the device. On a CPU through numpy, whose zeros are mapped lazily: a large replay takes
    memory as it fills, not all at once when it is made (torch.zeros would write every page)."""
    if device.type == "cpu":
        return torch.from_numpy(np.zeros(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
    return torch.zeros(shape, dtype=dtype, device=device)


def _cpu_prefix(tensor: Tensor, used: int) -> Tensor:
    """tensor[:used] on the CPU. On a CPU the result shares the buffer's memory but owns a storage of
    just that prefix (a plain slice would make torch.save write the whole storage)."""
    if tensor.device.type != "cpu":
        return tensor[:used].cpu()
    return torch.from_numpy(tensor[:used].numpy())

"""Replay for pixel observations: each frame stored once, stacks rebuilt from indices (docs/algorithm.md, Replay).

A pixel observation is a stack of the episode's last ``history`` frames, (history * C, H, W)
uint8, with the episode's first frame repeated at its start (uld.envs.dmc.FrameHistory). Storing
stacks would keep every frame ``history`` times. Here slot p keeps only the newest frame of its
observation, (C, H, W); everything else is ReplayBuffer's layout and bookkeeping, unchanged: slot p
holds s_t, a_t, r_{t+1}, d_{t+1}, a finished episode's final observation takes one more slot, and
validity, LAP priorities and the reward scale are ReplayBuffer's own code.

Rebuilding. ``back[p]`` = min(t, history - 1) for the observation s_t stored at slot p: how many
earlier slots of the same episode its stack reaches. The stack of slot p is the frames of slots
p - (history-1) .. p, each offset clamped to at least -back[p], so an episode's first frame stands
in for the frames before it, exactly as the env produced them. A batch of h-step subsequences
needs its h + 1 stacks, which overlap: the frames of slots p - (history-1) .. p + h suffice, and
the stacks are views into them (``Batch.obs`` shares memory between consecutive steps).

Overwriting. A stack reaches up to history - 1 slots back, so when the ring overwrites slots p and
p + 1, the oldest observations just ahead of them can lose frames of their stacks. Those slots
(at most history - 1 of them) are forgotten at once, as if already overwritten.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from uld.errors import UldError
from uld.replay.buffer import Batch, ReplayBuffer, _zeros

MEMORY_RESERVE = 1 << 30
"""Bytes left free beside the buffer for the networks, batches and the environments."""


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes: what can be allocated without swapping (None off Linux)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gigabytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


class FrameStackBuffer(ReplayBuffer):
    """ReplayBuffer for stacked pixel observations that stores each frame once.

    Same public API as ReplayBuffer: ``add`` takes whole stacks (history * C, H, W), ``gather`` and
    ``sample`` return them. Raises UldError before allocating when the buffer cannot fit in the
    memory available on its device.

    Args:
        obs_shape: shape of one observation stack, (history * C, H, W).
        action_dim, capacity, horizon: as for ReplayBuffer.
        history: frames per observation.
        **kwargs: the rest of ReplayBuffer's options (prioritized, alpha, min_priority, seed, device).
    """

    _ARRAYS = ReplayBuffer._ARRAYS + ("back",)

    def __init__(self, obs_shape: tuple[int, int, int], action_dim: int, capacity: int, horizon: int, *,
                 history: int, device: torch.device | str = "cpu", **kwargs):
        stacked_channels, height, width = obs_shape
        if history < 1 or stacked_channels % history:
            raise ValueError(f"{stacked_channels} channels do not split into a history of {history} frames")
        if history > 256:
            raise ValueError(f"history {history} does not fit the uint8 back-references")
        if capacity <= horizon + history:
            raise ValueError(f"capacity {capacity} must exceed the horizon {horizon} plus the history {history}")
        self.history = history
        self.frame_shape = (stacked_channels // history, height, width)
        check_memory(self.frame_shape, action_dim, capacity, torch.device(device))
        super().__init__(self.frame_shape, action_dim, capacity, horizon, obs_dtype=torch.uint8, device=device,
                         **kwargs)
        self._back = _zeros((capacity,), torch.uint8, self.device)
        self._frame_offsets = torch.arange(1 - history, horizon + 1, device=self.device)  # s_0's stack .. s_H

    back = property(lambda self: self._flushed()._back)

    def _history(self) -> int:
        return self.history

    def add(self, obs, action, reward: float, next_obs, terminated: bool, truncated: bool) -> None:
        """Store one transition (s, a, r, s', terminated, truncated); s and s' are whole stacks."""
        if self._stage.adds >= self._stage_limit:
            self._flush()
        channels = self.frame_shape[0]
        obs, next_obs = np.asarray(obs), np.asarray(next_obs)
        p, nxt, step = self.ptr, (self.ptr + 1) % self.capacity, self.episode_step
        if step == 0 and not (obs.reshape(self.history, -1) == obs[-channels:].reshape(1, -1)).all():
            raise ValueError("the first observation of an episode must repeat its first frame in every position")
        self._forget_broken_stacks(last_overwritten=nxt)
        super().add(obs[-channels:], action, reward, next_obs[-channels:], terminated, truncated)
        self._stage.back[p] = min(step, self.history - 1)
        self._stage.back[nxt] = min(step + 1, self.history - 1)

    def _forget_broken_stacks(self, last_overwritten: int) -> None:
        """Forget the old slots just ahead of the writer whose stacks reach into the slots it overwrites:
        the slot `distance` ahead is forgotten when its back-reference is at least `distance`."""
        for distance in range(1, self.history):  # its stack reaches back to last_overwritten (or further)
            self._forget((last_overwritten + distance) % self.capacity, reach=distance)

    def _reaches_back(self, slots: Tensor, reach: Tensor) -> Tensor:
        return self._back[slots] >= reach

    def _flush(self) -> None:
        back = self._stage.back
        super()._flush()  # forgets read the back-references from before the staged adds
        if back:
            self._back[self._tensor(list(back), torch.int64)] = self._tensor(list(back.values()), torch.uint8)

    def gather(self, index, horizon: int) -> Batch:
        """The h-step subsequences that start at the given slots, with their observation stacks rebuilt.

        ``obs`` is (B, h + 1, history * C, H, W) uint8: a view into the (B, h + history, C, H, W)
        frames the subsequences need, so consecutive observations share memory. Read it, do not write it.
        """
        if horizon > self.horizon:
            raise ValueError(f"horizon {horizon} exceeds the buffer's horizon {self.horizon}")
        index = self._as_index(index)
        offsets = self._frame_offsets[: horizon + self.history]  # frames of s_0's stack, then of s_1 .. s_h
        offsets = torch.maximum(offsets, -self.back[index].long()[:, None])  # the episode's first frame
        frames = self.obs[(index[:, None] + offsets) % self.capacity]
        # (B, h + history, C, H, W) -> windows of `history` frames: (B, h + 1, C, H, W, history).
        stacks = frames.unfold(1, self.history, 1).permute(0, 1, 5, 2, 3, 4)
        trans = (index[:, None] + self._offsets[:horizon]) % self.capacity
        return Batch(index=index, obs=stacks.flatten(2, 3), action=self.action[trans], reward=self.reward[trans],
                     terminated=self.terminated[trans])

    def stack(self, slot: int) -> Tensor:
        """The observation stored at ``slot``, rebuilt as the env produced it: (history * C, H, W)."""
        offsets = torch.clamp(self._frame_offsets[: self.history], min=-int(self.back[slot]))
        return self.obs[(slot + offsets) % self.capacity].reshape(-1, *self.frame_shape[1:])


def bytes_per_slot(frame_shape: tuple[int, ...], action_dim: int) -> int:
    """Memory of one FrameStackBuffer slot: the frame, the action and the per-slot bookkeeping."""
    frame = int(np.prod(frame_shape))  # uint8
    action, reward, terminated = 4 * action_dim, 4, 4  # float32
    is_transition, valid, back, priority = 1, 1, 1, 8
    return frame + action + reward + terminated + is_transition + valid + back + priority


def buffer_bytes(frame_shape: tuple[int, ...], action_dim: int, capacity: int) -> int:
    """Memory a FrameStackBuffer of ``capacity`` slots allocates, its LAP sum tree included."""
    tree_leaves = 1 << max(1, (capacity - 1).bit_length())
    return capacity * bytes_per_slot(frame_shape, action_dim) + 2 * tree_leaves * 8


def check_memory(frame_shape: tuple[int, ...], action_dim: int, capacity: int,
                 device: torch.device = torch.device("cpu"), *, cuda=torch.cuda) -> None:
    """Raise UldError when a buffer of ``capacity`` slots would not fit in the memory available now
    (host memory for a CPU buffer, the GPU's free memory for a CUDA one; cuda: torch.cuda, a seam).

    Host memory is allocated lazily, so without this a too-large buffer would fail (or swap) hours
    into a run, once it filled up, instead of at the start.
    """
    available = cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    needed = buffer_bytes(frame_shape, action_dim, capacity)
    if available is None or needed + MEMORY_RESERVE <= available:
        return
    per_slot = bytes_per_slot(frame_shape, action_dim) + 16  # + the sum tree's share
    fits = max(0, (available - MEMORY_RESERVE) // per_slot)
    fits = int(fits // 10_000 * 10_000) if fits >= 10_000 else int(fits)
    raise UldError(
        f"The replay buffer needs {_gigabytes(needed)} for {capacity:,} slots of {frame_shape} uint8 frames "
        f"but only {_gigabytes(available)} of memory is available on {device.type} (of which "
        f"{_gigabytes(MEMORY_RESERVE)} is kept for the rest of the run); lower --uld.buffer-capacity to {fits:,} or less."
    )

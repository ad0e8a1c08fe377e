"""The replay on the training device (issue 13): tensors, not numpy; drawn by a torch.Generator; collected
without reading the device back; LAP frequencies, repeated priority updates, frame stacks and the exact
restore of the generator and the tree, against hand-computed values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_sync_free import host_reads_refused
from uld.replay.buffer import ReplayBuffer
from uld.replay.frames import FrameStackBuffer


def obs_id(episode: int, t: int) -> np.ndarray:
    return np.array([100.0 * episode + t], dtype=np.float32)


def add_episode(buffer: ReplayBuffer, episode: int, length: int, end: str, rewards=None) -> None:
    for t in range(length):
        last = t == length - 1
        reward = float(t + 1) if rewards is None else float(rewards[t])
        buffer.add(obs_id(episode, t), np.array([t / 10.0], dtype=np.float32), reward, obs_id(episode, t + 1),
                   terminated=last and end == "terminated", truncated=last and end == "truncated")


def test_every_array_counter_and_the_generator_live_on_the_buffer_device() -> None:
    buffer = ReplayBuffer((1,), 1, 20, 3, seed=0)
    add_episode(buffer, 0, 5, "terminated")
    for name in ("obs", "action", "reward", "terminated", "is_transition", "valid", "priority", "max_priority",
                 "num_transitions", "abs_reward_sum", "ever_terminated", "reward_scale"):
        value = getattr(buffer, name)
        value = value() if callable(value) else value
        assert isinstance(value, torch.Tensor), name
        assert value.device == buffer.device, name
    assert buffer.generator.device == buffer.device
    batch = buffer.sample(4, 3)
    for tensor in (batch.index, batch.obs, batch.action, batch.reward, batch.terminated):
        assert tensor.device == buffer.device
    assert batch.index.dtype == torch.int64
    # Reward scale (1 + 2 + 3 + 4 + 5) / 5 = 3 and the done gate are device tensors too.
    assert buffer.reward_scale().device == buffer.device and buffer.reward_scale().item() == 3.0
    assert buffer.ever_terminated.item() is True


@pytest.mark.parametrize("frames", [False, True], ids=["vector", "frames"])
def test_add_sample_and_priority_updates_never_read_the_device_back(frames: bool) -> None:
    """Collection writes and computes on the device; sampling and the priority update read nothing back."""
    if frames:
        buffer = FrameStackBuffer((3, 2, 2), 1, 12, 3, history=3, seed=0)
        stack = lambda value: np.full((3, 2, 2), value, dtype=np.uint8)  # noqa: E731
    else:
        buffer = ReplayBuffer((1,), 1, 12, 3, seed=0)
        stack = lambda value: np.array([value], dtype=np.float32)  # noqa: E731
    with host_reads_refused(transfers=False):  # add copies the env's values to the device: allowed
        for t in range(30):  # wraps the ring twice, with terminals and truncations
            end = t % 7 == 6
            buffer.add(stack(t), np.array([0.5]), 1.0, stack(t + 1), terminated=end and t < 14,
                       truncated=end and t >= 14)
            if end:
                buffer.add(stack(50 + t), np.array([0.5]), 1.0, stack(50 + t), False, False)
        buffer.refresh()
    with host_reads_refused():
        batch = buffer.sample(8, 3)
        buffer.update_priorities(batch.index, batch.reward.sum(1) * 3)
    assert buffer.can_sample and len(buffer) > 0


def test_repeated_starts_in_a_priority_update_take_their_last_td_error() -> None:
    buffer = ReplayBuffer((1,), 1, 20, 3, seed=0)
    add_episode(buffer, 0, 6, "running")  # starts 0..3 valid
    # start 1 appears three times: its last |TD| (32 -> 32 ** 0.4 = 4) counts, as with sequential writes.
    buffer.update_priorities(torch.tensor([1, 2, 1, 0, 1]), torch.tensor([-243.0, 1.0, 1024.0, 0.5, -32.0]))
    assert buffer.priority[:4].tolist() == pytest.approx([1.0, 4.0, 1.0, 1.0], rel=1e-12)
    assert buffer.sampling_weight(torch.arange(6)).tolist() == pytest.approx([1.0, 4.0, 1.0, 1.0, 0.0, 0.0])
    assert buffer.total_weight.item() == pytest.approx(7.0, rel=1e-12)
    # The maximum priority is over every error of the batch: 1024 ** 0.4 = 16 was overwritten but seen.
    assert buffer.max_priority.item() == pytest.approx(16.0, rel=1e-12)
    add_episode(buffer, 1, 1, "running")  # slot 6 enters with the maximum
    assert buffer.priority[6].item() == pytest.approx(16.0, rel=1e-12)


def test_sampling_frequencies_are_proportional_to_priority_within_four_standard_errors() -> None:
    """Eight valid starts with priorities 1..8 (sum 36); 200,000 draws. Each start's frequency must lie
    within 4 standard errors sqrt(p (1 - p) / N) of p = priority / 36 (at most 0.0042 here): a false
    alarm has probability below 1e-3 over the eight starts."""
    buffer = ReplayBuffer((1,), 1, 16, 3, seed=11)
    add_episode(buffer, 0, 10, "truncated")  # starts 0..7 valid; slots 8, 9 transitions; final obs in 10
    assert np.flatnonzero(buffer.valid).tolist() == list(range(8))
    priorities = torch.arange(1, 9, dtype=torch.float64)
    buffer.update_priorities(torch.arange(10), torch.cat([priorities ** 2.5, torch.tensor([1e6, 1e6])]))
    draws = buffer.sample_index(200_000)
    counts = torch.bincount(draws, minlength=16).double()
    assert counts[8:].sum() == 0  # slots 8, 9 have a high priority but are not valid starts
    p = priorities / 36
    tolerance = 4 * (p * (1 - p) / 200_000).sqrt()
    assert ((counts[:8] / 200_000 - p).abs() <= tolerance).all(), (counts[:8] / 200_000 - p) / tolerance


def test_frame_stacks_repeat_the_first_frame_at_episode_starts_and_never_cross_an_episode_boundary() -> None:
    """history 3, frames named by value: episode A = 10, 11, 12 (terminated at its second step, final 12),
    episode B = 20, 21, 22, 23 (running)."""
    buffer = FrameStackBuffer((3, 1, 1), 1, 16, 3, history=3, seed=0)

    def stack(*frames):
        return np.array(frames, dtype=np.uint8).reshape(3, 1, 1)

    buffer.add(stack(10, 10, 10), np.zeros(1), 1.0, stack(10, 10, 11), False, False)  # slot 0
    buffer.add(stack(10, 10, 11), np.zeros(1), 1.0, stack(10, 11, 12), True, False)  # slot 1, final in slot 2
    for t in range(3):  # slots 3, 4, 5; s_3 in slot 6
        frames = [20, 20, 20, 21, 22, 23]
        buffer.add(stack(*frames[t : t + 3]), np.zeros(1), 1.0, stack(*frames[t + 1 : t + 4]), False, False)
    assert buffer.back[:7].tolist() == [0, 1, 2, 0, 1, 2, 2]
    batch = buffer.gather(torch.tensor([1, 3]), 2)
    ids = batch.obs[:, :, :, 0, 0].tolist()
    # start 1 (A's step 1): s_1, s_2 = final observation, then slot 3's frame (B's) but the window is
    # masked after A's terminal; its stacks never take B's frames for A's steps.
    assert ids[0][:2] == [[10, 10, 11], [10, 11, 12]]
    # start 3 (B's step 0): the first frame repeated, then B's frames only (A's 12 in slot 2 never enters).
    assert ids[1] == [[20, 20, 20], [20, 20, 21], [20, 21, 22]]
    assert buffer.stack(6)[:, 0, 0].tolist() == [21, 22, 23]


def test_state_dict_restores_the_generator_and_rebuilds_the_tree_bit_for_bit() -> None:
    buffer = ReplayBuffer((1,), 1, 40, 3, seed=5)
    rng = np.random.default_rng(0)
    for episode in range(4):
        add_episode(buffer, episode, 8, "terminated" if episode % 2 else "truncated")
        index = buffer.sample_index(6)
        buffer.update_priorities(index, torch.from_numpy(rng.uniform(0, 50, 6)))
    buffer.refresh()
    state = buffer.state_dict()
    assert all(value.device.type == "cpu" for value in state.values() if isinstance(value, torch.Tensor))
    restored = ReplayBuffer((1,), 1, 40, 3, seed=99)
    restored.load_state_dict(state)
    assert torch.equal(restored.tree._tree, buffer.tree._tree)
    for name in ReplayBuffer._ARRAYS + ReplayBuffer._TENSORS:
        assert torch.equal(getattr(restored, name), getattr(buffer, name)), name
    for _ in range(3):  # the same draws, and the same trees after the same updates
        index_a, index_b = buffer.sample_index(16), restored.sample_index(16)
        assert torch.equal(index_a, index_b)
        td = torch.from_numpy(rng.uniform(0, 50, 16))
        buffer.update_priorities(index_a, td)
        restored.update_priorities(index_b, td)
    assert torch.equal(restored.tree._tree, buffer.tree._tree)


@pytest.mark.parametrize("frames", [False, True], ids=["vector", "frames"])
def test_staged_adds_written_in_batches_equal_adds_written_one_by_one(frames: bool) -> None:
    """Adds wait on the host and reach the device in batches (at most (capacity - H - history - 1) // 2
    of them, 12 here). A buffer read after every add and one read only at the end hold the same tensors,
    through three wraps of the ring with terminals, truncations and episodes shorter than the stack."""
    def make():
        if frames:
            return FrameStackBuffer((3, 1, 1), 1, 32, 3, history=3, seed=0)
        return ReplayBuffer((1,), 1, 32, 3, seed=0)

    one_by_one, batched = make(), make()
    assert batched._stage_limit == (12 if frames else 13)
    rng = np.random.default_rng(4)
    frame = 0
    obs = np.full((3, 1, 1), frame, dtype=np.uint8) if frames else np.array([0.0], dtype=np.float32)
    for step in range(100):
        frame += 1
        next_obs = np.concatenate([obs[1:], np.full((1, 1, 1), frame % 256, dtype=np.uint8)]) if frames else \
            np.array([frame], dtype=np.float32)
        end = rng.random() < 0.15
        terminated, truncated = end and rng.random() < 0.5, end and rng.random() >= 0.5
        action = np.array([rng.random()])
        for buffer in (one_by_one, batched):
            buffer.add(obs, action, float(step), next_obs, terminated, truncated)
        _ = one_by_one.valid  # reading writes the staged add
        if terminated or truncated:
            frame += 1
            obs = np.full((3, 1, 1), frame % 256, dtype=np.uint8) if frames else np.array([frame], dtype=np.float32)
        else:
            obs = next_obs
        if step == 64:
            assert batched._stage.adds > 1  # adds are waiting on the host
    names = ReplayBuffer._ARRAYS + ("transitions_forgotten", "abs_reward_forgotten", "ever_terminated") + \
        (("back",) if frames else ())
    for name in names:
        assert torch.equal(getattr(batched, name), getattr(one_by_one, name)), name
    assert len(batched) == len(one_by_one)
    batched.refresh()
    one_by_one.refresh()
    assert torch.equal(batched.tree._tree, one_by_one.tree._tree)

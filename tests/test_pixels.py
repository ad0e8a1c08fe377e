"""Pixel observations: the frame-stack replay (uld.replay.frames), DMC visual envs, headless rendering.

Frame ids. In the buffer tests a frame is a (1, 1, 2) uint8 image holding (episode, t), so every
frame is unique and a stack can be read off by eye; stacks are built with the envs' own
FrameHistory, so "what the env produced" is literally what the tests compare against.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uld.agents.uld.agent import make_buffer
from uld.agents.uld.config import reduced_config
from uld.envs import dmc, make_env
from uld.envs.base import EnvSpec, FrameHistory
from uld.errors import UldError
from uld.replay.buffer import ReplayBuffer
from uld.replay.frames import FrameStackBuffer, buffer_bytes, bytes_per_slot
from uld.train.logger import read_eval_csv
from uld.train.run import TrainConfig, train

SRC = Path(__file__).resolve().parents[1] / "src"


def frame(episode: int, t: int) -> np.ndarray:
    return np.array([[[episode, t]]], dtype=np.uint8)


def episode_stacks(episode: int, length: int, history: int) -> list[np.ndarray]:
    """The observations s_0 .. s_length an env with this frame history would return."""
    frames = FrameHistory(history, (1, 1, 2))
    return [frames.reset(frame(episode, 0))] + [frames.push(frame(episode, t)) for t in range(1, length + 1)]


def add_episode(buffers, episode: int, length: int, end: str, history: int) -> None:
    """Add `length` transitions to each buffer; the last ends with `end` (terminated/truncated/running)."""
    stacks = episode_stacks(episode, length, history)
    for t in range(length):
        last = t == length - 1
        for buffer in buffers:
            buffer.add(stacks[t], np.array([t], dtype=np.float32), float(t + 1), stacks[t + 1],
                       terminated=last and end == "terminated", truncated=last and end == "truncated")


def ids(stack: np.ndarray | torch.Tensor) -> list[int]:
    """The t of every frame in a stack, oldest first (the episode is checked separately)."""
    return np.asarray(stack)[:, 0, 1].tolist()


def valid_starts(buffer: ReplayBuffer) -> list[int]:
    return np.flatnonzero(buffer.valid).tolist()


# --- frame history (what the envs produce) -------------------------------------------------------------


def test_frame_history_repeats_the_first_frame_and_shifts_oldest_out() -> None:
    stacks = episode_stacks(4, 3, history=3)
    assert [ids(s) for s in stacks] == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]]
    assert all(s.shape == (3, 1, 2) and s.dtype == np.uint8 and (s[:, 0, 0] == 4).all() for s in stacks)


# --- FrameStackBuffer: layout and reconstruction --------------------------------------------------------


def test_each_slot_stores_one_frame_and_stacks_are_rebuilt_at_episode_starts_and_ends() -> None:
    buffer = FrameStackBuffer((3, 1, 2), 1, capacity=30, horizon=2, history=3)
    assert buffer.obs.shape == (30, 1, 1, 2)  # one frame per slot, not a stack
    add_episode([buffer], 0, 4, "terminated", history=3)  # slots 0..3, final observation in slot 4
    add_episode([buffer], 1, 3, "truncated", history=3)  # slots 5..7, final observation in slot 8
    add_episode([buffer], 2, 5, "running", history=3)  # slots 9..13, s_5 in slot 14
    assert buffer.obs[:15, 0, 0].tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [1, 0], [1, 1], [1, 2],
                                              [1, 3], [2, 0], [2, 1], [2, 2], [2, 3], [2, 4], [2, 5]]
    expected = {0: [0, 0, 0], 1: [0, 0, 1], 2: [0, 1, 2], 3: [1, 2, 3], 4: [2, 3, 4],  # 4: final obs
                5: [0, 0, 0], 6: [0, 0, 1], 7: [0, 1, 2], 8: [1, 2, 3],
                9: [0, 0, 0], 10: [0, 0, 1], 11: [0, 1, 2], 14: [3, 4, 5]}
    for slot, stack_ids in expected.items():
        stack = buffer.stack(slot)
        assert stack.shape == (3, 1, 2) and ids(stack) == stack_ids, slot
        assert (stack[:, 0, 0] == buffer.obs[slot, 0, 0, 0]).all()  # never a frame of another episode
    assert valid_starts(buffer) == [0, 1, 2, 3, 5, 6, 9, 10, 11, 12]

    batch = buffer.gather(np.array([2, 3, 5, 12]), 2)
    assert batch.obs.shape == (4, 3, 3, 1, 2) and batch.obs.dtype == torch.uint8
    assert [ids(batch.obs[0, k]) for k in range(3)] == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]  # ends at the final obs
    assert [ids(batch.obs[1, k]) for k in range(2)] == [[1, 2, 3], [2, 3, 4]]  # terminal at k = 0, then masked
    assert batch.terminated[1].tolist() == [1.0, 0.0]
    assert [ids(batch.obs[2, k]) for k in range(3)] == [[0, 0, 0], [0, 0, 1], [0, 1, 2]]
    assert [ids(batch.obs[3, k]) for k in range(3)] == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    assert batch.reward.tolist() == [[3.0, 4.0], [4.0, 0.0], [1.0, 2.0], [4.0, 5.0]]


def test_ring_wrap_around_forgets_slots_whose_stacks_lost_a_frame_and_rebuilds_across_the_seam() -> None:
    buffer = FrameStackBuffer((3, 1, 2), 1, capacity=10, horizon=2, history=3)
    add_episode([buffer], 0, 6, "truncated", history=3)  # slots 0..5, final observation in slot 6
    assert valid_starts(buffer) == [0, 1, 2, 3, 4]
    add_episode([buffer], 1, 3, "running", history=3)  # slots 7, 8, 9; s_3 overwrites slot 0
    # Slot 0 is overwritten; slots 1 and 2 keep their frames but their stacks reached slot 0
    # (1: [0, 0, 1], 2: [0, 1, 2]), so they are forgotten. Slot 3's stack is slots 1..3: intact.
    assert valid_starts(buffer) == [3, 4, 7, 8]
    assert buffer.num_transitions == 3 + 3  # episode 0's slots 3, 4, 5 and episode 1's three
    batch = buffer.gather(np.array([8, 3]), 2)
    assert [ids(batch.obs[0, k]) for k in range(3)] == [[0, 0, 1], [0, 1, 2], [1, 2, 3]]  # slots 8, 9, 0
    assert (batch.obs[0, :, :, 0, 0] == 1).all()
    assert [ids(batch.obs[1, k]) for k in range(3)] == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    # One more step overwrites slot 1, which slot 3's stack needs.
    stacks = episode_stacks(1, 4, history=3)
    buffer.add(stacks[3], np.zeros(1), 4.0, stacks[4], terminated=False, truncated=False)  # slot 0, s_4 in 1
    assert valid_starts(buffer) == [4, 7, 8, 9]
    assert ids(buffer.stack(1)) == [2, 3, 4]


def test_gathered_stacks_share_frames_instead_of_copying_them() -> None:
    buffer = FrameStackBuffer((4, 1, 2), 1, capacity=40, horizon=5, history=4)
    add_episode([buffer], 0, 12, "running", history=4)
    batch = buffer.gather(np.array([3, 0]), 5)
    # 6 stacks of 4 frames per subsequence come from 5 + 4 = 9 distinct frames.
    assert batch.obs.shape == (2, 6, 4, 1, 2)
    assert batch.obs.untyped_storage().nbytes() == 2 * 9 * 2
    assert [ids(batch.obs[1, k]) for k in range(6)] == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 2], [0, 1, 2, 3],
                                                         [1, 2, 3, 4], [2, 3, 4, 5]]


def test_an_episode_that_does_not_start_with_a_repeated_frame_is_refused() -> None:
    buffer = FrameStackBuffer((3, 1, 2), 1, capacity=10, horizon=2, history=3)
    stacks = episode_stacks(0, 2, history=3)
    with pytest.raises(ValueError, match="first frame"):
        buffer.add(stacks[1], np.zeros(1), 0.0, stacks[2], terminated=False, truncated=False)


def test_state_dict_round_trip_gathers_the_same_stacks() -> None:
    buffer = FrameStackBuffer((3, 1, 2), 1, capacity=12, horizon=2, history=3, seed=5)
    add_episode([buffer], 0, 7, "terminated", history=3)
    add_episode([buffer], 1, 6, "running", history=3)
    copy = FrameStackBuffer((3, 1, 2), 1, capacity=12, horizon=2, history=3, seed=9)
    copy.load_state_dict(buffer.state_dict())
    index = buffer.sample_index(16)
    assert copy.sample_index(16).tolist() == index.tolist()
    assert torch.equal(copy.gather(index, 2).obs, buffer.gather(index, 2).obs)


episodes = st.lists(
    st.tuples(st.integers(1, 12), st.sampled_from(["terminated", "truncated"])), min_size=1, max_size=12
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    episodes=episodes,
    running=st.integers(0, 8),
    history=st.integers(1, 4),
    horizon=st.sampled_from([1, 2, 3, 5]),
    extra_capacity=st.integers(1, 30),
)
def test_frame_buffer_matches_a_buffer_of_whole_stacks(episodes, running, history, horizon, extra_capacity) -> None:
    """Against ReplayBuffer storing the env's stacks as they came: same windows, same observations."""
    capacity = horizon + history + extra_capacity
    frames = FrameStackBuffer((history, 1, 2), 1, capacity, horizon, history=history)
    whole = ReplayBuffer((history, 1, 2), 1, capacity, horizon, obs_dtype=np.uint8)
    last_written = None
    for episode, (length, end) in enumerate(episodes + [(running, "running")]):
        stacks = episode_stacks(episode, length, history)
        for t in range(length):
            last = t == length - 1
            for buffer in (frames, whole):
                buffer.add(stacks[t], np.array([t], dtype=np.float32), float(t + 1), stacks[t + 1],
                           terminated=last and end == "terminated", truncated=last and end == "truncated")
            last_written = (frames.ptr - 1) % capacity if last and end != "running" else frames.ptr

    # Only the oldest slots just ahead of the writer may be lost early, and only as whole slots.
    lost = set(valid_starts(whole)) - set(valid_starts(frames))
    assert set(valid_starts(frames)) <= set(valid_starts(whole))
    if last_written is not None:
        assert lost <= {(last_written + d) % capacity for d in range(1, history)}
    assert 0 <= whole.num_transitions - frames.num_transitions <= history - 1

    # Every stored transition's stack is exactly the observation the env produced.
    for slot in np.flatnonzero(frames.is_transition):
        np.testing.assert_array_equal(frames.stack(slot), whole.obs[slot])

    starts = np.array(valid_starts(frames), dtype=np.int64)
    if len(starts):
        got, want = frames.gather(starts, horizon), whole.gather(starts, horizon)
        for row in range(len(starts)):
            terminal = np.flatnonzero(want.terminated[row].numpy())
            readable = terminal[0] + 2 if len(terminal) else horizon + 1  # up to the final observation
            assert torch.equal(got.obs[row, :readable], want.obs[row, :readable])
        assert torch.equal(got.action, want.action) and torch.equal(got.reward, want.reward)
        assert torch.equal(got.terminated, want.terminated)


# --- memory -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("obs_shape", "history", "frame_bytes"), [((4, 84, 84), 4, 7056), ((9, 84, 84), 3, 21168)])
def test_one_frame_per_slot_is_the_memory_of_a_stored_transition(obs_shape, history, frame_bytes) -> None:
    buffer = FrameStackBuffer(obs_shape, 18, capacity=1000, horizon=5, history=history)
    assert buffer.obs.nbytes / buffer.capacity == frame_bytes
    arrays = [buffer.obs, buffer.action, buffer.reward, buffer.terminated, buffer.is_transition, buffer.valid,
              buffer.priority, buffer.back]
    assert sum(a.nbytes for a in arrays) / buffer.capacity == bytes_per_slot(buffer.frame_shape, 18)
    assert bytes_per_slot(buffer.frame_shape, 18) == frame_bytes + 72 + 4 + 4 + 1 + 1 + 8 + 1


def test_a_buffer_larger_than_the_memory_is_refused_before_allocating() -> None:
    spec = EnvSpec("atari:Pong", (4, 84, 84), 6, True, 27000, pixels=True, frame_history=4)
    with pytest.raises(UldError, match=r"--uld.buffer-capacity") as error:
        make_buffer(spec, reduced_config(buffer_capacity=10**9), seed=0)
    message = str(error.value)
    assert f"{buffer_bytes((1, 84, 84), 6, 10**9) / 1e9:.1f} GB" in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_make_buffer_uses_the_frame_buffer_for_pixels_only() -> None:
    pixels = EnvSpec("dmc-pixels:x", (9, 84, 84), 6, False, 500, pixels=True, frame_history=3)
    vector = EnvSpec("dmc:x", (17,), 6, False, 500)
    buffer = make_buffer(pixels, reduced_config(buffer_capacity=100), seed=0)
    assert isinstance(buffer, FrameStackBuffer) and buffer.frame_shape == (3, 84, 84)
    assert type(make_buffer(vector, reduced_config(buffer_capacity=100), seed=0)) is ReplayBuffer


# --- DMC visual -------------------------------------------------------------------------------------------


def test_dmc_pixels_protocol_against_dm_control_rendered_directly() -> None:
    from dm_control import suite

    env = make_env("dmc-pixels:cartpole-swingup", seed=4)
    raw = suite.load("cartpole", "swingup", task_kwargs={"random": 4})
    assert env.spec == EnvSpec("dmc-pixels:cartpole-swingup", (9, 84, 84), 1, False, 500, pixels=True,
                               frame_history=3)
    obs = env.reset()
    raw.reset()
    first = raw.physics.render(84, 84, camera_id=0).transpose(2, 0, 1)
    assert obs.shape == (9, 84, 84) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs, np.concatenate([first] * 3))  # first frame repeated
    frames = [first, first, first]
    for action in np.linspace(-1, 1, 6, dtype=np.float32)[:, None]:
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards = [raw.step(action).reward for _ in range(2)]  # action repeat 2, one frame after both
        frames = frames[1:] + [raw.physics.render(84, 84, camera_id=0).transpose(2, 0, 1)]
        np.testing.assert_array_equal(obs, np.concatenate(frames))
        assert reward == rewards[0] + rewards[1] and not (terminated or truncated)


def test_dmc_pixels_quadruped_looks_through_camera_2() -> None:
    from dm_control import suite

    env = make_env("dmc-pixels:quadruped-walk", seed=0)
    raw = suite.load("quadruped", "walk", task_kwargs={"random": 0})
    newest = env.reset()[-3:]
    raw.reset()
    np.testing.assert_array_equal(newest, raw.physics.render(84, 84, camera_id=2).transpose(2, 0, 1))
    assert not np.array_equal(newest, raw.physics.render(84, 84, camera_id=0).transpose(2, 0, 1))


def test_dmc_pixels_rng_state_replays_an_episode_exactly() -> None:
    env = make_env("dmc-pixels:reacher-easy", seed=2)
    env.reset()
    env.step(env.sample_action())
    state = env.rng_state()
    actions = [env.sample_action() for _ in range(5)]
    first = [env.reset()] + [env.step(a)[0] for a in actions]
    env.reset()  # a different start: the task's RNG moved on
    env.set_rng_state(state)
    np.testing.assert_array_equal([env.sample_action() for _ in range(5)], actions)
    again = [env.reset()] + [env.step(a)[0] for a in actions]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_dmc_pixels_unknown_task_suggests_pixel_names() -> None:
    with pytest.raises(UldError, match="did you mean dmc-pixels:walker-walk"):
        make_env("dmc-pixels:walker-wlak", seed=0)


def test_a_short_run_trains_on_dmc_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 40-step episodes: short evaluations (rendering costs 20-45 ms a frame), and episode ends in the buffer.
    monkeypatch.setattr(dmc, "MAX_EPISODE_STEPS", 40)
    config = TrainConfig(env="dmc-pixels:cartpole-swingup", steps=120, eval_every=120, eval_episodes=1,
                         out=str(tmp_path / "run"), progress=False, small=True,
                         uld=reduced_config(batch_size=4, random_steps=60, target_update_period=20,
                                            buffer_capacity=1000))
    rows = read_eval_csv(train(config) / "eval.csv")
    assert [row["step"] for row in rows] == [0, 120]
    assert all(np.isfinite(row["mean_return"]) for row in rows)


# --- headless rendering (fresh interpreters) -------------------------------------------------------------


def _run_python(code: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    for key, value in env.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)


def test_without_display_uld_envs_chooses_egl_before_dm_control_is_imported() -> None:
    code = ("import os, ctypes, uld.envs\n"
            "print(os.environ.get('MUJOCO_GL'))\n"
            "env = uld.envs.make_env('dmc-pixels:cartpole-swingup', 0)\n"
            "print(int(env.reset().max() > 0))\n")
    result = _run_python(code, MUJOCO_GL=None, DISPLAY=None, WAYLAND_DISPLAY=None)
    assert result.returncode == 0, result.stderr
    backend, rendered = result.stdout.split()
    if backend != "egl":
        pytest.skip(f"no libEGL here (chose {backend})")
    assert rendered == "1"
    kept = _run_python("import os, uld.envs; print(os.environ.get('MUJOCO_GL'))", MUJOCO_GL="osmesa")
    assert kept.stdout.strip() == "osmesa"


def test_a_renderer_that_cannot_load_is_one_sentence_naming_mujoco_gl_and_the_package() -> None:
    code = ("import uld.envs\n"
            "from uld.errors import UldError\n"
            "try:\n"
            "    uld.envs.make_env('dmc-pixels:cartpole-swingup', 0).reset()\n"
            "except UldError as err:\n"
            "    print(err)\n")
    result = _run_python(code, MUJOCO_GL="osmesa")
    assert result.returncode == 0, result.stderr
    if not result.stdout.strip():
        pytest.skip("OSMesa is installed here, so this backend works")
    message = result.stdout.strip()
    assert "MUJOCO_GL=egl" in message and "apt install libegl1" in message and "libosmesa6" in message


def test_many_seeds_train_end_to_end_on_dmc_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--seeds 0,1 on a pixel task, in one process: each seed writes a single-seed run directory that
    evaluates at the same steps, loads as a single-seed agent and acts on pixels, and the seeds differ."""
    import uld

    monkeypatch.setattr(dmc, "MAX_EPISODE_STEPS", 40)
    config = TrainConfig(env="dmc-pixels:cartpole-swingup", seeds="0,1", steps=80, eval_every=80, eval_episodes=1,
                         out=str(tmp_path / "runs"), progress=False, small=True, env_workers=0,
                         uld=reduced_config(batch_size=4, random_steps=60, target_update_period=10,
                                            buffer_capacity=1000))
    train(config)
    returns, weights = [], []
    for seed in (0, 1):
        run = tmp_path / "runs" / f"seed{seed}"
        rows = read_eval_csv(run / "eval.csv")
        assert [row["step"] for row in rows] == [0, 80]
        trained = uld.load(run)
        assert trained.step == 80 and trained.agent.training_step == 20  # 80 - 60 random steps
        obs = make_env("dmc-pixels:cartpole-swingup", seed=seed).reset()
        assert obs.dtype == np.uint8 and np.all(np.abs(trained.act(obs)) <= 1)
        returns.append([row["mean_return"] for row in rows])
        weights.append(trained.agent.policy.mlp.l1.weight.detach().clone())
    assert returns[0] != returns[1] and not torch.equal(weights[0], weights[1])

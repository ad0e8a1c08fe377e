"""The Atari protocol (uld.envs.atari) against the Arcade Learning Environment driven directly.

`DirectAle` writes the protocol out a second time, straight on ALEInterface with the same seed:
sticky actions 0.25, minimal action set, 4 ALE frames per agent step with summed rewards and an
early stop at the episode's end, max of the last two grayscale screens, area resize to 84x84,
4-frame history with the first frame repeated. The env must agree with it frame for frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py")
cv2 = pytest.importorskip("cv2")

import ale_py  # noqa: E402
from ale_py import roms  # noqa: E402

import uld.envs.atari as atari  # noqa: E402
import uld.train.seed_envs as seed_envs  # noqa: E402
from uld.agents.uld.config import reduced_config  # noqa: E402
from uld.envs import make_env  # noqa: E402
from uld.envs.base import EnvSpec  # noqa: E402
from uld.errors import UldError  # noqa: E402
from uld.train.logger import read_eval_csv  # noqa: E402
from uld.train.run import TrainConfig, train  # noqa: E402


class DirectAle:
    """The Atari protocol on a bare ALEInterface (see the module docstring)."""

    def __init__(self, rom: str, seed: int, sticky: float = 0.25, max_frames: int = 108_000) -> None:
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        self.ale = ale_py.ALEInterface()
        self.ale.setInt("random_seed", seed)
        self.ale.setFloat("repeat_action_probability", sticky)
        self.ale.setInt("max_num_frames_per_episode", max_frames)
        self.ale.loadROM(roms.get_rom_path(rom))
        self.actions = self.ale.getMinimalActionSet()

    def _frame(self) -> np.ndarray:
        pooled = np.maximum(self.screens[0], self.screens[1])
        return cv2.resize(pooled, (84, 84), interpolation=cv2.INTER_AREA)

    def reset(self) -> np.ndarray:
        self.ale.reset_game()
        screen = self.ale.getScreenGrayscale()
        self.screens = [screen, screen]
        self.frames = [self._frame()] * 4
        return np.stack(self.frames)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        reward = 0
        for _ in range(4):
            reward += self.ale.act(self.actions[action])
            self.screens = [self.screens[1], self.ale.getScreenGrayscale()]
            if self.ale.game_over():
                break
        self.frames = self.frames[1:] + [self._frame()]
        terminated, truncated = self.ale.game_over(with_truncation=False), self.ale.game_truncated()
        return np.stack(self.frames), float(reward), terminated, truncated


def play(env, direct: DirectAle, actions) -> tuple[int, list[float], bool]:
    """Step both with the same actions until one episode ends; assert every output agrees.

    Returns (steps taken, rewards, whether pooling two screens ever changed the frame).
    """
    np.testing.assert_array_equal(env.reset(), direct.reset())
    rewards, pooling_mattered = [], False
    for step, action in enumerate(actions, start=1):
        obs, reward, terminated, truncated, info = env.step(int(action))
        expected = direct.step(int(action))
        np.testing.assert_array_equal(obs, expected[0], err_msg=f"step {step}")
        assert (reward, terminated, truncated) == expected[1:], f"step {step}"
        last_only = cv2.resize(direct.screens[1], (84, 84), interpolation=cv2.INTER_AREA)
        pooling_mattered |= not np.array_equal(obs[-1], last_only)
        rewards.append(reward)
        if terminated or truncated:
            return step, rewards, pooling_mattered
        assert info["episode_frame_number"] == 4 * step  # action repeat 4
    return len(actions), rewards, pooling_mattered


def test_atari_spec_and_first_observation() -> None:
    env = make_env("atari:Pong", seed=0)
    assert env.spec == EnvSpec("atari:Pong", (4, 84, 84), 6, True, 27_000, pixels=True, frame_history=4)
    obs = env.reset()
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert all(np.array_equal(obs[k], obs[3]) for k in range(3))  # first frame repeated
    assert (atari.STICKY_ACTION_PROBABILITY, atari.ACTION_REPEAT, atari.MAX_EPISODE_FRAMES) == (0.25, 4, 108_000)
    assert atari.EVAL_EPSILON == 0.001


def test_frames_rewards_and_max_pool_match_ale_driven_directly() -> None:
    """SpaceInvaders flickers (so pooling matters) and pays 5 to 30 points per invader (no clipping)."""
    env, direct = make_env("atari:SpaceInvaders", seed=7), DirectAle("space_invaders", seed=7)
    actions = np.random.default_rng(0).integers(env.spec.action_dim, size=300)
    steps, rewards, pooling_mattered = play(env, direct, actions)
    assert steps > 100 and pooling_mattered  # (the game may end before 300 steps: then the terminal matched too)
    assert max(rewards) > 1  # raw scores, not clipped to 1
    # A second episode continues ALE's RNG in both.
    assert play(env, direct, actions[:50])[0] == 50


def test_sticky_actions_come_from_the_seeded_ale_rng() -> None:
    actions = np.random.default_rng(1).integers(6, size=200)
    env = make_env("atari:Pong", seed=3)
    assert play(env, DirectAle("pong", seed=3), actions)[0] == 200
    with pytest.raises(AssertionError):  # without sticky actions the same inputs give other frames
        play(make_env("atari:Pong", seed=3), DirectAle("pong", seed=3, sticky=0.0), actions)
    with pytest.raises(AssertionError):  # another seed sticks at other frames
        play(make_env("atari:Pong", seed=4), DirectAle("pong", seed=3), actions)


def test_losing_a_life_is_not_terminal_and_the_game_over_stops_the_repeat() -> None:
    env, direct = make_env("atari:Breakout", seed=2), DirectAle("breakout", seed=2)
    actions = np.random.default_rng(2).integers(env.spec.action_dim, size=5000)
    steps, _, _ = play(env, direct, actions)
    assert direct.ale.game_over(with_truncation=False) and steps < 5000  # all 5 lives lost, one terminal
    assert direct.ale.getEpisodeFrameNumber() <= 4 * steps


def test_episode_cap_is_a_truncation_that_can_end_inside_a_repeat() -> None:
    capped = atari.AtariEnv("Pong", "pong", seed=0, max_episode_frames=42)
    assert capped.spec.max_episode_steps == 10
    direct = DirectAle("pong", seed=0, max_frames=42)
    steps, _, _ = play(capped, direct, [0] * 20)
    assert steps == 11 and direct.ale.getEpisodeFrameNumber() == 42  # 10 full repeats, then 2 frames


def test_only_the_evaluation_env_takes_random_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atari, "EVAL_EPSILON", 0.5)  # 0.001 would need thousands of steps to show
    training, evaluation = make_env("atari:Pong", seed=5), make_env("atari:Pong", seed=5, evaluation=True)
    again = make_env("atari:Pong", seed=5)
    for env in (training, evaluation, again):
        env.reset()
    outputs = [[env.step(0)[0] for _ in range(60)] for env in (training, evaluation, again)]
    assert all(np.array_equal(a, b) for a, b in zip(outputs[0], outputs[2]))
    assert not all(np.array_equal(a, b) for a, b in zip(outputs[0], outputs[1]))


def test_the_run_makes_its_evaluation_env_with_evaluation_true(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def recording_make_env(name, seed, evaluation=False):
        calls.append((name, seed, evaluation))
        if len(calls) == 2:
            raise UldError("stop here")
        return make_env(name, seed, evaluation)

    monkeypatch.setattr(seed_envs, "make_env", recording_make_env)  # where the run makes its envs
    with pytest.raises(UldError, match="stop here"):
        train(TrainConfig(env="atari:Pong", seed=3, steps=10, out=str(tmp_path / "run"), progress=False))
    assert calls == [("atari:Pong", 3, False), ("atari:Pong", 103, True)]


def test_rng_state_is_plain_data_and_replays_an_episode_exactly() -> None:
    env = make_env("atari:Pong", seed=11)
    env.reset()
    for _ in range(30):
        env.step(env.sample_action())
    state = env.rng_state()
    assert isinstance(state["ale"], np.ndarray) and state["ale"].dtype == np.uint8
    assert isinstance(state["sample"], dict)
    actions = [env.sample_action() for _ in range(150)]
    assert all(isinstance(a, int) and 0 <= a < 6 for a in actions)

    def episode() -> list:
        return [env.reset()] + [env.step(a)[:2] for a in actions]

    first = episode()
    drifted = episode()  # ALE's RNG moved on: sticky actions fall elsewhere
    env.set_rng_state(state)
    assert [env.sample_action() for _ in range(150)] == actions
    replayed = episode()
    same = lambda a, b: all(np.array_equal(x, y) if isinstance(x, np.ndarray) else  # noqa: E731
                            all(np.array_equal(u, v) for u, v in zip(x, y)) for x, y in zip(a, b))
    assert same(first, replayed) and not same(first, drifted)


def test_unknown_game_suggests_the_closest_names() -> None:
    with pytest.raises(UldError, match="did you mean atari:Pong"):
        make_env("atari:Pnog", seed=0)
    with pytest.raises(UldError, match="did you mean atari:SpaceInvaders"):
        make_env("atari:spaceinvaders", seed=0)


def test_a_short_run_trains_on_atari(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 100-step episodes: short evaluations, and episode ends inside the frame buffer.
    monkeypatch.setattr(atari, "MAX_EPISODE_FRAMES", 400)
    config = TrainConfig(env="atari:Pong", steps=200, eval_every=200, eval_episodes=1, out=str(tmp_path / "run"),
                         progress=False, small=True,
                         uld=reduced_config(batch_size=4, random_steps=120, target_update_period=20,
                                            buffer_capacity=1000))
    rows = read_eval_csv(train(config) / "eval.csv")
    assert [row["step"] for row in rows] == [0, 200]
    assert all(np.isfinite(row["mean_return"]) for row in rows)


def test_an_interrupted_atari_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """160 steps straight == 100, stop, the same command for 160: the split falls mid-episode, so the
    resumed run restores ALE's state and RNG, replays the episode's actions and keeps the frame replay."""
    from uld.train.checkpoint import Checkpointer

    monkeypatch.setattr(atari, "MAX_EPISODE_FRAMES", 280)  # 70-step episodes: step 100 is mid-episode
    tiny = reduced_config(batch_size=8, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, random_steps=60,
                          target_update_period=20, buffer_capacity=1000)

    def config(out: Path, steps: int) -> TrainConfig:
        return TrainConfig(env="atari:Pong", seed=3, steps=steps, eval_every=100, eval_episodes=1, out=str(out),
                           progress=False, uld=tiny)

    straight = train(config(tmp_path / "straight", 160))
    train(config(tmp_path / "split", 100))
    split = train(config(tmp_path / "split", 160))
    rows = [[(r["step"], r["returns"]) for r in read_eval_csv(run / "eval.csv")] for run in (straight, split)]
    assert rows[0] == rows[1] and [step for step, _ in rows[0]] == [0, 100, 160]
    (a, _), (b, _) = (Checkpointer(run / "checkpoints").load_latest() for run in (straight, split))
    for name in ("obs", "back", "action", "priority", "valid"):
        assert torch.equal(torch.as_tensor(a["buffer"][name]), torch.as_tensor(b["buffer"][name])), name
    for key, tensor in a["agent"]["encoder"].items():
        assert torch.equal(tensor, b["agent"]["encoder"][key]), key

"""Trained agents are usable: uld.load(...).act, uld eval with returns and an mp4 of an episode."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import uld
from uld.agents.uld.config import reduced_config
from uld.envs import dmc, make_env
from uld.errors import UldError
from uld.train.checkpoint import Checkpointer
from uld.train.playback import evaluate_run
from uld.train.run import TrainConfig, train

TINY = reduced_config(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, random_steps=100,
                      target_update_period=20, buffer_capacity=5000)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cartpole"
    return train(TrainConfig(env="dmc:cartpole-balance", seed=1, steps=200, eval_every=200, eval_episodes=1,
                             progress=False, out=str(out), uld=TINY))


def test_load_returns_an_agent_whose_act_is_deterministic(run_dir):
    trained = uld.load(run_dir)
    assert trained.step == 200
    obs = make_env("dmc:cartpole-balance", seed=0).reset()
    first, second = trained.act(obs), trained.act(obs)
    assert first.shape == (1,) and np.all(np.abs(first) <= 1)
    np.testing.assert_array_equal(first, second)


def _tensors(tree, prefix=""):
    """Every tensor of a nested state dict, by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}/{key}").items()}


def test_load_restores_the_trained_weights_and_acts_as_the_trained_agent(tmp_path, monkeypatch):
    import uld.train.run as run_module

    trained_agents = []
    real_build_agent = run_module.build_agent

    def build_and_keep(*args, **kwargs):
        agent, buffer = real_build_agent(*args, **kwargs)
        trained_agents.append(agent)
        return agent, buffer

    monkeypatch.setattr(run_module, "build_agent", build_and_keep)
    out = train(TrainConfig(env="dmc:cartpole-balance", seed=2, steps=300, eval_every=300, eval_episodes=1,
                            progress=False, out=str(tmp_path / "run"), uld=TINY))
    (trained_agent,) = trained_agents
    loaded = uld.load(out)
    state, _ = Checkpointer(out / "checkpoints").load_latest()
    saved, restored = _tensors(state["agent"]), _tensors(loaded.agent.state_dict())
    assert len(saved) > 20 and saved.keys() == restored.keys()
    for key, tensor in saved.items():
        assert torch.equal(tensor, restored[key]), key
    env = make_env("dmc:cartpole-balance", seed=5)
    observations = [env.reset()] + [env.step(env.sample_action())[0] for _ in range(9)]
    for obs in observations:
        np.testing.assert_array_equal(loaded.act(obs), trained_agent.act(obs, explore=False))
    # An untrained agent of the same seed acts otherwise: the comparison above can fail.
    untrained, _ = real_build_agent("uld", env.spec, TINY, device="cpu", precision="fp32", seed=2, total_steps=300)
    assert any(not np.array_equal(untrained.act(obs, explore=False), loaded.act(obs)) for obs in observations)


def test_eval_is_reproducible_and_writes_a_video(run_dir, tmp_path, monkeypatch):
    import imageio.v2 as imageio

    monkeypatch.setattr(dmc, "MAX_EPISODE_STEPS", 50)  # 50-step episodes (500 by default): a short video

    video = tmp_path / "videos" / "episode.mp4"
    returns = evaluate_run(run_dir, episodes=2, video=video)
    assert returns == evaluate_run(run_dir, episodes=2)
    # The returns are those of the trained policy on the env seeded with seed + 100, summed here anew.
    trained, env, expected = uld.load(run_dir), make_env("dmc:cartpole-balance", seed=1 + 100, evaluation=True), []
    for _ in range(2):
        obs, done, total = env.reset(), False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(trained.act(obs))
            total, done = total + reward, terminated or truncated
        expected.append(total)
    assert returns == expected and returns[0] != returns[1]
    reader = imageio.get_reader(str(video))
    frames = [frame for frame in reader]
    assert len(frames) == 51  # the reset frame and one per agent step
    assert frames[0].shape == (256, 256, 3) and frames[0].std() > 10  # a rendered scene, not a blank frame


def test_eval_cli_prints_the_mean_and_bad_dirs_get_one_sentence(run_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "uld.cli", "eval", str(run_dir), "--episodes", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "mean return" in result.stdout
    result = subprocess.run([sys.executable, "-m", "uld.cli", "eval", str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "is not a run directory" in result.stderr and "Traceback" not in result.stderr


def test_load_without_checkpoint_is_one_sentence(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UldError, match="no complete checkpoint"):
        uld.load(tmp_path)


def test_video_of_a_gym_mujoco_task(tmp_path):
    out = train(TrainConfig(env="gym:InvertedPendulum-v5", seed=0, steps=50, eval_every=50, eval_episodes=1,
                            progress=False, out=str(tmp_path / "ip"), uld=TINY))
    video = tmp_path / "ip.mp4"
    evaluate_run(out, episodes=1, video=video)
    assert video.stat().st_size > 1000

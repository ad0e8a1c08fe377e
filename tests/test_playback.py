"""Trained agents are usable: uld.load(...).act, uld eval with returns and an mp4 of an episode."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import uld
from uld.agents.uld.config import reduced_config
from uld.envs import make_env
from uld.errors import UldError
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


def test_eval_is_reproducible_and_writes_a_video(run_dir, tmp_path):
    import imageio.v2 as imageio

    video = tmp_path / "videos" / "episode.mp4"
    returns = evaluate_run(run_dir, episodes=2, video=video)
    assert returns == evaluate_run(run_dir, episodes=2)
    assert all(0 <= r <= 1000 for r in returns)  # 500 agent steps of two env steps, reward at most 1 each
    reader = imageio.get_reader(str(video))
    frames = [frame for frame in reader]
    assert len(frames) == 501  # the reset frame and one per agent step
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

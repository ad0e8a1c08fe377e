"""The run as a user starts it: files written, determinism, learning, and errors on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from uld.agents.uld.config import reduced_config
from uld.train.logger import read_eval_csv
from uld.train.run import TrainConfig, train


def _tiny(tmp_path, name="run", **overrides) -> TrainConfig:
    base = dict(env="gym:Pendulum-v1", seed=0, steps=400, eval_every=200, eval_episodes=2, progress=False,
                out=str(tmp_path / name), log_every=100,
                uld=reduced_config(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16,
                                   random_steps=200, target_update_period=20, buffer_capacity=5000))
    base.update(overrides)
    return TrainConfig(**base)


def test_run_writes_eval_csv_config_and_tensorboard(tmp_path):
    run_dir = train(_tiny(tmp_path))
    rows = read_eval_csv(run_dir / "eval.csv")
    assert [row["step"] for row in rows] == [0, 200, 400]
    assert all(len(row["returns"]) == 2 for row in rows)
    assert all(row["mean_return"] == pytest.approx(sum(row["returns"]) / 2) for row in rows)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["steps"] == 400 and config["uld"]["hidden_dim"] == 32 and config["env"] == "gym:Pendulum-v1"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"eval/mean_return", "critic/loss", "encoder/loss", "actor/loss", "train/reward_scale",
            "critic/q_mean", "train/episode_return"} <= tags
    assert [e.step for e in events.Scalars("eval/mean_return")] == [0, 200, 400]
    # Training metrics are logged from the first logging step after training starts (step 201).
    assert [e.step for e in events.Scalars("critic/loss")] == [300, 400]


def test_same_seed_same_eval_csv(tmp_path):
    first = read_eval_csv(train(_tiny(tmp_path, "a")) / "eval.csv")
    second = read_eval_csv(train(_tiny(tmp_path, "b")) / "eval.csv")
    other = read_eval_csv(train(_tiny(tmp_path, "c", seed=1)) / "eval.csv")
    assert [(r["step"], r["returns"]) for r in first] == [(r["step"], r["returns"]) for r in second]
    assert [r["returns"] for r in first] != [r["returns"] for r in other]


def test_dmc_protocol_defaults_resolve(tmp_path):
    cfg = TrainConfig(env="dmc:cheetah-run").resolved()
    assert (cfg.steps, cfg.eval_every, cfg.eval_episodes) == (500_000, 5_000, 10)
    cfg = TrainConfig(env="gym:HalfCheetah-v5").resolved()
    assert (cfg.steps, cfg.eval_every, cfg.eval_episodes) == (1_000_000, 5_000, 10)
    assert cfg.out.endswith("gym_HalfCheetah-v5/seed0")


def test_dmc_run_short(tmp_path):
    """A few hundred steps of dmc:cartpole-balance through the real trainer (500-step episodes)."""
    import uld
    from uld.envs import make_env
    from uld.train.trainer import evaluate, evaluation_seed

    run_dir = train(_tiny(tmp_path, env="dmc:cartpole-balance", steps=600, eval_every=600, eval_episodes=1))
    rows = read_eval_csv(run_dir / "eval.csv")
    assert [r["step"] for r in rows] == [0, 600]
    # The final evaluation logged is the saved policy's return on the evaluation seed of step 600
    # (to the last bit): what was trained, saved and logged is one and the same policy.
    env = make_env("dmc:cartpole-balance", seed=0, evaluation=True)
    env.reseed(evaluation_seed(0 + 100, 600))
    assert evaluate(uld.load(run_dir).agent, env, 1) == rows[-1]["returns"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "dmc:cheeta-run"], "cheetah-run"),
        (["--env", "gym:HalfCheeta-v5"], "HalfCheetah-v5"),
        (["--env", "pong"], "Unknown env name"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--uld.q-horizon", "0"], "--uld.q-horizon must be a positive integer, got 0"),
        (["--agent", "alm", "--alm.seq-len", "-1"], "--alm.seq-len must be a positive integer, got -1"),
    ],
)
def test_cli_bad_input_is_one_sentence_and_exit_2(args, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", "uld.cli", "train", *args, "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_help_documents_every_hyperparameter():
    # A bare environment (fixed width, nothing on PATH), but the uld under test: the checkout's, when PYTHONPATH
    # names it, rather than whichever uld is installed.
    paths = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
    result = subprocess.run([sys.executable, "-m", "uld.cli", "train", "--help"], capture_output=True, text=True,
                            timeout=120, env={"COLUMNS": "200", "PATH": "", **paths})
    assert result.returncode == 0
    from dataclasses import fields

    from uld.agents.uld.config import ULDConfig

    for field in fields(ULDConfig):
        assert f"--uld.{field.name.replace('_', '-')}" in result.stdout
    for option in ("--env", "--seed", "--steps", "--eval-every", "--eval-episodes", "--out"):
        assert option in result.stdout


@pytest.mark.slow
def test_learns_pendulum_reduced_size(tmp_path):
    """The reduced-size agent reaches a return that a broken update would not (random policy: about -1300)."""
    cfg = TrainConfig(env="gym:Pendulum-v1", seed=0, steps=4000, eval_every=1000, eval_episodes=5, progress=False,
                      out=str(tmp_path / "learn"), uld=reduced_config(random_steps=1000))
    rows = read_eval_csv(train(cfg) / "eval.csv")
    assert rows[0]["mean_return"] < -900
    # Pendulum is solved near -150; the better of the last two evaluations, after 2-3k updates.
    assert max(row["mean_return"] for row in rows[-2:]) > -400, rows

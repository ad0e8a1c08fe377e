"""Env domains by prefix: one registration gives make_env, the protocol, reference names, score
normalization and the report title; a user's own env trains by name or by factory."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import example_env
import test_registry  # noqa: F401  (registers the toy agent: a quick learner for these runs)
from uld.analysis.metrics import normalization_for
from uld.analysis.report import domain_title
from uld.analysis.suites import env_from_reference_name, reference_name
from uld.cli import main
from uld.envs import make_env
from uld.envs.protocol import Protocol, protocol_for
from uld.envs.registry import Domain, Normalization, domains, register_domain
from uld.errors import UldError
from uld.train.config import TrainConfig
from uld.train.logger import read_eval_csv
from uld.train.run import train


def test_a_registered_domain_is_known_everywhere_by_its_one_entry():
    register_domain(Domain(
        prefix="corridor", make=lambda env_id, seed, evaluation: make_env("gym:example_env:Corridor-v0", seed),
        protocol=Protocol(steps=1234, eval_every=100, eval_episodes=3), title="Corridors", example="corridor:one",
        reference_prefix="Corridor-", reference_suffix="-v9",
        normalization=lambda ids: Normalization("distance", True, lambda env, returns: np.asarray(returns) / -50.0),
    ))
    assert make_env("corridor:one", seed=0).spec.obs_shape == (1,)
    assert protocol_for("corridor:one") == Protocol(1234, 100, 3)
    assert TrainConfig(env="corridor:one").resolved().steps == 1234
    assert reference_name("corridor:one") == "Corridor-one-v9" and env_from_reference_name("Corridor-one-v9") == "corridor:one"
    assert normalization_for(["corridor:one"]).score("corridor:one", np.array([-25.0])) == pytest.approx([0.5])
    assert domain_title("corridor:one") == "Corridors"
    with pytest.raises(UldError, match="Unknown env name 'nowhere:one'; names look like .*corridor:one"):
        make_env("nowhere:one", 0)


def test_the_built_in_domains_keep_their_protocols_and_names():
    assert [d.prefix for d in domains()][:5] == ["gym", "dmc", "dmc-pixels", "atari", "python"]
    assert protocol_for("atari:Pong") == Protocol(2_500_000, 100_000, 10)
    assert protocol_for("dmc-pixels:walker-walk") == Protocol(500_000, 5_000, 10)
    assert env_from_reference_name("Dmc-visual-walker-walk") == "dmc-pixels:walker-walk"
    assert env_from_reference_name("Dmc-walker-walk") == "dmc:walker-walk"
    assert domain_title("dmc-pixels:walker-walk") == "DMC visual"


def test_gym_module_colon_id_imports_the_module_that_registers_the_env():
    sys.modules.pop("example_env", None)
    env = make_env("gym:example_env:Corridor-v0", seed=3)
    assert env.spec.name == "gym:example_env:Corridor-v0" and env.spec.max_episode_steps == 50
    obs = env.reset()
    next_obs, reward, *_ = env.step(np.array([1.0], dtype=np.float32))  # +1 is the action space's high, 0.2
    assert next_obs[0] == pytest.approx(obs[0] + 0.2) and reward == pytest.approx(-abs(obs[0] + 0.2 - 1.0))
    with pytest.raises(UldError, match="names the module no_such_module, which cannot be imported"):
        make_env("gym:no_such_module:Corridor-v0", seed=0)


def test_uld_train_trains_on_a_users_gym_env(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--agent", "toy", "--env", "gym:example_env:Corridor-v0", "--steps", "200", "--eval-every",
                 "100", "--out", str(out), "--no-progress"]) == 0
    rows = read_eval_csv(out / "eval.csv")
    assert [row["step"] for row in rows] == [0, 100, 200]
    assert all(-100 < row["mean_return"] < 0 for row in rows)  # 50 steps of minus a distance below 2
    assert json.loads((out / "config.json").read_text())["env"] == "gym:example_env:Corridor-v0"


def test_train_takes_an_env_factory_and_resumes_with_it(tmp_path):
    def config(steps: int) -> TrainConfig:
        return TrainConfig(agent="toy", env=example_env.make_corridor, steps=steps, eval_every=100, eval_episodes=2,
                           out=str(tmp_path / "run"), progress=False)

    run_dir = train(config(100))
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["env"] == "python:example_env:make_corridor"
    train(config(200))
    assert [row["step"] for row in read_eval_csv(run_dir / "eval.csv")] == [0, 100, 200]
    # The factory is found again by its name, so the run's agent loads without it.
    env = make_env(stored["env"], seed=0)
    assert env.spec.name == "python:example_env:make_corridor" and env.spec.max_episode_steps == 50


def test_train_leaves_process_wide_settings_to_the_command(tmp_path, monkeypatch):
    import uld.train.allocator as allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("malloc"))
    threads = torch.get_num_threads()
    args = ["--agent", "toy", "--env", "gym:example_env:Corridor-v0", "--steps", "60", "--eval-every", "60",
            "--eval-episodes", "1", "--no-progress"]
    try:
        train(TrainConfig(agent="toy", env="gym:example_env:Corridor-v0", steps=60, eval_every=60, eval_episodes=1,
                          threads=threads + 1, progress=False, out=str(tmp_path / "python")))
        assert (torch.get_num_threads(), calls) == (threads, [])
        assert main(["train", *args, "--threads", str(threads + 1), "--out", str(tmp_path / "cli")]) == 0
        assert (torch.get_num_threads(), calls) == (threads + 1, ["malloc"])
    finally:
        torch.set_num_threads(threads)

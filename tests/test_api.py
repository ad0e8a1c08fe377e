"""The public API in the uld namespace: train, TrainConfig, make_env and load, without loading torch on import."""

from __future__ import annotations

import subprocess
import sys
import typing

import numpy as np
import pytest

import test_registry  # noqa: F401  (registers the toy agent)
import uld
from uld.errors import UldError
from uld.train.config import TrainConfig
from uld.train.playback import TrainedAgent


def test_import_uld_loads_neither_torch_nor_a_simulator():
    code = "import sys, uld; print(sorted(m for m in ('torch', 'mujoco', 'dm_control', 'gymnasium') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_the_api_trains_loads_and_acts(tmp_path):
    assert uld.TrainConfig is TrainConfig and set(uld.__all__) >= {"train", "TrainConfig", "make_env", "load", "UldError"}
    assert uld.UldError is UldError
    hints = typing.get_type_hints(uld.load, vars(uld) | {"TrainedAgent": TrainedAgent, "torch": __import__("torch")})
    assert hints["return"] is TrainedAgent
    run_dir = uld.train(uld.TrainConfig(agent="toy", env="gym:Pendulum-v1", steps=150, eval_every=150, eval_episodes=1,
                                        out=str(tmp_path / "run"), progress=False))
    trained = uld.load(run_dir, device="cpu")
    assert (trained.step, trained.config.agent, trained.config.steps) == (150, "toy", 150)
    env = uld.make_env(trained.config.env, seed=0, evaluation=True)
    action = trained.act(env.reset())
    assert action.shape == (1,) and np.all(np.abs(action) <= 1)
    with pytest.raises(UldError, match="is not a run directory"):
        uld.load(tmp_path / "nothing")
    # A wrong observation is one sentence naming both shapes, not a torch error from inside the network.
    with pytest.raises(UldError, match=r"one observation of shape \(3,\).*got shape \(4, 3\)"):
        trained.act(np.zeros((4, 3), dtype=np.float32))
    # The parent directory of a many-seed run names its seeds' directories.
    for seed in (10, 2):
        (tmp_path / "many" / f"seed{seed}").mkdir(parents=True)
        (tmp_path / "many" / f"seed{seed}" / "config.json").write_text((run_dir / "config.json").read_text())
    with pytest.raises(UldError, match=r"holds the runs of several seeds \(seed2, seed10\).*many/seed2"):
        uld.load(tmp_path / "many")


def test_act_names_an_observation_that_is_not_numbers():
    """A ragged list, strings, objects or a non-finite value: one sentence, not a numpy or torch error."""

    class Echo:
        def act(self, obs, explore):  # noqa: ARG002
            return np.asarray(obs, dtype=np.float32)[:1]

    trained = TrainedAgent(agent=Echo(), config=TrainConfig(), step=0, obs_shape=(3,))
    assert trained.act([0.0, 1, 2.0]).shape == (1,)
    for bad, message in [([[1.0], [1.0, 2.0], [3.0]], "one observation of shape"),
                         (np.array(["a", "b", "c"]), "numbers"), (np.array([None] * 3, dtype=object), "numbers"),
                         (np.array([0.0, np.nan, 1.0], dtype=np.float32), "a finite observation")]:
        with pytest.raises(UldError, match=message):
            trained.act(bad)

"""Agents by name: a new agent registered here, in a test module, trains and resumes through `uld train`,
and config.json holds only the trained agent's section, with runs of the older two-section format resumed."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from uld.agents import AgentSpec, BuildContext, agent_names, get_agent, register_agent
from uld.agents.alm.config import ALMConfig
from uld.agents.uld.config import ULDConfig, reduced_config
from uld.cli import main
from uld.envs.base import EnvSpec
from uld.envs.protocol import Protocol
from uld.errors import UldError
from uld.train.checkpoint import Checkpointer
from uld.train.config import TrainConfig, config_from_dict, config_to_dict, parse_train_args
from uld.train.logger import read_eval_csv

# ---- a toy agent: a linear policy fitted to the better half of the replay's actions ------------------


@dataclass(frozen=True)
class ToyConfig:
    """The toy agent's hyperparameters."""

    lr: float = 0.01
    """Adam learning rate."""
    batch_size: int = 32
    """Transitions per update."""
    capacity: int = 1000
    """Transitions the replay keeps."""
    random_steps: int = 100
    """Uniformly random actions before training starts."""


class ToyReplay:
    """A ring of (obs, action, reward) with its own seeded sampler."""

    def __init__(self, spec: EnvSpec, config: ToyConfig, seed: int) -> None:
        self.obs = np.zeros((config.capacity, *spec.obs_shape), dtype=np.float32)
        self.action = np.zeros((config.capacity, spec.action_dim), dtype=np.float32)
        self.reward = np.zeros(config.capacity, dtype=np.float32)
        self.size, self.ptr, self.batch_size = 0, 0, config.batch_size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    @property
    def can_sample(self) -> bool:
        return self.size >= self.batch_size

    def add(self, obs, action, reward, next_obs, terminated, truncated) -> None:  # noqa: ARG002
        self.obs[self.ptr], self.action[self.ptr], self.reward[self.ptr] = obs, action, reward
        self.ptr = (self.ptr + 1) % len(self.reward)
        self.size = min(self.size + 1, len(self.reward))

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = self.rng.integers(0, self.size, self.batch_size)
        return (torch.from_numpy(self.obs[index]), torch.from_numpy(self.action[index]),
                torch.from_numpy(self.reward[index]))

    def state_dict(self) -> dict:
        return {"obs": self.obs[: self.size], "action": self.action[: self.size], "reward": self.reward[: self.size],
                "size": self.size, "ptr": self.ptr, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.ptr = int(state["size"]), int(state["ptr"])
        for name in ("obs", "action", "reward"):
            getattr(self, name)[: self.size] = np.asarray(state[name])
        self.rng.bit_generator.state = state["rng"]


class ToyAgent:
    """tanh(W obs + b), regressed onto the actions of the sampled transitions in the batch's top tenth by reward.

    The fixed point is the mean of the best actions tried near each observation. On the one-step task of
    test_agent_contract.py (uniform actions on [-1, 1]^2, r = -mean((a - corner)^2)) the above-median half
    is a quarter disc of area 2 at the corner, whose centroid lies 0.68 from it along each axis: that
    closes at most half of the gap to the best action, where the contract asks for half. The top tenth,
    a quarter disc of radius 0.71, has its centroid 0.30 from the corner and closes about 90%.
    """

    def __init__(self, spec: EnvSpec, config: ToyConfig) -> None:
        self.spec = spec
        self.policy = torch.nn.Linear(spec.obs_shape[0], spec.action_dim)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.updates = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        action = torch.tanh(self.policy(torch.as_tensor(obs, dtype=torch.float32)))
        if explore:
            action = (action + 0.3 * torch.randn_like(action)).clamp(-1, 1)
        return action.numpy()

    def update(self, replay: ToyReplay) -> dict[str, torch.Tensor]:
        obs, action, reward = replay.sample()
        better = (reward >= reward.quantile(0.9)).float()
        loss = (better[:, None] * (torch.tanh(self.policy(obs)) - action) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        return {"toy/loss": loss.detach()}

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])


def build_toy(spec: EnvSpec, config: ToyConfig, context: BuildContext) -> tuple[ToyAgent, ToyReplay]:
    return ToyAgent(spec, config), ToyReplay(spec, config, context.seed)


TOY = register_agent(AgentSpec(
    name="toy", config=ToyConfig, build=build_toy, small=lambda: ToyConfig(batch_size=8),
    protocol=lambda env: Protocol(steps=300, eval_every=100, eval_episodes=1),
    description="a linear policy, for tests", discrete_actions=False, pixels=False,
))


# ---- the toy agent through uld train -------------------------------------------------------------


def _train(out: Path, *args: str) -> int:
    return main(["train", "--agent", "toy", "--env", "gym:Pendulum-v1", "--out", str(out), "--no-progress",
                 "--log-every", "50", *args])


def test_a_registered_agent_trains_and_resumes_through_uld_train(tmp_path):
    assert _train(tmp_path / "run", "--toy.lr", "0.05") == 0
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    # Its protocol sets the budget and cadence; config.json holds its section and no other agent's.
    assert (stored["steps"], stored["eval_every"], stored["eval_episodes"]) == (300, 100, 1)
    assert stored["toy"] == {"lr": 0.05, "batch_size": 32, "capacity": 1000, "random_steps": 100}
    assert not {"uld", "alm", "agent_config"} & set(stored)
    assert [row["step"] for row in read_eval_csv(tmp_path / "run" / "eval.csv")] == [0, 100, 200, 300]
    state, step = Checkpointer(tmp_path / "run" / "checkpoints").load_latest()
    assert step == 300 and state["agent"]["updates"] == 300 - 100

    # 300 then 400 steps equals 400 straight: the same returns and the same weights.
    assert _train(tmp_path / "run", "--toy.lr", "0.05", "--steps", "400") == 0
    assert _train(tmp_path / "straight", "--toy.lr", "0.05", "--steps", "400") == 0
    split, straight = (read_eval_csv(tmp_path / name / "eval.csv") for name in ("run", "straight"))
    assert [(r["step"], r["returns"]) for r in split] == [(r["step"], r["returns"]) for r in straight]
    (a, _), (b, _) = (Checkpointer(tmp_path / name / "checkpoints").load_latest() for name in ("run", "straight"))
    assert torch.equal(a["agent"]["policy"]["weight"], b["agent"]["policy"]["weight"])

    # Another learning rate is another run: refused, naming the option.
    assert _train(tmp_path / "run", "--toy.lr", "0.02", "--steps", "500") == 2


def test_the_options_offered_are_the_chosen_agents_only(capsys):
    assert parse_train_args(["--agent", "toy", "--small"]).agent_config == ToyConfig(batch_size=8)
    assert parse_train_args(["--agent=alm", "--alm.batch-size", "7"]).agent_config == ALMConfig(batch_size=7)
    config = parse_train_args(["--uld.batch-size", "9", "--small"])
    assert config.agent_config == reduced_config(batch_size=9) and config.uld is config.agent_config
    with pytest.raises(UldError, match="Unrecognized options: --uld.batch-size"):
        parse_train_args(["--agent", "alm", "--uld.batch-size", "9"])
    with pytest.raises(UldError, match="unknown agent 'almm'; did you mean alm?"):
        parse_train_args(["--agent", "almm"])


def test_agents_are_listed_built_ins_first():
    assert agent_names()[:4] == ["uld", "drq", "alm", "toy"]
    assert get_agent("alm").protocol_for("gym:Ant-v5").steps == 500_000
    assert get_agent("uld").protocol_for("dmc:cheetah-run").steps == 500_000


def test_python_keywords_name_the_trained_agents_section():
    config = TrainConfig(agent="alm", alm=ALMConfig(batch_size=3), uld=ULDConfig(batch_size=5))
    assert config.agent_config == ALMConfig(batch_size=3) and config.alm.batch_size == 3
    assert TrainConfig(agent="toy", small=True).agent_config == ToyConfig(batch_size=8)
    with pytest.raises(UldError, match="hyperparameters are a ToyConfig, got a ULDConfig"):
        TrainConfig(agent="toy", agent_config=ULDConfig())
    with pytest.raises(AttributeError):
        TrainConfig(agent="toy").uld  # noqa: B018


# ---- config.json written by uld before the registry: every agent's section ---------------------------


def _todays_format(config: TrainConfig) -> dict:
    """config.json as uld wrote it before the registry: every option, then a "uld" and an "alm" section."""
    data = config_to_dict(config)
    sections = {"uld": ULDConfig(), "alm": ALMConfig(), config.agent: config.agent_config}
    data.pop(config.agent)
    return {**data, "uld": dataclasses.asdict(sections["uld"]), "alm": dataclasses.asdict(sections["alm"])}


def test_config_of_todays_format_reads_as_the_trained_agents_config():
    alm = ALMConfig(batch_size=16, lr=3e-4)
    data = _todays_format(TrainConfig(agent="alm", env="gym:Hopper-v5", seed=2, alm=alm))
    assert set(data) >= {"uld", "alm"}
    config = config_from_dict(data)
    assert (config.agent, config.env, config.seed, config.agent_config) == ("alm", "gym:Hopper-v5", 2, alm)
    assert config_to_dict(config)["alm"] == dataclasses.asdict(alm) and "uld" not in config_to_dict(config)


def test_a_run_written_in_todays_format_resumes_exactly(tmp_path):
    tiny = ["--small", "--uld.batch-size", "16", "--uld.hidden-dim", "32", "--uld.zs-dim", "32", "--uld.zsa-dim", "32",
            "--uld.za-dim", "16", "--uld.random-steps", "100", "--uld.target-update-period", "20",
            "--uld.buffer-capacity", "2000"]

    def run(out: Path, steps: int) -> int:
        return main(["train", "--env", "gym:Pendulum-v1", "--seed", "1", "--steps", str(steps), "--eval-every", "50",
                     "--eval-episodes", "1", "--out", str(out), "--no-progress", *tiny])

    assert run(tmp_path / "old", 150) == 0
    path = tmp_path / "old" / "config.json"
    path.write_text(json.dumps(_todays_format(config_from_dict(json.loads(path.read_text())))))
    assert run(tmp_path / "old", 250) == 0
    assert run(tmp_path / "straight", 250) == 0
    old, straight = (read_eval_csv(tmp_path / name / "eval.csv") for name in ("old", "straight"))
    assert [(r["step"], r["returns"]) for r in old] == [(r["step"], r["returns"]) for r in straight]
    rewritten = json.loads(path.read_text())
    assert "alm" not in rewritten and rewritten["uld"]["batch_size"] == 16


def test_installed_packages_reach_the_registries_through_entry_points(monkeypatch):
    import sys
    from importlib.metadata import EntryPoint

    import uld.plugins

    declared = {"uld.agents": [EntryPoint(name="corridor", value="example_env", group="uld.agents")],
                "uld.envs": [EntryPoint(name="broken", value="no_such_module", group="uld.envs")]}
    monkeypatch.setattr(uld.plugins, "entry_points", lambda group: declared[group])
    monkeypatch.delitem(sys.modules, "example_env", raising=False)
    uld.plugins.load_plugins("uld.agents")
    assert "example_env" in sys.modules  # imported: its registrations ran
    with pytest.raises(UldError, match=r"the uld.envs plugin broken \(no_such_module\) failed to load"):
        uld.plugins.load_plugins("uld.envs")

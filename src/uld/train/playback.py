"""Using trained agents: load one from its run directory, evaluate it, film an episode."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from uld.agents import build_agent
from uld.envs import make_env
from uld.errors import UldError
from uld.train.checkpoint import Checkpointer

if TYPE_CHECKING:
    from uld.train.config import TrainConfig


@dataclass
class TrainedAgent:
    """A trained agent with its run's configuration; act(obs) is the deterministic policy."""

    agent: Any
    """The agent, as its registered builder made it (uld.agents.registry)."""
    config: TrainConfig
    """The run's configuration, from its config.json."""
    step: int
    """The agent steps the checkpoint was taken at."""
    obs_shape: tuple[int, ...] | None = None
    """The shape of one observation the policy takes (None: not checked)."""

    def act(self, obs: np.ndarray) -> np.ndarray | int:
        """The evaluation action for one observation (no exploration noise)."""
        try:
            shape: tuple | str = tuple(np.shape(obs))
        except ValueError:  # a ragged nested list
            shape = "a ragged sequence"
        if self.obs_shape is not None and shape != tuple(self.obs_shape):
            raise UldError(f"act takes one observation of shape {tuple(self.obs_shape)} (the run's env "
                           f"{self.config.env}), got {'shape ' if isinstance(shape, tuple) else ''}{shape}; "
                           "pass one observation at a time")
        if not isinstance(obs, torch.Tensor):
            values = np.asarray(obs)
            if values.dtype.kind not in "biuf":
                raise UldError(f"act takes an observation of numbers, got an array of {values.dtype}; pass the "
                               f"env's observation as it is (a numpy array of shape {shape})")
            if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
                raise UldError("act takes a finite observation, got one with NaN or infinite values; check "
                               "the env or the code that builds the observation")
        return self.agent.act(obs, explore=False)


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedAgent:
    """Load the agent of a run directory from its newest complete checkpoint.

    Raises UldError when the directory holds no run or no checkpoint.
    """
    from uld.train.checkpoint import check_run_state
    from uld.train.config import config_from_dict, read_run_config

    run_dir = Path(run_dir)
    config = config_from_dict(read_run_config(run_dir))
    loaded = Checkpointer(run_dir / "checkpoints", validate=check_run_state).load_latest()
    if loaded is None:
        raise UldError(f"{run_dir} has no complete checkpoint yet; train longer or resume the run first")
    state, step = loaded
    env = make_env(config.env, seed=config.seed + 100, evaluation=True)
    agent, _ = build_agent(config.agent, env.spec, config.agent_config, device=device,
                           precision="fp32", seed=config.seed, total_steps=config.steps)
    env.close()
    try:
        agent.load_state_dict(state["agent"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise UldError(f"the checkpoint of step {step} in {run_dir} does not fit the agent its config.json "
                       f"describes ({error}); the two belong to different runs") from None
    return TrainedAgent(agent=agent, config=config, step=step, obs_shape=env.spec.obs_shape)


def _frame(env) -> np.ndarray:
    try:
        return env.render(height=256, width=256)  # dm_control renders at any size
    except TypeError:
        return env.render()


def evaluate_run(run_dir: str | Path, episodes: int = 10, video: str | Path | None = None,
                 seed_offset: int = 100) -> list[float]:
    """Evaluate a run's trained policy for `episodes` episodes on an env seeded with seed + seed_offset.

    With `video`, the first episode is also written as an mp4 through the env's renderer.
    """
    if episodes <= 0:
        raise UldError(f"--episodes must be a positive integer, got {episodes}")
    trained = load(run_dir)
    env = make_env(trained.config.env, seed=trained.config.seed + seed_offset, evaluation=True)
    writer = None
    if video is not None:
        try:
            import imageio.v2 as imageio
        except ImportError as error:
            raise UldError("writing a video needs imageio and imageio-ffmpeg: pip install 'uld[video]'") from error
        Path(video).parent.mkdir(parents=True, exist_ok=True)
        writer = imageio.get_writer(str(video), fps=30, macro_block_size=8)
    returns = []
    try:
        for episode in range(episodes):
            obs, done, total = env.reset(), False, 0.0
            film = writer is not None and episode == 0
            if film:
                writer.append_data(_frame(env))
            while not done:
                obs, reward, terminated, truncated, _ = env.step(trained.act(obs))
                total += reward
                done = terminated or truncated
                if film:
                    writer.append_data(_frame(env))
            returns.append(total)
    finally:
        if writer is not None:
            writer.close()
        env.close()
    return returns


def summary(returns: list[float]) -> str:
    spread = statistics.pstdev(returns) if len(returns) > 1 else 0.0
    return f"mean return {statistics.fmean(returns):.1f} ± {spread:.1f} over {len(returns)} episodes"

"""Using trained agents: load one from its run directory, evaluate it, film an episode."""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from uld.agents import build_agent
from uld.envs import make_env
from uld.errors import UldError, first_detail
from uld.train import files
from uld.train.checkpoint import Checkpointer
from uld.train.lock import locked_file

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
        if isinstance(obs, torch.Tensor):
            values = (obs.detach().float() if obs.is_floating_point() else obs.detach()).cpu().numpy()
        else:
            values = np.asarray(obs)
        if values.dtype.kind not in "biuf":
            raise UldError(f"act takes an observation of numbers, got an array of {values.dtype}; pass the "
                           f"env's observation as it is (a numpy array of shape {shape})")
        # As the policy sees it: a float64 value beyond float32's range is infinite there.
        with np.errstate(over="ignore"):  # an overflow is what this looks for, not a warning
            finite = values.dtype.kind != "f" or bool(np.all(np.isfinite(values.astype(np.float32))))
        if not finite:
            raise UldError("act takes a finite observation (within float32's range), got one with NaN, infinite "
                           "or overflowing values; check the env or the code that builds the observation")
        action = self.agent.act(obs, explore=False)
        if not np.all(np.isfinite(np.asarray(action, dtype=np.float64))):
            raise UldError(f"the policy of {self.config.env} (step {self.step}) gave a non-finite action for a finite "
                           "observation; its checkpoint holds non-finite weights or the observation is far outside "
                           "what it was trained on")
        return action


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
                       f"describes ({first_detail(error)}); the two belong to different runs") from None
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
    if video is None:
        return _evaluate(trained, episodes, seed_offset, None)
    try:
        import imageio.v2 as imageio
    except ImportError as error:
        raise UldError("writing a video needs imageio and imageio-ffmpeg: pip install 'uld[video]'") from error
    video = Path(video)
    if video.is_dir():
        raise UldError(f"--video {video} is a directory; pass a file name ending in .mp4")
    with files.folder_for(video), locked_file(video, "--video"):
        # Filmed into a temporary file beside it and renamed into place through the one writing place: ffmpeg's
        # failures (a full disk, a read-only folder: a broken pipe to it) are one sentence and leave no partial video.
        partial = video.with_name(video.name + ".tmp.mp4")
        try:
            files.seam("write", partial)
            writer = _Film(imageio.get_writer(str(partial), fps=30, macro_block_size=8, format="FFMPEG"))
            try:
                returns = _evaluate(trained, episodes, seed_offset, writer)
            finally:
                writer.close()
            files.rename(partial, video)
        except (_FilmFailed, OSError, RuntimeError, ValueError) as error:
            cause = error.__cause__ if isinstance(error, _FilmFailed) else error
            raise files.write_error(video, _ffmpeg_cause(cause), "no video was written") from None
        finally:
            partial.unlink(missing_ok=True)
    return returns


class _FilmFailed(Exception):
    """The video writer failed (its error is the cause); an error of the env or the agent is not this."""


class _Film:
    """imageio's writer, its failures told apart from the episode's."""

    def __init__(self, writer):
        self.writer = writer

    def append_data(self, frame) -> None:
        try:
            self.writer.append_data(frame)
        except (OSError, RuntimeError, ValueError) as error:
            raise _FilmFailed() from error

    def close(self) -> None:
        failing = sys.exc_info()[0] is not None  # another error on its way out is the one to tell
        try:
            self.writer.close()
        except (OSError, RuntimeError, ValueError) as error:
            if not failing:
                raise _FilmFailed() from error


def _ffmpeg_cause(error: BaseException) -> BaseException:
    """A broken pipe to ffmpeg says nothing of why ffmpeg stopped: its own last line does, when imageio kept it."""
    if isinstance(error, BrokenPipeError):
        return RuntimeError("ffmpeg stopped while the frames were written to it: the disk may be full or the folder "
                            "not writable")
    return error


def _evaluate(trained: TrainedAgent, episodes: int, seed_offset: int, writer) -> list[float]:
    """Returns of `episodes` episodes; with `writer`, the first is filmed into it."""
    env = make_env(trained.config.env, seed=trained.config.seed + seed_offset, evaluation=True)
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
        env.close()
    return returns


def summary(returns: list[float]) -> str:
    spread = statistics.pstdev(returns) if len(returns) > 1 else 0.0
    return f"mean return {statistics.fmean(returns):.1f} ± {spread:.1f} over {len(returns)} episodes"

"""Checkpoint size and save/load time for full replay buffers.

    python benchmarks/checkpoint.py                    # 1M-capacity state buffer, Atari buffer of 100k frames
    python benchmarks/checkpoint.py --state-transitions 200000 --atari-frames 0

Each case fills a buffer of the given size with synthetic transitions (the contents do not change the
size or the time), adds a full-size ULD agent, and writes the checkpoint the way a run does
(temporary file, fsync, rename, checksum), then loads it back with weights-only loading.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import ULDConfig
from uld.envs.base import EnvSpec
from uld.train.checkpoint import Checkpointer


def fill(buffer, spec: EnvSpec, transitions: int, episode_length: int) -> None:
    rng = np.random.default_rng(0)
    if spec.pixels:  # a stack that repeats one frame, as at an episode's start
        frame = rng.integers(0, 255, size=(spec.obs_shape[0] // spec.frame_history, *spec.obs_shape[1:]), dtype=np.uint8)
        obs = np.concatenate([frame] * spec.frame_history)
    else:
        obs = rng.normal(size=spec.obs_shape).astype(np.float32)
    action = np.zeros(spec.action_dim, dtype=np.float32)
    action[0] = 1.0
    for t in range(transitions):
        buffer.add(obs, action, float(t % 7), obs, False, (t + 1) % episode_length == 0)


def measure(name: str, spec: EnvSpec, transitions: int, episode_length: int) -> str:
    config = ULDConfig(buffer_capacity=transitions + transitions // episode_length + 16)
    buffer = make_buffer(spec, config, seed=0)
    fill(buffer, spec, transitions, episode_length)
    agent = ULDAgent(spec, config)
    with tempfile.TemporaryDirectory(dir=".") as directory:
        checkpointer = Checkpointer(Path(directory))
        start = time.perf_counter()
        path = checkpointer.save({"agent": agent.state_dict(), "buffer": buffer.state_dict()}, transitions)
        save_s = time.perf_counter() - start
        size = path.stat().st_size
        start = time.perf_counter()
        checkpointer.load_latest()
        load_s = time.perf_counter() - start
    return f"| {name} | {transitions:,} | {size / 1e6:,.0f} MB | {save_s:.2f} s | {load_s:.2f} s |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-transitions", type=int, default=1_000_000)
    parser.add_argument("--atari-frames", type=int, default=100_000)
    args = parser.parse_args()
    print("| buffer | transitions | checkpoint size | save (write + fsync + checksum) | load (verify + weights-only) |")
    print("|---|---|---|---|---|")
    if args.state_transitions:
        spec = EnvSpec("HalfCheetah-sized state", (17,), 6, False, 1000)
        print(measure("state, 17-d obs, 6-d action (HalfCheetah)", spec, args.state_transitions, 1000), flush=True)
    if args.atari_frames:
        spec = EnvSpec("Atari", (4, 84, 84), 18, True, 27_000, pixels=True, frame_history=4)
        print(measure("Atari, 84x84 frames, 18 actions", spec, args.atari_frames, 2_000), flush=True)


if __name__ == "__main__":
    main()

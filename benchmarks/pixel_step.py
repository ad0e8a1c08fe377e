"""Milliseconds per full-size ULD training step on pixel observations, fp32 and bf16, measured in one process.

    python benchmarks/pixel_step.py --threads 2 --warmup 1 --repeats 3

Inputs: Atari stacks (4, 84, 84) with 18 actions (the full action set, which sets the parameter
count of spec/ULD.md: 4.16M) and DMC visual stacks (9, 84, 84) with 6 continuous actions. The replay
is a FrameStackBuffer filled with random frames (the step's cost does not depend on what the pixels
show). A training step is ULD's average work per environment step: one encoder update on a batch of
256 five-step subsequences, one value and one policy update on 256 three-step subsequences; the
agent is timed with a target period of 1 so that every call does exactly that (plus a cheap target
copy). Sampling and rebuilding the frame stacks are part of the step and are also timed alone.
fp32 and bf16 steps alternate and the bf16 / fp32 ratio is the median over consecutive pairs: it is
the number to quote, since absolute times move with the machine's load, printed with the table.
The floor is the step's convolutions and GEMMs replayed alone (benchmarks/floor.py). Last, the whole
training loop on real envs (rendering, stacking, acting, the same update) is timed for --e2e-steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import numpy as np
import torch
from floor import RecordKernels  # the floor: the step's convolutions and GEMMs alone (benchmarks/floor.py)
from update_speed import end_to_end  # the training loop, timed (shared with the other speed benchmarks)

from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import ULDConfig
from uld.envs import make_env
from uld.envs.base import EnvSpec
from uld.train.allocator import keep_freed_memory

SPECS = {
    "atari": EnvSpec("atari:benchmark", (4, 84, 84), 18, True, 27_000, pixels=True, frame_history=4),
    "dmc-pixels": EnvSpec("dmc-pixels:benchmark", (9, 84, 84), 6, False, 500, pixels=True, frame_history=3),
}


def fill(buffer, spec: EnvSpec, transitions: int, episode_length: int = 500) -> None:
    """Random frames in episodes of `episode_length`, stacked the way the envs stack them."""
    rng = np.random.default_rng(0)
    channels = spec.obs_shape[0] // spec.frame_history
    frame_shape = (channels, *spec.obs_shape[1:])
    for t in range(transitions):
        step = t % episode_length
        if step == 0:
            frames = [rng.integers(0, 256, frame_shape, dtype=np.uint8)] * spec.frame_history
        obs = np.concatenate(frames)
        frames = frames[1:] + [rng.integers(0, 256, frame_shape, dtype=np.uint8)]
        if spec.discrete:
            action = np.eye(spec.action_dim, dtype=np.float32)[rng.integers(spec.action_dim)]
        else:
            action = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
        buffer.add(obs, action, float(rng.normal()), np.concatenate(frames), False, step == episode_length - 1)


def time_call(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--transitions", type=int, default=3_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--e2e-steps", type=int, default=5, help="training-loop steps timed on real envs (0: skip)")
    parser.add_argument("--e2e-envs", nargs="+", default=["atari:Pong", "dmc-pixels:cheetah-run"])
    args = parser.parse_args()
    # As `uld train` does (ULD_KEEP_FREED_MEMORY=0 measures without it).
    print(f"malloc keeps freed memory (uld/train/allocator.py): {keep_freed_memory()}")
    torch.set_num_threads(args.threads)
    config = dataclasses.replace(ULDConfig(), target_update_period=1, buffer_capacity=args.transitions + 100)

    load_before = os.getloadavg()[0]
    rows = []
    for domain, spec in SPECS.items():
        buffer = make_buffer(spec, config, seed=0, device=args.device)
        fill(buffer, spec, args.transitions)
        sample = [time_call(lambda: buffer.sample(config.batch_size, config.enc_horizon).obs.float())
                  for _ in range(args.repeats)]
        steps = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            agent = ULDAgent(spec, config, device=args.device, precision=precision)

            def step(agent: ULDAgent = agent) -> None:
                metrics = agent.update(buffer)
                float(next(iter(metrics.values())))  # wait for the device before stopping the clock

            steps[precision] = step
        for _ in range(args.warmup):
            for step in steps.values():
                step()
        floors = {}
        for precision, step in steps.items():
            with RecordKernels() as kernels:
                step()
            floors[precision] = kernels.floor_ms(repeats=2)
        # fp32 and bf16 steps alternate, so that a change in the machine's load hits both alike;
        # the ratio is the median over the pairs.
        seconds: dict[str, list[float]] = {precision: [] for precision in steps}
        for _ in range(args.repeats):
            for precision, step in steps.items():
                seconds[precision].append(time_call(step))
        ratios = [bf16 / fp32 for fp32, bf16 in zip(seconds["fp32"], seconds["bf16"])]
        for precision, times in seconds.items():
            ratio = statistics.median(ratios) if precision == "bf16" else 1.0
            rows.append((domain, precision, statistics.median(times) * 1e3, min(times) * 1e3, max(times) * 1e3,
                         statistics.median(sample) * 1e3, ratio, floors[precision]))
        params = sum(p.numel() for m in (agent.encoder, agent.policy, agent.value) for p in m.parameters())
        print(f"{domain}: {params:,} parameters", flush=True)

    print(f"device {args.device}, torch threads {torch.get_num_threads()}, load average {load_before:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores, {args.repeats} timed steps after {args.warmup}")
    print(f"{'inputs':<11} {'precision':<9} {'ms/step':>9} {'min':>9} {'max':>9} {'sample ms':>10} {'vs fp32':>8} "
          f"{'floor ms':>9} {'fraction':>9}")
    for domain, precision, ms, low, high, sample_ms, ratio, floor_ms in rows:
        print(f"{domain:<11} {precision:<9} {ms:>9.0f} {low:>9.0f} {high:>9.0f} {sample_ms:>10.1f} {ratio:>8.2f} "
              f"{floor_ms:>9.0f} {floor_ms / ms:>9.2f}")

    if args.e2e_steps:
        # The training loop on the real env (rendering, frame stacking, acting), fp32, with the same
        # average work per step as above (target period 1), after a replay of random frames.
        print(f"\n{'env':<24} {'env steps/s end to end':>24}")
        for name in args.e2e_envs:
            env = make_env(name, seed=0)
            torch.manual_seed(0)
            agent = ULDAgent(env.spec, config, device=args.device)
            buffer = make_buffer(env.spec, config, seed=0, device=args.device)
            fill(buffer, env.spec, args.transitions)
            agent.update(buffer)  # warm-up
            print(f"{name:<24} {end_to_end(agent, buffer, env, args.e2e_steps):>24.2f}")


if __name__ == "__main__":
    main()

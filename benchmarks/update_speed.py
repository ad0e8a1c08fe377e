"""Milliseconds per training update of the full-size ALM and ULD agents, measured in one process.

    OMP_NUM_THREADS=1 python benchmarks/update_speed.py --env gym:HalfCheetah-v5 --warmup 3 --repeats 10

Both agents learn from a replay filled with the same random-action transitions of the env. One ALM
update is steps 1-5 of spec/ALM.md (four Adam steps on batches of 512). ULD's schedule does, per
environment step, on average one encoder, one value and one policy update, with the encoder updates
bunched every 250 steps; ULD is timed with a target period of 1 so that every call does exactly that
amount of work (plus one cheap target copy). Both run in fp32 unless --precision says otherwise.
The floor columns come from benchmarks/floor.py (the update's GEMMs replayed alone). Last, each
agent's whole training loop (act, env, replay, its real update schedule) is timed for --e2e-steps.
The two agents' updates are timed alternately, so the ratio column holds even when the machine's load
moves the absolute numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from floor import RecordKernels  # the GEMM floor (benchmarks/floor.py)

from uld.agents import build_agent
from uld.agents.alm.config import ALMConfig
from uld.agents.uld.config import ULDConfig
from uld.envs import make_env
from uld.train.allocator import keep_freed_memory


def fill(buffer, env, transitions: int) -> None:
    """Store `transitions` uniformly random steps of the env."""
    obs = env.reset()
    for _ in range(transitions):
        action = env.sample_action()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        obs = env.reset() if terminated or truncated else next_obs


def end_to_end(agent, buffer, env, steps: int) -> float:
    """Environment steps per second of the training loop after the random phase: act, env.step,
    buffer.add and agent.update (with the agent's own schedule: for ULD, run a multiple of its target
    period so that the encoder bursts are averaged in)."""
    obs = env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        action = agent.act(obs, explore=True)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        obs = env.reset() if terminated or truncated else next_obs
        float(next(iter(agent.update(buffer).values())))  # wait for the device
    return steps / (time.perf_counter() - start)


def time_update(agent, buffer) -> float:
    """Seconds of one update, waiting for the device before the clock stops."""
    start = time.perf_counter()
    metrics = agent.update(buffer)
    float(next(iter(metrics.values())))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="gym:HalfCheetah-v5")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--transitions", type=int, default=5_000, help="random transitions in each replay")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--e2e-steps", type=int, default=250,
                        help="training-loop steps timed end to end per agent, with ULD's real schedule (0: skip)")
    args = parser.parse_args()
    # As `uld train` does (ULD_KEEP_FREED_MEMORY=0 measures without it).
    print(f"malloc keeps freed memory (uld/train/allocator.py): {keep_freed_memory()}")

    torch.manual_seed(0)
    configs = {
        "alm": ALMConfig(),
        "uld": dataclasses.replace(ULDConfig(), target_update_period=1),
    }
    agents, floors = {}, {}
    for name, config in configs.items():
        env = make_env(args.env, seed=0)
        agent, buffer = build_agent(name, env.spec, config, device=args.device, precision=args.precision,
                                    seed=0, total_steps=100_000)
        fill(buffer, env, args.transitions)
        env.close()
        for _ in range(args.warmup):
            agent.update(buffer)
        with RecordKernels() as kernels:
            agent.update(buffer)
        floors[name] = kernels.floor_ms()
        agents[name] = (agent, buffer)
    # Interleaved (ALM, ULD, ALM, ULD, ...) so that both see the same background load.
    seconds: dict[str, list[float]] = {name: [] for name in agents}
    for _ in range(args.repeats):
        for name, (agent, buffer) in agents.items():
            seconds[name].append(time_update(agent, buffer))
    rows = []
    for name, (agent, _) in agents.items():
        # Targets are frozen copies (requires_grad False), so this counts the online networks only.
        params = sum(p.numel() for module in vars(agent).values() if isinstance(module, torch.nn.Module)
                     for p in module.parameters() if p.requires_grad)
        times = seconds[name]
        rows.append((name, statistics.median(times) * 1e3, min(times) * 1e3, max(times) * 1e3, params, floors[name]))

    alm_ms = rows[0][1]
    print(f"env {args.env}, device {args.device}, precision {args.precision}, torch threads {torch.get_num_threads()}, "
          f"{args.warmup} warm-up + {args.repeats} timed updates")
    print("| agent | ms/update (median) | min | max | trainable params | ratio to ALM | matmul floor ms | fraction of floor |")
    print("|---|---|---|---|---|---|---|---|")
    for name, median, low, high, params, floor_ms in rows:
        print(f"| {name} | {median:.1f} | {low:.1f} | {high:.1f} | {params / 1e6:.2f}M | {median / alm_ms:.2f} | "
              f"{floor_ms:.1f} | {floor_ms / median:.2f} |")
    if args.e2e_steps:
        print("\n| agent | env steps/s end to end (training loop after the random phase) |\n|---|---|")
        for name, config in {"alm": ALMConfig(), "uld": ULDConfig()}.items():
            env = make_env(args.env, seed=0)
            agent, buffer = build_agent(name, env.spec, config, device=args.device, precision=args.precision,
                                        seed=0, total_steps=100_000)
            fill(buffer, env, args.transitions)
            print(f"| {name} | {end_to_end(agent, buffer, env, args.e2e_steps):.2f} |")


if __name__ == "__main__":
    main()

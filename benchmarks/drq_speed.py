"""Milliseconds per training update of the full-size DR.Q and ULD agents, measured in one process, against
what their FLOPs say.

    OMP_NUM_THREADS=1 python benchmarks/drq_speed.py --env dmc:cheetah-run --warmup 3 --repeats 10

DR.Q is ULD's update with another configuration (docs/drq.md): a wider encoder (750 against 512 hidden
units), an InfoNCE term (a B x B matrix of cosine similarities at each of the 5 unroll steps) and a faded
replay (two sum trees). Both agents are timed with a target period of 1, so that every call does one
encoder, one value and one policy update (plus a cheap target copy), which is what one environment step
costs on average with the real period of 250. They learn from replays filled with the same random steps of
the env, and are timed alternately, so that the ratio holds when the machine's load moves the absolute
numbers. The table gives each update's GEMM FLOPs and its GEMM floor (benchmarks/floor.py: the update's
matmuls, and convolutions on pixels, replayed alone) and the ratios DR.Q / ULD of all
three: if the time ratio is close to the FLOP and floor ratios, DR.Q costs what its extra arithmetic
says, no more. Last, the cost of a draw from each replay (the faded one descends two trees).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from floor import RecordKernels  # the GEMM floor (benchmarks/floor.py)
from update_speed import fill, time_update

from uld.agents import build_agent
from uld.agents.drq.config import DRQConfig
from uld.agents.uld.config import ULDConfig
from uld.envs import make_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="dmc:cheetah-run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--transitions", type=int, default=5_000, help="random transitions in each replay")
    parser.add_argument("--draws", type=int, default=200, help="timed replay draws of one batch each")
    args = parser.parse_args()
    print(f"env {args.env}, torch threads {torch.get_num_threads()}, load average "
          f"{open('/proc/loadavg').read().split()[:3]}")

    configs = {"uld": dataclasses.replace(ULDConfig(), target_update_period=1),
               "drq": dataclasses.replace(DRQConfig(), target_update_period=1)}
    agents: dict = {}
    flops: dict[str, float] = {}
    floors: dict[str, float] = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        env = make_env(args.env, seed=0)
        agent, buffer = build_agent(name, env.spec, config, device="cpu", precision="fp32", seed=0,
                                    total_steps=100_000)
        fill(buffer, env, args.transitions)
        env.close()
        for _ in range(args.warmup):
            agent.update(buffer)
        with RecordKernels() as kernels:
            agent.update(buffer)
        flops[name], floors[name] = kernels.gflop, kernels.floor_ms()
        agents[name] = (agent, buffer)
    seconds: dict[str, list[float]] = {name: [] for name in agents}
    draws: dict[str, list[float]] = {name: [] for name in agents}
    for _ in range(args.repeats):  # interleaved: both agents see the same background load
        for name, (agent, buffer) in agents.items():
            seconds[name].append(time_update(agent, buffer))
            start = time.perf_counter()
            for _ in range(args.draws):
                buffer.sample(configs[name].batch_size, configs[name].horizon)
            draws[name].append((time.perf_counter() - start) / args.draws)

    print("| agent | ms/update (median) | min | max | GFLOP/update | GEMM floor ms | replay draw ms (median) |")
    print("|---|---|---|---|---|---|---|")
    for name in agents:
        times = seconds[name]
        print(f"| {name} | {statistics.median(times) * 1e3:.1f} | {min(times) * 1e3:.1f} | {max(times) * 1e3:.1f} | "
              f"{flops[name]:.2f} | {floors[name]:.1f} | {statistics.median(draws[name]) * 1e3:.3f} |")
    time_ratio = statistics.median(seconds["drq"]) / statistics.median(seconds["uld"])
    print(f"\nDR.Q / ULD: time {time_ratio:.2f}, FLOPs {flops['drq'] / flops['uld']:.2f}, "
          f"GEMM floor {floors['drq'] / floors['uld']:.2f}, replay draw "
          f"{statistics.median(draws['drq']) / statistics.median(draws['uld']):.2f}")


if __name__ == "__main__":
    main()

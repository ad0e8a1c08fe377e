"""How fast uld collects and trains on this machine, and how close the step is to the matmul floor.

    python benchmarks/speed.py                      # HalfCheetah-sized ULD, fp32 and bf16
    python benchmarks/speed.py --precision fp32 --steps 20 --compile

Four measurements, in one run so that their ratios are meaningful on a noisy machine:
1. Collection in the random phase: agent steps per second of env.step + sample_action + buffer.add,
   against the bare env (the buffer must not cost more than the env itself).
2. Milliseconds per training step at full size: one encoder update plus one value and policy update,
   which is what one environment step costs on average (encoder updates come in bursts of T). Each
   way of running the step (fp32 GEMMs on PyTorch's default BLAS or on oneDNN; with --compile also
   torch.compile'd) has its own agent, and their steps are interleaved; the median is reported.
3. The matmul floor (benchmarks/floor.py): every matrix multiply of one training step replayed back to
   back, each shape on the faster of torch.mm and a bare oneDNN GEMM; floor time / step time is the
   fraction of this CPU's matmul throughput the step achieves.
4. End to end: environment steps per second of the whole training loop after the random phase
   (acting, env, replay, and the update schedule with its encoder bursts), --e2e-steps long.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from uld.agents.linear import set_onednn
from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import ULDConfig
from uld.envs import make_env
from uld.train.allocator import keep_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from floor import RecordKernels  # noqa: E402  (the GEMM floor, shared with the other speed benchmarks)
from update_speed import end_to_end, fill  # noqa: E402  (shared with the update benchmark)


def collection_rate(env_name: str, steps: int) -> tuple[float, float]:
    """(bare env steps/s, env + sample_action + buffer.add steps/s) with random actions."""
    env = make_env(env_name, seed=0)
    env.reset()
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.sample_action())
        if terminated or truncated:
            env.reset()
    bare = steps / (time.perf_counter() - start)

    buffer = make_buffer(env.spec, ULDConfig(), seed=0)  # full 1M capacity, as in a real run
    start = time.perf_counter()
    fill(buffer, env, steps)
    with_buffer = steps / (time.perf_counter() - start)
    return bare, with_buffer


def filled_agent(env_name: str, precision: str, compiled: bool = False) -> tuple[ULDAgent, object]:
    env = make_env(env_name, seed=0)
    cfg = ULDConfig(buffer_capacity=50_000)
    agent = ULDAgent(env.spec, cfg, precision=precision, compiled=compiled)
    buffer = make_buffer(env.spec, cfg, seed=0)
    fill(buffer, env, 20_000)
    return agent, buffer


def one_step(agent: ULDAgent, buffer) -> None:
    """What one environment step costs on average: one encoder update, one value + policy update."""
    agent._update_encoder(buffer)
    agent._update_value_and_policy(buffer)


PATHS = {
    "F.linear (default BLAS)": dict(onednn=False, compile=False),
    "oneDNN Linear (uld default)": dict(onednn=True, compile=False),
    "oneDNN Linear + --compile": dict(onednn=True, compile=True),
}
"""The ways to run the same step: fp32 GEMMs on PyTorch's default BLAS (MKL), on oneDNN, and compiled."""


def time_paths(env_name: str, precision: str, paths: list[str], steps: int) -> dict[str, float]:
    """Median ms per step of each path, the paths' steps interleaved so that load drifts hit all alike."""
    agents, onednn_before = {}, set_onednn(True)
    for path in paths:
        agents[path] = filled_agent(env_name, precision, compiled=PATHS[path]["compile"])
        set_onednn(PATHS[path]["onednn"])
        for _ in range(3):  # warm-up, and compilation for the compiled path
            one_step(*agents[path])
    times: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(steps):
        for path, (agent, buffer) in agents.items():
            set_onednn(PATHS[path]["onednn"])
            start = time.perf_counter()
            one_step(agent, buffer)
            times[path].append((time.perf_counter() - start) * 1000)
    set_onednn(onednn_before)
    return {path: statistics.median(samples) for path, samples in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="gym:HalfCheetah-v5")
    parser.add_argument("--collect-env", nargs="+", default=["gym:HalfCheetah-v5", "dmc:cheetah-run"])
    parser.add_argument("--collect-steps", type=int, default=20_000)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per precision")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd step")
    parser.add_argument("--e2e-steps", type=int, default=250, help="training-loop steps timed end to end (0: skip)")
    args = parser.parse_args()
    # As `uld train` does (ULD_KEEP_FREED_MEMORY=0 measures without it).
    print(f"malloc keeps freed memory (uld/train/allocator.py): {keep_freed_memory()}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {open('/proc/loadavg').read().split()[:3]}")

    print("\n| env | bare env steps/s | env + buffer.add steps/s | ratio |\n|---|---|---|---|")
    for name in args.collect_env:
        bare, with_buffer = collection_rate(name, args.collect_steps)
        print(f"| {name} | {bare:,.0f} | {with_buffer:,.0f} | {with_buffer / bare:.2f} |")

    print("\n| precision | path | ms per training step (median) | matmul floor ms | fraction of floor | GFLOP per step |"
          "\n|---|---|---|---|---|---|")
    for precision in args.precision:
        agent, buffer = filled_agent(args.env, precision)
        one_step(agent, buffer)
        with RecordKernels() as kernels:
            one_step(agent, buffer)
        gflop, floor_ms = kernels.gflop, kernels.floor_ms()
        # bf16 GEMMs go to oneDNN either way: only eager and compiled differ there.
        paths = [p for p in PATHS if (args.compile or not PATHS[p]["compile"])
                 and (precision == "fp32" or PATHS[p]["onednn"])]
        for path, step_ms in time_paths(args.env, precision, paths, args.steps).items():
            print(f"| {precision} | {path} | {step_ms:.1f} | {floor_ms:.1f} | {floor_ms / step_ms:.2f} | {gflop:.1f} |")

    if args.e2e_steps:
        print("\n| precision | env steps/s end to end (training loop after the random phase) |\n|---|---|")
        for precision in args.precision:
            agent, buffer = filled_agent(args.env, precision)
            steps_per_second = end_to_end(agent, buffer, make_env(args.env, seed=1), args.e2e_steps)
            print(f"| {precision} | {steps_per_second:.1f} |")


if __name__ == "__main__":
    main()

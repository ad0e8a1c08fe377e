"""Milliseconds per environment step of ULD's training with the real update schedule, on any device.

    python benchmarks/gpu_step.py --device cuda          # eager and graphed, fp32 and bf16
    python benchmarks/gpu_step.py --device cpu           # eager only, short by default

Full-size networks (ULDConfig defaults), replays filled with --fill random transitions, for the
vector shapes of HalfCheetah (17-d observations, 6-d actions) and the Atari shapes (4 x 84 x 84 frame
stacks, 18 actions). One "environment step" is what the training loop does per step besides the env
and acting: one `buffer.add` and one `agent.update`, whose schedule runs a target copy and a burst of
`--period` encoder updates every `--period` steps, then a value + policy update; timed over
`--cycles` whole periods, so the bursts are averaged in (the default 250 on a GPU is the spec's T; on
a CPU the default is 2, the same one encoder + one value + policy update per step on average, in a
few seconds).

Columns, all from one run so that their ratios mean something on a shared machine:
- ms per env step for each way of running it: eager, and on CUDA graphed (the default of uld train);
  fp32 and bf16; the speed-up against eager fp32 of the same inputs. Add + update alone lets the host
  queue updates ahead of the GPU (a throughput); the loop column is the training loop's own time per
  step: act (whose action is read back, so the host waits for the queued updates), add, can_sample and
  update, the same number of steps;
- sampling alone: ms to draw and gather one encoder batch (B x (H_enc + 1) observations);
- GFLOP of one encoder update + one value and policy update (matmuls and convolutions, counted by
  torch.utils.flop_counter), and the fraction of the device's measured matmul throughput (a large
  square matmul in the same precision) that the step achieves.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from uld.agents.linear import set_onednn
from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import ULDConfig, reduced_config
from uld.envs.base import EnvSpec

SHAPES = {
    "vector": EnvSpec("bench:vector", (17,), 6, discrete=False, max_episode_steps=1000),
    "atari": EnvSpec("bench:atari", (4, 84, 84), 18, discrete=True, max_episode_steps=27_000, pixels=True,
                     frame_history=4),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fill(buffer, spec: EnvSpec, transitions: int, rng: np.random.Generator) -> None:
    """Random transitions in episodes of 1,000 steps (truncated), 1 in 200 ending in a terminal."""
    def frame():
        return rng.integers(0, 256, size=(1, *spec.obs_shape[1:]), dtype=np.uint8)

    def first_obs():
        if spec.pixels:
            return np.repeat(frame(), spec.frame_history, axis=0)
        return rng.normal(size=spec.obs_shape).astype(np.float32)

    obs, t = first_obs(), 0
    for _ in range(transitions):
        if spec.discrete:
            action = np.eye(spec.action_dim, dtype=np.float32)[rng.integers(spec.action_dim)]
        else:
            action = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
        next_obs = np.concatenate([obs[1:], frame()]) if spec.pixels else rng.normal(size=spec.obs_shape).astype(np.float32)
        terminated, truncated = bool(rng.random() < 0.005), t == 999
        buffer.add(obs, action, float(rng.normal()), next_obs, terminated, truncated)
        obs, t = (first_obs(), 0) if terminated or truncated else (next_obs, t + 1)


def setup(spec: EnvSpec, config: ULDConfig, device: torch.device, precision: str, graphs: bool, fill_steps: int):
    torch.manual_seed(0)
    agent = ULDAgent(spec, config, device=device, precision=precision, cuda_graphs=graphs)
    buffer = make_buffer(spec, config, seed=0, device=device)
    rng = np.random.default_rng(0)
    fill(buffer, spec, fill_steps, rng)
    return agent, buffer, rng


def ms_per_env_step(agent: ULDAgent, buffer, spec: EnvSpec, rng, steps: int) -> float:
    """add + update per step over `steps` steps (whole periods), waiting for the device at the end."""
    obs = np.zeros(spec.obs_shape, dtype=np.uint8 if spec.pixels else np.float32)
    action = np.zeros(spec.action_dim, dtype=np.float32)
    synchronize(agent.device)
    start = time.perf_counter()
    for _ in range(steps):
        buffer.add(obs, action, float(rng.normal()), obs, False, False)
        agent.update(buffer)
    synchronize(agent.device)
    return (time.perf_counter() - start) * 1000 / steps


def ms_per_loop_step(agent: ULDAgent, buffer, spec: EnvSpec, rng, steps: int) -> float:
    """What the training loop does per step besides the env: act (which reads its action back, so the host
    waits for the updates queued before it), add, can_sample, update; over `steps` steps."""
    obs = np.zeros(spec.obs_shape, dtype=np.uint8 if spec.pixels else np.float32)
    stored = np.zeros(spec.action_dim, dtype=np.float32)
    synchronize(agent.device)
    start = time.perf_counter()
    for _ in range(steps):
        action = agent.act(obs, explore=True)
        if spec.discrete:
            stored = np.eye(spec.action_dim, dtype=np.float32)[int(action)]
        buffer.add(obs, stored, float(rng.normal()), obs, False, False)
        if buffer.can_sample:
            agent.update(buffer)
    synchronize(agent.device)
    return (time.perf_counter() - start) * 1000 / steps


def release(device: torch.device) -> None:
    """Free the agent and replay just dropped: they reference each other through the graphs, so only a
    collection frees them (an Atari replay holds 7 GB on the device)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sampling_ms(agent: ULDAgent, buffer, repeats: int) -> float:
    cfg = agent.config
    buffer.sample(cfg.batch_size, cfg.encoder_window)
    synchronize(agent.device)
    start = time.perf_counter()
    for _ in range(repeats):
        buffer.sample(cfg.batch_size, cfg.encoder_window)
    synchronize(agent.device)
    return (time.perf_counter() - start) * 1000 / repeats


def step_gflop(agent: ULDAgent, buffer) -> float:
    """FLOPs of one encoder update + one value and policy update (the GEMMs on F.linear, so they are counted)."""
    before = set_onednn(False)
    with FlopCounterMode(display=False) as counter:
        agent._update_encoder(buffer)
        agent._update_value_and_policy(buffer)
    set_onednn(before)
    return counter.get_total_flops() / 1e9


def matmul_tflops(device: torch.device, precision: str) -> float:
    """The device's measured matmul throughput: a square matmul, large enough to saturate it (on a CPU
    the faster of torch.mm and the oneDNN GEMM that uld's Linear layers use, uld/agents/linear.py)."""
    n = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    calls = [lambda: a @ b]
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        b_t = b.t().contiguous()
        calls.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], ""))
    repeats = 20 if device.type == "cuda" else 3
    best = 0.0
    for call in calls:
        call()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        synchronize(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--inputs", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--fill", type=int, default=10_500, help="random transitions in the replay")
    parser.add_argument("--capacity", type=int, default=None, help="replay slots (default: 1M on CUDA, 20k on CPU)")
    parser.add_argument("--period", type=int, default=None, help="target update period T (default: 250 on CUDA, 2 on CPU)")
    parser.add_argument("--cycles", type=int, default=None, help="timed periods (default: 4 on CUDA, 2 on CPU)")
    parser.add_argument("--reduced", action="store_true",
                        help="reduced-size networks (reduced_config): a quick check that the script runs, not a figure")
    parser.add_argument("--sample-repeats", type=int, default=None, help="timed draws (default: 200 on CUDA, 10 on CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    capacity = args.capacity or (1_000_000 if cuda else 20_000)
    period = args.period or (250 if cuda else 2)
    cycles = args.cycles or (4 if cuda else 2)
    sample_repeats = args.sample_repeats or (200 if cuda else 10)
    modes = ["eager", "graphed"] if cuda else ["eager"]
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}; replay {capacity:,} slots with {args.fill:,} transitions; "
          f"T = {period}, {cycles} periods timed after one of warm-up (graph capture)")
    peak = {precision: matmul_tflops(device, precision) for precision in args.precision}
    print("measured matmul throughput: " + ", ".join(f"{p} {t:.3f} TFLOP/s" for p, t in peak.items()))
    print("\n| inputs | precision | mode | ms per env step (add + update) | ms per loop step (act + add + can_sample "
          "+ update) | speed-up vs eager fp32 | sampling ms (one encoder batch) | GFLOP per step "
          "| fraction of matmul throughput |\n|---|---|---|---|---|---|---|---|---|")
    for inputs in args.inputs:
        spec = SHAPES[inputs]
        config = dataclasses.replace(reduced_config() if args.reduced else ULDConfig(), buffer_capacity=capacity,
                                     target_update_period=period)
        baseline = None
        for precision in args.precision:
            for mode in modes:
                agent, buffer, rng = setup(spec, config, device, precision, mode == "graphed", args.fill)
                ms_per_env_step(agent, buffer, spec, rng, period)  # warm-up; the graphs are captured here
                step_ms = ms_per_env_step(agent, buffer, spec, rng, cycles * period)
                loop_ms = ms_per_loop_step(agent, buffer, spec, rng, cycles * period)
                baseline = baseline or (step_ms if (precision, mode) == ("fp32", "eager") else None)
                sample_ms = sampling_ms(agent, buffer, sample_repeats)
                if mode == "eager":  # counted on the eager agent; the graphed step does the same work
                    gflop = step_gflop(agent, buffer)
                fraction = gflop / step_ms / peak[precision]  # GFLOP/ms = TFLOP/s
                speedup = f"{baseline / step_ms:.2f}" if baseline else "-"
                print(f"| {inputs} | {precision} | {mode} | {step_ms:.2f} | {loop_ms:.2f} | {speedup} "
                      f"| {sample_ms:.3f} | {gflop:.1f} | {fraction:.3f} |", flush=True)
                del agent, buffer
                release(device)


if __name__ == "__main__":
    main()

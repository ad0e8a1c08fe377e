"""What TF32 matmuls would change in ULD's update, emulated on a CPU (no GPU needed).

    python benchmarks/tf32_effect.py                 # full-size vector agent, 20 updates from the same state

TF32 (uld train --tf32 on CUDA) multiplies fp32 matrices with their inputs rounded to 10 mantissa bits
(fp32 has 23), accumulating in fp32. Here every matmul of the update (F.linear, on torch's own kernel)
gets its two inputs rounded that way (round to nearest, ties away from zero, like the tensor cores'
conversion up to the tie rule; see tf32_round for the backward), and the result is compared with the same
updates in fp32, from the same weights, replay and noise: the relative difference of each logged loss
after the first update and after the last, and of the weights' change over the updates (|dW_tf32 - dW_fp32|
/ |dW_fp32|). bf16 autocast, whose inputs keep 7 mantissa bits, is the same comparison one step
coarser, given as a yardstick; fp32 on the oneDNN GEMM (uld/agents/linear.py; another summation order,
nothing rounded more) shows how far two fp32 runs drift apart over the same updates from rounding
differences alone.

It measures the arithmetic's effect, not the speed: TF32's speed-up exists on a GPU only.
"""

from __future__ import annotations

import argparse
import copy
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from uld.agents.linear import set_onednn
from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import ULDConfig
from uld.envs.base import EnvSpec

VECTOR = EnvSpec("bench:vector", (17,), 6, discrete=False, max_episode_steps=1000)


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """x (fp32) rounded to 10 mantissa bits (add half of the 13 dropped bits' unit, then drop them), with the
    gradient of the identity: the backward's matmuls then see the rounded inputs too, their incoming
    gradients unrounded (TF32 would round those as well: the emulation is on the mild side there)."""
    bits = x.detach().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return x + (rounded - x).detach()


@contextmanager
def tf32_linear():
    linear = F.linear

    def rounded(x, weight, bias=None):
        if x.dtype != torch.float32:
            return linear(x, weight, bias)
        return linear(tf32_round(x), tf32_round(weight), bias)

    F.linear = rounded
    try:
        yield
    finally:
        F.linear = linear


def run(agent: ULDAgent, buffer, updates: int, seed: int) -> tuple[dict[str, float], dict[str, float]]:
    torch.manual_seed(seed)
    first = {k: float(v) for k, v in agent.update(buffer).items()}
    last = first
    for _ in range(updates - 1):
        last = {k: float(v) for k, v in agent.update(buffer).items()}
    return first, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--period", type=int, default=10, help="target update period T (spec: 250)")
    args = parser.parse_args()
    set_onednn(False)  # the matmuls go through F.linear, where the rounding is applied
    config = ULDConfig(buffer_capacity=20_000, target_update_period=args.period)
    torch.manual_seed(0)
    template = ULDAgent(VECTOR, config)
    buffer = make_buffer(VECTOR, config, seed=0)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=17).astype(np.float32)
    for t in range(5_000):
        next_obs = rng.normal(size=17).astype(np.float32)
        buffer.add(obs, rng.uniform(-1, 1, 6).astype(np.float32), float(rng.normal()), next_obs, False, t % 1000 == 999)
        obs = next_obs
    start = [p.detach().clone() for p in template.trained_parameters()]
    state = copy.deepcopy(buffer.state_dict())
    results = {}
    for mode in ("fp32", "fp32 (oneDNN GEMM)", "tf32 (emulated)", "bf16"):
        agent = ULDAgent(VECTOR, config, precision="bf16" if mode == "bf16" else "fp32")
        agent.load_state_dict(copy.deepcopy(template.state_dict()))
        buffer.load_state_dict(copy.deepcopy(state))
        if mode.startswith("tf32"):
            with tf32_linear():
                first, last = run(agent, buffer, args.updates, seed=1)
        else:
            set_onednn("oneDNN" in mode)
            first, last = run(agent, buffer, args.updates, seed=1)
            set_onednn(False)
        change = torch.cat([(p.detach() - s).flatten() for p, s in zip(agent.trained_parameters(), start)])
        results[mode] = (first, last, change)
    base_first, base_last, base_change = results["fp32"]
    print(f"torch {torch.__version__}, CPU; full-size ULD, vector shapes; {args.updates} updates (T = {args.period}) "
          "from the same weights, replay and noise; relative difference to fp32")
    print("\n| arithmetic | losses after update 1 (max over losses) | losses after the last update (max) "
          "| weight change |\n|---|---|---|---|")
    for mode in ("fp32 (oneDNN GEMM)", "tf32 (emulated)", "bf16"):
        first, last, change = results[mode]
        d_first = max(abs(first[k] - base_first[k]) / max(abs(base_first[k]), 1e-12) for k in base_first if "loss" in k)
        d_last = max(abs(last[k] - base_last[k]) / max(abs(base_last[k]), 1e-12) for k in base_last if "loss" in k)
        d_change = float((change - base_change).norm() / base_change.norm())
        print(f"| {mode} | {d_first:.2e} | {d_last:.2e} | {d_change:.2e} |")


if __name__ == "__main__":
    main()

"""Memory of the pixel replay: bytes per stored transition, and the peak RSS of short runs.

    OMP_NUM_THREADS=1 python benchmarks/replay_memory.py
    OMP_NUM_THREADS=1 python benchmarks/replay_memory.py --fill 20000 --dmc-fill 2000 --run-steps 300

Three measurements, each in a fresh process so that one's peak RSS does not hide another's:
1. layout: nbytes of every array a FrameStackBuffer allocates, its LAP sum tree included, divided by
   its capacity, next to what storing whole stacks (ReplayBuffer of (history * C, 84, 84) uint8
   observations) would take per slot;
2. fill: the resident memory a buffer of --fill slots gains while the real env fills it with random
   transitions (numpy allocates lazily, so this is what the buffer really touches), per transition;
3. run: the peak RSS (getrusage ru_maxrss) of a short `train()` with the reduced agent (batch 64; its
   convolutions are full-size, so each update costs seconds on a loaded CPU: the run trains for its
   last 50 steps only).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SPECS = {
    # name: (env for fills and runs, obs_shape, history, action_dim used for the layout)
    "atari": ("atari:Pong", (4, 84, 84), 4, 18),
    "dmc-pixels": ("dmc-pixels:cheetah-run", (9, 84, 84), 3, 6),
}


def rss_bytes() -> int:
    """Resident memory of this process now (from /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_layout(domain: str) -> dict:
    from uld.replay.frames import FrameStackBuffer

    _, obs_shape, history, action_dim = SPECS[domain]
    capacity = 100_000
    buffer = FrameStackBuffer(obs_shape, action_dim, capacity, 5, history=history)
    arrays = {name: getattr(buffer, name).nbytes for name in buffer._ARRAYS}
    arrays["tree"] = buffer.tree.nbytes
    per_slot = sum(arrays.values()) / capacity
    stacked = per_slot - arrays["obs"] / capacity + int(np.prod(obs_shape))  # whole stacks instead of frames
    return {"frame_bytes": arrays["obs"] / capacity, "bytes_per_slot": per_slot, "stacked_bytes_per_slot": stacked,
            "gb_per_million": per_slot * 1e6 / 1e9}


def measure_fill(domain: str, transitions: int) -> dict:
    from uld.envs import make_env
    from uld.replay.frames import FrameStackBuffer

    env = make_env(SPECS[domain][0], seed=0)
    buffer = FrameStackBuffer(env.spec.obs_shape, env.spec.action_dim, transitions + 2, 5,
                              history=env.spec.frame_history)
    one_hot = np.eye(env.spec.action_dim, dtype=np.float32)
    obs = env.reset()
    before, start = rss_bytes(), time.perf_counter()
    for _ in range(transitions):
        action = env.sample_action()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, one_hot[action] if env.spec.discrete else action, reward, next_obs, terminated, truncated)
        obs = env.reset() if terminated or truncated else next_obs
    return {"transitions": transitions, "rss_bytes_per_transition": (rss_bytes() - before) / transitions,
            "ms_per_env_step": (time.perf_counter() - start) / transitions * 1e3, "peak_rss_gb": peak_rss_bytes() / 1e9}


def measure_run(domain: str, steps: int, updates: int = 50) -> dict:
    import torch

    from uld.agents.uld.config import reduced_config
    from uld.train.allocator import keep_freed_memory
    from uld.train.run import TrainConfig, train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(env=SPECS[domain][0], steps=steps, eval_every=steps, eval_episodes=1, out=out + "/run",
                             progress=False, small=True,
                             uld=reduced_config(buffer_capacity=steps + 10, random_steps=steps - updates))
        start = time.perf_counter()
        train(config, on_allocated=keep_freed_memory)  # as `uld train` does
    return {"steps": steps, "seconds": time.perf_counter() - start, "peak_rss_gb": peak_rss_bytes() / 1e9}


def in_child(*argv: str) -> dict:
    """Run one measurement in a fresh interpreter and return its JSON result."""
    result = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fill", type=int, default=20_000, help="Atari transitions for the fill measurement")
    parser.add_argument("--dmc-fill", type=int, default=2_000, help="DMC transitions (rendering: ~30 ms each)")
    parser.add_argument("--run-steps", type=int, default=300, help="agent steps of the short runs (50 train)")
    parser.add_argument("--child", nargs=3, metavar=("WHAT", "DOMAIN", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, domain, n = args.child
        measure = {"layout": lambda: measure_layout(domain), "fill": lambda: measure_fill(domain, int(n)),
                   "run": lambda: measure_run(domain, int(n))}[what]
        print(json.dumps(measure()))
        return

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print(f"{'domain':<11} {'frame B':>8} {'B/slot':>8} {'stacked B/slot':>15} {'ratio':>6} {'GB per 1M':>10}")
    for domain in SPECS:
        r = in_child("layout", domain, "0")
        print(f"{domain:<11} {r['frame_bytes']:>8.0f} {r['bytes_per_slot']:>8.1f} {r['stacked_bytes_per_slot']:>15.1f} "
              f"{r['stacked_bytes_per_slot'] / r['bytes_per_slot']:>6.2f} {r['gb_per_million']:>10.2f}")
    print(f"\n{'domain':<11} {'filled':>7} {'RSS B/transition':>17} {'ms/env step':>12} {'peak RSS GB':>12}")
    for domain, n in (("atari", args.fill), ("dmc-pixels", args.dmc_fill)):
        r = in_child("fill", domain, str(n))
        print(f"{domain:<11} {r['transitions']:>7} {r['rss_bytes_per_transition']:>17.0f} "
              f"{r['ms_per_env_step']:>12.2f} {r['peak_rss_gb']:>12.2f}")
    print(f"\n{'domain':<11} {'run steps':>9} {'seconds':>8} {'peak RSS GB':>12}   (reduced agent, 1 thread)")
    for domain in SPECS:
        r = in_child("run", domain, str(args.run_steps))
        print(f"{domain:<11} {r['steps']:>9} {r['seconds']:>8.1f} {r['peak_rss_gb']:>12.2f}")


if __name__ == "__main__":
    main()

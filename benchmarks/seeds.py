"""Environment steps per second summed over seeds: S seeds in one process against S single-seed processes.

    python benchmarks/seeds.py --device cpu                  # S = 1, 2, 5, 10; reduced-size agent
    python benchmarks/seeds.py --device cuda --full --steps 200 --threads 4
    python benchmarks/seeds.py --env dmc-pixels:cheetah-run --workers 0 --sizes 2,5 --steps 10 --warmup 100 \
        --buffer-capacity 20000                              # pixel envs in the process or in workers

For each S, in one run of this script and on the same hardware:

- one process trains S seeds with the stacked agent (uld/agents/stacked.py): S envs in lock-step,
  one batched act and one stacked update per step, as `uld train --seeds` does (--threads threads,
  default 1: on a CPU the S separate processes then have as many cores or more);
- S processes each train one seed with the single-seed ULDAgent, all at once, 1 thread each.

Every process fills its replay(s) with --warmup random steps, trains untimed for the whole target periods
that hold the CUDA graphs' warm-up and capture, then times --steps training steps (act, env step, replay
add, update). A training step is one update of the real schedule with the target
period set to --target-period, whose encoder burst is timed along with the rest. The throughput of
the separate processes is their env steps over the span from the first one's start of timing to the
last one's end. The split columns say where a stacked step's time goes: acting, stepping the S envs
one after the other on the host, and the update.

With --workers N the comparison is another one: the many-seed process with its S envs stepping one
after the other in the process, against the same process with its envs in N worker processes
(uld/envs/workers.py; 0: one per seed), stepping at the same time, as `uld train --seeds` does with
--env-workers. Each row splits a step into acting, the envs (stepping, replay adds, resets) and the update.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from uld.agents.stacked import StackedULD, make_buffers
from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import ULDConfig, reduced_config
from uld.agents.uld.graphs import WARMUP
from uld.envs import make_env
from uld.envs.workers import EnvWorkers, reset_all, step_all


def _config(args) -> ULDConfig:
    base = ULDConfig() if args.full else reduced_config()
    capacity = {"buffer_capacity": args.buffer_capacity} if args.buffer_capacity else {}
    return ULDConfig(**{**base.__dict__, "target_update_period": args.target_period, "random_steps": 0, **capacity})


def worker(args) -> dict:
    """Train `args.seeds_in_process` seeds in this process (stacked unless `args.single`); time it."""
    torch.set_num_threads(args.threads)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds_in_process))
    if args.env_workers:
        workers = EnvWorkers(min(args.env_workers, len(seeds)))
        envs = workers.make_envs([(args.env, seed, False, k) for k, seed in enumerate(seeds)])
    else:
        envs = [make_env(args.env, seed=seed) for seed in seeds]
    spec, config = envs[0].spec, _config(args)
    if args.single:
        torch.manual_seed(seeds[0])
        agent = ULDAgent(spec, config, device=args.device)
        buffers = [make_buffer(spec, config, seeds[0], args.device)]
    else:
        looped = {"auto": None, "vmap": False, "loop": True}[args.mapping]
        agent = StackedULD(spec, config, seeds, device=args.device, looped=looped)
        buffers = make_buffers(spec, config, seeds, args.device)
    obs = reset_all(envs)

    def env_step(actions):
        ended = []
        for k, (next_obs, reward, terminated, truncated, _) in enumerate(step_all(envs, actions)):
            buffers[k].add(obs[k], actions[k], reward, next_obs, terminated, truncated)
            obs[k] = next_obs
            if terminated or truncated:
                ended.append(k)
        for k, first_obs in zip(ended, reset_all([envs[k] for k in ended])):
            obs[k] = first_obs

    for _ in range(args.warmup):
        env_step([env.sample_action() for env in envs])
    seconds = {"act": 0.0, "env": 0.0, "update": 0.0}
    # Untimed: whole target periods covering the graphs' warm-up calls and capture (WARMUP + 1 calls of each
    # kind of update; uld/agents/uld/graphs.py), so that the timing starts at a period's first step, with
    # every graph captured and lazy initialisation done.
    untimed = args.target_period * -(-(WARMUP + 1) // args.target_period)
    for step in range(untimed + args.steps):
        if step == untimed:
            started = time.time()
            seconds = dict.fromkeys(seconds, 0.0)
        t0 = time.perf_counter()
        if args.single:
            actions = [agent.act(obs[0], explore=True)]
        else:
            actions = list(agent.act(np.stack(obs), explore=True).numpy())
        t1 = time.perf_counter()
        env_step(actions)
        t2 = time.perf_counter()
        agent.update(buffers[0] if args.single else buffers)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        seconds["act"] += t1 - t0
        seconds["env"] += t2 - t1
        seconds["update"] += t3 - t2
    return {"start": started, "end": time.time(), "env_steps": args.steps * len(seeds), **seconds}


def _launch(args, seeds_in_process: int, first_seed: int, single: bool, threads: int,
            env_workers: int = 0) -> subprocess.Popen:
    command = [sys.executable, __file__, "--worker", "--seeds-in-process", str(seeds_in_process),
               "--first-seed", str(first_seed), "--threads", str(threads), "--device", args.device, "--env", args.env,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--target-period", str(args.target_period)]
    command += ["--single"] if single else []
    command += ["--mapping", args.mapping]
    command += ["--full"] if args.full else []
    command += ["--env-workers", str(env_workers)] if env_workers else []
    command += ["--buffer-capacity", str(args.buffer_capacity)] if args.buffer_capacity else []
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment)


def _results(processes) -> list[dict]:
    results = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a benchmark process failed with exit code {process.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--env", default="dmc:cheetah-run")
    parser.add_argument("--sizes", default="1,2,5,10", help="numbers of seeds S to compare")
    parser.add_argument("--steps", type=int, default=60, help="timed training steps per process")
    parser.add_argument("--warmup", type=int, default=300, help="random steps that fill each replay first")
    parser.add_argument("--target-period", type=int, default=10,
                        help="training steps per target copy and encoder burst (spec: 250; smaller: the burst "
                             "falls inside a short timing)")
    parser.add_argument("--full", action="store_true", help="the published network sizes (default: reduced)")
    parser.add_argument("--mapping", choices=("auto", "vmap", "loop"), default="auto",
                        help="how the many-seed agent maps its seeds (auto: a loop for pixels on a CPU, else vmap)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of the many-seed process (the single-seed ones get 1 each); more than one "
                             "on a loaded CPU oversubscribes the cores and slows matmuls tenfold")
    parser.add_argument("--workers", type=int, default=None,
                        help="compare envs stepping in the process with envs in this many worker processes (0: one "
                             "per seed) instead of one process with S processes")
    parser.add_argument("--buffer-capacity", type=int, default=None,
                        help="replay slots per seed (default: the config's; a pixel replay of 1M frames needs 21 GB)")
    parser.add_argument("--env-workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seeds-in-process", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--first-seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    if args.workers is not None:
        _compare_workers(args)
        return
    print(f"{args.env}, {'full' if args.full else 'reduced'}-size ULD on {args.device}, {args.steps} timed steps, "
          f"target period {args.target_period}; one process: {args.threads} threads; separate: 1 thread each")
    header = ("| S | one process: env steps/s | S processes: env steps/s | ratio | act % | envs % | update % "
              "| update ms/seed-step |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for size in (int(s) for s in args.sizes.split(",")):
        (stacked,) = _results([_launch(args, size, 0, single=False, threads=args.threads)])
        separate = _results([_launch(args, 1, seed, single=True, threads=1) for seed in range(size)])
        one = stacked["env_steps"] / (stacked["end"] - stacked["start"])
        span = max(r["end"] for r in separate) - min(r["start"] for r in separate)
        many = sum(r["env_steps"] for r in separate) / span
        total = stacked["act"] + stacked["env"] + stacked["update"]
        print(f"| {size} | {one:.1f} | {many:.1f} | {one / many:.2f} | {100 * stacked['act'] / total:.0f} "
              f"| {100 * stacked['env'] / total:.0f} | {100 * stacked['update'] / total:.0f} "
              f"| {1000 * stacked['update'] / stacked['env_steps']:.1f} |", flush=True)


def _compare_workers(args) -> None:
    """For each S: the many-seed process with its envs in the process, then in worker processes."""
    print(f"{args.env}, {'full' if args.full else 'reduced'}-size ULD on {args.device}, {args.steps} timed steps, "
          f"target period {args.target_period}, {args.threads} torch threads; envs in the process or in workers")
    header = ("| S | envs | env steps/s | speed-up | act % | envs % | update % | envs ms/step | update ms/step |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for size in (int(s) for s in args.sizes.split(",")):
        baseline = None
        for workers in (0, args.workers or size):
            (result,) = _results([_launch(args, size, 0, single=False, threads=args.threads, env_workers=workers)])
            rate = result["env_steps"] / (result["end"] - result["start"])
            baseline = baseline or rate
            total = result["act"] + result["env"] + result["update"]
            where = f"{min(workers, size)} workers" if workers else "in process"
            print(f"| {size} | {where} | {rate:.1f} | {rate / baseline:.2f} | {100 * result['act'] / total:.0f} "
                  f"| {100 * result['env'] / total:.0f} | {100 * result['update'] / total:.0f} "
                  f"| {1000 * result['env'] / args.steps:.0f} | {1000 * result['update'] / args.steps:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()

"""Sweeps: every (task, seed) of a suite as its own resumable run, on this machine or on a Ray cluster.

A sweep directory holds sweep.json (what the sweep is) and one run directory per run,
``<sweep>/<env>/seed<seed>``, written by ``uld train`` in a subprocess of its own, so that a crash
or a signal reaches one run only. Running the same sweep again skips the finished runs (without
starting a process for them) and resumes the others from their checkpoints: ``train()`` resumes
exactly. A run directory is locked while a process trains it, and the lock travels with the
training process, so two sweeps never train the same run at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path

from uld.analysis.sweep.local import run_locally
from uld.analysis.sweep.on_ray import check_ray_address, ray_cluster, run_on_ray
from uld.analysis.sweep.plan import (Run, SweepConfig, finished_step, group_runs, parse_seeds, plan_runs,
                                     run_finished, sweep_manifest, write_manifest)
from uld.analysis.sweep.process import SweepInterrupted, last_line
from uld.errors import UldError

__all__ = ["Run", "SweepConfig", "SweepInterrupted", "check_ray_address", "finished_step", "group_runs",
           "parse_seeds", "run_finished", "run_sweep"]


def _raise_on_sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def run_design_study(config: SweepConfig, train_args: list[str]) -> int:
    """One sweep per design-study variant under <sweep>/<variant>, the default among them."""
    from uld.agents.registry import agent_names, get_agent

    agent = get_agent(config.agent)
    variants = agent.design_study
    if not variants:
        studied = [name for name in agent_names() if get_agent(name).design_study]
        raise UldError(f"the {agent.name} agent has no design study; use --agent {' or '.join(studied)}")
    unknown = [name for name in config.variants if name not in variants]
    if unknown:
        raise UldError(f"unknown design-study variant {unknown[0]!r}; the variants are {', '.join(variants)}")
    names = ["default", *(name for name in (config.variants or variants) if name != "default")]
    sweep_dir = Path(config.out or Path("runs") / "sweeps" / f"design-study-{config.suite or 'custom'}").absolute()
    status = 0
    for name in names:
        print(f"design study: variant {name}", flush=True)
        variant_config = dataclasses.replace(config, design_study=False, variants=(), out=str(sweep_dir / name))
        status = max(status, run_sweep(variant_config, [*train_args, *agent.variant_args(name)]))
    print(f"design study finished: uld report {sweep_dir}", flush=True)
    return status


def run_sweep(config: SweepConfig, train_args: list[str]) -> int:
    """Plan, record and run a sweep; 0 when every run has finished, 1 when some failed."""
    if config.design_study:
        return run_design_study(config, train_args)
    if config.cpus_per_run < 1:
        raise UldError(f"--cpus-per-run must be at least 1, got {config.cpus_per_run}")
    if config.seeds_per_process < 1:
        raise UldError(f"--seeds-per-process must be at least 1, got {config.seeds_per_process}")
    if config.gpus_per_run and config.ray is None:
        raise UldError("--gpus-per-run reserves GPUs on a Ray cluster and needs --ray; on this machine every run "
                       "uses the GPUs torch sees (choose how many share them with --parallel)")
    if config.ray not in (None, "local", "auto"):
        # Before anything is written. Ray retries an address where nothing answers for minutes, and
        # rewrites 127.0.0.1 into the node's own address: a plain connect to what was given fails fast.
        check_ray_address(config.ray)
    sweep_dir = Path(config.out or Path("runs") / "sweeps" / f"{config.agent}-{config.suite or 'custom'}").absolute()
    runs = plan_runs(config, train_args, sweep_dir)
    manifest = sweep_manifest(config, train_args, sweep_dir, runs)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with contextlib.ExitStack() as cluster:
            # The cluster is reached before sweep.json is written: a sweep refused for it writes nothing.
            ray = cluster.enter_context(ray_cluster(config)) if config.ray is not None else None
            write_manifest(sweep_dir, manifest)
            todo = [run for run in runs if not run_finished(run.run_dir, run.steps)]
            print(f"sweep {sweep_dir}: {len(runs)} runs, {len(runs) - len(todo)} finished already", flush=True)
            todo = group_runs(todo, config.seeds_per_process)
            if ray is None:
                cores = len(os.sched_getaffinity(0))
                parallel = config.parallel or max(1, cores // config.cpus_per_run)
                if parallel * config.cpus_per_run > cores:
                    print(f"uld: {parallel} runs x {config.cpus_per_run} threads exceed the {cores} cores",
                          file=sys.stderr)
                failed = run_locally(todo, parallel, config.cpus_per_run, config.max_retries)
            else:
                failed = run_on_ray(todo, config, ray)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed; see their train.log:", file=sys.stderr)
        for run in failed:
            print(f"  {run.run_dir}/train.log: {last_line(run)}", file=sys.stderr)
        return 1
    print(f"all {len(runs)} runs finished: uld report {sweep_dir}", flush=True)
    return 0

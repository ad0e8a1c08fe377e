"""Sweeps: every (task, seed) of a suite as its own resumable run, on this machine or on a Ray cluster.

A sweep directory holds sweep.json (what the sweep is) and one run directory per run,
``<sweep>/<env>/seed<seed>``, written by ``uld train`` in a subprocess of its own, so that a crash
or a signal reaches one run only. Running the same sweep again skips the finished runs (without
starting a process for them) and resumes the others from their checkpoints: ``train()`` resumes
exactly. A run directory is locked while a process trains it, and the lock travels with the
training process, so two sweeps never train the same run at once.
"""

from __future__ import annotations

import ctypes
import dataclasses
import difflib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from uld.agents.registry import DEFAULT_AGENT
from uld.errors import UldError

USER_ERROR_EXIT = 2
"""Exit code of `uld train` for a problem the user must fix (a UldError): retrying cannot help."""

SWEEP_OPTIONS = ("--agent", "--env", "--seed", "--out", "--threads", "--steps", "--eval-every", "--eval-episodes",
                 "--progress", "--no-progress", "--resume")
"""uld train options that the sweep sets itself and that must not be passed on."""

IDENTITY = ("agent", "train_args", "eval_every", "eval_episodes")
"""sweep.json entries that say what the runs are; a later invocation may not change them."""


@dataclass(frozen=True)
class SweepConfig:
    """Train every (env, seed) of a suite as resumable runs under one sweep directory.

    Options this command does not know are passed on to every `uld train` (for example
    `--small --uld.batch-size 128`); run the same command again to continue an interrupted sweep.
    """

    suite: str | None = None
    """Suite to sweep (uld suites lists them); its protocol sets the budget unless --steps is given."""
    envs: tuple[str, ...] = ()
    """Envs to train (uld names): all of the suite's when empty; with a suite, a subset of it."""
    seeds: str = "0-9"
    """Seeds: a range and/or a list, e.g. 0-9, 0,3,7 or 0-4,9."""
    seeds_per_process: int = 1
    """Train this many seeds of an env in one process (uld train --seeds, ULD only): stacked networks, one run
    directory per seed as before."""
    agent: str = DEFAULT_AGENT
    """Agent to train (uld train --help lists the agents)."""
    steps: int | None = None
    """Agent steps per run (default: the protocol's budget)."""
    eval_every: int | None = None
    """Agent steps between evaluations (default: the protocol's)."""
    eval_episodes: int | None = None
    """Episodes per evaluation (default: the protocol's)."""
    out: str | None = None
    """Sweep directory (default: runs/sweeps/<agent>-<suite>)."""
    parallel: int | None = None
    """Runs at once on this machine (default: cores // --cpus-per-run); ignored with --ray."""
    cpus_per_run: int = 1
    """CPU threads of each run (torch and OpenMP threads); with --ray, the CPUs each run reserves."""
    gpus_per_run: float = 0.0
    """With --ray, the GPUs each run reserves (fractions share a GPU, e.g. 0.25)."""
    ray: str | None = None
    """Run on a Ray cluster instead: its address (host:port or ray://host:10001), auto (the cluster this
    machine belongs to) or local (start one on this machine). The sweep directory must be on a
    filesystem every node sees."""
    max_retries: int = 2
    """Times a run that crashed (or whose Ray worker died) is started again; it resumes from its checkpoint."""
    design_study: bool = False
    """Run MR.Q's design study: every variant of --variants (default: all) as a sweep of its own under
    <sweep>/<variant>; uld report on the sweep directory then compares each variant with the default."""
    variants: tuple[str, ...] = ()
    """With --design-study, the variants to run (the agent's design_study in its registration; default: all)."""


@dataclass(frozen=True)
class Run:
    """One (env, seed) of a sweep: where it lives and the `uld train` options that make it."""

    env: str
    seed: int
    run_dir: str
    steps: int
    argv: tuple[str, ...]
    group: tuple[int, ...] = ()
    """With --seeds-per-process: every seed this process trains (the first is `seed`, whose directory
    holds the process's train.log and lock); the others' directories are its siblings."""

    @property
    def label(self) -> str:
        return f"{self.env} seeds {','.join(map(str, self.group))}" if self.group else f"{self.env} seed {self.seed}"

    @property
    def run_dirs(self) -> list[str]:
        parent = Path(self.run_dir).parent
        return [str(parent / f"seed{seed}") for seed in self.group] if self.group else [self.run_dir]

    @property
    def finished(self) -> bool:
        return all(finished_step(run_dir) >= self.steps for run_dir in self.run_dirs)


class SweepInterrupted(UldError):
    """SIGINT or SIGTERM reached the sweep; the runs under way were stopped at a checkpoint."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class RunCrashed(Exception):
    """A run's process ended with an error that a new attempt may not repeat (Ray retries on it)."""


# ---- planning --------------------------------------------------------------------------------------

def parse_seeds(text: str) -> list[int]:
    """"0-2,7" -> [0, 1, 2, 7]."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise UldError(f"--seeds {text!r} is not a list of seeds; write e.g. 0-9, 0,3,7 or 0-4,9")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        seeds += [seed for seed in range(first, last + 1) if seed not in seeds]
    return seeds


def sweep_envs(config: SweepConfig) -> list[str]:
    """The envs of the sweep: the suite's, or the chosen subset of it, or the --envs alone."""
    from uld.analysis.suites import get_suite

    if config.suite is None:
        if not config.envs:
            raise UldError("uld sweep needs --suite (uld suites lists them) or --envs")
        return list(dict.fromkeys(config.envs))
    suite = get_suite(config.suite)
    unknown = [env for env in config.envs if env not in suite.envs]
    if unknown:
        close = difflib.get_close_matches(unknown[0], suite.envs, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UldError(f"{', '.join(unknown)} not in suite {suite.name}; {hint}uld suites {suite.name} lists its envs")
    return list(dict.fromkeys(config.envs)) if config.envs else list(suite.envs)


def run_dir_name(env: str) -> str:
    """The directory of an env's runs inside a sweep ("dmc:cheetah-run" -> "dmc_cheetah-run")."""
    return env.replace(":", "_").replace("/", "_")


def plan_runs(config: SweepConfig, train_args: list[str], sweep_dir: Path) -> list[Run]:
    """Every run of the sweep, its `uld train` options checked the way `uld train` parses them."""
    from uld.train.config import parse_train_args
    from uld.train.validation import check_config

    clashes = [arg for arg in train_args if arg.split("=", 1)[0] in SWEEP_OPTIONS]
    if clashes:
        raise UldError(f"{', '.join(clashes)} is set by uld sweep for each run; use uld sweep's own options "
                       "(--envs, --seeds, --agent, --steps, --eval-every, --eval-episodes, --out, --cpus-per-run)")
    common = ["--agent", config.agent, "--no-progress"]
    for name in ("steps", "eval_every", "eval_episodes"):
        if getattr(config, name) is not None:
            common += [f"--{name.replace('_', '-')}", str(getattr(config, name))]
    try:
        base = parse_train_args([*common, *train_args])
    except SystemExit as exit_:
        raise UldError(f"the options passed on to uld train are not valid (see above): {' '.join(train_args)}") from exit_
    runs = []
    for env in sweep_envs(config):
        for seed in parse_seeds(config.seeds):
            run_dir = sweep_dir / run_dir_name(env) / f"seed{seed}"
            resolved = dataclasses.replace(base, env=env, seed=seed, out=str(run_dir)).resolved()
            check_config(resolved)  # every run's ranges, before the sweep writes anything
            argv = ("--env", env, "--seed", str(seed), "--out", str(run_dir), *common, *train_args)
            runs.append(Run(env, seed, str(run_dir), resolved.steps, argv))
    return runs


def group_runs(runs: list[Run], per_process: int) -> list[Run]:
    """Unfinished runs of one env, `per_process` at a time, as one `uld train --seeds` process each.

    Only runs whose checkpoints stand at the same step share a process (a many-seed run resumes from
    a step that every seed has), so a resumed sweep regroups what is left without losing any work.
    """
    if per_process <= 1:
        return runs
    together: dict[tuple, list[Run]] = {}
    for run in runs:
        together.setdefault((run.env, run.steps, finished_step(run.run_dir)), []).append(run)
    grouped = []
    for members in together.values():
        for i in range(0, len(members), per_process):
            chunk = members[i : i + per_process]
            first = chunk[0]
            if len(chunk) == 1:
                grouped.append(first)
                continue
            seeds = tuple(run.seed for run in chunk)
            # first.argv is ("--env", env, "--seed", seed, "--out", run_dir, *options): --seeds writes
            # <out>/seed<k>, the same directories.
            argv = ("--env", first.env, "--seeds", ",".join(map(str, seeds)), "--out", str(Path(first.run_dir).parent),
                    *first.argv[6:])
            grouped.append(dataclasses.replace(first, argv=argv, group=seeds))
    return grouped


def write_manifest(config: SweepConfig, train_args: list[str], sweep_dir: Path, runs: list[Run]) -> None:
    """Create or extend sweep.json; refuse a sweep directory that holds runs made with other options."""
    path = sweep_dir / "sweep.json"
    manifest = {"suite": config.suite, "agent": config.agent, "train_args": list(train_args),
                "eval_every": config.eval_every, "eval_episodes": config.eval_episodes, "runs": []}
    if path.exists():
        stored = json.loads(path.read_text())
        differences = [f"{key} (sweep: {stored.get(key)!r}, this command: {manifest[key]!r})"
                       for key in IDENTITY if stored.get(key) != manifest[key]]
        if differences:
            raise UldError(f"{sweep_dir} holds a sweep made with other options: {'; '.join(differences)}; "
                           "use another --out, or the sweep's own options to continue it")
        manifest["runs"] = stored.get("runs", [])
    known = {(entry["env"], entry["seed"]) for entry in manifest["runs"]}
    for run in runs:
        entry = {"env": run.env, "seed": run.seed, "dir": str(Path(run.run_dir).relative_to(sweep_dir)),
                 "steps": run.steps}
        if (run.env, run.seed) in known:
            manifest["runs"] = [entry if (e["env"], e["seed"]) == (run.env, run.seed) else e for e in manifest["runs"]]
        else:
            manifest["runs"].append(entry)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, path)


# ---- one run ---------------------------------------------------------------------------------------

def finished_step(run_dir: str | Path) -> int:
    """The step of the newest checkpoint of a run whose checksum verifies (0 when none).

    A finished run whose newest checkpoint is corrupt is not finished: `uld train` falls back to the
    one before and trains the rest again, so the sweep must start it.
    """
    from uld.train.checkpoint import Checkpointer

    return Checkpointer(Path(run_dir, "checkpoints")).verified_step()


def lock_run(run_dir: str | Path, block: bool) -> int | None:
    """Lock a run directory for training; the descriptor, or None when another process holds it."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(run_dir) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _prepare_run_process() -> None:
    """In the training process, before `uld train` starts: make SIGINT and SIGTERM reach it.

    A Ray worker blocks these signals, and a blocked mask survives exec, so it is cleared. Then
    (Linux) the process asks for SIGTERM when the process that started it dies: SIGTERM makes
    `uld train` checkpoint and exit, so a sweep or Ray worker that is killed leaves no run
    training on unsupervised.
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def start_run(run: Run, threads: int, lock_fd: int) -> subprocess.Popen:
    """Start `uld train` for a run, its output appended to <run>/train.log; the process inherits the lock."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(Path(run.run_dir) / "train.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "uld.cli", "train", *run.argv, "--threads", str(threads)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                pass_fds=(lock_fd,), preexec_fn=_prepare_run_process)


def _last_line(run: Run) -> str:
    try:
        lines = (Path(run.run_dir) / "train.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _ray_train(run: Run, threads: int) -> str:
    """A Ray task: train one run in a subprocess of the worker. Returns "finished", "skipped" or "failed".

    Raises RunCrashed when the run's process crashed, so that Ray starts it again (it resumes);
    Ray also starts it again when the worker itself dies. Cancelling the task (SIGINT to the
    sweep) stops the run at a checkpoint.
    """
    lock_fd = lock_run(run.run_dir, block=True)  # waits for any process still training this run
    try:
        if run.finished:
            return "skipped"
        process = start_run(run, threads, lock_fd)
        try:
            # Polled, not waited on: ray.cancel raises KeyboardInterrupt only between Python instructions.
            while (code := process.poll()) is None:
                time.sleep(0.5)
        except KeyboardInterrupt:  # ray.cancel
            process.send_signal(signal.SIGINT)
            process.wait()
            raise
    finally:
        os.close(lock_fd)
    if code == 0:
        return "finished"
    if code == USER_ERROR_EXIT:
        return "failed"
    raise RunCrashed(f"{run.label} exited with {code}: {_last_line(run)}")


# ---- running a sweep -------------------------------------------------------------------------------

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
    if config.seeds_per_process > 1 and config.agent != "uld":
        raise UldError("--seeds-per-process above 1 trains ULD only; drop it to train ALM one seed per process")
    if config.gpus_per_run and config.ray is None:
        raise UldError("--gpus-per-run reserves GPUs on a Ray cluster and needs --ray; on this machine every run "
                       "uses the GPUs torch sees (choose how many share them with --parallel)")
    if config.ray not in (None, "local", "auto"):
        # Before anything is written. Ray retries an address where nothing answers for minutes, and
        # rewrites 127.0.0.1 into the node's own address: a plain connect to what was given fails fast.
        check_ray_address(config.ray)
    sweep_dir = Path(config.out or Path("runs") / "sweeps" / f"{config.agent}-{config.suite or 'custom'}").absolute()
    runs = plan_runs(config, train_args, sweep_dir)
    write_manifest(config, train_args, sweep_dir, runs)
    todo = [run for run in runs if finished_step(run.run_dir) < run.steps]
    print(f"sweep {sweep_dir}: {len(runs)} runs, {len(runs) - len(todo)} finished already", flush=True)
    todo = group_runs(todo, config.seeds_per_process)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        if config.ray is None:
            cores = len(os.sched_getaffinity(0))
            parallel = config.parallel or max(1, cores // config.cpus_per_run)
            if parallel * config.cpus_per_run > cores:
                print(f"uld: {parallel} runs x {config.cpus_per_run} threads exceed the {cores} cores", file=sys.stderr)
            failed = _run_locally(todo, parallel, config.cpus_per_run, config.max_retries)
        else:
            failed = _run_on_ray(todo, config)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed; see their train.log:", file=sys.stderr)
        for run in failed:
            print(f"  {run.run_dir}/train.log: {_last_line(run)}", file=sys.stderr)
        return 1
    print(f"all {len(runs)} runs finished: uld report {sweep_dir}", flush=True)
    return 0


def _run_locally(todo: list[Run], parallel: int, threads: int, max_retries: int) -> list[Run]:
    """Run on this machine, `parallel` processes at a time; the runs that failed."""
    pending, running, failed = deque(todo), {}, []
    attempts = {run: 0 for run in todo}
    waiting_reported: set[Run] = set()
    done = 0
    try:
        while pending or running:
            busy = 0
            while pending and len(running) < parallel and busy < len(pending):
                run = pending.popleft()
                lock_fd = lock_run(run.run_dir, block=False)
                if lock_fd is None:  # another process trains it: come back to it later
                    if run not in waiting_reported:
                        print(f"waiting for {run.label}: another process is training {run.run_dir}", flush=True)
                        waiting_reported.add(run)
                    pending.append(run)
                    busy += 1
                    continue
                if run.finished:
                    os.close(lock_fd)
                    done += 1
                    continue
                attempts[run] += 1
                running[start_run(run, threads, lock_fd)] = (run, lock_fd)
            for process, (run, lock_fd) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[process]
                os.close(lock_fd)
                if code == 0:
                    done += 1
                    print(f"[{done}/{len(todo)}] {run.label} finished", flush=True)
                elif code != USER_ERROR_EXIT and attempts[run] <= max_retries:
                    print(f"{run.label} exited with {code}; starting it again from its checkpoint", flush=True)
                    pending.append(run)
                else:
                    print(f"{run.label} failed (exit {code}): {_last_line(run)}", file=sys.stderr, flush=True)
                    failed.append(run)
            time.sleep(0.2 if running or not busy else 1.0)
    except KeyboardInterrupt:
        for process in running:
            process.send_signal(signal.SIGINT)
        for process, (_, lock_fd) in running.items():
            process.wait()
            os.close(lock_fd)
        raise SweepInterrupted(f"sweep interrupted; {len(running)} runs under way saved a checkpoint: run the same "
                               "command again to continue", 130) from None
    return failed


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """Raise UldError unless something accepts a TCP connection at a Ray address (host:port or ray://host:port)."""
    import socket

    host_port = address.removeprefix("ray://").rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UldError(f"--ray {address!r} is not host:port, ray://host:port, auto or local; pass e.g. "
                       "--ray 10.0.0.5:6379, or --ray local to start a cluster here")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise UldError(f"cannot reach the Ray cluster at {address!r}: nothing answers at {host}:{port} "
                       f"({error.strerror or error}); start one with ray start --head, or pass --ray local to "
                       "start one here") from None


def _run_on_ray(todo: list[Run], config: SweepConfig) -> list[Run]:
    """Run as Ray tasks on a cluster; the runs that failed."""
    try:
        import ray
    except ImportError as error:
        raise UldError('--ray needs Ray, which is not installed; pip install "uld[sweep]"') from error
    import logging

    local = config.ray == "local"
    try:
        ray.init(address=None if local else config.ray, include_dashboard=False if local else None,
                 logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, ValueError) as error:
        raise UldError(f"cannot reach the Ray cluster at {config.ray!r} ({str(error).strip().splitlines()[-1]}); "
                       "start one with ray start --head, or pass --ray local to start one here") from error
    task = ray.remote(_ray_train)
    refs = {task.options(num_cpus=config.cpus_per_run, num_gpus=config.gpus_per_run, max_retries=config.max_retries,
                         retry_exceptions=[RunCrashed], name=f"uld train {run.label}").remote(run, config.cpus_per_run): run
            for run in todo}
    failed, done = [], 0
    try:
        while refs:
            # A short timeout lets SIGINT reach this loop while ray.wait blocks.
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
            if not ready:
                continue
            run = refs.pop(ready[0])
            try:
                status = ray.get(ready[0])
            except ray.exceptions.RayError as error:
                status = f"failed ({type(error).__name__}: {str(error).strip().splitlines()[-1]})"
            if status.startswith("failed"):
                print(f"{run.label} {status}: {_last_line(run)}", file=sys.stderr, flush=True)
                failed.append(run)
            else:
                done += 1
                print(f"[{done}/{len(todo)}] {run.label} {status}", flush=True)
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)
        ray.wait(list(refs), num_returns=len(refs), timeout=120)
        raise SweepInterrupted("sweep interrupted; the runs under way were stopped at a checkpoint: run the same "
                               "command again to continue", 130) from None
    finally:
        ray.shutdown()
    return failed

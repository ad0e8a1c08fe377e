"""Planning a sweep: its options, its runs (one per env and seed, or groups of seeds per process),
sweep.json, and which runs are finished (docs/benchmarks.md, Sweeps)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from uld.agents.registry import DEFAULT_AGENT
from uld.errors import UldError, first_detail

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
    `--small --uld.batch-size 128`; `uld sweep -- --help` lists them); run the same command again to continue
    an interrupted sweep.
    """

    suite: str | None = None
    """Suite to sweep (uld suites lists them); its protocol sets the budget unless --steps is given."""
    envs: tuple[str, ...] = ()
    """Envs to train (uld names): all of the suite's when empty; with a suite, a subset of it."""
    seeds: str = "0-9"
    """Seeds: a range and/or a list, e.g. 0-9, 0,3,7 or 0-4,9."""
    seeds_per_process: int = 1
    """Train this many seeds of an env in one process (uld train --seeds, any agent): one run directory per seed
    as before."""
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
        return all(run_finished(run_dir, self.steps) for run_dir in self.run_dirs)


def parse_seeds(text: str) -> list[int]:
    """"0-2,7" -> [0, 1, 2, 7]; a seed named twice is one run."""
    from uld.train.config import parse_seed_list

    return parse_seed_list(text)


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
    # A bad option is one UldError; --help passed on (uld sweep ... -- --help) prints uld train's help and exits 0.
    base = parse_train_args([*common, *train_args])
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


def sweep_manifest(config: SweepConfig, train_args: list[str], sweep_dir: Path, runs: list[Run]) -> dict:
    """What sweep.json will hold: the sweep's own, extended by these runs; UldError for a sweep directory that
    holds runs made with other options. Writes nothing."""
    path = sweep_dir / "sweep.json"
    manifest = {"suite": config.suite, "agent": config.agent, "train_args": list(train_args),
                "eval_every": config.eval_every, "eval_episodes": config.eval_episodes, "runs": []}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            entries = stored.get("runs", []) if isinstance(stored, dict) else None
            if not isinstance(entries, list) or not all(isinstance(e, dict) and {"env", "seed"} <= e.keys()
                                                        for e in entries):
                raise ValueError("it is not an object with a list of runs")
        except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
            raise UldError(f"{path} is not the manifest uld sweep writes ({first_detail(error)}); restore it, or "
                           "use another --out") from None
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
    return manifest


def write_manifest(sweep_dir: Path, manifest: dict) -> None:
    """Create or replace sweep.json with `manifest` (sweep_manifest)."""
    path = sweep_dir / "sweep.json"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, path)


def finished_step(run_dir: str | Path) -> int:
    """The step of the newest checkpoint of a run whose checksum verifies (0 when none).

    A finished run whose newest checkpoint is corrupt is not finished: `uld train` falls back to the
    one before and trains the rest again, so the sweep must start it.
    """
    from uld.train.checkpoint import Checkpointer

    return Checkpointer(Path(run_dir, "checkpoints")).verified_step()


def run_finished(run_dir: str | Path, steps: int) -> bool:
    """Whether `uld train` finds nothing left to do in a run of `steps` steps: its newest verified checkpoint
    stands at `steps` or later and eval.csv holds the evaluation of that step.

    A stop request that arrives during a run's last evaluation abandons it and checkpoints the final step
    with the evaluation still due (train/trainer.py); that run is not finished, because running it again
    evaluates. eval.csv tells the two apart without loading the checkpoint: a resumed run drops the rows
    written after its checkpoint, so the checkpoint's step has a row exactly when its evaluation was done.
    A missing or unreadable eval.csv counts as not finished, leaving `uld train` to say what it finds.
    """
    from uld.train.logger import read_eval_csv

    step = finished_step(run_dir)
    if step < steps:
        return False
    try:
        rows = read_eval_csv(Path(run_dir, "eval.csv"))
    except (OSError, UldError):
        return False
    return any(row["step"] == step for row in rows)

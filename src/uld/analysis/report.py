"""`uld report`: a sweep directory -> results.csv, learning-curve and aggregate-metric plots, report.md.

Results use the tidy format of the published curves (shared/reference/README.md): one row per
(env, step, seed) with the evaluation's mean return, env named as there (``Dmc-cheetah-run``).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro

from uld.analysis.metrics import (CONFIDENCE, Interval, Normalization, aggregate_metrics, aggregate_names,
                                  curve_with_ci, normalization_for, performance_profile)
from uld.analysis.suites import env_from_reference_name, reference_name
from uld.envs.protocol import domain_of
from uld.envs.registry import find_domain
from uld.errors import UldError
from uld.train.config import read_run_config
from uld.train.logger import read_eval_csv

TIDY_COLUMNS = ("env", "step", "seed", "return")
"""Header of results.csv and of the published reference files."""


def domain_title(env: str) -> str:
    """The report heading of a uld env's domain (its registered title; the prefix for an unknown one)."""
    domain = find_domain(env)
    return domain.title if domain is not None else domain_of(env)


@dataclass(frozen=True)
class ReportConfig:
    """Write results.csv, plots and report.md for a sweep directory made by uld sweep (or any runs under it)."""

    sweep_dir: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="SWEEP_DIR")]]
    """The sweep directory."""
    reference: str | None = None
    """A folder of published curves in the tidy env,step,seed,return format (e.g. shared/reference/mrq) to compare with."""
    out: str | None = None
    """Where to write the report (default: <sweep_dir>/report)."""
    reps: int = 2000
    """Bootstrap resamples per confidence interval."""
    seed: int = 0
    """Seed of the bootstrap (the same seed gives the same intervals)."""


@dataclass
class Curves:
    """Evaluation returns by env (reference name), seed and step, and the step each env's runs end at."""

    returns: dict[str, dict[int, dict[int, float]]] = field(default_factory=lambda: defaultdict(dict))
    final_step: dict[str, int] = field(default_factory=dict)

    def add(self, env: str, seed: int, step: int, value: float) -> None:
        self.returns[env].setdefault(seed, {})[step] = value

    def finals(self, env: str) -> dict[int, float]:
        """Each seed's return at the env's final step, for the seeds that got there."""
        step = self.final_step[env]
        return {seed: by_step[step] for seed, by_step in self.returns[env].items() if step in by_step}

    def table(self, env: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, returns as seeds x steps with NaN where a seed has no evaluation)."""
        by_seed = self.returns[env]
        steps = np.array(sorted({step for by_step in by_seed.values() for step in by_step}))
        table = np.array([[by_seed[seed].get(int(step), math.nan) for step in steps] for seed in sorted(by_seed)])
        return steps, table


# ---- reading -----------------------------------------------------------------------------------------

def load_sweep(sweep_dir: Path) -> tuple[Curves, list[str]]:
    """Every run under the directory (any folder with config.json and eval.csv); the unfinished ones as text."""
    curves, unfinished = Curves(), []
    for eval_path in sorted(sweep_dir.rglob("eval.csv")):
        config_path = eval_path.with_name("config.json")
        # Files that uld train --restart moved aside are not a run of the sweep.
        if not config_path.exists() or any(part.startswith("restarted-") for part in eval_path.parts):
            continue
        config = read_run_config(eval_path.parent)
        env = reference_name(config["env"])
        rows = read_eval_csv(eval_path)
        for row in rows:
            curves.add(env, int(config["seed"]), row["step"], row["mean_return"])
        curves.final_step[env] = max(curves.final_step.get(env, 0), int(config["steps"]))
        last = rows[-1]["step"] if rows else 0
        if last < int(config["steps"]):
            unfinished.append(f"{env} seed {config['seed']}: step {last:,} of {int(config['steps']):,}")
    if not curves.returns:
        raise UldError(f"{sweep_dir} holds no runs (no folder with config.json and eval.csv); pass a sweep directory")
    return curves, unfinished


def load_tidy(folder: Path) -> Curves:
    """Every tidy CSV (env,step,seed,return) in a folder, recursively; files of other formats are skipped."""
    curves = Curves()
    for path in sorted(folder.rglob("*.csv")):
        with open(path, newline="") as f:
            reader = csv.reader(f)
            if tuple(next(reader, ())) != TIDY_COLUMNS:
                continue
            for env, step, seed, value in reader:
                curves.add(env, int(seed), int(step), float(value))
                curves.final_step[env] = max(curves.final_step.get(env, 0), int(step))
    if not curves.returns:
        raise UldError(f"{folder} holds no curves in the env,step,seed,return format; pass e.g. shared/reference/mrq")
    return curves


def write_results_csv(curves: Curves, path: Path) -> None:
    rows = sorted((env, step, seed, value) for env, by_seed in curves.returns.items()
                  for seed, by_step in by_seed.items() for step, value in by_step.items())
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TIDY_COLUMNS)
        writer.writerows((env, step, seed, repr(value)) for env, step, seed, value in rows)


# ---- computing -------------------------------------------------------------------------------------

def score_table(curves: Curves, envs: list[str], normalization: Normalization) -> tuple[np.ndarray, list[int]]:
    """Normalized final scores (seeds x envs) over the seeds that finished every env, and those seeds."""
    finals = [curves.finals(env) for env in envs]
    seeds = sorted(set.intersection(*(set(f) for f in finals)))
    table = np.array([[finals[j][seed] for j in range(len(envs))] for seed in seeds]).reshape(len(seeds), len(envs))
    for j, env in enumerate(envs):
        table[:, j] = normalization.score(env_from_reference_name(env), table[:, j])
    return table, seeds


def _groups(envs: list[str]) -> dict[str, list[str]]:
    """Envs (reference names) by the domain of their uld name."""
    groups: dict[str, list[str]] = defaultdict(list)
    for env in sorted(envs):
        groups[domain_of(env_from_reference_name(env))].append(env)
    return dict(groups)


# ---- plotting ----------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curve(env: str, curves: dict[str, Curves], path: Path, reps: int, seed: int) -> None:
    """Mean return over seeds with its 95% bootstrap band, for this sweep and the reference."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for (label, source), color in zip(curves.items(), ("tab:blue", "tab:gray")):
        if env not in source.returns:
            continue
        steps, table = source.table(env)
        mean, low, high = curve_with_ci(table, reps=reps, seed=seed)
        ax.plot(steps, mean, color=color, label=f"{label} ({table.shape[0]} seeds)")
        ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
    ax.set(title=env, xlabel="agent steps", ylabel="evaluation return")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_aggregates(estimates: dict[str, dict[str, Interval]], xlabel: str, path: Path) -> None:
    from rliable import plot_utils

    plt = _pyplot()
    names = list(next(iter(estimates.values())))
    points = {label: np.array([e[name].point for name in names]) for label, e in estimates.items()}
    intervals = {label: np.array([[e[name].low for name in names], [e[name].high for name in names]])
                 for label, e in estimates.items()}
    fig, _ = plot_utils.plot_interval_estimates(points, intervals, metric_names=names, xlabel=xlabel,
                                                row_height=0.6, subfigure_width=3.2, xlabel_y_coordinate=-0.4)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_profiles(tables: dict[str, np.ndarray], xlabel: str, path: Path, reps: int, seed: int) -> None:
    from rliable import plot_utils

    plt = _pyplot()
    everything = np.concatenate([t.ravel() for t in tables.values()])
    taus = np.linspace(min(0.0, everything.min()), max(1.0, everything.max()), 101)
    profiles, bands = {}, {}
    for label, table in tables.items():
        profiles[label], bands[label] = performance_profile(table, taus, reps=reps, seed=seed)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    plot_utils.plot_performance_profiles(profiles, taus, performance_profile_cis=bands, ax=ax,
                                         xlabel=f"{xlabel} (τ)", ylabel="fraction of runs > τ", labelsize="medium",
                                         ticklabelsize="small")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- the report --------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return text.lower().replace(" ", "-")


def write_report(config: ReportConfig) -> Path:
    """Write results.csv, the plots and report.md; the path of report.md."""
    sweep_dir = Path(config.sweep_dir)
    if not sweep_dir.is_dir():
        raise UldError(f"{sweep_dir} is not a directory; pass the sweep directory that uld sweep wrote")
    out = Path(config.out) if config.out else sweep_dir / "report"
    (out / "curves").mkdir(parents=True, exist_ok=True)
    results, unfinished = load_sweep(sweep_dir)
    write_results_csv(results, out / "results.csv")
    sources = {"this sweep": results}
    reference_label = None
    if config.reference:
        reference_label = f"reference ({Path(config.reference).resolve().name})"
        sources[reference_label] = load_tidy(Path(config.reference))
    reference = sources.get(reference_label)
    runs = sum(len(by_seed) for by_seed in results.returns.values())

    lines = [f"# Sweep report: {sweep_dir.resolve().name}", "",
             f"{runs} runs on {len(results.returns)} tasks in `{sweep_dir}`"
             + (f" ({len(unfinished)} not finished)" if unfinished else "") + "; per-evaluation results in "
             "[results.csv](results.csv). Aggregates are over the final evaluation of each run, with "
             f"{CONFIDENCE:.0%} stratified-bootstrap confidence intervals ({config.reps} resamples, rliable); "
             "learning curves show the mean over seeds with a pointwise bootstrap interval.", ""]
    for envs in _groups(list(results.returns)).values():
        title = domain_title(env_from_reference_name(envs[0]))
        normalization = normalization_for(env_from_reference_name(env) for env in envs)
        lines += [f"## {title} ({normalization.name})", ""]
        lines += _aggregate_section(title, envs, normalization, results, reference, reference_label, out, config)
        lines += _task_table(envs, results, reference, reference_label)
        lines += ["### Learning curves", ""]
        for env in envs:
            plot_curve(env, sources, out / "curves" / f"{env}.png", config.reps, config.seed)
            lines.append(f"![{env}](curves/{env}.png)")
        lines.append("")
    if unfinished:
        lines += ["## Runs not finished", "", *(f"- {run}" for run in unfinished), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _aggregate_section(title: str, envs: list[str], normalization: Normalization, results: Curves,
                       reference: Curves | None, reference_label: str | None, out: Path,
                       config: ReportConfig) -> list[str]:
    table, seeds = score_table(results, envs, normalization)
    if not seeds:
        return ["No seed has finished every task yet, so there are no aggregates.", ""]
    names = aggregate_names(normalization)
    estimates = {"this sweep": aggregate_metrics(table, names, reps=config.reps, seed=config.seed)}
    tables = {"this sweep": table}
    header = (f"{_count(len(envs), 'task')} × {_count(len(seeds), 'seed')} ({', '.join(map(str, seeds))}) "
              f"{_at_steps(results, envs)}")
    if reference is not None and all(env in reference.returns for env in envs):
        reference_table, reference_seeds = score_table(reference, envs, normalization)
        if reference_seeds:
            estimates[reference_label] = aggregate_metrics(reference_table, names, reps=config.reps, seed=config.seed)
            tables[reference_label] = reference_table
            header += f"; {reference_label}: {_count(len(reference_seeds), 'seed')} {_at_steps(reference, envs)}"
    columns = list(estimates)
    lines = [header + ".", "", "| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(estimates[c][name]) for c in columns) + " |" for name in names]
    slug = _slug(title)
    plot_aggregates(estimates, normalization.name, out / f"{slug}-aggregates.png")
    plot_profiles(tables, normalization.name, out / f"{slug}-profile.png", config.reps, config.seed)
    lines += ["", f"![aggregate metrics]({slug}-aggregates.png)", "",
              f"![performance profile]({slug}-profile.png)", ""]
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _at_steps(curves: Curves, envs: list[str]) -> str:
    steps = sorted({curves.final_step[env] for env in envs})
    return f"at step {steps[0]:,}" if len(steps) == 1 else f"at steps {steps[0]:,} to {steps[-1]:,}"


def _task_table(envs: list[str], results: Curves, reference: Curves | None, reference_label: str | None) -> list[str]:
    """Final return per task: mean over seeds and its bootstrap interval, beside the reference's mean."""
    header = "| task | seeds | final step | final return |" + (f" {reference_label} |" if reference else "")
    lines = [header, "|---|---|---|---|" + ("---|" if reference else "")]
    for env in envs:
        finals = results.finals(env)
        if finals:
            mean, low, high = curve_with_ci(np.array(list(finals.values()))[:, None])
            cell = f"{mean[0]:.1f} [{low[0]:.1f}, {high[0]:.1f}]"
        else:
            cell = "not finished"
        row = f"| {env} | {len(finals)} | {results.final_step[env]:,} | {cell} |"
        if reference:
            reference_finals = reference.finals(env) if env in reference.returns else {}
            row += f" {np.mean(list(reference_finals.values())):.1f} |" if reference_finals else " – |"
        lines.append(row)
    return [*lines, ""]

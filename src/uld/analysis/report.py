"""`uld report`: a sweep directory -> results.csv, learning-curve and aggregate-metric plots, report.md.

Each agent's runs are compared with its own paper's curves when --reference is a root of published
curves (ULD with mrq/, DR.Q with drq/: compare.reference_folder). A sweep of several agents gets one
report per agent (report/<agent>/) and a report.md that sets them side by side.

Results use the tidy format of the published curves (shared/reference/README.md): one row per
(env, step, seed) with the evaluation's mean return, env named as there (``Dmc-cheetah-run``).
A reference is compared at the sweep's own steps (analysis/compare.py, docs/benchmarks.md "Equal budgets").
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

from uld.analysis.compare import (StepComparison, compare_curve, describe_counts, reference_folder,
                                  step_at_or_below, verdict_counts)
from uld.analysis.metrics import (CONFIDENCE, Normalization, aggregate_metrics, aggregate_names, curve_with_ci,
                                  normalization_for)
from uld.analysis.plots import plot_aggregates, plot_curve, plot_profiles
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
    """Published curves in the tidy env,step,seed,return format to compare with: a folder of them
    (e.g. shared/reference/mrq), or a root of one folder per paper (shared/reference), each agent's runs
    then compared with its own paper's (ULD: mrq, DR.Q: drq)."""
    out: str | None = None
    """Where to write the report (default: <sweep_dir>/report)."""
    reps: int = 2000
    """Bootstrap resamples per confidence interval."""
    seed: int = 0
    """Seed of the bootstrap (the same seed gives the same intervals)."""
    full_range: bool = False
    """Plot each reference curve over all its steps instead of clipping it to the sweep's budget."""


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

    def at(self, env: str, step: int) -> dict[int, float]:
        """Each seed's return at this step, for the seeds that have an evaluation there."""
        return {seed: by_step[step] for seed, by_step in self.returns[env].items() if step in by_step}

    def by_step(self, env: str) -> dict[int, list[float]]:
        """Step -> the returns of the seeds evaluated there (in seed order)."""
        table: dict[int, list[float]] = defaultdict(list)
        for seed in sorted(self.returns[env]):
            for step, value in self.returns[env][seed].items():
                table[step].append(value)
        return dict(sorted(table.items()))

    def last_steps(self, env: str) -> list[int]:
        """Each seed's last evaluation step, in seed order."""
        return [max(by_step) for _, by_step in sorted(self.returns[env].items()) if by_step]

    def common_step(self, env: str) -> int | None:
        """The latest evaluation step that every seed of the env has (None when they share none)."""
        shared = set.intersection(*(set(by_step) for by_step in self.returns[env].values()))
        return max(shared) if shared else None

    def table(self, env: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, returns as seeds x steps with NaN where a seed has no evaluation)."""
        by_seed = self.returns[env]
        steps = np.array(sorted({step for by_step in by_seed.values() for step in by_step}))
        table = np.array([[by_seed[seed].get(int(step), math.nan) for step in steps] for seed in sorted(by_seed)])
        return steps, table


# ---- reading -----------------------------------------------------------------------------------------

def _runs(sweep_dir: Path) -> list[tuple[Path, dict]]:
    """(eval.csv, config) of every run under the directory (any folder with config.json and eval.csv)."""
    runs = []
    for eval_path in sorted(sweep_dir.rglob("eval.csv")):
        config_path = eval_path.with_name("config.json")
        # Files that uld train --restart moved aside are not a run of the sweep.
        if config_path.exists() and not any(part.startswith("restarted-") for part in eval_path.parts):
            runs.append((eval_path, read_run_config(eval_path.parent)))
    return runs


def sweep_agents(sweep_dir: Path) -> list[str]:
    """The agents of the runs under the directory, in the order `uld train --help` lists them (others last)."""
    from uld.agents.registry import agent_names

    known = agent_names()
    agents = {str(config.get("agent", "uld")) for _, config in _runs(sweep_dir)}
    return sorted(agents, key=lambda agent: (known.index(agent) if agent in known else len(known), agent))


def load_sweep(sweep_dir: Path, agent: str | None = None) -> tuple[Curves, list[str]]:
    """Every run under the directory (of `agent` only, when given); the unfinished ones as text."""
    curves, unfinished = Curves(), []
    for eval_path, config in _runs(sweep_dir):
        if agent is not None and config.get("agent", "uld") != agent:
            continue
        env = reference_name(config["env"])
        rows = read_eval_csv(eval_path)
        bad = next((row for row in rows if not math.isfinite(row["mean_return"])), None)
        if bad is not None:  # never a silent nan [nan, nan] aggregate, nor a seed dropped from a task's row
            raise UldError(f"{eval_path} holds a non-finite return ({bad['mean_return']}) at step {bad['step']}; "
                           "rerun that run or move it out of the sweep directory, then report again")
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
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                if tuple(next(reader, ())) != TIDY_COLUMNS:
                    continue
                for row in reader:
                    try:
                        env, step, seed, value = row
                        curves.add(env, int(seed), int(step), float(value))
                    except ValueError:
                        raise UldError(f"{path} line {reader.line_num} is not env,step,seed,return with an integer "
                                       f"step and seed and a number ({','.join(row)!r}); fix or remove that "
                                       "row") from None
                    if not math.isfinite(float(value)) or int(seed) < 0 or int(step) < 0:
                        raise UldError(f"{path} line {reader.line_num} has a negative step or seed or a non-finite "
                                       f"return ({','.join(row)!r}); fix or remove that row")
                    curves.final_step[env] = max(curves.final_step.get(env, 0), int(step))
        except (UnicodeDecodeError, csv.Error) as error:
            raise UldError(f"{path} is not a UTF-8 CSV file ({error}); pass a folder of env,step,seed,return "
                           "files") from None
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

def score_table(curves: Curves, envs: list[str], normalization: Normalization,
                steps: dict[str, int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Normalized scores (seeds x envs) at each env's step (default: its final step), over the seeds
    evaluated there in every env, and those seeds."""
    at_step = [curves.at(env, steps[env]) if steps else curves.finals(env) for env in envs]
    seeds = sorted(set.intersection(*(set(f) for f in at_step)))
    table = np.array([[at_step[j][seed] for j in range(len(envs))] for seed in seeds]).reshape(len(seeds), len(envs))
    for j, env in enumerate(envs):
        table[:, j] = normalization.score(env_from_reference_name(env), table[:, j])
    return table, seeds


def _groups(envs: list[str]) -> dict[str, list[str]]:
    """Envs (reference names) by the domain of their uld name."""
    groups: dict[str, list[str]] = defaultdict(list)
    for env in sorted(envs):
        groups[domain_of(env_from_reference_name(env))].append(env)
    return dict(groups)


# ---- the report --------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return text.lower().replace(" ", "-")


def _mean_by_step(curves: Curves, env: str) -> dict[int, float]:
    """Step -> the mean return over the seeds evaluated there."""
    return {step: float(np.mean(values)) for step, values in curves.by_step(env).items()}


def task_comparisons(results: Curves, reference: Curves, env: str) -> list[StepComparison]:
    """Every evaluation of this sweep on the env (mean over seeds) against the reference's seeds at the
    same step or the nearest one below (empty when the reference does not have the env)."""
    if env not in reference.returns:
        return []
    return compare_curve(_mean_by_step(results, env), reference.by_step(env))


def check_report_options(config: ReportConfig) -> None:
    """Raise UldError for options out of range, before anything is read or written."""
    if config.reps <= 0:
        raise UldError(f"--reps must be a positive integer (bootstrap resamples), got {config.reps}")
    if not 0 <= config.seed < 2**32:
        raise UldError(f"--seed must be an integer in [0, 4,294,967,295], got {config.seed}")


def write_report(config: ReportConfig) -> Path:
    """Write results.csv, the plots and report.md; the path of report.md. The report folder is locked while it
    is written (train/lock.py); a failed write is one UldError naming the file."""
    from uld.train import files
    from uld.train.lock import locked
    from uld.train.validation import check_out

    check_report_options(config)
    sweep_dir = Path(config.sweep_dir)
    if not sweep_dir.is_dir():
        raise UldError(f"{sweep_dir} is not a directory; pass the sweep directory that uld sweep wrote")
    out = Path(config.out) if config.out else sweep_dir / "report"
    check_out(out)
    with locked(out, "the report folder"):
        try:
            return _write_reports(config, sweep_dir, out)
        except OSError as error:
            raise files.write_error(Path(error.filename or out), error) from None


def _write_reports(config: ReportConfig, sweep_dir: Path, out: Path) -> Path:
    """One report per agent of the sweep, and one side by side when there are several."""
    agents = sweep_agents(sweep_dir)
    if len(agents) <= 1:
        return _write_agent_report(config, sweep_dir, out, agents[0] if agents else None)
    for agent in agents:  # every agent's inputs are read and checked before the first report is written
        load_sweep(sweep_dir, agent)
        _reference(config, agent)
    for agent in agents:
        _write_agent_report(config, sweep_dir, out / agent, agent)
    return _write_side_by_side(config, sweep_dir, out, agents)


def _reference(config: ReportConfig, agent: str | None) -> tuple[str | None, Curves | None]:
    """(label, curves) of the published curves `agent`'s runs are compared with; (None, None) without --reference."""
    if not config.reference:
        return None, None
    folder = reference_folder(Path(config.reference), agent)
    return f"reference ({folder.resolve().name})", load_tidy(folder)


def _write_agent_report(config: ReportConfig, sweep_dir: Path, out: Path, agent: str | None) -> Path:
    """The report of one agent's runs (all the runs when `agent` is None)."""
    results, unfinished = load_sweep(sweep_dir, agent)
    sources = {"this sweep": results}
    reference_label, reference = _reference(config, agent)
    if reference is not None and reference_label is not None:
        sources[reference_label] = reference
    (out / "curves").mkdir(parents=True, exist_ok=True)  # the inputs are read and checked: writing starts
    write_results_csv(results, out / "results.csv")
    runs = sum(len(by_seed) for by_seed in results.returns.values())
    comparisons = {env: task_comparisons(results, reference, env) for env in results.returns} if reference else {}
    if reference:
        write_verdicts_csv(comparisons, out / "verdicts.csv")

    lines = [f"# Sweep report: {sweep_dir.resolve().name}", "",
             f"{runs} runs on {len(results.returns)} tasks in `{sweep_dir}`"
             + (f" ({len(unfinished)} not finished)" if unfinished else "") + "; per-evaluation results in "
             "[results.csv](results.csv). Each task is scored at its compared step: the last evaluation "
             "that all its runs have (the budget, once they finish). Aggregates are over the runs' scores "
             f"there, with {CONFIDENCE:.0%} stratified-bootstrap confidence intervals ({config.reps} resamples, "
             "rliable); learning curves show the mean over seeds with a pointwise bootstrap interval"
             + ("" if config.full_range or not reference else ", clipped to the sweep's budget") + ".", ""]
    if reference:
        lines += _reference_summary(comparisons, results, reference_label)
    for envs in _groups(list(results.returns)).values():
        title = domain_title(env_from_reference_name(envs[0]))
        normalization = normalization_for(env_from_reference_name(env) for env in envs)
        lines += [f"## {title} ({normalization.name})", ""]
        lines += _step_notes(envs, results)
        lines += _aggregate_section(title, envs, normalization, results, reference, reference_label, out, config)
        lines += _task_table(envs, results, reference, reference_label, comparisons)
        lines += ["### Learning curves", ""]
        for env in envs:
            plot_curve(env, sources, out / "curves" / f"{env}.png", results.final_step[env], config.reps,
                       config.seed, config.full_range)
            lines.append(f"![{env}](curves/{env}.png)")
        lines.append("")
    if unfinished:
        lines += ["## Runs not finished", "", *(f"- {run}" for run in unfinished), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), errors="surrogateescape")  # a folder name that is not UTF-8, as it is
    return path


def _write_side_by_side(config: ReportConfig, sweep_dir: Path, out: Path, agents: list[str]) -> Path:
    """report.md for a sweep of several agents: per task, each agent's return at its compared step beside its
    own reference at the same budget, and one learning-curve plot per task with every agent and reference."""
    from uld.agents.registry import agent_names, get_agent

    titles = {agent: get_agent(agent).title or agent if agent in agent_names() else agent for agent in agents}
    results = {agent: load_sweep(sweep_dir, agent)[0] for agent in agents}
    references = {agent: _reference(config, agent) for agent in agents}
    sources: dict[str, Curves] = {}
    for agent in agents:
        sources[f"{titles[agent]} (this sweep)"] = results[agent]
        label, reference = references[agent]
        if label is not None and reference is not None:
            sources[label] = reference
    header, rule = "| task |", "|---|"
    for agent in agents:
        header += f" {titles[agent]}: compared step | return | its reference at the same budget (step) | verdict |"
        rule += "---|---|---|---|"
    lines = [f"# Sweep report: {sweep_dir.resolve().name}", "",
             "Runs of " + ", ".join(f"{titles[a]} ([report]({a}/report.md))" for a in agents) + f" in `{sweep_dir}`, "
             "each agent's tasks scored at their compared step and set beside the published curves of its own "
             "paper at the same budget (each agent's report has the details).", "", header, rule]
    envs = list(dict.fromkeys(env for agent in agents for env in results[agent].returns))
    (out / "curves").mkdir(parents=True, exist_ok=True)
    for env in envs:
        row = f"| {env} |"
        for agent in agents:
            curves, (_, reference) = results[agent], references[agent]
            step = curves.common_step(env) if env in curves.returns else None
            if step is None:
                row += " – | – | – | – |"
                continue
            row += f" {step:,} | {_mean_cell(list(curves.at(env, step).values()))} |"
            compared = [c for c in task_comparisons(curves, reference, env) if c.step == step] if reference else []
            row += (f" {compared[0].reference_mean:.1f} ({compared[0].reference_step:,}) | {compared[0].verdict} |"
                    if compared else " – | – |")
        lines.append(row)
    lines += ["", "## Learning curves", ""]
    for env in envs:
        budget = max(results[agent].final_step.get(env, 0) for agent in agents)
        plot_curve(env, {label: c for label, c in sources.items() if env in c.returns}, out / "curves" / f"{env}.png",
                   budget, config.reps, config.seed, config.full_range)
        lines.append(f"![{env}](curves/{env}.png)")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_verdicts_csv(comparisons: dict[str, list[StepComparison]], path: Path) -> None:
    """One row per evaluation of the sweep: its mean, the reference step used, the reference's seed range, the verdict."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("env", "step", "mean_return", "reference_step", "reference_mean", "reference_min",
                         "reference_max", "verdict"))
        for env, rows in sorted(comparisons.items()):
            writer.writerows((env, c.step, repr(c.value), c.reference_step, repr(c.reference_mean),
                              repr(min(c.reference)), repr(max(c.reference)), c.verdict) for c in rows)


def _reference_summary(comparisons: dict[str, list[StepComparison]], results: Curves, label: str) -> list[str]:
    """The verdict counts over all tasks: at each task's compared step, and at every evaluation."""
    at_step = [c for env, rows in comparisons.items() for c in rows if c.step == results.common_step(env)]
    everywhere = [c for rows in comparisons.values() for c in rows]
    if not everywhere:
        return [f"The {label} has none of these tasks at or below their steps, so there is nothing to compare.", ""]
    return ["**Against the " + label + "**, at equal budgets (the reference's evaluation at the same step, or "
            "its nearest one below): the sweep's mean over seeds lies within the reference's seed range "
            "[min, max], above it or below it. "
            f"At each task's compared step ({_count(len(at_step), 'task')}): {describe_counts(verdict_counts(at_step))}. "
            f"At every evaluation of the sweep ({len(everywhere)}): {describe_counts(verdict_counts(everywhere))}. "
            "Per evaluation: [verdicts.csv](verdicts.csv).", ""]


def _step_notes(envs: list[str], results: Curves) -> list[str]:
    """A line for each task whose runs stopped at different steps."""
    notes = []
    for env in envs:
        last = results.last_steps(env)
        if min(last) != max(last):
            common = results.common_step(env)
            at = f"compared at their common step {common:,}" if common is not None else "they share no evaluation"
            notes.append(f"- {env}: the runs stopped at different steps ({min(last):,} to {max(last):,}); {at}.")
    return notes + [""] if notes else []


def _compared_steps(envs: list[str], results: Curves) -> dict[str, int]:
    """Each task's compared step (the tasks whose runs share an evaluation)."""
    steps = {env: results.common_step(env) for env in envs}
    return {env: step for env, step in steps.items() if step is not None}


def _aggregate_section(title: str, envs: list[str], normalization: Normalization, results: Curves,
                       reference: Curves | None, reference_label: str | None, out: Path,
                       config: ReportConfig) -> list[str]:
    steps = _compared_steps(envs, results)
    envs = [env for env in envs if env in steps]
    if not envs:
        return ["The runs share no evaluation yet, so there are no aggregates.", ""]
    table, seeds = score_table(results, envs, normalization, steps)
    if not seeds:
        return ["No seed has an evaluation at the compared step of every task, so there are no aggregates.", ""]
    names = aggregate_names(normalization)
    sweep_column = f"this sweep ({_steps_phrase(steps.values())})"
    estimates = {sweep_column: aggregate_metrics(table, names, reps=config.reps, seed=config.seed)}
    tables = {"this sweep": table}
    header = f"{_count(len(envs), 'task')} × {_count(len(seeds), 'seed')} ({', '.join(map(str, seeds))}) " \
             f"{_steps_phrase(steps.values())}"
    if reference is not None and all(env in reference.returns for env in envs):
        reference_steps = {env: step_at_or_below(reference.by_step(env), steps[env]) for env in envs}
        if all(step is not None for step in reference_steps.values()):
            equal, equal_seeds = score_table(reference, envs, normalization, reference_steps)
            final, final_seeds = score_table(reference, envs, normalization)
            if equal_seeds:
                column = f"{reference_label} at the same budget ({_steps_phrase(reference_steps.values())})"
                estimates[column] = aggregate_metrics(equal, names, reps=config.reps, seed=config.seed)
                tables[f"{reference_label} at the same budget"] = equal
                header += (f"; {reference_label} at the same budget: {_count(len(equal_seeds), 'seed')} "
                           f"{_steps_phrase(reference_steps.values())}, its nearest evaluation at or below each "
                           "task's step")
            if final_seeds:
                column = f"{reference_label} final ({_steps_phrase(reference.final_step[env] for env in envs)}), context"
                estimates[column] = aggregate_metrics(final, names, reps=config.reps, seed=config.seed)
    columns = list(estimates)
    lines = [header + ".", "", "| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(estimates[c][name]) for c in columns) + " |" for name in names]
    slug = _slug(title)
    plotted = {label: estimate for label, estimate in estimates.items() if not label.endswith(", context")}
    plot_aggregates(plotted, normalization.name, out / f"{slug}-aggregates.png")
    plot_profiles(tables, normalization.name, out / f"{slug}-profile.png", config.reps, config.seed)
    lines += ["", f"![aggregate metrics]({slug}-aggregates.png)", "",
              f"![performance profile]({slug}-profile.png)", ""]
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _steps_phrase(steps) -> str:
    steps = sorted(set(steps))
    return f"at step {steps[0]:,}" if len(steps) == 1 else f"at steps {steps[0]:,} to {steps[-1]:,}"


def _mean_cell(values: list[float]) -> str:
    mean, low, high = curve_with_ci(np.array(values)[:, None])
    return f"{mean[0]:.1f} [{low[0]:.1f}, {high[0]:.1f}]"


def _task_table(envs: list[str], results: Curves, reference: Curves | None, reference_label: str | None,
                comparisons: dict[str, list[StepComparison]]) -> list[str]:
    """Per task: the return at the compared step (mean over seeds and its bootstrap interval) and, with a
    reference, the reference at the same budget, its final score, and the verdicts."""
    header = "| task | seeds | compared step | return |"
    rule = "|---|---|---|---|"
    if reference:
        header += (f" {reference_label} at the same budget (step) | reference seed range | reference final (step) "
                   "| verdict at the compared step | verdicts at every evaluation |")
        rule += "---|---|---|---|---|"
    lines = [header, rule]
    for env in envs:
        step = results.common_step(env)
        values = list(results.at(env, step).values()) if step is not None else []
        cell = _mean_cell(values) if values else "no common evaluation"
        row = f"| {env} | {len(results.returns[env])} | {f'{step:,}' if step is not None else '–'} | {cell} |"
        if reference:
            at_step = [c for c in comparisons.get(env, []) if c.step == step]
            if at_step:
                c = at_step[0]
                row += (f" {c.reference_mean:.1f} ({c.reference_step:,}) | [{min(c.reference):.1f}, "
                        f"{max(c.reference):.1f}] |")
            else:
                row += " – | – |"
            finals = reference.finals(env) if env in reference.returns else {}
            row += (f" {np.mean(list(finals.values())):.1f} ({reference.final_step[env]:,}) |" if finals else " – |")
            row += f" {at_step[0].verdict} |" if at_step else " – |"
            everywhere = comparisons.get(env, [])
            row += (f" {describe_counts(verdict_counts(everywhere))} (of {len(everywhere)}) |" if everywhere
                    else " – |")
        lines.append(row)
    return [*lines, ""]

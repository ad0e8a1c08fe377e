"""The report's figures: learning curves at the sweep's budget, aggregate metrics, performance profiles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from uld.analysis.metrics import Interval, curve_with_ci, performance_profile

if TYPE_CHECKING:
    from uld.analysis.report import Curves


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def steps_label(step: float, _position=None) -> str:
    """Agent steps as a tick label: 1,500 -> 1.5k, 500,000 -> 500k, 1,000,000 -> 1M."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(step) >= size:
            return f"{step / size:g}{suffix}"
    return f"{step:g}"


SWEEP_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple")
REFERENCE_COLORS = ("tab:gray", "tab:orange", "tab:olive", "tab:brown")


def curve_figure(env: str, curves: dict[str, Curves], budget: int, reps: int, seed: int, full_range: bool = False):
    """The figure of one task's learning curves: mean return over seeds with its 95% bootstrap band,
    for this sweep (the first source) and the reference.

    The x axis spans the sweep's budget and the reference is clipped to it, unless `full_range`, which
    shows every source's whole curve. The reference is drawn as steps: at each step, the value of its
    evaluation at or below that step, which is what the sweep's evaluation there is compared with,
    held to the right edge when its last evaluation comes earlier.
    """
    from matplotlib.ticker import FuncFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    tables = {}
    for label, source in curves.items():
        if env in source.returns:
            steps, table = source.table(env)
            keep = steps <= budget if not full_range else np.ones_like(steps, dtype=bool)
            if keep.any():
                tables[label] = steps[keep], table[:, keep]
    right = max([budget] + [int(steps[-1]) for steps, _ in tables.values()]) if full_range else budget
    # Sweeps (the first source, and any other "... (this sweep)": one per agent of a sweep of several) as
    # lines with markers, references as steps; each its own colour.
    sweep_colors, reference_colors = iter(SWEEP_COLORS), iter(REFERENCE_COLORS)
    for index, (label, (steps, table)) in enumerate(tables.items()):
        mean, low, high = curve_with_ci(table, reps=reps, seed=seed)
        seeds = f"mean of {_count(table.shape[0], 'seed')}, 95% CI"
        if index == 0 or label.endswith("(this sweep)"):
            color = next(sweep_colors, "black")
            ax.plot(steps, mean, color=color, linewidth=2, marker="o" if steps.size <= 20 else None,
                    markersize=4, clip_on=False, label=f"{label}: {seeds}", zorder=3)
            ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
            continue
        if steps[-1] < right:  # hold the last evaluation to the right edge
            steps, mean, low, high = (np.append(x, x[-1]) for x in (steps, mean, low, high))
            steps[-1] = right
        color = next(reference_colors, "black")
        ax.plot(steps, mean, color=color, linewidth=2, drawstyle="steps-post", clip_on=False,
                label=f"{label}: {seeds}, at or below each step")
        ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0, step="post")
    ax.set_xlim(0, right)
    ax.xaxis.set_major_formatter(FuncFormatter(steps_label))
    shown = "full range" if full_range else f"up to the sweep's budget of {budget:,} steps"
    ax.set_title(f"{env} ({shown})", fontsize=12)
    ax.set_xlabel("agent steps", fontsize=12)
    ax.set_ylabel("evaluation return", fontsize=12)
    ax.tick_params(labelsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    return fig


def plot_curve(env: str, curves: dict[str, Curves], path: Path, budget: int, reps: int, seed: int,
               full_range: bool = False) -> None:
    plt = _pyplot()
    fig = curve_figure(env, curves, budget, reps, seed, full_range)
    fig.savefig(path, dpi=110)
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

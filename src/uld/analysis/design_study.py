"""The design study's report: each variant's score relative to the default, with confidence intervals.

A design-study sweep directory holds one sweep per variant, <sweep>/<variant>, "default" among them
(uld sweep --design-study). A variant's relative score on a task is the mean over its seeds of the
normalized final return minus the default's; the table averages it over the tasks both have. The
95% interval resamples seeds with replacement within each task and variant (a stratified bootstrap),
so it says how much of a difference seed noise alone could make.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from uld.analysis.metrics import normalization_for
from uld.analysis.report import Curves, load_sweep
from uld.analysis.suites import env_from_reference_name
from uld.errors import UldError

CONFIDENCE = 0.95


def is_design_study(sweep_dir: Path) -> bool:
    return (sweep_dir / "default" / "sweep.json").exists()


def normalized_finals(curves: Curves) -> dict[str, np.ndarray]:
    """env -> the normalized final returns of its seeds."""
    finals = {}
    for env in curves.returns:
        values = np.array(list(curves.finals(env).values()), dtype=float)
        if len(values):
            finals[env] = normalization_for([env_from_reference_name(env)]).score(env_from_reference_name(env), values)
    return finals


def relative_score(variant: dict[str, np.ndarray], default: dict[str, np.ndarray], reps: int,
                   seed: int) -> tuple[float, float, float, int]:
    """(mean difference, CI low, CI high, tasks) of variant minus default over their shared tasks."""
    envs = sorted(set(variant) & set(default))
    if not envs:
        return float("nan"), float("nan"), float("nan"), 0
    point = float(np.mean([variant[e].mean() - default[e].mean() for e in envs]))
    rng = np.random.default_rng(seed)
    samples = np.zeros(reps)
    for env in envs:
        a, b = variant[env], default[env]
        samples += (a[rng.integers(0, len(a), (reps, len(a)))].mean(1)
                    - b[rng.integers(0, len(b), (reps, len(b)))].mean(1))
    samples /= len(envs)
    low, high = np.quantile(samples, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return point, float(low), float(high), len(envs)


def design_study_table(sweep_dir: Path, reps: int = 2000, seed: int = 0) -> str:
    """A markdown table: each variant's score relative to the default."""
    if not is_design_study(sweep_dir):
        raise UldError(f"{sweep_dir} is not a design-study sweep (no default/sweep.json); run uld sweep --design-study")
    default = normalized_finals(load_sweep(sweep_dir / "default")[0])
    lines = ["| variant | score - default (normalized) | 95% CI | tasks |", "|---|---|---|---|"]
    for variant_dir in sorted(p for p in sweep_dir.iterdir() if (p / "sweep.json").exists() and p.name != "default"):
        finals = normalized_finals(load_sweep(variant_dir)[0])
        point, low, high, tasks = relative_score(finals, default, reps, seed)
        lines.append(f"| {variant_dir.name} | {point:+.3f} | [{low:+.3f}, {high:+.3f}] | {tasks} |")
    return "\n".join(lines)

"""Comparing a curve with a reference's seeds at equal budgets: one implementation for `uld report`
and `benchmarks/learning.py`.

A run's evaluation at step t is compared with the reference's evaluation at t, or, where the
reference has none there, at its nearest evaluation below t: never a later one, which would give the
reference more training than the run had. The verdict says where the run's value (a mean over its
seeds) lies against the reference's seeds at that step: within their range [min, max], above or below.
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PUBLISHED_CURVES = {"uld": "mrq", "drq": "drq", "alm": "alm"}
"""Agent -> the folder of its paper's published curves under the reference root (shared/reference):
ULD is compared with MR.Q's curves, DR.Q with DR.Q's."""


def reference_folder(reference: Path, agent: str | None) -> Path:
    """The curves to compare `agent`'s runs with: the subfolder of `reference` that holds its paper's curves
    (PUBLISHED_CURVES) when `reference` is a root of such folders, else `reference` itself."""
    folder = PUBLISHED_CURVES.get(agent or "")
    if folder is not None and (reference / folder).is_dir():
        return reference / folder
    return reference


VERDICTS = ("within", "above", "below")
"""Where a value lies against the reference's seeds: within [min, max], above max, below min."""


def step_at_or_below(steps: Iterable[int], step: int) -> int | None:
    """The largest of `steps` that is at most `step`; None when every one is later."""
    ordered = sorted(steps)
    i = bisect.bisect_right(ordered, step)
    return ordered[i - 1] if i else None


def verdict(value: float, reference: Sequence[float]) -> str:
    """'within' the reference's seed range [min, max], 'above' it or 'below' it."""
    if not reference:
        raise ValueError("a verdict needs at least one reference seed")
    if value > max(reference):
        return "above"
    if value < min(reference):
        return "below"
    return "within"


@dataclass(frozen=True)
class StepComparison:
    """One evaluation of a run compared with the reference at the same budget."""

    step: int
    """The run's evaluation step."""
    value: float
    """The run's value there (a mean over its seeds)."""
    reference_step: int
    """The reference's evaluation used: at `step`, or the nearest one below it."""
    reference: tuple[float, ...]
    """The reference's seeds at `reference_step`."""

    @property
    def verdict(self) -> str:
        return verdict(self.value, self.reference)

    @property
    def reference_mean(self) -> float:
        return statistics.fmean(self.reference)


def compare_curve(ours: Mapping[int, float], reference: Mapping[int, Sequence[float]]) -> list[StepComparison]:
    """Each of our evaluations (step -> value) beside the reference's seeds (step -> values) at the same
    step or the nearest one below it; evaluations earlier than every reference evaluation are left out."""
    comparisons = []
    reference_steps = [step for step, values in reference.items() if len(values)]
    for step in sorted(ours):
        reference_step = step_at_or_below(reference_steps, step)
        if reference_step is not None:
            comparisons.append(StepComparison(step, float(ours[step]), reference_step,
                                              tuple(float(x) for x in reference[reference_step])))
    return comparisons


def verdict_counts(comparisons: Iterable[StepComparison]) -> Counter:
    """How many comparisons fall within, above and below the reference (every key present)."""
    counts = Counter({name: 0 for name in VERDICTS})
    counts.update(c.verdict for c in comparisons)
    return counts


def describe_counts(counts: Mapping[str, int]) -> str:
    """'3 within, 1 above, 0 below' (in VERDICTS order)."""
    return ", ".join(f"{counts.get(name, 0)} {name}" for name in VERDICTS)

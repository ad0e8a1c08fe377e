"""Normalized scores, aggregate metrics and learning curves with bootstrap confidence intervals.

Aggregates follow Agarwal et al., "Deep RL at the Edge of the Statistical Precipice" (NeurIPS 2021),
computed with their library, rliable: over a (runs x tasks) table of normalized final scores,
- IQM: the mean of the middle 50% of all run scores (the 25% lowest and 25% highest are dropped);
- Mean and Median: of the per-task mean scores;
- Optimality gap: how far the run scores fall short of 1 on average, scores above 1 counting as 1;
each with a 95% percentile confidence interval from the stratified bootstrap (seeds are resampled with
replacement within each task, so every task keeps its weight). A performance profile gives, for each
threshold tau, the fraction of runs scoring above tau, with the same kind of interval.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from uld.envs.atari import human_normalized
from uld.envs.dmc import dmc_normalized
from uld.envs.gym import td3_normalized
from uld.envs.protocol import domain_of
from uld.envs.registry import Normalization, find_domain

__all__ = ["RAW", "Interval", "Normalization", "aggregate_metrics", "aggregate_names", "curve_with_ci",
           "dmc_normalized", "human_normalized", "normalization_for", "performance_profile", "td3_normalized"]

CONFIDENCE = 0.95
"""Coverage of every confidence interval in a report."""


# ---- normalizations: each domain declares its own (uld/envs/registry.py) -------------------------

RAW = Normalization("raw return", False, lambda env, returns: np.asarray(returns, dtype=float))


def normalization_for(envs: Iterable[str]) -> Normalization:
    """The normalization of a group of envs of one domain: the domain's, or raw returns.

    DMC (state or pixels): return / 1000. Atari: human-normalized when every game has reference scores.
    Gym: TD3-normalized when every task has a TD3 score (the five locomotion tasks). Raw return
    otherwise, since scores on different scales cannot be aggregated meaningfully with any other choice.
    """
    envs = list(envs)
    domains = {domain_of(env) for env in envs}
    if len(domains) != 1:
        raise ValueError(f"one normalization needs one domain, got {sorted(domains)}")
    domain = find_domain(envs[0])
    if domain is None or domain.normalization is None:
        return RAW
    normalization = domain.normalization([env.partition(":")[2] for env in envs])
    return normalization if normalization is not None else RAW


# ---- bootstrap -----------------------------------------------------------------------------------

@contextlib.contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator for the block and restore its state afterwards.

    rliable's stratified bootstrap draws its resampling indices from the global generator (not from
    the random_state it is handed), so this is what makes its intervals reproducible.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval."""

    point: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.point:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _aggregates() -> dict[str, Callable[[np.ndarray], float]]:
    from rliable import metrics

    return {"IQM": metrics.aggregate_iqm, "Mean": metrics.aggregate_mean, "Median": metrics.aggregate_median,
            "Optimality gap": metrics.aggregate_optimality_gap}


def aggregate_names(normalization: Normalization) -> list[str]:
    """The aggregates that mean something for this normalization (the optimality gap needs a bounded one)."""
    return [name for name in _aggregates() if normalization.bounded or name != "Optimality gap"]


def aggregate_metrics(scores: np.ndarray, names: Sequence[str] = ("IQM", "Mean", "Median", "Optimality gap"),
                      reps: int = 2000, seed: int = 0) -> dict[str, Interval]:
    """Aggregate metrics of a (runs x tasks) table of normalized scores, with stratified bootstrap CIs.

    All metrics share one bootstrap: each replicate resamples the runs of every task with
    replacement and recomputes every metric. The same ``seed`` gives the same intervals.
    """
    from rliable import library

    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must be (runs, tasks), got shape {scores.shape}")
    functions = _aggregates()

    def all_metrics(table: np.ndarray) -> np.ndarray:
        return np.array([functions[name](table) for name in names])

    with seeded_numpy(seed):
        points, intervals = library.get_interval_estimates({"scores": scores}, all_metrics, reps=reps,
                                                           confidence_interval_size=CONFIDENCE)
    return {name: Interval(float(points["scores"][i]), float(intervals["scores"][0, i]),
                           float(intervals["scores"][1, i])) for i, name in enumerate(names)}


def performance_profile(scores: np.ndarray, taus: np.ndarray, reps: int = 2000,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of runs scoring above each tau, and its (2, len(taus)) confidence band."""
    from rliable import library

    with seeded_numpy(seed):
        profiles, bands = library.create_performance_profile({"scores": np.asarray(scores, dtype=float)}, taus,
                                                             reps=reps, confidence_interval_size=CONFIDENCE)
    return profiles["scores"], bands["scores"]


def curve_with_ci(returns: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds of a (seeds x evaluations) table, with a pointwise bootstrap CI over seeds.

    Missing evaluations are NaN (a run that has not got that far): each evaluation uses the seeds that
    have it. With one seed the interval is the point itself.
    """
    from rliable import library

    returns = np.asarray(returns, dtype=float)
    present = ~np.isnan(returns)
    mean = np.full(returns.shape[1], np.nan)
    low, high = mean.copy(), mean.copy()
    masks = {tuple(column) for column in present.T if column.any()}
    with seeded_numpy(seed):
        for mask in sorted(masks):
            rows, columns = np.array(mask), (present.T == np.array(mask)).all(axis=1)
            table = returns[np.ix_(rows, columns)]
            mean[columns] = table.mean(axis=0)
            if table.shape[0] == 1:
                low[columns] = high[columns] = table[0]
                continue
            # (seeds, 1 task, evaluations): rliable resamples the seeds of each evaluation independently.
            _, bands = library.get_interval_estimates({"curve": table[:, None, :]}, lambda x: x.mean(axis=0)[0],
                                                      reps=reps, confidence_interval_size=CONFIDENCE)
            low[columns], high[columns] = bands["curve"][0], bands["curve"][1]
    return mean, low, high

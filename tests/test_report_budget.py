"""`uld report` at the sweep's own budget: equal-step lookup of the reference, verdicts against its seed
range, clipped curves; and benchmarks/learning.py making the same comparison. Golden values on a small
fixed table."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

from uld.analysis.compare import compare_curve, step_at_or_below, verdict, verdict_counts
from uld.analysis.plots import curve_figure, steps_label
from uld.analysis.report import Curves, ReportConfig, load_tidy, write_report

# The reference: 3 seeds of cheetah-run and 2 of walker-walk, evaluated at steps 0, 1,000 and 2,000.
REFERENCE = {
    "Dmc-cheetah-run": {0: [0.0, 10.0, 20.0], 1000: [100.0, 200.0, 300.0], 2000: [500.0, 600.0, 700.0]},
    "Dmc-walker-walk": {0: [50.0, 60.0], 1000: [400.0, 500.0], 2000: [900.0, 950.0]},
}
# The sweep: budget 1,500, evaluations every 500. Walker seed 0 stopped at 1,000.
SWEEP = {
    ("dmc:cheetah-run", 0): {0: 5.0, 500: 50.0, 1000: 150.0, 1500: 400.0},
    ("dmc:cheetah-run", 1): {0: 15.0, 500: 30.0, 1000: 250.0, 1500: 300.0},
    ("dmc:walker-walk", 0): {0: 20.0, 500: 100.0, 1000: 300.0},
    ("dmc:walker-walk", 1): {0: 40.0, 500: 200.0, 1000: 350.0, 1500: 800.0},
}
# Means over seeds and the reference step each is compared with:
#   cheetah: 10 (ref 0, [0, 20]: within), 40 (ref 0: above), 200 (ref 1000, [100, 300]: within), 350 (ref 1000: above)
#   walker:  30 (ref 0, [50, 60]: below), 150 (ref 0: above), 325 (ref 1000, [400, 500]: below), 800 (ref 1000: above)


@pytest.fixture
def sweep(tmp_path) -> tuple[Path, Path]:
    for (env, seed), returns in SWEEP.items():
        run = tmp_path / "sweep" / env.replace(":", "_") / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"env": env, "seed": seed, "steps": 1500, "agent": "uld"}))
        with open(run / "eval.csv", "w") as f:
            f.write("step,mean_return,returns,wall_seconds\n")
            f.writelines(f"{step},{value!r},{value!r},1.0\n" for step, value in returns.items())
    reference = tmp_path / "mrq"
    reference.mkdir()
    (reference / "dmc.csv").write_text("env,step,seed,return\n" + "".join(
        f"{env},{step},{seed},{value!r}\n" for env, by_step in REFERENCE.items() for step, values in by_step.items()
        for seed, value in enumerate(values)))
    return tmp_path / "sweep", reference


def test_step_at_or_below_never_takes_a_later_reference_step():
    steps = [2000, 0, 1000]
    assert [step_at_or_below(steps, s) for s in (0, 500, 999, 1000, 1500, 2000, 9000)] == \
        [0, 0, 0, 1000, 1000, 2000, 2000]
    assert step_at_or_below(steps, -1) is None
    assert step_at_or_below([], 10) is None


def test_verdict_against_the_seed_range_bounds_included():
    assert [verdict(x, [100.0, 300.0, 200.0]) for x in (99.9, 100.0, 250.0, 300.0, 300.1)] == \
        ["below", "within", "within", "within", "above"]
    with pytest.raises(ValueError):
        verdict(1.0, [])


def test_compare_curve_on_the_fixed_table():
    ours = {0: 10.0, 500: 40.0, 1000: 200.0, 1500: 350.0}
    comparisons = compare_curve(ours, REFERENCE["Dmc-cheetah-run"])
    assert [(c.step, c.reference_step, c.verdict) for c in comparisons] == \
        [(0, 0, "within"), (500, 0, "above"), (1000, 1000, "within"), (1500, 1000, "above")]
    assert comparisons[3].reference_mean == pytest.approx(200.0)
    assert dict(verdict_counts(comparisons)) == {"within": 2, "above": 2, "below": 0}
    # A run evaluated before the reference's first evaluation has nothing to be compared with there.
    assert [c.step for c in compare_curve({-5: 1.0, 0: 1.0}, {0: [1.0]})] == [0]


def test_report_compares_at_the_sweeps_own_steps(sweep):
    sweep_dir, reference = sweep
    text = write_report(ReportConfig(str(sweep_dir), reference=str(reference), reps=100)).read_text()
    assert ("| Dmc-cheetah-run | 2 | 1,500 | 350.0 [300.0, 400.0] | 200.0 (1,000) | [100.0, 300.0] | 600.0 (2,000) "
            "| above | 2 within, 2 above, 0 below (of 4) |") in text
    assert ("| Dmc-walker-walk | 2 | 1,000 | 325.0 [300.0, 350.0] | 450.0 (1,000) | [400.0, 500.0] | 925.0 (2,000) "
            "| below | 0 within, 2 above, 2 below (of 4) |") in text
    assert "Dmc-walker-walk: the runs stopped at different steps (1,000 to 1,500); compared at their common step 1,000" in text
    assert "At each task's compared step (2 tasks): 0 within, 1 above, 1 below." in text
    assert "At every evaluation of the sweep (8): 2 within, 4 above, 2 below." in text

    # Aggregates (scores / 1000). Sweep at steps 1,000 to 1,500: task means .35 and .325. Reference at
    # the same budget (step 1,000 for both; seeds 0 and 1, which both tasks have): .15 and .45.
    # Reference final (2,000): .55 and .925.
    assert "2 tasks × 2 seeds (0, 1) at steps 1,000 to 1,500; reference (mrq) at the same budget: 2 seeds at step 1,000" in text
    mean_row = next(line for line in text.splitlines() if line.startswith("| Mean |"))
    points = [float(x) for x in re.findall(r"\| (-?\d+\.\d+) \[", mean_row)]
    assert points == pytest.approx([0.3375, 0.3, 0.7375], abs=1e-3)
    header = next(line for line in text.splitlines() if line.startswith("| metric |"))
    assert "reference (mrq) at the same budget (at step 1,000)" in header
    assert "reference (mrq) final (at step 2,000), context" in header

    with open(sweep_dir / "report" / "verdicts.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["env"], int(r["step"]), int(r["reference_step"]), r["verdict"]) for r in rows] == [
        ("Dmc-cheetah-run", 0, 0, "within"), ("Dmc-cheetah-run", 500, 0, "above"),
        ("Dmc-cheetah-run", 1000, 1000, "within"), ("Dmc-cheetah-run", 1500, 1000, "above"),
        ("Dmc-walker-walk", 0, 0, "below"), ("Dmc-walker-walk", 500, 0, "above"),
        ("Dmc-walker-walk", 1000, 1000, "below"), ("Dmc-walker-walk", 1500, 1000, "above")]


def _sweep_curves() -> Curves:
    curves = Curves()
    for (env, seed), returns in SWEEP.items():
        for step, value in returns.items():
            curves.add("Dmc-" + env.partition(":")[2], seed, step, value)
    return curves


def test_curves_are_clipped_to_the_sweeps_budget_unless_full_range(sweep):
    import matplotlib.pyplot as plt

    _, reference = sweep
    sources = {"this sweep": _sweep_curves(), "reference (mrq)": load_tidy(reference)}
    fig = curve_figure("Dmc-cheetah-run", sources, budget=1500, reps=50, seed=0)
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.0, 1500.0)
    # The reference's evaluations up to the budget (0 and 1,000), its last one held to the right edge.
    sweep_line, reference_line = ax.get_lines()
    assert list(sweep_line.get_xdata()) == [0, 500, 1000, 1500]
    assert list(reference_line.get_xdata()) == [0, 1000, 1500]
    assert list(reference_line.get_ydata()) == pytest.approx([10.0, 200.0, 200.0])
    assert reference_line.get_drawstyle() == "steps-post"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ["this sweep: mean of 2 seeds, 95% CI", "reference (mrq): mean of 3 seeds, 95% CI, at or below each step"]
    assert "1,500 steps" in ax.get_title()
    plt.close(fig)

    fig = curve_figure("Dmc-cheetah-run", sources, budget=1500, reps=50, seed=0, full_range=True)
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.0, 2000.0)
    assert list(ax.get_lines()[1].get_xdata()) == [0, 1000, 2000]
    plt.close(fig)
    assert [steps_label(x) for x in (0, 500, 1500, 500_000, 1_000_000)] == ["0", "500", "1.5k", "500k", "1M"]


def test_learning_benchmark_makes_the_same_comparison(sweep, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import learning
    finally:
        sys.path.pop(0)
    sweep_dir, reference = sweep
    table = learning.compare(["dmc:cheetah-run"], [0, 1], sweep_dir, reference)
    assert "| dmc:cheetah-run | 1500 | 350.0 | 400.0 / 300.0 | 1000 | 200.0 | 81.6 | 100.0 | 300.0 | 3/3 | above |" in table
    assert "| dmc:cheetah-run | 500 | 40.0 | 50.0 / 30.0 | 0 | 10.0 | 8.2 | 0.0 | 20.0 | 3/3 | above |" in table
    assert "2 within, 2 above, 0 below" in table

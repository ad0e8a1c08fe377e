"""Suites, normalizations, aggregate metrics against hand-computed values, and `uld report`'s files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from uld.analysis.metrics import (
    aggregate_metrics,
    curve_with_ci,
    dmc_normalized,
    human_normalized,
    normalization_for,
    performance_profile,
    td3_normalized,
)
from uld.analysis.reference_scores import ATARI_RANDOM_HUMAN, GYM_RANDOM_TD3
from uld.analysis.report import ReportConfig, write_report
from uld.analysis.suites import SUITES, env_from_reference_name, reference_name
from uld.cli import main

# 4 seeds (rows) x 3 tasks (columns). Sorted, the 12 scores are
# 0 .1 .2 | .3 .4 .4 .6 .6 .9 | 1.5 2 3.6, so the IQM is the mean of the middle six: 3.2 / 6.
# Task means are .15, .5 and 2: mean 2.65 / 3, median .5. Clipped at 1 the scores sum to 6.5,
# so the optimality gap is 1 - 6.5 / 12.
SCORES = np.array([[0.0, 0.4, 0.9],
                   [0.1, 0.4, 1.5],
                   [0.2, 0.6, 2.0],
                   [0.3, 0.6, 3.6]])
EXPECTED = {"IQM": 3.2 / 6, "Mean": 2.65 / 3, "Median": 0.5, "Optimality gap": 1 - 6.5 / 12}


def test_aggregate_metrics_equal_hand_computed_values():
    estimates = aggregate_metrics(SCORES, reps=300, seed=7)
    assert {name: e.point for name, e in estimates.items()} == pytest.approx(EXPECTED, rel=1e-12, abs=1e-12)
    for estimate in estimates.values():
        assert estimate.low <= estimate.point <= estimate.high
        assert estimate.low < estimate.high
    assert aggregate_metrics(SCORES, reps=300, seed=7) == estimates  # same seed, same intervals
    assert aggregate_metrics(SCORES, reps=300, seed=8) != estimates


def test_bootstrap_leaves_numpy_global_generator_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    aggregate_metrics(SCORES, names=("Mean",), reps=50, seed=0)
    assert np.random.rand() == expected


def test_performance_profile_counts_runs_above_each_threshold():
    profile, band = performance_profile(SCORES, np.array([0.0, 0.5, 1.0, 4.0]), reps=200, seed=0)
    assert profile == pytest.approx([11 / 12, 6 / 12, 3 / 12, 0.0])
    assert band.shape == (2, 4)
    assert np.all(band[0] <= profile) and np.all(profile <= band[1])


def test_curve_mean_and_interval_over_the_seeds_present():
    returns = np.array([[1.0, 2.0, 3.0, np.nan],
                        [2.0, 3.0, 4.0, 5.0],
                        [3.0, 4.0, 8.0, np.nan]])
    mean, low, high = curve_with_ci(returns, reps=200, seed=0)
    assert mean == pytest.approx([2.0, 3.0, 5.0, 5.0])
    assert low[3] == high[3] == 5.0  # one seed got there: no interval
    assert np.all(low[:3] <= mean[:3]) and np.all(mean[:3] <= high[:3])
    assert np.all(low[:3] >= [1.0, 2.0, 3.0]) and np.all(high[:3] <= [3.0, 4.0, 8.0])


def test_normalizations():
    assert human_normalized("Pong", 14.6) == pytest.approx(1.0)
    assert human_normalized("Pong", -20.7) == pytest.approx(0.0)
    assert human_normalized("Pong", 0.0) == pytest.approx(20.7 / 35.3)
    assert human_normalized("MontezumaRevenge", 2376.65) == pytest.approx(0.5)
    assert dmc_normalized(500.0) == pytest.approx(0.5)
    assert td3_normalized("HalfCheetah-v4", 10574.0) == pytest.approx(1.0)
    assert td3_normalized("Hopper-v5", 18.791) == pytest.approx(0.0)
    assert normalization_for(["dmc:cheetah-run", "dmc:walker-walk"]).name == "return / 1000"
    assert normalization_for(["dmc-pixels:cheetah-run"]).score("dmc-pixels:cheetah-run", 250.0) == pytest.approx(0.25)
    assert normalization_for(SUITES["gym"].envs).name == "TD3-normalized score"
    assert normalization_for(SUITES["atari"].envs).score("atari:Pong", 14.6) == pytest.approx(1.0)
    raw = normalization_for(["gym:Pendulum-v1", "gym:Hopper-v4"])
    assert raw.name == "raw return" and not raw.bounded
    with pytest.raises(ValueError):
        normalization_for(["gym:Hopper-v4", "dmc:cheetah-run"])


def test_suites_and_reference_tables():
    assert {name: len(suite.envs) for name, suite in SUITES.items()} == {
        "gym": 5, "gym-v5": 5, "dmc": 28, "dmc-pixels": 28, "atari": 57}
    assert SUITES["gym"].protocol.steps == 1_000_000 and SUITES["atari"].protocol.eval_every == 100_000
    assert "atari:MontezumaRevenge" in SUITES["atari"].envs and "atari:MsPacman" in SUITES["atari"].envs
    assert all(random < human for random, human in ATARI_RANDOM_HUMAN.values())
    assert all(random < td3 for random, td3 in GYM_RANDOM_TD3.values())


@pytest.mark.parametrize("env, name", [("gym:HalfCheetah-v4", "Gym-HalfCheetah-v4"), ("dmc:cheetah-run", "Dmc-cheetah-run"),
                                       ("dmc-pixels:walker-walk", "Dmc-visual-walker-walk"),
                                       ("atari:Pong", "Atari-Pong-v5"), ("dmc:finger-turn_easy", "Dmc-finger-turn_easy")])
def test_reference_names(env, name):
    assert reference_name(env) == name
    assert env_from_reference_name(name) == env


def test_uld_suites_prints_budgets(capsys):
    assert main(["suites"]) == 0
    table = capsys.readouterr().out
    assert "dmc-pixels" in table and "2,500,000" in table and "57" in table
    assert main(["suites", "gym-v5"]) == 0
    assert capsys.readouterr().out.split() == [f"gym:{task}-v5" for task in ("HalfCheetah", "Hopper", "Walker2d", "Ant",
                                                                          "Humanoid")]
    assert main(["suites", "dmcc"]) == 2


def _fake_run(run_dir: Path, env: str, seed: int, steps: int, returns: list[float]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"env": env, "seed": seed, "steps": steps, "agent": "uld"}))
    with open(run_dir / "eval.csv", "w") as f:
        f.write("step,mean_return,returns,wall_seconds\n")
        for i, value in enumerate(returns):
            f.write(f"{i * 10},{value!r},{value!r};{value!r},{i}.0\n")


def test_report_writes_results_plots_and_markdown(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in range(3):
        _fake_run(sweep / "dmc_cheetah-run" / f"seed{seed}", "dmc:cheetah-run", seed, 20, [0.0, 100.0 * seed, 300.0 + seed])
        _fake_run(sweep / "dmc_walker-walk" / f"seed{seed}", "dmc:walker-walk", seed, 20, [10.0, 500.0, 900.0 - seed])
    _fake_run(sweep / "gym_Pendulum-v1" / "seed0", "gym:Pendulum-v1", 0, 20, [-1500.0, -1200.0])  # not finished
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "dmc.csv").write_text("env,step,seed,return\n" + "".join(
        f"Dmc-{task},{step},{seed},{step * 5.0 + seed}\n" for task in ("cheetah-run", "walker-walk")
        for step in (0, 100) for seed in range(2)))
    (reference / "other.csv").write_text("Step,eval_episodic_return\n5000,1.0\n")  # another format: skipped

    path = write_report(ReportConfig(str(sweep), reference=str(reference), reps=100))

    out = sweep / "report"
    with open(out / "results.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["env", "step", "seed", "return"]
    assert len(rows) == 1 + 2 * 3 * 3 + 2
    assert rows[1:4] == [["Dmc-cheetah-run", "0", "0", "0.0"], ["Dmc-cheetah-run", "0", "1", "0.0"],
                         ["Dmc-cheetah-run", "0", "2", "0.0"]]
    assert ["Gym-Pendulum-v1", "10", "0", "-1200.0"] in rows
    text = path.read_text()
    # DMC final scores / 1000 are .300 .301 .302 and .900 .899 .898: task means .301 and .899, mean .6.
    assert "| Mean | 0.600 [" in text and "| Optimality gap | " in text and "reference (reference)" in text
    assert "2 tasks × 3 seeds (0, 1, 2) at step 20" in text
    assert "| Dmc-walker-walk | 3 | 20 | 899.0 [" in text
    assert "Gym-Pendulum-v1 seed 0: step 10 of 20" in text
    for image in ("dmc-aggregates.png", "dmc-profile.png", "curves/Dmc-cheetah-run.png", "curves/Gym-Pendulum-v1.png"):
        assert f"]({image})" in text
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Pendulum's only run stopped at step 10: its aggregates are at that step, the last one it has.
    assert "1 task × 1 seed (0) at step 10." in text and "| Gym-Pendulum-v1 | 1 | 10 | -1200.0 [" in text


def test_report_of_an_empty_directory_is_a_user_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no runs" in capsys.readouterr().err

"""Train the full-size agent on given tasks and seeds, then compare its evaluation curve with MR.Q's.

    python benchmarks/learning.py --envs dmc:cartpole-balance dmc:cheetah-run --seeds 0 --steps 30000

Each (env, seed) is trained by `uld train` in its own process (an interrupted run resumes from its
checkpoint when the command is run again) (runs in parallel get one torch thread
each, since two 2-thread processes on a 2-core CPU slow matmuls by an order of magnitude). Existing
run directories that already reached --steps are not retrained, so the comparison can be re-printed
with the same command. The reference is ../shared/reference/mrq (10 seeds per task, evaluations every
5,000 steps): for each evaluation step the table shows our mean over seeds next to the reference's
evaluation at that step (or its nearest one below), its mean, standard deviation and min-max, where
ours falls among the reference seeds, and the verdict (within the reference's seed range, above or
below). The comparison is uld.analysis.compare, the one `uld report` makes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from uld.analysis.compare import compare_curve, describe_counts, verdict_counts
from uld.analysis.report import load_tidy
from uld.analysis.suites import reference_name
from uld.train.logger import read_eval_csv

DEFAULT_REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "mrq"


def load_reference(directory: Path) -> dict[str, dict[int, list[float]]]:
    """env -> step -> returns over seeds, from every tidy CSV under the directory."""
    curves = load_tidy(directory)
    return {env: curves.by_step(env) for env in curves.returns}


def run_dir(out: Path, env: str, seed: int) -> Path:
    return out / env.replace(":", "_") / f"seed{seed}"


def finished(path: Path, steps: int) -> bool:
    return (path / "eval.csv").exists() and any(r["step"] >= steps for r in read_eval_csv(path / "eval.csv"))


def train_all(envs: list[str], seeds: list[int], steps: int, out: Path, parallel: int, extra: list[str]) -> None:
    jobs = [(env, seed) for env in envs for seed in seeds if not finished(run_dir(out, env, seed), steps)]
    threads = "1" if parallel > 1 else str(os.cpu_count() or 1)
    running: list[subprocess.Popen] = []
    for env, seed in jobs:
        while len(running) >= parallel:
            running.pop(0).wait()
        path = run_dir(out, env, seed)
        path.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "uld.cli", "train", "--env", env, "--seed", str(seed), "--steps", str(steps),
                   "--out", str(path), "--no-progress", *extra]
        print("running:", " ".join(command), flush=True)
        log = open(path / "train.log", "a")
        running.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "OMP_NUM_THREADS": threads}))
    for process in running:
        process.wait()


def returns_by_step(out: Path, env: str, seeds: list[int], column: str = "mean_return") -> dict[int, list[float]]:
    """Evaluation step -> one eval.csv column over the seeds whose run reached that step."""
    table: dict[int, list[float]] = defaultdict(list)
    for seed in seeds:
        path = run_dir(out, env, seed) / "eval.csv"
        if path.exists():
            for row in read_eval_csv(path):
                table[row["step"]].append(row[column])
    return table


def per_seed(values: list[float]) -> str:
    return " / ".join(f"{x:.1f}" for x in values)


def reference_cells(mine: float, theirs: list[float] | None) -> str:
    """The cells `ref mean | ref std | ref min | ref max | ref seeds below ours` (dashes when no reference)."""
    if not theirs:
        return "– | – | – | – | –"
    return (f"{statistics.fmean(theirs):.1f} | {statistics.pstdev(theirs):.1f} | {min(theirs):.1f} | "
            f"{max(theirs):.1f} | {sum(r < mine for r in theirs)}/{len(theirs)}")


def compare(envs: list[str], seeds: list[int], out: Path, reference: Path) -> str:
    ref = load_reference(reference)
    lines = ["| env | step | ours (mean over seeds) | ours per seed | ref step | ref mean | ref std | ref min | ref max "
             "| ref seeds below ours | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    counts = []
    for env in envs:
        ours = returns_by_step(out, env, seeds)
        comparisons = {c.step: c for c in compare_curve({step: statistics.fmean(v) for step, v in ours.items()},
                                                         ref.get(reference_name(env), {}))}
        counts += comparisons.values()
        for step in sorted(ours):
            mine = statistics.fmean(ours[step])
            c = comparisons.get(step)
            lines.append(f"| {env} | {step} | {mine:.1f} | {per_seed(ours[step])} | "
                         + (f"{c.reference_step} | {reference_cells(mine, list(c.reference))} | {c.verdict} |" if c
                            else f"– | {reference_cells(mine, None)} | – |"))
    lines.append(f"\nAgainst the reference's seed range at equal steps: {describe_counts(verdict_counts(counts))}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["dmc:cartpole-balance", "dmc:cheetah-run"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-learning"))
    parser.add_argument("--parallel", type=int, default=2, help="training processes at once")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--compare-only", action="store_true", help="print the table from existing runs")
    args, extra = parser.parse_known_args()
    if not args.compare_only:
        train_all(args.envs, args.seeds, args.steps, args.out, args.parallel, extra)
    print(compare(args.envs, args.seeds, args.out, args.reference))


if __name__ == "__main__":
    main()

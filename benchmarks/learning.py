"""Train full-size agents on given tasks and seeds, then compare each one's curve with its own paper's.

    python benchmarks/learning.py --envs dmc:cartpole-balance dmc:cheetah-run --seeds 0 --steps 30000
    python benchmarks/learning.py --agents uld drq --envs dmc:cheetah-run --seeds 0 1 --steps 30000

Each (env, seed) is trained by `uld train` in its own process (an interrupted run resumes from its
checkpoint when the command is run again) (runs in parallel get one torch thread
each, since two 2-thread processes on a 2-core CPU slow matmuls by an order of magnitude). Existing
run directories that already reached --steps are not retrained, so the comparison can be re-printed
with the same command. ULD's runs go to OUT/<env>/seed<k>, another agent's to OUT/<agent>/<env>/seed<k>.
Each agent is compared with its own paper's curves under ../shared/reference (ULD: mrq/, 10 seeds per
task, evaluations every 5,000 steps; DR.Q: drq/, 10 seeds, every 25,000 steps), as `uld report` does
(uld.analysis.compare.reference_folder): for each evaluation step the table shows our mean over seeds
next to the reference's evaluation at that step (or its nearest one below), its mean, standard deviation and min-max, where
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

from uld.analysis.compare import compare_curve, describe_counts, reference_folder, verdict_counts
from uld.analysis.report import load_tidy
from uld.analysis.suites import reference_name
from uld.train.logger import read_eval_csv

DEFAULT_REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def load_reference(directory: Path) -> dict[str, dict[int, list[float]]]:
    """env -> step -> returns over seeds, from every tidy CSV under the directory."""
    curves = load_tidy(directory)
    return {env: curves.by_step(env) for env in curves.returns}


def run_dir(out: Path, env: str, seed: int, agent: str = "uld") -> Path:
    """OUT/<env>/seed<k> for ULD (where runs of earlier versions of this script are), OUT/<agent>/... for others."""
    return (out if agent == "uld" else out / agent) / env.replace(":", "_") / f"seed{seed}"


def finished(path: Path, steps: int) -> bool:
    return (path / "eval.csv").exists() and any(r["step"] >= steps for r in read_eval_csv(path / "eval.csv"))


def train_all(envs: list[str], seeds: list[int], steps: int, out: Path, parallel: int, extra: list[str],
              agents: tuple[str, ...] | None = None) -> None:
    """Train every (agent, env, seed) not finished yet; without `agents`, the agent that `extra` names (default ULD)."""
    jobs = [(agent, env, seed) for agent in (agents or (None,)) for env in envs for seed in seeds
            if not finished(run_dir(out, env, seed, agent or "uld"), steps)]
    threads = "1" if parallel > 1 else str(os.cpu_count() or 1)
    running: list[subprocess.Popen] = []
    for agent, env, seed in jobs:
        while len(running) >= parallel:
            running.pop(0).wait()
        path = run_dir(out, env, seed, agent or "uld")
        path.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "uld.cli", "train", *(["--agent", agent] if agent else []), "--env", env,
                   "--seed", str(seed), "--steps", str(steps), "--out", str(path), "--no-progress", *extra]
        print("running:", " ".join(command), flush=True)
        log = open(path / "train.log", "a")
        running.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "OMP_NUM_THREADS": threads}))
    for process in running:
        process.wait()


def returns_by_step(out: Path, env: str, seeds: list[int], column: str = "mean_return",
                    agent: str = "uld") -> dict[int, list[float]]:
    """Evaluation step -> one eval.csv column over the seeds whose run reached that step."""
    table: dict[int, list[float]] = defaultdict(list)
    for seed in seeds:
        path = run_dir(out, env, seed, agent) / "eval.csv"
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


def compare(envs: list[str], seeds: list[int], out: Path, reference: Path, agents: tuple[str, ...] = ("uld",)) -> str:
    """One table per agent: its runs' evaluations against its own paper's curves at equal steps."""
    lines, totals = [], []
    for agent in agents:
        folder = reference_folder(reference, agent)
        ref = load_reference(folder)
        lines += [f"{agent} against {folder.name}:", "",
                  "| env | step | ours (mean over seeds) | ours per seed | ref step | ref mean | ref std | ref min "
                  "| ref max | ref seeds below ours | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        counts = []
        for env in envs:
            ours = returns_by_step(out, env, seeds, agent=agent)
            comparisons = {c.step: c for c in compare_curve({step: statistics.fmean(v) for step, v in ours.items()},
                                                             ref.get(reference_name(env), {}))}
            counts += comparisons.values()
            for step in sorted(ours):
                mine = statistics.fmean(ours[step])
                c = comparisons.get(step)
                lines.append(f"| {env} | {step} | {mine:.1f} | {per_seed(ours[step])} | "
                             + (f"{c.reference_step} | {reference_cells(mine, list(c.reference))} | {c.verdict} |"
                                if c else f"– | {reference_cells(mine, None)} | – |"))
        lines.append("")
        totals.append(f"{agent} against {folder.name}: {describe_counts(verdict_counts(counts))}")
    lines.append(f"Against the reference's seed range at equal steps: {'; '.join(totals)}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", nargs="+", default=["uld"], help="agents to train, each against its paper")
    parser.add_argument("--envs", nargs="+", default=["dmc:cartpole-balance", "dmc:cheetah-run"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-learning"))
    parser.add_argument("--parallel", type=int, default=2, help="training processes at once")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                        help="a root of published curves (one folder per paper), or one folder used for every agent")
    parser.add_argument("--compare-only", action="store_true", help="print the table from existing runs")
    args, extra = parser.parse_known_args()
    if not args.compare_only:
        train_all(args.envs, args.seeds, args.steps, args.out, args.parallel, extra, tuple(args.agents))
    print(compare(args.envs, args.seeds, args.out, args.reference, tuple(args.agents)))


if __name__ == "__main__":
    main()

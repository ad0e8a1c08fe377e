"""Train ALM on a Gym task and compare its evaluation curve with the authors' published one.

    python benchmarks/alm_vs_reference.py --steps 30000 --seeds 0 --precision bf16

Each seed is trained by `uld train --agent alm` in its own process (--parallel seeds at once, one
torch thread each; a single process gets every core unless `--threads` says otherwise). A run
directory that already reached --steps is not retrained, and an unfinished one (interrupted, or asked
for more --steps) continues from its last checkpoint, so the same command resumes a run or re-prints
the table (--compare-only only prints). The reference is ../shared/reference/alm: five seeds per task,
on the gym -v2 tasks with MuJoCo 1.50, whose Step column excludes the 5,000 random steps. Our step
axis counts every environment step, so our step s is compared with their s - 5,000
(spec/ALM.md, Known quirks). Env versions differ (v5 here, v2 there): compare the trend, not digits.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import per_seed, reference_cells, returns_by_step, train_all  # noqa: E402  (shared with the ULD benchmark)

DEFAULT_REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "alm"
RANDOM_STEPS = 5_000
"""Steps the reference's Step axis leaves out (its random phase)."""
REFERENCE_FILES = {
    "HalfCheetah": "gym_half_cheetah",
    "Walker2d": "gym_walker2d",
    "Ant": "gym_ant",
    "Humanoid": "gym_humanoid",
    "AntTruncatedObs": "gym_truncated_ant",
    "HumanoidTruncatedObs": "gym_truncated_humanoid",
}
"""Gym env name (before "-v") -> the reference file holding its curves."""


def load_reference(directory: Path, env: str) -> dict[int, list[float]]:
    """Reference step (random phase excluded) -> the returns of its seeds."""
    name = env.partition(":")[2].split("-v")[0]
    if name not in REFERENCE_FILES:
        raise SystemExit(f"no ALM reference for {env}; the references cover gym:{', gym:'.join(REFERENCE_FILES)}")
    with open(directory / f"{REFERENCE_FILES[name]}.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], [row for row in rows[1:] if row]
    table = {}
    for i, row in enumerate(body):
        if header[0] == "Step":
            table[int(float(row[0]))] = [float(x) for x in row[1:] if x]
        else:  # gym_truncated_humanoid.csv has no Step column: rows are 5k, 10k, ...
            table[RANDOM_STEPS * (i + 1)] = [float(x) for x in row if x]
    return table


def compare(env: str, seeds: list[int], out: Path, reference: Path) -> str:
    ref = load_reference(reference, env)
    ours, wall = returns_by_step(out, env, seeds), returns_by_step(out, env, seeds, "wall_seconds")
    lines = [f"ALM on {env} (ours) vs the authors' {REFERENCE_FILES[env.partition(':')[2].split('-v')[0]]}.csv "
             f"(gym -v2, MuJoCo 1.50); reference step = our step - {RANDOM_STEPS:,}",
             "| our step | ref step | ours (mean) | ours per seed | wall s | ref mean | ref std | ref min | ref max "
             "| ref seeds below ours |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for step in sorted(ours):
        mine = statistics.fmean(ours[step])
        theirs = ref.get(step - RANDOM_STEPS)
        ref_step = step - RANDOM_STEPS if theirs else "–"
        lines.append(f"| {step} | {ref_step} | {mine:.1f} | {per_seed(ours[step])} | {statistics.fmean(wall[step]):.0f} | "
                     f"{reference_cells(mine, theirs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="gym:HalfCheetah-v5")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=15_000)
    parser.add_argument("--out", type=Path, default=Path("runs/alm-vs-reference"))
    parser.add_argument("--parallel", type=int, default=1,
                        help="training processes at once (one thread each when more than one)")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--compare-only", action="store_true", help="print the table from existing runs")
    args, extra = parser.parse_known_args()  # the rest goes to `uld train`, e.g. --precision bf16
    if not args.compare_only:
        train_all([args.env], args.seeds, args.steps, args.out, args.parallel, ["--agent", "alm", *extra])
    print(compare(args.env, args.seeds, args.out, args.reference))


if __name__ == "__main__":
    main()

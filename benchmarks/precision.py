"""Does bf16 learn what fp32 learns? The full-size agent trained in both precisions on the same seeds.

    python benchmarks/precision.py --env dmc:cartpole-balance --seeds 0 1 2 3 4 --steps 20000 --threads 1

Each (precision, seed) is trained by `uld train` in its own process (resumable, skipped when already
finished: the same command re-prints the table). For every evaluation step the table gives each
precision's per-seed returns, and whether the bf16 mean lies within the fp32 seeds' range [min, max],
which is the acceptance test of the speed issue (#7): a fast path must not change what is learned.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import per_seed, returns_by_step, train_all  # noqa: E402  (shared with the learning benchmark)

PRECISIONS = ("fp32", "bf16")


def compare(env: str, seeds: list[int], out: Path) -> str:
    fp32, bf16 = (returns_by_step(out / precision, env, seeds) for precision in PRECISIONS)
    lines = [f"{env}, seeds {' '.join(map(str, seeds))}",
             "| step | fp32 per seed | fp32 mean | bf16 per seed | bf16 mean | bf16 mean within fp32 [min, max] |",
             "|---|---|---|---|---|---|"]
    for step in sorted(set(fp32) | set(bf16)):
        a, b = fp32.get(step, []), bf16.get(step, [])
        within = "–"
        if len(a) == len(b) == len(seeds):
            within = "yes" if min(a) <= statistics.fmean(b) <= max(a) else "no"
        lines.append(f"| {step} | {per_seed(a)} | {statistics.fmean(a) if a else float('nan'):.1f} | "
                     f"{per_seed(b)} | {statistics.fmean(b) if b else float('nan'):.1f} | {within} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="dmc:cartpole-balance")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark-precision"))
    parser.add_argument("--parallel", type=int, default=2, help="training processes at once")
    parser.add_argument("--compare-only", action="store_true", help="print the table from existing runs")
    args, extra = parser.parse_known_args()
    if not args.compare_only:
        for precision in PRECISIONS:
            train_all([args.env], args.seeds, args.steps, args.out / precision, args.parallel,
                      ["--precision", precision, *extra])
    print(compare(args.env, args.seeds, args.out))


if __name__ == "__main__":
    main()

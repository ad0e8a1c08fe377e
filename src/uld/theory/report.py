"""`uld theory`: run every check of uld.theory.checks and print one table."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from uld.theory.checks import CheckResult, run_all

_COLUMNS = ("check", "MDPs", "measure", "worst case", "required", "result")


def format_table(results: Sequence[CheckResult]) -> str:
    """A plain-text table, one row per check, followed by each check's secondary numbers."""
    rows = [
        (
            result.name,
            str(result.n_mdps),
            result.measure,
            f"{result.worst:.2e}",
            f"{'<' if result.must_be == 'below' else '>'} {result.tolerance:.0e}",
            "pass" if result.passed else "FAIL",
        )
        for result in results
    ]
    widths = [max(len(cell) for cell in column) for column in zip(_COLUMNS, *rows)]
    numeric = {1, 3}  # right-align counts and numbers

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [line(_COLUMNS), line(["-" * w for w in widths]), *(line(row) for row in rows), ""]
    for result in results:
        if result.detail:  # one line per "; "-separated part, under the check's name
            lines += [f"{result.name}:", *(f"  {part}" for part in result.detail.split("; "))]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table of every check; return 0 when all pass, else 1."""
    parser = argparse.ArgumentParser(
        prog="uld theory", description="Numerical checks of ULD/MR.Q's theory on random finite MDPs."
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random MDPs (default 0)")
    parser.add_argument("--n-mdps", type=int, default=200, help="random MDPs per check (default 200)")
    args = parser.parse_args(argv)
    if args.n_mdps < 4:
        parser.error("--n-mdps must be at least 4, so that every size of MDP gets one")
    results = run_all(seed=args.seed, n_mdps=args.n_mdps)
    print(format_table(results))
    return 0 if all(result.passed for result in results) else 1

"""Numerical checks, on random finite MDPs, of the theory behind ULD/MR.Q (docs/theory.md).

`run_all()` runs every check; `python -m uld.theory` (or `uld theory`) prints them as a table.
"""

from uld.theory.checks import CheckResult, run_all

__all__ = ["CheckResult", "run_all"]

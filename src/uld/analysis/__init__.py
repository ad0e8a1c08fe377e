"""Benchmarks at scale: suites of tasks, sweeps over tasks and seeds, and reports with aggregate metrics.

``suites`` names the benchmark suites, ``sweep`` trains every (task, seed) of one as resumable runs
(locally or on a Ray cluster), ``metrics`` normalizes scores and computes aggregate metrics with
bootstrap confidence intervals, and ``report`` turns a sweep directory into CSV, plots and markdown.
"""

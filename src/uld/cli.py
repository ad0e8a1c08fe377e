"""The `uld` command: `uld train`, `uld theory`. User errors become one sentence and exit code 2."""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from typing import Annotated

import tyro

USAGE = """usage: uld COMMAND [OPTIONS]

commands:
  train    train an agent on one env, one seed or many (uld train --help)
  eval     evaluate a trained run and optionally film an episode (uld eval --help)
  theory   check the papers' theorems numerically on random finite MDPs
  suites   list the benchmark suites and their budgets (uld suites [SUITE] lists a suite's envs)
  sweep    train every task and seed of a suite, here or on a Ray cluster (uld sweep --help)
  report   aggregate metrics, learning curves and report.md for a sweep (uld report --help)
  export   write a run's deterministic policy as a standalone ONNX or TorchScript model (uld export --help)
"""


def _say(text: str, file=None) -> None:
    """print, with a path that is not valid UTF-8 (Python keeps its bytes as surrogates) shown escaped."""
    print(text.encode("utf-8", "backslashreplace").decode("utf-8"), file=file)


def _train(argv: list[str]) -> int:
    import torch

    from uld.devices import set_tf32
    from uld.train.allocator import keep_freed_memory
    from uld.train.config import command_type, parse_train_args
    from uld.train.run import train
    from uld.train.validation import check_fields, explicit_options

    config = parse_train_args(argv)
    # Process-wide settings belong to the command, not to train(), which a user may call from Python.
    check_fields(config)  # the thread count among them, before torch is given it
    if config.threads:
        torch.set_num_threads(config.threads)
    set_tf32(config.tf32)
    # Once the buffer and the loaded arrays have their own mappings: from then on, freed blocks stay
    # mapped, so each step's large temporaries cost no page faults (train/allocator.py).
    run_dirs = train(config, explicit=explicit_options(argv, command_type(argv)), on_allocated=keep_freed_memory)
    for run_dir in run_dirs if isinstance(run_dirs, list) else [run_dirs]:
        _say(f"run finished: {run_dir}/eval.csv")
    return 0


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate the trained policy of a run directory on its env (seeded with seed + 100)."""

    run_dir: tyro.conf.Positional[str]
    """The run directory written by uld train."""
    episodes: int = 10
    """Episodes to evaluate."""
    video: str | None = None
    """Write the first episode as an mp4 to this path."""


def _eval(argv: list[str]) -> int:
    from uld.train.playback import evaluate_run, summary
    from uld.train.validation import parse_options

    config = parse_options(EvalConfig, argv, "uld eval", description=EvalConfig.__doc__)
    returns = evaluate_run(config.run_dir, config.episodes, config.video)
    print(summary(returns))
    if config.video:
        _say(f"video: {config.video}")
    return 0


def _theory(argv: list[str]) -> int:
    import contextlib
    import io

    from uld.errors import UldError
    from uld.theory.report import main as theory_main

    if "-h" in argv or "--help" in argv:
        return theory_main(argv)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):  # argparse's usage and error: one sentence instead
            return theory_main(argv)
    except SystemExit as exit_:
        if not exit_.code:
            raise
        error = next((line.split("error: ", 1)[1] for line in captured.getvalue().splitlines() if "error: " in line),
                     "the options could not be parsed")
        raise UldError(f"{error}; see uld theory --help") from None


def _suites(argv: list[str]) -> int:
    from uld.analysis.suites import get_suite, suites_table

    if argv and argv[0] not in ("-h", "--help"):
        print("\n".join(get_suite(argv[0]).envs))
    else:
        print(suites_table())
    return 0


def _sweep(argv: list[str]) -> int:
    from uld.analysis.sweep import SweepConfig, run_sweep
    from uld.train.validation import parse_options

    config, train_args = parse_options(SweepConfig, argv, "uld sweep", return_unknown_args=True)
    return run_sweep(config, train_args)


def _report(argv: list[str]) -> int:
    from uld.analysis.report import ReportConfig, write_report
    from uld.train.validation import parse_options

    config = parse_options(ReportConfig, argv, "uld report")
    from pathlib import Path

    from uld.analysis.design_study import design_study_table, is_design_study
    from uld.analysis.report import check_report_options
    from uld.train import files
    from uld.train.lock import locked_file

    check_report_options(config)
    if is_design_study(Path(config.sweep_dir)):  # one sweep per variant: compare each with the default
        table = design_study_table(Path(config.sweep_dir), config.reps, config.seed)
        print(table)
        path = Path(config.sweep_dir) / "design_study.md"
        with locked_file(path, "the report"):
            files.write_atomically(path, ("# Design study\n\n" + table + "\n").encode())
        return 0
    _say(f"report: {write_report(config)}")
    return 0


@dataclass(frozen=True)
class ExportConfig:
    """Write a run's deterministic policy, encoder included, as a model that runs without uld: ONNX (.onnx) or
    TorchScript (.pt)."""

    run_dir: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="RUN_DIR")]]
    """The run directory written by uld train (its newest checkpoint is exported)."""
    out: str = "policy.onnx"
    """The model file: .onnx or .pt."""
    overwrite: bool = False
    """Replace --out when it exists (a run directory's files are never replaced)."""


def _export(argv: list[str]) -> int:
    from uld.train.export import export_policy
    from uld.train.validation import parse_options

    config = parse_options(ExportConfig, argv, "uld export", description=ExportConfig.__doc__)
    _say(f"policy: {export_policy(config.run_dir, config.out, config.overwrite)}")
    return 0


COMMANDS = {"train": _train, "eval": _eval, "theory": _theory, "suites": _suites, "sweep": _sweep,
            "report": _report, "export": _export}


def main(argv: list[str] | None = None) -> int:
    from uld.errors import UldError

    argv = sys.argv[1:] if argv is None else argv
    # A process started in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler; uld stops cleanly on SIGINT wherever it runs.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"uld: unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return command(argv[1:])
    except UldError as error:
        # A path that is not valid UTF-8 (kept by Python as surrogates) is shown escaped, not as an encoding error.
        _say(f"uld: {error}", sys.stderr)
        return getattr(error, "exit_code", 2)
    except KeyboardInterrupt:
        print("uld: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (uld train --help | head)
        sys.stdout = None  # type: ignore[assignment]  # nothing more can be written; exit quietly
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""One run of a sweep as a process of its own: its lock, its `uld train` subprocess and its log."""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

from uld.analysis.sweep.plan import Run
from uld.errors import UldError


class SweepInterrupted(UldError):
    """SIGINT or SIGTERM reached the sweep; the runs under way were stopped at a checkpoint."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class RunCrashed(Exception):
    """A run's process ended with an error that a new attempt may not repeat (Ray retries on it)."""


def lock_run(run_dir: str | Path, block: bool) -> int | None:
    """Lock a run directory for training; the descriptor, or None when another process holds it."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(run_dir) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _prepare_run_process() -> None:
    """In the training process, before `uld train` starts: make SIGINT and SIGTERM reach it.

    A Ray worker blocks these signals, and a blocked mask survives exec, so it is cleared. Then
    (Linux) the process asks for SIGTERM when the process that started it dies: SIGTERM makes
    `uld train` checkpoint and exit, so a sweep or Ray worker that is killed leaves no run
    training on unsupervised.
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def start_run(run: Run, threads: int, lock_fd: int) -> subprocess.Popen:
    """Start `uld train` for a run, its output appended to <run>/train.log; the process inherits the lock."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(Path(run.run_dir) / "train.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "uld.cli", "train", *run.argv, "--threads", str(threads)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                pass_fds=(lock_fd,), preexec_fn=_prepare_run_process)


def last_line(run: Run) -> str:
    try:
        lines = (Path(run.run_dir) / "train.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""

"""One writer per run directory (train/lock.py): a second writer is refused naming the live one, a lock left by a
killed process never blocks, and a lock inherited from a sweep is the process's own.

The other process is a real one that holds the lock; it says so on a pipe, which the test reads (an event,
not a wait on the clock).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from uld.agents.uld.config import reduced_config
from uld.cli import main
from uld.errors import UldError
from uld.train.config import TrainConfig
from uld.train.lock import LOCK_FILE, locked, locked_file
from uld.train.run import train

TINY = reduced_config(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, random_steps=20,
                      target_update_period=5, buffer_capacity=1000)
HOLD = "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); " \
       "print('locked', flush=True); sys.stdin.read()"


def _config(out: Path, **overrides) -> TrainConfig:
    options = dict(env="gym:Pendulum-v1", seed=3, steps=30, eval_every=30, eval_episodes=1, progress=False,
                   out=str(out), uld=TINY)
    options.update(overrides)
    return TrainConfig(**options)


def _holder(lock_path: Path) -> subprocess.Popen:
    """A process that holds the flock of `lock_path` until its stdin closes; returns once it holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "locked\n"
    return process


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("seeds", [None, "0-1"], ids=["one-seed", "two-seeds"])
def test_a_second_writer_is_refused_naming_the_live_process_and_changes_nothing(tmp_path, capsys, seeds):
    out = tmp_path / "run"
    train(_config(out, **(dict(seeds=seeds, seed=0) if seeds else {})))
    before = _snapshot(out)
    live = out / ("seed1" if seeds else ".") / LOCK_FILE
    holder = _holder(live)
    try:
        argv = ["train", "--env", "gym:Pendulum-v1", "--steps", "60", "--eval-every", "30", "--eval-episodes", "1",
                "--no-progress", "--out", str(out), "--small", "--uld.random-steps", "20",
                *(["--seeds", seeds] if seeds else ["--seed", "3"])]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"is being written by process {holder.pid}" in err and err.count("\n") == 1, err
        assert _snapshot(out) == before
    finally:
        holder.stdin.close()
        holder.wait()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out / LOCK_FILE)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_FILE).exists()  # the file stays; its lock went with the process
    assert train(_config(out)) == out


def test_a_lock_this_process_holds_through_an_inherited_descriptor_is_its_own(tmp_path):
    """uld sweep locks a run directory and passes the descriptor to the uld train it starts."""
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with locked(out, "the run directory"):
            pass
        with pytest.raises(BlockingIOError):  # still held by the descriptor: a third opener is refused
            other = os.open(out / LOCK_FILE, os.O_RDWR)
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(other)
    finally:
        os.close(fd)


def test_a_refused_command_leaves_no_folder_behind(tmp_path):
    with pytest.raises(UldError, match="Unknown Gymnasium env id|unknown"):
        train(_config(tmp_path / "new" / "run", env="gym:NoSuchEnv-v0"))
    assert not (tmp_path / "new").exists()


def test_a_file_being_written_is_refused_to_a_second_writer(tmp_path):
    target = tmp_path / "policy.onnx"
    holder = _holder(tmp_path / ".policy.onnx.lock")
    try:
        with pytest.raises(UldError, match=rf"--out .*policy.onnx is being written by process {holder.pid}"):
            with locked_file(target, "--out"):
                pass
    finally:
        holder.stdin.close()
        holder.wait()
    with locked_file(target, "--out"):
        assert (tmp_path / ".policy.onnx.lock").exists()
    assert not (tmp_path / ".policy.onnx.lock").exists()  # made for the write, gone after it

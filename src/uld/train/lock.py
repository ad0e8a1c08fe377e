"""One writer per run directory: `uld train` locks its run directory and `uld report` its report folder, for
as long as they write; `uld export` and `uld eval --video` lock the file they write (`locked_file`).

The lock is `fcntl.flock` on the file `.lock` in the folder (the one `uld sweep` takes for its runs), so
the operating system releases it when the process ends, however it ends: a lock left by a process
killed with SIGKILL never blocks the next command. A second writer is refused in one sentence naming
the process that holds the lock. A process that inherited the lock (a sweep passes its descriptor to
the `uld train` it starts) holds it already and goes on. Readers (`uld eval`, `uld.load`, `uld report`
reading runs) take no lock: checkpoints are written so that a reader never sees half of one
(train/checkpoint.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from uld.errors import UldError
from uld.train import files

LOCK_FILE = ".lock"


def _holder(path: Path) -> int | None:
    """The pid of a process holding a flock on `path` (Linux's /proc/locks), or None when unknown."""
    try:
        inode = path.stat().st_ino
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if "FLOCK" in fields and "->" not in fields:
                    at = fields.index("FLOCK")
                    pid, where = fields[at + 3], fields[at + 4]
                    if int(where.rsplit(":", 1)[1]) == inode:
                        return int(pid)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _inherited(path: Path) -> int | None:
    """A descriptor of this process already open on `path` (inherited from a parent that locked it)."""
    try:
        target = path.stat()
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):
                fd = int(name)
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    return fd
    except OSError:
        pass
    return None


@contextlib.contextmanager
def locked(folder: str | Path, what: str) -> Iterator[None]:
    """Hold the lock of `folder` (created when missing) for the duration, or raise UldError naming its holder.

    `what`: the folder's role in the message ("the run directory"). A folder this call created and that
    holds nothing but the lock file when the lock is released is removed again (a refused command leaves
    nothing behind).
    """
    folder = Path(folder)
    created = [f for f in (folder, *folder.parents) if not f.exists()]  # innermost first
    files.mkdir(folder)
    path = folder / LOCK_FILE
    inherited = _inherited(path) if path.exists() else None
    try:
        fd = inherited if inherited is not None else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise files.write_error(path, error) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if inherited is None:
            os.close(fd)
        holder = _holder(path)
        who = f"process {holder}" if holder is not None else "another process"
        raise UldError(f"{what} {folder} is being written by {who} (uld holds its lock {path}); wait for it to "
                       "finish or stop it, then run this command again") from None
    try:
        yield
    finally:
        if inherited is None:
            os.close(fd)  # releases the lock
            with contextlib.suppress(OSError):  # the folder may be gone (deleted while the command ran)
                if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                    path.unlink()
                    for made in created:  # innermost first; one that is not empty stops it
                        made.rmdir()


@contextlib.contextmanager
def locked_file(path: str | Path, what: str) -> Iterator[None]:
    """Hold a lock on writing the file `path` (the lock file `.<name>.lock` beside it, removed afterwards), or
    raise UldError naming the process that holds it. `what`: the file's role in the message ("--out")."""
    path = Path(path)
    lock_path = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise files.write_error(lock_path, error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _holder(lock_path)
            who = f"process {holder}" if holder is not None else "another process"
            raise UldError(f"{what} {path} is being written by {who} (uld holds its lock {lock_path}); wait for it "
                           "to finish or stop it, then run this command again") from None
        try:  # the holder before us removed the file it locked: lock the one now at the path
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()  # before the lock goes, so that a waiting opener sees another file and retries
        os.close(fd)

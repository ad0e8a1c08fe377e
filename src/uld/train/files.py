"""The one place where uld writes a run's files, and the seam where tests make those writes fail.

Every file a run owns goes through here: checkpoints and their checksums, config.json, eval.csv,
TensorBoard's event file, the W&B id, and also what `uld export` and `uld eval --video` write.
Three promises hold for all of them:

- A failure of the disk or of the library writing the bytes (OSError, torch's zip writer's
  RuntimeError, ffmpeg's broken pipe) becomes one UldError naming the file and the cause, with
  what to do; never a traceback.
- A file is replaced whole or not at all (a temporary file beside it, fsynced, then renamed), and
  an appended row is taken back when its write fails; the previous version of every file is left.
- On failure only what this write made is removed (its own temporary file), nothing else.

The seam: every operation that changes the disk first calls `seam(op, path)`, with op one of
"write" (bytes into a file), "fsync", "rename", "truncate", "unlink" and "mkdir". A test installs a
hook with `fault_hook(hook)` that raises an OSError at the k-th operation (a full or failing disk),
copies the disk as a kill there leaves it, or blocks there until the test kills the process;
tests/test_faults.py runs a real training run through every k.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from uld.errors import UldError

Hook = Callable[[str, Path], None]
_hook: Hook | None = None


@contextmanager
def fault_hook(hook: Hook) -> Iterator[None]:
    """Call `hook(op, path)` before every operation that changes the disk, for the duration (tests only)."""
    global _hook
    previous, _hook = _hook, hook
    try:
        yield
    finally:
        _hook = previous


def seam(op: str, path: Path) -> None:
    """Called before every operation that changes the disk; a writer that hands a path to a library (ffmpeg)
    calls it before the library writes."""
    if _hook is not None:
        _hook(op, path)


def _advice(error: BaseException) -> str:
    """What to do about an OS error, by its errno."""
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "make the folder writable"
    if code == errno.EIO:
        return "check the disk (it reported an I/O error)"
    if code in (errno.ENOTDIR, errno.EISDIR, errno.ENOENT):
        return "restore the folder's layout (a file or folder is missing or of the other kind)"
    return "check the disk and the folder"


def describe_error(error: BaseException) -> str:
    """The cause of an I/O failure in a few words: the OS's text, else the library's first line."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def write_error(path: Path, error: BaseException, then: str = "") -> UldError:
    """The one sentence for a write that failed: the file, the cause, the state left and what to do."""
    state = f"; {then}" if then else ""
    return UldError(f"could not write {path} ({describe_error(error)}){state}; {_advice(error)} and run the same "
                    "command again")


class _Recording(io.RawIOBase):
    """A file object that remembers the OSError its writes raised: torch's zip writer reports a failed
    write as a RuntimeError without the cause, which this recovers."""

    def __init__(self, file: IO[bytes]):
        super().__init__()
        self.file, self.error = file, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def fsync_dir(directory: Path) -> None:
    seam("fsync", directory)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(path.name + ".tmp")


def write_whole(path: Path, data: bytes | None = None, writer: Callable[[Any], object] | None = None) -> None:
    """Write `data` (or what `writer(file)` writes) to a temporary file beside `path` and fsync it; the caller
    renames it into place (with `rename`). Raises OSError, or RuntimeError from a library's writer; the
    temporary file is removed on failure."""
    tmp = temporary(path)
    try:
        seam("write", tmp)
        with open(tmp, "wb") as f:
            if writer is not None:
                recording = _Recording(f)
                try:
                    writer(recording)
                except RuntimeError as error:
                    raise (recording.error or error) from None
            else:
                f.write(data)  # type: ignore[arg-type]
            f.flush()
            seam("fsync", tmp)
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rename(source: Path, target: Path) -> None:
    seam("rename", target)
    os.replace(source, target)


def write_atomically(path: Path, data: bytes | None = None, writer: Callable[[Any], object] | None = None,
                     then: str = "") -> None:
    """Replace `path` with `data` (or what `writer(file)` writes) so that a kill leaves the old file or the new
    one; a failure is one UldError (`then`: what that leaves, for the message) and leaves the old file."""
    path = Path(path)
    try:
        write_whole(path, data, writer)
        try:
            rename(temporary(path), path)
        except BaseException:
            temporary(path).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as error:
        raise write_error(path, error, then) from None


def mkdir(path: Path, parents: bool = True) -> None:
    """Create a folder (and its parents, with `parents`), as a UldError naming it when that fails."""
    path = Path(path)
    if path.is_dir():
        return
    try:
        seam("mkdir", path)
        path.mkdir(parents=parents, exist_ok=True)
    except OSError as error:
        raise write_error(path, error) from None


@contextmanager
def folder_for(path: Path) -> Iterator[None]:
    """Make the folder that `path` goes in (and those above it) for the block. When the block raises (a refusal
    or a failure), the folders this made are removed again while they are empty: the command leaves nothing."""
    folder = Path(path).parent
    made = [f for f in (folder, *folder.parents) if not f.exists()]  # innermost first
    mkdir(folder)
    try:
        yield
    except BaseException:
        for f in made:
            try:
                seam("unlink", f)
                f.rmdir()
            except OSError:  # not empty, or not removable: what is left is said by the error on its way out
                break
        raise


def append(path: Path, data: bytes, sync: bool = True) -> None:
    """Append `data` to `path`, created when missing (fsynced with `sync`); a failed append is taken back,
    leaving the file as it was."""
    path = Path(path)
    try:
        size = path.stat().st_size if path.exists() else 0
        seam("write", path)
        with open(path, "ab", buffering=0) as f:  # unbuffered: closing it writes nothing more
            try:
                f.write(data)
                if sync:
                    seam("fsync", path)
                    os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):  # take back the part that reached the disk
                    os.truncate(path, size)
                raise
    except OSError as error:
        raise write_error(path, error) from None


def truncate(path: Path, size: int) -> None:
    """Cut `path` to `size` bytes and fsync it."""
    path = Path(path)
    try:
        seam("truncate", path)
        with open(path, "r+b") as f:
            f.truncate(size)
            f.flush()
            seam("fsync", path)
            os.fsync(f.fileno())
    except OSError as error:
        raise write_error(path, error) from None


def remove(path: Path) -> bool:
    """Delete a file uld made and no longer needs; a failure is said on stderr and changes nothing else
    (a file left behind costs disk space, not results). True when it is gone."""
    path = Path(path)
    try:
        seam("unlink", path)
        path.unlink(missing_ok=True)
    except OSError as error:
        print(f"uld: could not remove {path} ({describe_error(error)}); it is left in place", file=sys.stderr)
        return False
    return True


RUN_LAYOUT = {"config.json": "file", "eval.csv": "file", "wandb_id": "file", "tb": "folder", "checkpoints": "folder"}
"""What uld train keeps in a run directory, and of which kind each is."""


def check_run_directory(run_dir: Path) -> None:
    """Raise UldError, before anything is written, when the run directory or one of its files is not of the
    kind uld writes (eval.csv replaced by a folder, tb/ by a file), or a link to nowhere."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UldError(f"{run_dir} is a file, not a run directory; move it away or pass another --out")
    for name, kind in RUN_LAYOUT.items():
        path = run_dir / name
        if path.is_symlink() and not path.exists():
            raise UldError(f"{path} is a symlink to {os.readlink(path)}, which does not exist; restore its target, "
                           "or replace the link")
        if path.exists() and path.is_dir() != (kind == "folder"):
            found = "folder" if path.is_dir() else "file"
            raise UldError(f"{path} is a {found}, where uld keeps a {kind}; nothing was changed: move it out of the "
                           "run directory (or restore the one uld wrote) and run the same command again")
        if kind == "folder" and path.is_dir():  # a read-only folder is found now, not after the steps are trained
            try:
                with tempfile.TemporaryFile(dir=path):
                    pass
            except OSError as error:
                raise UldError(f"{path} cannot be written ({describe_error(error)}); nothing was changed: "
                               f"{_advice(error)} and run the same command again") from None

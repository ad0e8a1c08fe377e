"""Checkpoints that survive anything: one atomic unit each, checksummed, loaded without executing code.

A checkpoint is the file `checkpoints/step-<step>.pt` written by torch.save and read back with
`torch.load(weights_only=True)`, which accepts only tensors, numbers, strings and containers: no
pickled objects, so a hostile file cannot run code. Numpy arrays are stored as tensors. Its
checksum is `step-<step>.sha256`; every write goes through train/files.py.

Writing, in this order, so that a kill at any instant leaves the previous state or the new one:
1. the bytes go to `step-N.pt.tmp`, which is fsynced;
2. their checksum is written to `step-N.sha256` (temporary file, fsync, rename);
3. `step-N.pt.tmp` is renamed to `step-N.pt` (the instant the checkpoint exists), the folder fsynced;
4. all but the newest two checkpoints are deleted, each `.pt` before its `.sha256`.
A checkpoint counts only when its `.pt` exists and the `.sha256` matches. Until step 3 there is no
`step-N.pt`, so a kill leaves the run as it was before the save (for the first checkpoint: a run
with none, which the same command starts over); from step 3 on the new checkpoint is complete. A
`.sha256` without its `.pt` is an unfinished checkpoint, not a damaged one: it is ignored, never
reported as corrupted (a reader may see one while a run is writing), and removed by the next save
with the `.tmp` files kills leave. The checksum is written before the `.pt` rather than after it so
that no instant exists where a complete `.pt` lacks its checksum. A run written by an earlier uld,
killed between its `.pt` and `.sha256` renames, left the correct sum in `step-N.sha256.tmp`: that
file is accepted as the checksum.

Reading: a checkpoint that verifies is also checked for the shape of a run's state (the step in its
name, counters that are non-negative integers) before anything of it is used.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uld.errors import UldError
from uld.train import files
from uld.train.files import write_atomically

__all__ = ["Checkpointer", "check_run_state", "to_storable", "write_atomically"]

_NAME = re.compile(r"^step-(\d+)\.pt$")


def to_storable(obj: Any) -> Any:
    """Numpy arrays and scalars become tensors or Python numbers, recursively."""
    if isinstance(obj, np.ndarray):
        if obj.dtype in (np.uint32, np.uint16):
            obj = obj.astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(obj).reshape(obj.shape))  # keeps 0-d arrays 0-d
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {key: to_storable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_storable(value) for value in obj)
    return obj


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Checkpointer:
    """Saves and finds the checkpoints of one run directory.

    `validate(state, step)` raises ValueError for a loaded state that is not what the caller stores
    (check_run_state for a run's checkpoints); such a checkpoint is skipped like a corrupted one.
    """

    def __init__(self, directory: str | Path, validate=None):
        self.directory = Path(directory)
        self.validate = validate

    def check_directory(self) -> None:
        """Raise UldError when the checkpoint directory is a dangling symlink or not a directory."""
        if self.directory.is_symlink() and not self.directory.exists():
            raise UldError(f"{self.directory} is a symlink to {os.readlink(self.directory)}, which does not exist; "
                           "mount or restore its target, or replace the link with a directory")
        if self.directory.exists() and not self.directory.is_dir():
            raise UldError(f"{self.directory} is a file, not a directory of checkpoints; move it away and run again")

    def steps(self) -> list[int]:
        """Steps of every checkpoint file, newest first, whether or not its checksum file exists."""
        if not self.directory.is_dir():
            return []
        return sorted((int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name))), reverse=True)

    def checksum_path(self, step: int) -> Path:
        return self.path(step).with_suffix(".sha256")

    def _checksum(self, step: int) -> str | None:
        """The recorded checksum of `step` (from an earlier uld's leftover .sha256.tmp when that is all there is)."""
        for path in (self.checksum_path(step), files.temporary(self.checksum_path(step))):
            try:
                return path.read_text().strip()
            except FileNotFoundError:
                continue
        return None

    def complete_steps(self) -> list[int]:
        """Steps of the checkpoints that have their checksum file, newest first (not yet verified)."""
        return [step for step in self.steps() if self._checksum(step) is not None]

    def holds_files(self) -> bool:
        """True when the directory holds a checkpoint file, whether or not it verifies (a .sha256 alone is an
        unfinished checkpoint)."""
        return bool(self.steps())

    def verifies(self, step: int) -> bool:
        """Whether the checkpoint of `step` and its checksum exist and agree (the file is not loaded)."""
        try:
            recorded = self._checksum(step)
            return recorded is not None and recorded == _sha256(self.path(step))
        except FileNotFoundError:  # removed meanwhile by the run that writes it
            return False

    def verified_step(self) -> int:
        """The step of the newest checkpoint whose checksum verifies, without loading it (0 when none)."""
        return next((step for step in self.complete_steps() if self.verifies(step)), 0)

    def newest_step(self) -> int:
        """The step of the newest .pt file (for messages)."""
        return self.steps()[0]

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:010d}.pt"

    def save(self, state: dict, step: int) -> Path:
        """Write the checkpoint for `step` as one atomic unit (module docstring), then drop all but it and the one
        before it. A failure is one UldError saying which checkpoint the run keeps."""
        self.check_directory()
        path, checksum = self.path(step), self.checksum_path(step)
        earlier = [s for s in self.complete_steps() if s < step]
        kept = (f"the checkpoint of step {earlier[0]} is left as it was" if earlier else
                "the run has no checkpoint yet, so the same command starts it over")
        files.mkdir(self.directory, parents=False)  # a run directory deleted mid-run is said, not made again
        for leftover in sorted(self.directory.iterdir()):  # from kills mid-save
            if not leftover.name.startswith("step-"):
                continue
            if leftover.name.endswith(".sha256.tmp") and (m := _NAME.match(leftover.name[:-11] + ".pt")) \
                    and not self.checksum_path(int(m.group(1))).exists() and self.verifies(int(m.group(1))):
                try:  # an earlier uld's complete checkpoint
                    files.rename(leftover, self.checksum_path(int(m.group(1))))
                except OSError as error:
                    raise files.write_error(self.checksum_path(int(m.group(1))), error, kept) from None
            elif leftover.suffix == ".tmp" or (leftover.suffix == ".sha256" and not leftover.with_suffix(".pt").exists()):
                files.remove(leftover)  # never part of a complete checkpoint
        if path.exists():  # a rewound run's newer checkpoint of this step: it is redone
            files.remove(path)
            files.remove(checksum)
        try:
            files.write_whole(path, writer=lambda f: torch.save(to_storable(state), f))
        except (OSError, RuntimeError) as error:
            raise files.write_error(path, error, kept) from None
        try:
            files.write_atomically(checksum, (_sha256(files.temporary(path)) + "\n").encode(), then=kept)
            try:
                files.rename(files.temporary(path), path)
            except OSError as error:
                raise files.write_error(path, error, kept) from None
            try:
                files.fsync_dir(self.directory)
            except OSError as error:
                raise files.write_error(path, error, f"the checkpoint of step {step} is complete but the disk may "
                                                    "not hold it yet") from None
        finally:
            files.temporary(path).unlink(missing_ok=True)
        # Kept: this one and the complete one before it; files of steps after this one (a rewound run's) are
        # left for it to overwrite. Each .pt goes before its .sha256, so no reader sees a .pt without one.
        keep = [s for s in self.complete_steps() if s <= step][:2]
        for old in self.steps():
            if old < step and old not in keep and files.remove(self.path(old)):
                files.remove(self.checksum_path(old))
        return path

    def load_latest(self) -> tuple[dict, int] | None:
        """The newest checkpoint whose checksum verifies, and its step; None when there is none.

        A checkpoint that is truncated, corrupted or not a run's state is reported on stderr and skipped; one
        removed while this looked (by the run that writes it) is skipped silently.
        """
        self.check_directory()
        for step in self.steps():
            path = self.path(step)
            if not self.verifies(step):
                if path.exists():
                    print(f"uld: checkpoint {path} is incomplete or corrupted (checksum mismatch); "
                          "falling back to an earlier one", file=sys.stderr)
                continue
            try:
                state = torch.load(path, weights_only=True, map_location="cpu")
                if self.validate is not None:
                    self.validate(state, step)
                return state, step
            except FileNotFoundError:
                continue
            except Exception as error:  # noqa: BLE001 - any unreadable file is treated alike
                print(f"uld: checkpoint {path} cannot be read ({error}); falling back to an earlier one",
                      file=sys.stderr)
        return None

    def adopt(self, path: str | Path) -> None:
        """Write the checksum of a checkpoint of this directory passed to --trust-checkpoint: from then on it
        verifies, and the same command needs the option no more. A file elsewhere is left alone."""
        path = Path(path)
        match = _NAME.match(path.name)
        if match and path.resolve().parent == self.directory.resolve():
            step = int(match.group(1))
            files.write_atomically(self.checksum_path(step), (_sha256(path) + "\n").encode())

    def load_trusted(self, path: str | Path) -> tuple[dict, int]:
        """The checkpoint at `path` whatever its checksum file says (weights-only loading all the same).

        For `uld train --trust-checkpoint`: the way to continue a run whose checksums were lost.
        """
        path = Path(path)
        if not path.is_file():
            raise UldError(f"--trust-checkpoint {path} is not a file; pass one of the run's checkpoints/step-*.pt")
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
            match = _NAME.match(path.name)
            if self.validate is not None:
                self.validate(state, int(match.group(1)) if match else None)
            step = int(state["trainer"]["step"])
        except Exception as error:  # noqa: BLE001 - any unreadable file is treated alike
            raise UldError(f"--trust-checkpoint {path} cannot be read as a uld checkpoint ({error}); "
                           "pass another checkpoint, or --restart to start the run over") from error
        return state, step


RUN_STATE_KEYS = ("trainer", "agent", "buffer", "metrics", "rng", "env", "eval_env", "logger")


def check_run_state(state: Any, step: int | None) -> None:
    """Raise ValueError unless `state` has the shape of a trainer's state_dict at `step`.

    The values that steer files and loops are checked here: the counters and eval.csv's offset
    must be non-negative integers, the step the one in the file name. The agent's and the buffer's
    tensors are checked by their own load_state_dict.
    """
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a run's state")
    missing = [key for key in RUN_STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")
    trainer = state["trainer"]
    for name in ("step", "episode", "episode_length"):
        value = trainer.get(name) if isinstance(trainer, dict) else None
        if type(value) is not int or value < 0:
            raise ValueError(f"its trainer.{name} is {value!r}, not a non-negative integer")
    for name in ("episode_return", "wall_seconds"):
        value = trainer.get(name)
        if not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"its trainer.{name} is {value!r}, not a number")
    if step is not None and trainer["step"] != step:
        raise ValueError(f"it holds step {trainer['step']} but is named for step {step}")
    offset = state["logger"].get("eval_csv_bytes") if isinstance(state["logger"], dict) else None
    if type(offset) is not int or offset < 0:
        raise ValueError(f"its eval.csv offset is {offset!r}, not a non-negative integer")

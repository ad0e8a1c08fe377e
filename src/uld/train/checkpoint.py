"""Checkpoints that survive anything: atomic writes, checksums, and loading that executes no code.

A checkpoint is one file `checkpoints/step-<step>.pt` written by torch.save and read back with
`torch.load(weights_only=True)`, which accepts only tensors, numbers, strings and containers: no
pickled objects, so a hostile file cannot run code. Numpy arrays are stored as tensors.

Writing: the bytes go to a temporary file, which is fsynced and renamed into place, and then a
`.sha256` file with the checksum is written the same way. A checkpoint counts only when both exist
and the checksum matches; the previous one is deleted only after the new one is complete, so a
kill at any moment (also mid-write) leaves the last complete checkpoint intact. A `.pt` without its
`.sha256` (a kill between the two renames) is not counted among the two kept, and the `.tmp` files
that kills leave behind are removed at the next save.

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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes | None = None, writer=None) -> None:
    """Write `data` (or what `writer(file)` writes) to `path` so that a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if writer is not None:
                writer(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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

    def _steps(self) -> list[int]:
        """Steps of every checkpoint file, newest first, whether or not its checksum file exists."""
        if not self.directory.is_dir():
            return []
        return sorted((int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name))), reverse=True)

    def complete_steps(self) -> list[int]:
        """Steps of the checkpoints that have their checksum file, newest first (not yet verified)."""
        return [step for step in self._steps() if self.path(step).with_suffix(".sha256").exists()]

    def holds_files(self) -> bool:
        """True when the directory holds a checkpoint or a checksum file, whether or not they verify."""
        return self.directory.is_dir() and any(_NAME.match(p.name) or (p.name.startswith("step-") and p.suffix == ".sha256")
                                               for p in self.directory.iterdir())

    def verifies(self, step: int) -> bool:
        """Whether the checkpoint of `step` and its checksum file exist and agree (the file is not loaded)."""
        path = self.path(step)
        checksum = path.with_suffix(".sha256")
        return path.is_file() and checksum.is_file() and checksum.read_text().strip() == _sha256(path)

    def verified_step(self) -> int:
        """The step of the newest checkpoint whose checksum verifies, without loading it (0 when none)."""
        return next((step for step in self.complete_steps() if self.verifies(step)), 0)

    def newest_step(self) -> int:
        """The step of the newest .pt file, else of the newest .sha256 file (for messages)."""
        steps = self._steps() or sorted((int(p.stem[5:]) for p in self.directory.glob("step-*.sha256")
                                         if p.stem[5:].isdigit()), reverse=True)
        return steps[0]

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:010d}.pt"

    def save(self, state: dict, step: int) -> Path:
        """Write the checkpoint for `step` atomically, then drop all but it and the one before it."""
        self.check_directory()
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("step-*.tmp"):  # from kills mid-write; never a complete file
            leftover.unlink(missing_ok=True)
        path = self.path(step)
        try:
            write_atomically(path, writer=lambda f: torch.save(to_storable(state), f))
            write_atomically(path.with_suffix(".sha256"), (_sha256(path) + "\n").encode())
        except OSError as error:
            path.unlink(missing_ok=True)
            raise UldError(f"could not write the checkpoint for step {step} ({error.strerror or error}); "
                           f"the previous checkpoint in {self.directory} is intact: free disk space and resume") from error
        # Kept: this one and the complete one before it. A .pt whose checksum was never written is
        # not counted; files of steps after this one (a rewound run's) are left for it to overwrite.
        keep = [s for s in self.complete_steps() if s <= step][:2]
        for old in self._steps():
            if old < step and old not in keep:
                self.path(old).unlink(missing_ok=True)
                self.path(old).with_suffix(".sha256").unlink(missing_ok=True)
        return path

    def load_latest(self) -> tuple[dict, int] | None:
        """The newest checkpoint whose checksum verifies, and its step; None when there is none.

        A checkpoint that is truncated, corrupted or not a run's state is reported on stderr and skipped.
        """
        self.check_directory()
        for step in self._steps():
            path = self.path(step)
            checksum = path.with_suffix(".sha256")
            if not checksum.exists() or checksum.read_text().strip() != _sha256(path):
                print(f"uld: checkpoint {path} is incomplete or corrupted (checksum mismatch); "
                      "falling back to an earlier one", file=sys.stderr)
                continue
            try:
                state = torch.load(path, weights_only=True, map_location="cpu")
                if self.validate is not None:
                    self.validate(state, step)
                return state, step
            except Exception as error:  # noqa: BLE001 - any unreadable file is treated alike
                print(f"uld: checkpoint {path} cannot be read ({error}); falling back to an earlier one",
                      file=sys.stderr)
        return None

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

"""Checkpoints that survive anything: atomic writes, checksums, and loading that executes no code.

A checkpoint is one file `checkpoints/step-<step>.pt` written by torch.save and read back with
`torch.load(weights_only=True)`, which accepts only tensors, numbers, strings and containers: no
pickled objects, so a hostile file cannot run code. Numpy arrays are stored as tensors.

Writing: the bytes go to a temporary file, which is fsynced and renamed into place, and then a
`.sha256` file with the checksum is written the same way. A checkpoint counts only when both exist
and the checksum matches; the previous one is deleted only after the new one is complete, so a
kill at any moment (also mid-write) leaves the last complete checkpoint intact.
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


def _write_atomically(path: Path, data: bytes | None = None, writer=None) -> None:
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
    """Saves and finds the checkpoints of one run directory."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def _steps(self) -> list[int]:
        if not self.directory.exists():
            return []
        return sorted((int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name))), reverse=True)

    def path(self, step: int) -> Path:
        return self.directory / f"step-{step:010d}.pt"

    def save(self, state: dict, step: int) -> Path:
        """Write the checkpoint for `step` atomically, then drop all but it and the one before it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(step)
        try:
            _write_atomically(path, writer=lambda f: torch.save(to_storable(state), f))
            _write_atomically(path.with_suffix(".sha256"), (_sha256(path) + "\n").encode())
        except OSError as error:
            path.unlink(missing_ok=True)
            raise UldError(f"could not write the checkpoint for step {step} ({error.strerror or error}); "
                           f"the previous checkpoint in {self.directory} is intact: free disk space and resume") from error
        for old in self._steps()[2:]:
            if old != step:
                self.path(old).unlink(missing_ok=True)
                self.path(old).with_suffix(".sha256").unlink(missing_ok=True)
        return path

    def load_latest(self) -> tuple[dict, int] | None:
        """The newest checkpoint whose checksum verifies, and its step; None when there is none.

        A checkpoint that is truncated or corrupted is reported on stderr and skipped.
        """
        for step in self._steps():
            path = self.path(step)
            checksum = path.with_suffix(".sha256")
            if not checksum.exists() or checksum.read_text().strip() != _sha256(path):
                print(f"uld: checkpoint {path} is incomplete or corrupted (checksum mismatch); "
                      "falling back to an earlier one", file=sys.stderr)
                continue
            try:
                return torch.load(path, weights_only=True, map_location="cpu"), step
            except Exception as error:  # noqa: BLE001 - any unreadable file is treated alike
                print(f"uld: checkpoint {path} cannot be read ({error}); falling back to an earlier one",
                      file=sys.stderr)
        return None

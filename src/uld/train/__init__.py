"""Training runs: the loop, evaluation, checkpoints, logging and the run's configuration.

This package is also the function ``uld.train(config)``: a package and a function cannot share the
name ``uld.train`` (importing ``uld.train.run`` sets the attribute to the package), so the package is
callable and calls ``uld.train.run.train``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uld.train.config import TrainConfig


class _CallablePackage(types.ModuleType):
    def __call__(self, config: TrainConfig) -> Path:
        """Train as configured and return the run directory (uld.train.run.train).

        A run directory that already holds a checkpoint of the same configuration is resumed exactly.
        ``config.env`` is an env name or an env factory. Unlike `uld train`, this changes no
        process-wide setting (torch's thread count, the allocator): that is the caller's to choose.
        """
        from uld.train.run import train

        return train(config)


sys.modules[__name__].__class__ = _CallablePackage

"""`uld train --wandb`: the scalars the Logger writes to TensorBoard, and the run's config, also go to
Weights & Biases. wandb is imported only here, and only when the flag is given.

Several seeds trained in one process (``uld train --seeds``) log to one W&B run per seed, each kept in
its seed's directory. A run directory keeps its W&B run id in ``wandb_id``, so a resumed run (the same command again, or
``--resume DIR``) continues the same W&B run. Every value is logged against the agent step
(``agent_step``), not W&B's own counter, which must only increase: a run resumed from a checkpoint
re-logs the steps after it, and W&B keeps those points rather than refusing them.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from uld.errors import UldError, first_detail
from uld.train import files

ID_FILE = "wandb_id"
"""The file in the run directory that holds the run's W&B id."""
STEP_METRIC = "agent_step"


class WandbSink:
    """Forwards the Logger's scalars to one W&B run, resumed when the run directory already has one.

    Starting it writes nothing of the run's own (a W&B that cannot start is refused with the run directory as
    it was); save_id() then records the W&B run's id in the run directory.
    """

    def __init__(self, run_dir: str | Path, project: str, config: dict, name: str, concurrent: bool = False,
                 new_run: bool = False):
        """new_run: start a new W&B run even where the run directory holds an id (uld train --restart moves
        that id aside with the earlier run's files)."""
        try:
            import wandb
        except ImportError as error:
            raise UldError("--wandb needs the wandb package: pip install 'uld[wandb]'") from error
        run_dir = Path(run_dir)
        self.id_path = run_dir / ID_FILE
        self.run_id = (self.id_path.read_text().strip() if self.id_path.exists() and not new_run
                       else secrets.token_hex(6))
        # W&B's files go beside the run's own, unless WANDB_DIR says where.
        directory = os.environ.get("WANDB_DIR") or str(run_dir)
        try:
            # concurrent: several seeds in one process, one W&B run each, open at the same time.
            self.run = wandb.init(project=project, id=self.run_id, resume="allow", config=config, name=name,
                                  dir=directory, settings=wandb.Settings(console="off", quiet=True),
                                  reinit="create_new" if concurrent else "default")
        except wandb.Error as error:
            raise UldError(f"W&B could not start ({first_detail(error)}); run `wandb login`, or set "
                           "WANDB_MODE=offline to keep the W&B run on this machine") from error
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC)
        self.finished = False

    def save_id(self) -> None:
        """Record the W&B run's id in the run directory, so that a resumed run continues the same W&B run."""
        files.write_atomically(self.id_path, (self.run_id + "\n").encode())

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log({**values, STEP_METRIC: step})

    def close(self) -> None:
        """Finish the W&B run, once (uld train closes a sink that no Logger took over too)."""
        if not self.finished:
            self.finished = True
            self.run.finish()

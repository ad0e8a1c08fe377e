"""What a run writes while it trains: eval.csv, TensorBoard scalars and a progress bar.

Both files are written through train/files.py, in this thread: eval.csv a fsynced row per evaluation,
TensorBoard's event file in batches at each evaluation, checkpoint and at the end (TensorBoard's own
writer writes from a thread of its own, where a full disk surfaces late as a traceback and the
number of writes depends on timing).
"""

from __future__ import annotations

import csv
import io
import math
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from uld.errors import UldError
from uld.train import files

EVAL_COLUMNS = ("step", "mean_return", "returns", "wall_seconds")
HEADER = (",".join(EVAL_COLUMNS) + "\r\n").encode()


def read_eval_csv(path: str | Path) -> list[dict]:
    """Rows of an eval.csv as dicts: step (int), mean_return (float), returns (list), wall_seconds.

    Raises UldError naming the file and line of the first row that is not of that form.
    """
    rows = []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or tuple(reader.fieldnames) != EVAL_COLUMNS:
                raise ValueError(f"its header is {reader.fieldnames}, not {','.join(EVAL_COLUMNS)}")
            for row in reader:
                try:
                    rows.append({
                        "step": int(row["step"]),
                        "mean_return": float(row["mean_return"]),
                        "returns": [float(x) for x in row["returns"].split(";") if x],
                        "wall_seconds": float(row["wall_seconds"]),
                    })
                except (TypeError, ValueError, AttributeError) as error:
                    raise ValueError(f"line {reader.line_num} is not step,mean_return,returns,wall_seconds "
                                     f"({error})") from None
    except (ValueError, UnicodeDecodeError, csv.Error) as error:
        raise UldError(f"{path} is not an eval.csv that uld train writes: {error}; restore it, or move the "
                       "run out of the directory given") from None
    return rows


def check_eval_offset(path: Path, offset: object, data: bytes | None = None) -> None:
    """Raise UldError unless a checkpoint's eval.csv length `offset` can be resumed from: past the header, and
    at a row's end or past the file's end. data: the file's bytes (default: read; a missing file is the header
    the Logger writes). Writes nothing: uld train checks before it writes a resumed run's files."""
    if data is None:
        data = path.read_bytes() if path.exists() else HEADER
    header = len(data.split(b"\n", 1)[0]) + 1
    if type(offset) is not int or offset < header:
        raise UldError(f"the checkpoint's eval.csv offset {offset!r} is not past eval.csv's header; pass "
                       "another checkpoint with --trust-checkpoint, or --restart to start the run over")
    if offset <= len(data) and data[offset - 1:offset] != b"\n":
        raise UldError(f"the checkpoint's eval.csv offset {offset} falls inside a row of {path}; "
                       "pass another checkpoint with --trust-checkpoint, or --restart to start the run over")


class EventFile:
    """A TensorBoard event file written through train/files.py: records are kept in memory and appended at
    flush(). `purge_step`: TensorBoard drops the events of this step and later written before (a resumed run
    writes them again)."""

    def __init__(self, directory: Path, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        files.mkdir(directory)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0"
        self.path, self.pending = directory / name, io.BytesIO()
        self._event = Event
        self._record(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            self._record(Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        self.flush()  # a new file: a torn first record is what TensorBoard reads as an empty file

    def _record(self, event) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        RecordWriter(self.pending).write(event.SerializeToString())

    def _take(self) -> bytes:
        data, self.pending = self.pending.getvalue(), io.BytesIO()
        return data

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from torch.utils.tensorboard.summary import scalar

        self._record(self._event(wall_time=time.time(), step=int(step), summary=scalar(tag, float(value))))

    def flush(self) -> None:
        if self.pending.tell():
            files.append(self.path, self._take(), sync=False)


class Logger:
    """Appends evaluations to <run>/eval.csv and scalars to TensorBoard under <run>/tb, and forwards the
    scalars to its sinks (objects with log(step, values) and close(), such as train/wandb_sink.py's)."""

    def __init__(self, run_dir: str | Path, total_steps: int, start_step: int = 0, progress: bool = True,
                 sinks: Sequence = ()):
        self.run_dir = Path(run_dir)
        self.eval_path = self.run_dir / "eval.csv"
        if not self.eval_path.exists():
            files.write_atomically(self.eval_path, HEADER)
        # Events after the checkpoint being resumed from are dropped (they will be written again).
        self.writer = EventFile(self.run_dir / "tb", purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not progress, unit="step",
                        dynamic_ncols=True, mininterval=1.0)
        self.last_episode_return = math.nan
        self.last_eval = math.nan
        self.sinks = list(sinks)

    def step(self, n: int = 1) -> None:
        """Advance the progress bar by n agent steps."""
        self.bar.update(n)

    def episode(self, step: int, episode_return: float, length: int) -> None:
        self.last_episode_return = episode_return
        self.writer.add_scalar("train/episode_return", episode_return, step)
        self.writer.add_scalar("train/episode_length", length, step)
        self._forward(step, {"train/episode_return": episode_return, "train/episode_length": length})
        self._postfix()

    def evaluation(self, step: int, returns: list[float], wall_seconds: float) -> None:
        mean = sum(returns) / len(returns)
        self.last_eval = mean
        row = io.StringIO()
        csv.writer(row).writerow([step, repr(mean), ";".join(repr(r) for r in returns), f"{wall_seconds:.1f}"])
        # Fsynced before a checkpoint records the file's length: a crash cannot leave it shorter.
        files.append(self.eval_path, row.getvalue().encode())
        self.writer.add_scalar("eval/mean_return", mean, step)
        self.writer.add_scalar("eval/wall_seconds", wall_seconds, step)
        self.writer.flush()
        self._forward(step, {"eval/mean_return": mean, "eval/wall_seconds": wall_seconds})
        self._postfix()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self._forward(step, values)

    def _forward(self, step: int, values: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log(step, values)

    def _postfix(self) -> None:
        self.bar.set_postfix(episode_return=f"{self.last_episode_return:.1f}", eval=f"{self.last_eval:.1f}",
                             refresh=False)

    def state_dict(self) -> dict:
        """Where the logs stand: eval.csv's length, so a resume drops rows written after the checkpoint.
        TensorBoard's events so far are written first."""
        self.writer.flush()
        return {"eval_csv_bytes": self.eval_path.stat().st_size}

    def load_state_dict(self, state: dict) -> None:
        """Drop the rows written after the checkpoint; the offset is checked to fall at a row's end.

        eval.csv is never grown: when it is shorter than the checkpoint recorded (it lost rows, as a
        file written before uld fsynced it could), the rows it has are kept, up to its last whole row.
        """
        offset = state["eval_csv_bytes"]
        data = self.eval_path.read_bytes()
        check_eval_offset(self.eval_path, offset, data)
        if offset > len(data):
            kept = data.rfind(b"\n") + 1
            print(f"uld: {self.eval_path} holds {len(data)} bytes, fewer than the {offset} the checkpoint recorded; "
                  "the rows it lost are not written again", file=sys.stderr)
            offset = kept
        if offset != len(data):
            files.truncate(self.eval_path, offset)
        rows = read_eval_csv(self.eval_path)
        self.last_eval = rows[-1]["mean_return"] if rows else math.nan

    def close(self) -> None:
        """Write what is pending and close the sinks. While an error is on its way out (a failed write among
        them), a failure here is left unsaid: the first error is the one that explains."""
        self.bar.close()
        failing = sys.exc_info()[0] is not None
        try:
            self.writer.flush()
        except UldError:
            if not failing:
                raise
        finally:
            for sink in self.sinks:
                sink.close()

"""Fault injection through the one writing place (train/files.py): every write of a real run fails in turn.

A short real run (ULD on the README's example of a user's Gymnasium env, tests/example_env.py, whose
50-step episodes keep each evaluation short: 60 steps with checkpoints at 20, 40 and 60, one of them after
an episode's end, and evaluations at 0, 40 and 60; and two seeds in one process for 40 steps, checkpoints at
20 and 40) goes once straight, through the seam, which records every operation that changes the disk. Then, for every k:

- the k-th operation fails with ENOSPC, and again with EIO: the run stops with one sentence naming the
  file (or, for a file it only meant to delete, says so and goes on); what it had written before the
  fault is still there; the same command without the fault finishes the run with the straight run's
  results (eval.csv's returns, the final checkpoint's agent tensors);
- the process is killed before the k-th operation: the disk as the straight run left it at that instant
  (copied there; processes keep nothing of their files in memory, as the seam writes every byte it is
  given at once) is resumed by the same command with the straight run's results, and no checkpoint is
  ever called corrupted.

A real SIGKILL inside a checkpoint write is in test_kill_inside_a_checkpoint_write (tests/test_resume.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from uld.agents.uld.config import reduced_config
from uld.errors import UldError
from uld.train import files
from uld.train.checkpoint import Checkpointer, check_run_state
from uld.train.config import TrainConfig
from uld.train.logger import read_eval_csv
from uld.train.run import train

TINY = dict(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, target_update_period=5,
            buffer_capacity=1000)
SEEDS = {"one-seed": ["."], "two-seeds": ["seed0", "seed1"]}
"""The run directories of each run, relative to its --out."""


def _config(out: Path, mode: str) -> TrainConfig:
    # Two seeds: two checkpoints (every write of theirs is twice as many operations, each a run to repeat).
    # Five updates before the last checkpoint: its optimizer states and priorities are among what must come back.
    seeds = (dict(seeds="0-1", steps=40, uld=reduced_config(random_steps=35, **TINY)) if mode == "two-seeds" else
             dict(seed=3, steps=60, uld=reduced_config(random_steps=55, **TINY)))
    return TrainConfig(env="gym:example_env:Corridor-v0", eval_every=40, eval_episodes=1, checkpoint_every=20,
                       log_every=10, progress=False, out=str(out), **seeds)


def _name(op: str, path: Path, root: Path) -> str:
    """An operation as a comparable string: TensorBoard's file is named for the time and the process."""
    return f"{op} " + re.sub(r"events\.out\.tfevents\.[^/]*?(\.tmp)?$", r"events\1", str(path.relative_to(root)))


def _results(out: Path, mode: str) -> list:
    """Per run directory: eval.csv's (step, returns), and the newest checkpoint's agent tensors."""
    results = []
    for seed in SEEDS[mode]:
        run = out / seed
        state, step = Checkpointer(run / "checkpoints").load_latest()
        tensors = {f"{name}/{key}": tensor for name in ("encoder", "policy", "value")
                   for key, tensor in state["agent"][name].items()}
        results.append(([(row["step"], row["returns"]) for row in read_eval_csv(run / "eval.csv")], step, tensors))
    return results


def _assert_same(results: list, straight: list) -> None:
    for (rows, step, tensors), (straight_rows, straight_step, straight_tensors) in zip(results, straight, strict=True):
        assert rows == straight_rows and step == straight_step
        assert tensors.keys() == straight_tensors.keys()
        assert all(torch.equal(tensors[key], straight_tensors[key]) for key in tensors)


def _kept(out: Path, mode: str) -> list[dict]:
    """What a run directory holds that a fault must not take away: config.json, eval.csv's bytes and the
    checkpoints that verify (by checksum)."""
    kept = []
    for seed in SEEDS[mode]:
        run = out / seed
        checkpoints = Checkpointer(run / "checkpoints")
        verifying = {step: hashlib.sha256(checkpoints.path(step).read_bytes()).hexdigest()
                     for step in checkpoints.complete_steps() if checkpoints.verifies(step)}
        kept.append({"config": (run / "config.json").read_bytes() if (run / "config.json").is_file() else None,
                     "eval": (run / "eval.csv").read_bytes() if (run / "eval.csv").is_file() else b"",
                     "checkpoints": verifying})
    return kept


def _assert_nothing_lost(before: list[dict], after: list[dict]) -> None:
    for old, new in zip(before, after, strict=True):
        assert old["config"] is None or new["config"] == old["config"]
        assert new["eval"].startswith(old["eval"])
        if old["checkpoints"]:  # the newest (older ones are the run's to delete, two being kept)
            step = max(old["checkpoints"])
            assert new["checkpoints"].get(step) == old["checkpoints"][step]


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class Straight:
    """A run that went straight through the seam: its operations, its results, and the distinct states of
    its disk before each operation (copies, by the operation's index)."""

    operations: list[str] = field(default_factory=list)
    results: list = field(default_factory=list)
    states: dict[int, Path] = field(default_factory=dict)


@pytest.fixture(scope="module", params=list(SEEDS))
def straight(request, tmp_path_factory) -> tuple[str, Straight]:
    mode = request.param
    root = tmp_path_factory.mktemp(mode)
    out, record, seen = root / "run", Straight(), set()

    def hook(op: str, path: Path) -> None:
        # A reader (uld eval, uld.load, uld report) looking at any instant finds no checkpoint to call corrupted.
        for seed in SEEDS[mode]:
            with contextlib.redirect_stderr(io.StringIO()) as said:
                Checkpointer(out / seed / "checkpoints", validate=check_run_state).load_latest()
            assert said.getvalue() == "", (record.operations[-1:], said.getvalue())
        if out.exists():
            digest = _tree_digest(out)
            if digest not in seen:  # the disk changes only through the seam: a kill here leaves this
                seen.add(digest)
                record.states[len(record.operations)] = shutil.copytree(
                    out, root / "states" / str(len(record.operations)), symlinks=True)
        record.operations.append(_name(op, path, out))

    with files.fault_hook(hook):
        train(_config(out, mode))
    record.results = _results(out, mode)
    return mode, record


FAULTS = {"one-seed": [errno.ENOSPC, errno.EIO], "two-seeds": [errno.EIO, errno.ENOSPC]}
"""The errno of the fault at k: the list's entries in turn (one seed: ENOSPC at even k, EIO at odd k; two seeds
the other way round), so that both kinds of failure meet writes, renames, fsyncs and mkdirs of both runs in one
pass each, to keep the suite's time; the handling does not depend on the errno, and the message names it."""


def test_every_write_failing_in_turn_loses_nothing_and_the_same_command_finishes_the_run(straight, tmp_path, capsys):
    """From the k-th operation on, every operation fails (a disk that is full, or failing, stays so until the
    fault is removed): the first failure is the one said, whatever the clean-up meets after it."""
    mode, record = straight
    assert len(record.operations) >= 40  # the run, its checkpoints among them, went through the seam
    for k, expected in enumerate(record.operations):
        out, code = tmp_path / str(k), FAULTS[mode][k % 2]
        seen: list[str] = []
        before: list[list[dict]] = []
        failed: list[Path] = []

        def hook(op: str, path: Path, out=out, seen=seen, before=before, failed=failed, k=k, code=code) -> None:
            seen.append(_name(op, path, out))
            if len(seen) <= k and op != "fsync":  # an fsync belongs to the write before it: the state before that
                before[:] = [_kept(out, mode) if out.exists() else []]
            if len(seen) > k:
                failed.append(Path(str(path).removesuffix(".tmp")))
                raise OSError(code, os.strerror(code), str(path))

        try:
            with files.fault_hook(hook):
                train(_config(out, mode))
        except UldError as error:
            message = str(error)
            assert "\n" not in message and f"({os.strerror(code)})" in message, (k, message)
            # The file named is the first that failed, or lies in the folder that failed (its fsync or mkdir).
            named = Path(message.split("could not write ", 1)[1].split(" (", 1)[0])
            assert failed[0] == named or failed[0] in named.parents, (k, expected, message)
            kept = re.search(r"the checkpoint of step (\d+) is (left as it was|complete)", message)
            if kept:  # a checkpoint it names exists and verifies
                assert any(Checkpointer(out / seed / "checkpoints").verifies(int(kept.group(1)))
                           for seed in SEEDS[mode]), message
            if "no checkpoint yet" in message:  # of the run directory it names
                run = next(out / seed for seed in SEEDS[mode][::-1] if (out / seed) in named.parents)
                assert not Checkpointer(run / "checkpoints").verified_step(), message
        else:  # only files it meant to delete can fail without stopping the run
            assert all(op.startswith("unlink ") for op in seen[k:]), (k, seen[k:])
            assert "could not remove" in capsys.readouterr().err
        assert seen[k] == expected, (k, seen[k], expected)  # the k-th operation of the straight run failed first
        if before and before[0]:
            _assert_nothing_lost(before[0], _kept(out, mode))
        train(_config(out, mode))
        _assert_same(_results(out, mode), record.results)
        assert "corrupted" not in capsys.readouterr().err, k
        shutil.rmtree(out)


def test_a_kill_before_any_operation_leaves_a_run_the_same_command_finishes(straight, tmp_path, capsys):
    mode, record = straight
    renames = [k for k, op in enumerate(record.operations) if op.startswith("rename ")]
    assert len(renames) >= 6 and len(record.states) >= 20  # every state a kill can leave, not the renames only
    for k, state in record.states.items():
        out = shutil.copytree(state, tmp_path / str(k), symlinks=True)
        train(_config(out, mode))
        _assert_same(_results(out, mode), record.results)
        err = capsys.readouterr().err
        assert "corrupted" not in err and "cannot be read" not in err, (k, record.operations[k], err)
        shutil.rmtree(out)


def test_a_checkpoint_cut_between_its_checksum_and_its_rename_by_an_earlier_uld_still_counts(tmp_path):
    """An earlier uld renamed the .pt first: killed before the checksum's rename, its correct sum is in
    step-N.sha256.tmp. That checkpoint counts, and the next save puts the run in order."""
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    checkpoints.save({"x": torch.ones(2)}, 1)
    checksum = checkpoints.checksum_path(1)
    checksum.rename(files.temporary(checksum))
    state, step = checkpoints.load_latest()
    assert step == 1 and torch.equal(state["x"], torch.ones(2))
    checkpoints.save({"x": torch.zeros(2)}, 2)
    assert sorted(p.name for p in checkpoints.directory.iterdir()) == [
        "step-0000000001.pt", "step-0000000001.sha256", "step-0000000002.pt", "step-0000000002.sha256"]
    assert checkpoints.verifies(1) and checkpoints.verifies(2)


def test_trust_checkpoint_on_a_finished_run_writes_the_checksum_so_the_run_is_not_stuck(tmp_path, capsys):
    """The case of the issue, by hand: a finished run whose checksums were lost is continued once with
    --trust-checkpoint, which writes the checksum, so the same command without it finds the run finished."""
    out = tmp_path / "run"
    config = _config(out, "one-seed")
    train(config)
    newest = Checkpointer(out / "checkpoints").verified_step()
    for checksum in (out / "checkpoints").glob("*.sha256"):
        checksum.unlink()
    path = Checkpointer(out / "checkpoints").path(newest)
    train(dataclasses.replace(config, trust_checkpoint=str(path)))
    assert "already finished" in capsys.readouterr().err
    train(config)
    assert "already finished" in capsys.readouterr().err

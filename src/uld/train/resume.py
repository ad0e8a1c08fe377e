"""Where a run's S seeds start from: their checkpoints, checked once per seed with one set of rules.

Per seed: a checkpoint directory that is a dangling link or a file is refused; checkpoints that do not
verify are never overwritten (the seed is named, with --trust-checkpoint and --restart as the ways on);
checkpoints without the config.json they were written with are refused; a config.json that disagrees
with the command is refused, naming the options. Then the seeds continue together from the newest step
that every seed has a verifying checkpoint of (a run of one seed: its newest verifying checkpoint), or
start over together when none has one. --restart starts every seed over, its files moved aside;
--trust-checkpoint FILE continues the seed whose checkpoint FILE is, the other seeds from the same step.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from uld.errors import UldError
from uld.train.checkpoint import Checkpointer
from uld.train.config import config_differences, read_run_config

TOGETHER = "seeds_together"
"""The key of a seed's checkpoint that lists the seeds trained with it in one process (absent: trained alone)."""


@dataclass
class SeedDir:
    """One seed's run directory as the run finds it."""

    seed: int
    run_dir: Path
    checkpointer: Checkpointer
    config: dict
    """The config.json the run writes for this seed (resolved, without --restart and --trust-checkpoint)."""


def together(seeds: list[int]) -> list[int] | None:
    """What a checkpoint records as the seeds trained with it: None for a seed trained alone."""
    return list(seeds) if len(seeds) > 1 else None


def resume_states(dirs: list[SeedDir], restart: bool, trust: str | None) -> tuple[list[dict] | None, int | None]:
    """The seeds' states to continue from and their step, or (None, None) to start every seed over."""
    if restart:
        return None, None
    for d in dirs:
        d.checkpointer.check_directory()
    if trust is not None:
        states, step = _trusted(dirs, trust)
    else:
        states, step = _newest_common(dirs)
    if states is not None:
        for d in dirs:
            _check_config(d, trusted=trust is not None)
        _check_nothing_newer(dirs, step)
    return states, step


def _seed_name(dirs: list[SeedDir], d: SeedDir) -> str:
    return f"seed {d.seed}'s run {d.run_dir}" if len(dirs) > 1 else str(d.run_dir)


def _trusted(dirs: list[SeedDir], trust: str) -> tuple[list[dict], int]:
    """--trust-checkpoint FILE: the seed whose checkpoints FILE is among continues from it, the others from
    their verifying checkpoints of the same step."""
    path = Path(trust)
    holder = next((k for k, d in enumerate(dirs) if path.parent.resolve() == d.checkpointer.directory.resolve()),
                  0 if len(dirs) == 1 else None)
    if holder is None:
        raise UldError(f"--trust-checkpoint {trust} is not in the checkpoints of any seed of this run "
                       f"({', '.join(str(d.checkpointer.directory) for d in dirs)}); pass one seed's "
                       "checkpoints/step-*.pt")
    state, step = dirs[holder].checkpointer.load_trusted(path)
    states = [state if k == holder else _load_verified(dirs, d, step, f"continue with seed {dirs[holder].seed} from "
                                                        f"step {step}") for k, d in enumerate(dirs)]
    return states, step


def _load_verified(dirs: list[SeedDir], d: SeedDir, step: int, purpose: str) -> dict:
    if not d.checkpointer.verifies(step):
        raise UldError(f"{_seed_name(dirs, d)} has no checkpoint of step {step} that verifies, so it cannot "
                       f"{purpose}; nothing was changed: pass that seed's own with --trust-checkpoint, or --restart")
    state = torch.load(d.checkpointer.path(step), weights_only=True, map_location="cpu")
    try:
        d.checkpointer.validate(state, step)
    except ValueError as error:
        raise UldError(f"the checkpoint of step {step} in {d.checkpointer.directory} is not a run's state "
                       f"({error}); pass another with --trust-checkpoint, or --restart") from None
    return state


def _newest_common(dirs: list[SeedDir]) -> tuple[list[dict] | None, int | None]:
    """The newest step that every seed has a checkpoint of that verifies and loads; checkpoints that do not
    are reported and skipped. (None, None) when no seed has written a checkpoint."""
    common = set.intersection(*(set(d.checkpointer.complete_steps()) for d in dirs))
    for step in sorted(common, reverse=True):
        states = [_load_or_report(d.checkpointer, step) for d in dirs]
        if all(state is not None for state in states):
            return states, step
    if not any(d.checkpointer.holds_files() for d in dirs) or _first_save_interrupted(dirs):
        return None, None
    for d in dirs:
        if d.checkpointer.holds_files() and not any(_loads(d.checkpointer, s) for s in d.checkpointer.complete_steps()):
            whose = f"seed {d.seed}'s results" if len(dirs) > 1 else "the run's results"
            newest = d.checkpointer.path(d.checkpointer.newest_step())
            raise UldError(f"no checkpoint in {d.checkpointer.directory} verifies, and starting over would overwrite "
                           f"{whose}; nothing was changed: continue from one you trust with --trust-checkpoint "
                           f"{newest}, or pass --restart to move the run's files into {d.run_dir}/restarted-<time>/ "
                           "and start over")
    fresh = [str(d.seed) for d in dirs if not d.checkpointer.holds_files()]
    if fresh:  # seeds added to a list whose other seeds have trained already
        raise UldError(f"seed(s) {','.join(fresh)} have not started while the other seeds have checkpoints, so "
                       f"they cannot train together; nothing was changed: train the new seeds on their own "
                       f"(--seeds {','.join(fresh)}), and the others with their own list")
    steps = ", ".join(f"seed {d.seed}: {d.checkpointer.verified_step()}" for d in dirs)
    raise UldError(f"the seeds have no verifying checkpoint at one common step ({steps}), so they cannot "
                   "continue together; finish each seed on its own with --seed K (and --out its directory)")


def _first_save_interrupted(dirs: list[SeedDir]) -> bool:
    """Whether the seeds' first checkpoint was cut short: some seeds have no checkpoint file, and the others
    have one each, of one step, that verifies and was written by this seed list. The seeds' previous state
    is then a run with no checkpoint, which starts over (the files are moved aside, not deleted)."""
    steps = [d.checkpointer.steps() for d in dirs]
    saved = [(d.checkpointer, s[0]) for d, s in zip(dirs, steps) if s]
    if not saved or len(saved) == len(dirs) or any(len(s) > 1 for s in steps):
        return False
    if len({step for _, step in saved}) > 1 or not all(c.verifies(step) for c, step in saved):
        return False
    seeds = together([d.seed for d in dirs])
    return all(torch.load(c.path(step), weights_only=True, map_location="cpu").get(TOGETHER) == seeds
               for c, step in saved)


def _loads(checkpointer: Checkpointer, step: int) -> bool:
    """Whether the checkpoint of `step` verifies and holds a run's state (nothing is reported)."""
    if not checkpointer.verifies(step):
        return False
    try:
        checkpointer.validate(torch.load(checkpointer.path(step), weights_only=True, map_location="cpu"), step)
    except Exception:  # noqa: BLE001 - any unreadable file is treated alike
        return False
    return True


def _load_or_report(checkpointer: Checkpointer, step: int) -> dict | None:
    path = checkpointer.path(step)
    if not checkpointer.verifies(step):
        print(f"uld: checkpoint {path} is incomplete or corrupted (checksum mismatch); falling back to an earlier "
              "one", file=sys.stderr)
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        checkpointer.validate(state, step)
    except Exception as error:  # noqa: BLE001 - any unreadable file is treated alike
        print(f"uld: checkpoint {path} cannot be read ({error}); falling back to an earlier one", file=sys.stderr)
        return None
    return state


def _check_config(d: SeedDir, trusted: bool) -> None:
    """A seed with checkpoints has the config.json they were written with, and it agrees with the command."""
    if not (d.run_dir / "config.json").is_file():
        if trusted:
            return
        raise UldError(f"{d.run_dir} holds checkpoints but no config.json, so this command cannot be checked "
                       f"against the run; restore it, or continue with the run's options and --trust-checkpoint "
                       f"{d.checkpointer.path(d.checkpointer.verified_step())}, which writes it again")
    try:
        stored = read_run_config(d.run_dir)
    except UldError:
        if trusted:
            return
        raise
    differences = config_differences(stored, d.config)
    if differences:
        raise UldError(f"{d.run_dir} holds a run with another configuration: {'; '.join(differences)}; "
                       "use another --out, or the run's own options to resume it")


def _check_nothing_newer(dirs: list[SeedDir], step: int) -> None:
    """Refuse to take a seed back to `step` when it has a newer checkpoint that these seeds did not write
    together (the seed went on alone, or with other seeds): continuing would redo its newer steps and
    overwrite them. A newer checkpoint these seeds wrote together (the process stopped while it saved every
    seed's) is redone exactly, so that is allowed."""
    seeds = [d.seed for d in dirs]
    for d in dirs:
        # Only checkpoints newer than `step` are hashed here (complete_steps is newest first); `step`'s were.
        newest = next((s for s in d.checkpointer.complete_steps() if s > step and d.checkpointer.verifies(s)), None)
        if newest is None:
            continue
        try:
            written_with = torch.load(d.checkpointer.path(newest), weights_only=True, map_location="cpu").get(TOGETHER)
        except Exception:  # noqa: BLE001 - a newer file that does not load was skipped, as any unreadable one
            continue
        if written_with == together(seeds):
            continue
        others = ",".join(str(s) for s in seeds if s != d.seed)
        how = "alone" if written_with is None else f"with seeds {','.join(map(str, written_with))}"
        raise UldError(f"seed {d.seed} went on {how} to step {newest}, past step {step} where the other seeds stand; "
                       f"training them together again would redo and overwrite its newer steps, so nothing was "
                       f"changed: continue the others without it (--seeds {others}), or seed {d.seed} on its own "
                       f"(--seed {d.seed})")

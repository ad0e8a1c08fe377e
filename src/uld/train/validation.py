"""Bad input is refused before anything is allocated or written: one sentence, what is wrong and what to do.

Three kinds of checks live here, all data-driven so that options added later are covered too:
- the command line: a numeric option given a value of another kind, and tyro's other parse errors,
  become one line instead of a parser box (parse_options);
- the ranges of uld train's options and of every agent hyperparameter (check_config): a table names
  the fields whose range is not the generic one, which is "a positive integer" for int fields and "a
  finite number >= 0" for float fields;
- the run directory (check_out), the memory a state replay needs (check_buffer_memory), and the
  options of a `--resume` command that disagree with the run (resume_disagreements).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
import tempfile
import typing
from pathlib import Path
from typing import Any, Literal

from uld.errors import UldError

# (low, high, low inclusive, high inclusive); None: unbounded on that side.
Range = tuple[float | None, float | None, bool, bool]

AT_LEAST_0: Range = (0, None, True, False)
POSITIVE: Range = (0, None, False, False)
UNIT: Range = (0, 1, True, True)

# Fields whose range is not the generic one, by dataclass name then field name.
RANGES: dict[str, dict[str, Range]] = {
    "TrainConfig": {"seed": (0, 2**32 - 1, True, True), "checkpoint_minutes": POSITIVE, "env_workers": AT_LEAST_0},
    "ULDConfig": {"random_steps": AT_LEAST_0, "discount": UNIT, "alpha": UNIT, "min_priority": POSITIVE,
                  "encoder_lr": POSITIVE, "value_lr": POSITIVE, "policy_lr": POSITIVE, "value_grad_clip": POSITIVE,
                  "gumbel_tau": POSITIVE, "bin_range": POSITIVE, "num_bins": (2, None, True, False),
                  "infonce_temperature": POSITIVE, "fade": (0, 1, False, True), "fade_floor": (0, 1, False, True)},
    "ALMConfig": {"random_steps": AT_LEAST_0, "discount": UNIT, "td_lambda": UNIT, "tau": (0, 1, False, True),
                  "lr": POSITIVE, "grad_clip": POSITIVE},
}

RANGES["DRQConfig"] = RANGES["ULDConfig"]  # DR.Q's config is ULD's with other defaults

DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _describe(bounds: Range, integer: bool) -> str:
    low, high, low_in, high_in = bounds
    kind = "an integer" if integer else "a number"
    if integer and high is None and low_in and low in (0, 1):
        return "a positive integer" if low == 1 else "a non-negative integer"
    if high is None:
        return f"{kind} {'>=' if low_in else '>'} {low:,}"
    return f"{kind} in {'[' if low_in else '('}{low:,}, {high:,}{']' if high_in else ')'}"


def _within(value: float, bounds: Range) -> bool:
    low, high, low_in, high_in = bounds
    if low is not None and (value < low or (value == low and not low_in)):
        return False
    return high is None or value < high or (value == high and high_in)


def _field_kind(hint: Any) -> tuple[type | None, bool, tuple | None]:
    """(int, float, bool or None for others; None allowed; the choices of a Literal)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is Literal:
        return None, optional, typing.get_args(hint)
    return (hint if hint in (int, float, bool) else None), optional, None


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every int, float, bool and Literal field of a config dataclass against its range.

    Raises UldError naming the option, its range and the value given.
    """
    hints = typing.get_type_hints(type(obj))
    table = RANGES.get(type(obj).__name__, {})
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        option = "--" + prefix + field.name.replace("_", "-")
        kind, optional, choices = _field_kind(hints[field.name])
        if value is None and optional:
            continue
        if choices is not None:
            if value not in choices:
                raise UldError(f"{option} must be one of {', '.join(map(str, choices))}, got {value!r}")
            continue
        if kind is bool:
            if type(value) is not bool:
                raise UldError(f"{option} must be true or false, got {value!r}")
            continue
        if kind is None:
            continue
        integer = kind is int
        bounds = table.get(field.name, (1, None, True, False) if integer else AT_LEAST_0)
        numeric = type(value) is int or (not integer and type(value) is float)
        if not numeric or (not integer and not math.isfinite(value)) or not _within(value, bounds):
            raise UldError(f"{option} must be {_describe(bounds, integer)}, got {value!r}; pass a value in that range")


def check_config(config: Any) -> None:
    """Every option of a resolved TrainConfig and of its agent's hyperparameters, before anything is made."""
    check_fields(config)
    if not DEVICE.match(config.device):
        raise UldError(f"--device must be auto, cpu, mps, cuda or cuda:N, got {config.device!r}; pass one of those")
    agent = config.agent_config
    check_fields(agent, prefix=config.agent + ".")
    # The replay must hold at least one whole subsequence of the horizon the losses unroll.
    horizon = getattr(agent, "horizon", None) or getattr(agent, "seq_len", 1)
    for name in ("buffer_capacity", "humanoid_buffer_capacity"):
        capacity = getattr(agent, name, None)
        if capacity is not None and capacity <= horizon + 1:
            raise UldError(f"--{config.agent}.{name.replace('_', '-')} is {capacity}, too small for the horizon of "
                           f"{horizon} steps the agent learns from; pass more than {horizon + 1}")


def check_out(out: str | Path) -> None:
    """Raise UldError when the run directory is a file, lies under a file, or cannot be written."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UldError(f"--out {out} is a file, not a directory; pass a directory for the run")
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise UldError(f"--out {out}: {existing} is a symlink to nowhere; fix the link or pass another --out")
        existing = existing.parent
    if not existing.is_dir():
        raise UldError(f"--out {out} lies under {existing}, which is a file; pass a directory for the run")
    # os.access says yes to root everywhere: try a file, which also catches read-only mounts.
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UldError(f"--out {out} cannot be written ({error.strerror or error} in {existing}); pass a "
                       "directory you can write to") from None


def check_buffer_memory(config: Any, spec: Any, replays: int = 1) -> None:
    """Raise UldError when `replays` state replays (one per seed) of the configured capacity cannot fit in the
    memory available.

    Pixel replays check themselves, frame by frame (uld.replay.frames). A state replay holds one
    float32 observation and action per slot, and 40 bytes of reward, flags, priority and sum tree.
    """
    from uld.replay.frames import MEMORY_RESERVE, available_memory

    if spec.pixels:
        return
    agent = config.agent_config
    if hasattr(agent, "capacity_for"):  # ALM sizes its replay by the env and the budget
        capacity = agent.capacity_for(spec.name, config.steps)
    else:
        capacity = getattr(agent, "buffer_capacity", None)
    if capacity is None:
        return
    per_slot = 4 * (math.prod(spec.obs_shape) + spec.action_dim) + 40
    needed, available, reserve = replays * capacity * per_slot, available_memory(), MEMORY_RESERVE
    if available is not None and needed + reserve > available:
        fits = max(0, (available - reserve) // (replays * per_slot))
        what = "the replay needs" if replays == 1 else f"the {replays} seeds' replays need"
        fewer = "" if replays == 1 else ", or train fewer seeds in one process"
        raise UldError(f"{what} {needed / 1e9:.1f} GB for {capacity:,} slots{' each' if replays > 1 else ''} but "
                       f"{available / 1e9:.1f} GB of memory is available; lower --{config.agent}.buffer-capacity "
                       f"to {fits:,} or less{fewer}")


# ---- the command line ---------------------------------------------------------------------------

def _option_fields(cls: type, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Option spelling (--eval-every, --uld.hidden-dim) -> (dotted field name, type hint)."""
    options = {}
    for field in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(hint):
            options.update(_option_fields(hint, prefix + field.name + "."))
            continue
        spelling = "--" + prefix + field.name.replace("_", "-")
        options[spelling] = (prefix + field.name, hint)
        if _field_kind(hint)[0] is bool:
            options["--" + prefix + "no-" + field.name.replace("_", "-")] = (prefix + field.name, hint)
    return options


def check_numeric_arguments(argv: list[str], cls: type) -> None:
    """Raise UldError for an int or float option of `cls` given a value that is not one."""
    options = _option_fields(cls)
    for i, token in enumerate(argv):
        name, equals, value = token.partition("=")
        if name not in options:
            continue
        if not equals:
            if i + 1 >= len(argv):
                continue  # tyro names the missing value
            value = argv[i + 1]
        kind, optional, _ = _field_kind(options[name][1])
        if optional and value == "None":
            continue
        if kind is int and not re.fullmatch(r"[+-]?\d[\d_]*", value):
            raise UldError(f"{name} takes an integer, got {value!r}; pass a whole number, e.g. {name} 1000")
        if kind is float:
            try:
                float(value)
            except ValueError:
                raise UldError(f"{name} takes a number, got {value!r}; pass e.g. {name} 0.5") from None


def explicit_options(argv: list[str], cls: type) -> set[str]:
    """The dotted field names of the options that `argv` gives (--no-progress: progress)."""
    options = _option_fields(cls)
    return {options[token.partition("=")[0]][0] for token in argv if token.partition("=")[0] in options}


def parse_options(cls: type, argv: list[str], prog: str, **kwargs) -> Any:
    """tyro.cli, with the numeric values checked first and tyro's error boxes turned into one UldError."""
    import tyro

    check_numeric_arguments(argv, cls)
    if "-h" in argv or "--help" in argv:
        return tyro.cli(cls, args=argv, prog=prog, **kwargs)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return tyro.cli(cls, args=argv, prog=prog, **kwargs)
    except SystemExit as exit_:
        if not exit_.code:
            print(captured.getvalue(), end="")
            raise
        raise UldError(f"{_first_message(captured.getvalue())}; see {prog} --help") from None


def _first_message(text: str) -> str:
    """The first paragraph inside a tyro error box, as one line."""
    lines = [line.strip(" │╭╮╰╯─-") for line in text.splitlines()]
    body, started = [], False
    for line in lines[1:]:
        if not line:
            if started:
                break
            continue
        if line.startswith("For full helptext"):
            break
        body.append(line)
        started = True
    message = " ".join(body).rstrip(".") or "the options could not be parsed"
    return re.sub(r"\s+", " ", message)


def resume_disagreements(stored: dict, config: Any, explicit: set[str], resumable: tuple[str, ...]) -> list[str]:
    """The options a `--resume` command gives that differ from the run's config.json."""
    differences = []
    for name in sorted(explicit):
        section, _, field = name.rpartition(".")
        if (section or field) in resumable or (section and section != stored.get("agent", config.agent)):
            continue
        run_value = (stored.get(section) or {}).get(field) if section else stored.get(field)
        value = getattr(getattr(config, section), field) if section else getattr(config, field)
        if value != run_value:
            differences.append(f"{name} (run: {run_value!r}, this command: {value!r})")
    return differences


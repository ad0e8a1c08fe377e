"""One command that checks uld's GPU path on a GPU, and writes what it found as Markdown tables.

    python benchmarks/gpu_acceptance.py --out REPORT.md                # on an H100/H200, under 8 minutes
    python benchmarks/gpu_acceptance.py --out REPORT.md --device cpu   # reduced: that every part still runs

On an offline GPU machine, first install uld's RL dependencies from the wheels that
../shared/tools/device_wheels.sh collects (WHEELDIR: where they were copied; nothing is downloaded):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site WHEELDIR/*.whl && export PYTHONPATH=/tmp/site:$PWD/src

Parts, one table each, with the device's name and the torch version:

1. the CUDA tests (tests/test_cuda_graphs.py; on a CPU they skip) and the CPU tests of the graphed path;
2. benchmarks/gpu_step.py, vector and Atari shapes at full size: eager against graphed, fp32 against
   bf16, and the training loop's own time per step (act + add + can_sample + update);
3. benchmarks/seeds.py at 1, 5 and 10 seeds: one process against S processes, graphs' warm-up and
   capture outside the timing;
4. a real run, dmc:cheetah-run at full size for 13,000 steps (10,000 random, then 3,000 updates),
   graphed and eager from the same seed: the final evaluation and the last logged losses agree within
   TOLERANCE (runs on a GPU are not bit-reproducible, and two RL runs that differ in the last bits drift
   apart: the check is that both learn alike, not that they are equal);
5. resumes on CUDA: from a checkpoint written on the CPU, and from one written with --no-cuda-graphs.

Parts 1-3 run in processes of their own with a time limit each, the runs of parts 4 and 5 in this one
(`uld train` through uld.cli.main); a part that fails or runs out of time is reported as such and the
next one runs. The exit status is 1 when any part failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from uld.train.logger import read_eval_csv

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = {"return": 0.35, "loss": 0.5}
"""Graphed against eager after 3,000 updates, |a - b| <= relative * max(|a|, |b|) + absolute: final evaluation
returns 35% (absolute 100 return points, for runs that have barely started to learn: cheetah-run's returns
after 3,000 updates are in the low hundreds), last logged losses 50% (absolute 0.05: a loss near 0 moves by
more than half of itself between two logs). Two runs whose arithmetic differs in the last bits (cuBLAS may
pick other kernels inside a capture, atomics add in another order) follow different trajectories, so only
a learning-level agreement is meaningful; a lost or repeated update changes the losses far beyond these."""


def _run(command: list[str], timeout: float, env: dict | None = None) -> tuple[bool, str, float]:
    """(succeeded, output, seconds) of a command run from the repository root."""
    started = time.perf_counter()
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                       **(env or {}))
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=environment)
        return done.returncode == 0, done.stdout + done.stderr, time.perf_counter() - started
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return False, output + f"\n(timed out after {timeout:.0f} s)", time.perf_counter() - started


def _tables(output: str) -> str:
    """The Markdown table rows a benchmark printed."""
    return "\n".join(line for line in output.splitlines() if line.startswith("|"))


def _tail(output: str, lines: int = 15) -> str:
    return "```\n" + "\n".join(output.strip().splitlines()[-lines:]) + "\n```"


def part_tests(device: str) -> tuple[bool, str]:
    # On a CPU the CUDA tests skip, and the default suite runs the graphed path's CPU tests anyway.
    tests = ["tests/test_cuda_graphs.py"] + (["tests/test_graph_capture.py"] if device == "cuda" else [])
    ok, output, seconds = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], 300)
    summary = output.strip().splitlines()[-1] if output.strip() else "(no output)"
    table = f"| tests | result | seconds |\n|---|---|---|\n| {' '.join(tests)} | {summary} | {seconds:.0f} |"
    if device == "cuda" and "skipped" in summary and "passed" not in summary.split("skipped")[0]:
        ok = False  # on a GPU the CUDA tests must run, not skip
    return ok, table + ("" if ok else "\n\n" + _tail(output))


def part_gpu_step(device: str) -> tuple[bool, str]:
    command = [sys.executable, "benchmarks/gpu_step.py", "--device", device]
    if device == "cuda":
        command += ["--cycles", "1", "--sample-repeats", "50"]
    else:
        command += ["--reduced", "--fill", "600", "--capacity", "2000", "--cycles", "1", "--sample-repeats", "2",
                    "--precision", "fp32"]
    ok, output, _ = _run(command, 240 if device == "cuda" else 120)
    header = next((line for line in output.splitlines() if line.startswith("torch ")), "")
    return ok, f"{header}\n\n{_tables(output)}" + ("" if ok else "\n\n" + _tail(output))


def part_seeds(device: str) -> tuple[bool, str]:
    if device == "cuda":
        command = ["--device", "cuda", "--full", "--sizes", "1,5,10", "--steps", "100", "--warmup", "300",
                   "--target-period", "25", "--threads", "4"]
    else:
        command = ["--device", "cpu", "--env", "gym:Pendulum-v1", "--sizes", "1", "--steps", "2", "--warmup", "20",
                   "--target-period", "2"]
    ok, output, _ = _run([sys.executable, "benchmarks/seeds.py", *command], 240 if device == "cuda" else 120)
    return ok, _tables(output) + ("" if ok else "\n\n" + _tail(output))


def _train(out: Path, device: str, steps: int, *options: str) -> tuple[bool, str]:
    """`uld train` in this process (one torch import for every run), its exit status and what it printed."""
    from uld import cli

    printed = io.StringIO()
    argv = ["train", "--out", str(out), "--device", device, "--steps", str(steps), "--no-progress", *options]
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            status = cli.main(argv)
        except Exception as error:  # noqa: BLE001 - reported in the table, and the next part runs
            status, _ = 1, printed.write(f"{type(error).__name__}: {error}")
    return status == 0, printed.getvalue()


def _final(run_dir: Path) -> tuple[float, dict[str, float]]:
    """The mean return of the run's last evaluation, and its last logged training losses."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    losses = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.endswith("loss")}
    return read_eval_csv(run_dir / "eval.csv")[-1]["mean_return"], losses


def _agree(a: float, b: float, relative: float, absolute: float) -> bool:
    return abs(a - b) <= relative * max(abs(a), abs(b)) + absolute


def part_real_run(device: str, work: Path) -> tuple[bool, str]:
    if device == "cuda":
        env, steps, options = "dmc:cheetah-run", 13_000, ["--eval-every", "13000", "--eval-episodes", "5",
                                                          "--log-every", "500"]
    else:
        env, steps, options = "gym:Pendulum-v1", 60, ["--small", "--uld.random-steps", "50", "--eval-every", "60",
                                                      "--eval-episodes", "1", "--log-every", "5"]
    rows, finals, ok = [], {}, True
    for mode in ("graphed", "eager"):
        flags = ["--env", env, "--seed", "0", *options] + ([] if mode == "graphed" else ["--no-cuda-graphs"])
        started = time.perf_counter()
        ran, output = _train(work / f"real-{mode}", device, steps, *flags)
        seconds = time.perf_counter() - started
        if not ran:
            return False, f"{mode} run failed:\n\n{_tail(output)}"
        finals[mode] = _final(work / f"real-{mode}")
        rows.append(f"| {mode} | {finals[mode][0]:.1f} | "
                    + ", ".join(f"{k} {v:.4g}" for k, v in sorted(finals[mode][1].items())) + f" | {seconds:.0f} |")
    (graphed_return, graphed_losses), (eager_return, eager_losses) = finals["graphed"], finals["eager"]
    returns_agree = _agree(graphed_return, eager_return, TOLERANCE["return"], absolute=100.0)
    losses_agree = bool(graphed_losses) and graphed_losses.keys() == eager_losses.keys() and all(
        _agree(graphed_losses[k], eager_losses[k], TOLERANCE["loss"], absolute=0.05) for k in graphed_losses)
    ok = returns_agree and losses_agree and all(math.isfinite(v) for v in graphed_losses.values())
    table = (f"{env}, {steps} steps, seed 0\n\n"
             "| mode | final evaluation (mean return) | last logged losses | seconds |\n"
             "|---|---|---|---|\n" + "\n".join(rows)
             + f"\n\nreturns agree within {TOLERANCE['return']:.0%} + 100: {returns_agree}; "
             f"losses within {TOLERANCE['loss']:.0%} + 0.05: {losses_agree}")
    return ok, table


def part_resume(device: str, work: Path) -> tuple[bool, str]:
    """A short first run (past its random steps, so that the checkpoint holds optimizer states), resumed."""
    steps = 150 if device == "cuda" else 60
    env = ["--env", "gym:Pendulum-v1", "--small", "--uld.random-steps", str(steps - 10), "--eval-every", str(steps),
           "--eval-episodes", "1", "--seed", "0"]
    rows, ok = [], True
    for name, first_device, first_flags, folder in (
            ("from a CPU checkpoint", "cpu", [], "resume-cpu"),
            ("from a --no-cuda-graphs checkpoint", device, ["--no-cuda-graphs"], "resume-eager")):
        out = work / folder
        ran, output = _train(out, first_device, steps, *env, *first_flags)
        if ran:
            ran, output = _train(out, device, 2 * steps, "--resume", str(out))
        last_line = output.strip().splitlines()[-1][:200] if output.strip() else "failed"
        detail = f"finished {2 * steps} steps" if ran else last_line
        rows.append(f"| {name} | {first_device}{' ' + ' '.join(first_flags) if first_flags else ''} | {device} "
                    f"| {'yes' if ran else 'no'} | {detail} |")
        ok &= ran
    return ok, ("| resume | first run on | resumed on | ok | detail |\n|---|---|---|---|---|\n" + "\n".join(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the Markdown report to write")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_acceptance: torch sees no CUDA GPU here; run it on a GPU, or with --device cpu for the reduced form",
              file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    report = [f"# GPU acceptance\n\ndevice: {name}; torch {torch.__version__}; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
              + ("" if args.device == "cuda" else "; reduced form (--device cpu): checks that each part runs, "
                 "its figures mean nothing")]
    failed = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        parts = [("1. Tests", lambda: part_tests(args.device)),
                 ("2. Training step (benchmarks/gpu_step.py)", lambda: part_gpu_step(args.device)),
                 ("3. Seeds in one process (benchmarks/seeds.py)", lambda: part_seeds(args.device)),
                 ("4. Graphed against eager, a real run", lambda: part_real_run(args.device, work)),
                 ("5. Resume on this device", lambda: part_resume(args.device, work))]
        for title, part in parts:
            part_started = time.perf_counter()
            ok, table = part()
            print(f"{title}: {'ok' if ok else 'FAILED'} ({time.perf_counter() - part_started:.0f} s)", flush=True)
            report.append(f"## {title}: {'ok' if ok else 'FAILED'}\n\n{table}")
            if not ok:
                failed.append(title)
    report.append(f"Total: {time.perf_counter() - started:.0f} s; "
                  + (f"failed: {', '.join(failed)}" if failed else "every part ok"))
    Path(args.out).write_text("\n\n".join(report) + "\n")
    print(f"report: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Running a sweep's runs on this machine: a pool of `uld train` processes."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque

from uld.analysis.sweep.plan import USER_ERROR_EXIT, Run
from uld.analysis.sweep.process import SweepInterrupted, last_line, lock_run, start_run


def run_locally(todo: list[Run], parallel: int, threads: int, max_retries: int) -> list[Run]:
    """Run on this machine, `parallel` processes at a time; the runs that failed."""
    pending, running, failed = deque(todo), {}, []
    attempts = {run: 0 for run in todo}
    waiting_reported: set[Run] = set()
    done = 0
    try:
        while pending or running:
            busy = 0
            while pending and len(running) < parallel and busy < len(pending):
                run = pending.popleft()
                lock_fd = lock_run(run.run_dir, block=False)
                if lock_fd is None:  # another process trains it: come back to it later
                    if run not in waiting_reported:
                        print(f"waiting for {run.label}: another process is training {run.run_dir}", flush=True)
                        waiting_reported.add(run)
                    pending.append(run)
                    busy += 1
                    continue
                if run.finished:
                    os.close(lock_fd)
                    done += 1
                    continue
                attempts[run] += 1
                running[start_run(run, threads, lock_fd)] = (run, lock_fd)
            for process, (run, lock_fd) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[process]
                os.close(lock_fd)
                if code == 0:
                    done += 1
                    print(f"[{done}/{len(todo)}] {run.label} finished", flush=True)
                elif code != USER_ERROR_EXIT and attempts[run] <= max_retries:
                    print(f"{run.label} exited with {code}; starting it again from its checkpoint", flush=True)
                    pending.append(run)
                else:
                    print(f"{run.label} failed (exit {code}): {last_line(run)}", file=sys.stderr, flush=True)
                    failed.append(run)
            time.sleep(0.2 if running or not busy else 1.0)
    except KeyboardInterrupt:
        for process in running:
            process.send_signal(signal.SIGINT)
        for process, (_, lock_fd) in running.items():
            process.wait()
            os.close(lock_fd)
        raise SweepInterrupted(f"sweep interrupted; {len(running)} runs under way saved a checkpoint: run the same "
                               "command again to continue", 130) from None
    return failed

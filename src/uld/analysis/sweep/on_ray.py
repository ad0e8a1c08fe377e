"""Running a sweep's runs on a Ray cluster: one Ray task per run, each training in a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from uld.analysis.sweep.plan import USER_ERROR_EXIT, Run, SweepConfig
from uld.analysis.sweep.process import RunCrashed, SweepInterrupted, last_line, lock_run, start_run
from uld.errors import UldError


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """Raise UldError unless something accepts a TCP connection at a Ray address (host:port or ray://host:port)."""
    import socket

    host_port = address.removeprefix("ray://").rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UldError(f"--ray {address!r} is not host:port, ray://host:port, auto or local; pass e.g. "
                       "--ray 10.0.0.5:6379, or --ray local to start a cluster here")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise UldError(f"cannot reach the Ray cluster at {address!r}: nothing answers at {host}:{port} "
                       f"({error.strerror or error}); start one with ray start --head, or pass --ray local to "
                       "start one here") from None


def _ray_train(run: Run, threads: int) -> str:
    """A Ray task: train one run in a subprocess of the worker. Returns "finished", "skipped" or "failed".

    Raises RunCrashed when the run's process crashed, so that Ray starts it again (it resumes);
    Ray also starts it again when the worker itself dies. Cancelling the task (SIGINT to the
    sweep) stops the run at a checkpoint.
    """
    lock_fd = lock_run(run.run_dir, block=True)  # waits for any process still training this run
    try:
        if run.finished:
            return "skipped"
        process = start_run(run, threads, lock_fd)
        try:
            # Polled, not waited on: ray.cancel raises KeyboardInterrupt only between Python instructions.
            while (code := process.poll()) is None:
                time.sleep(0.5)
        except KeyboardInterrupt:  # ray.cancel
            process.send_signal(signal.SIGINT)
            process.wait()
            raise
    finally:
        os.close(lock_fd)
    if code == 0:
        return "finished"
    if code == USER_ERROR_EXIT:
        return "failed"
    raise RunCrashed(f"{run.label} exited with {code}: {last_line(run)}")


def import_ray():
    """The ray module, or UldError saying which extra to install."""
    try:
        import ray
    except ImportError as error:
        raise UldError('--ray needs Ray, which is not installed; pip install "uld[sweep]"') from error
    return ray


@contextlib.contextmanager
def ray_cluster(config: SweepConfig) -> Iterator[Any]:
    """The ray module, connected to the sweep's cluster (--ray local: one started here) until the block ends;
    UldError when there is none to reach. uld sweep connects before it writes sweep.json."""
    ray = import_ray()
    import logging

    local = config.ray == "local"
    try:
        # "local" starts an instance of this sweep's own: left out, an address makes Ray join any cluster already
        # running on the machine (or RAY_ADDRESS's).
        ray.init(address=config.ray, include_dashboard=False if local else None,
                 logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, ValueError) as error:
        # Ray's own text goes on with advice of its own ("Please specify ... --address"): its first sentence only.
        cause = str(error).strip().splitlines()[-1].split(". ")[0].rstrip(".")
        raise UldError(f"cannot reach the Ray cluster at {config.ray!r} ({cause}); "
                       "start one with ray start --head, or pass --ray local to start one here") from error
    where = "a Ray instance started here" if local else "the Ray cluster"
    print(f"sweep on {where} at {ray.get_runtime_context().gcs_address}", flush=True)
    try:
        yield ray
    finally:
        ray.shutdown()


def run_on_ray(todo: list[Run], config: SweepConfig, ray: Any) -> list[Run]:
    """Run as Ray tasks on the cluster that `ray` is connected to (ray_cluster); the runs that failed."""
    task = ray.remote(_ray_train)
    options = dict(num_cpus=config.cpus_per_run, num_gpus=config.gpus_per_run, max_retries=config.max_retries,
                   retry_exceptions=[RunCrashed])
    refs = {task.options(**options, name=f"uld train {run.label}").remote(run, config.cpus_per_run): run
            for run in todo}
    failed, done = [], 0
    try:
        while refs:
            # A short timeout lets SIGINT reach this loop while ray.wait blocks.
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
            if not ready:
                continue
            run = refs.pop(ready[0])
            try:
                status = ray.get(ready[0])
            except ray.exceptions.RayError as error:
                status = f"failed ({type(error).__name__}: {str(error).strip().splitlines()[-1]})"
            if status.startswith("failed"):
                print(f"{run.label} {status}: {last_line(run)}", file=sys.stderr, flush=True)
                failed.append(run)
            else:
                done += 1
                print(f"[{done}/{len(todo)}] {run.label} {status}", flush=True)
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)
        ray.wait(list(refs), num_returns=len(refs), timeout=120)
        raise SweepInterrupted("sweep interrupted; the runs under way were stopped at a checkpoint: run the same "
                               "command again to continue", 130) from None
    return failed

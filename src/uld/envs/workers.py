"""Envs that run in worker processes, so that several of them step at the same time.

Many seeds in one process (uld/train/seed_envs.py) step S envs in lock-step. Where one step is
expensive on the host (a pixel env renders a frame, 20-45 ms on a CPU), stepping them one after the
other dominates the training step; in workers they step concurrently::

    with EnvWorkers(2) as workers:              # requests: (name, seed, evaluation, worker)
        envs = workers.make_envs([("dmc-pixels:cheetah-run", 0, False, 0), ("dmc-pixels:cheetah-run", 1, False, 1)])
        observations = reset_all(envs)
        results = step_all(envs, actions)        # every action sent first, then every result collected

A ``WorkerEnv`` is a whole Env (uld/envs/base.py): every method is forwarded to the env in its worker,
which was made there by ``make_env(name, seed, evaluation)``, so only a name and two numbers cross
the process boundary, and observations, rewards and RNG states come back exactly (pickled numpy
arrays and Python floats), which keeps runs bitwise the same as with envs in this process.
``step_async``/``step_wait`` and ``reset_async``/``reset_wait`` split a call into its two halves.

Workers are fresh interpreters, as multiprocessing's "spawn" starts (torch is loaded in the parent;
forking it is unsafe), talking over a multiprocessing Connection. They run in a session of their own
and ignore SIGINT and SIGTERM (the parent handles them and still needs the envs' RNG states for its
checkpoint), and end when the parent closes their pipe or dies. An exception in a worker is raised again in the parent
(a UldError keeps its one sentence); a worker that dies is one UldError sentence, never a hang.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import traceback
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from uld.envs.base import EnvSpec
from uld.envs.python import EnvFactory
from uld.errors import UldError

JOIN_SECONDS = 5.0
"""How long close() waits for a worker to exit on its own before killing it."""

POLL_SECONDS = 1.0
"""How often a wait checks that the worker is still alive (a dead worker's pipe also ends the wait)."""


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _serve(conn: Connection) -> None:
    """A worker's loop: make envs, then call their methods, one request at a time, until the pipe closes.

    A request is (slot, method, payload), the payload (args, kwargs) pickled by the parent; the answer is
    (slot, True, result) or (slot, False, error).
    """
    # A worker has a session of its own, so a terminal's Ctrl-C does not reach it; a signal sent to it anyway
    # is ignored too: the parent stops at its next step and checkpoints, which asks these envs for their RNG
    # states, so the workers must outlive the signal. They end when the parent closes their pipe or dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from uld.envs import make_env  # here: chooses the headless OpenGL backend before dm_control loads

    envs: dict[int, Any] = {}
    try:
        while True:
            try:
                slot, method, payload = conn.recv()
            except (EOFError, OSError):
                return
            try:
                try:  # unpickled here, so that what cannot be loaded in a worker is an answer, not its death
                    args, kwargs = pickle.loads(payload)
                except Exception as error:  # noqa: BLE001 - e.g. a factory defined in the user's __main__ script
                    raise UldError(f"an env worker cannot load the {method} request ({type(error).__name__}: "
                                   f"{error}); define the env's factory in a module and name it "
                                   "(python:<module>:<function>), or pass --env-workers 0") from None
                if method == "make":
                    envs[slot] = make_env(*args)
                    result = envs[slot].spec
                elif method == "close":
                    result = envs.pop(slot).close()
                else:
                    result = getattr(envs[slot], method)(*args, **kwargs)
                answer = (slot, True, result)
            except Exception as error:  # noqa: BLE001 - every error goes back to the parent, which raises it
                answer = (slot, False, _portable(error))
            try:
                conn.send(answer)
            except (BrokenPipeError, OSError):
                return
    finally:
        for env in envs.values():
            env.close()


def _portable(error: Exception) -> Exception:
    """The error as the parent can unpickle it; a bug's traceback in the worker travels along as a note."""
    if not isinstance(error, UldError):
        error.add_note("in the env worker:\n" + "".join(traceback.format_exception(error)))
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - an exception type that does not pickle becomes a RuntimeError
        portable = RuntimeError(f"{type(error).__name__}: {error}")
        portable.__notes__ = getattr(error, "__notes__", [])
        return portable


def _untensored(tree: Any) -> Any:
    """`tree` with every torch tensor in it (a checkpoint's RNG arrays come back from torch.load as tensors) a
    numpy array: the pipe's pickler would send a tensor as torch shared memory, which a worker cannot open."""
    torch = sys.modules.get("torch")
    if torch is None:
        return tree
    if isinstance(tree, torch.Tensor):
        return tree.numpy(force=True)
    if isinstance(tree, dict):
        return {key: _untensored(value) for key, value in tree.items()}
    if type(tree) in (list, tuple):
        return type(tree)(_untensored(value) for value in tree)
    return tree


_BOOT = "import sys; sys.path[:0] = __import__('json').loads(sys.argv[2]); from uld.envs.workers import main; main()"
"""A worker's command: the parent's import path first (user modules named by env names import), then main."""


class _Worker:
    """One worker process and the parent's end of its pipe; answers are matched to envs by slot.

    A fresh interpreter, as multiprocessing's "spawn" makes, but started directly: spawn would also
    re-run the parent's main script in every worker (a script without an ``if __name__ == "__main__"``
    guard would then start training again), and it shares the parent's session, so a terminal's
    Ctrl-C would reach the workers, which the parent still needs for its checkpoint.
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen([sys.executable, "-c", _BOOT, str(theirs.fileno()), json.dumps(sys.path)],
                                        pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()  # the worker's end is the worker's alone, so its death ends our reads (EOFError)
        self.conn = Connection(ours.detach())
        self.answers: dict[int, tuple[bool, Any]] = {}
        self.names: dict[int, str] = {}

    def send(self, slot: int, method: str, args: tuple, kwargs: dict | None = None) -> None:
        try:
            payload = pickle.dumps((_untensored(args), _untensored(kwargs or {})), pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise UldError(f"{self.names.get(slot, args[0] if args else '?')} cannot be sent to an env worker "
                           f"({error}); name the env (e.g. python:<module>:<function>), or pass --env-workers 0"
                           ) from None
        try:
            self.conn.send((slot, method, payload))
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            raise self._died(slot) from None

    def wait(self, slot: int) -> Any:
        """The answer to the one request of `slot` in flight; answers for other slots are kept for them."""
        while slot not in self.answers:
            try:
                if not self.conn.poll(POLL_SECONDS):
                    if self.process.poll() is not None:
                        raise self._died(slot)
                    continue
                answered, ok, result = self.conn.recv()
            except (EOFError, ConnectionResetError, OSError):
                raise self._died(slot) from None
            self.answers[answered] = (ok, result)
        ok, result = self.answers.pop(slot)
        if not ok:
            raise result
        return result

    def _died(self, slot: int) -> UldError:
        try:
            code = self.process.wait(JOIN_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        how = ("it is still running but its pipe closed" if code is None
               else f"killed by signal {-code}" if code < 0 else f"exit code {code}")
        return UldError(f"the worker process {self.process.pid} of env {self.names.get(slot, '?')} stopped ({how}); "
                        "the run's last checkpoint is kept: run the same command again to continue")

    def close(self) -> None:
        """Ask the worker to exit, then make sure it has: killed after JOIN_SECONDS, and reaped."""
        try:
            self.conn.close()  # the worker's recv ends with EOFError; it closes its envs and returns
        except OSError:
            pass
        try:
            self.process.wait(JOIN_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class WorkerEnv:
    """An env living in a worker process, behind the Env interface (uld/envs/base.py); one call in flight."""

    def __init__(self, worker: _Worker, slot: int, spec: EnvSpec) -> None:
        self._worker, self._slot, self.spec = worker, slot, spec
        self._pending: str | None = None
        self._closed = False

    def _send(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self._pending is not None:
            raise RuntimeError(f"{self.spec.name}: {method} called while {self._pending} is in flight")
        if self._closed:
            raise RuntimeError(f"{self.spec.name}: {method} called on a closed env")
        self._worker.send(self._slot, method, args, kwargs)
        self._pending = method

    def _wait(self, method: str) -> Any:
        if self._pending != method:
            raise RuntimeError(f"{self.spec.name}: {method} awaited, but {self._pending} is in flight")
        self._pending = None
        return self._worker.wait(self._slot)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._send(method, *args, **kwargs)
        return self._wait(method)

    def step_async(self, action: np.ndarray | int) -> None:
        """Send an action; step_wait() returns what step(action) would."""
        self._send("step", action)

    def step_wait(self) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return self._wait("step")

    def reset_async(self) -> None:
        """Start a reset; reset_wait() returns the first observation."""
        self._send("reset")

    def reset_wait(self) -> np.ndarray:
        return self._wait("reset")

    def reset(self) -> np.ndarray:
        return self._call("reset")

    def step(self, action: np.ndarray | int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return self._call("step", action)

    def sample_action(self) -> np.ndarray | int:
        return self._call("sample_action")

    def rng_state(self) -> dict[str, Any]:
        return self._call("rng_state")

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self._call("set_rng_state", state)

    def reseed(self, seed: int) -> None:
        self._call("reseed", seed)

    def render(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self._call("render", *args, **kwargs)

    def close(self) -> None:
        """Close the env in its worker (the worker itself ends with EnvWorkers.close)."""
        if self._closed or self._worker.process.poll() is not None:
            self._closed = True
            return
        if self._pending is None:
            try:
                self._call("close")
            except UldError:
                pass  # the worker died meanwhile: nothing is left to close
        self._closed = True


class EnvWorkers:
    """N worker processes holding envs, each env on the worker its request names. A context manager:
    leaving it (also by an exception or KeyboardInterrupt) ends every worker."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"EnvWorkers needs at least one worker, got {count}")
        # Fresh interpreters (as "spawn"), not forks: the parent has torch and its thread pools loaded,
        # which fork would copy half-alive.
        self._workers: list[_Worker] = []
        try:
            for _ in range(count):
                self._workers.append(_Worker())
        except BaseException:
            self.close()
            raise
        self._slots = 0
        # Workers end with this object too, should its owner forget close() (they also end when we exit).
        self._finalizer = weakref.finalize(self, _close_all, self._workers)

    def __len__(self) -> int:
        return len(self._workers)

    def make_envs(self, requests: Sequence[tuple[str | EnvFactory, int, bool, int]]) -> list[WorkerEnv]:
        """``make_env(name, seed, evaluation)`` on worker ``worker % N`` for each request (name, seed,
        evaluation, worker), every worker making its envs at the same time."""
        placed = []
        for name, seed, evaluation, index in requests:
            worker, slot = self._workers[index % len(self._workers)], self._slots
            self._slots += 1
            label = name if isinstance(name, str) else getattr(name, "__name__", repr(name))
            worker.names[slot] = f"{label} (seed {seed}{', evaluation' if evaluation else ''})"
            worker.send(slot, "make", (name, seed, evaluation))
            placed.append((worker, slot))
        return [WorkerEnv(worker, slot, worker.wait(slot)) for worker, slot in placed]

    def close(self) -> None:
        """End every worker (their envs are closed in them); idempotent."""
        _close_all(self._workers)

    def __enter__(self) -> EnvWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_all(workers: list[_Worker]) -> None:
    while workers:
        workers.pop().close()


def main() -> None:
    """A worker process: serve the parent on the socket whose descriptor is the first argument."""
    _serve(Connection(int(sys.argv[1])))


def step_all(envs: Sequence[Any], actions: Sequence[np.ndarray | int]) -> list[tuple]:
    """Each env's step(action); envs in workers step at the same time (every action is sent first)."""
    return _gather([(env, "step", (action,)) for env, action in zip(envs, actions)])


def reset_all(envs: Sequence[Any]) -> list[np.ndarray]:
    """Each env's reset(); envs in workers reset at the same time."""
    return _gather([(env, "reset", ()) for env in envs])


def _gather(calls: list[tuple[Any, str, tuple]]) -> list:
    """Each (env, method, args) call's result: first every call to a worker is sent, then the results are
    collected. When one fails, the others are still collected (each env is left with no call in flight)
    before the first error is raised."""
    error: BaseException | None = None
    for env, method, args in calls:
        if isinstance(env, WorkerEnv):
            try:
                env._send(method, *args)
            except UldError as failed:
                error = error or failed
    results = []
    for env, method, args in calls:
        try:
            if not isinstance(env, WorkerEnv):
                results.append(getattr(env, method)(*args))
            elif env._pending == method:
                results.append(env._wait(method))
        except Exception as failed:  # noqa: BLE001 - raised below, once no call is left in flight
            error = error or failed
    if error is not None:
        raise error
    return results

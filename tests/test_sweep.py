"""uld sweep: a tiny 2 tasks x 2 seeds sweep finishes, skips finished runs, survives SIGINT and a killed Ray cluster.

Every sweep here trains the same four runs, so each must end with the same eval.csv returns as the
uninterrupted local sweep (resumption is exact; wall_seconds differ and are not compared).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from uld.analysis.sweep import finished_step, parse_seeds, run_finished
from uld.errors import UldError
from uld.train.logger import read_eval_csv

ENVS = ("gym:Pendulum-v1", "gym:CartPole-v1")
"""A continuous and a discrete task; an untrained policy drops CartPole's pole within some tens of steps, so
its evaluations cost little (a DMC task's 1000-step episodes were most of the sweeps' time)."""
RUNS = ("gym_Pendulum-v1/seed0", "gym_Pendulum-v1/seed1", "gym_CartPole-v1/seed0", "gym_CartPole-v1/seed1")
TINY = ("--steps", "60", "--eval-every", "30", "--eval-episodes", "1", "--small", "--uld.batch-size", "8",
        "--uld.hidden-dim", "16", "--uld.zs-dim", "16", "--uld.zsa-dim", "16", "--uld.za-dim", "8",
        "--uld.random-steps", "30", "--uld.target-update-period", "10", "--uld.buffer-capacity", "2000")


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uld.cli", "sweep", "--envs", *ENVS, "--seeds", "0-1", "--out", str(out),
            "--cpus-per-run", "1", *TINY, *extra]


def _environment(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"), **extra)


def _sweep(out: Path, *extra: str, **environment: str) -> subprocess.CompletedProcess:
    """The sweep command to its end. Without Ray or environment variables it runs in this process (its runs
    are `uld train` processes either way), which spares the suite an interpreter start per sweep."""
    if environment or "--ray" in extra:
        return subprocess.run(_command(out, *extra), capture_output=True, text=True, env=_environment(**environment),
                              timeout=400)
    return _here(_command(out, *extra)[3:])


def _here(argv: list[str]) -> subprocess.CompletedProcess:
    """`uld ARGV` in this process, with what it printed."""
    from uld.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    return subprocess.CompletedProcess(["uld", *argv], code, stdout.getvalue(), stderr.getvalue())


def _start(out: Path, *extra: str, **environment: str) -> subprocess.Popen:
    return subprocess.Popen(_command(out, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_environment(**environment))


def _returns(run_dir: Path) -> list[tuple[int, list[float]]]:
    return [(row["step"], row["returns"]) for row in read_eval_csv(run_dir / "eval.csv")]


def _wait_until_training(out: Path, process: subprocess.Popen) -> None:
    """Until some run has written its step-0 evaluation, i.e. runs are under way; a sweep that exits before
    that fails here with its output (a hang is pytest-timeout's to end)."""
    while not any((out / run / "eval.csv").exists() and len((out / run / "eval.csv").read_text().splitlines()) >= 2
                  for run in RUNS):
        if process.poll() is not None:
            raise AssertionError(f"the sweep exited with {process.returncode} before any run started training:\n"
                                 + process.communicate()[0][-3000:])
        time.sleep(0.05)  # a poll of the file, not a wait for time to pass


def _assert_complete_and_equal(out: Path, straight: Path) -> None:
    for run in RUNS:
        assert finished_step(out / run) == 60 and run_finished(out / run, 60), run
        assert _returns(out / run) == _returns(straight / run), run


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted local sweep that the others are compared with."""
    out = tmp_path_factory.mktemp("straight") / "sweep"
    result = _sweep(out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_parse_seeds():
    assert parse_seeds("0-9") == list(range(10))
    assert parse_seeds("0,3, 7") == [0, 3, 7]
    assert parse_seeds("0-2,1,9") == [0, 1, 2, 9]
    for bad in ("", "3-1", "a", "1-"):
        with pytest.raises(UldError):
            parse_seeds(bad)


def test_options_set_by_the_sweep_cannot_be_passed_on(tmp_path):
    result = _sweep(tmp_path / "sweep", "--seed", "3")
    assert result.returncode == 2 and "--seed is set by uld sweep" in result.stderr


def test_local_sweep_finishes_every_run_and_skips_them_the_second_time(straight):
    for run in RUNS:
        assert finished_step(straight / run) == 60
        assert [step for step, _ in _returns(straight / run)] == [0, 30, 60]
    assert (straight / "sweep.json").exists()
    mtimes = {run: (straight / run / "eval.csv").stat().st_mtime_ns for run in RUNS}

    again = _sweep(straight)

    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 runs, 4 finished already" in again.stdout
    assert {run: (straight / run / "eval.csv").stat().st_mtime_ns for run in RUNS} == mtimes


def test_interrupted_sweep_resumes_to_the_same_results(straight, tmp_path):
    out = tmp_path / "sweep"
    process = _start(out)
    _wait_until_training(out, process)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output
    assert "run the same command again" in output
    assert sum(finished_step(out / run) == 60 for run in RUNS) < len(RUNS)

    result = _sweep(out)

    assert result.returncode == 0, result.stdout + result.stderr
    _assert_complete_and_equal(out, straight)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """A Ray cluster on this machine, started as a user starts one (`ray start --head --block`), in a session of
    its own, so that killing its process group kills exactly this cluster (head, raylet, GCS)."""

    def __init__(self, log: Path) -> None:
        self.log, self.process, self.port, self.temp_dir = log, None, 0, ""

    @property
    def address(self) -> str:
        """The cluster's address, started first when it is not running (test_sweep_survives_its_ray_cluster_being_
        killed kills it; a test that runs after that one gets a new cluster)."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        return f"127.0.0.1:{self.port}"

    def _start(self) -> None:
        self.close()
        self.port = _free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                 "--ray-client-server-port", str(_free_port()), "--num-cpus", "2", "--include-dashboard", "false",
                 "--disable-usage-stats", "--temp-dir", self.temp_dir],
                stdout=log, stderr=subprocess.STDOUT, env=_environment(RAY_AUTH_MODE="disabled"), start_new_session=True)
        while "Ray runtime started" not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.1)  # a poll of the log, not a wait for time to pass

    def kill(self) -> None:
        """SIGKILL to the whole cluster."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """One Ray cluster for this module's Ray sweeps (starting one costs seconds of the suite's time)."""
    pytest.importorskip("ray")
    if shutil.which("ray") is None:
        pytest.skip("the ray command is not on PATH")
    head = RayHead(tmp_path_factory.mktemp("ray") / "ray-head.log")
    yield head
    head.close()


def test_ray_sweep_interrupted_and_resumed_on_a_local_instance(straight, ray_head, tmp_path):
    """A sweep of Ray tasks on a cluster: SIGINT cancels its tasks, which stop their runs at a checkpoint. The
    same command with --ray local (a Ray instance started in the sweep's process) finishes every run with the
    uninterrupted sweep's results."""
    out = tmp_path / "sweep"
    process = _start(out, "--ray", ray_head.address, RAY_AUTH_MODE="disabled")
    _wait_until_training(out, process)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=180)[0]
    assert process.returncode == 130, output
    assert sum(finished_step(out / run) == 60 for run in RUNS) < len(RUNS)

    # RAY_ADDRESS names the module's cluster, as on a machine of a cluster: --ray local still starts its own.
    result = _sweep(out, "--ray", "local", RAY_AUTH_MODE="disabled", RAY_ADDRESS=ray_head.address)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "sweep on a Ray instance started here at " in result.stdout, result.stdout
    assert f":{ray_head.address.split(':')[1]}\n" not in result.stdout, result.stdout
    _assert_complete_and_equal(out, straight)


def test_sweep_survives_its_ray_cluster_being_killed(straight, ray_head, tmp_path):
    """The cluster (head, raylet, GCS) dies mid-sweep; running the sweep again here finishes every run."""
    out = tmp_path / "sweep"
    # The driver gives up 5 s after losing the cluster instead of Ray's default 60 s.
    driver = _start(out, "--ray", ray_head.address, RAY_AUTH_MODE="disabled", RAY_gcs_rpc_server_reconnect_timeout_s="5")
    _wait_until_training(out, driver)
    ray_head.kill()
    try:
        output = driver.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        driver.kill()
        pytest.fail("the sweep driver did not exit within 120 s of losing its cluster (it gives up after 5 s):\n"
                    + driver.communicate()[0][-3000:])
    # It stops with one sentence and a non-zero status, and says how to continue.
    assert driver.returncode not in (0, None), output
    assert "Traceback" not in output, output
    finished = {run: (out / run / "eval.csv").stat().st_mtime_ns for run in RUNS if finished_step(out / run) == 60}

    result = _sweep(out)  # on this machine, without Ray

    assert result.returncode == 0, result.stdout + result.stderr
    _assert_complete_and_equal(out, straight)
    assert {run: (out / run / "eval.csv").stat().st_mtime_ns for run in finished} == finished


def test_seeds_per_process_groups_unfinished_seeds_and_skips_finished(tmp_path):
    """Seed 0 trained alone first; then --seeds 0-2 --seeds-per-process 2 skips it and trains seeds 1 and
    2 in one process (its train.log in seed1's directory), each writing its own run directory."""
    pendulum = ["--envs", "gym:Pendulum-v1", "--out", str(tmp_path), "--cpus-per-run", "1", *TINY]
    first = _here(["sweep", "--seeds", "0", *pendulum])
    assert first.returncode == 0, first.stderr
    seed0_log = (tmp_path / "gym_Pendulum-v1/seed0/train.log").read_text()
    grouped = _here(["sweep", "--seeds", "0-2", "--seeds-per-process", "2", *pendulum])
    assert grouped.returncode == 0, grouped.stderr
    assert "3 runs, 1 finished already" in grouped.stdout
    assert "gym:Pendulum-v1 seeds 1,2 finished" in grouped.stdout
    assert (tmp_path / "gym_Pendulum-v1/seed0/train.log").read_text() == seed0_log  # not started again
    assert (tmp_path / "gym_Pendulum-v1/seed1/train.log").exists()
    assert not (tmp_path / "gym_Pendulum-v1/seed2/train.log").exists()
    for seed in range(3):
        run_dir = tmp_path / f"gym_Pendulum-v1/seed{seed}"
        assert [step for step, _ in _returns(run_dir)] == [0, 30, 60]
        assert finished_step(run_dir) == 60
    again = _here(["sweep", "--seeds", "0-2", "--seeds-per-process", "2", *pendulum])
    assert "3 runs, 3 finished already" in again.stdout


def test_group_runs_keeps_seeds_at_one_checkpoint_step_together(tmp_path):
    from uld.analysis.sweep import Run, group_runs

    def run(seed):
        run_dir = tmp_path / "env" / f"seed{seed}"
        return Run("gym:Pendulum-v1", seed, str(run_dir), 100,
                   ("--env", "gym:Pendulum-v1", "--seed", str(seed), "--out", str(run_dir), "--small"))

    # Seed 3 stands at a checkpoint of step 50 (one whose checksum verifies), the others at none.
    (tmp_path / "env/seed3/checkpoints").mkdir(parents=True)
    (tmp_path / "env/seed3/checkpoints/step-0000000050.pt").write_bytes(b"state")
    (tmp_path / "env/seed3/checkpoints/step-0000000050.sha256").write_text(hashlib.sha256(b"state").hexdigest() + "\n")
    groups = group_runs([run(seed) for seed in range(5)], 2)
    assert [g.group or (g.seed,) for g in groups] == [(0, 1), (2, 4), (3,)]
    assert groups[0].argv == ("--env", "gym:Pendulum-v1", "--seeds", "0,1", "--out", str(tmp_path / "env"), "--small")
    assert groups[1].run_dirs == [str(tmp_path / "env/seed2"), str(tmp_path / "env/seed4")]
    assert group_runs([run(0), run(1)], 1) == [run(0), run(1)]


@pytest.mark.parametrize("options, message", [
    (["--cpus-per-run", "0"], "--cpus-per-run must be at least 1, got 0"),
    (["--seeds-per-process", "0"], "--seeds-per-process must be at least 1, got 0"),
    (["--gpus-per-run", "1"], "--gpus-per-run reserves GPUs on a Ray cluster and needs --ray; on this machine every "
                              "run uses the GPUs torch sees (choose how many share them with --parallel)"),
    (["--ray", "nohost"], "--ray 'nohost' is not host:port, ray://host:port, auto or local; pass e.g. "
                          "--ray 10.0.0.5:6379, or --ray local to start a cluster here"),
], ids=["cpus", "seeds-per-process", "gpus-without-ray", "ray-address"])
def test_sweep_refusals_are_one_sentence_exit_2_and_write_nothing(tmp_path, capsys, options, message):
    from uld.cli import main

    out = tmp_path / "sweep"
    assert main(["sweep", "--envs", "gym:Pendulum-v1", "--seeds", "0", "--out", str(out), *options]) == 2
    assert capsys.readouterr().err == f"uld: {message}\n"
    assert not out.exists()

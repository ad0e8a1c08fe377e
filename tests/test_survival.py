"""Runs survive anything (issue 15): no fault loses a run's results, no bad input gets a traceback.

Each test reproduces one fault or bad input of the issue through the real `train()` or the real
`uld` command, and asserts what is left on disk, byte for byte where results are concerned.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from uld.agents.uld.config import reduced_config
from uld.analysis.sweep import finished_step, run_finished
from uld.cli import main
from uld.errors import UldError
from uld.train.checkpoint import Checkpointer, check_run_state
from uld.train.config import TrainConfig
from uld.train.logger import read_eval_csv
from uld.train.run import train

TINY = reduced_config(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, random_steps=100,
                      target_update_period=20, buffer_capacity=5000)
TINY_ARGS = ["--small", "--uld.batch-size", "16", "--uld.hidden-dim", "32", "--uld.zs-dim", "32", "--uld.zsa-dim", "32",
             "--uld.za-dim", "16", "--uld.random-steps", "100", "--uld.target-update-period", "20",
             "--uld.buffer-capacity", "5000"]


def _config(out: Path, steps: int, **overrides) -> TrainConfig:
    base = dict(env="gym:Pendulum-v1", seed=3, steps=steps, eval_every=100, eval_episodes=1, progress=False,
                out=str(out), log_every=50, uld=TINY)
    base.update(overrides)
    return TrainConfig(**base)


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run directory (symlinks as their target), by relative path."""
    files = {}
    for path in sorted(run.rglob("*")):
        if path.is_symlink():
            files[str(path.relative_to(run))] = os.readlink(path).encode()
        elif path.is_file():
            files[str(path.relative_to(run))] = path.read_bytes()
    return files


def _returns(run: Path) -> list[tuple[int, list[float]]]:
    return [(row["step"], row["returns"]) for row in read_eval_csv(run / "eval.csv")]


def _agent_tensors(run: Path) -> dict[str, torch.Tensor]:
    state, _ = Checkpointer(run / "checkpoints").load_latest()
    return {f"{name}/{key}": tensor for name in ("encoder", "policy", "value")
            for key, tensor in state["agent"][name].items()}


def _assert_same_agent(a: Path, b: Path) -> None:
    first, second = _agent_tensors(a), _agent_tensors(b)
    assert first.keys() == second.keys()
    for key, tensor in first.items():
        assert torch.equal(tensor, second[key]), key


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 200-step run with checkpoints at 100 and 200."""
    return train(_config(tmp_path_factory.mktemp("finished") / "run", 200, checkpoint_every=100))


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    return copy


# ---- lost results --------------------------------------------------------------------------------

def _empty_checksums(run: Path) -> None:
    for path in (run / "checkpoints").glob("*.sha256"):
        path.write_text("")


def _truncate_checkpoints(run: Path) -> None:
    for path in (run / "checkpoints").glob("*.pt"):
        path.write_bytes(path.read_bytes()[:1000])


def _random_bytes_with_checksums(run: Path) -> None:
    for path in (run / "checkpoints").glob("*.pt"):
        path.write_bytes(os.urandom(4096))
        path.with_suffix(".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


def _drop_checksum_files(run: Path) -> None:
    for path in (run / "checkpoints").glob("*.sha256"):
        path.unlink()


@pytest.mark.parametrize("damage", [_empty_checksums, _truncate_checkpoints, _random_bytes_with_checksums,
                                    _drop_checksum_files])
def test_a_run_whose_checkpoints_do_not_verify_is_refused_and_left_as_it_was(finished, tmp_path, damage):
    run = _copy(finished, tmp_path)
    damage(run)
    before = _snapshot(run)
    with pytest.raises(UldError, match=r"no checkpoint in .* verifies.*nothing was changed.*--trust-checkpoint .*"
                                       r"step-0000000200\.pt.*--restart"):
        train(_config(run, 300, checkpoint_every=100))
    assert _snapshot(run) == before


def test_restart_moves_the_old_run_aside_and_deletes_nothing(finished, tmp_path):
    run = _copy(finished, tmp_path)
    _empty_checksums(run)
    before = _snapshot(run)
    del before[".lock"]  # the run directory's lock (train/lock.py) stays where it is
    train(_config(run, 200, checkpoint_every=100, restart=True))
    (aside,) = run.glob("restarted-*")
    assert {name: data for name, data in _snapshot(aside).items()} == before  # every old file, unchanged
    assert [step for step, _ in _returns(run)] == [0, 100, 200]
    assert _returns(run) == _returns(finished)  # the new run is the same run, started over
    assert json.loads((run / "config.json").read_text())["restart"] is False


def test_trust_checkpoint_continues_from_a_checkpoint_whose_checksum_was_lost(finished, tmp_path):
    straight = train(_config(tmp_path / "straight", 300, checkpoint_every=100))
    run = _copy(finished, tmp_path)
    _drop_checksum_files(run)
    train(_config(run, 300, checkpoint_every=100, trust_checkpoint=str(run / "checkpoints/step-0000000200.pt")))
    assert _returns(run) == _returns(straight)
    _assert_same_agent(run, straight)


def test_trust_checkpoint_rewrites_a_lost_config_json(finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "config.json").unlink()
    with pytest.raises(UldError, match="holds checkpoints but no config.json.*--trust-checkpoint"):
        train(_config(run, 300))
    assert not (run / "config.json").exists()
    train(_config(run, 300, trust_checkpoint=str(run / "checkpoints/step-0000000200.pt")))
    assert json.loads((run / "config.json").read_text())["steps"] == 300


def test_a_dangling_checkpoints_symlink_is_refused_before_anything_is_written(finished, tmp_path):
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(tmp_path / "unmounted-disk")
    before = _snapshot(run)
    with pytest.raises(UldError, match=r"checkpoints is a symlink to .*unmounted-disk, which does not exist"):
        train(_config(run, 300))
    assert _snapshot(run) == before


def test_a_checkpoint_without_checksum_is_not_one_of_the_two_kept_and_tmp_leftovers_go(tmp_path):
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    checkpoints.save({"x": torch.ones(1)}, 1)
    checkpoints.save({"x": torch.ones(1)}, 2)
    torch.save({"x": torch.ones(1)}, checkpoints.path(3))  # killed between the .pt rename and the .sha256
    checkpoints.path(3).with_name(checkpoints.path(3).name + ".tmp").write_bytes(b"x" * 1000)  # killed mid-write
    checkpoints.save({"x": torch.full((1,), 4.0)}, 4)
    assert sorted(p.name for p in checkpoints.directory.iterdir()) == [
        "step-0000000002.pt", "step-0000000002.sha256", "step-0000000004.pt", "step-0000000004.sha256"]


def test_config_json_is_replaced_atomically(finished, tmp_path, monkeypatch):
    """A kill while config.json is written leaves the old file whole (simulated: the write stops halfway)."""
    run = _copy(finished, tmp_path)
    before = (run / "config.json").read_bytes()
    real_write_text, real_replace = Path.write_text, os.replace

    def killed_halfway(path, data, *args, **kwargs):
        if Path(path).name == "config.json":
            real_write_text(path, data[: len(data) // 2], *args, **kwargs)
            raise KeyboardInterrupt
        return real_write_text(path, data, *args, **kwargs)

    def killed_before_rename(src, dst):
        if Path(dst).name == "config.json":
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(Path, "write_text", killed_halfway)
    monkeypatch.setattr(os, "replace", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        train(_config(run, 300))
    assert (run / "config.json").read_bytes() == before
    assert not list(run.glob("config.json*.tmp"))


@pytest.mark.parametrize("content, message", [(b'{"env": "gym:Pend', "is not valid JSON"),
                                              (b'{"env": "gym:Pendulum-v1", "sed": 3}', r"options this uld does not know \(sed\)"),
                                              (b'{"uld": {"discont": 0.9}}', r"does not know \(uld.discont\)")])
def test_a_bad_config_json_is_one_sentence_for_train_eval_and_resume(finished, tmp_path, capsys, content, message):
    run = _copy(finished, tmp_path)
    (run / "config.json").write_bytes(content)
    before = _snapshot(run)
    for argv in (["train", "--resume", str(run), "--no-progress"], ["eval", str(run), "--episodes", "1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "config.json" in err and __import__("re").search(message, err), err
    with pytest.raises(UldError, match=message):
        train(_config(run, 300))
    assert _snapshot(run) == before


def test_eval_csv_rows_are_fsynced(tmp_path, monkeypatch):
    import uld.train.logger as logger_module

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(logger_module.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                               real_fsync(fd))[1])
    train(_config(tmp_path / "run", 200))
    assert sum(path.endswith("eval.csv") for path in synced) == 3  # one per evaluation: steps 0, 100, 200


def test_an_eval_csv_shorter_than_the_checkpoint_recorded_is_not_padded(finished, tmp_path, capsys):
    """eval.csv lost its last row (written but not on disk when the machine crashed): it is never NUL-padded."""
    straight = train(_config(tmp_path / "straight", 300, checkpoint_every=100))
    run = _copy(finished, tmp_path)
    data = (run / "eval.csv").read_bytes()
    (run / "eval.csv").write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1])  # without the row of step 200
    train(_config(run, 300, checkpoint_every=100))
    assert b"\x00" not in (run / "eval.csv").read_bytes()
    assert "fewer than the" in capsys.readouterr().err
    assert _returns(run) == [row for row in _returns(straight) if row[0] != 200]
    train(_config(run, 400, checkpoint_every=100))  # and it resumes again
    assert [step for step, _ in _returns(run)] == [0, 100, 300, 400]


def _rewrite_checkpoint(path: Path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    path.with_suffix(".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


def test_values_read_from_a_checkpoint_are_validated(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    newest = run / "checkpoints/step-0000000200.pt"
    size = (run / "eval.csv").stat().st_size
    # A crafted offset far past eval.csv's end: the file is neither grown nor padded.
    _rewrite_checkpoint(newest, lambda s: s["logger"].update(eval_csv_bytes=10**9))
    train(_config(run, 300, checkpoint_every=100))
    data = (run / "eval.csv").read_bytes()
    assert b"\x00" not in data and len(data) < size + 200
    # A negative offset, or a step that is not the file's: the checkpoint is skipped for the one before.
    run = _copy(finished, tmp_path / "again")
    _rewrite_checkpoint(run / "checkpoints/step-0000000200.pt", lambda s: s["logger"].update(eval_csv_bytes=-5))
    assert Checkpointer(run / "checkpoints", validate=check_run_state).load_latest()[1] == 100
    assert "eval.csv offset is -5" in capsys.readouterr().err
    _rewrite_checkpoint(run / "checkpoints/step-0000000200.pt",
                        lambda s: (s["logger"].update(eval_csv_bytes=size), s["trainer"].update(step=10**12)))
    train(_config(run, 200, checkpoint_every=100))  # resumes from 100 and redoes 100 steps
    assert _returns(run) == _returns(finished)
    # An offset inside a row is refused with the ways out.
    run = _copy(finished, tmp_path / "third")
    _rewrite_checkpoint(run / "checkpoints/step-0000000200.pt", lambda s: s["logger"].update(eval_csv_bytes=size - 3))
    with pytest.raises(UldError, match="falls inside a row.*--trust-checkpoint.*--restart"):
        train(_config(run, 300))


def test_sweep_counts_a_run_finished_only_by_a_checkpoint_that_verifies(finished, tmp_path):
    from uld.analysis.sweep import finished_step

    run = _copy(finished, tmp_path)
    assert finished_step(run) == 200
    newest = run / "checkpoints/step-0000000200.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert finished_step(run) == 100


# ---- interruption ---------------------------------------------------------------------------------

def _signal_during_evaluation(monkeypatch, at_step_of_training: int, after_eval_steps: int | None = 50) -> None:
    """Make the evaluation env send this process SIGTERM in the middle of the evaluation at a step
    (after_eval_steps None: right after that evaluation)."""
    import uld.train.trainer as trainer_module

    real_evaluate = trainer_module.evaluate_seeds  # the loop's evaluation of every seed
    calls = {"evaluations": 0}

    def evaluate(agents, envs, episodes, stop=None):
        env = envs[0]
        calls["evaluations"] += 1
        if calls["evaluations"] == at_step_of_training // 100 + 1:
            steps = [0]
            real_step = env.step

            def step(action):
                steps[0] += 1
                if steps[0] == after_eval_steps:
                    os.kill(os.getpid(), signal.SIGTERM)
                return real_step(action)

            if after_eval_steps is None:
                returns = real_evaluate(agents, envs, episodes, stop)
                os.kill(os.getpid(), signal.SIGTERM)
                return returns
            env.step = step
            try:
                return real_evaluate(agents, envs, episodes, stop)
            finally:
                del env.step
        return real_evaluate(agents, envs, episodes, stop)

    monkeypatch.setattr(trainer_module, "evaluate_seeds", evaluate)


def test_a_stop_during_an_evaluation_abandons_it_and_the_resumed_run_is_the_straight_one(tmp_path, monkeypatch):
    straight = train(_config(tmp_path / "straight", 300))
    run = tmp_path / "run"
    _signal_during_evaluation(monkeypatch, at_step_of_training=200)
    with pytest.raises(UldError, match="interrupted during the evaluation at step 200") as stopped:
        train(_config(run, 300))
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert [step for step, _ in _returns(run)] == [0, 100]  # the abandoned evaluation left no row
    monkeypatch.undo()
    train(_config(run, 300))
    assert _returns(run) == _returns(straight)
    _assert_same_agent(run, straight)


def test_a_stop_right_after_the_first_evaluation_resumes_without_evaluating_twice(tmp_path, monkeypatch):
    straight = train(_config(tmp_path / "straight", 200))
    run = tmp_path / "run"
    _signal_during_evaluation(monkeypatch, at_step_of_training=0, after_eval_steps=None)
    with pytest.raises(UldError, match="interrupted at step 0; a checkpoint was saved"):
        train(_config(run, 200))
    monkeypatch.undo()
    train(_config(run, 200))
    assert _returns(run) == _returns(straight)


def test_a_stop_during_the_last_evaluation_says_the_evaluation_is_left_to_do(tmp_path, monkeypatch, capsys):
    straight = train(_config(tmp_path / "straight", 300))
    run = tmp_path / "run"
    _signal_during_evaluation(monkeypatch, at_step_of_training=300)
    with pytest.raises(UldError, match="interrupted during the evaluation at step 300.*to evaluate"):
        train(_config(run, 300))
    # A sweep starts this run again: its last checkpoint is at the final step, its evaluation is not done.
    assert finished_step(run) == 300 and not run_finished(run, 300)
    monkeypatch.undo()
    train(_config(run, 300))
    assert "already finished" not in capsys.readouterr().err  # the last evaluation was still to do
    assert _returns(run) == _returns(straight)
    assert run_finished(run, 300) and run_finished(straight, 300) and not run_finished(run, 400)
    train(_config(run, 300))
    assert "already finished 300 steps" in capsys.readouterr().err


def test_sigterm_during_a_long_evaluation_stops_within_seconds(tmp_path):
    """1,000 evaluation episodes (200,000 policy steps) take over 40 s; a stop request waits for one env
    step, then the checkpoint and the exit: a few seconds on a loaded 2-core machine."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "uld.cli", "train", "--env", "gym:Pendulum-v1", "--steps", "100",
               "--eval-every", "100", "--eval-episodes", "1000", "--no-progress", "--threads", "1", "--out", str(run),
               *TINY_ARGS]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "eval.csv").exists():  # the evaluation at step 0 starts right after
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.01)
        time.sleep(1.0)
        sent = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        waited = time.perf_counter() - sent
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted during the evaluation at step 0" in stderr and "Traceback" not in stderr
    assert waited < 5.0, waited
    assert read_eval_csv(run / "eval.csv") == []
    assert Checkpointer(run / "checkpoints").load_latest()[0]["trainer"]["evaluation_due"] is True


def test_extending_a_finished_run_off_the_evaluation_grid_equals_a_straight_run(tmp_path):
    straight = train(_config(tmp_path / "straight", 400))
    run = tmp_path / "run"
    train(_config(run, 250))  # finishes with an evaluation at 250, which is not on the grid of 100
    train(_config(run, 400))
    assert [row for row in _returns(run) if row[0] != 250] == _returns(straight)
    _assert_same_agent(run, straight)


@pytest.mark.parametrize("env", ["gym:Pendulum-v1", "dmc:cartpole-balance"])
def test_a_non_finite_action_stops_the_run_before_the_env_sees_it(tmp_path, monkeypatch, env):
    """Whatever --log-every: dm_control would end the run with a PhysicsError traceback."""
    from test_resume import poison_rewards

    poison_rewards(monkeypatch, after=150)
    with pytest.raises(UldError, match=r"diverged at step 15\d: .*non-finite"):
        train(_config(tmp_path / "run", 600, env=env, log_every=10**6))


# ---- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--uld.discount", "1.5"], "--uld.discount must be a number in [0, 1], got 1.5"),
    (["--uld.discount", "-1"], "--uld.discount must be a number in [0, 1], got -1.0"),
    (["--seed", "-1"], "--seed must be an integer in [0, 4,294,967,295], got -1"),
    (["--uld.value-lr", "-0.001"], "--uld.value-lr must be a number > 0, got -0.001"),
    (["--agent", "alm", "--alm.lr", "0"], "--alm.lr must be a number > 0, got 0.0"),
    (["--agent", "alm", "--alm.tau", "2"], "--alm.tau must be a number in (0, 1], got 2.0"),
    (["--uld.exploration-noise", "nan"], "--uld.exploration-noise must be a number >= 0, got nan"),
    (["--uld.buffer-capacity", "5"], "--uld.buffer-capacity is 5, too small for the horizon of 5 steps"),
    (["--uld.buffer-capacity", "100000000000"], "lower --uld.buffer-capacity to"),
    (["--threads", "-1"], "--threads must be a positive integer, got -1"),
    (["--checkpoint-minutes", "0"], "--checkpoint-minutes must be a number > 0, got 0.0"),
    (["--log-every", "0"], "--log-every must be a positive integer, got 0"),
    (["--device", "tpu"], "--device must be auto, cpu, mps, cuda or cuda:N, got 'tpu'"),
    (["--steps", "1.5"], "--steps takes an integer, got '1.5'"),
    (["--eval-episodes", "one"], "--eval-episodes takes an integer, got 'one'"),
    (["--uld.discount", "high"], "--uld.discount takes a number, got 'high'"),
    (["--precision", "fp8"], "invalid choice 'fp8' for argument '--precision'"),
    (["--restart", "--trust-checkpoint", "x.pt"], "--restart and --trust-checkpoint exclude each other"),
])
def test_bad_options_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "300", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_resume_with_options_that_disagree_with_the_run_is_refused_naming_them(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    before = _snapshot(run)
    for args, difference in [(["--seed", "4"], "seed (run: 3, this command: 4)"),
                             (["--seed", "0"], "seed (run: 3, this command: 0)"),  # 0 is the default: given all the same
                             (["--precision", "bf16"], "precision (run: 'fp32', this command: 'bf16')"),
                             (["--uld.discount", "0.9"], "uld.discount (run: 0.99, this command: 0.9)")]:
        assert main(["train", "--resume", str(run), "--steps", "300", "--no-progress", *args]) == 2
        err = capsys.readouterr().err
        assert difference in err and "drop those options" in err and err.count("\n") == 1, err
    assert _snapshot(run) == before
    # Options that agree with the run, and the ones that may change, are accepted.
    assert main(["train", "--resume", str(run), "--steps", "300", "--no-progress", "--seed", "3", "--threads", "1"]) == 0
    assert Checkpointer(run / "checkpoints").load_latest()[1] == 300


def test_resume_from_python_refuses_a_disagreeing_option_too(finished, tmp_path):
    run = _copy(finished, tmp_path)
    with pytest.raises(UldError, match=r"seed \(run: 3, this command: 9\)"):
        train(TrainConfig(resume=str(run), steps=300, seed=9, progress=False))


def test_an_out_that_is_a_file_or_cannot_be_written_is_one_sentence(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, message in [(a_file, "is a file, not a directory"), (a_file / "run", "lies under"),
                         (Path("/proc/uld-run"), "cannot be written")]:
        assert main(["train", "--out", str(out), "--steps", "300", *TINY_ARGS]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert a_file.read_text() == "x"


def test_report_on_a_malformed_eval_csv_is_one_sentence(finished, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    run = _copy(finished, sweep)
    with open(run / "eval.csv", "a") as f:
        f.write("300,abc,1.0;2.0,5.0\n")
    assert main(["report", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert "eval.csv is not an eval.csv that uld train writes: line 5" in err and err.count("\n") == 1, err


def test_report_skips_the_files_that_restart_moved_aside(finished, tmp_path):
    from uld.analysis.report import load_sweep

    sweep = tmp_path / "sweep"
    run = _copy(finished, sweep)
    train(_config(run, 100, restart=True))  # the old run (200 steps) is moved aside
    curves, _ = load_sweep(sweep)
    assert list(curves.final_step.values()) == [100]  # the run is the new one; the old one is not read


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "localhost:{port}"])
def test_sweep_on_a_ray_address_where_nothing_answers_fails_within_seconds(tmp_path, address):
    address = address.format(port=_free_port())
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "uld.cli", "sweep", "--envs", "gym:Pendulum-v1", "--seeds", "0",
                             "--out", str(tmp_path / "sweep"), "--ray", address, "--steps", "100"],
                            capture_output=True, text=True, timeout=120)
    assert time.perf_counter() - started < 30
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot reach the Ray cluster at {address!r}: nothing answers at" in result.stderr
    assert not (tmp_path / "sweep").exists()


# ---- loading --------------------------------------------------------------------------------------

def test_torch_is_required_at_a_version_whose_weights_only_loading_holds():
    import re
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    (torch_requirement,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    low = re.search(r">=\s*(\d+)\.(\d+)", torch_requirement)
    assert (int(low.group(1)), int(low.group(2))) >= (2, 10), torch_requirement
    installed = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert installed >= (2, 10)


def test_config_dataclass_round_trip_refuses_a_nested_section_of_the_wrong_kind():
    from uld.train.config import config_from_dict, config_to_dict

    data = config_to_dict(TrainConfig())
    assert config_from_dict(data) == TrainConfig()
    data["uld"] = [1, 2]
    with pytest.raises(UldError, match="not a mapping of options"):
        config_from_dict(data)


# ---- the default suite --------------------------------------------------------------------------------

def test_not_slow_excludes_the_learning_checks():
    tests = Path(__file__).parent
    files = [str(tests / name) for name in ("test_train.py", "test_discrete.py", "test_alm_learning.py")]
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", *files],
                            capture_output=True, text=True, timeout=300, cwd=tests.parent)
    collected = [line.split("::")[1].split("[")[0] for line in result.stdout.splitlines() if "::" in line]
    learning = {"test_learns_pendulum_reduced_size", "test_uld_learns_cartpole", "test_reduced_alm_swings_up_pendulum"}
    assert not learning & set(collected), collected
    assert "test_run_writes_eval_csv_config_and_tensorboard" in collected and len(collected) >= 15


# ---- issue 25: damaged run directories, user code, every command's inputs --------------------------------

def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and all(n in err for n in needles), err
    return err


@pytest.mark.parametrize("damage, message", [
    (lambda run: ((run / "eval.csv").unlink(), (run / "eval.csv").mkdir()), "eval.csv is a folder, where uld keeps a file"),
    (lambda run: (shutil.rmtree(run / "tb"), (run / "tb").write_text("x")), "tb is a file, where uld keeps a folder"),
    (lambda run: ((run / "config.json").rename(run / "c"), (run / "config.json").mkdir()),
     "config.json is a folder, where uld keeps a file"),
])
def test_a_damaged_run_directory_is_one_sentence_before_anything_is_written(finished, tmp_path, capsys, damage,
                                                                             message):
    run = _copy(finished, tmp_path)
    damage(run)
    before = _snapshot(run)
    assert main(["train", "--out", str(run), "--env", "gym:Pendulum-v1", "--seed", "3", "--steps", "300",
                 "--no-progress", *TINY_ARGS]) == 2
    _one_line(capsys, message, "nothing was changed")
    assert _snapshot(run) == before


def test_a_run_directory_whose_name_is_not_utf8_trains_reports_and_its_messages_print(tmp_path, capsys):
    sweep = tmp_path / os.fsdecode(b"sweep-\xff")
    run = sweep / os.fsdecode(b"run-\xfe")
    train(_config(run, 100))
    assert main(["train", "--out", str(run), "--steps", "100", "--seed", "9", "--no-progress", *TINY_ARGS]) == 2
    _one_line(capsys, "run-\\udcfe", "holds a run with another configuration")
    assert main(["report", str(sweep), "--reps", "10"]) == 0
    assert b"sweep-\xff" in (sweep / "report" / "report.md").read_bytes()


def test_a_run_directory_deleted_mid_run_is_one_sentence_and_not_made_again(tmp_path):
    from uld.train import files

    run = tmp_path / "run"

    def delete_before_the_second_row(op, path):
        if op == "write" and path.name == "eval.csv" and path.stat().st_size > 60:
            shutil.rmtree(run)

    with files.fault_hook(delete_before_the_second_row), \
            pytest.raises(UldError, match=r"could not write .*run/eval.csv \(No such file or directory\)"):
        train(_config(run, 200, checkpoint_every=100))
    assert not run.exists()


def _user_module(tmp_path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("source, message", [
    ("raise RuntimeError('no licence server')\n", "which failed while being imported (RuntimeError: no licence server at"),
    ("def make_env(seed, evaluation:\n", "which failed while being imported (SyntaxError"),
    ("import sys\nsys.exit(0)\n", "which called sys.exit(0) while being imported"),
    ("def make_env(seed):\n    pass\n", "takes (seed); it must take the keyword arguments seed and evaluation"),
    ("def make_env(seed, evaluation):\n    return {}['missing']\n", "raised KeyError: 'missing' at"),
])
def test_user_env_code_that_fails_is_one_sentence_and_writes_nothing(tmp_path, monkeypatch, capsys, source, message):
    name = f"user_env_{abs(hash(source))}"
    _user_module(tmp_path, monkeypatch, name, source)
    out = tmp_path / "run"
    assert main(["train", "--env", f"python:{name}:make_env", "--out", str(out), "--steps", "100", *TINY_ARGS]) == 2
    _one_line(capsys, message)
    assert not out.exists()


def test_a_gym_module_that_raises_at_import_is_one_sentence(tmp_path, monkeypatch, capsys):
    _user_module(tmp_path, monkeypatch, "broken_gym_module", "raise ValueError('bad table')\n")
    assert main(["train", "--env", "gym:broken_gym_module:Thing-v0", "--out", str(tmp_path / "run"), *TINY_ARGS]) == 2
    _one_line(capsys, "gym:broken_gym_module:Thing-v0 names the module broken_gym_module", "ValueError: bad table")


def test_train_from_a_thread_that_is_not_the_main_one_finishes_the_run(tmp_path):
    import threading

    results: list = []
    thread = threading.Thread(target=lambda: results.append(train(_config(tmp_path / "run", 100))))
    thread.start()
    thread.join()
    assert results == [tmp_path / "run"] and [step for step, _ in _returns(tmp_path / "run")] == [0, 100]


def test_act_refuses_non_finite_input_of_any_type_and_a_non_finite_action(finished):
    import numpy as np

    import uld

    trained = uld.load(finished)
    for obs in (torch.tensor([float("nan"), 0.0, 0.0]), np.array([1e300, 0.0, 0.0]), torch.tensor([0.0, float("inf"), 0.0],
                                                                                                   dtype=torch.float64)):
        with pytest.raises(UldError, match="act takes a finite observation"):
            trained.act(obs)
    assert np.all(np.isfinite(trained.act(torch.zeros(3))))
    trained.agent.act = lambda obs, explore: np.array([float("nan")], dtype=np.float32)
    with pytest.raises(UldError, match="gave a non-finite action for a finite observation"):
        trained.act(np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize("argv, message", [
    (["theory", "--n-mdps", "x"], "argument --n-mdps: invalid int value: 'x'; see uld theory --help"),
    (["theory", "--bogus"], "unrecognized arguments: --bogus"),
    (["export", "--bogus"], "see uld export --help"),
    (["export"], "Missing from uld export: RUN_DIR"),
    (["theory", "--n-mdps", "2"], "--n-mdps must be at least 4"),
    (["report", "/no/such/sweep", "--reps", "0"], "--reps must be a positive integer (bootstrap resamples), got 0"),
    (["report", "/no/such/sweep", "--reps", "-5"], "--reps must be a positive integer"),
    (["report", "/no/such/sweep", "--seed", "-1"], "--seed must be an integer in [0, 4,294,967,295], got -1"),
])
def test_every_command_s_bad_options_are_one_sentence(capsys, argv, message):
    assert main(argv) == 2
    _one_line(capsys, message)


@pytest.mark.parametrize("content, message", [
    (b"env,step,seed,return\nDmc-x,100,0\n", "line 2 is not env,step,seed,return"),
    (b"env,step,seed,return\nDmc-x,100,zero,5.0\n", "line 2 is not env,step,seed,return with an integer"),
    (b"env,step,seed,return\nDmc-x,100,0,nan\n", "line 2 has a negative step or seed or a non-finite return"),
    (b"env,step,seed,return\nDmc-x,100,0,\xff\xfe\n", "is not a UTF-8 CSV file"),
])
def test_report_refuses_a_bad_reference_csv_before_writing(finished, tmp_path, capsys, content, message):
    sweep = tmp_path / "sweep"
    _copy(finished, sweep)
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "curves.csv").write_bytes(content)
    assert main(["report", str(sweep), "--reference", str(tmp_path / "ref"), "--reps", "10"]) == 2
    _one_line(capsys, message)
    assert not (sweep / "report").exists()


def test_report_refuses_a_non_finite_return_instead_of_nan_aggregates(finished, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    run = _copy(finished, sweep)
    data = (run / "eval.csv").read_text().splitlines(keepends=True)
    fields = data[2].split(",")
    data[2] = ",".join([fields[0], "nan", "nan", fields[3]])
    (run / "eval.csv").write_text("".join(data))
    assert main(["report", str(sweep), "--reps", "10"]) == 2
    _one_line(capsys, "holds a non-finite return (nan) at step 100")
    assert not (sweep / "report").exists()


def test_export_refuses_a_checkpoint_folder_of_a_run_without_config_json(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    target = run / "checkpoints" / "step-0000000200.pt"
    before = target.read_bytes()
    (run / "config.json").rename(tmp_path / "config.json")
    other = _copy(finished, tmp_path / "other")
    assert main(["export", str(other), "--out", str(target), "--overwrite"]) == 2
    _one_line(capsys, "which holds a uld run's checkpoints")
    assert target.read_bytes() == before


@pytest.mark.parametrize("suffix", [".pt", ".onnx"])
def test_export_to_a_full_disk_is_one_sentence_and_keeps_the_file_it_would_replace(finished, tmp_path, capsys, suffix):
    import errno

    from uld.train import files

    out = tmp_path / f"policy{suffix}"
    out.write_bytes(b"the model before")

    def full(op, path):
        if op == "write" and path.name.startswith("policy"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with files.fault_hook(full):
        assert main(["export", str(finished), "--out", str(out), "--overwrite"]) == 2
    _one_line(capsys, f"could not write {out} (No space left on device); any file there is left as it was")
    assert out.read_bytes() == b"the model before" and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_a_video_that_cannot_be_written_is_one_sentence_and_leaves_no_partial_file(finished, tmp_path, capsys):
    import errno

    from uld.train import files

    video = tmp_path / "videos" / "episode.mp4"

    def read_only(op, path):
        if path.name.startswith("episode"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    with files.fault_hook(read_only):
        assert main(["eval", str(finished), "--episodes", "1", "--video", str(video)]) == 2
    _one_line(capsys, f"could not write {video} (Read-only file system); no video was written")
    assert not (tmp_path / "videos").exists()  # nor the folder uld made for it

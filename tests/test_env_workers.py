"""Envs in worker processes (uld/envs/workers.py): the same numbers as in this process, errors as one
sentence, no hang and no leftover process, and many-seed runs bitwise the same with and without workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from test_multi_seed import _tensors
from uld.agents.uld.config import reduced_config
from uld.cli import main
from uld.envs import make_env
from uld.envs.workers import EnvWorkers, WorkerEnv, reset_all, step_all
from uld.errors import UldError
from uld.train.checkpoint import Checkpointer, to_storable
from uld.train.config import TrainConfig
from uld.train.logger import read_eval_csv
from uld.train.run import train
from uld.train.seed_envs import env_worker_count

ENV = "gym:Pendulum-v1"
TINY = reduced_config(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, random_steps=100,
                      target_update_period=20, buffer_capacity=5000)


def _config(out: Path, steps: int, **overrides) -> TrainConfig:
    """tests/test_multi_seed.py's tiny two-seed run."""
    options = dict(env=ENV, seeds="1,4", steps=steps, eval_every=100, eval_episodes=1, progress=False,
                   out=str(out), log_every=50, uld=TINY)
    return TrainConfig(**{**options, **overrides})


def _same_step(a: tuple, b: tuple) -> None:
    assert np.array_equal(a[0], b[0]) and a[0].dtype == b[0].dtype
    assert a[1:4] == b[1:4] and type(a[1]) is type(b[1])


def test_worker_envs_give_an_in_process_env_numbers_exactly():
    local = [make_env(ENV, seed=0), make_env(ENV, seed=1), make_env(ENV, seed=100, evaluation=True)]
    with EnvWorkers(2) as workers:
        remote = workers.make_envs([(ENV, 0, False, 0), (ENV, 1, False, 1), (ENV, 100, True, 0)])
        assert [env.spec for env in remote] == [env.spec for env in local]
        for a, b in zip(reset_all(remote), [env.reset() for env in local]):
            assert np.array_equal(a, b)
        saved = [env.rng_state() for env in remote]
        assert [str(s) for s in saved] == [str(env.rng_state()) for env in local]
        for _ in range(30):
            actions = [env.sample_action() for env in local]
            assert all(np.array_equal(a, b) for a, b in zip(actions, [env.sample_action() for env in remote]))
            for a, b in zip(step_all(remote, actions), [env.step(x) for env, x in zip(local, actions)]):
                _same_step(a, b)
        # A checkpoint's resume: RNG state at the episode's reset, then its actions replayed with step().
        remote[0].set_rng_state(saved[0])
        local[0].set_rng_state(saved[0])
        assert np.array_equal(remote[0].reset(), local[0].reset())
        _same_step(remote[0].step(np.array([0.5], dtype=np.float32)), local[0].step(np.array([0.5], dtype=np.float32)))
        for env in (remote[2], local[2]):
            env.reseed(12345)
        assert np.array_equal(remote[2].reset(), local[2].reset())
        assert str(remote[2].rng_state()) == str(local[2].rng_state())
        processes = [worker.process for worker in workers._workers]
    assert all(process.poll() is not None for process in processes)  # ended and reaped, no zombie


def test_pixel_worker_env_renders_the_same_frames():
    name = "dmc-pixels:cartpole-balance"
    local = make_env(name, seed=3)
    with EnvWorkers(1) as workers:
        (remote,) = workers.make_envs([(name, 3, False, 0)])
        assert remote.spec.pixels and remote.spec == local.spec
        assert np.array_equal(remote.reset(), local.reset())
        for _ in range(3):
            action = local.sample_action()
            assert np.array_equal(action, remote.sample_action())
            _same_step(remote.step(action), local.step(action))
        assert np.array_equal(remote.render(32, 48), local.render(32, 48))
        remote.close()
        remote.close()  # twice is fine
    local.close()


def test_an_error_in_a_worker_is_the_same_uld_error():
    with pytest.raises(UldError) as in_process:
        make_env("gym:Pendulm-v1", seed=0)
    with EnvWorkers(1) as workers:
        with pytest.raises(UldError) as in_worker:
            workers.make_envs([("gym:Pendulm-v1", 0, False, 0)])
        assert str(in_worker.value) == str(in_process.value)
        (env,) = workers.make_envs([(ENV, 0, False, 0)])  # the worker serves on after an error
        env.reset()
        with pytest.raises(RuntimeError, match="in flight"):
            env.step_async(np.zeros(1, dtype=np.float32))
            env.reset()
        env.step_wait()


@pytest.mark.timeout(60)
def test_a_killed_worker_is_one_sentence_not_a_hang():
    with EnvWorkers(2) as workers:
        envs = workers.make_envs([(ENV, 0, False, 0), (ENV, 1, False, 1)])
        reset_all(envs)
        victim = workers._workers[1].process
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
        with pytest.raises(UldError, match=r"gym:Pendulum-v1 \(seed 1\) stopped \(killed by signal 9\)") as error:
            step_all(envs, [np.zeros(1, dtype=np.float32)] * 2)
        assert "\n" not in str(error.value)
        assert envs[0].sample_action().shape == (1,)  # the other worker is unaffected
        survivor = workers._workers[0].process
    assert survivor.poll() is not None


def test_workers_end_when_the_block_is_left_by_an_exception():
    with pytest.raises(KeyboardInterrupt):
        with EnvWorkers(2) as workers:
            processes = [worker.process for worker in workers._workers]
            env = workers.make_envs([(ENV, 0, False, 0)])[0]
            env.reset_async()  # a call in flight does not keep a worker alive
            raise KeyboardInterrupt
    assert all(process.poll() is not None for process in processes)
    assert isinstance(env, WorkerEnv)


def test_worker_count():
    assert env_worker_count(None, 5, pixels=False) == 0
    assert env_worker_count(None, 1, pixels=True) == 0
    assert 1 <= env_worker_count(None, 5, pixels=True) <= 5
    assert env_worker_count(0, 5, pixels=True) == 0
    assert env_worker_count(8, 3, pixels=False) == 3


def _cli(out: Path, steps: int, workers: int) -> list[str]:
    return ["train", "--env", ENV, "--seeds", "0-1", "--steps", str(steps), "--eval-every", "100",
            "--eval-episodes", "1", "--no-progress", "--log-every", "50", "--out", str(out), "--small",
            "--uld.batch-size", "16", "--uld.hidden-dim", "32", "--uld.zs-dim", "32", "--uld.zsa-dim", "32",
            "--uld.za-dim", "16", "--uld.random-steps", "100", "--uld.target-update-period", "20",
            "--uld.buffer-capacity", "5000", "--threads", "1", "--env-workers", str(workers)]


def _same_runs(a_dirs: list[Path], b_dirs: list[Path]) -> None:
    for a_dir, b_dir in zip(a_dirs, b_dirs, strict=True):
        assert read_eval_csv(a_dir / "eval.csv") and [
            (r["step"], r["returns"]) for r in read_eval_csv(a_dir / "eval.csv")] == [
            (r["step"], r["returns"]) for r in read_eval_csv(b_dir / "eval.csv")]
        (a, step_a), (b, step_b) = (Checkpointer(d / "checkpoints").load_latest() for d in (a_dir, b_dir))
        assert step_a == step_b
        flat_a, flat_b = _tensors(a), _tensors(b)
        assert len(flat_a) == len(flat_b) > 0
        assert all(torch.equal(x, y) for x, y in zip(flat_a, flat_b))
        assert str(a["env"]) == str(b["env"]) and str(a["eval_env"]) == str(b["eval_env"])


@pytest.fixture(scope="module")
def in_process(tmp_path_factory) -> list[Path]:
    """The two seeds' 300-step run with the envs in this process, only read by the tests that compare with it."""
    out = tmp_path_factory.mktemp("in_process") / "run"
    assert main(_cli(out, 300, workers=0)) == 0
    return [out / f"seed{k}" for k in (0, 1)]


def test_uld_train_with_workers_equals_in_process(tmp_path, in_process):
    assert main(_cli(tmp_path / "workers", 300, workers=2)) == 0
    _same_runs(in_process, [tmp_path / "workers" / f"seed{k}" for k in (0, 1)])


def test_interrupted_workers_run_resumes_exactly(tmp_path, two_seed_straight_run):
    """As tests/test_multi_seed.py's in-process test, the envs in workers: 150 steps (mid-episode), then the
    same command for 300, with another worker count (it may change on resume), equals 300 steps in process."""
    straight = two_seed_straight_run  # its Pendulum envs step in this process (no workers for state envs)
    train(_config(tmp_path / "split", 150, eval_every=150, env_workers=2))
    split = train(_config(tmp_path / "split", 300, eval_every=150, env_workers=1))
    _same_runs(straight, split)


def test_negative_env_workers_is_one_sentence(tmp_path, capsys):
    assert main(_cli(tmp_path / "x", 10, workers=-1)) == 2
    err = capsys.readouterr().err
    assert "--env-workers must be a non-negative integer, got -1" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_ctrl_c_to_the_process_group_checkpoints_and_the_same_command_resumes_exactly(tmp_path, in_process):
    """Ctrl-C in a terminal signals the whole process group: the workers, in a session of their own, keep
    serving while uld saves every seed's checkpoint; running the command again equals a straight run."""
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "uld.cli", *_cli(tmp_path / "interrupted", 300, workers=2)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    eval_csv, deadline = tmp_path / "interrupted/seed1/eval.csv", time.time() + 300
    while not (eval_csv.exists() and len(read_eval_csv(eval_csv)) >= 2):  # training has started
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "a checkpoint was saved for every seed" in stderr and "Traceback" not in stderr
    assert 100 <= Checkpointer(tmp_path / "interrupted/seed1/checkpoints").load_latest()[1] < 300
    assert main(_cli(tmp_path / "interrupted", 300, workers=2)) == 0
    _same_runs(in_process, [tmp_path / "interrupted" / f"seed{k}" for k in (0, 1)])


def test_a_resume_replays_every_seeds_episode_in_lock_step(tmp_path, monkeypatch):
    """The episodes in progress of all seeds are rebuilt together: each replay step goes to every seed's
    env at once (workers step them at the same time), not seed after seed."""
    import uld.train.trainer as trainer_module

    options = dict(env="gym:Pendulum-v1", seeds="1,4", eval_every=150, eval_episodes=1, progress=False,
                   out=str(tmp_path / "run"), small=True, env_workers=0)
    train(TrainConfig(steps=150, **options))  # Pendulum's episodes are 200 steps: both seeds mid-episode
    batches, rebuilding = [], [False]
    real_step_all, real_rebuild = trainer_module.step_all, trainer_module.rebuild_episodes

    def recording_step_all(envs, actions):
        if rebuilding[0]:  # the loop and the evaluations step with it too
            batches.append(len(envs))
        return real_step_all(envs, actions)

    def recording_rebuild(seeds, states):
        rebuilding[0] = True
        try:
            real_rebuild(seeds, states)
        finally:
            rebuilding[0] = False

    monkeypatch.setattr(trainer_module, "step_all", recording_step_all)  # what rebuild_episodes steps with
    monkeypatch.setattr(trainer_module, "rebuild_episodes", recording_rebuild)
    train(TrainConfig(steps=151, **options))
    assert batches == [2] * 150  # 150 replayed steps, both seeds in each


def test_a_worker_env_takes_rng_state_as_a_checkpoint_loads_it(tmp_path):
    """torch.load turns an env's numpy RNG arrays (DMC's MT19937 keys, ALE's state) into tensors; a worker
    env takes them as the env in this process does (tensors must not travel as torch shared memory)."""
    name = "dmc:cartpole-balance"
    local = make_env(name, seed=3)
    with EnvWorkers(1) as workers:
        (remote,) = workers.make_envs([(name, 3, False, 0)])
        state = remote.rng_state()
        torch.save(to_storable(state), tmp_path / "rng.pt")
        loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
        assert isinstance(loaded["task"]["keys"], torch.Tensor)
        remote.set_rng_state(loaded)
        local.set_rng_state(loaded)
        assert np.array_equal(remote.reset(), local.reset())
        assert str(remote.rng_state()) == str(local.rng_state())
    local.close()


def _factory_of_a_script(seed, evaluation):  # noqa: ARG001
    return make_env(ENV, seed=seed)


def test_a_factory_of_the_users_script_is_one_sentence_not_a_dead_worker(monkeypatch):
    """A factory defined in the user's __main__ script pickles by reference in the parent but does not exist
    in a worker (its __main__ is not the script): one sentence that says what to do, and the worker lives on
    (the old answer, "the worker stopped ... run the same command again", could never succeed)."""
    import sys

    monkeypatch.setattr(_factory_of_a_script, "__module__", "__main__")
    monkeypatch.setattr(_factory_of_a_script, "__qualname__", "uld_test_factory_of_a_script")
    monkeypatch.setattr(sys.modules["__main__"], "uld_test_factory_of_a_script", _factory_of_a_script, raising=False)
    with EnvWorkers(1) as workers:
        with pytest.raises(UldError, match="cannot load .*python:<module>:<function>.*--env-workers 0"):
            workers.make_envs([(_factory_of_a_script, 0, False, 0)])
        assert workers._workers[0].process.poll() is None
        (env,) = workers.make_envs([(ENV, 0, False, 0)])
        assert env.reset().shape == env.spec.obs_shape

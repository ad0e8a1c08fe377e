"""Runs survive interruption: exact resume, atomic checkpoints, safe loading, refusal of mismatches."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from uld.agents.uld.config import reduced_config
from uld.cli import main
from uld.errors import UldError
from uld.train.checkpoint import Checkpointer
from uld.train.config import TrainConfig, config_differences, config_to_dict, config_to_resume
from uld.train.logger import read_eval_csv
from uld.train.run import train

TINY = reduced_config(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, random_steps=100,
                      target_update_period=20, buffer_capacity=5000)


def _config(out: Path, steps: int, env: str = "gym:Pendulum-v1", **overrides) -> TrainConfig:
    base = dict(env=env, seed=3, steps=steps, eval_every=100, eval_episodes=1, progress=False, out=str(out),
                log_every=50, uld=TINY)
    base.update(overrides)
    return TrainConfig(**base)


def _final_state(run_dir: Path) -> tuple[dict, int]:
    loaded = Checkpointer(run_dir / "checkpoints").load_latest()
    assert loaded is not None
    return loaded


def _returns(run_dir: Path) -> list[tuple[int, list[float]]]:
    return [(row["step"], row["returns"]) for row in read_eval_csv(run_dir / "eval.csv")]


def _assert_same_agent(a: dict, b: dict) -> None:
    for name in ("encoder", "policy", "value", "encoder_target", "value_target"):
        for key, tensor in a["agent"][name].items():
            assert torch.equal(tensor, b["agent"][name][key]), (name, key)


@pytest.mark.parametrize("env", ["dmc:cartpole-balance"])
def test_half_then_resume_equals_straight(tmp_path, env):
    """300 steps straight == 170 steps, stop, same command again for 300: same eval.csv returns and parameters.

    The split falls mid-episode (cartpole's episodes are 500 agent steps), so the episode in progress is rebuilt
    by replaying its actions, and off the evaluation grid (every 250 steps), so the split run's final evaluation
    at 170 must not shift the evaluations after it.
    """
    straight = train(_config(tmp_path / "straight", 300, env, eval_every=250))
    split = tmp_path / "split"
    train(_config(split, 170, env, eval_every=250))
    assert _final_state(split)[1] == 170
    train(_config(split, 300, env, eval_every=250))
    assert [row for row in _returns(split) if row[0] != 170] == _returns(straight)
    (a, step_a), (b, step_b) = _final_state(straight), _final_state(split)
    assert step_a == step_b == 300
    _assert_same_agent(a, b)
    assert torch.equal(a["buffer"]["obs"], b["buffer"]["obs"])
    assert torch.equal(a["buffer"]["priority"], b["buffer"]["priority"])


def test_resume_between_target_copies_restores_every_tensor_of_the_device_replay(tmp_path):
    """Stopped at step 130 (training step 30: ten updates after the last target copy and encoder burst,
    T = 20), resumed to 150: every tensor of the replay (its slots, priorities, maximum priority,
    counters and the sampling generator's state), the agent and its optimizers equal the straight run's."""
    straight = train(_config(tmp_path / "straight", 150))
    split = tmp_path / "split"
    train(_config(split, 130))
    train(_config(split, 150))
    # The split run also evaluated at its stop, step 130 (a run evaluates at its last step), which moved
    # its evaluation env on: evaluations agree up to there, and the training state to the bit.
    assert _returns(straight)[:2] == _returns(split)[:2]
    (a, _), (b, _) = _final_state(straight), _final_state(split)
    _assert_same_agent(a, b)
    for name in ("encoder_optimizer", "value_optimizer", "policy_optimizer"):
        for index, state in a["agent"][name]["state"].items():
            for key, tensor in state.items():
                assert torch.equal(tensor, b["agent"][name]["state"][index][key]), (name, index, key)
    assert a["agent"]["counters"] == b["agent"]["counters"]
    assert a["buffer"].keys() == b["buffer"].keys()
    assert "generator" in a["buffer"] and a["buffer"]["generator"].dtype == torch.uint8
    for key, value in a["buffer"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["buffer"][key]), key
        else:
            assert value == b["buffer"][key], key


def test_options_added_after_a_run_started_agree_at_their_default():
    current = config_to_dict(TrainConfig(agent="uld"))
    stored = config_to_dict(TrainConfig(agent="uld"))
    del stored["uld"]["critic_loss"]  # a run written before the option existed
    assert config_differences(stored, current) == []
    current["uld"]["critic_loss"] = "mse"
    assert config_differences(stored, current) == ["uld.critic_loss (run: None, this command: 'mse')"]
    # An ALM run is not concerned by ULD's options, and the other way round.
    alm_stored, alm_current = config_to_dict(TrainConfig(agent="alm")), config_to_dict(TrainConfig(agent="alm"))
    alm_stored["uld"] = {"batch_size": 7}  # today's runs store every agent's section
    assert config_differences(alm_stored, alm_current) == []
    alm_current["alm"]["batch_size"] = 7
    assert config_differences(alm_stored, alm_current) == ["alm.batch_size (run: 512, this command: 7)"]


def test_an_agent_switch_is_a_difference():
    stored, current = config_to_dict(TrainConfig(agent="uld")), config_to_dict(TrainConfig(agent="alm"))
    assert "agent (run: 'uld', this command: 'alm')" in config_differences(stored, current)


def test_resume_takes_the_resumable_options_from_the_command(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stored = TrainConfig(env="dmc:cartpole-balance", seed=4, steps=100, threads=2, checkpoint_minutes=10.0)
    (run / "config.json").write_text(json.dumps(config_to_dict(stored)))
    config = config_to_resume(TrainConfig(resume=str(run), steps=300, compile=True, threads=1, checkpoint_every=50))
    assert (config.env, config.seed, config.out) == ("dmc:cartpole-balance", 4, str(run))  # the run's own
    assert (config.steps, config.compile, config.threads, config.checkpoint_every) == (300, True, 1, 50)


def test_config_mismatch_is_refused_with_the_difference_named(tmp_path):
    train(_config(tmp_path / "run", 100))
    with pytest.raises(UldError, match=r"seed \(run: 3, this command: 4\)"):
        train(_config(tmp_path / "run", 200, seed=4))
    with pytest.raises(UldError, match=r"env \(run: 'gym:Pendulum-v1'"):
        train(_config(tmp_path / "run", 200, env="dmc:cartpole-balance"))


def test_finished_run_is_not_rerun(tmp_path, capsys):
    run = train(_config(tmp_path / "run", 100))
    before = (run / "eval.csv").read_text()
    train(_config(tmp_path / "run", 100))
    assert "already finished" in capsys.readouterr().err
    assert (run / "eval.csv").read_text() == before


def test_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    run = train(_config(tmp_path / "run", 200, checkpoint_every=100))
    checkpoints = Checkpointer(run / "checkpoints")
    newest = checkpoints.path(200)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    state, step = checkpoints.load_latest()
    assert step == 100
    assert "corrupted" in capsys.readouterr().err
    newest.write_bytes(bytes(data[: len(data) // 3]))  # truncated
    assert checkpoints.load_latest()[1] == 100


def test_checkpoint_loading_executes_no_code(tmp_path):
    """A checkpoint holding a pickled object is refused by weights-only loading, even with a valid checksum."""
    import hashlib

    class Hostile:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    directory = tmp_path / "checkpoints"
    directory.mkdir()
    path = directory / "step-0000000001.pt"
    torch.save({"payload": Hostile()}, path)
    path.with_suffix(".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    assert Checkpointer(directory).load_latest() is None
    assert not (tmp_path / "pwned").exists()


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    checkpoints.save({"x": torch.ones(3)}, 1)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UldError, match=r"could not write .*step-0000000002.pt \(No space left on device\); the checkpoint of step 1 is left as it was; free disk space"):
        checkpoints.save({"x": torch.zeros(3)}, 2)
    monkeypatch.undo()
    state, step = checkpoints.load_latest()
    assert step == 1 and torch.equal(state["x"], torch.ones(3))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000000001.pt",
                                                                          "step-0000000001.sha256"]


def _cli(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "uld.cli", "train", "--env", "gym:Pendulum-v1", "--seed", "3", "--steps", str(steps),
            "--eval-every", "100", "--eval-episodes", "1", "--no-progress", "--log-every", "50", "--out", str(out),
            "--small", "--uld.batch-size", "16", "--uld.hidden-dim", "32", "--uld.zs-dim", "32", "--uld.zsa-dim", "32",
            "--uld.za-dim", "16", "--uld.random-steps", "100", "--uld.target-update-period", "20",
            "--uld.buffer-capacity", "5000", "--threads", "1"]


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError
        time.sleep(0.005)


def stop_with_sigint(command: list[str], run: Path, evaluations: int = 3) -> str:
    """Run `command`, interrupt it with SIGINT once `run`'s eval.csv has `evaluations` rows (training has
    started when they outnumber the random phase's), and return its stderr; it must exit as interrupted."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / "eval.csv").exists() and len(read_eval_csv(run / "eval.csv")) >= evaluations, 300)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT
    return stderr


# ---- stopped with SIGINT, resumed: S = 1 and S = 2 seeds, every way an agent holds its seeds ----------------

ULD_TINY = ["--uld.batch-size", "16", "--uld.hidden-dim", "32", "--uld.zs-dim", "32", "--uld.zsa-dim", "32",
            "--uld.za-dim", "16", "--uld.random-steps", "100", "--uld.target-update-period", "20",
            "--uld.buffer-capacity", "5000"]
AGENT_OPTIONS = {
    "uld": ULD_TINY,  # S = 2: the stacked agent, which batches the seeds itself
    "uld-per-seed": ULD_TINY,  # the registry's stacked builder removed: one ULDAgent per seed
    "design-study": [*ULD_TINY, "--uld.no-model-based-representation"],  # one instance per seed
    "alm": ["--agent", "alm", "--alm.batch-size", "16", "--alm.hidden-dim", "32", "--alm.model-hidden-dim", "32",
            "--alm.latent-dim", "8", "--alm.random-steps", "100"],
}
CASES = [("uld", "4"), ("design-study", "4"), ("alm", "4"),
         ("uld", "1,4"), ("uld-per-seed", "1,4"), ("design-study", "1,4"), ("alm", "1,4")]


def _train_argv(out: Path, agent: str, seeds: str, steps: int) -> list[str]:
    return ["train", "--env", "gym:Pendulum-v1", "--seeds", seeds, "--steps", str(steps), "--eval-every", "100",
            "--eval-episodes", "1", "--no-progress", "--log-every", "50", "--out", str(out), "--small",
            *AGENT_OPTIONS[agent]]


@contextlib.contextmanager
def _holding_seeds(agent: str):
    """For "uld-per-seed": ULD registered without its stacked builder, as any agent that does not batch seeds."""
    with pytest.MonkeyPatch.context() as patch:
        if agent == "uld-per-seed":
            from uld.agents import registry

            patch.setitem(registry._registry(), "uld", dataclasses.replace(registry.get_agent("uld"), build_seeds=None))
        yield


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """(agent, seeds) -> the run directory of each seed of 250 steps straight, each trained once per module."""
    runs: dict[tuple[str, str], list[Path]] = {}

    def straight(agent: str, seeds: str) -> list[Path]:
        if (agent, seeds) not in runs:
            out = tmp_path_factory.mktemp("straight") / agent
            with _holding_seeds(agent):
                assert main(_train_argv(out, agent, seeds, 250)) == 0
            runs[agent, seeds] = [out / f"seed{seed}" for seed in seeds.split(",")]
        return runs[agent, seeds]

    return straight


def _same_run(a: Path, b: Path) -> None:
    """Same evaluations and, bit for bit, the same checkpoint of the last step (wall time aside)."""
    assert _returns(a) == _returns(b)
    (state_a, step_a), (state_b, step_b) = _final_state(a), _final_state(b)
    assert step_a == step_b
    for key in ("agent", "buffer", "metrics", "rng", "env", "eval_env"):
        flat_a, flat_b = _flatten(state_a[key]), _flatten(state_b[key])
        assert len(flat_a) == len(flat_b) and all(_equal(x, y) for x, y in zip(flat_a, flat_b)), key


def _flatten(tree) -> list:
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree, key=str) for leaf in _flatten(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [leaf for value in tree for leaf in _flatten(value)]
    return [tree]


def _equal(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("agent,seeds", CASES, ids=[f"{agent}-S{len(seeds.split(','))}" for agent, seeds in CASES])
def test_sigint_mid_episode_then_resume_dir_and_the_same_command_equal_a_straight_run(
        tmp_path, monkeypatch, capsys, straight_runs, agent, seeds):
    """A real SIGINT at step 150 (mid-episode: Pendulum's are 200 steps) saves every seed's checkpoint and exits
    130; `--resume DIR` continues to 200, the same command again to 250: evaluations, agents, replays, metrics and
    every generator equal the straight run's, for one seed and two, whichever way the agent holds its seeds."""
    from uld.train.trainer import Trainer

    expected = straight_runs(agent, seeds)
    store = Trainer._store

    def store_then_interrupt(self, seed, action, result):
        done = store(self, seed, action, result)
        if seed is self.seeds[-1] and seed.state.step == 150:
            os.kill(os.getpid(), signal.SIGINT)
        return done

    out = tmp_path / "run"
    with _holding_seeds(agent):
        monkeypatch.setattr(Trainer, "_store", store_then_interrupt)
        assert main(_train_argv(out, agent, seeds, 250)) == 128 + signal.SIGINT
        monkeypatch.undo()
        err = capsys.readouterr().err
        assert "interrupted at step 150; a checkpoint was saved" in err and "--resume" in err
        run_dirs = [out / f"seed{seed}" for seed in seeds.split(",")]
        assert [_final_state(d)[1] for d in run_dirs] == [150] * len(run_dirs)
        resume_dir = out if "," in seeds else run_dirs[0]
        assert main(["train", "--resume", str(resume_dir), "--steps", "200", "--no-progress"]) == 0
        assert [_final_state(d)[1] for d in run_dirs] == [200] * len(run_dirs)
        assert main(_train_argv(out, agent, seeds, 250)) == 0
    for a, b in zip(expected, run_dirs):
        _same_run(a, b)


@pytest.mark.parametrize("agent", ["design-study", "alm", "uld-per-seed"])
def test_seed_k_of_a_run_of_one_instance_per_seed_is_the_single_seed_run_of_seed_k(straight_runs, agent):
    """Each instance draws from its own copy of the process's generators, in training and in evaluation
    (ALM samples its latent when acting): seed 4 trained beside seed 1 is, bit for bit, seed 4 alone."""
    _same_run(straight_runs(agent, "1,4")[1], straight_runs("uld" if agent == "uld-per-seed" else agent, "4")[0])


KILLED_INSIDE_A_WRITE = """
import os, signal, sys
from uld.cli import main
from uld.train import files
ready, saves = int(sys.argv[1]), []
def hook(op, path):
    if op == "fsync" and path.name.endswith(".pt.tmp"):
        saves.append(path)
        if len(saves) == 2:  # inside the second checkpoint's write, its bytes on their way to the disk
            os.write(ready, b"x")
            signal.pause()  # until killed
with files.fault_hook(hook):
    sys.exit(main(sys.argv[2:]))
"""


def test_kill_during_checkpoint_write_loses_only_work_since_the_last_checkpoint(tmp_path):
    """uld train, SIGKILLed inside its second checkpoint's write: the hook in the writing place says when it is
    there (on a pipe, an event) and blocks until the kill."""
    run = tmp_path / "run"
    command = _cli(run, 300) + ["--checkpoint-every", "50"]
    ready, inherited = os.pipe()
    process = subprocess.Popen([sys.executable, "-c", KILLED_INSIDE_A_WRITE, str(inherited), *command[3:]],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(inherited,))
    os.close(inherited)
    try:
        assert os.read(ready, 1) == b"x"  # empty: the process ended before it got there
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
        os.close(ready)
    directory = run / "checkpoints"
    assert [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == ["step-0000000100.pt.tmp"]
    state, step = Checkpointer(directory).load_latest()
    assert step == 50 and state["trainer"]["step"] == 50
    # The same command resumes from that checkpoint and removes the leftover.
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "starting the run over" not in result.stderr
    assert not any(p.name.endswith(".tmp") for p in directory.iterdir())
    state, final = Checkpointer(directory).load_latest()
    assert final == state["trainer"]["step"] == 300
    steps = [row["step"] for row in read_eval_csv(run / "eval.csv")]
    assert steps == [0, 100, 200, 300]  # no evaluation written twice


def poison_rewards(monkeypatch, after: int) -> None:
    """Make train() build real envs whose rewards become NaN after `after` steps, as a broken reward function
    would; such an env also checks that no non-finite action ever reaches it."""
    import uld.train.seed_envs as run_module

    real_make_env = run_module.make_env

    class PoisonedRewards:
        def __init__(self, env):
            self.env, self.spec, self.steps = env, env.spec, 0

        def step(self, action):
            assert np.all(np.isfinite(action)), "a non-finite action reached the env"
            obs, reward, terminated, truncated, info = self.env.step(action)
            self.steps += 1
            return obs, (float("nan") if self.steps > after else reward), terminated, truncated, info

        def __getattr__(self, name):
            return getattr(self.env, name)

    monkeypatch.setattr(run_module, "make_env", lambda name, seed, **kw: PoisonedRewards(real_make_env(name, seed, **kw)))


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison_rewards(monkeypatch, after=250)
    # The first non-finite action is caught before the env sees it, whatever --log-every is: a few steps
    # after the first NaN reward (step 251) reaches a sampled batch, long before the next log step.
    with pytest.raises(UldError, match=r"diverged at step .*non-finite.*the checkpoint of step 200 is kept") as error:
        train(_config(tmp_path / "run", 1000, checkpoint_every=100, log_every=10**6))
    diverged_at = int(str(error.value).split("diverged at step ")[1].split(":")[0])
    assert 251 <= diverged_at < 300
    state, step = _final_state(tmp_path / "run")
    assert step == 200
    assert all(torch.isfinite(t).all() for t in state["agent"]["value"].values())

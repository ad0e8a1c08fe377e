"""uld train --seeds: several seeds in one process, each writing a single-seed run directory; exact resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from uld.agents.uld.config import reduced_config
from uld.errors import UldError
from uld.train.checkpoint import Checkpointer
from uld.train.config import TrainConfig, parse_seeds
from uld.train.logger import read_eval_csv
from uld.train.run import train

TINY = reduced_config(batch_size=16, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, random_steps=100,
                      target_update_period=20, buffer_capacity=5000)


def _config(out: Path, steps: int, seeds: str | None = "1,4", **overrides) -> TrainConfig:
    base = dict(env="gym:Pendulum-v1", seeds=seeds, steps=steps, eval_every=100, eval_episodes=1, progress=False,
                out=str(out), log_every=50, uld=TINY)
    base.update(overrides)
    return TrainConfig(**base)


def _returns(run_dir: Path) -> list[tuple[int, list[float]]]:
    return [(row["step"], row["returns"]) for row in read_eval_csv(run_dir / "eval.csv")]


def test_parse_seeds():
    assert parse_seeds("0-9") == list(range(10))
    assert parse_seeds("0,3,5") == [0, 3, 5]
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    assert parse_seeds("3") == [3]
    for bad in ("", "a", "3-1", "1,1", "0-2,2", "0-4294967296", "0-100000"):
        with pytest.raises(UldError):
            parse_seeds(bad)


def test_each_seed_writes_a_single_seed_run_directory(tmp_path):
    run_dirs = train(_config(tmp_path / "runs", 200))
    assert run_dirs == [tmp_path / "runs" / "seed1", tmp_path / "runs" / "seed4"]
    returns = []
    for seed, run_dir in zip((1, 4), run_dirs):
        config = json.loads((run_dir / "config.json").read_text())
        assert config["seed"] == seed and config["seeds"] is None and config["out"] == str(run_dir)
        assert config["steps"] == 200 and config["uld"]["hidden_dim"] == 32
        rows = read_eval_csv(run_dir / "eval.csv")
        assert [row["step"] for row in rows] == [0, 100, 200]
        returns.append([row["returns"] for row in rows])
        assert (run_dir / "tb").is_dir()
        state, step = Checkpointer(run_dir / "checkpoints").load_latest()
        assert step == 200 and state["trainer"]["step"] == 200 and state["agent"]["counters"]["training_step"] == 100
    assert returns[0] != returns[1]  # two seeds, two different runs

    # uld eval reads a seed's directory as it reads a single-seed run's.
    result = subprocess.run([sys.executable, "-m", "uld.cli", "eval", str(run_dirs[1]), "--episodes", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "return" in result.stdout.lower()


def test_default_run_directories_are_the_single_seed_ones():
    from uld.train.config import seed_configs

    configs = seed_configs(TrainConfig(env="dmc:walker-walk", seeds="0-2"))
    assert [c.out for c in configs] == [str(Path("runs/uld/dmc_walker-walk") / f"seed{k}") for k in range(3)]
    assert [c.seed for c in configs] == [0, 1, 2] and configs[0].steps == 500_000


def test_one_seed_is_a_single_seed_run(tmp_path):
    single = train(TrainConfig(env="gym:Pendulum-v1", seed=3, steps=200, eval_every=100, eval_episodes=1,
                               progress=False, out=str(tmp_path / "single"), uld=TINY))
    one = train(_config(tmp_path / "one", 200, seeds="3"))
    assert one == tmp_path / "one" / "seed3"  # where any --seeds list writes seed 3
    assert _returns(single) == _returns(one)
    assert json.loads((one / "config.json").read_text())["seed"] == 3


@pytest.mark.parametrize("env,precision", [("gym:Pendulum-v1", "fp32"), ("gym:CartPole-v1", "fp32"),
                                           ("gym:Pendulum-v1", "bf16")], ids=["continuous", "discrete", "bf16"])
def test_interrupted_mid_episode_resumes_exactly(tmp_path, env, precision, two_seed_straight_run):
    """300 steps straight == 150 steps (mid-episode: Pendulum's are 200), then the same command for 300:
    the same evaluations and bitwise the same parameters, replay and priorities for every seed.
    Discrete actions (CartPole) and bf16 train in one process too, and resume as exactly; they are not the
    session's shared straight run, so they stop at 200 (50 updates after the split, enough for the resumed
    optimizers and replay to show any difference)."""
    if (env, precision) == ("gym:Pendulum-v1", "fp32"):
        straight, total = two_seed_straight_run, 300
    else:
        total = 200
        straight = train(_config(tmp_path / "straight", total, eval_every=150, env=env, precision=precision))
    split = train(_config(tmp_path / "split", 150, eval_every=150, env=env, precision=precision))
    assert [Checkpointer(d / "checkpoints").load_latest()[1] for d in split] == [150, 150]
    if env == "gym:CartPole-v1":  # a seed's episode in progress is replayed from integer actions
        states = [Checkpointer(d / "checkpoints").load_latest()[0] for d in split]
        assert any(state["env"]["actions"] for state in states)
        assert all(not torch.as_tensor(a).is_floating_point() for state in states for a in state["env"]["actions"])
        assert all(state["agent"]["policy"]["mlp.l3.weight"].shape[0] == 2 for state in states)
    if precision == "bf16":  # each seed's run is a bf16 run, as uld eval and a --seed resume read it
        assert all(json.loads((d / "config.json").read_text())["precision"] == "bf16" for d in split)
    split = train(_config(tmp_path / "split", total, eval_every=150, env=env, precision=precision))
    for a_dir, b_dir in zip(straight, split):
        assert _returns(a_dir) == _returns(b_dir)
        (a, step_a), (b, step_b) = (Checkpointer(d / "checkpoints").load_latest() for d in (a_dir, b_dir))
        assert step_a == step_b == total
        for network in ("encoder", "policy", "value", "encoder_target", "value_target", "value_optimizer"):
            flat_a, flat_b = _tensors(a["agent"][network]), _tensors(b["agent"][network])
            assert len(flat_a) == len(flat_b) > 0
            assert all(torch.equal(x, y) for x, y in zip(flat_a, flat_b)), network
        for name in ("obs", "priority"):
            assert torch.equal(a["buffer"][name], b["buffer"][name])
        assert torch.equal(a["agent"]["generator"], b["agent"]["generator"])


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in _tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for value in tree for t in _tensors(value)]
    return []


@pytest.mark.slow  # 158 s on the 2-core machine, twice the single-seed learning test (87 s)
def test_three_seeds_learn_pendulum_reduced_size(tmp_path):
    """3 seeds in one process each pass the single-seed learning test's bar (tests/test_train.py): the same
    budget, reduced-size agent and threshold (random policy: about -1300; solved near -150)."""
    run_dirs = train(TrainConfig(env="gym:Pendulum-v1", seeds="0-2", steps=4000, eval_every=1000, eval_episodes=5,
                                 progress=False, out=str(tmp_path / "learn"), uld=reduced_config(random_steps=1000)))
    for run_dir in run_dirs:
        rows = read_eval_csv(run_dir / "eval.csv")
        assert rows[0]["mean_return"] < -900
        assert max(row["mean_return"] for row in rows[-2:]) > -400, (run_dir.name, rows)


def _stop_during_evaluation(monkeypatch, call: int) -> None:
    """SIGTERM to this process as the call-th many-seed evaluation (0: step 0's) starts."""
    import os
    import signal

    import uld.train.trainer as trainer

    real, calls = trainer.evaluate_seeds, [0]

    def evaluate_seeds(agents, envs, episodes, stop=None):
        calls[0] += 1
        if calls[0] == call + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(agents, envs, episodes, stop)

    monkeypatch.setattr(trainer, "evaluate_seeds", evaluate_seeds)


@pytest.mark.parametrize("stopped_at", [0, 150, 300], ids=["first-evaluation", "midway", "last-evaluation"])
def test_a_stop_during_an_evaluation_abandons_it_and_the_same_command_evaluates_first(tmp_path, monkeypatch, capsys,
                                                                                      stopped_at, two_seed_straight_run):
    """A stop request during the seeds' evaluation waits for one lock-step, not the whole evaluation: every
    seed's checkpoint is saved with the evaluation still to do, and the same command evaluates first, giving
    the straight run's results (also when the stop came during the last evaluation)."""
    import signal

    straight = two_seed_straight_run
    _stop_during_evaluation(monkeypatch, call=stopped_at // 150)
    with pytest.raises(UldError, match=f"interrupted during the evaluation at step {stopped_at}") as stopped:
        train(_config(tmp_path / "run", 300, eval_every=150))
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    run_dirs = [tmp_path / "run" / f"seed{seed}" for seed in (1, 4)]
    for run_dir in run_dirs:  # the abandoned evaluation left no row
        assert [step for step, _ in _returns(run_dir)] == list(range(0, stopped_at, 150))
        state, step = Checkpointer(run_dir / "checkpoints").load_latest()
        assert step == stopped_at and state["trainer"]["evaluation_due"] is True
    monkeypatch.undo()
    capsys.readouterr()
    train(_config(tmp_path / "run", 300, eval_every=150))
    assert "already finished" not in capsys.readouterr().err
    for a_dir, b_dir in zip(straight, run_dirs):
        assert _returns(a_dir) == _returns(b_dir)
    train(_config(tmp_path / "run", 300, eval_every=150))
    assert "already finished 300 steps" in capsys.readouterr().err


def test_a_seed_that_went_on_alone_is_not_redone_by_the_seeds_command(tmp_path, two_seed_straight_run):
    """Seeds 1 and 4 trained together to 150; seed 4 then went on alone to 300. The --seeds command refuses
    to take seed 4 back to 150 (its newer steps would be redone and overwritten) and changes nothing; the
    other seed continues without it. A newer checkpoint the same seed list wrote is redone exactly (a stop
    while every seed's checkpoint was being saved)."""
    train(_config(tmp_path / "run", 150, eval_every=150))
    shutil.copytree(tmp_path / "run", tmp_path / "partial")  # the same 150 steps, for the second part
    seed4 = tmp_path / "run" / "seed4"
    train(_config(seed4, 300, eval_every=150, seeds=None, seed=4))
    files = {path: path.read_bytes() for path in seed4.rglob("*") if path.is_file()}
    with pytest.raises(UldError, match=r"seed 4 went on alone to step 300, past step 150 .*--seeds 1\b"):
        train(_config(tmp_path / "run", 300, eval_every=150))
    assert {path: path.read_bytes() for path in seed4.rglob("*") if path.is_file()} == files
    train(_config(tmp_path / "run", 300, eval_every=150, seeds="1"))
    assert [step for step, _ in _returns(tmp_path / "run" / "seed1")] == [0, 150, 300]
    # A seed added to the list of seeds that have trained: told to train apart, nothing written.
    with pytest.raises(UldError, match=r"seed\(s\) 7 have not started .*\(--seeds 7\)"):
        train(_config(tmp_path / "run", 300, eval_every=150, seeds="1,7"))
    assert not (tmp_path / "run" / "seed7").exists()

    # Both seeds' checkpoints of step 300 written together, then seed 1's removed (as if the process stopped
    # between the two saves): the same command redoes step 300 from 150 for both.
    straight = two_seed_straight_run
    partial = train(_config(tmp_path / "partial", 300, eval_every=150))
    checkpoints = Checkpointer(partial[0] / "checkpoints")
    checkpoints.path(300).unlink()
    checkpoints.path(300).with_suffix(".sha256").unlink()
    train(_config(tmp_path / "partial", 300, eval_every=150))
    for a_dir, b_dir in zip(straight, partial):
        assert _returns(a_dir) == _returns(b_dir)


# ---- the rules of a single-seed run hold for every seed (each failed before one assembly served both) ------

def test_a_seed_with_checkpoints_but_no_config_json_is_refused_and_not_rewritten(tmp_path):
    run_dirs = train(_config(tmp_path / "run", 100))
    (run_dirs[1] / "config.json").unlink()
    eval_csv = (run_dirs[0] / "eval.csv").read_bytes()
    with pytest.raises(UldError, match=r"seed4 holds checkpoints but no config.json"):
        train(_config(tmp_path / "run", 200))
    assert not (run_dirs[1] / "config.json").exists()
    assert (run_dirs[0] / "eval.csv").read_bytes() == eval_csv


def test_a_checkpoint_that_does_not_fit_is_one_sentence_for_several_seeds(tmp_path):
    import hashlib

    run_dirs = train(_config(tmp_path / "run", 100))
    path = Checkpointer(run_dirs[1] / "checkpoints").path(100)
    state = torch.load(path, weights_only=True)
    name = next(iter(state["agent"]["policy"]))
    state["agent"]["policy"][name] = torch.zeros(3)  # a tensor of another shape, under a valid checksum
    torch.save(state, path)
    path.with_suffix(".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    with pytest.raises(UldError, match=r"the checkpoint of step 100 in .*seed4/checkpoints does not fit this run"):
        train(_config(tmp_path / "run", 200))


def test_the_memory_of_every_seeds_replay_is_checked(tmp_path, monkeypatch):
    """Pendulum's slot: 4 bytes each of 3 observation and 1 action floats, and 40 of bookkeeping (56 bytes):
    one replay of 5,000 slots fits in the memory given here, two do not."""
    import uld.replay.frames as frames

    monkeypatch.setattr(frames, "available_memory", lambda: frames.MEMORY_RESERVE + int(1.5 * 5000 * 56))
    with pytest.raises(UldError, match=r"the 2 seeds' replays need .* train fewer seeds in one process"):
        train(_config(tmp_path / "run", 100))
    assert not (tmp_path / "run").exists()
    assert train(_config(tmp_path / "one", 100, seeds="4")) == tmp_path / "one" / "seed4"


def test_seed_and_seeds_together_are_one_sentence(tmp_path, capsys):
    from uld.cli import main

    assert main(["train", "--seed", "0", "--seeds", "1-2", "--steps", "1", "--small", "--no-progress",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--seed and --seeds both name seeds; pass one of them" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def _break_checksums(run_dir: Path) -> None:
    """Every checkpoint of the run keeps its bytes but no longer verifies (its checksum file is wrong)."""
    for checksum in (run_dir / "checkpoints").glob("*.sha256"):
        checksum.write_text("0" * 64 + "\n")


def _files(directory: Path) -> dict[Path, bytes]:
    return {path.relative_to(directory): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def test_restart_and_trust_checkpoint_on_many_seeds_with_one_seeds_checkpoints_corrupted(tmp_path, capsys):
    """Seed 4's checkpoints stop verifying: the --seeds command names seed 4 and changes nothing;
    --trust-checkpoint on seed 4's newest continues both seeds from its step; --restart moves every seed's
    files aside (nothing is deleted) and starts both over."""
    run = tmp_path / "run"
    seed1, seed4 = train(_config(run, 200, checkpoint_every=100))
    _break_checksums(seed4)
    before = _files(run)
    with pytest.raises(UldError, match=r"no checkpoint in .*seed4/checkpoints verifies, .*seed 4's results; nothing "
                                       r"was changed: continue from one you trust with --trust-checkpoint "
                                       r".*seed4/checkpoints/step-0000000200.pt, or pass --restart"):
        train(_config(run, 300, checkpoint_every=100))
    assert _files(run) == before

    trusted = str(seed4 / "checkpoints" / "step-0000000200.pt")
    train(_config(run, 300, checkpoint_every=100, trust_checkpoint=trusted))
    for run_dir in (seed1, seed4):
        assert [step for step, _ in _returns(run_dir)] == [0, 100, 200, 300]
        assert Checkpointer(run_dir / "checkpoints").load_latest()[1] == 300

    _break_checksums(seed4)
    finished = _files(run)
    capsys.readouterr()
    train(_config(run, 100, checkpoint_every=100, restart=True))
    err = capsys.readouterr().err
    for run_dir in (seed1, seed4):
        assert f"the earlier files of {run_dir} were moved into {run_dir}/restarted-" in err
        (aside,) = run_dir.glob("restarted-*")
        kept = _files(aside)
        # Everything of the run is moved aside but the run directory's lock (train/lock.py), which stays.
        assert {path: data for path, data in finished.items() if path.parts[0] == run_dir.name
                and path.name != ".lock"} == {
            Path(run_dir.name) / path: data for path, data in kept.items()}
        assert [step for step, _ in _returns(run_dir)] == [0, 100]


def test_trust_checkpoint_of_no_seed_of_the_run_is_one_sentence(tmp_path):
    train(_config(tmp_path / "run", 100))
    with pytest.raises(UldError, match=r"--trust-checkpoint .* is not in the checkpoints of any seed of this run"):
        train(_config(tmp_path / "run", 200, trust_checkpoint=str(tmp_path / "elsewhere" / "step-0000000100.pt")))


def test_which_seeds_uld_batches_itself():
    """ULD's registration batches two or more seeds in one StackedULD; one seed, --compile (each instance's
    update compiled) and the variant without model-based representations run one ULDAgent per seed."""
    from uld.agents.registry import BuildContext, get_agent
    from uld.agents.stacked import StackedULD
    from uld.envs import make_env

    spec, build_seeds = make_env("gym:Pendulum-v1", seed=0).spec, get_agent("uld").build_seeds
    agent, buffers = build_seeds(spec, TINY, BuildContext(), [1, 4])
    assert isinstance(agent, StackedULD) and agent.seeds == [1, 4] and len(buffers) == 2
    assert build_seeds(spec, TINY, BuildContext(), [4]) is None
    assert build_seeds(spec, TINY, BuildContext(compiled=True), [1, 4]) is None
    no_model = reduced_config(model_based_representation=False)
    assert build_seeds(spec, no_model, BuildContext(), [1, 4]) is None
    assert get_agent("alm").build_seeds is None

"""DR.Q (docs/drq.md): ULD's one update with DR.Q's options. Set back to ULD's values they give ULD's update
bit for bit; each one alone changes it; the InfoNCE term and the n-step masking match hand-computed values;
many seeds in one process update as single seeds; an interrupted run resumes exactly."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from numerics import FP32_EPS, adam_first_step, assert_within
from test_resume import stop_with_sigint
from test_stacked import ATOL, RTOL, STEP_ULPS, _fill, _term_scale
from test_sync_free import VECTOR as SYNC_VECTOR
from test_sync_free import _filled_buffer, _guard_updates
from uld.agents.drq.config import DRQConfig
from uld.agents.drq.config import reduced_config as drq_small
from uld.agents.registry import get_agent
from uld.agents.stacked import StackedULD, make_buffers
from uld.agents.uld import losses
from uld.agents.uld.agent import ULDAgent, make_buffer
from uld.agents.uld.config import reduced_config as uld_small
from uld.analysis.report import ReportConfig, write_report
from uld.cli import main
from uld.envs.base import EnvSpec
from uld.train.checkpoint import Checkpointer
from uld.train.config import TrainConfig
from uld.train.logger import read_eval_csv

VECTOR = EnvSpec("test:vector", (5,), 2, discrete=False, max_episode_steps=100)
PIXELS = EnvSpec("test:pixels", (3, 36, 36), 2, discrete=False, max_episode_steps=100, pixels=True)
DISCRETE = EnvSpec("test:discrete", (5,), 4, discrete=True, max_episode_steps=100)
SIZES = dict(batch_size=8, hidden_dim=32, zs_dim=32, zsa_dim=32, za_dim=16, num_bins=17, target_update_period=2,
             buffer_capacity=400)
# DR.Q's options with ULD's values: DR.Q's config turned back into ULD's, field by field.
ULD_VALUES = dict(done_weight=0.1, infonce_weight=0.0, fade=1.0, reward_scaling=True, value_grad_clip=20.0,
                  pre_activation_weight=1e-5, encoder_hidden_dim=None, encoder_lr=1e-4, weight_decay=1e-4)


def test_drq_defaults_are_the_spec_values():
    """spec/DRQ.md section 5: the values DR.Q changes, and ULD's for everything else."""
    drq = DRQConfig()
    assert (drq.encoder_width, drq.hidden_dim, drq.encoder_lr, drq.value_lr, drq.policy_lr, drq.weight_decay) == \
        (750, 512, 3e-4, 3e-4, 3e-4, 1e-2)
    assert (drq.infonce_weight, drq.infonce_temperature, drq.infonce_masking, drq.done_weight) == \
        (0.1, 0.1, "alive-fraction", 0.0)
    assert (drq.fade, drq.fade_floor, drq.reward_scaling, drq.value_grad_clip, drq.pre_activation_weight) == \
        (0.9999, 0.1, False, None, 0.0)
    uld_fields = {f.name: getattr(uld_small(), f.name) for f in dataclasses.fields(uld_small())}
    assert {name: getattr(dataclasses.replace(drq_small(), **ULD_VALUES), name) for name in uld_fields} == uld_fields
    assert drq_small().encoder_width == 188  # --small keeps DR.Q's encoder about 750 / 512 wider


def _updated(spec: EnvSpec, config, iterations: int = 3) -> list[torch.Tensor]:
    """Parameters and priorities after `iterations` updates (one with an encoder burst, target copies) from
    torch seed 0 on a replay with terminations."""
    torch.manual_seed(0)
    agent = ULDAgent(spec, config)
    buffer = make_buffer(spec, config, seed=0)
    _fill([buffer], spec)
    for _ in range(iterations):
        agent.update(buffer)
    return [p.detach().clone() for m in (agent.encoder, agent.value, agent.policy) for p in m.parameters()] + \
        [buffer.priority.clone()]


@pytest.mark.parametrize("spec", [VECTOR, PIXELS, DISCRETE], ids=["vector", "pixels", "discrete"])
def test_drq_with_uld_values_is_uld_bit_for_bit(spec):
    """The shared code is shared: DR.Q's config with every DR.Q option at ULD's value updates exactly as ULD."""
    uld = _updated(spec, uld_small(**SIZES))
    drq = _updated(spec, drq_small(**SIZES, **ULD_VALUES))
    assert len(uld) == len(drq) and all(torch.equal(a, b) for a, b in zip(uld, drq))


@pytest.mark.parametrize("option", sorted(ULD_VALUES))
def test_each_drq_option_changes_the_update(option):
    """Each of DR.Q's values, alone among ULD's, changes the parameters after three updates: no option is ignored."""
    uld = _updated(VECTOR, uld_small(**SIZES, value_grad_clip=1e-3))  # a clip that bites, so that removing it shows
    values = {**ULD_VALUES, "value_grad_clip": 1e-3, option: getattr(drq_small(), option)}
    drq = _updated(VECTOR, drq_small(**SIZES, **values))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(uld, drq))


# ---- InfoNCE (spec/DRQ.md, D2) ------------------------------------------------------------------

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
K = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])


def _hand_info_nce() -> list[float]:
    """cos(q_b, k_j) / 0.1: row 0 (10, 0, -10), row 1 (0, 10, 0), row 2 (s, s, -s) with s = 10 / sqrt 2;
    c_b = log(sum_j exp(S_bj)) - S_bb."""
    s = 10 / math.sqrt(2)
    rows = [(10.0, 0.0, -10.0), (0.0, 10.0, 0.0), (s, s, -s)]
    return [math.log(sum(math.exp(x) for x in row)) - row[b] for b, row in enumerate(rows)]


def test_info_nce_hand_computed():
    """Tolerance: fp32 logits up to 10 (ulp 1e-6) through log-softmax; 1e-5 absolute covers a few ulps."""
    c = losses.info_nce(Q, K, temperature=0.1)
    assert c.tolist() == pytest.approx(_hand_info_nce(), abs=1e-5)
    assert c[2].item() == pytest.approx(math.log(2 * math.exp(20 / math.sqrt(2)) + 1), abs=1e-5)


class _ShiftEncoder(torch.nn.Module):
    """A unit-test encoder: f(s) = s, g(zs, a) = zs + a, and the latent model predicts zsa as the next zs."""

    def f(self, obs):
        return obs

    def g(self, zs, action):
        return zs + action

    def predict(self, zsa):
        return zsa[..., :1] * 0, zsa, torch.zeros(*zsa.shape[:-1], 3)


@pytest.mark.parametrize("masking", ["alive-fraction", "per-sample"])
def test_info_nce_in_the_encoder_loss_with_a_termination(masking):
    """Two unroll steps on three rows, row 1 terminating at step 0; zero actions, so both steps' queries are Q
    and both keys K: c_0 = c_1 = c (hand-computed). The released masking scales step 1's batch mean by the
    alive fraction 2/3; per-sample masking drops row 1's term: (c_0 + c_2) / 3.
    Tolerance: as test_info_nce_hand_computed, for a sum of five such terms."""
    c = _hand_info_nce()
    mean = sum(c) / 3
    expected = mean + (mean * 2 / 3 if masking == "alive-fraction" else (c[0] + c[2]) / 3)
    terminated = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    loss, metrics = losses.encoder_loss(
        _ShiftEncoder(), Q, torch.zeros(3, 2, 2), torch.zeros(3, 2), terminated, torch.stack([K, K], dim=1),
        bins=torch.tensor([-1.0, 0.0, 1.0]), dynamics_weight=0.0, reward_weight=0.0, done_weight=0.0, use_done=False,
        infonce_weight=1.0, infonce_temperature=0.1, infonce_masking=masking)
    assert loss.item() == pytest.approx(expected, abs=5e-5)
    assert metrics["encoder/infonce"].item() == pytest.approx(expected, abs=5e-5)


def test_cumulative_n_step_masking_with_a_termination_in_the_middle():
    """spec/DRQ.md D5 on r = (1, 2, 4), terminated at step 1: R = 1 + 0.99 * 2 (the terminal step's reward
    counts, the one after it does not), no bootstrap; MR.Q's per-step mask would give 1 + 0.99^2 * 4.
    DR.Q's target (no reward scaling) is R. Tolerance: fp32 sums of three terms of magnitude <= 4."""
    R, ND = losses.n_step_return(torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[0.0, 1.0, 0.0]]), 0.99)
    assert R.item() == pytest.approx(1 + 0.99 * 2, abs=1e-6) and ND.item() == 0
    y = losses.critic_target(R, ND, torch.tensor([[50.0, 60.0]]), discount=0.99, horizon=3, reward_scale=1.0,
                             target_reward_scale=1.0)
    assert y.item() == pytest.approx(2.98, abs=1e-6)


# ---- many seeds, resume, registration -------------------------------------------------------

@pytest.mark.numerics
@pytest.mark.parametrize("spec", [VECTOR, PIXELS], ids=["vector", "pixels"])
def test_drq_seed_k_of_many_updates_as_a_single_seed(spec):
    """StackedULD with DR.Q's config (faded replays, InfoNCE, no clip): each seed's encoder and value/policy
    updates equal a single-seed DR.Q agent's, with tests/test_stacked.py's bounds: batched matmuls and grouped
    convolutions sum in another order, so metrics and first-step gradients agree to fp32 reordering (RTOL of
    the size of their terms), and the AdamW step is compared against the step each copy's own gradient implies
    (an entry whose gradient is rounding noise moves by up to lr in a direction rounding chose). The InfoNCE's
    8 x 8 logits add one more matmul of the same kind."""
    config = drq_small(**SIZES)
    seeds = [3, 5, 7]
    rtol = RTOL["fp32"]
    stacked = StackedULD(spec, config, seeds)
    buffers = make_buffers(spec, config, seeds, "cpu")
    single_buffers = make_buffers(spec, config, seeds, "cpu")
    _fill(buffers, spec)
    _fill(single_buffers, spec)
    assert all(buffer.tree is buffer._fade for buffer in buffers)
    singles = []
    for k in range(len(seeds)):
        agent = ULDAgent(spec, config, cuda_graphs=False)
        agent.load_state_dict(stacked.seed_state_dict(k))
        singles.append(agent)

    def close_metrics(stacked_metrics, single_metrics, k):
        for name, value in single_metrics.items():
            assert_within(name, stacked_metrics[name][k].double() - value.double(),
                          ATOL + rtol * _term_scale(name, single_metrics, None))

    def close_step(network, agent, k, lr):
        for name, p in getattr(agent, network).named_parameters():
            q = stacked.params[f"{network}.{name}"]
            assert_within(f"{network} grad {name}", q.grad[k].double() - p.grad.double(),
                          ATOL + rtol * p.grad.abs().max().item())
            predicted = -lr * (adam_first_step(q.grad[k]) - adam_first_step(p.grad))
            assert_within(f"{network} {name}", q[k].detach().double() - p.detach().double() - predicted,
                          STEP_ULPS * FP32_EPS * (p.detach().double().abs() + lr))

    states = [g.get_state() for g in stacked.generators]
    metrics = stacked.update_encoder(*stacked.encoder_inputs(buffers))
    assert "encoder/infonce" in metrics
    for k, (agent, buffer) in enumerate(zip(singles, single_buffers)):
        torch.set_rng_state(states[k])
        close_metrics(metrics, agent._update_encoder(buffer), k)
        close_step("encoder", agent, k, config.encoder_lr)
    states = [g.get_state() for g in stacked.generators]
    metrics = stacked.update_value_and_policy(buffers, *stacked.value_policy_inputs(buffers))
    for k, (agent, buffer) in enumerate(zip(singles, single_buffers)):
        torch.set_rng_state(states[k])
        close_metrics(metrics, agent._update_value_and_policy(buffer), k)
        close_step("value", agent, k, config.value_lr)
        close_step("policy", agent, k, config.policy_lr)
        weights = buffer.sampling_weight(torch.arange(400))
        assert_within("faded weights", buffers[k].sampling_weight(torch.arange(400)).double() - weights.double(),
                      ATOL + rtol * weights.abs().max().item())


def test_several_seeds_train_drq_in_one_process(tmp_path):
    """--seeds accepts DR.Q (ULD's update): each seed writes a DR.Q run directory whose replay holds the fade ages."""
    config = TrainConfig(agent="drq", env="gym:Pendulum-v1", seeds="0-2", steps=150, eval_every=150,
                         eval_episodes=1, progress=False, out=str(tmp_path / "runs"),
                         agent_config=drq_small(**{**SIZES, "random_steps": 100, "buffer_capacity": 5000}))
    assert get_agent("drq").build_seeds is get_agent("uld").build_seeds  # DR.Q batches seeds as ULD does
    from uld.train.run import train

    run_dirs = train(config)
    assert [d.name for d in run_dirs] == ["seed0", "seed1", "seed2"]
    for run_dir in run_dirs:
        state, step = Checkpointer(run_dir / "checkpoints").load_latest()
        assert step == 150 and state["buffer"]["fade"]["clock"] == 150
        assert state["agent"]["encoder"]["state_encoder.mlp.l1.weight"].shape[0] == 188


def _cli(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "uld.cli", "train", "--agent", "drq", "--env", "gym:Pendulum-v1", "--seed", "3",
            "--steps", str(steps), "--eval-every", "100", "--eval-episodes", "1", "--no-progress", "--out", str(out),
            "--small", "--drq.batch-size", "16", "--drq.hidden-dim", "32", "--drq.encoder-hidden-dim", "48",
            "--drq.zs-dim", "32", "--drq.zsa-dim", "32", "--drq.za-dim", "16", "--drq.random-steps", "100",
            "--drq.target-update-period", "20", "--drq.buffer-capacity", "5000", "--drq.fade", "0.99", "--threads", "1"]


def test_sigint_then_the_same_command_resumes_drq_exactly(tmp_path):
    """A DR.Q run stopped by SIGINT mid-run and continued equals the run straight through: evaluations,
    parameters, priorities and the fade ages (fade 0.99 so that slots reach the floor within the run)."""
    straight = tmp_path / "straight"
    assert main(_cli(straight, 400)[3:]) == 0  # in this process: the same command without a second interpreter
    run = tmp_path / "interrupted"
    assert "Traceback" not in stop_with_sigint(_cli(run, 400), run)
    a, _ = Checkpointer(run / "checkpoints").load_latest()
    assert 200 <= a["trainer"]["step"] < 400
    subprocess.run(_cli(run, 400), check=True, capture_output=True, timeout=600)
    rows = [[(r["step"], r["returns"]) for r in read_eval_csv(d / "eval.csv")] for d in (straight, run)]
    assert rows[0] == rows[1]
    (a, step_a), (b, step_b) = (Checkpointer(d / "checkpoints").load_latest() for d in (straight, run))
    assert step_a == step_b == 400
    for name in ("encoder", "policy", "value", "encoder_target", "value_target"):
        assert all(torch.equal(t, b["agent"][name][key]) for key, t in a["agent"][name].items()), name
    for name in ("priority", "valid"):
        assert torch.equal(a["buffer"][name], b["buffer"][name])
    assert torch.equal(a["buffer"]["fade"]["birth"], b["buffer"]["fade"]["birth"])
    assert a["buffer"]["fade"]["clock"] == b["buffer"]["fade"]["clock"] == 400


def test_drq_updates_with_the_faded_replay_read_nothing_back_to_the_host(monkeypatch):
    """DR.Q's draws (two sum trees), InfoNCE and unclipped steps are sync-free, as ULD's, so CUDA graphs replay them;
    the adds between updates age the slots (the faded weights change) and the next update still reads nothing."""
    torch.manual_seed(0)
    config = drq_small(**{**SIZES, "random_steps": 0, "buffer_capacity": 200, "fade": 0.9})
    agent = ULDAgent(SYNC_VECTOR, config)
    buffer = _filled_buffer(SYNC_VECTOR, config)
    assert buffer.tree is buffer._fade
    calls = _guard_updates(monkeypatch, agent)
    weights = buffer.sampling_weight(torch.arange(200)).clone()
    for _ in range(3):
        metrics = agent.update(buffer)
        obs = np.zeros(SYNC_VECTOR.obs_shape, np.float32)
        buffer.add(obs, np.zeros(SYNC_VECTOR.action_dim, np.float32), 0.0, obs, False, False)
    assert calls == {"_update_encoder": 4, "_update_value_and_policy": 3}
    assert all(torch.isfinite(value).all() for value in metrics.values())
    assert not torch.equal(buffer.sampling_weight(torch.arange(200)), weights)


def test_drq_is_registered_for_vectors_pixels_and_discrete_actions():
    agent = get_agent("drq")
    assert agent.config is DRQConfig and agent.title == "DR.Q"
    assert agent.pixels and agent.discrete_actions and "no-reward-scaling" not in agent.design_study
    from uld.train.export import policy_module

    torch.manual_seed(0)
    drq = ULDAgent(VECTOR, drq_small(**SIZES))
    obs = torch.tensor(np.ones((2, 5), np.float32))
    assert torch.equal(policy_module(drq, "drq")(obs), torch.tanh(drq.policy.mlp(drq.encoder.f(obs))))


# ---- reports against each agent's own paper --------------------------------------------------------

def _run(run_dir: Path, agent: str, seed: int, returns: list[float]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"env": "dmc:cheetah-run", "seed": seed, "steps": 20,
                                                     "agent": agent}))
    (run_dir / "eval.csv").write_text("step,mean_return,returns,wall_seconds\n" + "".join(
        f"{i * 10},{value!r},{value!r},{i}.0\n" for i, value in enumerate(returns)))


def test_report_compares_each_agent_with_its_own_papers_curves(tmp_path):
    """A sweep of ULD and DR.Q runs with --reference at a root of published curves: ULD's runs are compared with
    mrq/ (returns 100 + seed), DR.Q's with drq/ (returns 500 + seed), and report.md sets both side by side."""
    sweep = tmp_path / "sweep"
    for seed in range(2):
        _run(sweep / "uld" / f"seed{seed}", "uld", seed, [0.0, 50.0, 110.0])
        _run(sweep / "drq" / f"seed{seed}", "drq", seed, [0.0, 50.0, 110.0])
    root = tmp_path / "reference"
    for folder, base in (("mrq", 100.0), ("drq", 500.0), ("alm", 900.0)):
        (root / folder).mkdir(parents=True)
        (root / folder / "dmc.csv").write_text("env,step,seed,return\n" + "".join(
            f"Dmc-cheetah-run,{step},{seed},{base + seed}\n" for step in (0, 20) for seed in range(2)))

    path = write_report(ReportConfig(str(sweep), reference=str(root), reps=50))

    verdicts = {}
    for agent in ("uld", "drq"):
        with open(sweep / "report" / agent / "verdicts.csv") as f:
            rows = list(csv.DictReader(f))
        verdicts[agent] = [(row["step"], float(row["reference_mean"]), row["verdict"]) for row in rows]
    assert verdicts["uld"] == [("0", 100.5, "below"), ("10", 100.5, "below"), ("20", 100.5, "above")]
    assert verdicts["drq"] == [("0", 500.5, "below"), ("10", 500.5, "below"), ("20", 500.5, "below")]
    text = path.read_text()
    assert "ULD: compared step" in text and "DR.Q: compared step" in text
    assert "| Dmc-cheetah-run | 20 | 110.0 [110.0, 110.0] | 100.5 (20) | above | 20 | 110.0 [110.0, 110.0] | " \
           "500.5 (20) | below |" in text
    assert (sweep / "report" / "curves" / "Dmc-cheetah-run.png").stat().st_size > 0
    # One agent alone keeps the one-report layout, still against its own paper's curves.
    single = write_report(ReportConfig(str(sweep / "drq"), reference=str(root), reps=50))
    assert single == sweep / "drq" / "report" / "report.md" and "reference (drq)" in single.read_text()

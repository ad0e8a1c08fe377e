"""`uld export`: the exported model (ONNX through onnxruntime, TorchScript through torch.jit.load) gives
the actions of uld.load(run).act on a batch of real observations, for vector and pixel inputs, continuous
and discrete actions; and it runs in a Python that cannot import uld."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import uld
from numerics import assert_same_argmax, assert_within, network_rounding_bound
from uld.agents.alm.config import reduced_config as reduced_alm
from uld.agents.uld.config import reduced_config
from uld.cli import main
from uld.envs import atari, dmc, make_env
from uld.train.export import METADATA_KEY, export_policy
from uld.train.run import TrainConfig, train

STEPS = 20  # below random_steps (100): the checkpoints hold untrained agents
TINY = reduced_config(batch_size=16, hidden_dim=64, zs_dim=64, zsa_dim=64, za_dim=16, random_steps=100,
                      target_update_period=20, buffer_capacity=5000)


def _untrained(out: Path, env: str, **uld_options) -> Path:
    """A run directory whose checkpoint holds an untrained agent: fewer steps than the random-action phase, so
    no update runs. Only the file format and the computation are under test here, not what training learnt."""
    return train(TrainConfig(env=env, seed=3, steps=STEPS, eval_every=STEPS, eval_episodes=1, progress=False,
                             out=str(out), small=True, uld=reduced_config(**{**TINY.__dict__, **uld_options})))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    patch = pytest.MonkeyPatch()
    # 40-step episodes keep the evaluations short (DMC rendering costs 20-45 ms a frame).
    patch.setattr(dmc, "MAX_EPISODE_STEPS", 40)
    patch.setattr(atari, "MAX_EPISODE_FRAMES", 160)
    try:
        return {
            "vector": _untrained(root / "cartpole-balance", "dmc:cartpole-balance"),
            "discrete": _untrained(root / "CartPole", "gym:CartPole-v1"),
            "pixels": _untrained(root / "pixels", "dmc-pixels:cartpole-balance", batch_size=4, buffer_capacity=1000),
            "atari": _untrained(root / "atari", "atari:Pong", batch_size=4, buffer_capacity=1000),
            "alm": train(TrainConfig(agent="alm", env="dmc:cartpole-balance", seed=3, steps=STEPS, eval_every=STEPS,
                                     eval_episodes=1, progress=False, out=str(root / "alm"), small=True,
                                     alm=reduced_alm(latent_dim=16, hidden_dim=64, model_hidden_dim=64,
                                                     batch_size=16, random_steps=100, seq_len=2))),
        }
    finally:
        patch.undo()


def _observations(env_name: str, count: int) -> np.ndarray:
    """Real observations: `count` steps of the env under random actions (episodes restart when they end)."""
    env = make_env(env_name, seed=11)
    obs, batch = env.reset(), []
    for _ in range(count):
        batch.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.sample_action())
        if terminated or truncated:
            obs = env.reset()
    env.close()
    return np.stack(batch)


def _pre_activations(trained, obs: np.ndarray) -> torch.Tensor:
    """The policy's pre-activations in torch (tanh of them is the continuous action, argmax the discrete)."""
    agent = trained.agent
    with torch.no_grad():
        obs_t = torch.from_numpy(obs)
        return agent.policy(agent.encoder.f(obs_t if agent.spec.pixels else obs_t.float()))[1].double()


def _rounding_bound(pre: torch.Tensor) -> torch.Tensor:
    """How far another runtime's fp32 pre-activations may be from torch's, per row: at most 8 layers (f: 4
    convolutions and a Linear, or 3 Linears; pi: 3 Linears) of at most 32 x 7 x 7 + 1 terms; tanh is
    1-Lipschitz, so it bounds the actions too."""
    return network_rounding_bound(pre, layers=8, terms=32 * 7 * 7 + 1)


def _onnx_actions(path: Path, obs: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["obs"]
    return session.run(["action"], {"obs": obs})[0]


def _torchscript_actions(path: Path, obs: np.ndarray) -> np.ndarray:
    return torch.jit.load(str(path)).forward(torch.from_numpy(obs)).numpy()


@pytest.mark.numerics
@pytest.mark.parametrize("kind, count", [("vector", 64), ("discrete", 64), ("pixels", 12), ("atari", 24)])
def test_exported_actions_equal_the_agents(runs, tmp_path, kind, count):
    """vector: dmc:cartpole-balance (continuous); discrete: gym:CartPole-v1; pixels: dmc-pixels (uint8
    frame stacks, continuous); atari: Pong (uint8 frame stacks, discrete)."""
    trained = uld.load(runs[kind])
    spec = trained.agent.spec
    obs = _observations(trained.config.env, count)
    assert obs.dtype == (np.uint8 if spec.pixels else np.float32) and obs.shape[1:] == spec.obs_shape
    expected = np.stack([np.asarray(trained.act(o)) for o in obs])
    pre = _pre_activations(trained, obs)
    bound = _rounding_bound(pre)
    for suffix, run_model in ((".onnx", _onnx_actions), (".pt", _torchscript_actions)):
        path = export_policy(runs[kind], tmp_path / f"policy{suffix}")
        actions = run_model(path, obs)
        if spec.discrete:
            assert actions.dtype == np.int64 and actions.shape == (count,)
            assert_same_argmax(f"{kind}{suffix}", actions, pre, bound)
            assert_same_argmax(f"{kind} act", expected, pre, bound)
            assert np.unique(actions).size > 1  # a policy, not a constant
        else:
            assert actions.dtype == np.float32 and actions.shape == (count, spec.action_dim)
            assert_within(f"{kind}{suffix}", torch.from_numpy(actions).double() - torch.tanh(pre), bound[:, None])
            assert_within(f"{kind} act", torch.from_numpy(expected).double() - torch.tanh(pre), bound[:, None])
            assert np.abs(actions).max() <= 1 and np.unique(actions.round(4)).size > 1  # a policy, not a constant


def test_alm_exports_the_policy_on_the_mean_latent(runs, tmp_path):
    """ALM evaluates on a sampled latent; the exported deterministic policy acts on the encoder's mean."""
    trained = uld.load(runs["alm"])
    obs = _observations("dmc:cartpole-balance", 32)
    with torch.no_grad():
        expected = trained.agent.actor(trained.agent.encoder(torch.from_numpy(obs)).mean).numpy()
    for suffix, run_model in ((".onnx", _onnx_actions), (".pt", _torchscript_actions)):
        actions = run_model(export_policy(runs["alm"], tmp_path / f"alm{suffix}"), obs)
        assert actions.shape == (32, 1)
        np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-5)
    assert np.unique(expected.round(4)).size > 1


def test_metadata_describes_the_model(runs, tmp_path):
    import onnx

    onnx_path = export_policy(runs["discrete"], tmp_path / "policy.onnx")
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    meta = json.loads(props[METADATA_KEY])
    assert meta["env"] == "gym:CartPole-v1" and meta["step"] == STEPS and meta["agent"] == "uld"
    assert meta["observation"] == {"shape": [4], "dtype": "float32", "batched": True}
    assert meta["action"]["discrete"] and meta["action"]["count"] == 2
    extra = {METADATA_KEY: ""}
    torch.jit.load(str(export_policy(runs["pixels"], tmp_path / "policy.pt")), _extra_files=extra)
    assert json.loads(extra[METADATA_KEY])["observation"]["dtype"] == "uint8"


@pytest.mark.numerics
def test_exported_models_run_without_uld(runs, tmp_path):
    obs = _observations("dmc:cartpole-balance", 8)
    np.save(tmp_path / "obs.npy", obs)
    assert main(["export", str(runs["vector"]), "--out", str(tmp_path / "policy.onnx")]) == 0
    assert main(["export", str(runs["vector"]), "--out", str(tmp_path / "policy.pt")]) == 0
    # A fresh interpreter in which `import uld` fails: only numpy, onnxruntime and torch.
    code = (
        "import sys; sys.modules['uld'] = None\n"
        "import numpy as np, onnxruntime, torch\n"
        "obs = np.load('obs.npy')\n"
        "a = onnxruntime.InferenceSession('policy.onnx').run(None, {'obs': obs})[0]\n"
        "b = torch.jit.load('policy.pt')(torch.from_numpy(obs)).numpy()\n"
        "np.save('actions.npy', np.stack([a, b]))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environ, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    actions = np.load(tmp_path / "actions.npy")
    pre = _pre_activations(uld.load(runs["vector"]), obs)
    for name, exported in zip(("onnx", "torchscript"), actions):
        assert_within(f"without uld, {name}", torch.from_numpy(exported).double() - torch.tanh(pre),
                      _rounding_bound(pre)[:, None])


def test_export_errors_are_one_sentence(runs, tmp_path, capsys, monkeypatch):
    assert main(["export", str(runs["vector"]), "--out", str(tmp_path / "policy.h5")]) == 2
    assert "must end in .onnx (ONNX) or .pt (TorchScript)" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "policy.onnx")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    # A run directory's files are never replaced (its checkpoints are .pt files too), nor an existing model
    # without --overwrite; a path that cannot be written is one sentence too.
    checkpoint = sorted((runs["vector"] / "checkpoints").glob("step-*.pt"))[-1]
    before = checkpoint.read_bytes()
    assert main(["export", str(runs["vector"]), "--out", str(checkpoint)]) == 2
    assert "which holds a uld run's checkpoints" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before
    existing = tmp_path / "existing.pt"
    existing.write_bytes(b"keep")
    assert main(["export", str(runs["vector"]), "--out", str(existing)]) == 2
    assert "exists; pass another file name, or --overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep"
    assert main(["export", str(runs["vector"]), "--out", str(existing), "--overwrite"]) == 0
    assert existing.read_bytes() != b"keep"
    capsys.readouterr()
    (tmp_path / "a_dir.onnx").mkdir()
    (tmp_path / "a_file").write_text("")
    for out, message in ((tmp_path / "a_dir.onnx", "is a directory"), (tmp_path / "a_file" / "p.onnx", "which is a file"),
                         (Path("/proc/uld-policy.onnx"), "cannot be written")):
        assert main(["export", str(runs["vector"]), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the export extra were not installed
    assert main(["export", str(runs["vector"]), "--out", str(tmp_path / "policy.onnx")]) == 2
    assert capsys.readouterr().err.strip() == \
        "uld: exporting to ONNX needs onnx and onnxscript: pip install 'uld[export]'"

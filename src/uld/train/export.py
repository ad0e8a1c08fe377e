"""`uld export`: a run's deterministic policy as one standalone model file, ONNX or TorchScript.

The model takes a batch of observations exactly as uld's env gives them (float32 vectors, or uint8
frame stacks (B, C, H, W) that the model scales itself) and returns the evaluation action: for
continuous actions the policy's tanh output in [-1, 1] (B, action_dim), float32; for discrete
actions the index of the largest policy logit (B,), int64. Running it needs onnxruntime (``.onnx``)
or torch alone (``.pt``, ``torch.jit.load``): neither uld nor its training code.

ULD's evaluation action is the policy on f(obs), which the model computes in full. ALM's evaluation
samples the latent z from the encoder's Gaussian; a standalone deterministic policy takes its mean
instead, so an exported ALM policy acts on the mean latent (documented in README, "Exporting a policy").
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from uld.errors import UldError
from uld.train import files
from uld.train.lock import locked_file

FORMATS = {".onnx": "ONNX", ".pt": "TorchScript"}
METADATA_KEY = "uld"
"""ONNX metadata_props key, and TorchScript extra file name, of the model's description (JSON)."""


class ULDPolicy(nn.Module):
    """ULD's evaluation action: tanh(pi(f(obs))), or argmax of pi's logits (docs/algorithm.md, difference 5)."""

    def __init__(self, state_encoder: nn.Module, policy_mlp: nn.Module, discrete: bool, pixels: bool):
        super().__init__()
        self.state_encoder, self.policy_mlp = state_encoder, policy_mlp
        self.discrete, self.pixels = discrete, pixels

    def forward(self, obs: Tensor) -> Tensor:
        zs = self.state_encoder(obs if self.pixels else obs.float())  # uint8 frames: the encoder scales them
        pre = self.policy_mlp(zs)
        return pre.argmax(-1) if self.discrete else torch.tanh(pre)


class ALMPolicy(nn.Module):
    """ALM's action on the mean of the encoder's latent: tanh actor output."""

    def __init__(self, encoder: nn.Module, actor: nn.Module):
        super().__init__()
        self.encoder, self.actor = encoder, actor

    def forward(self, obs: Tensor) -> Tensor:
        return self.actor(self.encoder(obs.float()).mean)


def policy_module(agent, name: str) -> nn.Module:
    """The deterministic policy of an agent as a module of its own (copies of the networks, on the CPU)."""
    if name in ("uld", "drq"):  # DR.Q is ULD's agent with another configuration
        spec = agent.spec
        module = ULDPolicy(agent.encoder.state_encoder, agent.policy.mlp, spec.discrete, spec.pixels)
    elif name == "alm":
        module = ALMPolicy(agent.encoder, agent.actor)
    else:
        raise UldError(f"uld export knows the agents uld, drq and alm, not {name!r}")
    return copy.deepcopy(module).cpu().eval().requires_grad_(False)


@contextmanager
def _portable_ops() -> Iterator[None]:
    """Layers computed by F.linear while exporting: the oneDNN kernel (agents/linear.py) is a CPU-only
    op that neither ONNX nor another machine's TorchScript runtime has."""
    from uld.agents.linear import set_onednn

    previous = set_onednn(False)
    try:
        yield
    finally:
        set_onednn(previous)


def example_observations(spec, batch: int = 2) -> Tensor:
    """A batch of observations of the env's shape and dtype (zeros: exporting only needs the shape)."""
    dtype = torch.uint8 if spec.pixels else torch.float32
    return torch.zeros((batch, *spec.obs_shape), dtype=dtype)


def describe(config, spec, step: int) -> dict:
    """What the exported model is, stored inside it as JSON."""
    return {
        "agent": config.agent, "env": config.env, "seed": config.seed, "step": step,
        "observation": {"shape": list(spec.obs_shape), "dtype": "uint8" if spec.pixels else "float32",
                        "batched": True},
        "action": ({"discrete": True, "dtype": "int64", "meaning": "index of the action", "count": spec.action_dim}
                   if spec.discrete else
                   {"discrete": False, "dtype": "float32", "dim": spec.action_dim,
                    "meaning": "in [-1, 1]; uld's env maps it affinely onto the env's bounds"}),
    }


def holds_checkpoints(folder: Path) -> bool:
    """Whether `folder` is a run directory (config.json or checkpoints/ with uld's checkpoint files), or a folder
    of checkpoints itself, whatever else it lacks."""
    def has_checkpoint_files(directory: Path) -> bool:
        try:
            return any(p.name.startswith("step-") and p.suffix in (".pt", ".sha256", ".tmp")
                       for p in directory.iterdir())
        except OSError:
            return False

    return ((folder / "config.json").is_file() and (folder / "checkpoints").exists()
            or has_checkpoint_files(folder / "checkpoints") or has_checkpoint_files(folder))


def check_export_path(out: Path, overwrite: bool) -> None:
    """Raise UldError for an --out that would replace something it should not or cannot be written.

    A run directory's files are never replaced (its checkpoints are .pt files too), and an existing
    model only with ``overwrite``.
    """
    for folder in out.absolute().parents:
        if holds_checkpoints(folder):
            raise UldError(f"--out {out} lies inside {folder}, which holds a uld run's checkpoints; uld export never "
                           "writes there: pass a path outside it")
    if out.is_dir():
        raise UldError(f"--out {out} is a directory; pass a file name ending in .onnx or .pt")
    if out.exists() and not overwrite:
        raise UldError(f"--out {out} exists; pass another file name, or --overwrite to replace it")
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UldError(f"--out {out} lies under {existing}, which is a file; pass a path in a directory")
    if not os.access(existing, os.W_OK) or existing.resolve().is_relative_to("/proc"):
        raise UldError(f"--out {out} cannot be written in {existing}; pass a path in a directory you can write to")


def export_policy(run_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the deterministic policy of a run's newest checkpoint to `out` (.onnx or .pt); returns out."""
    from uld.train.playback import load

    out = Path(out)
    if out.suffix not in FORMATS:
        raise UldError(f"--out {out} must end in .onnx (ONNX) or .pt (TorchScript)")
    check_export_path(out, overwrite)
    trained = load(run_dir)
    spec = trained.agent.spec
    module = policy_module(trained.agent, trained.config.agent)
    metadata = json.dumps(describe(trained.config, spec, trained.step))
    example = example_observations(spec)
    # Serialized in memory, then written through the one writing place (temporary file, rename): a full disk
    # is an OSError there, never a C++ exception thrown through TorchScript's writer, and leaves no partial file.
    with files.folder_for(out), locked_file(out, "--out"):
        with _portable_ops(), torch.no_grad():
            if out.suffix == ".pt":
                buffer = io.BytesIO()
                scripted = torch.jit.trace(module, example, check_trace=False)
                torch.jit.save(scripted, buffer, _extra_files={METADATA_KEY: metadata})
                data = buffer.getvalue()
            else:
                data = _export_onnx(module, example, metadata)
        files.write_atomically(out, data, then="any file there is left as it was")
    return out


def _export_onnx(module: nn.Module, example: Tensor, metadata: str) -> bytes:
    try:
        import onnx  # noqa: F401  (the exported model is onnx's ModelProto)
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as error:
        raise UldError("exporting to ONNX needs onnx and onnxscript: pip install 'uld[export]'") from error
    batch = torch.export.Dim("batch", min=1)
    # The exporter warns about every torchvision op it cannot register (a policy uses none of them), and
    # torch.export about its own deprecations: none of it concerns the user.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(module, (example,), input_names=["obs"], output_names=["action"],
                                        dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    finally:
        exporter_log.setLevel(level)
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata
    return model.SerializeToString()

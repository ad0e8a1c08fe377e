"""The TF32 option (issue 24, fix 8): off by default (full fp32 matmuls, PyTorch's default), on with
`uld train --tf32`; the command sets torch's process-wide flag, and this test restores it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from uld import cli
from uld.train import run
from uld.train.config import TrainConfig


@pytest.fixture(autouse=True)
def restore_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("argv,expected", [([], False), (["--tf32"], True), (["--no-tf32"], False)])
def test_uld_train_sets_tf32_for_matmuls_only(monkeypatch, tmp_path: Path, argv, expected) -> None:
    assert TrainConfig().tf32 is False
    torch.backends.cuda.matmul.allow_tf32 = not expected
    cudnn = torch.backends.cudnn.allow_tf32
    seen = []
    monkeypatch.setattr(run, "train", lambda config, **kwargs: seen.append(config.tf32) or tmp_path)
    assert cli.main(["train", "--env", "gym:Pendulum-v1", "--out", str(tmp_path), *argv]) == 0
    assert seen == [expected]
    assert torch.backends.cuda.matmul.allow_tf32 is expected
    assert torch.backends.cudnn.allow_tf32 is cudnn

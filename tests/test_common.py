"""The agent plumbing of uld/agents/common.py: frozen networks, targets, and state with one loading rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from uld.agents.common import check_precision, copy_into, frozen, load_parts_state_dict, parts_state_dict, target_copy


class _Parts:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = nn.Linear(3, 2)
        self.net_target = target_copy(self.net)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.1)

    def step(self) -> None:
        self.optimizer.zero_grad()
        self.net(torch.ones(4, 3)).sum().backward()
        self.optimizer.step()


def test_frozen_restores_each_flag_also_when_the_block_raises() -> None:
    net = nn.Linear(3, 2)
    net.bias.requires_grad_(False)
    with pytest.raises(RuntimeError), frozen(net):
        assert not net.weight.requires_grad
        raise RuntimeError("a loss failed")
    assert (net.weight.requires_grad, net.bias.requires_grad) == (True, False)


def test_targets_start_equal_take_no_gradient_and_copy_on_demand() -> None:
    parts = _Parts()
    assert not any(p.requires_grad for p in parts.net_target.parameters())
    assert torch.equal(parts.net.weight, parts.net_target.weight)
    parts.step()
    assert not torch.equal(parts.net.weight, parts.net_target.weight)
    copy_into(parts.net, parts.net_target)
    assert torch.equal(parts.net.weight, parts.net_target.weight)


def test_loaded_optimizer_moments_are_not_shared_with_the_source() -> None:
    names = ("net", "net_target", "optimizer")
    source, copy = _Parts(), _Parts()
    source.step()
    state = parts_state_dict(source, names)
    load_parts_state_dict(copy, state, names)
    moment = copy.optimizer.state_dict()["state"][0]["exp_avg"].clone()
    source.step()  # moves the source's moments; the copy's must stay where they were loaded
    assert torch.equal(copy.optimizer.state_dict()["state"][0]["exp_avg"], moment)
    assert not torch.equal(source.optimizer.state_dict()["state"][0]["exp_avg"], moment)


def test_precision_is_fp32_or_bf16() -> None:
    assert check_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="fp32 or bf16, got 'fp16'"):
        check_precision("fp16")


@pytest.mark.parametrize("options, message", [
    (["--seed", "1", "--seeds", "0-2"], "--seed and --seeds both name seeds; pass one of them"),
    (["--seeds", "0,0"], "--seeds '0,0' names a seed more than once; name each seed once"),
    (["--seeds", "4294967296"], "--seeds '4294967296' names a seed of 2^32 or more; seeds are below 2^32"),
    (["--seeds", "abc"], "--seeds 'abc' is not a list of seeds; write a range like 0-9, a list like 0,3,5, or one seed"),
], ids=["seed-and-seeds", "repeated", "too-large", "not-a-list"])
def test_train_seed_refusals_are_one_sentence_exit_2_and_write_nothing(tmp_path, capsys, options, message):
    from uld.cli import main

    out = tmp_path / "run"
    assert main(["train", "--env", "gym:Pendulum-v1", "--out", str(out), *options]) == 2
    assert capsys.readouterr().err == f"uld: {message}\n"
    assert not out.exists()

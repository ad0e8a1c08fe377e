"""The fast paths compute what the eager fp32 reference computes: oneDNN Linear and torch.compile.

Tolerances: the oneDNN GEMM and compiled kernels only reorder fp32 sums. One layer: each output is a sum of
K products, and two orders of it differ by at most 2 * gamma_K times the sum of the products' magnitudes
(numerics.sum_reorder_bound). Full updates: see test_compiled_updates_give_the_eager_losses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from numerics import assert_within, sum_reorder_bound
from uld.agents import build_agent
from uld.agents import linear as linear_module
from uld.agents.alm.config import reduced_config as alm_reduced
from uld.agents.linear import Linear, linear, set_onednn
from uld.agents.uld.config import reduced_config as uld_reduced
from uld.envs import make_env


class _CountOneDnn(TorchDispatchMode):
    """Counts the oneDNN GEMMs issued while active."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.ops.mkldnn._linear_pointwise.default
        return func(*args, **(kwargs or {}))


@pytest.fixture
def onednn_on():
    """The oneDNN path, whatever the CPU vendor's default; skipped where PyTorch has no oneDNN."""
    if not linear_module._AVAILABLE:
        pytest.skip("this PyTorch build has no oneDNN linear")
    before = set_onednn(True)
    yield
    set_onednn(before)


def _inputs(case: str):
    torch.manual_seed(0)
    x = torch.randn(256, 512)
    weight, bias = torch.randn(512, 512), torch.randn(512)
    if case == "3-d, not contiguous":
        x = torch.randn(6, 40, 96).transpose(0, 1)  # (40, 6, 96) with strides of a transpose
        weight, bias = torch.randn(130, 96), torch.randn(130)
    if case == "no bias":
        bias = None
    x.requires_grad_(case != "frozen input")
    weight.requires_grad_(case != "frozen weight")  # the actor step: encoder and value frozen
    if bias is not None:
        bias.requires_grad_(case != "frozen weight")
    return x, weight, bias


@pytest.mark.numerics
@pytest.mark.parametrize("case", ["2-d", "3-d, not contiguous", "no bias", "frozen weight", "frozen input"])
def test_onednn_linear_matches_f_linear_forward_and_backward(onednn_on, case):
    x, weight, bias = _inputs(case)
    grad = torch.randn(*x.shape[:-1], weight.shape[0])
    results = []
    for fn in (F.linear, linear):
        for t in (x, weight, bias):
            if t is not None:
                t.grad = None
        with _CountOneDnn() as count:
            y = fn(x, weight, bias)
            y.backward(grad)
        results.append([y.detach(), x.grad, weight.grad, None if bias is None else bias.grad])
        calls = count.calls
    # The path under test is the one taken: forward plus one GEMM per gradient asked for.
    assert calls == 1 + x.requires_grad + weight.requires_grad
    # The sizes of the terms of each result: y = x W^T + b, dx = g W, dW = g^T x, db = sum of g over rows.
    x2, g2 = x.detach().reshape(-1, x.shape[-1]).abs(), grad.reshape(-1, grad.shape[-1]).abs()
    w, k = weight.detach().abs(), x.shape[-1]
    term_sizes = [((x2 @ w.T + (0 if bias is None else bias.detach().abs())).reshape(grad.shape), k + 1),
                  ((g2 @ w).reshape(x.shape), w.shape[0]), (g2.T @ x2, len(x2)), (g2.sum(0), len(g2))]
    for (reference, fast), (terms, n) in zip(zip(*results), term_sizes):
        if reference is None:
            assert fast is None
        else:
            assert_within(case, fast.double() - reference.double(), sum_reorder_bound(terms.double(), n))


def test_linear_takes_f_linear_where_onednn_does_not_pay_or_apply(onednn_on):
    layer = Linear(96, 80)
    x = torch.randn(3, 5, 96)
    with _CountOneDnn() as count:
        assert layer(x).shape == (3, 5, 80)
        narrow = Linear(96, 1)(x)  # a Q output head: below the width where oneDNN pays
        empty = layer(torch.randn(0, 96, requires_grad=True))
        empty.sum().backward()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16
    assert count.calls == 1  # only the first call
    assert narrow.shape == (3, 5, 1) and empty.shape == (0, 80)
    assert set(layer.state_dict()) == {"weight", "bias"}  # checkpoints are those of nn.Linear


def test_double_backward_through_the_onednn_path_is_refused(onednn_on):
    x, weight, bias = _inputs("2-d")
    (grad_x,) = torch.autograd.grad(linear(x, weight, bias).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_x.sum().backward()


def _losses_over_updates(agent_name: str, config, compiled: bool, updates: int) -> list[dict[str, float]]:
    env = make_env("gym:Pendulum-v1", seed=0)
    torch.manual_seed(0)
    agent, buffer = build_agent(agent_name, env.spec, config, device="cpu", precision="fp32", seed=0,
                                total_steps=2_000, compiled=compiled)
    obs = env.reset()
    for _ in range(300):
        action = env.sample_action()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        obs = env.reset() if terminated or truncated else next_obs
    counters.clear()
    history = []
    # A network falling back to eager after too many recompilations is an error here, not a warning.
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        agent.act(obs, explore=False)  # acting too: batch 1, no grad (no random draw when not exploring)
        for step in range(updates):
            torch.manual_seed(100 + step)  # the same exploration and target-policy noise in both runs
            history.append({name: float(value) for name, value in agent.update(buffer).items()})
    # The compiled run really ran compiled graphs, whole: every frame dynamo met compiled, no graph breaks.
    assert (counters["stats"]["unique_graphs"] > 0) == compiled
    assert counters["frames"]["ok"] == counters["frames"]["total"] and not counters["graph_break"]
    return history


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("agent_name, config", [
    ("uld", uld_reduced(target_update_period=3)),  # 2 target periods: encoder bursts, value, policy
    ("alm", alm_reduced()),
])
def test_compiled_updates_give_the_eager_losses(agent_name, config):
    """Compiled and eager updates give the same losses, to 1e-3 of the size of their terms.

    Why 1e-3 and not fp32 rounding: the first forward passes agree to rounding (a reordered sum, 1e-6 here),
    but AdamW's first step moves a weight whose gradient is rounding noise by up to lr in a direction rounding
    chose (numerics.adam_first_step), so from the second loss on the two runs' networks differ by up to
    2 x lr = 6e-4 per step in a few weights of size about 0.1 (Xavier for width 128): after the four later steps
    such a weight is off by under 2.5% of itself, so the output by under 2.5% of one of the 128 contributions a
    unit sums, 2e-4 per weight. 1e-3 of a loss's terms bounds a few of those, and a compiled kernel that
    computed something else (a wrong mask, scale or sign) is far outside it.
    """
    eager = _losses_over_updates(agent_name, config, compiled=False, updates=5)
    compiled = _losses_over_updates(agent_name, config, compiled=True, updates=5)
    assert len(eager[0]) >= 3
    for step, (a, b) in enumerate(zip(eager, compiled)):
        assert a.keys() == b.keys()
        for name in a:
            # A mean of terms that may cancel (Q, a return) is scaled by the batch's largest |Q|.
            scale = max([abs(a[name]), *(abs(v) for key, v in a.items() if key.split("/")[-1] in ("q_max", "q_min"))])
            assert_within(f"step {step} {name}", b[name] - a[name], 1e-3 * scale + 1e-6)


def test_shift_augment_is_replicate_pad_then_crop_at_each_images_shift():
    from uld.agents.uld.agent import shift_augment

    torch.manual_seed(3)
    frames = torch.randint(0, 256, (6, 2, 10, 12), dtype=torch.uint8)
    torch.manual_seed(7)
    out = shift_augment(frames, pad=4)
    torch.manual_seed(7)  # the same draws as inside shift_augment: dy then dx, one per image
    dy, dx = torch.randint(0, 9, (6, 1)), torch.randint(0, 9, (6, 1))
    padded = F.pad(frames.float(), (4, 4, 4, 4), mode="replicate")
    for n in range(6):
        crop = padded[n, :, dy[n, 0] : dy[n, 0] + 10, dx[n, 0] : dx[n, 0] + 12]
        assert torch.equal(out[n].float(), crop), n
    assert out.dtype == torch.uint8
    # By hand, a 3x3 image 0..8 with pad 1: seed 2 draws the shift (0, 0), seed 24 draws (2, 2), seed 23 (0, 2).
    image = torch.arange(9, dtype=torch.uint8).view(1, 1, 3, 3)
    expected = {2: [[0, 0, 1], [0, 0, 1], [3, 3, 4]], 24: [[4, 5, 5], [7, 8, 8], [7, 8, 8]],
                23: [[1, 2, 2], [1, 2, 2], [4, 5, 5]]}
    for seed, pixels in expected.items():
        torch.manual_seed(seed)
        assert shift_augment(image, pad=1)[0, 0].tolist() == pixels, seed


def test_shift_augment_on_a_time_major_view_draws_and_writes_in_that_order():
    from uld.agents.uld.agent import shift_augment

    frames = torch.randint(0, 256, (3, 4, 2, 10, 12), dtype=torch.uint8)  # (B, T, C, H, W) as sampled
    time_major = frames.transpose(0, 1)  # (T, B, ...): a view, as the agent passes it
    torch.manual_seed(5)
    out = shift_augment(time_major, pad=4)
    torch.manual_seed(5)
    flat = shift_augment(time_major.reshape(12, 2, 10, 12), pad=4)  # the same images, copied in that order
    assert out.shape == (4, 3, 2, 10, 12) and out.is_contiguous()
    assert torch.equal(out.reshape(12, 2, 10, 12), flat)
    # One image everywhere: the outputs differ only by their shifts, drawn one per image.
    same = torch.randint(0, 256, (1, 1, 2, 10, 12), dtype=torch.uint8).expand(3, 4, 2, 10, 12).transpose(0, 1)
    shifted = shift_augment(same, pad=4).reshape(12, -1)
    assert len({tuple(row.tolist()) for row in shifted}) > 1


@pytest.mark.numerics
def test_pixel_encoder_chunked_no_grad_pass_equals_one_pass():
    """Chunks of the batch may be summed in another order (GEMM blocking depends on the batch size). Each
    convolution output sums 32 x 3 x 3 products and the Linear 32 x 7 x 7 + 1; the reordering errors, bounded
    relative to the sizes of the terms (numerics.sum_reorder_bound), pass through ELUs (1-Lipschitz) and the
    Linear, and the final LayerNorm divides them by its input's standard deviation."""
    from uld.agents.uld.networks import PixelStateEncoder

    torch.manual_seed(0)
    encoder = PixelStateEncoder(4, 32, 84)
    frames = torch.randint(0, 256, (300, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        chunked = encoder(frames)  # 3 chunks of <= 128
        x = frames.float().div(255.0).sub(0.5)
        for conv in encoder.convs:
            x = F.elu(conv(x))
        features = encoder.linear(x.flatten(1))
        terms = x.flatten(1).abs().double() @ encoder.linear.weight.abs().double().T + encoder.linear.bias.abs()
    whole = encoder(frames).detach()  # with autograd on: one pass
    # The convolutions' relative errors (four layers of 288 terms) reach the Linear's terms as a relative error.
    bound = sum_reorder_bound(terms, x.shape[1] * x.shape[2] * x.shape[3] + 1) + 4 * sum_reorder_bound(terms, 288)
    assert_within("chunked", chunked.double() - whole.double(), bound / features.double().std(-1, keepdim=True))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them():
    """Where a 16 MiB block comes from, read from /proc/self/maps (a fact of the allocator, not a count of page
    faults, which transparent huge pages and the machine change): glibc's defaults map it on its own (128 KiB
    threshold) and unmap it on free, so the next one faults in fresh pages; with keep_freed_memory it lies in the
    heap, which is not given back on free, and the next block comes from that heap again."""
    script = (
        "import numpy as np\n"
        "from uld.train.allocator import keep_freed_memory\n"
        "def heap():\n"
        "    lines = [line.split()[0] for line in open('/proc/self/maps') if line.rstrip().endswith('[heap]')]\n"
        "    return [tuple(int(x, 16) for x in line.split('-')) for line in lines]\n"
        "def in_heap(address):\n"
        "    return any(lo <= address < hi for lo, hi in heap())\n"
        "kept = keep_freed_memory()\n"
        "a = np.ones(1 << 21); first = a.ctypes.data; del a\n"
        "still_mapped = in_heap(first) and in_heap(first + (16 << 20) - 1)\n"
        "b = np.ones(1 << 21)\n"
        "print(kept, in_heap(first), still_mapped, in_heap(b.ctypes.data))\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    results = {}
    for setting in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             env={**environment, "ULD_KEEP_FREED_MEMORY": setting}).stdout.split()
        results[setting] = out
    if results["1"][0] == "False":
        pytest.skip("this C library has no mallopt (not glibc)")
    assert results["0"][:2] == ["False", "False"]  # its own mapping
    assert results["1"] == ["True", "True", "True", "True"]

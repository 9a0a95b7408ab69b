"""FLOP counts the README promises: the ``triton`` backend reports the eager model's FLOPs (counted on an unpatched
copy, whatever ran before in the process), and work a counter cannot see (a custom op without a formula, a bare Triton
launch) is named in ``flops_counter_warnings`` instead of vanishing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn

from bench.config import Config
from bench.flops import count_flops
from bench.runner import build_step, count_config_flops, flops_key


def _counted(cfg: Config) -> dict:
    _, facts = build_step(cfg)
    return count_config_flops(cfg, facts)


@pytest.fixture
def tiny_depthwise_model() -> Iterator[str]:
    """A 3-layer CNN with one depthwise convolution (the ``depthwise_conv`` hot path), cheap in the interpreter."""
    from models.registry import _REGISTRY, register_model

    def vbtest_depthwise_cnn(**_: object) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    register_model(family="fake", input_shape=(3, 16, 16), num_classes=4, hot_paths=("depthwise_conv",))(
        vbtest_depthwise_cnn)
    yield "vbtest_depthwise_cnn"
    _REGISTRY.pop("vbtest_depthwise_cnn", None)


@pytest.mark.triton
def test_triton_backend_counts_the_unpatched_eager_model(tiny_depthwise_model: str) -> None:
    """No cache shared with an eager config (as with --isolate, Ray or a triton-only run): the counts must still match.
    Before the fix the patched model was counted: its depthwise convolution ran as a Triton launch, which no counter
    sees (efficientnet_b0: -8.4% GFLOPs), and fvcore could not trace the interpreter (gmacs empty)."""
    eager = _counted(Config(tiny_depthwise_model, "eager", "infer", "cpu", "fp32", 2))
    triton = _counted(Config(tiny_depthwise_model, "triton", "infer", "cpu", "bf16", 2, kernels="depthwise_conv"))
    assert eager["gflops"] > 0 and eager["gmacs"] is not None
    assert triton["gflops"] == eager["gflops"] and triton["gmacs"] == eager["gmacs"]
    assert "triton:" not in triton["flops_counter_warnings"]


def test_flops_cache_key_holds_exactly_what_the_count_depends_on() -> None:
    base = Config("resnet18", "eager", "infer", "cpu", "fp32", 2, input_size=64)
    same = [Config("resnet18", "triton", "infer", "cpu", "bf16", 2, True, "all", 64),
            Config("resnet18", "compile", "infer", "cpu", "tf32", 2, input_size=64, compile_mode="max-autotune"),
            # counted on the CPU whatever the benchmark device, so the device is not in the key
            Config("resnet18", "eager", "infer", "cuda", "bf16", 2, input_size=64, timer="cudagraph")]
    different = [Config("resnet50", "eager", "infer", "cpu", "fp32", 2, input_size=64),
                 Config("resnet18", "eager", "train", "cpu", "fp32", 2, input_size=64),
                 Config("resnet18", "eager", "infer", "cpu", "fp32", 4, input_size=64),
                 Config("resnet18", "eager", "infer", "cpu", "fp32", 2, input_size=32)]
    assert all(flops_key(c) == flops_key(base) for c in same)
    assert len({flops_key(c) for c in [base, *different]}) == 1 + len(different)


@torch.library.custom_op("vbtest::opaque_matmul", mutates_args=())
def _opaque_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


@_opaque_matmul.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[1])


@torch.library.custom_op("vbtest::counted_matmul", mutates_args=())
def _counted_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


@torch.utils.flop_counter.register_flop_formula(torch.ops.vbtest.counted_matmul)
def _counted_matmul_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def test_custom_op_without_formula_is_reported() -> None:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    fc = count_flops(lambda: _opaque_matmul(a, b) + 1.0, fvcore=False)
    assert fc.flops == 0  # the counter cannot see inside the op ...
    assert any(w.startswith("torch:vbtest.opaque_matmul") and "not counted" in w for w in fc.unsupported)  # ... says so
    fc = count_flops(lambda: _counted_matmul(a, b), fvcore=False)  # an op with a registered formula is counted
    assert fc.flops == 2 * 8 * 16 * 4 and fc.unsupported == []


@pytest.mark.triton
def test_bare_triton_launch_is_reported(scale_kernel) -> None:  # noqa: ANN001
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        scale_kernel[(2,)](x, y, x.numel(), BLOCK=16)
        return y

    x = torch.randn(32)
    fc = count_flops(fn, x, fvcore=False)
    assert torch.equal(fn(x), x * 2.0)
    assert fc.unsupported == ["triton:_scale_kernelx1 (Triton launch: FLOPs not counted)"]


def test_every_config_builds_the_same_weights() -> None:
    """A detector's FLOPs depend on its weights (proposals kept by NMS): every config and process gets the same ones."""
    torch.manual_seed(123)
    _, a = build_step(Config("basic_cnn", "eager", "infer", "cpu", "fp32", 1))
    torch.manual_seed(456)
    _, b = build_step(Config("basic_cnn", "eager", "infer", "cpu", "bf16", 2))
    sa, sb = a["_model"].state_dict(), b["_model"].state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

"""Behaviours of the ``visionbench::`` ops that matter on a GPU: exact adaptive ROI sampling, the deterministic-
algorithms alert, TF32 selection, CUDA-graph capture (``gpu``), and FLOP counting."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import kernels
import models
from kernels._triton import emulate_gpu
from kernels.registry import patch_model
from kernels.window_attention import kernel as wa_kernel

OPS = torch.ops.visionbench


def _integer_boxes(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer boxes at stride 4 whose heights/widths are exact multiples of 7 bins: 84 px -> 21 / 7 = 3 samples,
    56 -> 2, 112 -> 4. An approximate fp32 divide (the GPU's ``div.full.f32``) can return 3 + 1 ulp, and ceil()
    then adds a whole sample row/column versus torchvision."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 32, 32, generator=g).to(device)
    rois = torch.tensor([[0, 4, 8, 88, 92], [1, 0, 0, 56, 112], [0, 12, 16, 124, 72], [1, 28, 28, 84, 84],
                         [0, 0, 0, 84, 84]], dtype=torch.float32, device=device)
    return x, rois


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_adaptive_sampling_on_integer_boxes_matches_torchvision(device: str) -> None:
    from torchvision.ops import roi_align as tv_roi_align

    x, rois = _integer_boxes(device)
    out = kernels.roi_align(x, rois, 7, spatial_scale=0.25, sampling_ratio=0, aligned=False)
    ref = tv_roi_align(x.double(), rois.double(), 7, spatial_scale=0.25, sampling_ratio=0, aligned=False)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_roi_align_backward_alerts_under_deterministic_algorithms(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the compiled-Triton path (here: the CPU under ``emulate_gpu``) the atomics backward raises PyTorch's
    alert when deterministic algorithms are requested, as torchvision's CUDA backward does."""
    grad = torch.randn(1, 3, 2, 2)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 4.0]])
    args = (grad, rois, [1, 3, 6, 7], False, torch.float32, [2, 2], 1.0, 2, False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # emulate_gpu refuses the interpreter
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with emulate_gpu(132), pytest.raises(RuntimeError, match="roi_align_backward does not have a deterministic"):
            OPS.roi_align_backward(*args)
    finally:
        torch.use_deterministic_algorithms(was)


def test_fp32_window_attention_follows_the_tf32_setting() -> None:
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert wa_kernel.fp32_precision("cuda") == "tf32" and wa_kernel.fp32_precision("cpu") == "ieee"
        torch.set_float32_matmul_precision("highest")
        assert wa_kernel.fp32_precision("cuda") == "ieee"
    finally:
        torch.set_float32_matmul_precision(old)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["window_attention", "depthwise_conv2d", "roi_align", "roi_align_multilevel"])
def test_ops_capture_in_a_cuda_graph(name: str) -> None:
    """Forward and backward of each op captured in one ``torch.cuda.CUDAGraph`` after a warm-up, replayed on new
    input values, equal to an eager call on those values."""
    from kernels.roi_align import roi_align_multilevel

    g = torch.Generator(device="cuda").manual_seed(0)
    dev = "cuda"
    if name == "window_attention":
        q, k, v = (torch.randn(8, 3, 49, 32, device=dev, generator=g) for _ in range(3))
        bias = torch.randn(3, 49, 49, device=dev, generator=g)
        inputs, fn = [q, k, v, bias], lambda a: kernels.window_attention(*a)
    elif name == "depthwise_conv2d":
        inputs = [torch.randn(2, 32, 14, 14, device=dev, generator=g),
                  torch.randn(32, 1, 3, 3, device=dev, generator=g)]
        fn = lambda a: kernels.depthwise_conv2d(a[0], a[1], padding=1)  # noqa: E731
    elif name == "roi_align":
        rois = torch.tensor([[0, 1.0, 2.0, 20.0, 24.0], [1, 4.0, 4.0, 30.0, 12.0]], device=dev)
        inputs = [torch.randn(2, 16, 32, 32, device=dev, generator=g)]
        fn = lambda a: kernels.roi_align(a[0], rois, 7, 0.5, 0)  # noqa: E731
    else:
        rois = torch.tensor([[0, 1.0, 2.0, 60.0, 44.0], [1, 4.0, 4.0, 30.0, 12.0]], device=dev)
        levels = torch.tensor([0, 1], device=dev)
        inputs = [torch.randn(2, 8, 32, 32, device=dev, generator=g),
                  torch.randn(2, 8, 16, 16, device=dev, generator=g)]
        fn = lambda a: roi_align_multilevel(a, rois, [0.25, 0.125], levels, 7, 2)  # noqa: E731
    static = [t.clone().requires_grad_(True) for t in inputs]

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = fn(static)
        grads = torch.autograd.grad(out, static, torch.ones_like(out))
        return out, list(grads)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up: JIT compile, cached tables
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, grads = step()
    new = [torch.randn(t.shape, device=dev, generator=g) for t in inputs]
    with torch.no_grad():
        for t, n in zip(static, new):
            t.copy_(n)
    graph.replay()
    torch.cuda.synchronize()
    ref_in = [t.clone().requires_grad_(True) for t in new]
    ref = fn(ref_in)
    ref_grads = torch.autograd.grad(ref, ref_in, torch.ones_like(ref))
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # roi_align's atomics reorder the sums


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["swin_t", "efficientnet_b0"])
def test_flop_counter_counts_our_ops_like_eager(model_name: str) -> None:
    spec = models.get_spec(model_name)
    torch.manual_seed(0)
    eager = spec.builder().eval()
    patched = spec.builder().eval()
    assert sum(patch_model(patched, None).values()) > 0
    batch = spec.make_batch(1, (spec.input_shape[0], 32, 32), device=torch.device("cpu"))
    counts = []
    for m in (eager, patched):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            spec.forward(m, batch)
        counts.append(fc.get_total_flops())
    assert counts[0] > 0 and counts[1] == counts[0], counts

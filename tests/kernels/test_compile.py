"""Our kernels inside ``torch.compile``: no graph breaks from them, and compiled results equal to eager.

Backend ``aot_eager`` on the CPU: Dynamo captures the graph and AOTAutograd traces forward and backward through
the ``visionbench::`` ops' fake kernels and registered autograd (the part Inductor relies on); the ops then run
their CPU kernels (the Triton interpreter under ``TRITON_INTERPRET=1``). ``fullgraph=True`` makes any graph break
an error, and a counting backend checks that exactly one graph was compiled.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import kernels
import models
from kernels.depthwise_conv import TEST_SHAPES as DW_SHAPES
from kernels.depthwise_conv import make_inputs as dw_inputs
from kernels.registry import patch_model
from kernels.roi_align import TEST_SHAPES as RA_SHAPES
from kernels.roi_align import make_inputs as ra_inputs
from kernels.roi_align import roi_align_multilevel
from kernels.window_attention import TEST_SHAPES as WA_SHAPES
from kernels.window_attention import make_inputs as wa_inputs

pytestmark = pytest.mark.triton
ROI_ALIGN_DIR = str(Path(kernels.__file__).parent / "roi_align")


def _compiled(fn):  # noqa: ANN001, ANN202
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    return torch.compile(fn, backend=counter, fullgraph=True), counter


def _fwd_bwd(fn, args: list, kwargs: dict, grad_idx: tuple[int, ...]):  # noqa: ANN001, ANN202
    leaves = [a.detach().clone().requires_grad_(i in grad_idx) if isinstance(a, torch.Tensor) else a
              for i, a in enumerate(args)]
    out = fn(*leaves, **kwargs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    out.backward(g)
    return out.detach(), [leaves[i].grad for i in grad_idx]


@pytest.mark.parametrize("name", ["window_attention", "depthwise_conv2d", "roi_align"])
# registry test shapes in fp32, forward and backward: test_kernel_numerics runs them with the overflow checks
@pytest.mark.usefixtures("no_interpreter_overflow_checks")
def test_public_function_compiles_fullgraph_fwd_bwd(name: str) -> None:
    if name == "window_attention":
        ki = wa_inputs(WA_SHAPES["n16_nw1"], torch.float32, "cpu", 0)
    elif name == "depthwise_conv2d":
        ki = dw_inputs(DW_SHAPES["b0_s3b_c17_k5s1_nhwc_bias"], torch.float32, "cpu", 0)
    else:
        ki = ra_inputs(RA_SHAPES["c3_sr2_unaligned"], torch.float32, "cpu", 0)
    fn = getattr(kernels, name)
    compiled, counter = _compiled(fn)
    out, grads = _fwd_bwd(compiled, list(ki.args), dict(ki.kwargs), ki.grad_args)
    ref, ref_grads = _fwd_bwd(fn, list(ki.args), dict(ki.kwargs), ki.grad_args)
    assert counter.frame_count == 1  # one graph, no break (fullgraph would have raised)
    assert out.stride() == ref.stride()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the same CPU kernel runs in both
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["swin_t", "efficientnet_b0"])
# The interpreter's int32 overflow checks at these launches (batch 1, 32x32) are the model-level kernel tests' own
# (test_swin_t_triton_matches_eager_forward_and_backward, test_efficientnet_b0_triton_matches_eager).
@pytest.mark.usefixtures("no_interpreter_overflow_checks")
def test_models_with_our_kernels_compile_without_graph_breaks(model_name: str) -> None:
    spec = models.get_spec(model_name)
    torch.manual_seed(0)
    model = spec.builder().eval()
    switched = patch_model(model, None)
    assert sum(switched.values()) > 0
    batch = spec.make_batch(1, (spec.input_shape[0], 32, 32), device=torch.device("cpu"))
    compiled, counter = _compiled(model)
    with torch.no_grad():
        out = spec.forward(compiled, batch)
        ref = spec.forward(model, batch)
    assert counter.frame_count == 1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fasterrcnn_graph_breaks_are_not_roi_align() -> None:
    """Detection's data-dependent steps (proposal filtering, NMS, per-image loops) may break the graph; our ROI
    Align (the multi-level op) must cause none.

    Our kernel has exactly one site in Faster R-CNN, the ROI heads' multi-scale pooler (``roi_heads.box_roi_pool``):
    ``patch_model`` switches one module, and an eager pass of the ROI heads pools through it, with our multi-level op,
    exactly once. Dynamo then traces that pooler (FPN level assignment + our op) on the features and proposals of an
    eager backbone + RPN pass, with ``fullgraph=True``: one graph, no break at all, and the same output as eager.
    (Tracing the whole ROI heads instead took 130 s in the measured CI run, all of it in the box postprocessing's
    data-dependent steps, which cannot reach our kernel.) The proposals are cut to a few per image: the traced graph
    does not depend on their number."""
    spec = models.get_spec("fasterrcnn_resnet50_fpn")
    torch.manual_seed(0)
    model = spec.builder().eval()
    assert patch_model(model, ["roi_align"]) == {"roi_align": 1}  # the model's only ROI Align site: the pooler
    pool = model.roi_heads.box_roi_pool
    assert pool.multilevel_fn is roi_align_multilevel
    images = spec.make_batch(1, (spec.input_shape[0], 64, 64), device=torch.device("cpu")).inputs[0]
    with torch.no_grad():
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        x = model.preprocess(images)
        features = model.backbone(x)
        proposals, _ = model.rpn(list(features.values()), x.shape[-2:], image_size, None)
    proposals = [p[:8] for p in proposals]
    assert sum(len(p) for p in proposals) > 0
    calls = []
    pool.multilevel_fn = lambda *a: calls.append(a) or roi_align_multilevel(*a)
    with torch.no_grad():
        model.roi_heads(features, proposals, image_size, None)
    assert len(calls) == 1  # the ROI heads pool through the pooler and our multi-level op, once
    pool.multilevel_fn = roi_align_multilevel
    with torch.no_grad():
        ref = pool(features, proposals, image_size)
        explained = torch._dynamo.explain(pool)(features, proposals, image_size)
    reasons = [(r.reason.splitlines()[0][:160], [f"{f.filename}:{f.lineno}" for f in r.user_stack])
               for r in explained.break_reasons]
    ours = [r for r in reasons if any(ROI_ALIGN_DIR in f for f in r[1])]
    assert not ours, ours
    assert not reasons and explained.graph_count == 1, reasons
    compiled, counter = _compiled(pool)
    with torch.no_grad():
        out = compiled(features, proposals, image_size)
    assert counter.frame_count == 1  # fullgraph: one graph, no break
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the same CPU kernel runs in both

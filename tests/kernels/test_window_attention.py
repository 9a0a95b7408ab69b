"""Swin window attention kernel (``kernels/window_attention``): semantics the generic checker does not cover.

The registry-driven checker (``bench kernels --check``) runs every ``test_shapes`` entry × dtype × direction with
one seed and the heuristic launch config. Here: more seeds, the multi-window loop of a program (``WPB > 1``, with a
partial last group), the tiled path for N > 64, the mask gradient, an independent per-window oracle for the
``b mod nW`` mask rule, numerically extreme scores, arbitrary strides, poisoned buffers, float64 ``gradcheck``,
dispatch, peers, formulas, and the Swin model switch. Pass rule and tolerances: :mod:`kernels.testing`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from kernels._triton import HAS_TRITON, dispatch_path, interpret_enabled, poison_outputs
from kernels.testing import error_stats, passes, tolerance

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not (HAS_TRITON and interpret_enabled()),
                       reason="needs Triton's interpreter (TRITON_INTERPRET=1)"),
]

import kernels  # noqa: E402  (registers the kernel)
from kernels.registry import get_kernel  # noqa: E402
from kernels.window_attention import flex_peer, make_inputs, patch_model, sdpa_peer  # noqa: E402
from kernels.window_attention.kernel import (  # noqa: E402
    MIN_PROGRAMS_BWD,
    MIN_PROGRAMS_FWD,
    launch_config,
    window_attention_bwd,
    window_attention_fwd,
)
from kernels.window_attention.op import window_attention, window_attention_triton  # noqa: E402
from kernels.window_attention.reference import swin_shift_mask, window_attention_reference  # noqa: E402

SPEC = get_kernel("window_attention")
HALF = (torch.float16, torch.bfloat16)


def _inputs(B_: int, H: int, N: int, D: int, nW: int, dtype: torch.dtype, seed: int, bias: bool = True,
            bias_dtype: torch.dtype | None = None, bias_scale: float = 1.0) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B_, H, N, D, generator=g).to(dtype) for _ in range(3))
    b = (torch.randn(H, N, N, generator=g) * bias_scale).to(bias_dtype or dtype) if bias else None
    m = torch.where(torch.rand(nW, N, N, generator=g) < 0.3, -100.0, 0.0) if nW else None
    return [q, k, v, b, m]


def _grads(fn: Callable[..., torch.Tensor], args: Sequence[Any], grad_idx: Sequence[int], g: torch.Tensor | None,
           to: torch.dtype | None = None) -> list[torch.Tensor]:
    """``[out, d(out·g)/d args[i] for i in grad_idx]`` on fresh leaves (upcast to ``to`` if given)."""
    leaves = [a.detach().to(to or a.dtype).requires_grad_(i in grad_idx) if isinstance(a, torch.Tensor) else a
              for i, a in enumerate(args)]
    with torch.enable_grad():
        out = fn(*leaves)
        if g is None:
            return [out.detach()]
        grads = torch.autograd.grad(out, [leaves[i] for i in grad_idx], g.to(out.dtype))
    return [out.detach(), *grads]


def _assert_matches(fn: Callable[..., torch.Tensor], args: Sequence[Any], dtype: torch.dtype,
                    grad_idx: Sequence[int] = (0, 1, 2, 3), backward: bool = True, what: str = "") -> None:
    """``fn`` (the Triton path) against the float64 reference, judged by :func:`kernels.testing.passes` relative
    to eager in ``dtype``; output and every gradient, no NaN/Inf."""
    grad_idx = [i for i in grad_idx if args[i] is not None]
    g = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(123)).to(dtype) if backward else None
    ref = _grads(window_attention_reference, args, grad_idx, g, to=torch.float64)
    eager = _grads(window_attention_reference, args, grad_idx, g)
    kern = _grads(fn, args, grad_idx, g)
    names = ["out"] + [f"grad{i}" for i in grad_idx]
    for name, k, e, r in zip(names, kern, eager, ref):
        assert k.shape == r.shape and k.dtype == e.dtype, (what, name, k.shape, k.dtype, e.dtype)
        ks, es = error_stats(k, r), error_stats(e, r)
        assert ks.nonfinite == 0, (what, name, "non-finite values")
        assert passes(ks, es, dtype), (what, name, dtype, ks, es, tolerance(dtype))


# --- numerics beyond the checker ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B_,H,N,D,nW", [(6, 2, 49, 32, 3), (4, 1, 10, 16, 2), (2, 1, 100, 16, 1)])
def test_public_api_matches_float64_over_seeds(B_: int, H: int, N: int, D: int, nW: int, dtype: torch.dtype,
                                               seed: int) -> None:
    """Forward + backward (q, k, v, bias) through the public function, which dispatches to Triton here. N = 10
    pads to 16, N = 100 takes the tiled path (2 query tiles of 64 + the column kernel); nW = 3 is not a power of 2."""
    args = _inputs(B_, H, N, D, nW, dtype, seed)
    _assert_matches(window_attention, args, dtype, what=f"seed {seed}")


@pytest.mark.parametrize("wpb", [2, 3])
@pytest.mark.parametrize("N", [49, 100])
def test_windows_per_program_loop(N: int, wpb: int) -> None:
    """Several windows per program, with a partial last group (5 windows per mask id): results equal one window
    per program (dq/dk/dv/out bitwise; bias/mask gradients differ only in summation order) and the float64
    reference, and the backward is deterministic."""
    B_, H, D, nW = 10, 2 if N <= 64 else 1, 16, 2
    q, k, v, b, m = _inputs(B_, H, N, D, nW, torch.float32, seed=3)
    scale = D**-0.5
    do = torch.randn(B_, H, N, D)
    o1 = window_attention_fwd(q, k, v, b, m, scale, windows_per_program=1)
    ow = window_attention_fwd(q, k, v, b, m, scale, windows_per_program=wpb)
    assert torch.equal(o1, ow)
    g1 = window_attention_bwd(do, q, k, v, b, m, scale, True, True, windows_per_program=1)
    gw = window_attention_bwd(do, q, k, v, b, m, scale, True, True, windows_per_program=wpb)
    gw2 = window_attention_bwd(do, q, k, v, b, m, scale, True, True, windows_per_program=wpb)
    for a, c in zip(g1[:3], gw[:3]):
        assert torch.equal(a, c)
    for a, c in zip(gw, gw2):
        assert torch.equal(a, c)  # deterministic: no atomics
    leaves = [t.double().requires_grad_() for t in (q, k, v, b, m)]
    ref = window_attention_reference(*leaves, scale)
    ref_grads = torch.autograd.grad(ref, leaves, do.double())
    tol = tolerance(torch.float32)
    assert error_stats(ow, ref).rel_fro <= tol.rtol_fro
    for got, want in zip(gw, ref_grads):
        assert error_stats(got, want).rel_fro <= tol.rtol_fro


@pytest.mark.parametrize("N", [49, 100])
def test_mask_gradient(N: int) -> None:
    """A mask that requires grad gets ``dmask[m] = Σ_{b ≡ m mod nW, h} dS`` (same partials as the bias gradient)."""
    args = _inputs(6, 2, N, 16, 3, torch.float32, seed=4)
    _assert_matches(window_attention, args, torch.float32, grad_idx=(0, 1, 2, 3, 4))
    args[3] = None  # mask gradient without a bias
    _assert_matches(window_attention, args, torch.float32, grad_idx=(0, 1, 2, 4))


def test_mask_applies_to_window_b_mod_nW_against_a_loop() -> None:
    """Independent oracle: each window's softmax computed on its own, with ``mask[b % nW]`` picked by hand."""
    B_, H, N, D, nW = 6, 2, 16, 16, 3
    q, k, v, b, _ = _inputs(B_, H, N, D, 0, torch.float32, seed=5)
    m = torch.zeros(nW, N, N)
    for w in range(nW):  # distinct masks: window w may not attend to keys 0..3w
        m[w, :, : 3 * w + 1] = -100.0
    out = window_attention(q, k, v, b, m)
    for i in range(B_):
        s = (q[i].double() @ k[i].double().transpose(-1, -2)) * D**-0.5 + b.double() + m[i % nW].double()
        want = torch.softmax(s, -1) @ v[i].double()
        assert error_stats(out[i], want).rel_fro <= tolerance(torch.float32).rtol_fro


@pytest.mark.parametrize("dtype", HALF)
def test_extreme_scores_stay_finite(dtype: torch.dtype) -> None:
    """Scores of ±~1e3 (large q·k and bias): the max-subtracted softmax must not overflow, and rows dominated by
    one key must still match; -100 masks everywhere but the diagonal leave a finite, near-one-hot softmax."""
    B_, H, N, D, nW = 2, 2, 49, 32, 2
    q, k, v, b, _ = _inputs(B_, H, N, D, 0, dtype, seed=6, bias_scale=200.0)
    q = (q.float() * 8).to(dtype)
    m = torch.full((nW, N, N), -100.0)
    m[:, torch.arange(N), torch.arange(N)] = 0.0
    _assert_matches(window_attention, [q, k, v, b, m], dtype)


def test_mixed_dtypes_fp32_bias_with_bf16_q() -> None:
    """fp32 bias (an autocast parameter) beside bf16 q, k, v: scores in fp32, bias gradient returned in fp32."""
    args = _inputs(4, 3, 49, 32, 2, torch.bfloat16, seed=7, bias_dtype=torch.float32)
    _assert_matches(window_attention, args, torch.bfloat16)
    out = window_attention(*args)
    assert out.dtype == torch.bfloat16


def test_arbitrary_strides_and_output_layout() -> None:
    """q, k, v as views of a packed ``[B_, N, 3, H, D]`` qkv (Swin's layout), v with a non-unit last stride and a
    transposed bias view: no copies needed, same result. The output's ``transpose(1, 2)`` is contiguous."""
    B_, H, N, D, nW = 4, 2, 49, 16, 2
    g = torch.Generator().manual_seed(8)
    qkv = torch.randn(B_, N, 3, H, D, generator=g).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    v = torch.randn(B_, H, D, N, generator=g).transpose(-1, -2)  # stride(-1) = N
    bias = torch.randn(N, N, H, generator=g).permute(2, 0, 1)
    mask = swin_shift_mask(1, nW, 7, 3)
    assert not (q.is_contiguous() or v.is_contiguous() or bias.is_contiguous())
    out = window_attention(q, k, v, bias, mask)
    assert out.transpose(1, 2).is_contiguous()
    _assert_matches(window_attention, [q, k, v, bias, mask], torch.float32)
    dense = [t.contiguous() for t in (q, k, v, bias)]
    assert torch.equal(out, window_attention(*dense, mask))


@pytest.mark.parametrize("poison", [float("nan"), 1.0e4])
def test_poisoned_buffers_are_fully_written(poison: float) -> None:
    """Every buffer the kernels write (out, dq, dk, dv, bias/mask partials, LSE/Δ of the tiled path) comes from
    ``empty_output``; poisoned, the results must equal the unpoisoned ones bitwise."""
    for N in (49, 100):
        args = _inputs(4, 2, N, 16, 2, torch.float16, seed=9)
        g = torch.randn(args[0].shape).half()
        clean = _grads(window_attention_triton, args, [0, 1, 2, 3, 4], g)
        with poison_outputs(poison):
            dirty = _grads(window_attention_triton, args, [0, 1, 2, 3, 4], g)
        for a, b in zip(clean, dirty):
            assert torch.isfinite(a).all()
            assert torch.equal(a, b)


def test_gradcheck_float64() -> None:
    """``torch.autograd.gradcheck`` on the Triton path in float64 (the interpreter runs fp64 dots): q, k, v, bias
    and mask; N = 5 (padded to 16), D = 3 (padded to 16) and N = 70 (tiled path). Fast mode (random projections
    of the Jacobian) keeps it to a few seconds in the interpreter; the full Jacobian took ~30 s for N = 5."""
    for B_, H, N, D, nW in [(2, 1, 5, 3, 2), (2, 1, 70, 4, 2)]:
        args = _inputs(B_, H, N, D, nW, torch.float64, seed=10)
        args[4] = args[4].double() * 0.01  # a mask with moderate values so every entry has a visible gradient
        leaves = [a.requires_grad_() for a in args]
        assert torch.autograd.gradcheck(lambda *a: window_attention_triton(*a), leaves, fast_mode=True)


# --- dispatch, errors ----------------------------------------------------------------------------------------------


def test_dispatch_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU + interpreter runs the Triton Function; without the interpreter the public function is the reference
    and the Triton-only entry point refuses; windows beyond the kernel's range fall back to the reference."""
    from bench.kernelbench.check import count_triton_launches

    args = _inputs(2, 1, 16, 16, 2, torch.float32, seed=11)
    assert dispatch_path("cpu") == "triton-interpret"
    with count_triton_launches() as n:
        out = window_attention(*args)
    assert n[0] == 1 and out.grad_fn is None
    x = [a.requires_grad_() if a is not None else a for a in _inputs(2, 1, 16, 16, 2, torch.float32, seed=11)]
    assert "visionbench_window_attention_default" in type(window_attention(*x).grad_fn).__name__

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert dispatch_path("cpu") == "reference"
    with count_triton_launches() as n:
        ref = window_attention(*args)
    assert n[0] == 0
    assert torch.equal(ref, window_attention_reference(*args))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        window_attention_triton(*args)
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    big = _inputs(1, 1, 257, 16, 0, torch.float32, seed=12, bias=False)
    with count_triton_launches() as n:
        out = window_attention(*big)
    assert n[0] == 0 and torch.equal(out, window_attention_reference(*big))
    with pytest.raises(ValueError, match="N <= 256"):
        window_attention_triton(*big)


@pytest.mark.parametrize("change,err", [
    (lambda a: a.__setitem__(3, a[3][:, :-1]), "bias must be"),
    (lambda a: a.__setitem__(4, torch.zeros(3, 16, 16)), "not a multiple"),
    (lambda a: a.__setitem__(1, a[1].half()), "share one float dtype"),
    (lambda a: a.__setitem__(2, a[2][:, :, :-1]), "shapes differ"),
])
def test_input_validation(change: Callable[[list[Any]], None], err: str) -> None:
    args = _inputs(4, 2, 16, 16, 2, torch.float32, seed=13)
    change(args)
    with pytest.raises((ValueError, TypeError), match=err):
        window_attention_triton(*args)


# --- registry: config, formulas, peers ----------------------------------------------------------------------------


def test_launch_config_heuristics() -> None:
    """Swin-T stage 1 at batch 64: full 64×64 tiles, 8 windows of one mask id per program in the forward (≥ 1024
    programs), 16 in the backward; N = 144 takes 16-row tiles over 256 padded keys; N = 100 64-row tiles."""
    s1 = SPEC.shapes["swin_t_stage1_b64_shifted"]
    cfg = launch_config(s1["B_"], s1["H"], s1["N"], s1["D"], s1["nW"])
    assert (cfg.BLOCK_M, cfg.BLOCK_N, cfg.BLOCK_D, cfg.NQB, cfg.WPB) == (64, 64, 32, 1, 8)
    assert s1["nW"] * math.ceil(s1["B_"] // s1["nW"] / cfg.WPB) * s1["H"] >= MIN_PROGRAMS_FWD
    bwd = launch_config(s1["B_"], s1["H"], s1["N"], s1["D"], s1["nW"], min_programs=MIN_PROGRAMS_BWD)
    assert bwd.WPB == 16  # fewer, fatter programs: fewer bias-gradient partials
    big = launch_config(2, 2, 144, 32, 1)
    assert (big.BLOCK_M, big.BLOCK_N, big.NQB, big.WPB, big.num_warps_fwd) == (16, 256, 16, 1, 4)
    mid = launch_config(2, 2, 100, 32, 1)
    assert (mid.BLOCK_M, mid.BLOCK_N, mid.NQB, mid.num_warps_fwd) == (64, 128, 2, 8)
    assert launch_config(8, 1, 49, 32, 1, dtype=torch.float32).num_warps_fwd == 8  # FMA dots: avoid spills
    # Backward: FMA-dot dtypes unpipelined (the 2-stage loop spilled 6.5 KB/thread in fp32, see launch_config)
    f32, f64, b16 = (launch_config(8, 1, 49, 32, 1, dtype=dt) for dt in (torch.float32, torch.float64, torch.bfloat16))
    assert (f32.num_warps_bwd, f32.num_stages_bwd) == (16, 1) and (f64.num_warps_bwd, f64.num_stages_bwd) == (8, 1)
    assert (f32.BLOCK_M, f64.BLOCK_M, f64.NQB) == (64, 32, 2)  # fp64: fits sm_89's 99 KB of shared memory per block
    assert (b16.num_warps_bwd, b16.num_stages_bwd) == (8, 2)
    assert launch_config(3, 1, 10, 24, 1).BLOCK_N == 16 and launch_config(3, 1, 10, 24, 1).BLOCK_D == 32


def test_formulas_for_swin_t_stage1() -> None:
    """FLOPs 4·B_·H·N²·D; bytes: q, k, v, out (bf16) + bias (bf16) + fp32 mask; backward 7 activations + 2 biases."""
    s = SPEC.shapes["swin_t_stage1_b64_shifted"]
    assert SPEC.flops(s) == 4 * 4096 * 3 * 49 * 49 * 32 == 3_776_446_464
    act = 4096 * 3 * 49 * 32 * 2
    assert SPEC.min_bytes(s, torch.bfloat16) == 4 * act + 3 * 49 * 49 * 2 + 64 * 49 * 49 * 4
    assert SPEC.min_bytes_backward(s, torch.bfloat16) == 7 * act + 2 * 3 * 49 * 49 * 2 + 64 * 49 * 49 * 4
    s4 = SPEC.shapes["swin_t_stage4_b64"]  # no mask
    assert SPEC.min_bytes(s4, torch.bfloat16) == 4 * 64 * 24 * 49 * 32 * 2 + 24 * 49 * 49 * 2


def test_make_inputs_are_swin_like_and_seeded() -> None:
    shape = SPEC.test_shapes["swin_t_stage1_tiny"]
    a, b = make_inputs(shape, torch.float16, "cpu", 0), make_inputs(shape, torch.float16, "cpu", 0)
    assert all(torch.equal(x, y) for x, y in zip(a.args, b.args))
    q, k, v, bias, mask = a.args
    assert q.shape == (8, 3, 49, 32) and q.dtype == torch.float16 and not q.is_contiguous()  # packed qkv views
    assert bias.shape == (3, 49, 49) and mask.dtype == torch.float32 and set(mask.unique().tolist()) == {-100.0, 0.0}
    assert a.grad_args == (0, 1, 2, 3)
    assert not torch.equal(make_inputs(shape, torch.float16, "cpu", 1).args[0], q)


def test_sdpa_peer_matches_reference_and_flex_needs_cuda() -> None:
    args = _inputs(4, 2, 49, 16, 2, torch.float64, seed=14)
    args[4] = args[4].double()
    for drop in ((), (3,), (4,), (3, 4)):  # with and without bias / mask
        a = [None if i in drop else t for i, t in enumerate(args)]
        assert error_stats(sdpa_peer(*a), window_attention_reference(*a)).rel_fro < 1e-12, drop
    assert set(SPEC.peers) == {"sdpa", "flex_attention"}
    with pytest.raises(NotImplementedError, match="CUDA"):
        flex_peer(*args)


# --- model switch ----------------------------------------------------------------------------------------------


def test_patch_model_counts_sites() -> None:
    class Site(torch.nn.Module):
        hot_path = "window_attention"

        def __init__(self) -> None:
            super().__init__()
            self.attn_fn = window_attention_reference

    model = torch.nn.Sequential(Site(), torch.nn.Linear(2, 2), torch.nn.Sequential(Site()))
    assert patch_model(model) == 2
    assert all(m.attn_fn is window_attention for m in model.modules() if isinstance(m, Site))
    assert patch_model(torch.nn.Linear(2, 2)) == 0
    assert kernels.window_attention is window_attention


@pytest.mark.slow
def test_swin_t_triton_matches_eager_forward_and_backward() -> None:
    """``models.create("swin_t", kernels="triton")`` at 32×32 (stage 1: 4 padded windows, shifted blocks masked;
    stages 2-4: one padded window each): logits and all parameter gradients (and, separately, those of the relative
    position bias tables) pass the fp32 rule against the float64 eager model, relative to fp32 eager's own error."""
    import models

    torch.manual_seed(0)
    eager = models.create("swin_t", num_classes=10).eval()
    fused = models.create("swin_t", kernels="triton", num_classes=10).eval()
    fused.load_state_dict(eager.state_dict())
    sites = [m for m in fused.modules() if getattr(m, "hot_path", None) == "window_attention"]
    assert len(sites) == 12 and all(m.attn_fn is window_attention for m in sites)
    ref64 = models.create("swin_t", num_classes=10).double().eval()
    ref64.load_state_dict(eager.state_dict())
    x = torch.randn(1, 3, 32, 32)
    outs = {}
    for name, model, inp in [("eager", eager, x), ("fused", fused, x), ("ref64", ref64, x.double())]:
        y = model(inp)
        (y * torch.linspace(-1, 1, 10, dtype=y.dtype)).sum().backward()
        params = dict(model.named_parameters())
        bias_tables = torch.cat([p.grad.flatten() for n, p in params.items() if "bias_table" in n])
        all_grads = torch.cat([p.grad.flatten() for p in params.values()])
        outs[name] = {"logits": y.detach(), "bias_tables": bias_tables, "grads": all_grads}
    for key in ("logits", "bias_tables", "grads"):
        ks = error_stats(outs["fused"][key], outs["ref64"][key])
        es = error_stats(outs["eager"][key], outs["ref64"][key])
        assert passes(ks, es, torch.float32), (key, ks, es)


# --- GPU (auto-skipped without CUDA) -----------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("shape_name", list(SPEC.shapes))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_real_shapes_checker(shape_name: str, dtype: torch.dtype) -> None:
    """The checker's rules on the real Swin-T shapes on CUDA, forward and backward."""
    from bench.kernelbench.check import check_case

    for direction in ("forward", "backward"):
        rows = check_case(SPEC, shape_name, SPEC.shapes[shape_name], dtype, direction, device="cuda")
        bad = [r for r in rows if r["status"] != "pass"]
        assert not bad, bad


@pytest.mark.gpu
def test_gpu_peers_run() -> None:
    inp = make_inputs(SPEC.test_shapes["swin_t_stage1_tiny"], torch.bfloat16, "cuda", 0)
    want = window_attention_reference(*inp.args).float()
    for name, peer in SPEC.peers.items():
        got = peer(*inp.args).float()
        assert error_stats(got, want).rel_fro < 2 * tolerance(torch.bfloat16).rtol_fro, name


def test_gpu_launch_config_through_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU's windows-per-program choice through the public autograd path. Swin-T stage 1 on an H100 (64 images
    x 64 windows, 3 heads) gets 8 windows per forward program and 16 per backward program; the small test batch
    (2 mask ids x 10 windows) only reaches those with the program targets scaled to it (4 and 2), and then has a
    partial last group in both directions. Output and q/k/v/bias/mask gradients against float64."""
    assert launch_config(64 * 64, 3, 49, 32, 64, dtype=torch.bfloat16).WPB == 8
    assert launch_config(64 * 64, 3, 49, 32, 64, min_programs=MIN_PROGRAMS_BWD, dtype=torch.bfloat16).WPB == 16
    wa_kernel = sys.modules["kernels.window_attention.kernel"]
    real, used = wa_kernel.launch_config, []

    def scaled(B_: int, H: int, N: int, D: int, nW: int, windows_per_program: int | None = None,
               min_programs: int = MIN_PROGRAMS_FWD, dtype: torch.dtype | None = None) -> Any:
        cfg = real(B_, H, N, D, nW, windows_per_program, 4 if min_programs == MIN_PROGRAMS_FWD else 2, dtype)
        used.append(cfg.WPB)
        return cfg

    monkeypatch.setattr(wa_kernel, "launch_config", scaled)
    args = list(_inputs(20, 1, 49, 16, 2, torch.float32, seed=5))
    args[4] = args[4].clone()  # the mask gets a gradient too
    with poison_outputs():
        _assert_matches(window_attention, args, torch.float32, grad_idx=(0, 1, 2, 3, 4), what="gpu launch")
    assert used == [8, 16], used

"""bench/flops.py against hand-computed counts, and its reports read word for word.

Conventions checked: the torch counter counts a multiply-add as 2 FLOPs, fvcore as 1 MAC; a conv layer's forward is
``B·Cout·Ho·Wo·Cin·k²`` MACs, a linear layer's ``B·in·out``; a backward adds one product per weight gradient and one
per input gradient (none for the image, which needs no gradient); the CPU flash-attention backward recomputes the
scores (5 products of the forward's size). Written for the mutants of ``nox -s mutants -- flops``
(results/mutants/flops/): every gap a counter meets is named with its call count, options reach the counters, and
counting changes neither the step's result, the gradients, the model's mode nor the console.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import flop_counter as _fc

import bench.flops as flops
from bench.flops import count_flops, count_model_flops, count_step_flops

# fvcore is a declared dependency: where it is installed its MACs must be exact (a None is a failure, not a skip).
needs_fvcore = pytest.mark.skipif(importlib.util.find_spec("fvcore") is None, reason="fvcore not installed")


class _Net(nn.Module):
    """``[B, 2, 5, 5]`` -> conv 2->3 (3x3, pad 1) -> relu -> + 1 -> flatten -> Linear(75, 4), no biases.

    MACs per sample: conv 3·5·5·2·9 = 1350, linear 75·4 = 300."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.lin = nn.Linear(75, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin((F.relu(self.conv(x)) + 1).flatten(1)).softmax(-1)


CONV_MACS, LIN_MACS = 3 * 5 * 5 * 2 * 9, 75 * 4
FV_CHEAP = ["fvcore:aten::addx1", "fvcore:aten::softmaxx1"]  # what fvcore says it skipped in _Net


class _LinSum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).sum()


@torch.library.custom_op("vbtest_truth::opaque", mutates_args=())
def _opaque(a: torch.Tensor) -> torch.Tensor:
    """A custom op without a FLOP formula: its work is invisible to both counters."""
    return a * 2.0


@_opaque.register_fake
def _(a: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(a)


# --- counts --------------------------------------------------------------------------------------------------------


@needs_fvcore
def test_conv_net_forward_counts_per_call() -> None:
    torch.manual_seed(0)
    net = _Net()
    x1, x3 = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 5, 5)
    one = count_model_flops(net, (x1,))
    three = count_model_flops(net, (x3,))
    assert (one.flops, one.macs) == (2 * (CONV_MACS + LIN_MACS), CONV_MACS + LIN_MACS)  # a multiply-add = 2 FLOPs
    assert (three.flops, three.macs) == (3 * one.flops, 3 * one.macs)  # per call: the whole batch
    # relu, add, softmax: no formula by the torch counter's convention (nothing named); fvcore names add and softmax.
    assert one.unsupported == FV_CHEAP and one.notes == [] and one.warnings == "; ".join(FV_CHEAP)
    # Each counter alone: the other's field is empty, not a stale or default number.
    assert (count_model_flops(net, (x1,), fvcore=False).flops, count_model_flops(net, (x1,), fvcore=False).macs) == (
        one.flops, None)
    assert (count_model_flops(net, (x1,), torch_counter=False).flops,
            count_model_flops(net, (x1,), torch_counter=False).macs) == (0, one.macs)
    assert count_flops(net, x1, torch_counter=False).flops == 0
    assert count_flops(net, x1, fvcore=False).macs is None


@needs_fvcore
def test_count_model_flops_counts_in_eval_mode_and_restores_the_mode() -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3), nn.Dropout(0.5)).train()
    x = torch.randn(2, 2, 4, 4)
    fc = count_model_flops(net, (x,))
    conv_macs, bn_elems = 2 * 3 * 16 * 2, 2 * 3 * 16
    # fvcore counts an eval-mode batch norm as 2 MACs per element (scale, shift), a training-mode one as 5.
    assert (fc.flops, fc.macs) == (2 * conv_macs, conv_macs + 2 * bn_elems)
    assert net.training and net[1].num_batches_tracked.item() == 0  # counted in eval mode: no BN statistics update
    net.eval()
    count_model_flops(net, (x,))
    assert not net.training


@needs_fvcore
def test_step_flops_infer_and_train() -> None:
    """A train step counts forward + backward: each layer's weight gradient costs its forward again, and the input
    gradient too for every layer but the first (3x forward minus the conv's input gradient); fvcore's MACs stay the
    forward's, with a note saying so; no gradient is left behind; the step itself runs once."""
    torch.manual_seed(0)
    net, x = _Net().train(), torch.randn(2, 2, 5, 5)
    fwd = 2 * 2 * (CONV_MACS + LIN_MACS)

    calls: list[str] = []  # the step runs once per count (a train step may update weights): fvcore traces the model

    def step(mode: str) -> torch.Tensor:
        calls.append(mode)
        return net(x) if mode == "infer" else net(x).sum()

    infer = count_step_flops(lambda: step("infer"), net, (x,))
    assert (infer.flops, infer.macs, infer.unsupported, infer.notes) == (fwd, fwd // 2, FV_CHEAP, [])

    for p in net.parameters():
        p.grad = torch.ones_like(p)  # stale gradients from before: cleared too
    train = count_step_flops(lambda: step("train"), net, (x,), backward=True)
    assert calls == ["infer", "train"]
    assert train.flops == 3 * fwd - 2 * 2 * CONV_MACS
    assert (train.macs, train.unsupported, train.notes) == (fwd // 2, FV_CHEAP, ["gmacs: fvcore, forward pass only"])
    assert all(p.grad is None for p in net.parameters())
    assert net.training


@needs_fvcore
def test_backward_count_with_fvcore_notes_the_forward_only_macs() -> None:
    lin, x = _LinSum(), torch.randn(4, 6)  # a module: fvcore traces its weight as a parameter
    fc = count_flops(lin, x, backward=True)
    assert (fc.flops, fc.macs) == (2 * 2 * 4 * 6 * 5, 4 * 6 * 5)  # x needs no gradient: the weight's only
    assert (fc.unsupported, fc.notes) == (["fvcore:aten::sumx1"], ["fvcore counts the forward only"])
    assert fc.warnings == "fvcore:aten::sumx1; fvcore counts the forward only"
    fc = count_flops(lin, x)
    assert (fc.flops, fc.macs, fc.notes) == (2 * 4 * 6 * 5, 4 * 6 * 5, [])


def test_keyword_arguments_reach_the_function_and_skip_fvcore() -> None:
    x, w = torch.randn(3, 4), torch.randn(4, 5)
    fc = count_flops(lambda x, *, w: x @ w, x, w=w)
    assert (fc.flops, fc.macs, fc.unsupported) == (2 * 3 * 4 * 5, None, [])
    assert fc.notes == ["fvcore skipped: keyword arguments"]


def test_counting_changes_neither_the_result_nor_the_console(capsys: pytest.CaptureFixture[str]) -> None:
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    seen: list[torch.Tensor] = []
    fc = count_flops(lambda: seen.append(torch.add(a, b, alpha=3)), fvcore=False)  # alpha is a keyword in aten
    assert fc.flops == 0 and fc.unsupported == []
    torch.testing.assert_close(seen[0], a + 3 * b)
    assert capsys.readouterr() == ("", "")  # no FLOP table printed


@needs_fvcore
def test_sdpa_with_distinct_sizes_counted_by_both() -> None:
    """fvcore's handle for SDPA: MACs = batch·N·M·(Dqk + Dv) over every leading dimension; 5-D, all sizes distinct."""
    q, k, v = torch.randn(2, 3, 4, 5, 6), torch.randn(2, 3, 4, 7, 6), torch.randn(2, 3, 4, 7, 8)
    fc = count_flops(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v)
    macs = 2 * 3 * 4 * 5 * 7 * (6 + 8)
    assert (fc.flops, fc.macs, fc.unsupported) == (2 * macs, macs, [])


# --- the CPU flash-attention formulas ------------------------------------------------------------------------------


@pytest.fixture
def cpu_sdpa_unregistered() -> Iterator[list]:
    """Removes the CPU flash-attention formulas (as before bench.flops registered them), restores them after."""
    pkts = [getattr(torch.ops.aten, n, None) for n in ("_scaled_dot_product_flash_attention_for_cpu",
                                                        "_scaled_dot_product_flash_attention_for_cpu_backward")]
    if None in pkts:
        pytest.skip("this torch has no CPU flash attention")
    keys = [k for p in pkts for k in (p, p.default) if k in _fc.flop_registry]
    saved = {k: _fc.flop_registry.pop(k) for k in keys}
    try:
        yield pkts
    finally:
        for p in pkts:
            _fc.flop_registry.pop(p, None)
            _fc.flop_registry.pop(p.default, None)
        _fc.flop_registry.update(saved)


def _cpu_sdpa_train_flops() -> int:
    b, h, n, m, d = 2, 3, 5, 7, 8  # one head size: the CPU flash kernel runs (another D_v takes the math path)
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for s in (n, m, m))
    return count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum(), backward=True, fvcore=False)


def test_cpu_flash_attention_formulas_registered_once(cpu_sdpa_unregistered: list) -> None:
    fwd_pkt, bwd_pkt = cpu_sdpa_unregistered
    unit = 2 * 2 * 3 * 5 * 7 * 8  # one product of the forward's size: 2·B·H·N·M·D
    fc = _cpu_sdpa_train_flops()
    assert fc.flops == 0 and len(fc.unsupported) == 2  # no formula: both named, nothing counted
    flops._register_cpu_sdpa()
    fc = _cpu_sdpa_train_flops()
    assert (fc.flops, fc.unsupported) == (2 * unit + 5 * unit, [])  # forward q·kᵀ, p·v; backward recomputes q·kᵀ
    formulas = {p: _fc.flop_registry.get(p, _fc.flop_registry.get(p.default)) for p in (fwd_pkt, bwd_pkt)}
    flops._register_cpu_sdpa()  # again (e.g. a reload): no duplicate registration, the formulas stay
    assert {p: _fc.flop_registry.get(p, _fc.flop_registry.get(p.default)) for p in formulas} == formulas


def test_a_formula_torch_already_has_is_kept(cpu_sdpa_unregistered: list) -> None:
    fwd_pkt, bwd_pkt = cpu_sdpa_unregistered

    @_fc.register_flop_formula([fwd_pkt, bwd_pkt])
    def _theirs(*args: object, **kwargs: object) -> int:  # a later torch's own formulas
        return 1

    flops._register_cpu_sdpa()
    assert _cpu_sdpa_train_flops().flops == 2  # theirs, forward and backward, not ours


# --- what a counter cannot see is named ----------------------------------------------------------------------------


@needs_fvcore
def test_every_gap_is_named_with_its_call_count() -> None:
    """Ops without a formula are named once each with how often they ran, whatever order the counter met them in
    (many counted ops run too): heavy aten ops (in place as well), an opaque custom op (torch and fvcore), never the
    cheap ops (relu, add, softmax) that both counters leave out by convention."""
    a, b, c = torch.randn(4, 5), torch.randn(5, 6), torch.randn(4, 6)
    x, w, bias = torch.randn(5, 2, 3), torch.randn(3, 3, 4), torch.randn(4)
    i8 = torch.ones(32, 32, dtype=torch.int8)
    img, kern = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    q = torch.randn(1, 2, 4, 8)

    def fn() -> torch.Tensor:
        counted = (a @ b + torch.addmm(c, a, b) + torch.bmm(a[None], b[None])[0]
                   + torch.baddbmm(c[None], a[None], b[None])[0]).sum()
        counted = counted + F.conv2d(img, kern).relu().sum() + F.scaled_dot_product_attention(q, q, q).softmax(-1).sum()
        gaps = torch.conv_tbc(x, w, bias, 1).sum() + torch.conv_tbc(x, w, bias, 1).sum()  # twice
        gaps = gaps + torch._int_mm(i8, i8).sum() + c.clone().addmm_(a, b).sum()
        return counted + gaps + _opaque(c).sum() + _opaque(c).sum()

    fc = count_flops(fn, fvcore=False)
    assert fc.unsupported == ["torch:aten._int_mmx1", "torch:aten.addmm_x1", "torch:aten.conv_tbcx2",
                              "torch:vbtest_truth.opaquex2 (opaque op, no FLOP formula: not counted)"]
    assert fc.flops == 2 * (4 * 4 * 5 * 6 + 3 * 3 * 3 * 2 * 9) + 4 * 1 * 2 * 4 * 4 * 8  # 4 matmuls, a conv, attention

    fc = count_flops(lambda c: _opaque(c) + 1, c)  # with fvcore: both counters' gaps, torch's first
    assert fc.unsupported == ["torch:vbtest_truth.opaquex1 (opaque op, no FLOP formula: not counted)",
                              "fvcore:aten::addx1", "fvcore:vbtest_truth::opaquex1"]
    assert fc.warnings == "; ".join(fc.unsupported)


@needs_fvcore
def test_step_gaps_are_listed_once() -> None:
    """count_step_flops runs each counter once: torch's over the step, fvcore's over the model."""

    class OpaqueNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(6, 6, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + _opaque(x)  # the opaque branch needs no gradient

    net, x = OpaqueNet(), torch.randn(2, 6)
    gaps = ["torch:vbtest_truth.opaquex1 (opaque op, no FLOP formula: not counted)", "fvcore:aten::addx1",
            "fvcore:vbtest_truth::opaquex1"]
    fc = count_step_flops(lambda: net(x), net, (x,))
    assert (fc.flops, fc.macs, fc.unsupported) == (2 * 2 * 36, 2 * 36, gaps)
    fc = count_step_flops(lambda: net(x).sum(), net, (x,), backward=True)
    assert (fc.flops, fc.macs, fc.unsupported) == (2 * 2 * 2 * 36, 2 * 36, gaps)


# --- fvcore's own failures -----------------------------------------------------------------------------------------


def _raises(message: str):  # noqa: ANN202
    def fn(x: torch.Tensor) -> torch.Tensor:
        raise ValueError(message)

    return fn


@needs_fvcore
def test_fvcore_failure_is_a_note_with_the_first_line_of_the_error() -> None:
    x = torch.randn(2)
    fc = count_flops(_raises("a" * 130 + "\nsecond line"), x, torch_counter=False)
    assert (fc.flops, fc.macs, fc.unsupported) == (0, None, [])
    assert fc.notes == ["fvcore failed: ValueError: " + "a" * 120]  # the first line, cut at 120 characters
    assert count_flops(_raises(""), x, torch_counter=False).notes == ["fvcore failed: ValueError: "]
    fc = count_flops(_raises("boom"), x, backward=True, torch_counter=False)
    assert fc.notes == ["fvcore failed: ValueError: boom"]  # no MACs: no "forward only" note either


def test_without_fvcore_the_macs_are_missing_and_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fvcore.nn", None)  # as on a machine without fvcore
    lin, x = nn.Linear(3, 2, bias=False), torch.randn(4, 3)
    fc = count_flops(lin, x)
    assert (fc.flops, fc.macs, fc.unsupported) == (2 * 4 * 3 * 2, None, [])
    assert fc.notes == ["fvcore unavailable (ModuleNotFoundError)"]


class _Noisy(nn.Module):
    """Linear(3, 2) (6 MACs per sample) -> softmax; writes to stderr while it runs; one submodule never called."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.unused = nn.Linear(3, 2, bias=False), nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("tracing", file=sys.stderr)
        return self.lin(x).softmax(-1)


@needs_fvcore
def test_the_fvcore_pass_is_silent(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """fvcore's warnings (unsupported ops, uncalled submodules) stay off even where the caller's logging configuration
    enables fvcore's logger, and what the traced forward writes to stderr is swallowed: the gaps are in the result."""
    child = logging.getLogger("fvcore.nn.jit_analysis")
    old = child.level
    child.setLevel(logging.WARNING)
    try:
        fc = count_flops(_Noisy(), torch.randn(1, 3), torch_counter=False)
    finally:
        child.setLevel(old)
    assert (fc.flops, fc.macs, fc.unsupported, fc.notes) == (0, 6, ["fvcore:aten::softmaxx1"], [])
    assert [r.getMessage() for r in caplog.records if r.name.startswith("fvcore")] == []
    assert capsys.readouterr() == ("", "")


@needs_fvcore
def test_fvcore_leaves_the_root_logger_alone() -> None:
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.INFO)
    try:
        count_flops(nn.Linear(3, 2), torch.randn(1, 3))
        assert root.level == logging.INFO
    finally:
        root.setLevel(old)


# --- Triton launches (``scale_kernel``: tests/bench/conftest.py) ----------------------------------------------------


@pytest.mark.triton
def test_triton_launches_named_with_their_count(scale_kernel) -> None:  # noqa: ANN001
    """Bare launches are named with their count; a warm-up (compile only) and launches inside an operator whose
    formula counts them are not; inside an opaque operator both the operator and the launch are named; after
    counting, launches run as before and are no longer recorded."""
    x = torch.randn(32)
    run_before = type(scale_kernel).run

    def launch(x: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        scale_kernel[(2,)](x, y, x.numel(), BLOCK=16)
        return y

    @torch.library.custom_op("vbtest_truth::counted_scale", mutates_args=())
    def counted_scale(x: torch.Tensor) -> torch.Tensor:
        return launch(x)

    @torch.library.custom_op("vbtest_truth::opaque_scale", mutates_args=())
    def opaque_scale(x: torch.Tensor) -> torch.Tensor:
        return launch(x)

    _fc.register_flop_formula(torch.ops.vbtest_truth.counted_scale)(lambda *a, **k: 32)
    try:
        def fn() -> torch.Tensor:
            scale_kernel.warmup(x, torch.empty_like(x), x.numel(), BLOCK=16, grid=(2,))
            y = launch(x) + counted_scale(x) + counted_scale(x)
            y = (y[None] @ y[:, None]).sum() + launch(x)  # after a counted op (mm) the next bare launch is seen
            return y + opaque_scale(x)

        fc = count_flops(fn, fvcore=False)
        assert fc.unsupported == ["torch:vbtest_truth.opaque_scalex1 (opaque op, no FLOP formula: not counted)",
                                  "triton:_scale_kernelx3 (Triton launch: FLOPs not counted)"]
        assert fc.flops == 2 * 32 + 2 * 32  # the two counted_scale calls (32 each) and the mm
    finally:
        _fc.flop_registry.pop(torch.ops.vbtest_truth.counted_scale, None)
    assert type(scale_kernel).run is run_before
    assert torch.equal(launch(x), x * 2.0)

"""FLOP and MAC counting with two well-kept counters, their conventions stated, their gaps reported.

* ``flops``: :mod:`torch.utils.flop_counter` (dispatch-level, sees forward *and* backward). **A multiply-add counts as
  2 FLOPs.** It only has formulas for matmul/conv/attention-like ops; elementwise ops, norms and softmax count 0.
* ``macs``: fvcore's ``FlopCountAnalysis`` (JIT-trace based, forward only). **A multiply-add counts as 1** — fvcore
  calls the number "flops", but it is MACs, and we label it so.

Known gaps we close here: on the CPU ``F.scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which has no formula in torch (so it counted 0 FLOPs), and
fvcore has no handle for ``aten::scaled_dot_product_attention``. We register both (forward 4·B·H·N·M·D FLOPs =
2·B·H·N·M·D MACs; backward as torch's own GPU formula). Matmul-like aten ops that a counter still does not know,
operators outside PyTorch's namespaces without a formula (custom ops) and Triton launches outside any counted
operator are listed in :attr:`FlopCount.unsupported`, never silently dropped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils import flop_counter as _fc
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["FlopCount", "count_flops", "count_model_flops", "count_step_flops"]

_aten = torch.ops.aten

# --- torch.utils.flop_counter: formulas for ops it misses ----------------------------------------------------------


def _has_formula(pkt: Any) -> bool:
    """Whether the torch counter has a formula for the operator ``pkt`` (an OpOverloadPacket). torch 2.14 keys its
    registry by packet, older torch by overload: both are looked up."""
    return pkt in _fc.flop_registry or pkt.default in _fc.flop_registry


def _register_cpu_sdpa() -> None:
    """Formulas for the CPU flash attention, forward and backward, unless the counter has them already (torch's own,
    or ours from an earlier call: registering twice raises)."""
    fwd = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and not _has_formula(fwd):

        @_fc.register_flop_formula(fwd)
        def _cpu_sdpa_fwd(query, key, value, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
            return _fc.sdpa_flop_count(query, key, value)

    if bwd is not None and not _has_formula(bwd):

        @_fc.register_flop_formula(bwd)
        def _cpu_sdpa_bwd(grad_out, query, key, value, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
            return _fc.sdpa_backward_flop_count(grad_out, query, key, value)


_register_cpu_sdpa()

# Ops whose names say they multiply matrices, convolve or gather (name tokens split on "_"): if one runs without a
# formula we report it, in-place variants too (``addmm_`` multiplies matrices; torch has no formula for it). Tokens,
# not substrings: "upsample_bilinear2d" is not a linear layer.
_HEAVY_TOKENS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "conv", "conv1d", "conv2d", "conv3d", "convolution",
                 "attention", "linear", "einsum", "matmul", "roi", "deform"}


# Namespaces of PyTorch's own operators. An operator from any other namespace (a custom op, e.g. one that wraps a
# Triton kernel) without a FLOP formula is opaque to the counter: its work is reported, never dropped silently.
_BUILTIN_NAMESPACES = {"aten", "prims", "prim", "quantized", "_c10d_functional", "c10d", "profiler", "debugprims"}


class _Coverage:
    """Shared between the recorders: > 0 while an operator whose FLOPs the counter does count is running (a Triton
    launch inside it is then accounted for by that operator's formula)."""

    def __init__(self) -> None:
        self.depth = 0


class _OpRecorder(TorchDispatchMode):
    """Records every operator overload that runs (to find heavy or opaque ops the FLOP counter has no formula for)."""

    def __init__(self, coverage: _Coverage | None = None) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()
        self.packets: set[Any] = set()
        self.coverage = coverage or _Coverage()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        pkt = func.overloadpacket
        self.seen[str(pkt)] += 1
        self.packets.add(pkt)
        counted = func in _fc.flop_registry or pkt in _fc.flop_registry
        if counted:
            self.coverage.depth += 1
        try:
            return func(*args, **(kwargs or {}))
        finally:
            if counted:
                self.coverage.depth -= 1


def _torch_unsupported(rec: _OpRecorder) -> list[str]:
    known = {getattr(k, "overloadpacket", k) for k in _fc.flop_registry}
    out = []
    for pkt in rec.packets:
        if pkt in known:
            continue
        name = str(pkt).split(".")[-1]
        namespace = getattr(pkt, "_qualified_op_name", str(pkt)).split("::")[0]
        if namespace not in _BUILTIN_NAMESPACES:
            out.append(f"torch:{pkt}x{rec.seen[str(pkt)]} (opaque op, no FLOP formula: not counted)")
        elif _HEAVY_TOKENS & set(name.split("_")):
            out.append(f"torch:{pkt}x{rec.seen[str(pkt)]}")
    return sorted(out)


class _LaunchRecorder:
    """Counts Triton kernel launches (compiled JIT or interpreter) made while active.

    A ``kernel[grid](...)`` call never passes through PyTorch's dispatcher, so no dispatch-level counter sees its
    work; unless it runs inside an operator that has a FLOP formula (see :class:`_Coverage`), it is reported.
    ``JITFunction.run`` / ``InterpretedFunction.run`` are wrapped for the duration only (autotuners and heuristics
    call them too)."""

    def __init__(self, coverage: _Coverage) -> None:
        self.coverage = coverage
        self.launches: Counter[str] = Counter()
        self._restore: list[tuple[type, Any]] = []

    def __enter__(self) -> _LaunchRecorder:
        from kernels._triton import launch_classes

        for cls in launch_classes():  # none without Triton: then nothing can launch
            original = cls.__dict__["run"]
            self._restore.append((cls, original))

            def run(kernel: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                if not kwargs.get("warmup") and self.coverage.depth == 0:
                    fn = getattr(kernel, "fn", kernel)
                    self.launches[getattr(fn, "__name__", type(kernel).__name__)] += 1
                return _original(kernel, *args, **kwargs)

            cls.run = run
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, original in reversed(self._restore):
            cls.run = original
        self._restore.clear()

    def unsupported(self) -> list[str]:
        return [f"triton:{name}x{n} (Triton launch: FLOPs not counted)" for name, n in sorted(self.launches.items())]


# --- fvcore ---------------------------------------------------------------------------------------------------------


def _fv_sdpa_handle(inputs: list[Any], outputs: list[Any]) -> int:
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    v = get_shape(inputs[2])
    batch = 1
    for d in q[:-2]:
        batch *= d
    n, m, d_qk, d_v = q[-2], k[-2], q[-1], v[-1]
    return batch * n * m * (d_qk + d_v)  # MACs of q·kᵀ plus p·v


def _fvcore_macs(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[int | None, list[str], str | None]:
    try:
        from fvcore.nn import FlopCountAnalysis
    except Exception as e:  # pragma: no cover - fvcore missing (e.g. a bare GPU box)
        return None, [], f"fvcore unavailable ({type(e).__name__})"
    module = fn if isinstance(fn, nn.Module) else _FnModule(fn)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # fvcore traces with torch.jit, which warns that it is deprecated
            logging.getLogger("fvcore").setLevel(logging.ERROR)
            an = FlopCountAnalysis(module, args)
            an.set_op_handle("aten::scaled_dot_product_attention", _fv_sdpa_handle)
            an.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = int(an.total())
            unsupported = [f"fvcore:{k}x{v}" for k, v in sorted(an.unsupported_ops().items())]
        return total, unsupported, None
    except Exception as e:
        return None, [], f"fvcore failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


class _FnModule(nn.Module):
    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


# --- public API -----------------------------------------------------------------------------------------------------


@dataclass
class FlopCount:
    """Counts for one call. ``flops``: torch counter, multiply-add = 2. ``macs``: fvcore, multiply-add = 1."""

    flops: int
    macs: int | None
    unsupported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> str:
        return "; ".join(self.unsupported + self.notes)


def count_flops(fn: Callable[..., Any], *args: Any, backward: bool = False, fvcore: bool = True,
                torch_counter: bool = True, **kwargs: Any) -> FlopCount:
    """Count FLOPs of ``fn(*args, **kwargs)`` (and of ``.backward()`` on its scalar result if ``backward``).

    fvcore's MACs are always the forward call's (fvcore traces with the JIT and cannot see the backward).
    """
    flops, unsupported = 0, []
    if torch_counter:
        coverage = _Coverage()
        rec = _OpRecorder(coverage)
        counter = _fc.FlopCounterMode(display=False)
        with counter, rec, _LaunchRecorder(coverage) as launches:
            out = fn(*args, **kwargs)
            if backward:
                out.backward()
        flops = int(counter.get_total_flops())
        unsupported = _torch_unsupported(rec) + launches.unsupported()
    notes: list[str] = []
    macs = None
    if fvcore:
        if kwargs:
            notes.append("fvcore skipped: keyword arguments")
        else:
            with torch.no_grad():
                macs, fv_unsup, note = _fvcore_macs(fn, args)
            unsupported += fv_unsup
            if note:
                notes.append(note)
            if backward and macs is not None:
                notes.append("fvcore counts the forward only")
    return FlopCount(flops, macs, unsupported, notes)


def count_model_flops(model: nn.Module, inputs: tuple[Any, ...], fvcore: bool = True,
                      torch_counter: bool = True) -> FlopCount:
    """Forward FLOPs of ``model(*inputs)`` in eval mode without autograd."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return count_flops(model, *inputs, fvcore=fvcore, torch_counter=torch_counter)
    finally:
        model.train(was_training)


def count_step_flops(step: Callable[[], Any], model: nn.Module, inputs: tuple[Any, ...], *,
                     backward: bool = False) -> FlopCount:
    """What a benchmark step costs: the torch counter over ``step()`` (without autograd, or forward + ``.backward()``
    of its scalar result), and fvcore's MACs of the forward ``model(*inputs)`` in eval mode (fvcore cannot see a
    backward). ``step`` may call the model through any wrapper (detection targets, losses); ``inputs`` feed fvcore."""
    if backward:
        torch_fc = count_flops(step, backward=True, fvcore=False)
        model.zero_grad(set_to_none=True)  # the counted backward must not leave gradients behind
    else:
        with torch.no_grad():
            torch_fc = count_flops(step, fvcore=False)
    fv = count_model_flops(model, inputs, torch_counter=False)
    notes = fv.notes + (["gmacs: fvcore, forward pass only"] if backward else [])
    return FlopCount(torch_fc.flops, fv.macs, torch_fc.unsupported + fv.unsupported, notes)

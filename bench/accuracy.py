"""Accuracy gate: each measured config's outputs against the same model run eagerly in float64 on the CPU.

After a config is timed, :func:`check` runs the config's own step once more, on the same fixed input (the seeded
batch the timing used) and the same weights, and compares it with the float64 reference:

* ``infer`` rows: the tensors the model declares in its registry entry (``ModelSpec.outputs_fn``: logits, dense
  heads, detector heads before NMS, SimCLR projections and loss, MAE reconstruction and loss on the batch's seeded
  mask), computed as the timed step computes them: under the row's precision (autocast / TF32 flags), through the
  row's Triton kernels, through ``torch.compile`` (the timed compiled module when the outputs are its forward,
  else ``torch.compile`` of the outputs function);
* ``train`` rows: from the weights the row started with (restored after timing), with dropout and stochastic depth
  off (their random masks differ across devices), one ``loss.backward()`` of the row's loss under the row's
  precision: the loss, and the gradient of every parameter.

Columns (appended to :data:`bench.runner.RESULT_COLUMNS`):

* ``acc_rel_fro``: ``max_t ‖y_t − r_t‖_F / ‖r_t‖_F`` over the compared tensors ``t`` (``r``: float64 reference);
* ``acc_max_abs``: ``max_t max|y_t − r_t|``;  ``acc_cos``: ``min_t cos(y_t, r_t)`` over non-scalar tensors;
* ``acc_grad_rel`` (train): ``sqrt(Σ_p ‖g_p − g64_p‖²) / sqrt(Σ_p ‖g64_p‖²)`` over all parameters ``p``: the
  relative error of the concatenated gradient, i.e. each parameter's relative error weighted by its share of the
  gradient norm; ``acc_grad_worst``: the parameter with the largest relative error and that error (information);
* ``acc_loss`` / ``acc_loss_ref`` (train): the row's loss and the float64 loss;
* ``acc_grad_eager`` (train rows of a non-eager backend in a dtype whose gradients have no absolute bound): the same
  step run *eagerly* in the row's dtype (same weights, batch, precision; a fresh copy without our kernels), its
  ``acc_grad_rel`` against float64: the baseline of the gate below;
* ``acc_status``: ``ok``, ``inaccurate`` (a bound of :data:`TOLERANCES` broken, or a NaN/Inf where the reference
  is finite; the row's ``status`` becomes ``inaccurate`` too and keeps its timing), ``skipped`` (the model declares
  its train step not comparable, ``ModelSpec.train_check``), ``error`` (the check itself failed: the row keeps
  status ``ok`` and says why in ``error``); empty with ``--no-accuracy``;
* ``acc_tol``: the bounds applied; ``acc_note``: the worst tensor and why a row failed; ``acc_s``: the check's wall
  time (reference included when it was not cached).

Weights: the row's own, except that an all-zero weight matrix (ViT's zero-initialised head) is replaced by seeded
random values in both the row and the reference before the check (after timing): with a zero head the logits are 0
whatever the network computes, and no gradient would reach the trunk.

The float64 reference is computed once per (model, mode, batch size, input size, weights) and kept for the next
configs of the same model (a sweep runs a model's configs one after another); weights are identified by a
fingerprint, so a cached reference is never used for other weights. Reference gradients are kept in float32 (their
rounding, 6e-8 relative, is far below every bound).
"""

from __future__ import annotations

import contextlib
import functools
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = ["ACCURACY_COLUMNS", "Tolerance", "TOLERANCES", "tolerance", "prepare", "check", "compare_outputs",
           "grad_error", "clear_cache"]

ACCURACY_COLUMNS = ["acc_status", "acc_rel_fro", "acc_max_abs", "acc_cos", "acc_grad_rel", "acc_grad_worst",
                    "acc_grad_eager", "acc_loss", "acc_loss_ref", "acc_tol", "acc_note", "acc_s"]

SEED = 0  # the CPU/CUDA RNG seed set before both the row's check step and the reference (SimCLR's views)


@dataclass(frozen=True)
class Tolerance:
    rel_fro: float  # bound on acc_rel_fro (outputs; the loss for train rows)
    grad_rel: float | None  # bound on acc_grad_rel (train rows); None = reported, not gated (see the table)


# One table, per precision and mode; "autocast" is how fp16/bf16 run today (fp32 weights, ops cast per call).
#
# Why these numbers. Unit roundoff u: fp32 2^-24 = 6e-8; TF32 and fp16 inputs 2^-11 = 4.9e-4; bf16 2^-8 = 3.9e-3.
# Calibrated with `python -m bench.accuracy_calibrate` (eager rows against float64 on the CPU at 64 px, ViTs at their
# fixed 224 px; figures and commands in results/cpu-accuracy-calibration/README.md), then set with headroom:
#
# * fp32 infer: eager's largest output error over all 27 models is 2.1e-6 (fasterrcnn); bound 1e-3. The ~500x
#   leaves room for what the CPU calibration cannot show (cuDNN's Winograd/FFT fp32 algorithms, Inductor's
#   reordered reductions, our kernels' fp32 accumulation order), while a kernel that drops a mask or reads a wrong
#   tile is further off (swin_t without its shift mask: 4.5e-3 at 32 px, where few windows are masked, 1.9e-2 at
#   224 px; results/cpu-accuracy-calibration/nomask_swin_t.txt). The kernel check (`bench kernels --check`), not
#   this gate, is what catches a subtle kernel error at bf16.
# * fp32 train: loss as infer; gradients 8e-7..1.3e-4 at batch 2 (basic_cnn, resnet18, yolov5n), but 0.022 at
#   batch 1 and 64 px (deeplabv3plus, efficientnet_b3; train-b1-partial.log): BatchNorm over a 2x2 or 4x4 map
#   divides by a tiny batch variance, which amplifies rounding. Bound 0.1.
# * bf16 autocast infer: eager's largest error is 0.022 (simclr_resnet50; swin_t 0.012, fasterrcnn 0.013, vit_s
#   0.0088): the inputs of every matmul/conv rounded to 8 bits, fp32 accumulation. Bound 0.1 (4.5x).
# * bf16 autocast train: the loss's error is at most 5e-3 (bound 0.1 as infer), but the gradients' is 0.09
#   (basic_cnn), 0.38 (resnet18), 1.12 (yolov5n), all at batch 2: at random init a
#   weight gradient is a long sum of nearly cancelling terms, and bf16's rounding of the backward's inputs survives
#   the cancellation (1.41 would be a gradient uncorrelated with the true one). No bound would both pass eager and
#   catch a wrong kernel, so an eager bf16 row's gradients are reported, not gated (NaN/Inf still fail the row).
#   A compile/triton/compile-triton row's gradients are gated against eager in the same dtype (dynamo's accuracy
#   rule): its error against float64 must stay within GRAD_MULTIPLE x eager's own + GRAD_ATOL (one more eager step
#   per such row). 3x: two independent roundings of the same size differ from float64 by comparable amounts (a
#   reordered reduction does not triple the error); a wrong backward -- a gradient tripled, a dropped mask -- is
#   far off wherever eager's own error is well below the uncorrelated 1.41.
# * fp16 autocast and tf32: 3 more mantissa bits than bf16 (8x smaller roundoff); not measurable here (no GPU). The
#   output bounds are 1/3 of bf16's rather than 1/8, for cuDNN's reduced-precision algorithms; gradients are not
#   gated, as for bf16. The GPU job's eager rows report the figures against which these should be tightened.
# * bf16-pure/fp16-pure (weights and activations in the low dtype: ``model.to(dtype)``): residual streams and
#   normalisation statistics are rounded too; bounds 2x autocast's until measured.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("fp32", "infer"): Tolerance(rel_fro=1e-3, grad_rel=0.1),
    ("fp32", "train"): Tolerance(rel_fro=1e-3, grad_rel=0.1),
    ("tf32", "infer"): Tolerance(rel_fro=3e-2, grad_rel=None),
    ("tf32", "train"): Tolerance(rel_fro=3e-2, grad_rel=None),
    ("fp16", "infer"): Tolerance(rel_fro=3e-2, grad_rel=None),
    ("fp16", "train"): Tolerance(rel_fro=3e-2, grad_rel=None),
    ("bf16", "infer"): Tolerance(rel_fro=0.1, grad_rel=None),
    ("bf16", "train"): Tolerance(rel_fro=0.1, grad_rel=None),
    ("fp16-pure", "infer"): Tolerance(rel_fro=6e-2, grad_rel=None),
    ("fp16-pure", "train"): Tolerance(rel_fro=6e-2, grad_rel=None),
    ("bf16-pure", "infer"): Tolerance(rel_fro=0.2, grad_rel=None),
    ("bf16-pure", "train"): Tolerance(rel_fro=0.2, grad_rel=None),
}


GRAD_MULTIPLE = 3.0
GRAD_ATOL = 1e-2


def tolerance(cfg: Any) -> Tolerance:
    """The bound for a config: by dtype (``bf16`` = autocast, ``bf16-pure`` = model cast) and mode."""
    return TOLERANCES[(cfg.dtype, cfg.mode)]


# --- comparison -----------------------------------------------------------------------------------------------------


def _as_f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def compare_outputs(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Errors of ``got`` against the float64 ``ref`` (same keys and shapes).

    Returns ``rel_fro`` (max over tensors), ``max_abs`` (max), ``cos`` (min over non-scalar tensors, None if all
    are scalars), ``worst`` (the tensor with the largest ``rel_fro``) and ``nonfinite`` (tensors with a NaN/Inf
    where the reference is finite).
    """
    if set(got) != set(ref):
        raise ValueError(f"compared tensors differ: {sorted(got)} vs reference {sorted(ref)}")
    rel, mabs, cos, worst, nonfinite = 0.0, 0.0, None, "", []
    for name in sorted(ref):
        o, r = _as_f64(got[name]), _as_f64(ref[name])
        if o.shape != r.shape:
            raise ValueError(f"{name}: shape {tuple(o.shape)} vs reference {tuple(r.shape)}")
        finite = torch.isfinite(r)
        if bool((~torch.isfinite(o) & finite).any()):
            nonfinite.append(name)
            continue
        d = torch.where(finite, o - r, torch.zeros_like(r))
        rn = float(torch.linalg.vector_norm(torch.where(finite, r, torch.zeros_like(r))))
        dn = float(torch.linalg.vector_norm(d))
        e = dn / rn if rn > 0 else dn
        if e >= rel:
            rel, worst = e, name
        if d.numel():
            mabs = max(mabs, float(d.abs().max()))
        if r.numel() > 1:
            c = float(torch.nn.functional.cosine_similarity(o.flatten(), r.flatten(), dim=0))
            cos = c if cos is None else min(cos, c)
    return {"rel_fro": rel, "max_abs": mabs, "cos": cos, "worst": worst, "nonfinite": nonfinite}


def grad_error(got: dict[str, torch.Tensor | None], ref: dict[str, torch.Tensor]) -> tuple[float, str, list[str]]:
    """``(norm-weighted relative error over all gradients, "worst_param=rel", params with NaN/Inf)``.

    The worst parameter is the one contributing most to the error (largest ``‖g_p − g64_p‖``); its own relative
    error is shown. A parameter whose gradient the row did not produce (None) counts as a zero gradient.
    """
    num = den = 0.0
    worst, worst_d, worst_e, bad = "", -1.0, 0.0, []
    for name, r in ref.items():
        r64 = r.to(torch.float64)
        g = got.get(name)
        g64 = torch.zeros_like(r64) if g is None else _as_f64(g)
        if not bool(torch.isfinite(g64).all()):
            bad.append(name)
            continue
        dn2 = float(((g64 - r64) ** 2).sum())
        rn2 = float((r64 ** 2).sum())
        num, den = num + dn2, den + rn2
        if dn2 > worst_d:
            worst, worst_d, worst_e = name, dn2, (dn2 / rn2) ** 0.5 if rn2 > 0 else dn2 ** 0.5
    rel = (num / den) ** 0.5 if den > 0 else num ** 0.5
    return rel, f"{worst}={worst_e:.3g}" if worst else "", bad


# --- reference (float64, CPU) ---------------------------------------------------------------------------------------

_CACHE: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
_CACHE_SIZE = 2  # a sweep runs one model's configs back to back; float64 grads of ViT-L are 1.2 GB in fp32


def clear_cache() -> None:
    _CACHE.clear()


def _fingerprint(state: dict[str, torch.Tensor]) -> tuple[float, ...]:
    """Weights' identity: float64 sums of values and squares (and the tensor count); cheap, order-sensitive."""
    s1 = s2 = s3 = 0.0
    for i, v in enumerate(state.values()):
        if v.is_floating_point():
            v64 = v.detach().to(torch.float64)
            s1 += float(v64.sum())
            s2 += float((v64 * v64).sum())
            s3 += (i + 1) * float(v64.flatten()[:1].sum()) if v64.numel() else 0.0
    return (len(state), s1, s2, s3)


def _nondegenerate(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every all-zero weight matrix (a parameter of 2+ dims, e.g. ViT's zero-initialised head)
    replaced by seeded ``N(0, 1/fan_in)`` values. With a zero head the logits are 0 whatever the trunk computes, and
    in training no gradient reaches the trunk: the comparison would check nothing. Deterministic (seeded per name),
    so every config of a model still shares one reference."""
    params = {n for n, _ in model.named_parameters()}
    out = dict(state)
    for k, v in state.items():
        if k in params and v.is_floating_point() and v.dim() >= 2 and not bool(v.any()):
            g = torch.Generator().manual_seed(SEED + zlib.crc32(k.encode()))
            fan_in = max(1, v[0].numel())
            out[k] = (torch.randn(v.shape, generator=g) * fan_in ** -0.5).to(v.dtype)
    return out


@contextlib.contextmanager
def _no_dropout(model: nn.Module) -> Iterator[None]:
    """Dropout and stochastic depth in eval mode for the check: their masks come from the device's RNG, which the
    CPU reference cannot reproduce; everything else (BatchNorm batch statistics) stays in train mode."""
    from models.layers import StochasticDepth

    changed = [m for m in model.modules()
               if isinstance(m, (nn.modules.dropout._DropoutNd, StochasticDepth)) and m.training]
    for m in changed:
        m.training = False
    try:
        yield
    finally:
        for m in changed:
            m.training = True


def _train_step(spec: Any, model: nn.Module, run_model: nn.Module, batch: Any,
                ctx: contextlib.AbstractContextManager[Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """One loss + backward of ``run_model`` (dropout off, RNG seeded); returns the loss and ``{param: grad}``."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)
    with _no_dropout(model):
        with ctx:
            loss = spec.loss(run_model, batch)
        loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _reference(cfg: Any, spec: Any, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    shape = spec.input_shape if not cfg.input_size else (spec.input_shape[0], cfg.input_size, cfg.input_size)
    key = (cfg.model, cfg.mode, cfg.batch_size, tuple(shape), _fingerprint(state))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    ref = spec.builder()
    ref.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    ref = ref.to(torch.float64)
    batch = spec.make_batch(cfg.batch_size, shape, device="cpu", dtype=torch.float64)
    if cfg.mode == "infer":
        ref.eval()
        with torch.no_grad():
            out = {"outputs": {k: v.detach() for k, v in spec.outputs(ref, batch).items()}}
    else:
        loss, grads = _train_step(spec, ref, ref, batch, contextlib.nullcontext())
        out = {"outputs": {"loss": loss}, "grads": {n: g.float() for n, g in grads.items() if g is not None}}
    del ref
    _CACHE[key] = out
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out


def _eager_grad_error(cfg: Any, spec: Any, model: nn.Module, state: dict[str, torch.Tensor], batch: Any,
                      ref_grads: dict[str, torch.Tensor]) -> float:
    """The gradient error against float64 of the same train step run eagerly in the row's precision: a fresh model
    (no Triton kernels, not compiled) with the row's weights, dtype, device and memory format, on the row's batch."""
    from .runner import precision

    p = next(model.parameters())
    eager = spec.builder()
    eager.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    eager = eager.to(p.device, p.dtype)
    if cfg.channels_last:
        eager = eager.to(memory_format=torch.channels_last)
    _, grads = _train_step(spec, eager, eager, batch, precision(cfg))
    rel, _, _ = grad_error(grads, ref_grads)
    return rel


# --- the hook called by bench.runner.measure --------------------------------------------------------------------------


def prepare(cfg: Any, facts: dict[str, Any]) -> None:
    """Before timing: keep the weights a train row starts from (on the CPU), so the check can restore them."""
    if cfg.mode == "train":
        facts["_acc_state"] = {k: v.detach().to("cpu", copy=True) for k, v in facts["_model"].state_dict().items()}


def check(cfg: Any, facts: dict[str, Any]) -> dict[str, Any]:
    """After timing: the ``acc_*`` columns for this config (see the module docstring). Raises only on a harness bug;
    the runner turns that into ``acc_status = error``."""
    from .runner import precision

    t0 = time.perf_counter()
    spec, model, run_model, batch = facts["_spec"], facts["_model"], facts["_run_model"], facts["_batch"]
    tol = tolerance(cfg)
    grad_tol = "" if cfg.mode == "infer" else (f" grad_rel<={tol.grad_rel:g}" if tol.grad_rel is not None
                                                else " grad_rel not gated")
    eager_gate = cfg.mode == "train" and tol.grad_rel is None and cfg.backend != "eager"
    if eager_gate:
        grad_tol = f" grad_rel<={GRAD_MULTIPLE:g}*eager+{GRAD_ATOL:g}"
    cols: dict[str, Any] = {"acc_tol": f"rel_fro<={tol.rel_fro:g}{grad_tol}"}
    if cfg.mode == "train" and spec.train_check:
        return {**cols, "acc_status": "skipped", "acc_note": spec.train_check, "acc_s": time.perf_counter() - t0}
    notes: list[str] = []
    if cfg.mode == "infer":
        # eval-mode timing leaves the weights as built; in-place copies keep a compiled graph valid
        state = _nondegenerate(model, {k: v.detach().cpu() for k, v in model.state_dict().items()})
        model.load_state_dict(state)
        model.eval()
        fn = functools.partial(spec.outputs_fn, model)
        if getattr(spec.outputs_fn, "uses_forward", False):
            fn = functools.partial(spec.outputs_fn, run_model)  # the timed module itself (compiled or not)
        elif cfg.backend == "compile":
            fn = torch.compile(fn)
        with torch.no_grad(), precision(cfg):
            got = fn(batch)
        ref = _reference(cfg, spec, state)
        zero = [k for k, v in ref["outputs"].items() if v.numel() > 1 and not bool(v.any())]
        if zero:
            raise ValueError(f"the float64 reference of {', '.join(zero)} is all zeros: the check would see nothing")
        m = compare_outputs(got, ref["outputs"])
        grad_rel, grad_bad = None, []
    else:
        state = _nondegenerate(model, facts["_acc_state"])
        model.load_state_dict(state)
        loss, grads = _train_step(spec, model, run_model, batch, precision(cfg))
        ref = _reference(cfg, spec, state)
        m = compare_outputs({"loss": loss}, ref["outputs"])
        grad_rel, cols["acc_grad_worst"], grad_bad = grad_error(grads, ref["grads"])
        cols.update(acc_loss=float(loss), acc_loss_ref=float(ref["outputs"]["loss"]), acc_grad_rel=grad_rel)
        model.zero_grad(set_to_none=True)
        if eager_gate:
            cols["acc_grad_eager"] = _eager_grad_error(cfg, spec, model, state, batch, ref["grads"])
    cols.update(acc_rel_fro=m["rel_fro"], acc_max_abs=m["max_abs"], acc_cos=m["cos"])
    if m["nonfinite"] or grad_bad:
        notes.append(f"NaN/Inf where the float64 reference is finite: {', '.join(m['nonfinite'] + grad_bad)}")
    if m["rel_fro"] > tol.rel_fro:
        notes.append(f"{m['worst']}: rel_fro {m['rel_fro']:.3g} > {tol.rel_fro:g}")
    if grad_rel is not None and tol.grad_rel is not None and grad_rel > tol.grad_rel:
        notes.append(f"grads: rel {grad_rel:.3g} > {tol.grad_rel:g} (worst {cols['acc_grad_worst']})")
    if grad_rel is not None and eager_gate:
        bound = GRAD_MULTIPLE * cols["acc_grad_eager"] + GRAD_ATOL
        if grad_rel > bound:
            notes.append(f"grads: rel {grad_rel:.3g} > {GRAD_MULTIPLE:g} x eager {cfg.dtype}'s "
                         f"{cols['acc_grad_eager']:.3g} + {GRAD_ATOL:g} (worst {cols['acc_grad_worst']})")
    cols["acc_status"] = "inaccurate" if notes else "ok"
    cols["acc_note"] = "; ".join(notes) if notes else f"worst: {m['worst']}"
    cols["acc_s"] = time.perf_counter() - t0
    return cols

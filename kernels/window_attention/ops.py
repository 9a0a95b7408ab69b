"""Operators ``visionbench::window_attention`` and ``visionbench::window_attention_backward``.

* ``window_attention(q, k, v, bias?, mask?, scale) -> out``: ``q, k, v [B_, H, N, D]``, ``bias [H, N, N]``,
  ``mask [nW, N, N]``; ``out [B_, H, N, D]`` in q's dtype with strides of a permuted ``[B_, N, H, D]`` buffer
  (``(N·H·D, D, H·D, 1)``), on every path, so that the fake kernel can say the same.
* ``window_attention_backward(grad, q, k, v, bias?, mask?, scale, need_dbias, need_dmask) -> (dq, dk, dv, dbias,
  dmask)``: dq/dk/dv contiguous ``[B_, H, N, D]`` in q's dtype; ``dbias [H, N, N]`` in bias's dtype and ``dmask
  [nW, N, N]`` in mask's dtype when requested (and present), else empty ``[0]`` tensors (a schema cannot return
  None).

Implementations: the Triton launchers where :func:`kernels.dispatch_path` is ``triton`` / ``triton-interpret``
(CUDA, the CPU interpreter, ``emulate_gpu``), the PyTorch reference (and its autograd) elsewhere. Capture-safe on
CUDA: no host->device copies, no ``.item()``, no per-call constants (the scale is a Python float); allocations are
the outputs, the backward's ``[groups, H, N, N]`` bias/mask partials and, for N > 64, LSE/Δ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._ops import triton_op
from .._triton import dispatch_path
from .kernel import window_attention_bwd, window_attention_fwd
from .reference import window_attention_reference

__all__ = ["window_attention_op", "window_attention_backward_op"]


def _out_like(q: Tensor) -> Tensor:
    B_, H, N, D = q.shape
    return q.new_empty((B_, N, H, D)).permute(0, 2, 1, 3)


def _use_reference(q: Tensor) -> bool:
    # Shapes beyond the kernel (N > MAX_N, D > MAX_D) take the reference in the public function, before the op;
    # called directly, the op's launcher raises for them (the Triton-only API's contract).
    return dispatch_path(q.device) == "reference"


@triton_op("window_attention")
def window_attention_op(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, mask: Tensor | None,
                        scale: float) -> Tensor:
    if _use_reference(q):
        return _out_like(q).copy_(window_attention_reference(q, k, v, bias, mask, scale))
    return window_attention_fwd(q, k, v, bias, mask, scale)


@window_attention_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, mask: Tensor | None, scale: float) -> Tensor:
    torch._check(q.dim() == 4 and k.shape == q.shape and v.shape == q.shape, lambda: "q, k, v must be [B_, H, N, D]")
    return _out_like(q)


def _empty(q: Tensor) -> Tensor:
    return q.new_empty((0,))


def _reference_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, mask: Tensor | None,
                        scale: float, need_dbias: bool, need_dmask: bool) -> tuple[Tensor, ...]:
    leaves = [t.detach().requires_grad_(True) if t is not None else None for t in (q, k, v, bias, mask)]
    with torch.enable_grad():
        out = window_attention_reference(*leaves, scale=scale)
        wrt = leaves[:3] + ([leaves[3]] if need_dbias else []) + ([leaves[4]] if need_dmask else [])
        grads = list(torch.autograd.grad(out, wrt, grad.to(out.dtype)))
    dq, dk, dv = (g.contiguous() for g in grads[:3])
    rest = grads[3:]
    dbias = rest.pop(0).contiguous() if need_dbias else _empty(q)
    dmask = rest.pop(0).contiguous() if need_dmask else _empty(q)
    return dq, dk, dv, dbias, dmask


@triton_op("window_attention_backward")
def window_attention_backward_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None,
                                 mask: Tensor | None, scale: float, need_dbias: bool,
                                 need_dmask: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    need_dbias = need_dbias and bias is not None
    need_dmask = need_dmask and mask is not None
    if _use_reference(q):
        return _reference_backward(grad, q, k, v, bias, mask, scale, need_dbias, need_dmask)
    dq, dk, dv, dbias, dmask = window_attention_bwd(grad, q, k, v, bias, mask, scale, need_dbias, need_dmask)
    return (dq, dk, dv, dbias if dbias is not None else _empty(q), dmask if dmask is not None else _empty(q))


@window_attention_backward_op.register_fake
def _(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, mask: Tensor | None, scale: float,
      need_dbias: bool, need_dmask: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv = (q.new_empty(q.shape) for _ in range(3))
    dbias = bias.new_empty(bias.shape) if need_dbias and bias is not None else _empty(q)
    dmask = mask.new_empty(mask.shape) if need_dmask and mask is not None else _empty(q)
    return dq, dk, dv, dbias, dmask


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's callback signature
    q, k, v, bias, mask, scale = inputs
    ctx.save_for_backward(q, k, v, bias, mask)
    ctx.scale = scale


def _backward(ctx, grad: Tensor):  # noqa: ANN001, ANN202
    q, k, v, bias, mask = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_dbias = bool(need[3]) and bias is not None
    need_dmask = bool(need[4]) and mask is not None
    dq, dk, dv, dbias, dmask = window_attention_backward_op(grad, q, k, v, bias, mask, ctx.scale, need_dbias,
                                                            need_dmask)
    return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None,
            dbias if need_dbias else None, dmask if need_dmask else None, None)


window_attention_op.register_autograd(_backward, setup_context=_setup_context)

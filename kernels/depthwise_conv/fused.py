"""Inference fusion: depthwise conv -> BatchNorm (folded into the conv) -> SiLU in one kernel launch.

EfficientNet's depthwise stage is ``Conv2d(groups=C, bias=False) -> BatchNorm2d -> SiLU`` (``ConvBNAct``). In eval
mode BN is a per-channel affine map, so it folds into the conv (``s = gamma / sqrt(var + eps)``)::

    w'[c] = w[c] * s[c],    b'[c] = beta[c] + (b[c] - mean[c]) * s[c]

and SiLU runs in the kernel's epilogue on the fp32 accumulator. The depthwise output is then written once instead
of being read and written again by BN and by SiLU (two full passes over the largest activations of the network).

This is a one-way inference transform (:func:`fuse_conv_bn_silu`): the folded weights are buffers, BN's statistics
are frozen, and the fused op has no backward of its own (with gradients required it runs unfused).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._triton import dispatch_path
from .kernel import conv_forward
from .op import DepthwiseConv2d, autocast_args, depthwise_conv2d, is_depthwise_conv
from .reference import IntPair, Padding, accepts_unbatched, conv_geometry

__all__ = ["DepthwiseConvBNSiLU", "depthwise_conv2d_silu", "fold_bn", "fuse_conv_bn_silu"]


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None,
            bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode ``bn`` that follows a depthwise conv into its ``weight [C, 1, kH, kW]`` and ``bias [C]``.

    Computed in float64, returned in ``weight``'s dtype: ``w' = w * s``, ``b' = beta + (b - mean) * s`` with
    ``s = gamma / sqrt(running_var + eps)`` (gamma = 1, beta = 0 without affine parameters).
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn needs BatchNorm running statistics (track_running_stats=True)")
    c = weight.shape[0]
    if bn.num_features != c:
        raise ValueError(f"BatchNorm has {bn.num_features} features, the conv {c} channels")
    with torch.no_grad():
        var, mean = bn.running_var.double(), bn.running_mean.double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
        s = gamma / torch.sqrt(var + bn.eps)
        b = bias.double() if bias is not None else torch.zeros_like(var)
        w = weight.double() * s.reshape(c, 1, 1, 1)
        return w.to(weight.dtype), (beta + (b - mean) * s).to(weight.dtype)


@accepts_unbatched
def depthwise_conv2d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                          stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1) -> torch.Tensor:
    """``silu(depthwise_conv2d(x, weight, bias, stride, padding, dilation))``, ``[N, C, H, W] -> [N, C, Ho, Wo]``
    (or unbatched ``[C, H, W] -> [C, Ho, Wo]``).

    One fused Triton launch when no gradient is needed (inference); the unfused, differentiable composition when
    autograd is recording and an input requires grad, or on the reference path.
    """
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if needs_grad or dispatch_path(x.device) == "reference":
        return F.silu(depthwise_conv2d(x, weight, bias, stride, padding, dilation))
    x, weight, bias = autocast_args(x, weight, bias)
    return conv_forward(x, weight, bias, conv_geometry(x, weight, bias, stride, padding, dilation), silu=True)


class DepthwiseConvBNSiLU(nn.Module):
    """Eval-only ``SiLU(BN(conv(x)))``, depthwise ``conv`` with ``bn`` folded in; ``[N, C, H, W] -> [N, C, Ho, Wo]``.

    The folded ``weight`` and ``bias`` are buffers (a snapshot: later changes to ``conv``/``bn`` are not seen).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        if not (is_depthwise_conv(conv) or type(conv) is DepthwiseConv2d):
            raise ValueError(f"not a depthwise conv with zero padding: {conv}")
        w, b = fold_bn(conv.weight, conv.bias, bn)
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d_silu(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, kernel_size={tuple(self.weight.shape[-2:])}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}")


def fuse_conv_bn_silu(model: nn.Module) -> int:
    """Inference transform, in place: in every ``nn.Sequential`` below ``model``, each run of children
    (depthwise conv, ``BatchNorm2d`` with running stats, ``SiLU``) becomes (:class:`DepthwiseConvBNSiLU`,
    ``Identity``, ``Identity``). Returns how many runs were fused. ``model`` must be in eval mode (BN's statistics
    are frozen into the weights); the state dict loses the fused BN entries, so fuse after loading weights.
    """
    if model.training:
        raise RuntimeError("fuse_conv_bn_silu folds BatchNorm's running statistics: call model.eval() first")
    count = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        keys = list(seq._modules)
        for i in range(len(keys) - 2):
            conv, bn, act = (seq._modules[k] for k in keys[i:i + 3])
            if ((is_depthwise_conv(conv) or type(conv) is DepthwiseConv2d)  # type: ignore[arg-type]
                    and type(bn) is nn.BatchNorm2d and bn.running_mean is not None and type(act) is nn.SiLU):
                setattr(seq, keys[i], DepthwiseConvBNSiLU(conv, bn))  # type: ignore[arg-type]
                setattr(seq, keys[i + 1], nn.Identity())
                setattr(seq, keys[i + 2], nn.Identity())
                count += 1
    return count

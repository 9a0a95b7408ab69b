"""Depthwise 2-D convolution (EfficientNet / MobileNet): Triton kernels, reference, module and registry entry.

``kernel.py`` (Triton kernels and launchers), ``reference.py`` (pure PyTorch), ``op.py`` (autograd Function,
dispatching :func:`depthwise_conv2d`, drop-in :class:`DepthwiseConv2d`, :func:`patch_model`), ``fused.py``
(inference-only conv + folded BN + SiLU in one launch: :func:`fuse_conv_bn_silu`).

Shape dicts (``KernelSpec.shapes`` / ``test_shapes``) have the keys ``N, C, H, W`` (input), ``kh, kw``, ``stride``,
``padding``, ``dilation`` (int or ``[h, w]``; padding may be ``"same"``), ``bias`` (bool) and ``layout``
(``"nchw"`` | ``"nhwc"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..registry import KernelInputs, KernelSpec, register_kernel
from .fused import DepthwiseConvBNSiLU, depthwise_conv2d_silu, fold_bn, fuse_conv_bn_silu
from .op import DepthwiseConv2d, depthwise_conv2d, depthwise_conv2d_triton, is_depthwise_conv, patch_model
from .reference import conv_geometry, depthwise_conv2d_reference

__all__ = [
    "DepthwiseConv2d",
    "DepthwiseConvBNSiLU",
    "depthwise_conv2d",
    "depthwise_conv2d_reference",
    "depthwise_conv2d_silu",
    "depthwise_conv2d_triton",
    "fold_bn",
    "fuse_conv_bn_silu",
    "is_depthwise_conv",
    "patch_model",
]


def _shape(n: int, c: int, h: int, w: int, k: int | tuple[int, int], stride: Any = 1, padding: Any = None,
           dilation: Any = 1, layout: str = "nchw", bias: bool = False) -> dict[str, Any]:
    kh, kw = (k, k) if isinstance(k, int) else k
    if padding is None:  # torchvision's symmetric "same" for odd kernels: (k - 1) // 2 * dilation
        d = (dilation, dilation) if isinstance(dilation, int) else dilation
        padding = [(kh - 1) // 2 * d[0], (kw - 1) // 2 * d[1]]
    return {"N": n, "C": c, "H": h, "W": w, "kh": kh, "kw": kw, "stride": stride, "padding": padding,
            "dilation": dilation, "bias": bias, "layout": layout}


# Every distinct depthwise layer of EfficientNet-B0 at 224x224 (stage, channels = expand * cin, input size, kernel,
# stride), torchvision padding (k - 1) // 2, no bias (the conv is followed by BN).
_B0_LAYERS: tuple[tuple[str, int, int, int, int], ...] = (
    ("s1", 32, 112, 3, 1),
    ("s2a", 96, 112, 3, 2),
    ("s2b", 144, 56, 3, 1),
    ("s3a", 144, 56, 5, 2),
    ("s3b", 240, 28, 5, 1),
    ("s4a", 240, 28, 3, 2),
    ("s4b", 480, 14, 3, 1),
    ("s5a", 480, 14, 5, 1),
    ("s5b", 672, 14, 5, 1),
    ("s6a", 672, 14, 5, 2),
    ("s6b", 1152, 7, 5, 1),
    ("s7", 1152, 7, 3, 1),
)

SHAPES: dict[str, dict[str, Any]] = {
    f"b0_{stage}_c{c}_{h}_k{k}s{s}_b128_{layout}": _shape(128, c, h, h, k, s, layout=layout)
    for stage, c, h, k, s in _B0_LAYERS
    for layout in ("nchw", "nhwc")
}

# Small shapes for the interpreter (each runs forward + backward in about a second): B0's layers scaled down, odd
# channel counts (3, 17, 96), sizes that are not multiples of any block, stride 2 on odd and even inputs, padding 0
# and "same", a non-square kernel, dilation 2, bias, tuple and string padding; both memory formats.
TEST_SHAPES: dict[str, dict[str, Any]] = {
    "b0_s1_c32_k3s1_nchw": _shape(2, 32, 12, 12, 3),
    "b0_s2a_c96_k3s2_odd_nhwc": _shape(1, 96, 13, 11, 3, 2, layout="nhwc"),
    "b0_s3a_c17_k5s2_odd_nchw": _shape(2, 17, 11, 9, 5, 2),
    "b0_s3b_c17_k5s1_nhwc_bias": _shape(2, 17, 9, 10, 5, layout="nhwc", bias=True),
    "b0_s6b_c24_7x7_k5s1_nchw": _shape(2, 24, 7, 7, 5),
    "k7_c3_s1_nhwc": _shape(2, 3, 10, 13, 7, layout="nhwc"),
    "k7_c3_s2_nchw_bias": _shape(1, 3, 15, 14, 7, 2, bias=True),
    "k3_c17_s2_pad0_even_nchw": _shape(2, 17, 10, 12, 3, 2, padding=0),
    "k3_c17_pad0_nhwc": _shape(1, 17, 9, 11, 3, padding=0, layout="nhwc"),
    "k3x5_c5_s2x1_nonsquare_nchw_bias": _shape(2, 5, 10, 9, (3, 5), (2, 1), padding=[1, 2], bias=True),
    "k5x3_c17_pad2x0_nhwc": _shape(1, 17, 9, 8, (5, 3), padding=[2, 0], layout="nhwc"),
    "k3_c17_dil2_nhwc": _shape(2, 17, 11, 11, 3, dilation=2, layout="nhwc"),
    "k3_c5_dil2x1_s2_nchw": _shape(1, 5, 12, 11, 3, 2, dilation=[2, 1]),
    "k5_c17_same_str_nchw": _shape(2, 17, 8, 9, 5, padding="same"),
}


def make_inputs(shape: Mapping[str, Any], dtype: torch.dtype, device: torch.device | str, seed: int) -> KernelInputs:
    """Seeded ``x [N, C, H, W]`` (standard normal, in ``layout``), ``weight [C, 1, kh, kw]`` scaled by
    ``1/sqrt(kh*kw)`` so outputs are O(1), ``bias [C]`` or None; ``args = (x, weight, bias)``."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w, kh, kw = (int(shape[k]) for k in ("N", "C", "H", "W", "kh", "kw"))
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(c, 1, kh, kw, generator=g) / (kh * kw) ** 0.5
    bias = torch.randn(c, generator=g) if shape.get("bias", False) else None
    fmt = torch.channels_last if shape.get("layout", "nchw") == "nhwc" else torch.contiguous_format
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    weight = weight.to(device=device, dtype=dtype)
    bias = bias.to(device=device, dtype=dtype) if bias is not None else None
    kwargs = {k: shape[k] for k in ("stride", "padding", "dilation")}
    return KernelInputs((x, weight, bias), kwargs, (0, 1, 2) if bias is not None else (0, 1))


def _out_hw(shape: Mapping[str, Any]) -> tuple[int, int]:
    x = torch.empty(1, 1, int(shape["H"]), int(shape["W"]), device="meta")
    w = torch.empty(1, 1, int(shape["kh"]), int(shape["kw"]), device="meta")
    return conv_geometry(x, w, None, shape["stride"], shape["padding"], shape["dilation"]).out_hw


def flops(shape: Mapping[str, Any]) -> int:
    """Forward FLOPs ``2 * N * C * Ho * Wo * kh * kw`` (multiply-add = 2; the bias add is not counted)."""
    ho, wo = _out_hw(shape)
    return 2 * shape["N"] * shape["C"] * ho * wo * shape["kh"] * shape["kw"]


def _sizes(shape: Mapping[str, Any]) -> tuple[int, int, int, int]:
    n, c = shape["N"], shape["C"]
    ho, wo = _out_hw(shape)
    return n * c * shape["H"] * shape["W"], n * c * ho * wo, c * shape["kh"] * shape["kw"], c if shape["bias"] else 0


def min_bytes(shape: Mapping[str, Any], dtype: torch.dtype) -> int:
    """Forward floor: read x, weight (and bias) once, write y once."""
    x, y, w, b = _sizes(shape)
    return (x + y + w + b) * torch.empty((), dtype=dtype).element_size()


def min_bytes_backward(shape: Mapping[str, Any], dtype: torch.dtype) -> int:
    """Backward floor: read dy, x and weight once; write dx, dweight (and dbias) once."""
    x, y, w, b = _sizes(shape)
    return (y + x + w + x + w + b) * torch.empty((), dtype=dtype).element_size()


def _peer(name: str, memory_format: torch.memory_format, doc: str) -> Callable[..., torch.Tensor]:
    def peer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
             padding: Any = 0, dilation: Any = 1) -> torch.Tensor:
        # A layout conversion, if the input is in the other format, is part of what this provider costs.
        x = x.contiguous(memory_format=memory_format)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups=x.shape[1])

    peer.__name__ = peer.__qualname__ = name
    peer.__doc__ = doc
    return peer


PEERS: dict[str, Callable[..., torch.Tensor]] = {
    "aten_nchw": _peer("aten_nchw", torch.contiguous_format,
                       "``F.conv2d(groups=C)`` on NCHW input: ATen's native depthwise kernel (cuDNN for some fp16)."),
    "cudnn_channels_last": _peer("cudnn_channels_last", torch.channels_last,
                                 "``F.conv2d(groups=C)`` on channels_last input: cuDNN on CUDA."),
}

SPEC = register_kernel(
    KernelSpec(
        name="depthwise_conv",
        fn=depthwise_conv2d,
        triton_fn=depthwise_conv2d_triton,
        reference=depthwise_conv2d_reference,
        make_inputs=make_inputs,
        shapes=SHAPES,
        test_shapes=TEST_SHAPES,
        flops=flops,
        min_bytes=min_bytes,
        min_bytes_backward=min_bytes_backward,
        peers=PEERS,
        patch_model=patch_model,
        dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64),
        description="Depthwise 2-D convolution, F.conv2d(groups=C): NCHW and channels_last, fwd + bwd",
    )
)

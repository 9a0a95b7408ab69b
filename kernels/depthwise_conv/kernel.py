"""Triton depthwise 2-D convolution: forward, input gradient and weight/bias gradient, NCHW and channels_last.

Forward, for ``x: [N, C, H, W]``, ``w: [C, 1, KH, KW]``, optional ``b: [C]``, stride ``(SH, SW)``, top/left
padding ``(PH, PW)`` (bottom/right padding is implicit in the output size ``Ho, Wo``), dilation ``(DH, DW)``::

    y[n, c, i, j] = b[c] + sum_{kh < KH, kw < KW} w[c, kh, kw] * x[n, c, i*SH - PH + kh*DH, j*SW - PW + kw*DW]

with ``x`` read as zero outside ``[0, H) x [0, W)``. The input gradient is the same gather run "transposed"
(``TRANSPOSED=True``), so it needs no atomics and writes every element of ``dx`` exactly once::

    dx[n, c, h, v] = sum_{kh, kw} w[c, kh, kw] * dy[n, c, (h + PH - kh*DH) / SH, (v + PW - kw*DW) / SW]

where a tap counts only if both divisions are exact and land inside ``[0, Ho) x [0, Wo)``. The weight gradient
``dw[c, kh, kw] = sum_{n, i, j} dy[n, c, i, j] * x[n, c, i*SH - PH + kh*DH, j*SW - PW + kw*DW]`` (and
``db[c] = sum dy[n, c, :, :]``) is a reduction over N*Ho*Wo, done in two deterministic stages: stage 1 writes
one fp32 partial per (split, channel, tap) -- each program walks its share of the reduction domain in a fixed
order, reducing each tile in fp32 -- and stage 2 sums the ``SPLIT`` partials of each (channel, tap) in index
order. No atomics, so the result is bitwise reproducible for a given shape and device.

Two layouts, chosen by the launcher from the input's memory format (any other strides run through the NCHW
kernels, which take arbitrary strides):

* NCHW ("planar"): one program per (output tile ``[BLOCK_H, BLOCK_W]``, ``BLOCK_PL`` planes ``n*C + c``); rows
  of the tile are contiguous in memory; several planes per program only when a plane is smaller than a tile.
* channels_last: one program per (``BLOCK_P`` output pixels, flattened over ``N*Ho*Wo``, ``BLOCK_C`` channels);
  channels are contiguous, so every tap is a coalesced (vectorized when 16 divides ``C``) ``[BLOCK_P, BLOCK_C]``
  load and the per-pixel index math is shared by the channels. The weight is passed transposed
  (``[KH*KW, C]``) so each tap's weights are a contiguous ``[BLOCK_C]`` vector.

``KH, KW`` and the stride/padding/dilation are constexpr; the ``KW`` taps of a kernel row are unrolled and the
``KH`` rows are a loop: unrolling all ``KH*KW`` taps lets the compiler hoist every load, and the channels_last
kernel then spilled for 5x5 (``ptxas -v``, sm_90, compiled here without a GPU); with the row loop and ~8 elements
per thread no 3x3/5x5 kernel spills (forward/input-gradient 40-96 registers, weight-gradient 64-128; the 7x7
channels_last weight gradient spills ~20 bytes).
Everything accumulates in fp32 (fp64 for fp64 inputs, ``ACC_F64``) and is stored in the output's dtype. Offsets
are int32 (int64 for per-image bases in the NCHW weight gradient); the launchers require every tensor to have
fewer than 2**31 elements.
"""

from __future__ import annotations

import torch

from .._ops import traceable
from .._triton import HAS_TRITON, empty_output, gpu_launch, interpreted, sm_count, tl, triton
from .reference import ConvGeometry, is_channels_last

__all__ = [
    "conv_forward",
    "conv_backward_input",
    "conv_backward_weight",
    "is_channels_last",
]

_INT32_MAX = 2**31 - 1


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def _num_warps(elements: int) -> int:
    # ~8 elements per thread: with KW taps in flight per row of the kernel that stays under ~100 registers.
    return max(1, min(8, elements // 256))


if HAS_TRITON:

    @triton.jit
    def _tap_index(o, k, SIZE, S: tl.constexpr, P: tl.constexpr, D: tl.constexpr,
                   TRANSPOSED: tl.constexpr):
        """Source index along one axis for output index ``o`` and tap ``k``, and whether that tap exists.

        Forward: ``i = o*S - P + k*D`` inside ``[0, SIZE)``. Transposed (input gradient): ``o`` indexes ``dx``
        and the source is ``dy``: ``t = o + P - k*D`` must be a multiple of ``S`` with ``t / S`` in ``[0, SIZE)``.
        """
        if TRANSPOSED:
            t = o + P - k * D
            idx = t // S
            ok = (t >= 0) & (t < SIZE * S)
            if S != 1:
                ok = ok & (t % S == 0)
        else:
            idx = o * S - P + k * D
            ok = (idx >= 0) & (idx < SIZE)
        return idx, ok

    @triton.jit
    def _rtne_bf16(acc):
        """Round fp32 ``acc`` to the nearest bf16 value (ties to even), kept in fp32. Triton's CPU interpreter
        truncates on ``.to(tl.bfloat16)`` while the GPU rounds to nearest; rounding first makes that cast exact,
        so interpreter results carry the GPU's rounding error, not twice it."""
        bits = acc.to(tl.uint32, bitcast=True)
        bits = bits + (((bits >> 16) & 1) + 0x7FFF)
        bits = (bits >> 16) << 16
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _dw_conv_planar_kernel(
        src_ptr, w_ptr, b_ptr, out_ptr,
        C, NC, HS, WS, HO, WO,
        s_sn, s_sc, s_sh, s_sw,
        o_sn, o_sc, o_sh, o_sw,
        w_sc, w_st,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
        PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        TRANSPOSED: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, ACC_F64: tl.constexpr,
        RTNE_BF16: tl.constexpr, BLOCK_PL: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    ):
        """``out[n, c, tile] = (b[c] +) sum_taps w[c, tap] * src[n, c, tap-shifted tile]`` on a
        ``[BLOCK_PL planes, BLOCK_H, BLOCK_W]`` tile, plane = ``n*C + c`` (``BLOCK_PL > 1`` only for planes smaller
        than a tile); src ``[N, C, HS, WS]``, out ``[N, C, HO, WO]``, any strides;
        grid ``(cdiv(N*C, BLOCK_PL), tiles_h * tiles_w)`` (planes on axis 0: N*C can exceed the 65535 limit of
        axis 1)."""
        ACC = tl.float64 if ACC_F64 else tl.float32
        pl = tl.program_id(0) * BLOCK_PL + tl.arange(0, BLOCK_PL)
        pid_t = tl.program_id(1)
        pl_ok = pl < NC
        n = pl // C
        c = pl % C
        tiles_w = tl.cdiv(WO, BLOCK_W)
        oh = (pid_t // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
        ow = (pid_t % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
        src = src_ptr + (n * s_sn + c * s_sc)[:, None, None]
        acc = tl.zeros([BLOCK_PL, BLOCK_H, BLOCK_W], dtype=ACC)
        for kh in range(KH):  # a loop, not unrolled: unrolling KH*KW taps lets the compiler hoist every load
            # (hundreds of registers, spills); KW taps per iteration are enough in flight
            ih, h_ok = _tap_index(oh, kh, HS, SH, PH, DH, TRANSPOSED)
            row = src + (ih * s_sh)[None, :, None]
            row_ok = pl_ok[:, None, None] & h_ok[None, :, None]
            for kw in tl.static_range(KW):
                iw, w_ok = _tap_index(ow, kw, WS, SW, PW, DW, TRANSPOSED)
                wt = tl.load(w_ptr + c * w_sc + (kh * KW + kw) * w_st, mask=pl_ok, other=0.0).to(ACC)
                v = tl.load(row + (iw * s_sw)[None, None, :], mask=row_ok & w_ok[None, None, :], other=0.0)
                acc += v.to(ACC) * wt[:, None, None]
        if HAS_BIAS:
            acc += tl.load(b_ptr + c, mask=pl_ok, other=0.0).to(ACC)[:, None, None]
        out = out_ptr + (n * o_sn + c * o_sc)[:, None, None] + (oh * o_sh)[None, :, None] + (ow * o_sw)[None, None, :]
        mask = pl_ok[:, None, None] & (oh < HO)[None, :, None] & (ow < WO)[None, None, :]
        if SILU:  # fused inference epilogue: silu(z) = z * sigmoid(z), in the accumulator's precision
            acc = acc / (1.0 + tl.exp(-acc))
        if RTNE_BF16:
            acc = _rtne_bf16(acc)
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _dw_conv_cl_kernel(
        src_ptr, w_ptr, b_ptr, out_ptr,
        C, NP, HS, WS, HO, WO,
        s_sn, s_sc, s_sh, s_sw,
        o_sn, o_sc, o_sh, o_sw,
        w_sc, w_st,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
        PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        TRANSPOSED: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, ACC_F64: tl.constexpr,
        RTNE_BF16: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Channels-last variant of :func:`_dw_conv_planar_kernel`: a ``[BLOCK_P pixels, BLOCK_C channels]`` tile
        of the ``NP = N*HO*WO`` output pixels (flattened over images too, so small planes fill a tile);
        grid ``(cdiv(NP, BLOCK_P), cdiv(C, BLOCK_C))``."""
        ACC = tl.float64 if ACC_F64 else tl.float32
        q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        q_ok = q < NP
        c_ok = cc < C
        plane = HO * WO
        n = q // plane
        r = q % plane
        oh = r // WO
        ow = r % WO
        src = src_ptr + (n * s_sn)[:, None] + cc[None, :] * s_sc
        acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
        for kh in range(KH):  # a loop, not unrolled: unrolling KH*KW taps lets the compiler hoist every load
            # (hundreds of registers, spills); KW taps per iteration are enough in flight
            ih, h_ok = _tap_index(oh, kh, HS, SH, PH, DH, TRANSPOSED)
            row_off = ih * s_sh
            row_ok = h_ok & q_ok
            for kw in tl.static_range(KW):
                iw, w_ok = _tap_index(ow, kw, WS, SW, PW, DW, TRANSPOSED)
                wt = tl.load(w_ptr + cc * w_sc + (kh * KW + kw) * w_st, mask=c_ok, other=0.0).to(ACC)
                m = (row_ok & w_ok)[:, None] & c_ok[None, :]
                v = tl.load(src + (row_off + iw * s_sw)[:, None], mask=m, other=0.0)
                acc += v.to(ACC) * wt[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + cc, mask=c_ok, other=0.0).to(ACC)[None, :]
        out = out_ptr + (n * o_sn + oh * o_sh + ow * o_sw)[:, None] + cc[None, :] * o_sc
        if SILU:
            acc = acc / (1.0 + tl.exp(-acc))
        if RTNE_BF16:
            acc = _rtne_bf16(acc)
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=q_ok[:, None] & c_ok[None, :])

    @triton.jit
    def _dw_wgrad_planar_kernel(
        x_ptr, dy_ptr, part_ptr,
        N, C, H, W, HO, WO, SPLIT,
        x_sn, x_sc, x_sh, x_sw,
        g_sn, g_sc, g_sh, g_sw,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
        PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        ACC_F64: tl.constexpr, KK1_PAD: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    ):
        """Stage 1 of the weight gradient, NCHW: program ``(channel block, s)`` sums ``dy * shifted x`` over the
        ``[BLOCK_C, BLOCK_H, BLOCK_W]`` output tiles ``s, s + SPLIT, s + 2*SPLIT, ...`` of its ``N * tiles`` tiles,
        each tap's tile reduced to ``[BLOCK_C]`` in fp32, and writes ``part[s, c, 0:KK]`` (taps) and
        ``part[s, c, KK]`` (``sum dy``, the bias gradient); part ``[SPLIT, C, KK+1]``."""
        ACC = tl.float64 if ACC_F64 else tl.float32
        KK: tl.constexpr = KH * KW
        cc = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        s = tl.program_id(1)
        c_ok = cc < C
        taps = tl.arange(0, KK1_PAD)[:, None]
        acc = tl.zeros([KK1_PAD, BLOCK_C], dtype=ACC)
        tiles_w = tl.cdiv(WO, BLOCK_W)
        tiles = tl.cdiv(HO, BLOCK_H) * tiles_w
        for item in range(s, N * tiles, SPLIT):
            n = item // tiles
            r = item % tiles
            oh = (r // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
            ow = (r % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
            oh_ok = oh < HO
            ow_ok = ow < WO
            g_ptr = (dy_ptr + n.to(tl.int64) * g_sn + (cc * g_sc)[:, None, None] + (oh * g_sh)[None, :, None]
                     + (ow * g_sw)[None, None, :])
            g = tl.load(g_ptr, mask=c_ok[:, None, None] & oh_ok[None, :, None] & ow_ok[None, None, :],
                        other=0.0).to(ACC)
            xb = x_ptr + n.to(tl.int64) * x_sn + (cc * x_sc)[:, None, None]
            for kh in range(KH):  # a loop, not unrolled (see _dw_conv_planar_kernel)
                ih, h_ok = _tap_index(oh, kh, H, SH, PH, DH, False)
                row = xb + (ih * x_sh)[None, :, None]
                row_ok = c_ok[:, None, None] & (h_ok & oh_ok)[None, :, None]
                for kw in tl.static_range(KW):
                    iw, w_ok = _tap_index(ow, kw, W, SW, PW, DW, False)
                    v = tl.load(row + (iw * x_sw)[None, None, :], mask=row_ok & (w_ok & ow_ok)[None, None, :],
                                other=0.0)
                    part = tl.sum(tl.sum(v.to(ACC) * g, axis=2), axis=1)
                    acc = tl.where(taps == kh * KW + kw, acc + part[None, :], acc)
            acc = tl.where(taps == KK, acc + tl.sum(tl.sum(g, axis=2), axis=1)[None, :], acc)
        tl.store(part_ptr + (s * C + cc[None, :]) * (KK + 1) + taps, acc, mask=(taps < KK + 1) & c_ok[None, :])

    @triton.jit
    def _dw_wgrad_cl_kernel(
        x_ptr, dy_ptr, part_ptr,
        N, C, H, W, HO, WO, SPLIT,
        x_sn, x_sc, x_sh, x_sw,
        g_sn, g_sc, g_sh, g_sw,
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr,
        PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        ACC_F64: tl.constexpr, KK1_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Stage 1 of the weight gradient, channels_last: program ``(channel block, s)`` walks the pixel blocks
        ``s, s + SPLIT, ...`` of the flattened ``N*HO*WO`` output pixels; each tap's ``[BLOCK_P, BLOCK_C]`` product
        is reduced over pixels into a ``[KK1_PAD, BLOCK_C]`` fp32 accumulator. Writes ``part[s, c, 0:KK+1]``."""
        ACC = tl.float64 if ACC_F64 else tl.float32
        KK: tl.constexpr = KH * KW
        cc = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        s = tl.program_id(1)
        c_ok = cc < C
        taps = tl.arange(0, KK1_PAD)[:, None]
        acc = tl.zeros([KK1_PAD, BLOCK_C], dtype=ACC)
        plane = HO * WO
        total = N * plane
        for blk in range(s, tl.cdiv(total, BLOCK_P), SPLIT):
            q = blk * BLOCK_P + tl.arange(0, BLOCK_P)
            q_ok = q < total
            n = q // plane
            r = q % plane
            oh = r // WO
            ow = r % WO
            g = tl.load(dy_ptr + (n * g_sn + oh * g_sh + ow * g_sw)[:, None] + cc[None, :] * g_sc,
                        mask=q_ok[:, None] & c_ok[None, :], other=0.0).to(ACC)
            xb = x_ptr + (n * x_sn)[:, None] + cc[None, :] * x_sc
            for kh in range(KH):  # a loop, not unrolled (see _dw_conv_planar_kernel)
                ih, h_ok = _tap_index(oh, kh, H, SH, PH, DH, False)
                row_off = ih * x_sh
                row_ok = h_ok & q_ok
                for kw in tl.static_range(KW):
                    iw, w_ok = _tap_index(ow, kw, W, SW, PW, DW, False)
                    v = tl.load(xb + (row_off + iw * x_sw)[:, None], mask=(row_ok & w_ok)[:, None] & c_ok[None, :],
                                other=0.0)
                    acc = tl.where(taps == kh * KW + kw, acc + tl.sum(v.to(ACC) * g, axis=0)[None, :], acc)
            acc = tl.where(taps == KK, acc + tl.sum(g, axis=0)[None, :], acc)
        tl.store(part_ptr + (s * C + cc[None, :]) * (KK + 1) + taps, acc, mask=(taps < KK + 1) & c_ok[None, :])

    @triton.jit
    def _dw_wgrad_reduce_kernel(
        part_ptr, gw_ptr, gb_ptr, C, SPLIT,
        KK: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_F64: tl.constexpr, RTNE_BF16: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Stage 2: ``gw[c, t] = sum_s part[s, c, t]`` (t < KK) and ``gb[c] = sum_s part[s, c, KK]``, summed in
        ``s`` order; part ``[SPLIT, C, KK+1]``, gw ``[C, KK]`` contiguous, gb ``[C]``."""
        ACC = tl.float64 if ACC_F64 else tl.float32
        j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        total = C * (KK + 1)
        ok = j < total
        acc = tl.zeros([BLOCK], dtype=ACC)
        for s in range(0, SPLIT):
            acc += tl.load(part_ptr + s * total + j, mask=ok, other=0.0)
        c = j // (KK + 1)
        t = j % (KK + 1)
        if RTNE_BF16:
            acc = _rtne_bf16(acc)
        tl.store(gw_ptr + c * KK + t, acc.to(gw_ptr.dtype.element_ty), mask=ok & (t < KK))
        if HAS_BIAS:
            tl.store(gb_ptr + c, acc.to(gb_ptr.dtype.element_ty), mask=ok & (t == KK))


# --- Launchers ---------------------------------------------------------------------------------------------------


def _check_size(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.numel() > _INT32_MAX:
            raise ValueError(f"depthwise_conv2d: tensors over 2**31 elements are not supported (got {tuple(t.shape)})")


def _planar_blocks(planes: int, ho: int, wo: int, device: torch.device, target: int = 1024) -> tuple[int, int, int]:
    """``(planes, BLOCK_H, BLOCK_W)`` per program for the NCHW kernels: about ``target`` outputs on the GPU (rows of
    up to 128 contiguous outputs; several planes only when a plane is smaller than that)."""
    if gpu_launch(device):
        bw = min(128, max(8, _next_pow2(wo)))
        bh = min(_next_pow2(ho), max(1, target // bw))
        bc = min(_next_pow2(planes), max(1, target // (bh * bw)))
    else:
        # Interpreter: the per-program, per-op overhead dominates, so few big tiles.
        bw = min(64, _next_pow2(wo))
        bh = min(_next_pow2(ho), max(1, 4096 // bw))
        bc = min(_next_pow2(planes), max(1, 16384 // (bh * bw)))
    return bc, bh, bw


def _cl_blocks(c: int, pixels: int, device: torch.device) -> tuple[int, int]:
    """``(BLOCK_P, BLOCK_C)`` for the channels_last forward/input-gradient kernel."""
    if gpu_launch(device):
        # 64 channels = 128 B of bf16 per pixel: full sectors; 32 pixels -> 2K elements per program (8 warps).
        bc = min(64, max(8, _next_pow2(c)))
        bp = min(max(16, _next_pow2(pixels)), max(16, 2048 // bc))
    else:
        bc = min(2048, _next_pow2(c))
        bp = min(_next_pow2(pixels), max(1, 16384 // bc))
    return bp, bc


def _cl_wgrad_blocks(c: int, pixels: int, kk: int, device: torch.device) -> tuple[int, int]:
    """Channels-last weight-gradient tile ``(BLOCK_P, BLOCK_C)``. Each tap costs a ``[BLOCK_P, BLOCK_C]`` FMA plus a
    ``[next_pow2(kk+1), BLOCK_C]`` accumulator update, so on the GPU ``BLOCK_P >= 4 * next_pow2(kk+1)`` keeps the
    update under ~25% of the work (50% for 7x7, where the tile is capped at 4096 elements for registers)."""
    if not gpu_launch(device):
        return _cl_blocks(c, pixels, device)
    bc = min(32, max(8, _next_pow2(c)))
    bp = min(max(64, 4 * _next_pow2(kk + 1)), 4096 // bc)
    return bp, bc


def _acc_f64(x: torch.Tensor) -> bool:
    return x.dtype == torch.float64


def _rtne_bf16_needed(out: torch.Tensor) -> bool:
    """bf16 output written by the CPU interpreter (see ``_rtne_bf16``); the GPU's own cast already rounds."""
    return out.dtype == torch.bfloat16 and interpreted(out.device)


def _launch_conv(src: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
                 geo: ConvGeometry, transposed: bool, channels_last: bool, silu: bool = False) -> None:
    """Run the forward (``transposed=False``: src = x, out = y) or input-gradient gather (src = dy, out = dx)."""
    n, c, hs, ws = src.shape
    ho, wo = out.shape[-2:]
    if out.numel() == 0:
        return
    kk = geo.kh * geo.kw
    w2 = weight.reshape(c, kk)
    b_arg = bias if bias is not None else w2  # never read when HAS_BIAS is False
    common = dict(TRANSPOSED=transposed, HAS_BIAS=bias is not None, SILU=silu, ACC_F64=_acc_f64(src),
                  RTNE_BF16=_rtne_bf16_needed(out), **geo.constexprs())
    if channels_last:
        wt = w2.t()  # [KK, C] view read through its strides: no transposed copy per call (capture-safe)
        bp, bc = _cl_blocks(c, n * ho * wo, src.device)
        grid = (triton.cdiv(n * ho * wo, bp), triton.cdiv(c, bc))
        traceable(_dw_conv_cl_kernel)[grid](src, wt, b_arg, out, c, n * ho * wo, hs, ws, ho, wo, *src.stride(),
                                            *out.stride(), wt.stride(1), wt.stride(0), BLOCK_P=bp, BLOCK_C=bc,
                                            num_warps=_num_warps(bp * bc), **common)
    else:
        bpl, bh, bw = _planar_blocks(n * c, ho, wo, src.device)
        grid = (triton.cdiv(n * c, bpl), triton.cdiv(ho, bh) * triton.cdiv(wo, bw))
        traceable(_dw_conv_planar_kernel)[grid](src, w2, b_arg, out, c, n * c, hs, ws, ho, wo, *src.stride(),
                                                *out.stride(), w2.stride(0), w2.stride(1), BLOCK_PL=bpl, BLOCK_H=bh,
                                                BLOCK_W=bw, num_warps=_num_warps(bpl * bh * bw), **common)


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geo: ConvGeometry,
                 silu: bool = False) -> torch.Tensor:
    """``y [N, C, Ho, Wo]`` in ``x``'s memory format (channels_last stays channels_last, anything else -> NCHW);
    ``silu=True`` applies ``silu`` to it in the epilogue (inference: no backward for that)."""
    channels_last = is_channels_last(x)
    n, c = x.shape[:2]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = empty_output((n, c, *geo.out_hw), x.dtype, x.device, memory_format=fmt)
    _check_size(x, y)
    _launch_conv(x, weight, bias, y, geo, transposed=False, channels_last=channels_last, silu=silu)
    return y


def conv_backward_input(dy: torch.Tensor, weight: torch.Tensor, geo: ConvGeometry,
                        channels_last: bool) -> torch.Tensor:
    """``dx [N, C, H, W]`` from ``dy [N, C, Ho, Wo]`` (every element written; zero where no tap reaches it)."""
    n, c = dy.shape[:2]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dx = empty_output((n, c, *geo.in_hw), dy.dtype, dy.device, memory_format=fmt)
    _check_size(dy, dx)
    _launch_conv(dy, weight, None, dx, geo, transposed=True, channels_last=channels_last)
    return dx


# Programs per weight-gradient reduction on the CPU interpreter: 1 is fastest there; tests raise it to exercise the
# multi-split path that the GPU always takes.
CPU_SPLIT = 1


def _split(work_items: int, programs_per_split: int, device: torch.device) -> int:
    """How many programs share one reduction: enough to fill the GPU (~4 programs per SM), at most one per item."""
    target = 4 * sm_count(device) if gpu_launch(device) else CPU_SPLIT * programs_per_split
    return max(1, min(work_items, -(-target // max(1, programs_per_split))))


def conv_backward_weight(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool,
                         geo: ConvGeometry, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(dw [C, 1, KH, KW] in weight's dtype, db [C] or None)``: two-stage deterministic reduction over N*Ho*Wo.

    Stage 1 writes fp32 (fp64 for fp64 inputs) partials ``[SPLIT, C, KH*KW + 1]``; stage 2 sums them in order.
    """
    n, c, h, w = x.shape
    ho, wo = geo.out_hw
    kk = geo.kh * geo.kw
    acc_dtype = torch.float64 if _acc_f64(x) else torch.float32
    gw = empty_output((c, 1, geo.kh, geo.kw), weight.dtype, weight.device)
    gb = empty_output((c,), weight.dtype, weight.device) if has_bias else None
    if c == 0:
        return gw, gb
    _check_size(dy, x)
    common = dict(ACC_F64=_acc_f64(x), KK1_PAD=_next_pow2(kk + 1), **geo.constexprs())
    if channels_last:
        bp, bc = _cl_wgrad_blocks(c, n * ho * wo, kk, x.device)
        c_blocks = triton.cdiv(c, bc)
        split = _split(triton.cdiv(n * ho * wo, bp), c_blocks, x.device)
        part = empty_output((split, c, kk + 1), acc_dtype, x.device)
        traceable(_dw_wgrad_cl_kernel)[(c_blocks, split)](x, dy, part, n, c, h, w, ho, wo, split, *x.stride(),
                                                          *dy.stride(), BLOCK_P=bp, BLOCK_C=bc,
                                                          num_warps=_num_warps(bp * bc), **common)
    else:
        # Bigger tiles than the forward (8 warps): each tap's tile ends in a block reduction, so amortize it.
        bc, bh, bw = _planar_blocks(c, ho, wo, x.device, target=2048)
        c_blocks = triton.cdiv(c, bc)
        tiles = triton.cdiv(ho, bh) * triton.cdiv(wo, bw)
        split = _split(n * tiles, c_blocks, x.device)
        part = empty_output((split, c, kk + 1), acc_dtype, x.device)
        traceable(_dw_wgrad_planar_kernel)[(c_blocks, split)](x, dy, part, n, c, h, w, ho, wo, split, *x.stride(),
                                                   *dy.stride(), BLOCK_C=bc, BLOCK_H=bh, BLOCK_W=bw,
                                                   num_warps=_num_warps(bc * bh * bw), **common)
    block = 1024 if gpu_launch(x.device) else _next_pow2(min(c * (kk + 1), 8192))
    traceable(_dw_wgrad_reduce_kernel)[(triton.cdiv(c * (kk + 1), block),)](
        part, gw, gb if gb is not None else gw, c, split, KK=kk, HAS_BIAS=has_bias, ACC_F64=_acc_f64(x),
        RTNE_BF16=_rtne_bf16_needed(gw), BLOCK=block, num_warps=4,
    )
    return gw, gb

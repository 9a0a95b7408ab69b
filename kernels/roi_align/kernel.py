"""Triton ROI Align: forward gather kernel, pre-reduced backward scatter kernel, and their launchers.

Semantics are torchvision's (see ``reference.py`` for the formulas). Shapes: ``input [N, C, H, W]`` (NCHW or
channels_last memory), ``rois [K, 5]`` (batch index, x1, y1, x2, y2; any float dtype), ``out [K, C, OH, OW]``.

One kernel serves both the single-level op and the multi-level (FPN) op: with ``MULTI_LEVEL`` each ROI reads its
level ``l = levels[k]`` and looks up ``(element offset, H_l, W_l)`` in an int64 table and ``scale_l`` in a float64
table. The offset is the level's first element relative to the pointer passed to the kernel (the level-0 map), so all
levels run in one launch without copying them into one buffer.

Numerics: per-ROI box scaling in float64 then rounded to the compute type (as torchvision's C++ does with its double
``spatial_scale``), coordinates, weights and accumulation in ``ACC`` (float32; float64 for float64 inputs), output
rounded to the input dtype.

Forward (``_roi_align_fwd_kernel``): one program per (ROI, channel block, bin block) keeps a ``[BLOCK_C, BLOCK_P]``
accumulator and loops over the ROI's ``gh x gw`` sampling grid (data-dependent bounds, per ROI). Each sample loads
4 taps for all channels of the block: with channels_last memory the channel axis is contiguous, so every tap is a
coalesced vector load; with NCHW the bin axis is the fastest-varying one (neighbouring bins read neighbouring x).

Backward (``_roi_align_bwd_kernel``), pre-reduced per ROI. ROI Align is separable::

    grad_in[b, c, r, s] += sum_{ph, pw} Ay[ph, r] * g[k, c, ph, pw] / count * Ax[pw, s]

where ``Ay[ph, r]`` sums the row weights of all samples of bin row ``ph`` on feature row ``r`` (0 outside
``[-1, H]``) and likewise ``Ax``. A program (ROI, channel block) walks the ROI's footprint in ``BLOCK_R x BLOCK_S``
pixel windows, forms ``T_ph = g[:, ph, :] @ Ax`` and ``acc += Ay[ph] (x) T_ph`` in registers, and issues ONE atomic
per (footprint pixel, channel) instead of one per (bin, sample, tap, channel): for a 14x14-pixel ROI with a 2x2 grid
and 7x7 bins that is ~16*16 = 256 atomics per channel instead of 49*4*4 = 784. Atomics go into an fp32 zero buffer
(``torch.zeros``: accumulation must start at zero) laid out like the input, then cast to the input dtype.
``_roi_align_bwd_taps_kernel`` is the plain one-atomic-per-tap variant (kept as a fallback and for comparison).
Atomics make the backward non-deterministic in the last bits.
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict

import torch

from kernels._ops import traceable
from kernels._triton import HAS_TRITON, empty_output, interpreted, triton
from kernels._triton import tl as tl

__all__ = ["roi_align_forward", "roi_align_backward", "LevelTable", "launch_config", "single_input"]


if HAS_TRITON:
    # Largest adaptive sampling grid per axis (a box 32768 pixels per bin; gh * gw stays < 2^31). Beyond it (or
    # NaN/inf) the ROI gets no samples (output 0): torchvision's float->int cast is undefined there (x86 gives
    # INT_MIN: zero iterations, output 0), and looping ~2^32 samples would hang the GPU. Mirrors reference.MAX_GRID.
    _MAX_GRID = tl.constexpr(32768.0)

    @triton.jit
    def _roi_setup(rois_ptr, lvl_ptr, meta_ptr, scale_ptr, k, N, H0, W0, scale_hi, scale_lo, sampling_ratio,
                   NUM_LEVELS: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, ALIGNED: tl.constexpr,
                   MULTI_LEVEL: tl.constexpr, ACC: tl.constexpr):
        """Geometry of ROI ``k``: (batch index, level, H, W, y1, x1, bin_h, bin_w, gh, gw, count).

        Integer args equal to 1 arrive as constexprs (Triton specializes them), so no ``.to()`` on ``H0``/``W0``/``N``.
        """
        r = rois_ptr + k * 5
        b = tl.load(r).to(tl.int32)  # C++ (int) cast: truncation toward zero
        if MULTI_LEVEL:
            lvl = tl.load(lvl_ptr + k).to(tl.int32)
            lvl_ok = (lvl >= 0) & (lvl < NUM_LEVELS)
            lvl = tl.where(lvl_ok, lvl, 0)
            H = tl.load(meta_ptr + lvl * 3 + 1).to(tl.int32)
            W = tl.load(meta_ptr + lvl * 3 + 2).to(tl.int32)
            scale = tl.load(scale_ptr + lvl).to(tl.float64)
            ok = (b >= 0) & (b < N) & lvl_ok
        else:
            lvl = b * 0
            H = H0
            W = W0
            # float args are fp32; hi + lo carries a float64 scale to ~2^-48 relative.
            scale = tl.cast(scale_hi, tl.float64) + tl.cast(scale_lo, tl.float64)
            ok = (b >= 0) & (b < N)
        if ALIGNED:
            off = 0.5
        else:
            off = 0.0
        x1 = (tl.load(r + 1).to(tl.float64) * scale - off).to(ACC)
        y1 = (tl.load(r + 2).to(tl.float64) * scale - off).to(ACC)
        x2 = (tl.load(r + 3).to(tl.float64) * scale - off).to(ACC)
        y2 = (tl.load(r + 4).to(tl.float64) * scale - off).to(ACC)
        roi_w = x2 - x1
        roi_h = y2 - y1
        if not ALIGNED:
            roi_w = tl.where(roi_w < 1.0, 1.0, roi_w).to(ACC)
            roi_h = tl.where(roi_h < 1.0, 1.0, roi_h).to(ACC)
        if ACC == tl.float32:  # noqa: SIM300 - a compile-time dtype test
            # fp32 `/` compiles to div.full.f32 (<= 2 ulp) on the GPU: an exact quotient such as 21 / 7 can come back
            # 1 ulp high and ceil() below would add a whole sample row. Correctly rounded, as torchvision's CUDA
            # (nvcc's IEEE `/`) and the interpreter (numpy) divide.
            bin_h = tl.math.div_rn(roi_h, tl.full([], OH, tl.float32))
            bin_w = tl.math.div_rn(roi_w, tl.full([], OW, tl.float32))
        else:
            bin_h = roi_h / OH  # fp64 `/` is div.rn.f64
            bin_w = roi_w / OW
        # Adaptive grid ceil(roi / pooled); <= 0 (the C++ loops run zero times), NaN or > _MAX_GRID -> 0 samples.
        agh = tl.ceil(tl.where((bin_h > 0.0) & (bin_h <= _MAX_GRID), bin_h, 0.0)).to(tl.int32)
        agw = tl.ceil(tl.where((bin_w > 0.0) & (bin_w <= _MAX_GRID), bin_w, 0.0)).to(tl.int32)
        gh = tl.where(sampling_ratio > 0, sampling_ratio, agh)
        gw = tl.where(sampling_ratio > 0, sampling_ratio, agw)
        gh = tl.where(ok, gh, 0)
        gw = tl.where(ok, gw, 0)
        count = tl.maximum(gh * gw, 1).to(ACC)
        b = tl.where(ok, b, 0)
        return b, lvl, H, W, y1, x1, bin_h, bin_w, gh, gw, count

    @triton.jit
    def _axis_taps(pos, size, ACC: tl.constexpr):
        """Bilinear taps along one axis: (low, high, w_low, w_high, valid); torchvision's clamping rules."""
        valid = (pos >= -1.0) & (pos <= size)  # NaN -> invalid; `size` may be a constexpr 1
        pos = tl.where(pos <= 0.0, 0.0, pos).to(ACC)
        low = pos.to(tl.int32)
        edge = low >= size - 1
        low = tl.where(edge, size - 1, low)
        high = tl.where(edge, low, low + 1)
        pos = tl.where(edge, low.to(ACC), pos)
        w_high = pos - low.to(ACC)
        w_low = 1.0 - w_high
        w_high = tl.where(valid, w_high, 0.0).to(ACC)
        w_low = tl.where(valid, w_low, 0.0).to(ACC)
        return low, high, w_low, w_high, valid

    @triton.jit
    def _to_out(v, ty: tl.constexpr, INTERPRET: tl.constexpr):
        """Round the fp32/fp64 result to the output type, to nearest even (the GPU's fp32 -> bf16 default).

        Triton's CPU interpreter truncates fp32 -> bf16, so under it we round the fp32 bits by hand first (then the
        truncating conversion is exact); fp16 and the GPU need nothing.
        """
        if INTERPRET and ty == tl.bfloat16:
            u = v.to(tl.uint32, bitcast=True)
            u = (u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000
            v = u.to(tl.float32, bitcast=True)
        return v.to(ty)

    @triton.jit
    def _map_layout(base_ptr, meta_ptr, b, lvl, c, C, H, W, MULTI_LEVEL: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                    BASE_ALIGN: tl.constexpr):
        """``(image base pointer, row stride, column stride, channel offsets [BLOCK_C])`` of ROI's map (image ``b``,
        level ``lvl``) in elements. The base is a scalar 64-bit pointer; offsets inside the image stay int32 (the
        launcher checks C*H*W < 2^31). The column (NCHW) or channel (channels_last) stride is the literal 1, so loads
        coalesce; for several levels the level's first element comes from ``meta`` with an alignment hint that keeps
        loads vectorized."""
        if CHANNELS_LAST:
            s_w = C
            s_h = W * C
            c_off = c
        else:
            s_w = 1
            s_h = W
            c_off = c * (H * W)
        img = b.to(tl.int64) * C * H * W
        if MULTI_LEVEL:
            img += tl.multiple_of(tl.load(meta_ptr + lvl * 3), BASE_ALIGN)
        return base_ptr + img, s_h, s_w, c_off

    @triton.jit(do_not_specialize=["sampling_ratio"])
    def _roi_align_fwd_kernel(
        x_ptr, rois_ptr, lvl_ptr, meta_ptr, scale_ptr, out_ptr,
        N, C, H0, W0, scale_hi, scale_lo, sampling_ratio,
        NUM_LEVELS: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, ALIGNED: tl.constexpr,
        MULTI_LEVEL: tl.constexpr, CHANNELS_LAST: tl.constexpr, ACC_F64: tl.constexpr, BASE_ALIGN: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, INTERPRET: tl.constexpr,
    ):
        """out[k, c, p] = sum_{iy, ix} bilinear(x[b, c], y(ph, iy), x(pw, ix)) / count; p = ph * OW + pw."""
        ACC = tl.float64 if ACC_F64 else tl.float32  # a bool constexpr, not a tl.dtype argument (wrap_triton)
        k = tl.program_id(0)
        pid_c = tl.program_id(1)
        pid_p = tl.program_id(2)
        b, lvl, H, W, y1, x1, bin_h, bin_w, gh, gw, count = _roi_setup(
            rois_ptr, lvl_ptr, meta_ptr, scale_ptr, k, N, H0, W0, scale_hi, scale_lo, sampling_ratio,
            NUM_LEVELS, OH, OW, ALIGNED, MULTI_LEVEL, ACC)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        cm = c < C
        pm = p < OH * OW
        ph = p // OW
        pw = p % OW
        x_img, s_h, s_w, c_off = _map_layout(x_ptr, meta_ptr, b, lvl, c, C, H, W, MULTI_LEVEL, CHANNELS_LAST,
                                             BASE_ALIGN)
        gh_f = gh.to(ACC)
        gw_f = gw.to(ACC)
        y_base = y1 + ph.to(ACC) * bin_h  # [P]; torchvision's order: (start + p * bin) + ((i + .5) * bin) / grid
        x_base = x1 + pw.to(ACC) * bin_w
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=ACC)
        for iy in range(0, gh):
            y = y_base + ((tl.cast(iy, ACC) + 0.5) * bin_h) / gh_f
            yl, yh, wyl, wyh, vy = _axis_taps(y, H, ACC)
            row_l = yl * s_h
            row_h = yh * s_h
            for ix in range(0, gw):
                x = x_base + ((tl.cast(ix, ACC) + 0.5) * bin_w) / gw_f
                xl, xh, wxl, wxh, vx = _axis_taps(x, W, ACC)
                m = cm[:, None] & (vy & vx & pm)[None, :]
                col_l = xl * s_w
                col_h = xh * s_w
                v1 = tl.load(x_img + (row_l + col_l)[None, :] + c_off[:, None], mask=m, other=0.0).to(ACC)
                v2 = tl.load(x_img + (row_l + col_h)[None, :] + c_off[:, None], mask=m, other=0.0).to(ACC)
                v3 = tl.load(x_img + (row_h + col_l)[None, :] + c_off[:, None], mask=m, other=0.0).to(ACC)
                v4 = tl.load(x_img + (row_h + col_h)[None, :] + c_off[:, None], mask=m, other=0.0).to(ACC)
                w1 = (wyl * wxl)[None, :]
                w2 = (wyl * wxh)[None, :]
                w3 = (wyh * wxl)[None, :]
                w4 = (wyh * wxh)[None, :]
                acc += w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4
        out = acc / count
        o_ptr = (out_ptr + k.to(tl.int64) * C * (OH * OW)) + (c[:, None] * (OH * OW) + p[None, :])
        tl.store(o_ptr, _to_out(out, out_ptr.dtype.element_ty, INTERPRET), mask=cm[:, None] & pm[None, :])

    @triton.jit
    def _footprint(start, bin_size, grid, grid_f, POOLED: tl.constexpr, size, ACC: tl.constexpr):
        """Inclusive range of feature rows (or cols) the taps of an ROI's samples can touch, within [0, size-1]."""
        grid_f = tl.maximum(grid_f, 1.0)  # an empty grid has no footprint (the caller masks it); avoid 0/0
        p_first = start + ((0.5 * bin_size) / grid_f)
        p_last = (start + (POOLED - 1) * bin_size) + (((grid - 1).to(ACC) + 0.5) * bin_size) / grid_f
        # A 1/64-pixel margin covers ulp-level differences between this and the in-loop sample positions (e.g. FMA
        # contraction on the GPU); a whole pixel would push a typical 15-row footprint past one 16-row window.
        lo = tl.minimum(p_first, p_last) - 0.015625
        hi = tl.maximum(p_first, p_last) + 0.015625
        top = size - 1
        lo = tl.where(lo > 0.0, lo, 0.0).to(ACC)  # NaN -> 0
        lo = tl.where(lo < top, lo, top).to(ACC)
        hi = tl.where(hi > 0.0, hi, 0.0).to(ACC)
        hi = tl.where(hi < top, hi, top).to(ACC)
        r_lo = lo.to(tl.int32)
        r_hi = tl.minimum(hi.to(tl.int32) + 1, size - 1)
        return r_lo, r_hi

    @triton.jit(do_not_specialize=["sampling_ratio"])
    def _roi_align_bwd_kernel(
        g_ptr, rois_ptr, lvl_ptr, meta_ptr, scale_ptr, gin_ptr,
        N, C, H0, W0, scale_hi, scale_lo, sampling_ratio,
        NUM_LEVELS: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, ALIGNED: tl.constexpr,
        MULTI_LEVEL: tl.constexpr, CHANNELS_LAST: tl.constexpr, ACC_F64: tl.constexpr, BASE_ALIGN: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, OH_PAD: tl.constexpr,
        OW_PAD: tl.constexpr,
    ):
        """Pre-reduced scatter: grad_in[b, c, r, s] += sum_ph Ay[ph, r] * (sum_pw g[k, c, ph, pw] Ax[pw, s]) / count."""
        ACC = tl.float64 if ACC_F64 else tl.float32  # a bool constexpr, not a tl.dtype argument (wrap_triton)
        k = tl.program_id(0)
        pid_c = tl.program_id(1)
        b, lvl, H, W, y1, x1, bin_h, bin_w, gh, gw, count = _roi_setup(
            rois_ptr, lvl_ptr, meta_ptr, scale_ptr, k, N, H0, W0, scale_hi, scale_lo, sampling_ratio,
            NUM_LEVELS, OH, OW, ALIGNED, MULTI_LEVEL, ACC)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = c < C
        pw = tl.arange(0, OW_PAD)
        pwm = pw < OW
        gh_f = gh.to(ACC)
        gw_f = gw.to(ACC)
        # Footprint: rows/cols between the taps of the first and last samples (y is monotone in (ph, iy)); only
        # rows/cols some valid tap touches get atomics (the `used` masks below), so the range may be generous.
        r_lo, r_hi = _footprint(y1, bin_h, gh, gh_f, OH, H, ACC)
        s_lo, s_hi = _footprint(x1, bin_w, gw, gw_f, OW, W, ACC)
        has = (gh > 0) & (gw > 0)
        r_hi = tl.where(has, r_hi, r_lo - 1)
        s_hi = tl.where(has, s_hi, s_lo - 1)
        g_img, s_h, s_w, c_off = _map_layout(gin_ptr, meta_ptr, b, lvl, c, C, H, W, MULTI_LEVEL, CHANNELS_LAST,
                                             BASE_ALIGN)
        g_rows = (g_ptr + k.to(tl.int64) * C * (OH * OW)) + (c[:, None] * (OH * OW) + pw[None, :])
        gm = cm[:, None] & pwm[None, :]
        x_base = x1 + pw.to(ACC) * bin_w  # [OW_PAD]
        ph_i = tl.arange(0, OH_PAD)
        phm = ph_i < OH
        y_base = y1 + ph_i.to(ACC) * bin_h  # [OH_PAD]
        for s0 in range(s_lo, s_hi + 1, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            # Ax[pw, s]: summed column weights of every x-sample of bin column pw (one-hot over the window).
            ax = tl.zeros([OW_PAD, BLOCK_S], dtype=ACC)
            s_used = tl.zeros([BLOCK_S], dtype=tl.int32)
            for ix in range(0, gw):
                x = x_base + ((tl.cast(ix, ACC) + 0.5) * bin_w) / gw_f
                xl, xh, wxl, wxh, vx = _axis_taps(x, W, ACC)
                vx = vx & pwm
                hit_l = (xl[:, None] == s[None, :]) & vx[:, None]
                hit_h = (xh[:, None] == s[None, :]) & vx[:, None]
                ax += tl.where(hit_l, wxl[:, None], 0.0) + tl.where(hit_h, wxh[:, None], 0.0)
                s_used = tl.maximum(s_used, tl.max((hit_l | hit_h).to(tl.int32), axis=0))
            for r0 in range(r_lo, r_hi + 1, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                # Ay[ph, r]: summed row weights of every y-sample of bin row ph, all bin rows at once.
                ay = tl.zeros([OH_PAD, BLOCK_R], dtype=ACC)
                r_used = tl.zeros([BLOCK_R], dtype=tl.int32)
                for iy in range(0, gh):
                    y = y_base + ((tl.cast(iy, ACC) + 0.5) * bin_h) / gh_f
                    yl, yh, wyl, wyh, vy = _axis_taps(y, H, ACC)
                    vy = vy & phm
                    hit_l = (yl[:, None] == r[None, :]) & vy[:, None]
                    hit_h = (yh[:, None] == r[None, :]) & vy[:, None]
                    ay += tl.where(hit_l, wyl[:, None], 0.0) + tl.where(hit_h, wyh[:, None], 0.0)
                    r_used = tl.maximum(r_used, tl.max((hit_l | hit_h).to(tl.int32), axis=0))
                acc = tl.zeros([BLOCK_C, BLOCK_R, BLOCK_S], dtype=ACC)
                for ph in range(0, OH):
                    g = tl.load(g_rows + ph * OW, mask=gm, other=0.0).to(ACC) / count  # [C, OW_PAD]
                    t = tl.sum(g[:, :, None] * ax[None, :, :], axis=1)  # [C, S] = g[:, ph, :] @ Ax
                    ay_ph = tl.sum(tl.where(ph_i[:, None] == ph, ay, 0.0), axis=0)  # row ph of Ay, [R]
                    acc += ay_ph[None, :, None] * t[:, None, :]
                m = cm[:, None, None] & (r_used > 0)[None, :, None] & (s_used > 0)[None, None, :]
                pix = r[None, :, None] * s_h + s[None, None, :] * s_w + c_off[:, None, None]
                tl.atomic_add(g_img + pix, acc.to(gin_ptr.dtype.element_ty), mask=m,
                              sem="relaxed")

    @triton.jit(do_not_specialize=["sampling_ratio"])
    def _roi_align_bwd_taps_kernel(
        g_ptr, rois_ptr, lvl_ptr, meta_ptr, scale_ptr, gin_ptr,
        N, C, H0, W0, scale_hi, scale_lo, sampling_ratio,
        NUM_LEVELS: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, ALIGNED: tl.constexpr,
        MULTI_LEVEL: tl.constexpr, CHANNELS_LAST: tl.constexpr, ACC_F64: tl.constexpr, BASE_ALIGN: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        """One atomic per (bin, sample, tap, channel): grad_in[taps] += w * g[k, c, p] / count."""
        ACC = tl.float64 if ACC_F64 else tl.float32  # a bool constexpr, not a tl.dtype argument (wrap_triton)
        k = tl.program_id(0)
        pid_c = tl.program_id(1)
        pid_p = tl.program_id(2)
        b, lvl, H, W, y1, x1, bin_h, bin_w, gh, gw, count = _roi_setup(
            rois_ptr, lvl_ptr, meta_ptr, scale_ptr, k, N, H0, W0, scale_hi, scale_lo, sampling_ratio,
            NUM_LEVELS, OH, OW, ALIGNED, MULTI_LEVEL, ACC)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        cm = c < C
        pm = p < OH * OW
        ph = p // OW
        pw = p % OW
        g_img, s_h, s_w, c_off = _map_layout(gin_ptr, meta_ptr, b, lvl, c, C, H, W, MULTI_LEVEL, CHANNELS_LAST,
                                             BASE_ALIGN)
        g = tl.load((g_ptr + k.to(tl.int64) * C * (OH * OW)) + (c[:, None] * (OH * OW) + p[None, :]),
                    mask=cm[:, None] & pm[None, :], other=0.0).to(ACC) / count
        gh_f = gh.to(ACC)
        gw_f = gw.to(ACC)
        y_base = y1 + ph.to(ACC) * bin_h
        x_base = x1 + pw.to(ACC) * bin_w
        for iy in range(0, gh):
            y = y_base + ((tl.cast(iy, ACC) + 0.5) * bin_h) / gh_f
            yl, yh, wyl, wyh, vy = _axis_taps(y, H, ACC)
            row_l = yl * s_h
            row_h = yh * s_h
            for ix in range(0, gw):
                x = x_base + ((tl.cast(ix, ACC) + 0.5) * bin_w) / gw_f
                xl, xh, wxl, wxh, vx = _axis_taps(x, W, ACC)
                m = cm[:, None] & (vy & vx & pm)[None, :]
                col_l = xl * s_w
                col_h = xh * s_w
                dt = gin_ptr.dtype.element_ty
                tl.atomic_add(g_img + (row_l + col_l)[None, :] + c_off[:, None], (g * (wyl * wxl)[None, :]).to(dt),
                              mask=m, sem="relaxed")
                tl.atomic_add(g_img + (row_l + col_h)[None, :] + c_off[:, None], (g * (wyl * wxh)[None, :]).to(dt),
                              mask=m, sem="relaxed")
                tl.atomic_add(g_img + (row_h + col_l)[None, :] + c_off[:, None], (g * (wyh * wxl)[None, :]).to(dt),
                              mask=m, sem="relaxed")
                tl.atomic_add(g_img + (row_h + col_h)[None, :] + c_off[:, None], (g * (wyh * wxh)[None, :]).to(dt),
                              mask=m, sem="relaxed")


# --- Launchers ----------------------------------------------------------------------------------------------------


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def launch_config(kind: str, C: int, OH: int, OW: int, interpreter: bool) -> dict[str, int]:
    """Block sizes and warps for ``kind`` in ``("fwd", "bwd", "bwd_taps")``.

    GPU choices (sm_90 ``ptxas -v``, no spills): forward ``[16 channels x 64 bins]`` tiles, 4 warps (63-72 registers
    instead of 110-157 for 32-channel tiles: ~2x the resident warps for a latency-bound gather); pre-reduced backward
    8 channels x 16x16-pixel windows (93-118 registers; 16 channels needed 135-178). Triton's CPU interpreter pays per
    program, not per element, so there the channel block is up to 64 (results do not depend on block sizes; a test
    runs the GPU configuration through the interpreter too).
    """
    wide = min(64, _next_pow2(C))
    if kind == "fwd" or kind == "bwd_taps":
        return {"BLOCK_C": wide if interpreter else min(16, _next_pow2(C)), "BLOCK_P": min(64, _next_pow2(OH * OW)),
                "num_warps": 4}
    if kind == "bwd":
        return {"BLOCK_C": wide if interpreter else min(8, _next_pow2(C)), "BLOCK_R": 16, "BLOCK_S": 16,
                "OH_PAD": _next_pow2(OH), "OW_PAD": _next_pow2(OW), "num_warps": 4}
    raise ValueError(f"unknown kernel kind {kind!r}")


def _interpreted(device: torch.device, interpreter: bool | None) -> bool:
    return interpreted(device) if interpreter is None else interpreter


def _split_f64(v: float) -> tuple[float, float]:
    """``v = hi + lo`` with both representable in float32 (Triton passes Python floats as fp32)."""
    hi = _f32(v)
    return hi, _f32(v - hi)


def _f32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


class LevelTable:
    """Where each feature level lives, for one launch over all levels.

    Attributes:
        features: the maps ``[N, C, H_l, W_l]``, all NCHW-contiguous or all channels_last-contiguous.
        channels_last: memory layout shared by all levels.
        offsets: element offset of each level's first element relative to ``features[0]``'s.
        meta: int64 ``[L, 3]`` device table ``(offset, H_l, W_l)``; ``scales``: float64 ``[L]`` device table.
        base_align: largest power of two (<= 16) dividing every offset (a divisibility hint for the kernel).
    """

    def __init__(self, features: list[torch.Tensor], scales: list[float]) -> None:
        if not features:
            raise ValueError("need at least one feature map")
        f0 = features[0]
        for f in features:
            if f.dim() != 4:
                raise ValueError(f"feature maps must be [N, C, H, W], got shape {tuple(f.shape)}")
            if f.dtype != f0.dtype or f.device != f0.device or f.shape[:2] != f0.shape[:2]:
                raise ValueError("all feature maps must share dtype, device, batch size and channel count")
        # One layout for all levels (the kernel's channel stride is a compile-time 1 for channels_last).
        cl = all(f.is_contiguous(memory_format=torch.channels_last) for f in features) and not all(
            f.is_contiguous() for f in features)
        fmt = torch.channels_last if cl else torch.contiguous_format
        features = [f.contiguous(memory_format=fmt) for f in features]
        esize = f0.element_size()
        diffs = [f.data_ptr() - features[0].data_ptr() for f in features]
        if any(d % esize for d in diffs):  # cannot happen for same-dtype tensors (PyTorch aligns storage offsets)
            raise ValueError("feature maps are not element-aligned relative to each other")
        self.features = features
        self.channels_last = cl
        self.offsets = [d // esize for d in diffs]
        self.base_align = _pow2_align(self.offsets)
        self.meta, self.scales = _device_tables(f0.device, tuple(self.offsets),
                                                tuple((int(f.shape[2]), int(f.shape[3])) for f in features),
                                                tuple(float(s) for s in scales))

    @staticmethod
    def _view(flat: torch.Tensor, shape: torch.Size, cl: bool) -> torch.Tensor:
        N, C, H, W = shape
        return flat.view(N, H, W, C).permute(0, 3, 1, 2) if cl else flat.view(N, C, H, W)


_TABLE_CACHE: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
_TABLE_CACHE_SIZE = 64


def _device_tables(device: torch.device, offsets: tuple[int, ...], hw: tuple[tuple[int, int], ...],
                   scales: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The int64 ``[L, 3]`` ``(offset, H_l, W_l)`` and float64 ``[L]`` scale tables on ``device``, cached by value
    (LRU, 64 entries): a repeated call (same level shapes and relative placement, as every training step and every
    CUDA-graph replay has) copies nothing host->device. Only a new key pays the (blocking-free) copy, so capture a
    CUDA graph after a warm-up call, as ``torch.cuda.graphs`` and ``mode="reduce-overhead"`` do anyway."""
    key = (device, offsets, hw, scales)
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return hit
    meta = torch.tensor([[o, h, w] for o, (h, w) in zip(offsets, hw)], dtype=torch.int64).to(device)
    tables = (meta, torch.tensor(scales, dtype=torch.float64).to(device))
    _TABLE_CACHE[key] = tables
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return tables


def _pow2_align(offsets: list[int]) -> int:
    a = 16
    while a > 1 and any(o % a for o in offsets):
        a //= 2
    return a


def _check_image_size(shapes: list[torch.Size]) -> None:
    # Offsets inside one image are int32 in the kernels (fewer registers than 64-bit addresses per element).
    if any(int(s[1]) * int(s[2]) * int(s[3]) >= 2**31 for s in shapes):
        raise ValueError("roi_align kernels need C * H * W < 2**31 per image")


def _check_rois(rois: torch.Tensor, device: torch.device) -> torch.Tensor:
    if rois.dim() != 2 or rois.size(1) != 5:
        raise ValueError(f"rois must be Tensor[K, 5], got shape {tuple(rois.shape)}")
    if not rois.is_floating_point():
        raise TypeError(f"rois must be a floating-point tensor, got {rois.dtype}")
    if rois.device != device:
        raise ValueError(f"rois on {rois.device} but features on {device}")
    return rois.contiguous()


def single_input(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``x`` as the kernel reads it (NCHW- or channels_last-contiguous; copied only if neither) and its layout."""
    if x.dim() != 4:
        raise ValueError(f"input must be [N, C, H, W], got shape {tuple(x.shape)}")
    if x.is_contiguous():
        return x, False
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, True
    return x.contiguous(), False


def roi_align_forward(
    x: torch.Tensor | LevelTable,
    rois: torch.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    levels: torch.Tensor | None = None,
    interpreter: bool | None = None,
) -> torch.Tensor:
    """Launch the forward: ``[K, C, OH, OW]`` in the input dtype (buffer from ``empty_output``).

    ``x`` is one map ``[N, C, H, W]`` (NCHW or channels_last memory) or, for the multi-level op, a
    :class:`LevelTable` with ``levels [K]`` (int) selecting each ROI's map; ``spatial_scale`` is then ignored.
    ``interpreter`` picks :func:`launch_config`'s interpreter/GPU block sizes (default: by device).
    """
    multi = isinstance(x, LevelTable)
    if multi:
        if levels is None or levels.shape != (rois.shape[0],):
            raise ValueError("the multi-level forward needs levels of shape [K]")
        x0, cl = x.features[0], x.channels_last
    else:
        x0, cl = single_input(x)
    N, C, H, W = x0.shape
    OH, OW = output_size
    _check_image_size([f.shape for f in x.features] if multi else [x0.shape])
    rois = _check_rois(rois, x0.device)
    K = rois.shape[0]
    out = empty_output((K, C, OH, OW), x0.dtype, x0.device)
    if K == 0 or C == 0:
        return out
    hi, lo = _split_f64(spatial_scale)
    cfg = launch_config("fwd", C, OH, OW, _interpreted(x0.device, interpreter))
    grid = (K, triton.cdiv(C, cfg["BLOCK_C"]), triton.cdiv(OH * OW, cfg["BLOCK_P"]))
    traceable(_roi_align_fwd_kernel)[grid](
        x0, rois, levels.contiguous() if multi else rois, x.meta if multi else rois, x.scales if multi else rois,
        out, N, C, 0 if multi else H, 0 if multi else W, hi, lo, int(sampling_ratio),
        NUM_LEVELS=len(x.features) if multi else 1, OH=OH, OW=OW, ALIGNED=bool(aligned), MULTI_LEVEL=multi,
        CHANNELS_LAST=cl, ACC_F64=x0.dtype == torch.float64, BASE_ALIGN=x.base_align if multi else 1,
        INTERPRET=interpreted(x0.device), **cfg,
    )
    return out


def roi_align_backward(
    grad_out: torch.Tensor,
    rois: torch.Tensor,
    shapes: list[torch.Size],
    channels_last: bool,
    dtype: torch.dtype,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    levels: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    prereduce: bool = True,
    interpreter: bool | None = None,
) -> list[torch.Tensor]:
    """Launch the backward: the gradient of each input map (``shapes``, ``[N, C, H_l, W_l]``) in ``dtype``.

    The gradients are laid out like the forward's maps (``channels_last`` or NCHW). They accumulate with atomics in
    fp32 (float64 for float64 input) buffers, one per level, that start at zero (the kernel adds into them, it does
    not overwrite), then are cast to ``dtype``. A multi-level backward passes ``levels [K]`` and the float64
    ``scales`` table of its :class:`LevelTable`. ``prereduce=False`` selects the one-atomic-per-tap kernel.
    """
    multi = levels is not None
    N, C = shapes[0][0], shapes[0][1]
    H, W = shapes[0][2], shapes[0][3]
    OH, OW = output_size
    device = grad_out.device
    _check_image_size(shapes)
    rois = _check_rois(rois, device)
    K = rois.shape[0]
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if multi:
        # One buffer per level (operator outputs may not share storage), all addressed from level 0's pointer
        # through element offsets, as the forward's LevelTable does.
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        grads = [torch.empty(shp, dtype=acc_dtype, device=device, memory_format=fmt).zero_() for shp in shapes]
        flat = grads[0]
        starts = [(gr.data_ptr() - flat.data_ptr()) // flat.element_size() for gr in grads]
    else:
        flat = torch.zeros(math.prod(int(d) for d in shapes[0]), dtype=acc_dtype, device=device)
        grads = [LevelTable._view(flat, shapes[0], channels_last)]
    if K > 0 and C > 0:
        g = grad_out.contiguous()
        if multi:
            if scales is None or levels.shape != (K,):
                raise ValueError("the multi-level backward needs levels [K] and the scales table")
            meta, _ = _device_tables(device, tuple(starts), tuple((int(shp[2]), int(shp[3])) for shp in shapes),
                                     ())
            lv, sc, align = levels.contiguous(), scales, _pow2_align(starts)
        else:
            meta, lv, sc, align = rois, rois, rois, 1
        hi, lo = _split_f64(spatial_scale)
        common = dict(NUM_LEVELS=len(shapes), OH=OH, OW=OW, ALIGNED=bool(aligned), MULTI_LEVEL=multi,
                      CHANNELS_LAST=channels_last, ACC_F64=dtype == torch.float64, BASE_ALIGN=align)
        args = (g, rois, lv, meta, sc, flat, N, C, 0 if multi else H, 0 if multi else W, hi, lo, int(sampling_ratio))
        interp = _interpreted(device, interpreter)
        if prereduce:
            cfg = launch_config("bwd", C, OH, OW, interp)
            traceable(_roi_align_bwd_kernel)[(K, triton.cdiv(C, cfg["BLOCK_C"]))](*args, **common, **cfg)
        else:
            cfg = launch_config("bwd_taps", C, OH, OW, interp)
            grid = (K, triton.cdiv(C, cfg["BLOCK_C"]), triton.cdiv(OH * OW, cfg["BLOCK_P"]))
            traceable(_roi_align_bwd_taps_kernel)[grid](*args, **common, **cfg)
    return [gr if gr.dtype == dtype else gr.to(dtype) for gr in grads]

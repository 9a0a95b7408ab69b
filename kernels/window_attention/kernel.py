"""Triton kernels for Swin window attention (relative position bias + shift mask), forward and backward.

    S = q·kᵀ·scale + bias[h] + mask[b mod nW]        [B_, H, N, N]   (never stored)
    P = softmax(S, dim=-1),  out = P·v               [B_, H, N, D]

Design (memory-bound op: ~25 FLOP/byte at Swin-T stage 1, against a ridge of ~260 on an H100):

* One program owns ``WPB`` windows that share a mask id ``m`` and a head ``h`` (windows ``b = m + nW·w``), so the
  ``bias[h] + mask[m]`` tile is loaded once per program into registers and reused for every window; q, k, v, out
  are read/written exactly once. The N×N score tile lives in registers; N is padded to a power of two
  ``BLOCK_N ≥ 16`` (49 -> 64) and padded keys get -inf before the softmax, padded rows are never stored.
* N ≤ 64: one query tile covers the window (``NQB == 1``): forward and the whole backward are one kernel each.
  64 < N ≤ 256 (window 9..16, e.g. 144): query tiles of ``BLOCK_M`` rows × all keys; the backward then splits into
  a row kernel (dq, LSE, Δ, bias/mask grads) and a column kernel (dk, dv) that reuses LSE and Δ.
* Softmax, scores and every accumulation in fp32 (fp64 for fp64 inputs); P and dS are rounded to the input dtype
  before their tensor-core products, as FlashAttention does. fp32 inputs use ``input_precision="ieee"``
  unless PyTorch allows TF32 for fp32 matmuls on CUDA (:func:`fp32_precision`), as eager and SDPA then do.
* The bias/mask gradient is deterministic: each program sums dS over its windows in registers and writes one
  partial ``[H, N, N]`` tile per (program, head); the launcher reduces the partials with ``torch.sum``. Because a
  program's windows share a mask id, the same partials give the mask gradient (summed over heads) for free.
* Triton's interpreter returns garbage for bf16 ``tl.dot``; there the launcher sets ``DOT_DT = fp32`` so operands
  are upcast after loading (and P, dS still rounded to bf16 first). On the GPU ``DOT_DT`` is the input dtype and
  the casts are no-ops. (Device-function calls are avoided in the kernels: the interpreter re-patches triton.language
  on every such call, which made them ~15% slower there.)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

from .._ops import traceable
from .._triton import HAS_TRITON, empty_output, interpret_enabled, tl, triton

__all__ = ["LaunchConfig", "launch_config", "window_attention_fwd", "window_attention_bwd", "MAX_N", "MAX_D",
           "MIN_PROGRAMS_FWD", "MIN_PROGRAMS_BWD"]

MAX_N = 256  # window 16; larger windows would need key tiling with an online softmax
MAX_D = 128
# Programs to aim for (H100: 132 SMs). Forward: ~8 per SM hides latency while WPB still amortises the bias/mask
# tile. Backward: ~4 per SM (it holds 2 CTAs/SM at 8 warps), because every program also writes an N×N fp32
# bias-gradient partial: at Swin-T stage 1 (B=64), WPB 16 makes those 7.4 MB, written and read back by the
# reduction (~5% of the backward's minimum bytes); WPB 8 would double that.
MIN_PROGRAMS_FWD = 1024
MIN_PROGRAMS_BWD = 512

if HAS_TRITON:

    @triton.jit
    def _bias_mask_tile(bias_ptr, mask_ptr, h, m, qi, kj, N, sbh, sbi, sbj, smw, smi, smj,
                        R: tl.constexpr, C: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
                        ACC: tl.constexpr):
        """``bias[h, qi, kj] + mask[m, qi, kj]`` as an ``[R, C]`` tile in ``ACC``; -inf where the key ``kj ≥ N``
        (padding), 0 where the query ``qi ≥ N``. ``qi``/``kj`` are index tensors broadcasting to ``[R, C]``."""
        valid = (qi < N) & (kj < N)
        t = tl.zeros([R, C], dtype=ACC)
        if HAS_BIAS:
            t += tl.load(bias_ptr + h * sbh + qi * sbi + kj * sbj, mask=valid, other=0.0).to(ACC)
        if HAS_MASK:
            t += tl.load(mask_ptr + m * smw + qi * smi + kj * smj, mask=valid, other=0.0).to(ACC)
        return tl.where(kj < N, t, float("-inf"))

    @triton.jit
    def _wattn_fwd_kernel(
        q_ptr, k_ptr, v_ptr, o_ptr, bias_ptr, mask_ptr, scale_hi, scale_lo,
        N, D, NW, WIN_PER_MASK,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
        sbh, sbi, sbj, smw, smi, smj,
        WPB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        NQB: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, ACC_F64: tl.constexpr,
        PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
    ):
        """Grid ``(nW·ceil(B_/nW/WPB), H·NQB)``. Program (g·nW + m, h·NQB + qb) computes query rows
        ``[qb·BLOCK_M, (qb+1)·BLOCK_M)`` of head ``h`` for windows ``b = m + nW·(g·WPB + t)``, ``t < WPB``."""
        pid0 = tl.program_id(0)
        pid1 = tl.program_id(1)
        m = pid0 % NW
        g = pid0 // NW
        h = pid1 // NQB
        qb = pid1 % NQB
        rows = qb * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        dd = tl.arange(0, BLOCK_D)
        row_ok = rows < N
        col_ok = cols < N
        d_ok = dd < D
        # dtypes arrive as bool constexprs, not tl.dtype objects (user-defined Triton kernels captured by
        # torch.compile / wrap_triton take plain constexprs); the scale as fp32 hi + lo (fp64: ~2^-48 relative).
        IN_DT = q_ptr.dtype.element_ty
        ACC = tl.float64 if ACC_F64 else tl.float32
        DOT_DT = tl.float32 if DOT_F32 else IN_DT
        if ACC_F64:
            scale = tl.cast(scale_hi, tl.float64) + tl.cast(scale_lo, tl.float64)
        else:
            scale = scale_hi
        # bias[h] + mask[m] is the same for every window of this program: load it once.
        bm = _bias_mask_tile(bias_ptr, mask_ptr, h, m, rows[:, None], cols[None, :], N, sbh, sbi, sbj, smw, smi,
                             smj, BLOCK_M, BLOCK_N, HAS_BIAS, HAS_MASK, ACC)
        for t in range(WPB):
            w = g * WPB + t
            ok = w < WIN_PER_MASK
            b = (m + NW * w).to(tl.int64)
            q = tl.load(q_ptr + b * sqb + h * sqh + rows[:, None] * sqn + dd[None, :] * sqd,
                        mask=ok & row_ok[:, None] & d_ok[None, :], other=0.0).to(DOT_DT)
            k = tl.load(k_ptr + b * skb + h * skh + cols[:, None] * skn + dd[None, :] * skd,
                        mask=ok & col_ok[:, None] & d_ok[None, :], other=0.0).to(DOT_DT)
            v = tl.load(v_ptr + b * svb + h * svh + cols[:, None] * svn + dd[None, :] * svd,
                        mask=ok & col_ok[:, None] & d_ok[None, :], other=0.0).to(DOT_DT)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale + bm  # [BLOCK_M, BLOCK_N]
            mx = tl.max(s, axis=1)
            p = tl.exp(s - mx[:, None])  # padded keys: exp(-inf) = 0
            inv_l = 1.0 / tl.sum(p, axis=1)
            # Normalise after P·v (BLOCK_M·D multiplies instead of BLOCK_M·BLOCK_N); P ∈ [0, 1] rounds like eager's.
            o = tl.dot(p.to(IN_DT).to(DOT_DT), v, input_precision=PRECISION) * inv_l[:, None]
            tl.store(o_ptr + b * sob + h * soh + rows[:, None] * son + dd[None, :] * sod,
                     o.to(o_ptr.dtype.element_ty), mask=ok & row_ok[:, None] & d_ok[None, :])

    @triton.jit
    def _wattn_bwd_rows_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, dq_ptr, dk_ptr, dv_ptr, part_ptr, lse_ptr, delta_ptr,
        bias_ptr, mask_ptr, scale_hi, scale_lo,
        N, D, NW, WIN_PER_MASK, H,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
        sbh, sbi, sbj, smw, smi, smj,
        WPB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        NQB: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, COMPUTE_DBM: tl.constexpr,
        ACC_F64: tl.constexpr, PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
    ):
        """Backward over query rows; same grid and window assignment as the forward. Recomputes P from q, k and
        the bias/mask tile (full rows are in registers, so no saved LSE is needed), then

            dP = dO·vᵀ,  Δ = rowsum(P ∘ dP),  dS = P ∘ (dP - Δ),  dq = dS·k·scale,
            dv = Pᵀ·dO,  dk = dSᵀ·q·scale          (here only when NQB == 1; else the column kernel)
            part[pid0, h] += Σ_windows dS          (bias/mask gradient partials, when COMPUTE_DBM)

        ``sq*, sk*, sv*, so*`` are the strides of q, k, v and dO; dq, dk, dv are contiguous ``[B_, H, N, D]``.
        With NQB > 1 it stores LSE and Δ ``[B_, H, N]`` for the column kernel.
        """
        pid0 = tl.program_id(0)
        pid1 = tl.program_id(1)
        m = pid0 % NW
        g = pid0 // NW
        h = pid1 // NQB
        qb = pid1 % NQB
        rows = qb * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_N)
        dd = tl.arange(0, BLOCK_D)
        row_ok = rows < N
        col_ok = cols < N
        d_ok = dd < D
        # dtypes arrive as bool constexprs, not tl.dtype objects (user-defined Triton kernels captured by
        # torch.compile / wrap_triton take plain constexprs); the scale as fp32 hi + lo (fp64: ~2^-48 relative).
        IN_DT = q_ptr.dtype.element_ty
        ACC = tl.float64 if ACC_F64 else tl.float32
        DOT_DT = tl.float32 if DOT_F32 else IN_DT
        if ACC_F64:
            scale = tl.cast(scale_hi, tl.float64) + tl.cast(scale_lo, tl.float64)
        else:
            scale = scale_hi
        bm = _bias_mask_tile(bias_ptr, mask_ptr, h, m, rows[:, None], cols[None, :], N, sbh, sbi, sbj, smw, smi,
                             smj, BLOCK_M, BLOCK_N, HAS_BIAS, HAS_MASK, ACC)
        if COMPUTE_DBM:
            dbm = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
        # dq, dk, dv are contiguous [B_, H, N, D]
        gs_n = D
        gs_h = N * D
        gs_b = H * N * D
        for t in range(WPB):
            w = g * WPB + t
            ok = w < WIN_PER_MASK
            b = (m + NW * w).to(tl.int64)
            rmask = ok & row_ok[:, None] & d_ok[None, :]
            cmask = ok & col_ok[:, None] & d_ok[None, :]
            q = tl.load(q_ptr + b * sqb + h * sqh + rows[:, None] * sqn + dd[None, :] * sqd,
                        mask=rmask, other=0.0).to(DOT_DT)
            do = tl.load(do_ptr + b * sob + h * soh + rows[:, None] * son + dd[None, :] * sod, mask=rmask,
                         other=0.0).to(DOT_DT)
            k = tl.load(k_ptr + b * skb + h * skh + cols[:, None] * skn + dd[None, :] * skd,
                        mask=cmask, other=0.0).to(DOT_DT)
            v = tl.load(v_ptr + b * svb + h * svh + cols[:, None] * svn + dd[None, :] * svd,
                        mask=cmask, other=0.0).to(DOT_DT)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale + bm
            mx = tl.max(s, axis=1)
            p = tl.exp(s - mx[:, None])
            l = tl.sum(p, axis=1)
            p = p / l[:, None]
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
            delta = tl.sum(p * dp, axis=1)
            ds = p * (dp - delta[:, None])  # padded keys, padded rows and absent windows give exactly 0
            gbase = b * gs_b + h * gs_h
            ds_in = ds.to(IN_DT).to(DOT_DT)  # rounded to the input dtype for the tensor-core products
            dq = tl.dot(ds_in, k, input_precision=PRECISION) * scale
            tl.store(dq_ptr + gbase + rows[:, None] * gs_n + dd[None, :], dq.to(dq_ptr.dtype.element_ty), mask=rmask)
            if NQB == 1:
                dv = tl.dot(tl.trans(p.to(IN_DT).to(DOT_DT)), do, input_precision=PRECISION)
                tl.store(dv_ptr + gbase + cols[:, None] * gs_n + dd[None, :], dv.to(dv_ptr.dtype.element_ty),
                         mask=cmask)
                dk = tl.dot(tl.trans(ds_in), q, input_precision=PRECISION) * scale
                tl.store(dk_ptr + gbase + cols[:, None] * gs_n + dd[None, :], dk.to(dk_ptr.dtype.element_ty),
                         mask=cmask)
            else:
                lbase = (b * H + h) * N
                tl.store(lse_ptr + lbase + rows, mx + tl.log(l), mask=ok & row_ok)
                tl.store(delta_ptr + lbase + rows, delta, mask=ok & row_ok)
            if COMPUTE_DBM:
                dbm += ds
        if COMPUTE_DBM:
            # part: [programs_0, H, N, N] contiguous
            pbase = (pid0.to(tl.int64) * H + h) * N * N
            tl.store(part_ptr + pbase + rows[:, None] * N + cols[None, :], dbm,
                     mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _wattn_bwd_cols_kernel(
        q_ptr, k_ptr, v_ptr, do_ptr, dk_ptr, dv_ptr, lse_ptr, delta_ptr, bias_ptr, mask_ptr, scale_hi, scale_lo,
        N, D, NW, WIN_PER_MASK, H,
        sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
        sbh, sbi, sbj, smw, smi, smj,
        WPB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        NKB: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, ACC_F64: tl.constexpr,
        PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
    ):
        """dk, dv for key rows ``[kb·BLOCK_M, (kb+1)·BLOCK_M)`` (only used when N > 64), working on the transposed
        tile ``Sᵀ[key, query]`` with the LSE and Δ the row kernel stored:

            Pᵀ = exp(Sᵀ - LSE[None, :]),  dSᵀ = Pᵀ ∘ (v·dOᵀ - Δ[None, :]),  dv = Pᵀ·dO,  dk = dSᵀ·q·scale
        """
        pid0 = tl.program_id(0)
        pid1 = tl.program_id(1)
        m = pid0 % NW
        g = pid0 // NW
        h = pid1 // NKB
        kb = pid1 % NKB
        keys = kb * BLOCK_M + tl.arange(0, BLOCK_M)
        qs = tl.arange(0, BLOCK_N)
        dd = tl.arange(0, BLOCK_D)
        key_ok = keys < N
        q_ok = qs < N
        d_ok = dd < D
        # dtypes arrive as bool constexprs, not tl.dtype objects (user-defined Triton kernels captured by
        # torch.compile / wrap_triton take plain constexprs); the scale as fp32 hi + lo (fp64: ~2^-48 relative).
        IN_DT = q_ptr.dtype.element_ty
        ACC = tl.float64 if ACC_F64 else tl.float32
        DOT_DT = tl.float32 if DOT_F32 else IN_DT
        if ACC_F64:
            scale = tl.cast(scale_hi, tl.float64) + tl.cast(scale_lo, tl.float64)
        else:
            scale = scale_hi
        bmt = _bias_mask_tile(bias_ptr, mask_ptr, h, m, qs[None, :], keys[:, None], N, sbh, sbi, sbj, smw, smi,
                              smj, BLOCK_M, BLOCK_N, HAS_BIAS, HAS_MASK, ACC)
        gs_n = D
        gs_h = N * D
        gs_b = H * N * D
        for t in range(WPB):
            w = g * WPB + t
            ok = w < WIN_PER_MASK
            b = (m + NW * w).to(tl.int64)
            kmask = ok & key_ok[:, None] & d_ok[None, :]
            qmask = ok & q_ok[:, None] & d_ok[None, :]
            k = tl.load(k_ptr + b * skb + h * skh + keys[:, None] * skn + dd[None, :] * skd,
                        mask=kmask, other=0.0).to(DOT_DT)
            v = tl.load(v_ptr + b * svb + h * svh + keys[:, None] * svn + dd[None, :] * svd,
                        mask=kmask, other=0.0).to(DOT_DT)
            q = tl.load(q_ptr + b * sqb + h * sqh + qs[:, None] * sqn + dd[None, :] * sqd,
                        mask=qmask, other=0.0).to(DOT_DT)
            do = tl.load(do_ptr + b * sob + h * soh + qs[:, None] * son + dd[None, :] * sod,
                         mask=qmask, other=0.0).to(DOT_DT)
            lbase = (b * H + h) * N
            lse = tl.load(lse_ptr + lbase + qs, mask=ok & q_ok, other=0.0)
            delta = tl.load(delta_ptr + lbase + qs, mask=ok & q_ok, other=0.0)
            st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale + bmt  # [BLOCK_M keys, BLOCK_N queries]
            pt = tl.exp(st - lse[None, :])
            # Padded queries / absent windows have no LSE: zero them so a large bias cannot overflow into 0·inf.
            pt = tl.where(ok & q_ok[None, :], pt, 0.0)
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dst = pt * (dpt - delta[None, :])
            gbase = b * gs_b + h * gs_h
            dv = tl.dot(pt.to(IN_DT).to(DOT_DT), do, input_precision=PRECISION)
            tl.store(dv_ptr + gbase + keys[:, None] * gs_n + dd[None, :], dv.to(dv_ptr.dtype.element_ty), mask=kmask)
            dk = tl.dot(dst.to(IN_DT).to(DOT_DT), q, input_precision=PRECISION) * scale
            tl.store(dk_ptr + gbase + keys[:, None] * gs_n + dd[None, :], dk.to(dk_ptr.dtype.element_ty), mask=kmask)


# --- launchers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and program shape for one problem (see the module docstring)."""

    BLOCK_M: int  # query rows per program tile
    BLOCK_N: int  # padded window length (all keys in one tile)
    BLOCK_D: int
    NQB: int  # query tiles per window
    WPB: int  # windows per program
    num_warps_fwd: int
    num_warps_bwd: int
    num_stages_bwd: int = 2


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def launch_config(B_: int, H: int, N: int, D: int, nW: int, windows_per_program: int | None = None,
                  min_programs: int = MIN_PROGRAMS_FWD, dtype: torch.dtype | None = None) -> LaunchConfig:
    """Pick tiles: ``BLOCK_N = next_pow2(N) ≥ 16``; the whole window in one tile up to 64, else 64-row (N ≤ 128)
    or 16-row (N ≤ 256) query tiles; ``WPB`` the largest of 16, 8, 4, 2, 1 that still leaves ≥ ``min_programs``
    programs (to amortise the bias/mask tile and the bias-gradient partials without starving the SMs).

    Warps and stages were chosen from ptxas register reports of sm_90a builds (``bench kernels --compile``; no GPU
    timing yet): bf16 Swin-T stage 1 compiles to ~100-127 registers (forward, 4 warps) and 228 (backward, 8 warps,
    2 stages) without spills; fp32/fp64 operands (FMA dots) need 8 forward warps to avoid spilling. Their backward
    spilled with a pipelined (2-stage) window loop — fp32 at 8 warps: 32 registers and 6.5 KB of spill stores per
    thread (Triton 3.8), fp64: 3 KB — so it runs unpipelined: fp32 at 16 warps (92 registers, no spills, 25%
    occupancy), fp64 at 8. fp64 (a numerics dtype: it must launch everywhere, speed is secondary) takes 32-row query
    tiles: its 64×64 backward tile needed 112 KB of shared memory, which sm_89 (L4, L40S: 99 KB per block) cannot
    launch; 32 rows need 48 + 64 KB (row and column kernels). 32×256 tiles spilled heavily where 16×256 at 4 warps
    do not.
    """
    block_n = max(16, _next_pow2(N))
    block_d = max(16, _next_pow2(D))
    stages_bwd = 2
    if block_n <= 64:
        block_m = block_n
        wide = dtype in (torch.float32, torch.float64)
        warps_fwd = 8 if wide and block_n == 64 else 4
        warps_bwd = 4 if block_m * block_n <= 1024 else 8
        if wide and block_n == 64:
            warps_bwd, stages_bwd = (16 if dtype == torch.float32 else 8), 1
        if dtype == torch.float64 and block_n == 64:
            block_m = 32  # 64-row fp64 tiles need 112 KB of shared memory: over sm_89's 99 KB per block
    elif block_n <= 128:
        block_m, warps_fwd, warps_bwd = 64, 8, 8
    else:
        block_m, warps_fwd, warps_bwd = 16, 4, 4
    nqb = block_n // block_m
    per_mask = B_ // nW
    if windows_per_program is None:
        wpb = 1
        for cand in (16, 8, 4, 2):
            if nW * math.ceil(per_mask / cand) * H * nqb >= min_programs:
                wpb = cand
                break
    else:
        wpb = max(1, int(windows_per_program))
    return LaunchConfig(block_m, block_n, block_d, nqb, wpb, num_warps_fwd=warps_fwd, num_warps_bwd=warps_bwd,
                        num_stages_bwd=stages_bwd)


def fp32_precision(device: torch.device | str) -> str:
    """``tl.dot`` input precision for fp32 operands on ``device``: ``"tf32"`` where PyTorch lets fp32 matmuls use
    TF32 on CUDA (``torch.backends.cuda.matmul.allow_tf32``, i.e. ``torch.get_float32_matmul_precision() !=
    "highest"``), so ``tf32`` benchmark rows compare like with like against eager/SDPA; ``"ieee"`` otherwise and
    always on the CPU (the interpreter emulates no TF32). A cheap flag read, safe inside CUDA-graph capture."""
    if torch.device(device).type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


# The fp32 input precision of the most recent fp32 launch ("tf32" / "ieee"; None before one), for reports.
LAST_FP32_PRECISION: list[str] = []


def _dot_flags(dtype: torch.dtype, device: torch.device | str) -> tuple[str, bool, bool]:
    """(input_precision, DOT_F32: upcast operands to fp32 before tl.dot, ACC_F64) for inputs of ``dtype``."""
    upcast = dtype == torch.bfloat16 and interpret_enabled()  # the interpreter's bf16 tl.dot is wrong
    if dtype == torch.float32:
        precision = fp32_precision(device)
        LAST_FP32_PRECISION[:] = [precision]
    else:
        precision = "ieee" if dtype == torch.float64 or upcast else "tf32"  # ignored for fp16/bf16 operands
    return precision, upcast, dtype == torch.float64


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                 mask: torch.Tensor | None) -> tuple[int, int, int, int, int]:
    """Validate shapes/dtypes/devices; returns ``(B_, H, N, D, nW)`` (``nW = 1`` without a mask)."""
    if q.dim() != 4:
        raise ValueError(f"q must be [B_, H, N, D], got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32,
                                                               torch.float64):
        raise TypeError(f"q, k, v must share one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B_, H, N, D = q.shape
    if N > MAX_N or D > MAX_D:
        raise ValueError(f"window_attention Triton kernel supports N <= {MAX_N} and D <= {MAX_D}, got N={N}, D={D}")
    tensors = [("k", k), ("v", v)]
    if bias is not None:
        if tuple(bias.shape) != (H, N, N):
            raise ValueError(f"bias must be [H, N, N] = {(H, N, N)}, got {tuple(bias.shape)}")
        tensors.append(("bias", bias))
    nW = 1
    if mask is not None:
        if mask.dim() != 3 or tuple(mask.shape[1:]) != (N, N):
            raise ValueError(f"mask must be [nW, N, N] with N={N}, got {tuple(mask.shape)}")
        nW = mask.shape[0]
        if nW == 0 or B_ % nW:
            raise ValueError(f"B_={B_} windows is not a multiple of the mask's nW={nW}")
        tensors.append(("mask", mask))
    for name, t in tensors:
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {t.dtype}")
    return B_, H, N, D, nW


def _bm_args(bias: torch.Tensor | None, mask: torch.Tensor | None, q: torch.Tensor) -> tuple:
    """Pointers and strides for bias/mask (a dummy pointer with zero strides when absent)."""
    b = bias if bias is not None else q
    mk = mask if mask is not None else q
    bs = bias.stride() if bias is not None else (0, 0, 0)
    ms = mask.stride() if mask is not None else (0, 0, 0)
    return b, mk, bs, ms


def _split_scale(scale: float) -> tuple[float, float]:
    """``scale = hi + lo`` with both fp32 (Triton passes Python floats as fp32): no tensor per call."""
    hi = _f32(scale)
    return hi, _f32(scale - hi)


def _f32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


def window_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                         mask: torch.Tensor | None, scale: float,
                         windows_per_program: int | None = None) -> torch.Tensor:
    """Forward launcher. q, k, v ``[B_, H, N, D]`` (any strides), bias ``[H, N, N]``, mask ``[nW, N, N]``.

    Returns ``[B_, H, N, D]`` in q's dtype, stored as ``[B_, N, H, D]`` (a permuted view) so that Swin's
    ``out.transpose(1, 2).reshape(B_, N, H·D)`` is free instead of a copy.
    """
    B_, H, N, D, nW = check_inputs(q, k, v, bias, mask)
    cfg = launch_config(B_, H, N, D, nW, windows_per_program, dtype=q.dtype)
    o = empty_output((B_, N, H, D), q.dtype, q.device).permute(0, 2, 1, 3)
    if q.numel() == 0:
        return o
    precision, dot_f32, acc_f64 = _dot_flags(q.dtype, q.device)
    bptr, mptr, bs, ms = _bm_args(bias, mask, q)
    grid = (nW * math.ceil(B_ // nW / cfg.WPB), H * cfg.NQB)
    traceable(_wattn_fwd_kernel)[grid](
        q, k, v, o, bptr, mptr, *_split_scale(scale),
        N, D, nW, B_ // nW,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *bs, *ms,
        WPB=cfg.WPB, BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_D=cfg.BLOCK_D, NQB=cfg.NQB,
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, ACC_F64=acc_f64, PRECISION=precision,
        DOT_F32=dot_f32,
        num_warps=cfg.num_warps_fwd, num_stages=2,
    )
    return o


def window_attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         bias: torch.Tensor | None, mask: torch.Tensor | None, scale: float,
                         need_dbias: bool = True, need_dmask: bool = False,
                         windows_per_program: int | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backward launcher: returns ``(dq, dk, dv, dbias, dmask)``; dq/dk/dv contiguous ``[B_, H, N, D]`` in q's
    dtype, ``dbias = Σ_b dS[b]`` ``[H, N, N]`` in bias's dtype, ``dmask[m] = Σ_{b ≡ m mod nW, h} dS[b, h]`` in
    mask's dtype (None when not requested or absent). Deterministic: no atomics."""
    B_, H, N, D, nW = check_inputs(q, k, v, bias, mask)
    if do.shape != q.shape:
        raise ValueError(f"grad_out shape {tuple(do.shape)} != {tuple(q.shape)}")
    do = do.to(q.dtype)
    cfg = launch_config(B_, H, N, D, nW, windows_per_program, MIN_PROGRAMS_BWD, q.dtype)
    need_dbias = need_dbias and bias is not None
    need_dmask = need_dmask and mask is not None
    compute_dbm = need_dbias or need_dmask
    dq = empty_output((B_, H, N, D), q.dtype, q.device)
    dk = empty_output((B_, H, N, D), q.dtype, q.device)
    dv = empty_output((B_, H, N, D), q.dtype, q.device)
    n_groups = math.ceil(B_ // nW / cfg.WPB)
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    part = empty_output((nW * n_groups, H, N, N) if compute_dbm else (1,), acc_dtype, q.device)
    multi = cfg.NQB > 1
    lse = empty_output((B_, H, N) if multi else (1,), acc_dtype, q.device)
    delta = empty_output((B_, H, N) if multi else (1,), acc_dtype, q.device)
    if q.numel() > 0:
        precision, dot_f32, acc_f64 = _dot_flags(q.dtype, q.device)
        bptr, mptr, bs, ms = _bm_args(bias, mask, q)
        scale_hl = _split_scale(scale)
        common = dict(WPB=cfg.WPB, BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, BLOCK_D=cfg.BLOCK_D,
                      HAS_BIAS=bias is not None, HAS_MASK=mask is not None, ACC_F64=acc_f64, PRECISION=precision,
                      DOT_F32=dot_f32, num_warps=cfg.num_warps_bwd, num_stages=cfg.num_stages_bwd)
        strides = (*q.stride(), *k.stride(), *v.stride(), *do.stride(), *bs, *ms)
        grid = (nW * n_groups, H * cfg.NQB)
        traceable(_wattn_bwd_rows_kernel)[grid](
            q, k, v, do, dq, dk, dv, part, lse, delta, bptr, mptr, *scale_hl, N, D, nW, B_ // nW, H, *strides,
            NQB=cfg.NQB, COMPUTE_DBM=compute_dbm, **common,
        )
        if multi:
            traceable(_wattn_bwd_cols_kernel)[grid](
                q, k, v, do, dk, dv, lse, delta, bptr, mptr, *scale_hl, N, D, nW, B_ // nW, H, *strides,
                NKB=cfg.NQB, **common,
            )
    dbias = dmask = None
    if compute_dbm:
        # Deterministic second pass over the per-program partials; programs are ordered (group, mask id).
        part = part.view(n_groups, nW, H, N, N)
        if need_dbias:
            dbias = part.sum(dim=(0, 1)).to(bias.dtype)  # type: ignore[union-attr]
        if need_dmask:
            dmask = part.sum(dim=(0, 2)).to(mask.dtype)  # type: ignore[union-attr]
    return dq, dk, dv, dbias, dmask

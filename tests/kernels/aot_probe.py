"""Toy kernels for ``test_aot.py``, run in a subprocess without ``TRITON_INTERPRET`` (the check drives the JIT).

Prints one JSON object: the compile row of each toy launch, recorded on CPU tensors and compiled for ``sys.argv[1]``.
"""

from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl

from bench.kernelbench.aot import ARCHS, compile_launch, record_launches


@triton.jit
def copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m), mask=m)


@triton.jit
def not_pow2_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)  # BLOCK = 48: tl.arange needs a power of two -> the compiler refuses
    tl.store(x_ptr + offs, tl.zeros([BLOCK], tl.float32), mask=offs < n)


@triton.jit
def smem_hog_kernel(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # A pipelined GEMM tile: NUM_STAGES copies of the A and B tiles live in shared memory.
    rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * BN + rn[None, :])
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


def main() -> None:
    arch = ARCHS[sys.argv[1] if len(sys.argv) > 1 else "sm_90"]
    x = torch.zeros(1000)
    a = torch.zeros(128, 1024, dtype=torch.float16)
    b = torch.zeros(1024, 128, dtype=torch.float16)
    c = torch.zeros(128, 128)
    labels = ["copy_kernel:-", "not_pow2_kernel:-", "smem_hog_kernel:2", "smem_hog_kernel:5", "copy_kernel:bad_arg"]
    with record_launches(arch.sm_count) as launches:
        copy_kernel[(8,)](x, torch.empty_like(x), 1000, BLOCK=128)
        not_pow2_kernel[(1,)](x, 48, BLOCK=48)
        smem_hog_kernel[(1,)](a, b, c, 1024, BM=128, BN=128, BK=128, num_warps=8, num_stages=2)
        smem_hog_kernel[(1,)](a, b, c, 1024, BM=128, BN=128, BK=128, num_warps=8, num_stages=5)
        copy_kernel[(1,)](x, object(), 1000, BLOCK=128)  # an argument the JIT cannot specialize
    out = {label: compile_launch(launch, arch) for label, launch in zip(labels, launches)}
    print(json.dumps({"n_launches": len(launches), "rows": out}, default=str))


if __name__ == "__main__":
    main()

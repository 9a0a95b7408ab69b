"""Fixtures shared by the harness tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def scale_kernel():  # noqa: ANN201
    """``y = 2 x`` as a bare ``@triton.jit`` kernel (grid ``(cdiv(n, BLOCK),)``), launched in Triton's interpreter: the
    FLOP counters' test case for a Triton launch they cannot count."""
    triton = pytest.importorskip("triton")
    import triton.language as tl

    from kernels import dispatch_path

    if dispatch_path("cpu") != "triton-interpret":
        pytest.skip("needs TRITON_INTERPRET=1 to launch a Triton kernel on the CPU")

    @triton.jit
    def _scale_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):  # noqa: N803
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2.0, mask=offs < n)

    return _scale_kernel

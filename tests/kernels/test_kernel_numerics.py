"""Every registered kernel × test shape × dtype × direction through the checker (``bench kernels --check``).

One test per case, so a failure names exactly what broke, e.g.
``test_kernel_numerics[window_attention-n49_d32_nw4-bf16-backward]``. The pass rule and what the checker verifies
(float64 and eager comparison, NaN/1e4-poisoned outputs, unmodified inputs, a Triton launch) are documented in
:mod:`bench.kernelbench.check`. float64 is tried for every kernel: where a kernel does not declare it and raises,
the case is skipped with the kernel's message; where it runs, it must be float64-accurate.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.kernelbench.check import DIRECTIONS, DTYPES, check_case
from kernels._triton import HAS_TRITON, interpret_enabled


def _cases() -> list[Any]:
    import kernels
    from kernels.registry import get_kernel

    return [pytest.param(name, shape, dt, direction, id=f"{name}-{shape}-{dt}-{direction}")
            for name in kernels.list_kernels()
            for shape in get_kernel(name).test_shapes
            for dt in DTYPES
            for direction in DIRECTIONS]


@pytest.mark.triton
@pytest.mark.skipif(not (HAS_TRITON and interpret_enabled()), reason="needs Triton's interpreter (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("kernel, shape, dtype, direction", _cases())
def test_kernel_numerics(kernel: str, shape: str, dtype: str, direction: str) -> None:
    from kernels.registry import get_kernel

    spec = get_kernel(kernel)
    rows = check_case(spec, shape, spec.test_shapes[shape], DTYPES[dtype], direction, "cpu", seed=0)
    assert rows, "the checker returned no rows"
    bad = [r for r in rows if r["status"] in ("fail", "error")]
    assert not bad, "\n".join(f"{r['output']}: {r['status']}: {r['message']} (max_abs {r.get('max_abs_err')}, "
                              f"bound {r.get('tol_max_abs')}; rel_fro {r.get('rel_fro_err')}, "
                              f"bound {r.get('tol_rel_fro')})" for r in bad)
    if all(r["status"] == "unsupported" for r in rows):
        pytest.skip(rows[0]["message"])
    assert all(r["status"] == "pass" and r["path"] == "triton-interpret" for r in rows), rows

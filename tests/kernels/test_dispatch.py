"""The dispatch path is the path taken, and every result row records it — with and without ``TRITON_INTERPRET``.

Triton reads ``TRITON_INTERPRET`` when it is imported, and this test process imported it with ``=1`` (conftest), so
the "without" half runs in a fresh subprocess. "Taken" is observed, not assumed: Triton launches are counted by
:func:`bench.kernelbench.check.count_triton_launches`, which wraps Triton's launch entry points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.kernelbench.check import check_case, count_triton_launches, require_triton_path
from kernels._triton import HAS_TRITON, dispatch_path, interpret_enabled

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.triton


def _registered() -> list[str]:
    import kernels

    return kernels.list_kernels()


def _first_shape(name: str) -> tuple[str, Any]:
    from kernels.registry import get_kernel

    spec = get_kernel(name)
    # the smallest test shape (by input elements), to keep the interpreter quick
    shape_name = min(spec.test_shapes, key=lambda s: sum(
        t.numel() for t in spec.make_inputs(spec.test_shapes[s], torch.float32, "cpu", 0).args
        if isinstance(t, torch.Tensor)))
    return shape_name, spec.test_shapes[shape_name]


@pytest.mark.skipif(not (HAS_TRITON and interpret_enabled()), reason="needs Triton's interpreter (TRITON_INTERPRET=1)")
def test_interpreter_path_is_reported_for_cpu() -> None:
    assert dispatch_path("cpu") == "triton-interpret"
    assert require_triton_path("cpu") == "triton-interpret"
    assert dispatch_path("cuda") == "reference"  # the interpreter is on: CUDA tensors do not compile Triton here


@pytest.mark.skipif(not (HAS_TRITON and interpret_enabled()), reason="needs Triton's interpreter (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("name", _registered())
def test_public_function_runs_triton_in_the_interpreter_and_rows_record_it(name: str) -> None:
    from kernels.registry import get_kernel

    spec = get_kernel(name)
    shape_name, shape = _first_shape(name)
    inputs = spec.make_inputs(shape, torch.float32, "cpu", 0)
    with count_triton_launches() as n_fn:
        out_fn = spec.fn(*inputs.args, **inputs.kwargs)
    with count_triton_launches() as n_triton:
        out_triton = spec.triton_fn(*inputs.args, **inputs.kwargs)
    assert n_fn[0] >= 1 and n_fn[0] == n_triton[0], "the public function did not take the Triton path"
    assert torch.equal(out_fn, out_triton)  # same path, same bits
    rows = check_case(spec, shape_name, shape, torch.float32, "forward", "cpu")
    assert rows and all(r["path"] == "triton-interpret" and r["launches"] == n_triton[0] for r in rows), rows


_WITHOUT_INTERPRETER = r"""
import json, torch
import kernels
from kernels._triton import dispatch_path, interpret_enabled
from kernels.registry import get_kernel, list_kernels
from bench.kernelbench.check import TritonUnavailableError, count_triton_launches, require_triton_path
from bench.kernelbench import cli

res = {"interpret": interpret_enabled(), "path_cpu": dispatch_path("cpu"), "kernels": {}}
try:
    require_triton_path("cpu")
    res["refusal"] = None
except TritonUnavailableError as e:
    res["refusal"] = str(e)
res["cli_check"] = cli.run(["--check"])
for name, shape_name in json.loads(SHAPES).items():
    spec = get_kernel(name)
    inputs = spec.make_inputs(spec.test_shapes[shape_name], torch.float32, "cpu", 0)
    with count_triton_launches() as n:
        out = spec.fn(*inputs.args, **inputs.kwargs)
    ref = spec.reference(*inputs.args, **inputs.kwargs)
    try:
        spec.triton_fn(*inputs.args, **inputs.kwargs)
        forced = "ran"
    except Exception as e:
        forced = f"{type(e).__name__}: {e}"
    res["kernels"][name] = {"launches": n[0], "equal_reference": bool(torch.equal(out, ref)), "triton_fn": forced}
print("RESULT" + json.dumps(res))
"""


def test_without_interpreter_cpu_takes_the_reference_and_the_check_refuses() -> None:
    """In a fresh process without TRITON_INTERPRET: CPU calls run the reference (no launch, reference bits),
    ``triton_fn`` raises instead of silently falling back, and ``--check`` refuses with exit code 2."""
    shapes = {name: _first_shape(name)[0] for name in _registered()}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    script = _WITHOUT_INTERPRETER.replace("json.loads(SHAPES)", f"json.loads({json.dumps(json.dumps(shapes))})")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    res = json.loads(line[len("RESULT"):])
    assert res["interpret"] is False
    assert res["path_cpu"] == "reference"
    if HAS_TRITON:
        assert "TRITON_INTERPRET=1" in res["refusal"]
        assert res["cli_check"] == 2
        assert "TRITON_INTERPRET=1" in proc.stderr
    for name, r in res["kernels"].items():
        assert r["launches"] == 0, f"{name}: launched Triton on the reference path"
        assert r["equal_reference"], f"{name}: the CPU fallback is not the reference"
        assert r["triton_fn"] != "ran", f"{name}: triton_fn ran on the CPU without the interpreter (a silent fallback?)"


@pytest.mark.gpu
def test_cuda_path_check_and_bench_smoke(tmp_path: Path) -> None:
    """On a GPU, without the interpreter (a subprocess: this process has TRITON_INTERPRET=1): ``--check`` on the
    test shapes passes with path ``triton``, and ``--bench`` times triton and eager on each kernel's first real shape
    with positive latencies, launches counted and roofline columns filled."""
    import pandas as pd

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    names = _registered()
    check = subprocess.run([sys.executable, "-m", "bench.kernelbench.cli", "--check", "--device", "cuda",
                            "--test-shapes", "--dtypes", "fp32", "bf16", "--out", str(tmp_path)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert check.returncode == 0, check.stdout[-4000:] + check.stderr[-2000:]
    df = pd.read_csv(tmp_path / "kernels_check.csv")
    assert set(df["path"]) == {"triton"} and set(df["status"]) == {"pass"}
    from kernels.registry import get_kernel

    shapes = [next(iter(get_kernel(n).shapes)) for n in names]
    bench = subprocess.run([sys.executable, "-m", "bench.kernelbench.cli", "--bench", "--kernels", *names,
                            "--shapes", *shapes, "--dtypes", "bf16", "--directions", "forward", "--providers",
                            "triton", "eager", "--rep-ms", "20", "--warmup-ms", "5", "--out", str(tmp_path)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert bench.returncode == 0, bench.stdout[-4000:] + bench.stderr[-2000:]
    rows = pd.read_csv(tmp_path / "kernels.csv")
    assert set(rows["status"]) == {"ok"} and (rows["p50_us"] > 0).all() and (rows["warm_p50_us"] > 0).all()
    tri = rows[rows["provider"] == "triton"]
    assert (tri["launches"] >= 1).all() and set(tri["path"]) == {"triton"}
    assert tri["gbps"].notna().all() and tri["pct_peak_bw"].notna().all() and tri["speedup_vs_eager"].notna().all()

"""The kernel checker (``bench kernels --check``) tested with known-good and known-bad kernels, plus its CLI, the
bench plumbing that runs without a GPU, and the FLOP/byte formulas of every registered kernel.

The fake kernel is a real Triton kernel run in the interpreter: ``y = x * w + b`` per column (a folded-BN
"scale-shift"), ``x: [M, N]``, ``w, b: [N]``, tiles of ``BLOCK_M`` rows. Each bad variant is a config dict that
breaks one thing on purpose; the checker must fail it with the matching reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch

from bench.kernelbench import check as chk
from bench.kernelbench import cli, microbench, peaks, report
from kernels._triton import HAS_TRITON, empty_output, interpret_enabled, tl, triton
from kernels.registry import KernelInputs, KernelSpec, get_kernel, list_kernels, register_kernel, unregister_kernel

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not (HAS_TRITON and interpret_enabled()),
                       reason="needs Triton's interpreter (TRITON_INTERPRET=1)"),
]

BLOCK_M = 8

if HAS_TRITON:

    @triton.jit
    def _scale_shift_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, stride_xm, stride_xn, stride_ym, stride_yn,
                            HAS_BIAS: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr):
        pid = tl.program_id(0)
        rm = pid * BLOCK + tl.arange(0, BLOCK)
        rn = tl.arange(0, BLOCK_N)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rn[None, :] * stride_xn, mask=mask, other=0.0)
        w = tl.load(w_ptr + rn, mask=rn < N, other=0.0)
        if F64:
            acc = x.to(tl.float64) * w.to(tl.float64)[None, :]
        else:
            acc = x.to(tl.float32) * w.to(tl.float32)[None, :]
        if HAS_BIAS:
            b = tl.load(b_ptr + rn, mask=rn < N, other=0.0)
            acc += b.to(acc.dtype)[None, :]
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :] * stride_yn, acc.to(y_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, y: torch.Tensor, v: Mapping[str, Any],
            skip_last: bool = False) -> None:
    M, N = x.shape
    tiles = triton.cdiv(M, BLOCK_M) - (1 if skip_last else 0)
    sy = (y.stride(1), y.stride(0)) if v.get("transpose_store") else (y.stride(0), y.stride(1))
    f64 = x.dtype == torch.float64 and not v.get("fp64_in_fp32")
    _scale_shift_kernel[(tiles,)](x, w, b if b is not None else w, y, M, N, x.stride(0), x.stride(1), *sy,
                                  HAS_BIAS=b is not None, F64=f64, BLOCK=BLOCK_M, BLOCK_N=triton.next_power_of_2(N))


def _forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, v: Mapping[str, Any]) -> torch.Tensor:
    if v.get("raise_on") is not None and x.dtype in v["raise_on"]:
        raise TypeError(f"scale_shift: {x.dtype} is not supported")
    if v.get("zeros"):
        return torch.zeros_like(x)
    out_dtype = torch.float32 if v.get("wrong_dtype") else x.dtype
    y = empty_output(x.shape, out_dtype, x.device)
    _launch(x, w, b, y, v, skip_last=v.get("skip_last_tile", False))
    if v.get("nan_at_0"):
        y[0, 0] = float("nan")
    if v.get("write_input"):  # correct output, then the kernel runs again in place: the input is overwritten
        _launch(x, w, b, x, v)
    if v.get("noise"):  # run-to-run noise far below the tolerance: only the identity check can see it
        y += torch.randn(y.shape, dtype=torch.float32).to(y.dtype) * 1e-7 * float(y.abs().max())
    return y


class _ScaleShift(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, v: Mapping[str, Any]) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.v = v
        return _forward(x, w, b, v)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        gx = empty_output(x.shape, x.dtype, x.device)
        _launch(g, w, None, gx, {}, skip_last=ctx.v.get("bad_grad_tile", False))  # dx = g * w
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        gw = (g.to(acc) * x.to(acc)).sum(0).to(w.dtype)
        gb = g.to(acc).sum(0).to(w.dtype)
        return gx, gw, gb, None


def scale_shift(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Reference: ``y = x * w + b`` with ``x [M, N]``, ``w, b [N]``."""
    return x * w + b


def _make_inputs(shape: Mapping[str, Any], dtype: torch.dtype, device: Any, seed: int) -> KernelInputs:
    gen = torch.Generator().manual_seed(seed)
    x, w, b = (torch.randn(s, generator=gen) for s in ((shape["M"], shape["N"]), (shape["N"],), (shape["N"],)))
    return KernelInputs(tuple(t.to(dtype=dtype, device=device) for t in (x, w, b)), grad_args=(0, 1, 2))


TEST_SHAPES = {"odd": {"M": 37, "N": 13}, "square": {"M": 19, "N": 19}}


def fake_spec(name: str = "fake_scale_shift", deterministic: bool | None = None, **variant: Any) -> KernelSpec:
    """A registry entry for the fake kernel; ``variant`` keys switch on one bug each (see ``_forward``)."""
    v = dict(variant)
    triton_fn = scale_shift if v.pop("as_reference", False) else (lambda x, w, b: _ScaleShift.apply(x, w, b, v))
    fields = dict(
        name=name, fn=triton_fn, triton_fn=triton_fn, reference=scale_shift, make_inputs=_make_inputs,
        shapes={"big": {"M": 8192, "N": 1024}}, test_shapes=TEST_SHAPES, flops=lambda s: 2 * s["M"] * s["N"],
        min_bytes=lambda s, dt: (2 * s["M"] * s["N"] + 2 * s["N"]) * torch.finfo(dt).bits // 8,
        min_bytes_backward=lambda s, dt: (3 * s["M"] * s["N"] + 3 * s["N"]) * torch.finfo(dt).bits // 8,
        dtypes=v.pop("dtypes", (torch.float32, torch.float16, torch.bfloat16, torch.float64)),
    )
    if deterministic is None:
        return KernelSpec(**fields)
    return _SpecWithDeterminism(**fields, deterministic=deterministic)


@dataclasses.dataclass(frozen=True)
class _SpecWithDeterminism(KernelSpec):
    deterministic: bool = True  # what the checker reads with getattr(spec, "deterministic", True)


def run(spec: KernelSpec, dtype: torch.dtype = torch.float32, direction: str = "forward", shape: str = "odd",
        **kw: Any) -> list[dict[str, Any]]:
    return chk.check_case(spec, shape, TEST_SHAPES[shape], dtype, direction, "cpu", seed=3, **kw)


def statuses(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {r["output"]: r["status"] for r in rows}


# --- the good kernel and the reference pass --------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=["fp32", "fp16", "bf16", "fp64"])
def test_good_kernel_passes(dtype: torch.dtype, direction: str) -> None:
    rows = run(fake_spec(), dtype, direction)
    expected = {"out"} if direction == "forward" else {"grad_x", "grad_w", "grad_b"}
    assert set(statuses(rows)) == expected
    for r in rows:
        assert r["status"] == "pass", r
        assert r["path"] == "triton-interpret"
        assert r["launches"] >= 1
        assert r["dtype"] == chk.dtype_name(dtype)
        assert math.isfinite(r["max_abs_err"])
        assert r["max_abs_err"] <= r["tol_max_abs"] or r["rel_fro_err"] <= r["tol_rel_fro"]


def test_reference_itself_passes_but_is_not_a_kernel() -> None:
    spec = fake_spec(as_reference=True)
    for direction in ("forward", "backward"):
        rows = run(spec, torch.bfloat16, direction, require_launch=False)
        assert all(r["status"] == "pass" for r in rows), rows
        assert all(r["max_abs_err"] == r["eager_max_abs_err"] for r in rows)  # same code, same numbers
    rows = run(spec, torch.float32, "forward")  # by default, no Triton launch = not the kernel under test
    assert statuses(rows) == {"out": "fail"}
    assert "no Triton kernel was launched" in rows[0]["message"]


# --- known-bad kernels fail, each for its own reason ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_last_tile_unwritten_fails(dtype: torch.dtype) -> None:
    rows = run(fake_spec(skip_last_tile=True), dtype)
    assert statuses(rows) == {"out": "fail"}
    msg = rows[0]["message"]
    assert "poison nan: 65 non-finite" in msg  # 37 rows in tiles of 8: rows 32..36 x 13 columns unwritten
    assert "poison 10000.0" in msg and "runs differ" in msg


def test_returns_zeros_fails() -> None:
    rows = run(fake_spec(zeros=True), torch.float16)
    assert statuses(rows) == {"out": "fail"}
    assert "max_abs" in rows[0]["message"] and rows[0]["rel_fro_err"] == pytest.approx(1.0)


def test_transposed_store_fails() -> None:
    good = run(fake_spec(), shape="square")
    assert statuses(good) == {"out": "pass"}  # the square shape itself is fine
    rows = run(fake_spec(transpose_store=True), shape="square")
    assert statuses(rows) == {"out": "fail"}
    assert rows[0]["rel_fro_err"] > 0.5


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_modifying_an_input_fails(direction: str) -> None:
    rows = run(fake_spec(write_input=True), direction=direction)
    assert rows and all(r["status"] == "fail" for r in rows)
    assert all("modified its input tensor(s) #[0]" in r["message"] for r in rows)
    if direction == "forward":  # the output itself is right: only the input check catches it
        assert rows[0]["max_abs_err"] <= rows[0]["tol_max_abs"]


def test_nan_in_output_fails() -> None:
    rows = run(fake_spec(nan_at_0=True))
    assert statuses(rows) == {"out": "fail"}
    assert "1 non-finite element(s)" in rows[0]["message"]


def test_wrong_output_dtype_fails() -> None:
    rows = run(fake_spec(wrong_dtype=True), torch.float16)
    assert statuses(rows) == {"out": "fail"}
    assert "dtype fp32, eager returns fp16" in rows[0]["message"]


def test_unwritten_gradient_tile_fails_only_that_gradient() -> None:
    spec = fake_spec(bad_grad_tile=True)
    assert statuses(run(spec)) == {"out": "pass"}
    assert statuses(run(spec, direction="backward")) == {"grad_x": "fail", "grad_w": "pass", "grad_b": "pass"}


def test_runs_must_be_identical_unless_declared_nondeterministic() -> None:
    rows = run(fake_spec(noise=True))
    assert statuses(rows) == {"out": "fail"}
    assert "runs differ" in rows[0]["message"] and "non-finite" not in rows[0]["message"]
    rows = run(fake_spec(noise=True, deterministic=False))
    assert statuses(rows) == {"out": "pass"}
    assert "nondeterministic" in rows[0]["message"]


def test_fp64_computed_in_fp32_fails() -> None:
    rows = run(fake_spec(fp64_in_fp32=True), torch.float64)
    assert statuses(rows) == {"out": "fail"}
    assert rows[0]["rel_fro_err"] > 1e-12 and rows[0]["eager_max_abs_err"] == 0.0


def test_exceptions_are_unsupported_in_undeclared_dtypes_and_errors_in_declared_ones() -> None:
    undeclared = fake_spec(raise_on=(torch.float64,), dtypes=(torch.float32,))
    rows = run(undeclared, torch.float64)
    assert statuses(rows) == {"-": "unsupported"}
    assert "TypeError" in rows[0]["message"] and "not in spec.dtypes" in rows[0]["message"]
    declared = fake_spec(raise_on=(torch.float32,))
    rows = run(declared, torch.float32, "backward")
    assert statuses(rows) == {"-": "error"}
    assert rows[0]["message"].startswith("the kernel (poison nan) raised TypeError")


def test_backward_without_differentiable_args_is_unsupported() -> None:
    spec = dataclasses.replace(fake_spec(), make_inputs=lambda s, dt, dev, seed: dataclasses.replace(
        _make_inputs(s, dt, dev, seed), grad_args=()))
    rows = run(spec, direction="backward")
    assert statuses(rows) == {"-": "unsupported"}


def test_unknown_direction_is_rejected() -> None:
    with pytest.raises(ValueError, match="valid: forward, backward"):
        run(fake_spec(), direction="sideways")


def test_launch_counter_nests_and_restores_triton() -> None:
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.__dict__["run"]
    x, w, b = _make_inputs(TEST_SHAPES["odd"], torch.float32, "cpu", 0).args
    with chk.count_triton_launches() as outer:
        _ScaleShift.apply(x, w, b, {})
        with chk.count_triton_launches() as inner:
            _ScaleShift.apply(x, w, b, {})
            _ScaleShift.apply(x, w, b, {})
        scale_shift(x, w, b)  # no launch
    assert (outer[0], inner[0]) == (3, 2)
    assert InterpretedFunction.__dict__["run"] is original


def test_iter_cases_filters_and_orders() -> None:
    spec = fake_spec()
    cases = list(chk.iter_cases([spec], [torch.float32, torch.bfloat16], ["forward"], shape_names=["square"]))
    assert [(c[1], c[3], c[4]) for c in cases] == [("square", torch.float32, "forward"),
                                                   ("square", torch.bfloat16, "forward")]
    assert [c[1] for c in chk.iter_cases([spec], [torch.float32], ["forward"], real_shapes=True)] == ["big"]
    # by_rank: kernels interleaved by (shape rank, dtype, direction): each one's first shape, leading dtype first
    two = [spec, dataclasses.replace(spec, name="other")]
    ranked = [(c[0].name, c[1]) for c in chk.iter_cases(two, [torch.float32], ["forward"], by_rank=True)]
    assert ranked == [("fake_scale_shift", "odd"), ("other", "odd"), ("fake_scale_shift", "square"),
                      ("other", "square")]
    ranked = [(c[0].name, c[1], chk.dtype_name(c[3]), c[4][0]) for c in
              chk.iter_cases(two, [torch.bfloat16, torch.float32], ["forward", "backward"], by_rank=True)][:6]
    assert ranked == [("fake_scale_shift", "odd", "bf16", "f"), ("other", "odd", "bf16", "f"),
                      ("fake_scale_shift", "odd", "bf16", "b"), ("other", "odd", "bf16", "b"),
                      ("fake_scale_shift", "odd", "fp32", "f"), ("other", "odd", "fp32", "f")]
    plain = [(c[0].name, c[1]) for c in chk.iter_cases(two, [torch.float32], ["forward"])]
    assert plain == [("fake_scale_shift", "odd"), ("fake_scale_shift", "square"), ("other", "odd"), ("other", "square")]


# --- CLI ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def registered() -> Any:
    """Register fake kernels for the CLI and unregister them afterwards."""
    import kernels  # noqa: F401 - the real kernels register first, as in the CLI

    names = []

    def add(spec: KernelSpec) -> str:
        register_kernel(spec)
        names.append(spec.name)
        return spec.name

    yield add
    for n in names:
        unregister_kernel(n)


def test_cli_check_passes_writes_csv_and_prints_table(registered: Any, tmp_path: Any, capsys: Any) -> None:
    name = registered(fake_spec("fake_good"))
    code = cli.run(["--check", "--kernels", name, "--dtypes", "fp32", "bf16", "--shapes", "odd", "--out",
                    str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "Kernel numerics" in out and name in out and "pass: 8" in out
    from bench.io import read_results

    df = read_results(tmp_path / cli.CHECK_CSV, required=chk.CHECK_COLUMNS + ["git_sha", "device_name"])
    assert len(df) == 8  # (fp32, bf16) x (1 forward output + 3 gradients)
    assert set(df["status"]) == {"pass"} and set(df["path"]) == {"triton-interpret"}
    md = report.kernels_section(tmp_path)
    assert "## Kernels" in md and f"| {name} | bf16 | backward | 3 | 3 | 0 |" in md
    assert "## Kernels" in (tmp_path / "report.md").read_text()
    # A second run into the same directory replaces the CSV (as `run` without --resume does), never appends.
    assert cli.run(["--check", "--kernels", name, "--dtypes", "fp32", "--shapes", "odd", "--out", str(tmp_path)]) == 0
    assert len(read_results(tmp_path / cli.CHECK_CSV)) == 4


def test_cli_budget_stops_starting_cases_and_lists_the_rest(registered: Any, tmp_path: Any, capsys: Any) -> None:
    name = registered(fake_spec("fake_budget"))
    # A budget spent before the first case: nothing runs, every case is listed, nothing is reported as measured.
    assert cli.run(["--check", "--kernels", name, "--dtypes", "fp32", "--out", str(tmp_path), "--budget-s",
                    "1e-9"]) == 0
    listed = (tmp_path / cli.skipped_file("check")).read_text().splitlines()
    assert listed == [f"{name} odd fp32 forward", f"{name} odd fp32 backward", f"{name} square fp32 forward",
                      f"{name} square fp32 backward"]
    assert "--budget-s spent: 4 check case(s) not started" in capsys.readouterr().err
    from bench.io import read_results

    assert len(read_results(tmp_path / cli.CHECK_CSV, strict=False)) == 0
    # A budget that suffices: every case runs and the list from the earlier run is gone; another mode's list stays
    # (gpu_job runs --check, then --bench, into one folder).
    (tmp_path / cli.skipped_file("bench")).write_text("k s bf16 forward\n")
    assert cli.run(["--check", "--kernels", name, "--dtypes", "fp32", "--out", str(tmp_path), "--budget-s",
                    "600"]) == 0
    assert not (tmp_path / cli.skipped_file("check")).exists()
    assert len(read_results(tmp_path / cli.CHECK_CSV)) == 8
    assert (tmp_path / cli.skipped_file("bench")).read_text() == "k s bf16 forward\n"
    assert cli.run(["--check", "--kernels", name, "--budget-s", "0"]) == 2
    assert "--budget-s must be a positive number" in capsys.readouterr().err


def test_cli_check_exits_1_on_a_failing_kernel(registered: Any, capsys: Any) -> None:
    good, bad = registered(fake_spec("fake_good")), registered(fake_spec("fake_zeros", zeros=True))
    assert cli.run(["--check", "--kernels", good, bad, "--dtypes", "fp16", "--directions", "forward"]) == 1
    assert "pass: 2 · fail: 2" in capsys.readouterr().out  # 2 shapes each


@pytest.mark.parametrize("argv, needle", [
    (["--check", "--kernels", "fake_goood"], "unknown kernel 'fake_goood' (did you mean 'fake_good'?); valid:"),
    (["--check", "--kernels", "fake_good", "--dtypes", "fp12"], "unknown dtype 'fp12'"),
    (["--check", "--kernels", "fake_good", "--shapes", "huge"], "unknown shape 'huge'; valid: odd, square"),
    (["--check", "--kernels", "fake_good", "--directions", "up"], "unknown direction 'up'"),
    (["--kernels", "fake_good"], "choose what to run"),
])
def test_cli_bad_input_exits_2_with_one_line(registered: Any, capsys: Any, argv: list[str], needle: str) -> None:
    registered(fake_spec("fake_good"))
    assert cli.run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU-only refusal")
def test_cli_bench_needs_cuda(registered: Any, capsys: Any) -> None:
    registered(fake_spec("fake_good"))
    assert cli.run(["--bench", "--kernels", "fake_good"]) == 2
    assert "--bench needs a CUDA device" in capsys.readouterr().err


# --- bench plumbing that needs no GPU -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, mem, expected", [
    ("NVIDIA H100 80GB HBM3", 79.6, "H100 SXM"), ("NVIDIA H100 PCIe", 79.6, "H100 PCIe"),
    ("NVIDIA H100 NVL", 93.6, "H100 NVL"), ("NVIDIA H200", 139.8, "H200 SXM"), ("NVIDIA H200 NVL", 139.8, "H200 NVL"),
    ("NVIDIA A100-SXM4-40GB", 39.4, "A100 SXM4 40GB"), ("NVIDIA A100-SXM4-80GB", 79.2, "A100 SXM4 80GB"),
    ("NVIDIA A100-PCIE-40GB", 39.4, "A100 PCIe 40GB"), ("NVIDIA A100 80GB PCIe", 79.2, "A100 PCIe 80GB"),
    ("NVIDIA A100", 79.2, "A100 SXM4 80GB"), ("NVIDIA L4", 22.0, "L4"),
    ("NVIDIA L40S", 44.5, None), ("NVIDIA GH200 480GB", 95.0, None), ("Tesla V100-SXM2-16GB", 16.0, None),
])
def test_peak_table_lookup(name: str, mem: float, expected: str | None) -> None:
    hit = peaks.lookup_gpu(name, mem)
    assert (hit.name if hit else None) == expected


def test_peak_figures_of_the_issue() -> None:
    h100, h200 = peaks.KNOWN_GPUS["H100 SXM"], peaks.KNOWN_GPUS["H200 SXM"]
    assert (h100.hbm_gbps, h100.tflops["bf16"], h100.tflops["fp32"]) == (3350, 989.4, 67)
    assert h200.hbm_gbps == 4800


def test_derived_metrics_and_speedups() -> None:
    peak = peaks.DevicePeak("NVIDIA H100 80GB HBM3", 3350.0, {"bf16": 989.4, "fp32": 67.0}, 3000.0, "datasheet")
    m = microbench.derive_metrics(0.1, flops=10**11, nbytes=335 * 10**6, peak=peak, dtype="bf16")
    assert m["tflops"] == pytest.approx(1000.0) and m["gbps"] == pytest.approx(3350.0)
    assert m["pct_peak_bw"] == pytest.approx(100.0) and m["pct_peak_flops"] == pytest.approx(100 * 1000 / 989.4)
    assert m["floor_us"] == pytest.approx(max(335e6 / 3350e9, 1e11 / 989.4e12) * 1e6)
    assert microbench.derive_metrics(0.1, 10**9, None, None, "fp64")["gbps"] is None
    rows = [{"provider": "triton", "status": "ok", "p50_us": 50.0},
            {"provider": "eager", "status": "ok", "p50_us": 150.0},
            {"provider": "compile", "status": "error", "p50_us": None},
            {"provider": "sdpa", "status": "ok", "p50_us": 100.0},
            {"provider": "flex", "status": "ok", "p50_us": 80.0}]
    microbench.add_speedups(rows, ["sdpa", "flex"])
    t = rows[0]
    assert (t["speedup_vs_eager"], t["speedup_vs_best_peer"], t["best_peer"]) == (3.0, 1.6, "flex")
    assert t["speedup_vs_compile"] is None and "speedup_vs_eager" not in rows[2]
    assert microbench.backward_flops(fake_spec(), {"M": 3, "N": 5}) == 60


def _raise(exc: type[Exception]) -> Any:
    def peer(*args: Any, **kwargs: Any) -> Any:
        raise exc("peer cannot run this")

    return peer


def _cpu_timer(fn: Any, warmup_ms: float, rep_ms: float) -> dict[str, Any]:
    import time

    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    samples.sort()
    return {"p50_us": samples[1], "p20_us": samples[0], "p80_us": samples[2], "n_samples": 3,
            "warm_p50_us": samples[1], "samples_us": samples}


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_bench_case_plumbing_on_cpu(monkeypatch: Any, direction: str) -> None:
    """``bench_case`` end to end with the CUDA timer swapped for a CPU one: rows, statuses, launches, metrics."""
    monkeypatch.setattr(microbench, "_time", _cpu_timer)
    # failing providers cost a gc.collect() each (~1 s here), so only the forward variant has them
    failing = {"nope": _raise(NotImplementedError), "boom": _raise(RuntimeError)} if direction == "forward" else {}
    spec = dataclasses.replace(fake_spec(), peers={"lib": scale_shift, **failing})
    peak = peaks.DevicePeak("cpu", 100.0, {"fp32": 1.0}, None, "test")
    providers = ["triton", "eager", "lib", *failing]
    rows = microbench.bench_case(spec, "odd", TEST_SHAPES["odd"], torch.float32, direction, providers, "cpu", peak,
                                 seed=1)
    by = {r["provider"]: r for r in rows}
    assert [r["provider"] for r in rows] == providers
    assert {p: r["status"] for p, r in by.items()} == {"triton": "ok", "eager": "ok", "lib": "ok",
                                                       **({"nope": "unsupported", "boom": "error"} if failing else {})}
    assert by["triton"]["launches"] >= 1 and by["eager"]["launches"] == 0
    assert by["triton"]["path"] == "triton-interpret" and by["lib"]["path"] == "peer:lib"
    t = by["triton"]
    assert t["flops"] == (2 if direction == "forward" else 4) * 37 * 13
    assert t["gbps"] == pytest.approx(t["bytes"] / (t["p50_us"] * 1e-6) / 1e9)
    assert t["pct_peak_bw"] == pytest.approx(t["gbps"])  # peak 100 GB/s
    assert t["speedup_vs_eager"] == pytest.approx(by["eager"]["p50_us"] / t["p50_us"])
    assert t["best_peer"] == "lib"
    if failing:
        assert "peer cannot run this" in by["boom"]["message"]
        fallback = dataclasses.replace(spec, triton_fn=scale_shift)  # a "kernel" that launches nothing
        rows = microbench.bench_case(fallback, "odd", TEST_SHAPES["odd"], torch.float32, direction, ["triton"],
                                     "cpu", None)
        assert rows[0]["status"] == "error" and "no Triton kernel was launched" in rows[0]["message"]


def _off_by_one_percent(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return scale_shift(x, w, b) * 1.01  # a peer that computes something else (a mis-shaped bias, a wrong scale)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_bench_case_marks_providers_that_disagree_with_float64_inaccurate(monkeypatch: Any, direction: str) -> None:
    """Every provider's error against the float64 reference is in its row; the check's rule decides. A wrong peer is
    ``inaccurate`` (timing kept) and never the best peer; a Triton kernel with a bug is ``inaccurate`` too."""
    monkeypatch.setattr(microbench, "_time", _cpu_timer)
    bug = {"forward": {"skip_last_tile": True}, "backward": {"bad_grad_tile": True}}[direction]
    spec = dataclasses.replace(fake_spec(**bug), peers={"lib": scale_shift, "wrong": _off_by_one_percent})
    rows = microbench.bench_case(spec, "odd", TEST_SHAPES["odd"], torch.float32, direction,
                                 ["triton", "eager", "lib", "wrong"], "cpu", None, seed=1)
    by = {r["provider"]: r for r in rows}
    assert {p: r["status"] for p, r in by.items()} == {"triton": "inaccurate", "eager": "ok", "lib": "ok",
                                                       "wrong": "inaccurate"}
    assert by["eager"]["max_abs_err"] < 1e-5 and by["lib"]["rel_fro_err"] < 1e-6
    assert by["wrong"]["rel_fro_err"] > 1e-3 and by["wrong"]["p50_us"] > 0 and "inaccurate vs float64" in \
        by["wrong"]["message"]
    assert by["eager"]["best_peer"] == "lib" and by["triton"].get("speedup_vs_eager") is None
    assert "rel_fro <= " in by["lib"]["acc_tolerance"]


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("name", sorted(list_kernels()))
def test_every_registered_kernel_and_peer_through_bench_case(monkeypatch: Any, name: str, direction: str) -> None:
    """What ``--bench`` runs per case on a GPU, on the CPU with only the CUDA-event timer swapped: the real spec's
    Triton path (interpreter), its reference and each vendor peer give ``ok`` rows with rates, or ``unsupported``
    for a CUDA-only peer (FlexAttention) — never an error. ``compile`` is left out: inductor on the CPU takes
    minutes per case here, and ``test_kernel_bench_samples_feed_the_bootstrap`` covers it."""
    spec = get_kernel(name)
    monkeypatch.setattr(microbench, "_time", _cpu_timer)
    shape_name, shape = next(iter(spec.test_shapes.items()))
    providers = ["triton", "eager", *spec.peers]
    peak = peaks.DevicePeak("cpu", 100.0, {"fp32": 1.0}, None, "test")
    rows = microbench.bench_case(spec, shape_name, shape, torch.float32, direction, providers, "cpu", peak)
    by = {r["provider"]: r for r in rows}
    assert list(by) == providers
    assert by["triton"]["status"] == "ok" and by["triton"]["launches"] >= 1, by["triton"]
    assert by["eager"]["status"] == "ok"
    for p in spec.peers:
        assert by[p]["status"] in ("ok", "unsupported"), (p, by[p]["message"])
    for r in rows:
        if r["status"] == "ok":
            assert r["p50_us"] > 0 and r["gbps"] > 0 and r["tflops"] > 0 and r["speedup_vs_eager"] > 0
            assert len(r["samples_us"]) == 3


def test_report_markdown_from_frames() -> None:
    import pandas as pd

    bench = pd.DataFrame([
        {"kernel": "k", "shape": "s", "dtype": "bf16", "direction": "forward", "provider": p, "status": st,
         "p50_us": v, "warm_p50_us": v, "speedup_vs_eager": 150.0 / v if v else None, "gbps": 2000.0,
         "pct_peak_bw": 59.7, "best_peer": "sdpa", "speedup_vs_best_peer": 100.0 / v if v else None,
         "message": "" if st == "ok" else "OutOfMemoryError: boom"}
        for p, st, v in (("triton", "ok", 50.0), ("eager", "ok", 150.0), ("sdpa", "ok", 100.0),
                         ("compile", "oom", None))
    ])
    md = report.kernels_markdown(None, bench)
    assert "### Microbenchmarks" in md and "| k | s | bf16 | forward | 50.0 |" in md and "sdpa 100.0" in md
    assert "| 3.00 | 2.00 | 2000 | 59.7 |" in md and "OutOfMemoryError: boom" in md
    assert report.kernels_markdown(None, None) == ""


# --- FLOP and byte formulas of every registered kernel ----------------------------------------------------------------


def _registered_cases() -> list[Any]:
    import kernels  # noqa: F401

    return [pytest.param(k, s, id=f"{k}-{s}") for k in list_kernels() for s in get_kernel(k).test_shapes]


def _nbytes(obj: Any) -> int:
    return sum(t.numel() * t.element_size() for t in chk._tensors(obj))


@pytest.mark.parametrize("kernel, shape_name", _registered_cases())
def test_registered_flop_and_byte_formulas(kernel: str, shape_name: str) -> None:
    """``spec.flops`` against torch's FLOP counter on the reference (or a peer); ``min_bytes`` = inputs + outputs.

    The counter only has formulas for matmul/conv/attention-like ops and counts 0 for elementwise work, softmax and
    gathers. So where it counts anything we require ``counted <= flops <= 1.25 * counted``: the formula may add the
    elementwise epilogue (softmax, bias, mask: O(N²) next to the O(N²·D) products, a few % for D >= 16) but no more.
    """
    spec = get_kernel(kernel)
    shape = spec.test_shapes[shape_name]
    for dtype in (torch.float32, torch.bfloat16):
        inputs = spec.make_inputs(shape, dtype, "cpu", 0)
        with torch.no_grad():
            out = spec.reference(*inputs.args, **inputs.kwargs)
        want = _nbytes((inputs.args, inputs.kwargs)) + _nbytes(out)
        assert spec.min_bytes(shape, dtype) == want, f"{dtype}: min_bytes != bytes of the inputs and outputs"
        if spec.min_bytes_backward is not None and inputs.grad_args:
            grads = _nbytes([inputs.args[i] for i in inputs.grad_args])
            lower = _nbytes(out) + grads  # must read grad_out and write every input gradient
            assert lower <= spec.min_bytes_backward(shape, dtype) <= lower + want, dtype
    # The reference may compute without the ops the counter knows (e.g. a depthwise conv as shifted multiply-adds);
    # then count a peer, which has the same signature and computes the same thing with the library op.
    counted, used = 0, None
    for provider, fn in [("reference", spec.reference), *spec.peers.items()]:
        inputs = spec.make_inputs(shape, torch.float32, "cpu", 0)
        try:
            counted = _count_flops(fn, inputs)
        except Exception:  # a peer that does not run on the CPU (e.g. a CUDA-only library)
            continue
        if counted:
            used = provider
            break
    if used is None:
        pytest.skip(f"torch's FLOP counter counts nothing for {kernel}'s reference or peers")
    assert counted <= spec.flops(shape) <= 1.25 * counted, (used, spec.flops(shape), counted)


def _count_flops(fn: Any, inputs: KernelInputs) -> int:
    try:
        from bench.flops import count_flops
    except ImportError:  # pragma: no cover - before bench/flops.py existed
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            fn(*inputs.args, **inputs.kwargs)
        return int(fc.get_total_flops())
    return count_flops(fn, *inputs.args, fvcore=False, **inputs.kwargs).flops

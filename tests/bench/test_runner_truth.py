"""bench/runner.py's rows checked value by value (written against its mutation survivors, issue 23).

Tiny models (``tests/bench/fake_models.py`` and a conv net registered here) make each case on purpose; the tests
compare the row's status, error text and columns with what the model, the timer and the memory pass observed
(spied on through the names ``bench.runner`` calls), and call ``measure`` directly (no CLI, no sweep) to stay fast.
"""

from __future__ import annotations

import copy
import gc
import signal
import statistics
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn as nn

from bench import runner
from bench.config import Config
from bench.flops import count_model_flops
from bench.machine_state import MACHINE_COLUMNS
from bench.memory import MemoryStats
from bench.runner import RESULT_COLUMNS, RunOptions, flops_key, measure
from bench.timing import OverConfigBudget
from models.registry import _REGISTRY, register_model

import fake_models

FAST = dict(warmup_s=0.0, min_time_s=0.01, min_samples=3, threads=1, count_flops=False, check_accuracy=False)


@pytest.fixture(autouse=True, scope="module")
def _frozen_heap() -> Iterator[None]:
    """``measure`` ends with ``gc.collect()``, which walks every object the process holds (torch's imports: about 1.7 s
    per call here); frozen objects are skipped, so each row costs its own work only."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
def fakes() -> Iterator[None]:
    fake_models.register_all()
    yield
    fake_models.unregister_all()


class _Net(nn.Module):
    """``[B, 3, 6, 6] -> [B, 4]``: conv(3->2, 3x3, pad 1) -> flatten -> Linear(72, 4). ``action`` makes it fail."""

    def __init__(self, action: str = "") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.lin = nn.Linear(72, 4)
        self.action = action

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.action == "interrupt":
            raise KeyboardInterrupt
        if self.action == "long":  # a traceback over 2000 characters, to see it cut to its last 2000
            raise RuntimeError("long failure\n" + "y" * 1500 + "END")
        return self.lin(self.conv(x).flatten(1))


NET_FLOPS = 2 * (3 * 9) * 2 * 36 + 2 * 72 * 4  # conv (MACs x 2) + linear, per sample
NET_PARAMS = 3 * 9 * 2 + 2 + 72 * 4 + 4


@pytest.fixture
def nets() -> Iterator[None]:
    for name, action in (("rt_net", ""), ("rt_interrupt", "interrupt"), ("rt_long", "long")):
        def build(_action: str = action, **_: object) -> nn.Module:
            return _Net(_action)
        register_model(family="fake", input_shape=(3, 6, 6), num_classes=4, name=name)(build)
    yield
    for name in ("rt_net", "rt_interrupt", "rt_long"):
        _REGISTRY.pop(name, None)


def _cfg(model: str, **kw: Any) -> Config:
    return Config(**{"model": model, "backend": "eager", "mode": "infer", "device": "cpu", "dtype": "fp32",
                     "batch_size": 2, **kw})


def _spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any], Any]]:
    """Wrap ``bench.runner.<name>``: every call's arguments and result, in order."""
    real, calls = getattr(runner, name), []

    def wrapper(*a: Any, **kw: Any) -> Any:
        out = real(*a, **kw)
        calls.append((a, kw, out))
        return out

    monkeypatch.setattr(runner, name, wrapper)
    return calls


# --- failing configs ------------------------------------------------------------------------------------------------


def test_a_failing_config_is_a_row_with_its_status_and_first_error_line(fakes: None) -> None:
    row, samples = measure(_cfg("fake_raise"), RunOptions(**FAST))
    assert row["status"] == "error" and samples == []
    assert row["error"] == "ValueError: injected failure"
    assert "second line must not reach the CSV" in row["error_traceback"]  # the full traceback, kept apart
    assert "latency_ms_p50" not in row and "compile_ms" not in row  # failures are empty, never zeros

    row, samples = measure(_cfg("fake_oom"), RunOptions(**FAST))
    assert row["status"] == "oom" and samples == []
    assert row["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB (injected)"
    assert "error_traceback" not in row  # only `error` rows carry one
    assert row["threads"] == 1


def test_error_traceback_keeps_its_last_2000_characters(nets: None) -> None:
    row, _ = measure(_cfg("rt_long"), RunOptions(**FAST))
    assert row["status"] == "error" and row["error"] == "RuntimeError: long failure"
    tb = row["error_traceback"]
    assert len(tb) == 2000 and tb.endswith("y" * 1500 + "END\n")
    # the frames joined as Python prints them: the raising line, then the exception
    assert tb.endswith('"y" * 1500 + "END")\nRuntimeError: long failure\n' + "y" * 1500 + "END\n")


def test_timeout_row_and_the_alarm_is_restored(fakes: None) -> None:
    before = signal.getsignal(signal.SIGALRM)
    row, _ = measure(_cfg("fake_hang"), RunOptions(**{**FAST, "timeout_s": 0.3}))
    assert row["status"] == "timeout"
    assert row["error"] == "ConfigTimeout: exceeded the per-config time limit of 0.3 s"
    assert signal.getsignal(signal.SIGALRM) is before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_over_the_config_budget_keeps_the_first_call_time(monkeypatch: pytest.MonkeyPatch, nets: None) -> None:
    def over(*_: Any, **__: Any) -> None:
        raise OverConfigBudget(4321.0, 2.0)

    monkeypatch.setattr(runner, "time_fn", over)
    row, _ = measure(_cfg("rt_net"), RunOptions(**FAST))
    assert row["status"] == "timeout" and row["compile_ms"] == 4321.0
    assert row["error"] == "OverConfigBudget: first call took 4.3 s, over --max-config-s 2"


def test_keyboard_interrupt_is_not_a_row_and_threads_are_restored(nets: None) -> None:
    old = torch.get_num_threads()
    with pytest.raises(KeyboardInterrupt):
        measure(_cfg("rt_interrupt"), RunOptions(**{**FAST, "threads": old + 1}))
    assert torch.get_num_threads() == old


def test_classify_exception_and_first_line() -> None:
    ce = runner.classify_exception
    assert ce(runner.ConfigTimeout("x")) == "timeout" and ce(OverConfigBudget(1.0, 1.0)) == "timeout"
    assert ce(torch.cuda.OutOfMemoryError("x")) == "oom"
    assert ce(RuntimeError("DefaultCPUAllocator: Out Of Memory")) == "oom"  # any case
    assert ce(runner.Unsupported("x")) == "unsupported" and ce(NotImplementedError("x")) == "unsupported"
    assert ce(ValueError("x")) == "error" and ce(RuntimeError("memory")) == "error"

    fl = runner._first_line
    assert fl(ValueError("  \n  first line \nsecond\n ")) == "ValueError: first line "  # the message stripped
    assert fl(ValueError("")) == "ValueError: "
    assert fl(ValueError("a" * 400)) == "ValueError: " + "a" * 300


# --- a measured row -------------------------------------------------------------------------------------------------


def test_an_ok_row_reports_what_the_timer_memory_pass_and_counter_saw(monkeypatch: pytest.MonkeyPatch,
                                                                      nets: None) -> None:
    timed, mems, snaps = (_spy(monkeypatch, n) for n in ("time_fn", "measure_peak_memory", "snapshot"))
    rss = iter([100 * 2**20, 103 * 2**20])
    monkeypatch.setattr(runner, "rss_bytes", lambda: next(rss))
    old = torch.get_num_threads()
    opts = RunOptions(warmup_s=0.001, min_time_s=0.011, min_samples=4, threads=1, check_accuracy=False,
                      max_config_s=50.0)
    row, samples = measure(_cfg("rt_net", batch_size=3), opts)
    assert torch.get_num_threads() == old
    assert row["status"] == "ok" and row["error"] == ""

    (args, kw, t), = timed
    assert args[1] == torch.device("cpu")
    assert kw == dict(threads=1, warmup_s=0.001, min_time_s=0.011, min_samples=4, max_s=50.0, regime="back-to-back",
                      after_first=kw["after_first"])
    assert samples == t.samples_ms and len(samples) >= 4
    s = sorted(samples)
    assert row["n_samples"] == len(s) and isinstance(row["n_samples"], int)
    assert row["latency_ms_p50"] == statistics.median(s)
    assert row["latency_ms_p20"] == pytest.approx(statistics.quantiles(s, n=5, method="inclusive")[0], rel=1e-12, abs=0)
    assert row["latency_ms_p80"] == pytest.approx(statistics.quantiles(s, n=5, method="inclusive")[3], rel=1e-12, abs=0)
    assert row["latency_ms_mean"] == pytest.approx(statistics.fmean(s), rel=1e-12, abs=0)
    assert row["latency_ms_std"] == pytest.approx(statistics.stdev(s), rel=1e-12, abs=0)
    assert (row["inner_loops"], row["noisy"], row["compile_ms"], row["warmup_ms"]) == (
        t.inner_loops, t.noisy, t.first_call_ms, t.warmup_ms)
    assert (row["timed_calls"], row["timed_ms"], row["timer_method"], row["reduced_samples"]) == (
        t.calls, t.total_ms, t.method, False)
    assert row["timer_method"].startswith("back-to-back")
    assert row["throughput_per_s"] == pytest.approx(3 / (row["timed_ms"] / row["timed_calls"] / 1e3), rel=1e-12, abs=0)

    (margs, _, mem), = mems
    assert margs[1] == torch.device("cpu") and mem.peak_mb > 0
    assert (row["peak_mem_mb"], row["reserved_mem_mb"], row["mem_method"]) == (mem.peak_mb, mem.reserved_mb,
                                                                                mem.method)
    assert row["rss_growth_mb"] == 3.0

    assert row["gflops"] == pytest.approx(NET_FLOPS / 1e9, rel=1e-12, abs=0)  # per sample
    assert row["gmacs"] == pytest.approx(NET_FLOPS / 2 / 1e9, rel=1e-12, abs=0)
    assert row["flops_device"] == "cpu" and row["flops_counter_warnings"] == ""
    want_tflops = row["gflops"] * 3 / (row["latency_ms_p50"] / 1e3) / 1e3
    assert row["tflops_per_s"] == pytest.approx(want_tflops, rel=1e-12, abs=0)
    assert row["params"] == NET_PARAMS and row["precision_note"] == "fp32 (TF32 off)"
    assert row["compile_cache"] == "" and row["threads"] == 1
    (sargs, _, state), = snaps
    assert sargs == ("cpu",) and state and all(row[k] == v for k, v in state.items())  # the machine as timed
    assert set(state) <= set(MACHINE_COLUMNS)
    assert set(row) <= set(RESULT_COLUMNS)  # every key has a CSV column
    for absent in ("dynamo_graphs", "graph_breaks", "recompiles", "cudnn_benchmark", "kernel_path", "acc_status"):
        assert absent not in row


def test_rss_growth_when_the_second_read_fails(monkeypatch: pytest.MonkeyPatch, nets: None) -> None:
    rss = iter([100 * 2**20, None])
    monkeypatch.setattr(runner, "rss_bytes", lambda: next(rss))
    row, _ = measure(_cfg("rt_net"), RunOptions(**FAST))
    assert row["status"] == "ok" and row["rss_growth_mb"] == 0.0
    monkeypatch.setattr(runner, "rss_bytes", lambda: None)
    row, _ = measure(_cfg("rt_net"), RunOptions(**FAST))
    assert row["status"] == "ok" and "rss_growth_mb" not in row


def test_flops_cache_is_filled_then_used(nets: None) -> None:
    cfg, cache = _cfg("rt_net"), {}
    row, _ = measure(cfg, RunOptions(**{**FAST, "count_flops": True}), flops_cache=cache)
    assert cache == {flops_key(cfg): {k: row[k] for k in ("gflops", "gmacs", "flops_counter_warnings",
                                                          "flops_device")}}
    cache[flops_key(cfg)] = {"gflops": 5.0, "gmacs": 2.5, "flops_counter_warnings": "w", "flops_device": "cpu"}
    row, _ = measure(cfg, RunOptions(**{**FAST, "count_flops": True}), flops_cache=cache)
    assert (row["gflops"], row["gmacs"], row["flops_counter_warnings"]) == (5.0, 2.5, "w")
    assert row["tflops_per_s"] == pytest.approx(5.0 * 2 / (row["latency_ms_p50"] / 1e3) / 1e3, rel=1e-12, abs=0)
    row, _ = measure(cfg, RunOptions(**FAST))  # --no-flops: no counts, no rate
    assert "gflops" not in row and "tflops_per_s" not in row


def test_accuracy_probe_and_profile_results_reach_the_row(monkeypatch: pytest.MonkeyPatch, nets: None) -> None:
    seen: list[str] = []
    prepared: list[Config] = []
    monkeypatch.setattr(runner.accuracy, "prepare", lambda cfg, facts: (seen.append("prepare"), prepared.append(cfg)))
    verdicts = iter([{"acc_status": "inaccurate", "acc_note": "rel 0.5 > 0.01"}, ValueError("boom\nmore"),
                     runner.ConfigTimeout("late")])

    def check(cfg: Config, facts: dict[str, Any]) -> dict[str, Any]:
        seen.append("check")
        assert cfg == _cfg("rt_net") and isinstance(facts["_model"], nn.Module)  # the row's config and built model
        v = next(verdicts)
        if isinstance(v, BaseException):
            raise v
        return v

    monkeypatch.setattr(runner.accuracy, "check", check)
    probes = _spy(monkeypatch, "probe_support")
    acc = {**FAST, "check_accuracy": True, "allow_slow_fallback": True}
    row, _ = measure(_cfg("rt_net"), RunOptions(**acc))
    assert probes[0][0][1] is True  # allow_slow_fallback reaches the probe
    assert (row["status"], row["error"]) == ("inaccurate", "inaccurate: rel 0.5 > 0.01")
    assert row["latency_ms_p50"] > 0  # timed, but not a number to quote
    row, _ = measure(_cfg("rt_net"), RunOptions(**acc))
    assert (row["status"], row["acc_status"], row["acc_note"]) == ("ok", "error", "ValueError: boom")
    assert row["error"] == "accuracy check failed: ValueError: boom"
    row, _ = measure(_cfg("rt_net"), RunOptions(**acc))
    assert (row["status"], row["error"]) == ("timeout", "ConfigTimeout: late")
    assert seen == ["prepare", "check"] * 3
    assert prepared == [_cfg("rt_net")] * 3  # the row's config (a train row's weights are kept by its mode)
    measure(_cfg("rt_net"), RunOptions(**FAST))
    assert len(seen) == 6 and probes[-1][0][1] is False

    monkeypatch.setattr(runner, "probe_support", lambda cfg, allow: "probe says hi")
    import bench.profile

    traces = iter(["/tmp/t.json", RuntimeError("no trace")])

    def profile_config(step: Any, cfg: Config, d: str) -> str:
        assert step().shape == (cfg.batch_size, 4)  # the config's own step
        v = next(traces)
        if isinstance(v, BaseException):
            raise v
        return f"{d}:{cfg.model}:{v}"

    monkeypatch.setattr(bench.profile, "profile_config", profile_config)
    row, _ = measure(_cfg("rt_net"), RunOptions(**{**FAST, "profile_dir": "pd"}))
    assert row["precision_note"] == "fp32 (TF32 off); probe says hi"
    assert (row["status"], row["error"], row["profile_trace"]) == ("ok", "", "pd:rt_net:/tmp/t.json")
    row, _ = measure(_cfg("rt_net"), RunOptions(**{**FAST, "profile_dir": "pd"}))
    assert (row["status"], row["profile_error"]) == ("ok", "RuntimeError: no trace")
    assert row["error"] == "profile failed: RuntimeError: no trace" and "profile_trace" not in row


# --- compiled configs (torch.compile with Dynamo's eager backend: the graphs and breaks, without Inductor's cost) ---


class _Eagerless(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 4)

    @torch._dynamo.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def test_compiled_rows_report_dynamo_graphs_breaks_and_a_fallback(monkeypatch: pytest.MonkeyPatch,
                                                                  fakes: None) -> None:
    modes: list[Any] = []
    real = torch.compile

    def compile_eager(model: nn.Module, mode: Any = None) -> Any:
        modes.append(mode)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", compile_eager)
    torch._dynamo.utils.counters["stats"]["unique_graphs"] += 5  # earlier configs' graphs must not count
    torch._dynamo.utils.counters["graph_break"]["earlier"] += 3
    row, _ = measure(_cfg("fake_graph_break", backend="compile"), RunOptions(**FAST))
    assert row["status"] == "ok", row.get("error")
    assert (row["dynamo_graphs"], row["graph_breaks"], row["recompiles"]) == (2, 1, 0)
    assert row["compile_cache"] == "cold: fresh Inductor and Triton cache dirs"
    row, _ = measure(_cfg("fake_ok", backend="compile", compile_mode="max-autotune"), RunOptions(**FAST))
    assert (row["status"], row["dynamo_graphs"], row["graph_breaks"]) == ("ok", 1, 0)
    assert modes == [None, "max-autotune"]  # "default" is torch.compile's None

    register_model(family="fake", input_shape=(2, 2, 2), num_classes=4, name="rt_eagerless")(lambda **_: _Eagerless())
    try:
        row, _ = measure(_cfg("rt_eagerless", backend="compile"), RunOptions(**FAST))
    finally:
        _REGISTRY.pop("rt_eagerless", None)
    assert row["status"] == "error" and row["dynamo_graphs"] == 0
    assert row["error"] == ("CompileFellBack: torch.compile compiled no graph for this config (dynamo ran the model "
                            "eagerly); the timing would be eager's")


def test_dynamo_counters_are_read_as_dynamo_keeps_them() -> None:
    c = torch._dynamo.utils.counters
    g0, b0 = runner._compiled_graphs(), runner._graph_breaks()
    c["stats"]["unique_graphs"] += 2
    c["graph_break"]["rt reason a"] += 3
    c["graph_break"]["rt reason b"] += 1
    try:
        assert runner._compiled_graphs() - g0 == 2 and runner._graph_breaks() - b0 == 4
        assert isinstance(runner._compiled_graphs(), int) and isinstance(runner._graph_breaks(), int)
    finally:
        c["stats"]["unique_graphs"] -= 2
        del c["graph_break"]["rt reason a"], c["graph_break"]["rt reason b"]


def test_inductor_cache_per_backend_and_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    ctx, note = runner._inductor_cache(_cfg("rt_net"), RunOptions())
    assert note == "" and isinstance(ctx, type(runner.contextlib.nullcontext()))
    d = tmp_path / "shared"
    d.mkdir()
    monkeypatch.setattr("torch._inductor.runtime.cache_dir_utils.cache_dir", lambda: str(d))
    for backend in ("compile", "triton"):
        _, note = runner._inductor_cache(_cfg("rt_net", backend=backend), RunOptions(compile_cache="warm"))
        assert note == f"warm: shared caches ({d}, empty before)"
    (d / "x").write_text("")
    _, note = runner._inductor_cache(_cfg("rt_net", backend="compile"), RunOptions(compile_cache="warm"))
    assert note == f"warm: shared caches ({d}, non-empty before)"
    _, note = runner._inductor_cache(_cfg("rt_net", backend="compile"), RunOptions(compile_cache="cold"))
    assert note == "cold: fresh Inductor and Triton cache dirs"


# --- the capability probe -------------------------------------------------------------------------------------------


def _unsupported(cfg: Config, **kw: Any) -> str:
    with pytest.raises(runner.Unsupported) as e:
        runner.probe_support(cfg, **kw)
    return str(e.value)


def test_probe_reasons_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _unsupported(_cfg("resnet18", device="cuda")) == "no CUDA device"
    assert _unsupported(_cfg("resnet18", dtype="tf32")) == "tf32 is a CUDA matmul mode; the CPU has none"
    assert _unsupported(_cfg("resnet18", timer="flushed")) == (
        "the flushed timer needs CUDA (an L2 flush / a CUDA graph); the CPU has back-to-back")
    assert runner.probe_support(_cfg("resnet18")) == ""
    import kernels

    monkeypatch.setattr(kernels, "HAS_TRITON", False)
    assert _unsupported(_cfg("resnet18", backend="triton")) == "triton is not installed"
    assert _unsupported(_cfg("resnet18", backend="compile-triton")) == "triton is not installed"
    monkeypatch.setattr(kernels, "HAS_TRITON", True)
    assert runner.probe_support(_cfg("resnet18", backend="triton")) == ""

    row = runner.unsupported_row(_cfg("resnet18", dtype="tf32"), RunOptions())
    assert row == {**_cfg("resnet18", dtype="tf32").as_dict(), "status": "unsupported",
                   "error": "Unsupported: tf32 is a CUDA matmul mode; the CPU has none",
                   "threads": torch.get_num_threads()}
    assert runner.unsupported_row(_cfg("resnet18"), RunOptions()) is None
    probes = _spy(monkeypatch, "probe_support")  # --allow-slow-fallback reaches the probe
    runner.unsupported_row(_cfg("resnet18"), RunOptions(allow_slow_fallback=True))
    assert probes[-1][0] == (_cfg("resnet18"), True)


def test_a_slow_fallback_is_refused_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU half-precision config whose probe finds a fallback path (an AVX2 CPU's bf16 convolution): unsupported by
    default, measured with a note when the caller allows it. The probe is patched so any CPU shows both."""
    import bench.cpu_isa

    monkeypatch.setattr(bench.cpu_isa, "fallback_reason", lambda *a: ("bf16 conv 40x slower than fp32", "probe note"))
    cfg = _cfg("resnet18", dtype="bf16")
    with pytest.raises(runner.Unsupported, match=r"^bf16 conv 40x slower than fp32$"):
        runner.probe_support(cfg)
    assert runner.probe_support(cfg, True) == "probe note (fallback path, measured on request)"
    monkeypatch.setattr(bench.cpu_isa, "fallback_reason", lambda *a: ("", "native"))
    assert runner.probe_support(cfg) == "native"


def test_probe_reasons_on_a_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pretend device (capability and bf16 support patched): the probe's CUDA branches without a GPU."""
    cap = [(7, 5)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cap[0] >= (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cap[0])
    cuda = dict(device="cuda")
    for dt in ("bf16", "bf16-pure"):
        assert _unsupported(_cfg("resnet18", dtype=dt, **cuda)) == "bf16 needs compute capability >= 8.0"
    assert _unsupported(_cfg("resnet18", dtype="tf32", **cuda)) == "tf32 needs compute capability >= 8.0"
    for dt in ("fp32", "fp16", "fp16-pure"):
        assert runner.probe_support(_cfg("resnet18", dtype=dt, **cuda)) == ""
    cap[0] = (8, 0)
    for dt in ("bf16", "tf32"):
        assert runner.probe_support(_cfg("resnet18", dtype=dt, **cuda)) == ""
    for timer in ("flushed", "cudagraph"):
        assert runner.probe_support(_cfg("resnet18", timer=timer, **cuda)) == ""
    for mode in ("reduce-overhead", "max-autotune"):
        assert _unsupported(_cfg("resnet18", backend="compile", compile_mode=mode, timer="cudagraph", **cuda)) == (
            f"compile mode {mode} already runs the model in CUDA graphs (time it back-to-back)")
    for mode in ("default", "max-autotune-no-cudagraphs"):
        assert runner.probe_support(_cfg("resnet18", backend="compile", compile_mode=mode, timer="cudagraph",
                                         **cuda)) == ""
    assert _unsupported(_cfg("yolov5s", timer="cudagraph", **cuda)) == (
        "yolov5s's step cannot be captured in a CUDA graph (data-dependent shapes or host-side randomness: detection "
        "NMS and proposal sampling, masks, augmentations)")
    assert runner.probe_support(_cfg("yolov5s", timer="flushed", **cuda)) == ""
    assert _unsupported(_cfg("resnet18", timer="cudagraph", mode="train", **cuda)) == (
        "the cudagraph timer captures inference steps only (a train step's optimizer and gradient buffers are not "
        "made capture-safe here; use compile mode reduce-overhead)")


# --- the step itself ------------------------------------------------------------------------------------------------


def test_infer_step_is_eval_and_without_autograd(nets: None) -> None:
    torch.manual_seed(5)
    step, facts = runner.build_step(_cfg("rt_net", batch_size=3))
    assert torch.initial_seed() == 0  # every config continues from seed 0 (dropout, augmentations)
    model = facts["_model"]
    assert not model.training and facts["_run_model"] is model
    out = step()
    assert out.shape == (3, 4) and not out.requires_grad
    x = facts["_batch"].inputs[0]
    assert x.shape == (3, 3, 6, 6) and x.dtype == torch.float32
    assert torch.equal(out, model(x).detach())
    assert torch.equal(facts["_eager_step"](model), model(x))
    assert facts["params"] == NET_PARAMS and facts["precision_note"] == "fp32 (TF32 off)"
    assert set(facts) == {"params", "precision_note", "_model", "_batch", "_spec", "_eager_step", "_run_model"}
    assert facts["_spec"].name == "rt_net"


def test_train_step_is_sgd_with_momentum_on_the_loss(nets: None) -> None:
    step, facts = runner.build_step(_cfg("rt_net", mode="train"))
    model, batch = facts["_model"], facts["_batch"]
    assert model.training
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=1e-4, momentum=0.9)
    for _ in range(3):  # momentum shows from the second step on; stale gradients too
        loss = step()
        opt.zero_grad()
        ref_loss = nn.functional.cross_entropy(ref(*batch.inputs), batch.target)
        ref_loss.backward()
        opt.step()
        assert not loss.requires_grad and loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9)
    assert torch.equal(facts["_eager_step"](model), nn.functional.cross_entropy(model(*batch.inputs), batch.target))


def test_channels_last_input_size_and_pure_precision(nets: None) -> None:
    _, facts = runner.build_step(_cfg("rt_net", channels_last=True))
    assert facts["_model"].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert facts["_batch"].inputs[0].is_contiguous(memory_format=torch.channels_last)
    assert not facts["_batch"].inputs[0].is_contiguous()

    _, facts = runner.build_step(_cfg("resnet18", input_size=40, batch_size=1))
    assert facts["_batch"].inputs[0].shape == (1, 3, 40, 40)

    step, facts = runner.build_step(_cfg("rt_net", dtype="bf16-pure"))
    assert {p.dtype for p in facts["_model"].parameters()} == {torch.bfloat16}
    assert facts["_batch"].inputs[0].dtype == torch.bfloat16 and facts["_batch"].target.dtype == torch.int64
    assert step().dtype == torch.bfloat16
    _, facts = runner.build_step(_cfg("rt_net", dtype="bf16"))  # autocast: the weights stay fp32
    assert {p.dtype for p in facts["_model"].parameters()} == {torch.float32}
    assert facts["_batch"].inputs[0].dtype == torch.float32


def test_precision_notes_name_what_runs(nets: None) -> None:
    notes = {dt: runner.build_step(_cfg("rt_net", dtype=dt))[1]["precision_note"]
             for dt in ("fp32", "tf32", "fp16", "bf16", "fp16-pure", "bf16-pure")}
    assert notes == {"fp32": "fp32 (TF32 off)", "tf32": "fp32 weights, TF32 matmul/conv", "fp16": "autocast fp16",
                     "bf16": "autocast bf16", "fp16-pure": "pure fp16: model and inputs cast",
                     "bf16-pure": "pure bf16: model and inputs cast"}


def test_build_is_seeded_apart_from_the_global_generator(nets: None) -> None:
    spec = runner.models.get_spec("rt_net") if hasattr(runner, "models") else __import__("models").get_spec("rt_net")
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b = runner._build(spec), runner._build(spec)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is untouched
    torch.manual_seed(0)
    c = _Net()
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q) and torch.equal(p, r)


def test_build_forks_only_the_cpu_generator(monkeypatch: pytest.MonkeyPatch, nets: None) -> None:
    """``fork_rng(devices=[])``: with the default (every visible CUDA device) a build on a GPU host would save and
    restore each device's generator, creating a CUDA context on every GPU, in a process that may use one or none."""
    calls: list[dict[str, Any]] = []
    real = torch.random.fork_rng

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append({"args": args, **kwargs})
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.random, "fork_rng", spy)
    runner._build(__import__("models").get_spec("rt_net"))
    assert calls == [{"args": (), "devices": []}]


def test_kernel_backend_facts_and_a_model_without_the_hot_path(nets: None) -> None:
    pytest.importorskip("triton")
    with pytest.raises(runner.Unsupported, match=r"^rt_net has no hot path for kernels=all$"):
        runner.build_step(_cfg("rt_net", backend="triton"))
    with pytest.raises(runner.Unsupported, match=r"^rt_net has no hot path for kernels=depthwise_conv$"):
        runner.build_step(_cfg("rt_net", backend="triton", kernels="depthwise_conv"))
    row, _ = measure(_cfg("rt_net", backend="triton"), RunOptions(**FAST))
    assert row["status"] == "unsupported" and row["kernels"] == ""


# --- FLOPs ----------------------------------------------------------------------------------------------------------


def test_flops_of_a_config_counted_on_its_own_model_or_a_cpu_copy(monkeypatch: pytest.MonkeyPatch,
                                                                  nets: None) -> None:
    x = torch.randn(2, 3, 6, 6)
    fwd = count_model_flops(_Net(), (x,), fvcore=False).flops / 2
    for mode, want in (("infer", fwd), ("train", 3 * fwd - 2 * 3 * 9 * 2 * 36)):  # no input gradient for the image
        own_cfg, pure_cfg = _cfg("rt_net", mode=mode), _cfg("rt_net", mode=mode, dtype="bf16-pure")
        (_, facts), (_, pure_facts) = runner.build_step(own_cfg), runner.build_step(pure_cfg)
        builds = _spy(monkeypatch, "_build")
        own = runner.count_config_flops(own_cfg, facts)
        assert builds == []  # a CPU fp32 eager config counts its own model
        copy_ = runner.count_config_flops(pure_cfg, pure_facts)  # a cast model is not counted: a CPU fp32 copy
        assert len(builds) == 1 and builds[0][2].training == (mode == "train")
        assert own == copy_ == runner.count_config_flops(own_cfg)  # without facts: a CPU copy too
        assert own["gflops"] == pytest.approx(want / 1e9, rel=1e-12, abs=0) and own["flops_device"] == "cpu"
        assert own["gmacs"] == pytest.approx(fwd / 2 / 1e9, rel=1e-12, abs=0)
        assert own["flops_counter_warnings"] == ("gmacs: fvcore, forward pass only" if mode == "train" else "")
        monkeypatch.undo()

    from bench.flops import FlopCount

    monkeypatch.setattr(runner, "count_step_flops", lambda *a, **k: FlopCount(10, None, ["op x"], ["note"]))
    got = runner.count_config_flops(_cfg("rt_net", batch_size=5))
    assert got == {"gflops": 2 / 1e9, "gmacs": None, "flops_counter_warnings": "op x; note", "flops_device": "cpu"}


def test_memory_stats_type_is_what_the_row_reads() -> None:
    m = MemoryStats(1.0, None, "x")
    assert (m.peak_mb, m.reserved_mb, m.method) == (1.0, None, "x")


def test_cuda_rows_record_the_cudnn_flags_they_ran_with(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA config stopped right after the probe: the cuDNN flags it would run with are in its row (no GPU needed)."""
    def stop(cfg: Config, allow: bool) -> str:
        raise runner.Unsupported("stopped after the cuDNN flags")

    monkeypatch.setattr(runner, "probe_support", stop)
    old = torch.backends.cudnn.benchmark
    for bench_flag in (False, True):
        row, _ = measure(_cfg("resnet18", device="cuda"), RunOptions(**{**FAST, "cudnn_benchmark": bench_flag}))
        assert row["status"] == "unsupported" and row["cudnn_benchmark"] is bench_flag
        assert row["cudnn_deterministic"] is torch.backends.cudnn.deterministic
        assert torch.backends.cudnn.benchmark is old


def test_build_step_places_model_and_inputs_on_the_config_device(nets: None) -> None:
    """The meta device stands in for a GPU: a model or input left on the CPU shows."""
    for dtype, want in (("fp32", torch.float32), ("bf16-pure", torch.bfloat16)):
        _, facts = runner.build_step(_cfg("rt_net", device="meta", dtype=dtype))
        assert {(p.device.type, p.dtype) for p in facts["_model"].parameters()} == {("meta", want)}
        x = facts["_batch"].inputs[0]
        assert (x.device.type, x.dtype) == ("meta", want) and facts["_batch"].target.device.type == "meta"


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, label: str) -> torch.Tensor:
        assert label == "tag"
        return self.conv(x).mean((2, 3)) * scale


def test_channels_last_converts_only_image_inputs() -> None:
    """Only 4-D tensors take the channels_last format; other inputs (a 2-D tensor, a string) pass unchanged."""
    from models.registry import Batch

    def batch_fn(b: int, shape: Any, g: torch.Generator) -> Batch:
        return Batch((torch.randn(b, *shape, generator=g), torch.ones(b, 2), "tag"), torch.zeros(b, dtype=torch.long))

    register_model(family="fake", input_shape=(3, 4, 4), num_classes=2, batch_fn=batch_fn, name="rt_two")(
        lambda **_: _TwoInputs())
    try:
        step, facts = runner.build_step(_cfg("rt_two", channels_last=True))
        x, scale, label = facts["_batch"].inputs
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        assert scale.is_contiguous() and scale.shape == (2, 2) and label == "tag"
        assert step().shape == (2, 2)
    finally:
        _REGISTRY.pop("rt_two", None)


@pytest.fixture
def depthwise_net() -> Iterator[str]:
    def rt_depthwise(**_: object) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    register_model(family="fake", input_shape=(3, 8, 8), num_classes=4, hot_paths=("depthwise_conv",))(rt_depthwise)
    yield "rt_depthwise"
    _REGISTRY.pop("rt_depthwise", None)


def test_kernel_backend_switches_the_named_kernels_and_keeps_an_unpatched_copy(depthwise_net: str) -> None:
    pytest.importorskip("triton")
    from kernels import dispatch_path

    for kernels in ("", "all", "depthwise_conv"):
        _, facts = runner.build_step(_cfg(depthwise_net, backend="triton", kernels=kernels))
        assert facts["kernel_path"] == dispatch_path(torch.device("cpu"))
        assert facts["kernels_switched"]["depthwise_conv"] == 1
        if kernels == "depthwise_conv":
            assert set(facts["kernels_switched"]) == {"depthwise_conv"}
        else:
            assert len(facts["kernels_switched"]) > 1  # every kernel was tried
        patched, unpatched = facts["_model"], facts["_unpatched"]
        assert type(patched[1]) is not nn.Conv2d  # the depthwise layer is our kernel's module
        assert type(unpatched[1]) is nn.Conv2d and unpatched[1] is not patched[1]  # the copy is not patched
        assert torch.equal(unpatched[1].weight, patched[1].weight)
    with pytest.raises(runner.Unsupported, match=r"^rt_depthwise has no hot path for kernels=window_attention$"):
        runner.build_step(_cfg(depthwise_net, backend="triton", kernels="window_attention"))


def test_the_unpatched_copy_is_dropped_before_timing(monkeypatch: pytest.MonkeyPatch, depthwise_net: str) -> None:
    """Without FLOP counting (which takes the copy), the copy must still not be held while the step is timed."""
    pytest.importorskip("triton")
    held: list[bool] = []

    def prepare(cfg: Config, facts: dict[str, Any]) -> None:
        held.append("_unpatched" in facts)
        raise RuntimeError("stop before timing")

    monkeypatch.setattr(runner.accuracy, "prepare", prepare)
    row, _ = measure(_cfg(depthwise_net, backend="triton"), RunOptions(**{**FAST, "check_accuracy": True}))
    assert row["error"] == "RuntimeError: stop before timing" and held == [False]


def test_flops_of_a_cpu_copy_follow_the_config_input_size(depthwise_net: str) -> None:
    """The copy path builds its own batch: at ``input_size`` 16 the convolutions cost 4x their 8x8 count."""
    net = _REGISTRY[depthwise_net].builder()
    counts = {}
    for size in (0, 16):
        got = runner.count_config_flops(_cfg(depthwise_net, input_size=size))  # no facts: a CPU copy
        side = size or 8
        want = count_model_flops(net, (torch.randn(2, 3, side, side),), fvcore=False).flops / 2
        assert got["gflops"] == pytest.approx(want / 1e9, rel=1e-12, abs=0)
        counts[size] = got["gflops"]
    assert counts[16] > 3.9 * counts[0]


def test_an_infer_count_is_the_forward_not_the_loss(nets: None) -> None:
    """A loss that costs more than the forward (here: the model run twice): infer rows count the forward only."""
    def loss_twice(m: nn.Module, b: Any) -> torch.Tensor:
        return nn.functional.cross_entropy(m(*b.inputs), b.target) + m(*b.inputs).sum()

    register_model(family="fake", input_shape=(3, 6, 6), num_classes=4, loss_fn=loss_twice, name="rt_loss2")(
        lambda **_: _Net())
    try:
        infer = runner.count_config_flops(_cfg("rt_loss2"))  # no facts: the CPU copy's step
        own = runner.count_config_flops(_cfg("rt_loss2"), runner.build_step(_cfg("rt_loss2"))[1])
    finally:
        _REGISTRY.pop("rt_loss2", None)
    assert infer["gflops"] == own["gflops"] == pytest.approx(NET_FLOPS / 1e9, rel=1e-12, abs=0)


def test_both_compiled_backends_compile_and_only_they(monkeypatch: pytest.MonkeyPatch, depthwise_net: str) -> None:
    """``compile`` and ``compile-triton`` (kernels switched in, then torch.compile) wrap the model and record Dynamo's
    counters before the first call; ``eager`` and ``triton`` run the module as built."""
    pytest.importorskip("triton")
    compiled: list[tuple[nn.Module, Any]] = []

    def fake_compile(model: nn.Module, mode: Any = None) -> Any:
        compiled.append((model, mode))
        return lambda *a, **k: model(*a, **k)

    monkeypatch.setattr(torch, "compile", fake_compile)
    for backend, is_compiled in (("compile", True), ("compile-triton", True), ("eager", False), ("triton", False)):
        n = len(compiled)
        _, facts = runner.build_step(_cfg(depthwise_net, backend=backend))
        assert len(compiled) - n == int(is_compiled), backend
        assert ("_graphs_before" in facts, "_breaks_before" in facts) == (is_compiled, is_compiled), backend
        assert (facts["_run_model"] is not facts["_model"]) == is_compiled, backend
        if is_compiled:
            assert compiled[-1][0] is facts["_model"]


def test_a_train_step_frees_the_gradients_before_its_forward(nets: None) -> None:
    """``zero_grad(set_to_none=True)`` (PyTorch's default, what training loops run): every step's backward allocates
    its gradients anew, so the step's time and memory include them; zeroing in place would keep them from the last
    step and hide that allocation."""
    seen: list[list[bool]] = []

    def loss_seeing_grads(m: nn.Module, b: Any) -> torch.Tensor:
        seen.append([p.grad is None for p in m.parameters()])
        return nn.functional.cross_entropy(m(*b.inputs), b.target)

    register_model(family="fake", input_shape=(3, 6, 6), num_classes=4, loss_fn=loss_seeing_grads, name="rt_grads")(
        lambda **_: _Net())
    try:
        step, facts = runner.build_step(_cfg("rt_grads", mode="train"))
        step(), step(), step()
    finally:
        _REGISTRY.pop("rt_grads", None)
    n = len(list(facts["_model"].parameters()))
    assert seen == [[True] * n] * 3
    assert all(p.grad is not None for p in facts["_model"].parameters())  # the last backward's, left for inspection

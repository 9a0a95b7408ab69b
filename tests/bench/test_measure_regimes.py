"""Issue 19 on the CPU: compile modes and Dynamo statistics per row, cold vs warm compile time, FLOPs counted away
from the benchmark device, cuDNN flags, the CUDA memory pass without cached blocks, the new config axes."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench import runner
from bench.cli import main
from bench.config import Config, expand
from bench.io import read_results
from bench.memory import measure_peak_memory
from bench.runner import RunOptions, count_config_flops, flops_key, measure

import fake_models


@pytest.fixture
def fakes() -> Iterator[None]:
    fake_models.register_all()
    yield
    fake_models.unregister_all()


FAST = ["--min-time-s", "0.05", "--warmup-s", "0", "--no-progress", "--threads", "1"]


def test_compile_modes_are_a_key_axis_of_the_compiled_backends_only() -> None:
    cfgs = expand(["basic_cnn"], [1], ["fp32"], ["cpu"], ["infer"], ["eager", "compile"],
                  compile_modes=["default", "max-autotune"], timers=["back-to-back"])
    assert sorted((c.backend, c.compile_mode) for c in cfgs) == [
        ("compile", "default"), ("compile", "max-autotune"), ("eager", "")]
    assert len({c.key() for c in cfgs}) == 3 and "max-autotune" in cfgs[-1].label() + cfgs[-2].label()


def test_rows_written_before_the_axes_read_as_their_defaults() -> None:
    base = {"model": "resnet50", "backend": "compile", "mode": "infer", "device": "cuda", "dtype": "bf16",
            "batch_size": "1"}
    old_cuda = Config.from_dict({**base, "timer": "triton.testing.do_bench(cuda events, L2 flushed)"})
    old_cpu = Config.from_dict({**base, "device": "cpu", "timer": "torch.utils.benchmark.Timer.blocked_autorange"})
    assert (old_cuda.compile_mode, old_cuda.timer) == ("default", "flushed")
    assert (old_cpu.timer, Config.from_dict({**base, "backend": "eager"}).compile_mode) == ("back-to-back", "")


def test_bad_timer_or_compile_mode_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--models", "basic_cnn", "--timer", "cudagraphs", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'cudagraph'" in err and "back-to-back, flushed, cudagraph" in err
    assert main(["run", "--models", "basic_cnn", "--backends", "compile", "--compile-mode", "fast", "--dry-run"]) == 2
    assert "valid: default, reduce-overhead, max-autotune" in capsys.readouterr().err
    assert main(["run", "--models", "basic_cnn", "--min-samples", "2", "--dry-run"]) == 2
    assert "--min-samples must be at least 3" in capsys.readouterr().err


def test_cuda_only_regimes_are_unsupported_rows_on_the_cpu(tmp_path: Path, fakes: None) -> None:
    out = tmp_path / "run"
    rc = main(["run", "--models", "fake_ok", "--timer", "back-to-back", "flushed", "cudagraph", "--out", str(out),
               *FAST])
    assert rc == 0
    df = read_results(out / "results.csv").set_index("timer")
    assert df.loc["back-to-back", "status"] == "ok"
    for regime in ("flushed", "cudagraph"):
        assert df.loc[regime, "status"] == "unsupported" and "needs CUDA" in df.loc[regime, "error"]


def test_flops_are_counted_on_the_cpu_never_on_the_benchmark_device(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cuda(*a: object, **k: object) -> None:
        raise AssertionError("the FLOP count touched CUDA")

    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda)  # every CUDA tensor or context goes through it
    cpu = Config("resnet18", "eager", "train", "cpu", "fp32", 2, input_size=32)
    cuda = dataclasses.replace(cpu, device="cuda", dtype="bf16", backend="compile", compile_mode="max-autotune",
                               timer="cudagraph")
    a, b = count_config_flops(cpu), count_config_flops(cuda)
    assert b["flops_device"] == "cpu" and a["gflops"] == b["gflops"] > 0
    assert flops_key(cpu) == flops_key(cuda)


def test_cudnn_autotuning_is_on_for_cuda_rows_and_recorded() -> None:
    cuda = Config("resnet18", "eager", "infer", "cuda", "fp32", 1)
    old = torch.backends.cudnn.benchmark
    with runner._cudnn(cuda, RunOptions()) as flags:
        assert torch.backends.cudnn.benchmark is True
        assert flags == {"cudnn_benchmark": True, "cudnn_deterministic": torch.backends.cudnn.deterministic}
    with runner._cudnn(cuda, RunOptions(cudnn_benchmark=False)) as flags:
        assert torch.backends.cudnn.benchmark is False and flags["cudnn_benchmark"] is False
    assert torch.backends.cudnn.benchmark is old
    with runner._cudnn(dataclasses.replace(cuda, device="cpu"), RunOptions()) as flags:
        assert flags == {}


def test_cuda_peak_memory_excludes_blocks_cached_before_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake caching allocator: 256 MB freed but still reserved (a timer's flush buffer); the step allocates 10 MB.
    The reserved peak must be the step's, not the cache's."""
    mb = 2**20
    st = {"alloc": 0, "cached": 256 * mb, "peak_alloc": 0, "peak_res": 0}
    log: list[str] = []

    def reserved() -> int:
        return st["alloc"] + st["cached"]

    def empty_cache() -> None:
        log.append("empty_cache")
        st["cached"] = 0

    def reset(device: object = None) -> None:
        log.append("reset")
        st["peak_alloc"], st["peak_res"] = st["alloc"], reserved()

    def step() -> None:
        log.append("step")
        st["alloc"] += 10 * mb
        st["peak_alloc"], st["peak_res"] = max(st["peak_alloc"], st["alloc"]), max(st["peak_res"], reserved())
        st["alloc"] -= 10 * mb
        st["cached"] += 10 * mb

    devices: list[object] = []

    def on(device: object, what: object) -> object:  # every per-device call must name the row's device
        devices.append(device)
        return what

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: on(device, log.append("sync")))
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: on(device, reset(device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: on(device, st["peak_alloc"]))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: on(device, st["peak_res"]))
    dev = torch.device("cuda", 1)
    mem = measure_peak_memory(step, dev)
    assert log == ["sync", "empty_cache", "reset", "step", "sync"]
    assert mem.peak_mb == 10 and mem.reserved_mb == 10 and mem.method == "cuda.max_memory_allocated"
    assert devices == [dev] * 5


def test_cpu_memory_tracker_edges_and_rss() -> None:
    """The CPU tracker: nothing allocated -> peak 0; allocate, free, allocate again -> one tensor's bytes, not two; an
    operator returning a Python scalar is skipped; and ``rss_bytes`` is the process' resident set."""
    from bench.memory import CpuPeakTracker, rss_bytes

    x = torch.ones(1024)
    with CpuPeakTracker() as idle:
        x.view(32, 32)
    assert idle.peak == 0
    with CpuPeakTracker() as t:
        a = x * 2
        del a
        b = x * 3
        assert float(b.sum().item()) == 3 * 1024  # item(): an operator whose result is not a tensor
        del b
    assert t.peak == 1024 * 4 + 4  # one 4 KB tensor alive at a time (+ the scalar sum), not two
    assert measure_peak_memory(lambda: x * 2, torch.device("cpu")).method == "cpu-dispatch-storage-tracker"
    with open("/proc/self/status") as f:
        vm_rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    before = rss_bytes()
    assert before is not None and abs(before - vm_rss) < 2**20
    import mmap

    page = mmap.PAGESIZE
    with mmap.mmap(-1, 64 * 2**20) as m:  # a new anonymous mapping (an allocator could reuse freed memory)
        for off in range(0, len(m), page):
            m[off] = 1  # touched, so resident
        grown = rss_bytes() - before
    assert 60 * 2**20 < grown < 80 * 2**20, grown


@functools.cache  # once per process (a namespace is defined once); the cache keeps the library, and so the ops, alive
def _multi_output_ops() -> torch.library.Library:
    """Two CPU operators with several outputs in ``torch.ops.vb_memory_test``: ``sparse_then_dense(x)`` returns a
    sparse tensor (no storage to count) and then a new dense one; ``same_twice_then_new(x)`` returns one new tensor
    twice and then another new one."""
    lib = torch.library.Library("vb_memory_test", "DEF")
    lib.define("sparse_then_dense(Tensor x) -> (Tensor, Tensor)")
    lib.define("same_twice_then_new(Tensor x) -> (Tensor, Tensor, Tensor)")
    lib.impl("sparse_then_dense", lambda x: (x.to_sparse(), x * 2), "CPU")

    def same_twice_then_new(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = x * 2
        return t, t, x * 3

    lib.impl("same_twice_then_new", same_twice_then_new, "CPU")
    return lib


def test_cpu_memory_tracker_counts_every_new_output_of_a_multi_output_operator() -> None:
    """An output without a storage (sparse) or one already counted is skipped; the outputs after it still count."""
    from bench.memory import CpuPeakTracker

    _multi_output_ops()
    ops, x = torch.ops.vb_memory_test, torch.ones(256)
    with CpuPeakTracker() as t:
        sparse, dense = ops.sparse_then_dense(x)
    assert sparse.is_sparse and t.peak == dense.untyped_storage().nbytes() == 256 * 4
    with CpuPeakTracker() as t:
        a, b, c = ops.same_twice_then_new(x)
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    assert t.peak == 2 * 256 * 4  # a (= b) once, and c


def test_compile_modes_rows_with_dynamo_statistics_and_a_forced_graph_break(tmp_path: Path, fakes: None) -> None:
    """Both modes from the CLI, on a one-layer model that Dynamo must split in two (basic_cnn's single graph is checked
    by the cold/warm test below: a conv net's compile per mode is the expensive part of this test, not its point)."""
    out = tmp_path / "run"
    rc = main(["run", "--models", "fake_graph_break", "--backends", "compile", "--compile-mode", "default",
               "max-autotune", "--out", str(out), *FAST])
    assert rc == 0
    df = read_results(out / "results.csv")
    assert set(df["status"]) == {"ok"} and len(df) == 2
    for _, r in df.iterrows():
        assert r["compile_cache"].startswith("cold") and int(r["recompiles"]) == 0
        assert int(r["dynamo_graphs"]) == 2 and int(r["graph_breaks"]) >= 1  # the forced break, reported per row
    assert set(df["compile_mode"]) == {"default", "max-autotune"}


def test_cold_compile_costs_more_than_a_warm_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    cfg = Config("basic_cnn", "compile", "infer", "cpu", "fp32", 1, input_size=32, compile_mode="default")
    opts = dict(min_time_s=0.02, warmup_s=0.0, count_flops=False, check_accuracy=False)
    cold, _ = measure(cfg, RunOptions(compile_cache="cold", **opts))
    measure(cfg, RunOptions(compile_cache="warm", **opts))  # fills the shared cache
    warm, _ = measure(cfg, RunOptions(compile_cache="warm", **opts))
    assert cold["status"] == warm["status"] == "ok"
    assert cold["compile_cache"].startswith("cold") and warm["compile_cache"].startswith("warm")
    assert "non-empty before" in warm["compile_cache"]
    assert cold["compile_ms"] > warm["compile_ms"]
    for r in (cold, warm):  # a conv net without data-dependent control flow: one graph, no break, no recompile
        assert (int(r["dynamo_graphs"]), int(r["graph_breaks"]), int(r["recompiles"])) == (1, 0, 0)


def test_a_failing_compiled_config_leaves_no_cache_dir_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    bad = Config("basic_cnn", "compile", "infer", "cpu", "fp32", 1, input_size=40, compile_mode="default")
    row, _ = measure(bad, RunOptions(count_flops=False, check_accuracy=False))  # its linear layer wants 32 px
    assert row["status"] == "error" and row["compile_cache"].startswith("cold")
    assert list(tmp_path.iterdir()) == []


def test_only_static_shape_models_are_captured_in_cuda_graphs() -> None:
    from bench.runner import graph_capturable

    assert all(graph_capturable(m) for m in ("resnet50", "vit_b_16", "swin_t", "unet", "deeplabv3plus_resnet50"))
    assert not any(graph_capturable(m) for m in ("fasterrcnn_resnet50_fpn", "yolov5s", "mae_vit_b_16",
                                                 "simclr_resnet50"))

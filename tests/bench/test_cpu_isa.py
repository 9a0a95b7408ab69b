"""The CPU's instruction set in env.json and every row; the low-precision fallback probe; budgets and the per-config
cap; pure low-precision weights beside autocast."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench import cpu_isa
from bench.cli import main
from bench.compare import env_diff
from bench.config import Config, cheapest_first, expand
from bench.io import read_results
from bench.runner import RunOptions, Unsupported, build_step, measure, probe_support
from bench.timing import MIN_REDUCED_SAMPLES, OverConfigBudget, time_fn
from models.registry import _REGISTRY, register_model

FAST = ["--min-time-s", "0.02", "--warmup-s", "0", "--no-progress", "--threads", "1", "--no-flops"]


def test_isa_facts_follow_torch_and_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    isa = cpu_isa.cpu_isa()
    assert isa["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(isa) >= {"cpu_flags", "cpu_bf16_native", "cpu_fp16_native", "onednn_version", "mkl_version"}
    # Native needs the flag *and* a dispatch ISA allowed to use it (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA emulate).
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert cpu_isa._native("bf16", "AVX512", {"avx512_bf16": True})
    assert cpu_isa._native("bf16", "AVX512", {"amx_bf16": True})
    assert not cpu_isa._native("bf16", "AVX512", {"avx512_fp16": True})
    assert not cpu_isa._native("bf16", "AVX2", {"avx512_bf16": True})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_isa._native("bf16", "AVX512", {"avx512_bf16": True})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert cpu_isa._native("bf16", "AVX512", {"avx512_bf16": True})


def test_probe_measures_and_is_cached_per_process() -> None:
    cpu_isa.lowp_probe.cache_clear()
    t0 = time.perf_counter()
    p = cpu_isa.lowp_probe("bf16", "autocast")
    first = time.perf_counter() - t0
    assert p.conv_x > 0 and p.matmul_x > 0 and p.factor == max(p.conv_x, p.matmul_x)
    assert p.fallback == (p.factor > cpu_isa.FALLBACK_FACTOR)
    t0 = time.perf_counter()
    assert cpu_isa.lowp_probe("bf16", "autocast") is p
    assert time.perf_counter() - t0 < first
    assert cpu_isa.lowp_probe.cache_info().hits >= 1


def _fake_probe(monkeypatch: pytest.MonkeyPatch, factor: float) -> None:
    monkeypatch.setattr(cpu_isa, "lowp_probe", lambda d, h="autocast": cpu_isa.LowpProbe(d, h, factor, 1.0))


def test_a_fallback_dtype_is_unsupported_with_isa_and_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_probe(monkeypatch, 42.0)
    cfg = Config("basic_cnn", "eager", "infer", "cpu", "bf16", 1)
    with pytest.raises(Unsupported) as e:
        probe_support(cfg)
    msg = str(e.value)
    assert "fallback path" in msg and "42.0x" in msg and cpu_isa.cpu_isa()["cpu_capability"] in msg
    assert "--allow-slow-fallback" in msg
    assert "measured on request" in probe_support(cfg, allow_slow_fallback=True)
    # fp32 is never probed; a native-speed dtype passes with the probe's note
    assert probe_support(Config("basic_cnn", "eager", "infer", "cpu", "fp32", 1)) == ""
    _fake_probe(monkeypatch, 1.2)
    assert "conv2d 1.2x" in probe_support(Config("basic_cnn", "eager", "infer", "cpu", "bf16-pure", 1))


def test_rows_and_env_record_the_isa_and_unsupported_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_probe(monkeypatch, 50.0)
    out = tmp_path / "r"
    assert main(["run", "--models", "basic_cnn", "--dtypes", "fp32", "bf16", "--out", str(out), *FAST]) == 0
    env = json.loads((out / "env.json").read_text())
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(env["cpu_bf16_native"], bool) and "cpu_flags" in env
    df = read_results(out / "results.csv").set_index("dtype")
    assert (df["cpu_isa"].str.startswith(env["cpu_capability"])).all()
    assert df.loc["fp32", "status"] == "ok" and df.loc["bf16", "status"] == "unsupported"
    assert "50.0x" in df.loc["bf16", "error"]
    assert "fallback path" in (out / "report.md").read_text()
    assert "CPU ISA" in (out / "report.md").read_text()


def test_compare_flags_a_different_isa() -> None:
    base = {"cpu_model": "x", "cpu_capability": "AVX512", "cpu_bf16_native": True, "cpu_fp16_native": False}
    new = {**base, "cpu_capability": "AVX2", "cpu_bf16_native": False}
    diff = {d["field"]: d for d in env_diff(base, new)}
    assert diff["cpu ISA"]["material"] and diff["cpu ISA"]["new"] == "AVX2"
    assert "bf16=False" in diff["cpu bf16/fp16 native"]["new"]
    assert env_diff(base, dict(base)) == []


class _DtypeSpy(nn.Module):
    """Records the parameter dtype, the input dtype and the dtype a matmul produces inside the step."""

    seen: list[tuple[torch.dtype, torch.dtype, torch.dtype]] = []

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x.flatten(1)[:, :8])
        _DtypeSpy.seen.append((self.lin.weight.dtype, x.dtype, y.dtype))
        return y


@pytest.fixture
def dtype_spy():
    def spy_model(**_: object) -> nn.Module:
        return _DtypeSpy()

    register_model(family="fake", input_shape=(2, 2, 2), num_classes=4)(spy_model)
    _DtypeSpy.seen = []
    yield
    _REGISTRY.pop("spy_model", None)


@pytest.mark.parametrize(("dtype", "weight", "inp", "out"), [
    ("fp32", torch.float32, torch.float32, torch.float32),
    ("bf16", torch.float32, torch.float32, torch.bfloat16),  # autocast: fp32 weights, bf16 compute
    ("bf16-pure", torch.bfloat16, torch.bfloat16, torch.bfloat16),  # model and inputs cast
])
def test_autocast_and_pure_precision_run_what_they_say(dtype: str, weight: torch.dtype, inp: torch.dtype,
                                                       out: torch.dtype, dtype_spy: None) -> None:
    cfg = Config("spy_model", "eager", "infer", "cpu", dtype, 2)
    step, facts = build_step(cfg)
    step()
    assert _DtypeSpy.seen[-1] == (weight, inp, out)
    assert ("pure" in facts["precision_note"]) == dtype.endswith("-pure")
    row, _ = measure(cfg, RunOptions(warmup_s=0, min_time_s=0.01, count_flops=False, allow_slow_fallback=True,
                                     check_accuracy=False))
    assert row["status"] == "ok", row.get("error")
    assert all(s == (weight, inp, out) for s in _DtypeSpy.seen)


def test_cheapest_first_gives_every_model_its_cheapest_config_first() -> None:
    cfgs = expand(["resnet18", "basic_cnn"], [4, 1], ["bf16", "fp32"], ["cpu"], ["train", "infer"], ["eager"])
    order = cheapest_first(cfgs)
    assert sorted(order) == sorted(cfgs)
    assert [(c.model, c.mode, c.batch_size, c.dtype) for c in order[:2]] == [
        ("resnet18", "infer", 1, "fp32"), ("basic_cnn", "infer", 1, "fp32")]
    assert [c.model for c in order[:4]] == ["resnet18", "basic_cnn"] * 2
    assert order[-1].mode == "train" and order[-1].batch_size == 4 and order[-1].dtype == "bf16"


def test_budget_stops_starting_configs_and_lists_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "b"
    # A budget smaller than one config: the first config of the sweep runs, nothing after it starts.
    rc = main(["run", "--models", "basic_cnn", "--batch-sizes", "1", "2", "--budget-s", "0.001", "--out", str(out),
               *FAST])
    assert rc == 0
    df = read_results(out / "results.csv")
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert len(df) == 1 and int(df["batch_size"].iloc[0]) == 1  # the cheapest config went first
    assert skipped == ["basic_cnn eager infer cpu fp32 b2"]
    assert "time budget ran out" in (out / "report.md").read_text()
    # --resume completes the sweep and the stale list goes away.
    assert main(["run", "--models", "basic_cnn", "--batch-sizes", "1", "2", "--out", str(out), "--resume",
                 *FAST]) == 0
    assert len(read_results(out / "results.csv")) == 2 and not (out / "skipped.txt").exists()


def test_max_config_s_reduces_samples_or_times_out() -> None:
    calls: list[float] = []

    def slow() -> None:  # 50 ms per call
        calls.append(time.perf_counter())
        time.sleep(0.05)

    t = time_fn(slow, "cpu", warmup_s=0, min_time_s=5.0, min_samples=10, max_s=0.4)
    assert t.reduced and len(t.samples_ms) >= MIN_REDUCED_SAMPLES and len(t.samples_ms) < 10
    assert all(s >= 50 for s in t.samples_ms) and "reduced" in t.method
    assert len(calls) <= 1 + 2 + len(t.samples_ms)  # first call, warm-up, samples: nothing else ran
    full = time_fn(slow, "cpu", warmup_s=0, min_time_s=0.01, min_samples=3, max_s=10.0)
    assert not full.reduced  # fits: measured as asked

    first = [True]

    def slow_first() -> None:
        time.sleep(0.3 if first[0] else 0.0)
        first[0] = False

    with pytest.raises(OverConfigBudget) as e:
        time_fn(slow_first, "cpu", max_s=0.1)
    assert e.value.first_call_ms >= 300


@pytest.mark.parametrize(("argv", "needle"), [
    (["--budget-s", "-1"], "--budget-s must be >= 0"),
    (["--max-config-s", "-2"], "--max-config-s must be >= 0"),
])
def test_bad_budget_exits_2(argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--models", "basic_cnn", *argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1

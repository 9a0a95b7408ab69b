"""Report plots (throughput, latency distribution, kernel roofline) and ``run --profile`` traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main as cli_main
from bench.config import Config
from bench.io import RowWriter, append_jsonl
from bench.plots import plots_section, roofline_ceiling
from bench.report import write_report
from bench.runner import RESULT_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(p: Path) -> bool:
    return p.is_file() and p.stat().st_size > 2000 and p.read_bytes()[:8] == PNG_MAGIC


def _synthetic_run(d: Path) -> Path:
    rng = np.random.default_rng(0)
    d.mkdir()
    w = RowWriter(d / "results.csv", RESULT_COLUMNS)
    for model in ("basic_cnn", "resnet18"):
        for dtype in ("fp32", "bf16"):
            for bs in (1, 2, 4, 8):
                cfg = Config(model, "eager", "infer", "cpu", dtype, bs)
                s = (1.0 + 0.8 * bs) * rng.lognormal(0, 0.1, 20)
                p20, p50, p80 = np.quantile(s, [0.2, 0.5, 0.8])
                w.append({**cfg.as_dict(), "status": "ok", "latency_ms_p20": p20, "latency_ms_p50": p50,
                          "latency_ms_p80": p80, "n_samples": 20, "throughput_per_s": bs / (p50 / 1e3)})
                append_jsonl(d / "samples.jsonl", {"key": list(cfg.key()), **cfg.as_dict(), "samples_ms": list(s)})
    failed = Config("resnet18", "eager", "infer", "cpu", "fp32", 64)
    w.append({**failed.as_dict(), "status": "oom", "error": "OutOfMemoryError"})  # no throughput: not plotted
    return d


def test_throughput_and_latency_plots_are_linked_from_the_report(tmp_path: Path) -> None:
    d = _synthetic_run(tmp_path / "run")
    md = plots_section(d)
    assert md is not None
    for name in ("throughput_basic_cnn", "throughput_resnet18", "latency_basic_cnn", "latency_resnet18"):
        assert _is_png(d / "plots" / f"{name}.png"), name
        assert f"](plots/{name}.png)" in md
    assert "roofline" not in md  # no kernels.csv in this run
    report = write_report(d).read_text()
    assert "## Plots" in report and "](plots/throughput_resnet18.png)" in report


def test_plots_section_is_none_without_data(tmp_path: Path) -> None:
    assert plots_section(tmp_path) is None
    assert not (tmp_path / "plots").exists()


def test_roofline_ceilings_and_plot_from_a_synthetic_kernels_csv(tmp_path: Path) -> None:
    # H100 SXM bf16: 3350 GB/s and 989.4 TFLOP/s meet at 295 FLOP/byte.
    assert roofline_ceiling(10.0, 3350, 989.4) == pytest.approx(3350e9 * 10)
    assert roofline_ceiling(1000.0, 3350, 989.4) == pytest.approx(989.4e12)
    assert roofline_ceiling(1.0, None, None) == float("inf")
    d = tmp_path / "run"
    d.mkdir()
    (d / "kernels.csv").write_text(
        "kernel,shape,dtype,direction,provider,status,message,p50_us,flops,bytes,tflops,gbps,peak_gbps,peak_tflops,"
        "copy_gbps\n"
        "window_attention,s1,bf16,forward,triton,ok,,120,9.7e9,1.3e8,80.8,1083,3350,989.4,2900\n"
        "window_attention,s1,bf16,forward,eager,ok,,400,9.7e9,1.3e8,24.3,325,3350,989.4,2900\n"
        "depthwise_conv,b0,bf16,backward,triton,ok,,80,4.0e8,2.2e8,5,2750,3350,989.4,2900\n"
        "depthwise_conv,b0,bf16,backward,eager,error,boom,,4.0e8,2.2e8,,,3350,989.4,2900\n"
        "roi_align,r,fp32,forward,triton,ok,,50,1.0e8,5.0e7,2,1000,,,\n")
    md = plots_section(d)
    assert md is not None and "### Kernel roofline" in md
    assert _is_png(d / "plots" / "roofline_bf16.png") and _is_png(d / "plots" / "roofline_fp32.png")
    assert "](plots/roofline_fp32.png)" in md
    assert "## Plots" in write_report(d).read_text()  # a kernels-only run still gets a report


def test_run_profile_writes_a_trace_with_conv_ops_and_a_top_ops_section(tmp_path: Path) -> None:
    """``python -m bench run --profile`` on a tiny CPU config: the trace loads, holds the model's conv operators with
    shapes and memory events, and the report lists the top operators."""
    out = tmp_path / "run"
    rc = cli_main(["run", "--models", "basic_cnn", "--batch-sizes", "1", "--devices", "cpu", "--out", str(out),
                   "--profile", "--no-flops", "--min-time-s", "0.1", "--warmup-s", "0.02", "--threads", "1",
                   "--no-progress"])
    assert rc == 0
    traces = list((out / "traces").glob("*.pt.trace.json"))
    assert [t.name.split(".")[0] for t in traces] == ["basic_cnn_eager_infer_cpu_fp32_b1"]
    trace = json.loads(traces[0].read_text())
    ops = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    convs = [e for e in ops if e["name"] in ("aten::conv2d", "aten::convolution") or "mkldnn" in e["name"]]
    # basic_cnn has 3 convolutions; 3 profiled steps -> 9 aten::conv2d calls, each with its input shape recorded.
    conv2d = [e for e in convs if e["name"] == "aten::conv2d"]
    assert len(conv2d) == 9
    assert conv2d[0]["args"]["Input Dims"][0] == [1, 3, 32, 32]
    assert sum(e["name"].startswith("ProfilerStep#") for e in ops) == 3
    assert any(e.get("name") == "[memory]" for e in trace["traceEvents"])  # profile_memory=True
    top = json.loads(next((out / "traces").glob("*.top_ops.json")).read_text())
    assert top["trace"] == traces[0].name and top["steps"] == 3 and top["sort_by"] == "self_cpu_ms"
    names = [o["name"] for o in top["ops"]]
    assert any("conv" in n for n in names) and not any(n.startswith("ProfilerStep") for n in names)
    assert all(a["self_cpu_ms"] >= b["self_cpu_ms"] for a, b in zip(top["ops"], top["ops"][1:]))
    report = (out / "report.md").read_text()
    assert "## Profiler: top operators by self time" in report and "### basic_cnn eager infer cpu fp32 b1" in report
    assert "## Plots" in report and "](plots/latency_basic_cnn.png)" in report


def test_trace_is_readable_by_torch_tb_profiler(tmp_path: Path) -> None:
    tb = pytest.importorskip("torch_tb_profiler.profiler.data", reason="torch-tb-profiler is not installed")
    from torch_tb_profiler.consts import WORKER_PATTERN

    from bench.profile import profile_config
    from bench.runner import build_step

    cfg = Config("basic_cnn", "eager", "infer", "cpu", "fp32", 1)
    step, _ = build_step(cfg)
    path = Path(profile_config(step, cfg, tmp_path / "traces"))
    m = WORKER_PATTERN.match(path.name)
    assert m is not None and m.group(1) == "basic_cnn_eager_infer_cpu_fp32_b1"  # one worker per config
    prof = tb.RunProfileData.parse(m.group(1), m.group(2), str(path), str(tmp_path))
    assert prof.steps_names == ["1", "2", "3"]
    assert "aten::conv2d" in {op.name for op in prof.op_list_groupby_name}
    # A second profile of the same config replaces the first (one trace per config).
    path2 = Path(profile_config(step, cfg, tmp_path / "traces"))
    assert list((tmp_path / "traces").glob("*.pt.trace.json")) == [path2]


@pytest.mark.gpu
def test_cuda_profile_records_kernels_and_sorts_by_cuda_time(tmp_path: Path) -> None:
    from bench.profile import profile_config
    from bench.runner import build_step

    cfg = Config("basic_cnn", "eager", "infer", "cuda", "fp32", 8)
    step, _ = build_step(cfg)
    step()
    path = Path(profile_config(step, cfg, tmp_path / "traces"))
    trace = json.loads(path.read_text())
    assert any(e.get("cat") == "kernel" for e in trace["traceEvents"])  # CUDA activity recorded
    top = json.loads(next((tmp_path / "traces").glob("*.top_ops.json")).read_text())
    assert top["sort_by"] == "self_cuda_ms" and "CUDA" in top["activities"]
    cuda_ms = [o["self_cuda_ms"] for o in top["ops"]]
    assert cuda_ms[0] > 0 and cuda_ms == sorted(cuda_ms, reverse=True)

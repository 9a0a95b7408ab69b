"""The sweep harness end to end: CSV schema, faults become rows, kill-and-resume, bad CLI input, report."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.cli import main
from bench.config import Config
from bench.io import read_results
from bench.runner import RESULT_COLUMNS, RunOptions
from bench.sweep import run_sweep

import fake_models

REPO = Path(__file__).resolve().parents[2]
FAST = ["--min-time-s", "0.02", "--warmup-s", "0", "--no-progress"]
FAST_OPTS = RunOptions(warmup_s=0.0, min_time_s=0.02, threads=1)


@pytest.fixture
def fakes():
    fake_models.register_all()
    yield
    fake_models.unregister_all()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests" / "bench"), env.get("PYTHONPATH", "")])
    env["VISIONBENCH_PLUGINS"] = "fake_models"
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_done_when_four_ok_rows_with_every_column(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # basic_cnn: cheap in bf16 even where bf16 takes PyTorch's fallback path (AVX2); measured there on request.
    rc = main(["run", "--models", "basic_cnn", "--batch-sizes", "1", "2", "--dtypes", "fp32", "bf16", "--devices",
               "cpu", "--threads", "1", "--allow-slow-fallback", "--out", str(out), *FAST])
    assert rc == 0
    df = read_results(out / "results.csv")
    assert list(df.columns) == RESULT_COLUMNS
    assert len(df) == 4 and set(df["status"]) == {"ok"} and set(df["acc_status"]) == {"ok"}
    # Columns that may legitimately be empty on a CPU eager run; everything else must be filled.
    may_be_empty = {"error", "reserved_mem_mb", "kernel_path", "kernels_switched", "kernels", "cuda_version",
                    "flops_counter_warnings", "machine_note", "gpu_sm_mhz", "gpu_mem_mhz", "gpu_power_w", "gpu_temp_c",
                    "gpu_throttle"}  # the GPU state is recorded for cuda rows only
    may_be_empty |= {"dynamo_graphs", "graph_breaks", "recompiles", "compile_mode"}  # compiled backends only
    may_be_empty |= {"compile_cache"}  # compiled and kernel backends only
    may_be_empty |= {"cudnn_benchmark", "cudnn_deterministic"}  # cuda rows only
    assert (df["flops_device"] == "cpu").all()
    may_be_empty |= {"acc_grad_rel", "acc_grad_worst", "acc_loss", "acc_loss_ref", "acc_grad_eager"}  # train rows
    if importlib.util.find_spec("fvcore") is None:  # a declared dependency; the GPU machine may lack it
        may_be_empty.add("gmacs")
    for col in RESULT_COLUMNS:
        if col not in may_be_empty:
            assert df[col].notna().all(), f"column {col} has empty cells"
    num = df.astype({"latency_ms_p50": float, "latency_ms_p20": float, "latency_ms_p80": float, "batch_size": int,
                     "throughput_per_s": float, "gflops": float, "gmacs": float, "tflops_per_s": float,
                     "n_samples": int})
    assert (num["latency_ms_p20"] <= num["latency_ms_p50"]).all()
    assert (num["latency_ms_p50"] <= num["latency_ms_p80"]).all()
    assert (num["n_samples"] >= 5).all()
    # Derived metrics recomputed from the stored raw columns.
    # Throughput from the total of the timed back-to-back calls, not from the median.
    tot = df.astype({"timed_calls": int, "timed_ms": float})
    pd.testing.assert_series_equal(num["throughput_per_s"],
                                   num["batch_size"] * tot["timed_calls"] / (tot["timed_ms"] / 1e3),
                                   check_names=False, rtol=1e-9)
    assert (tot["timed_calls"] >= num["n_samples"]).all() and set(df["timer"]) == {"back-to-back"}
    pd.testing.assert_series_equal(num["tflops_per_s"],
                                   num["gflops"] * num["batch_size"] / (num["latency_ms_p50"] / 1e3) / 1e3,
                                   check_names=False, rtol=1e-9)
    if "gmacs" not in may_be_empty:
        assert (num["gflops"] / num["gmacs"]).between(1.9, 2.1).all()  # FLOPs = 2 x MACs up to fvcore's extra ops
    assert (out / "report.md").exists() and (out / "env.json").exists() and (out / "samples.jsonl").exists()
    assert "## basic_cnn" in (out / "report.md").read_text()
    notes = dict(zip(df["dtype"], df["precision_note"]))
    assert notes["fp32"].startswith("fp32") and notes["bf16"].startswith("autocast bf16")
    assert "probe" in notes["bf16"]  # the fallback probe ran and says what it measured


def test_failures_become_rows_and_the_sweep_goes_on(tmp_path: Path, fakes: None) -> None:
    out = tmp_path / "run"
    rc = main(["run", "--models", "fake_ok", "fake_raise", "fake_oom", "--batch-sizes", "1", "2", "--out", str(out),
               *FAST])
    assert rc == 1  # an error row makes the exit code non-zero
    df = read_results(out / "results.csv")
    assert len(df) == 6
    status = df.groupby("model")["status"].agg(set).to_dict()
    assert status == {"fake_ok": {"ok"}, "fake_raise": {"error"}, "fake_oom": {"oom"}}
    err = df[df.model == "fake_raise"]["error"].iloc[0]
    assert err == "ValueError: injected failure"
    assert df[df.status != "ok"]["latency_ms_p50"].isna().all()  # failures are empty, never zeros


def test_oom_alone_is_not_a_failed_exit(tmp_path: Path, fakes: None) -> None:
    rc = main(["run", "--models", "fake_ok", "fake_oom", "--out", str(tmp_path / "r"), *FAST])
    assert rc == 0


def test_unsupported_dtype_and_device(tmp_path: Path) -> None:
    rc = main(["run", "--models", "basic_cnn", "--dtypes", "tf32", "--devices", "cpu", "cuda", "--out",
               str(tmp_path / "r"), *FAST])
    df = read_results(tmp_path / "r" / "results.csv")
    assert rc == 0 and set(df["status"]) == {"unsupported"}


def test_timeout_in_process(tmp_path: Path, fakes: None) -> None:
    rows = run_sweep([Config("fake_hang", "eager", "infer", "cpu", "fp32", 1)], tmp_path,
                     RunOptions(warmup_s=0, min_time_s=0.01, timeout_s=1.0, count_flops=False), progress=False)
    assert rows[0]["status"] == "timeout"


def test_isolate_turns_a_dying_worker_into_a_crashed_row(tmp_path: Path) -> None:
    """``--isolate``: a worker that dies is a ``crashed`` row and the sweep goes on; every config is built in a
    process of its own, forked from one server (``bench.sweep.isolation_context``), not from the sweep's process."""
    out, pids = tmp_path / "iso", tmp_path / "pids.txt"
    env = {**_env(), "VISIONBENCH_FAKE_PID_FILE": str(pids)}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--models", "fake_die", "fake_pid",
                             "--batch-sizes", "1", "2", "--isolate", "--no-flops", "--out", str(out), *FAST], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]
    df = read_results(out / "results.csv")
    assert set(zip(df.model, df.status)) == {("fake_die", "crashed"), ("fake_pid", "ok")} and len(df) == 4
    built = [tuple(map(int, line.split())) for line in pids.read_text().splitlines()]
    # one build per measured config (the harness may build a model more than once within its worker)
    workers, parents = {pid for pid, _ in built}, {ppid for _, ppid in built}
    assert len(workers) == 2 and proc.pid not in workers  # b1 and b2 each in a fresh process
    assert len(parents) == 1 and proc.pid not in parents  # both forked from the one isolation server


def test_kill_and_resume_yields_the_uninterrupted_set(tmp_path: Path, fakes: None) -> None:
    args = ["run", "--models", "basic_cnn", "fake_ok", "--batch-sizes", "1", "2", "3", "--no-flops", *FAST]
    ref = tmp_path / "ref"
    assert main([*args, "--out", str(ref)]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args, "--out", str(out)], env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    csv = out / "results.csv"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill as soon as some but not all rows are on disk
        if csv.exists() and 2 <= len(csv.read_text().splitlines()) <= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_results(csv, strict=False)
    assert 1 <= len(partial) < 6, "the kill should land mid-sweep"
    assert main([*args, "--out", str(out), "--resume"]) == 0
    done = read_results(csv)
    ref_df = read_results(ref / "results.csv")
    key = ["model", "batch_size", "dtype", "backend", "mode", "device"]
    assert sorted(map(tuple, done[key].values.tolist())) == sorted(map(tuple, ref_df[key].values.tolist()))
    assert not done.duplicated(key).any()


@pytest.mark.parametrize("argv,needle", [
    (["run", "--models", "resnt50"], "did you mean 'resnet50'"),
    (["run", "--models", "resnet50", "--dtypes", "fp12"], "unknown dtype 'fp12'"),
    (["run", "--models", "resnet50", "--devices", "tpu"], "unknown device 'tpu'"),
    (["run", "--models", "resnet50", "--backends", "jax"], "unknown backend 'jax'"),
    (["run", "--models", "resnet50", "--batch-sizes", "0"], "batch size must be a positive integer"),
    (["run", "--suite", "quik"], "did you mean 'quick'"),
    (["run", "--models", "resnet50", "--batch-sizes", "x"], "invalid int value"),
    (["report", "/nonexistent/dir"], "no such run directory"),
])
def test_bad_input_exits_2_with_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main([*argv, "--out", str(tmp_path / "never")] if argv[0] == "run" else argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "never").exists()  # nothing measured


def test_malformed_suite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    import bench.config as cfg

    bad = tmp_path / "suites.toml"
    bad.write_text("[suite.x]\nmodels = 'all'\nbatch_size = [1]\n")
    monkeypatch.setattr(cfg, "SUITES_FILE", bad)
    monkeypatch.setattr(cfg.load_suites, "__defaults__", (bad,))
    assert main(["run", "--suite", "x"]) == 2
    assert "unknown keys ['batch_size']" in capsys.readouterr().err


def test_report_rebuilds_markdown(tmp_path: Path, fakes: None) -> None:
    out = tmp_path / "r"
    main(["run", "--models", "fake_ok", "fake_raise", "--out", str(out), *FAST])
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## fake_ok" in text and "## fake_raise" in text and "**error**: ValueError: injected failure" in text
    assert "torch " in text  # environment summary on top


def test_dry_run_lists_configs_and_measures_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", "--suite", "gpu", "--dry-run", "--out", str(tmp_path / "d")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "configs (dry run" in text and "import torch: ok" in text
    assert not (tmp_path / "d").exists()


def test_resume_repairs_a_torn_samples_line(tmp_path: Path, fakes: None) -> None:
    out = tmp_path / "r"
    args = ["run", "--models", "fake_ok", "--batch-sizes", "1", "2", "--no-flops", "--out", str(out), *FAST]
    assert main(args) == 0
    samples = out / "samples.jsonl"
    csv = out / "results.csv"
    # Simulate a kill in the middle of writing the second config: half a samples line, and its CSV row missing.
    lines = samples.read_text().splitlines()
    samples.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:2]))
    assert main([*args, "--resume"]) == 0
    from bench.io import read_jsonl

    records = read_jsonl(samples)  # raises on a broken line
    assert [r["batch_size"] for r in records] == [1, 2]
    assert len(read_results(csv)) == 2


def _counting_compile(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """Make ``torch.compile`` use a cheap backend that records each graph's example inputs (no inductor)."""
    import torch

    graphs: list[list[Any]] = []
    real_compile = torch.compile

    def backend(gm: Any, example_inputs: list[Any]) -> Any:
        graphs.append(list(example_inputs))
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=backend))
    return graphs


def test_every_compile_config_compiles_its_own_static_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten compile configs of one model: each compiles its own graph with a concrete batch size. Without a dynamo
    reset per config, the 9th and 10th hit torch._dynamo's recompile limit (8) and ran eagerly as "ok" compile rows
    (measured before the fix), and later batch sizes could inherit a dynamic-shape graph."""
    from bench.runner import measure

    graphs = _counting_compile(monkeypatch)
    opts = RunOptions(warmup_s=0.0, min_time_s=0.01, min_samples=3, count_flops=False, threads=1)
    for bs in range(1, 11):
        before = len(graphs)
        row, _ = measure(Config("basic_cnn", "compile", "infer", "cpu", "fp32", bs), opts)
        assert row["status"] == "ok", row["error"]
        new = graphs[before:]
        assert len(new) >= 1, f"batch {bs}: no graph compiled"
        batch_dims = [t.shape[0] for g in new for t in g if hasattr(t, "shape") and t.dim() == 4 and t.shape[1] == 3
                      and t.shape[0] != 32]  # the input [bs, 3, H, W], not the [32, 3, 3, 3] conv weight
        assert batch_dims and all(isinstance(d, int) and d == bs for d in batch_dims), (bs, batch_dims)


def test_a_compile_that_compiles_nothing_is_an_error_row(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from bench.runner import measure

    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # "compiles" to the eager model
    row, _ = measure(Config("basic_cnn", "compile", "infer", "cpu", "fp32", 1),
                     RunOptions(warmup_s=0.0, min_time_s=0.01, min_samples=3, count_flops=False, threads=1))
    assert row["status"] == "error" and "compiled no graph" in row["error"]

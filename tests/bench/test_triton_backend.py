"""The sweep's ``triton`` backend: models run with their Triton kernels switched in (here in the interpreter), the
path taken and the sites switched are recorded per row, and one kernel can be switched at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.io import read_results

# --no-accuracy: these tests are about the kernel switch and its columns; the accuracy gate on triton rows has its own
# tests (tests/bench/test_accuracy.py), and its float64 reference would double each row here.
FAST = ["--min-time-s", "0.01", "--warmup-s", "0", "--min-samples", "3", "--no-progress", "--no-flops",
        "--threads", "1", "--no-accuracy"]


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.usefixtures("no_interpreter_overflow_checks")  # the kernel tests keep the sanitizer at these shapes
def test_swin_t_eager_and_triton_rows(tmp_path: Path) -> None:
    out = tmp_path / "swin"
    rc = main(["run", "--models", "swin_t", "--backends", "eager", "triton", "--devices", "cpu", "--input-size", "32",
               "--out", str(out), *FAST])
    assert rc == 0
    df = read_results(out / "results.csv")
    assert dict(zip(df.backend, df.status)) == {"eager": "ok", "triton": "ok"}
    tri = df[df.backend == "triton"].iloc[0]
    assert tri["kernel_path"] == "triton-interpret"  # the Triton kernel ran (in the interpreter), not the fallback
    assert json.loads(tri["kernels_switched"])["window_attention"] == 12  # 2+2+6+2 Swin-T blocks
    assert df[df.backend == "eager"]["kernel_path"].isna().all()


@pytest.mark.triton
@pytest.mark.usefixtures("no_interpreter_overflow_checks")
def test_one_kernel_at_a_time_and_models_without_the_hot_path(tmp_path: Path) -> None:
    out = tmp_path / "one"
    rc = main(["run", "--models", "efficientnet_b0", "basic_cnn", "--backends", "triton", "--kernels",
               "depthwise_conv", "roi_align", "--devices", "cpu", "--input-size", "32", "--out", str(out), *FAST])
    assert rc == 0
    df = read_results(out / "results.csv")
    got = {(r.model, r.kernels): r.status for r in df.itertuples()}
    # efficientnet_b0 has 16 depthwise convs and no ROI Align; basic_cnn has neither hot path.
    assert got == {("efficientnet_b0", "depthwise_conv"): "ok", ("efficientnet_b0", "roi_align"): "unsupported",
                   ("basic_cnn", "depthwise_conv"): "unsupported", ("basic_cnn", "roi_align"): "unsupported"}
    row = df[(df.model == "efficientnet_b0") & (df.kernels == "depthwise_conv")].iloc[0]
    assert json.loads(row["kernels_switched"]) == {"depthwise_conv": 16}
    assert "no hot path" in df[df.model == "basic_cnn"]["error"].iloc[0]

"""The GPU job's CPU-side guarantees: a dry run lists configs and checks imports; no CUDA -> one sentence, exit 1."""

from __future__ import annotations

import pytest
import torch

from bench.gpu_job import main, model_configs


def test_dry_run_lists_every_model_and_checks_imports(capsys: pytest.CaptureFixture[str]) -> None:
    import models

    assert main(["/tmp/never-written", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "import torch: ok" in out and "import kernels: ok" in out
    # The kernel steps are bounded too (the inductor/Flex providers compile per case): 15% + 40% of 450 s.
    assert "for up to 68 s" in out and "for up to 180 s" in out and "model sweep until 390 s" in out
    configs = model_configs()
    names = {c.model for c in configs}
    assert names == {n for n in models.list_models() if models.get_spec(n).family != "fake"}
    assert {c.backend for c in configs} == {"eager", "triton", "compile", "compile-triton"}
    assert {c.model for c in configs if c.backend == "compile-triton"} == {"swin_t", "efficientnet_b0",
                                                                           "fasterrcnn_resnet50_fpn"}
    assert all(c.kernels == "all" for c in configs if c.backend == "compile-triton")
    assert all(c.device == "cuda" for c in configs)
    # The timing regimes: back-to-back everywhere, a CUDA-graph row for every capturable model at batch 1, resnet50
    # also flushed; channels_last for the conv nets; compile in default and reduce-overhead modes.
    graphs = {c.model for c in configs if c.timer == "cudagraph"}
    assert {"resnet50", "vit_b_16", "swin_t", "unet"} <= graphs and "fasterrcnn_resnet50_fpn" not in graphs
    assert all(c.batch_size == 1 for c in configs if c.timer == "cudagraph")
    assert {(c.model, c.batch_size) for c in configs if c.timer == "flushed"} == {("resnet50", 1), ("resnet50", 64)}
    cl = {c.model for c in configs if c.channels_last}
    assert {"resnet50", "efficientnet_b0", "yolov5s", "unet"} <= cl and not cl & {"vit_b_16", "swin_t"}
    modes = {(c.model, c.compile_mode) for c in configs if c.backend == "compile"}
    assert modes == {(m, cm) for m in ("resnet50", "efficientnet_b0", "vit_b_16", "swin_t")
                     for cm in ("default", "reduce-overhead")}
    assert len({c.key() for c in configs}) == len(configs)
    # Triton-backend configs only for models that contain a kernel hot path.
    assert all(models.get_spec(c.model).hot_paths for c in configs if c.backend == "triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA device")
def test_without_cuda_one_sentence_and_nonzero(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main([str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "bench-gpu needs a CUDA device, and torch.cuda.is_available() is False on this machine."
    assert not (tmp_path / "out").exists()


def test_preflight_needs_the_interpreter_off(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    """--preflight drives Triton's JIT; under TRITON_INTERPRET=1 (this test process) it refuses in one line."""
    assert main([str(tmp_path / "pf"), "--preflight"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TRITON_INTERPRET unset" in err[0]

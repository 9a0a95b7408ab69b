"""The GPU job's steps as the README states them, checked without a GPU (the steps themselves are stubbed):
model configs run isolated, errored model rows fail the job, and ``kernels --check`` covers bf16 first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import bench.gpu_job as gpu_job


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A CUDA machine whose kernel steps exit 0 and whose model sweep returns ``seen["rows"]``."""
    import bench.kernelbench.cli as kcli
    import bench.progress as progress
    import bench.report as report
    import bench.sweep as sweep

    seen: dict[str, Any] = {"kernels": [], "rows": [{"status": "ok"}]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kcli, "run", lambda argv: seen["kernels"].append(argv) or 0)

    def run_sweep(configs: list, out: Path, opts: Any, **kw: Any) -> list[dict[str, Any]]:
        seen["sweep"] = kw
        return seen["rows"]

    monkeypatch.setattr(sweep, "run_sweep", run_sweep)
    monkeypatch.setattr(report, "write_report", lambda out: out)
    monkeypatch.setattr(progress, "summary_table", lambda rows, title="": title)
    return seen


def test_model_configs_run_isolated_and_failed_rows_fail_the_job(stubbed: dict[str, Any], tmp_path: Path) -> None:
    assert gpu_job.main([str(tmp_path / "ok")]) == 0
    assert stubbed["sweep"]["isolate"] is True  # a segfault or hung kernel ends one config, not the job
    stubbed["rows"] = [{"status": "ok"}, {"status": "crashed"}]
    assert gpu_job.main([str(tmp_path / "crashed")]) == 1
    for status in ("error", "timeout", "crashed"):
        assert gpu_job.job_exit_code({"check": 0, "bench": 0}, [{"status": "ok"}, {"status": status}]) == 1
    expected = [{"status": "ok"}, {"status": "oom"}, {"status": "unsupported"}]  # expected outcomes
    assert gpu_job.job_exit_code({"check": 0, "bench": 0}, expected) == 0
    assert gpu_job.job_exit_code({"check": 1, "bench": 0}, expected) == 1


def test_kernel_check_covers_every_kernel_in_bf16_first(stubbed: dict[str, Any], tmp_path: Path) -> None:
    from bench.config import DTYPES
    from bench.kernelbench.check import iter_cases
    from kernels.registry import get_kernel, list_kernels

    assert gpu_job.main([str(tmp_path / "o")]) == 0
    argv = next(a for a in stubbed["kernels"] if a[0] == "--check")
    i = argv.index("--dtypes")
    dtypes = argv[i + 1:i + 4]
    assert dtypes == ["bf16", "fp16", "fp32"] and "--budget-s" in argv
    specs = [get_kernel(n) for n in list_kernels()]
    cases = list(iter_cases(specs, [DTYPES[d] for d in dtypes], ["forward", "backward"], real_shapes=True,
                            by_rank=True))  # the order the check takes under --budget-s
    first = cases[:2 * len(specs)]
    assert {c[0].name for c in first} == set(list_kernels()) and {c[3] for c in first} == {torch.bfloat16}

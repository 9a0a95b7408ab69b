"""bench/runner.py's rows checked value by value (written against its mutation survivors, issue 23).

Tiny fake models (``tests/bench/fake_models.py``) make each failure on purpose; the tests compare the row's status,
error text and columns with what the model did, and call ``measure`` directly (no CLI, no sweep) to stay fast.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from bench.config import Config
from bench.runner import RunOptions, measure

import fake_models

FAST = dict(warmup_s=0.0, min_time_s=0.01, min_samples=3, threads=1, count_flops=False, check_accuracy=False)


@pytest.fixture
def fakes() -> Iterator[None]:
    fake_models.register_all()
    yield
    fake_models.unregister_all()


def _cfg(model: str, **kw: object) -> Config:
    return Config(**{"model": model, "backend": "eager", "mode": "infer", "device": "cpu", "dtype": "fp32",
                     "batch_size": 2, **kw})


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
    assert row["threads"] == 1 and torch.get_num_threads() >= 1

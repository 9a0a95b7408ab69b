"""Shared test setup: Triton's CPU interpreter, deterministic RNG, and GPU-marker skipping."""

from __future__ import annotations

import os
import random

# Must be set before anything imports triton, or kernels run (and fail) as GPU code.
os.environ.setdefault("TRITON_INTERPRET", "1")
# Test Ray clusters must stay on loopback: with this flag off, Ray takes 127.0.0.1 as the node address instead of the
# machine's network address (read when ray is imported, and inherited by the node processes the tests start).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _restore_rng():
    """Seed every test and restore the global RNG afterwards, so tests cannot leak randomness into each other."""
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    torch.manual_seed(0)
    random.seed(0)
    yield
    torch.set_rng_state(torch_state)
    random.setstate(py_state)

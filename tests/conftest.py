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


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move everything imported and collected so far (torch, the models, every test module) out of the garbage
    collector's reach: the harness calls ``gc.collect()`` after each config, and in a process holding those objects
    each full collection took about 0.4 s here, paid by every test that measures a config. Objects the tests create
    are still collected."""
    import gc

    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _restore_rng():
    """Seed every test and restore the global RNG afterwards, so tests cannot leak randomness into each other."""
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    torch.manual_seed(0)
    random.seed(0)
    yield
    torch.set_rng_state(torch_state)
    random.setstate(py_state)


@pytest.fixture
def no_interpreter_overflow_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run Triton's interpreter without its integer-overflow sanitizer for one harness-level test.

    The interpreter checks every int32 add/sub/mul of a kernel for overflow (an int64 recomputation and a device
    assert per op, about 35% of an interpreted Swin-T forward's CPU time). Harness tests that only need a model's
    kernels to run (rows, columns, switched sites) take it off; the kernel tests keep it on, at the same model
    shapes (``test_swin_t_triton_matches_eager_forward_and_backward``, ``test_efficientnet_b0_triton_matches_eager``:
    batch 1, 32x32) and at every registered shape. A Triton without the internal switch leaves it on (slower only).
    """
    import dataclasses

    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if options is None or not hasattr(options, "sanitize_overflow"):
        return
    monkeypatch.setattr(builder, "options", dataclasses.replace(options, sanitize_overflow=False))

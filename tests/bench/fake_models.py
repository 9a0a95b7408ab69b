"""Models that misbehave on purpose, registered for the harness' fault tests.

Imported by the tests and, through ``VISIONBENCH_PLUGINS=fake_models`` (with ``tests/bench`` on ``PYTHONPATH``), by
worker processes.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn as nn

from models.registry import _REGISTRY, register_model


class _Behaviour(nn.Module):
    def __init__(self, action: str) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 4)
        self.action = action
        if action == "pid" and os.environ.get("VISIONBENCH_FAKE_PID_FILE"):  # which process built it, and its parent
            with open(os.environ["VISIONBENCH_FAKE_PID_FILE"], "a") as f:
                f.write(f"{os.getpid()} {os.getppid()}\n")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.action == "raise":
            raise ValueError("injected failure\nsecond line must not reach the CSV")
        if self.action == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        if self.action == "hang":
            time.sleep(30)
        if self.action == "die":
            os._exit(17)
        if self.action == "graph_break":  # a model torch.compile must split in two (its rows report it)
            x = x * 2
            torch._dynamo.graph_break()
        if self.action == "sleep":  # a known, tunable step time for A/B power checks (bench ab --head-env ...)
            time.sleep(float(os.environ.get("VISIONBENCH_FAKE_SLEEP_MS", "3")) / 1e3)
        return self.lin(x.flatten(1)[:, :8])


def _register(name: str, action: str) -> None:
    if name in _REGISTRY:
        return

    def build(**_: object) -> nn.Module:
        return _Behaviour(action)

    build.__name__ = name
    register_model(family="fake", input_shape=(2, 2, 2), num_classes=4)(build)


FAKES = {"fake_raise": "raise", "fake_oom": "oom", "fake_hang": "hang", "fake_die": "die", "fake_ok": "ok",
         "fake_sleep": "sleep", "fake_graph_break": "graph_break", "fake_pid": "pid"}


def register_all() -> None:
    for name, action in FAKES.items():
        _register(name, action)


def unregister_all() -> None:
    for name in FAKES:
        _REGISTRY.pop(name, None)


register_all()

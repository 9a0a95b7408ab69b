"""Models whose worker process dies on purpose, for the Ray fault tests.

Imported by the tests (the driver) and, by name through ``VISIONBENCH_PLUGINS`` (``bench.distributed`` forwards the
module that registered each model of a sweep), by the Ray workers, which find it on ``PYTHONPATH``. Markers live in
``$VB_RAY_MARKER_DIR`` (set before the cluster starts, so every worker inherits it):

* ``ray_die_always``: SIGKILLs its worker on every build -> first attempt and the retry die -> ``crashed`` row.
* ``ray_die_once``: SIGKILLs its worker only when ``die_once`` is absent (and creates it) -> ok on attempt 2.
* ``ray_gate``: the first build waits until ``gate`` exists (a config surely still running when the driver is killed);
  later builds (another batch size, the resumed run) do not wait.
* ``ray_hang``: ignores SIGALRM and sleeps, so only the driver's force-cancel ends it -> ``timeout`` row.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch.nn as nn

from models.registry import _REGISTRY, register_model


def _marker(name: str) -> Path:
    return Path(os.environ["VB_RAY_MARKER_DIR"]) / name


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 4))


def ray_die_always(**_: object) -> nn.Module:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def ray_die_once(**_: object) -> nn.Module:
    marker = _marker("die_once")
    if not marker.exists():
        marker.write_text(f"{os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)
    return _tiny()


def ray_gate(**_: object) -> nn.Module:
    try:  # only the first build to claim the gate waits, so exactly one config hangs and the others finish
        os.close(os.open(_marker("gate_claimed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return _tiny()
    deadline = time.monotonic() + 120
    while not _marker("gate").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return _tiny()


def ray_hang(**_: object) -> nn.Module:
    signal.signal(signal.SIGALRM, signal.SIG_IGN)  # like a hung C call: the in-worker time limit cannot fire
    time.sleep(120)
    return _tiny()


for _fn in (ray_die_always, ray_die_once, ray_gate, ray_hang):
    if _fn.__name__ not in _REGISTRY:
        register_model(family="fake", input_shape=(2, 2, 2), num_classes=4)(_fn)

"""The environment a measurement was taken in: machine, device, versions, threads, git state, command line."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from .cpu_isa import cpu_isa

__all__ = ["collect_env", "env_columns", "git_state", "isa_label", "ENV_COLUMNS"]

_REPO = Path(__file__).resolve().parent.parent

# The per-row environment columns (a cluster can be heterogeneous, so every row carries them).
ENV_COLUMNS = [
    "device_name", "host", "torch_version", "triton_version", "torchvision_version", "cuda_version", "threads",
    "git_sha", "timestamp", "cpu_isa",
]


def git_state() -> tuple[str, bool]:
    """``(sha, dirty)`` of the checkout this package runs from; ``("unknown", False)`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=_REPO, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return sha or "unknown", dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # no /proc/cpuinfo (macOS, Windows): fall back to what platform knows
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:
        return None


def device_name(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return _cpu_model()


def collect_env(argv: list[str] | None = None) -> dict[str, Any]:
    """Everything needed to reproduce or judge a run (written to ``DIR/env.json``)."""
    sha, dirty = git_state()
    env: dict[str, Any] = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": _cpu_model(),
        **cpu_isa(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch_version": torch.__version__,
        "torchvision_version": _version("torchvision"),
        "triton_version": _version("triton"),
        "fvcore_version": _version("fvcore"),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "git_sha": sha,
        "git_dirty": dirty,
        "command": " ".join(argv if argv is not None else sys.argv),
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            env["gpus"].append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                                "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count})
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
            env["driver"] = out[0] if out else None
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    # A busy machine is the commonest cause of run-to-run drift; `compare` warns when this differs.
    env["load_avg"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    env["cpu_governor"] = governor.read_text().strip() if governor.exists() else None
    return env


def env_columns(env: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    """The flat environment columns of one result row."""
    name = env["gpus"][0]["name"] if device.startswith("cuda") and env.get("gpus") else env.get("cpu_model")
    sha = env.get("git_sha", "unknown") + ("-dirty" if env.get("git_dirty") else "")
    return {
        "device_name": name, "host": env.get("host"), "torch_version": env.get("torch_version"),
        "triton_version": env.get("triton_version"), "torchvision_version": env.get("torchvision_version"),
        "cuda_version": env.get("cuda_version"), "threads": env.get("threads"), "git_sha": sha,
        "timestamp": env.get("timestamp"), "cpu_isa": isa_label(env),
    }


def isa_label(env: dict[str, Any]) -> str | None:
    """The host CPU's dispatch ISA and native low-precision types in one cell, e.g. ``AVX2`` or ``AVX512+bf16``."""
    cap = env.get("cpu_capability")
    if cap is None:
        return None
    return cap + "".join(f"+{d}" for d in ("bf16", "fp16") if env.get(f"cpu_{d}_native"))

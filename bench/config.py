"""Sweep definitions: the axes, named suites from ``suites.toml``, validation, and expansion into configs."""

from __future__ import annotations

import difflib
import itertools
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .io import BadInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "DTYPES", "DEVICES", "MODES", "BACKENDS", "KERNEL_BACKENDS", "SUITES_FILE", "load_suites",
           "expand", "KEY_FIELDS", "validate_choice"]

# Precision names -> (compute dtype under autocast, or float32 with TF32 matmuls for "tf32").
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
                                  "bf16": torch.bfloat16}
DEVICES = ("cpu", "cuda")
MODES = ("infer", "train")
BACKENDS = ("eager", "compile", "triton", "compile-triton")
# Backends that switch our Triton kernels into the model ("compile-triton": the model, kernels switched in, under
# torch.compile; the kernels are visionbench:: operators, so Inductor schedules them with the code around).
KERNEL_BACKENDS = ("triton", "compile-triton")
SUITES_FILE = Path(__file__).with_name("suites.toml")

# The columns that identify a config (resume, compare and merge match rows on them).
KEY_FIELDS = ("model", "backend", "mode", "device", "dtype", "batch_size", "channels_last", "kernels", "input_size")


@dataclass(frozen=True, order=True)
class Config:
    """One point of a sweep. ``kernels``: for the triton backend, ``"all"`` or one kernel name; else ``""``.
    ``input_size``: square input side, 0 = the model's default."""

    model: str
    backend: str
    mode: str
    device: str
    dtype: str
    batch_size: int
    channels_last: bool = False
    kernels: str = ""
    input_size: int = 0

    def key(self) -> tuple[str, ...]:
        return tuple(_key_str(getattr(self, f)) for f in KEY_FIELDS)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["batch_size"] = int(kw["batch_size"])
        kw["input_size"] = int(kw.get("input_size") or 0)
        kw["channels_last"] = _as_bool(kw.get("channels_last", False))
        kw["kernels"] = kw.get("kernels") or ""
        return cls(**kw)

    def label(self) -> str:
        extra = " cl" if self.channels_last else ""
        extra += f" k={self.kernels}" if self.kernels not in ("", "all") else ""
        size = f" {self.input_size}px" if self.input_size else ""
        return f"{self.model} {self.backend} {self.mode} {self.device} {self.dtype} b{self.batch_size}{size}{extra}"


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes")
    return bool(v)


def _key_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def key_of_row(row: dict[str, Any]) -> tuple[str, ...]:
    """The config key of a result row read back from CSV (strings)."""
    return Config.from_dict(row).key()


def validate_choice(kind: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        hint = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.5)
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise BadInputError(f"unknown {kind} {value!r}{did}; valid: {', '.join(valid)}")


def load_suites(path: Path = SUITES_FILE) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise BadInputError(f"{path}: malformed suite file ({e})") from None
    suites = data.get("suite")
    if not isinstance(suites, dict) or not suites:
        raise BadInputError(f"{path}: malformed suite file (no [suite.NAME] tables)")
    allowed = {"description", "models", "batch_sizes", "dtypes", "devices", "modes", "backends", "channels_last",
               "input_size", "timeout_s", "isolate", "min_time_s", "warmup_s", "model_batch_sizes", "kernels",
               "model_input_size"}
    for name, s in suites.items():
        unknown = set(s) - allowed
        if unknown:
            raise BadInputError(f"{path}: suite {name!r} has unknown keys {sorted(unknown)}; valid: {sorted(allowed)}")
        for k in ("batch_sizes", "dtypes", "devices", "modes", "backends"):
            if k in s and not isinstance(s[k], list):
                raise BadInputError(f"{path}: suite {name!r} key {k!r} must be a list")
    return suites


def expand(models: Iterable[str], batch_sizes: Iterable[int], dtypes: Iterable[str], devices: Iterable[str],
           modes: Iterable[str], backends: Iterable[str], channels_last: Iterable[bool] = (False,),
           kernels: Iterable[str] = ("all",), input_size: int = 0,
           model_batch_sizes: dict[str, list[int]] | None = None,
           model_input_size: dict[str, int] | None = None) -> list[Config]:
    """Cartesian product of the axes, validated. ``kernels`` applies to the triton backend only."""
    import models as model_registry
    from kernels.registry import list_kernels

    models, batch_sizes, dtypes = list(models), list(batch_sizes), list(dtypes)
    devices, modes, backends, kernels = list(devices), list(modes), list(backends), list(kernels)
    valid_models = model_registry.list_models()
    for m in models:
        validate_choice("model", m, valid_models)
    for d in dtypes:
        validate_choice("dtype", d, list(DTYPES))
    for d in devices:
        validate_choice("device", d, list(DEVICES))
    for m in modes:
        validate_choice("mode", m, list(MODES))
    for b in backends:
        validate_choice("backend", b, list(BACKENDS))
    for k in kernels:
        validate_choice("kernel", k, ["all", *list_kernels()])
    for b in batch_sizes:
        if not isinstance(b, int) or b <= 0:
            raise BadInputError(f"batch size must be a positive integer, got {b!r}")
    if input_size < 0:
        raise BadInputError(f"input size must be positive, got {input_size}")
    out: list[Config] = []
    per_model_bs = model_batch_sizes or {}
    per_model_size = model_input_size or {}
    for model, dev, mode, dt, be, cl in itertools.product(models, devices, modes, dtypes, backends, channels_last):
        size = input_size or per_model_size.get(model, 0)
        for bs in per_model_bs.get(model, batch_sizes):
            for k in (kernels if be in KERNEL_BACKENDS else [""]):
                out.append(Config(model, be, mode, dev, dt, int(bs), bool(cl), k, size))
    return out

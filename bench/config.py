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
from .timing import REGIMES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Config", "DTYPES", "LOWP", "DEVICES", "MODES", "BACKENDS", "KERNEL_BACKENDS", "SUITES_FILE",
           "load_suites", "expand", "KEY_FIELDS", "validate_choice", "cheapest_first", "COMPILE_MODES", "TIMERS",
           "COMPILED_BACKENDS", "FILE_KEY_FIELDS"]

# Precision names -> compute dtype (float32 with TF32 matmuls for "tf32").
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
                                  "bf16": torch.bfloat16, "fp16-pure": torch.float16, "bf16-pure": torch.bfloat16}
# The low-precision modes -> (base dtype name, how). "autocast": weights stay fp32 and autocast casts each op's
# inputs (mixed precision, as AMP training runs; it re-casts every weight every step). "cast": the model and its
# floating inputs are cast once (``model.to(torch.bfloat16)``), as low-precision inference is usually deployed.
LOWP: dict[str, tuple[str, str]] = {"fp16": ("fp16", "autocast"), "bf16": ("bf16", "autocast"),
                                    "fp16-pure": ("fp16", "cast"), "bf16-pure": ("bf16", "cast")}
DEVICES = ("cpu", "cuda")
MODES = ("infer", "train")
BACKENDS = ("eager", "compile", "triton", "compile-triton")
# Backends that switch our Triton kernels into the model ("compile-triton": the model, kernels switched in, under
# torch.compile; the kernels are visionbench:: operators, so Inductor schedules them with the code around).
KERNEL_BACKENDS = ("triton", "compile-triton")
# Backends that run the model under torch.compile; their configs carry a ``compile_mode`` (torch.compile's ``mode``:
# "reduce-overhead" adds CUDA graphs, "max-autotune" autotunes GEMM/conv templates and adds CUDA graphs).
COMPILED_BACKENDS = ("compile", "compile-triton")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Timing regimes (bench.timing / bench.cuda_timing): back-to-back steps, flushed L2 per call, CUDA-graph replays.
TIMERS = REGIMES
SUITES_FILE = Path(__file__).with_name("suites.toml")

# The columns that identify a config (resume, compare and merge match rows on them).
KEY_FIELDS = ("model", "backend", "mode", "device", "dtype", "batch_size", "channels_last", "kernels", "input_size",
              "compile_mode", "timer")
# The key columns a results file must have; files written before the compile-mode and timer axes lack those two, and
# their rows read as the defaults (the mode torch.compile ran then, and back-to-back, or flushed where the old timer
# string says so).
FILE_KEY_FIELDS = KEY_FIELDS[:-2]


@dataclass(frozen=True, order=True)
class Config:
    """One point of a sweep. ``kernels``: for the triton backend, ``"all"`` or one kernel name; else ``""``.
    ``input_size``: square input side, 0 = the model's default. ``compile_mode``: torch.compile's mode for the
    compiled backends (``""`` otherwise). ``timer``: the timing regime (one of :data:`TIMERS`)."""

    model: str
    backend: str
    mode: str
    device: str
    dtype: str
    batch_size: int
    channels_last: bool = False
    kernels: str = ""
    input_size: int = 0
    compile_mode: str = ""
    timer: str = "back-to-back"

    def __post_init__(self) -> None:
        # One spelling of torch.compile's default mode for the compiled backends, however the config was made
        # (expand, from_dict, or directly), so keys built in code and keys read back from a file agree.
        if self.backend in COMPILED_BACKENDS and not self.compile_mode:
            object.__setattr__(self, "compile_mode", "default")

    def key(self) -> tuple[str, ...]:
        return tuple(_key_str(getattr(self, f)) for f in KEY_FIELDS)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """A config from a dict or a result row read back as strings; :class:`BadInputError` names a bad field."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for f in ("model", "backend", "mode", "device", "dtype", "batch_size"):
            if kw.get(f) in (None, ""):
                raise BadInputError(f"field {f!r} is missing or empty")
        for f in ("model", "backend", "mode", "device", "dtype"):
            kw[f] = str(kw[f])
        kw["batch_size"] = _as_int("batch_size", kw["batch_size"], minimum=1)
        kw["input_size"] = _as_int("input_size", kw.get("input_size") or 0, minimum=0)
        kw["channels_last"] = _as_bool(kw.get("channels_last", False))
        kw["kernels"] = str(kw.get("kernels") or "")
        kw["compile_mode"] = str(kw.get("compile_mode") or "")
        kw["timer"] = _legacy_timer(kw.get("timer"))
        return cls(**kw)

    def label(self) -> str:
        extra = " cl" if self.channels_last else ""
        extra += f" k={self.kernels}" if self.kernels not in ("", "all") else ""
        extra += f" {self.compile_mode}" if self.compile_mode not in ("", "default") else ""
        extra += f" timer={self.timer}" if self.timer != "back-to-back" else ""
        size = f" {self.input_size}px" if self.input_size else ""
        return f"{self.model} {self.backend} {self.mode} {self.device} {self.dtype} b{self.batch_size}{size}{extra}"


def _legacy_timer(v: Any) -> str:
    """A regime name; files written before the axis existed hold the timer's description in ``timer``: a flushed
    ``do_bench`` one reads as ``flushed``, anything else (the CPU's Timer, a CUDA event loop) as ``back-to-back``."""
    v = "" if v is None else str(v)
    if v in TIMERS:
        return v
    return "flushed" if "flush" in v.lower() else "back-to-back"


def _as_int(name: str, v: Any, minimum: int) -> int:
    """An integer field of a config (``3``, ``"3"``, ``3.0``); anything else names the field."""
    try:
        f = float(v)
        ok = not isinstance(v, bool) and f.is_integer() and f >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise BadInputError(f"field {name!r} must be an integer >= {minimum}, got {v!r}")
    return int(f)


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
    allowed = set(_SUITE_TYPES)
    for name, s in suites.items():
        if not isinstance(s, dict):
            raise BadInputError(f"{path}: suite {name!r} must be a [suite.{name}] table, got {s!r}")
        unknown = set(s) - allowed
        if unknown:
            raise BadInputError(f"{path}: suite {name!r} has unknown keys {sorted(unknown)}; valid: {sorted(allowed)}")
        for k, v in s.items():
            check, what = _SUITE_TYPES[k]
            if not check(v):
                raise BadInputError(f"{path}: suite {name!r} key {k!r} must be {what}, got {v!r}")
    return suites


def _is_int(v: Any, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _is_list(v: Any, item: Any) -> bool:
    return isinstance(v, list) and all(item(x) for x in v)


# Each suite key's type, checked when the file is read (a wrong type would otherwise surface later as a traceback,
# or a string be iterated letter by letter): (check, description for the one-line error).
_SUITE_TYPES: dict[str, tuple[Any, str]] = {
    "description": (lambda v: isinstance(v, str), "a string"),
    "models": (lambda v: v == "all" or _is_list(v, lambda x: isinstance(x, str)), 'a list of model names or "all"'),
    "batch_sizes": (lambda v: _is_list(v, lambda x: _is_int(x, 1)), "a list of positive integers"),
    **{k: (lambda v: _is_list(v, lambda x: isinstance(x, str)), "a list of strings")
       for k in ("dtypes", "devices", "modes", "backends", "kernels")},
    "channels_last": (lambda v: _is_list(v, lambda x: isinstance(x, bool)), "a list of true/false"),
    "input_size": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "compile_modes": (lambda v: _is_list(v, lambda x: isinstance(x, str)), "a list of strings"),
    "timers": (lambda v: _is_list(v, lambda x: isinstance(x, str)), "a list of strings"),
    "compile_cache": (lambda v: v in ("cold", "warm"), '"cold" or "warm"'),
    "timeout_s": (_is_number, "a number of seconds >= 0"),
    "min_time_s": (_is_number, "a number of seconds >= 0"),
    "warmup_s": (_is_number, "a number of seconds >= 0"),
    "min_samples": (lambda v: _is_int(v, 3), "an integer >= 3"),
    "budget_s": (_is_number, "a number of seconds >= 0"),
    "max_config_s": (_is_number, "a number of seconds >= 0"),
    "isolate": (lambda v: isinstance(v, bool), "true or false"),
    "model_batch_sizes": (lambda v: isinstance(v, dict) and all(_is_list(x, lambda b: _is_int(b, 1))
                                                                for x in v.values()),
                          "a table of model = [positive integers]"),
    "model_input_size": (lambda v: isinstance(v, dict) and all(_is_int(x, 0) for x in v.values()),
                         "a table of model = integer >= 0"),
}


def expand(models: Iterable[str], batch_sizes: Iterable[int], dtypes: Iterable[str], devices: Iterable[str],
           modes: Iterable[str], backends: Iterable[str], channels_last: Iterable[bool] = (False,),
           kernels: Iterable[str] = ("all",), input_size: int = 0,
           model_batch_sizes: dict[str, list[int]] | None = None,
           model_input_size: dict[str, int] | None = None, compile_modes: Iterable[str] = ("default",),
           timers: Iterable[str] = ("back-to-back",)) -> list[Config]:
    """Cartesian product of the axes, validated. ``kernels`` applies to the kernel backends only, ``compile_modes``
    to the compiled backends only."""
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
    compile_modes, timers = list(compile_modes), list(timers)
    for cm in compile_modes:
        validate_choice("compile mode", cm, list(COMPILE_MODES))
    for t in timers:
        validate_choice("timer", t, list(TIMERS))
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
        for bs, tm in itertools.product(per_model_bs.get(model, batch_sizes), timers):
            for k, cm in itertools.product(kernels if be in KERNEL_BACKENDS else [""],
                                           compile_modes if be in COMPILED_BACKENDS else [""]):
                out.append(Config(model, be, mode, dev, dt, int(bs), bool(cl), k, size, cm, tm))
    return out


# Relative cost of each axis value, cheapest first (within a model). fp32 leads: on CPUs without native bf16/fp16 the
# low-precision configs are the slow ones, and on a GPU the order within a model matters little.
_COST_ORDER: dict[str, tuple[str, ...]] = {
    "mode": MODES, "backend": ("eager", "triton", "compile"),
    "dtype": ("fp32", "tf32", "bf16-pure", "fp16-pure", "bf16", "fp16"),
    "compile_mode": ("", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune"),
}


def _cost_key(c: Config) -> tuple[Any, ...]:
    rank = lambda axis, v: _COST_ORDER[axis].index(v) if v in _COST_ORDER[axis] else len(_COST_ORDER[axis])  # noqa: E731
    return (rank("mode", c.mode), c.batch_size, c.input_size, rank("dtype", c.dtype), rank("backend", c.backend),
            rank("compile_mode", c.compile_mode), c.channels_last, c.device, c.kernels, c.timer)


def cheapest_first(configs: Sequence[Config]) -> list[Config]:
    """Reorder for a time budget: every model's cheapest config first, then every model's second, and so on, so a
    budget that runs out leaves each model measured at least once (models keep their order within a round)."""
    models = list(dict.fromkeys(c.model for c in configs))
    per: dict[str, list[Config]] = {m: sorted((c for c in configs if c.model == m), key=_cost_key) for m in models}
    rounds = max((len(v) for v in per.values()), default=0)
    return [per[m][i] for i in range(rounds) for m in models if i < len(per[m])]

"""Numerics checker for the Triton kernels (``python -m bench kernels --check``).

One *case* is (kernel, shape, dtype, direction). For a case we build the inputs with ``spec.make_inputs`` in the
dtype and run three providers on independent copies of them:

* ``ref64``: ``spec.reference`` on the same inputs upcast to float64 (exact: every fp32/fp16/bf16 value is a float64);
* ``eager``: ``spec.reference`` in the case's dtype (what PyTorch itself achieves at that precision);
* ``kernel``: ``spec.triton_fn`` (the Triton path, forced), twice: once with every buffer allocated through
  :func:`kernels._triton.empty_output` pre-filled with NaN, once with +1e4 (:data:`POISONS`).

``forward`` compares the outputs; ``backward`` compares the gradients of ``sum(out * g)`` (a vector-Jacobian product
with a fixed random ``g`` rounded to the dtype) with respect to each of ``KernelInputs.grad_args``. Each compared
tensor becomes one row. A row passes when, for *both* poisoned runs, :func:`kernels.testing.passes` holds::

    max|y - y64| <= MULTIPLE[dt] * max|y_eager - y64| + ATOL[dt]   or   ‖y - y64‖_F / ‖y64‖_F <= RTOL_FRO[dt]

with no NaN/Inf where ``y64`` is finite, and in addition:

* the two poisoned runs are bitwise identical (an element the kernel never writes keeps its poison, so it differs;
  a kernel spec may set ``deterministic = False`` for atomics-based reductions, then only both runs must pass);
* the kernel returned the same shape and dtype as eager;
* the kernel's input tensors (and ``g``) are bitwise unchanged after the call;
* at least one Triton kernel was launched (counted by patching Triton's launch entry points), unless every output
  is empty — a ``triton_fn`` that quietly runs the reference must not pass as a kernel.

Statuses: ``pass``; ``fail`` (a rule above is broken); ``error`` (an exception in a dtype the kernel declares in
``spec.dtypes``); ``unsupported`` (an exception in an undeclared dtype, e.g. float64 where the backend cannot do it,
or ``backward`` for a kernel without differentiable arguments).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from kernels._triton import HAS_TRITON, dispatch_path, launch_classes, poison_outputs
from kernels.registry import KernelInputs, KernelSpec
from kernels.testing import ErrorStats, error_stats, passes, tolerance

__all__ = [
    "CHECK_COLUMNS",
    "DIRECTIONS",
    "DTYPES",
    "POISONS",
    "TritonUnavailableError",
    "check_case",
    "count_triton_launches",
    "dtype_name",
    "iter_cases",
    "require_triton_path",
]

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
}
DIRECTIONS = ("forward", "backward")
# NaN shows an unwritten element as non-finite; the finite second value catches a kernel that writes NaN itself
# by accident *and* one that reads its output buffer before writing it (the two runs then differ).
POISONS = (float("nan"), 1.0e4)

CHECK_COLUMNS = [
    "kernel", "shape", "dtype", "direction", "output", "path", "launches", "max_abs_err", "rel_fro_err",
    "eager_max_abs_err", "eager_rel_fro_err", "tol_max_abs", "tol_rel_fro", "tolerance", "status", "message",
    "seed", "device", "shape_params", "elapsed_s",
]


class TritonUnavailableError(RuntimeError):
    """The Triton path cannot run on this device in this process (the check would only test the reference)."""


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    return str(dtype).replace("torch.", "")


def require_triton_path(device: torch.device | str) -> str:
    """The Triton path for ``device`` (``"triton"`` or ``"triton-interpret"``), or raise with what to do instead."""
    path = dispatch_path(device)
    if path != "reference":
        return path
    dev = torch.device(device)
    if not HAS_TRITON:
        why = "Triton is not installed"
    elif dev.type == "cpu":
        why = ("TRITON_INTERPRET=1 was not set before Triton was imported, so CPU tensors cannot run Triton "
               "kernels; rerun as `TRITON_INTERPRET=1 python -m bench kernels --check`")
    else:
        why = f"Triton cannot run on {dev} here (is TRITON_INTERPRET set on a GPU machine?)"
    raise TritonUnavailableError(f"the kernel check needs the Triton path on {dev}: {why}; without it only the "
                                 "PyTorch reference would run, which checks nothing")


# --- counting Triton launches ---------------------------------------------------------------------------------------

_ACTIVE: list[list[int]] = []  # one running count per open count_triton_launches() block
_PATCHED: dict[type, Callable[..., Any]] = {}


def _counting(orig: Callable[..., Any]) -> Callable[..., Any]:
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("warmup", False):
            for c in _ACTIVE:
                c[0] += 1
        return orig(self, *args, **kwargs)

    return run


@contextlib.contextmanager
def count_triton_launches() -> Iterator[list[int]]:
    """Count Triton grid launches inside the block; yields a one-element list holding the running count.

    Wraps the ``run`` method of Triton's JIT and interpreter kernel classes (every ``kernel[grid](...)`` goes through
    it, autotuned kernels included) while at least one block is open; warm-up/precompile calls are not counted.
    Blocks nest. Yields ``[-1]`` without Triton. Keep it out of timed regions (it adds a Python call per launch).
    """
    if not HAS_TRITON:
        yield [-1]
        return
    counter = [0]
    if not _ACTIVE:
        for cls in launch_classes():
            _PATCHED[cls] = cls.__dict__["run"]
            cls.run = _counting(_PATCHED[cls])  # type: ignore[attr-defined]
    _ACTIVE.append(counter)
    try:
        yield counter
    finally:
        del _ACTIVE[next(i for i, c in enumerate(_ACTIVE) if c is counter)]  # by identity: [0] == [0]
        if not _ACTIVE:
            for cls, orig in _PATCHED.items():
                cls.run = orig  # type: ignore[attr-defined]
            _PATCHED.clear()


# --- tensor plumbing ------------------------------------------------------------------------------------------------


def _map(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_map(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _tensors(obj: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    _map(obj, out.append)
    return out


def _copy(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An independent copy with the same strides (channels_last and strided views stay as they are)."""
    dt = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
    out = torch.empty_strided(t.size(), t.stride(), dtype=dt, device=t.device)
    with torch.no_grad():
        out.copy_(t.detach())
    return out


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise-equal values, NaN equal to NaN (``torch.equal`` says NaN != NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return torch.equal(a, b)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    d = (a.detach().double() - b.detach().double()).abs()
    return float(torch.nan_to_num(d, nan=float("inf")).max()) if d.numel() else 0.0


def _named_outputs(result: Any) -> list[tuple[str, torch.Tensor]]:
    if isinstance(result, torch.Tensor):
        return [("out", result)]
    if isinstance(result, (tuple, list)):
        return [(f"out{i}", t) for i, t in enumerate(result) if isinstance(t, torch.Tensor)]
    if isinstance(result, Mapping):
        return [(str(k), t) for k, t in result.items() if isinstance(t, torch.Tensor)]
    raise TypeError(f"kernel returned {type(result).__name__}, expected a tensor or a tuple/dict of tensors")


def _arg_names(fn: Callable[..., Any], n: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"arg{i}" for i in range(n)]


def grad_forward(fn: Callable[..., Any], args: list[Any], kwargs: Mapping[str, Any], grad_idx: Sequence[int]
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Make ``args[i]`` (``i`` in ``grad_idx``) fresh autograd leaves in place, run ``fn`` once and return
    ``(its outputs that require grad, the leaves)`` — the forward half of every backward case."""
    for i in grad_idx:
        args[i] = args[i].detach().requires_grad_(True)
    outs = [t for _, t in _named_outputs(fn(*args, **kwargs)) if t.requires_grad]
    if not outs:
        raise RuntimeError("no output requires grad: the function is not differentiable in its grad_args")
    return outs, [args[i] for i in grad_idx]


def _differentiable(inputs: KernelInputs) -> list[int]:
    return [i for i in inputs.grad_args
            if isinstance(inputs.args[i], torch.Tensor) and inputs.args[i].is_floating_point()]


def _make_grad_outputs(outputs: list[tuple[str, torch.Tensor]], dtype: torch.dtype, seed: int) -> dict[str, Any]:
    """The fixed random ``g`` per floating output, generated on the CPU (device-independent) and rounded to dtype."""
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    gs: dict[str, Any] = {}
    for name, t in outputs:
        if t.is_floating_point():
            gs[name] = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(dtype).to(t.device)
    return gs


class _Run:
    """What one provider returned: compared tensors by name, plus the argument tensors it was handed."""

    def __init__(self, tensors: dict[str, torch.Tensor | None], seen: list[torch.Tensor], launches: int = 0) -> None:
        self.tensors = tensors
        self.seen = seen
        self.launches = launches


def _run(fn: Callable[..., Any], inputs: KernelInputs, direction: str, names: list[str],
         gs: Mapping[str, torch.Tensor] | None, upcast: bool) -> _Run:
    """Run ``fn`` on fresh copies of ``inputs`` (upcast to float64 if asked) in ``direction``."""
    dt = torch.float64 if upcast else None
    args = list(_map(inputs.args, lambda t: _copy(t, dt)))
    kwargs = _map(inputs.kwargs, lambda t: _copy(t, dt))
    if direction == "forward":
        with torch.no_grad():
            outs = _named_outputs(fn(*args, **kwargs))
        return _Run({name: t.detach() for name, t in outs}, _tensors((args, kwargs)))
    idx = _differentiable(inputs)
    leaves = []
    for i in idx:
        args[i] = args[i].detach().requires_grad_(True)
        leaves.append(args[i])
    g_copies = {k: _copy(v, dt) for k, v in (gs or {}).items()}
    with torch.enable_grad():
        outs = [(n, t) for n, t in _named_outputs(fn(*args, **kwargs)) if n in g_copies and t.requires_grad]
        if not outs:
            raise RuntimeError("no output requires grad: the function is not differentiable in its grad_args")
        grads = torch.autograd.grad([t for _, t in outs], leaves, grad_outputs=[g_copies[n] for n, _ in outs],
                                    allow_unused=True)
    tensors = {f"grad_{names[i]}": (g.detach() if g is not None else None) for i, g in zip(idx, grads)}
    return _Run(tensors, _tensors((args, kwargs)) + list(g_copies.values()))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _shape_json(shape: Mapping[str, Any]) -> str:
    return json.dumps(dict(shape), sort_keys=True, default=str)


# --- one case ---------------------------------------------------------------------------------------------------------


def check_case(spec: KernelSpec, shape_name: str, shape: Mapping[str, Any], dtype: torch.dtype, direction: str,
               device: torch.device | str = "cpu", seed: int = 0, require_launch: bool = True) -> list[dict[str, Any]]:
    """Check one (kernel, shape, dtype, direction); returns one row per compared tensor (see the module docstring).

    Raises:
        TritonUnavailableError: the Triton path cannot run on ``device`` in this process.
        ValueError: unknown ``direction``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    path = require_triton_path(device)
    t0 = time.perf_counter()
    declared = dtype in spec.dtypes
    base = {"kernel": spec.name, "shape": shape_name, "dtype": dtype_name(dtype), "direction": direction,
            "path": path, "seed": seed, "device": str(torch.device(device)), "shape_params": _shape_json(shape)}

    def finish(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        elapsed = round(time.perf_counter() - t0, 3)
        return [{**base, **r, "elapsed_s": elapsed} for r in rows]

    def exception_row(stage: str, e: BaseException) -> list[dict[str, Any]]:
        status = "error" if declared else "unsupported"
        extra = "" if declared else f" ({dtype_name(dtype)} is not in spec.dtypes)"
        msg = f"{stage} raised {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return finish([{"output": "-", "status": status, "message": msg[:400] + extra}])

    try:
        inputs = spec.make_inputs(shape, dtype, device, seed)
    except Exception as e:
        return exception_row("make_inputs", e)
    names = _arg_names(spec.reference, len(inputs.args))
    if direction == "backward" and not _differentiable(inputs):
        return finish([{"output": "-", "status": "unsupported",
                        "message": "no differentiable argument (KernelInputs.grad_args is empty)"}])
    snapshot = [_copy(t) for t in _tensors((inputs.args, inputs.kwargs))]  # what the kernel must leave unchanged

    # float64 reference and eager in the dtype (eager also tells us the output names and shapes for g).
    try:
        gs = None
        if direction == "backward":
            with torch.no_grad():
                probe = _named_outputs(spec.reference(*_map(inputs.args, _copy), **_map(inputs.kwargs, _copy)))
            gs = _make_grad_outputs(probe, dtype, seed)
            snapshot += [_copy(g) for g in gs.values()]  # the kernel's backward must not write into g either
        ref = _run(spec.reference, inputs, direction, names, gs, upcast=True)
    except Exception as e:
        return exception_row("the float64 reference", e)
    try:
        eager = _run(spec.reference, inputs, direction, names, gs, upcast=False)
    except Exception as e:
        return exception_row(f"the eager reference in {dtype_name(dtype)}", e)

    # The kernel, once per poison.
    runs: list[_Run] = []
    for poison in POISONS:
        try:
            with poison_outputs(poison), count_triton_launches() as launches:
                run = _run(spec.triton_fn, inputs, direction, names, gs, upcast=False)
            run.launches = launches[0]
        except Exception as e:
            return exception_row(f"the kernel (poison {poison})", e)
        runs.append(run)

    # Case-level findings (they fail every row of the case).
    case_problems: list[str] = []
    for run, poison in zip(runs, POISONS):
        changed = [i for i, (a, b) in enumerate(zip(run.seen, snapshot)) if not _same_bits(a, b)]
        if changed:
            case_problems.append(f"the kernel modified its input tensor(s) #{changed} (poison {poison})")
            break
    all_empty = all(t is None or t.numel() == 0 for t in runs[0].tensors.values())
    if require_launch and runs[0].launches == 0 and not all_empty:
        case_problems.append("no Triton kernel was launched: triton_fn ran something else (a fallback?)")
    deterministic = getattr(spec, "deterministic", True)

    tol = tolerance(dtype)
    rows: list[dict[str, Any]] = []
    for name, r64 in ref.tensors.items():
        problems = list(case_problems)
        e_t = eager.tensors.get(name)
        k_ts = [run.tensors.get(name) for run in runs]
        row: dict[str, Any] = {"output": name, "launches": runs[0].launches,
                               "tolerance": f"(max_abs <= {tol.multiple:g}*eager + {tol.atol:g} or rel_fro <= "
                                            f"{tol.rtol_fro:g}) and rel_fro <= {tol.fro_cap:g}",
                               "tol_rel_fro": tol.rtol_fro}
        if r64 is None or e_t is None or any(k is None for k in k_ts):
            if r64 is None and all(k is None for k in k_ts):
                rows.append({**row, "status": "pass", "message": "no gradient flows to this argument"})
            else:
                rows.append({**row, "status": "fail", "message": "gradient is None in "
                             + ", ".join(n for n, t in (("ref64", r64), ("eager", e_t), ("kernel", k_ts[0]))
                                         if t is None)})
            continue
        k0 = k_ts[0]
        if k0.shape != r64.shape or k_ts[1].shape != r64.shape:
            rows.append({**row, "status": "fail",
                         "message": f"shape {tuple(k0.shape)}, expected {tuple(r64.shape)}"})
            continue
        if k0.dtype != e_t.dtype:
            problems.append(f"dtype {dtype_name(k0.dtype)}, eager returns {dtype_name(e_t.dtype)}")
        eager_stats = error_stats(e_t, r64)
        stats = [error_stats(k, r64) for k in k_ts]
        worst = ErrorStats(max(s.max_abs for s in stats), max(s.rel_fro for s in stats),
                           max(s.nonfinite for s in stats))
        for s, poison in zip(stats, POISONS):
            if not passes(s, eager_stats, dtype):
                what = (f"{s.nonfinite} non-finite element(s) where the reference is finite" if s.nonfinite
                        else f"rel_fro {_fmt(s.rel_fro)} > the {dtype_name(dtype)} cap {_fmt(tol.fro_cap)} "
                             f"(max_abs {_fmt(s.max_abs)})"
                        if s.rel_fro > tol.fro_cap
                        else f"max_abs {_fmt(s.max_abs)} > {_fmt(tol.multiple * eager_stats.max_abs + tol.atol)} "
                             f"and rel_fro {_fmt(s.rel_fro)} > {_fmt(tol.rtol_fro)}")
                problems.append(f"poison {poison}: {what}")
        note = ""
        if not _same_bits(k_ts[0], k_ts[1]):
            diff = _max_diff(k_ts[0], k_ts[1])
            if deterministic:
                problems.append(f"the NaN- and 1e4-poisoned runs differ (max |diff| {_fmt(diff)}): unwritten "
                                "elements, or a nondeterministic kernel (set spec.deterministic = False)")
            else:
                note = f"; runs differ by {_fmt(diff)} (nondeterministic kernel)"
        row.update({
            "max_abs_err": worst.max_abs, "rel_fro_err": worst.rel_fro,
            "eager_max_abs_err": eager_stats.max_abs, "eager_rel_fro_err": eager_stats.rel_fro,
            "tol_max_abs": tol.multiple * eager_stats.max_abs + tol.atol,
        })
        if problems:
            rows.append({**row, "status": "fail", "message": "; ".join(problems)})
        else:
            by_eager = worst.max_abs <= tol.multiple * eager_stats.max_abs + tol.atol
            rule = (f"within {tol.multiple:g}x eager's max_abs" if by_eager
                    else f"within the {dtype_name(dtype)} rel_fro bound")
            rows.append({**row, "status": "pass", "message": rule + note})
    return finish(rows)


# --- many cases ---------------------------------------------------------------------------------------------------


def iter_cases(specs: Sequence[KernelSpec], dtypes: Sequence[torch.dtype], directions: Sequence[str],
               shape_names: Sequence[str] | None = None, real_shapes: bool = False, by_rank: bool = False
               ) -> Iterator[tuple[KernelSpec, str, Mapping[str, Any], torch.dtype, str]]:
    """Every (spec, shape name, shape, dtype, direction) to check, in a stable order.

    ``shape_names`` filters by name (a name that one kernel lacks is skipped for it); ``real_shapes`` picks
    ``spec.shapes`` (the GPU-sized ones) instead of ``spec.test_shapes``. ``by_rank`` orders by (each kernel's shape
    rank, dtype, direction), kernels interleaved: every kernel's first shape in the first dtype forward, then
    backward, then the next dtype..., before any kernel's second shape — so a run cut short by a time budget has
    covered every kernel in the leading dtype first. Otherwise kernel by kernel, shape by shape.
    """
    cases = []
    for spec in specs:
        shapes = spec.shapes if real_shapes else spec.test_shapes
        picked = [(n, sh) for n, sh in shapes.items() if shape_names is None or n in shape_names]
        for rank, (shape_name, shape) in enumerate(picked):
            for i, dtype in enumerate(dtypes):
                for j, direction in enumerate(directions):
                    cases.append(((rank, i, j), spec, shape_name, shape, dtype, direction))
    if by_rank:
        cases.sort(key=lambda c: c[0])  # stable: the kernels' order is kept within one (rank, dtype, direction)
    for _, *case in cases:
        yield tuple(case)  # type: ignore[misc]


def summarize_statuses(rows: Sequence[Mapping[str, Any]],
                       statuses: Sequence[str] = ("pass", "fail", "error", "unsupported")) -> dict[str, int]:
    """Rows per status: every one of ``statuses`` (0 if absent), then any other status seen."""
    counts = dict.fromkeys(statuses, 0)
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def is_failure(row: Mapping[str, Any]) -> bool:
    """Rows that make ``--check`` exit non-zero."""
    return row["status"] in ("fail", "error")

"""GPU microbenchmarks of each kernel against eager, ``torch.compile`` and vendor peers (``bench kernels --bench``).

For a case (kernel, shape, dtype, direction) every provider runs on the same inputs:

* ``triton``: ``spec.triton_fn`` (the Triton path, forced; a run that launches no Triton kernel is an error row);
* ``eager``: ``spec.reference``; ``compile``: ``torch.compile(spec.reference)`` (dynamo is reset before each case,
  so one compiled graph per case and the recompile limit can never silently send it back to eager);
* each ``spec.peers`` entry (e.g. ``torchvision.ops.roi_align``, SDPA with a bias, cuDNN via ``F.conv2d``).

Timing, per provider:

* ``compile_ms``: the first call alone, wall clock between two ``cuda.synchronize()`` — Triton JIT, autotuning,
  Inductor compilation, cuDNN heuristics. It never enters the samples.
* ``p50/p20/p80_us``: ``triton.testing.do_bench(fn, warmup, rep, return_mode="all")`` — CUDA events around every
  call, the 256 MB L2-flush buffer zeroed before each call (outside the events), warm-up excluded; quantiles by
  linear interpolation (:func:`bench.timing.summarize`, the same rule ``do_bench``'s ``quantiles=`` uses).
* ``samples_us``: the flushed samples themselves (not a CSV column: ``bench kernels --out DIR`` appends them to
  ``DIR/kernels_samples.jsonl``, which ``bench compare`` bootstraps).
* ``warm_p50_us``: the same loop without the flush (inputs may sit in L2; the 50 MB L2 of an H100 holds many of the
  test-sized tensors). For a few-µs kernel both figures include the launch gap between the events.
* ``graph_p50_us``: no launch gaps, cold L2: ``n`` (flush, call) pairs captured in one CUDA graph, minus a graph of
  the ``n`` flushes alone, over ``n`` (:func:`bench.cuda_timing.graph_flushed_per_call`; tritonbench's cudagraph
  mode with the cache cleared inside the graph). A provider that cannot be captured (a host sync, an allocation
  pattern the capture refuses) leaves it empty and says why in ``graph_note``; its other figures stand.

``forward`` times ``fn(*args)`` with autograd off; ``backward`` times ``torch.autograd.grad(out, grad_args, g,
retain_graph=True)`` on one recorded forward (so the forward is not in the figure). Derived columns: TFLOP/s from
``spec.flops`` (backward: ``spec.flops_backward`` if a spec defines it, else 2× forward — a grad-input and a
grad-weight product per forward product), GB/s from ``spec.min_bytes``/``min_bytes_backward``, % of the device peak
(:mod:`.peaks`), the roofline floor ``max(bytes / peak GB/s, flops / peak FLOP/s)``, and speedups of every provider
over eager, compile and the best vendor peer. A provider that fails becomes a row with its status (``oom``,
``compile_error``, ``unsupported``, ``error``) and the sweep goes on.

Accuracy, per provider, after its timing (not inside it): one more call on fresh copies of the case's inputs,
compared with ``spec.reference`` in float64 exactly as ``bench kernels --check`` compares the kernel (the same
inputs, the same ``g`` for backward, the same rule and table, :func:`kernels.testing.passes`: within
``MULTIPLE[dt]`` x eager's own max-abs error + ``ATOL[dt]``, or ``RTOL_FRO[dt]``, no NaN/Inf). ``max_abs_err`` and
``rel_fro_err`` are the worst over the compared tensors. A provider that fails the rule gets status
``inaccurate`` (timing kept) and takes no part in the speedups, so no speedup is quoted over a peer that computed
something else.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from bench.cuda_timing import CudaApi, graph_flushed_per_call
from bench.timing import summarize
from kernels._triton import dispatch_path
from kernels.registry import KernelSpec
from kernels.testing import error_stats, passes, tolerance

from .check import (
    _arg_names,
    _differentiable,
    _make_grad_outputs,
    _named_outputs,
    _run,
    count_triton_launches,
    dtype_name,
    grad_forward,
)
from .peaks import DevicePeak

__all__ = ["BENCH_COLUMNS", "BUILTIN_PROVIDERS", "bench_case", "provider_names", "add_speedups", "derive_metrics",
           "backward_flops"]

BUILTIN_PROVIDERS = ("triton", "eager", "compile")

BENCH_COLUMNS = [
    "kernel", "shape", "dtype", "direction", "provider", "status", "message", "p50_us", "p20_us", "p80_us",
    "warm_p50_us", "graph_p50_us", "graph_note", "n_samples", "compile_ms", "launches", "flops", "bytes", "tflops",
    "gbps", "pct_peak_bw",
    "pct_peak_flops", "floor_us", "speedup_vs_eager", "speedup_vs_compile", "speedup_vs_best_peer", "best_peer",
    "peak_gbps", "peak_tflops", "copy_gbps", "peak_source", "path", "device", "shape_params", "timing",
    "max_abs_err", "rel_fro_err", "acc_tolerance",
]

_TIMING = ("do_bench(return_mode='all'): cuda events, L2 flushed per call; warm: events, no flush; graph: CUDA graph "
           "of (flush, call) pairs minus a graph of the flushes")


def provider_names(spec: KernelSpec) -> list[str]:
    return [*BUILTIN_PROVIDERS, *spec.peers]


def backward_flops(spec: KernelSpec, shape: Mapping[str, Any]) -> int:
    """Backward FLOPs: ``spec.flops_backward(shape)`` if the spec has one, else 2× the forward (see module doc)."""
    fb = getattr(spec, "flops_backward", None)
    return int(fb(shape)) if fb is not None else 2 * int(spec.flops(shape))


def derive_metrics(p50_ms: float, flops: int | None, nbytes: int | None, peak: DevicePeak | None,
                   dtype: str) -> dict[str, float | None]:
    """Achieved rates and roofline figures for one latency (ms); None where an input is missing."""
    out: dict[str, float | None] = {"tflops": None, "gbps": None, "pct_peak_bw": None, "pct_peak_flops": None,
                                    "floor_us": None}
    if not p50_ms or p50_ms <= 0:
        return out
    s = p50_ms * 1e-3
    if flops is not None:
        out["tflops"] = flops / s / 1e12
    if nbytes is not None:
        out["gbps"] = nbytes / s / 1e9
    if peak is None:
        return out
    peak_tf = peak.tflops_for(dtype)
    if out["gbps"] is not None and peak.gbps:
        out["pct_peak_bw"] = 100.0 * out["gbps"] / peak.gbps
    if out["tflops"] is not None and peak_tf:
        out["pct_peak_flops"] = 100.0 * out["tflops"] / peak_tf
    floors = []
    if nbytes is not None and peak.gbps:
        floors.append(nbytes / (peak.gbps * 1e9))
    if flops is not None and peak_tf:
        floors.append(flops / (peak_tf * 1e12))
    if floors:
        out["floor_us"] = max(floors) * 1e6
    return out


def add_speedups(rows: list[dict[str, Any]], peers: Sequence[str]) -> None:
    """Fill ``speedup_vs_eager/compile/best_peer`` (= other's p50 / this p50) and ``best_peer`` in place.

    ``rows`` are the provider rows of one case; only rows with status ``ok`` take part.
    """
    p50 = {r["provider"]: r["p50_us"] for r in rows if r.get("status") == "ok" and r.get("p50_us")}
    ok_peers = {p: p50[p] for p in peers if p in p50}
    best = min(ok_peers, key=ok_peers.__getitem__) if ok_peers else None
    for r in rows:
        mine = p50.get(r["provider"])
        if mine is None:
            continue
        r["speedup_vs_eager"] = p50["eager"] / mine if "eager" in p50 else None
        r["speedup_vs_compile"] = p50["compile"] / mine if "compile" in p50 else None
        r["best_peer"] = best
        r["speedup_vs_best_peer"] = ok_peers[best] / mine if best is not None else None


def _classify(e: BaseException) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "oom"
    if isinstance(e, NotImplementedError):
        return "unsupported"
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"CompilationError", "OutOfResources", "BackendCompilerFailed", "InductorError"}:
        return "compile_error"
    return "error"


def _sync() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _warm_l2_ms(fn: Callable[[], Any], warmup_ms: float, rep_ms: float, api: CudaApi) -> list[float]:
    """Per-call CUDA-event times without an L2 flush (the do_bench loop minus ``clear_cache``)."""
    start, end = api.event(), api.event()
    start.record()
    for _ in range(5):
        fn()
    end.record()
    api.sync()
    est = max(start.elapsed_time(end) / 5, 1e-4)
    for _ in range(max(1, int(warmup_ms / est))):
        fn()
    n = max(1, int(rep_ms / est))
    starts = [api.event() for _ in range(n)]
    ends = [api.event() for _ in range(n)]
    for i in range(n):
        starts[i].record()
        fn()
        ends[i].record()
    api.sync()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


GRAPH_MAX_CALLS = 200  # calls per captured graph: enough to amortize the replay launch, few enough to capture fast


def _graph_us(fn: Callable[[], Any], est_ms: float, rep_ms: float, api: CudaApi) -> dict[str, Any]:
    """``graph_p50_us`` (see the module docstring), or why it could not be measured."""
    n = max(1, min(GRAPH_MAX_CALLS, int(rep_ms / max(est_ms, 1e-3))))
    try:
        per_call = graph_flushed_per_call(fn, api, n)
    except Exception as e:  # noqa: BLE001 - a capture failure is a fact about the provider, not a failed row
        return {"graph_p50_us": None, "graph_note": f"not capturable: {type(e).__name__}: {str(e).strip()[:160]}"}
    return {"graph_p50_us": summarize(per_call)["p50"] * 1e3, "graph_note": f"{n} calls per graph"}


def _time(fn: Callable[[], Any], warmup_ms: float, rep_ms: float, api: CudaApi | None = None,
          do_bench: Callable[..., Any] | None = None) -> dict[str, Any]:
    if do_bench is None:
        from triton.testing import do_bench
    api = api or CudaApi()
    cold_ms = [float(t) for t in do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")]
    cold = summarize(cold_ms)
    warm = summarize(_warm_l2_ms(fn, warmup_ms, rep_ms, api))
    graph = _graph_us(fn, warm["p50"], rep_ms, api)
    api.release()
    return {"p50_us": cold["p50"] * 1e3, "p20_us": cold["p20"] * 1e3, "p80_us": cold["p80"] * 1e3,
            "n_samples": int(cold["n"]), "warm_p50_us": warm["p50"] * 1e3, **graph,
            "samples_us": [t * 1e3 for t in cold_ms]}


def _provider_fn(spec: KernelSpec, provider: str) -> Callable[..., Any]:
    if provider == "triton":
        return spec.triton_fn
    if provider == "eager":
        return spec.reference
    if provider == "compile":
        torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no stale graphs
        return torch.compile(spec.reference, dynamic=False)
    return spec.peers[provider]


def _path(provider: str, device: torch.device) -> str:
    if provider == "triton":
        return dispatch_path(device)
    return {"eager": "reference", "compile": "inductor"}.get(provider, f"peer:{provider}")


def _bench_provider(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], grad_idx: list[int],
                    direction: str, warmup_ms: float, rep_ms: float, seed: int) -> dict[str, Any]:
    """Time one provider; returns the timing columns plus ``compile_ms`` and ``launches`` (of the first call).

    Launches are counted during the first call only: the counting wrapper must not add host time to the samples.
    """
    with count_triton_launches() as launches:
        _sync()
        t0 = time.perf_counter()
        if direction == "forward":
            def call() -> Any:
                with torch.no_grad():
                    return fn(*args, **kwargs)
        else:
            outs, leaves = grad_forward(fn, list(args), kwargs, grad_idx)
            gen = torch.Generator(device=outs[0].device).manual_seed(seed + 1)
            gs = [torch.randn(o.shape, generator=gen, device=o.device, dtype=o.dtype) for o in outs]

            def call() -> Any:
                return torch.autograd.grad(outs, leaves, grad_outputs=gs, retain_graph=True, allow_unused=True)

        call()
        _sync()
        first_ms = (time.perf_counter() - t0) * 1e3  # backward: the first forward + the first backward
        n_launch = launches[0]
    return {**_time(call, warmup_ms, rep_ms), "compile_ms": first_ms, "launches": n_launch}


class _Accuracy:
    """The float64 reference and eager-in-dtype runs of one case (computed on first use), and a provider's check."""

    def __init__(self, spec: KernelSpec, inputs: Any, dtype: torch.dtype, direction: str, seed: int) -> None:
        self.spec, self.inputs, self.dtype, self.direction, self.seed = spec, inputs, dtype, direction, seed
        self.names = _arg_names(spec.fn, len(inputs.args))
        self._ref: Any = None

    def _refs(self) -> Any:
        if self._ref is None:
            gs = None
            if self.direction == "backward":
                with torch.no_grad():
                    probe = _named_outputs(self.spec.reference(*self.inputs.args, **self.inputs.kwargs))
                gs = _make_grad_outputs(probe, self.dtype, self.seed)
            ref = _run(self.spec.reference, self.inputs, self.direction, self.names, gs, upcast=True)
            eager = _run(self.spec.reference, self.inputs, self.direction, self.names, gs, upcast=False)
            self._ref = (gs, ref, eager)
        return self._ref

    def check(self, fn: Callable[..., Any]) -> dict[str, Any]:
        """``max_abs_err``, ``rel_fro_err``, ``acc_tolerance`` and ``ok`` (the check's pass rule on every tensor)."""
        gs, ref, eager = self._refs()
        got = _run(fn, self.inputs, self.direction, self.names, gs, upcast=False)
        tol = tolerance(self.dtype)
        worst_abs = worst_rel = 0.0
        bad = []
        for name, r64 in ref.tensors.items():
            t, e = got.tensors.get(name), eager.tensors.get(name)
            if r64 is None or e is None:
                continue
            if t is None:
                bad.append(f"{name}: no output")
                continue
            s, se = error_stats(t, r64), error_stats(e, r64)
            worst_abs, worst_rel = max(worst_abs, s.max_abs), max(worst_rel, s.rel_fro)
            if not passes(s, se, self.dtype):
                bad.append(f"{name}: max_abs {s.max_abs:.3g} (eager {se.max_abs:.3g}), rel_fro {s.rel_fro:.3g}"
                           + (f", {s.nonfinite} NaN/Inf" if s.nonfinite else ""))
        return {"max_abs_err": worst_abs, "rel_fro_err": worst_rel, "ok": not bad, "why": "; ".join(bad),
                "acc_tolerance": f"max_abs <= {tol.multiple:g}*eager + {tol.atol:g} or rel_fro <= {tol.rtol_fro:g}"}


def bench_case(spec: KernelSpec, shape_name: str, shape: Mapping[str, Any], dtype: torch.dtype, direction: str,
               providers: Sequence[str], device: torch.device | str, peak: DevicePeak | None,
               warmup_ms: float = 25, rep_ms: float = 100, seed: int = 0) -> list[dict[str, Any]]:
    """Benchmark every provider on one case; one row per provider, speedups filled in (see the module doc)."""
    dev = torch.device(device)
    dt = dtype_name(dtype)
    flops = int(spec.flops(shape)) if direction == "forward" else backward_flops(spec, shape)
    if direction == "forward":
        nbytes: int | None = int(spec.min_bytes(shape, dtype))
    else:
        nbytes = int(spec.min_bytes_backward(shape, dtype)) if spec.min_bytes_backward is not None else None
    base = {"kernel": spec.name, "shape": shape_name, "dtype": dt, "direction": direction, "device": str(dev),
            "shape_params": json.dumps(dict(shape), sort_keys=True, default=str), "flops": flops, "bytes": nbytes,
            "timing": _TIMING}
    if peak is not None:
        base.update({"peak_gbps": peak.gbps, "peak_tflops": peak.tflops_for(dt), "copy_gbps": peak.copy_gbps,
                     "peak_source": peak.source})
    rows: list[dict[str, Any]] = []
    try:
        inputs = spec.make_inputs(shape, dtype, dev, seed)
    except Exception as e:
        status = _classify(e)
        return [{**base, "provider": p, "path": _path(p, dev), "status": status,
                 "message": f"make_inputs: {type(e).__name__}: {str(e)[:300]}"} for p in providers]
    grad_idx = _differentiable(inputs)
    acc = _Accuracy(spec, inputs, dtype, direction, seed)
    for p in providers:
        row = {**base, "provider": p, "path": _path(p, dev)}
        if direction == "backward" and not grad_idx:
            rows.append({**row, "status": "unsupported", "message": "no differentiable argument"})
            continue
        if p == "triton" and dtype not in spec.dtypes:
            rows.append({**row, "status": "unsupported", "message": f"{dt} is not in spec.dtypes"})
            continue
        try:
            fn = _provider_fn(spec, p)
            res = _bench_provider(fn, list(inputs.args), dict(inputs.kwargs), grad_idx, direction, warmup_ms,
                                  rep_ms, seed)
            row.update(res)
            if p == "triton" and res["launches"] == 0:
                row.update(status="error", message="no Triton kernel was launched: triton_fn ran something else")
            else:
                row.update(status="ok", message="")
                row.update(derive_metrics(res["p50_us"] * 1e-3, flops, nbytes, peak, dt))
                try:
                    a = acc.check(fn)
                except Exception as ae:  # a broken check must not hide a timed provider; say so
                    a = {"ok": True, "why": "", "acc_error": f"{type(ae).__name__}: {str(ae).strip()[:200]}"}
                    row["message"] = f"accuracy check failed: {a['acc_error']}"
                row.update({k: v for k, v in a.items() if k not in ("ok", "why", "acc_error")})
                if not a["ok"]:  # timed, but not the same function: no speedup is quoted for or against it
                    row.update(status="inaccurate", message=f"inaccurate vs float64: {a['why']}"[:400])
        except Exception as e:  # one provider failing must not stop the sweep
            row.update(status=_classify(e), message=f"{type(e).__name__}: {str(e).strip()[:300]}")
        rows.append(row)
        if row["status"] != "ok":
            gc.collect()  # the exception's frames held tensors (an OOM's would keep the memory); ~1 s, so only here
        torch.cuda.empty_cache()
    add_speedups(rows, list(spec.peers))
    return rows


def cuda_context_ok() -> bool:
    """False after a sticky CUDA error (illegal address, device assert): nothing more can run in this process."""
    try:
        torch.cuda.synchronize()
        torch.zeros(1, device="cuda").add_(1).item()
        return True
    except Exception:
        return False

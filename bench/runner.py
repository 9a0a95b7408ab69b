"""Measure one config: build, warm up, count FLOPs, time, measure memory; every failure becomes a row.

``measure(config)`` never raises for a failing config: it returns a row whose ``status`` is one of ``ok``, ``oom``,
``unsupported``, ``error``, ``timeout`` (``crashed`` is set by the isolating parent when a worker dies), or
``inaccurate`` (timed, but its outputs are too far from the float64 model; see :mod:`bench.accuracy`).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import signal
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import accuracy
from .config import COMPILED_BACKENDS, DTYPES, KERNEL_BACKENDS, LOWP, Config
from .flops import count_step_flops
from .machine_state import MACHINE_COLUMNS, snapshot
from .memory import measure_peak_memory, rss_bytes
from .timing import OverConfigBudget, time_fn

__all__ = ["RunOptions", "measure", "RESULT_COLUMNS", "STATUSES", "ConfigTimeout", "classify_exception",
           "count_config_flops", "graph_capturable"]

STATUSES = ("ok", "oom", "unsupported", "error", "timeout", "crashed", "inaccurate")

RESULT_COLUMNS = [
    "model", "backend", "mode", "device", "dtype", "batch_size", "channels_last", "kernels", "input_size",
    "compile_mode", "timer",  # torch.compile's mode (compiled backends), the timing regime (bench.timing.REGIMES)
    "rep",  # repetition id (run --repeats): a row per config and repetition, the config key unchanged
    "status", "error",
    "latency_ms_p50", "latency_ms_p20", "latency_ms_p80", "latency_ms_mean", "latency_ms_std", "n_samples",
    "inner_loops", "noisy", "compile_ms", "warmup_ms", "throughput_per_s", "timed_calls", "timed_ms",
    "gflops", "gmacs", "tflops_per_s", "params", "peak_mem_mb", "reserved_mem_mb", "mem_method",
    "flops_counter_warnings", "precision_note", "kernel_path", "kernels_switched", "timer_method",
    "device_name", "host", "torch_version", "triton_version", "torchvision_version", "cuda_version", "threads",
    "git_sha", "timestamp", "cpu_isa", "reduced_samples", *accuracy.ACCURACY_COLUMNS, *MACHINE_COLUMNS,
    "dynamo_graphs", "graph_breaks", "recompiles", "compile_cache", "cudnn_benchmark", "cudnn_deterministic",
    "rss_growth_mb", "flops_device",
]


@dataclass
class RunOptions:
    warmup_s: float = 0.2
    min_time_s: float = 1.0
    min_samples: int = 5
    timeout_s: float = 0.0  # 0 = no limit
    threads: int | None = None
    count_flops: bool = True
    profile_dir: str | None = None  # write a torch.profiler trace per config here (see bench.profile)
    allow_slow_fallback: bool = False  # measure a CPU low-precision config even where the probe sees a fallback path
    max_config_s: float = 0.0  # 0 = no cap; else fewer samples (>= 3, flagged) or `timeout` (see bench.timing)
    check_accuracy: bool = True  # compare the outputs with the float64 model after timing (bench.accuracy)
    compile_cache: str = "cold"  # "cold": a fresh Inductor/Triton cache per compiled config; "warm": the shared ones
    cudnn_benchmark: bool = True  # cuDNN autotuning on CUDA (as timm sets it); recorded per row


class ConfigTimeout(Exception):
    """A config ran past ``--timeout-s`` (raised by :func:`time_limit`); its row gets status ``timeout``."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`ConfigTimeout` after ``seconds`` (main thread, Unix). A C call in flight finishes first;
    ``--isolate`` kills the worker instead, which also stops a hung kernel."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise ConfigTimeout(f"exceeded the per-config time limit of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Unsupported(Exception):
    """A config this device/dtype cannot run, decided by a capability probe before any work."""


def classify_exception(e: BaseException) -> str:
    if isinstance(e, (ConfigTimeout, OverConfigBudget)):
        return "timeout"
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
        return "oom"
    if isinstance(e, (Unsupported, NotImplementedError)):
        return "unsupported"
    return "error"


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


def probe_support(cfg: Config, allow_slow_fallback: bool = False) -> str:
    """Raise :class:`Unsupported` if this device/dtype/backend cannot run here (no model built yet).

    A CPU fp16/bf16 config is probed (:func:`bench.cpu_isa.fallback_reason`): where the dtype takes a fallback
    path it is ``unsupported`` with the measured slowdown, unless ``allow_slow_fallback``. Returns a note on the
    probe for ``precision_note`` ("" when none ran).
    """
    note = ""
    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            raise Unsupported("no CUDA device")
        if LOWP.get(cfg.dtype, ("",))[0] == "bf16" and not torch.cuda.is_bf16_supported():
            raise Unsupported("bf16 needs compute capability >= 8.0")
        if cfg.dtype == "tf32" and torch.cuda.get_device_capability() < (8, 0):
            raise Unsupported("tf32 needs compute capability >= 8.0")
    elif cfg.dtype == "tf32":
        raise Unsupported("tf32 is a CUDA matmul mode; the CPU has none")
    elif cfg.dtype in LOWP:
        from .cpu_isa import fallback_reason

        reason, note = fallback_reason(*LOWP[cfg.dtype])
        if reason and not allow_slow_fallback:
            raise Unsupported(reason)
        if reason:
            note += " (fallback path, measured on request)"
    if cfg.backend in KERNEL_BACKENDS:
        from kernels import HAS_TRITON

        if not HAS_TRITON:
            raise Unsupported("triton is not installed")
    if cfg.timer != "back-to-back" and cfg.device != "cuda":
        raise Unsupported(f"the {cfg.timer} timer needs CUDA (an L2 flush / a CUDA graph); the CPU has back-to-back")
    if cfg.timer == "cudagraph" and cfg.compile_mode in ("reduce-overhead", "max-autotune"):
        raise Unsupported(f"compile mode {cfg.compile_mode} already runs the model in CUDA graphs (time it "
                          "back-to-back)")
    if cfg.timer == "cudagraph" and not graph_capturable(cfg.model):
        raise Unsupported(f"{cfg.model}'s step cannot be captured in a CUDA graph (data-dependent shapes or host-side "
                          "randomness: detection NMS and proposal sampling, masks, augmentations)")
    if cfg.timer == "cudagraph" and cfg.mode == "train":
        raise Unsupported("the cudagraph timer captures inference steps only (a train step's optimizer and "
                          "gradient buffers are not made capture-safe here; use compile mode reduce-overhead)")
    return note


def graph_capturable(model: str) -> bool:
    """Whether a model's inference step can be captured in a CUDA graph: classification and segmentation models have
    static shapes and no host-side randomness; detectors (NMS, proposal sampling: data-dependent shapes and host
    syncs) and the self-supervised models (random masks and augmentations drawn per step) do not."""
    import models

    return models.get_spec(model).task in ("classification", "segmentation")


def unsupported_row(cfg: Config, opts: RunOptions) -> dict[str, Any] | None:
    """The ``unsupported`` row :func:`measure` would write for ``cfg`` when :func:`probe_support` rejects it (no model
    built, nothing timed); None when the config would be measured. Probes are cached, so this is cheap."""
    try:
        probe_support(cfg, opts.allow_slow_fallback)
    except Unsupported as e:
        return {**cfg.as_dict(), "status": "unsupported", "error": _first_line(e), "threads": torch.get_num_threads()}
    return None


@contextlib.contextmanager
def precision(cfg: Config) -> Iterator[None]:
    """bf16/fp16 via autocast (the ``-pure`` modes are cast in :func:`build_step` instead); tf32 via the matmul
    precision flag (and cuDNN's); fp32 with TF32 off."""
    old_mm = torch.get_float32_matmul_precision()
    old_cudnn = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if cfg.dtype == "tf32" else "highest")
    torch.backends.cudnn.allow_tf32 = cfg.dtype == "tf32"
    try:
        if LOWP.get(cfg.dtype, ("", ""))[1] == "autocast":
            with torch.autocast(device_type=cfg.device, dtype=DTYPES[cfg.dtype]):
                yield
        else:
            yield
    finally:
        torch.set_float32_matmul_precision(old_mm)
        torch.backends.cudnn.allow_tf32 = old_cudnn


def _compiled_graphs() -> int:
    """Graphs torch._dynamo has compiled in this process (its own counter)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _graph_breaks() -> int:
    """Graph breaks torch._dynamo has reported in this process (its own counter, summed over reasons)."""
    return int(sum(torch._dynamo.utils.counters["graph_break"].values()))


class CompileFellBack(RuntimeError):
    """``backend=compile`` ran without torch.compile compiling a graph: the row would be an eager figure."""


def _build(spec: Any) -> torch.nn.Module:
    """The model with the same weights in every config and process: a detector's work depends on its weights (how many
    proposals survive NMS), so without a fixed seed two configs of one model would count, and do, different work."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return spec.builder()


def build_step(cfg: Config) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Build the model and a zero-arg ``step`` closure for ``cfg``; returns it with facts for the row."""
    import models

    spec = models.get_spec(cfg.model)
    device = torch.device(cfg.device)
    facts: dict[str, Any] = {}
    torch.manual_seed(0)  # the same weights for every config of a model (the accuracy gate's reference is shared)
    if cfg.backend in KERNEL_BACKENDS:
        from kernels import dispatch_path
        from kernels.registry import patch_model

        model = _build(spec)
        # FLOPs are counted on the unpatched model (see _count): the counters cannot see inside a Triton launch.
        # A copy, not a second build, so data-dependent work (detection proposals) is that of the same weights.
        facts["_unpatched"] = copy.deepcopy(model)
        names = None if cfg.kernels in ("", "all") else [cfg.kernels]
        switched = patch_model(model, names)
        facts["kernels_switched"] = switched
        facts["kernel_path"] = dispatch_path(device)
        if not any(switched.values()):
            raise Unsupported(f"{cfg.model} has no hot path for kernels={cfg.kernels or 'all'}")
    else:
        model = _build(spec)
    pure = LOWP.get(cfg.dtype, ("", ""))[1] == "cast"
    model = model.to(device, DTYPES[cfg.dtype]) if pure else model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    facts["params"] = sum(p.numel() for p in model.parameters())
    shape = spec.input_shape if not cfg.input_size else (spec.input_shape[0], cfg.input_size, cfg.input_size)
    batch = spec.make_batch(cfg.batch_size, shape, device=device)
    if pure:  # floating inputs only; targets (labels, boxes) stay as the loss expects them
        batch.inputs = batch.to(device, DTYPES[cfg.dtype]).inputs
    if cfg.channels_last:
        batch.inputs = tuple(x.contiguous(memory_format=torch.channels_last)
                             if isinstance(x, torch.Tensor) and x.dim() == 4 else x for x in batch.inputs)
    compiled = cfg.backend in ("compile", "compile-triton")
    if compiled:
        # Each config compiles as in a fresh process. Without this, every config of one model class adds to the same
        # code object's recompile count: past torch._dynamo's recompile limit (8) the model silently runs eagerly,
        # and a second batch size inherits a dynamic-shape graph instead of its own static one.
        torch._dynamo.reset()
        facts["_graphs_before"] = _compiled_graphs()
        facts["_breaks_before"] = _graph_breaks()
    # torch.compile's own name for its default mode is None; the others are passed as named.
    cmode = None if cfg.compile_mode in ("", "default") else cfg.compile_mode
    run_model = torch.compile(model, mode=cmode) if compiled else model
    facts["precision_note"] = {"fp32": "fp32 (TF32 off)", "tf32": "fp32 weights, TF32 matmul/conv",
                               "fp16": "autocast fp16", "bf16": "autocast bf16",
                               "fp16-pure": "pure fp16: model and inputs cast",
                               "bf16-pure": "pure bf16: model and inputs cast"}[cfg.dtype]

    if cfg.mode == "infer":
        model.eval()

        def step() -> Any:
            with torch.no_grad(), precision(cfg):
                return spec.forward(run_model, batch)

        def eager_step(m: torch.nn.Module) -> Any:
            return spec.forward(m, batch)
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step() -> Any:
            opt.zero_grad(set_to_none=True)
            with precision(cfg):
                loss = spec.loss(run_model, batch)
            loss.backward()
            opt.step()
            return loss.detach()

        def eager_step(m: torch.nn.Module) -> Any:
            return spec.loss(m, batch)

    facts["_model"], facts["_batch"], facts["_spec"], facts["_eager_step"] = model, batch, spec, eager_step
    facts["_run_model"] = run_model
    return step, facts


def flops_key(cfg: Config) -> tuple[Any, ...]:
    """What a FLOP count depends on. Counts are always taken on the CPU, on the unpatched eager fp32 model with the
    config's seeded batch, so device, backend, dtype, kernels, memory format, compile mode and timer share one."""
    return (cfg.model, cfg.mode, cfg.batch_size, cfg.input_size)


def count_config_flops(cfg: Config, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """FLOPs per sample of ``cfg``'s step, counted on the CPU: never on the benchmark device (it would spend its time
    and memory before timing, and could turn a row near the memory limit into ``oom``). The eager fp32 model without
    our kernels (the same math every backend runs; the counters cannot see inside a Triton launch), without autocast,
    on the batch the config runs (``make_batch`` draws it on the CPU from seed 0 and only then moves it, so a
    detector's data-dependent work is that of the config). A CPU fp32 eager/compile config counts its own model;
    every other config builds a CPU copy from seed 0 (the same weights)."""
    import models

    facts = facts or {}
    spec = models.get_spec(cfg.model)
    model = facts.pop("_unpatched", None)  # the kernel backends' unpatched copy, still on the CPU
    own = (cfg.device == "cpu" and model is None and facts.get("_model") is not None
           and LOWP.get(cfg.dtype, ("", ""))[1] != "cast")
    if own:
        model, step, inputs = facts["_model"], facts["_eager_step"], facts["_batch"].inputs
    else:
        if model is None:
            model = _build(spec)
        model.train(cfg.mode == "train")
        shape = spec.input_shape if not cfg.input_size else (spec.input_shape[0], cfg.input_size, cfg.input_size)
        batch = spec.make_batch(cfg.batch_size, shape, device="cpu")
        inputs = batch.inputs
        fwd = spec.forward if cfg.mode == "infer" else spec.loss
        step = lambda m: fwd(m, batch)  # noqa: E731
    fc = count_step_flops(lambda: step(model), model, inputs, backward=cfg.mode == "train")
    bs = cfg.batch_size
    return {"gflops": fc.flops / bs / 1e9, "gmacs": fc.macs / bs / 1e9 if fc.macs is not None else None,
            "flops_counter_warnings": fc.warnings, "flops_device": "cpu"}


def _inductor_cache(cfg: Config, opts: RunOptions) -> tuple[contextlib.AbstractContextManager[Any], str]:
    """The compile cache a config runs under, and what the row says of it. ``cold``: fresh Inductor and Triton cache
    directories for the config (``torch._inductor.utils.fresh_cache``, which also clears the in-memory caches), so
    ``compile_ms`` is what a first compile costs; ``warm``: the shared directories as they are (a rerun hits them)."""
    if cfg.backend not in COMPILED_BACKENDS and cfg.backend not in KERNEL_BACKENDS:
        return contextlib.nullcontext(), ""
    if opts.compile_cache == "warm":
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        d = cache_dir()
        state = "non-empty" if os.path.isdir(d) and os.listdir(d) else "empty"
        return contextlib.nullcontext(), f"warm: shared caches ({d}, {state} before)"
    return _fresh_cache(), "cold: fresh Inductor and Triton cache dirs"


@contextlib.contextmanager
def _fresh_cache() -> Iterator[None]:
    """``fresh_cache`` inside a temporary parent that is removed even when the config fails (``fresh_cache`` keeps
    its directory on an exception, for debugging: a sweep of failing configs would fill /tmp)."""
    import tempfile

    import torch._inductor.utils as iu

    fresh = getattr(iu, "fresh_cache", None) or iu.fresh_inductor_cache  # renamed in torch 2.8
    with tempfile.TemporaryDirectory(prefix="vb-inductor-") as parent, fresh(dir=parent):
        yield


@contextlib.contextmanager
def _cudnn(cfg: Config, opts: RunOptions) -> Iterator[dict[str, Any]]:
    """cuDNN autotuning for a CUDA config (on by default, as timm sets it: the first call tries the algorithms, the
    samples run the fastest); the flags the row ran with are recorded. CPU rows leave both columns empty."""
    if cfg.device != "cuda":
        yield {}
        return
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = opts.cudnn_benchmark
    try:
        yield {"cudnn_benchmark": torch.backends.cudnn.benchmark,
               "cudnn_deterministic": torch.backends.cudnn.deterministic}
    finally:
        torch.backends.cudnn.benchmark = old


def measure(cfg: Config, opts: RunOptions | None = None, flops_cache: dict[tuple, dict[str, Any]] | None = None
            ) -> tuple[dict[str, Any], list[float]]:
    """Measure ``cfg``; returns ``(row, raw_samples_ms)``. Never raises for a failing config."""
    opts = opts or RunOptions()
    row: dict[str, Any] = cfg.as_dict()
    samples: list[float] = []
    step = facts = None
    old_threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    row["threads"] = torch.get_num_threads()  # what this config ran with, not the process default
    try:
        cache_ctx, row["compile_cache"] = _inductor_cache(cfg, opts)
        with time_limit(opts.timeout_s), cache_ctx, _cudnn(cfg, opts) as cudnn_flags:
            row.update(cudnn_flags)
            probe_note = probe_support(cfg, opts.allow_slow_fallback)
            step, facts = build_step(cfg)
            row.update({k: v for k, v in facts.items() if not k.startswith("_")})
            if probe_note:
                row["precision_note"] += f"; {probe_note}"
            if opts.count_flops:
                fkey = flops_key(cfg)
                if flops_cache is not None and fkey in flops_cache:
                    row.update(flops_cache[fkey])
                else:
                    counted = count_config_flops(cfg, facts)
                    row.update(counted)
                    if flops_cache is not None:
                        flops_cache[fkey] = counted
            facts.pop("_unpatched", None)  # the counting copy must not hold memory while the step is timed
            device = torch.device(cfg.device)
            if opts.check_accuracy:
                accuracy.prepare(cfg, facts)
            after_first: dict[str, int] = {}

            def read_counters() -> None:  # after the first call (the compile), before the timed ones
                after_first["graphs"] = _compiled_graphs()

            t = time_fn(step, device, threads=torch.get_num_threads(), warmup_s=opts.warmup_s,
                        min_time_s=opts.min_time_s, min_samples=opts.min_samples, max_s=opts.max_config_s,
                        regime=cfg.timer, after_first=read_counters)
            samples = t.samples_ms
            row.update(snapshot(cfg.device))  # clocks, load, ISA as the samples saw them (drift between runs)
            if facts.get("_graphs_before") is not None:  # compiled backends: what Dynamo made of the model
                row["dynamo_graphs"] = _compiled_graphs() - facts["_graphs_before"]
                row["graph_breaks"] = _graph_breaks() - facts["_breaks_before"]
                # graphs compiled after the first call: a guard failed during warm-up or timing, and those samples
                # include compile time or another graph's code
                row["recompiles"] = _compiled_graphs() - after_first["graphs"]
            if facts.get("_graphs_before") is not None and row["dynamo_graphs"] == 0:
                raise CompileFellBack("torch.compile compiled no graph for this config (dynamo ran the model "
                                      "eagerly); the timing would be eager's")
            rss0 = rss_bytes()
            mem = measure_peak_memory(step, device)
            if cfg.device == "cpu" and rss0 is not None:  # the process' resident set, allocator caching included
                row["rss_growth_mb"] = ((rss_bytes() or rss0) - rss0) / 2**20
            if opts.profile_dir:
                from .profile import profile_config

                try:  # a failed trace must not turn a measured config into an error row
                    row["profile_trace"] = profile_config(step, cfg, opts.profile_dir)
                except Exception as pe:  # noqa: BLE001
                    row["profile_error"] = _first_line(pe)
            if opts.check_accuracy:
                try:  # a broken check must not hide a measured row; it is reported in acc_status and error
                    row.update(accuracy.check(cfg, facts))
                except ConfigTimeout:
                    raise
                except Exception as ae:  # noqa: BLE001
                    row.update(acc_status="error", acc_note=_first_line(ae))
        s = t.stats
        row.update({
            "status": "ok", "error": "", "latency_ms_p50": s["p50"], "latency_ms_p20": s["p20"],
            "latency_ms_p80": s["p80"], "latency_ms_mean": s["mean"], "latency_ms_std": s["std"],
            "n_samples": int(s["n"]), "inner_loops": t.inner_loops, "noisy": t.noisy, "compile_ms": t.first_call_ms,
            "warmup_ms": t.warmup_ms, "throughput_per_s": cfg.batch_size / (t.per_call_ms / 1e3),
            "timed_calls": t.calls, "timed_ms": t.total_ms,
            "timer_method": t.method, "peak_mem_mb": mem.peak_mb, "reserved_mem_mb": mem.reserved_mb,
            "mem_method": mem.method, "reduced_samples": t.reduced,
        })
        if row.get("profile_error"):  # measured fine; say the trace is missing and why
            row["error"] = f"profile failed: {row['profile_error']}"
        if row.get("acc_status") == "inaccurate":  # timed, but not a number to quote
            row["status"], row["error"] = "inaccurate", f"inaccurate: {row['acc_note']}"
        elif row.get("acc_status") == "error":
            row["error"] = f"accuracy check failed: {row['acc_note']}"
        if row.get("gflops") is not None:
            row["tflops_per_s"] = row["gflops"] * cfg.batch_size / (s["p50"] / 1e3) / 1e3
    except BaseException as e:  # noqa: BLE001 - every failure must become a row
        if isinstance(e, KeyboardInterrupt):
            raise
        status = classify_exception(e)
        row["status"] = status
        row["error"] = _first_line(e)
        if isinstance(e, OverConfigBudget):
            row["compile_ms"] = e.first_call_ms
        if status == "error":
            row["error_traceback"] = "".join(traceback.format_exception(e))[-2000:]
        del e
    finally:
        torch.set_num_threads(old_threads)
        step = facts = None  # drop references so OOM'd memory can be freed
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row, samples

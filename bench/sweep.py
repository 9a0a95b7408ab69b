"""Run a list of configs into ``DIR``: rows appended one at a time, resumable, optionally one process per config.

Files written:
* ``DIR/results.csv``: one row per config and repetition (:data:`bench.runner.RESULT_COLUMNS`; ``rep``, see
  :mod:`bench.repeats`), flushed and fsynced per row.
* ``DIR/samples.jsonl``: the raw per-sample latencies of each config and repetition, keyed by the config + ``rep``.
* ``DIR/env.json``: the environment and the exact command line.
* ``DIR/sweep.json``: the sweep definition (configs) and code version, used by ``merge`` and ``--resume``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import Config, key_of_row
from .env import collect_env, env_columns
from .io import BadInputError, RowWriter, append_jsonl, drop_torn_tail, read_results, row_line
from .repeats import REP, done_units, schedule
from .runner import RESULT_COLUMNS, RunOptions, measure, unsupported_row

__all__ = ["run_sweep", "completed_keys", "FAILED_STATUSES", "measure_isolated", "open_run_dir", "record_row"]

# Statuses that make the sweep's exit code non-zero (ok, unsupported and oom are expected outcomes; an
# ``inaccurate`` row was timed but computed something else than the float64 model, so it fails like an error).
FAILED_STATUSES = ("error", "timeout", "crashed", "inaccurate")


def completed_keys(out_dir: Path) -> set[tuple[str, ...]]:
    path = out_dir / "results.csv"
    if not path.exists() or path.stat().st_size == 0:
        return set()
    df = read_results(path, required=["model", "backend", "mode", "device", "dtype", "batch_size"], strict=False)
    keys = set()
    for i, r in enumerate(df.to_dict("records")):
        try:
            keys.add(key_of_row(r))
        except BadInputError as e:  # a resumed row must be a config: say which line and field, don't guess
            raise BadInputError(f"{path}:{row_line(df, i)}: {e}") from None
    return keys


def _worker(cfg_dict: dict[str, Any], opts: RunOptions, q: Any) -> None:
    row, samples = measure(Config.from_dict(cfg_dict), opts)
    q.put((row, samples))


# What the isolation server imports once (torch, torchvision, the harness, the models and their plug-ins).
_FORKSERVER_PRELOAD = ["bench.runner", "models"]


def isolation_context() -> Any:
    """The multiprocessing context of ``--isolate`` workers: a fork server that has imported
    :data:`_FORKSERVER_PRELOAD` once, so each config's worker is a fresh fork of it instead of a new interpreter that
    imports torch and every model again (about 5 s per config on a 2-core CPU, and a large share of a GPU job's
    budget). The server never touches CUDA (importing torch does not initialise it), so no worker inherits CUDA
    state, as with ``spawn``; nor does it inherit anything the sweep's own process did after starting it. Its
    environment is the one it was started with (the first isolated config's)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_FORKSERVER_PRELOAD)  # takes effect when the server starts (the first call)
    return ctx


def measure_isolated(cfg: Config, opts: RunOptions) -> tuple[dict[str, Any], list[float]]:
    """Measure ``cfg`` in a fresh process (a fork of :func:`isolation_context`'s server). A worker that dies becomes
    a ``crashed`` row; one that outlives ``opts.timeout_s`` (+ start-up grace) is killed and becomes ``timeout``."""
    ctx = isolation_context()
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(cfg.as_dict(), opts, q), daemon=True)
    p.start()
    limit = opts.timeout_s + 60.0 if opts.timeout_s > 0 else None  # grace for interpreter + torch import
    deadline = time.monotonic() + limit if limit else None
    row = cfg.as_dict()
    try:
        while True:
            try:
                got_row, samples = q.get(timeout=0.5)
                p.join(timeout=30)
                return got_row, samples
            except queue.Empty:  # no row yet: check below that the worker is still alive
                pass
            if not p.is_alive():
                try:  # the result may have landed just before the process exited
                    got_row, samples = q.get(timeout=1.0)
                    return got_row, samples
                except queue.Empty:
                    row.update(status="crashed", error=f"worker died with exit code {p.exitcode}")
                    return row, []
            if deadline is not None and time.monotonic() > deadline:
                p.kill()
                p.join()
                row.update(status="timeout", error=f"worker killed after {limit:g} s")
                return row, []
    finally:
        if p.is_alive():
            p.kill()
        q.close()


def run_sweep(configs: Sequence[Config], out_dir: str | Path, opts: RunOptions | None = None, *,
              isolate: bool = False, resume: bool = False, progress: bool = True, argv: list[str] | None = None,
              measure_fn: Callable[[Config, RunOptions], tuple[dict[str, Any], list[float]]] | None = None,
              deadline: float | None = None, sweep_configs: Sequence[Config] | None = None,
              shard: str | None = None, budget_s: float = 0.0, repeats: int = 1) -> list[dict[str, Any]]:
    """Measure every config (``repeats`` times, round-robin: :mod:`bench.repeats`) not already in
    ``DIR/results.csv`` (with ``resume``); returns the new rows.

    ``deadline`` (a ``time.monotonic()`` value): start no config after it; the configs left are listed in
    ``DIR/skipped.txt`` (and ``--resume`` measures them later). ``budget_s`` (``run --budget-s``): the same, counted
    from the first config's start, which always runs. Past the deadline, a config that a capability probe rejects
    (:func:`bench.runner.unsupported_row`: no device, a CPU dtype that takes a fallback path) still gets its
    ``unsupported`` row, which costs no measurement. ``sweep_configs``/``shard``: with ``--shard I/N``,
    the whole sweep and the slice spec, recorded in ``sweep.json`` for ``merge``.
    """
    opts = opts or RunOptions()
    out = Path(out_dir)
    env, todo, writer = open_run_dir(configs, out, resume=resume, argv=argv, sweep_configs=sweep_configs,
                                     shard=shard, repeats=repeats)
    (out / "skipped.txt").unlink(missing_ok=True)  # an earlier run's list; --resume puts its configs in `todo` again
    flops_cache: dict[tuple, dict[str, Any]] = {}
    if measure_fn is None:
        measure_fn = measure_isolated if isolate else (lambda c, o: measure(c, o, flops_cache))
    rows: list[dict[str, Any]] = []

    from .progress import SweepProgress

    def label(cfg: Config, rep: int) -> str:
        return cfg.label() + (f" rep {rep + 1}/{repeats}" if repeats > 1 else "")

    with SweepProgress(len(todo), enabled=progress, skipped=len(configs) * repeats - len(todo)) as bar:
        if budget_s > 0:
            budget_end = time.monotonic() + budget_s
            deadline = budget_end if deadline is None else min(deadline, budget_end)
        for i, (cfg, rep) in enumerate(todo):
            over = deadline is not None and time.monotonic() > deadline and (i > 0 or budget_s <= 0)
            decided = unsupported_row(cfg, opts) if over else None
            if over and decided is None:  # only what a probe rejects without measuring still gets its row
                left = [(c, r) for c, r in todo[i:] if unsupported_row(c, opts) is None]
                (out / "skipped.txt").write_text("".join(label(c, r) + "\n" for c, r in left))
                for c, r in todo[i:]:
                    if (c, r) not in left:
                        _record(out, writer, env, rows, bar, c, r, unsupported_row(c, opts) or {}, [])
                break
            bar.start(label(cfg, rep))
            if decided is not None:
                _record(out, writer, env, rows, bar, cfg, rep, decided, [])
                continue
            row, samples = measure_fn(cfg, opts)
            _record(out, writer, env, rows, bar, cfg, rep, row, samples)
    return rows


def _record(out: Path, writer: RowWriter, env: dict[str, Any], rows: list[dict[str, Any]], bar: Any, cfg: Config,
            rep: int, row: dict[str, Any], samples: list[float]) -> None:
    row = {**env_columns(env, cfg.device), **row}  # facts measured with the row (threads) win
    record_row(out, writer, cfg, row, samples, rep=rep)
    rows.append(row)
    bar.advance(row)


def open_run_dir(configs: Sequence[Config], out: Path, *, resume: bool, argv: list[str] | None,
                 sweep_configs: Sequence[Config] | None = None, shard: str | None = None,
                 columns: Sequence[str] = RESULT_COLUMNS, repeats: int = 1
                 ) -> tuple[dict[str, Any], list[tuple[Config, int]], RowWriter]:
    """Create ``DIR``, write ``env.json`` and ``sweep.json``, apply ``--resume`` (else clear old results).

    Returns ``(env, (config, rep) still to measure in order, writer for results.csv)``; shared by local and Ray
    sweeps.
    """
    done = completed_keys(out) if resume else set()  # a bad results.csv is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    env = collect_env(argv)
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    _write_sweep_def(out, configs if sweep_configs is None else sweep_configs, env, shard, repeats)
    done = done_units(out) if resume else set()
    if resume and (out / "samples.jsonl").exists():
        drop_torn_tail(out / "samples.jsonl")  # a kill mid-write must not leave a broken line in the middle
    if not resume and (out / "results.csv").exists():
        (out / "results.csv").unlink()
        (out / "samples.jsonl").unlink(missing_ok=True)
    todo = schedule(configs, repeats, done)
    return env, todo, RowWriter(out / "results.csv", columns)


def record_row(out: Path, writer: RowWriter, cfg: Config, row: dict[str, Any], samples: list[float],
               rep: int = 0) -> None:
    """Append one finished config (repetition ``rep``): its row to ``results.csv``, raw samples to ``samples.jsonl``."""
    row[REP] = rep
    writer.append(row)
    if samples:
        append_jsonl(out / "samples.jsonl", {"key": list(cfg.key()), REP: rep, **cfg.as_dict(),
                                             "device_name": row.get("device_name"), "samples_ms": samples})


def _write_sweep_def(out: Path, configs: Sequence[Config], env: dict[str, Any], shard: str | None = None,
                     repeats: int = 1) -> None:
    path = out / "sweep.json"
    data = {"configs": [c.as_dict() for c in configs], "git_sha": env.get("git_sha"),
            "git_dirty": env.get("git_dirty"), "shard": shard, "repeats": repeats, "pid": os.getpid()}
    path.write_text(json.dumps(data) + "\n")

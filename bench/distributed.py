"""Sweeps beyond one machine: a Ray fan-out (one task per config) and deterministic shards (``--shard I/N``).

Ray (``run --ray ADDRESS``): the driver expands the sweep and submits every config as a Ray task that reserves one
GPU (``num_gpus=1``, so configs never share a GPU; a fresh worker process per GPU config, like ``--isolate``) or
``--ray-cpus-per-task`` CPUs (torch runs with that many threads). Each task runs :func:`bench.runner.measure`, the
code of a local run, and returns ``(row, samples, node facts)``; the driver appends each row to ``results.csv`` as
it arrives, so an interrupted driver leaves every finished row on disk and ``--resume`` finishes the rest.

Per-row facts, because a cluster can be heterogeneous: ``device_name``, ``host``, versions and ``threads`` come from
the worker that measured the row; ``node`` is the Ray node id, ``gpu_id`` the GPU Ray assigned (``ray.get_gpu_ids()``),
``attempts`` 1, or 2 when the first worker died. ``git_sha`` is the driver's: the driver connects as a Ray job that
ships its own ``bench``, ``models`` and ``kernels`` to the workers (``runtime_env.py_modules``), so every row ran the
driver's code (a caller already connected to Ray keeps its own job and must provide the code itself). Models
registered outside ``models/`` (``VISIONBENCH_PLUGINS`` or the module that registered a sweep's model) are imported
on the workers by name, so they must be importable there (installed, or on the workers' ``PYTHONPATH``).

Faults: a task whose worker or node dies (``WorkerCrashedError``, ``NodeDiedError``, Ray's OOM killer, ...) is
resubmitted once, pinned (softly) to another node than the one it died on; a second death gives a ``crashed`` row.
With ``--timeout-s`` a task running longer than the limit + 60 s (start-up grace) is force-cancelled: ``timeout``.

Shards (no Ray): ``--shard I/N`` (0-based, ``0 <= I < N``) runs configs ``I, I+N, I+2N, ...`` of the sweep sorted by
config, a slice that depends on the sweep only (not on flag order or machine); ``merge`` joins the shard directories.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as _dt
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # bench.config imports torch; Ray's helper processes only need this module's top level
    from .config import Config
    from .runner import RunOptions

__all__ = ["add_run_arguments", "parse_shard", "select_shard", "run_on_ray", "RAY_COLUMNS"]

# Columns a Ray run adds after bench.runner.RESULT_COLUMNS.
RAY_COLUMNS = ["node", "gpu_id", "attempts"]

# Seconds past --timeout-s before the driver force-cancels a task (interpreter + torch import on a fresh worker).
_TIMEOUT_GRACE_S = 60.0
_POLL_S = 1.0


# ----------------------------------------------------------------------------------------------------------- CLI


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``run`` flags: ``--ray ADDRESS|auto|local``, ``--ray-cpus-per-task N``, ``--shard I/N``."""
    g = parser.add_argument_group("distributed")
    g.add_argument("--ray", metavar="ADDRESS",
                   help="run each config as a Ray task on the cluster at ADDRESS (host:port or ray://...); 'auto' = "
                        "the cluster `ray start` made on this machine or $RAY_ADDRESS; 'local' = a private one")
    g.add_argument("--ray-cpus-per-task", type=int, default=1, metavar="N",
                   help="CPUs each CPU config reserves on the cluster (also its torch threads unless --threads)")
    g.add_argument("--shard", metavar="I/N",
                   help="run only slice I of N (0-based) of the sweep, e.g. $SLURM_ARRAY_TASK_ID/4; join with merge")


def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; anything else raises :class:`BadInputError` (exit 2)."""
    from .io import BadInputError

    parts = str(spec).strip().split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        i, n = int(parts[0]), int(parts[1])
    except ValueError:
        raise BadInputError(f"--shard takes I/N with integers 0 <= I < N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise BadInputError(f"--shard {spec}: need N >= 1 and 0 <= I < N (shards are 0-based: 0/{max(n, 1)} .. "
                            f"{max(n, 1) - 1}/{max(n, 1)})")
    return i, n


def select_shard(configs: Sequence[Config], shard: str) -> list[Config]:
    """Slice ``I`` of ``N``: the distinct configs sorted by their fields, then every ``N``-th from ``I``.

    Sorting first makes the slice a function of the sweep alone (flag order, machine and run do not matter), and
    round-robin spreads each model's configs over the shards so shards take similar time. Returned in sweep order.
    """
    i, n = parse_shard(shard)
    chosen = set(sorted(set(configs))[i::n])
    seen: set[Config] = set()
    out = []
    for c in configs:
        if c in chosen and c not in seen:
            seen.add(c)
            out.append(c)
    return out


# ----------------------------------------------------------------------------------------------------- worker side


class _Tracker:
    """Where and since when each attempt runs (one small actor per sweep). Tasks report on start, so when a worker
    dies the driver knows which node to avoid, and the time limit counts from the start, not from the queue."""

    def __init__(self) -> None:
        self._started: dict[str, tuple[str, float]] = {}

    def start(self, attempt_id: str, node_id: str) -> None:
        self._started[attempt_id] = (node_id, time.monotonic())

    def node_of(self, attempt_id: str) -> str | None:
        got = self._started.get(attempt_id)
        return got[0] if got else None

    def overdue(self, attempt_ids: list[str], limit_s: float) -> list[str]:
        now = time.monotonic()
        return [a for a in attempt_ids if a in self._started and now - self._started[a][1] > limit_s]


_WORKER_ENV: dict[str, Any] | None = None


def _run_config(cfg_dict: dict[str, Any], opts: RunOptions, tracker: Any, attempt_id: str,
                cpus_per_task: int) -> tuple[dict[str, Any], list[float], dict[str, Any]]:
    """The Ray task: measure one config in this worker process; returns ``(row, samples, facts)``."""
    global _WORKER_ENV
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    if tracker is not None:
        # bookkeeping only: a lost tracker must not cost a measurement
        with contextlib.suppress(Exception):
            ray.get(tracker.start.remote(attempt_id, node_id), timeout=60)
    facts: dict[str, Any] = {"node": node_id, "gpu_id": ",".join(str(g) for g in ray.get_gpu_ids())}
    try:
        import models  # noqa: F401 - registers the built-in models and the VISIONBENCH_PLUGINS modules
    except Exception as e:  # noqa: BLE001 - a plug-in missing on this node becomes an error row, not a crash
        msg = (str(e).strip().splitlines() or [""])[0]
        row = dict(cfg_dict, status="error", error=f"cannot import the models on this worker ({type(e).__name__}: "
                                                   f"{msg}); plug-ins must be importable on every node")
        return row, [], facts
    import torch

    from .config import Config
    from .env import collect_env
    from .runner import measure

    cfg = Config.from_dict(cfg_dict)
    if cfg.device == "cpu" and not opts.threads:
        opts = dataclasses.replace(opts, threads=cpus_per_task)  # use exactly the CPUs Ray reserved
    row, samples = measure(cfg, opts)
    if _WORKER_ENV is None or cfg.device == "cuda":  # GPU workers are fresh per task anyway
        _WORKER_ENV = collect_env([])
    facts.update(env=_WORKER_ENV, threads=opts.threads or torch.get_num_threads(),
                 timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return row, samples, facts


# ----------------------------------------------------------------------------------------------------- driver side


@dataclasses.dataclass
class _Attempt:
    cfg: Config
    index: int  # position in the run's todo list
    number: int  # 1, or 2 for the resubmission after a worker death
    history: list[str]  # what happened to earlier attempts, for the row's error column
    rep: int = 0  # repetition id (run --repeats)

    @property
    def attempt_id(self) -> str:
        return f"{self.index}.{self.number}"


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _plugin_modules(configs: Sequence[Config]) -> list[str]:
    """Modules the workers must import so every model of the sweep is registered there."""
    import models

    mods = [m.strip() for m in os.environ.get("VISIONBENCH_PLUGINS", "").split(",") if m.strip()]
    for name in sorted({c.model for c in configs}):
        mod = getattr(models.get_spec(name).builder, "__module__", None)
        if mod and mod != "__main__" and mod != "models" and not mod.startswith("models.") and mod not in mods:
            mods.append(mod)
    return mods


def _runtime_env(plugins: list[str]) -> dict[str, Any]:
    """Ship this checkout's harness, models and kernels, so every worker runs the driver's code version."""
    import kernels
    import models

    env: dict[str, Any] = {
        "py_modules": [str(Path(__file__).parent), str(Path(models.__file__).parent),
                       str(Path(kernels.__file__).parent)],
        "excludes": ["__pycache__/", "*.pyc"],
    }
    if plugins:
        env["env_vars"] = {"VISIONBENCH_PLUGINS": ",".join(plugins)}
    return env


def _ensure_columns(path: Path, columns: Sequence[str]) -> None:
    """Add missing ``columns`` (empty) to an existing results CSV, atomically, so a Ray run can resume a local one."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    missing = [c for c in columns if c not in header]
    if not missing:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results-", suffix=".csv")
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header + missing)
        for r in body:
            if len(r) == len(header):  # a torn last line (killed mid-write) is dropped, as RowWriter does
                w.writerow(r + [""] * len(missing))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _connect(address: str, runtime_env: dict[str, Any]) -> bool:
    """Connect the driver to Ray as a job with ``runtime_env``; returns whether we did (and so must disconnect).

    A process already connected keeps its job (Ray ships local code only at the job level, so such a caller
    must ship ``bench``/``models``/``kernels`` itself or have them installed on the workers)."""
    import logging

    import ray

    from .io import BadInputError

    if ray.is_initialized():  # the caller (a test, a notebook) already connected: use its cluster
        return False
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": False, "logging_level": logging.WARNING,
                              "runtime_env": runtime_env}
    if address == "local":
        kwargs["include_dashboard"] = False
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise BadInputError(f"--ray {address}: cannot connect to a Ray cluster ({_first_line(e)})") from None
    return True


def _nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _other_node(avoid: str | None, gpu: bool, cpus: int) -> Any:
    """A scheduling strategy that prefers a live node other than ``avoid`` with room for the task, else default."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if avoid is None:  # first attempts: Ray's own scheduler (no cluster query per submission)
        return "DEFAULT"
    fits = [n for n in _nodes() if n["NodeID"] != avoid and n["Resources"].get("CPU", 0) >= cpus
            and (not gpu or n["Resources"].get("GPU", 0) >= 1)]
    if not fits:
        return "DEFAULT"
    best = max(fits, key=lambda n: (n["Resources"].get("GPU" if gpu else "CPU", 0), n["NodeID"]))
    # soft: if that node disappears too, Ray may place the task anywhere rather than fail it
    return NodeAffinitySchedulingStrategy(node_id=best["NodeID"], soft=True)


def run_on_ray(configs: Sequence[Config], out: str | Path, opts: RunOptions, *, address: str, resume: bool = False,
               argv: list[str] | None = None, progress: bool = True, cpus_per_task: int = 1,
               sweep_configs: Sequence[Config] | None = None, shard: str | None = None,
               repeats: int = 1) -> list[dict[str, Any]]:
    """Measure ``configs`` (each ``repeats`` times, one task per repetition) as Ray tasks on the cluster at
    ``address``; rows land in ``OUT/results.csv`` as they finish (plus ``samples.jsonl``, ``env.json`` with a ``ray``
    section, ``sweep.json``). Returns the new rows.

    Args:
        address: ``host:port``, ``ray://host:port``, ``auto`` or ``local`` (see ``ray.init``); ignored when this
            process is already connected.
        cpus_per_task: CPUs reserved per CPU config (GPU configs reserve ``num_gpus=1`` and one CPU).
        sweep_configs, shard: the whole sweep when ``configs`` is one shard of it (recorded in ``sweep.json``).
    """
    from .io import BadInputError

    if not str(address).strip():
        raise BadInputError("--ray needs an address: host:port, ray://host:port, auto or local")
    if not isinstance(cpus_per_task, int) or cpus_per_task < 1:
        raise BadInputError(f"--ray-cpus-per-task must be a positive integer, got {cpus_per_task!r}")
    try:
        import ray
        from ray.exceptions import RayError, RayTaskError
    except ImportError:
        raise BadInputError("--ray needs Ray: pip install 'visionbench[ray]'") from None

    from .env import env_columns
    from .progress import SweepProgress
    from .runner import RESULT_COLUMNS
    from .sweep import open_run_dir, record_row

    out = Path(out)
    plugins = _plugin_modules(configs)  # before connecting: an unknown model fails fast, nothing started
    renv = _runtime_env(plugins)
    owns = _connect(address, renv)
    # Already-connected callers keep their job's runtime_env; the plug-in list can still travel per task.
    task_renv = None if owns or not plugins else {"env_vars": renv["env_vars"]}
    tracker = None
    pending: dict[Any, _Attempt] = {}
    try:
        nodes = _nodes()
        biggest_cpu = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        has_gpu = any(n["Resources"].get("GPU", 0) >= 1 for n in nodes)
        if any(c.device == "cpu" for c in configs) and cpus_per_task > biggest_cpu:
            raise BadInputError(f"--ray-cpus-per-task {cpus_per_task} exceeds the largest node's CPUs "
                                f"({biggest_cpu:g}); no CPU config could ever be scheduled")
        if resume:
            _ensure_columns(out / "results.csv", RAY_COLUMNS)
        env, todo, writer = open_run_dir(configs, out, resume=resume, argv=argv, sweep_configs=sweep_configs,
                                         shard=shard, columns=[*RESULT_COLUMNS, *RAY_COLUMNS], repeats=repeats)
        env["ray"] = {"address": address, "cpus_per_task": cpus_per_task, "plugins": plugins,
                      "nodes": [{"node": n["NodeID"], "host": n.get("NodeManagerHostname"),
                                 "ip": n.get("NodeManagerAddress"),
                                 "resources": {k: v for k, v in n["Resources"].items() if not k.startswith("node:")}}
                                for n in nodes]}
        (out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
        hostname = {n["NodeID"]: n.get("NodeManagerHostname") for n in nodes}
        device_seen: dict[tuple[str, str], str] = {}  # (node, device) -> device name, for rows of dead workers

        cpu_task = ray.remote(_run_config)
        gpu_task = ray.remote(max_calls=1)(_run_config)  # fresh process per GPU config: a clean CUDA context
        try:
            here = ray.get_runtime_context().get_node_id()
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            near: Any = NodeAffinitySchedulingStrategy(node_id=here, soft=True)
        except Exception:  # noqa: BLE001 - e.g. a Ray Client driver has no node of its own
            near = "DEFAULT"
        tracker = ray.remote(num_cpus=0, max_restarts=0)(_Tracker).options(scheduling_strategy=near).remote()

        def submit(cfg: Config, number: int, index: int, history: list[str], avoid: str | None = None,
                   rep: int = 0) -> None:
            gpu = cfg.device == "cuda"
            attempt = _Attempt(cfg, index, number, history, rep)
            fn = gpu_task if gpu else cpu_task
            cpus = 1 if gpu else cpus_per_task  # a GPU config needs one CPU to feed its GPU
            ref = fn.options(
                num_cpus=cpus, num_gpus=1 if gpu else 0, max_retries=0, retry_exceptions=False,
                runtime_env=task_renv, scheduling_strategy=_other_node(avoid, gpu, cpus),
                name=f"visionbench {cfg.label()}",
            ).remote(cfg.as_dict(), opts, tracker, attempt.attempt_id, cpus_per_task)
            pending[ref] = attempt

        def node_of(attempt: _Attempt) -> str | None:
            try:
                return ray.get(tracker.node_of.remote(attempt.attempt_id), timeout=30)
            except Exception:  # noqa: BLE001 - tracker lost: retry without avoiding a node
                return None

        def failed_row(cfg: Config, node: str | None, status: str, error: str, attempts: int) -> dict[str, Any]:
            row = cfg.as_dict()
            row.update(env_columns(env, cfg.device))  # versions and code: the driver's (its code was shipped)
            row.update(status=status, error=error, node=node or "", gpu_id="", attempts=attempts,
                       timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            if node:
                row["host"] = hostname.get(node) or row["host"]
                row["device_name"] = device_seen.get((node, cfg.device), row["device_name"])
            return row

        rows: list[dict[str, Any]] = []
        timed_out: set[str] = set()
        limit = opts.timeout_s + _TIMEOUT_GRACE_S if opts.timeout_s > 0 else None
        with SweepProgress(len(todo), enabled=progress, skipped=len(configs) * repeats - len(todo)) as bar:
            for i, (cfg, rep) in enumerate(todo):
                if cfg.device == "cuda" and not has_gpu:
                    row = failed_row(cfg, None, "unsupported", "no GPU in the Ray cluster", 0)
                    record_row(out, writer, cfg, row, [], rep=rep)
                    rows.append(row)
                    bar.advance(row)
                else:
                    submit(cfg, 1, i, [], rep=rep)
            bar.start(f"ray: {len(pending)} submitted")
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
                if not ready:
                    if limit is not None:
                        ids = {a.attempt_id: ref for ref, a in pending.items() if a.attempt_id not in timed_out}
                        try:
                            late = ray.get(tracker.overdue.remote(list(ids), limit), timeout=30)
                        except Exception:  # noqa: BLE001 - tracker lost: no driver-side time limit
                            late = []
                        for a in late:
                            timed_out.add(a)
                            ray.cancel(ids[a], force=True)
                    continue
                ref = ready[0]
                attempt = pending.pop(ref)
                cfg, samples = attempt.cfg, []
                try:
                    row, samples, facts = ray.get(ref)
                    node = facts["node"]
                    wenv = dict(facts.get("env") or env, git_sha=env.get("git_sha"), git_dirty=env.get("git_dirty"))
                    row.update(env_columns(wenv, cfg.device))
                    row.update(node=node, gpu_id=facts.get("gpu_id", "") if cfg.device == "cuda" else "",
                               attempts=attempt.number,
                               threads=facts.get("threads", row.get("threads")),
                               timestamp=facts.get("timestamp", row.get("timestamp")))
                    if "env" not in facts:  # failed before measuring: name the host Ray knows for the node
                        row["host"] = hostname.get(node) or row["host"]
                    else:
                        device_seen[(node, cfg.device)] = row["device_name"]
                    if attempt.history and row.get("status") == "ok":
                        row["error"] = f"ok on attempt {attempt.number}; " + "; ".join(attempt.history)
                    elif attempt.history:
                        row["error"] = f"{row.get('error', '')}; " + "; ".join(attempt.history)
                except RayTaskError as e:  # our task code raised (measure itself never does): no retry
                    row = failed_row(cfg, node_of(attempt), "error", _first_line(e), attempt.number)
                except RayError as e:
                    node = node_of(attempt)
                    where = f" on node {node[:12]}" if node else ""
                    if attempt.attempt_id in timed_out:
                        row = failed_row(cfg, node, "timeout", f"cancelled after {limit:g} s{where} "
                                         f"(--timeout-s {opts.timeout_s:g} + {_TIMEOUT_GRACE_S:g} s grace)",
                                         attempt.number)
                    elif _is_worker_death(e) and attempt.number == 1:
                        history = [f"attempt 1: {type(e).__name__}{where}"]
                        submit(cfg, 2, attempt.index, history, avoid=node, rep=attempt.rep)
                        bar.start(f"ray: {len(pending)} running · retrying {cfg.label()}")
                        continue
                    else:
                        death = _is_worker_death(e)  # Ray's death messages are generic: the class says it all
                        what = type(e).__name__ if death else _first_line(e)
                        row = failed_row(cfg, node, "crashed" if death else "error", "; ".join(
                            [*attempt.history, f"attempt {attempt.number}: {what}{where}"]), attempt.number)
                record_row(out, writer, cfg, row, samples, rep=attempt.rep)
                rows.append(row)
                bar.start(f"ray: {len(pending)} running · done {cfg.label()}")
                bar.advance(row)
        return rows
    finally:
        for ref in list(pending):  # interrupted: free the cluster; finished rows are already on disk
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if tracker is not None:
            with contextlib.suppress(Exception):
                ray.kill(tracker)
        if owns:
            ray.shutdown()


def _is_worker_death(e: BaseException) -> bool:
    """A failure of the process or node that ran the task (worth one retry elsewhere), not of the config."""
    from ray import exceptions as rex

    not_deaths = tuple(getattr(rex, n) for n in ("RuntimeEnvSetupError", "TaskUnschedulableError",
                                                 "TaskCancelledError") if hasattr(rex, n))
    return not isinstance(e, not_deaths)

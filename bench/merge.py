"""``visionbench merge DIR... --out OUT``: join shard directories (``run --shard I/N``) into one run directory.

Refused (exit 2, one line): a directory that is not a run (no ``sweep.json`` / ``results.csv``), shards whose sweep
definitions differ (the full config list each shard recorded), shards or rows measured by different code versions
(git sha, dirty flag included), rows of configs outside the sweep, and an ``OUT`` that already holds results.

Written to ``OUT``: ``results.csv`` (one row per config and repetition, in sweep order; columns = union of the inputs'),
``samples.jsonl`` (the raw samples of the rows kept), ``env-<i>.json`` (each input's ``env.json``, ``i`` = position on
the command line), ``env.json`` (the first input's environment plus every host and GPU seen and ``merged_from``),
``sweep.json`` (the sweep, so ``run ... --resume --out OUT`` can fill gaps) and ``report.md``.

Duplicates (a config in several inputs) keep one row (the first ``ok`` one, else the first) and are listed; gaps
(configs of the sweep in no input) are listed and make the exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import FILE_KEY_FIELDS, KEY_FIELDS, Config, key_of_row
from .io import BadInputError, RowWriter, append_jsonl, read_jsonl, read_results
from .repeats import rep_of
from .runner import RESULT_COLUMNS

__all__ = ["add_arguments", "main", "merge_runs", "MergeResult"]

Key = tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run directories to merge (e.g. one per shard)")
    parser.add_argument("--out", required=True, help="new directory for the merged run")


@dataclass
class MergeResult:
    """What :func:`merge_runs` did: rows written, configs measured twice (label -> dirs), configs measured nowhere."""

    out: Path
    n_configs: int
    n_rows: int
    duplicates: dict[str, list[str]] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Run:
    path: Path
    sweep: dict[str, Any]
    configs: list[Config]
    rows: list[dict[str, Any]]
    columns: list[str]
    env: dict[str, Any] | None


def _code_version(sha: Any, dirty: Any) -> str:
    sha = str(sha or "unknown")
    return sha if sha.endswith("-dirty") or not dirty else f"{sha}-dirty"


def _load(d: Path) -> _Run:
    if not d.is_dir():
        raise BadInputError(f"{d}: no such run directory")
    sweep_path = d / "sweep.json"
    if not sweep_path.is_file():
        raise BadInputError(f"{d}: no sweep.json (not a visionbench run directory, or made before merge existed)")
    try:
        sweep = json.loads(sweep_path.read_text())
        configs = [Config.from_dict(c) for c in sweep["configs"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BadInputError(f"{sweep_path}: malformed sweep definition ({type(e).__name__}: {e})") from None
    results = d / "results.csv"
    if not results.is_file():
        raise BadInputError(f"{d}: no results.csv")
    df = _read_tolerant(results)
    env_path = d / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else None
    return _Run(d, sweep, configs, df.to_dict("records"), list(df.columns), env)


def _read_tolerant(path: Path) -> Any:
    """``read_results``, but a torn last line (the shard was killed mid-write) is dropped instead of refused."""
    raw = path.read_bytes()
    required = [*FILE_KEY_FIELDS, "status"]
    if raw.endswith(b"\n") or not raw.strip():
        return read_results(path, required=required)
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / path.name
        clean.write_bytes(raw[: raw.rfind(b"\n") + 1])
        try:
            return read_results(clean, required=required)
        except BadInputError as e:
            raise BadInputError(str(e).replace(str(clean), str(path))) from None


def _check_same_sweep(runs: Sequence[_Run]) -> None:
    first = runs[0]
    ref = sorted(c.key() for c in first.configs)
    for run in runs[1:]:
        keys = sorted(c.key() for c in run.configs)
        if keys != ref:
            only_here = sorted(set(keys) - set(ref))
            only_there = sorted(set(ref) - set(keys))
            example = (f"{_label(only_here[0])} only in {run.path}" if only_here else
                       f"{_label(only_there[0])} only in {first.path}" if only_there else "same configs, repeated")
            raise BadInputError(f"{run.path}: sweep definition differs from {first.path}'s ({len(keys)} vs "
                                f"{len(ref)} configs; e.g. {example}); only shards of one sweep can be merged")


def _check_same_code(runs: Sequence[_Run]) -> str:
    """The one code version of every input (sweep.json and each row's ``git_sha``), else refuse."""
    versions: dict[str, str] = {}  # version -> where first seen
    for run in runs:
        if "git_dirty" in run.sweep:  # sweep.json files older than merge lack it: their rows still say
            versions.setdefault(_code_version(run.sweep.get("git_sha"), run.sweep["git_dirty"]), str(run.path))
        for i, row in enumerate(run.rows):
            if row.get("git_sha"):
                versions.setdefault(str(row["git_sha"]), f"{run.path / 'results.csv'} row {i + 1}")
        if len(versions) > 1:
            (a, wa), (b, wb) = list(versions.items())[:2]
            raise BadInputError(f"code versions differ: {a} ({wa}) vs {b} ({wb}); rerun the shards from one commit")
    return next(iter(versions), "unknown")


def _label(key: Key) -> str:
    return Config.from_dict(dict(zip(KEY_FIELDS, key))).label()


def _unit_label(unit: tuple[Key, int], repeats: int) -> str:
    return _label(unit[0]) + (f" rep {unit[1] + 1}/{repeats}" if repeats > 1 else "")


def _check_same_repeats(runs: Sequence[_Run]) -> int:
    """The one ``--repeats`` of every input's sweep (1 for sweep.json files written before it existed)."""
    counts = {int(r.sweep.get("repeats") or 1) for r in runs}
    if len(counts) > 1:
        raise BadInputError(f"the inputs were run with different --repeats ({sorted(counts)}); only shards of one "
                            "sweep can be merged")
    return counts.pop()


def merge_runs(dirs: Sequence[str | Path], out: str | Path, argv: list[str] | None = None) -> MergeResult:
    """Merge run directories ``dirs`` into the new directory ``out``; raises :class:`BadInputError` when refused."""
    out = Path(out)
    paths = [Path(d) for d in dirs]
    if any(p.resolve() == out.resolve() for p in paths):
        raise BadInputError(f"--out {out} is one of the inputs; merge into a new directory")
    if (out / "results.csv").exists():
        raise BadInputError(f"{out} already holds results.csv; merge into a new directory")
    if len({p.resolve() for p in paths}) != len(paths):
        raise BadInputError("the same directory is given twice")
    runs = [_load(p) for p in paths]
    _check_same_sweep(runs)
    version = _check_same_code(runs)
    sweep_configs = runs[0].configs
    order = {c.key(): i for i, c in reversed(list(enumerate(sweep_configs)))}
    warnings = []
    if version.endswith("-dirty"):
        warnings.append(f"code version {version} has uncommitted changes: the shards' code cannot be proven equal")

    repeats = _check_same_repeats(runs)
    # A unit is one config's repetition: (config key, rep); a run without --repeats has rep 0 only.
    kept: dict[tuple[Key, int], tuple[int, dict[str, Any]]] = {}
    seen_in: dict[tuple[Key, int], list[str]] = {}
    for i, run in enumerate(runs):
        for row in run.rows:
            try:
                key = key_of_row(row)
            except BadInputError as e:
                raise BadInputError(f"{run.path}: results.csv: {e}") from None
            if key not in order:
                raise BadInputError(f"{run.path}: results.csv has a row outside its sweep ({_label(key)}); "
                                    "was the directory resumed with another command?")
            unit = (key, rep_of(row))
            seen_in.setdefault(unit, []).append(str(run.path))
            if unit not in kept or (kept[unit][1].get("status") != "ok" and row.get("status") == "ok"):
                kept[unit] = (i, row)
    duplicates = {_unit_label(u, repeats): v for u, v in seen_in.items() if len(v) > 1}
    gaps = [_unit_label((c.key(), r), repeats) for r in range(repeats) for c in sweep_configs
            if (c.key(), r) not in kept]

    columns = [c for c in RESULT_COLUMNS if any(c in r.columns for r in runs)]
    for run in runs:
        columns += [c for c in run.columns if c not in columns]
    out.mkdir(parents=True, exist_ok=True)
    writer = RowWriter(out / "results.csv", columns)
    for unit in sorted(kept, key=lambda u: (order[u[0]], u[1])):
        writer.append(kept[unit][1])
    for i, run in enumerate(runs):  # the raw samples of the rows kept, from the directory each row came from
        for rec in read_jsonl(run.path / "samples.jsonl"):
            unit = (tuple(str(x) for x in rec.get("key", ())), rep_of(rec))
            if unit in kept and kept[unit][0] == i:
                append_jsonl(out / "samples.jsonl", rec)
    _write_envs(runs, out, argv)
    merged_from = [{"dir": str(r.path), "env": f"env-{i}.json", "shard": r.sweep.get("shard"), "rows": len(r.rows)}
                   for i, r in enumerate(runs)]
    sha, dirty = (version[: -len("-dirty")], True) if version.endswith("-dirty") else (version, False)
    sweep = {"configs": [c.as_dict() for c in sweep_configs], "git_sha": sha, "git_dirty": dirty, "shard": None,
             "repeats": repeats, "merged_from": merged_from, "pid": os.getpid()}
    (out / "sweep.json").write_text(json.dumps(sweep) + "\n")
    from .report import write_report

    write_report(out)
    return MergeResult(out, len(sweep_configs), len(kept), duplicates, gaps, warnings)


def _write_envs(runs: Sequence[_Run], out: Path, argv: list[str] | None) -> None:
    merged: dict[str, Any] = {}
    hosts: list[str] = []
    gpus: list[dict[str, Any]] = []
    for i, run in enumerate(runs):
        if run.env is None:
            continue
        (out / f"env-{i}.json").write_text(json.dumps(run.env, indent=2) + "\n")
        merged = merged or dict(run.env)
        hosts += [h for h in [run.env.get("host")] if h and h not in hosts]
        gpus += [g for g in run.env.get("gpus") or [] if g.get("name") not in {x.get("name") for x in gpus}]
        for row in run.rows:  # Ray rows name the worker host that measured them
            if row.get("host") and row["host"] not in hosts:
                hosts.append(str(row["host"]))
    merged.update(host=", ".join(hosts), gpus=gpus, command=" ".join(argv if argv is not None else sys.argv),
                  merged_from=[str(r.path) for r in runs])
    (out / "env.json").write_text(json.dumps(merged, indent=2) + "\n")


def main(args: argparse.Namespace) -> int:
    """CLI entry: 0 = complete merge, 1 = merged but gaps remain, 2 = refused (raised as BadInputError)."""
    res = merge_runs(args.dirs, args.out)
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"merged {res.n_rows} of {res.n_configs} configs from {len(args.dirs)} directories into {res.out}")
    if res.duplicates:
        print(f"duplicates: {len(res.duplicates)} configs were measured in more than one directory "
              "(kept the first ok row):")
        for label, where in res.duplicates.items():
            print(f"  {label}: {', '.join(where)}")
    if res.gaps:
        print(f"gaps: {len(res.gaps)} configs of the sweep are in no directory (finish them with the sweep's "
              f"`run` command plus --resume --out {res.out}):")
        for label in res.gaps:
            print(f"  {label}")
        return 1
    return 0

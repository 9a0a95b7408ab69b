"""``python -m bench ab BASE_REF HEAD_REF [run args]``: an A/B of two revisions of this repository on one machine.

1. Both refs are resolved to commits and checked out side by side as detached git worktrees (in a temporary
   directory, removed at the end; ``--keep-worktrees`` keeps them). Each side imports its own code: every run is
   ``python -m bench run ...`` with ``cwd`` = that worktree and the worktree first on ``PYTHONPATH`` (the run's
   ``env.json`` must then name that commit, else the A/B stops: the wrong code was measured). Uncommitted changes
   of the current checkout are *not* part of either side.
2. The two sides alternate ABBA: round ``i`` runs base then head for even ``i``, head then base for odd ``i``, ``K``
   rounds (``--repeats``, default 3). Round ``i`` adds repetition ``i`` of every config to ``OUT/base`` or
   ``OUT/head`` (``run --repeats i+1 --resume``), so a warmer machine, a clock change or a noisy neighbour during the
   job falls on both sides instead of reading as a head regression, and ``compare`` sees ``K`` runs per side.
3. ``OUT/compare.md`` and ``OUT/compare.json``: :mod:`bench.compare` of ``OUT/base`` → ``OUT/head`` (run-level
   statistics when ``K >= 2``); ``OUT/ab.json``: refs, commits, the order and the wall time of every run.

Exit code: 2 for bad input (an unknown ref, a run that refused its arguments), 1 with ``--fail-on-regression`` when
the comparison found one, else 0. A run that exits 1 (some config failed) is not fatal: its rows say so.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .io import BadInputError

__all__ = ["add_arguments", "main", "abba_order", "run_ab"]


def _add_own(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=3, metavar="K", help="ABBA rounds: runs per side (3)")
    p.add_argument("--out", help="output directory (default results/<timestamp>-ab)")
    p.add_argument("--base-env", nargs="+", default=[], metavar="VAR=VALUE", help="environment of the base runs only")
    p.add_argument("--head-env", nargs="+", default=[], metavar="VAR=VALUE", help="environment of the head runs only")
    p.add_argument("--compare-args", default="", help="extra `compare` flags, one string (e.g. '--threshold 0.1')")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 if the comparison found a regression")
    p.add_argument("--keep-worktrees", action="store_true", help="leave the two worktrees in OUT/vb-ab-*")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base_ref", help="git revision of the baseline (branch, tag, sha, HEAD~1...)")
    p.add_argument("head_ref", help="git revision to test")
    _add_own(p)
    p.add_argument("run_args", nargs=argparse.REMAINDER,
                   help="arguments for `bench run` (models, batch sizes...); ab's own flags above may appear among "
                        "them; --out, --repeats and --resume of the runs are set by ab")


def abba_order(k: int) -> list[str]:
    """``["base", "head", "head", "base", ...]``: ``k`` rounds, the order reversed every other round."""
    return [s for i in range(k) for s in (("base", "head") if i % 2 == 0 else ("head", "base"))]


def _git(repo: Path, *args: str) -> str:
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise BadInputError(f"git {' '.join(args)}: {res.stderr.strip().splitlines()[-1] if res.stderr else 'failed'}")
    return res.stdout.strip()


def _env_pairs(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p or not p.split("=", 1)[0]:
            raise BadInputError(f"{flag} takes VAR=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        out[k] = v
    return out


def _check_run_args(run_args: list[str]) -> list[str]:
    args = [a for a in run_args if a != "--"]
    for flag in ("--resume", "--ray", "--shard"):
        if any(a == flag or a.startswith(flag + "=") for a in args):
            raise BadInputError(f"bench ab sets {flag} itself (or cannot A/B it); drop it from the run arguments")
    return args


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_ab(base_ref: str, head_ref: str, run_args: list[str], out: Path, *, repeats: int = 3,
           base_env: dict[str, str] | None = None, head_env: dict[str, str] | None = None,
           keep_worktrees: bool = False, repo: Path | None = None, log: Any = print) -> dict[str, Any]:
    """Build both revisions, run them ABBA ``repeats`` times into ``out/base`` and ``out/head``; returns ab.json."""
    if repeats < 1:
        raise BadInputError(f"--repeats must be a positive integer, got {repeats}")
    repo = Path(_git(repo or Path.cwd(), "rev-parse", "--show-toplevel"))
    shas = {side: _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}") if ref else ""
            for side, ref in (("base", base_ref), ("head", head_ref))}
    out.mkdir(parents=True, exist_ok=True)
    for side in ("base", "head"):
        if (out / side / "results.csv").exists():
            raise BadInputError(f"{out / side} already holds results; use a new --ab-out directory")
    tmp = Path(tempfile.mkdtemp(prefix="vb-ab-", dir=out if keep_worktrees else None))
    trees = {side: tmp / f"src-{side}" for side in shas}
    envs = {"base": base_env or {}, "head": head_env or {}}
    doc: dict[str, Any] = {"base_ref": base_ref, "head_ref": head_ref, "base_sha": shas["base"],
                           "head_sha": shas["head"], "repeats": repeats, "run_args": run_args,
                           "base_env": envs["base"], "head_env": envs["head"],
                           "worktrees": {side: str(t) for side, t in trees.items()}, "runs": []}
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)  # a cancelled CI job: still remove the worktrees
    try:
        for side, tree in trees.items():
            _git(repo, "worktree", "add", "--detach", "--quiet", str(tree), shas[side])
        t0 = time.monotonic()
        for i, side in enumerate(abba_order(repeats)):
            rnd = i // 2
            env = {**os.environ, **envs[side]}
            env["PYTHONPATH"] = os.pathsep.join([str(trees[side]), *filter(None, [env.get("PYTHONPATH")])])
            cmd = [sys.executable, "-m", "bench", "run", *run_args, "--repeats", str(rnd + 1), "--resume",
                   "--out", str((out / side).resolve()), "--no-progress"]
            log(f"[ab] round {rnd + 1}/{repeats}: {side} ({shas[side][:12]})")
            start = time.monotonic()
            res = subprocess.run(cmd, cwd=trees[side], env=env)
            doc["runs"].append({"round": rnd, "side": side, "exit": res.returncode,
                                "wall_s": round(time.monotonic() - start, 2)})
            if res.returncode in (130, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL):
                raise KeyboardInterrupt(f"the {side} run was interrupted")
            if res.returncode == 2:
                raise BadInputError(f"`bench run` refused its arguments on {side} (exit 2): {shlex.join(run_args)}")
            got = json.loads((out / side / "env.json").read_text()).get("git_sha")
            if got and not shas[side].startswith(str(got).removesuffix("-dirty")[:7]):
                raise BadInputError(f"the {side} run imported code of commit {got}, not {shas[side][:12]}: "
                                    "another checkout of visionbench shadows the worktree on sys.path")
        doc["wall_s"] = round(time.monotonic() - t0, 2)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if not keep_worktrees:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)
    (out / "ab.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def main(args: argparse.Namespace) -> int:
    import datetime as _dt

    from . import compare

    own = argparse.ArgumentParser(prog="bench ab", add_help=False, allow_abbrev=False)
    _add_own(own)
    args, rest = own.parse_known_args(list(args.run_args), namespace=args)  # ab's flags given after the refs
    run_args = _check_run_args(rest)
    out = Path(args.out or f"results/{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-ab")
    base_env, head_env = _env_pairs(args.base_env, "--base-env"), _env_pairs(args.head_env, "--head-env")
    if not shutil.which("git"):
        raise BadInputError("bench ab needs git on PATH")
    run_ab(args.base_ref, args.head_ref, run_args, out, repeats=args.repeats, base_env=base_env, head_env=head_env,
           keep_worktrees=args.keep_worktrees)
    p = argparse.ArgumentParser(prog="bench ab --compare-args")
    compare.add_arguments(p)
    cargs = p.parse_args([str(out / "base"), str(out / "head"), *shlex.split(args.compare_args), "--out",
                          str(out / "compare.md")])
    cargs.fail_on_regression = args.fail_on_regression
    code = compare.main(cargs)
    cargs.format, cargs.out = "json", str(out / "compare.json")
    compare.main(cargs)
    return code

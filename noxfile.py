"""Sessions (``nox -l`` lists them):

* ``tests`` (default): the whole CPU test suite; Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1).
* ``lint``: ruff.
* ``bench``: the main job on the CPU, the ``quick`` suite -> ``results/<run-name>/`` (``nox -s bench -- NAME``).
* ``bench-gpu``: the full GPU job (kernel numerics on CUDA, kernel microbenchmarks, model sweep) in the *current*
  interpreter, no new virtualenv, no network: ``nox -s bench-gpu -- OUT_DIR``. Exits non-zero without a CUDA device.
* ``benchmarks``: pytest-benchmark comparisons of our code against its twins (tests/benchmarks/), 2 threads,
  15 rounds (``VB_BENCH_THREADS`` / ``VB_BENCH_ROUNDS`` override).
* ``compile``: every kernel launch compiled ahead of time for a GPU architecture, no GPU needed
  (``nox -s compile -- sm_90`` -> ``results/aot-sm90/``).

Virtualenvs live outside the clone (``~/.cache/visionbench/nox``) and are reused, so torch (several GB) installs
once per machine; the install step still runs every time, so a missing dependency still fails the session.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.envdir = str(Path(os.environ.get("VISIONBENCH_NOX_ENVDIR", Path.home() / ".cache/visionbench/nox")))
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

CPU_ENV = {"TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
# The suite runs in two pytest-xdist workers of one thread each: most of its time is Triton's interpreter (numpy, one
# core) and subprocesses (ptxas, spawned workers), which a single process leaves the second core idle for. Ray's
# tests share one worker (xdist_group "ray"). VB_TEST_WORKERS=0 runs it in one process.
TEST_WORKERS = os.environ.get("VB_TEST_WORKERS", "2")


def _install(session: nox.Session, extras: str = "dev") -> None:
    # torch/torchvision ranges in pyproject admit the versions on this machine's disk (2.14.1 / 0.29.1).
    session.install("-e", f".[{extras}]")


@nox.session(reuse_venv=True)
def tests(session: nox.Session) -> None:
    """Run the CPU test suite (Triton kernels in the interpreter). Extra args go to pytest."""
    _install(session, "dev,ray")
    xdist = ["-n", TEST_WORKERS, "--dist", "loadgroup"] if TEST_WORKERS != "0" else []
    env = {**CPU_ENV, "OMP_NUM_THREADS": "1"} if xdist else CPU_ENV
    session.run("pytest", "-q", "--durations=25", *xdist, *session.posargs, env=env)


@nox.session(reuse_venv=True)
def lint(session: nox.Session) -> None:
    """ruff over the whole repository."""
    session.install("ruff>=0.4")
    session.run("ruff", "check", ".")


@nox.session(reuse_venv=True)
def bench(session: nox.Session) -> None:
    """The quick CPU suite into results/<run-name>/ (default run name: cpu-quick)."""
    _install(session, "dev")
    name = session.posargs[0] if session.posargs else "cpu-quick"
    session.run("python", "-m", "bench", "run", "--suite", "quick", "--out", f"results/{name}",
                env={"PYTHONUNBUFFERED": "1"})


@nox.session(name="bench-gpu", venv_backend="none")
def bench_gpu(session: nox.Session) -> None:
    """Full GPU job in the current interpreter (no venv, no network): nox -s bench-gpu -- OUT_DIR [--dry-run]."""
    session.run("python", "-m", "bench.gpu_job", *(session.posargs or ["results/gpu"]))


# What the README quotes for `nox -s benchmarks`: 2 threads, batch 1, 15 rounds (the benchmark reads these; its own
# defaults are 1 thread and 10 rounds). Set them in the environment to measure something else.
# What the README's models-vs-torchvision table was measured with (tests/test_readme_results.py holds them equal).
# OMP_WAIT_POLICY=PASSIVE: on a shared CPU, OpenMP's spin-waiting made 2 threads 4x slower than 1
# (results/cpu-vs-torchvision/omp_wait_policy_check.txt).
BENCHMARKS_ENV = {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "VB_BENCH_THREADS": "2", "VB_BENCH_BATCH": "1",
                  "VB_BENCH_ROUNDS": "10", "VB_BENCH_WARMUP": "1"}


@nox.session(reuse_venv=True)
def benchmarks(session: nox.Session) -> None:
    """pytest-benchmark: our models against torchvision's twins on the CPU, interleaved (ABBA), 2 threads, 10 rounds
    (not in `tests`)."""
    _install(session, "dev")
    env = {k: os.environ.get(k, v) for k, v in BENCHMARKS_ENV.items()}
    session.run("pytest", "tests/benchmarks", "-p", "no:cacheprovider", "-o", "addopts=", "--benchmark-only",
                "--benchmark-columns=median,iqr,rounds", *session.posargs, env=env)


@nox.session(reuse_venv=True)
def compile(session: nox.Session) -> None:  # noqa: A001 - the session's name on the command line
    """bench kernels --compile for one architecture (default sm_90) into results/aot-<arch>/."""
    _install(session, "dev")
    arch = session.posargs[0] if session.posargs else "sm_90"
    session.run("python", "-m", "bench", "kernels", "--compile", "--arch", arch, "--out",
                f"results/aot-{arch.replace('_', '')}", env={"TRITON_INTERPRET": "0", "PYTHONUNBUFFERED": "1"})

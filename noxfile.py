"""Sessions (``nox -l`` lists them):

* ``tests`` (default): the whole CPU test suite; Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1).
* ``lint``: ruff.
* ``bench``: the main job on the CPU, the ``quick`` suite -> ``results/<run-name>/`` (``nox -s bench -- NAME``).
* ``bench-gpu``: the full GPU job (kernel numerics on CUDA, kernel microbenchmarks, model sweep) in the *current*
  interpreter, no new virtualenv, no network: ``nox -s bench-gpu -- OUT_DIR``. Exits non-zero without a CUDA device.
* ``benchmarks``: pytest-benchmark comparisons of our code against its twins (tests/benchmarks/),
  interleaved, as the README's table was measured (``BENCHMARKS_ENV``; the environment overrides).
* ``mutants``: mutation testing (mutmut) of the harness and the kernels' launchers, in the current interpreter
  (``nox -s mutants -- harness`` -> ``results/mutants/<group>/``); not a default session.
* ``compile``: every kernel launch compiled ahead of time for a GPU architecture, no GPU needed
  (``nox -s compile -- sm_90`` -> ``results/aot-sm90/``).

Virtualenvs live outside the clone (``~/.cache/visionbench/nox``) and are reused, so torch (several GB) installs
once per machine; the install step still runs every time, so a missing dependency still fails the session.
"""

from __future__ import annotations

import os
import sys
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


# What the README quotes for `nox -s benchmarks` (the benchmark reads these; its own
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


# --- mutation testing (not in the default sessions) -----------------------------------------------------------------
# Each group: the modules whose mutants are run, and the tests that may kill them. mutmut first runs these tests once
# with tracing and then, per mutant, only the tests that executed the mutated function, so a group's test list can
# be generous without every mutant paying for all of it.
_KERNEL_TESTS = ["-m", "not slow and not gpu"]
MUTANT_GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "stats": (["bench/stats.py"],
              ["tests/bench/test_stats_truth.py", "tests/bench/test_compare.py", "tests/bench/test_repeats.py", "-k",
               "test_stats_truth or known_values or fast_bootstrap or bootstrap_is_seeded or between_run_spread"
               " or injected_drift"]),
    "timing": (["bench/timing.py", "bench/cuda_timing.py"],
               ["tests/bench/test_timing_truth.py", "tests/bench/test_timing.py", "tests/bench/test_cuda_timing.py",
                "tests/bench/test_cpu_isa.py", "-k", "timing or max_config_s"]),
    "memory": (["bench/memory.py"], ["tests/bench/test_flops_memory.py", "tests/bench/test_measure_regimes.py", "-k",
                                     "memory"]),
    # test_flops_truth.py (hand-computed counts, every report word for word) and test_flops_opaque.py (0.5 s) with the
    # FLOP tests of test_flops_memory.py and the runner's per-sample and train counts. Left out: the kernels' formula
    # checks (tests/kernels/test_checker.py, 31 cases, ~3 s: a 1.25x band around the counter, so they see little of
    # flops.py that the exact counts here do not), and the model FLOP tests (Faster R-CNN at 800 px, ViT-B: slow).
    "flops": (["bench/flops.py"], ["tests/bench/test_flops_truth.py", "tests/bench/test_flops_memory.py",
                                   "tests/bench/test_harness_truth.py", "tests/bench/test_flops_opaque.py", "-k",
                                   "not resnet50"]),
    # The runner's direct tests (each under ~8 s here). Left out: the CLI sweep of fake_ok/raise/oom (14 s; the same
    # failure rows are checked through measure() in test_runner_truth.py) and the CLI cuda-only-timer test (7 s; its
    # unsupported rows too), since a surviving mutant of measure() pays for every test that called it.
    "runner": (["bench/runner.py"],
               ["tests/bench/test_runner_truth.py", "tests/bench/test_harness_truth.py", "tests/bench/test_cpu_isa.py",
                "tests/bench/test_measure_regimes.py", "tests/bench/test_flops_opaque.py", "-k",
                "test_runner_truth or test_harness_truth or fallback_dtype or autocast_and_pure or max_config_s_reduces"
                " or flops_are_counted_on_the_cpu or cudnn_autotuning or static_shape or failing_compiled_config"
                " or cache_key or same_weights or unpatched"]),
    # Left out (the time a surviving mutant pays for every test it ran, on 2 cores): the kernel-bench CLI test (45 s),
    # the 300-config FDR sweep (37 s), the repeats sweep (21 s) and bench ab on two worktrees (200 s).
    "compare": (["bench/compare.py", "bench/compare_match.py", "bench/compare_stats.py", "bench/compare_render.py"],
                ["tests/bench/test_compare_truth.py", "tests/bench/test_compare_match_truth.py",
                 "tests/bench/test_compare_render_truth.py", "tests/bench/test_compare_stats.py",
                 "tests/bench/test_compare.py", "tests/bench/test_compare_env.py", "tests/bench/test_repeats.py",
                 "-k", "not kernel_bench_samples and not fdr_keeps_a_large_sweep and not repeats_keep_a_row"
                 " and not bench_ab_end_to_end"]),
    # The kernels' launchers (the Python side of kernel.py, and op.py): their tests run in Triton's interpreter, so
    # these take hours on 2 cores: run them on a bigger machine.
    "depthwise": (["kernels/depthwise_conv/op.py", "kernels/depthwise_conv/kernel.py"],
                  ["tests/kernels/test_depthwise_conv.py", *_KERNEL_TESTS]),
    "window_attention": (["kernels/window_attention/op.py", "kernels/window_attention/kernel.py"],
                         ["tests/kernels/test_window_attention.py", *_KERNEL_TESTS]),
    "roi_align": (["kernels/roi_align/op.py", "kernels/roi_align/kernel.py"],
                  ["tests/kernels/test_roi_align.py", *_KERNEL_TESTS]),
}
# `nox -s mutants -- harness` runs these one after another.
MUTANT_ALIASES = {"harness": ["stats", "timing", "memory", "flops", "runner", "compare"],
                  "kernels": ["depthwise", "window_attention", "roi_align"]}


@nox.session(venv_backend="none")
def mutants(session: nox.Session) -> None:
    """Mutation testing with mutmut: ``nox -s mutants -- GROUP [MUTANT_GLOB ...]`` (a module group above, or
    ``harness`` / ``kernels``) -> results/mutants/<group>/ (score per module, every survivor's diff). Each group runs
    in its own scratch copy of the tracked files, niced; mutmut's cache there is reused by the next run. mutmut
    first runs the group's tests once with tracing, then per mutant only the tests that executed the mutated
    function (fastest first, stopping at the first failure). Runs in the current interpreter (no new virtualenv:
    torch installs once), which needs the ``mutants`` extra: ``pip install -e '.[dev,mutants]'``."""
    import importlib.util

    if importlib.util.find_spec("mutmut") is None:
        session.error(f"mutmut is not installed for {sys.executable}: pip install -e '.[dev,mutants]'")
    name = session.posargs[0] if session.posargs else "harness"
    groups = MUTANT_ALIASES.get(name, [name])
    unknown = [g for g in groups if g not in MUTANT_GROUPS]
    if unknown:
        session.error(f"unknown group {unknown[0]!r}; valid: {', '.join([*MUTANT_GROUPS, *MUTANT_ALIASES])}")
    for group in groups:
        _run_mutmut(session, group, session.posargs[1:])


def _run_mutmut(session: nox.Session, group: str, globs: list[str]) -> None:
    import shutil
    import subprocess

    modules, tests = MUTANT_GROUPS[group]
    repo = Path(__file__).resolve().parent
    scratch = Path(session.create_tmp()) / f"mutants-{group}"
    files = subprocess.run(["git", "ls-files"], cwd=repo, check=True, capture_output=True, text=True).stdout.split()
    # mutmut's cache (scratch/mutants) keys results by the mutated function, not by the tests: a result from before a
    # test changed would be reused, so each run starts fresh unless VB_MUTANTS_RESUME=1 (to finish a stopped run).
    if os.environ.get("VB_MUTANTS_RESUME") != "1" and os.environ.get("VB_MUTANTS_REPORT_ONLY") != "1":
        shutil.rmtree(scratch / "mutants", ignore_errors=True)
    for f in files:  # refresh the sources
        dst = scratch / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, dst)
    cfg = {"source_paths": sorted({m.split("/")[0] for m in modules}), "only_mutate": modules,
           "also_copy": ["bench", "kernels", "models"], "pytest_add_cli_args_test_selection": tests,
           "pytest_add_cli_args": ["-p", "no:cacheprovider", "-o", "addopts=", "-q"],
           # The time limit per mutant is CPU seconds (RLIMIT_CPU, so other load does not count against it):
           # 2 · multiplier · (the tests' traced time + constant) = 4 · (t + 10) s: the forkserver has imported
           # everything already, a worker pays pytest's collection (~1-2 CPU s), and a mutant stuck in a loop costs
           # under a minute of CPU instead of the ten minutes the limit was before.
           "process_isolation": "forkserver", "timeout_multiplier": 2.0, "timeout_constant": 10.0}
    with open(scratch / "pyproject.toml", "a") as fh:
        fh.write("\n" + _toml_section("tool.mutmut", cfg))
    env = {**CPU_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    with session.chdir(scratch):
        jobs = os.environ.get("VB_MUTANTS_JOBS", str(os.cpu_count() or 2))  # 1 on a shared machine
        if os.environ.get("VB_MUTANTS_REPORT_ONLY") != "1":  # =1: only the report (of a stopped run)
            session.run("nice", "-n", "10", sys.executable, "-m", "mutmut", "run", "--max-children", jobs,
                        *globs, env=env, external=True, success_codes=[0, 1])
        _mutants_report(session, modules, repo / "results" / "mutants" / group)


# mutmut's exit codes counted as killed: tests failed, pytest internal error, caught by the type check. Timeouts are
# reported apart and not counted as killed: a worker that runs out of its CPU limit says nothing about the tests.
_KILLED = {1, 3, 37}
_TIMEOUT = {36, -24, 24, 152, 255}


def _mutants_report(session: nox.Session, modules: list[str], out: Path) -> None:
    """results/mutants/<group>/: summary.json (counts per module) and survivors.md (each surviving mutant's diff).

    ``out/equivalent.json`` ({mutant name: why it cannot change behaviour}, written by hand after reading each
    survivor) is kept: those survivors are counted apart. Per module: ``score = killed / (checked - equivalent)``
    and ``raw_score = killed / checked``; timeouts and 'no tests' count as not killed."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    eq_path = out / "equivalent.json"
    equivalent = json.loads(eq_path.read_text()) if eq_path.exists() else {}
    # results/mutants/inprocess_check.py (same mutated sources and switch, one process) checks mutants mutmut's run
    # left unchecked, or that survived it before tests were added: killed if any of its runs killed them (tests are
    # only ever added, so a later kill stands). Those decided by it are reported apart.
    inproc: dict[str, int] = {}
    for f in sorted(out.glob("inprocess*.json")):
        for k, v in json.loads(f.read_text())["results"].items():
            inproc[k] = 1 if v == "killed" or inproc.get(k) == 1 else 0
    summary, survivors = {}, []
    for mod in modules:
        meta = Path("mutants") / f"{mod}.meta"
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        by_mutmut = {k for k, c in codes.items() if c is not None and not (c not in _KILLED and inproc.get(k) == 1)}
        codes = {k: c if k in by_mutmut else inproc.get(k, c) for k, c in codes.items()}
        checked = {k: c for k, c in codes.items() if c is not None}
        killed = sum(c in _KILLED for c in checked.values())
        timeouts = sum(c in _TIMEOUT for c in checked.values())
        equiv = sum(c not in _KILLED and k in equivalent for k, c in checked.items())
        summary[mod] = {"mutants": len(codes), "checked": len(checked), "checked_in_process": len(checked) - len(
                            by_mutmut), "killed": killed, "timeout": timeouts,
                        "survived": len(checked) - killed - timeouts, "equivalent": equiv,
                        "score": round(killed / (len(checked) - equiv), 4) if len(checked) > equiv else None,
                        "raw_score": round(killed / len(checked), 4) if checked else None}
        survivors += [(mod, k, c if k in by_mutmut else "in process") for k, c in sorted(checked.items())
                      if c not in _KILLED]
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = ["# Surviving mutants", "", "score = killed / (checked - equivalent); raw = killed / checked", "",
             "| module | mutants | checked (in process) | killed | timeout | survived | equivalent | score | raw |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | {s['mutants']} | {s['checked']} ({s['checked_in_process']}) | {s['killed']} | {s['timeout']} | "
              f"{s['survived']} | {s['equivalent']} | {s['score']} | {s['raw_score']} |" for m, s in summary.items()]
    # Every survivor's diff from one process (`mutmut show` per mutant costs seconds of start-up each).
    names = json.dumps({name: mod for mod, name, _ in survivors})
    script = ("import json, sys\nfrom mutmut.mutation.diff_apply import get_diff_for_mutant\n"
              "d = {n: get_diff_for_mutant(n, path=p) for n, p in json.loads(sys.argv[1]).items()}\n"
              "open('mutants/survivor-diffs.json', 'w').write(json.dumps(d))")
    session.run(sys.executable, "-c", script, names, silent=True, external=True)
    diffs = json.loads(Path("mutants/survivor-diffs.json").read_text())
    for _mod, name, code in survivors:
        diff = diffs.get(name, "")
        why = f"equivalent: {equivalent[name]}" if name in equivalent else "not equivalent"
        lines += ["", f"## {name} (exit {code}; {why})", "", "```diff", diff.strip(), "```"]
    (out / "survivors.md").write_text("\n".join(lines) + "\n")


def _toml_section(name: str, values: dict[str, object]) -> str:
    import json

    return f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

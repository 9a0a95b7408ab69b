"""Check mutmut's mutants in one process: the same mutated sources and the same switch as ``mutmut run``, without a
fork and a pytest collection per mutant (on 2 cores that overhead, not the tests, bounded ``nox -s mutants``).

    python results/mutants/inprocess_check.py GROUP OUT.json "PYTEST ARGS" MUTANT... | @LISTFILE

GROUP's scratch directory (``nox -s mutants -- GROUP`` made it: ``<nox envdir>/mutants/tmp/mutants-GROUP/mutants``,
the modules rewritten by mutmut with every mutant behind a trampoline) is copied once, with this checkout's
``tests/``; pytest runs ``PYTEST ARGS`` (``-x``) once without a mutant (must pass), then once per mutant with
``MUTANT_UNDER_TEST`` set (the trampolines read it at call time, as in mutmut's own workers), then once more without
a mutant: that last baseline must pass too, or a run leaked state and the results are not kept (exit 1).

OUT.json: ``{"tests": PYTEST ARGS, "results": {mutant: "killed" | "survived"}}``, written after every mutant so a
stopped run resumes. ``noxfile._mutants_report`` reads ``results/mutants/<group>/inprocess.json`` for the mutants
mutmut's run left unchecked and reports them apart (``checked_in_process``).

A mutant counts as killed only when the tests fail with it and pass without it, so a test that does not call the
mutated function cannot kill it; the selection should be the group's (``noxfile.MUTANT_GROUPS``) or a part of it
(fewer kills, never more).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

ENVDIR = Path(os.environ.get("VISIONBENCH_NOX_ENVDIR", Path.home() / ".cache/visionbench/nox"))


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    group, out, targs = argv[0], Path(argv[1]).resolve(), shlex.split(argv[2])
    muts = [m for a in argv[3:] for m in (Path(a[1:]).read_text().split() if a.startswith("@") else [a])]
    src = ENVDIR / "mutants" / "tmp" / f"mutants-{group}" / "mutants"
    if not (src / "bench").is_dir():
        print(f"{src}: no mutated sources; run `nox -s mutants -- {group}` first", file=sys.stderr)
        return 2
    doc = json.loads(out.read_text()) if out.exists() else {}
    if doc and doc.get("tests") != argv[2]:
        print(f"{out} holds results of other tests ({doc.get('tests')!r}); use another file", file=sys.stderr)
        return 2
    repo = Path(__file__).resolve().parents[2]
    snap = Path(tempfile.mkdtemp(prefix=f"vb-inproc-{group}-"))
    for d in ("bench", "kernels", "models"):
        shutil.copytree(src / d, snap / d)
    shutil.copy2(src / "pyproject.toml", snap / "pyproject.toml")
    shutil.copytree(repo / "tests", snap / "tests")
    os.chdir(snap)
    sys.path.insert(0, str(snap))
    import pytest

    def run(mutant: str) -> tuple[int, str]:
        os.environ["MUTANT_UNDER_TEST"] = mutant
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *targs])
        return int(rc), buf.getvalue()

    rc, log = run("")
    if rc != 0:
        print(f"the tests fail without a mutant:\n{log[-3000:]}")
        return 1
    results: dict[str, str] = dict(doc.get("results", {}))
    t0 = time.time()
    for i, m in enumerate(muts, 1):
        if m in results:
            continue
        rc, _ = run(m)
        results[m] = "survived" if rc == 0 else "killed"
        if rc == 0:
            print("SURVIVED", m, flush=True)
        out.write_text(json.dumps({"tests": argv[2], "results": results}, indent=0) + "\n")
        if i % 25 == 0:
            print(f"{i}/{len(muts)} in {time.time() - t0:.0f} s", flush=True)
    rc, log = run("")
    if rc != 0:
        out.unlink()
        print(f"the tests fail without a mutant after the run (state leaked between runs); results dropped:\n"
              f"{log[-3000:]}")
        return 1
    shutil.rmtree(snap, ignore_errors=True)
    killed = sum(v == "killed" for v in results.values())
    print(f"checked {len(results)}: killed {killed}, survived {len(results) - killed}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

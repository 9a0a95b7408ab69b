"""``noxfile._mutants_report``: the per-module scores of ``nox -s mutants`` from mutmut's results and the in-process
checker's (``results/mutants/inprocess_check.py``), with equivalent survivors counted apart."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _noxfile() -> Any:
    pytest.importorskip("nox")
    spec = importlib.util.spec_from_file_location("vb_noxfile", ROOT / "noxfile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Session:
    """The one call the report makes: a subprocess writing every survivor's diff (mutmut's API) to a file."""

    def run(self, *args: Any, **kwargs: Any) -> None:
        names = json.loads(args[-1])
        Path("mutants/survivor-diffs.json").write_text(json.dumps({n: f"diff of {n}" for n in names}))


def test_scores_merge_mutmut_and_in_process_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nf = _noxfile()
    m = "bench.mod.x_f__mutmut_"
    (tmp_path / "mutants/bench").mkdir(parents=True)
    # mutmut: 1 killed (1), 2 killed by a type check (37), 3 survived, 4 timed out, 5 survived (equivalent),
    # 6 survived then killed in process after a test was added, 7-9 unchecked (in process: killed, survived, none)
    codes = {f"{m}1": 1, f"{m}2": 37, f"{m}3": 0, f"{m}4": 36, f"{m}5": 0, f"{m}6": 0, f"{m}7": None, f"{m}8": None,
             f"{m}9": None}
    (tmp_path / "mutants/bench/mod.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "equivalent.json").write_text(json.dumps({f"{m}5": "same value", f"{m}1": "ignored: it was killed"}))
    (out / "inprocess-a.json").write_text(json.dumps({"tests": "a", "results": {f"{m}6": "killed",
                                                                                  f"{m}7": "survived"}}))
    (out / "inprocess-b.json").write_text(json.dumps({"tests": "b", "results": {f"{m}7": "killed",
                                                                                  f"{m}8": "survived",
                                                                                  f"{m}3": "survived"}}))
    monkeypatch.chdir(tmp_path)
    nf._mutants_report(_Session(), ["bench/mod.py"], out)
    s = json.loads((out / "summary.json").read_text())["bench/mod.py"]
    assert s == {"mutants": 9, "checked": 8, "checked_in_process": 3, "killed": 4, "timeout": 1, "survived": 3,
                 "equivalent": 1, "score": round(4 / 7, 4), "raw_score": 0.5}
    md = (out / "survivors.md").read_text()
    assert f"## {m}3 (exit 0; not equivalent)" in md and f"diff of {m}3" in md
    assert f"## {m}4 (exit 36; not equivalent)" in md
    assert f"## {m}5 (exit 0; equivalent: same value)" in md
    assert f"## {m}8 (exit in process; not equivalent)" in md
    for gone in (1, 2, 6, 7, 9):
        assert f"## {m}{gone} " not in md
    assert "| bench/mod.py | 9 | 8 (3) | 4 | 1 | 3 | 1 | 0.5714 | 0.5 |" in md

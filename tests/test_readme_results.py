"""The README's figures against the committed files they come from, so a stale number fails CI instead of waiting for
an audit. No measurement: every check reads README.md, results/ and noxfile.py.

Figures are found by the words around them (regular expressions over the README with line breaks folded), never by
line number, so edits elsewhere in the README do not disturb these checks; a rewording that drops an anchor fails
with a message saying which figure could not be found, and the check is then updated with the text.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest

import models

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


@pytest.fixture(scope="module")
def readme() -> str:
    return (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def text(readme: str) -> str:
    """The README with line breaks and runs of spaces folded into single spaces (sentences wrap anywhere)."""
    return re.sub(r"\s+", " ", readme)


def find(text: str, pattern: str) -> re.Match[str]:
    m = re.search(pattern, text)
    assert m, f"README no longer contains a figure matching {pattern!r}: update this check along with the text"
    return m


def _pct(x: str) -> float:
    return float(x.replace("%", "").replace("+", ""))


# --- the results index ----------------------------------------------------------------------------------------------


def test_every_linked_result_exists_and_every_result_is_linked(readme: str) -> None:
    links = set(re.findall(r"\]\((results/[^)#\s]+)\)", readme))
    assert links, "no results/ links in the README"
    missing = sorted(link for link in links if not (ROOT / link).exists())
    assert not missing, f"README links to files that are not committed: {missing}"
    linked_dirs = {Path(link).parts[1] for link in links}
    for d in sorted(linked_dirs):
        has_env = any((RESULTS / d).rglob("env.json"))
        assert has_env, f"results/{d} has no env.json (machine, threads, commit) behind its figures"
    committed = {p.name for p in RESULTS.iterdir() if p.is_dir()}
    assert committed <= linked_dirs, f"results/ directories missing from the README's index: {committed - linked_dirs}"


# --- kernels --------------------------------------------------------------------------------------------------------


def test_kernel_check_counts_and_worst_errors(text: str) -> None:
    m = find(text, r"python -m bench kernels --check`\): (\d+) rows .*?\*\*(\d+) pass\*\*")
    df = pd.read_csv(RESULTS / "cpu-kernels-check" / "kernels_check.csv")
    assert (int(m[1]), int(m[2])) == (len(df), int((df.status == "pass").sum()))
    sha = find(text, r"\*\*\d+ pass\*\*, in [^,]+, at commit ([0-9a-f]{7,})")[1]  # the code the figures belong to
    assert df.git_sha.astype(str).str.startswith(sha).all(), f"kernels_check.csv was not made at {sha}"
    # "the worst kernel error is at most 0.07 of its bound for depthwise_conv and roi_align and 0.50 for ..."
    m = find(text, r"worst kernel error is at most ([\d.]+) of its bound for depthwise_conv and roi_align and "
                   r"([\d.]+) for window_attention")
    ratio = pd.concat([df.max_abs_err / df.tol_max_abs, df.rel_fro_err / df.tol_rel_fro], axis=1).min(axis=1)
    worst = ratio.groupby(df.kernel).max()
    stated_small, stated_wa = float(m[1]), float(m[2])
    digits = len(m[1].split(".")[1])
    assert round(max(worst["depthwise_conv"], worst["roi_align"]), digits) == stated_small, worst.to_dict()
    assert round(worst["window_attention"], len(m[2].split(".")[1])) == stated_wa, worst.to_dict()


def _env_sha(d: str) -> tuple[str, bool]:
    env = json.loads((RESULTS / d / "env.json").read_text())
    return env["git_sha"], bool(env["git_dirty"])


def test_aot_and_preflight_counts(text: str) -> None:
    """Every ``aot-*`` set was made on the operators (at one of the commits the README names, clean tree) and has the
    quoted counts, or the README names it as made before the operator rewrite; the preflight sets were made at the
    commit the README names, and hold its counts (kernel cases, model launches `ok`, the unsupported configs)."""
    m = find(text, r"Measured on the operators \(code of commit ([0-9a-f]{7,}); ([^)]*)\) .*?"
                   r"\*\*(\d+) of (\d+) launches `ok`\*\* for sm_90 with Triton 3\.8")
    made_at = {m[1], *re.findall(r"\b[0-9a-f]{7,12}\b", m[2])}
    stale_m = re.search(r"Not rerun since the operator rewrite: ([^.]*)\.", text)  # absent once all are rerun
    stale = stale_m[1] if stale_m else ""
    for d in sorted(p.name for p in RESULTS.glob("aot-*")):
        sha, dirty = _env_sha(d)
        if f"`{d}/`" in stale:  # still the result from before the rewrite, and the README says so with its commit
            assert not any(sha.startswith(c) for c in made_at), f"{d} was regenerated: move it out of 'Not rerun'"
            continue
        assert any(sha.startswith(c) for c in made_at) and not dirty, f"{d} was made at {sha} (dirty={dirty})"
        df = pd.read_csv(RESULTS / d / "kernels_compile.csv")
        assert (int(m[3]), int(m[4])) == (int((df.status == "ok").sum()), len(df)), d
    m = find(text, r"(\d+) kernel-case launches and (\d+) launches from the (\d+) `triton`-backend model configs "
                   r"that ran, all `ok`.*? and the (\d+) bf16 Faster R-CNN configs `unsupported`")
    at = find(text, r"Measured on this CPU at commit ([0-9a-f]{7,}) \(the operators; a clean tree\)")
    for d in ("gpu-preflight-sm90", "gpu-preflight-sm90-triton3.6"):
        df = pd.read_csv(RESULTS / d / "kernels_compile.csv")
        model_rows = df["shape"].str.fullmatch("(" + "|".join(models.list_models()) + r")_b\d+")
        unsupported = df[df.status == "unsupported"]
        assert (int(m[1]), int(m[2]), int(m[4])) == (
            int((~model_rows).sum()), int((model_rows & (df.status == "ok")).sum()), len(unsupported)), d
        assert set(df.status) <= {"ok", "unsupported"}, d
        assert set(zip(unsupported["shape"].str.rsplit("_b", n=1).str[0], unsupported["dtype"])) == {
            ("fasterrcnn_resnet50_fpn", "bf16")}, d
        configs = df[model_rows].groupby(["shape", "dtype"]).ngroups
        assert int(m[3]) + int(m[4]) == configs == 32, d  # every triton-backend config of the GPU job
        sha, dirty = _env_sha(d)
        assert sha.startswith(at[1]) and not dirty, f"{d} was made at {sha} (dirty={dirty}), README says {at[1]}"


# --- the quick suite ------------------------------------------------------------------------------------------------


def test_quick_suite_counts(text: str) -> None:
    m = find(text, r"eager inference: (\d+) configs: (\d+) `ok`, (\d+) `unsupported`\)")
    df = pd.read_csv(RESULTS / "cpu-quick" / "results.csv")
    assert (int(m[1]), int(m[2]), int(m[3])) == (len(df), int((df.status == "ok").sum()),
                                                 int((df.status == "unsupported").sum()))
    worst = float(find(text, r"every fp32 row `ok` and within\s+([\d.e-]+) of the float64 model")[1])
    assert worst == float(f"{df[df.status == 'ok'].acc_rel_fro.max():.1e}")
    isa = find(text, r"2-core AMD EPYC with \*\*(\w+)\*\* only")[1]
    assert set(df.cpu_isa) == {isa}


# --- compare examples -----------------------------------------------------------------------------------------------


def test_eager_vs_compile_example_is_the_committed_output(readme: str, text: str) -> None:
    d = RESULTS / "cpu-resnet50-eager-vs-compile"
    start = readme.index("Real output, resnet50 eager vs compile")
    quoted = []
    for line in readme[start:].splitlines()[2:]:
        if quoted and not line.startswith("> "):
            break
        if line.startswith("> "):
            quoted.append(line[2:])
    committed = (d / "compare.md").read_text().splitlines()
    assert quoted and all(q in committed for q in quoted), "the quoted compare output differs from compare.md"
    m = find(text, r"Real output, resnet50 eager vs compile, batch (\d+), (\w+), CPU, (\d+) threads?")
    for run in ("eager", "compile"):
        env = json.loads((d / run / "env.json").read_text())
        rows = pd.read_csv(d / run / "results.csv")
        assert env["threads"] == int(m[3]) and set(rows.threads) == {int(m[3])}, run
        assert set(rows.batch_size) == {int(m[1])} and set(rows.dtype) == {m[2]}, run


def test_repeat_run_figures(text: str) -> None:
    """The `bench ab` figures (A/A with 3 runs and with one, the known slowdown, the cost of --repeats 3) against the
    compare.json / ab.json files of results/cpu-repeat."""
    def run(name: str) -> tuple[dict, dict]:
        d = RESULTS / "cpu-repeat" / name
        return json.loads((d / "compare.json").read_text()), json.loads((d / "ab.json").read_text())

    (aa3, ab3), (aa1, ab1), (pw, _) = run("aa-repeats"), run("aa-single"), run("power-sleep")
    m = find(text, r"A/A (\d+) of (\d+) flagged with 3 runs,\s+(\d+) of (\d+) with one run")
    flagged = lambda c: c["summary"]["slower"] + c["summary"]["faster"]  # noqa: E731
    assert (int(m[1]), int(m[2]), int(m[3]), int(m[4])) == (flagged(aa3), aa3["summary"]["matched"], flagged(aa1),
                                                            aa1["summary"]["matched"])
    assert ab3["repeats"] == 3 and ab1["repeats"] == 1
    (row,) = pw["rows"]
    change = find(text, r"a known \+10% \(a test model sleeping [\d.]+ vs [\d.]+ ms\) was (\*\*not\*\* )?detected "
                        r"\(([+-][\d.]+)%")
    assert (change[1] is None) == (row["verdict"] == "slower")
    assert float(change[2]) == round((row["ratio"] - 1) * 100, 1)
    (p30, _) = run("power-sleep-30")
    (row30,) = p30["rows"]
    m30 = find(text, r"a known \+30% of the sleep \([\d.]+ vs [\d.]+ ms, about \+\d+% of the step\) was\s+"
                     r"\(([+-][\d.]+)% \[([+-][\d.]+)%, ([+-][\d.]+)%\]")
    assert row30["verdict"] == "slower"
    assert [float(x) for x in m30.groups()] == [round((row30[k] - 1) * 100, 1) for k in ("ratio", "ci_low", "ci_high")]
    cost = float(find(text, r"`--repeats 3` cost ([\d.]+)× the wall time of one round")[1])
    assert cost == round(ab3["wall_s"] / ab1["wall_s"], 1)


def test_synthetic_false_positive_figures(text: str) -> None:
    md = (RESULTS / "synthetic-compare-false-positives" / "false_positives.md").read_text()
    m = find(text, r"the default settings flagged (\d+) of (\d+), `--no-fdr` (\d+) of (\d+) \(([\d.]+)%\)")
    default = find(md, r"\| default \(BH\) \| (\d+)/(\d+) \|")
    no_fdr = find(md, r"\| --no-fdr \| (\d+)/(\d+) \| ([\d.]+)% \|")
    assert (m[1], m[2], m[3], m[4], m[5]) == (default[1], default[2], no_fdr[1], no_fdr[2], no_fdr[3])


def test_mutation_scores(text: str) -> None:
    """The results index's mutation-testing figures against every group's summary.json."""
    summaries = {mod: s for f in sorted((RESULTS / "mutants").glob("*/summary.json"))
                 for mod, s in json.loads(f.read_text()).items()}
    m = find(text, r"checked — ((?:`\w+`, )+)`(\w+)`: 100% of the non-equivalent mutants killed in each "
                   r"\(raw ([\d.]+)-([\d.]+)%; ([\d,]+) of ([\d,]+) mutants killed, (\d+) equivalent")
    named = {n.strip("` ") for n in m[1].split(",") if n.strip()} | {m[2]}
    assert named == {Path(mod).stem for mod in summaries if mod.startswith("bench/")}
    for mod, s in summaries.items():
        assert s["checked"] == s["mutants"] and s["killed"] + s["equivalent"] == s["mutants"], mod  # 100%, all
    raws = [100 * s["killed"] / s["mutants"] for s in summaries.values()]
    assert (float(m[3]), float(m[4])) == (round(min(raws), 1), round(max(raws), 1))
    assert int(m[5].replace(",", "")) == sum(s["killed"] for s in summaries.values())
    assert int(m[6].replace(",", "")) == sum(s["mutants"] for s in summaries.values())
    assert int(m[7]) == sum(s["equivalent"] for s in summaries.values())


# --- sessions -------------------------------------------------------------------------------------------------------


def test_benchmarks_session_runs_what_the_readme_quotes(text: str) -> None:
    m = find(text, r"fp32, batch (\d+), (\d+) threads with `OMP_WAIT_POLICY=(\w+)`, (\d+) rounds after (\d+) warm-up")
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    env = next(ast.literal_eval(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
               and any(getattr(t, "id", None) == "BENCHMARKS_ENV" for t in node.targets))
    assert (env["VB_BENCH_BATCH"], env["VB_BENCH_THREADS"], env["OMP_WAIT_POLICY"], env["VB_BENCH_ROUNDS"],
            env["VB_BENCH_WARMUP"]) == (m[1], m[2], m[3], m[4], m[5])


def test_gpu_job_config_counts(text: str) -> None:
    from bench.gpu_job import model_configs

    configs = model_configs()
    by_backend = {b: sum(c.backend == b for c in configs) for b in ("triton", "compile")}
    assert int(find(text, r"--dry-run` lists its (\d+) model configs")[1]) == len(configs)
    assert int(find(text, r"the (\d+) `compile` model configs")[1]) == by_backend["compile"]
    ran = find(text, r"launches from the (\d+) `triton`-backend model configs that ran.*? and the (\d+) bf16 Faster")
    assert int(ran[1]) + int(ran[2]) == by_backend["triton"]  # the preflight covers every triton config

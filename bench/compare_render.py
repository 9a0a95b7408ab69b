"""``bench compare``, rendering: the PR comment (markdown), CSV and JSON of a :class:`bench.compare.Comparison`."""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any

from .compare_match import CHECKS, OK
from .compare_stats import RUN_LEVEL, SAMPLE_LEVEL, pct

if TYPE_CHECKING:
    from .compare import Comparison

__all__ = ["render_markdown", "render_csv", "render_json", "summary_line"]


# Notes that describe how a config was measured or judged, not a change: they do not make a row notable.
_CONTEXT_NOTES = ("(no samples", "medians only", "noisy", "between-run spread", "one run per side")


def _is_notable(r: dict[str, Any]) -> bool:
    changes = [n for n in r["notes"] if not any(c in n for c in _CONTEXT_NOTES)]
    return r["verdict"] != "unchanged" or r["regression"] or bool(changes) or bool(r.get("within_spread"))


def _num(v: Any, spec: str = ".3g") -> str:
    return "—" if v is None else format(float(v), spec)


def _change_cell(r: dict[str, Any]) -> str:
    if r["ratio"] is None:
        return "—"
    s = pct(r["ratio"])
    if r["ci_low"] is not None:
        s += f" [{pct(r['ci_low'])}, {pct(r['ci_high'])}]"
    return s


def _verdict_cell(r: dict[str, Any]) -> str:
    v = r["verdict"]
    return {"slower": "🔴 **slower**", "faster": "🟢 faster", "regression": "🔴 **regression**",
            "fixed": "🟢 fixed"}.get(v, v)


def _table(rows: list[dict[str, Any]], conf: float) -> list[str]:
    out = [f"| config | base p50 | new p50 | change [{conf:.0%} CI] | q (p) | verdict | notes |",
           "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        unit = f" {r['unit']}" if r["unit"] and r["base_p50"] is not None else ""
        base = _num(r["base_p50"], ".4g") + unit if r["base_status"] in (OK,) else r["base_status"]
        new = _num(r["new_p50"], ".4g") + unit if r["new_status"] in (OK,) else r["new_status"]
        if r["kind"] == CHECKS.name:
            base, new = r["base_status"], r["new_status"]
        notes = "; ".join(n.replace("|", "\\|") for n in r["notes"])
        pq = r["q_value"] if r.get("q_value") is not None else r["p_value"]
        p = "—" if pq is None else (f"{pq:.2g}" if pq >= 1e-4 else "<1e-4")
        out.append(f"| {r['config']} | {base} | {new} | {_change_cell(r)} | {p} | {_verdict_cell(r)} | {notes} |")
    return out


def summary_line(c: Comparison) -> str:
    n = c.counts()
    head = f"❌ **{n['regressions']} regression(s)**" if n["regressions"] else "✅ **no regressions**"
    parts = [f"{n['slower']} slower", f"{n['faster']} faster", f"{n['unchanged']} unchanged of {n['matched']} matched"]
    other = n["matched"] - n["slower"] - n["faster"] - n["unchanged"]
    if other:
        parts.append(f"{other} status change(s)")
    if n["unmatched"]:
        parts.append(f"{n['only_in_base']} only in base, {n['only_in_new']} only in new")
    env = " · ⚠️ environments differ" if any(d["material"] for d in c.env_diff) else ""
    env += " · ⚠️ machine state differs" if c.state_warnings else ""
    return f"{head}: " + ", ".join(parts) + f" (threshold ±{c.opts.threshold:.0%}){env}"


def render_markdown(c: Comparison) -> str:
    """A PR comment: summary line, environment warning, significant changes, the rest folded in ``<details>``."""
    o = c.opts
    out = ["## visionbench compare", "", summary_line(c), "",
           f"base `{c.base.path}` → new `{c.new.path}`", ""]
    material = [d for d in c.env_diff if d["material"]]
    if material:
        out += ["> [!WARNING]", "> The two runs' environments differ, so timings may not be comparable: "
                + "; ".join(f"{d['field']} `{d['base']}` → `{d['new']}`" for d in material), ""]
    if c.state_warnings:
        out += ["> [!WARNING]", "> The machine state differed between the two runs (clocks, ISA, throttling, load): "
                + "; ".join(c.state_warnings), ""]
    single = [r for r in c.rows if r["method"] == SAMPLE_LEVEL]
    if single:
        out += [f"> [!NOTE]\n> {len(single)} of {len(c.rows)} configs were measured in one run per side: their "
                "interval covers the noise *within* a run, not the drift *between* runs (clocks, thermal state, "
                "allocator, other tenants), so a verdict may be a property of the run rather than the code. CPU "
                f"configs under 1 ms need ±{o.single_run_threshold:.0%} there. Use `run --repeats 3` on both sides "
                "or `bench ab` for run-level statistics.", ""]
    noisy = [r for r in c.rows if any(n.endswith("flagged noisy") for n in r["notes"])]
    if noisy:
        out += [f"> [!NOTE]\n> {len(noisy)} of {len(c.rows)} configs were flagged noisy (IQR/median > 10%) in base "
                "or new: the interval only covers the noise *within* each run, so treat their verdicts with care and "
                "rerun on a quiet machine.", ""]
    notable = sorted((r for r in c.rows if _is_notable(r)),
                     key=lambda r: (not r["regression"], -abs((r["ratio"] or 1.0) - 1)))
    rest = [r for r in c.rows if not _is_notable(r)]
    if notable:
        out += [f"### Significant changes ({len(notable)})", "", *_table(notable, o.confidence), ""]
    else:
        out += ["No significant changes.", ""]
    if rest:
        out += [f"<details><summary>No significant change ({len(rest)})</summary>", "",
                *_table(rest, o.confidence), "", "</details>", ""]
    if c.unmatched:
        out += [f"<details><summary>Unmatched configs ({len(c.unmatched)})</summary>", ""]
        out += [f"- only in {u['side']} ({u['kind']}): {u['config']}" for u in c.unmatched]
        out += ["", "</details>", ""]
    if c.env_diff:
        out += ["<details><summary>Environment diff</summary>", "", "| field | base | new |", "|---|---|---|"]
        out += [f"| {d['field']} | {d['base']} | {d['new']} |" for d in c.env_diff]
        out += ["", "</details>", ""]
    ignore = f" Matched ignoring {', '.join(o.match_ignore)}." if o.match_ignore else ""
    test = ("p adjusted by Benjamini–Hochberg over the configs compared with samples (q)" if o.fdr
            else "p (not adjusted for multiple comparisons)")
    run_level = any(r["method"] == RUN_LEVEL for r in c.rows)
    levels = (f"With several runs per side: change = ratio of the medians of per-run medians, {o.confidence:.0%} "
              f"hierarchical bootstrap interval (runs, then samples within each run), Welch's t-test on the log "
              f"per-run medians, and slower/faster also needs |change| > the between-run spread (max/min − 1 of the "
              f"per-run medians). With one run per side: " if run_level else "")
    out += [f"<sub>{levels}change = median(new)/median(base) − 1 of the per-sample latencies; {o.confidence:.0%} "
            f"percentile bootstrap interval ({o.resamples} resamples, seed {o.seed}); significant when the interval "
            f"excludes 0 and the Mann–Whitney {test} < {1 - o.confidence:.2g}; slower/faster needs |change| ≥ "
            f"{o.threshold:.0%} (±{o.single_run_threshold:.0%} for a CPU config under 1 ms in one run per side). "
            f"Peak memory flagged at ±{o.mem_threshold:.0%}. Regressions: slower, ok → failed status, memory growth, "
            f"numerics pass → fail.{ignore}</sub>"]
    return "\n".join(out) + "\n"


_CSV_COLUMNS = ["kind", "config", "verdict", "regression", "ratio", "ci_low", "ci_high", "p_value", "q_value",
                "significant", "threshold", "spread", "reps_base", "reps_new", "compile_ratio",
                "base_p50", "new_p50", "unit", "n_base", "n_new", "base_status", "new_status", "method", "notes",
                "base_line", "new_line"]


def _records(c: Comparison) -> list[dict[str, Any]]:
    recs = [{k: ("; ".join(r[k]) if k == "notes" else r.get(k)) for k in _CSV_COLUMNS} for r in c.rows]
    recs += [{"kind": u["kind"], "config": u["config"], "verdict": f"only_in_{u['side']}", "regression": False}
             for u in c.unmatched]
    return recs


def render_csv(c: Comparison) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in _records(c):
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in _CSV_COLUMNS})
    return buf.getvalue()


def render_json(c: Comparison) -> str:
    doc = {"base": str(c.base.path), "new": str(c.new.path), "options": {**c.opts.__dict__},
           "summary": c.counts(), "env_diff": c.env_diff, "machine_state_warnings": c.state_warnings,
           "rows": [{**r} for r in c.rows], "unmatched": c.unmatched}
    return json.dumps(doc, indent=1, default=str) + "\n"



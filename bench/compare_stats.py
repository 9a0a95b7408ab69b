"""``bench compare``, statistics: the latency estimate and verdict of one matched config, and the FDR adjustment.

Method by what the two sides hold (:func:`latency`):

* at least 2 repetitions per side with samples: run-level (:func:`bench.stats.compare_repeated`): hierarchical
  bootstrap interval, Welch's t-test on the log per-run medians; a verdict also needs the change to exceed the
  between-run spread (the largest relative range of the per-run medians on either side);
* otherwise, samples on both sides: the per-sample bootstrap and Mann–Whitney test of one run per side
  (:func:`bench.stats.compare_samples`), which cannot see drift between runs. Then a CPU config whose base median
  is under 1 ms needs ``|change| >= max(--threshold, --single-run-threshold)`` (default 25%: the widest A/A
  false "slower" of such configs measured on this repository's CPU machine, results/cpu-repeat);
* no samples: the p20–p80 ranges must not overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .compare_match import Table, _Kind
from .stats import MIN_SAMPLES, benjamini_hochberg, compare_repeated, compare_samples

__all__ = ["Options", "latency", "decide", "adjust_fdr", "pct", "to_float", "RUN_LEVEL", "SAMPLE_LEVEL",
           "SINGLE_RUN_THRESHOLD"]

RUN_LEVEL = "runs: hierarchical bootstrap+welch"
SAMPLE_LEVEL = "bootstrap+mann-whitney"

# Single run per side, CPU, base median < 1 ms: the minimum |change| of a verdict (see the module docstring).
SINGLE_RUN_THRESHOLD = 0.25


@dataclass(frozen=True)
class Options:
    threshold: float = 0.05
    mem_threshold: float = 0.10
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    match_ignore: tuple[str, ...] = ()
    fdr: bool = True  # Benjamini–Hochberg over the configs tested with samples
    single_run_threshold: float = SINGLE_RUN_THRESHOLD
    pool_runs: bool = False  # treat a config's repetitions as one run (per-sample statistics; for A/A studies)
    compile_threshold: float = 0.25  # compile_ms change to report (first-call times vary more than steady state)


def to_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%"


def _runs(by_rep: dict[int, np.ndarray] | None) -> list[np.ndarray]:
    return [a for _, a in sorted((by_rep or {}).items()) if len(a) >= MIN_SAMPLES]


def latency(kind: _Kind, b: dict[str, Any], n: dict[str, Any], bt: Table, nt: Table, bkey: tuple[str, ...],
            nkey: tuple[str, ...], opts: Options, seed: int) -> dict[str, Any]:
    """Ratio, interval, p-value, significance, the method used and the threshold that applies, for two ok rows."""
    bp, np50 = float(b[kind.p50]), float(n[kind.p50])
    br, nr = _runs(bt.rep_samples.get(bkey)), _runs(nt.rep_samples.get(nkey))
    if len(br) >= 2 and len(nr) >= 2 and not opts.pool_runs:
        est = compare_repeated(br, nr, n_boot=opts.resamples, confidence=opts.confidence, seed=seed)
        return {"ratio": est.ratio, "ci_low": est.ci_low, "ci_high": est.ci_high, "p_value": est.p_value,
                "significant": est.significant, "n_base": est.n_base, "n_new": est.n_new, "method": RUN_LEVEL,
                "reps_base": est.reps_base, "reps_new": est.reps_new, "spread": est.spread,
                "threshold": opts.threshold, "base_p50": float(np.median([np.median(r) for r in br])),
                "new_p50": float(np.median([np.median(r) for r in nr]))}
    bs, ns = bt.samples.get(bkey), nt.samples.get(nkey)
    threshold = opts.threshold
    unit_ms = 1e-3 if kind.unit == "µs" else 1.0
    if str(b.get("device") or "") == "cpu" and bp * unit_ms < 1.0 and len(br) < 2:
        threshold = max(threshold, opts.single_run_threshold)  # drift between runs is not in the interval
    if bs is not None and ns is not None and len(bs) >= MIN_SAMPLES and len(ns) >= MIN_SAMPLES:
        est = compare_samples(bs, ns, n_boot=opts.resamples, confidence=opts.confidence, seed=seed)
        return {"ratio": est.ratio, "ci_low": est.ci_low, "ci_high": est.ci_high, "p_value": est.p_value,
                "significant": est.significant, "n_base": est.n_base, "n_new": est.n_new, "threshold": threshold,
                "method": SAMPLE_LEVEL, "base_p50": float(np.median(bs)), "new_p50": float(np.median(ns)),
                "reps_base": len(br) or 1, "reps_new": len(nr) or 1}
    out = {"ratio": np50 / bp, "ci_low": None, "ci_high": None, "p_value": None,
           "n_base": to_float(b.get("n_samples")), "n_new": to_float(n.get("n_samples")), "base_p50": bp,
           "new_p50": np50, "threshold": threshold}
    lo_b, hi_b, lo_n, hi_n = (to_float(b.get(kind.p20)), to_float(b.get(kind.p80)), to_float(n.get(kind.p20)),
                              to_float(n.get(kind.p80)))
    if None in (lo_b, hi_b, lo_n, hi_n):
        return {**out, "significant": False, "method": "medians only (no samples, no p20/p80)"}
    return {**out, "significant": bool(lo_n > hi_b or hi_n < lo_b), "method": "p20-p80 overlap (no samples)"}


def decide(out: dict[str, Any], opts: Options) -> None:
    """Latency verdict of an ok → ok pair: significant, ``|change| >=`` the threshold that applies, and (run level)
    ``|change| >`` the between-run spread."""
    change = out["ratio"] - 1
    threshold = out.get("threshold", opts.threshold)
    spread = out.get("spread") or 0.0
    if out["significant"] and abs(change) >= threshold and abs(change) > spread:
        out["verdict"] = "slower" if change > 0 else "faster"
        out["regression"] = change > 0 or out["mem_growth"]
    else:
        out["verdict"] = "unchanged"
        out["regression"] = out["mem_growth"]
        out["within_spread"] = bool(out["significant"] and abs(change) >= threshold and abs(change) <= spread)


def adjust_fdr(rows: list[dict[str, Any]], opts: Options) -> None:
    """Benjamini–Hochberg over the rows tested with samples: ``q_value``, and significance needs ``q`` < alpha."""
    tested = [r for r in rows if r["p_value"] is not None and r["method"] in (SAMPLE_LEVEL, RUN_LEVEL)]
    if not opts.fdr or not tested:
        return
    for r, q in zip(tested, benjamini_hochberg([r["p_value"] for r in tested])):
        r["q_value"] = float(q)
        if r["significant"] and q >= 1.0 - opts.confidence:
            r["significant"] = False
            decide(r, opts)

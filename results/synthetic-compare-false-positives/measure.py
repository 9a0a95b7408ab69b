"""False-positive rate of ``bench compare`` on synthetic noise: both runs drawn from the same lognormal (30% CV),
40 configs × 30 samples (the scenario of tests/bench/test_compare.py), seeds 0-9, with the default Benjamini-Hochberg
adjustment and with ``--no-fdr``.

    python results/synthetic-compare-false-positives/measure.py   # -> false_positives.md and env.json here
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.compare import Options, compare_runs, load_run  # noqa: E402
from bench.config import Config  # noqa: E402
from bench.env import collect_env  # noqa: E402
from bench.io import RowWriter, append_jsonl  # noqa: E402
from bench.runner import RESULT_COLUMNS  # noqa: E402

HERE = Path(__file__).resolve().parent
SEEDS, CONFIGS, SAMPLES, CV = range(10), 40, 30, 0.3


def write_run(d: Path, runs: dict[Config, np.ndarray]) -> Path:
    d.mkdir(parents=True)
    w = RowWriter(d / "results.csv", RESULT_COLUMNS)
    for cfg, s in runs.items():
        q = np.quantile(s, [0.2, 0.5, 0.8])
        w.append({**cfg.as_dict(), "status": "ok", "latency_ms_p20": q[0], "latency_ms_p50": q[1],
                  "latency_ms_p80": q[2], "n_samples": len(s)})
        append_jsonl(d / "samples.jsonl", {"key": list(cfg.key()), **cfg.as_dict(), "samples_ms": list(s)})
    (d / "env.json").write_text("{}")
    return d


def main() -> None:
    sigma = np.sqrt(np.log1p(CV**2))
    flagged = {"default (BH)": 0, "--no-fdr": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            cfgs = [Config("basic_cnn", "eager", "infer", "cpu", dt, b) for b in range(1, 21) for dt in ("fp32", "bf16")]
            base = {c: 3.0 * rng.lognormal(0.0, sigma, SAMPLES) for c in cfgs}
            new = {c: 3.0 * rng.lognormal(0.0, sigma, SAMPLES) for c in cfgs}
            a, b = load_run(write_run(Path(tmp) / f"a{seed}", base)), load_run(write_run(Path(tmp) / f"b{seed}", new))
            for name, opts in (("default (BH)", Options()), ("--no-fdr", Options(fdr=False))):
                flagged[name] += sum(r["verdict"] != "unchanged" for r in compare_runs(a, b, opts).rows)
    total = len(SEEDS) * CONFIGS
    lines = ["# compare on synthetic noise: false positives", "",
             f"{CONFIGS} unchanged configs × {SAMPLES} samples per run, lognormal {CV:.0%} CV, seeds "
             f"{SEEDS.start}-{SEEDS.stop - 1} ({total} comparisons).", "", "| settings | flagged | rate |", "|---|---:|---:|"]
    lines += [f"| {k} | {v}/{total} | {v / total:.1%} |" for k, v in flagged.items()]
    (HERE / "false_positives.md").write_text("\n".join(lines) + "\n")
    (HERE / "env.json").write_text(json.dumps(collect_env(sys.argv), indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

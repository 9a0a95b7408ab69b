"""Print the figures the README quotes from this directory's bench ab runs (python results/cpu-repeat/summarize.py)."""

import json
import statistics
import sys
from pathlib import Path

import pandas as pd

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
for name in ("aa-repeats", "aa-single", "power-sleep", "power-sleep-30"):
    d = HERE / name
    if not (d / "compare.json").is_file():
        print(f"{name}: missing")
        continue
    c, ab = json.loads((d / "compare.json").read_text()), json.loads((d / "ab.json").read_text())
    s = c["summary"]
    print(f"== {name}: {ab['repeats']} ABBA round(s), {s['matched']} configs matched: {s['slower']} slower, "
          f"{s['faster']} faster, {s['unchanged']} unchanged; ab wall {ab['wall_s']:.0f} s "
          "(runs: " + ", ".join(f"{r['side']} {r['wall_s']:.0f}s" for r in ab["runs"]) + ")")
    for r in c["rows"]:
        ci = f"[{(r['ci_low'] - 1) * 100:+.1f}%, {(r['ci_high'] - 1) * 100:+.1f}%]" if r["ci_low"] else ""
        print(f"  {r['config']}: {(r['ratio'] - 1) * 100:+.1f}% {ci} q={r['q_value']:.3g} {r['verdict']} "
              f"({r['method']}; threshold {r['threshold']}; spread {r['spread']}) base {r['base_p50']:.3g} ms")
    for side in ("base", "head"):
        df = pd.read_csv(d / side / "results.csv")
        print(f"  {side}: load average 1 min median {statistics.median(df['loadavg_1m']):.1f} "
              f"(min {df['loadavg_1m'].min():.1f}, max {df['loadavg_1m'].max():.1f}); CPU MHz "
              f"{sorted(set(df['cpu_mhz'].round()))}; ISA {sorted(set(df['cpu_capability']))}")
    if c["machine_state_warnings"]:
        print("  machine state warnings: " + "; ".join(c["machine_state_warnings"]))

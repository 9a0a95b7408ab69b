"""Calibrate :data:`bench.accuracy.TOLERANCES`: eager rows' errors against the float64 model, without timing.

    python -m bench.accuracy_calibrate --models all --dtypes fp32 bf16 --modes infer --input-size 64 \\
        --out results/cpu-accuracy-calibration

For every (model, dtype, mode) it builds the config as the sweep does (:func:`bench.runner.build_step`, eager,
batch ``--batch-size``), runs :func:`bench.accuracy.check` once and writes ``OUT/calibration.csv`` (one row per
config, the ``acc_*`` columns) and ``OUT/summary.md`` (the largest error per dtype and mode, and the model it came
from, beside the bound in force). The bounds are then set with headroom above these figures (see the table's
comment in :mod:`bench.accuracy`). A config that fails is a row with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import accuracy
from .config import Config, expand
from .env import collect_env


def calibrate(configs: list[Config], out: Path | None = None) -> list[dict[str, Any]]:
    """One row per config; with ``out``, ``out/calibration.csv`` is rewritten after each (a killed run keeps its
    finished rows)."""
    from .runner import build_step

    rows: list[dict[str, Any]] = []
    for cfg in configs:
        row: dict[str, Any] = cfg.as_dict()
        t0 = time.perf_counter()
        try:
            _, facts = build_step(cfg)
            accuracy.prepare(cfg, facts)
            row.update(accuracy.check(cfg, facts))
        except Exception as e:  # noqa: BLE001 - a failing config is a row
            row.update(acc_status="error", acc_note=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        if out is not None:
            pd.DataFrame(rows).to_csv(out / "calibration.csv", index=False)
        print(f"{cfg.label()}: {row.get('acc_status')} rel_fro={row.get('acc_rel_fro')} "
              f"grad_rel={row.get('acc_grad_rel')} ({row['wall_s']:.1f} s)", flush=True)
        facts = None
    return rows


def summary(df: pd.DataFrame) -> str:
    lines = ["| dtype | mode | configs | max acc_rel_fro (model) | bound | max acc_grad_rel (model) | bound |",
             "|---|---|---|---|---|---|---|"]
    for (dt, mode), g in df.groupby(["dtype", "mode"]):
        tol = accuracy.TOLERANCES[(dt, mode)]
        cells = []
        for col in ("acc_rel_fro", "acc_grad_rel"):
            v = g[col].dropna() if col in g else pd.Series(dtype=float)
            cells.append(f"{v.max():.3g} ({g.loc[v.idxmax(), 'model']})" if len(v) else "—")
        gbound = "not gated" if tol.grad_rel is None else f"{tol.grad_rel:g}"
        lines.append(f"| {dt} | {mode} | {len(g)} | {cells[0]} | {tol.rel_fro:g} | {cells[1]} | {gbound} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import models

    p = argparse.ArgumentParser(prog="python -m bench.accuracy_calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["all"])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--modes", nargs="+", default=["infer"])
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = models.list_models() if args.models == ["all"] else args.models
    # --input-size for every model whose default input is larger; basic_cnn (32 px) and the ViTs (their position
    # table is built for 224 px and they reject other sizes) keep their default
    sizes = {n: args.input_size for n in names
             if models.get_spec(n).input_shape[-1] > args.input_size and models.get_spec(n).family != "vit"}
    configs = expand(names, [args.batch_size], args.dtypes, ["cpu"], args.modes, ["eager"], model_input_size=sizes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.json").write_text(json.dumps(collect_env(sys.argv), indent=2) + "\n")
    df = pd.DataFrame(calibrate(configs, out))
    text = (f"Eager rows against the float64 model, input {args.input_size}px, batch {args.batch_size}, CPU.\n\n"
            f"Command: `python -m bench.accuracy_calibrate {' '.join(sys.argv[1:])}`\n\n" + summary(df))
    (out / "summary.md").write_text(text)
    print(text)
    return 1 if (df["acc_status"] == "error").any() else 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env bash
# The compile-mode axis and cold vs warm compile time on the CPU (issue 19), from the repository root:
#   PY=python bash results/cpu-compile-modes/run.sh
# cold/: fresh Inductor/Triton caches per config (the default); warm/: a second run over a shared cache that a first
# warm run filled (that first run's output is not kept: its compile_ms is a mix of misses and partial hits).
set -euo pipefail
PY=${PY:-python}
OUT=results/cpu-compile-modes
SHARED=$(mktemp -d)
trap 'rm -rf "$SHARED"' EXIT
COMMON=(--backends eager compile --compile-mode default max-autotune --batch-sizes 1 --devices cpu --no-progress)
sweep() {  # basic_cnn at its own 32 px (a fixed linear head), resnet18 at 64 px, into one directory
  "$PY" -m bench run --models basic_cnn "${COMMON[@]}" "$@"
  "$PY" -m bench run --models resnet18 --input-size 64 "${COMMON[@]}" --resume "$@"
}
rm -rf "$OUT/cold" "$OUT/warm"
sweep --out "$OUT/cold"
export TORCHINDUCTOR_CACHE_DIR="$SHARED"
sweep --compile-cache warm --out "$SHARED/fill"
sweep --compile-cache warm --out "$OUT/warm"

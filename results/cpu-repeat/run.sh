#!/usr/bin/env bash
# Regenerates results/cpu-repeat (see README.md there). Run from the repository root, committed tree, on an idle-ish
# CPU machine: PY=python bash results/cpu-repeat/run.sh. Every run is `bench ab HEAD HEAD` (both sides = this commit,
# each from its own git worktree), so any verdict in the A/A comparisons is a false positive. Input 32 px: basic_cnn's
# classifier is sized for 32 px (64 px fails), and it keeps resnet18 cheap on a shared 2-core machine.
set -u
PY=${PY:-python}
OUT=${OUT:-results/cpu-repeat}
export OMP_NUM_THREADS=1 TRITON_INTERPRET=1
RUN=(--models basic_cnn resnet18 --batch-sizes 1 2 4 --dtypes fp32 --input-size 32 --min-time-s 0.3 --warmup-s 0.1
     --no-flops --threads 1)
rm -rf "$OUT/aa-repeats" "$OUT/aa-single" "$OUT/power-sleep"
# A/A, three ABBA rounds: run-level statistics.
/usr/bin/time -f "aa-repeats wall %e s" $PY -m bench ab HEAD HEAD --repeats 3 --out "$OUT/aa-repeats" "${RUN[@]}"
# A/A, one run per side: the comparison without repeats.
/usr/bin/time -f "aa-single wall %e s" $PY -m bench ab HEAD HEAD --repeats 1 --out "$OUT/aa-single" "${RUN[@]}"
# Power: a known 10% slowdown (a test model sleeping 3.0 ms in base, 3.3 ms in head), three ABBA rounds.
PYTHONPATH=tests/bench VISIONBENCH_PLUGINS=fake_models /usr/bin/time -f "power-sleep wall %e s" \
  $PY -m bench ab HEAD HEAD --repeats 3 --out "$OUT/power-sleep" --base-env VISIONBENCH_FAKE_SLEEP_MS=3.0 \
  --head-env VISIONBENCH_FAKE_SLEEP_MS=3.3 --models fake_sleep --batch-sizes 1 --min-time-s 0.3 --warmup-s 0.1 \
  --no-flops --threads 1
# Power at a change above this VM's between-run spread: the same test model sleeping 3.9 ms in head (+30% of the
# sleep; about +23% of the step, which also runs a linear layer and Python), three ABBA rounds.
rm -rf "$OUT/power-sleep-30"
PYTHONPATH=tests/bench VISIONBENCH_PLUGINS=fake_models /usr/bin/time -f "power-sleep-30 wall %e s" \
  $PY -m bench ab HEAD HEAD --repeats 3 --out "$OUT/power-sleep-30" --base-env VISIONBENCH_FAKE_SLEEP_MS=3.0 \
  --head-env VISIONBENCH_FAKE_SLEEP_MS=3.9 --models fake_sleep --batch-sizes 1 --min-time-s 0.3 --warmup-s 0.1 \
  --no-flops --threads 1

#!/bin/sh
# Issue 24, adaptation (b): TENT (`leanmae adapt`) of a finished run on each external set's unlabelled
# images, then the adapted model scored on that set; the light files go to docs/results/cross-lab/tent-RUN.
#   sh docs/results/cross-lab/tent.sh RUN_NAME   (e.g. mae-default-s0; from the repository root)
set -eu
name=$1
export PYTHONPATH="${LEANMAE_CODE:-$PWD}/src" OMP_NUM_THREADS=1
PY=${PY:-python}
EXT=${EXTERNAL:-../shared/data/external_wbc}
RUNS=${RUNS:-runs/cross-lab} KEEP=${KEEP:-docs/results/cross-lab}
keep=$KEEP/tent-$name
mkdir -p "$keep"
for set in tecom cellavision_blog; do
  out=$RUNS/tent-$name-$set
  $PY -m leanmae adapt "$RUNS/$name" "$EXT/$set" --out "$out" --overwrite > "$out.log" 2>&1
  $PY -m leanmae evaluate "$out" --data "$EXT/$set" --out "$out/evaluate" --overwrite >> "$out.log" 2>&1
  cp "$out/adapt.json" "$keep/$set-adapt.json"
  cp "$out/evaluate/metrics.json" "$keep/$set.json"
  cp "$out.log" "$keep/$set.log"
done

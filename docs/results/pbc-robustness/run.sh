#!/bin/sh
# Issue 16: one fine-tuning run of a robustness recipe, then its robustness benchmark; the light files
# (metrics, config, history, log, robustness.json) are copied to docs/results/pbc-robustness/RECIPE-sSEED.
#   sh docs/results/pbc-robustness/run.sh RECIPE SEED [ARM [FRACTION]]   (from the repository root)
# ARM: mae (default; from the in-domain GPU MAE, folder RECIPE-sSEED) or scratch (folder
# scratch-RECIPE-sSEED). FRACTION of the labels (default 0.1; another adds -fFRACTION to the folder),
# the pbc-honest split: compare with that study's own runs (the previous default recipe, whose
# robustness.json files sit in its run folders).
# LEANMAE_CODE: a frozen copy of leanmae to run (default: this checkout's src). SPLIT, PRESET, MAE, RUNS and
# KEEP override the split, preset, MAE folder, run folder and results folder (the smoke test's tiny run).
set -eu
SPLIT=${SPLIT:-docs/results/pbc-honest/split.csv} PRESET=${PRESET:-cpu} RUNS=${RUNS:-runs/pbc-robustness}
KEEP=${KEEP:-docs/results/pbc-robustness} MAE=${MAE:-docs/results/gpu-mae/in-domain-pix/model}
recipe=$1 seed=$2 arm=${3:-mae} fraction=${4:-0.1}
# Every recipe starts from the recipe before issue 16's defaults (300 steps, crops anywhere), so that
# the names mean the same whichever defaults the code has; recipes set their own values after it.
BASE="--set finetune.classifier.min_steps=300 --set finetune.augment.crop_shift=1.0"
AUG="$BASE --set finetune.augment.hed=0.1 --set finetune.augment.brightness=0.1 --set finetune.augment.contrast=0.1
 --set finetune.augment.saturation=0.1 --set finetune.augment.hue=0.02 --set finetune.augment.crop_scale=[0.1,1.0]"
case $recipe in
  aug) sets="$AUG" ;;
  stain-norm-aug) sets="$AUG --set data.stain_norm=reinhard" ;;
  macenko-aug) sets="$AUG --set data.stain_norm=macenko" ;;
  cellcrop-aug) sets="$AUG --set data.cell_crop=2.5" ;;
  aug-long) sets="$AUG --set finetune.classifier.min_steps=600" ;;
  aug-long-hires) sets="$AUG --set finetune.classifier.min_steps=600 --set data.cache_size=112" ;;
  aug-long-centred) sets="$AUG --set finetune.classifier.min_steps=600 --set finetune.augment.crop_shift=0.5" ;;
  *) echo "unknown recipe $recipe (aug, stain-norm-aug, macenko-aug, cellcrop-aug, aug-long, aug-long-hires," \
    "aug-long-centred)" >&2
    exit 2 ;;
esac
case $arm in
  mae) init="--init $MAE" name=$recipe-s$seed ;;
  scratch) init="" name=scratch-$recipe-s$seed ;;
  *) echo "unknown arm $arm (mae, scratch)" >&2; exit 2 ;;
esac
[ "$fraction" = 0.1 ] || name=$name-f$fraction
export PYTHONPATH="${LEANMAE_CODE:-$PWD}/src" OMP_NUM_THREADS=1
PY=${PY:-python}
run=$RUNS/$name keep=$KEEP/$name
mkdir -p "$RUNS" "$keep"
# shellcheck disable=SC2086  # $init and $sets are lists of options
$PY -m leanmae finetune --split "$SPLIT" --fraction "$fraction" --seed "$seed" --preset "$PRESET" \
  $init --no-progress --resume --out "$run" $sets > "$run.log" 2>&1
$PY -m leanmae evaluate "$run" --split "$SPLIT" --shifts >> "$run.log" 2>&1
cp "$run"/metrics.json "$run"/run.json "$run"/history.csv "$run"/robustness-test/robustness.json "$keep"/
cp "$run.log" "$keep"/finetune.log

#!/bin/sh
# Issue 24: one fine-tuning run of a cross-lab recipe at 10 % of PBC's labels (pbc-honest split), scored on
# PBC's whole validation split and on both external_wbc sets (development data: recipes are chosen on
# these, never on PBC's test split); the light files go to docs/results/cross-lab/ARM-RECIPE-sSEED.
#   sh docs/results/cross-lab/run.sh RECIPE SEED [ARM]   (from the repository root)
# ARM: mae (default; the in-domain GPU MAE), mae-target (that MAE continued on the external images:
# pretrain_target.sh) or scratch.
# LEANMAE_CODE: a frozen copy of leanmae to run (default: this checkout's src). SPLIT, PRESET, MAE, RUNS and
# KEEP override the split, preset, MAE folder, run folder and results folder (the smoke test's tiny run).
set -eu
SPLIT=${SPLIT:-docs/results/pbc-honest/split.csv} PRESET=${PRESET:-cpu} RUNS=${RUNS:-runs/cross-lab}
KEEP=${KEEP:-docs/results/cross-lab} MAE=${MAE:-docs/results/gpu-mae/in-domain-pix/model}
recipe=$1 seed=$2 arm=${3:-mae}
# WIDE: colour perturbations wide enough to cover a yellow or blue background (any hue, saturation
# halved to doubled, stronger stain, brightness and contrast), on top of today's defaults.
WIDE="--set finetune.augment.hed=0.3 --set finetune.augment.brightness=0.3 --set finetune.augment.contrast=0.3
 --set finetune.augment.saturation=0.5 --set finetune.augment.hue=0.5"
case $recipe in
  default) sets="" ;;
  cellcrop) sets="--set data.cell_crop=2.5" ;;
  wide) sets="$WIDE" ;;
  reinhard) sets="--set data.stain_norm=reinhard" ;;
  reinhard-wide) sets="$WIDE --set data.stain_norm=reinhard" ;;
  cellcrop-wide) sets="$WIDE --set data.cell_crop=2.5" ;;
  grey) sets="--set data.grey=true" ;;
  grey-cellcrop) sets="--set data.grey=true --set data.cell_crop=2.5" ;;
  *) echo "unknown recipe $recipe" >&2; exit 2 ;;
esac
case $arm in
  mae) init="--init $MAE" ;;
  mae-target) init="--init $RUNS/mae-target/model" ;;  # pretrain_target.sh's MAE
  scratch) init="" ;;
  *) echo "unknown arm $arm (mae, mae-target, scratch)" >&2; exit 2 ;;
esac
name=$arm-$recipe-s$seed
export PYTHONPATH="${LEANMAE_CODE:-$PWD}/src" OMP_NUM_THREADS=1
PY=${PY:-python}
EXT=${EXTERNAL:-../shared/data/external_wbc}
run=$RUNS/$name keep=$KEEP/$name
mkdir -p "$RUNS" "$keep"
# shellcheck disable=SC2086  # $init and $sets are lists of options
$PY -m leanmae finetune --split "$SPLIT" --fraction 0.1 --seed "$seed" --preset "$PRESET" \
  $init --no-progress --resume --out "$run" $sets > "$run.log" 2>&1
cp "$run"/metrics.json "$run"/run.json "$run"/history.csv "$keep"/
$PY -m leanmae evaluate "$run" --split "$SPLIT" --subset val --overwrite >> "$run.log" 2>&1
cp "$run"/evaluate-val/metrics.json "$keep"/val.json
for set in tecom cellavision_blog; do
  $PY -m leanmae evaluate "$run" --data "$EXT/$set" --overwrite >> "$run.log" 2>&1
  cp "$run/evaluate-$set/metrics.json" "$keep/$set.json"
  cp "$run/evaluate-$set/predictions.csv" "$keep/$set-predictions.csv"
done
cp "$run.log" "$keep"/finetune.log

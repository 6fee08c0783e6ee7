#!/bin/sh
# Issue 26: one fine-tuning run of a label choice at FRACTION of PBC's train labels (pbc-honest split, in-domain
# GPU MAE, today's cpu-preset defaults), scored on PBC's whole validation split (the development data every
# choice is made on) and once on its test split (metrics.json); the light files go to
# docs/results/label-choice/ARM-SELECTION-SEMI-fFRACTION-sSEED.
#   sh docs/results/label-choice/run.sh SELECTION SEMI FRACTION SEED [ARM]   (from the repository root)
# SELECTION: stratified (the reference: it needs the labels), random, typiclust, or margin (a second round:
# the typiclust run of the same arm, semi and seed at FROM_FRACTION, default 0.01, kept and the rest chosen by
# its model's margin); SEMI: off or fixmatch; ARM: mae (default) or scratch. Resumable: rerun the command.
# LEANMAE_CODE: a frozen copy of leanmae to run (default: this checkout's src). SPLIT, PRESET, MAE, RUNS and
# KEEP override the split, preset, MAE folder, run folder and results folder.
set -eu
SPLIT=${SPLIT:-docs/results/pbc-honest/split.csv} PRESET=${PRESET:-cpu} RUNS=${RUNS:-runs/label-choice}
KEEP=${KEEP:-docs/results/label-choice} MAE=${MAE:-docs/results/gpu-mae/in-domain-pix/model}
selection=$1 semi=$2 fraction=$3 seed=$4 arm=${5:-mae}
case $arm in
  mae) init="--init $MAE" ;;
  scratch) init="" ;;
  *) echo "unknown arm $arm (mae, scratch)" >&2; exit 2 ;;
esac
name=$arm-$selection-$semi-f$fraction-s$seed
rounds=""
if [ "$selection" = margin ]; then
  rounds="--set classifier.selection_from=$RUNS/$arm-typiclust-$semi-f${FROM_FRACTION:-0.01}-s$seed"
fi
export PYTHONPATH="${LEANMAE_CODE:-$PWD}/src" OMP_NUM_THREADS=1
PY=${PY:-python}
run=$RUNS/$name keep=$KEEP/$name
if [ -f "$keep/val.json" ]; then exit 0; fi  # finished and kept: a resumed finished run would re-score test
mkdir -p "$RUNS" "$keep"
# shellcheck disable=SC2086  # $init and $rounds are lists of options
/usr/bin/time -f "%e s wall, %U s user" -o "$run.time" $PY -m leanmae finetune --split "$SPLIT" \
  --fraction "$fraction" --seed "$seed" --preset "$PRESET" $init --no-progress --resume --out "$run" \
  --set "classifier.selection=$selection" --set "classifier.semi=$semi" $rounds > "$run.log" 2>&1
cp "$run"/metrics.json "$run"/run.json "$run"/history.csv "$keep"/
$PY -m leanmae evaluate "$run" --split "$SPLIT" --subset val --overwrite >> "$run.log" 2>&1
cp "$run"/evaluate-val/metrics.json "$keep"/val.json
cp "$run.log" "$keep"/finetune.log
cp "$run.time" "$keep"/time.txt

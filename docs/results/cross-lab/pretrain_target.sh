#!/bin/sh
# Issue 24, adaptation (a): continue the in-domain GPU MAE on the new labs' unlabelled images beside the
# source pool (the pbc-honest split's train images), so that fine-tuning on PBC's labels starts from an
# encoder that has seen both labs. No label of the external sets is read (pretraining reads none).
#   sh docs/results/cross-lab/pretrain_target.sh [EPOCHS]   (from the repository root; default 10)
# Then: sh docs/results/cross-lab/run.sh RECIPE SEED mae-target
set -eu
epochs=${1:-10}
export PYTHONPATH="${LEANMAE_CODE:-$PWD}/src" OMP_NUM_THREADS=1
PY=${PY:-python}
EXT=${EXTERNAL:-../shared/data/external_wbc}
mkdir -p runs/cross-lab docs/results/cross-lab/mae-target
$PY -m leanmae pretrain --init docs/results/gpu-mae/in-domain-pix/model --preset cpu \
  --data docs/results/pbc-honest/split.csv --data "$EXT/tecom" --data "$EXT/cellavision_blog" \
  --set optim.epochs="$epochs" --set optim.warmup_epochs=1 --no-progress --resume \
  --out runs/cross-lab/mae-target > runs/cross-lab/mae-target.log 2>&1
cp runs/cross-lab/mae-target/run.json runs/cross-lab/mae-target/history.csv runs/cross-lab/mae-target.log \
  docs/results/cross-lab/mae-target/

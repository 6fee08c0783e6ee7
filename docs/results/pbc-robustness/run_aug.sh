#!/bin/sh
# Issue 16, second arm: the same stain/colour augmentation and wider crops, without stain normalisation
# (per-image Reinhard depends on framing: the first run lost 0.61 at 2x zoom).
export PYTHONPATH=/work/exp-code/src OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
OUT=docs/results/pbc-robustness/runs/mae-in-domain_f0.1_s0_aug
$PY -m leanmae finetune --split docs/results/pbc-honest/split.csv --fraction 0.1 --seed 0 --preset cpu \
  --init docs/results/gpu-mae/in-domain-pix/model --no-progress --resume --out $OUT \
  --set finetune.augment.hed=0.1 --set finetune.augment.brightness=0.1 \
  --set finetune.augment.contrast=0.1 --set finetune.augment.saturation=0.1 --set finetune.augment.hue=0.02 \
  --set "finetune.augment.crop_scale=[0.1,1.0]" > $OUT.log 2>&1 || exit 1
$PY -m leanmae evaluate $OUT --split docs/results/pbc-honest/split.csv --shifts > $OUT.eval.log 2>&1

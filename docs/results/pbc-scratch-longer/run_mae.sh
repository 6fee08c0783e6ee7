#!/bin/sh
# The same longer schedule (classifier.min_steps 600) for the in-domain MAE arm at 1 %, seeds 0-4, so that
# both arms are compared at 300 and at 600 steps; same frozen code, split, MAE and OOD set as pbc-honest.
export PYTHONPATH=/work/study-code/src OMP_NUM_THREADS=1
for s in 0 1 2 3 4; do
  python -m leanmae finetune --split docs/results/pbc-honest/split.csv --fraction 0.01 --seed "$s" \
    --preset cpu --init docs/results/gpu-mae/in-domain-pix/model \
    --ood ../shared/data/pbc:erythroblast,ig,platelet --set classifier.min_steps=600 \
    --no-progress --resume --out "docs/results/pbc-scratch-longer/runs/mae-in-domain-min600_f0.01_s$s" \
    > "docs/results/pbc-scratch-longer/runs/mae-in-domain-min600_f0.01_s$s.log" 2>&1 || exit 1
done

#!/bin/sh
# Scratch at 1 % trained twice as long (classifier.min_steps 600 instead of 300), seeds 0-4, with the
# same frozen code, split, preset and OOD set as docs/results/pbc-honest's scratch arm; run from the
# repository root. Compare with pbc-honest/runs/scratch_f0.01_s*: only min_steps differs (run.json).
export PYTHONPATH=/work/study-code/src OMP_NUM_THREADS=1
for s in 0 1 2 3 4; do
  python -m leanmae finetune --split docs/results/pbc-honest/split.csv --fraction 0.01 --seed "$s" \
    --preset cpu --ood ../shared/data/pbc:erythroblast,ig,platelet --set classifier.min_steps=600 \
    --no-progress --resume --out "docs/results/pbc-scratch-longer/runs/scratch-min600_f0.01_s$s" \
    > "docs/results/pbc-scratch-longer/runs/scratch-min600_f0.01_s$s.log" 2>&1 || exit 1
done

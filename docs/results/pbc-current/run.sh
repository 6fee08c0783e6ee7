#!/bin/sh
# Issue 27: the PBC study re-measured with today's defaults: seven label fractions, 5 seeds up to 10 % and 3
# above, every arm's learning rate and training length searched on its own label-honest val draw with the
# same grid (3 learning rates x 2 lengths: 6 candidates per arm and fraction, at seed 0) and, where the best
# took the longer length, a 7th at twice it (--search-beyond), other labs' cells scored by every run;
# pbc-honest's split, whose train images the in-domain MAE saw unlabelled; issue 26's best label choice
# (margin rounds) as a fourth arm, below 100 %. Up to 302 runs (up to 189 of them candidates): about 55 to 65
# hours on a 2-core CPU (README: cost).
#   sh docs/results/pbc-current/run.sh [MORE STUDY OPTIONS]   (from the repository root; resumable: rerun it)
# LEANMAE_CODE: a frozen copy of leanmae to run (default: this checkout's src); OUT: the study folder (default
# runs/pbc-current; the light results are copied to docs/results/pbc-current by hand, as for pbc-honest).
# Arms can be added to a started study (e.g. issue 26's best label choice as mae-in-domain+NAME with its
# --arm-set settings); other settings cannot.
set -eu
DATA=${DATA:-../shared/data}
export PYTHONPATH="${LEANMAE_CODE:-$PWD}/src"
exec ${PY:-python} -m leanmae study --out "${OUT:-runs/pbc-current}" --data "$DATA/pbc" \
  --split docs/results/pbc-honest/split.csv \
  --pretrain-data "$DATA/pbc:erythroblast,ig,platelet" --pretrain-data "$DATA/lc25000_lung" \
  --ood-data "$DATA/pbc:erythroblast,ig,platelet" \
  --external "$DATA/external_wbc/tecom" --external "$DATA/external_wbc/cellavision_blog" \
  --mae in-domain=docs/results/gpu-mae/in-domain-pix/model --mae other=docs/results/gpu-mae/other-pix/model \
  --arms scratch,mae-in-domain,mae-other,mae-in-domain+margin \
  --arm-set mae-in-domain+margin:classifier.selection=margin \
  --fractions 0.01,0.02,0.05,0.1,0.25,0.5,1 --seeds 0,1,2 \
  --extra-seeds 3,4 --search 'optim.base_lr=5e-4|1e-3|2e-3' \
  --search 'optim.epochs=15;classifier.min_steps=600|optim.epochs=30;classifier.min_steps=1200' \
  --search-beyond 'optim.epochs=60;classifier.min_steps=2400' \
  --jobs 2 --no-progress "$@"

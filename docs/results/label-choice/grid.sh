#!/bin/sh
# Issue 26's grid, two runs at a time (one thread each), in the order that answers the most first: 1 % of the
# labels, then 5 %; within a fraction every selection without FixMatch for all seeds (scratch beside), then
# with FixMatch, whose runs cost about four times as much. Resumable: rerun it.
#   sh docs/results/label-choice/grid.sh [FRACTIONS]   (from the repository root; default "0.01 0.05")
set -eu
for fraction in ${1:-0.01 0.05}; do
  for semi in off fixmatch; do
    for seed in 0 1 2; do
      for selection in stratified typiclust random; do
        echo "$selection $semi $fraction $seed mae"
      done
      if [ "$fraction" != 0.01 ]; then echo "margin $semi $fraction $seed mae"; fi  # round 2 after 1 %
      if [ "$semi" = off ]; then echo "stratified off $fraction $seed scratch"; fi
    done
  done
done | xargs -P 2 -L 1 sh "$(dirname "$0")/run.sh"

#!/bin/sh
# Issue 26's grid, two runs at a time (one thread each), in the order that answers the most first: 1 % of the
# labels, then 5 %; within a fraction every selection without FixMatch for all seeds (scratch beside), then
# with FixMatch, whose runs cost about four times as much, choice by choice (all seeds of today's stratified
# draw, then of the margin rounds, the best choice without FixMatch), so that each finished choice has its
# seeds. Resumable: rerun it.
#   sh docs/results/label-choice/grid.sh [FRACTIONS]   (from the repository root; default "0.01 0.05")
set -eu
for fraction in ${1:-0.01 0.05}; do
  rounds=""
  if [ "$fraction" != 0.01 ]; then rounds=margin; fi  # round 2 after 1 %
  for seed in 0 1 2; do
    for selection in stratified typiclust random $rounds; do echo "$selection off $fraction $seed mae"; done
    echo "stratified off $fraction $seed scratch"
  done
  for selection in stratified $rounds typiclust random; do
    for seed in 0 1 2; do echo "$selection fixmatch $fraction $seed mae"; done
  done
done | xargs -P 2 -L 1 sh "$(dirname "$0")/run.sh"

#!/usr/bin/env bash
# The GPU check of issue 18, in one run of at most 8 minutes: ViT-B/16 224 px MAE pretraining (bf16) at
# batch 128 and 384 and the cpu preset's MAE, each timed for leanmae as it runs by default (prefetching,
# no compile), without prefetching and with torch.compile (run.compile; compilation is untimed warm-up),
# against the fp32 reference loop; then one whole epoch of the cpu preset's MAE through engine.fit on the
# GPU. Besides each case's full record it prints one JSON line per variant ("case": "variant"): images/s,
# share of the measured bf16 matmul peak and share of step time spent waiting for data.
#
# Needs torch (with CUDA), transformers and leanmae's other dependencies installed; no network. Run it
# from anywhere in the repository:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh      # results in $OUT (default benchmarks/results)
#
# It writes <device>-<date>.jsonl (the JSON lines, as committed under benchmarks/results/), .txt (the
# whole output with the table) and -nvidia-smi.txt. The benchmark is stopped after LIMIT seconds (default
# 470), keeping the lines already written. Extra arguments go to benchmarks/throughput.py (a repeated
# option overrides the one given here); to check the script end to end without a GPU:
#
#     DEVICE=cpu bash benchmarks/gpu_check.sh --gpu-batch 2 --gpu-steps 1 --gpu-images 16
set -euo pipefail

cd "$(dirname "$0")/.."
device="${DEVICE:-cuda}"
out="${OUT:-benchmarks/results}"
python="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

name="$device"
if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null; then
    name="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/-$//')"
fi
stem="$out/$name-$(date +%Y-%m-%d)"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi >"$stem-nvidia-smi.txt" 2>&1 || true
fi
rm -f "$stem.jsonl"

timeout "${LIMIT:-470}" "$python" benchmarks/throughput.py --plan gpu --device "$device" \
    --gpu-batch 128 384 --without-prefetch --with-compile --jsonl "$stem.jsonl" "$@" 2>&1 | tee "$stem.txt"
echo "results: $stem.jsonl"

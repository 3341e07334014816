#!/usr/bin/env bash
# Prepares what a GPU machine needs, in .device/ (ignored by git), small enough for the device tool's `carry`
# (64 MiB): the CUDA binary from scripts/build-cuda.sh compressed with xz (68 MB -> ~10 MB: candle's PTX kernels
# are text), and the corpus and GPT-2 tokenizer, since that machine sees the repository only.
#
#   bash scripts/stage-gpu.sh CORPUS.csv.zst GPT2_TOKENIZER.json
#   then carry [".device/collapse-lab.xz", ".device/data"]
set -euo pipefail
CORPUS=${1:-${COLLAPSE_DATA:?usage: stage-gpu.sh CORPUS.csv.zst GPT2_TOKENIZER.json (or set COLLAPSE_DATA)}}
TOKENIZER=${2:-${COLLAPSE_GPT2:?usage: stage-gpu.sh CORPUS.csv.zst GPT2_TOKENIZER.json (or set COLLAPSE_GPT2)}/tokenizer.json}
[ -x .device/collapse-lab ] || { echo "no .device/collapse-lab: run scripts/build-cuda.sh first" >&2; exit 1; }
xz -9 -T2 -c .device/collapse-lab > .device/collapse-lab.xz
mkdir -p .device/data/gpt2
cp "$CORPUS" .device/data/movie_plots.csv.zst
cp "$TOKENIZER" .device/data/gpt2/tokenizer.json
du -ch .device/collapse-lab.xz .device/data | tail -1

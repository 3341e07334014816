#!/usr/bin/env bash
# The GPU checks, run on a GPU machine from the repository root, with the binary built here by
# scripts/build-cuda.sh and staged with the data by scripts/stage-gpu.sh. With the device tool:
#   run `bash scripts/gpu-checks.sh` with carry [".device/collapse-lab.xz", ".device/data"];
# results land in $OUT (or ./gpu-results).
#
# Writes: gpu.csv (the GPU), gpu-check.json (gradients, cached decoding, loss curve against the CPU, device
# sampling), bench-50257.json, bench-8192.json, bench-50257-f32.json (TF32 off), paper-round-metrics.json (one
# full paper round, phase by phase) and paper-round.log.
set -euo pipefail
RESULTS=${OUT:-gpu-results}
mkdir -p "$RESULTS"
LIB=$(dirname "$(find / -name 'libcublas.so.13*' -print -quit 2>/dev/null)")
export LD_LIBRARY_PATH="$LIB:${LD_LIBRARY_PATH:-}"
BIN=${BIN:-.device/collapse-lab}
if [ ! -x "$BIN" ]; then
  BIN=/tmp/collapse-lab
  xz -dc .device/collapse-lab.xz > "$BIN" 2>/dev/null \
    || python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(".device/collapse-lab.xz"), open(sys.argv[1], "wb"))' "$BIN"
  chmod +x "$BIN"
fi
DATA=${COLLAPSE_DATA:-.device/data/movie_plots.csv.zst}
TOK=${COLLAPSE_TOKENIZER:-.device/data/gpt2/tokenizer.json}
export COLLAPSE_CACHE=${COLLAPSE_CACHE:-/tmp/collapse-cache}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$RESULTS/gpu.csv" || true
"$BIN" gpu-check --device cuda > "$RESULTS/gpu-check.json"
"$BIN" bench --device cuda --vocab 50257 --steps 100 --gen-batches 1,32,256,1000 > "$RESULTS/bench-50257.json"
"$BIN" bench --device cuda --vocab 8192 --steps 100 --gen-batches 1,32,256,1000 > "$RESULTS/bench-8192.json"
"$BIN" bench --device cuda --vocab 50257 --steps 100 --no-tf32 --gen-batches 32 > "$RESULTS/bench-50257-f32.json"
# The run directory holds models (64 MB each): keep it out of the results, copy the metrics.
rm -rf /tmp/paper-round
/usr/bin/time -v "$BIN" run configs/paper-round.toml --device cuda --data "$DATA" --tokenizer "$TOK" \
  --out /tmp/paper-round 2> "$RESULTS/paper-round.log"
cp /tmp/paper-round/synthetic-only/rep-0/round-0/metrics.json "$RESULTS/paper-round-metrics.json"
cat "$RESULTS/gpu-check.json" "$RESULTS/paper-round-metrics.json"

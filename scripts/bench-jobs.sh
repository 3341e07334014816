#!/usr/bin/env bash
# Is it faster on this CPU to run two chains at once with one thread each (`run --jobs 2`) or one after the
# other with every core (`--jobs 1`)? Times both on the quick model and on the paper's model (GPT-2 vocabulary
# when COLLAPSE_GPT2 points at OpenAI's tokenizer files, else a 8,192-token BPE), each over 2 chains (two
# repetitions, whose rounds 0 differ) of 2 rounds on the committed sample, in one session, and prints the CPU
# model beside the wall times.
#
#   bash scripts/bench-jobs.sh        (BIN=path/to/collapse-lab to use a binary already built)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  cargo build --release -q
  BIN=target/release/collapse-lab
fi
BIN=$(realpath "$BIN")
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export COLLAPSE_CACHE=$W/cache
TOK='train:8192'
[ -n "${COLLAPSE_GPT2:-}" ] && TOK="$COLLAPSE_GPT2/tokenizer.json"
model() {
  case $1 in
    quick) echo 'n_layer = 2
n_head = 2
n_embd = 64
block_size = 64' ;;
    paper) echo 'n_layer = 4
n_head = 4
n_embd = 256
block_size = 128' ;;
  esac
}
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
for m in quick paper; do
  steps=$([ "$m" = quick ] && echo 250 || echo 20)
  tok=$([ "$m" = quick ] && echo 'train:1024' || echo "$TOK")
  cat > "$W/$m.toml" <<TOML
[model]
$(model $m)
[training]
steps = $steps
batch_size = 16
checkpoint_every = 1000
[data]
source = "$PWD/data/sample/movie_plots_sample.csv.zst"
tokenizer = "$tok"
heldout_docs = 20
[generation]
max_new_tokens = 64
min_docs = 16
[schedule]
n = 40
rounds = 2
settings = ["synthetic-only"]
[experiment]
repetitions = 2
TOML
  # Tokenizer and token cache first, outside the timings.
  "$BIN" run "$W/$m.toml" --out "$W/warm-$m" --only synthetic-only/0 > /dev/null 2>&1
  for jobs in $([ "$m" = quick ] && echo 1 2 1 2 || echo 1 2); do
    rm -rf "$W/run"
    cp -r "$W/warm-$m" "$W/run"
    rm -rf "$W/run/synthetic-only" "$W/run/round-0" "$W/run/metrics.jsonl"
    start=$(date +%s.%N)
    "$BIN" run "$W/$m.toml" --out "$W/run" --jobs "$jobs" > /dev/null 2>&1
    end=$(date +%s.%N)
    printf '%s model, --jobs %s: %.1f s for 2 chains x 2 rounds\n' "$m" "$jobs" "$(echo "$end - $start" | bc)"
  done
done

#!/usr/bin/env bash
# Cross-checks collapse-lab's Hugging Face export against the real transformers library (from PyPI, in a
# virtual environment of its own, .venv-hf/, ignored by git; torch is large, so this is not part of
# `cargo test`). It trains a tiny model on the committed sample, exports it, evaluates it on the 2020s
# sample with collapse-lab (dumping the token stream and some logits), and has transformers load the export
# and recompute both: logits within 1e-4, and the same perplexity.
#
#   bash scripts/check-transformers.sh            (offline once .venv-hf exists)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-hf}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch transformers safetensors numpy
fi
cargo build --release -q
BIN=target/release/collapse-lab
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/tiny.toml" <<TOML
[model]
n_layer = 2
n_head = 2
n_embd = 64
block_size = 64

[training]
steps = 300
batch_size = 16
lr = { kind = "constant", lr = 3e-3 }

[data]
source = "$PWD/data/sample/movie_plots_sample.csv.zst"
tokenizer = "train:512"
heldout_docs = 20

[generation]
max_new_tokens = 32
min_docs = 4

[schedule]
n = 200
rounds = 1
settings = ["synthetic-only"]

[experiment]
repetitions = 1
TOML
export COLLAPSE_CACHE="$WORK/cache"
"$BIN" run "$WORK/tiny.toml" --out "$WORK/run" 2> "$WORK/run.log"
CKPT="$WORK/run/synthetic-only/rep-0/round-0/model.safetensors"
"$BIN" export "$CKPT" --out "$WORK/hf"
ls "$WORK/hf"
"$BIN" eval "$CKPT" --data data/sample/movies_2020s_sample.csv.zst --column plot --dump "$WORK/dump.json"
"$BIN" eval "$WORK/hf" --data data/sample/movies_2020s_sample.csv.zst --column plot
HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=warning "$VENV/bin/python" scripts/check_transformers.py "$WORK/hf" "$WORK/dump.json"

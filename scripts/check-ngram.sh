#!/usr/bin/env bash
# Checks the n-gram model (crates/ngram) against NLTK's nltk.lm, the reference implementation, from PyPI in
# a virtual environment of its own (.venv-nltk/, ignored by git): held-out perplexity and every held-out
# token's probability of add-k and interpolated Kneser-Ney models, orders 1-3, within 1e-6 relative, on a
# word-level stream of the committed sample (scripts/check_ngram.py says how the streams are built).
#
#   bash scripts/check-ngram.sh            (offline once .venv-nltk exists; about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-nltk}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q nltk==3.10.4 zstandard
fi
cargo build --release -q -p ngram --example perplexity
"$VENV/bin/python" scripts/check_ngram.py target/release/examples/perplexity

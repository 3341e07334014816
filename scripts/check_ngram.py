"""Checks collapse-lab's n-gram model against NLTK's (nltk.lm): the same counts on a word-level stream of the
committed sample, the same held-out probabilities token by token and the same perplexity, within 1e-6
relative, for add-k (Lidstone) and interpolated Kneser-Ney. Run by scripts/check-ngram.sh.

The streams: plots 0-149 of the sample are counted, plots 150-154 scored, as lower-cased words and
punctuation, each plot followed by an end-of-text word. The counted stream opens with a word found nowhere
else: NLTK computes a lower-order Kneser-Ney weight from the raw count of a context's followers and fails
(a division by zero) on a context seen only where the stream opens, where collapse-lab uses the
continuation counts of its followers; the two agree wherever a context has a preceding word, which the
opening word gives every context the scored stream asks for. Held-out words never counted are left out
(NLTK's Kneser-Ney gives them probability 0, so its perplexity would be infinite). The vocabulary is the
counted words plus NLTK's <UNK>, as len(lm.vocab) is.
"""

import csv
import functools
import io
import json
import math
import re
import subprocess
import sys
import tempfile

import zstandard
from nltk.lm import KneserNeyInterpolated, Lidstone
from nltk.util import everygrams

SAMPLE = "data/sample/movie_plots_sample.csv.zst"
EOT = "<|endoftext|>"
OPEN = "<|open|>"
TOL = 1e-6


def plots():
    raw = zstandard.ZstdDecompressor().stream_reader(open(SAMPLE, "rb"))
    return [r["Plot"] for r in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8"))]


def words(text):
    return re.findall(r"\w+|[^\w\s]", text.lower())


def main(example):
    docs = plots()
    train = [OPEN]
    for d in docs[:150]:
        train += words(d) + [EOT]
    known = set(train)
    heldout = []
    for d in docs[150:155]:
        heldout += [w for w in words(d) if w in known] + [EOT]
    vocab = sorted(known)
    ids = {w: i for i, w in enumerate(vocab)}
    v = len(vocab) + 1  # + <UNK>
    tmp = tempfile.mkdtemp()
    with open(f"{tmp}/train.txt", "w") as f:
        f.write(" ".join(str(ids[w]) for w in train))
    with open(f"{tmp}/heldout.txt", "w") as f:
        f.write(" ".join(str(ids[w]) for w in heldout))
    print(f"{len(train)} counted words, {len(heldout)} scored, vocabulary {v}")

    cases = [
        ("add-k", 1, 0.1), ("add-k", 2, 0.1), ("add-k", 3, 0.1), ("add-k", 2, 1.0),
        ("kneser-ney", 2, 0.1), ("kneser-ney", 3, 0.1), ("kneser-ney", 3, 0.75),
    ]
    failed = 0
    for kind, order, param in cases:
        if kind == "add-k":
            lm = Lidstone(param, order)
            spec = f"add-k:{param}"
        else:
            lm = KneserNeyInterpolated(order, discount=param)
            spec = f"kneser-ney:{param}:continuation"
            # A pure function of the counts, recomputed over every n-gram on each call: cached.
            lm.estimator._continuation_counts = functools.lru_cache(maxsize=None)(
                lm.estimator._continuation_counts
            )
        lm.fit([list(everygrams(train, max_len=order))], vocabulary_text=train)
        assert len(lm.vocab) == v, (len(lm.vocab), v)
        theirs = [
            lm.unmasked_score(heldout[i], tuple(heldout[max(0, i - order + 1):i]))
            for i in range(1, len(heldout))
        ]
        ours = json.loads(
            subprocess.run(
                [example, "--order", str(order), "--smoothing", spec, "--vocab", str(v),
                 f"{tmp}/train.txt", f"{tmp}/heldout.txt"],
                check=True, capture_output=True, text=True,
            ).stdout
        )
        worst = max(abs(a - b) / b for a, b in zip(ours["probs"], theirs))
        ppl = math.exp(-sum(math.log(p) for p in theirs) / len(theirs))
        rel = abs(ours["perplexity"] - ppl) / ppl
        ok = worst < TOL and rel < TOL and len(theirs) == ours["tokens"]
        failed += not ok
        print(
            f"{'ok  ' if ok else 'FAIL'} {kind} order {order} ({param}): perplexity {ours['perplexity']:.9f} "
            f"vs NLTK {ppl:.9f} (relative {rel:.1e}); worst token probability relative {worst:.1e}"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1])

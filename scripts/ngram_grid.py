#!/usr/bin/env python3
"""The cross-config analysis of configs/ngram (fixed in configs/ngram/README.md before the runs).

For each config, on log risk at round 9 (the last), paired within repetitions:
  1. primary: log R(decaying-alpha) - log R(fresh-only), Holm over the configs;
  2. secondary: decaying-alpha's change against round 0, log R_9 - log R_0, Holm over the configs;
and the same two on held-out mean NLL, descriptive, where every repetition's perplexity is finite.

    python3 scripts/ngram_grid.py docs/results/ngram > docs/results/ngram/grid.md

Reads DIR/CONFIG/metrics.csv (as `collapse-lab report` writes it). Needs numpy and scipy.
"""

import csv
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from holm import holm  # scripts/holm.py, beside this script

CONFIGS = [
    "order1-mle", "order1-addk", "order1-kn", "order1-mle-paper-pipeline",
    "order2-mle", "order2-addk", "order2-kn",
    "order3-mle", "order3-addk", "order3-kn",
]
LAST = 9


def table(path: Path, column: str, f):
    """setting -> round -> repetition -> f(value), finite values only."""
    out = {}
    with path.open() as fh:
        for r in csv.DictReader(fh):
            if not r.get(column):
                continue
            v = f(float(r[column]))
            if math.isfinite(v):
                out.setdefault(r["setting"], {}).setdefault(int(r["round"]), {})[int(r["repetition"])] = v
    return out


def paired(a: dict, b: dict):
    keys = sorted(set(a) & set(b))
    d = np.array([a[k] - b[k] for k in keys])
    n = len(d)
    if n < 2:
        return None
    m, se = d.mean(), d.std(ddof=1) / math.sqrt(n)
    t = m / se if se > 0 else math.copysign(math.inf, m)
    p = 2 * stats.t.sf(abs(t), n - 1)
    h = stats.t.ppf(0.975, n - 1) * se
    return {"n": n, "mean": m, "lo": m - h, "hi": m + h, "p": p}


def fmt(e):
    return f"{e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]"


def ratio(e):
    return f"x{math.exp(e['mean']):.3f} [{math.exp(e['lo']):.3f}, {math.exp(e['hi']):.3f}]"


def verdict(e, p_adj, neg, pos):
    if e is None or p_adj is None:
        return "-"
    if p_adj < 0.05:
        return neg if e["mean"] < 0 else pos
    return "no clear difference"


def section(root: Path, column: str, f, label: str, unit: str, tested: bool):
    rows = []
    for c in CONFIGS:
        path = root / c / "metrics.csv"
        if not path.exists():
            rows.append((c, None, None))
            continue
        t = table(path, column, f)
        s3, fr = t.get("decaying-alpha", {}), t.get("fresh-only", {})
        vs = paired(s3.get(LAST, {}), fr.get(LAST, {}))
        ch = paired(s3.get(LAST, {}), s3.get(0, {}))
        rows.append((c, vs, ch))
    adj_vs = holm([r[1]["p"] if r[1] else None for r in rows])
    adj_ch = holm([r[2]["p"] if r[2] else None for r in rows])
    kind = (f"Holm over all {len(CONFIGS)} configs (one without data counts as p = 1)" if tested
            else "descriptive: p-values unadjusted, no verdicts")
    print(f"## {label} at round {LAST}\n")
    print(f"Paired within repetitions ({unit}); {kind}.\n")
    print(f"| config | reps | decaying - fresh-only [95% CI] | ratio | p | p (Holm) | setting 3 vs control "
          f"| reps | decaying round {LAST} - round 0 [95% CI] | ratio | p | p (Holm) | setting 3 over rounds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (c, vs, ch), a1, a2 in zip(rows, adj_vs, adj_ch):
        def cells(e, a, neg, pos):
            if e is None:
                return "0 | - | - | - | - | -"
            pa = f"{a:.2g}" if tested else "-"
            v = verdict(e, a, neg, pos) if tested else "-"
            return f"{e['n']} | {fmt(e)} | {ratio(e)} | {e['p']:.2g} | {pa} | {v}"
        print(f"| {c} | {cells(vs, a1, 'better', 'worse')} | {cells(ch, a2, 'improves', 'worsens')} |")
    print()


def completeness(root: Path):
    """Configs without a metrics.csv, and those whose chains did not all reach round LAST."""
    missing, partial = [], []
    for c in CONFIGS:
        path = root / c / "metrics.csv"
        if not path.exists():
            missing.append(c)
            continue
        t = table(path, "model_risk", math.log)
        reps0 = set(t.get("decaying-alpha", {}).get(0, {}))
        short = [s for s, rounds in sorted(t.items()) if set(rounds.get(LAST, {})) != reps0]
        if short:
            partial.append(f"{c} ({', '.join(short)} short of round {LAST} in some repetitions)")
    return missing, partial


def main():
    root = Path(sys.argv[1])
    print("# The n-gram grid across configs (scripts/ngram_grid.py)\n")
    missing, partial = completeness(root)
    if missing:
        print(f"Not run: {', '.join(missing)}.\n")
    if partial:
        print(f"Incomplete (comparisons use the repetitions present at both ends): {'; '.join(partial)}.\n")
    section(root, "model_risk", math.log, "Log risk", "log units; ratio = risk ratio", True)
    section(root, "heldout_perplexity", math.log, "Held-out mean NLL", "nats; ratio = perplexity ratio", False)


if __name__ == "__main__":
    main()

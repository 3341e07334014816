#!/usr/bin/env python3
"""The cross-config analysis of configs/setting3 (fixed in configs/setting3/README.md before the runs).

`collapse-lab report` analyses one run directory; the toggle design compares runs, paired by repetition:
for each toggle, the synthetic gain a = L(F1) - L(S3) at round 1 (held-out mean NLL per token) minus
today's, over the repetitions both ran, a paired t-test, Holm over the five toggles. It also prints every
config's f = mean(a) / mean(b), b = L(F1) - L(R2), with Fieller's 95% interval, as `report` does.

    python3 scripts/setting3_analysis.py runs/ > docs/results/setting3/toggles.md

Needs numpy and scipy (pip install numpy scipy). Reads RUNS/setting3-NAME/metrics.jsonl.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from holm import holm  # scripts/holm.py, beside this script

A_CONFIGS = ["a-small", "toggle-today", "toggle-open", "toggle-tokens", "toggle-passes", "toggle-cap", "a-large"]
TOGGLES = ["toggle-open", "toggle-tokens", "toggle-passes", "toggle-cap", "a-small"]


def round1_nll(run: Path):
    """chain -> repetition -> held-out mean NLL at round 1."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["round"] == 1:
            out.setdefault(r["setting"], {})[r["repetition"]] = math.log(r["heldout_perplexity"])
    return out


def gains(run: Path):
    """repetition -> (a, b) for the repetitions with all three chains."""
    L = round1_nll(run)
    f, s, r = L.get("fresh-only", {}), L.get("decaying-alpha", {}), L.get("real-2n", {})
    return {k: (f[k] - s[k], f[k] - r[k]) for k in sorted(f) if k in s and k in r}


def fieller(a, b, level=0.95):
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    ma, mb = a.mean(), b.mean()
    if n < 2:
        return ma / mb, None
    t2 = stats.t.ppf(1 - (1 - level) / 2, n - 1) ** 2 / n
    saa, sbb = a.var(ddof=1), b.var(ddof=1)
    sab = np.cov(a, b, ddof=1)[0, 1]
    q2, q1, q0 = mb * mb - t2 * sbb, ma * mb - t2 * sab, ma * ma - t2 * saa
    disc = q1 * q1 - q2 * q0
    if q2 <= 0 or disc < 0:
        return ma / mb, None
    return ma / mb, ((q1 - math.sqrt(disc)) / q2, (q1 + math.sqrt(disc)) / q2)


def main(root: Path):
    runs = {name: root / f"setting3-{name}" for name in A_CONFIGS}
    have = {k: gains(v) for k, v in runs.items() if (v / "metrics.jsonl").exists()}
    print("| config | repetitions | a = L(F1) - L(S3), nats [95% CI] | b = L(F1) - L(R2), nats [95% CI] | f [Fieller 95% CI] |")
    print("|---|---|---|---|---|")
    for name in A_CONFIGS:
        if name not in have or not have[name]:
            continue
        ab = np.array(list(have[name].values()))
        a, b = ab[:, 0], ab[:, 1]
        n = len(a)

        def ci(x):
            h = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
            return f"{x.mean():+.3f} [{x.mean() - h:+.3f}, {x.mean() + h:+.3f}]"

        est, iv = fieller(a, b)
        ivs = f"[{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "[unbounded]"
        print(f"| {name} | {n} | {ci(a)} | {ci(b)} | {est:.3f} {ivs} |")
    print()
    if "toggle-today" not in have:
        return
    today = have["toggle-today"]
    rows = []
    for name in TOGGLES:
        reps = sorted(set(today) & set(have.get(name, {})))
        d = np.array([have[name][k][0] - today[k][0] for k in reps])
        if len(d) < 2:
            rows.append((name, len(d), None, None, None))
            continue
        t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
        p = 2 * stats.t.sf(abs(t), len(d) - 1)
        h = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        rows.append((name, len(d), d.mean(), h, p))
    adj = holm([r[4] for r in rows])
    print("| toggle | repetitions | a(toggle) - a(today), nats [95% CI] | p | p (Holm) | matters? |")
    print("|---|---|---|---|---|---|")
    for (name, n, m, h, p), pa in zip(rows, adj):
        if m is None:
            print(f"| {name} | {n} | not run (fewer than 2 repetitions) | - | - | - |")
            continue
        print(f"| {name} | {n} | {m:+.3f} [{m - h:+.3f}, {m + h:+.3f}] | {p:.4f} | {pa:.4f} | {'yes' if pa < 0.05 else 'no'} |")
    print()
    print(f"Family: the {len(rows)} toggles of the design (Holm; one not run counts as p = 1). "
          "a > 0 means synthetic plots lowered held-out NLL.")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs"))

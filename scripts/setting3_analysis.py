#!/usr/bin/env python3
"""The cross-config analysis of configs/setting3 (fixed in configs/setting3/README.md before the runs).

`collapse-lab report` analyses one run directory; the toggle design compares runs, paired by repetition:
for each toggle, the synthetic gain a = L(F1) - L(S3) at round 1 (held-out mean NLL per token) minus
today's, over the repetitions both ran, a paired t-test, Holm over the five toggles. It also prints every
config's f = mean(a) / mean(b), b = L(F1) - L(R2), with Fieller's 95% interval, as `report` does.
Analysis (iii): a-large's f against a-small's, the difference with a delta-method interval.
Design B, per config and round t = 1..4: d_t = L(S3_t) - L(F_t) paired by repetition against 0 (as `report`'s
contrast gives it) and against the theory's predicted gain -beta log2(2(t+1)/(t+2)), where beta is a-large's
mean doubling gain L(F1) - L(R2); Holm over the four rounds for each of the two questions. Once both B configs
have finished, an exploratory comparison the design did not fix: d_t(b-passes) - d_t(b-fixed), paired by
repetition, Holm over the four rounds, with both configs' d_t drawn on one axis (b-contrast.png).

    python3 scripts/setting3_analysis.py runs/ --plots docs/results/setting3 > docs/results/setting3/toggles.md

Needs numpy and scipy (pip install numpy scipy), and matplotlib for --plots, which draws each finished B
config's d_t with its intervals beside the prediction (NAME/contrast.png). Reads RUNS/setting3-NAME/metrics.jsonl.
"""

import argparse
import json
import math
import tomllib
from pathlib import Path

import numpy as np
from scipy import stats

from holm import holm  # scripts/holm.py, beside this script

A_CONFIGS = ["a-small", "toggle-today", "toggle-open", "toggle-tokens", "toggle-passes", "toggle-cap", "a-large"]
TOGGLES = ["toggle-open", "toggle-tokens", "toggle-passes", "toggle-cap", "a-small"]


B_CONFIGS = ["b-passes", "b-fixed"]
B_ROUNDS = [1, 2, 3, 4]


def nll(run: Path):
    """round -> chain -> repetition -> held-out mean NLL, from one read of the run's metrics."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.setdefault(r["round"], {}).setdefault(r["setting"], {})[r["repetition"]] = math.log(r["heldout_perplexity"])
    return out


def round1_nll(run: Path):
    return nll(run).get(1, {})


def t_interval(x):
    """(mean, half-width of the 95% t interval, two-sided p against 0); None for fewer than 2 values."""
    x = np.asarray(x)
    n = len(x)
    if n < 2:
        return None
    se = x.std(ddof=1) / math.sqrt(n)
    p = 2 * stats.t.sf(abs(x.mean() / se), n - 1) if se > 0 else (0.0 if x.mean() != 0 else 1.0)
    return x.mean(), stats.t.ppf(0.975, n - 1) * se, p


def fmt_ci(e):
    """A t_interval as "mean [low, high]" in nats; "-" for fewer than 2 values."""
    return f"{e[0]:+.3f} [{e[0] - e[1]:+.3f}, {e[0] + e[1]:+.3f}]" if e else "-"


def predicted_gain(beta, t):
    """The theory's gain of setting 3 over fresh-only at round t, in nats: its effective sample size is
    2(t+1)/(t+2) n, and beta nats are what doubling n buys."""
    return -beta * math.log2(2 * (t + 1) / (t + 2))


def f_with_se(ab):
    """f = mean(a) / mean(b) and its delta-method standard error."""
    a, b = ab[:, 0], ab[:, 1]
    n = len(a)
    ma, mb = a.mean(), b.mean()
    f = ma / mb
    var = (a.var(ddof=1) - 2 * f * np.cov(a, b, ddof=1)[0, 1] + f * f * b.var(ddof=1)) / (n * mb * mb)
    return f, math.sqrt(var)


def scale(have):
    """Analysis (iii): a-large's f against a-small's (independent repetitions; delta method, normal)."""
    if not have.get("a-large") or not have.get("a-small"):
        return
    fl, sl = f_with_se(np.array(list(have["a-large"].values())))
    fs, ss = f_with_se(np.array(list(have["a-small"].values())))
    d, se = fl - fs, math.sqrt(sl * sl + ss * ss)
    z = d / se
    p = 2 * stats.norm.sf(abs(z))
    print("## Scale (analysis (iii)): f at n = 96, width 96 against f at n = 24, width 48, every fix on")
    print()
    print("| f(a-large) | f(a-small) | difference [95% CI] | p |")
    print("|---|---|---|---|")
    print(f"| {fl:.3f} (se {sl:.3f}) | {fs:.3f} (se {ss:.3f}) | {d:+.3f} [{d - 1.96 * se:+.3f}, {d + 1.96 * se:+.3f}] | {p:.2g} |")
    print()
    print("One comparison (no family). The repetitions of the two configs are independent; each f's standard "
          "error is the delta method's for a ratio of paired means, and the difference is taken as normal.")
    print()


def plot_d(series, beta, title, path: Path):
    """d_t with its 95% intervals, for each (label, rows, color, x offset) of `series`, against the theory's
    predicted d_t, on the table's scale (nats)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.axhline(0, color="grey", lw=0.8)
    for label, rows, color, dx in series:
        ts, m, h = zip(*[(t, e0[0], e0[1]) for t, _, e0, _, _ in rows if e0])
        ax.errorbar([t + dx for t in ts], m, yerr=h, fmt="o-", color=color, capsize=4,
                    label=f"{label}, {rows[0][1]} repetitions (95% t interval)")
    grid = np.linspace(1, ts[-1], 50)
    ax.plot(grid, [predicted_gain(beta, t) for t in grid], "--", color="tab:blue",
            label=f"theory: -beta log2(2(t+1)/(t+2)), beta = {beta:.3f}")
    ax.set_xticks(ts)
    ax.set_xlabel("round t")
    ax.set_ylabel("L(setting 3) - L(fresh-only), nats")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def design_b(root: Path, beta, plots: Path | None):
    print(f"## B: L(S3_t) - L(F_t) against 0 and against the predicted gain (beta = {beta:.4f} nats, a-large)")
    print()
    finished = {}
    for name in B_CONFIGS:
        run = root / f"setting3-{name}"
        if not (run / "metrics.jsonl").exists():
            print(f"{name}: not run.")
            print()
            continue
        # A verdict only on the design's repetitions: a run still under way is not reported in part.
        want = tomllib.loads((run / "config.toml").read_text())["experiment"]["repetitions"]
        by_round = nll(run)
        last = by_round.get(B_ROUNDS[-1], {})
        done = len(set(last.get("decaying-alpha", {})) & set(last.get("fresh-only", {})))
        if done < want:
            print(f"{name}: not finished ({done} of {want} repetitions have round {B_ROUNDS[-1]} in both chains).")
            print()
            continue
        rows = []
        for t in B_ROUNDS:
            L = by_round.get(t, {})
            s3, fo = L.get("decaying-alpha", {}), L.get("fresh-only", {})
            d = [s3[k] - fo[k] for k in sorted(s3) if k in fo]
            pred = predicted_gain(beta, t)
            rows.append((t, len(d), t_interval(d), t_interval([x - pred for x in d]), pred))
        if plots is not None:
            plot_d([("measured", rows, "tab:red", 0)], beta,
                   f"{name}: setting 3 against fresh-only, held-out mean NLL (paired)", plots / name / "contrast.png")
        adj0 = holm([r[2][2] if r[2] else None for r in rows])
        adjp = holm([r[3][2] if r[3] else None for r in rows])
        print(f"### {name}")
        print()
        print("| round | repetitions | d = L(S3) - L(F), nats [95% CI] | p vs 0 (Holm) | predicted d, nats | "
              "p vs predicted (Holm) | verdict |")
        print("|---|---|---|---|---|---|---|")
        for (t, n, e0, ep, pred), a0, ap in zip(rows, adj0, adjp):
            if e0 is None:
                print(f"| {t} | {n} | fewer than 2 repetitions | - | {pred:+.3f} | - | - |")
                continue
            m = e0[0]
            v0 = ("better than fresh-only" if m < 0 else "worse than fresh-only") if a0 < 0.05 else "no clear difference from fresh-only"
            vp = "excludes the prediction" if ap < 0.05 else "consistent with the prediction"
            print(f"| {t} | {n} | {fmt_ci(e0)} | {e0[2]:.4f} ({a0:.4f}) | {pred:+.3f} | "
                  f"{ep[2]:.4f} ({ap:.4f}) | {v0}; {vp} |")
        print()
        finished[name] = (by_round, rows)
    print("Family: the 4 rounds of each config, once for each question (Holm; a round without data counts as "
          "p = 1). d < 0 means setting 3 beat fresh-only. The prediction treats beta as known; its own 95% "
          "interval scales every predicted d by the same factor.")
    print()
    if len(finished) == len(B_CONFIGS):
        steps_by_passes(finished, beta, plots)


def steps_by_passes(finished, beta, plots: Path | None):
    """Exploratory, not in the design: what holding the passes instead of the steps changes in d_t.

    Both configs share seed, split and n, so repetition k draws the same fresh plots and held-out plots in
    both; d_t(b-passes) - d_t(b-fixed) is paired by repetition."""
    print("## B, exploratory: steps by passes against fixed steps (cause 3 over rounds)")
    print()
    print("Not in the design fixed before the runs (which asked each config's d_t against 0 and the prediction); "
          "added after both finished. Paired by repetition: both configs draw the same fresh and held-out plots.")
    print()
    print("| round | repetitions | d(b-passes) - d(b-fixed), nats [95% CI] | p (Holm) | "
          "L(S3): b-passes - b-fixed | L(F): b-passes - b-fixed |")
    print("|---|---|---|---|---|---|")
    (bp, _), (bf, _) = finished["b-passes"], finished["b-fixed"]
    rows = []
    for t in B_ROUNDS:
        (p3, pf), (f3, ff) = [[b.get(t, {}).get(c, {}) for c in ("decaying-alpha", "fresh-only")] for b in (bp, bf)]
        reps = sorted(set(p3) & set(pf) & set(f3) & set(ff))
        ds3 = [p3[k] - f3[k] for k in reps]
        dfo = [pf[k] - ff[k] for k in reps]
        rows.append((t, len(reps), t_interval([a - b for a, b in zip(ds3, dfo)]), t_interval(ds3), t_interval(dfo)))
    adj = holm([r[2][2] if r[2] else None for r in rows])
    for (t, n, e, es3, efo), a in zip(rows, adj):
        p = f"{e[2]:.4f} ({a:.4f})" if e else "-"
        print(f"| {t} | {n} | {fmt_ci(e)} | {p} | {fmt_ci(es3)} | {fmt_ci(efo)} |")
    print()
    print("Family: the 4 rounds (Holm). A negative difference means holding 15 passes helped setting 3 against "
          "fresh-only more than 540 fixed steps did; the last two columns split it into each chain's change.")
    if plots is not None:
        plot_d([(name, finished[name][1], color, dx)
                for name, color, dx in zip(B_CONFIGS, ["tab:green", "tab:red"], [-0.04, 0.04])],
               beta, "Setting 3 against fresh-only: 15 passes a round against 540 steps", plots / "b-contrast.png")


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


def main(root: Path, plots: Path | None):
    runs = {name: root / f"setting3-{name}" for name in A_CONFIGS}
    have = {k: gains(v) for k, v in runs.items() if (v / "metrics.jsonl").exists()}
    print("| config | repetitions | a = L(F1) - L(S3), nats [95% CI] | b = L(F1) - L(R2), nats [95% CI] | f [Fieller 95% CI] |")
    print("|---|---|---|---|---|")
    for name in A_CONFIGS:
        if name not in have or not have[name]:
            continue
        ab = np.array(list(have[name].values()))
        a, b = ab[:, 0], ab[:, 1]
        est, iv = fieller(a, b)
        ivs = f"[{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "[unbounded]"
        print(f"| {name} | {len(a)} | {fmt_ci(t_interval(a))} | {fmt_ci(t_interval(b))} | {est:.3f} {ivs} |")
    print()
    if "toggle-today" not in have:
        return
    today = have["toggle-today"]
    rows = []
    for name in TOGGLES:
        reps = sorted(set(today) & set(have.get(name, {})))
        d = [have[name][k][0] - today[k][0] for k in reps]
        rows.append((name, len(d), *(t_interval(d) or (None, None, None))))
    adj = holm([r[4] for r in rows])
    print("| toggle | repetitions | a(toggle) - a(today), nats [95% CI] | p | p (Holm) | matters? |")
    print("|---|---|---|---|---|---|")
    for (name, n, m, h, p), pa in zip(rows, adj):
        if m is None:
            print(f"| {name} | {n} | not run (fewer than 2 repetitions) | - | - | - |")
            continue
        print(f"| {name} | {n} | {fmt_ci((m, h))} | {p:.4f} | {pa:.4f} | {'yes' if pa < 0.05 else 'no'} |")
    print()
    print(f"Family: the {len(rows)} toggles of the design (Holm; one not run counts as p = 1). "
          "a > 0 means synthetic plots lowered held-out NLL.")
    print()
    scale(have)
    if have.get("a-large"):
        beta = float(np.mean([b for _, b in have["a-large"].values()]))
        design_b(root, beta, plots)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="?", default="runs", type=Path, help="folder holding setting3-NAME run directories")
    ap.add_argument("--plots", type=Path, help="write each finished B config's PLOTS/NAME/contrast.png, and PLOTS/b-contrast.png once both have finished")
    args = ap.parse_args()
    main(args.runs, args.plots)

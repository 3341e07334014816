"""Holm's step-down adjustment over a pre-registered family, shared by the cross-config analyses
(scripts/ngram_grid.py, scripts/setting3_analysis.py)."""


def holm(ps):
    """Adjusted p-values for `ps`, where None marks a member of the family without data: it counts as p = 1
    (ranked last) and gets None back, so a partial set of runs is adjusted as strictly as the full family,
    never less."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: 1.0 if ps[i] is None else ps[i])
    out, running = [None] * m, 0.0
    for j, i in enumerate(order):
        if ps[i] is None:
            continue
        running = max(running, min(1.0, (m - j) * ps[i]))
        out[i] = running
    return out

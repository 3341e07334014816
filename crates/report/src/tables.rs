//! The tables of a run's report and their statistics: every comparison on held-out mean NLL, joined by
//! (chain, repetition, round), with exact t intervals, p-values and Holm-adjusted verdicts within stated
//! families; the pre-registered endpoints; the curation, tails and truncation tables; paired.csv.

use std::collections::BTreeMap;
use std::path::Path;

use corpus::CurationCounts;
use experiment::config::{candidate_counts, Config, FilterSpec, Truncation};
use experiment::{CurationMetrics, MetricsRow};

use crate::stats::{fieller, holm, Estimate, ALPHA};
use crate::{csv_bytes, Error, Result};

/// A metric of each finished round: chain -> round -> repetition -> value. Keyed by name, so rows written
/// under other setting numbers (a run resumed by a newer binary) still join.
pub(crate) type Table = BTreeMap<String, BTreeMap<usize, BTreeMap<usize, f64>>>;

pub(crate) fn table(rows: &[MetricsRow], metric: impl Fn(&MetricsRow) -> Option<f64>) -> Table {
    let mut by: Table = BTreeMap::new();
    for r in rows {
        if let Some(v) = metric(r).filter(|v| v.is_finite()) {
            by.entry(r.setting.clone())
                .or_default()
                .entry(r.round)
                .or_default()
                .insert(r.repetition, v);
        }
    }
    by
}

/// Held-out mean NLL per token, the report's scale: ln of the perplexity it was exponentiated from.
pub(crate) fn nll(r: &MetricsRow) -> Option<f64> {
    Some(r.heldout_perplexity.ln())
}

pub(crate) fn second_nll(r: &MetricsRow) -> Option<f64> {
    r.second_perplexity.map(f64::ln)
}

/// ln of the model's squared-error risk against the reference distribution (models that report one).
pub(crate) fn log_risk(r: &MetricsRow) -> Option<f64> {
    r.model_risk.map(f64::ln)
}

pub(crate) const HELDOUT: Measure = Measure {
    metric: nll,
    scale: "held-out mean NLL",
    log: "mean NLL",
    exp: "perplexity",
    unit: "nats",
};

pub(crate) const SECOND: Measure = Measure {
    metric: second_nll,
    scale: "mean NLL on the second evaluation set",
    ..HELDOUT
};

/// Risk is compared as a ratio: its log differences are tested, as for perplexity.
pub(crate) const RISK: Measure = Measure {
    metric: log_risk,
    scale: "log risk against the reference distribution",
    log: "log risk",
    exp: "risk",
    unit: "log units",
};

/// The values of `reps` present in both maps, paired: (a, b) per repetition, in repetition order.
pub(crate) fn pairs(a: &BTreeMap<usize, f64>, b: &BTreeMap<usize, f64>) -> Vec<(f64, f64)> {
    a.iter()
        .filter_map(|(rep, &x)| b.get(rep).map(|&y| (x, y)))
        .collect()
}

/// The paired change of a chain's metric at `round` against its round 0.
pub(crate) fn change(t: &Table, chain: &str, round: usize) -> Option<Estimate> {
    let rounds = t.get(chain)?;
    let d: Vec<f64> = pairs(rounds.get(&round)?, rounds.get(&0)?)
        .into_iter()
        .map(|(x, x0)| x - x0)
        .collect();
    (!d.is_empty()).then(|| Estimate::of(&d))
}

/// The paired difference a - b at `round`, over the repetitions that have both.
pub(crate) fn difference(t: &Table, (a, b): (&str, &str), round: usize) -> Option<Estimate> {
    let d: Vec<f64> = pairs(t.get(a)?.get(&round)?, t.get(b)?.get(&round)?)
        .into_iter()
        .map(|(x, y)| x - y)
        .collect();
    (!d.is_empty()).then(|| Estimate::of(&d))
}

/// What a test says once adjusted: lower NLL is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Worsens,
    NoClearChange,
    Improves,
}

impl Verdict {
    /// From a paired estimate and its family-adjusted p-value: a direction only when the adjusted p is below
    /// the level (and there are at least 2 repetitions).
    pub fn of(e: &Estimate, p_adjusted: f64) -> Self {
        if e.n >= 2 && p_adjusted < ALPHA {
            if e.mean > 0.0 {
                Verdict::Worsens
            } else {
                Verdict::Improves
            }
        } else {
            Verdict::NoClearChange
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Worsens => "worsens",
            Verdict::NoClearChange => "no clear change",
            Verdict::Improves => "improves",
        }
    }

    pub(crate) fn against(self, b: &str) -> String {
        match self {
            Verdict::Worsens => format!("worse than {b}"),
            Verdict::Improves => format!("better than {b}"),
            Verdict::NoClearChange => "no clear difference".into(),
        }
    }
}

pub(crate) fn p_text(p: f64) -> String {
    if p.is_nan() {
        "-".into()
    } else if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// A perplexity with two decimals; a quantity below 1 (a risk) with four significant digits.
pub(crate) fn value(v: f64) -> String {
    if v.abs() >= 1.0 || v == 0.0 || !v.is_finite() {
        format!("{v:.2}")
    } else {
        format!("{v:.3e}")
    }
}

/// `+0.123 [+0.100, +0.146]` nats.
pub(crate) fn nats(e: &Estimate) -> String {
    if e.n < 2 {
        return format!("{:+.3} (1 repetition)", e.mean);
    }
    format!("{:+.3} [{:+.3}, {:+.3}]", e.mean, e.lo, e.hi)
}

/// The same interval as a perplexity ratio: `x1.131 [1.105, 1.157]`.
pub(crate) fn ratio(e: &Estimate) -> String {
    if e.n < 2 {
        return format!("x{:.3}", e.mean.exp());
    }
    format!(
        "x{:.3} [{:.3}, {:.3}]",
        e.mean.exp(),
        e.lo.exp(),
        e.hi.exp()
    )
}

/// Where a run stands: the chains in the config's order, and which are not finished.
pub(crate) struct Layout {
    pub(crate) chains: Vec<String>,
    pub(crate) rounds: usize,
    pub(crate) repetitions: usize,
}

impl Layout {
    pub(crate) fn new(cfg: &Config, rows: &[MetricsRow]) -> Self {
        let mut chains: Vec<String> = cfg
            .settings()
            .map(|s| s.into_iter().map(|s| s.name).collect())
            .unwrap_or_default();
        let mut extra: Vec<(usize, String)> = rows
            .iter()
            .filter(|r| !chains.contains(&r.setting))
            .map(|r| (r.setting_number, r.setting.clone()))
            .collect();
        extra.sort();
        extra.dedup();
        chains.extend(extra.into_iter().map(|(_, n)| n));
        // Only chains with at least one finished round are drawn and tabled.
        chains.retain(|c| rows.iter().any(|r| &r.setting == c));
        Self {
            chains,
            rounds: cfg.schedule.rounds,
            repetitions: cfg.experiment.repetitions,
        }
    }

    /// The last round of the config, the endpoint of every comparison.
    pub(crate) fn final_round(&self) -> usize {
        self.rounds.saturating_sub(1)
    }

    /// The config's chains with repetitions that have not finished every round (or not started), each with
    /// the repetitions finished and the repetitions each round has.
    pub(crate) fn incomplete(&self, cfg: &Config, rows: &[MetricsRow]) -> Vec<String> {
        let mut all: Vec<String> = cfg
            .settings()
            .map(|s| s.into_iter().map(|s| s.name).collect())
            .unwrap_or_default();
        all.extend(
            self.chains
                .iter()
                .filter(|c| !all.contains(c))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let mut out = Vec::new();
        for c in &all {
            let mut done = vec![0usize; self.repetitions];
            for r in rows.iter().filter(|r| &r.setting == c) {
                if let Some(d) = done.get_mut(r.repetition) {
                    *d += 1;
                }
            }
            if done.iter().any(|&d| d < self.rounds) {
                let finished = done.iter().filter(|&&d| d == self.rounds).count();
                let per_round: Vec<String> = (0..self.rounds)
                    .map(|t| {
                        rows.iter()
                            .filter(|r| &r.setting == c && r.round == t)
                            .count()
                            .to_string()
                    })
                    .collect();
                out.push(format!(
                    "{c}: {finished} of {} repetitions finished; repetitions by round: {}",
                    self.repetitions,
                    per_round.join(", ")
                ));
            }
        }
        out
    }
}

/// The setting of a curated chain `SETTING+FILTER` (uncurated chains have none).
pub(crate) fn curated_setting(chain: &str) -> Option<&str> {
    chain.split_once('+').map(|(b, _)| b)
}

/// Holm families of pairwise comparisons: the chains of one setting in a curated run, every chain otherwise.
pub(crate) fn comparison_groups(chains: &[String]) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    for c in chains {
        match groups
            .iter_mut()
            .find(|g| curated_setting(&g[0]) == curated_setting(c))
        {
            Some(g) => g.push(c.clone()),
            None => groups.push(vec![c.clone()]),
        }
    }
    groups
}

/// One evaluation set's tables.
pub(crate) struct Analysis {
    pub(crate) tables: String,
    /// Per chain and round: the paired change of mean NLL against round 0.
    pub(crate) changes: BTreeMap<String, BTreeMap<usize, Estimate>>,
    pub(crate) table: Table,
}

/// What a table compares: a quantity on a log scale (its differences are tested) and its exponential.
pub(crate) struct Measure {
    pub metric: fn(&MetricsRow) -> Option<f64>,
    /// What the endpoints name the scale: "held-out mean NLL".
    pub scale: &'static str,
    /// The log-scale quantity, "mean NLL".
    pub log: &'static str,
    /// Its exponential, "perplexity".
    pub exp: &'static str,
    /// The unit of a difference, "nats".
    pub unit: &'static str,
}

pub(crate) fn analyse(layout: &Layout, rows: &[MetricsRow], m: &Measure, label: &str) -> Analysis {
    let metric = m.metric;
    let (log, exp, unit) = (m.log, m.exp, m.unit);
    let t = table(rows, metric);
    let mut changes: BTreeMap<String, BTreeMap<usize, Estimate>> = BTreeMap::new();
    for c in &layout.chains {
        if let Some(rounds) = t.get(c) {
            for &round in rounds.keys() {
                if let Some(e) = change(&t, c, round) {
                    changes.entry(c.clone()).or_default().insert(round, e);
                }
            }
        }
    }
    let last = layout.final_round();

    // 1. Change against round 0 at each chain's final round: one family.
    let ends: Vec<(&String, usize, Estimate)> = layout
        .chains
        .iter()
        .filter_map(|c| {
            let m = changes.get(c)?;
            let (&round, e) = m.range(..=last).next_back()?;
            Some((c, round, *e))
        })
        .collect();
    let adj = holm(
        &ends
            .iter()
            .map(|(_, r, e)| if *r == 0 { f64::NAN } else { e.p })
            .collect::<Vec<_>>(),
    );
    let mut s = format!(
        "### {label}: change of {log} against each repetition's round 0\n\n\
         | chain | repetitions | round | round-0 {exp} | {exp} | change of {log}, {unit} [95% CI] | \
         {exp} ratio [95% CI] | p | p (Holm) | verdict |\n|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for ((c, round, e), p_adj) in ends.iter().zip(&adj) {
        let geo = |t0: usize| -> String {
            let reps = t.get(*c).and_then(|m| m.get(&t0));
            match reps {
                Some(v) if !v.is_empty() => value((v.values().sum::<f64>() / v.len() as f64).exp()),
                _ => "-".into(),
            }
        };
        let note = if *round < last {
            format!(" (incomplete: round {round} of {last})")
        } else {
            String::new()
        };
        s.push_str(&format!(
            "| {c} | {} | {round} | {} | {} | {} | {} | {} | {} | {}{note} |\n",
            e.n,
            geo(0),
            geo(*round),
            nats(e),
            ratio(e),
            p_text(e.p),
            p_text(*p_adj),
            Verdict::of(e, *p_adj).label(),
        ));
    }
    let tested = adj.iter().filter(|p| !p.is_nan()).count();
    s.push_str(&format!(
        "\nFamily: {} (Holm). The {exp} columns are exp({log}) over the repetitions of each round; a change is \
         computed over the repetitions present at both round 0 and the row's round.\n\n",
        if tested == 0 {
            "none, no chain has two repetitions at both ends".to_string()
        } else {
            format!("the {tested} chains' changes at their last round")
        }
    ));

    // 2. Chains against each other at the last round, a family per group.
    let groups = comparison_groups(&layout.chains);
    let curated = groups.iter().any(|g| curated_setting(&g[0]).is_some());
    s.push_str(&format!(
        "### {label}: chains compared at round {last}, paired within repetitions ({log}, a - b)\n\n\
         | a | b | repetitions | a - b, {unit} [95% CI] | {exp} ratio [95% CI] | p | p (Holm) | verdict for a |\n\
         |---|---|---|---|---|---|---|---|\n"
    ));
    let mut families = Vec::new();
    for g in &groups {
        let mut cmp = Vec::new();
        for (i, a) in g.iter().enumerate() {
            for b in &g[i + 1..] {
                if let Some(e) = difference(&t, (a, b), last) {
                    cmp.push((a, b, e));
                }
            }
        }
        let adj = holm(&cmp.iter().map(|(_, _, e)| e.p).collect::<Vec<_>>());
        for ((a, b, e), p_adj) in cmp.iter().zip(&adj) {
            s.push_str(&format!(
                "| {a} | {b} | {} | {} | {} | {} | {} | {} |\n",
                e.n,
                nats(e),
                ratio(e),
                p_text(e.p),
                p_text(*p_adj),
                Verdict::of(e, *p_adj).against(b)
            ));
        }
        if !cmp.is_empty() {
            families.push(format!(
                "{} ({} comparison{})",
                curated_setting(&g[0]).unwrap_or("all chains"),
                cmp.len(),
                if cmp.len() == 1 { "" } else { "s" }
            ));
        }
    }
    s.push_str(&if families.is_empty() {
        "\nNo pair of chains has a repetition in common at this round.\n\n".to_string()
    } else {
        format!(
            "\nFamilies (Holm): {}{}.\n\n",
            if curated { "within each setting: " } else { "" },
            families.join("; ")
        )
    });

    // 3. Descriptive: the absolute scale, unpaired.
    let ppl = table(rows, |r| metric(r).map(f64::exp));
    s.push_str(&format!(
        "### {label}: absolute {exp} (descriptive; mean ± 95% CI across repetitions)\n\n\
         | chain | repetitions | round-0 {exp} | round | {exp} | change of means, same repetitions |\n\
         |---|---|---|---|---|---|\n"
    ));
    for (c, round, _) in &ends {
        let (Some(r0), Some(rl)) = (
            ppl.get(*c).and_then(|m| m.get(&0)),
            ppl.get(*c).and_then(|m| m.get(round)),
        ) else {
            continue;
        };
        let e0 = Estimate::of(&r0.values().copied().collect::<Vec<_>>());
        let el = Estimate::of(&rl.values().copied().collect::<Vec<_>>());
        let common = pairs(rl, r0);
        let (m1, m0) = (
            common.iter().map(|p| p.0).sum::<f64>(),
            common.iter().map(|p| p.1).sum::<f64>(),
        );
        s.push_str(&format!(
            "| {c} | {} | {} ± {} | {round} | {} ± {} | {:+.1}% over {} |\n",
            e0.n,
            value(e0.mean),
            value(e0.half_width()),
            value(el.mean),
            value(el.half_width()),
            100.0 * (m1 / m0 - 1.0),
            common.len()
        ));
    }
    s.push('\n');
    Analysis {
        tables: s,
        changes,
        table: t,
    }
}

/// The config's pre-registered endpoints, on held-out mean NLL.
pub(crate) fn endpoints(cfg: &Config, t: &Table, m: &Measure) -> String {
    let (scale, unit, exp) = (m.scale, m.unit, m.exp);
    let mut s = String::new();
    for r in &cfg.report.recovery {
        let at = |c: &str| {
            t.get(c)
                .and_then(|m| m.get(&r.round))
                .cloned()
                .unwrap_or_default()
        };
        let (base, mixed, doubled) = (at(&r.base), at(&r.mixed), at(&r.doubled));
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (rep, &lb) in &base {
            if let (Some(&lm), Some(&ld)) = (mixed.get(rep), doubled.get(rep)) {
                a.push(lb - lm);
                b.push(lb - ld);
            }
        }
        s.push_str(&format!(
            "### Endpoint {} ({scale}): the share of the doubling gain that synthetic data recovers, round {}\n\n\
             f = [L({base}) - L({mixed})] / [L({base}) - L({doubled})] on {scale}, paired within \
             repetitions; Fieller's 95% interval.\n\n| quantity | repetitions | estimate [95% CI] |\n|---|---|---|\n",
            r.name,
            r.round,
            base = r.base,
            mixed = r.mixed,
            doubled = r.doubled
        ));
        if a.is_empty() {
            s.push_str("| f | 0 | no repetition has all three chains at this round |\n\n");
            continue;
        }
        let (ea, eb) = (Estimate::of(&a), Estimate::of(&b));
        let f = fieller(&a, &b);
        let interval = match f.interval {
            Some((lo, hi)) => format!("[{lo:.3}, {hi:.3}]"),
            None => "[unbounded: the doubling gain is not clearly away from 0]".into(),
        };
        s.push_str(&format!(
            "| gain of synthetic data, L({}) - L({}), {unit} | {} | {} |\n\
             | gain of doubling, L({}) - L({}), {unit} | {} | {} |\n\
             | f | {} | {:.3} {interval} |\n\n",
            r.base,
            r.mixed,
            ea.n,
            nats(&ea),
            r.base,
            r.doubled,
            eb.n,
            nats(&eb),
            f.n,
            f.estimate
        ));
    }
    for c in &cfg.report.contrast {
        let est: Vec<(usize, Estimate)> = c
            .rounds
            .iter()
            .filter_map(|&r| difference(t, (&c.a, &c.b), r).map(|e| (r, e)))
            .collect();
        let adj = holm(&est.iter().map(|(_, e)| e.p).collect::<Vec<_>>());
        s.push_str(&format!(
            "### Endpoint {} ({scale}): {} - {} by round (paired)\n\n\
             | round | repetitions | a - b, {unit} [95% CI] | {exp} ratio [95% CI] | p | p (Holm) | verdict for {} |\n\
             |---|---|---|---|---|---|---|\n",
            c.name, c.a, c.b, c.a
        ));
        for ((r, e), p) in est.iter().zip(&adj) {
            s.push_str(&format!(
                "| {r} | {} | {} | {} | {} | {} | {} |\n",
                e.n,
                nats(e),
                ratio(e),
                p_text(e.p),
                p_text(*p),
                Verdict::of(e, *p).against(&c.b)
            ));
        }
        s.push_str(&format!(
            "\nFamily: the {} rounds of this contrast (Holm).\n\n",
            est.len()
        ));
    }
    s
}

/// Per curated chain, over rounds 1 on and all repetitions: candidates per round, the realised fresh fraction
/// of the kept documents beside the one expected (the schedule's alpha, or for the oracle appendix D's alpha'
/// from the theory crate), the filter's pooled type I and type II rates, the verifier's perplexity, and what
/// the chain trained on (tokens and document length: a filter that keeps longer documents trains on more
/// tokens at fixed steps).
pub(crate) fn curation_table(cfg: &Config, layout: &Layout, rows: &[MetricsRow]) -> String {
    let mut s = String::from(
        "### Curation: what each filter did (rounds 1 on, all repetitions)\n\n\
         | chain | rounds | synthetic candidates generated / read per round | realised alpha [95% CI] | \
         expected alpha | type I (real rejected) | type II (synthetic kept) | verifier perplexity | \
         training tokens per round | tokens per document of D_t |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for name in &layout.chains {
        let cs: Vec<(&MetricsRow, &CurationMetrics)> = rows
            .iter()
            .filter(|r| &r.setting == name)
            .filter_map(|r| r.curation.as_ref().map(|c| (r, c)))
            .collect();
        if cs.is_empty() {
            continue;
        }
        let sum = |f: &dyn Fn(&CurationCounts) -> usize| {
            cs.iter().map(|(_, c)| f(&c.counts)).sum::<usize>()
        };
        let (cr, kr) = (sum(&|c| c.candidates_real), sum(&|c| c.kept_real));
        let (csyn, ksyn) = (sum(&|c| c.candidates_synthetic), sum(&|c| c.kept_synthetic));
        let rate = |num: usize, den: usize| {
            if den == 0 {
                "-".to_string()
            } else {
                format!("{:.3} ({num}/{den})", num as f64 / den as f64)
            }
        };
        let alphas = Estimate::of(&cs.iter().map(|(r, _)| r.realized_alpha).collect::<Vec<_>>());
        let spec = cfg.setting(name).ok();
        let filter = match spec.as_ref().and_then(|s| s.curation.clone()) {
            Some(FilterSpec::Oracle { e1, e2, .. }) => Some(theory::Filter { e1, e2 }),
            _ => None,
        };
        let expected: Vec<f64> = cs
            .iter()
            .map(|(r, _)| match filter {
                Some(f) => f.apply(r.alpha, r.new_docs as f64).0,
                None => r.alpha,
            })
            .collect();
        let expected = expected.iter().sum::<f64>() / expected.len().max(1) as f64;
        // Generated per round, from the plan (the oracle generates its whole stream's bound and reads fewer).
        let generated = spec
            .as_ref()
            .and_then(|s| {
                let plan = s.schedule.plan(cfg.schedule.rounds, usize::MAX).ok()?;
                let c = candidate_counts(cfg.curation.as_ref()?.max_candidates, s, &plan).ok()?;
                let per: Vec<usize> = cs
                    .iter()
                    .map(|(r, _)| c.get(r.round).map_or(0, |x| x.synthetic))
                    .collect();
                Some(per.iter().sum::<usize>() as f64 / per.len().max(1) as f64)
            })
            .map_or("-".to_string(), |g| format!("{g:.1}"));
        let mut vp: Vec<(usize, f64)> = cs
            .iter()
            .filter_map(|(r, c)| c.verifier_perplexity.map(|v| (r.repetition, v)))
            .collect();
        vp.sort_by_key(|x| x.0);
        vp.dedup_by_key(|x| x.0);
        let verifier = if vp.is_empty() {
            "-".to_string()
        } else {
            let e = Estimate::of(&vp.iter().map(|x| x.1).collect::<Vec<_>>());
            format!("{:.1} ± {:.1}", e.mean, e.half_width())
        };
        let tokens = Estimate::of(
            &cs.iter()
                .map(|(r, _)| r.train_tokens as f64)
                .collect::<Vec<_>>(),
        );
        // The stream holds each document and its end-of-text.
        let per_doc = Estimate::of(
            &cs.iter()
                .map(|(r, _)| r.train_tokens as f64 / r.total_docs.max(1) as f64 - 1.0)
                .collect::<Vec<_>>(),
        );
        s.push_str(&format!(
            "| {name} | {} | {generated} / {:.1} | {:.3} [{:.3}, {:.3}] | {expected:.3} | {} | {} | {verifier} | \
             {:.0} ± {:.0} | {:.1} ± {:.1} |\n",
            cs.len(),
            csyn as f64 / cs.len().max(1) as f64,
            alphas.mean,
            alphas.lo,
            alphas.hi,
            rate(cr - kr, cr),
            rate(ksyn, csyn),
            tokens.mean,
            tokens.half_width(),
            per_doc.mean,
            per_doc.half_width(),
        ));
    }
    s.push_str(
        "\nThe ranking filters generate ceil(s_t / q) candidates and read them all; the oracle generates its \
         stream's bound and reads until n_t are kept. At fixed steps, a chain whose documents are longer trains \
         on more distinct tokens: compare a filter with the `longest` control of the same fraction.\n\n",
    );
    s
}

/// Every curated round's filter counts and rates, one row per (chain, repetition, round).
pub(crate) fn curation_csv(rows: &[MetricsRow]) -> csv::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "setting",
        "repetition",
        "round",
        "filter",
        "kind",
        "candidates_real",
        "candidates_synthetic",
        "kept_real",
        "kept_synthetic",
        "realized_alpha",
        "type1",
        "type2",
        "verifier_perplexity",
    ])?;
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for r in rows {
        if let Some(c) = &r.curation {
            w.write_record([
                r.setting.clone(),
                r.repetition.to_string(),
                r.round.to_string(),
                c.counts.filter.clone(),
                c.counts.kind.clone(),
                c.counts.candidates_real.to_string(),
                c.counts.candidates_synthetic.to_string(),
                c.counts.kept_real.to_string(),
                c.counts.kept_synthetic.to_string(),
                r.realized_alpha.to_string(),
                opt(c.counts.type1),
                opt(c.counts.type2),
                opt(c.verifier_perplexity),
            ])?;
        }
    }
    Ok(csv_bytes(w))
}

/// Reads back a `curation.csv` into the rows' `curation` fields (for re-analysing published results).
pub(crate) fn join_curation_csv(path: &Path, rows: &mut [MetricsRow]) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Line {
        setting: String,
        repetition: usize,
        round: usize,
        filter: String,
        kind: String,
        candidates_real: usize,
        candidates_synthetic: usize,
        kept_real: usize,
        kept_synthetic: usize,
        type1: Option<f64>,
        type2: Option<f64>,
        verifier_perplexity: Option<f64>,
    }
    let mut rd = csv::Reader::from_path(path).map_err(|source| Error::Csv {
        what: format!("cannot read {}", path.display()),
        source,
    })?;
    let mut by = BTreeMap::new();
    for l in rd.deserialize::<Line>() {
        let l = l.map_err(|source| Error::Csv {
            what: format!("{} is not a curation.csv", path.display()),
            source,
        })?;
        by.insert((l.setting.clone(), l.repetition, l.round), l);
    }
    for r in rows.iter_mut() {
        if let Some(l) = by.remove(&(r.setting.clone(), r.repetition, r.round)) {
            r.curation = Some(CurationMetrics {
                counts: CurationCounts {
                    filter: l.filter,
                    kind: l.kind,
                    candidates_real: l.candidates_real,
                    candidates_synthetic: l.candidates_synthetic,
                    kept_real: l.kept_real,
                    kept_synthetic: l.kept_synthetic,
                    type1: l.type1,
                    type2: l.type2,
                },
                verifier_perplexity: l.verifier_perplexity,
            });
        }
    }
    Ok(())
}

/// The share of a round's draws cut at the cap, where it is more than a few percent: a warning, since a cut
/// document either teaches a false end (`finished`), or is not a whole plot (`open`).
pub(crate) fn truncation_warnings(cfg: &Config, rows: &[MetricsRow]) -> String {
    const LIMIT: f64 = 0.05;
    let mut worst: BTreeMap<&str, (usize, f64, usize)> = BTreeMap::new();
    for r in rows {
        let drawn = if r.gen_drawn > 0 {
            r.gen_drawn
        } else {
            r.generated_docs
        };
        if drawn == 0 {
            continue;
        }
        let rate = r.gen_truncated as f64 / drawn as f64;
        let e = worst.entry(&r.setting).or_insert((0, 0.0, 0));
        if rate > LIMIT {
            e.0 += 1;
        }
        e.1 = e.1.max(rate);
        e.2 += 1;
    }
    let over: Vec<String> = worst
        .iter()
        .filter(|(_, w)| w.0 > 0)
        .map(|(c, w)| format!("{c}: {} of {} rounds, up to {:.0}%", w.0, w.2, 100.0 * w.1))
        .collect();
    if over.is_empty() {
        return String::new();
    }
    let fate = match rows.iter().find_map(|r| r.gen_truncation.clone()) {
        Some(f) => f,
        None => format!("{:?}", cfg.generation.truncated).to_lowercase(),
    };
    let meaning = match fate.as_str() {
        "open" => "they enter the next round without an end-of-text, as partial plots",
        "redraw" => "they were dropped and redrawn, so the kept plots are biased toward short ones",
        _ => "they enter the next round followed by an end-of-text, teaching that plots end at the cap",
    };
    let cap = rows
        .iter()
        .map(|r| r.gen_max_new_tokens)
        .find(|&c| c > 0)
        .map_or(String::new(), |c| format!(" = {c}"));
    format!(
        "### Warning: generated documents cut at max_new_tokens{cap}\n\n\
         More than {:.0}% of a round's generated documents were cut at the cap in {} chain(s) ({meaning}; \
         truncated = \"{fate}\"):\n\n| chain and rounds |\n|---|\n{}\n\n",
        100.0 * LIMIT,
        over.len(),
        over.iter().map(|o| format!("| {o} |")).collect::<Vec<_>>().join("\n"),
    ) + if cfg.generation.truncated == Truncation::Finished {
        "Raise generation.max_new_tokens (\"auto\" covers 99.5% of real plots) or set truncated = \"open\".\n\n"
    } else {
        ""
    }
}

/// The tails at each chain's last round: per-document perplexity quantiles.
pub(crate) fn tails_table(layout: &Layout, rows: &[MetricsRow]) -> String {
    if rows.iter().all(|r| r.heldout_doc_ppl_q50.is_none()) {
        return String::new();
    }
    let last = layout.final_round();
    let mut s = String::from(
        "### The tails: per-document perplexity quantiles (mean over repetitions)\n\n\
         Held-out plots under each round's model, and the round's generated plots under the repetition's \
         round-0 model.\n\n| chain | round | held-out 50% | held-out 95% | generated under round 0: 5% | 50% | 95% |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for c in &layout.chains {
        for round in [0, last] {
            let rs: Vec<&MetricsRow> = rows
                .iter()
                .filter(|r| &r.setting == c && r.round == round)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let m = |f: fn(&MetricsRow) -> Option<f64>| {
                let v: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
                if v.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.1}", v.iter().sum::<f64>() / v.len() as f64)
                }
            };
            s.push_str(&format!(
                "| {c} | {round} | {} | {} | {} | {} | {} |\n",
                m(|r| r.heldout_doc_ppl_q50),
                m(|r| r.heldout_doc_ppl_q95),
                m(|r| r.gen_round0_ppl_q05),
                m(|r| r.gen_round0_ppl_q50),
                m(|r| r.gen_round0_ppl_q95),
            ));
        }
    }
    s.push('\n');
    s
}

/// Every chain and round with its repetitions, perplexity and paired change, joined by (chain, round), and
/// p-values adjusted over every (chain, round >= 1) of the evaluation set.
pub(crate) fn paired_csv(sets: &[(&str, &Analysis)]) -> csv::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "evaluation",
        "setting",
        "round",
        "repetitions",
        "perplexity_geomean",
        "perplexity_ci_low",
        "perplexity_ci_high",
        "paired_repetitions",
        "change_mean_nll",
        "change_ci_low",
        "change_ci_high",
        "perplexity_ratio",
        "p_value",
        "p_holm",
        "verdict",
    ])?;
    for (set, a) in sets {
        let mut lines: Vec<(&String, usize, Estimate, Option<Estimate>)> = Vec::new();
        for (c, rounds) in &a.table {
            for (&round, reps) in rounds {
                let abs = Estimate::of(&reps.values().copied().collect::<Vec<_>>());
                let ch = a.changes.get(c).and_then(|m| m.get(&round)).copied();
                lines.push((c, round, abs, ch));
            }
        }
        let adj = holm(
            &lines
                .iter()
                .map(|(_, round, _, ch)| match ch {
                    Some(e) if *round > 0 => e.p,
                    _ => f64::NAN,
                })
                .collect::<Vec<_>>(),
        );
        for ((c, round, abs, ch), p_adj) in lines.iter().zip(adj) {
            let f = |v: f64| format!("{v:.6}");
            let (pn, m, lo, hi, r, p, verdict) = match ch {
                Some(e) => (
                    e.n.to_string(),
                    f(e.mean),
                    f(e.lo),
                    f(e.hi),
                    f(e.mean.exp()),
                    if e.p.is_nan() {
                        String::new()
                    } else {
                        format!("{:.6e}", e.p)
                    },
                    Verdict::of(e, p_adj).label().to_string(),
                ),
                None => Default::default(),
            };
            w.write_record([
                set.to_string(),
                (*c).clone(),
                round.to_string(),
                abs.n.to_string(),
                f(abs.mean.exp()),
                f(abs.lo.exp()),
                f(abs.hi.exp()),
                pn,
                m,
                lo,
                hi,
                r,
                p,
                if p_adj.is_nan() {
                    String::new()
                } else {
                    format!("{p_adj:.6e}")
                },
                verdict,
            ])?;
        }
    }
    Ok(csv_bytes(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(setting: &str, number: usize, rep: usize, round: usize, ppl: f64) -> MetricsRow {
        let mut r: MetricsRow = serde_json::from_value(serde_json::json!({
            "setting": setting, "setting_number": number, "repetition": rep, "round": round,
            "new_docs": 0, "fresh_docs": 0, "synthetic_docs": 0, "total_docs": 0, "alpha": 0.0,
            "realized_alpha": 0.0, "real_fraction": 0.0, "train_tokens": 0, "train_steps": 0,
            "final_train_loss": 0.0, "heldout_perplexity": 1.0, "heldout_tokens": 0,
            "second_perplexity": null, "generated_docs": 0, "gen_mean_words": 0.0, "gen_distinct_1": 0.0,
            "gen_distinct_2": 0.0, "gen_unigram_entropy": 0.0, "wall_compose_s": 0.0, "wall_train_s": 0.0,
            "wall_eval_s": 0.0, "wall_generate_s": 0.0
        }))
        .unwrap();
        r.heldout_perplexity = ppl;
        r
    }

    /// The paired change on the log scale against a hand computation: three repetitions whose round 0
    /// differs a lot while each rises by about 10%.
    #[test]
    fn paired_change_is_a_difference_of_mean_nll() {
        let rows = vec![
            row("a", 0, 0, 0, 100.0),
            row("a", 0, 1, 0, 200.0),
            row("a", 0, 2, 0, 400.0),
            row("a", 0, 0, 1, 110.0),
            row("a", 0, 1, 1, 224.0),
            row("a", 0, 2, 1, 432.0),
        ];
        let t = table(&rows, nll);
        let e = change(&t, "a", 1).unwrap();
        let d = [1.10f64.ln(), 1.12f64.ln(), 1.08f64.ln()];
        let want = Estimate::of(&d);
        assert_eq!(e.n, 3);
        assert!((e.mean - want.mean).abs() < 1e-12 && (e.hi - want.hi).abs() < 1e-12);
        assert!(e.lo > 0.0, "a 10% rise in every repetition is clear: {e:?}");
        assert_eq!(change(&t, "a", 0).unwrap().mean, 0.0);
    }

    /// One repetition with a heavy tail decides a test on absolute perplexity; on mean NLL the same data give
    /// a clear verdict: a filter that keeps perplexity at 0.8 of no filter's in every repetition, where no
    /// filter's fifth repetition reaches 15,000.
    #[test]
    fn an_outlier_repetition_hides_a_clear_difference_on_the_absolute_scale() {
        let none = [3000.0, 3000.0, 3000.0, 3250.0, 15000.0];
        let diversity = [2400.0, 2430.0, 2380.0, 2600.0, 12100.0];
        let mut rows = Vec::new();
        for (rep, (&a, &b)) in diversity.iter().zip(&none).enumerate() {
            rows.push(row("diversity", 1, rep, 5, a));
            rows.push(row("none", 0, rep, 5, b));
        }
        let absolute = table(&rows, |r| Some(r.heldout_perplexity));
        let on_ppl = difference(&absolute, ("diversity", "none"), 5).unwrap();
        assert!(on_ppl.p > ALPHA, "absolute: {on_ppl:?}");
        assert_eq!(Verdict::of(&on_ppl, on_ppl.p), Verdict::NoClearChange);
        let log = table(&rows, nll);
        let on_nll = difference(&log, ("diversity", "none"), 5).unwrap();
        assert!(on_nll.p < 1e-4, "log scale: {on_nll:?}");
        assert_eq!(Verdict::of(&on_nll, on_nll.p), Verdict::Improves);
        assert!((on_nll.mean.exp() - 0.8).abs() < 0.01);
    }

    /// Joins go by (chain, repetition, round): a repetition missing at one end is left out of that
    /// comparison, and rows in any order (or under other setting numbers) pair the same.
    #[test]
    fn joins_are_by_chain_repetition_and_round() {
        let mut rows = vec![
            row("a", 0, 0, 0, 100.0),
            row("a", 0, 1, 0, 100.0),
            row("a", 0, 2, 0, 100.0),
            row("a", 0, 0, 2, 120.0),
            row("a", 0, 2, 2, 125.0),
            // Repetition 1 has no round 2; a round 1 that is not round 2.
            row("a", 0, 1, 1, 999.0),
            row("b", 1, 2, 2, 150.0),
            row("b", 7, 0, 2, 130.0),
        ];
        rows.reverse();
        let t = table(&rows, nll);
        let e = change(&t, "a", 2).unwrap();
        assert_eq!(e.n, 2);
        let want = Estimate::of(&[1.2f64.ln(), 1.25f64.ln()]);
        assert!((e.mean - want.mean).abs() < 1e-12);
        let d = difference(&t, ("a", "b"), 2).unwrap();
        assert_eq!(d.n, 2);
        let want = Estimate::of(&[(120.0f64 / 130.0).ln(), (125.0f64 / 150.0).ln()]);
        assert!((d.mean - want.mean).abs() < 1e-12 && (d.hi - want.hi).abs() < 1e-12);
        assert!(difference(&t, ("a", "b"), 1).is_none());
    }

    #[test]
    fn verdicts_need_the_adjusted_p_and_two_repetitions() {
        let e = Estimate::of(&[0.1, 0.12, 0.11, 0.13]);
        assert_eq!(Verdict::of(&e, e.p), Verdict::Worsens);
        assert_eq!(Verdict::of(&e, 0.06), Verdict::NoClearChange);
        let neg = Estimate::of(&[-0.1, -0.12, -0.11, -0.13]);
        assert_eq!(Verdict::of(&neg, neg.p), Verdict::Improves);
        let one = Estimate::of(&[5.0]);
        assert_eq!(Verdict::of(&one, 0.0), Verdict::NoClearChange);
        assert_eq!(Verdict::of(&e, f64::NAN), Verdict::NoClearChange);
    }
}

//! The order-1 bridge: a unigram model's measured risk against the paper's categorical recurrence fed each
//! repetition's realised token counts ([`theory::counted_risk`]).
//!
//! A unigram model is the categorical MLE of the token distribution, and a document it writes is a run of
//! independent draws from it, so its synthetic tokens are exactly the theory's synthetic samples. Real
//! tokens are not independent draws (they come in documents), which scales the variance of the fresh part by
//! a design effect: it is estimated from round 0 alone (mean measured risk over c / real tokens), so rounds
//! 1 on are predictions. Each repetition's relative departure (measured − recurrence) / recurrence is tested
//! against 0, Holm over every (chain, round ≥ 1).

use std::collections::BTreeMap;

use experiment::config::Config;
use experiment::MetricsRow;
use theory::{counted_risk, RealDraws, RoundCounts};

use crate::charts::Series;
use crate::stats::{holm, Estimate, ALPHA};
use crate::tables::{p_text, value, Layout};

/// The grey, dotted style of the recurrence's lines.
const RECURRENCE: usize = 8;

pub(crate) struct Bridge {
    pub(crate) markdown: String,
    /// Per chain: the measured mean risk with its 95% band, and the recurrence (no band).
    pub(crate) risk: Vec<Series>,
    /// Per chain: the relative departure from the recurrence, mean and 95% band, in percent.
    pub(crate) departure: Vec<Series>,
}

/// The bridge, where the rows carry what it needs (an order-1 n-gram's risk, c and realised counts) and no
/// curation chose the documents (a filter's choice is not a random draw).
pub(crate) fn bridge(cfg: &Config, layout: &Layout, rows: &[MetricsRow]) -> Option<Bridge> {
    let c = rows.iter().find_map(|r| r.categorical_c)?;
    if rows.iter().any(|r| r.curation.is_some())
        || rows
            .iter()
            .any(|r| r.model_risk.is_none() || r.real_tokens.is_none() || r.corpus_tokens.is_none())
    {
        return None;
    }
    // Fresh documents come from the corpus less the held-out plots, each at most once.
    let pool = rows
        .iter()
        .find_map(|r| Some(r.corpus_tokens?.checked_sub(r.heldout_tokens + 1)? as f64))?;
    // chain -> repetition -> round -> row
    let mut by: BTreeMap<&str, BTreeMap<usize, BTreeMap<usize, &MetricsRow>>> = BTreeMap::new();
    for r in rows {
        by.entry(&r.setting)
            .or_default()
            .entry(r.repetition)
            .or_default()
            .insert(r.round, r);
    }
    // Round 0 is shared by a repetition's chains: one value per repetition.
    let mut round0: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.round == 0) {
        let a = r.real_tokens? as f64;
        round0.insert(r.repetition, (r.model_risk?, c * (1.0 / a - 1.0 / pool)));
    }
    let n0 = round0.len() as f64;
    let design = round0.values().map(|v| v.0).sum::<f64>()
        / n0
        / (round0.values().map(|v| v.1).sum::<f64>() / n0);
    let draws = RealDraws { design, pool };

    struct Cell {
        chain: String,
        round: usize,
        measured: Estimate,
        recurrence: f64,
        independent: f64,
        departure: Estimate,
    }
    let mut cells = Vec::new();
    for chain in &layout.chains {
        let accumulate = cfg.setting(chain).ok()?.schedule.accumulate;
        let Some(reps) = by.get(chain.as_str()) else {
            continue;
        };
        // round -> per repetition (measured, recurrence, recurrence with independent real tokens)
        let mut at: BTreeMap<usize, Vec<(f64, f64, f64)>> = BTreeMap::new();
        for rounds in reps.values() {
            let mut counts = Vec::new();
            let mut prev: Option<&MetricsRow> = None;
            for (&t, r) in rounds {
                if t != counts.len() {
                    break; // a gap: the recurrence needs every round before
                }
                let real = r.real_tokens? as f64;
                let (carried, carried_real) = match prev {
                    Some(p) if accumulate => (p.train_tokens as f64, p.real_tokens? as f64),
                    _ => (0.0, 0.0),
                };
                counts.push(RoundCounts {
                    carried,
                    real: real - carried_real,
                    synthetic: r.train_tokens as f64 - carried - (real - carried_real),
                });
                prev = Some(r);
            }
            let predicted = counted_risk(&counts, c, draws).ok()?;
            let independent = counted_risk(&counts, c, RealDraws::INDEPENDENT).ok()?;
            for (t, r) in rounds.values().take(counts.len()).enumerate() {
                at.entry(t)
                    .or_default()
                    .push((r.model_risk?, predicted[t], independent[t]));
            }
        }
        for (round, v) in at.into_iter().filter(|(t, _)| *t > 0) {
            let mean =
                |f: fn(&(f64, f64, f64)) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
            cells.push(Cell {
                chain: chain.clone(),
                round,
                measured: Estimate::of(&v.iter().map(|x| x.0).collect::<Vec<_>>()),
                recurrence: mean(|x| x.1),
                independent: mean(|x| x.2),
                departure: Estimate::of(
                    &v.iter()
                        .map(|x| 100.0 * (x.0 - x.1) / x.1)
                        .collect::<Vec<_>>(),
                ),
            });
        }
    }
    if cells.is_empty() {
        return None;
    }
    let adj = holm(&cells.iter().map(|c| c.departure.p).collect::<Vec<_>>());
    let departs = adj.iter().filter(|p| **p < ALPHA).count();
    let mut md = format!(
        "### The order-1 bridge: measured risk against the categorical recurrence\n\n\
         A unigram model is the categorical MLE, and its documents are runs of independent draws from it, so \
         the paper's recurrence applies with samples counted in tokens. Each repetition's recurrence is fed its \
         realised counts (tokens carried from D_t-1, fresh real, synthetic; `theory::counted_risk`), with \
         c = 1 - ‖q‖² = {c:.6} of the whole corpus's token distribution q. Fresh plots are drawn without \
         replacement from a pool of {pool:.0} tokens (the corpus less the held-out plots), never twice, and \
         real tokens come in documents, not as independent draws: the variance of the fresh part, \
         design c (1/a - 1/pool) for a tokens, has a design effect of {design:.3}, estimated from round 0 \
         alone (mean risk over mean c (1/a - 1/pool), {} repetitions), so every later round is a prediction. \
         The column \"independent\" is the recurrence for independent real tokens (design 1, no pool). \
         Departure: each repetition's (measured - recurrence) / recurrence, 95% t interval, p of a paired \
         t-test against 0, Holm over the {} cells; {departs} depart{} at {ALPHA}.\n\n\
         | chain | round | repetitions | measured risk [95% CI] | recurrence | independent | departure, % [95% CI] | p | p (Holm) | verdict |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        round0.len(),
        cells.len(),
        if departs == 1 { "s" } else { "" },
    );
    for (cell, p_adj) in cells.iter().zip(&adj) {
        let m = &cell.measured;
        let d = &cell.departure;
        md.push_str(&format!(
            "| {} | {} | {} | {} [{}, {}] | {} | {} | {:+.1} [{:+.1}, {:+.1}] | {} | {} | {} |\n",
            cell.chain,
            cell.round,
            m.n,
            value(m.mean),
            value(m.lo),
            value(m.hi),
            value(cell.recurrence),
            value(cell.independent),
            d.mean,
            d.lo,
            d.hi,
            p_text(d.p),
            p_text(*p_adj),
            if p_adj.is_nan() {
                "-"
            } else if *p_adj < ALPHA {
                "departs"
            } else {
                "agrees"
            }
        ));
    }
    md.push('\n');

    // Per chain, a series of one statistic of its cells; the recurrences after the measured series, in
    // grey, so each chain's colour stays its measurement.
    let series = |name: &str, style: usize, of: &dyn Fn(&Cell) -> (f64, f64, f64)| {
        let points: Vec<_> = cells
            .iter()
            .filter(|c| c.chain == name)
            .map(|c| {
                let (m, lo, hi) = of(c);
                (c.round as f64, m, lo, hi)
            })
            .collect();
        (!points.is_empty()).then(|| Series {
            name: name.to_string(),
            style,
            points,
        })
    };
    let chains = layout.chains.iter().enumerate();
    let measured = |c: &Cell| (c.measured.mean, c.measured.lo, c.measured.hi);
    let departed = |c: &Cell| (c.departure.mean, c.departure.lo, c.departure.hi);
    let recurrence = |c: &Cell| (c.recurrence, c.recurrence, c.recurrence);
    let mut risk: Vec<Series> = chains
        .clone()
        .filter_map(|(i, ch)| series(ch, i, &measured))
        .collect();
    let departure: Vec<Series> = chains
        .filter_map(|(i, ch)| series(ch, i, &departed))
        .collect();
    for (n, mut s) in layout
        .chains
        .iter()
        .filter_map(|ch| series(ch, RECURRENCE, &recurrence))
        .enumerate()
    {
        // One legend entry for all of them.
        s.name = if n == 0 {
            "recurrence".into()
        } else {
            String::new()
        };
        risk.push(s);
    }
    Some(Bridge {
        markdown: md,
        risk,
        departure,
    })
}

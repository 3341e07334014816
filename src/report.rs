//! `collapse-lab report`: what a run shows, with the statistics a reviewer asks for.
//!
//! - The primary scale is held-out mean NLL per token (nats): a repetition's perplexity ratio x_t / x_0 is
//!   exp of its NLL difference, so differences of NLL are what is averaged and tested, and shown also as the
//!   perplexity ratio exp(d). Absolute perplexity stays as a descriptive table.
//! - Paired: round 0 is shared by every setting of a repetition, so each repetition's change against its own
//!   round 0, and each difference between two chains in the same repetition, is the unit of comparison.
//!   Every join is keyed by (chain, repetition, round), and a comparison uses the repetitions present at
//!   both of its ends, with their count.
//! - Every comparison table has p-values and verdicts adjusted by Holm within a stated family; intervals are
//!   95% Student-t with exact quantiles for every df.
//! - Plots on a log axis (or linear by choice), every series with its own marker and dash, and a second panel
//!   without the chains whose perplexity doubles, so the others can be told apart; the tails (per-document
//!   perplexity quantiles), length-robust text statistics, the held-out loss during training when recorded,
//!   and the config's pre-registered endpoints (`[report]`).
//!
//! Writes `metrics.csv` and `report/` (PNG + SVG plots, `summary.md`, `paired.csv`, `report.html`). Works on a
//! partly finished run, flagging the chains that are not finished; and on a published `metrics.csv` with its
//! config (`--metrics`), for re-analysing committed results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters_backend::{BackendCoord, DrawingErrorKind};

use corpus::CurationCounts;

use experiment::config::{candidate_counts, Config, FilterSpec, Truncation};
use experiment::{
    collect_metrics, frozen_config, phase_dir, read_json, refresh_generation_stats, write_atomic,
    CurationMetrics, MetricsRow, TrainRecord,
};

use crate::stats::{fieller, holm, Estimate, ALPHA};

/// How the report draws.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Perplexity on a linear axis instead of a log one.
    pub linear: bool,
}

/// A metric of each finished round: chain -> round -> repetition -> value. Keyed by name, so rows written
/// under other setting numbers (a run resumed by a newer binary) still join.
type Table = BTreeMap<String, BTreeMap<usize, BTreeMap<usize, f64>>>;

fn table(rows: &[MetricsRow], metric: impl Fn(&MetricsRow) -> Option<f64>) -> Table {
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
fn nll(r: &MetricsRow) -> Option<f64> {
    Some(r.heldout_perplexity.ln())
}

fn second_nll(r: &MetricsRow) -> Option<f64> {
    r.second_perplexity.map(f64::ln)
}

/// The values of `reps` present in both maps, paired: (a, b) per repetition, in repetition order.
fn pairs(a: &BTreeMap<usize, f64>, b: &BTreeMap<usize, f64>) -> Vec<(f64, f64)> {
    a.iter()
        .filter_map(|(rep, &x)| b.get(rep).map(|&y| (x, y)))
        .collect()
}

/// The paired change of a chain's metric at `round` against its round 0.
fn change(t: &Table, chain: &str, round: usize) -> Option<Estimate> {
    let rounds = t.get(chain)?;
    let d: Vec<f64> = pairs(rounds.get(&round)?, rounds.get(&0)?)
        .into_iter()
        .map(|(x, x0)| x - x0)
        .collect();
    (!d.is_empty()).then(|| Estimate::of(&d))
}

/// The paired difference a - b at `round`, over the repetitions that have both.
fn difference(t: &Table, (a, b): (&str, &str), round: usize) -> Option<Estimate> {
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

    fn against(self, b: &str) -> String {
        match self {
            Verdict::Worsens => format!("worse than {b}"),
            Verdict::Improves => format!("better than {b}"),
            Verdict::NoClearChange => "no clear difference".into(),
        }
    }
}

fn p_text(p: f64) -> String {
    if p.is_nan() {
        "-".into()
    } else if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// `+0.123 [+0.100, +0.146]` nats.
fn nats(e: &Estimate) -> String {
    if e.n < 2 {
        return format!("{:+.3} (1 repetition)", e.mean);
    }
    format!("{:+.3} [{:+.3}, {:+.3}]", e.mean, e.lo, e.hi)
}

/// The same interval as a perplexity ratio: `x1.131 [1.105, 1.157]`.
fn ratio(e: &Estimate) -> String {
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
struct Layout {
    chains: Vec<String>,
    rounds: usize,
    repetitions: usize,
}

impl Layout {
    fn new(cfg: &Config, rows: &[MetricsRow]) -> Self {
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
    fn final_round(&self) -> usize {
        self.rounds.saturating_sub(1)
    }

    /// The config's chains with repetitions that have not finished every round (or not started), each with
    /// the repetitions finished and the repetitions each round has.
    fn incomplete(&self, cfg: &Config, rows: &[MetricsRow]) -> Vec<String> {
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
fn curated_setting(chain: &str) -> Option<&str> {
    chain.split_once('+').map(|(b, _)| b)
}

/// Holm families of pairwise comparisons: the chains of one setting in a curated run, every chain otherwise.
fn comparison_groups(chains: &[String]) -> Vec<Vec<String>> {
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
struct Analysis {
    tables: String,
    /// Per chain and round: the paired change of mean NLL against round 0.
    changes: BTreeMap<String, BTreeMap<usize, Estimate>>,
    table: Table,
}

fn analyse(
    layout: &Layout,
    rows: &[MetricsRow],
    metric: fn(&MetricsRow) -> Option<f64>,
    label: &str,
) -> Analysis {
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
        "### {label}: change of mean NLL against each repetition's round 0\n\n\
         | chain | repetitions | round | round-0 perplexity | perplexity | change of mean NLL, nats [95% CI] | \
         perplexity ratio [95% CI] | p | p (Holm) | verdict |\n|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for ((c, round, e), p_adj) in ends.iter().zip(&adj) {
        let geo = |t0: usize| -> String {
            let reps = t.get(*c).and_then(|m| m.get(&t0));
            match reps {
                Some(v) if !v.is_empty() => {
                    format!("{:.2}", (v.values().sum::<f64>() / v.len() as f64).exp())
                }
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
        "\nFamily: {} (Holm). Perplexities are exp(mean NLL) over the repetitions of each round; a change is \
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
        "### {label}: chains compared at round {last}, paired within repetitions (mean NLL, a - b)\n\n\
         | a | b | repetitions | a - b, nats [95% CI] | perplexity ratio [95% CI] | p | p (Holm) | verdict for a |\n\
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

    // 3. Descriptive: absolute perplexity, unpaired.
    let ppl = table(rows, |r| metric(r).map(f64::exp));
    s.push_str(&format!(
        "### {label}: absolute perplexity (descriptive; mean ± 95% CI across repetitions)\n\n\
         | chain | repetitions | round-0 perplexity | round | perplexity | change of means, same repetitions |\n\
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
            "| {c} | {} | {:.2} ± {:.2} | {round} | {:.2} ± {:.2} | {:+.1}% over {} |\n",
            e0.n,
            e0.mean,
            e0.half_width(),
            el.mean,
            el.half_width(),
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
fn endpoints(cfg: &Config, t: &Table) -> String {
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
            "### Endpoint {}: the share of the doubling gain that synthetic data recovers, round {}\n\n\
             f = [L({base}) - L({mixed})] / [L({base}) - L({doubled})] on held-out mean NLL, paired within \
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
            "| gain of synthetic data, L({}) - L({}), nats | {} | {} |\n\
             | gain of doubling, L({}) - L({}), nats | {} | {} |\n\
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
            "### Endpoint {}: {} - {} by round (held-out mean NLL, paired)\n\n\
             | round | repetitions | a - b, nats [95% CI] | perplexity ratio [95% CI] | p | p (Holm) | verdict for {} |\n\
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

// ---------------------------------------------------------------------------------------------- charts

pub(crate) const COLORS: [RGBColor; 10] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

pub(crate) fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {e:?}")
}

/// One line of a chart: points (x, mean, low, high), drawn with the colour, marker and dash of `style`.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    style: usize,
    points: Vec<(f64, f64, f64, f64)>,
}

struct Axes {
    title: String,
    x_desc: String,
    y_desc: String,
    log_y: bool,
    zero_line: bool,
    /// Shift each series by a little along x, so lines that coincide stay visible side by side.
    dodge: bool,
}

impl Axes {
    /// Rounds along x (series dodged), a linear y.
    fn by_round(title: &str, y_desc: &str) -> Self {
        Self {
            title: title.into(),
            x_desc: "round".into(),
            y_desc: y_desc.into(),
            log_y: false,
            zero_line: false,
            dodge: true,
        }
    }

    /// Training steps along x.
    fn by_step(title: &str, y_desc: &str) -> Self {
        Self {
            x_desc: "training step".into(),
            dodge: false,
            ..Self::by_round(title, y_desc)
        }
    }

    fn log(self, on: bool) -> Self {
        Self { log_y: on, ..self }
    }

    fn with_zero(self) -> Self {
        Self {
            zero_line: true,
            ..self
        }
    }
}

/// A point's marker, of its own shape per style; in the legend (`line` > 0) across a short line of the
/// series' colour. An element of its own, drawn with the backend's primitives, so one type serves every
/// shape on the chart and in the legend.
struct Marker<C> {
    at: C,
    style: usize,
    color: RGBColor,
    line: i32,
}

impl<'a, C: 'a> PointCollection<'a, C> for &'a Marker<C> {
    type Point = &'a C;
    type IntoIter = std::iter::Once<&'a C>;
    fn point_iter(self) -> Self::IntoIter {
        std::iter::once(&self.at)
    }
}

impl<C, DB: DrawingBackend> Drawable<DB> for Marker<C> {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut pos: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> std::result::Result<(), DrawingErrorKind<DB::ErrorType>> {
        let Some((x, y)) = pos.next() else {
            return Ok(());
        };
        let fill = ShapeStyle::from(self.color).filled();
        let stroke = ShapeStyle::from(self.color).stroke_width(2);
        if self.line > 0 {
            backend.draw_line((x - self.line, y), (x + self.line, y), &stroke)?;
        }
        match self.style % 6 {
            0 => backend.draw_circle((x, y), 4, &fill, true),
            1 => backend.fill_polygon(vec![(x, y - 5), (x + 5, y + 4), (x - 5, y + 4)], &fill),
            2 => backend.draw_rect((x - 4, y - 4), (x + 4, y + 4), &fill, true),
            3 => {
                backend.draw_line((x - 4, y - 4), (x + 4, y + 4), &stroke)?;
                backend.draw_line((x - 4, y + 4), (x + 4, y - 4), &stroke)
            }
            4 => backend.fill_polygon(vec![(x, y - 5), (x + 5, y), (x, y + 5), (x - 5, y)], &fill),
            _ => backend.draw_circle((x, y), 5, &stroke, false),
        }
    }
}

/// A linear f64 axis labelled at chosen values (plotters' own picks land between whole rounds once the
/// series are dodged).
struct Ticked {
    inner: plotters::coord::types::RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: std::ops::Range<f64>, ticks: Vec<f64>) -> Self {
        Self {
            inner: range.into(),
            ticks,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, _: H) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// Labelled values for a log axis from `lo` to `hi`: powers of 10, then 1-2-5, then every digit, whichever
/// first gives at least four; on a range too narrow for any of them, evenly spaced round values.
pub(crate) fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let digits: [&[f64]; 3] = [
        &[1.0],
        &[1.0, 2.0, 5.0],
        &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    ];
    for mantissas in digits {
        let ticks: Vec<f64> = (d0..=d1)
            .flat_map(|d| mantissas.iter().map(move |m| m * 10f64.powi(d)))
            .filter(|v| (lo..=hi).contains(v))
            .collect();
        if ticks.len() >= 4 {
            return ticks;
        }
    }
    linear_ticks(lo, hi, 6)
}

/// About `want` round values (steps of 1, 2, 2.5 or 5 times a power of 10) from `lo` to `hi`.
fn linear_ticks(lo: f64, hi: f64, want: usize) -> Vec<f64> {
    let raw = (hi - lo) / want as f64;
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi {
        out.push(v);
        v += step;
    }
    out
}

fn draw_panel<'b>(
    area: &DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    series: &[Series],
    axes: &Axes,
    legend: bool,
) -> Result<()> {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let xmin = pts().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let xmax = pts().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let (xmin, xmax) = if xmin.is_finite() && xmax > xmin {
        (xmin, xmax)
    } else {
        (0.0, 1.0)
    };
    let pad_x = (xmax - xmin) * 0.04 + if axes.dodge { 0.2 } else { 0.0 };
    // Labels at whole rounds (not at the dodged positions), or at round values along training steps.
    let integer_x = pts().all(|p| p.0.fract() == 0.0) && xmax - xmin <= 40.0;
    let x_ticks = if integer_x {
        (xmin as i64..=xmax as i64).map(|x| x as f64).collect()
    } else {
        linear_ticks(xmin, xmax, 8)
    };
    let xr = Ticked::new((xmin - pad_x)..(xmax + pad_x), x_ticks);
    let mut lo = pts()
        .map(|p| p.2)
        .filter(|v| !axes.log_y || *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let mut hi = pts().map(|p| p.3).fold(f64::NEG_INFINITY, f64::max);
    if axes.zero_line {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    if !lo.is_finite() || !hi.is_finite() || hi <= lo {
        (lo, hi) = if axes.log_y {
            (lo.max(1e-3), lo.max(1e-3) * 10.0)
        } else {
            (lo.min(0.0), lo.min(0.0) + 1.0)
        };
    }
    let builder = |area| {
        let mut b = ChartBuilder::on(area);
        b.caption(&axes.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(38)
            .y_label_area_size(70);
        b
    };
    if axes.log_y {
        let (lo, hi) = (lo / 1.15, hi * 1.15);
        let chart = builder(area)
            .build_cartesian_2d(xr, (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)))
            .map_err(plot_err)?;
        fill(chart, series, axes, legend, lo)
    } else {
        let pad = ((hi - lo) * 0.08).max(1e-6);
        let (lo, hi) = (lo - pad, hi + pad);
        let chart = builder(area)
            .build_cartesian_2d(xr, Ticked::new(lo..hi, linear_ticks(lo, hi, 8)))
            .map_err(plot_err)?;
        fill(chart, series, axes, legend, f64::NEG_INFINITY)
    }
}

fn fill<'b, X, Y>(
    mut chart: ChartContext<'b, SVGBackend<'b>, Cartesian2d<X, Y>>,
    series: &[Series],
    axes: &Axes,
    legend: bool,
    floor: f64,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(&axes.x_desc)
        .y_desc(&axes.y_desc)
        .light_line_style(WHITE)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if y.abs() >= 100.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.3}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_string()
            }
        })
        .draw()
        .map_err(plot_err)?;
    let (x0, x1) = {
        let r = chart.x_range();
        (r.start, r.end)
    };
    if axes.zero_line {
        chart
            .draw_series(LineSeries::new(
                [(x0, 0.0), (x1, 0.0)],
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(plot_err)?;
    }
    let k = series.len().max(1) as f64;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[s.style % COLORS.len()];
        let shift = if axes.dodge {
            (i as f64 - (k - 1.0) / 2.0) * 0.06
        } else {
            0.0
        };
        let p: Vec<(f64, f64, f64, f64)> = s
            .points
            .iter()
            .map(|&(x, m, l, h)| (x + shift, m.max(floor), l.max(floor), h.max(floor)))
            .collect();
        let band: Vec<(f64, f64)> = p
            .iter()
            .map(|q| (q.0, q.3))
            .chain(p.iter().rev().map(|q| (q.0, q.2)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, color.mix(0.10))))
            .map_err(plot_err)?;
        // Error bars, so a band hidden under another's still shows where it ends.
        chart
            .draw_series(p.iter().map(|q| {
                PathElement::new(vec![(q.0, q.2), (q.0, q.3)], color.mix(0.6).stroke_width(1))
            }))
            .map_err(plot_err)?;
        let line: Vec<(f64, f64)> = p.iter().map(|q| (q.0, q.1)).collect();
        let stroke = color.stroke_width(2);
        let dash = s.style / COLORS.len() + s.style % 3;
        let drawn = match dash {
            0 => chart.draw_series(LineSeries::new(line, stroke)),
            1 => chart.draw_series(DashedLineSeries::new(line, 10, 5, stroke)),
            _ => chart.draw_series(DashedLineSeries::new(line, 3, 4, stroke)),
        }
        .map_err(plot_err)?;
        if legend {
            let style = s.style;
            drawn.label(s.name.clone()).legend(move |(x, y)| Marker {
                at: (x + 11, y),
                style,
                color,
                line: 11,
            });
        }
        chart
            .draw_series(p.iter().map(|q| Marker {
                at: (q.0, q.1),
                style: s.style,
                color,
                line: 0,
            }))
            .map_err(plot_err)?;
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

/// A figure of panels stacked (or in a grid of `cols` columns), each with its own axes; `size` is one row's.
fn figure(panels: &[(Vec<Series>, Axes)], cols: usize, size: (u32, u32)) -> Result<String> {
    let mut svg = String::new();
    {
        let rows = panels.len().div_ceil(cols).max(1);
        let root =
            SVGBackend::with_string(&mut svg, (size.0, size.1 * rows as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        // Small multiples share one legend, on the first panel.
        for (i, (area, (series, axes))) in root
            .split_evenly((rows, cols))
            .iter()
            .zip(panels)
            .enumerate()
        {
            draw_panel(area, series, axes, cols == 1 || i == 0)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// A plot of plain curves (x, y) without bands, to `PATH.svg` and `PATH.png`.
pub(crate) fn curve_plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    curves: &[(String, Vec<(u64, f64)>)],
) -> Result<()> {
    let series: Vec<Series> = curves
        .iter()
        .enumerate()
        .map(|(i, (name, pts))| Series {
            name: name.clone(),
            style: i,
            points: pts.iter().map(|&(x, y)| (x as f64, y, y, y)).collect(),
        })
        .collect();
    let axes = Axes {
        x_desc: x_desc.into(),
        ..Axes::by_step(title, y_desc)
    };
    let svg = figure(&[(series, axes)], 1, (960, 540))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plot".into());
    write_plot(dir, &name, &svg)
}

/// Rasterises the SVG with resvg and an embedded DejaVu Sans, so the PNG's text renders the same on machines
/// without system fonts.
pub(crate) fn svg_to_png(svg: &str, path: &Path) -> Result<()> {
    let mut opt = resvg::usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_font_data(dejavu::sans::regular().to_vec());
    db.set_sans_serif_family("DejaVu Sans");
    opt.font_family = "DejaVu Sans".into();
    let tree = resvg::usvg::Tree::from_str(svg, &opt).context("the plot's SVG does not parse")?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("empty plot")?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    let png = pixmap.encode_png().context("cannot encode the PNG")?;
    write_atomic(path, &png)
}

fn write_plot(dir: &Path, name: &str, svg: &str) -> Result<()> {
    write_atomic(&dir.join(format!("{name}.svg")), svg.as_bytes())?;
    svg_to_png(svg, &dir.join(format!("{name}.png")))
}

/// The chains whose mean perplexity more than doubles against round 0 at some round: they set the first
/// panel's axis, and the second panel leaves them out.
fn runaway(changes: &BTreeMap<String, BTreeMap<usize, Estimate>>) -> Vec<String> {
    changes
        .iter()
        .filter(|(_, m)| m.values().any(|e| e.mean > std::f64::consts::LN_2))
        .map(|(c, _)| c.clone())
        .collect()
}

/// One series per chain of the layout (its style is its position, so a chain looks the same in every
/// figure), with the points `points` gives it; chains it gives none are left out.
fn chain_series(
    layout: &Layout,
    points: impl Fn(&str) -> Option<Vec<(f64, f64, f64, f64)>>,
) -> Vec<Series> {
    layout
        .chains
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            Some(Series {
                name: c.clone(),
                style: i,
                points: points(c)?,
            })
        })
        .collect()
}

/// A table's mean by round with its t-band across repetitions, mapped by `f` (exp for perplexity).
fn table_points(t: &Table, chain: &str, f: fn(f64) -> f64) -> Option<Vec<(f64, f64, f64, f64)>> {
    Some(
        t.get(chain)?
            .iter()
            .map(|(&r, reps)| {
                let e = Estimate::of(&reps.values().copied().collect::<Vec<_>>());
                (r as f64, f(e.mean), f(e.lo), f(e.hi))
            })
            .collect(),
    )
}

/// Per chain, exp of the mean NLL by round with the exp of its t-band (the geometric mean perplexity).
fn perplexity_series(layout: &Layout, t: &Table) -> Vec<Series> {
    chain_series(layout, |c| table_points(t, c, f64::exp))
}

fn change_series(
    layout: &Layout,
    changes: &BTreeMap<String, BTreeMap<usize, Estimate>>,
) -> Vec<Series> {
    chain_series(layout, |c| {
        Some(
            changes
                .get(c)?
                .iter()
                .map(|(&r, e)| (r as f64, e.mean, e.lo, e.hi))
                .collect(),
        )
    })
}

/// The curve of a metric by round per chain: mean with its t-band across repetitions.
fn metric_series(
    layout: &Layout,
    rows: &[MetricsRow],
    metric: impl Fn(&MetricsRow) -> Option<f64>,
) -> Vec<Series> {
    let t = table(rows, metric);
    chain_series(layout, |c| table_points(&t, c, |x| x))
}

/// Two panels: all series, and (when some chains run away and others remain) the rest alone.
fn with_zoom(
    all: Vec<Series>,
    away: &[String],
    axes: impl Fn(&str) -> Axes,
    titles: (&str, &str),
) -> Vec<(Vec<Series>, Axes)> {
    let rest: Vec<Series> = all
        .iter()
        .filter(|s| !away.contains(&s.name))
        .cloned()
        .collect();
    let mut panels = Vec::new();
    let zoom = !rest.is_empty() && rest.len() < all.len();
    panels.push((all, axes(titles.0)));
    if zoom {
        panels.push((rest, axes(titles.1)));
    }
    panels
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;")
}

pub(crate) fn html_table(md: &str) -> String {
    let mut out = String::from("<table>\n");
    for (i, line) in md.lines().enumerate().filter(|(i, _)| *i != 1) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let tag = if i == 0 { "th" } else { "td" };
        out.push_str("<tr>");
        for c in cells {
            out.push_str(&format!("<{tag}>{}</{tag}>", html_escape(c)));
        }
        out.push_str("</tr>\n");
    }
    out + "</table>\n"
}

/// Markdown sections (`### title`, tables, paragraphs) as HTML.
fn html_sections(md: &str) -> String {
    let mut body = String::new();
    for section in md.split("\n### ").skip(1) {
        let (title, rest) = section.split_once("\n\n").unwrap_or((section, ""));
        body.push_str(&format!("<h2>{}</h2>\n", html_escape(title)));
        let mut table = String::new();
        for line in rest.lines() {
            if line.starts_with('|') {
                table.push_str(line);
                table.push('\n');
                continue;
            }
            if !table.is_empty() {
                body.push_str(&html_table(table.trim()));
                table.clear();
            }
            if !line.trim().is_empty() {
                body.push_str(&format!("<p>{}</p>\n", html_escape(line)));
            }
        }
        if !table.is_empty() {
            body.push_str(&html_table(table.trim()));
        }
    }
    body
}

// -------------------------------------------------------------------------------------------- curation

/// Per curated chain, over rounds 1 on and all repetitions: candidates per round, the realised fresh fraction
/// of the kept documents beside the one expected (the schedule's alpha, or for the oracle appendix D's alpha'
/// from the theory crate), the filter's pooled type I and type II rates, the verifier's perplexity, and what
/// the chain trained on (tokens and document length: a filter that keeps longer documents trains on more
/// tokens at fixed steps).
fn curation_table(cfg: &Config, layout: &Layout, rows: &[MetricsRow]) -> String {
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
fn curation_csv(rows: &[MetricsRow]) -> Result<Vec<u8>> {
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
    w.into_inner().context("csv")
}

/// Reads back a `curation.csv` into the rows' `curation` fields (for re-analysing published results).
fn join_curation_csv(path: &Path, rows: &mut [MetricsRow]) -> Result<()> {
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
    let mut rd =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut by = BTreeMap::new();
    for l in rd.deserialize::<Line>() {
        let l = l.with_context(|| format!("{} is not a curation.csv", path.display()))?;
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

// ------------------------------------------------------------------------------------ per-round extras

/// The share of a round's draws cut at the cap, where it is more than a few percent: a warning, since a cut
/// document either teaches a false end (`finished`), or is not a whole plot (`open`).
fn truncation_warnings(cfg: &Config, rows: &[MetricsRow]) -> String {
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
fn tails_table(layout: &Layout, rows: &[MetricsRow]) -> String {
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

/// The held-out loss during training, read from each round's train.json (recorded with
/// `training.eval_every`): round 0's curve, and the last round's per chain; mean over repetitions at each
/// step. Empty without curves.
fn training_curves(
    root: &Path,
    cfg: &Config,
    layout: &Layout,
) -> Result<Vec<(Vec<Series>, String)>> {
    let mut panels = Vec::new();
    let last = layout.final_round();
    for round in [0, last] {
        let mut series = Vec::new();
        for (i, c) in layout.chains.iter().enumerate() {
            let Ok(spec) = cfg.setting(c) else {
                continue;
            };
            let Ok(plan) = spec.schedule.plan(cfg.schedule.rounds, usize::MAX) else {
                continue;
            };
            let n0 = plan.rounds[0].new_docs;
            let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
            for rep in 0..cfg.experiment.repetitions {
                let p = phase_dir(root, c, n0, rep, round).join("train.json");
                if !p.exists() {
                    continue;
                }
                let rec: TrainRecord = read_json(&p)?;
                for (step, v) in rec.heldout {
                    by_step.entry(step).or_default().push(v);
                }
            }
            if by_step.is_empty() {
                continue;
            }
            let points = by_step
                .iter()
                .map(|(&step, v)| {
                    let e = Estimate::of(v);
                    (step as f64, e.mean, e.lo, e.hi)
                })
                .collect();
            series.push(Series {
                name: c.clone(),
                style: i,
                points,
            });
            if round == 0 {
                // Round 0 is shared: one curve says it all.
                break;
            }
        }
        if !series.is_empty() {
            panels.push((series, format!("round {round}")));
        }
        if last == 0 {
            break;
        }
    }
    Ok(panels)
}

/// Every chain and round with its repetitions, perplexity and paired change, joined by (chain, round), and
/// p-values adjusted over every (chain, round >= 1) of the evaluation set.
fn paired_csv(sets: &[(&str, &Analysis)]) -> Result<Vec<u8>> {
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
    w.into_inner().context("csv")
}

/// Where the report comes from: a run directory, or a published metrics.csv with its config.
pub enum Input {
    RunDir(PathBuf),
    Published {
        metrics: PathBuf,
        config: PathBuf,
        curation: Option<PathBuf>,
        out: PathBuf,
    },
}

/// Writes the report; returns the directory holding `report.html`.
pub fn report(input: &Input, opts: Options) -> Result<PathBuf> {
    let (cfg, mut rows, dir, root, name) = match input {
        Input::RunDir(root) => {
            let cfg = frozen_config(root)?;
            let mut rows = collect_metrics(root)?;
            for r in &mut rows {
                refresh_generation_stats(root, &cfg, r)?;
            }
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            (cfg, rows, root.join("report"), Some(root.clone()), name)
        }
        Input::Published {
            metrics,
            config,
            curation: _,
            out,
        } => {
            let cfg = Config::load(config)?;
            let mut rd = csv::Reader::from_path(metrics)
                .with_context(|| format!("cannot read {}", metrics.display()))?;
            let rows: Vec<MetricsRow> = rd
                .deserialize()
                .collect::<std::result::Result<_, _>>()
                .with_context(|| {
                    format!("{} is not a collapse-lab metrics.csv", metrics.display())
                })?;
            let name = out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            (cfg, rows, out.clone(), None, name)
        }
    };
    if let Input::Published {
        curation: Some(c), ..
    } = input
    {
        join_curation_csv(c, &mut rows)?;
    }
    if rows.is_empty() {
        match &root {
            Some(r) => bail!(
                "{} has no finished round yet: run `collapse-lab run` first (or wait for its first round)",
                r.display()
            ),
            None => bail!("the metrics file holds no row"),
        }
    }
    rows.sort_by(|a, b| {
        (a.setting_number, a.repetition, a.round).cmp(&(b.setting_number, b.repetition, b.round))
    });
    let layout = Layout::new(&cfg, &rows);
    if let Some(root) = &root {
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in &rows {
            // The curation columns go to curation.csv: in metrics.csv every row has the same columns.
            let mut r = r.clone();
            r.curation = None;
            w.serialize(&r)?;
        }
        write_atomic(&root.join("metrics.csv"), &w.into_inner().context("csv")?)?;
    }
    let curated = rows.iter().any(|r| r.curation.is_some());
    if curated {
        if let Some(root) = &root {
            write_atomic(&root.join("curation.csv"), &curation_csv(&rows)?)?;
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let heldout = analyse(&layout, &rows, nll, "Held-out plots");
    let second = rows
        .iter()
        .any(|r| r.second_perplexity.is_some())
        .then(|| analyse(&layout, &rows, second_nll, "Second evaluation set"));
    let size = (960, 540);
    let away = runaway(&heldout.changes);
    let mut figures: Vec<(String, &str)> = Vec::new();
    let away_note = match away.len() {
        1 => format!("without {} (its perplexity more than doubles)", away[0]),
        n => format!("without the {n} chains whose perplexity more than doubles"),
    };
    let ppl_axes = |title: &str| {
        let y = if opts.linear {
            "held-out perplexity"
        } else {
            "held-out perplexity (log scale)"
        };
        Axes::by_round(title, y).log(!opts.linear)
    };
    let zoom_title = format!("The same, {away_note}");
    let panels = with_zoom(
        perplexity_series(&layout, &heldout.table),
        &away,
        ppl_axes,
        (
            "Held-out perplexity by round: exp(mean NLL), 95% CI",
            &zoom_title,
        ),
    );
    write_plot(&dir, "perplexity", &figure(&panels, 1, size)?)?;
    figures.push(("perplexity".into(), "held-out perplexity by round"));
    let change_axes = |title: &str| Axes::by_round(title, "change of mean NLL (nats)").with_zero();
    let panels = with_zoom(
        change_series(&layout, &heldout.changes),
        &away,
        change_axes,
        (
            "Change against the same repetition's round 0 (paired, 95% CI)",
            &zoom_title,
        ),
    );
    write_plot(&dir, "change", &figure(&panels, 1, size)?)?;
    figures.push((
        "change".into(),
        "paired change of held-out mean NLL against round 0",
    ));
    if let Some(s) = &second {
        let panels = with_zoom(
            change_series(&layout, &s.changes),
            &runaway(&s.changes),
            change_axes,
            (
                "Second evaluation set: change against round 0 (paired, 95% CI)",
                "The same, without the chains whose perplexity more than doubles",
            ),
        );
        write_plot(&dir, "second-change", &figure(&panels, 1, size)?)?;
        figures.push((
            "second-change".into(),
            "paired change on the second evaluation set",
        ));
    }
    // Text statistics: the length-robust ones where the rows have them.
    let robust = rows.iter().any(|r| r.gen_mtld.is_some());
    let stats_docs = rows.iter().map(|r| r.stats_docs).max().unwrap_or(0);
    let stats_words = rows.iter().map(|r| r.stats_words).max().unwrap_or(0);
    let text_axes = |title: &str| Axes::by_round(title, "");
    let text_title_1 = format!("distinct-1 over the first {stats_words} words");
    let text_title_2 = format!("distinct-2 over the first {stats_words} words");
    let text_panels: Vec<(Vec<Series>, Axes)> = if robust {
        vec![
            (
                metric_series(&layout, &rows, |r| Some(r.gen_mean_words)),
                text_axes("mean words per plot"),
            ),
            (
                metric_series(&layout, &rows, |r| r.gen_mtld),
                text_axes("MTLD (lexical diversity)"),
            ),
            (
                metric_series(&layout, &rows, |r| r.gen_distinct_1_words),
                text_axes(&text_title_1),
            ),
            (
                metric_series(&layout, &rows, |r| r.gen_distinct_2_words),
                text_axes(&text_title_2),
            ),
        ]
    } else {
        vec![
            (
                metric_series(&layout, &rows, |r| Some(r.gen_mean_words)),
                text_axes("mean words per plot"),
            ),
            (
                metric_series(&layout, &rows, |r| Some(r.gen_distinct_1)),
                text_axes("distinct-1 of a document set (length-confounded)"),
            ),
            (
                metric_series(&layout, &rows, |r| Some(r.gen_distinct_2)),
                text_axes("distinct-2 of a document set (length-confounded)"),
            ),
            (
                metric_series(&layout, &rows, |r| Some(r.gen_unigram_entropy)),
                text_axes("unigram entropy (bits)"),
            ),
        ]
    };
    write_plot(&dir, "text-stats", &figure(&text_panels, 2, (1100, 420))?)?;
    figures.push((
        "text-stats".into(),
        "text statistics of the generated plots",
    ));
    if rows.iter().any(|r| r.gen_round0_ppl_q50.is_some()) {
        let band = |lo: fn(&MetricsRow) -> Option<f64>,
                    mid: fn(&MetricsRow) -> Option<f64>,
                    hi: fn(&MetricsRow) -> Option<f64>| {
            let (l, m, h) = (table(&rows, lo), table(&rows, mid), table(&rows, hi));
            let mean = |t: &Table, c: &str, r: usize| {
                t.get(c)
                    .and_then(|x| x.get(&r))
                    .map(|v| v.values().sum::<f64>() / v.len() as f64)
            };
            chain_series(&layout, |c| {
                Some(
                    m.get(c)?
                        .keys()
                        .filter_map(|&r| {
                            Some((r as f64, mean(&m, c, r)?, mean(&l, c, r)?, mean(&h, c, r)?))
                        })
                        .collect(),
                )
            })
        };
        let axes =
            |title: &str| Axes::by_round(title, "per-document perplexity (log scale)").log(true);
        let panels = vec![
            (
                band(
                    |r| r.gen_round0_ppl_q05,
                    |r| r.gen_round0_ppl_q50,
                    |r| r.gen_round0_ppl_q95,
                ),
                axes("Generated plots under the round-0 model: median, 5-95% of documents"),
            ),
            (
                band(
                    |r| r.heldout_doc_ppl_q05,
                    |r| r.heldout_doc_ppl_q50,
                    |r| r.heldout_doc_ppl_q95,
                ),
                axes("Held-out plots under each round's model: median, 5-95% of documents"),
            ),
        ];
        write_plot(&dir, "tails", &figure(&panels, 1, size)?)?;
        figures.push(("tails".into(), "per-document perplexity quantiles"));
    }
    if let Some(root) = &root {
        let curves = training_curves(root, &cfg, &layout)?;
        if !curves.is_empty() {
            let axes = |title: &str| Axes::by_step(title, "held-out mean NLL (nats)");
            let titles: Vec<String> = curves
                .iter()
                .map(|(_, r)| format!("Held-out loss during training, {r} (mean, 95% CI)"))
                .collect();
            let panels: Vec<(Vec<Series>, Axes)> = curves
                .into_iter()
                .zip(&titles)
                .map(|((s, _), t)| (s, axes(t)))
                .collect();
            write_plot(&dir, "heldout-training", &figure(&panels, 1, size)?)?;
            figures.push(("heldout-training".into(), "held-out loss during training"));
        }
    }

    let mut sets = vec![("heldout", &heldout)];
    if let Some(s) = &second {
        sets.push(("second", s));
    }
    write_atomic(&dir.join("paired.csv"), &paired_csv(&sets)?)?;
    let incomplete = layout.incomplete(&cfg, &rows);
    let text_note = if robust {
        format!(
            "Text statistics: mean words and MTLD of the first {stats_docs} documents each round generated, \
             distinct-1/2 over the first {stats_words} words of its documents (distinct-n over a fixed number of \
             documents rises when plots shrink)."
        )
    } else {
        format!(
            "Text statistics are of the first {stats_docs} documents each round generated; these rows predate the \
             length-robust statistics, so distinct-n here rises when plots shrink."
        )
    };
    let notes = format!(
        "The scale of every comparison is held-out mean NLL per token (nats); a difference d is a perplexity \
         ratio exp(d). Intervals are 95% Student-t intervals across repetitions (exact quantiles); p-values are \
         two-sided paired t-tests, and verdicts (worsens / improves / better / worse) need a Holm-adjusted \
         p below {ALPHA} within the family stated under each table. {text_note}\n"
    );
    let mut md = format!("## {name}\n\n{notes}\n");
    if !incomplete.is_empty() {
        md.push_str(&format!(
            "### Incomplete chains\n\nVerdicts use the repetitions present at both ends of each comparison.\n\n\
             | chain |\n|---|\n{}\n\n",
            incomplete.iter().map(|l| format!("| {l} |")).collect::<Vec<_>>().join("\n")
        ));
    }
    md.push_str(&truncation_warnings(&cfg, &rows));
    md.push_str(&endpoints(&cfg, &heldout.table));
    md.push_str(&heldout.tables);
    if let Some(s) = &second {
        md.push_str(&s.tables);
    }
    md.push_str(&tails_table(&layout, &rows));
    if curated {
        md.push_str(&curation_table(&cfg, &layout, &rows));
        // One change plot per setting, its filters side by side.
        let mut bases: Vec<&str> = Vec::new();
        for b in layout.chains.iter().filter_map(|n| curated_setting(n)) {
            if !bases.contains(&b) {
                bases.push(b);
            }
        }
        for b in bases {
            let mine: Vec<Series> = change_series(&layout, &heldout.changes)
                .into_iter()
                .filter(|s| curated_setting(&s.name) == Some(b))
                .collect();
            let name = format!("change-{b}");
            let title =
                format!("{b}: change of mean NLL against round 0 by filter (paired, 95% CI)");
            write_plot(
                &dir,
                &name,
                &figure(&[(mine, change_axes(&title))], 1, size)?,
            )?;
            figures.push((name, "paired change by curation filter"));
        }
    }
    write_atomic(&dir.join("summary.md"), md.as_bytes())?;

    let figs: String = figures
        .iter()
        .map(|(f, alt)| {
            format!("<figure><img src=\"{f}.svg\" alt=\"{alt}\" width=\"960\"></figure>\n")
        })
        .collect();
    let raw = if root.is_some() {
        "<a href=\"../metrics.csv\">metrics.csv</a>, <a href=\"paired.csv\">paired.csv</a>, \
         <a href=\"../metrics.jsonl\">metrics.jsonl</a>"
    } else {
        "<a href=\"metrics.csv\">metrics.csv</a>, <a href=\"paired.csv\">paired.csv</a>"
    };
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>collapse-lab report: {name}</title>\n<style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} table{{border-collapse:collapse;margin-bottom:1em}} \
         td,th{{border:1px solid #999;padding:4px 10px;text-align:right}} th{{background:#eee}}</style></head>\n<body>\n\
         <h1>Model collapse: {name}</h1>\n<p>{rounds_done} finished rounds (chain × repetition × round). {notes}</p>\n\
         {figs}{body}<p>Raw data: {raw}; plots as PNG beside the SVGs.</p>\n</body></html>\n",
        notes = html_escape(&notes),
        body = html_sections(&md),
        rounds_done = rows.len(),
    );
    write_atomic(&dir.join("report.html"), html.as_bytes())?;
    Ok(dir)
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

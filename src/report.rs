//! `collapse-lab report`: what a run shows, with the statistics a reviewer asks for.
//!
//! - Held-out perplexity against round, one line per setting: mean and 95% band across repetitions.
//! - Paired: round 0 is shared by every setting of a repetition, so each repetition's change against its own
//!   round 0 (and each difference between two settings in the same repetition) is the unit of comparison,
//!   with a paired-t interval, which removes the round-0 noise that dominates unpaired bands. A verdict per
//!   setting says whether the last round's interval excludes 0.
//! - The same for the second evaluation set when configured, and small multiples of the generated plots'
//!   text statistics, where collapse shows before perplexity moves.
//!
//! Writes `metrics.csv` and `report/` (PNG + SVG plots, `summary.md`, `paired.csv`, `report.html`). Works on a
//! partly finished run: it reports the rounds that are done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

use corpus::CurationCounts;

use crate::config::{Config, FilterSpec};
use crate::curation::CurationMetrics;
use crate::pipeline::{collect_metrics, refresh_generation_stats, MetricsRow};
use crate::rundir::{frozen_config, write_atomic};

/// Mean and 95% confidence interval of one setting at one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub round: usize,
    pub n: usize,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Two-sided 95% quantiles of Student's t for 1..=30 degrees of freedom.
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// Mean and half-width of the 95% Student-t interval (0 for a single value).
pub fn mean_ci(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let t = T95.get(n - 2).copied().unwrap_or(1.96);
    (mean, t * (var / n as f64).sqrt())
}

fn point(round: usize, xs: &[f64]) -> Point {
    let (mean, ci) = mean_ci(xs);
    Point {
        round,
        n: xs.len(),
        mean,
        lo: mean - ci,
        hi: mean + ci,
    }
}

/// What the interval of a change says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Worsens,
    NoClearChange,
    Improves,
}

impl Verdict {
    /// For perplexity, lower is better: an interval wholly above 0 worsens, wholly below improves, and one
    /// that contains 0 (touching it included), or comes from a single repetition, is no clear change.
    pub fn of(p: &Point) -> Self {
        if p.n >= 2 && p.lo > 0.0 {
            Verdict::Worsens
        } else if p.n >= 2 && p.hi < 0.0 {
            Verdict::Improves
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
}

/// One setting's curve: `(setting name, points by round)`.
pub type Curve = (String, Vec<Point>);

/// A metric of a row, per (setting number, name) -> round -> repetition.
type Table = BTreeMap<(usize, String), BTreeMap<usize, BTreeMap<usize, f64>>>;

fn table(rows: &[MetricsRow], metric: impl Fn(&MetricsRow) -> Option<f64>) -> Table {
    let mut by: Table = BTreeMap::new();
    for r in rows {
        if let Some(v) = metric(r) {
            by.entry((r.setting_number, r.setting.clone()))
                .or_default()
                .entry(r.round)
                .or_default()
                .insert(r.repetition, v);
        }
    }
    by
}

/// Per setting (in the settings' order), the mean of `metric` by round with its 95% band across repetitions.
pub fn curves(rows: &[MetricsRow], metric: impl Fn(&MetricsRow) -> Option<f64>) -> Vec<Curve> {
    table(rows, metric)
        .into_iter()
        .map(|((_, name), rounds)| {
            let pts = rounds
                .into_iter()
                .map(|(round, reps)| point(round, &reps.into_values().collect::<Vec<_>>()))
                .collect();
            (name, pts)
        })
        .collect()
}

/// Per setting, the paired relative change of `metric` against round 0, in percent: for each repetition
/// that has both rounds, 100 (x_t / x_0 - 1); mean and paired-t interval across repetitions.
pub fn paired_change(
    rows: &[MetricsRow],
    metric: impl Fn(&MetricsRow) -> Option<f64>,
) -> Vec<Curve> {
    table(rows, metric)
        .into_iter()
        .map(|((_, name), rounds)| {
            let base = rounds.get(&0).cloned().unwrap_or_default();
            let pts = rounds
                .iter()
                .filter_map(|(&round, reps)| {
                    let d: Vec<f64> = reps
                        .iter()
                        .filter_map(|(rep, &x)| base.get(rep).map(|&x0| 100.0 * (x / x0 - 1.0)))
                        .collect();
                    (!d.is_empty()).then(|| point(round, &d))
                })
                .collect();
            (name, pts)
        })
        .collect()
}

/// The paired difference `a - b` of `metric` at `round` over the repetitions that have both.
pub fn paired_difference(
    rows: &[MetricsRow],
    metric: impl Fn(&MetricsRow) -> Option<f64>,
    (a, b): (&str, &str),
    round: usize,
) -> Option<Point> {
    let t = table(rows, metric);
    let of = |name: &str| {
        t.iter()
            .find(|((_, n), _)| n == name)
            .and_then(|(_, rounds)| rounds.get(&round))
    };
    let (ra, rb) = (of(a)?, of(b)?);
    let d: Vec<f64> = ra
        .iter()
        .filter_map(|(rep, &x)| rb.get(rep).map(|&y| x - y))
        .collect();
    (!d.is_empty()).then(|| point(round, &d))
}

pub(crate) const COLORS: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

pub(crate) fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {e:?}")
}

/// Curves with bands on one chart; `zero_line` draws y = 0 (for changes).
fn draw_curves<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    curves: &[Curve],
    (title, y_desc): (&str, &str),
    zero_line: bool,
    legend: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let pts = curves.iter().flat_map(|(_, p)| p.iter());
    let xmax = pts.clone().map(|p| p.round).max().unwrap_or(1).max(1) as f64;
    let mut ymin = pts.clone().map(|p| p.lo).fold(f64::INFINITY, f64::min);
    let mut ymax = pts.map(|p| p.hi).fold(f64::NEG_INFINITY, f64::max);
    if zero_line {
        ymin = ymin.min(0.0);
        ymax = ymax.max(0.0);
    }
    if !ymin.is_finite() || !ymax.is_finite() {
        (ymin, ymax) = (0.0, 1.0);
    }
    let pad = ((ymax - ymin) * 0.08).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.2f64..xmax + 0.2, (ymin - pad)..(ymax + pad))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc(y_desc)
        .light_line_style(WHITE)
        .x_labels(xmax as usize + 1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(plot_err)?;
    if zero_line {
        chart
            .draw_series(LineSeries::new(
                [(-0.2, 0.0), (xmax + 0.2, 0.0)],
                BLACK.mix(0.5).stroke_width(1),
            ))
            .map_err(plot_err)?;
    }
    for (i, (name, p)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let band: Vec<(f64, f64)> = p
            .iter()
            .map(|q| (q.round as f64, q.hi))
            .chain(p.iter().rev().map(|q| (q.round as f64, q.lo)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, color.mix(0.15))))
            .map_err(plot_err)?;
        let series = chart
            .draw_series(LineSeries::new(
                p.iter().map(|q| (q.round as f64, q.mean)),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?;
        if legend {
            series.label(name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart
            .draw_series(
                p.iter()
                    .map(|q| Circle::new((q.round as f64, q.mean), 3, color.filled())),
            )
            .map_err(plot_err)?;
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

/// Draws one chart into an SVG string.
fn svg_chart(
    curves: &[Curve],
    labels: (&str, &str),
    zero_line: bool,
    size: (u32, u32),
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw_curves(&root, curves, labels, zero_line, true)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Small multiples: one panel per text statistic, a line per setting.
fn svg_panels(panels: &[(&str, Vec<Curve>)]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 720)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let cols = 2;
        let rows = panels.len().div_ceil(cols).max(1);
        for (i, (area, (title, curves))) in root
            .split_evenly((rows, cols))
            .iter()
            .zip(panels)
            .enumerate()
        {
            draw_curves(area, curves, (title, ""), false, i == 0)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
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

fn ci(p: &Point) -> String {
    format!("{:.2} ± {:.2}", p.mean, p.hi - p.mean)
}

fn ci_pct(p: &Point) -> String {
    format!("{:+.1}% [{:+.1}, {:+.1}]", p.mean, p.lo, p.hi)
}

/// The markdown table of absolute perplexity: round 0 and the last round per setting (unpaired bands).
pub fn summary_table(curves: &[Curve]) -> String {
    let mut s = String::from("| setting | repetitions | round 0 perplexity | last round | last-round perplexity | change of means |\n|---|---|---|---|---|---|\n");
    for (name, p) in curves {
        let (Some(first), Some(last)) = (p.first(), p.last()) else {
            continue;
        };
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {:+.1}% |\n",
            first.n,
            ci(first),
            last.round,
            ci(last),
            100.0 * (last.mean / first.mean - 1.0)
        ));
    }
    s
}

/// The paired table: per setting, the last round's paired change against round 0 and its verdict.
pub fn paired_table(absolute: &[Curve], change: &[Curve]) -> String {
    let mut s = String::from("| setting | repetitions | round 0 perplexity | last round | last-round perplexity | paired change [95% CI] | verdict |\n|---|---|---|---|---|---|---|\n");
    for ((name, abs), (_, ch)) in absolute.iter().zip(change) {
        let (Some(first), Some(last), Some(change)) = (abs.first(), abs.last(), ch.last()) else {
            continue;
        };
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            change.n,
            ci(first),
            last.round,
            ci(last),
            ci_pct(change),
            Verdict::of(change).label()
        ));
    }
    s
}

/// Setting against setting at one round: the paired difference of perplexity (row minus column setting).
fn difference_table(
    rows: &[MetricsRow],
    metric: impl Fn(&MetricsRow) -> Option<f64> + Copy,
    names: &[String],
    round: usize,
) -> String {
    let mut s = String::from(
        "| a | b | repetitions | a - b [95% CI] | verdict for a |\n|---|---|---|---|---|\n",
    );
    // Curated chains (SETTING+FILTER) are compared with the other filters of their own setting.
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            if curated_setting(a) != curated_setting(b) {
                continue;
            }
            if let Some(p) = paired_difference(rows, metric, (a, b), round) {
                let verdict = match Verdict::of(&p) {
                    Verdict::Worsens => format!("worse than {b}"),
                    Verdict::Improves => format!("better than {b}"),
                    Verdict::NoClearChange => "no clear difference".to_string(),
                };
                s.push_str(&format!(
                    "| {a} | {b} | {} | {:+.2} [{:+.2}, {:+.2}] | {verdict} |\n",
                    p.n, p.mean, p.lo, p.hi
                ));
            }
        }
    }
    s
}

pub(crate) fn html_table(md: &str) -> String {
    let mut out = String::from("<table>\n");
    for (i, line) in md.lines().enumerate().filter(|(i, _)| *i != 1) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let tag = if i == 0 { "th" } else { "td" };
        out.push_str("<tr>");
        for c in cells {
            out.push_str(&format!(
                "<{tag}>{}</{tag}>",
                c.replace('&', "&amp;").replace('<', "&lt;")
            ));
        }
        out.push_str("</tr>\n");
    }
    out + "</table>\n"
}

/// The setting of a curated chain `SETTING+FILTER` (uncurated chains have none).
fn curated_setting(chain: &str) -> Option<&str> {
    chain.split_once('+').map(|(b, _)| b)
}

/// Per curated chain, over rounds 1 on and all repetitions: candidates per round, the realised fresh fraction
/// of the kept documents beside the one expected (the schedule's alpha, or for the oracle appendix D's alpha'
/// from the theory crate), the filter's pooled type I and type II rates, and the verifier's perplexity.
fn curation_table(cfg: &Config, rows: &[MetricsRow]) -> String {
    let mut s = String::from(
        "### Curation: what each filter did (rounds 1 on, all repetitions)\n\n\
         | chain | rounds | synthetic candidates / round | realised alpha [95% CI] | expected alpha | \
         type I (real rejected) | type II (synthetic kept) | verifier perplexity |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut names: Vec<(usize, &str)> = rows
        .iter()
        .filter(|r| r.curation.is_some())
        .map(|r| (r.setting_number, r.setting.as_str()))
        .collect();
    names.sort();
    names.dedup();
    for (_, name) in names {
        let cs: Vec<(&MetricsRow, &CurationMetrics)> = rows
            .iter()
            .filter(|r| r.setting == name)
            .filter_map(|r| r.curation.as_ref().map(|c| (r, c)))
            .collect();
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
        let alphas: Vec<f64> = cs.iter().map(|(r, _)| r.realized_alpha).collect();
        let (a, ah) = mean_ci(&alphas);
        let filter = match cfg.setting(name).ok().and_then(|s| s.curation) {
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
        let mut vp: Vec<(usize, f64)> = cs
            .iter()
            .filter_map(|(r, c)| c.verifier_perplexity.map(|v| (r.repetition, v)))
            .collect();
        vp.sort_by_key(|x| x.0);
        vp.dedup_by_key(|x| x.0);
        let verifier = if vp.is_empty() {
            "-".to_string()
        } else {
            let (m, h) = mean_ci(&vp.iter().map(|x| x.1).collect::<Vec<_>>());
            format!("{m:.1} ± {h:.1}")
        };
        s.push_str(&format!(
            "| {name} | {} | {:.1} | {a:.3} [{:.3}, {:.3}] | {expected:.3} | {} | {} | {verifier} |\n",
            cs.len(),
            csyn as f64 / cs.len().max(1) as f64,
            a - ah,
            a + ah,
            rate(cr - kr, cr),
            rate(ksyn, csyn),
        ));
    }
    s.push('\n');
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

/// One evaluation set's analysis: absolute and paired curves, and the tables.
struct Analysis {
    absolute: Vec<Curve>,
    change: Vec<Curve>,
    tables: String,
}

fn analyse(rows: &[MetricsRow], metric: fn(&MetricsRow) -> Option<f64>, label: &str) -> Analysis {
    let mut absolute = curves(rows, metric);
    for (_, p) in &mut absolute {
        // Perplexity is at least 1; a wide t-interval of few repetitions must not cross it.
        for q in p.iter_mut() {
            q.lo = q.lo.max(1.0);
        }
    }
    let change = paired_change(rows, metric);
    let names: Vec<String> = absolute.iter().map(|(n, _)| n.clone()).collect();
    let last = absolute
        .iter()
        .filter_map(|(_, p)| p.last().map(|q| q.round))
        .min()
        .unwrap_or(0);
    let tables = format!(
        "### {label}: paired change against each repetition's round 0\n\n{}\n\
         ### {label}: settings compared at round {last}, paired within repetitions (perplexity, a - b)\n\n{}\n\
         ### {label}: absolute perplexity (unpaired 95% bands across repetitions)\n\n{}\n",
        paired_table(&absolute, &change),
        difference_table(rows, metric, &names, last),
        summary_table(&absolute),
    );
    Analysis {
        absolute,
        change,
        tables,
    }
}

fn paired_csv(sets: &[(&str, &Analysis)]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "evaluation",
        "setting",
        "round",
        "repetitions",
        "mean_perplexity",
        "perplexity_ci_low",
        "perplexity_ci_high",
        "paired_change_pct",
        "change_ci_low_pct",
        "change_ci_high_pct",
        "verdict",
    ])?;
    for (set, a) in sets {
        for ((name, abs), (_, ch)) in a.absolute.iter().zip(&a.change) {
            for (p, c) in abs.iter().zip(ch) {
                w.write_record([
                    set.to_string(),
                    name.clone(),
                    p.round.to_string(),
                    c.n.to_string(),
                    format!("{:.6}", p.mean),
                    format!("{:.6}", p.lo),
                    format!("{:.6}", p.hi),
                    format!("{:.4}", c.mean),
                    format!("{:.4}", c.lo),
                    format!("{:.4}", c.hi),
                    Verdict::of(c).label().to_string(),
                ])?;
            }
        }
    }
    w.into_inner().context("csv")
}

/// Writes `DIR/metrics.csv` and `DIR/report/`: perplexity and change plots (PNG, SVG), text-statistics small
/// multiples, `summary.md`, `paired.csv` and `report.html`.
pub fn report(root: &Path) -> Result<PathBuf> {
    let cfg = frozen_config(root)?;
    let mut rows = collect_metrics(root)?;
    for r in &mut rows {
        refresh_generation_stats(root, &cfg, r)?;
    }
    if rows.is_empty() {
        bail!("{} has no finished round yet: run `collapse-lab run` first (or wait for its first round)", root.display());
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in &rows {
        // The curation columns go to curation.csv: in metrics.csv every row has the same columns.
        let mut r = r.clone();
        r.curation = None;
        w.serialize(&r)?;
    }
    write_atomic(&root.join("metrics.csv"), &w.into_inner().context("csv")?)?;
    let curated = rows.iter().any(|r| r.curation.is_some());
    if curated {
        write_atomic(&root.join("curation.csv"), &curation_csv(&rows)?)?;
    }
    let dir = root.join("report");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let heldout = analyse(&rows, |r| Some(r.heldout_perplexity), "Held-out plots");
    let second = rows
        .iter()
        .any(|r| r.second_perplexity.is_some())
        .then(|| analyse(&rows, |r| r.second_perplexity, "Second evaluation set"));
    let size = (900, 560);
    let mut figures = vec![("perplexity".to_string(), "held-out perplexity by round")];
    write_plot(
        &dir,
        "perplexity",
        &svg_chart(
            &heldout.absolute,
            (
                "Held-out perplexity by round (mean, 95% CI)",
                "held-out perplexity",
            ),
            false,
            size,
        )?,
    )?;
    write_plot(
        &dir,
        "change",
        &svg_chart(
            &heldout.change,
            (
                "Change against the same repetition's round 0 (paired mean, 95% CI)",
                "perplexity change (%)",
            ),
            true,
            size,
        )?,
    )?;
    figures.push((
        "change".to_string(),
        "paired change of held-out perplexity against round 0",
    ));
    if let Some(s) = &second {
        write_plot(
            &dir,
            "second-change",
            &svg_chart(
                &s.change,
                (
                    "Second evaluation set: change against round 0 (paired, 95% CI)",
                    "perplexity change (%)",
                ),
                true,
                size,
            )?,
        )?;
        figures.push((
            "second-change".to_string(),
            "paired change on the second evaluation set",
        ));
    }
    let stats_docs = rows.iter().map(|r| r.stats_docs).max().unwrap_or(0);
    let panels = [
        (
            "mean words per plot",
            curves(&rows, |r| Some(r.gen_mean_words)),
        ),
        ("distinct-1", curves(&rows, |r| Some(r.gen_distinct_1))),
        ("distinct-2", curves(&rows, |r| Some(r.gen_distinct_2))),
        (
            "unigram entropy (bits)",
            curves(&rows, |r| Some(r.gen_unigram_entropy)),
        ),
    ];
    write_plot(&dir, "text-stats", &svg_panels(&panels)?)?;
    figures.push((
        "text-stats".to_string(),
        "text statistics of the generated plots",
    ));

    let mut sets = vec![("heldout", &heldout)];
    if let Some(s) = &second {
        sets.push(("second", s));
    }
    write_atomic(&dir.join("paired.csv"), &paired_csv(&sets)?)?;
    let notes = format!(
        "Intervals are 95% Student-t intervals across repetitions. Paired changes are 100 (x_t / x_0 - 1) per \
         repetition, against that repetition's own round 0; a verdict is \"worsens\" or \"improves\" when the \
         interval of the last round's change excludes 0. Text statistics of generated plots are measured on \
         the first {stats_docs} documents each round generated (the same number in every round and setting).\n"
    );
    let mut md = format!("## {}\n\n{notes}\n{}", root.display(), heldout.tables);
    if let Some(s) = &second {
        md.push_str(&s.tables);
    }
    if curated {
        md.push_str(&curation_table(&cfg, &rows));
        // One change plot per setting, its filters side by side.
        let mut bases: Vec<&str> = Vec::new();
        for b in heldout
            .change
            .iter()
            .filter_map(|(n, _)| curated_setting(n))
        {
            if !bases.contains(&b) {
                bases.push(b);
            }
        }
        for b in bases {
            let mine: Vec<Curve> = heldout
                .change
                .iter()
                .filter(|(n, _)| curated_setting(n) == Some(b))
                .cloned()
                .collect();
            let name = format!("change-{b}");
            write_plot(
                &dir,
                &name,
                &svg_chart(
                    &mine,
                    (
                        &format!("{b}: change against round 0 by curation filter (paired, 95% CI)"),
                        "perplexity change (%)",
                    ),
                    true,
                    size,
                )?,
            )?;
            figures.push((name, "paired change by curation filter"));
        }
    }
    write_atomic(&dir.join("summary.md"), md.as_bytes())?;

    let mut body = String::new();
    for section in md.split("\n### ").skip(1) {
        let (title, table) = section.split_once("\n\n").unwrap_or((section, ""));
        body.push_str(&format!(
            "<h2>{}</h2>\n{}",
            title.replace('<', "&lt;"),
            html_table(table.trim())
        ));
    }
    let figs: String = figures
        .iter()
        .map(|(f, alt)| {
            format!("<figure><img src=\"{f}.svg\" alt=\"{alt}\" width=\"900\"></figure>\n")
        })
        .collect();
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>collapse-lab report: {name}</title>\n<style>\
         body{{font-family:sans-serif;max-width:1000px;margin:2em auto}} table{{border-collapse:collapse;margin-bottom:1em}} \
         td,th{{border:1px solid #999;padding:4px 10px;text-align:right}} th{{background:#eee}}</style></head>\n<body>\n\
         <h1>Model collapse: {name}</h1>\n<p>{rounds_done} finished rounds (setting × repetition × round). {notes}</p>\n\
         {figs}{body}<p>Raw data: <a href=\"../metrics.csv\">metrics.csv</a>, <a href=\"paired.csv\">paired.csv</a>, \
         <a href=\"../metrics.jsonl\">metrics.jsonl</a>; plots as PNG beside the SVGs.</p>\n</body></html>\n",
        name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        rounds_done = rows.len(),
    );
    write_atomic(&dir.join("report.html"), html.as_bytes())?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_intervals_use_student_t() {
        assert_eq!(mean_ci(&[2.0]), (2.0, 0.0));
        let (m, ci) = mean_ci(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((ci - 4.303 * (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }

    fn row(setting: &str, number: usize, rep: usize, round: usize, ppl: f64) -> MetricsRow {
        MetricsRow {
            setting: setting.into(),
            setting_number: number,
            repetition: rep,
            round,
            new_docs: 0,
            fresh_docs: 0,
            synthetic_docs: 0,
            total_docs: 0,
            alpha: 0.0,
            realized_alpha: 0.0,
            real_fraction: 0.0,
            train_tokens: 0,
            train_steps: 0,
            final_train_loss: 0.0,
            heldout_perplexity: ppl,
            heldout_tokens: 0,
            second_perplexity: None,
            generated_docs: 0,
            stats_docs: 0,
            gen_mean_words: 0.0,
            gen_distinct_1: 0.0,
            gen_distinct_2: 0.0,
            gen_unigram_entropy: 0.0,
            gen_empty: 0,
            gen_truncated: 0,
            gen_replacement_char: 0,
            wall_compose_s: 0.0,
            wall_train_s: 0.0,
            wall_eval_s: 0.0,
            wall_generate_s: 0.0,
            curation: None,
        }
    }

    /// The paired interval against a hand computation: three repetitions whose round 0 differs a lot while
    /// each rises by about 10%.
    #[test]
    fn paired_change_matches_a_hand_computed_example() {
        let rows = vec![
            row("a", 0, 0, 0, 100.0),
            row("a", 0, 1, 0, 200.0),
            row("a", 0, 2, 0, 400.0),
            row("a", 0, 0, 1, 110.0),
            row("a", 0, 1, 1, 224.0),
            row("a", 0, 2, 1, 432.0),
        ];
        // Changes: 10%, 12%, 8%: mean 10, sample sd 2, half-width 4.303 * 2 / sqrt(3) = 4.9687.
        let c = paired_change(&rows, |r| Some(r.heldout_perplexity));
        let p = c[0].1[1];
        assert_eq!(p.n, 3);
        assert!((p.mean - 10.0).abs() < 1e-9, "{p:?}");
        let hw = 4.303 * 2.0 / 3f64.sqrt();
        assert!(
            (p.lo - (10.0 - hw)).abs() < 1e-9 && (p.hi - (10.0 + hw)).abs() < 1e-9,
            "{p:?}"
        );
        assert_eq!(Verdict::of(&p), Verdict::Worsens);
        // Unpaired, the same data shows nothing: round 0's spread swamps the change.
        let abs = curves(&rows, |r| Some(r.heldout_perplexity));
        assert!(abs[0].1[0].hi > abs[0].1[1].lo);
        // Round 0 against itself is exactly 0.
        assert_eq!(c[0].1[0].mean, 0.0);

        // Setting against setting, paired: b is a minus 5 in every repetition -> exactly 5, zero width.
        let mut two = rows.clone();
        two.extend(rows.iter().map(|r| MetricsRow {
            setting: "b".into(),
            setting_number: 1,
            heldout_perplexity: r.heldout_perplexity - 5.0,
            ..r.clone()
        }));
        let d = paired_difference(&two, |r| Some(r.heldout_perplexity), ("a", "b"), 1).unwrap();
        assert!(
            (d.mean - 5.0).abs() < 1e-9 && (d.hi - d.lo).abs() < 1e-9,
            "{d:?}"
        );
    }

    #[test]
    fn verdicts_at_the_boundaries() {
        let p = |n, lo, hi| Point {
            round: 1,
            n,
            mean: (lo + hi) / 2.0,
            lo,
            hi,
        };
        assert_eq!(Verdict::of(&p(5, 0.1, 2.0)), Verdict::Worsens);
        assert_eq!(Verdict::of(&p(5, 0.0, 2.0)), Verdict::NoClearChange);
        assert_eq!(Verdict::of(&p(5, -1e-9, 2.0)), Verdict::NoClearChange);
        assert_eq!(Verdict::of(&p(5, -2.0, -0.1)), Verdict::Improves);
        assert_eq!(Verdict::of(&p(5, -2.0, 0.0)), Verdict::NoClearChange);
        assert_eq!(Verdict::of(&p(5, -2.0, 2.0)), Verdict::NoClearChange);
        // One repetition has no interval: never a verdict.
        assert_eq!(Verdict::of(&p(1, 3.0, 3.0)), Verdict::NoClearChange);
    }
}

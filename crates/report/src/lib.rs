//! The report: what a run shows, with the statistics a reviewer asks for.
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
//!
//! It reads a run only through the experiment crate's functions (its frozen config and finished rounds'
//! metrics, its training records), never through the pipeline's internals, and knows nothing of models.

/// Errors of the report; each message names the file or what it could not do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Experiment(#[from] experiment::Error),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Theory(#[from] ::theory::Error),
    /// The theory's recurrence or simulation refused a setting's schedule.
    #[error("setting {setting}")]
    Setting {
        setting: String,
        #[source]
        source: ::theory::Error,
    },
    #[error("{what}")]
    Csv {
        what: String,
        #[source]
        source: csv::Error,
    },
    #[error(transparent)]
    Io(#[from] IoError),
    /// What plotters or resvg reported (their errors carry backend types, so only the message travels).
    #[error("cannot draw the plot: {0}")]
    Plot(String),
    /// Nothing to report yet.
    #[error("{0}")]
    Empty(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The bytes of a CSV written into memory (flushing into a `Vec` cannot fail).
pub(crate) fn csv_bytes(w: csv::Writer<Vec<u8>>) -> Vec<u8> {
    w.into_inner().expect("an in-memory CSV flushes")
}

mod bridge;
mod charts;
mod page;
mod stats;
mod tables;
pub mod theory;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use experiment::config::{Config, ConfigError};
use experiment::{
    collect_metrics, frozen_config, phase_dir, read_json, refresh_generation_stats, write_atomic,
    MetricsRow, TrainRecord,
};
use experiment::{io, IoError, RunDirError};

use charts::{figure, write_plot, Axes, Series};
use page::{html_escape, html_sections};
use stats::{Estimate, ALPHA};
use tables::{
    analyse, curated_setting, curation_csv, curation_table, endpoints, join_curation_csv,
    paired_csv, table, tails_table, truncation_warnings, Layout, Table, HELDOUT, RISK, SECOND,
};

pub use charts::curve_plot;
pub use stats::{fieller, holm, t_p_value, t_quantile, Ratio};
pub use tables::Verdict;

/// How the report draws.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Perplexity on a linear axis instead of a log one.
    pub linear: bool,
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
                // A model fitted in one pass (counted, not trained) has no curve to draw.
                if rec.steps <= 1 {
                    continue;
                }
                for (step, v) in rec.heldout.into_iter().filter(|(_, v)| v.is_finite()) {
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
            let mut rd = csv::Reader::from_path(metrics).map_err(|source| Error::Csv {
                what: format!("cannot read {}", metrics.display()),
                source,
            })?;
            let rows: Vec<MetricsRow> = rd
                .deserialize()
                .collect::<std::result::Result<_, _>>()
                .map_err(|source| Error::Csv {
                    what: format!("{} is not a collapse-lab metrics.csv", metrics.display()),
                    source,
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
            Some(r) => {
                return Err(Error::Empty(format!(
                "{} has no finished round yet: run `collapse-lab run` first (or wait for its first round)",
                r.display()
            )))
            }
            None => return Err(Error::Empty("the metrics file holds no row".into())),
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
            w.serialize(&r).map_err(|source| Error::Csv {
                what: "cannot write metrics.csv".into(),
                source,
            })?;
        }
        write_atomic(&root.join("metrics.csv"), &csv_bytes(w))?;
    }
    let curated = rows.iter().any(|r| r.curation.is_some());
    if curated {
        if let Some(root) = &root {
            let bytes = curation_csv(&rows).map_err(|source| Error::Csv {
                what: "cannot write curation.csv".into(),
                source,
            })?;
            write_atomic(&root.join("curation.csv"), &bytes)?;
        }
    }
    std::fs::create_dir_all(&dir).map_err(io(|| format!("cannot create {}", dir.display())))?;

    let heldout = analyse(&layout, &rows, &HELDOUT, "Held-out plots");
    let second = rows
        .iter()
        .any(|r| r.second_perplexity.is_some())
        .then(|| analyse(&layout, &rows, &SECOND, "Second evaluation set"));
    let risk = rows.iter().any(|r| r.model_risk.is_some()).then(|| {
        analyse(
            &layout,
            &rows,
            &RISK,
            "Risk against the reference distribution",
        )
    });
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
    // An unsmoothed model's held-out perplexity is infinite in every round: nothing to draw or test.
    let scored = !heldout.table.is_empty();
    let panels = with_zoom(
        perplexity_series(&layout, &heldout.table),
        &away,
        ppl_axes,
        (
            "Held-out perplexity by round: exp(mean NLL), 95% CI",
            &zoom_title,
        ),
    );
    if scored {
        write_plot(&dir, "perplexity", &figure(&panels, 1, size)?)?;
        figures.push(("perplexity".into(), "held-out perplexity by round"));
    }
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
    if scored {
        write_plot(&dir, "change", &figure(&panels, 1, size)?)?;
        figures.push((
            "change".into(),
            "paired change of held-out mean NLL against round 0",
        ));
    }
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
    if let Some(r) = &risk {
        let axes = |title: &str| Axes::by_round(title, "risk (log scale)").log(true);
        let panels = vec![
            (
                chain_series(&layout, |c| table_points(&r.table, c, f64::exp)),
                axes(
                    "Squared-error risk against the reference distribution: geometric mean, 95% CI",
                ),
            ),
            (
                change_series(&layout, &r.changes),
                Axes::by_round(
                    "Change of log risk against the same repetition's round 0 (paired, 95% CI)",
                    "change of log risk",
                )
                .with_zero(),
            ),
        ];
        write_plot(&dir, "risk", &figure(&panels, 1, size)?)?;
        figures.push((
            "risk".into(),
            "risk against the reference distribution by round",
        ));
    }
    let bridge = bridge::bridge(&cfg, &layout, &rows);
    if let Some(b) = &bridge {
        let panels = vec![
            (
                b.risk.clone(),
                Axes::by_round(
                    "Unigram risk: measured (mean, 95% CI) and the categorical recurrence (grey)",
                    "risk (log scale)",
                )
                .log(true)
                .undodged(),
            ),
            (
                b.departure.clone(),
                Axes::by_round(
                    "Departure from the recurrence: (measured - recurrence) / recurrence, 95% CI",
                    "departure (%)",
                )
                .with_zero(),
            ),
        ];
        write_plot(&dir, "bridge", &figure(&panels, 1, size)?)?;
        figures.push((
            "bridge".into(),
            "unigram risk against the categorical recurrence",
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
                let points: Vec<_> = m
                    .get(c)?
                    .keys()
                    .filter_map(|&r| {
                        Some((r as f64, mean(&m, c, r)?, mean(&l, c, r)?, mean(&h, c, r)?))
                    })
                    .collect();
                (!points.is_empty()).then_some(points)
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
        // Quantiles are infinite where a model gives some token probability 0.
        let panels: Vec<_> = panels.into_iter().filter(|(s, _)| !s.is_empty()).collect();
        if !panels.is_empty() {
            write_plot(&dir, "tails", &figure(&panels, 1, size)?)?;
            figures.push(("tails".into(), "per-document perplexity quantiles"));
        }
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
    if let Some(r) = &risk {
        sets.push(("log_risk", r));
    }
    let bytes = paired_csv(&sets).map_err(|source| Error::Csv {
        what: "cannot write paired.csv".into(),
        source,
    })?;
    write_atomic(&dir.join("paired.csv"), &bytes)?;
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
    if scored {
        md.push_str(&endpoints(&cfg, &heldout.table, &HELDOUT));
    }
    if let Some(r) = &risk {
        md.push_str(&endpoints(&cfg, &r.table, &RISK));
    }
    let unscored = rows
        .iter()
        .filter(|r| !r.heldout_perplexity.is_finite())
        .count();
    if unscored > 0 {
        md.push_str(&format!(
            "### Infinite held-out perplexity

{unscored} of {} finished rounds give some held-out token \
             probability 0 (an unsmoothed model), so their perplexity is infinite; the held-out tables \
             leave them out{}.\n\n",
            rows.len(),
            if risk.is_some() {
                ", and the risk tables compare every round"
            } else {
                ""
            }
        ));
    }
    if scored {
        md.push_str(&heldout.tables);
    }
    if let Some(s) = &second {
        md.push_str(&s.tables);
    }
    if let Some(r) = &risk {
        md.push_str(&r.tables);
    }
    if let Some(b) = &bridge {
        md.push_str(&b.markdown);
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

//! The theory page (`collapse-lab theory CONFIG --out DIR`): the config's schedules (the same ones its GPT run uses) through
//! the statistical model of its `[theory]` section: the exact risk recurrence where one exists (categorical)
//! and the Monte Carlo mean with its 95% band, written like a run's metrics, plotted (log risk against round,
//! one panel per size schedule and accumulation) and shown on a page.

use std::path::{Path, PathBuf};

use corpus::{Schedule, Size};
use plotters::prelude::*;
use serde::Serialize;
use theory::{categorical_risk, simulate, unlimited_plan, Filter, ModelClass};

use crate::charts::{log_ticks, plot_err, svg_to_png, COLORS};
use crate::page::html_table;
use crate::{csv_bytes, Error, Result};
use experiment::{io, write_atomic, Config};

/// One row of the theory's metrics: a (schedule, round).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TheoryRow {
    pub setting: String,
    pub setting_number: usize,
    pub round: usize,
    pub n: usize,
    pub alpha: f64,
    /// After the filter (expected): the mixture weight and the size the recurrence uses.
    pub alpha_kept: f64,
    pub n_kept: f64,
    pub accumulate: bool,
    /// The exact recurrence (categorical model only).
    pub exact_risk: Option<f64>,
    pub sim_mean: f64,
    pub sim_se: f64,
    pub sim_lo: f64,
    pub sim_hi: f64,
}

/// A panel of the plot: schedules that share their size schedule and accumulation.
fn panel_of(s: &Schedule) -> String {
    let size = match s.size {
        Size::Fixed { .. } => "n_t fixed",
        Size::Linear { .. } => "n_t linear",
        Size::Quadratic { .. } => "n_t quadratic",
        Size::Exponential { .. } => "n_t exponential",
        Size::List { .. } => "n_t listed",
    };
    let acc = match (s.accumulate, s.size_is_total) {
        (true, true) => "accumulating to |D_t| = n_t",
        (true, false) => "accumulating n_t a round",
        (false, _) => "not accumulating",
    };
    format!("{size}, {acc}")
}

pub fn run(cfg: &Config, out: &Path) -> Result<PathBuf> {
    let sim = cfg.theory.simulation();
    let filter = cfg.theory.filter.unwrap_or(Filter::NONE);
    let c = sim.c();
    let mut rows = Vec::new();
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for s in cfg.settings()? {
        let at = |source| Error::Setting {
            setting: s.to_string(),
            source,
        };
        let plan = unlimited_plan(&s.schedule, cfg.schedule.rounds).map_err(at)?;
        let exact = match sim.model {
            ModelClass::Categorical => {
                Some(categorical_risk(&plan, s.schedule.accumulate, c, filter).map_err(at)?)
            }
            _ => None,
        };
        let bands = simulate(&sim, &plan, s.schedule.accumulate)?;
        for (t, (rp, b)) in plan.rounds.iter().zip(&bands).enumerate() {
            let (alpha_kept, n_kept) = filter.apply(rp.alpha, rp.new_docs as f64);
            rows.push(TheoryRow {
                setting: s.name.clone(),
                setting_number: s.number,
                round: t,
                n: rp.new_docs,
                alpha: rp.alpha,
                alpha_kept,
                n_kept,
                accumulate: s.schedule.accumulate,
                exact_risk: exact.as_ref().map(|e| e[t]),
                sim_mean: b.mean,
                sim_se: b.se,
                sim_lo: b.lo,
                sim_hi: b.hi,
            });
        }
        let panel = panel_of(&s.schedule);
        match groups.iter_mut().find(|(p, _)| *p == panel) {
            Some((_, names)) => names.push(s.name.clone()),
            None => groups.push((panel, vec![s.name.clone()])),
        }
    }
    std::fs::create_dir_all(out).map_err(io(|| {
        format!("cannot create {}: choose a writable --out", out.display())
    }))?;
    let mut jsonl = String::new();
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in &rows {
        jsonl.push_str(&serde_json::to_string(r).expect("a theory row serialises"));
        jsonl.push('\n');
        w.serialize(r).map_err(|source| Error::Csv {
            what: "cannot write the theory's metrics.csv".into(),
            source,
        })?;
    }
    write_atomic(&out.join("metrics.jsonl"), jsonl.as_bytes())?;
    write_atomic(&out.join("metrics.csv"), &csv_bytes(w))?;
    write_atomic(&out.join("config.toml"), cfg.to_toml().as_bytes())?;

    let svg = draw(&rows, &groups)?;
    write_atomic(&out.join("risk.svg"), svg.as_bytes())?;
    svg_to_png(&svg, &out.join("risk.png"))?;

    let last = cfg.schedule.rounds - 1;
    // Ratios of exact risks where the recurrence exists: a ratio of two simulated means carries the noise
    // of both (two identical recurrences can read x1.52 and x1.63).
    let mut md = format!(
        "| schedule | panel | R_0 | R_{last} exact | R_{last} simulated [95% band] | R_{last} / R_0 exact | \
         R_{last} / R_0 simulated |\n|---|---|---|---|---|---|---|\n"
    );
    for (panel, names) in &groups {
        for name in names {
            let of = |t: usize| rows.iter().find(|r| &r.setting == name && r.round == t);
            let (Some(r0), Some(rl)) = (of(0), of(last)) else {
                continue;
            };
            let exact_ratio = match (r0.exact_risk, rl.exact_risk) {
                (Some(a), Some(b)) => format!("{:.3}", b / a),
                _ => "-".into(),
            };
            md.push_str(&format!(
                "| {name} | {panel} | {:.4e} | {} | {:.4e} [{:.4e}, {:.4e}] | {exact_ratio} | {:.3} |\n",
                r0.exact_risk.unwrap_or(r0.sim_mean),
                rl.exact_risk.map_or("-".into(), |e| format!("{e:.4e}")),
                rl.sim_mean,
                rl.sim_lo,
                rl.sim_hi,
                rl.sim_mean / r0.sim_mean
            ));
        }
    }
    let model = format!("{:?}", sim.model).to_lowercase();
    let about = format!(
        "{model} model, {} repetitions, seed {}{}{}; {} rounds. Solid lines: simulated mean with its 95% band; \
         dashed: the exact recurrence.",
        sim.repetitions,
        sim.seed,
        if sim.model == ModelClass::Categorical {
            format!(", K = {}, truth {:?}, 1 - |p|^2 = {c:.4}", sim.categories, sim.truth)
        } else {
            String::new()
        },
        cfg.theory
            .filter
            .map_or(String::new(), |f| format!(", filter e1 = {}, e2 = {}", f.e1, f.e2)),
        cfg.schedule.rounds
    );
    write_atomic(
        &out.join("summary.md"),
        format!("{about}\n\n{md}").as_bytes(),
    )?;
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>collapse-lab theory</title>\n<style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} table{{border-collapse:collapse}} \
         td,th{{border:1px solid #999;padding:4px 10px;text-align:right}} th{{background:#eee}}</style></head>\n<body>\n\
         <h1>Risk by round</h1>\n<p>{about}</p>\n<figure><img src=\"risk.svg\" alt=\"risk by round\" width=\"1050\"></figure>\n\
         {}<p>Raw data: <a href=\"metrics.csv\">metrics.csv</a>.</p>\n</body></html>\n",
        html_table(&md)
    );
    write_atomic(&out.join("report.html"), html.as_bytes())?;
    Ok(out.to_path_buf())
}

fn draw(rows: &[TheoryRow], groups: &[(String, Vec<String>)]) -> Result<String> {
    let mut svg = String::new();
    {
        let cols = 2.min(groups.len()).max(1);
        let nrows = groups.len().div_ceil(cols).max(1);
        let root =
            SVGBackend::with_string(&mut svg, (1050, 380 * nrows as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        for (area, (panel, names)) in root.split_evenly((nrows, cols)).iter().zip(groups) {
            let mine: Vec<&TheoryRow> =
                rows.iter().filter(|r| names.contains(&r.setting)).collect();
            let values = mine.iter().flat_map(|r| {
                [Some(r.sim_lo), Some(r.sim_hi), r.exact_risk]
                    .into_iter()
                    .flatten()
                    .filter(|v| *v > 0.0)
            });
            let ymin = values.clone().fold(f64::INFINITY, f64::min);
            let ymax = values.fold(0.0, f64::max);
            let (ymin, ymax) = if ymin.is_finite() && ymax > ymin {
                (ymin / 1.3, ymax * 1.3)
            } else {
                (1e-6, 1.0)
            };
            let xmax = mine.iter().map(|r| r.round).max().unwrap_or(1).max(1) as f64;
            let mut chart = ChartBuilder::on(area)
                .caption(panel, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(34)
                .y_label_area_size(70)
                .build_cartesian_2d(
                    0f64..xmax,
                    (ymin..ymax)
                        .log_scale()
                        .with_key_points(log_ticks(ymin, ymax)),
                )
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc("round")
                .y_desc("risk")
                .light_line_style(WHITE)
                .y_label_formatter(&|y| format!("{y:.1e}").replace(".0e", "e"))
                .draw()
                .map_err(plot_err)?;
            for (i, name) in names.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let series: Vec<&&TheoryRow> = mine.iter().filter(|r| &r.setting == name).collect();
                let band: Vec<(f64, f64)> = series
                    .iter()
                    .map(|r| (r.round as f64, r.sim_hi.max(ymin)))
                    .chain(
                        series
                            .iter()
                            .rev()
                            .map(|r| (r.round as f64, r.sim_lo.max(ymin))),
                    )
                    .collect();
                chart
                    .draw_series(std::iter::once(Polygon::new(band, color.mix(0.15))))
                    .map_err(plot_err)?;
                chart
                    .draw_series(LineSeries::new(
                        series
                            .iter()
                            .map(|r| (r.round as f64, r.sim_mean.max(ymin))),
                        color.stroke_width(2),
                    ))
                    .map_err(plot_err)?
                    .label(name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                let exact: Vec<(f64, f64)> = series
                    .iter()
                    .filter_map(|r| r.exact_risk.map(|e| (r.round as f64, e.max(ymin))))
                    .collect();
                if !exact.is_empty() {
                    chart
                        .draw_series(DashedLineSeries::new(
                            exact,
                            6,
                            4,
                            BLACK.mix(0.8).stroke_width(1),
                        ))
                        .map_err(plot_err)?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

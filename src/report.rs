//! `collapse-lab report`: held-out perplexity against round, one line per setting with the mean and a 95%
//! confidence band across repetitions (PNG and SVG), a markdown summary, `metrics.csv`, and `report.html`
//! showing them. Works on a partly finished run: it reports the rounds that are done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

use crate::pipeline::{collect_metrics, refresh_generation_stats, MetricsRow};
use crate::rundir::{frozen_config, write_atomic};

/// Mean and 95% confidence interval (Student t) of one setting at one round.
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

/// Per setting (in the paper's order), the held-out perplexity curve.
pub fn curves(rows: &[MetricsRow]) -> Vec<(String, Vec<Point>)> {
    let mut by: BTreeMap<(usize, String), BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    for r in rows {
        by.entry((r.setting_number, r.setting.clone()))
            .or_default()
            .entry(r.round)
            .or_default()
            .push(r.heldout_perplexity);
    }
    by.into_iter()
        .map(|((_, name), rounds)| {
            let pts = rounds
                .into_iter()
                .map(|(round, xs)| {
                    let (mean, ci) = mean_ci(&xs);
                    // Perplexity is at least 1; a wide t-interval of few repetitions must not cross it.
                    Point {
                        round,
                        n: xs.len(),
                        mean,
                        lo: (mean - ci).max(1.0),
                        hi: mean + ci,
                    }
                })
                .collect();
            (name, pts)
        })
        .collect()
}

const COLORS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn draw<DB: DrawingBackend>(backend: DB, curves: &[(String, Vec<Point>)]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let pts = curves.iter().flat_map(|(_, p)| p.iter());
    let xmax = pts.clone().map(|p| p.round).max().unwrap_or(1).max(1) as f64;
    let ymin = pts.clone().map(|p| p.lo).fold(f64::INFINITY, f64::min);
    let ymax = pts.map(|p| p.hi).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((ymax - ymin) * 0.08).max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Held-out perplexity by round (mean, 95% CI)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.2f64..xmax + 0.2, (ymin - pad)..(ymax + pad))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("held-out perplexity")
        .light_line_style(WHITE)
        .x_labels(xmax as usize + 1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (i, (name, p)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let band: Vec<(f64, f64)> = p
            .iter()
            .map(|q| (q.round as f64, q.hi))
            .chain(p.iter().rev().map(|q| (q.round as f64, q.lo)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, color.mix(0.18))))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        chart
            .draw_series(LineSeries::new(
                p.iter().map(|q| (q.round as f64, q.mean)),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                p.iter()
                    .map(|q| Circle::new((q.round as f64, q.mean), 3, color.filled())),
            )
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

/// Rasterises the SVG with resvg and an embedded DejaVu Sans, so the PNG's text renders the same on machines
/// without system fonts.
fn svg_to_png(svg: &str, path: &Path) -> Result<()> {
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

/// The markdown table of round-0 and last-round perplexity per setting.
pub fn summary_table(curves: &[(String, Vec<Point>)]) -> String {
    let mut s = String::from("| setting | repetitions | round 0 perplexity | last round | last-round perplexity | change |\n|---|---|---|---|---|---|\n");
    for (name, p) in curves {
        let (Some(first), Some(last)) = (p.first(), p.last()) else {
            continue;
        };
        let ci = |q: &Point| format!("{:.2} ± {:.2}", q.mean, q.hi - q.mean);
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

fn html_table(md: &str) -> String {
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

/// Writes `DIR/metrics.csv` and `DIR/report/{perplexity.png, perplexity.svg, summary.md, report.html}`.
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
        w.serialize(r)?;
    }
    write_atomic(&root.join("metrics.csv"), &w.into_inner().context("csv")?)?;
    let curves = curves(&rows);
    let dir = root.join("report");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut svg = String::new();
    draw(SVGBackend::with_string(&mut svg, (900, 560)), &curves)?;
    write_atomic(&dir.join("perplexity.svg"), svg.as_bytes())?;
    svg_to_png(&svg, &dir.join("perplexity.png"))?;
    let md = summary_table(&curves);
    write_atomic(&dir.join("summary.md"), md.as_bytes())?;
    let rounds_done = rows.len();
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>collapse-lab report: {name}</title>\n<style>\
         body{{font-family:sans-serif;max-width:960px;margin:2em auto}} table{{border-collapse:collapse}} \
         td,th{{border:1px solid #999;padding:4px 10px;text-align:right}} th{{background:#eee}}</style></head>\n<body>\n\
         <h1>Model collapse: {name}</h1>\n<p>{rounds_done} finished rounds (setting × repetition × round). Held-out \
         perplexity per round; the band is a 95% confidence interval across repetitions.</p>\n\
         <figure><img src=\"perplexity.svg\" alt=\"held-out perplexity by round\" width=\"900\"></figure>\n\
         <h2>Summary</h2>\n{table}<p>Raw data: <a href=\"../metrics.csv\">metrics.csv</a>, \
         <a href=\"../metrics.jsonl\">metrics.jsonl</a>; plot as <a href=\"perplexity.png\">PNG</a>.</p>\n</body></html>\n",
        name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        table = html_table(&md),
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
}

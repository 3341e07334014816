//! Charts: series with bands, markers and dashes of their own (so no line hides another), dodged along
//! rounds, on log or linear axes labelled at readable values; SVG through plotters, PNG through resvg with an
//! embedded font.

use std::path::Path;

use experiment::write_atomic;

use crate::{Error, Result};
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters_backend::{BackendCoord, DrawingErrorKind};

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

pub(crate) fn plot_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::Plot(format!("{e:?}"))
}

/// One line of a chart: points (x, mean, low, high), drawn with the colour, marker and dash of `style`.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) style: usize,
    pub(crate) points: Vec<(f64, f64, f64, f64)>,
}

pub(crate) struct Axes {
    pub(crate) title: String,
    pub(crate) x_desc: String,
    pub(crate) y_desc: String,
    pub(crate) log_y: bool,
    pub(crate) zero_line: bool,
    /// Shift each series by a little along x, so lines that coincide stay visible side by side.
    pub(crate) dodge: bool,
}

impl Axes {
    /// Rounds along x (series dodged), a linear y.
    pub(crate) fn by_round(title: &str, y_desc: &str) -> Self {
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
    pub(crate) fn by_step(title: &str, y_desc: &str) -> Self {
        Self {
            x_desc: "training step".into(),
            dodge: false,
            ..Self::by_round(title, y_desc)
        }
    }

    pub(crate) fn log(self, on: bool) -> Self {
        Self { log_y: on, ..self }
    }

    /// Every series at the same x (when other series are to be read against them at that x).
    pub(crate) fn undodged(self) -> Self {
        Self {
            dodge: false,
            ..self
        }
    }

    pub(crate) fn with_zero(self) -> Self {
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
pub(crate) fn linear_ticks(lo: f64, hi: f64, want: usize) -> Vec<f64> {
    let raw = (hi - lo) / want as f64;
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p);
    // Each tick is k * step for an integer k: adding `step` repeatedly drifts, and a tick meant to be 0 was
    // labelled "-1.4e-17".
    let first = (lo / step).ceil() as i64;
    (first..)
        .map(|k| k as f64 * step)
        .take_while(|v| *v <= hi)
        .collect()
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
            } else if *y != 0.0 && y.abs() < 0.01 {
                // 2e-4, 1.5e-4: a risk's small values would all read "0" with three decimals.
                format!("{y:.1e}").replace(".0e", "e")
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
        // A series without a name stays out of the legend (the second of a family drawn alike).
        if legend && !s.name.is_empty() {
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
pub(crate) fn figure(
    panels: &[(Vec<Series>, Axes)],
    cols: usize,
    size: (u32, u32),
) -> Result<String> {
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
pub fn curve_plot(
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
    let tree = resvg::usvg::Tree::from_str(svg, &opt)
        .map_err(|e| Error::Plot(format!("the plot's SVG does not parse: {e}")))?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| Error::Plot("empty plot".into()))?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    let png = pixmap
        .encode_png()
        .map_err(|e| Error::Plot(format!("cannot encode the PNG: {e}")))?;
    Ok(write_atomic(path, &png)?)
}

pub(crate) fn write_plot(dir: &Path, name: &str, svg: &str) -> Result<()> {
    write_atomic(&dir.join(format!("{name}.svg")), svg.as_bytes())?;
    svg_to_png(svg, &dir.join(format!("{name}.png")))
}

#[cfg(test)]
mod tests {
    use super::linear_ticks;

    #[test]
    fn linear_ticks_hit_zero_exactly() {
        // The range of a "change against round 0" chart whose ticks once read -1.4e-17 for 0.
        let t = linear_ticks(-0.2777, 0.0335, 8);
        assert!(t.contains(&0.0), "{t:?}");
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        assert!(t[0] >= -0.2777 && *t.last().unwrap() <= 0.0335);
        let steps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(steps.iter().all(|s| (s - 0.05).abs() < 1e-12), "{steps:?}");
    }
}

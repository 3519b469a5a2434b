//! Line plots (one or more series of points over a shared x axis) as SVG: a training curve, or
//! an effect against a scale with its control beside it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::plot::heatmap::escape;

/// One named series of `(x, y)` points.
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// A plot of series on linear axes.
pub struct LinePlot<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// Axis names: (x, y).
    pub axes: (&'a str, &'a str),
    /// The series.
    pub series: Vec<Series>,
}

const COLOURS: [&str; 6] = ["#08306b", "#e6550d", "#31a354", "#756bb1", "#636363", "#d62728"];

/// Round tick values spanning `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

impl LinePlot<'_> {
    /// The SVG text.
    pub fn svg(&self) -> String {
        let (w, h, left, right, top, bottom) = (640.0, 400.0, 70.0, 170.0, 40.0, 50.0);
        let all: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let range = |f: fn(&(f64, f64)) -> f64| {
            let lo = all.iter().map(f).fold(f64::INFINITY, f64::min);
            let hi = all.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
            if !lo.is_finite() {
                (0.0, 1.0)
            } else if hi - lo < 1e-12 {
                (lo - 0.5, hi + 0.5)
            } else {
                (lo, hi)
            }
        };
        let ((x0, x1), (y0, y1)) = (range(|p| p.0), range(|p| p.1));
        let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
        let py = |y: f64| h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(s, r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text>"#, escape(self.title));
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            w - left - right,
            h - top - bottom
        );
        for t in ticks(x0, x1) {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                px(t),
                h - bottom + 16.0,
                fmt(t)
            );
        }
        for t in ticks(y0, y1) {
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/>"##,
                w - right,
                y = py(t)
            );
            let _ =
                writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, left - 6.0, py(t) + 4.0, fmt(t));
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-style="italic">{}</text>"#,
            (left + w - right) / 2.0,
            h - 12.0,
            escape(self.axes.0)
        );
        let _ = writeln!(
            s,
            r#"<text x="14" y="{}" font-style="italic" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
            h / 2.0,
            h / 2.0,
            escape(self.axes.1)
        );
        for (i, series) in self.series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            let pts: Vec<String> = series
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(s, r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, pts.join(" "));
            if series.points.len() <= 40 {
                for p in &pts {
                    let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                    let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{c}"/>"#);
                }
            }
            let ly = top + 14.0 + 18.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/>"#,
                w - right + 10.0,
                w - right + 30.0
            );
            let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, w - right + 36.0, ly + 4.0, escape(&series.name));
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes `stem.svg`.
    pub fn write(&self, stem: &Path) -> Result<()> {
        let path = stem.with_extension("svg");
        crate::run_dir::write_atomic(&path, self.svg().as_bytes()).map(|_| ())
    }
}

fn fmt(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}").trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let close = |a: Vec<f64>, b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9);
        assert!(close(ticks(0.0, 1.0), &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]), "{:?}", ticks(0.0, 1.0));
        assert!(close(ticks(0.0, 300.0), &[0.0, 100.0, 200.0, 300.0]), "{:?}", ticks(0.0, 300.0));
        assert!(close(ticks(-0.03, 0.07), &[-0.02, 0.0, 0.02, 0.04, 0.06]), "{:?}", ticks(-0.03, 0.07));
    }

    #[test]
    fn svg_has_a_line_and_a_legend_per_series() {
        let p = LinePlot {
            title: "effect of α",
            axes: ("α", "p(true)"),
            series: vec![
                Series { name: "ITI".into(), points: vec![(0.0, 0.2), (5.0, 0.4), (10.0, 0.6)] },
                Series { name: "random".into(), points: vec![(0.0, 0.2), (5.0, 0.21), (10.0, 0.19)] },
            ],
        };
        let svg = p.svg();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 6);
        for t in ["ITI", "random", "effect of α", "p(true)"] {
            assert!(svg.contains(t), "{t} missing");
        }
    }
}

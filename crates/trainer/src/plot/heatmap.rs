//! Heatmaps of a sweep (rows × columns of numbers in [0, 1]) as SVG, with labels and values, and
//! as PNG (the coloured grid; labels are in the SVG and the CSV).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// A grid of values with row and column labels.
pub struct Heatmap<'a> {
    /// Title above the grid.
    pub title: &'a str,
    /// Row labels (e.g. layers, or training constructions).
    pub rows: Vec<String>,
    /// Column labels (e.g. positions, or evaluation constructions).
    pub columns: Vec<String>,
    /// `values[row][column]`, `None` where not measured.
    pub values: Vec<Vec<Option<f32>>>,
    /// The value drawn darkest: colours span `[0, scale]`, and the cells show the values
    /// themselves (1 for shares; e.g. the largest log odds-ratio for nats).
    pub scale: f32,
    /// Axis names: (rows, columns).
    pub axes: (&'a str, &'a str),
}

/// White → dark blue over [0, 1].
fn colour(v: f32) -> [u8; 3] {
    let t = v.clamp(0.0, 1.0);
    let lerp = |a: f32, b: f32| (a + (b - a) * t).round() as u8;
    [lerp(247.0, 8.0), lerp(251.0, 48.0), lerp(255.0, 107.0)]
}

/// `s` with the characters XML reserves escaped, for SVG text.
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

impl Heatmap<'_> {
    /// The SVG text.
    pub fn svg(&self) -> String {
        let (cell_w, cell_h, left, top) = (70usize, 26usize, 150usize, 70usize);
        let (w, h) = (left + cell_w * self.columns.len() + 20, top + cell_h * self.rows.len() + 40);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ =
            writeln!(s, r#"<text x="{}" y="20" font-size="14" font-weight="bold">{}</text>"#, 10, escape(self.title));
        let _ =
            writeln!(s, r#"<text x="{}" y="{}" font-style="italic">{}</text>"#, left, top - 35, escape(self.axes.1));
        let _ = writeln!(s, r#"<text x="10" y="{}" font-style="italic">{}</text>"#, top - 10, escape(self.axes.0));
        for (j, c) in self.columns.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                left + j * cell_w + cell_w / 2,
                top - 8,
                escape(c)
            );
        }
        for (i, r) in self.rows.iter().enumerate() {
            let y = top + i * cell_h;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                left - 8,
                y + cell_h / 2 + 4,
                escape(r)
            );
            for (j, v) in self.values[i].iter().enumerate() {
                let x = left + j * cell_w;
                let (fill, text) = match v {
                    Some(v) => {
                        let [r, g, b] = colour(*v / self.scale);
                        (format!("rgb({r},{g},{b})"), format!("{v:.2}"))
                    }
                    None => ("rgb(230,230,230)".to_string(), "–".to_string()),
                };
                let ink = if v.is_some_and(|v| v / self.scale > 0.55) { "white" } else { "black" };
                let _ = writeln!(
                    s,
                    r#"<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" fill="{fill}" stroke="white"/>"#
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="middle" fill="{ink}">{text}</text>"#,
                    x + cell_w / 2,
                    y + cell_h / 2 + 4
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes `stem.svg` and `stem.png`.
    pub fn write(&self, stem: &Path) -> Result<()> {
        let svg = stem.with_extension("svg");
        crate::run_dir::write_atomic(&svg, self.svg().as_bytes())?;
        let cell = 24u32;
        let (w, h) = (cell * self.columns.len().max(1) as u32, cell * self.rows.len().max(1) as u32);
        let mut img = image::RgbImage::new(w, h);
        for (x, y, p) in img.enumerate_pixels_mut() {
            let (i, j) = ((y / cell) as usize, (x / cell) as usize);
            let v = self.values.get(i).and_then(|r| r.get(j)).copied().flatten();
            *p = image::Rgb(v.map_or([230, 230, 230], |v| colour(v / self.scale)));
            if x % cell == 0 || y % cell == 0 {
                *p = image::Rgb([255, 255, 255]);
            }
        }
        let png = stem.with_extension("png");
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut bytes, image::ImageFormat::Png)
            .with_context(|| format!("encoding {}", png.display()))?;
        crate::run_dir::write_atomic(&png, &bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_every_value_and_label() {
        let h = Heatmap {
            title: "IIA",
            rows: vec!["0".into(), "6".into()],
            columns: vec!["filler".into(), "verb".into()],
            values: vec![vec![Some(0.25), Some(1.0)], vec![None, Some(0.5)]],
            scale: 1.0,
            axes: ("layer", "position"),
        };
        let svg = h.svg();
        for t in ["0.25", "1.00", "0.50", "–", "filler", "verb", ">6<", "layer", "position"] {
            assert!(svg.contains(t), "{t} missing");
        }
        assert_eq!(svg.matches("<rect").count(), 1 + 4);
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let dir = tmp.path();
        h.write(&dir.join("map")).unwrap();
        let img = image::open(dir.join("map.png")).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (48, 48));
        assert_eq!(img.get_pixel(36, 12).0, colour(1.0), "row 0, column 1 is the darkest");
        assert_eq!(img.get_pixel(12, 36).0, [230, 230, 230], "missing values are grey");
    }
}

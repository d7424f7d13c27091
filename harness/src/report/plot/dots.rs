//! Accuracy comparisons as dot-and-whisker rows (a forest plot): per group, each seed as a faint
//! dot, the mean with its 95% Student-t interval, and the published number as a hollow diamond.
//! Rows are horizontal so long labels read on the left instead of overprinting under bars, and
//! no bar length suggests a ratio that a truncated axis would exaggerate.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::{self, Entry, Style, Swatch};

#[derive(Clone, Debug)]
pub struct DotRow {
    pub name: String,
    pub style: Style,
    pub seeds: Vec<f64>,
    pub mean: f64,
    /// Half-width of the 95% interval of the mean (none for one seed).
    pub ci: Option<f64>,
    /// Published numbers for this group in the plotted metric.
    pub published: Vec<f64>,
}

#[derive(Clone, Debug)]
pub struct Dots {
    pub title: String,
    pub subtitle: String,
    pub x: String,
    pub rows: Vec<DotRow>,
}

impl Dots {
    pub fn labels(&self) -> Vec<&String> {
        self.rows.iter().map(|r| &r.name).collect()
    }

    pub fn height(&self) -> u32 {
        (150 + 56 * self.rows.len() as u32).max(360)
    }

    fn x_range(&self) -> (f64, f64) {
        let vals = self.rows.iter().flat_map(|r| {
            let ci = r.ci.unwrap_or(0.0);
            r.seeds.iter().copied().chain([r.mean - ci, r.mean + ci]).chain(r.published.iter().copied())
        });
        let (lo, hi) = vals.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if !lo.is_finite() {
            return (0.0, 100.0);
        }
        let pad = ((hi - lo) * 0.08).max(0.25);
        // Accuracies live in [0, 100]: a two-seed interval reaching 110 is cut at the axis (with an
        // arrow) rather than squeezing every row.
        ((lo - pad).max(-0.5), (hi + pad).min(100.5))
    }

    pub fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let area = super::heading(root, &self.title, &self.subtitle)?;
        let mut entries = vec![
            Entry { swatch: Swatch::Whisker(style::INK), text: "mean, 95% CI".into() },
            Entry { swatch: Swatch::Dot(style::INK.mix(0.35)), text: "one seed".into() },
        ];
        if self.rows.iter().any(|r| !r.published.is_empty()) {
            entries.push(Entry { swatch: Swatch::Diamond, text: "published".into() });
        }
        let lw = style::legend_width(&area, &entries);
        let (plot, leg) = area.split_horizontally(area.dim_in_pixel().0 - lw);
        let label_w = self.rows.iter().map(|r| plot.estimate_text_size(&r.name, &style::font(style::LEGEND)).map(|s| s.0).unwrap_or(0)).max().unwrap_or(0);
        let label_w = (label_w + 24).min(plot.dim_in_pixel().0 / 2);
        let n = self.rows.len();
        let (x0, x1) = self.x_range();
        let mut c = ChartBuilder::on(&plot)
            .margin_top(8)
            .margin_right(24)
            .x_label_area_size(58)
            .y_label_area_size(label_w)
            .build_cartesian_2d(x0..x1, -0.6..(n as f64 - 0.4))?;
        style::mesh(&mut c, style::TICK).disable_y_mesh().y_labels(0).x_desc(self.x.as_str()).axis_desc_style(style::font(style::LABEL)).draw()?;
        let y_of = |i: usize| (n - 1 - i) as f64;
        for (i, r) in self.rows.iter().enumerate() {
            let y = y_of(i);
            c.draw_series(std::iter::once(PathElement::new(vec![(x0, y), (x1, y)], style::GRID.stroke_width(1))))?;
            // Seeds: faint dots, spread vertically (golden-ratio jitter) so equal values stay visible.
            let jitter = |k: usize| ((k as f64 * 0.618_034) % 1.0 - 0.5) * 0.36;
            c.draw_series(r.seeds.iter().enumerate().map(|(k, &v)| Circle::new((v, y + jitter(k)), 5, r.style.color.mix(0.35).filled())))?;
            if let Some(ci) = r.ci {
                let s = r.style.color.stroke_width(3);
                let (lo, hi) = ((r.mean - ci).max(x0), (r.mean + ci).min(x1));
                c.draw_series(std::iter::once(PathElement::new(vec![(lo, y), (hi, y)], s)))?;
                for (end, cut, dir) in [(lo, r.mean - ci < x0, -1), (hi, r.mean + ci > x1, 1)] {
                    let (px, py) = c.plotting_area().map_coordinate(&(end, y));
                    let cap = if cut { vec![(px - 9 * dir, py - 7), (px, py), (px - 9 * dir, py + 7)] } else { vec![(px, py - 9), (px, py + 9)] };
                    root.draw(&PathElement::new(cap, s))?;
                }
            }
            c.draw_series(std::iter::once(Circle::new((r.mean, y), 7, r.style.color.filled())))?;
            for &p in &r.published {
                let at = c.plotting_area().map_coordinate(&(p, y));
                root.draw(&style::diamond(at, 9))?;
            }
            let (lx, ly) = c.plotting_area().map_coordinate(&(x0, y));
            let f = style::font(style::LEGEND).pos(Pos::new(HPos::Right, VPos::Center));
            root.draw(&Text::new(r.name.clone(), (lx - 12, ly), f))?;
        }
        style::legend(&leg, &entries, 16)
    }
}

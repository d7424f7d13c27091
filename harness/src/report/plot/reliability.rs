//! Reliability diagrams (Guo et al. 2017, Fig. 1): per group a panel of binned accuracy bars, the
//! gap between each bar and the bin's mean confidence shaded (the term ECE sums), the diagonal of
//! perfect calibration, and under it the number of test samples per bin (log scale, with the
//! counts printed), so a bar resting on a handful of samples is seen as such. Bins are never
//! joined by lines: a sparse bin would make a zig-zag.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::style::{self, Entry, Style, Swatch};

/// One group's bins pooled over its finished seeds.
#[derive(Clone, Debug)]
pub struct Panel {
    pub name: String,
    pub style: Style,
    pub bins: crate::distill::metrics::Reliability,
}

#[derive(Clone, Debug)]
pub struct Reliability {
    pub title: String,
    pub subtitle: String,
    pub panels: Vec<Panel>,
}

const HEAD: u32 = 120;

impl Reliability {
    pub fn labels(&self) -> Vec<&String> {
        self.panels.iter().map(|p| &p.name).collect()
    }

    fn cols(&self) -> usize {
        self.panels.len().clamp(1, 3)
    }

    fn panel_size(&self) -> (u32, u32) {
        let w = style::WIDTH / self.cols().max(2) as u32;
        (w, w * 6 / 5)
    }

    pub fn height(&self) -> u32 {
        let rows = self.panels.len().div_ceil(self.cols()) as u32;
        HEAD + rows * self.panel_size().1
    }

    pub fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let area = super::heading(root, &self.title, &self.subtitle)?;
        let entries = [
            Entry { swatch: Swatch::Box(style::INK.mix(0.55)), text: "accuracy per bin (method colour)".into() },
            Entry { swatch: Swatch::Hatch, text: "gap to the bin's mean confidence".into() },
            Entry { swatch: Swatch::Line(Style { color: style::INK, variant: 1 }), text: "perfect calibration".into() },
        ];
        let (key, grid) = area.split_vertically(40);
        for (k, chunk) in key.split_evenly((1, 3)).iter().zip(entries.chunks(1)) {
            style::legend(k, chunk, 4)?;
        }
        let (pw, ph) = self.panel_size();
        for (i, p) in self.panels.iter().enumerate() {
            let (row, col) = (i / self.cols(), i % self.cols());
            let cell = grid.clone().shrink((col as u32 * pw, row as u32 * ph), (pw, ph));
            panel(&cell, p)?;
        }
        Ok(())
    }
}

fn panel<DB: DrawingBackend>(cell: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let p = &panel.bins;
    let (_, h) = cell.dim_in_pixel();
    let (top, bottom) = cell.split_vertically(h * 7 / 10);
    let bins = p.count.len().max(1);
    let width = 1.0 / bins as f64;
    let n: u64 = p.count.iter().sum();
    let caption = format!("{} (ECE {:.2}%, n = {n})", panel.name, 100.0 * p.ece());
    let mut c = ChartBuilder::on(&top)
        .caption(caption, style::font(style::TICK + 1))
        .margin(6)
        .margin_right(22)
        .x_label_area_size(8)
        .y_label_area_size(58)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    style::mesh(&mut c, style::TICK - 2).y_desc("accuracy").x_labels(0).draw()?;
    for b in (0..bins).filter(|&b| p.count[b] > 0) {
        let (lo, hi) = (b as f64 * width, (b + 1) as f64 * width);
        let acc = p.correct[b] / p.count[b] as f64;
        let conf = p.conf_sum[b] / p.count[b] as f64;
        c.draw_series(std::iter::once(Rectangle::new([(lo, 0.0), (hi, acc)], panel.style.color.mix(0.85).filled())))?;
        c.draw_series(std::iter::once(Rectangle::new([(lo, 0.0), (hi, acc)], WHITE.stroke_width(1))))?;
        let (a, b) = (c.plotting_area().map_coordinate(&(lo, acc)), c.plotting_area().map_coordinate(&(hi, conf)));
        let base = cell.get_base_pixel();
        style::hatch(cell, (a.0 - base.0, a.1 - base.1), (b.0 - base.0, b.1 - base.1))?;
    }
    c.draw_series(DashedLineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], 8, 6, style::INK.stroke_width(2)))?;
    let max = p.count.iter().copied().max().unwrap_or(1).max(1) as f64;
    let mut k = ChartBuilder::on(&bottom)
        .margin(6)
        .margin_right(22)
        .x_label_area_size(44)
        .y_label_area_size(58)
        .build_cartesian_2d(0f64..1f64, (0.8f64..max * 6.0).log_scale())?;
    style::mesh(&mut k, style::TICK - 2).x_desc("confidence").y_desc("samples").y_labels(3).x_labels(6).draw()?;
    for b in (0..bins).filter(|&b| p.count[b] > 0) {
        let (lo, hi) = (b as f64 * width, (b + 1) as f64 * width);
        let cnt = p.count[b] as f64;
        k.draw_series(std::iter::once(Rectangle::new([(lo, 0.8), (hi, cnt)], style::INK.mix(0.45).filled())))?;
        let at = k.plotting_area().map_coordinate(&((lo + hi) / 2.0, cnt));
        let f = style::font(11).pos(Pos::new(HPos::Center, VPos::Bottom));
        cell.draw(&Text::new(compact(p.count[b]), (at.0 - cell.get_base_pixel().0, at.1 - cell.get_base_pixel().1 - 2), f))?;
    }
    Ok(())
}

/// A count in at most four characters: 7, 523, 1.2k, 12k.
fn compact(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        1000..=9_999 => format!("{:.1}k", n as f64 / 1000.0),
        _ => format!("{}k", n / 1000),
    }
}

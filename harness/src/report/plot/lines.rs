//! Line charts: learning curves with a ±std band over seeds, and student-vs-teacher points with
//! error bars; legend to the right of the axes.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::style::{self, Entry, Style, Swatch};

/// One series; `band` shades (x, low, high), `err` draws vertical error bars at the points.
#[derive(Clone, Debug)]
pub struct Line {
    pub name: String,
    pub style: Style,
    pub points: Vec<(f64, f64)>,
    pub band: Option<Vec<(f64, f64, f64)>>,
    pub err: Vec<Option<f64>>,
    pub markers: bool,
}

#[derive(Clone, Debug)]
pub struct Lines {
    pub title: String,
    /// What the band or bars mean, under the title.
    pub subtitle: String,
    pub x: String,
    pub y: String,
    pub series: Vec<Line>,
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
}

pub const HEIGHT: u32 = 600;

impl Lines {
    pub fn labels(&self) -> Vec<&String> {
        self.series.iter().map(|s| &s.name).collect()
    }

    pub fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let area = super::heading(root, &self.title, &self.subtitle)?;
        let entries: Vec<Entry> = self
            .series
            .iter()
            .map(|s| Entry { swatch: if s.band.is_some() { Swatch::Band(s.style) } else { Swatch::Line(s.style) }, text: s.name.clone() })
            .collect();
        let lw = style::legend_width(&area, &entries);
        let (plot, leg) = area.split_horizontally(area.dim_in_pixel().0 - lw);
        let mut c = ChartBuilder::on(&plot)
            .margin_top(8)
            .margin_right(24)
            .margin_left(8)
            .x_label_area_size(58)
            .y_label_area_size(78)
            .build_cartesian_2d(self.x_range.0..self.x_range.1, self.y_range.0..self.y_range.1)?;
        style::mesh(&mut c, style::TICK).x_desc(self.x.as_str()).y_desc(self.y.as_str()).axis_desc_style(style::font(style::LABEL)).draw()?;
        for s in &self.series {
            if let Some(band) = &s.band {
                let mut poly: Vec<(f64, f64)> = band.iter().map(|&(x, _, hi)| (x, hi)).collect();
                poly.extend(band.iter().rev().map(|&(x, lo, _)| (x, lo)));
                c.draw_series(std::iter::once(Polygon::new(poly, s.style.color.mix(0.15).filled())))?;
            }
        }
        for s in &self.series {
            style::series(&mut c, &s.points, s.style, 3)?;
            let color = s.style.color;
            if s.markers {
                c.draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
            }
            let bars = s.points.iter().zip(&s.err).filter_map(|(&(x, y), e)| e.map(|e| ErrorBar::new_vertical(x, y - e, y, y + e, color.stroke_width(2), 12)));
            c.draw_series(bars)?;
        }
        style::legend(&leg, &entries, 16)
    }
}

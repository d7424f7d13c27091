//! Colours, line styles, fonts and the legend that every plot shares: one colour per method
//! across a report (Okabe–Ito, then Paul Tol's muted scheme: both colour-blind safe), settings
//! of one method told apart by dash and marker, and legends drawn beside the data, never on it.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::super::{Group, Report, label};
use crate::suite::Role;

/// Okabe & Ito (2008) without black and yellow (too faint on white), then Tol's muted scheme.
const PALETTE: [RGBColor; 15] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(51, 34, 136),   // Tol indigo
    RGBColor(136, 34, 85),   // Tol wine
    RGBColor(153, 153, 51),  // Tol olive
    RGBColor(68, 170, 153),  // Tol teal
    RGBColor(204, 102, 119), // Tol rose
    RGBColor(170, 68, 153),  // Tol purple
    RGBColor(17, 119, 51),   // Tol green
    RGBColor(221, 204, 119), // Tol sand
    RGBColor(136, 204, 238), // Tol cyan
];
/// Teachers: not a method under study, so neutral.
pub const TEACHER: RGBColor = RGBColor(90, 90, 90);
pub const INK: RGBColor = RGBColor(30, 30, 30);
pub const GRID: RGBColor = RGBColor(225, 225, 225);

/// Font sizes in pixels at the plots' native width ([`WIDTH`]), which the HTML shows 1:1.
pub const TITLE: u32 = 24;
pub const LABEL: u32 = 19;
pub const TICK: u32 = 16;
pub const LEGEND: u32 = 17;
pub const WIDTH: u32 = 1100;

/// How one series is drawn: its method's colour; `variant` (its rank among the series of its
/// method in the same plot) picks the dash pattern.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Style {
    pub color: RGBColor,
    pub variant: usize,
}

impl Style {
    pub const fn plain(color: RGBColor) -> Style {
        Style { color, variant: 0 }
    }
}

/// Method colours of a report, fixed once (in order of first appearance) so a method has one
/// colour in every plot; teachers are grey.
pub struct Styles {
    methods: Vec<String>,
}

impl Styles {
    pub fn of(r: &Report) -> Styles {
        let mut methods: Vec<String> = Vec::new();
        for g in r.groups.iter().filter(|g| r.head(g).spec.role == Role::Student) {
            let m = &r.head(g).spec.method;
            if !methods.contains(m) {
                methods.push(m.clone());
            }
        }
        Styles { methods }
    }

    /// Styles of the series of one plot: method colour, and a dash variant per further series of
    /// the same method (past 15 methods colours repeat, told apart by the variant too).
    pub fn within(&self, r: &Report, groups: &[&Group]) -> Vec<Style> {
        let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        groups
            .iter()
            .map(|g| {
                let h = r.head(g);
                if h.spec.role == Role::Teacher {
                    return Style::plain(TEACHER);
                }
                let m = self.methods.iter().position(|m| *m == h.spec.method).unwrap_or(0);
                let k = seen.entry(h.spec.method.as_str()).or_default();
                *k += 1;
                Style { color: PALETTE[m % PALETTE.len()], variant: *k - 1 + m / PALETTE.len() }
            })
            .collect()
    }
}

/// A tick label with only the decimals it needs: 5, 0.25, 97.5 (not 5.0, 0.250).
pub fn tick(v: &f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// Diagonal hatching (45°, every 7 px) of a pixel rectangle: marks a region without a colour
/// of its own, so it reads on top of any method's colour.
pub fn hatch<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, (x0, y0): (i32, i32), (x1, y1): (i32, i32)) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (x0, x1, y0, y1) = (x0.min(x1), x0.max(x1), y0.min(y1), y0.max(y1));
    let (w, h) = (x1 - x0, y1 - y0);
    let ink = INK.mix(0.75).stroke_width(1);
    for k in (0..w + h).step_by(7) {
        let (s0, s1) = ((k - h).max(0), k.min(w));
        if s0 <= s1 {
            area.draw(&PathElement::new(vec![(x0 + s0, y1 - (k - s0)), (x0 + s1, y1 - (k - s1))], ink))?;
        }
    }
    area.draw(&Rectangle::new([(x0, y0), (x1, y1)], INK.mix(0.75).stroke_width(1)))
}

/// The mesh every chart shares: a light grid, axis texts of `size` px, ticks without needless
/// decimals; callers add axis names and tick counts.
pub fn mesh<'a, 'b, DB, X, Y>(c: &'b mut ChartContext<'a, DB, Cartesian2d<X, Y>>, size: u32) -> plotters::chart::MeshStyle<'a, 'b, X, Y, DB>
where
    DB: DrawingBackend,
    X: plotters::coord::ranged1d::Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut m = c.configure_mesh();
    m.axis_desc_style(font(size)).label_style(font(size)).light_line_style(WHITE).bold_line_style(GRID).x_label_formatter(&tick).y_label_formatter(&tick);
    m
}

pub fn font(size: u32) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&INK)
}

/// Dash and gap lengths of a variant: solid, dashed, dotted, long-dashed.
pub fn dashes(variant: usize) -> Option<(u32, u32)> {
    [None, Some((10, 6)), Some((3, 4)), Some((16, 5))][variant % 4]
}

/// Draws a polyline in data coordinates in the style's colour and dash pattern.
pub fn series<DB: DrawingBackend>(
    c: &mut ChartContext<DB, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>,
    pts: &[(f64, f64)],
    style: Style,
    width: u32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let s = style.color.stroke_width(width);
    match dashes(style.variant) {
        None => c.draw_series(LineSeries::new(pts.to_vec(), s)).map(|_| ()),
        Some((d, g)) => c.draw_series(DashedLineSeries::new(pts.to_vec(), d, g, s)).map(|_| ()),
    }
}

/// Draws a polyline in pixels in the style's colour and dash pattern (legend swatches).
pub fn line<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    pts: &[(i32, i32)],
    style: Style,
    width: u32,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let s = style.color.stroke_width(width);
    match dashes(style.variant) {
        None => area.draw(&PathElement::new(pts.to_vec(), s)),
        Some((d, g)) => area.draw(&plotters::element::DashedPathElement::new(pts.iter().copied(), d, g, s)),
    }
}

/// One legend entry: a line swatch (`line`), a filled marker, or a hollow diamond.
#[derive(Clone, Debug)]
pub enum Swatch {
    Line(Style),
    Band(Style),
    Dot(RGBAColor),
    Whisker(RGBColor),
    Diamond,
    Box(RGBAColor),
    Hatch,
}

pub struct Entry {
    pub swatch: Swatch,
    pub text: String,
}

/// Splits `text` into lines no wider than `max` pixels, at spaces.
fn wrap<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, text: &str, max: u32) -> Vec<String> {
    let f = font(LEGEND);
    let width = |s: &str| area.estimate_text_size(s, &f).map(|(w, _)| w).unwrap_or(s.len() as u32 * 9);
    let mut out: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match out.last_mut() {
            Some(l) if width(&format!("{l} {word}")) <= max => {
                l.push(' ');
                l.push_str(word);
            }
            _ => out.push(word.to_string()),
        }
    }
    out
}

const SWATCH: i32 = 34;
const ROW: i32 = 24;

/// Width a right-hand legend needs (swatch + longest label), capped at a third of the plot.
pub fn legend_width<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[Entry]) -> u32 {
    let f = font(LEGEND);
    let longest = entries.iter().map(|e| area.estimate_text_size(&e.text, &f).map(|(w, _)| w).unwrap_or(0)).max().unwrap_or(0);
    (longest + SWATCH as u32 + 30).clamp(140, area.dim_in_pixel().0 / 3)
}

/// Draws the legend entries top-down in `area` (beside the chart), wrapping long labels.
pub fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[Entry], top: i32) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (w, _) = area.dim_in_pixel();
    let mut y = top;
    for e in entries {
        let lines = wrap(area, &e.text, w.saturating_sub(SWATCH as u32 + 16));
        let cy = y + ROW / 2;
        let (x0, x1) = (6, 6 + SWATCH - 8);
        match &e.swatch {
            Swatch::Line(s) => line(area, &[(x0, cy), (x1, cy)], *s, 3)?,
            Swatch::Band(s) => {
                area.draw(&Rectangle::new([(x0, cy - 7), (x1, cy + 7)], s.color.mix(0.18).filled()))?;
                line(area, &[(x0, cy), (x1, cy)], *s, 3)?;
            }
            Swatch::Dot(c) => area.draw(&Circle::new(((x0 + x1) / 2, cy), 6, c.filled()))?,
            Swatch::Whisker(c) => {
                area.draw(&PathElement::new(vec![(x0, cy), (x1, cy)], c.stroke_width(2)))?;
                area.draw(&PathElement::new(vec![(x0, cy - 6), (x0, cy + 6)], c.stroke_width(2)))?;
                area.draw(&PathElement::new(vec![(x1, cy - 6), (x1, cy + 6)], c.stroke_width(2)))?;
                area.draw(&Circle::new(((x0 + x1) / 2, cy), 6, c.filled()))?;
            }
            Swatch::Diamond => area.draw(&diamond(((x0 + x1) / 2, cy), 8))?,
            Swatch::Box(c) => area.draw(&Rectangle::new([(x0, cy - 8), (x1, cy + 8)], c.filled()))?,
            Swatch::Hatch => hatch(area, (x0, cy - 8), (x1, cy + 8))?,
        }
        for (k, l) in lines.iter().enumerate() {
            let ty = y + 3 + k as i32 * (LEGEND as i32 + 3);
            area.draw(&Text::new(l.clone(), (SWATCH + 6, ty), font(LEGEND)))?;
        }
        y += (lines.len() as i32 - 1) * (LEGEND as i32 + 3) + ROW + 6;
    }
    Ok(())
}

/// The published-number marker: a hollow black diamond (never a method colour).
pub fn diamond(at: (i32, i32), r: i32) -> PathElement<(i32, i32)> {
    let (x, y) = at;
    PathElement::new(vec![(x, y - r), (x + r, y), (x, y + r), (x - r, y), (x, y - r)], BLACK.stroke_width(3))
}

/// Whether every legend/axis label is free of placeholders and config paths (see
/// [`label::is_clean`]); a chart with such a label is a bug, not a file to write.
pub fn check_labels<'a>(labels: impl IntoIterator<Item = &'a String>) -> anyhow::Result<()> {
    for l in labels {
        anyhow::ensure!(label::is_clean(l), "internal: plot label `{l}` holds a placeholder or a config path");
    }
    Ok(())
}

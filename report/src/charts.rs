//! Chart descriptions (plain data: what to draw) and their rendering with plotters, to PNG and
//! SVG. The figures module fills the descriptions from a results folder; this module knows
//! nothing of decoding, only of bars, points and lines.
//!
//! Text is drawn with DejaVu Sans, embedded in the binary and registered with plotters'
//! `ab_glyph` font backend, so a chart looks the same on every machine and needs no system
//! fonts. Sizes are set for a 1000 px wide image viewed at 100 %. plotters' size is the line
//! height; the glyphs' em is about 0.86 of it in the PNG (DejaVu's ascent + descent is 1.16 em)
//! and plotters writes size / 1.24 as the SVG font-size, so 20 px tick labels and legend keep
//! text at ≥ 16 px in both; axis titles 22 px, chart titles 28 px.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

/// Pixel width of every chart.
pub const WIDTH: u32 = 1000;
const TITLE_PX: u32 = 28;
const AXIS_PX: u32 = 22;
const TICK_PX: u32 = 20;
const LEGEND_PX: u32 = 20;
const FONT: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Tableau 10: distinct at a glance, and still distinct for the common colour blindnesses.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One chart: a file stem (`charts/<stem>.png`, `.svg`), a title, a one-line caption for the
/// page, and what to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub stem: String,
    pub title: String,
    pub caption: String,
    pub kind: ChartKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChartKind {
    Bars(Bars),
    Xy(Xy),
    Columns(Columns),
    Stacked(Stacked),
}

/// Horizontal bars, one band per row (top to bottom), the series present in a row sharing its
/// band; optional whiskers (a confidence interval) and a vertical reference line.
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    pub rows: Vec<String>,
    pub series: Vec<BarSeries>,
    pub value_label: String,
    /// A vertical line at this value, with its legend text (e.g. greedy's 1.0).
    pub reference: Option<(f64, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BarSeries {
    pub name: String,
    /// One per row.
    pub values: Vec<Option<Bar>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    pub value: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

/// Points and lines on two numeric axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Xy {
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<XySeries>,
    /// Draw y = x (measured vs predicted).
    pub diagonal: bool,
    /// Start the axis at 0 even when the data does not reach it.
    pub x_from_zero: bool,
    pub y_from_zero: bool,
    /// The x values are whole numbers (depths, ranks): ticks only at whole numbers.
    pub x_integer: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct XySeries {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Join the points (in the order given) with a line.
    pub line: bool,
    pub style: PointStyle,
    /// A text beside each point (empty: none). For the few points worth naming.
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PointStyle {
    /// A filled circle in the series' colour.
    Dot,
    /// A larger ring: marks a point set drawn over others (the Pareto front).
    Ring,
    /// A black cross: a reference point (greedy).
    Cross,
}

/// Vertical grouped bars over categories (a histogram's bins).
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub series: Vec<ColumnSeries>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSeries {
    pub name: String,
    /// One per category.
    pub values: Vec<Option<f64>>,
}

/// Horizontal stacked bars: each row's parts, drawn left to right.
#[derive(Debug, Clone, PartialEq)]
pub struct Stacked {
    pub rows: Vec<String>,
    pub parts: Vec<String>,
    /// `values[row][part]`, ≥ 0.
    pub values: Vec<Vec<f64>>,
    pub value_label: String,
}

/// The files one chart was written to.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartFiles {
    pub png: PathBuf,
    pub svg: PathBuf,
    /// The PNG's bytes, for embedding in the page.
    pub png_bytes: Vec<u8>,
}

type DrawResult = std::result::Result<(), Box<dyn Error>>;

/// A categorical axis as a continuous one: `n` unit bands over `0..n`, a tick (and its label)
/// at the centre of each. Bands, unlike plotters' segmented axes, let grouped bars sit at any
/// fraction of a band.
#[derive(Clone)]
struct Bands {
    n: usize,
    inner: RangedCoordf64,
}

impl Bands {
    fn new(n: usize) -> Self {
        Self { n, inner: (0f64..n as f64).into() }
    }
}

impl Ranged for Bands {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            (0..self.n).map(|i| i as f64 + 0.5).collect()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.n as f64
    }
}

/// Registers the embedded font once. plotters' ab_glyph backend looks fonts up by family name
/// in a process-wide table, so "sans-serif" must be there before the first text is drawn.
fn font_ready() -> Result<()> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ok = *READY.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font could not be loaded"))
    }
}

/// How a legend entry shows its series.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Swatch {
    Block(RGBColor),
    Line(RGBColor),
    Dot(RGBColor, bool),
    Ring(RGBColor, bool),
    Cross,
}

/// Series colours of an XY chart: reference crosses are black, the others take the palette in
/// order.
fn xy_colors(x: &Xy) -> Vec<RGBColor> {
    let mut next = 0;
    x.series
        .iter()
        .map(|s| match s.style {
            PointStyle::Cross => BLACK,
            _ => {
                next += 1;
                color(next - 1)
            }
        })
        .collect()
}

const DIAGONAL_GREY: RGBColor = RGBColor(110, 110, 110);

/// The legend of a chart: one entry per series (and reference line). Empty when there is only
/// one series: the title and axis say what it is.
fn legend_entries(chart: &Chart) -> Vec<(String, Swatch)> {
    let mut e: Vec<(String, Swatch)> = match &chart.kind {
        ChartKind::Bars(b) => {
            let mut e: Vec<_> = b.series.iter().enumerate().map(|(i, s)| (s.name.clone(), Swatch::Block(color(i)))).collect();
            if let Some((_, name)) = &b.reference {
                e.push((name.clone(), Swatch::Line(BLACK)));
            }
            e
        }
        ChartKind::Xy(x) => {
            let mut e = Vec::new();
            if x.diagonal {
                e.push(("measured = predicted".to_string(), Swatch::Line(DIAGONAL_GREY)));
            }
            for (s, c) in x.series.iter().zip(xy_colors(x)) {
                let line = s.line && s.points.len() > 1;
                e.push((
                    s.name.clone(),
                    match s.style {
                        PointStyle::Dot => Swatch::Dot(c, line),
                        PointStyle::Ring => Swatch::Ring(c, line),
                        PointStyle::Cross => Swatch::Cross,
                    },
                ));
            }
            e
        }
        ChartKind::Columns(c) => c.series.iter().enumerate().map(|(i, s)| (s.name.clone(), Swatch::Block(color(i)))).collect(),
        ChartKind::Stacked(s) => s.parts.iter().enumerate().map(|(i, p)| (p.clone(), Swatch::Block(color(i)))).collect(),
    };
    if e.len() < 2 {
        e.clear();
    }
    e
}

const SWATCH_W: i32 = 30;
const LEGEND_ROW: i32 = 32;

/// Width in pixels of `text` in the legend font.
fn text_width(text: &str) -> i32 {
    (FONT, LEGEND_PX)
        .into_font()
        .box_size(text)
        .map_or_else(|_| (text.chars().count() as f64 * LEGEND_PX as f64 * 0.6) as i32, |(w, _)| w as i32)
}

/// Legend entries placed left to right, wrapping at `width`: (entry index, x, row).
fn legend_layout(entries: &[(String, Swatch)], width: i32) -> Vec<(usize, i32, i32)> {
    let mut out = Vec::new();
    let (mut x, mut row) = (0, 0);
    for (i, (name, _)) in entries.iter().enumerate() {
        let w = SWATCH_W + 8 + text_width(name) + 28;
        if x > 0 && x + w > width {
            x = 0;
            row += 1;
        }
        out.push((i, x, row));
        x += w;
    }
    out
}

/// Pixels of legend strip under the plot.
fn legend_height(entries: &[(String, Swatch)]) -> u32 {
    if entries.is_empty() {
        return 0;
    }
    let rows = legend_layout(entries, WIDTH as i32 - 60).iter().map(|e| e.2).max().unwrap_or(0) + 1;
    (rows * LEGEND_ROW + 16) as u32
}

/// Pixel height: bar charts grow with their rows so that labels never overlap; the legend
/// strip adds its rows.
fn height(chart: &Chart) -> u32 {
    let plot = match &chart.kind {
        ChartKind::Bars(b) => {
            let per_row: usize = b
                .rows
                .iter()
                .enumerate()
                .map(|(i, _)| b.series.iter().filter(|s| s.values.get(i).copied().flatten().is_some()).count().max(1))
                .map(|n| if n == 1 { 38 } else { 12 + 26 * n })
                .sum();
            (per_row as u32 + 170).max(400)
        }
        ChartKind::Stacked(s) => (s.rows.len() as u32 * 46 + 170).max(320),
        _ => 580,
    };
    plot + TITLE_PX + 24 + legend_height(&legend_entries(chart))
}

/// Writes `dir/<stem>.png` and `dir/<stem>.svg`.
pub fn render(chart: &Chart, dir: &Path) -> Result<ChartFiles> {
    font_ready()?;
    let (w, h) = (WIDTH, height(chart));
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(&root, chart).map_err(|e| anyhow!("chart `{}`: {e}", chart.stem))?;
        root.present().map_err(|e| anyhow!("chart `{}`: {e}", chart.stem))?;
    }
    let png_bytes = encode_png(&rgb, w, h)?;
    let png = dir.join(format!("{}.png", chart.stem));
    std::fs::write(&png, &png_bytes).with_context(|| format!("cannot write {}", png.display()))?;

    let mut svg_text = String::new();
    {
        let root = SVGBackend::with_string(&mut svg_text, (w, h)).into_drawing_area();
        draw(&root, chart).map_err(|e| anyhow!("chart `{}` (SVG): {e}", chart.stem))?;
        root.present().map_err(|e| anyhow!("chart `{}` (SVG): {e}", chart.stem))?;
    }
    let svg = dir.join(format!("{}.svg", chart.stem));
    std::fs::write(&svg, svg_text).with_context(|| format!("cannot write {}", svg.display()))?;
    Ok(ChartFiles { png, svg, png_bytes })
}

/// RGB8 → PNG with the `png` crate (plotters' own encoder would pull in the whole `image` crate).
fn encode_png(rgb: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().context("PNG header")?;
        writer.write_image_data(rgb).context("PNG data")?;
        writer.finish().context("PNG end")?;
    }
    Ok(out)
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.margin(10, 6, 10, 25);
    let (title_area, body) = root.split_vertically(TITLE_PX + 24);
    title_area.draw(&Text::new(chart.title.clone(), (0, 6), TextStyle::from((FONT, TITLE_PX).into_font()).color(&BLACK)))?;
    let entries = legend_entries(chart);
    let strip = legend_height(&entries);
    let (plot, legend) = body.split_vertically(body.dim_in_pixel().1.saturating_sub(strip));
    match &chart.kind {
        ChartKind::Bars(b) => draw_bars(&plot, b)?,
        ChartKind::Xy(x) => draw_xy(&plot, x)?,
        ChartKind::Columns(c) => draw_columns(&plot, c)?,
        ChartKind::Stacked(s) => draw_stacked(&plot, s)?,
    }
    draw_legend(&legend, &entries)
}

/// The legend as a strip under the plot, where it can never cover data.
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[(String, Swatch)]) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let font = TextStyle::from((FONT, LEGEND_PX).into_font()).color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    let left = 20;
    for (i, x, row) in legend_layout(entries, area.dim_in_pixel().0 as i32 - 60) {
        let (name, swatch) = &entries[i];
        let (x, y) = (left + x, 10 + row * LEGEND_ROW + LEGEND_ROW / 2);
        let mid = x + SWATCH_W / 2;
        match *swatch {
            Swatch::Block(c) => area.draw(&Rectangle::new([(x + 4, y - 8), (x + SWATCH_W - 4, y + 8)], c.mix(0.85).filled()))?,
            Swatch::Line(c) => area.draw(&PathElement::new(vec![(x, y), (x + SWATCH_W, y)], c.stroke_width(3)))?,
            Swatch::Dot(c, line) | Swatch::Ring(c, line) => {
                if line {
                    area.draw(&PathElement::new(vec![(x, y), (x + SWATCH_W, y)], c.stroke_width(3)))?;
                }
                if matches!(swatch, Swatch::Dot(..)) {
                    area.draw(&Circle::new((mid, y), 6, c.filled()))?;
                } else {
                    area.draw(&Circle::new((mid, y), 9, c.stroke_width(3)))?;
                }
            }
            Swatch::Cross => area.draw(&Cross::new((mid, y), 7, BLACK.stroke_width(3)))?,
        }
        area.draw(&Text::new(name.clone(), (x + SWATCH_W + 8, y), font.clone()))?;
    }
    Ok(())
}

/// A row label cut to what fits the label area.
fn fit(label: &str, max_chars: usize) -> String {
    if label.chars().count() <= max_chars {
        label.to_string()
    } else {
        format!("{}…", label.chars().take(max_chars.saturating_sub(1)).collect::<String>())
    }
}

/// Label area width (px) for the longest row label, measured in the tick font; labels longer
/// than 60 characters are cut (the tables carry the full names).
fn label_area(rows: &[String]) -> (u32, usize) {
    const MAX_CHARS: usize = 60;
    let font = (FONT, TICK_PX).into_font();
    let widest = rows
        .iter()
        .map(|r| {
            let t = fit(r, MAX_CHARS);
            font.box_size(&t).map_or((t.chars().count() as f64 * TICK_PX as f64 * 0.6) as u32, |(w, _)| w)
        })
        .max()
        .unwrap_or(40);
    (widest + 22, MAX_CHARS)
}

/// Axis range over `values` padded by 6 % each side; `from_zero` pins the low end at 0 (bars
/// and shares must start there to be read honestly).
fn range(values: impl IntoIterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, hi) =
        values.into_iter().filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    if (hi - lo).abs() < 1e-12 {
        let pad = if hi.abs() > 1e-12 { hi.abs() * 0.1 } else { 1.0 };
        return (lo - if from_zero && lo >= 0.0 { 0.0 } else { pad }, hi + pad);
    }
    let pad = (hi - lo) * 0.06;
    (if from_zero && lo >= 0.0 { lo } else { lo - pad }, hi + pad)
}

fn tick_style() -> TextStyle<'static> {
    TextStyle::from((FONT, TICK_PX).into_font()).color(&BLACK)
}

fn axis_style() -> TextStyle<'static> {
    TextStyle::from((FONT, AXIS_PX).into_font()).color(&BLACK)
}

/// Grid lines: the bold ones at the ticks only; the light ones plotters adds between ticks
/// make a dense mesh that reads as noise at this size.
const GRID: RGBColor = RGBColor(215, 215, 215);

/// Tick label for a numeric axis: no trailing zeros, at most 3 decimals.
fn num(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// The label of band `y` (a band centre) of `rows`, top to bottom.
fn band_label(rows: &[String], y: f64, max_chars: usize) -> String {
    let n = rows.len() as f64;
    let i = (n - y - 0.5).round();
    if i >= 0.0 && (i as usize) < rows.len() {
        fit(&rows[i as usize], max_chars)
    } else {
        String::new()
    }
}

fn draw_bars<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, b: &Bars) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let n = b.rows.len().max(1);
    // Every series present in a row shares its band; row i's band is [n-i-1, n-i] on the y axis.
    let per_row: Vec<Vec<usize>> =
        (0..n).map(|i| (0..b.series.len()).filter(|&s| b.series[s].values.get(i).copied().flatten().is_some()).collect()).collect();
    let all = b.series.iter().flat_map(|s| s.values.iter().flatten().flat_map(|v| [Some(v.value), v.low, v.high]).flatten());
    let (lo, hi) = range(all.chain(b.reference.as_ref().map(|r| r.0)), true);
    let (label_w, max_chars) = label_area(&b.rows);
    let mut chart = ChartBuilder::on(area)
        .margin_right(24)
        .x_label_area_size(62)
        .y_label_area_size(label_w)
        .build_cartesian_2d(lo..hi, Bands::new(n))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|y: &f64| band_label(&b.rows, *y, max_chars))
        .x_label_formatter(&|x: &f64| num(*x))
        .x_desc(b.value_label.as_str())
        .label_style(tick_style())
        .axis_desc_style(axis_style())
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .draw()?;
    for (s, series) in b.series.iter().enumerate() {
        let c = color(s);
        let mut rects = Vec::new();
        let mut whiskers = Vec::new();
        for (i, present) in per_row.iter().enumerate() {
            let Some(v) = series.values.get(i).copied().flatten() else { continue };
            let k = present.len() as f64;
            let j = present.iter().position(|&x| x == s).unwrap_or(0) as f64;
            let band_top = n as f64 - i as f64 - 0.12;
            let h = 0.76 / k;
            let (top, bottom) = (band_top - j * h, band_top - (j + 1.0) * h);
            rects.push(Rectangle::new([(0f64.max(lo), top), (v.value, bottom)], c.mix(0.85).filled()));
            if let (Some(l), Some(u)) = (v.low, v.high) {
                let mid = (top + bottom) / 2.0;
                let cap = h * 0.3;
                whiskers.push(PathElement::new(vec![(l, mid), (u, mid)], BLACK.stroke_width(2)));
                whiskers.push(PathElement::new(vec![(l, mid - cap), (l, mid + cap)], BLACK.stroke_width(2)));
                whiskers.push(PathElement::new(vec![(u, mid - cap), (u, mid + cap)], BLACK.stroke_width(2)));
            }
        }
        chart.draw_series(rects)?;
        chart.draw_series(whiskers)?;
    }
    if let Some((x, _)) = &b.reference {
        chart.draw_series(std::iter::once(PathElement::new(vec![(*x, 0.0), (*x, n as f64)], BLACK.stroke_width(2))))?;
    }
    Ok(())
}

fn draw_xy<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, x: &Xy) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let xs = x.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = x.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (mut x0, mut x1) = range(xs, x.x_from_zero);
    let (mut y0, mut y1) = range(ys, x.y_from_zero);
    if x.diagonal {
        // One square range so that the diagonal is at 45°.
        (x0, x1, y0, y1) = (x0.min(y0), x1.max(y1), x0.min(y0), x1.max(y1));
    }
    let mut chart =
        ChartBuilder::on(area).margin_right(24).x_label_area_size(62).y_label_area_size(96).build_cartesian_2d(x0..x1, y0..y1)?;
    // Whole-number x (depths, ranks): one tick per whole number when they are few.
    let whole = (x1.floor() - x0.ceil()) as usize + 1;
    let x_ticks = if x.x_integer && whole <= 16 { whole.max(2) } else { 10 };
    let integer = x.x_integer;
    chart
        .configure_mesh()
        .x_desc(x.x_label.as_str())
        .y_desc(x.y_label.as_str())
        .x_labels(x_ticks)
        .x_label_formatter(&|v: &f64| if integer && v.fract().abs() > 1e-9 { String::new() } else { num(*v) })
        .y_label_formatter(&|v: &f64| num(*v))
        .label_style(tick_style())
        .axis_desc_style(axis_style())
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .draw()?;
    if x.diagonal {
        chart.draw_series(std::iter::once(PathElement::new(vec![(x0, x0), (x1, x1)], DIAGONAL_GREY.stroke_width(2))))?;
    }
    let label_style = TextStyle::from((FONT, TICK_PX).into_font()).color(&BLACK);
    for (s, c) in x.series.iter().zip(xy_colors(x)) {
        if s.line && s.points.len() > 1 {
            chart.draw_series(std::iter::once(PathElement::new(s.points.clone(), c.stroke_width(3))))?;
        }
        match s.style {
            PointStyle::Dot => chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 6, c.filled())))?,
            PointStyle::Ring => chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 11, c.stroke_width(3))))?,
            PointStyle::Cross => chart.draw_series(s.points.iter().map(|&p| Cross::new(p, 9, c.stroke_width(3))))?,
        };
        // Point labels: to the right of the point, or to its left in the right third.
        let texts = s.points.iter().zip(&s.labels).filter(|(_, l)| !l.is_empty()).map(|(&p, l)| {
            let right_side = p.0 > x0 + (x1 - x0) * 0.66;
            let (pos, dx) = if right_side { (Pos::new(HPos::Right, VPos::Bottom), -14) } else { (Pos::new(HPos::Left, VPos::Bottom), 14) };
            EmptyElement::at(p) + Text::new(l.clone(), (dx, -6), label_style.clone().pos(pos))
        });
        chart.draw_series(texts.collect::<Vec<_>>())?;
    }
    Ok(())
}

fn draw_columns<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &Columns) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let n = c.categories.len().max(1);
    let k = c.series.len().max(1) as f64;
    let (_, hi) = range(c.series.iter().flat_map(|s| s.values.iter().flatten().copied()), true);
    let mut chart =
        ChartBuilder::on(area).margin_right(24).x_label_area_size(62).y_label_area_size(96).build_cartesian_2d(Bands::new(n), 0f64..hi)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x: &f64| {
            let i = (x - 0.5).round();
            if i >= 0.0 && (i as usize) < c.categories.len() {
                c.categories[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v: &f64| num(*v))
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .label_style(tick_style())
        .axis_desc_style(axis_style())
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .draw()?;
    for (s, series) in c.series.iter().enumerate() {
        let col = color(s);
        let w = 0.8 / k;
        let rects = series.values.iter().enumerate().filter_map(|(i, v)| {
            let v = (*v)?;
            let left = i as f64 + 0.1 + s as f64 * w;
            Some(Rectangle::new([(left, 0.0), (left + w, v)], col.mix(0.85).filled()))
        });
        chart.draw_series(rects.collect::<Vec<_>>())?;
    }
    Ok(())
}

fn draw_stacked<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, s: &Stacked) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let n = s.rows.len().max(1);
    let total = s.values.iter().map(|r| r.iter().sum::<f64>()).fold(0.0, f64::max);
    let hi = if total > 0.0 { total * 1.02 } else { 1.0 };
    let (label_w, max_chars) = label_area(&s.rows);
    let mut chart = ChartBuilder::on(area)
        .margin_right(24)
        .x_label_area_size(62)
        .y_label_area_size(label_w)
        .build_cartesian_2d(0f64..hi, Bands::new(n))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|y: &f64| band_label(&s.rows, *y, max_chars))
        .x_label_formatter(&|x: &f64| num(*x))
        .x_desc(s.value_label.as_str())
        .label_style(tick_style())
        .axis_desc_style(axis_style())
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .draw()?;
    for p in 0..s.parts.len() {
        let col = color(p);
        let rects = s.values.iter().enumerate().map(|(i, row)| {
            let left: f64 = row[..p.min(row.len())].iter().sum();
            let v = row.get(p).copied().unwrap_or(0.0);
            let top = n as f64 - i as f64 - 0.15;
            Rectangle::new([(left, top), (left + v, top - 0.7)], col.mix(0.9).filled())
        });
        chart.draw_series(rects.collect::<Vec<_>>())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_pad_and_pin() {
        assert_eq!(range([1.0, 2.0], true).0, 0.0);
        let (lo, hi) = range([1.0, 2.0], false);
        assert!(lo < 1.0 && hi > 2.0);
        let (lo, hi) = range([3.0], false);
        assert!(lo < 3.0 && hi > 3.0);
        assert_eq!(range(std::iter::empty(), false), (0.0, 1.0));
    }

    #[test]
    fn tick_numbers() {
        assert_eq!(num(1.5), "1.5");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(-0.0001), "0");
    }
}

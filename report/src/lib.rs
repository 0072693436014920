//! decodebench's report: a results folder's tables become charts (PNG and SVG), a
//! self-contained `report.html` (charts inline, nothing fetched from the network) and a
//! `report.md` holding the same tables and charts.
//!
//! - [`report`]: one run: the lossless flag, the headline, the sweeps, the charts, the metadata.
//! - [`compare`]: two runs side by side (two machines, commits, or CPU vs CUDA).
//!
//! A partial folder (a killed run, a missing table or `meta.json`) gives a report of what is
//! there with a note naming what is not; only an unreadable or unwritable folder is an error.

pub mod charts;
pub mod compare;
pub mod figures;
pub mod load;
pub mod page;
pub mod params;
pub mod sections;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use compare::{compare, CompareOutcome};
pub use load::{read_folder, Folder};

/// Page file names.
pub const HTML_FILE: &str = "report.html";
pub const MARKDOWN_FILE: &str = "report.md";
pub const CHARTS_DIR: &str = "charts";

/// What [`report`] wrote and found.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOutcome {
    pub html: PathBuf,
    pub markdown: PathBuf,
    /// Every chart file written (a PNG and an SVG per chart).
    pub charts: Vec<PathBuf>,
    /// Charts not drawn, `title: reason`.
    pub skipped: Vec<String>,
    /// What the folder lacks (tables, columns, meta.json, calibration.json), one line each.
    pub missing: Vec<String>,
    /// Lossless configurations whose exact match is below 1.0 (config ids): the page's red flag.
    pub lossless_mismatches: Vec<String>,
}

/// Writes the report of the results folder `dir` into `out` (default: `dir` itself):
/// `report.html`, `report.md` and `charts/*.png|svg`.
pub fn report(dir: &Path, out: Option<&Path>) -> Result<ReportOutcome> {
    let folder = read_folder(dir)?;
    let out = out.unwrap_or(dir);
    let charts_dir = out.join(CHARTS_DIR);
    std::fs::create_dir_all(&charts_dir).with_context(|| format!("cannot create {}", charts_dir.display()))?;

    let (slots, chart_files, skipped) = draw_all(figures::all(&folder), &charts_dir);

    let mut blocks = vec![sections::lossless_flag(&folder)];
    if let Some(notes) = sections::missing_notes(&folder) {
        blocks.push(notes);
    }
    if let Some(m) = &folder.meta {
        blocks.extend(sections::partial_notes(m));
        let mut notes = sections::hardware_notes(m);
        notes.extend(sections::commit_notes(m));
        notes.extend(sections::calibration_notes(&folder));
        if !notes.is_empty() {
            blocks.push(page::Block::Notes { title: "Read with care:".into(), items: notes });
        }
    }
    blocks.push(sections::run_line(&folder));
    blocks.extend(sections::headline(&folder));
    blocks.push(page::Block::Heading(2, "What the columns mean".into()));
    blocks.push(sections::glossary());
    blocks.extend(sections::sweeps(&folder));
    blocks.extend(sections::charts(slots));
    blocks.extend(sections::metadata(&folder));
    blocks.extend(sections::files(&folder));

    let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    let title = format!("decodebench report: {name}");
    let (html, markdown) = write_pages(out, &title, &blocks)?;
    Ok(ReportOutcome {
        html,
        markdown,
        charts: chart_files,
        skipped,
        missing: folder.missing.clone(),
        lossless_mismatches: sections::lossless_mismatches(&folder).iter().map(|r| r.config_id.clone()).collect(),
    })
}

/// Renders every figure; a chart that fails to render becomes a skipped note, never an error.
fn draw_all(figs: Vec<figures::Figure>, charts_dir: &Path) -> (Vec<sections::ChartSlot>, Vec<PathBuf>, Vec<String>) {
    let mut slots = Vec::new();
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for fig in figs {
        let slot = match fig {
            Ok(chart) => match charts::render(&chart, charts_dir) {
                Ok(f) => {
                    files.push(f.png.clone());
                    files.push(f.svg.clone());
                    sections::ChartSlot::Drawn(page::ChartBlock {
                        title: chart.title.clone(),
                        caption: chart.caption.clone(),
                        png_rel: format!("{CHARTS_DIR}/{}.png", chart.stem),
                        svg_rel: format!("{CHARTS_DIR}/{}.svg", chart.stem),
                        png_bytes: f.png_bytes,
                    })
                }
                Err(e) => sections::ChartSlot::Skipped(figures::Skipped {
                    stem: chart.stem.clone(),
                    title: chart.title.clone(),
                    reason: format!("rendering failed: {e:#}"),
                }),
            },
            Err(s) => sections::ChartSlot::Skipped(s),
        };
        if let sections::ChartSlot::Skipped(s) = &slot {
            skipped.push(format!("{}: {}", s.title, s.reason));
        }
        slots.push(slot);
    }
    (slots, files, skipped)
}

fn write_pages(out: &Path, title: &str, blocks: &[page::Block]) -> Result<(PathBuf, PathBuf)> {
    let html = out.join(HTML_FILE);
    std::fs::write(&html, page::html(title, blocks)).with_context(|| format!("cannot write {}", html.display()))?;
    let md = out.join(MARKDOWN_FILE);
    std::fs::write(&md, page::markdown(title, blocks)).with_context(|| format!("cannot write {}", md.display()))?;
    Ok((html, md))
}

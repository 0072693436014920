//! A results folder analysed end to end: records, meta.json and calibration.json in; the tables
//! (Parquet and CSV, in the folder itself) and FastChat answer files out; back to the runner the
//! summary and the lossless configurations that were not token-identical to greedy decoding,
//! so it can fail loudly.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::answers;
use crate::records::{self, Calibration, RunMeta, UnitRecord};
use crate::tables::{self, SummaryRow, TurnRow, ALL_CATEGORIES};

/// A turn of a lossless configuration that left greedy decoding's tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    pub question_id: String,
    pub repeat: usize,
    pub turn: usize,
    /// The first token position that differs.
    pub position: usize,
}

/// A lossless configuration that was not token-identical to greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct LosslessFailure {
    pub config_id: String,
    /// Share of its turns identical to greedy's.
    pub exact_match: f64,
    /// Every turn that diverged, in question order.
    pub divergences: Vec<Divergence>,
}

/// What [`analyse`] found and wrote.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The `summary` table's rows.
    pub summary: Vec<SummaryRow>,
    /// Lossless configurations with exact_match < 1.0 (empty: all exact).
    pub lossless_failures: Vec<LosslessFailure>,
    /// Unit records analysed.
    pub units: usize,
    /// records.jsonl ended in a line cut off mid-write, which was dropped.
    pub torn_tail: bool,
    /// Whether calibration.json was there (without it there are no predictions).
    pub calibrated: bool,
    /// Every file written.
    pub written: Vec<PathBuf>,
}

/// Analyses the results folder `dir`: reads `records.jsonl`, `meta.json` and
/// `calibration.json` (missing: no predictions), writes the tables into `dir` and the answer
/// files into `dir/model_answer/`.
pub fn analyse(dir: &Path) -> Result<Analysis> {
    let set = records::read_records(dir)?;
    let meta: RunMeta = records::read_json(&dir.join(records::META_FILE))?;
    let calibration_path = dir.join(records::CALIBRATION_FILE);
    let calibration: Calibration = if calibration_path.exists() { records::read_json(&calibration_path)? } else { Calibration::default() };
    let mut analysis = analyse_records(dir, &set.records, &meta, &calibration)?;
    analysis.torn_tail = set.torn_tail;
    Ok(analysis)
}

/// Analyses `records` (e.g. several shards' concatenated: the order does not matter) with the
/// given meta and calibration (`Calibration::default()`: no predictions), writing into `dir`.
pub fn analyse_records(dir: &Path, records: &[UnitRecord], meta: &RunMeta, calibration: &Calibration) -> Result<Analysis> {
    let rows = tables::compute(records, meta, calibration)?;
    let frames = tables::frames(&rows, records, meta, calibration)?;
    let mut written = tables::write(dir, &frames).with_context(|| format!("cannot write the tables of {}", dir.display()))?;
    written.extend(answers::write_answers(dir, records, meta)?);
    let lossless_failures = lossless_failures(&rows.summary, &rows.turns);
    Ok(Analysis {
        summary: rows.summary,
        lossless_failures,
        units: records.len(),
        torn_tail: false,
        calibrated: !calibration.is_empty(),
        written,
    })
}

/// The lossless configurations whose `all` row has exact_match < 1.0, with their diverging turns.
pub fn lossless_failures(summary: &[SummaryRow], turns: &[TurnRow]) -> Vec<LosslessFailure> {
    summary
        .iter()
        .filter(|s| s.category == ALL_CATEGORIES && s.lossless)
        .filter_map(|s| {
            let exact_match = s.exact_match.filter(|e| *e < 1.0)?;
            let divergences = turns
                .iter()
                .filter(|t| t.config_id == s.config_id && t.exact_match == Some(false))
                .map(|t| Divergence {
                    question_id: t.question_id.clone(),
                    repeat: t.repeat,
                    turn: t.turn,
                    position: t.first_divergence.unwrap_or(0),
                })
                .collect();
            Some(LosslessFailure { config_id: s.config_id.clone(), exact_match, divergences })
        })
        .collect()
}

/// Table rows that fit on one screen with the header and the failure lines.
const SCREEN_ROWS: usize = 30;

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.decimals$}"))
}

/// The summary as one terminal screen: every row, `all` rows first, when they fit; otherwise
/// the `all` rows only (the tables have the rest). Then one line per lossless failure.
pub fn format_summary(analysis: &Analysis) -> String {
    let all: Vec<&SummaryRow> = analysis.summary.iter().filter(|s| s.category == ALL_CATEGORIES).collect();
    let mut rows = all.clone();
    // Every configuration has k ≥ 1 category rows and one `all` row: twice as many rows as
    // `all` rows means one category each, whose rows only repeat `all`.
    let single_category = all.len() * 2 == analysis.summary.len();
    let per_category = !single_category && analysis.summary.len() <= SCREEN_ROWS;
    if per_category {
        rows.extend(analysis.summary.iter().filter(|s| s.category != ALL_CATEGORIES));
    }
    let shown = rows.len().min(SCREEN_ROWS);
    let header = ["config", "category", "lossless", "speedup [95% ci]", "predicted", "accepted", "tok/s", "exact", "nll"];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for s in &rows[..shown] {
        let speedup = match (s.speedup, s.speedup_ci_low, s.speedup_ci_high) {
            (Some(v), Some(lo), Some(hi)) => format!("{v:.2} [{lo:.2}, {hi:.2}]"),
            (v, _, _) => num(v, 2),
        };
        cells.push(vec![
            s.config_id.clone(),
            s.category.clone(),
            if s.lossless { "yes" } else { "no" }.to_string(),
            speedup,
            num(s.predicted_speedup, 2),
            num(s.mean_accepted_tokens, 2),
            num(s.tokens_per_s, 1),
            s.exact_match.map_or("-".to_string(), |e| format!("{:.0}%", e * 100.0)),
            num(s.nll_per_token, 3),
        ]);
    }
    let widths: Vec<usize> = (0..header.len()).map(|c| cells.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| if c < 3 { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
            out.push('\n');
        }
    }
    let hidden = if single_category { all.len() } else { analysis.summary.len() } - shown;
    if hidden > 0 {
        out.push_str(&format!("({hidden} more rows in summary.csv)\n"));
    }
    for f in analysis.lossless_failures.iter().take(5) {
        let first = f.divergences.first().map_or(String::new(), |d| {
            format!(": first at question {} repeat {} turn {}, token {}", d.question_id, d.repeat, d.turn, d.position)
        });
        out.push_str(&format!(
            "NOT LOSSLESS {}: {:.0}% identical to greedy, diverged in {} turn(s){first}\n",
            f.config_id,
            f.exact_match * 100.0,
            f.divergences.len()
        ));
    }
    if analysis.lossless_failures.len() > 5 {
        out.push_str(&format!("... and {} more lossless configurations that diverged\n", analysis.lossless_failures.len() - 5));
    }
    if analysis.torn_tail {
        out.push_str("records.jsonl ended in a half-written record (a killed run): dropped\n");
    }
    if !analysis.calibrated {
        out.push_str("no calibration.json: no predicted speedups\n");
    }
    out
}

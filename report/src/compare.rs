//! Two runs side by side: every configuration both ran, each run's speedup, throughput and
//! mean accepted tokens and the ratio B/A, with both runs' machines, commits and models.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::charts::{Bar, BarSeries, Bars, Chart, ChartKind};
use crate::load::{read_folder, Folder, SummaryRow};
use crate::page::{Block, Table, DASH};
use crate::sections::{fmt, fmt_ci, lossless_mismatches, metadata};
use crate::{draw_all, figures, sections, write_pages, CHARTS_DIR};

/// What [`compare`] wrote and found.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareOutcome {
    pub html: PathBuf,
    pub markdown: PathBuf,
    pub charts: Vec<PathBuf>,
    /// Configuration ids present in both runs, in A's order.
    pub common: Vec<String>,
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
    /// What either folder lacks, prefixed `A:` or `B:`.
    pub missing: Vec<String>,
}

/// Writes `out/report.html`, `out/report.md` and `out/charts/compare_*.png|svg` comparing the
/// results folders `a` and `b`.
pub fn compare(a: &Path, b: &Path, out: &Path) -> Result<CompareOutcome> {
    let fa = read_folder(a).with_context(|| format!("run A ({})", a.display()))?;
    let fb = read_folder(b).with_context(|| format!("run B ({})", b.display()))?;
    let charts_dir = out.join(CHARTS_DIR);
    std::fs::create_dir_all(&charts_dir).with_context(|| format!("cannot create {}", charts_dir.display()))?;

    let oa = fa.overall();
    let ob: HashMap<&str, &SummaryRow> = fb.overall().into_iter().map(|r| (r.config_id.as_str(), r)).collect();
    let in_a: std::collections::HashSet<&str> = oa.iter().map(|r| r.config_id.as_str()).collect();
    let pairs: Vec<(&SummaryRow, &SummaryRow)> = oa.iter().filter_map(|r| ob.get(r.config_id.as_str()).map(|&rb| (*r, rb))).collect();
    let common: Vec<String> = pairs.iter().map(|(r, _)| r.config_id.clone()).collect();
    let only_a: Vec<String> = oa.iter().filter(|r| !ob.contains_key(r.config_id.as_str())).map(|r| r.config_id.clone()).collect();
    let only_b: Vec<String> = fb.overall().iter().filter(|r| !in_a.contains(r.config_id.as_str())).map(|r| r.config_id.clone()).collect();
    let missing: Vec<String> = fa.missing.iter().map(|m| format!("A: {m}")).chain(fb.missing.iter().map(|m| format!("B: {m}"))).collect();

    let (slots, chart_files, _) = draw_all(compare_figures(&pairs, &fa, &fb), &charts_dir);

    let mut blocks = Vec::new();
    let bad: Vec<String> = lossless_mismatches(&fa)
        .iter()
        .map(|r| format!("A: {}: exact match {}", r.config_id, fmt(r.exact_match, 3)))
        .chain(lossless_mismatches(&fb).iter().map(|r| format!("B: {}: exact match {}", r.config_id, fmt(r.exact_match, 3))))
        .collect();
    if !bad.is_empty() {
        blocks.push(Block::Flag {
            alarm: true,
            title: "LOSSLESS CONFIGURATIONS DIVERGED FROM GREEDY (exact match < 1.0):".into(),
            items: bad,
        });
    }
    if !missing.is_empty() {
        blocks.push(Block::Notes {
            title: "Incomplete results folders: shown is what is there. Missing or unreadable:".into(),
            items: missing.clone(),
        });
    }
    blocks.push(Block::Para(format!(
        "Run A: {}. Run B: {}. Ratios are B / A: above 1 means run B is higher.",
        describe(&fa),
        describe(&fb)
    )));
    blocks.push(Block::Heading(2, "The two runs".into()));
    blocks.push(Block::Table(runs_table(&fa, &fb)));
    blocks.push(Block::Heading(2, "Configurations in both runs".into()));
    if pairs.is_empty() {
        blocks.push(Block::Para("No configuration id is in both runs' summary tables: nothing to compare.".into()));
    } else {
        blocks.push(Block::Table(pairs_table(&pairs)));
    }
    if !only_a.is_empty() {
        blocks.push(Block::Notes { title: "Only in run A:".into(), items: only_a.clone() });
    }
    if !only_b.is_empty() {
        blocks.push(Block::Notes { title: "Only in run B:".into(), items: only_b.clone() });
    }
    blocks.push(Block::Heading(2, "What the columns mean".into()));
    blocks.push(sections::glossary());
    blocks.extend(sections::charts(slots));
    for (tag, f) in [("A", &fa), ("B", &fb)] {
        let mut meta = metadata(f);
        if let Some(Block::Heading(_, t)) = meta.first_mut() {
            *t = format!("Run {tag} metadata ({})", f.dir.display());
        }
        blocks.extend(meta);
    }
    let (html, markdown) = write_pages(out, "decodebench comparison: run A vs run B", &blocks)?;
    Ok(CompareOutcome { html, markdown, charts: chart_files, common, only_a, only_b, missing })
}

fn describe(f: &Folder) -> String {
    let mut s = f.dir.display().to_string();
    if let Some(m) = &f.meta {
        s.push_str(&format!(" ({}, {}, {}", m.machine.hostname, m.machine.cpu, m.machine.device));
        if let Some(c) = &m.git_commit {
            s.push_str(&format!(", commit {}", crate::sections::short_commit(c)));
        }
        s.push(')');
    }
    s
}

/// `b / a` with 3 decimals, or a dash when either is absent or `a` is 0.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a != 0.0 => format!("{:.3}", b / a),
        _ => DASH.into(),
    }
}

fn pairs_table(pairs: &[(&SummaryRow, &SummaryRow)]) -> Table {
    let rows = pairs
        .iter()
        .map(|(a, b)| {
            vec![
                a.config_id.clone(),
                fmt(a.speedup, 2),
                fmt_ci(a.speedup_ci_low, a.speedup_ci_high),
                fmt(b.speedup, 2),
                fmt_ci(b.speedup_ci_low, b.speedup_ci_high),
                ratio(a.speedup, b.speedup),
                fmt(a.tokens_per_s, 1),
                fmt(b.tokens_per_s, 1),
                ratio(a.tokens_per_s, b.tokens_per_s),
                fmt(a.mean_accepted_tokens, 2),
                fmt(b.mean_accepted_tokens, 2),
                ratio(a.mean_accepted_tokens, b.mean_accepted_tokens),
            ]
        })
        .collect();
    Table::new(
        &[
            "Configuration",
            "Speedup A (×)",
            "95% CI A",
            "Speedup B (×)",
            "95% CI B",
            "Speedup B/A",
            "Tokens/s A",
            "Tokens/s B",
            "Tokens/s B/A",
            "Mean accepted A",
            "Mean accepted B",
            "Mean accepted B/A",
        ],
        rows,
    )
}

fn runs_table(a: &Folder, b: &Folder) -> Table {
    type Get = fn(&Folder) -> Option<String>;
    let fields: [(&str, Get); 14] = [
        ("Folder", |f| Some(f.dir.display().to_string())),
        ("Hostname", |f| f.meta.as_ref().map(|m| m.machine.hostname.clone())),
        ("CPU", |f| f.meta.as_ref().map(|m| m.machine.cpu.clone())),
        ("Device", |f| f.meta.as_ref().map(|m| m.machine.device.clone())),
        ("GPU", |f| f.meta.as_ref().and_then(|m| m.machine.gpu.clone())),
        ("Threads", |f| f.meta.as_ref().map(|m| m.machine.threads.to_string())),
        ("SIMD", |f| f.meta.as_ref().map(|m| m.machine.simd.join(" "))),
        ("Target features", |f| f.meta.as_ref().map(|m| m.machine.target_features.join(" "))),
        ("Commit", |f| f.meta.as_ref().and_then(|m| m.git_commit.clone())),
        ("decodebench version", |f| f.meta.as_ref().map(|m| m.decodebench_version.clone())),
        ("Models", |f| {
            f.meta.as_ref().map(|m| {
                m.models
                    .iter()
                    .map(|x| format!("{} {} (sha256 {})", x.role, x.name, x.sha256.as_deref().map_or(DASH, |s| s.get(..12).unwrap_or(s))))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        }),
        ("Started", |f| f.meta.as_ref().map(|m| m.started.clone())),
        ("Ended", |f| f.meta.as_ref().and_then(|m| m.ended.clone())),
        ("Configurations", |f| Some(f.overall().len().to_string())),
    ];
    let rows = fields
        .iter()
        .map(|(name, get)| {
            let (va, vb) = (get(a), get(b));
            let same = if va == vb { "" } else { "differs" };
            vec![name.to_string(), va.unwrap_or_else(|| DASH.into()), vb.unwrap_or_else(|| DASH.into()), same.into()]
        })
        .collect();
    Table::new(&["Field", "Run A", "Run B", ""], rows)
}

fn compare_figures(pairs: &[(&SummaryRow, &SummaryRow)], fa: &Folder, fb: &Folder) -> Vec<figures::Figure> {
    let mut labels = figures::labels(fa);
    labels.extend(figures::labels(fb).into_iter().filter(|(k, _)| !labels.contains_key(k)).collect::<Vec<_>>());
    let rows: Vec<String> = pairs.iter().map(|(a, _)| labels.get(&a.config_id).cloned().unwrap_or_else(|| a.config_id.clone())).collect();
    let speed = |sel: fn(&SummaryRow) -> Option<Bar>, stem: &str, title: &str, axis: &str, reference: bool| -> figures::Figure {
        let series: Vec<BarSeries> = [("run A", 0), ("run B", 1)]
            .into_iter()
            .map(|(name, side)| BarSeries {
                name: name.into(),
                values: pairs.iter().map(|(a, b)| sel(if side == 0 { a } else { b })).collect(),
            })
            .collect();
        if series.iter().all(|s| s.values.iter().all(Option::is_none)) {
            return Err(figures::Skipped {
                stem: stem.into(),
                title: title.into(),
                reason: "no configuration of both runs has this figure".into(),
            });
        }
        Ok(Chart {
            stem: stem.into(),
            title: title.into(),
            caption: "Each configuration both runs measured, run A above run B.".into(),
            kind: ChartKind::Bars(Bars {
                rows: rows.clone(),
                series,
                value_label: axis.into(),
                reference: reference.then(|| (1.0, "greedy (1×)".into())),
            }),
        })
    };
    vec![
        speed(
            |r| Some(Bar { value: r.speedup?, low: r.speedup_ci_low, high: r.speedup_ci_high }),
            "compare_speedup",
            "Speedup over greedy: run A vs run B (95% CI)",
            "speedup over greedy (×)",
            true,
        ),
        speed(
            |r| Some(Bar { value: r.tokens_per_s?, low: None, high: None }),
            "compare_tokens_per_s",
            "Decode throughput: run A vs run B",
            "decode throughput (tokens/s)",
            false,
        ),
    ]
}

//! The report's sections as page blocks: the lossless flag, the headline, the sweep tables, the
//! column glossary, the charts and the run's metadata. Numbers are formatted here and only here.

use std::collections::BTreeSet;

use decodebench_tables::records::{MachineMeta, RunMeta};

use crate::figures::{best_per_strategy, Skipped};
use crate::load::{Folder, SummaryRow, TABLES};
use crate::page::{Block, ChartBlock, Table, DASH};

/// `v` with `digits` decimals, or a dash.
pub fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| DASH.to_string(), |v| format!("{v:.digits$}"))
}

pub fn fmt_ci(lo: Option<f64>, hi: Option<f64>) -> String {
    match (lo, hi) {
        (Some(l), Some(h)) => format!("[{l:.2}, {h:.2}]"),
        _ => DASH.to_string(),
    }
}

fn yes_no(b: Option<bool>) -> String {
    b.map_or_else(|| DASH.to_string(), |b| if b { "yes".into() } else { "no".into() })
}

fn is_mismatch(r: &SummaryRow) -> bool {
    r.lossless == Some(true) && r.exact_match.is_some_and(|e| e < 1.0 - 1e-12)
}

/// Overall rows of lossless configurations that did not reproduce greedy exactly.
pub fn lossless_mismatches(f: &Folder) -> Vec<&SummaryRow> {
    f.overall().into_iter().filter(|r| is_mismatch(r)).collect()
}

/// The box at the very top: red when a lossless configuration diverged from greedy.
pub fn lossless_flag(f: &Folder) -> Block {
    let overall = f.overall();
    if overall.is_empty() {
        return Block::Flag {
            alarm: true,
            title: "Losslessness not checked: the summary table is missing or empty.".into(),
            items: vec![],
        };
    }
    let bad = lossless_mismatches(f);
    let unchecked: Vec<&&SummaryRow> = overall.iter().filter(|r| r.lossless == Some(true) && r.exact_match.is_none()).collect();
    let lossless = overall.iter().filter(|r| r.lossless == Some(true)).count();
    if !bad.is_empty() {
        let items = bad
            .iter()
            .map(|r| {
                format!(
                    "{}: exact match {} (first divergence at token {} on average)",
                    r.config_id,
                    fmt(r.exact_match, 3),
                    fmt(r.first_divergence_mean, 1)
                )
            })
            .collect();
        return Block::Flag {
            alarm: true,
            title: format!(
                "LOSSLESS CONFIGURATIONS DIVERGED FROM GREEDY: {} of {lossless} lossless configurations have exact match < 1.0",
                bad.len()
            ),
            items,
        };
    }
    if !unchecked.is_empty() {
        return Block::Flag {
            alarm: true,
            title: format!("{} lossless configurations have no exact-match figure: their losslessness is unchecked", unchecked.len()),
            items: unchecked.iter().map(|r| r.config_id.clone()).collect(),
        };
    }
    Block::Flag {
        alarm: false,
        title: if lossless == 0 {
            "No configuration of this run is lossless; nothing to check against greedy.".into()
        } else {
            format!("All {lossless} lossless configurations reproduced greedy decoding token for token (exact match 1.000).")
        },
        items: vec![],
    }
}

/// What the folder lacks, when it lacks anything.
pub fn missing_notes(f: &Folder) -> Option<Block> {
    (!f.missing.is_empty()).then(|| Block::Notes {
        title: "Incomplete results folder: this report shows only what is there. Missing or unreadable:".into(),
        items: f.missing.clone(),
    })
}

/// One sentence saying what ran where.
pub fn run_line(f: &Folder) -> Block {
    let configs = f.overall().len();
    let prompts = f.meta.as_ref().map(|m| m.questions.len());
    let mut parts = vec![format!("Results folder {}", f.dir.display())];
    if let Some(m) = &f.meta {
        let target = m.models.iter().find(|x| x.role == "target").map(|x| x.name.clone());
        if let Some(t) = target {
            parts.push(format!("target model {t}"));
        }
        parts.push(format!("on {} ({}, {} threads)", m.machine.cpu, m.machine.device, m.machine.threads));
        if let Some(c) = &m.git_commit {
            parts.push(format!("commit {}", short_commit(c)));
        }
        parts.push(format!("started {}", m.started));
    }
    parts.push(format!("{configs} configurations"));
    if let Some(p) = prompts {
        parts.push(format!("{p} questions"));
    }
    Block::Para(format!("{}.", parts.join(", ")))
}

/// The first 12 digits of a commit, keeping the runner's `-dirty` mark (a run of a checkout with
/// uncommitted changes) as words, so a shortened commit never passes for a clean one.
pub(crate) fn short_commit(c: &str) -> String {
    let (hash, dirty) = c.strip_suffix("-dirty").map_or((c, false), |h| (h, true));
    let short = hash.get(..12).unwrap_or(hash);
    if dirty {
        format!("{short} (with uncommitted changes)")
    } else {
        short.to_string()
    }
}

/// The best configuration of each strategy.
pub fn headline(f: &Folder) -> Vec<Block> {
    let best = best_per_strategy(f);
    let mut out = vec![Block::Heading(2, "Headline: the best configuration of each strategy".into())];
    if best.is_empty() {
        out.push(Block::Para("No summary rows: there is no headline to show.".into()));
        return out;
    }
    out.push(Block::Para(
        "Each strategy's configuration with the highest overall speedup over greedy decoding. Columns are explained under “What the columns mean”.".into(),
    ));
    let rows = best
        .iter()
        .map(|r| {
            vec![
                r.strategy.clone(),
                r.config_id.clone(),
                fmt(r.speedup, 2),
                fmt_ci(r.speedup_ci_low, r.speedup_ci_high),
                fmt(r.predicted_speedup, 2),
                fmt(r.mean_accepted_tokens, 2),
                fmt(r.tokens_per_s, 1),
                fmt(r.exact_match, 3),
                fmt(r.nll_per_token, 3),
                yes_no(r.lossless),
            ]
        })
        .collect();
    out.push(Block::Table(Table::new(
        &[
            "Strategy",
            "Best configuration",
            "Speedup (×)",
            "95% CI",
            "Predicted (×)",
            "Mean accepted tokens",
            "Tokens/s",
            "Exact match",
            "NLL/token",
            "Lossless",
        ],
        rows,
    )));
    out
}

pub fn glossary() -> Block {
    Block::Glossary(
        [
            ("Configuration", "strategy[parameters]: every parameter of the strategy, defaults filled in (greedy has none)."),
            ("Speedup (×)", "geometric mean, over every answered turn, of the turn's throughput (tokens/s) divided by greedy decoding's on the same prompt, turn and repeat in the same run (paired ratios); greedy is 1 by definition, 2 means twice as fast."),
            ("95% CI", "95% confidence interval of the speedup: bootstrap over prompts (questions resampled with replacement, all their turns together; 2.5 and 97.5 percentiles)."),
            ("Predicted (×)", "the speedup the cost model predicts from the machine's calibrated forward costs (each shard's own, after a merge) and the measured acceptance: τ̄·c(1) / (c(n̄) + draft cost per step); – without calibration."),
            ("Mean accepted tokens", "tokens accepted per decoding step (one target forward), bonus token included: Σ accepted / Σ steps (1.00 for greedy)."),
            ("Tokens/s", "new tokens over the whole call's wall time (prompt forward included), mean over turns."),
            ("Exact match", "share of turns whose answer is token-identical to greedy decoding's on the same prompt; a lossless configuration must reach 1.000."),
            ("First divergence", "mean 0-based token position where an answer first differs from greedy's, over the turns that differ."),
            ("NLL/token", "the target model's mean negative log-likelihood per token of the answer (nats, teacher-forced, lower is better)."),
            ("ROUGE-L", "longest-common-subsequence F-measure over lower-cased words against greedy's answer to the same turn (1 = same words in order)."),
            ("Distinct-2", "unique token bigrams / token bigrams of the answer (low means a looping answer)."),
            ("Repetition", "share of the answer's token 4-grams already seen earlier in it (0 = never repeats, near 1 = stuck in a loop)."),
            ("Peak RSS (MiB)", "peak resident memory of the process while the configuration ran (max over its units)."),
            ("Turns", "answered turns behind the row."),
            ("Lossless", "whether the configuration is meant to reproduce greedy decoding exactly."),
            ("–", "not measured or not applicable."),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect(),
    )
}

const FULL_HEADER: [&str; 15] = [
    "Configuration",
    "Lossless",
    "Turns",
    "Speedup (×)",
    "95% CI",
    "Predicted (×)",
    "Mean accepted tokens",
    "Tokens/s",
    "Exact match",
    "First divergence",
    "NLL/token",
    "ROUGE-L",
    "Distinct-2",
    "Repetition",
    "Peak RSS (MiB)",
];

fn full_row(r: &SummaryRow) -> Vec<String> {
    vec![
        r.config_id.clone(),
        yes_no(r.lossless),
        fmt(r.turns, 0),
        fmt(r.speedup, 2),
        fmt_ci(r.speedup_ci_low, r.speedup_ci_high),
        fmt(r.predicted_speedup, 2),
        fmt(r.mean_accepted_tokens, 2),
        fmt(r.tokens_per_s, 1),
        fmt(r.exact_match, 3),
        fmt(r.first_divergence_mean, 1),
        fmt(r.nll_per_token, 3),
        fmt(r.rouge_l, 3),
        fmt(r.distinct_2, 3),
        fmt(r.repetition_rate, 3),
        fmt(r.peak_rss_mb, 0),
    ]
}

/// Every configuration overall, the speedup per category, and every category in full.
pub fn sweeps(f: &Folder) -> Vec<Block> {
    let mut out = vec![Block::Heading(2, "Sweeps: every configuration".into())];
    let overall = f.overall();
    if f.summary.is_empty() {
        out.push(Block::Para("The summary table is missing or empty: no sweep tables.".into()));
        return out;
    }
    out.push(Block::Heading(3, "All categories".into()));
    out.push(Block::Table(Table::new(&FULL_HEADER, overall.iter().map(|r| full_row(r)).collect())));

    let categories: Vec<String> =
        f.summary.iter().filter(|r| r.category != "all").map(|r| r.category.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    if categories.is_empty() {
        return out;
    }
    out.push(Block::Heading(3, "Speedup (×) by MT-Bench category".into()));
    let ids: Vec<String> = {
        let mut seen = BTreeSet::new();
        f.summary.iter().filter(|r| seen.insert(r.config_id.clone())).map(|r| r.config_id.clone()).collect()
    };
    let mut header = vec!["Configuration".to_string()];
    header.extend(categories.iter().cloned());
    header.push("all".into());
    let rows = ids
        .iter()
        .map(|id| {
            let mut row = vec![id.clone()];
            for c in categories.iter().chain(std::iter::once(&"all".to_string())) {
                row.push(fmt(f.summary.iter().find(|r| &r.config_id == id && &r.category == c).and_then(|r| r.speedup), 2));
            }
            row
        })
        .collect();
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    out.push(Block::Table(Table::new(&header_refs, rows)));
    for c in &categories {
        let rows = f.summary.iter().filter(|r| &r.category == c).map(full_row).collect();
        out.push(Block::Details {
            summary: format!("Category {c}: every column"),
            blocks: vec![Block::Table(Table::new(&FULL_HEADER, rows))],
        });
    }
    out
}

/// A drawn chart or the note that stands in its place.
pub enum ChartSlot {
    Drawn(ChartBlock),
    Skipped(Skipped),
}

pub fn charts(slots: Vec<ChartSlot>) -> Vec<Block> {
    let mut out = vec![Block::Heading(2, "Charts".into())];
    for s in slots {
        out.push(match s {
            ChartSlot::Drawn(c) => Block::Chart(c),
            ChartSlot::Skipped(s) => Block::Skipped { title: s.title, reason: s.reason },
        });
    }
    out
}

fn machine_rows(m: &MachineMeta) -> Vec<Vec<String>> {
    let list = |v: &[String]| if v.is_empty() { DASH.to_string() } else { v.join(" ") };
    vec![
        vec!["Hostname".into(), m.hostname.clone()],
        vec!["CPU".into(), m.cpu.clone()],
        vec!["SIMD (detected at run time)".into(), list(&m.simd)],
        vec!["Target features compiled in".into(), list(&m.target_features)],
        vec!["Threads".into(), m.threads.to_string()],
        vec!["Device".into(), m.device.clone()],
        vec!["GPU".into(), m.gpu.clone().unwrap_or_else(|| DASH.into())],
        vec!["Scheduler node".into(), m.node.clone().unwrap_or_else(|| DASH.into())],
        vec!["Weight conversions at load".into(), list(&m.conversions)],
        vec!["CPU kernels".into(), m.kernel_path.clone().unwrap_or_else(|| DASH.into())],
    ]
}

/// Shards that ran on different hardware (host names aside: same CPU, features, threads and
/// device time alike), and runs or shards resumed on other hardware than they started on: one
/// line each naming what differs; empty when every unit was timed on one kind of machine.
pub fn hardware_notes(m: &RunMeta) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(first) = m.merged_from.first().map(|s| &s.machine) {
        let differs: Vec<&str> = [
            ("CPU", m.merged_from.iter().any(|s| s.machine.cpu != first.cpu)),
            ("SIMD features", m.merged_from.iter().any(|s| s.machine.simd != first.simd)),
            ("compiled target features", m.merged_from.iter().any(|s| s.machine.target_features != first.target_features)),
            ("threads", m.merged_from.iter().any(|s| s.machine.threads != first.threads)),
            ("device", m.merged_from.iter().any(|s| s.machine.device != first.device)),
            ("GPU", m.merged_from.iter().any(|s| s.machine.gpu != first.gpu)),
            ("CPU kernels", m.merged_from.iter().any(|s| s.machine.kernel_paths_differ(first))),
        ]
        .into_iter()
        .filter(|(_, d)| *d)
        .map(|(n, _)| n)
        .collect();
        if !differs.is_empty() {
            notes.push(format!(
                "The {} shards of this run ran on different hardware (they differ in: {}): compare throughput across shards with care; speedups are paired within one machine, predicted speedups price each shard by its own machine's calibration, and the cost-curve chart shows the first shard's.",
                m.merged_from.len(),
                differs.join(", ")
            ));
        }
    }
    let resumed = |label: &str, earlier: &[decodebench_tables::records::MachineMeta]| {
        (!earlier.is_empty()).then(|| {
            let list: Vec<String> = earlier.iter().map(|e| format!("{} ({} threads, {})", e.cpu, e.threads, e.device)).collect();
            format!(
                "{label} was resumed on other hardware than it started on ({}): a configuration and its greedy baseline may have been timed on different machines, so its speedups mix the two.",
                list.join(", ")
            )
        })
    };
    notes.extend(resumed("This run", &m.earlier_machines));
    for s in &m.merged_from {
        notes.extend(resumed(&format!("Shard {}", s.shard.as_deref().unwrap_or(&s.dir)), &s.earlier_machines));
    }
    notes
}

/// Shards that ran different commits: one line naming each shard's, empty when they agree
/// (or none is recorded).
/// A run's or shard's label, its questions (`None`: all) and its curves by model role.
type CurveGroup<'a> = (String, Option<&'a [String]>, &'a std::collections::BTreeMap<String, decodebench_tables::records::CostCurve>);

/// How far a calibrated single-token forward may sit from what the greedy baseline measured per
/// token (on shorter caches, so somewhat below) before the curve is called into doubt.
const CALIBRATION_TOLERANCE: f64 = 1.3;

/// Runs or shards whose calibrated single-token forward of the target is more than 30% off the
/// median time per token of their own greedy turns: the machine was busy while it was
/// calibrated, so the predictions priced by that curve (and what a cost-aware strategy chose by
/// it) are off. One line each; empty when every curve agrees with its run.
pub fn calibration_notes(f: &Folder) -> Vec<String> {
    let Some(cal) = &f.calibration_json else { return vec![] };
    let measured = |questions: Option<&[String]>| {
        let ms: Vec<f64> = f
            .turns
            .iter()
            .filter(|t| t.strategy == "greedy" && questions.is_none_or(|q| q.contains(&t.question_id)))
            .filter_map(|t| Some(1e3 * t.decode_s? / (t.new_tokens.filter(|&n| n >= 16.0)? - 1.0)))
            .collect();
        Some((decodebench_tables::stats::median(&ms)?, ms.len()))
    };
    let groups: Vec<CurveGroup> = if cal.shards.is_empty() {
        vec![("This run".into(), None, &cal.models)]
    } else {
        cal.shards.iter().map(|s| (format!("Shard {}", s.shard), Some(s.questions.as_slice()), &s.models)).collect()
    };
    let mut notes = Vec::new();
    for (label, questions, models) in groups {
        let Some(c1) = models.get("target").and_then(|c| c.forward_ms.get(&1)) else { continue };
        let Some((ms, turns)) = measured(questions) else { continue };
        if ms > 0.0 && !(1.0 / CALIBRATION_TOLERANCE..=CALIBRATION_TOLERANCE).contains(&(c1 / ms)) {
            notes.push(format!(
                "{label}'s calibration prices one target forward at {c1:.1} ms, but its greedy baseline took {ms:.1} ms per token (median of {turns} turns): the machine was likely busy while it was calibrated, so its predicted speedups are off, and a cost-aware strategy there sized its drafts by that wrong curve."
            ));
        }
    }
    notes
}

pub fn commit_notes(m: &RunMeta) -> Vec<String> {
    let short = |c: &Option<String>| c.as_deref().map_or("unknown".to_string(), |c| c.chars().take(7).collect());
    let first = m.merged_from.first().map(|s| &s.git_commit);
    if first.is_none_or(|f| m.merged_from.iter().all(|s| &s.git_commit == f)) {
        return Vec::new();
    }
    let each: Vec<String> =
        m.merged_from.iter().map(|s| format!("{} {}", s.shard.as_deref().unwrap_or(&s.dir), short(&s.git_commit))).collect();
    vec![format!(
        "The shards ran different commits ({}): a change of kernels or strategies between them moves their speedups, each paired within its own shard.",
        each.join(", ")
    )]
}

/// A partial merge's banner: which shards are missing or incomplete.
pub fn partial_notes(m: &RunMeta) -> Option<Block> {
    (!m.partial.is_empty()).then(|| Block::Notes {
        title: "PARTIAL RESULT: merged with --allow-partial; these questions or units are not in it:".into(),
        items: m.partial.clone(),
    })
}

pub fn metadata(f: &Folder) -> Vec<Block> {
    let mut out = vec![Block::Heading(2, "Run metadata".into())];
    let Some(m) = &f.meta else {
        match &f.meta_raw {
            Some(raw) => {
                out.push(Block::Para("meta.json is not in this version's format; here it is as written:".into()));
                out.push(Block::Pre(raw.clone()));
            }
            None => out.push(Block::Para("meta.json is missing: the machine, models, commit and config of this run are unknown.".into())),
        }
        return out;
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| DASH.into());
    out.push(Block::Heading(3, "Run".into()));
    out.push(Block::Table(Table::new(
        &["Field", "Value"],
        vec![
            vec!["Config file".into(), m.config_path.clone()],
            vec!["Commit".into(), opt(&m.git_commit)],
            vec!["decodebench version".into(), m.decodebench_version.clone()],
            vec!["Started (UTC)".into(), m.started.clone()],
            vec!["Ended (UTC)".into(), m.ended.clone().unwrap_or_else(|| "not recorded: the run did not finish".into())],
            vec!["Shard".into(), opt(&m.shard)],
            vec!["Questions".into(), m.questions.len().to_string()],
            vec!["Turns per question".into(), m.turns.to_string()],
            vec![
                "KV cache between turns".into(),
                if m.prefix_cache {
                    "kept (prefix_cache: a turn's prompt forward runs only what the cache lacks)"
                } else {
                    "cleared (every prompt forward from empty)"
                }
                .into(),
            ],
            vec!["Max new tokens".into(), m.max_new_tokens.to_string()],
            vec!["Repeats (warm-up)".into(), format!("{} ({})", m.repeats, m.warmup)],
            vec!["Seed".into(), m.seed.to_string()],
            vec!["Configurations".into(), m.configs.len().to_string()],
            vec!["Sweep hash".into(), m.sweep_hash.clone()],
            vec!["Medusa heads".into(), opt(&m.heads_note)],
        ],
    )));
    out.push(Block::Heading(3, "Machine".into()));
    out.push(Block::Table(Table::new(&["Field", "Value"], machine_rows(&m.machine))));
    out.push(Block::Heading(3, "Models".into()));
    if m.models.is_empty() {
        out.push(Block::Para("No models recorded.".into()));
    } else {
        out.push(Block::Table(Table::new(
            &["Role", "Name", "Quantization", "sha256", "Path"],
            m.models.iter().map(|x| vec![x.role.clone(), x.name.clone(), opt(&x.quantization), opt(&x.sha256), x.path.clone()]).collect(),
        )));
    }
    if !m.merged_from.is_empty() {
        out.push(Block::Heading(3, "Shards".into()));
        let notes = hardware_notes(m);
        let mut para =
            if notes.is_empty() { format!("All {} shards ran on the same hardware.", m.merged_from.len()) } else { notes.join(" ") };
        for note in commit_notes(m) {
            para = format!("{para} {note}");
        }
        out.push(Block::Para(para));
        out.push(Block::Table(Table::new(
            &[
                "Shard",
                "Folder",
                "Commit",
                "Hostname",
                "CPU",
                "Threads",
                "Device",
                "GPU",
                "CPU kernels",
                "Target features",
                "Started",
                "Ended",
            ],
            m.merged_from
                .iter()
                .map(|s| {
                    vec![
                        opt(&s.shard),
                        s.dir.clone(),
                        opt(&s.git_commit),
                        s.machine.hostname.clone(),
                        s.machine.cpu.clone(),
                        s.machine.threads.to_string(),
                        s.machine.device.clone(),
                        opt(&s.machine.gpu),
                        opt(&s.machine.kernel_path),
                        s.machine.target_features.join(" "),
                        s.started.clone(),
                        opt(&s.ended),
                    ]
                })
                .collect(),
        )));
    }
    out.push(Block::Heading(3, "Config file as given".into()));
    out.push(Block::Pre(if m.config_text.trim().is_empty() { "(empty)".into() } else { m.config_text.clone() }));
    out
}

/// What the folder holds, file by file.
pub fn files(f: &Folder) -> Vec<Block> {
    let mut rows: Vec<Vec<String>> = TABLES
        .iter()
        .map(|name| match f.table(name).and_then(|t| t.source.as_ref().map(|s| (s, t.rows))) {
            Some((src, rows)) => {
                vec![name.to_string(), src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), rows.to_string()]
            }
            None => vec![name.to_string(), "missing".into(), DASH.into()],
        })
        .collect();
    rows.push(vec![
        "run metadata".into(),
        if f.meta.is_some() || f.meta_raw.is_some() { "meta.json".into() } else { "missing".into() },
        DASH.into(),
    ]);
    rows.push(vec![
        "calibration".into(),
        if f.dir.join(decodebench_tables::records::CALIBRATION_FILE).is_file() { "calibration.json".into() } else { "missing".into() },
        DASH.into(),
    ]);
    vec![Block::Heading(2, "Files read".into()), Block::Table(Table::new(&["Table", "File", "Rows"], rows))]
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_commits_keep_the_dirty_mark() {
        let clean = "75ebbc2aaaa9ea91190324a8b963e2109bdeeed9";
        assert_eq!(super::short_commit(clean), "75ebbc2aaaa9");
        assert_eq!(super::short_commit(&format!("{clean}-dirty")), "75ebbc2aaaa9 (with uncommitted changes)");
        assert_eq!(super::short_commit("abc"), "abc");
    }
}

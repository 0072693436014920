//! Unit records → the analysis tables, as plain Rust rows first ([`compute`]) and then as polars
//! DataFrames ([`build`]), written as Parquet and CSV ([`write`]) and read back ([`read_table`],
//! [`read_csv_table`], [`read_summary`]).
//!
//! The tables and their columns (charts and reports are written against these names; new
//! columns only ever go at the end):
//! - `turns`: one row per configuration × question × repeat × turn, with the turn's paired
//!   comparison against the greedy turn of the same question, turn and repeat;
//! - `steps`: one row per decoding step (target forward) of every turn;
//! - `acceptance`: per configuration, acceptance by draft position / tree depth (`position`), by
//!   top-k rank of the accepted token (`rank`, Medusa) and the histogram of tokens accepted per
//!   step (`length`);
//! - `summary`: per configuration × category, and `all`;
//! - `calibration`: the forward-cost curves the cost model used (after `merge`, the first
//!   shard's; `calibration.json` keeps every shard's, and each shard's steps are priced by its own).
//!
//! Nothing here depends on the order of the records: they are sorted by configuration (in the
//! order of `meta.configs`), question id (numerically when all digits), repeat and turn first,
//! so shards merged in any order give the same tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use decodebench_strategies::StepRecord;
use polars::prelude::{Column, CsvReadOptions, CsvWriter, DataFrame, ParquetReader, ParquetWriter, Schema, SerReader, SerWriter};

use crate::cost;
use crate::quality;
use crate::records::{Calibration, ConfigKey, CostCurve, RunMeta, TurnRecord, UnitRecord};
use crate::stats;

/// The id of the pairing reference: greedy decoding, strategy `greedy`, config empty.
pub const GREEDY_ID: &str = "greedy";

/// The tables, by file name (`<name>.parquet`, `<name>.csv`).
pub const TABLE_NAMES: [&str; 5] = ["turns", "steps", "acceptance", "summary", "calibration"];

/// The category of the summary rows over every question.
pub const ALL_CATEGORIES: &str = "all";

/// One answered turn and its comparison with greedy decoding (a row of `turns`).
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRow {
    pub config_id: String,
    pub strategy: String,
    pub config: String,
    pub lossless: bool,
    pub question_id: String,
    pub category: String,
    pub repeat: usize,
    pub turn: usize,
    pub prompt_tokens: usize,
    /// Prompt tokens the conversation's cache already held (`prefix_cache`).
    pub reused_prompt_tokens: usize,
    pub new_tokens: usize,
    pub wall_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// new_tokens / wall_s (the whole call: prefill included).
    pub tokens_per_s: Option<f64>,
    /// (new_tokens − 1) / decode_s: the first token comes from the prompt forward.
    pub decode_tokens_per_s: Option<f64>,
    pub target_forwards: usize,
    /// Σ tokens_accepted / steps; None without steps.
    pub mean_accepted_tokens: Option<f64>,
    /// Sums over the steps.
    pub draft_s: f64,
    pub verify_s: f64,
    pub update_s: f64,
    pub nll_per_token: Option<f64>,
    pub stop: String,
    /// tokens_per_s / the greedy turn's (same question, turn, repeat); None without one.
    pub speedup: Option<f64>,
    /// Token ids equal to the greedy turn's; None without one.
    pub exact_match: Option<bool>,
    /// Where the token ids first differ from the greedy turn's; None when identical or no
    /// greedy turn.
    pub first_divergence: Option<usize>,
    /// ROUGE-L of the text against the greedy turn's.
    pub rouge_l: Option<f64>,
    pub distinct_2: Option<f64>,
    pub repetition_rate: Option<f64>,
    /// The unit's (all turns of this configuration, question and repeat).
    pub peak_rss_mb: f64,
}

/// One row of `acceptance`.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptanceRow {
    pub config_id: String,
    pub strategy: String,
    pub config: String,
    /// `position`, `rank` or `length`.
    pub kind: &'static str,
    /// 1-based draft position / tree depth / Medusa head + 1; None for `length`.
    pub depth: Option<usize>,
    /// 0-based top-k rank, `rank` rows only.
    pub rank: Option<usize>,
    /// Tokens accepted in a step, `length` rows only.
    pub length: Option<usize>,
    pub count: usize,
    pub total: usize,
    /// count / total; None when total is 0.
    pub rate: Option<f64>,
}

/// One row of `summary`: a configuration over one category, or over all (`all`).
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub strategy: String,
    pub config: String,
    pub config_id: String,
    pub lossless: bool,
    pub category: String,
    /// Turns in the group.
    pub turns: usize,
    /// Geometric mean of the turns' paired speedups over greedy decoding.
    pub speedup: Option<f64>,
    /// Its 95 % interval, bootstrapped over question ids.
    pub speedup_ci_low: Option<f64>,
    pub speedup_ci_high: Option<f64>,
    /// The cost model's prediction from the group's steps; None without calibration.
    pub predicted_speedup: Option<f64>,
    /// Σ tokens accepted / Σ steps over the group (tokens per target forward).
    pub mean_accepted_tokens: Option<f64>,
    /// Mean of the turns' tokens_per_s.
    pub tokens_per_s: Option<f64>,
    /// Share of the turns (with a greedy partner) token-identical to greedy decoding.
    pub exact_match: Option<f64>,
    /// Mean first divergence over the turns that are not identical; None when all are.
    pub first_divergence_mean: Option<f64>,
    /// Means over the turns that have a value.
    pub nll_per_token: Option<f64>,
    pub rouge_l: Option<f64>,
    pub distinct_2: Option<f64>,
    pub repetition_rate: Option<f64>,
    /// Max over the group's units.
    pub peak_rss_mb: Option<f64>,
}

/// Every row of the analysis, before it becomes DataFrames.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub turns: Vec<TurnRow>,
    pub acceptance: Vec<AcceptanceRow>,
    pub summary: Vec<SummaryRow>,
}

/// The analysis tables as DataFrames (see the module doc for the columns).
#[derive(Debug, Clone)]
pub struct Tables {
    pub turns: DataFrame,
    pub steps: DataFrame,
    pub acceptance: DataFrame,
    pub summary: DataFrame,
    pub calibration: DataFrame,
}

impl Tables {
    /// Each table with its name, in [`TABLE_NAMES`] order.
    pub fn named(&self) -> [(&'static str, &DataFrame); 5] {
        [
            ("turns", &self.turns),
            ("steps", &self.steps),
            ("acceptance", &self.acceptance),
            ("summary", &self.summary),
            ("calibration", &self.calibration),
        ]
    }
}

/// A unit record placed in the analysis order.
struct Unit<'a> {
    record: &'a UnitRecord,
    id: String,
    config_rank: usize,
}

/// The records in the analysis order: configurations as in `meta.configs` (ones the meta does
/// not list after them, by id), then question id, then repeat. Two records of one
/// configuration, question and repeat are an error: a merge of overlapping shards or a
/// resumed run that ran a unit twice, and either answer would be an arbitrary pick.
fn ordered<'a>(records: &'a [UnitRecord], meta: &RunMeta) -> Result<Vec<Unit<'a>>> {
    let ranks: HashMap<String, usize> = meta.configs.iter().enumerate().map(|(i, c)| (c.id(), i)).collect();
    let mut units: Vec<Unit> = records
        .iter()
        .map(|record| {
            let id = record.key.id();
            let config_rank = ranks.get(&id).copied().unwrap_or(usize::MAX);
            Unit { record, id, config_rank }
        })
        .collect();
    units.sort_by(|a, b| {
        (a.config_rank, &a.id, question_order(&a.record.question_id), a.record.repeat).cmp(&(
            b.config_rank,
            &b.id,
            question_order(&b.record.question_id),
            b.record.repeat,
        ))
    });
    for w in units.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.id == b.id && a.record.question_id == b.record.question_id && a.record.repeat == b.record.repeat {
            bail!(
                "two records of configuration {}, question {}, repeat {} (units {} and {}): \
                 a unit ran twice or merged shards overlap",
                a.id,
                a.record.question_id,
                a.record.repeat,
                a.record.unit,
                b.record.unit
            );
        }
    }
    Ok(units)
}

/// Sort key of a question id: all-digit ids numerically (MT-Bench's 81..160), before the others,
/// which sort as text.
pub fn question_order(id: &str) -> (bool, usize, &str, &str) {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        let trimmed = id.trim_start_matches('0');
        (false, trimmed.len(), trimmed, id)
    } else {
        (true, 0, "", id)
    }
}

fn turns_in_order(record: &UnitRecord) -> Vec<&TurnRecord> {
    let mut turns: Vec<&TurnRecord> = record.turns.iter().collect();
    turns.sort_by_key(|t| t.turn);
    turns
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    let r = num / den;
    (den > 0.0 && r.is_finite()).then_some(r)
}

fn turn_row(unit: &Unit, t: &TurnRecord, greedy: Option<&TurnRecord>) -> TurnRow {
    let r = unit.record;
    let tokens_per_s = ratio(t.new_tokens as f64, t.wall_s);
    let accepted: usize = t.steps.iter().map(|s| s.tokens_accepted).sum();
    let sum = |f: fn(&StepRecord) -> f64| t.steps.iter().map(f).sum::<f64>();
    let greedy_tokens_per_s = greedy.and_then(|g| ratio(g.new_tokens as f64, g.wall_s));
    TurnRow {
        config_id: unit.id.clone(),
        strategy: r.key.strategy.clone(),
        config: r.key.config.clone(),
        lossless: r.key.lossless,
        question_id: r.question_id.clone(),
        category: r.category.clone(),
        repeat: r.repeat,
        turn: t.turn,
        prompt_tokens: t.prompt_tokens,
        reused_prompt_tokens: t.reused_prompt_tokens,
        new_tokens: t.new_tokens,
        wall_s: t.wall_s,
        prefill_s: t.prefill_s,
        decode_s: t.decode_s,
        tokens_per_s,
        decode_tokens_per_s: if t.new_tokens == 0 { None } else { ratio((t.new_tokens - 1) as f64, t.decode_s) },
        target_forwards: t.target_forwards,
        mean_accepted_tokens: ratio(accepted as f64, t.steps.len() as f64),
        draft_s: sum(|s| s.draft_s),
        verify_s: sum(|s| s.verify_s),
        update_s: sum(|s| s.update_s),
        nll_per_token: t.nll_per_token,
        stop: t.stop.clone(),
        speedup: tokens_per_s.zip(greedy_tokens_per_s).and_then(|(a, g)| ratio(a, g)),
        exact_match: greedy.map(|g| g.token_ids == t.token_ids),
        first_divergence: greedy.and_then(|g| quality::first_divergence(&t.token_ids, &g.token_ids)),
        rouge_l: greedy.map(|g| quality::rouge_l(&t.text, &g.text)),
        distinct_2: quality::distinct_2(&t.token_ids),
        repetition_rate: quality::repetition_rate(&t.token_ids),
        peak_rss_mb: r.peak_rss_mb,
    }
}

/// Acceptance rows of one configuration's steps (see the module doc of `acceptance`).
fn acceptance_rows(key: &ConfigKey, id: &str, steps: &[&StepRecord]) -> Vec<AcceptanceRow> {
    let row = |kind, depth, rank, length, count: usize, total: usize| AcceptanceRow {
        config_id: id.to_string(),
        strategy: key.strategy.clone(),
        config: key.config.clone(),
        kind,
        depth,
        rank,
        length,
        count,
        total,
        rate: ratio(count as f64, total as f64),
    };
    let mut rows = Vec::new();
    // By position: depth d was put to the target in steps with proposed_depth ≥ d, and
    // accepted in those with accepted_depth ≥ d.
    let max_depth = steps.iter().map(|s| s.proposed_depth).max().unwrap_or(0);
    for d in 1..=max_depth {
        let total = steps.iter().filter(|s| s.proposed_depth >= d).count();
        let count = steps.iter().filter(|s| s.accepted_depth >= d).count();
        rows.push(row("position", Some(d), None, None, count, total));
    }
    // By rank: among the steps that accepted a token at depth d (have a rank there), how often
    // it was the head's r-th best.
    let mut ranks: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut at_depth: BTreeMap<usize, usize> = BTreeMap::new();
    for s in steps {
        for (i, &r) in s.accepted_ranks.iter().enumerate() {
            *ranks.entry((i + 1, r)).or_default() += 1;
            *at_depth.entry(i + 1).or_default() += 1;
        }
    }
    for ((d, r), count) in ranks {
        rows.push(row("rank", Some(d), Some(r), None, count, at_depth[&d]));
    }
    // Length histogram, every length between the shortest and the longest seen (zeros
    // included, so a chart's bars line up).
    let lengths: BTreeMap<usize, usize> = steps.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.tokens_accepted).or_default() += 1;
        m
    });
    if let (Some((&lo, _)), Some((&hi, _))) = (lengths.first_key_value(), lengths.last_key_value()) {
        for len in lo..=hi {
            let count = lengths.get(&len).copied().unwrap_or(0);
            rows.push(row("length", None, None, Some(len), count, steps.len()));
        }
    }
    rows
}

fn mean_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    stats::mean(&v)
}

/// The summary row of one configuration over a group of its turns (with their steps).
fn summary_row(key: &ConfigKey, id: &str, category: &str, turns: &[(&TurnRow, &[StepRecord])], calibration: &Calibration) -> SummaryRow {
    // Paired speedups, grouped by question id for the bootstrap (sorted: order-free).
    let mut by_question: BTreeMap<(bool, usize, &str, &str), Vec<f64>> = BTreeMap::new();
    for (t, _) in turns {
        if let Some(s) = t.speedup.filter(|s| s.is_finite() && *s > 0.0) {
            by_question.entry(question_order(&t.question_id)).or_default().push(s);
        }
    }
    let groups: Vec<Vec<f64>> = by_question.into_values().collect();
    let ci = stats::paired_bootstrap(&groups, stats::DEFAULT_RESAMPLES, stats::DEFAULT_SEED);
    let steps: Vec<StepRecord> = turns.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    let predicted = predicted_speedup(&key.strategy, turns, calibration);
    let accepted: usize = steps.iter().map(|s| s.tokens_accepted).sum();
    let paired: Vec<&TurnRow> = turns.iter().map(|(t, _)| *t).filter(|t| t.exact_match.is_some()).collect();
    let identical = paired.iter().filter(|t| t.exact_match == Some(true)).count();
    SummaryRow {
        strategy: key.strategy.clone(),
        config: key.config.clone(),
        config_id: id.to_string(),
        lossless: key.lossless,
        category: category.to_string(),
        turns: turns.len(),
        speedup: ci.map(|c| c.estimate),
        speedup_ci_low: ci.map(|c| c.low),
        speedup_ci_high: ci.map(|c| c.high),
        predicted_speedup: predicted,
        mean_accepted_tokens: ratio(accepted as f64, steps.len() as f64),
        tokens_per_s: mean_of(turns.iter().map(|(t, _)| t.tokens_per_s)),
        exact_match: ratio(identical as f64, paired.len() as f64),
        first_divergence_mean: mean_of(turns.iter().map(|(t, _)| t.first_divergence.map(|d| d as f64))),
        nll_per_token: mean_of(turns.iter().map(|(t, _)| t.nll_per_token)),
        rouge_l: mean_of(turns.iter().map(|(t, _)| t.rouge_l)),
        distinct_2: mean_of(turns.iter().map(|(t, _)| t.distinct_2)),
        repetition_rate: mean_of(turns.iter().map(|(t, _)| t.repetition_rate)),
        peak_rss_mb: turns.iter().map(|(t, _)| t.peak_rss_mb).reduce(f64::max),
    }
}

/// The cost model's prediction for `turns`, each turn's steps priced by the curves of the
/// machine that ran it (one set of curves unless the run was merged from shards).
fn predicted_speedup(strategy: &str, turns: &[(&TurnRow, &[StepRecord])], calibration: &Calibration) -> Option<f64> {
    // Curve sets are told apart by address: one per shard, or the run's own.
    let mut by_curves: Vec<(&BTreeMap<String, CostCurve>, Vec<StepRecord>)> = Vec::new();
    for (t, steps) in turns {
        let curves = calibration.curves_for(&t.question_id);
        match by_curves.iter_mut().find(|(c, _)| std::ptr::eq(*c, curves)) {
            Some((_, all)) => all.extend(steps.iter().cloned()),
            None => by_curves.push((curves, steps.to_vec())),
        }
    }
    let machines: Vec<cost::MachineSteps> = by_curves
        .iter()
        .map(|(curves, steps)| cost::MachineSteps { steps, target: curves.get("target"), draft: curves.get("draft") })
        .collect();
    cost::predicted_speedup_by_machine(&machines, strategy)
}

/// Every row of the analysis of `records` (see the module doc). The greedy baseline
/// (configuration id `greedy`) is the pairing reference; without it the paired columns are null.
pub fn compute(records: &[UnitRecord], meta: &RunMeta, calibration: &Calibration) -> Result<Rows> {
    let units = ordered(records, meta)?;
    let mut greedy: HashMap<(&str, usize, usize), &TurnRecord> = HashMap::new();
    for u in units.iter().filter(|u| u.id == GREEDY_ID) {
        for t in &u.record.turns {
            greedy.insert((u.record.question_id.as_str(), u.record.repeat, t.turn), t);
        }
    }
    let mut rows = Rows::default();
    // Per turn row, its steps (same order as rows.turns).
    let mut turn_steps: Vec<&[StepRecord]> = Vec::new();
    for u in &units {
        for t in turns_in_order(u.record) {
            let partner = greedy.get(&(u.record.question_id.as_str(), u.record.repeat, t.turn));
            rows.turns.push(turn_row(u, t, partner.copied()));
            turn_steps.push(&t.steps);
        }
    }
    // Configurations in analysis order, each with the range of its turn rows.
    let mut start = 0;
    while start < rows.turns.len() {
        let id = rows.turns[start].config_id.clone();
        let end = start + rows.turns[start..].iter().take_while(|t| t.config_id == id).count();
        let key = &units.iter().find(|u| u.id == id).expect("a unit of every row's config").record.key;
        let group: Vec<(&TurnRow, &[StepRecord])> = rows.turns[start..end].iter().zip(turn_steps[start..end].iter().copied()).collect();
        let steps: Vec<&StepRecord> = group.iter().flat_map(|(_, s)| s.iter()).collect();
        rows.acceptance.extend(acceptance_rows(key, &id, &steps));
        let categories: BTreeSet<&str> = group.iter().map(|(t, _)| t.category.as_str()).collect();
        let mut summary = Vec::new();
        for category in categories {
            let in_category: Vec<_> = group.iter().filter(|(t, _)| t.category == category).copied().collect();
            summary.push(summary_row(key, &id, category, &in_category, calibration));
        }
        summary.push(summary_row(key, &id, ALL_CATEGORIES, &group, calibration));
        rows.summary.extend(summary);
        start = end;
    }
    Ok(rows)
}

fn ints(values: impl Iterator<Item = usize>) -> Vec<i64> {
    values.map(|v| v as i64).collect()
}

fn opt_ints(values: impl Iterator<Item = Option<usize>>) -> Vec<Option<i64>> {
    values.map(|v| v.map(|v| v as i64)).collect()
}

fn frame(name: &str, columns: Vec<Column>) -> Result<DataFrame> {
    let height = columns.first().map_or(0, |c| c.len());
    DataFrame::new(height, columns).with_context(|| format!("cannot build the {name} table"))
}

macro_rules! column {
    ($rows:expr, $name:literal, |$r:ident| $value:expr) => {
        Column::new($name.into(), $rows.iter().map(|$r| $value).collect::<Vec<_>>())
    };
}

fn turns_frame(rows: &[TurnRow]) -> Result<DataFrame> {
    frame(
        "turns",
        vec![
            column!(rows, "config_id", |r| r.config_id.as_str()),
            column!(rows, "strategy", |r| r.strategy.as_str()),
            column!(rows, "config", |r| r.config.as_str()),
            column!(rows, "lossless", |r| r.lossless),
            column!(rows, "question_id", |r| r.question_id.as_str()),
            column!(rows, "category", |r| r.category.as_str()),
            Column::new("repeat".into(), ints(rows.iter().map(|r| r.repeat))),
            Column::new("turn".into(), ints(rows.iter().map(|r| r.turn))),
            Column::new("prompt_tokens".into(), ints(rows.iter().map(|r| r.prompt_tokens))),
            Column::new("reused_prompt_tokens".into(), ints(rows.iter().map(|r| r.reused_prompt_tokens))),
            Column::new("new_tokens".into(), ints(rows.iter().map(|r| r.new_tokens))),
            column!(rows, "wall_s", |r| r.wall_s),
            column!(rows, "prefill_s", |r| r.prefill_s),
            column!(rows, "decode_s", |r| r.decode_s),
            column!(rows, "tokens_per_s", |r| r.tokens_per_s),
            column!(rows, "decode_tokens_per_s", |r| r.decode_tokens_per_s),
            Column::new("target_forwards".into(), ints(rows.iter().map(|r| r.target_forwards))),
            column!(rows, "mean_accepted_tokens", |r| r.mean_accepted_tokens),
            column!(rows, "draft_s", |r| r.draft_s),
            column!(rows, "verify_s", |r| r.verify_s),
            column!(rows, "update_s", |r| r.update_s),
            column!(rows, "nll_per_token", |r| r.nll_per_token),
            column!(rows, "stop", |r| r.stop.as_str()),
            column!(rows, "speedup", |r| r.speedup),
            column!(rows, "exact_match", |r| r.exact_match),
            Column::new("first_divergence".into(), opt_ints(rows.iter().map(|r| r.first_divergence))),
            column!(rows, "rouge_l", |r| r.rouge_l),
            column!(rows, "distinct_2", |r| r.distinct_2),
            column!(rows, "repetition_rate", |r| r.repetition_rate),
            column!(rows, "peak_rss_mb", |r| r.peak_rss_mb),
        ],
    )
}

fn steps_frame(units: &[Unit]) -> Result<DataFrame> {
    struct Row<'a> {
        unit: &'a Unit<'a>,
        turn: usize,
        step: usize,
        s: &'a StepRecord,
    }
    let rows: Vec<Row> = units
        .iter()
        .flat_map(|unit| {
            turns_in_order(unit.record)
                .into_iter()
                .flat_map(move |t| t.steps.iter().enumerate().map(move |(step, s)| Row { unit, turn: t.turn, step, s }))
        })
        .collect();
    frame(
        "steps",
        vec![
            column!(rows, "config_id", |r| r.unit.id.as_str()),
            column!(rows, "strategy", |r| r.unit.record.key.strategy.as_str()),
            column!(rows, "config", |r| r.unit.record.key.config.as_str()),
            column!(rows, "question_id", |r| r.unit.record.question_id.as_str()),
            column!(rows, "category", |r| r.unit.record.category.as_str()),
            Column::new("repeat".into(), ints(rows.iter().map(|r| r.unit.record.repeat))),
            Column::new("turn".into(), ints(rows.iter().map(|r| r.turn))),
            Column::new("step".into(), ints(rows.iter().map(|r| r.step))),
            Column::new("tokens_proposed".into(), ints(rows.iter().map(|r| r.s.tokens_proposed))),
            Column::new("tokens_accepted".into(), ints(rows.iter().map(|r| r.s.tokens_accepted))),
            Column::new("accepted_depth".into(), ints(rows.iter().map(|r| r.s.accepted_depth))),
            Column::new("proposed_depth".into(), ints(rows.iter().map(|r| r.s.proposed_depth))),
            Column::new("forward_tokens".into(), ints(rows.iter().map(|r| r.s.forward_tokens))),
            column!(rows, "draft_s", |r| r.s.draft_s),
            column!(rows, "verify_s", |r| r.s.verify_s),
            column!(rows, "update_s", |r| r.s.update_s),
            Column::new("match_len".into(), opt_ints(rows.iter().map(|r| r.s.match_len))),
            column!(rows, "draft_source", |r| r.s.draft_source.clone()),
        ],
    )
}

fn acceptance_frame(rows: &[AcceptanceRow]) -> Result<DataFrame> {
    frame(
        "acceptance",
        vec![
            column!(rows, "config_id", |r| r.config_id.as_str()),
            column!(rows, "strategy", |r| r.strategy.as_str()),
            column!(rows, "config", |r| r.config.as_str()),
            column!(rows, "kind", |r| r.kind),
            Column::new("depth".into(), opt_ints(rows.iter().map(|r| r.depth))),
            Column::new("rank".into(), opt_ints(rows.iter().map(|r| r.rank))),
            Column::new("length".into(), opt_ints(rows.iter().map(|r| r.length))),
            Column::new("count".into(), ints(rows.iter().map(|r| r.count))),
            Column::new("total".into(), ints(rows.iter().map(|r| r.total))),
            column!(rows, "rate", |r| r.rate),
        ],
    )
}

fn summary_frame(rows: &[SummaryRow]) -> Result<DataFrame> {
    frame(
        "summary",
        vec![
            column!(rows, "strategy", |r| r.strategy.as_str()),
            column!(rows, "config", |r| r.config.as_str()),
            column!(rows, "config_id", |r| r.config_id.as_str()),
            column!(rows, "lossless", |r| r.lossless),
            column!(rows, "category", |r| r.category.as_str()),
            Column::new("turns".into(), ints(rows.iter().map(|r| r.turns))),
            column!(rows, "speedup", |r| r.speedup),
            column!(rows, "speedup_ci_low", |r| r.speedup_ci_low),
            column!(rows, "speedup_ci_high", |r| r.speedup_ci_high),
            column!(rows, "predicted_speedup", |r| r.predicted_speedup),
            column!(rows, "mean_accepted_tokens", |r| r.mean_accepted_tokens),
            column!(rows, "tokens_per_s", |r| r.tokens_per_s),
            column!(rows, "exact_match", |r| r.exact_match),
            column!(rows, "first_divergence_mean", |r| r.first_divergence_mean),
            column!(rows, "nll_per_token", |r| r.nll_per_token),
            column!(rows, "rouge_l", |r| r.rouge_l),
            column!(rows, "distinct_2", |r| r.distinct_2),
            column!(rows, "repetition_rate", |r| r.repetition_rate),
            column!(rows, "peak_rss_mb", |r| r.peak_rss_mb),
        ],
    )
}

fn calibration_frame(calibration: &Calibration) -> Result<DataFrame> {
    let rows: Vec<(&str, usize, usize, f64, Option<f64>)> = calibration
        .models
        .iter()
        .flat_map(|(role, c)| c.forward_ms.iter().map(move |(&n, &ms)| (role.as_str(), c.context, n, ms, c.bandwidth_gbs)))
        .collect();
    frame(
        "calibration",
        vec![
            column!(rows, "role", |r| r.0),
            Column::new("context".into(), ints(rows.iter().map(|r| r.1))),
            Column::new("tokens".into(), ints(rows.iter().map(|r| r.2))),
            column!(rows, "forward_ms", |r| r.3),
            column!(rows, "bandwidth_gbs", |r| r.4),
        ],
    )
}

/// The analysis tables of `records` (see the module doc).
pub fn build(records: &[UnitRecord], meta: &RunMeta, calibration: &Calibration) -> Result<Tables> {
    let rows = compute(records, meta, calibration)?;
    frames(&rows, records, meta, calibration)
}

/// The DataFrames of rows [`compute`] made from the same `records`.
pub fn frames(rows: &Rows, records: &[UnitRecord], meta: &RunMeta, calibration: &Calibration) -> Result<Tables> {
    Ok(Tables {
        turns: turns_frame(&rows.turns)?,
        steps: steps_frame(&ordered(records, meta)?)?,
        acceptance: acceptance_frame(&rows.acceptance)?,
        summary: summary_frame(&rows.summary)?,
        calibration: calibration_frame(calibration)?,
    })
}

/// Each table's columns and types: those of the tables of no records.
pub fn schema(name: &str) -> Result<Schema> {
    let empty = Tables {
        turns: turns_frame(&[])?,
        steps: steps_frame(&[])?,
        acceptance: acceptance_frame(&[])?,
        summary: summary_frame(&[])?,
        calibration: calibration_frame(&Calibration::default())?,
    };
    let found = empty.named().into_iter().find(|(n, _)| *n == name).map(|(_, df)| df.schema().as_ref().clone());
    match found {
        Some(schema) => Ok(schema),
        None => bail!("no table named {name} (the tables are {})", TABLE_NAMES.join(", ")),
    }
}

/// Writes `<name>.parquet` and `<name>.csv` of every table into `dir` (created if missing);
/// returns the paths written.
pub fn write(dir: &Path, tables: &Tables) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, df) in tables.named() {
        let mut df = df.clone();
        let path = dir.join(format!("{name}.parquet"));
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        ParquetWriter::new(file).finish(&mut df).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        let path = dir.join(format!("{name}.csv"));
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        CsvWriter::new(file).finish(&mut df).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Reads `dir/<name>.parquet`.
pub fn read_table(dir: &Path, name: &str) -> Result<DataFrame> {
    let path = dir.join(format!("{name}.parquet"));
    let file = File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    ParquetReader::new(file).finish().with_context(|| format!("{}: not a readable Parquet table", path.display()))
}

/// Reads `dir/<name>.csv` with the table's own column types ([`schema`]), so an all-null
/// column keeps its type. polars writes an empty string as `""` and a null as nothing, so both
/// read back as they were.
pub fn read_csv_table(dir: &Path, name: &str) -> Result<DataFrame> {
    let path = dir.join(format!("{name}.csv"));
    let schema = schema(name)?;
    CsvReadOptions::default()
        .with_has_header(true)
        .with_schema(Some(Arc::new(schema)))
        .try_into_reader_with_file_path(Some(path.clone()))
        .and_then(|r| r.finish())
        .with_context(|| format!("{}: not a readable {name} table", path.display()))
}

/// The summary rows of `dir/summary.parquet`, as [`compute`] made them.
pub fn read_summary(dir: &Path) -> Result<Vec<SummaryRow>> {
    let path = dir.join("summary.parquet");
    let df = read_table(dir, "summary")?;
    summary_rows(&df).with_context(|| format!("{}: not a summary table", path.display()))
}

/// [`SummaryRow`]s of a `summary` DataFrame.
pub fn summary_rows(df: &DataFrame) -> Result<Vec<SummaryRow>> {
    let strs = |name: &str| -> Result<Vec<String>> {
        let c = df.column(name).with_context(|| format!("no column {name}"))?;
        let c = c.str().with_context(|| format!("column {name} is not text"))?;
        Ok(c.iter().map(|v| v.unwrap_or_default().to_string()).collect())
    };
    let floats = |name: &str| -> Result<Vec<Option<f64>>> {
        let c = df.column(name).with_context(|| format!("no column {name}"))?;
        let c = c.f64().with_context(|| format!("column {name} is not f64"))?;
        Ok(c.iter().collect())
    };
    let (strategy, config, config_id, category) = (strs("strategy")?, strs("config")?, strs("config_id")?, strs("category")?);
    let lossless: Vec<bool> = df
        .column("lossless")
        .context("no column lossless")?
        .bool()
        .context("column lossless is not boolean")?
        .iter()
        .map(|v| v.unwrap_or(false))
        .collect();
    let turns: Vec<usize> = df
        .column("turns")
        .context("no column turns")?
        .i64()
        .context("column turns is not i64")?
        .iter()
        .map(|v| v.unwrap_or(0) as usize)
        .collect();
    let f: Vec<Vec<Option<f64>>> = [
        "speedup",
        "speedup_ci_low",
        "speedup_ci_high",
        "predicted_speedup",
        "mean_accepted_tokens",
        "tokens_per_s",
        "exact_match",
        "first_divergence_mean",
        "nll_per_token",
        "rouge_l",
        "distinct_2",
        "repetition_rate",
        "peak_rss_mb",
    ]
    .iter()
    .map(|n| floats(n))
    .collect::<Result<_>>()?;
    Ok((0..df.height())
        .map(|i| SummaryRow {
            strategy: strategy[i].clone(),
            config: config[i].clone(),
            config_id: config_id[i].clone(),
            lossless: lossless[i],
            category: category[i].clone(),
            turns: turns[i],
            speedup: f[0][i],
            speedup_ci_low: f[1][i],
            speedup_ci_high: f[2][i],
            predicted_speedup: f[3][i],
            mean_accepted_tokens: f[4][i],
            tokens_per_s: f[5][i],
            exact_match: f[6][i],
            first_divergence_mean: f[7][i],
            nll_per_token: f[8][i],
            rouge_l: f[9][i],
            distinct_2: f[10][i],
            repetition_rate: f[11][i],
            peak_rss_mb: f[12][i],
        })
        .collect())
}

//! The analysis on hand-made records (no model): paired speedups, exact match, acceptance,
//! summary, the written tables read back, the answer files, and order independence.

use std::collections::BTreeMap;
use std::path::Path;

use decodebench_strategies::StepRecord;
use decodebench_tables::analysis::{analyse, analyse_records, format_summary, lossless_failures};
use decodebench_tables::polars::prelude::{AnyValue, DataFrame};
use decodebench_tables::records::{
    Calibration, ConfigKey, CostCurve, MachineMeta, ModelMeta, RecordWriter, RunMeta, ShardCalibration, TurnRecord, UnitRecord,
};
use decodebench_tables::tables::{self, compute, read_csv_table, read_summary, read_table, schema, SummaryRow, TABLE_NAMES};

fn key(strategy: &str, config: &str, lossless: bool) -> ConfigKey {
    ConfigKey { strategy: strategy.into(), config: config.into(), params: BTreeMap::new(), lossless }
}

fn greedy() -> ConfigKey {
    key("greedy", "", true)
}

fn spec() -> ConfigKey {
    key("speculative", "accept=greedy,gamma=2", true)
}

fn sample() -> ConfigKey {
    key("sample", "seed=1,temperature=0.7", false)
}

fn meta(configs: Vec<ConfigKey>) -> RunMeta {
    RunMeta {
        config_path: "sweep.toml".into(),
        config_text: String::new(),
        sweep_hash: "abc".into(),
        configs,
        questions: vec!["1".into(), "2".into()],
        turns: 2,
        max_new_tokens: 16,
        repeats: 1,
        warmup: 0,
        seed: 0,
        prefix_cache: false,
        shard: None,
        models: vec![ModelMeta {
            role: "target".into(),
            name: "tiny-model".into(),
            path: "/m/tiny.gguf".into(),
            sha256: None,
            quantization: None,
        }],
        heads_note: None,
        git_commit: None,
        decodebench_version: "0.1.0".into(),
        machine: MachineMeta {
            hostname: "h".into(),
            cpu: "c".into(),
            simd: vec![],
            target_features: vec![],
            threads: 2,
            device: "cpu".into(),
            conversions: vec![],
            node: None,
            gpu: None,
            kernel_path: None,
        },
        started: "2026-01-01T00:00:00Z".into(),
        ended: Some("2026-01-01T00:01:40Z".into()),
        merged_from: vec![],
        earlier_machines: vec![],
        partial: vec![],
    }
}

fn step(proposed: usize, accepted: usize, depth: usize, proposed_depth: usize) -> StepRecord {
    StepRecord {
        tokens_proposed: proposed,
        tokens_accepted: accepted,
        accepted_depth: depth,
        forward_tokens: proposed + 1,
        proposed_depth,
        draft_s: 0.001,
        verify_s: 0.01,
        update_s: 0.0001,
        ..Default::default()
    }
}

/// A turn of `tokens` (text: the ids as words) answered in `wall_s`.
fn turn(n: usize, tokens: &[u32], wall_s: f64, steps: Vec<StepRecord>) -> TurnRecord {
    TurnRecord {
        turn: n,
        prompt_tokens: 10,
        reused_prompt_tokens: 0,
        new_tokens: tokens.len(),
        token_ids: tokens.to_vec(),
        text: tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" "),
        stop: "max_tokens".into(),
        wall_s,
        prefill_s: 0.1 * wall_s,
        decode_s: 0.9 * wall_s,
        target_forwards: steps.len() + 1,
        nll_per_token: Some(1.5),
        steps,
    }
}

fn unit(key: ConfigKey, question: &str, category: &str, repeat: usize, turns: Vec<TurnRecord>) -> UnitRecord {
    UnitRecord {
        unit: format!("{}/{question}/{repeat}", key.id()),
        key,
        question_id: question.into(),
        category: category.into(),
        repeat,
        peak_rss_mb: 100.0 + turns.len() as f64,
        turns,
    }
}

/// Greedy and a lossless speculative configuration on questions 1 (coding, 2 turns) and 2
/// (writing, 1 turn):
/// - greedy: 8 tokens in 2 s per turn (4 tok/s);
/// - speculative q1 t1: identical tokens in 1 s (8 tok/s: speedup 2), steps accepting 3, 3, 2;
/// - speculative q1 t2: identical tokens in 0.5 s (16 tok/s: speedup 4), steps 3, 3, 2;
/// - speculative q2 t1: diverges at token 5, in 2 s (speedup 1), steps 3, 1, 3, 1.
fn hand_records() -> Vec<UnitRecord> {
    let a: Vec<u32> = (1..=8).collect();
    let b: Vec<u32> = vec![11, 12, 13, 14, 15, 16, 17, 18];
    let mut b2 = b.clone();
    b2[5] = 99;
    let g = |n| (0..n).map(|_| step(0, 1, 0, 0)).collect::<Vec<_>>();
    let s332 = || vec![step(2, 3, 2, 2), step(2, 3, 2, 2), step(2, 2, 1, 2)];
    vec![
        unit(greedy(), "1", "coding", 0, vec![turn(1, &a, 2.0, g(7)), turn(2, &b, 2.0, g(7))]),
        unit(greedy(), "2", "writing", 0, vec![turn(1, &b, 2.0, g(7))]),
        unit(spec(), "1", "coding", 0, vec![turn(1, &a, 1.0, s332()), turn(2, &b, 0.5, s332())]),
        unit(
            spec(),
            "2",
            "writing",
            0,
            vec![turn(1, &b2, 2.0, vec![step(2, 3, 2, 2), step(2, 1, 0, 2), step(2, 3, 2, 2), step(2, 1, 0, 2)])],
        ),
    ]
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

fn summary<'a>(rows: &'a [SummaryRow], id: &str, category: &str) -> &'a SummaryRow {
    rows.iter().find(|r| r.config_id == id && r.category == category).expect("summary row")
}

#[test]
fn paired_speedup_and_exact_match_by_hand() {
    let records = hand_records();
    let rows = compute(&records, &meta(vec![greedy(), spec()]), &Calibration::default()).unwrap();
    let spec_id = spec().id();
    let t: Vec<_> = rows.turns.iter().filter(|t| t.config_id == spec_id).collect();
    assert_eq!(t.len(), 3);
    // Per turn, tokens_per_s = 8 / wall_s against greedy's 8 / 2 = 4.
    assert!(close(t[0].speedup, 2.0) && close(t[1].speedup, 4.0) && close(t[2].speedup, 1.0));
    assert_eq!(t.iter().map(|t| t.exact_match).collect::<Vec<_>>(), [Some(true), Some(true), Some(false)]);
    assert_eq!(t.iter().map(|t| t.first_divergence).collect::<Vec<_>>(), [None, None, Some(5)]);
    // Texts "11 12 13 14 15 99 17 18" vs "11 … 18": LCS 7 of 8 words each, F = 14/16.
    assert!(close(t[2].rouge_l, 14.0 / 16.0) && close(t[0].rouge_l, 1.0));
    // Steps 3, 3, 2: 8 / 3; decode 7 tokens in 0.9 s.
    assert!(close(t[0].mean_accepted_tokens, 8.0 / 3.0));
    assert!(close(t[0].decode_tokens_per_s, 7.0 / 0.9));
    assert!(close(Some(t[0].draft_s), 0.003));
    // Greedy is paired with itself.
    let g = rows.turns.iter().find(|t| t.config_id == "greedy").unwrap();
    assert!(close(g.speedup, 1.0) && g.exact_match == Some(true));

    let all = summary(&rows.summary, &spec_id, "all");
    assert_eq!(all.turns, 3);
    // Geometric mean of 2, 4, 1 = 8^(1/3) = 2.
    assert!(close(all.speedup, 2.0), "{all:?}");
    assert!(all.speedup_ci_low.unwrap() <= 2.0 && 2.0 <= all.speedup_ci_high.unwrap());
    assert!(close(all.exact_match, 2.0 / 3.0));
    assert!(close(all.first_divergence_mean, 5.0));
    // Σ accepted (8 + 8 + 8) / 10 steps.
    assert!(close(all.mean_accepted_tokens, 2.4));
    // Mean of 8, 16 and 4 tok/s.
    assert!(close(all.tokens_per_s, 28.0 / 3.0));
    assert!(close(all.peak_rss_mb, 102.0));
    // No calibration, no prediction.
    assert_eq!(all.predicted_speedup, None);
    // Per category: coding is both identical turns (speedups 2, 4: √8).
    let coding = summary(&rows.summary, &spec_id, "coding");
    assert!(close(coding.speedup, 8f64.sqrt()) && close(coding.exact_match, 1.0));
    assert_eq!(coding.first_divergence_mean, None);
    // Question 2 has one turn: one bootstrap group with speedup 1: the interval is [1, 1].
    let writing = summary(&rows.summary, &spec_id, "writing");
    assert_eq!((writing.speedup, writing.speedup_ci_low, writing.speedup_ci_high), (Some(1.0), Some(1.0), Some(1.0)));

    // Row order: configs as in meta, categories sorted, `all` last.
    let order: Vec<(&str, &str)> = rows.summary.iter().map(|r| (r.config_id.as_str(), r.category.as_str())).collect();
    assert_eq!(
        order,
        [
            ("greedy", "coding"),
            ("greedy", "writing"),
            ("greedy", "all"),
            (spec_id.as_str(), "coding"),
            (spec_id.as_str(), "writing"),
            (spec_id.as_str(), "all"),
        ]
    );

    let failures = lossless_failures(&rows.summary, &rows.turns);
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].config_id, spec_id);
    assert_eq!(failures[0].divergences.len(), 1);
    assert_eq!((failures[0].divergences[0].question_id.as_str(), failures[0].divergences[0].position), ("2", 5));
}

#[test]
fn no_greedy_partner_gives_nulls() {
    // A sampling turn with repeat 1 has no greedy turn of repeat 1.
    let mut records = hand_records();
    records.push(unit(sample(), "1", "coding", 1, vec![turn(1, &[1, 2, 3], 1.0, vec![step(0, 1, 0, 0); 2])]));
    let rows = compute(&records, &meta(vec![greedy(), spec(), sample()]), &Calibration::default()).unwrap();
    let t = rows.turns.iter().find(|t| t.strategy == "sample").unwrap();
    assert_eq!((t.speedup, t.exact_match, t.first_divergence, t.rouge_l), (None, None, None, None));
    let all = summary(&rows.summary, &sample().id(), "all");
    assert_eq!((all.speedup, all.exact_match), (None, None));
    // Not lossless: never a failure.
    assert!(lossless_failures(&rows.summary, &rows.turns).iter().all(|f| f.config_id != sample().id()));
}

#[test]
fn predicted_speedup_uses_the_calibration() {
    let mut calibration = Calibration::default();
    let curve =
        |points: &[(usize, f64)]| CostCurve { context: 256, forward_ms: points.iter().copied().collect(), bandwidth_gbs: Some(50.0) };
    calibration.models.insert("target".into(), curve(&[(1, 10.0), (2, 12.0), (4, 16.0)]));
    calibration.models.insert("draft".into(), curve(&[(1, 1.0), (2, 1.5)]));
    let rows = compute(&hand_records(), &meta(vec![greedy(), spec()]), &calibration).unwrap();
    // Speculative, all 10 steps: τ̄ = 24/10, n̄ = 3 (γ = 2), c_t(3) = 14, draft 2 × 1 ms:
    // 2.4 · 10 / (14 + 2) = 1.5.
    let all = summary(&rows.summary, &spec().id(), "all");
    assert!(close(all.predicted_speedup, 1.5), "{all:?}");
    assert!(close(summary(&rows.summary, "greedy", "all").predicted_speedup, 1.0));
}

#[test]
fn merged_shards_are_priced_by_their_own_curves() {
    let curve = |points: &[(usize, f64)]| CostCurve { context: 256, forward_ms: points.iter().copied().collect(), bandwidth_gbs: None };
    let (target_a, draft_a) = (curve(&[(1, 10.0), (2, 12.0), (4, 16.0)]), curve(&[(1, 1.0), (2, 1.5)]));
    // Shard 2's machine is twice as slow, its draft too.
    let (target_b, draft_b) = (curve(&[(1, 20.0), (2, 24.0), (4, 32.0)]), curve(&[(1, 2.0)]));
    let shard = |label: &str, question: &str, models: Vec<(&str, &CostCurve)>| ShardCalibration {
        shard: label.into(),
        questions: vec![question.into()],
        models: models.into_iter().map(|(r, c)| (r.to_string(), c.clone())).collect(),
    };
    let mut calibration = Calibration::default();
    calibration.models.insert("target".into(), target_a.clone());
    calibration.models.insert("draft".into(), draft_a.clone());
    calibration.shards = vec![
        shard("1/2", "1", vec![("target", &target_a), ("draft", &draft_a)]),
        shard("2/2", "2", vec![("target", &target_b), ("draft", &draft_b)]),
    ];
    let rows = compute(&hand_records(), &meta(vec![greedy(), spec()]), &calibration).unwrap();
    // Question 1 (shard 1): 6 steps accepting 16 tokens, each a 3-token forward and 2 drafted
    // tokens: greedy 16 · 10 = 160 ms against 6 · (c_a(3) 14 + 2 · 1) = 96 ms.
    // Question 2 (shard 2): 4 steps accepting 8: greedy 8 · 20 = 160 ms against
    // 4 · (c_b(3) 28 + 2 · 2) = 128 ms. Together 320 / 224; the first shard's curves alone
    // would say 1.5 (predicted_speedup_uses_the_calibration).
    let id = spec().id();
    assert!(close(summary(&rows.summary, &id, "all").predicted_speedup, 320.0 / 224.0), "{:?}", rows.summary);
    assert!(close(summary(&rows.summary, &id, "coding").predicted_speedup, 160.0 / 96.0));
    assert!(close(summary(&rows.summary, &id, "writing").predicted_speedup, 160.0 / 128.0));
    assert!(close(summary(&rows.summary, "greedy", "all").predicted_speedup, 1.0));
    // A shard without curves gets no prediction, and neither does anything that includes it.
    calibration.shards[1].models.clear();
    let rows = compute(&hand_records(), &meta(vec![greedy(), spec()]), &calibration).unwrap();
    assert_eq!(summary(&rows.summary, &id, "all").predicted_speedup, None);
    assert_eq!(summary(&rows.summary, &id, "writing").predicted_speedup, None);
    assert!(close(summary(&rows.summary, &id, "coding").predicted_speedup, 160.0 / 96.0));
}

/// depth, rank, length, count, total.
type AcceptanceCells = (Option<usize>, Option<usize>, Option<usize>, usize, usize);

#[test]
fn acceptance_table_by_hand() {
    // Medusa-like steps with tree depth 3 and ranks:
    // s1: accepted depth 2 (ranks 0, 1), 3 tokens; s2: depth 0, 1 token; s3: depth 3
    // (ranks 0, 0, 2), 4 tokens; s4: proposed depth 1 only, accepted 1 (rank 0), 2 tokens.
    let mk = |accepted, depth, proposed_depth, ranks: Vec<usize>| StepRecord {
        tokens_proposed: 5,
        tokens_accepted: accepted,
        accepted_depth: depth,
        proposed_depth,
        forward_tokens: 6,
        accepted_ranks: ranks,
        ..Default::default()
    };
    let steps = vec![mk(3, 2, 3, vec![0, 1]), mk(1, 0, 3, vec![]), mk(4, 3, 3, vec![0, 0, 2]), mk(2, 1, 1, vec![0])];
    let medusa = key("medusa", "tree=t", true);
    let records = vec![unit(medusa.clone(), "1", "c", 0, vec![turn(1, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 1.0, steps)])];
    let rows = compute(&records, &meta(vec![medusa]), &Calibration::default()).unwrap();
    let get = |kind: &str| -> Vec<AcceptanceCells> {
        rows.acceptance.iter().filter(|r| r.kind == kind).map(|r| (r.depth, r.rank, r.length, r.count, r.total)).collect()
    };
    // Position d: total = steps with proposed_depth ≥ d (4, 3, 3), count = accepted_depth ≥ d
    // (s1, s3, s4 = 3; s1, s3 = 2; s3 = 1).
    assert_eq!(get("position"), [(Some(1), None, None, 3, 4), (Some(2), None, None, 2, 3), (Some(3), None, None, 1, 3)]);
    // Rank: depth 1 ranks 0, 0, 0 (3 of 3); depth 2 ranks 1 (s1), 0 (s3); depth 3 rank 2 (s3).
    assert_eq!(
        get("rank"),
        [(Some(1), Some(0), None, 3, 3), (Some(2), Some(0), None, 1, 2), (Some(2), Some(1), None, 1, 2), (Some(3), Some(2), None, 1, 1),]
    );
    // Lengths 3, 1, 4, 2: one each of 1..=4, of 4 steps.
    assert_eq!(get("length"), (1..=4).map(|l| (None, None, Some(l), 1, 4)).collect::<Vec<_>>());
    let rate = rows.acceptance.iter().find(|r| r.kind == "position" && r.depth == Some(1)).unwrap().rate;
    assert!(close(rate, 0.75));
}

#[test]
fn records_in_any_order_give_the_same_tables() {
    let records = hand_records();
    let m = meta(vec![greedy(), spec()]);
    let one = tables::build(&records, &m, &Calibration::default()).unwrap();
    // Two "shards" (questions 2 then 1), each reversed, concatenated.
    let mut shuffled: Vec<UnitRecord> = records.iter().filter(|r| r.question_id == "2").rev().cloned().collect();
    shuffled.extend(records.iter().filter(|r| r.question_id == "1").rev().cloned());
    for r in &mut shuffled {
        r.turns.reverse();
    }
    assert_ne!(shuffled, records);
    let merged = tables::build(&shuffled, &m, &Calibration::default()).unwrap();
    for ((name, a), (_, b)) in one.named().into_iter().zip(merged.named()) {
        assert!(a.equals_missing(b), "{name} differs:\n{a:?}\n{b:?}");
    }
}

#[test]
fn numeric_question_ids_sort_as_numbers() {
    let g: Vec<UnitRecord> =
        ["100", "81", "9", "q"].iter().map(|q| unit(greedy(), q, "c", 0, vec![turn(1, &[1, 2], 1.0, vec![step(0, 1, 0, 0)])])).collect();
    let rows = compute(&g, &meta(vec![greedy()]), &Calibration::default()).unwrap();
    let order: Vec<&str> = rows.turns.iter().map(|t| t.question_id.as_str()).collect();
    assert_eq!(order, ["9", "81", "100", "q"]);
}

#[test]
fn a_unit_twice_is_an_error() {
    let mut records = hand_records();
    records.push(records[0].clone());
    let err = compute(&records, &meta(vec![greedy(), spec()]), &Calibration::default()).unwrap_err();
    assert!(err.to_string().contains("two records of configuration greedy, question 1, repeat 0"), "{err}");
}

const TURNS_COLUMNS: [&str; 30] = [
    "config_id",
    "strategy",
    "config",
    "lossless",
    "question_id",
    "category",
    "repeat",
    "turn",
    "prompt_tokens",
    "reused_prompt_tokens",
    "new_tokens",
    "wall_s",
    "prefill_s",
    "decode_s",
    "tokens_per_s",
    "decode_tokens_per_s",
    "target_forwards",
    "mean_accepted_tokens",
    "draft_s",
    "verify_s",
    "update_s",
    "nll_per_token",
    "stop",
    "speedup",
    "exact_match",
    "first_divergence",
    "rouge_l",
    "distinct_2",
    "repetition_rate",
    "peak_rss_mb",
];

/// The column names are the contract with the charts and the report: pinned here.
#[test]
fn table_columns_are_the_documented_ones() {
    let names = |t: &str| -> Vec<String> { schema(t).unwrap().iter_names().map(|n| n.to_string()).collect() };
    assert_eq!(names("turns"), TURNS_COLUMNS);
    assert_eq!(
        names("steps"),
        [
            "config_id",
            "strategy",
            "config",
            "question_id",
            "category",
            "repeat",
            "turn",
            "step",
            "tokens_proposed",
            "tokens_accepted",
            "accepted_depth",
            "proposed_depth",
            "forward_tokens",
            "draft_s",
            "verify_s",
            "update_s",
            "match_len",
            "draft_source",
        ]
    );
    assert_eq!(names("acceptance"), ["config_id", "strategy", "config", "kind", "depth", "rank", "length", "count", "total", "rate"]);
    assert_eq!(
        names("summary"),
        [
            "strategy",
            "config",
            "config_id",
            "lossless",
            "category",
            "turns",
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
    );
    assert_eq!(names("calibration"), ["role", "context", "tokens", "forward_ms", "bandwidth_gbs"]);
    assert!(schema("nope").is_err());
}

fn write_folder(dir: &Path, records: &[UnitRecord], meta: &RunMeta) {
    let mut w = RecordWriter::open(dir).unwrap();
    for r in records {
        w.append(r).unwrap();
    }
    decodebench_tables::records::write_json_atomic(&dir.join("meta.json"), meta).unwrap();
}

#[test]
fn analyse_writes_tables_that_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut records = hand_records();
    // A lookup step with its own fields, so the optional step columns have values.
    records.push(unit(
        key("lookup", "n=3", true),
        "1",
        "coding",
        0,
        vec![turn(
            1,
            &(1..=8).collect::<Vec<_>>(),
            1.0,
            vec![StepRecord { match_len: Some(3), draft_source: Some("prompt".into()), ..step(2, 3, 2, 2) }],
        )],
    ));
    let m = meta(vec![greedy(), spec(), key("lookup", "n=3", true)]);
    write_folder(dir.path(), &records, &m);
    let mut calibration = Calibration::default();
    for (role, bandwidth) in [("target", Some(40.0)), ("draft", None)] {
        let forward_ms = [(1, 10.0), (4, 16.0)].into_iter().collect();
        calibration.models.insert(role.into(), CostCurve { context: 256, forward_ms, bandwidth_gbs: bandwidth });
    }
    decodebench_tables::records::write_json_atomic(&dir.path().join("calibration.json"), &calibration).unwrap();
    let analysis = analyse(dir.path()).unwrap();
    assert_eq!(analysis.units, 5);
    assert!(analysis.calibrated && !analysis.torn_tail);
    // Lookup's one step: 3 accepted, forward over 3 tokens (c_t(3) = 14), draft 1 ms:
    // 3 · 10 / (14 + 1) = 2.
    let lookup = summary(&analysis.summary, "lookup[n=3]", "all");
    assert!(close(lookup.predicted_speedup, 2.0), "{lookup:?}");
    assert_eq!(analysis.lossless_failures.len(), 1);
    for name in TABLE_NAMES {
        assert!(dir.path().join(format!("{name}.parquet")).exists(), "{name}.parquet");
        assert!(dir.path().join(format!("{name}.csv")).exists(), "{name}.csv");
    }
    // Parquet: exactly the built tables.
    let built = tables::build(&records, &m, &calibration).unwrap();
    assert_eq!(built.calibration.height(), 4);
    for (name, df) in built.named() {
        let back = read_table(dir.path(), name).unwrap();
        assert!(back.equals_missing(df), "{name}:\n{back:?}\n{df:?}");
    }
    assert_eq!(read_summary(dir.path()).unwrap(), analysis.summary);
    // CSV: the same values, with the same types (an empty string is written "", a null as
    // nothing, so both read back as they were).
    for (name, df) in built.named() {
        let back = read_csv_table(dir.path(), name).unwrap();
        assert_eq!(back.schema(), df.schema(), "{name}");
        assert_eq!(back.height(), df.height(), "{name}");
        same_values(name, df, &back);
    }
    let steps = read_table(dir.path(), "steps").unwrap();
    let sources: Vec<Option<&str>> = steps.column("draft_source").unwrap().str().unwrap().iter().collect();
    assert_eq!(sources.iter().filter(|s| s.is_some()).count(), 1);
    assert_eq!(steps.height(), 7 * 3 + 3 + 3 + 4 + 1);
    // The summary on a screen.
    let text = format_summary(&analysis);
    assert!(text.lines().count() <= 40, "{text}");
    assert!(text.contains(&spec().id()) && text.contains("NOT LOSSLESS"), "{text}");
    assert!(text.contains("2.00 ["), "{text}");
}

/// Cell by cell: floats within a relative 1e-12 (CSV prints them in decimal), the rest equal.
fn same_values(name: &str, a: &DataFrame, b: &DataFrame) {
    for (ca, cb) in a.columns().iter().zip(b.columns()) {
        for i in 0..a.height() {
            let (x, y) = (ca.get(i).unwrap(), cb.get(i).unwrap());
            let same = match (&x, &y) {
                (AnyValue::Float64(x), AnyValue::Float64(y)) => (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                _ => x == y,
            };
            assert!(same, "{name}.{} row {i}: {x:?} vs {y:?}", ca.name());
        }
    }
}

#[test]
fn answer_files_have_fastchat_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut records = hand_records();
    // A repeat 1 is not an answer.
    records.push(unit(greedy(), "3", "writing", 1, vec![turn(1, &[5], 1.0, vec![])]));
    let m = meta(vec![greedy(), spec()]);
    let analysis = analyse_records(dir.path(), &records, &m, &Calibration::default()).unwrap();
    let path = dir.path().join("model_answer/tiny-model__speculative_accept_greedy_gamma_2_.jsonl");
    assert!(analysis.written.contains(&path), "{:?}", analysis.written);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["question_id"], serde_json::json!(1));
    assert_eq!(lines[0]["model_id"], "tiny-model__speculative_accept_greedy_gamma_2_");
    assert_eq!(lines[0]["choices"][0]["index"], 0);
    assert_eq!(lines[0]["choices"][0]["turns"], serde_json::json!(["1 2 3 4 5 6 7 8", "11 12 13 14 15 16 17 18"]));
    // 2026-01-01T00:01:40Z: 20454 days since 1970 (56 years, 14 leap days) and 100 s.
    assert_eq!(lines[0]["tstamp"], serde_json::json!(20454.0 * 86400.0 + 100.0));
    let id = lines[0]["answer_id"].as_str().unwrap();
    assert_eq!(id.len(), 16);
    assert_ne!(id, lines[1]["answer_id"].as_str().unwrap());
    let greedy_file = dir.path().join("model_answer/tiny-model__greedy.jsonl");
    let greedy_lines = std::fs::read_to_string(greedy_file).unwrap();
    assert_eq!(greedy_lines.lines().count(), 2, "repeat 1 of question 3 left out");
    // Deterministic: the same answers again.
    analyse_records(dir.path(), &records, &m, &Calibration::default()).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

//! A small synthetic results folder, written the way decodebench-tables writes one (Parquet and
//! CSV of every table, meta.json, calibration.json), with numbers chosen so that the tests can
//! look for them in the report.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use decodebench_tables::polars::prelude::*;
use decodebench_tables::records::{
    write_json_atomic, Calibration, ConfigKey, CostCurve, MachineMeta, ModelMeta, RunMeta, ShardMeta, CALIBRATION_FILE, META_FILE,
};

pub const GREEDY: &str = "greedy";
pub const SPEC4: &str = "speculative[accept=greedy,gamma=4,p_min=none,schedule=constant]";
pub const SPEC8: &str = "speculative[accept=greedy,gamma=8,p_min=none,schedule=constant]";
pub const SPEC_REJ: &str = "speculative[accept=rejection,gamma=4,p_min=0.1,schedule=heuristic]";
pub const MED63: &str = "medusa[accept=typical,alpha=0.3,epsilon=0.09,temperature=0.7,tree=mc_sim_7b_63,tree_nodes=63]";
pub const MED31: &str = "medusa[accept=typical,alpha=0.3,epsilon=0.09,temperature=0.7,tree=mc_sim_7b_63,tree_nodes=31]";
pub const MED_E2: &str = "medusa[accept=typical,alpha=0.3,epsilon=0.2,temperature=0.7,tree=mc_sim_7b_63,tree_nodes=63]";
pub const CHAIN: &str = "medusa[accept=greedy,tree=chain:4]";

/// (config_id, lossless, speedup, ci_low, ci_high, predicted, mean_accepted, tok/s, exact, nll)
type Cfg = (&'static str, bool, f64, f64, f64, Option<f64>, f64, f64, f64, f64);

/// Run A's configurations. SPEC4's speedup is 1.5 [1.40, 1.60], predicted 1.70; SPEC8 is
/// lossless but diverged (exact match 0.900): the report must flag it.
pub fn configs_a() -> Vec<Cfg> {
    vec![
        (GREEDY, true, 1.0, 1.0, 1.0, None, 1.0, 20.0, 1.0, 1.234),
        (SPEC4, true, 1.5, 1.4, 1.6, Some(1.7), 2.3, 30.0, 1.0, 1.234),
        (SPEC8, true, 1.25, 1.1, 1.4, Some(1.6), 2.9, 25.0, 0.9, 1.240),
        (SPEC_REJ, false, 1.35, 1.2, 1.5, Some(1.45), 2.1, 27.0, 0.4, 1.300),
        (MED63, false, 1.9, 1.7, 2.1, Some(2.2), 2.6, 38.0, 0.3, 1.41),
        (MED31, false, 1.8, 1.6, 2.0, Some(1.9), 2.4, 36.0, 0.35, 1.38),
        (MED_E2, false, 2.05, 1.9, 2.2, Some(2.3), 2.8, 41.0, 0.2, 1.52),
        (CHAIN, true, 1.3, 1.2, 1.4, Some(1.35), 1.9, 26.0, 1.0, 1.234),
    ]
}

fn split(id: &str) -> (String, String) {
    match id.split_once('[') {
        Some((s, rest)) => (s.to_string(), rest.trim_end_matches(']').to_string()),
        None => (id.to_string(), String::new()),
    }
}

fn write(dir: &Path, name: &str, df: &mut DataFrame) {
    let f = std::fs::File::create(dir.join(format!("{name}.parquet"))).unwrap();
    ParquetWriter::new(f).finish(df).unwrap();
    let f = std::fs::File::create(dir.join(format!("{name}.csv"))).unwrap();
    CsvWriter::new(f).finish(df).unwrap();
}

/// Writes a complete folder; `scale` multiplies every speedup and throughput (run B of a
/// comparison).
pub fn write_folder(dir: &Path, scale: f64, host: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let cfgs = configs_a();
    let cats = ["all", "coding", "writing"];
    let (mut strategy, mut config, mut id, mut lossless, mut category) = (vec![], vec![], vec![], vec![], vec![]);
    let mut num: BTreeMap<&str, Vec<Option<f64>>> = BTreeMap::new();
    for c in &cfgs {
        for (k, cat) in cats.iter().enumerate() {
            let (s, cf) = split(c.0);
            strategy.push(s);
            config.push(cf);
            id.push(c.0.to_string());
            lossless.push(c.1);
            category.push(cat.to_string());
            // Categories: coding a little faster, writing a little slower than overall.
            let m = [1.0, 1.1, 0.9][k];
            let sp = if c.0 == GREEDY { 1.0 } else { c.2 * scale * m };
            let vals: [(&str, Option<f64>); 14] = [
                ("turns", Some(if k == 0 { 8.0 } else { 4.0 })),
                ("speedup", Some(sp)),
                ("speedup_ci_low", Some(if c.0 == GREEDY { 1.0 } else { c.3 * scale * m })),
                ("speedup_ci_high", Some(if c.0 == GREEDY { 1.0 } else { c.4 * scale * m })),
                ("predicted_speedup", c.5),
                ("mean_accepted_tokens", Some(c.6)),
                ("tokens_per_s", Some(c.7 * scale * m)),
                ("exact_match", Some(c.8)),
                ("first_divergence_mean", if c.8 < 1.0 { Some(17.5) } else { None }),
                ("nll_per_token", Some(c.9)),
                ("rouge_l", Some(0.5 + 0.5 * c.8)),
                ("distinct_2", Some(0.8)),
                ("repetition_rate", Some(0.05)),
                ("peak_rss_mb", Some(512.0)),
            ];
            for (name, v) in vals {
                num.entry(name).or_default().push(v);
            }
        }
    }
    let mut columns: Vec<Column> = vec![
        Column::new("strategy".into(), strategy),
        Column::new("config".into(), config),
        Column::new("config_id".into(), id),
        Column::new("lossless".into(), lossless),
        Column::new("category".into(), category),
    ];
    for name in [
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
    ] {
        columns.push(Column::new(name.into(), num[name].clone()));
    }
    write(dir, "summary", &mut DataFrame::new_infer_height(columns).unwrap());

    // turns: two turns per configuration, times split draft / verify / update.
    let mut t: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut tn: BTreeMap<&str, Vec<Option<f64>>> = BTreeMap::new();
    for c in &cfgs {
        let (s, cf) = split(c.0);
        for turn in 1..=2 {
            t.entry("config_id").or_default().push(c.0.to_string());
            t.entry("strategy").or_default().push(s.clone());
            t.entry("config").or_default().push(cf.clone());
            t.entry("question_id").or_default().push("81".into());
            t.entry("category").or_default().push("writing".into());
            t.entry("stop").or_default().push("max_tokens".into());
            let (draft, verify, update) = match s.as_str() {
                "greedy" => (0.0, 1.8, 0.1),
                "speculative" => (0.5, 0.9, 0.2),
                _ => (0.05, 1.0, 0.3),
            };
            for (k, v) in [
                ("turn", turn as f64),
                ("repeat", 0.0),
                ("prompt_tokens", 40.0),
                ("new_tokens", 64.0),
                ("wall_s", 2.2),
                ("prefill_s", 0.1),
                ("decode_s", 2.0),
                ("tokens_per_s", c.7),
                ("decode_tokens_per_s", c.7),
                ("target_forwards", 30.0),
                ("mean_accepted_tokens", c.6),
                ("draft_s", draft),
                ("verify_s", verify),
                ("update_s", update),
                ("nll_per_token", c.9),
                ("speedup", c.2),
                ("exact_match", c.8),
                ("first_divergence", 10.0),
                ("rouge_l", 0.9),
                ("distinct_2", 0.8),
                ("repetition_rate", 0.05),
                ("peak_rss_mb", 512.0),
            ] {
                tn.entry(k).or_default().push(Some(v));
            }
        }
    }
    let mut columns: Vec<Column> = t.into_iter().map(|(k, v)| Column::new(k.into(), v)).collect();
    columns.extend(tn.into_iter().map(|(k, v)| Column::new(k.into(), v)));
    write(dir, "turns", &mut DataFrame::new_infer_height(columns).unwrap());

    let mut steps = df!(
        "config_id" => [SPEC4, SPEC4],
        "strategy" => ["speculative", "speculative"],
        "config" => ["accept=greedy,gamma=4,p_min=none,schedule=constant"; 2],
        "question_id" => ["81", "81"],
        "category" => ["writing", "writing"],
        "repeat" => [0i64, 0],
        "turn" => [1i64, 1],
        "step" => [0i64, 1],
        "tokens_proposed" => [4i64, 4],
        "tokens_accepted" => [3i64, 1],
        "accepted_depth" => [3i64, 1],
        "proposed_depth" => [4i64, 4],
        "forward_tokens" => [5i64, 5],
        "draft_s" => [0.01, 0.01],
        "verify_s" => [0.02, 0.02],
        "update_s" => [0.001, 0.001],
        "match_len" => [None::<i64>, None],
        "draft_source" => ["draft", "draft"],
    )
    .unwrap();
    write(dir, "steps", &mut steps);

    // acceptance: positions 1..4 for SPEC4 and MED63, ranks 0..2 at depths 1..2 for MED63,
    // lengths 1..5 for SPEC4 and MED63.
    let mut a_id = vec![];
    let mut a_kind = vec![];
    let (mut depth, mut rank, mut length, mut count, mut total, mut rate) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for id in [SPEC4, MED63] {
        for d in 1..=4i64 {
            a_id.push(id);
            a_kind.push("position");
            depth.push(Some(d));
            rank.push(None);
            length.push(None);
            let r = 0.9f64.powi(d as i32) * if id == SPEC4 { 0.8 } else { 0.7 };
            count.push((r * 100.0).round() as i64);
            total.push(100i64);
            rate.push(r);
        }
        for l in 1..=5i64 {
            a_id.push(id);
            a_kind.push("length");
            depth.push(None);
            rank.push(None);
            length.push(Some(l));
            let r = [0.3, 0.25, 0.2, 0.15, 0.1][l as usize - 1];
            count.push((r * 100.0) as i64);
            total.push(100);
            rate.push(r);
        }
    }
    for d in 1..=2i64 {
        for rk in 0..3i64 {
            a_id.push(MED63);
            a_kind.push("rank");
            depth.push(Some(d));
            rank.push(Some(rk));
            length.push(None);
            let r = 0.6 / (1 + rk) as f64 / d as f64;
            count.push((r * 100.0) as i64);
            total.push(100);
            rate.push(r);
        }
    }
    let strategy: Vec<String> = a_id.iter().map(|i| split(i).0).collect();
    let config: Vec<String> = a_id.iter().map(|i| split(i).1).collect();
    let mut acc = DataFrame::new_infer_height(vec![
        Column::new("config_id".into(), a_id),
        Column::new("strategy".into(), strategy),
        Column::new("config".into(), config),
        Column::new("kind".into(), a_kind),
        Column::new("depth".into(), depth),
        Column::new("rank".into(), rank),
        Column::new("length".into(), length),
        Column::new("count".into(), count),
        Column::new("total".into(), total),
        Column::new("rate".into(), rate),
    ])
    .unwrap();
    write(dir, "acceptance", &mut acc);

    let mut cal_models = BTreeMap::new();
    let (mut role, mut ctx, mut tokens, mut ms, mut bw) = (vec![], vec![], vec![], vec![], vec![]);
    for (r, base) in [("target", 40.0), ("draft", 12.0)] {
        let mut curve = BTreeMap::new();
        for n in [1usize, 2, 4, 8, 16, 32, 64] {
            let v = base + 0.4 * n as f64;
            curve.insert(n, v);
            role.push(r);
            ctx.push(256i64);
            tokens.push(n as i64);
            ms.push(v);
            bw.push(Some(20.5));
        }
        cal_models.insert(r.to_string(), CostCurve { context: 256, forward_ms: curve, bandwidth_gbs: Some(20.5) });
    }
    let mut cal = df!("role" => role, "context" => ctx, "tokens" => tokens, "forward_ms" => ms, "bandwidth_gbs" => bw).unwrap();
    write(dir, "calibration", &mut cal);
    write_json_atomic(&dir.join(CALIBRATION_FILE), &Calibration { models: cal_models, shards: vec![] }).unwrap();
    write_json_atomic(&dir.join(META_FILE), &meta(host)).unwrap();
}

pub fn machine(host: &str, cpu: &str) -> MachineMeta {
    MachineMeta {
        hostname: host.into(),
        cpu: cpu.into(),
        simd: vec!["avx2".into(), "fma".into()],
        target_features: vec!["+avx2".into(), "+fma".into()],
        threads: 2,
        device: "cpu".into(),
        conversions: vec![],
        node: None,
        gpu: None,
        kernel_path: Some("avx2 path".into()),
    }
}

pub fn meta(host: &str) -> RunMeta {
    let configs = configs_a()
        .iter()
        .map(|c| {
            let (s, cf) = split(c.0);
            ConfigKey { strategy: s, config: cf, params: BTreeMap::new(), lossless: c.1 }
        })
        .collect();
    RunMeta {
        config_path: "configs/tiny.toml".into(),
        config_text: "[run]\nquestions = 2\nmax_new_tokens = 64\n".into(),
        sweep_hash: "abc123".into(),
        configs,
        questions: vec!["81".into(), "82".into()],
        turns: 2,
        max_new_tokens: 64,
        repeats: 1,
        warmup: 1,
        seed: 7,
        prefix_cache: false,
        shard: None,
        models: vec![ModelMeta {
            role: "target".into(),
            name: "smollm2-135m".into(),
            path: "/models/smollm2.gguf".into(),
            sha256: Some("deadbeefcafef00d0123456789abcdef".into()),
            quantization: Some("Q4_1".into()),
        }],
        heads_note: Some("random:3: no shipped heads".into()),
        git_commit: Some("7a36a67aaaabbbbccccdddd".into()),
        decodebench_version: "0.1.0".into(),
        machine: machine(host, "Test CPU 9000"),
        started: "2026-01-01T00:00:00Z".into(),
        ended: Some("2026-01-01T01:00:00Z".into()),
        merged_from: vec![
            ShardMeta {
                dir: "s1".into(),
                shard: Some("1/2".into()),
                machine: machine("n1", "Test CPU 9000"),
                started: "2026-01-01T00:00:00Z".into(),
                ended: None,
                earlier_machines: vec![],
                git_commit: Some("7a36a67aaaabbbbccccdddd".into()),
            },
            ShardMeta {
                dir: "s2".into(),
                shard: Some("2/2".into()),
                machine: machine("n2", "Other CPU 42"),
                started: "2026-01-01T00:00:00Z".into(),
                ended: None,
                earlier_machines: vec![],
                git_commit: Some("b0b0b0b1111".into()),
            },
        ],
        earlier_machines: vec![],
        partial: vec![],
    }
}

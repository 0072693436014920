//! End to end with the real tables: unit records → decodebench-tables' analysis (Parquet, CSV)
//! → the report. Catches any drift between the tables' schema and what the report reads.

mod common;

use std::collections::BTreeMap;

use decodebench_report::report;
use decodebench_strategies::StepRecord;
use decodebench_tables::records::{write_json_atomic, Calibration, ConfigKey, CostCurve, RecordWriter, TurnRecord, UnitRecord, META_FILE};

fn key(strategy: &str, config: &str, lossless: bool) -> ConfigKey {
    ConfigKey { strategy: strategy.into(), config: config.into(), params: BTreeMap::new(), lossless }
}

/// One turn of 9 new tokens in `wall_s`, with `steps`.
fn turn(wall_s: f64, tokens: &[u32], steps: Vec<StepRecord>) -> TurnRecord {
    TurnRecord {
        turn: 1,
        prompt_tokens: 12,
        reused_prompt_tokens: 0,
        new_tokens: tokens.len(),
        token_ids: tokens.to_vec(),
        text: "a b c d e f g h i".into(),
        stop: "max_tokens".into(),
        wall_s,
        prefill_s: 0.1 * wall_s,
        decode_s: 0.9 * wall_s,
        target_forwards: steps.len() + 1,
        nll_per_token: Some(1.25),
        steps,
    }
}

fn step(proposed: usize, accepted: usize, ranks: Vec<usize>) -> StepRecord {
    StepRecord {
        tokens_proposed: proposed,
        tokens_accepted: accepted,
        accepted_depth: accepted - 1,
        forward_tokens: proposed + 1,
        draft_s: 0.01,
        verify_s: 0.03,
        update_s: 0.005,
        proposed_depth: if proposed > 0 { 4 } else { 0 },
        accepted_ranks: ranks,
        ..StepRecord::default()
    }
}

#[test]
fn report_of_a_real_analysis() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let tokens: Vec<u32> = (1..=9).collect();
    let greedy = key("greedy", "", true);
    let spec = key("speculative", "accept=greedy,gamma=4,p_min=none,schedule=constant", true);
    let medusa = key("medusa", "accept=greedy,tree=mc_sim_7b_63,tree_nodes=63", true);
    let mut w = RecordWriter::open(&dir).unwrap();
    for (q, category) in [("81", "writing"), ("101", "coding")] {
        for (k, wall, steps) in [
            (&greedy, 1.0, (0..8).map(|_| step(0, 1, vec![])).collect::<Vec<_>>()),
            // Twice greedy's throughput on every prompt: speedup 2.00, CI [2.00, 2.00].
            (&spec, 0.5, vec![step(4, 5, vec![]), step(4, 3, vec![])]),
            (&medusa, 0.4, vec![step(63, 4, vec![0, 1, 0]), step(63, 4, vec![0, 0, 2])]),
        ] {
            w.append(&UnitRecord {
                unit: format!("{}-{q}", k.id()),
                key: k.clone(),
                question_id: q.into(),
                category: category.into(),
                repeat: 0,
                peak_rss_mb: 300.0,
                turns: vec![turn(wall, &tokens, steps)],
            })
            .unwrap();
        }
    }
    let mut meta = common::meta("host-a");
    meta.configs = vec![greedy, spec, medusa];
    meta.questions = vec!["81".into(), "101".into()];
    meta.merged_from.clear();
    meta.models.push(decodebench_tables::records::ModelMeta {
        role: "draft".into(),
        name: "self".into(),
        path: "/models/smollm2.gguf".into(),
        sha256: None,
        quantization: None,
    });
    write_json_atomic(&dir.join(META_FILE), &meta).unwrap();
    let curve = |base: f64| CostCurve {
        context: 128,
        forward_ms: [(1, base), (8, base * 1.5), (64, base * 3.0)].into_iter().collect(),
        bandwidth_gbs: None,
    };
    let calibration = Calibration {
        models: [("target".to_string(), curve(20.0)), ("draft".to_string(), curve(5.0))].into_iter().collect(),
        shards: vec![],
    };
    write_json_atomic(&dir.join(decodebench_tables::records::CALIBRATION_FILE), &calibration).unwrap();
    decodebench_tables::analyse(&dir).unwrap();

    let out = report(&dir, None).unwrap();
    assert!(out.missing.is_empty(), "the real tables should hold every column: {:?}", out.missing);
    assert!(out.lossless_mismatches.is_empty());
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    let row = md.lines().find(|l| l.starts_with("| speculative |")).expect("no speculative headline row");
    assert!(row.contains("| 2.00 | [2.00, 2.00] |"), "{row}");
    assert!(md.contains("All 3 lossless configurations reproduced greedy"));
    // Speculative and Medusa data draw the acceptance, calibration and time charts.
    for stem in [
        "speedup_by_config",
        "measured_vs_predicted",
        "accepted_vs_tree_size",
        "acceptance_by_depth",
        "acceptance_by_rank",
        "acceptance_length",
        "verification_cost",
        "time_share",
    ] {
        assert!(dir.join("charts").join(format!("{stem}.png")).is_file(), "{stem} not drawn; skipped: {:?}", out.skipped);
    }
}

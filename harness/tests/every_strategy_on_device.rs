//! Every strategy of the registry through the one entry point, on the device
//! `common::test_device()` names (the CPU unless `DECODEBENCH_TEST_DEVICE=cuda`): the same test
//! runs unchanged on a GPU. On the CPU, the lossless configurations must also reproduce greedy
//! decoding token for token.

mod common;

use decodebench::catalog::ModelSource;
use decodebench::decoding::{run, Models};
use decodebench::models::{self, LoadedModel};
use decodebench::registry::{BuildContext, StrategySpec, REGISTRY};
use decodebench::testing::{write_gguf, TinySpec};
use decodebench_strategies::medusa::MedusaHeads;
use decodebench_strategies::{DecoderModel, StopConfig};

fn load(spec: &TinySpec, dir: &tempfile::TempDir, name: &str, device: &candle_core::Device) -> LoadedModel {
    let path = dir.path().join(name);
    write_gguf(spec, &path).unwrap();
    models::load(&ModelSource::Gguf(path), Some(name), None, device).unwrap()
}

fn spec(name: &str, flags: &[(&str, &str)]) -> StrategySpec {
    let flags: Vec<(&str, String)> = flags.iter().map(|(f, v)| (*f, v.to_string())).collect();
    StrategySpec::from_flags(name, &flags).unwrap()
}

#[test]
fn every_strategy_runs_on_the_test_device() {
    let device = common::test_device();
    let dir = tempfile::tempdir().unwrap();
    let mut target = load(&TinySpec::llama(), &dir, "target.gguf", &device);
    let mut draft = load(&TinySpec::qwen2(), &dir, "draft.gguf", &device);
    let heads = MedusaHeads::from_spec("random:4", target.model.info(), 3, &device).unwrap();
    let prompt = target.tokenizer.encode("<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n").unwrap();
    let stop = StopConfig { max_new_tokens: 48, eos_token_ids: target.tokenizer.eos_token_ids().to_vec() };
    let ctx =
        BuildContext { num_heads: Some(heads.num_heads()), cost_curve: Some(vec![(1, 1.0), (2, 1.1), (4, 1.3), (8, 1.8), (16, 3.0)]) };
    let hot = [("--temperature", "0.8"), ("--top-k", "40"), ("--top-p", "0.95")];

    let greedy = spec("greedy", &[]);
    let mut decoder = greedy.build(&ctx).unwrap();
    let reference =
        run(&greedy, decoder.as_mut(), Models { target: &mut target, draft: None, heads: None }, &prompt, &stop, 0, &mut |_| {})
            .unwrap()
            .tokens;
    assert!(!reference.is_empty());
    let mut cases = vec![
        spec("sample", &hot),
        spec("beam", &[("--num-beams", "1")]),
        spec("beam", &[("--num-beams", "3")]),
        spec("speculative", &[("--gamma", "3"), ("--gamma-schedule", "heuristic")]),
        spec("speculative", &[("--gamma", "3"), ("--accept", "rejection"), hot[0], hot[1], hot[2]]),
        spec("medusa", &[("--tree", "mc_sim_7b_63")]),
        spec("medusa", &[("--tree", "dense:2x3"), ("--accept", "typical"), hot[0], hot[1], hot[2]]),
    ];
    // Every registered strategy runs here at its defaults too, so a new one cannot be missed.
    cases.extend(REGISTRY.iter().filter(|d| d.name != "sample").map(|d| spec(d.name, &[])));
    for s in cases {
        let mut decoder = s.build(&ctx).unwrap_or_else(|e| panic!("{}: {e:#}", s.id()));
        let models = Models { target: &mut target, draft: Some(&mut draft), heads: Some(&heads) };
        let g = run(&s, decoder.as_mut(), models, &prompt, &stop, 5, &mut |_| {}).unwrap_or_else(|e| panic!("{}: {e:#}", s.id()));
        assert!(!g.tokens.is_empty() && g.tokens.len() <= stop.max_new_tokens, "{}: {} tokens", s.id(), g.tokens.len());
        assert!(!g.steps.is_empty() || g.tokens.len() == 1, "{}: no step records", s.id());
        if s.lossless() && device.is_cpu() {
            assert_eq!(g.tokens, reference, "{} differs from greedy", s.id());
        }
    }
}

//! Every strategy through the one entry point, on the device `common::test_device()` names (the
//! CPU unless `DECODEBENCH_TEST_DEVICE=cuda`): the same test runs unchanged on a GPU. On the CPU,
//! the lossless configurations must also reproduce greedy decoding token for token.

mod common;

use decodebench::catalog::ModelSource;
use decodebench::decoding::{run, Models, Strategy};
use decodebench::models::{self, LoadedModel};
use decodebench::testing::{write_gguf, TinySpec};
use decodebench_strategies::beam::BeamConfig;
use decodebench_strategies::medusa::{AcceptanceRule, MedusaConfig, MedusaHeads, TreeTopology, DEFAULT_MAX_TOP_K};
use decodebench_strategies::sampler::SamplingConfig;
use decodebench_strategies::speculative::{GammaSchedule, SpecAcceptance, SpeculativeConfig};
use decodebench_strategies::{DecoderModel, StopConfig};

fn load(spec: &TinySpec, dir: &tempfile::TempDir, name: &str, device: &candle_core::Device) -> LoadedModel {
    let path = dir.path().join(name);
    write_gguf(spec, &path).unwrap();
    models::load(&ModelSource::Gguf(path), Some(name), None, device).unwrap()
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
    let greedy_sampling = SamplingConfig::greedy();
    let hot = SamplingConfig { temperature: 0.8, top_k: Some(40), top_p: Some(0.95), seed: 5 };
    let tree = |spec: &str| TreeTopology::parse(spec, heads.num_heads(), DEFAULT_MAX_TOP_K).unwrap();
    let spec = |acceptance| SpeculativeConfig { gamma: 3, schedule: GammaSchedule::Heuristic, p_min: None, acceptance };

    let reference = run(&Strategy::Greedy, Models { target: &mut target, draft: None, heads: None }, &prompt, &stop, &greedy_sampling, &mut |_| {})
        .unwrap()
        .tokens;
    assert!(!reference.is_empty());
    let cases: Vec<(&str, Strategy, &SamplingConfig, bool)> = vec![
        ("sample", Strategy::Sample, &hot, false),
        ("beam 1", Strategy::Beam(BeamConfig::new(1)), &greedy_sampling, true),
        ("beam 3", Strategy::Beam(BeamConfig::new(3)), &greedy_sampling, false),
        ("speculative greedy", Strategy::Speculative(spec(SpecAcceptance::Greedy)), &greedy_sampling, true),
        ("speculative rejection", Strategy::Speculative(spec(SpecAcceptance::Rejection)), &hot, false),
        (
            "medusa greedy",
            Strategy::Medusa(MedusaConfig { tree: tree("mc_sim_7b_63"), acceptance: AcceptanceRule::Greedy }),
            &greedy_sampling,
            true,
        ),
        ("medusa typical", Strategy::Medusa(MedusaConfig { tree: tree("dense:2x3"), acceptance: AcceptanceRule::typical() }), &hot, false),
    ];
    for (name, strategy, sampling, lossless) in cases {
        let models = Models { target: &mut target, draft: Some(&mut draft), heads: Some(&heads) };
        let g = run(&strategy, models, &prompt, &stop, sampling, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(!g.tokens.is_empty() && g.tokens.len() <= stop.max_new_tokens, "{name}: {} tokens", g.tokens.len());
        assert!(!g.steps.is_empty() || g.tokens.len() == 1, "{name}: no step records");
        if lossless && device.is_cpu() {
            assert_eq!(g.tokens, reference, "{name} differs from greedy");
        }
    }
}

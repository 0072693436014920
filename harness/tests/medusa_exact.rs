//! Medusa with greedy acceptance reproduces greedy decoding token for token on real model code:
//! tiny random models (GGUF Q8_0 / Q4_K and safetensors f32) and SmolLM2, every shipped tree,
//! random heads. Exactness rests on the model layer's guarantee that a tree row gets the bits of
//! the same token decoded alone (tests/row_consistency.rs), so every comparison here is `==`.

mod common;

use std::time::Instant;

use candle_core::Device;
use decodebench::models::gguf::GgufFile;
use decodebench::models::{safetensors, Transformer};
use decodebench::testing::{write_gguf, write_hf_dir, TinySpec};
use decodebench_strategies::medusa::{self, AcceptanceRule, HeadLayout, MedusaConfig, MedusaHeads, TreeTopology, SHIPPED_TREES};
use decodebench_strategies::sampler::{Sampler, SamplingConfig};
use decodebench_strategies::{autoregressive, DecoderModel, Generation, StopConfig, StopReason};

const NEW_TOKENS: usize = 128;

fn stop(max_new_tokens: usize) -> StopConfig {
    StopConfig { max_new_tokens, eos_token_ids: vec![] }
}

fn trees(num_heads: usize, extra: &[&str]) -> Vec<TreeTopology> {
    SHIPPED_TREES.iter().chain(extra).map(|s| TreeTopology::parse(s, num_heads, medusa::DEFAULT_MAX_TOP_K).unwrap()).collect()
}

fn run_medusa(
    model: &mut dyn DecoderModel,
    heads: &MedusaHeads,
    prompt: &[u32],
    stop: &StopConfig,
    tree: &TreeTopology,
    acceptance: AcceptanceRule,
    sampling: SamplingConfig,
) -> Generation {
    let config = MedusaConfig { tree: tree.clone(), acceptance };
    medusa::generate(model, heads, prompt, stop, &config, &mut Sampler::new(sampling), &mut |_| {}).unwrap()
}

/// Greedy reference vs Medusa (greedy acceptance) on every tree.
fn check_greedy_exact(name: &str, model: &mut dyn DecoderModel, heads: &MedusaHeads, prompts: &[Vec<u32>], trees: &[TreeTopology]) {
    for prompt in prompts {
        let reference = autoregressive::greedy(model, prompt, &stop(NEW_TOKENS), &mut |_| {}).unwrap();
        for tree in trees {
            let g = run_medusa(model, heads, prompt, &stop(NEW_TOKENS), tree, AcceptanceRule::Greedy, SamplingConfig::greedy());
            assert_eq!(g.tokens, reference.tokens, "{name}: tree {}, prompt of {} tokens", tree.name(), prompt.len());
            assert_eq!(g.stop, reference.stop, "{name}: tree {}", tree.name());
            let accepted: usize = g.steps.iter().map(|s| s.tokens_accepted).sum();
            assert_eq!(accepted + 1, g.tokens.len(), "{name}: records add up");
        }
    }
}

fn tiny_prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 37 + salt * 11 + 5) % 250).collect()
}

fn tiny_models(dir: &tempfile::TempDir) -> Vec<(String, Transformer)> {
    let mut models = Vec::new();
    for spec in [TinySpec::llama(), TinySpec::qwen2(), TinySpec::qwen2_k_quants()] {
        let path = dir.path().join(format!("{}-{:?}.gguf", spec.arch, spec.weight_type));
        write_gguf(&spec, &path).unwrap();
        let model = GgufFile::open(&path).unwrap().load_transformer("tiny".into(), &Device::Cpu).unwrap();
        models.push((format!("gguf {} {:?}", spec.arch, spec.weight_type), model));
    }
    let spec = TinySpec::llama();
    let path = dir.path().join("llama-hf");
    write_hf_dir(&spec, &path).unwrap();
    models.push(("safetensors llama f32".into(), safetensors::load_transformer(&path, "tiny".into(), None, &Device::Cpu).unwrap()));
    models
}

/// Every tiny model, every shipped tree plus chain:4 and dense:2x3, random Medusa-2 heads (and
/// Medusa-1 heads on the first model), three prompts (the longest, 110 + 128 tokens in a context of 256, makes the last steps
/// shrink the 64-token tree to what fits).
#[test]
fn tiny_models_medusa_greedy_is_exact_on_every_tree() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = [tiny_prompt(5, 1), tiny_prompt(33, 2), tiny_prompt(110, 3)];
    let trees = trees(5, &["chain:4", "dense:2x3"]);
    for (m, (name, mut model)) in tiny_models(&dir).into_iter().enumerate() {
        let info = model.info().clone();
        let layouts: &[HeadLayout] =
            if m == 0 { &[HeadLayout::SharedLmHead, HeadLayout::OwnProjection] } else { &[HeadLayout::SharedLmHead] };
        for &layout in layouts {
            let heads = MedusaHeads::random(5, info.hidden_size, info.vocab_size, layout, 3, &Device::Cpu).unwrap();
            check_greedy_exact(&format!("{name} {layout:?}"), &mut model, &heads, &prompts, &trees);
        }
    }
}

/// On a tiny model: a full context ends Medusa exactly where greedy ends (ContextFull, same
/// tokens); typical acceptance at temperature 0 is greedy; the greedy rule at temperature > 0
/// reproduces autoregressive sampling with the same seed.
#[test]
fn tiny_models_context_full_typical_at_zero_and_sampling_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let trees = trees(5, &["dense:3x2"]);
    for (name, mut model) in tiny_models(&dir).into_iter().take(3) {
        let info = model.info().clone();
        let heads = MedusaHeads::random(5, info.hidden_size, info.vocab_size, HeadLayout::SharedLmHead, 9, &Device::Cpu).unwrap();
        let long = tiny_prompt(200, 4);
        let reference = autoregressive::greedy(&mut model, &long, &stop(NEW_TOKENS), &mut |_| {}).unwrap();
        assert_eq!(reference.stop, StopReason::ContextFull);
        let short = tiny_prompt(12, 5);
        let short_ref = autoregressive::greedy(&mut model, &short, &stop(NEW_TOKENS), &mut |_| {}).unwrap();
        let sampling = SamplingConfig { temperature: 0.9, top_k: None, top_p: Some(0.95), seed: 21 };
        let sample_ref =
            autoregressive::sample(&mut model, &short, &stop(NEW_TOKENS), &mut Sampler::new(sampling.clone()), &mut |_| {}).unwrap();
        for tree in &trees {
            let g = run_medusa(&mut model, &heads, &long, &stop(NEW_TOKENS), tree, AcceptanceRule::Greedy, SamplingConfig::greedy());
            assert_eq!(
                (g.tokens.as_slice(), g.stop),
                (reference.tokens.as_slice(), StopReason::ContextFull),
                "{name}: tree {}",
                tree.name()
            );
            let g = run_medusa(&mut model, &heads, &short, &stop(NEW_TOKENS), tree, AcceptanceRule::typical(), SamplingConfig::greedy());
            assert_eq!(g.tokens, short_ref.tokens, "{name}: typical at T=0, tree {}", tree.name());
            let g = run_medusa(&mut model, &heads, &short, &stop(NEW_TOKENS), tree, AcceptanceRule::Greedy, sampling.clone());
            assert_eq!(g.tokens, sample_ref.tokens, "{name}: greedy rule at T=0.9, tree {}", tree.name());
        }
    }
}

fn load_smollm2() -> (Transformer, Vec<Vec<u32>>) {
    let path = common::smollm2_gguf();
    let mut file = GgufFile::open(&path).unwrap();
    let tokenizer = decodebench::tokenizer::TextTokenizer::from_gguf(&file.content, &path).unwrap();
    let model = file.load_transformer("smollm2".into(), &Device::Cpu).unwrap();
    let prompts = [
        "The history of the Roman Empire begins with",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "Here is a list of the planets of the solar system, in order:",
    ]
    .iter()
    .map(|t| tokenizer.encode(t).unwrap())
    .collect();
    (model, prompts)
}

/// SmolLM2-135M with random Medusa-2 heads (`random:5`) on all nine shipped trees, kept to a
/// few minutes on 2 cores: on the CPU a 64-token tree forward costs about as much as 64 decode
/// steps (≈1.7 s against ≈27 ms for one token), so each tree gets one prompt (the three prompts
/// in turn) and 12 new tokens. The full check (two prompts × 128 tokens per tree, ≈50 min) is
/// `smollm2_medusa_greedy_is_exact_full`, run with `--ignored`; `decodebench verify --model
/// smollm2-135m --heads random:5` runs the same check on three prompts (results/verify/).
#[test]
fn smollm2_medusa_greedy_is_exact_on_every_tree() {
    let (mut model, prompts) = load_smollm2();
    let heads = MedusaHeads::from_spec("random:5", &model.info().clone(), 0, &Device::Cpu).unwrap();
    let new_tokens = 12;
    let references: Vec<Generation> =
        prompts.iter().map(|p| autoregressive::greedy(&mut model, p, &stop(new_tokens), &mut |_| {}).unwrap()).collect();
    for (i, tree) in trees(5, &[]).iter().enumerate() {
        let (prompt, reference) = (&prompts[i % prompts.len()], &references[i % prompts.len()]);
        let t0 = Instant::now();
        let g = run_medusa(&mut model, &heads, prompt, &stop(new_tokens), tree, AcceptanceRule::Greedy, SamplingConfig::greedy());
        assert_eq!(g.tokens, reference.tokens, "smollm2: tree {}, prompt {}", tree.name(), i % prompts.len());
        assert_eq!(g.stop, reference.stop);
        eprintln!(
            "smollm2 {:<26} {:>2} forwards, {:.2} tokens/forward, {:.1}s",
            tree.name(),
            g.steps.len(),
            g.mean_accepted_tokens(),
            t0.elapsed().as_secs_f64()
        );
    }
}

/// The full SmolLM2 check: every shipped tree, two prompts, 128 new tokens (≈50 min on 2 cores).
/// Prints tokens per forward and wall time against greedy.
#[test]
#[ignore = "about 50 minutes on 2 CPU cores; run with --ignored"]
fn smollm2_medusa_greedy_is_exact_full() {
    let (mut model, prompts) = load_smollm2();
    let heads = MedusaHeads::from_spec("random:5", &model.info().clone(), 0, &Device::Cpu).unwrap();
    for prompt in &prompts[..2] {
        let t0 = Instant::now();
        let reference = autoregressive::greedy(&mut model, prompt, &stop(NEW_TOKENS), &mut |_| {}).unwrap();
        let greedy_s = t0.elapsed().as_secs_f64();
        eprintln!("smollm2 prompt of {} tokens: greedy {greedy_s:.2}s", prompt.len());
        for tree in &trees(5, &[]) {
            let t0 = Instant::now();
            let g = run_medusa(&mut model, &heads, prompt, &stop(NEW_TOKENS), tree, AcceptanceRule::Greedy, SamplingConfig::greedy());
            let medusa_s = t0.elapsed().as_secs_f64();
            assert_eq!(g.tokens, reference.tokens, "smollm2: tree {}, prompt {prompt:?}", tree.name());
            assert_eq!(g.stop, reference.stop);
            let (draft, verify, update) =
                g.steps.iter().fold((0.0, 0.0, 0.0), |a, s| (a.0 + s.draft_s, a.1 + s.verify_s, a.2 + s.update_s));
            eprintln!(
                "  {:<26} {:>3} forwards, {:.3} tokens/forward, {medusa_s:.1}s = {:.1}x greedy (heads {draft:.2}s, verify {verify:.1}s, accept {update:.2}s)",
                tree.name(),
                g.steps.len(),
                g.mean_accepted_tokens(),
                medusa_s / greedy_s,
            );
        }
    }
}

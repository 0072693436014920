//! Draft-model speculative decoding with greedy acceptance is token-identical to greedy decoding
//! on real transformers: tiny random GGUF models (a draft that sometimes agrees, and an early-exit
//! draft that mostly does), and the real SmolLM2 with two drafts (itself, which always agrees,
//! and a random model that almost never does: the all-accepted and all-rejected paths).

mod common;

use candle_core::Device;
use decodebench::models::gguf::GgufFile;
use decodebench::models::Transformer;
use decodebench::testing::{write_gguf, TinySpec};
use decodebench_strategies::sampler::{Sampler, SamplingConfig};
use decodebench_strategies::speculative::{generate, GammaSchedule, SpecAcceptance, SpeculativeConfig};
use decodebench_strategies::{autoregressive, DecoderModel, ForwardInput, LogitRows, StopConfig};

fn load(path: &std::path::Path) -> Transformer {
    GgufFile::open(path).unwrap().load_transformer("m".into(), &Device::Cpu).unwrap()
}

fn tiny(spec: &TinySpec, dir: &tempfile::TempDir, name: &str) -> Transformer {
    let path = dir.path().join(name);
    write_gguf(spec, &path).unwrap();
    load(&path)
}

/// Greedy-acceptance speculative decoding for each γ (constant schedule, plus the heuristic
/// schedule, p_min and a draft limited to the first half of the vocabulary at the last γ)
/// against greedy decoding.
fn check(name: &str, target: &mut Transformer, draft: &mut Transformer, prompts: &[Vec<u32>], gammas: &[usize], eos: &[u32]) {
    let stop = StopConfig { max_new_tokens: 128, eos_token_ids: eos.to_vec() };
    let half_vocab = draft.info().vocab_size / 2;
    for prompt in prompts {
        let greedy = autoregressive::greedy(target, prompt, &stop, &mut |_| {}).unwrap();
        let mut configs: Vec<(usize, GammaSchedule, Option<f64>, Option<usize>)> =
            gammas.iter().map(|&g| (g, GammaSchedule::Constant, None, None)).collect();
        let last = *gammas.last().unwrap();
        configs.push((last, GammaSchedule::Heuristic, None, None));
        configs.push((last, GammaSchedule::Constant, Some(0.5), None));
        configs.push((last, GammaSchedule::Constant, None, Some(half_vocab)));
        for (gamma, schedule, p_min, draft_vocab) in configs {
            let cfg = SpeculativeConfig { gamma, schedule, p_min, acceptance: SpecAcceptance::Greedy, draft_vocab };
            let mut sampler = Sampler::new(SamplingConfig::greedy());
            let g = generate(target, draft, prompt, &stop, &cfg, &mut sampler, &mut |_| {}).unwrap();
            let diverged = greedy.tokens.iter().zip(&g.tokens).position(|(a, b)| a != b);
            assert_eq!(
                g.tokens, greedy.tokens,
                "{name}: γ={gamma} {schedule:?} p_min {p_min:?} draft_vocab {draft_vocab:?} diverges from greedy at token {diverged:?}"
            );
            eprintln!(
                "{name}: γ={gamma} {schedule:?} p_min {p_min:?} draft_vocab {draft_vocab:?}: {:.2} tokens per target forward",
                g.mean_accepted_tokens()
            );
        }
    }
}

/// A model's logits limited to the first ids are those ids' logits of the whole projection,
/// bit for bit, for the tiny models' heads (Q8_0, Q4_K); the limit lifts again.
#[test]
fn limited_logits_are_the_first_ids_of_the_whole_ones() {
    let dir = tempfile::tempdir().unwrap();
    for (name, spec) in [("q8_0", TinySpec::qwen2()), ("q4_k", TinySpec::qwen2_k_quants()), ("llama", TinySpec::llama())] {
        let mut model = tiny(&spec, &dir, &format!("{name}.gguf"));
        let vocab = model.info().vocab_size;
        let logits = |model: &mut Transformer| -> Vec<Vec<u32>> {
            model.clear_cache();
            let out = model.forward(&ForwardInput::causal(&[5, 9, 17], &[0, 1, 2], LogitRows::All)).unwrap();
            out.logits
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
                .into_iter()
                .map(|r| r.into_iter().map(f32::to_bits).collect())
                .collect()
        };
        let whole = logits(&mut model);
        for n in [1, 13, vocab / 2, vocab - 1] {
            model.set_logit_vocab(Some(n)).unwrap();
            let part = logits(&mut model);
            for (r, (p, w)) in part.iter().zip(&whole).enumerate() {
                assert_eq!(p.as_slice(), &w[..n], "{name}: row {r} limited to {n} ids");
            }
        }
        model.set_logit_vocab(None).unwrap();
        assert_eq!(logits(&mut model), whole, "{name}: the limit lifted");
        // The same limit again (its cut head kept), then a limit past the vocabulary (none).
        model.set_logit_vocab(Some(vocab - 1)).unwrap();
        assert_eq!(logits(&mut model).iter().map(|r| r.len()).collect::<Vec<_>>(), vec![vocab - 1; 3], "{name}: limited again");
        model.set_logit_vocab(Some(vocab + 5)).unwrap();
        assert_eq!(logits(&mut model), whole, "{name}: a limit past the vocabulary");
        assert!(model.set_logit_vocab(Some(0)).is_err());
    }
}

fn prompts(vocab: u32, lens: &[usize]) -> Vec<Vec<u32>> {
    lens.iter().enumerate().map(|(k, &n)| (0..n as u32).map(|i| (i * 13 + k as u32 * 7 + 3) % vocab).collect()).collect()
}

#[test]
fn tiny_models_speculative_equals_greedy() {
    let dir = tempfile::tempdir().unwrap();
    let gammas: Vec<usize> = (1..=8).collect();
    let mut target = tiny(&TinySpec::llama(), &dir, "target.gguf");
    let mut draft = tiny(&TinySpec::qwen2(), &dir, "draft.gguf");
    check("tiny llama ← tiny qwen2", &mut target, &mut draft, &prompts(250, &[3, 17, 40]), &gammas, &[]);
    let mut target = tiny(&TinySpec::qwen2_k_quants(), &dir, "target-k.gguf");
    let mut draft = tiny(&TinySpec::qwen2_k_quants(), &dir, "draft-k.gguf");
    draft.truncate_layers(1);
    check("tiny qwen2 Q4_K ← its first layer", &mut target, &mut draft, &prompts(250, &[5, 33]), &gammas, &[]);
}

#[test]
fn smollm2_speculative_equals_greedy() {
    let path = common::smollm2_gguf();
    let mut target = load(&path);
    // SmolLM2's chat format: <|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n
    let prompts = vec![
        vec![1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198],
        vec![1, 4093, 198, 17555, 253, 1789, 8784, 16074, 30, 2, 198, 1, 520, 9531, 198],
    ];
    let eos = [2, 0];
    let mut itself = load(&path);
    check("smollm2 ← itself", &mut target, &mut itself, &prompts, &[1, 2, 3, 5, 8], &eos);

    let dir = tempfile::tempdir().unwrap();
    let vocab = target.config().vocab_size;
    let spec = TinySpec { vocab_rows: Some(vocab), ..TinySpec::llama() };
    let mut random = tiny(&spec, &dir, "random-draft.gguf");
    check("smollm2 ← random draft", &mut target, &mut random, &prompts[..1], &[3], &eos);
}

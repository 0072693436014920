//! Beam search on real (tiny, random) transformers: one beam is greedy decoding, and several beams
//! sharing the prompt's KV cache (duplicated and reordered rows) score their hypotheses as a
//! fresh forward of the whole sequence does.

use candle_core::Device;
use decodebench::models::gguf::GgufFile;
use decodebench::testing::{write_gguf, TinySpec};
use decodebench_strategies::autoregressive;
use decodebench_strategies::beam::{self, BeamConfig, EarlyStopping};
use decodebench_strategies::{DecoderModel, ForwardInput, LogitRows, StopConfig};

/// Summed log-probability of `tokens` after `prompt`, from one batch-1 forward without history.
fn log_prob_fresh(model: &mut dyn DecoderModel, prompt: &[u32], tokens: &[u32]) -> f64 {
    let seq: Vec<u32> = prompt.iter().chain(tokens).copied().collect();
    let positions: Vec<usize> = (0..seq.len()).collect();
    model.clear_cache();
    let logits = model.forward(&ForwardInput::causal(&seq, &positions, LogitRows::All)).unwrap().logits;
    let rows = logits.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    let mut total = 0.0;
    for (i, &t) in tokens.iter().enumerate() {
        let row = &rows[prompt.len() - 1 + i];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        total += row[t as usize] as f64 - lse;
    }
    total
}

#[test]
fn beam_search_on_tiny_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for spec in [TinySpec::llama(), TinySpec::qwen2()] {
        let path = dir.path().join(format!("{}.gguf", spec.arch));
        write_gguf(&spec, &path).unwrap();
        let mut model = GgufFile::open(&path).unwrap().load_transformer("tiny".into(), &Device::Cpu).unwrap();
        let prompt: Vec<u32> = "Beam search, once more.".bytes().map(u32::from).collect();

        // One beam = greedy, without EOS and with an EOS that greedy produces mid-way.
        let free = StopConfig { max_new_tokens: 16, eos_token_ids: vec![] };
        let g = autoregressive::greedy(&mut model, &prompt, &free, &mut |_| {}).unwrap();
        for stop in [free.clone(), StopConfig { max_new_tokens: 16, eos_token_ids: vec![g.tokens[6]] }] {
            let g = autoregressive::greedy(&mut model, &prompt, &stop, &mut |_| {}).unwrap();
            for mode in [EarlyStopping::True, EarlyStopping::Heuristic, EarlyStopping::Never] {
                let cfg = BeamConfig { num_beams: 1, length_penalty: 0.0, early_stopping: mode };
                let b = beam::generate(&mut model, &prompt, &stop, &cfg, &mut |_| {}).unwrap();
                assert_eq!((&b.tokens, b.stop), (&g.tokens, g.stop), "{} {mode} eos {:?}", spec.arch, stop.eos_token_ids);
            }
        }

        // Three beams: every finished hypothesis' log-probability, accumulated step by step over
        // the shared, reordered cache, matches a fresh forward of prompt + hypothesis.
        let stop = StopConfig { max_new_tokens: 10, eos_token_ids: vec![g.tokens[3]] };
        for (penalty, mode) in [(1.0, EarlyStopping::Never), (0.0, EarlyStopping::Heuristic)] {
            let cfg = BeamConfig { num_beams: 3, length_penalty: penalty, early_stopping: mode };
            let out = beam::search(&mut model, &prompt, &stop, &cfg, &mut |_| {}).unwrap();
            assert_eq!(out.generation.tokens, out.hypotheses[0].tokens);
            assert!(out.generation.steps.iter().all(|s| s.forward_tokens == 3));
            if !out.generation.steps.is_empty() {
                assert_eq!(model.cache_batch(), 3);
            }
            for h in &out.hypotheses {
                let fresh = log_prob_fresh(&mut model, &prompt, &h.tokens);
                assert!(
                    (h.log_prob - fresh).abs() < 1e-3 * (1.0 + fresh.abs()),
                    "{}: {:?} beam {} vs fresh {fresh}",
                    spec.arch,
                    h.tokens,
                    h.log_prob
                );
                assert!((h.score - h.log_prob / (h.tokens.len() as f64).powf(penalty)).abs() < 1e-12);
            }
        }
    }
}

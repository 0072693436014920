//! The target's negative log-likelihood of an answer, teacher-forced: a quality measure that
//! needs no judge, computed outside the timing.

use anyhow::Result;
use decodebench_strategies::{host, prefill, DecoderModel, ForwardInput, LogitRows};

/// Answer tokens per forward: bounds the logits held at once (rows × vocabulary floats).
const CHUNK: usize = 64;

/// Mean −log p(answer[i] | prompt, answer[..i]) over the answer's tokens (natural log), None for
/// an empty answer. Leaves the model's cache holding prompt + answer (the next unit clears it).
pub fn nll_per_token(model: &mut dyn DecoderModel, prompt: &[u32], answer: &[u32]) -> Result<Option<f64>> {
    if answer.is_empty() {
        return Ok(None);
    }
    // From an empty cache: the cache this leaves (which the next turn may reuse) is then the
    // same whichever configuration answered.
    model.clear_cache();
    let (out, _) = prefill(model, prompt)?;
    let mut total = neg_log_prob(&host::logits_row(&out.logits)?, answer[0]);
    // Row r of a forward over answer[i..j] predicts answer[i + r + 1].
    let inputs = &answer[..answer.len() - 1];
    let max_context = model.info().max_context;
    let mut i = 0;
    while i < inputs.len() {
        let j = (i + CHUNK).min(inputs.len());
        let start = prompt.len() + i;
        if start + (j - i) > max_context {
            break; // what the context cannot hold was never generated either
        }
        let positions: Vec<usize> = (start..start + (j - i)).collect();
        let out = model.forward(&ForwardInput::causal(&inputs[i..j], &positions, LogitRows::All))?;
        for (r, row) in host::logits_rows(&out.logits)?.iter().enumerate() {
            total += neg_log_prob(row, answer[i + r + 1]);
        }
        i = j;
    }
    Ok(Some(total / (1 + i) as f64))
}

fn neg_log_prob(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - logits[token as usize] as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use decodebench_strategies::toy::ToyModel;

    #[test]
    fn nll_matches_step_by_step_log_probs() {
        let dev = candle_core::Device::Cpu;
        let mut m = ToyModel::hashed(40, 3, &dev);
        let prompt = [3u32, 7, 1];
        let answer: Vec<u32> = (0..150).map(|i| (i * 7 % 40) as u32).collect();
        let got = nll_per_token(&mut m, &prompt, &answer).unwrap().unwrap();
        // Reference: one token at a time.
        let mut seq = prompt.to_vec();
        let mut total = 0.0;
        for &t in &answer {
            let (out, _) = prefill(&mut m, &seq).unwrap();
            total += neg_log_prob(&host::logits_row(&out.logits).unwrap(), t);
            seq.push(t);
        }
        let want = total / answer.len() as f64;
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        assert!(nll_per_token(&mut m, &prompt, &[]).unwrap().is_none());
        assert!(neg_log_prob(&[0.0, 0.0], 1) - std::f64::consts::LN_2 < 1e-12);
    }
}

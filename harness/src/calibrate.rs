//! The machine's cost curve: what one forward over N block tokens costs on a cache of a given
//! length, and a memory-bandwidth probe. The runner records it for every model it uses (the cost
//! model's input), and `decodebench calibrate` prints it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use decodebench_strategies::{clock, DecoderModel, ForwardInput, LogitRows};
use decodebench_tables::records::CostCurve;

/// The block sizes measured by default.
pub const DEFAULT_TOKENS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Deterministic ordinary token ids (skipping the low ids, often special or byte tokens).
fn filler(n: usize, vocab: usize) -> Vec<u32> {
    let span = vocab.saturating_sub(300).max(1) as u64;
    (0..n as u64).map(|i| (256 + (i * 7919 + 13) % span) as u32).collect()
}

/// Median milliseconds of one causal forward over N tokens (logits for every row, as
/// verification needs) on a cache of `context` positions, for each N in `tokens`, after one
/// untimed warm-up forward per N; `reps` timed forwards each.
pub fn forward_curve(model: &mut dyn DecoderModel, context: usize, tokens: &[usize], reps: usize) -> Result<BTreeMap<usize, f64>> {
    let max_context = model.info().max_context;
    let largest = tokens.iter().copied().max().unwrap_or(1);
    if context == 0 || context + largest > max_context {
        bail!("--context {context} + {largest} block tokens do not fit the model's context of {max_context}");
    }
    if tokens.contains(&0) {
        bail!("--tokens: block sizes must be at least 1");
    }
    let vocab = model.info().vocab_size;
    let prompt = filler(context, vocab);
    model.clear_cache();
    let positions: Vec<usize> = (0..context).collect();
    model.forward(&ForwardInput::causal(&prompt, &positions, LogitRows::Last))?;
    let mut curve = BTreeMap::new();
    for &n in tokens {
        let block = filler(n, vocab.saturating_sub(7));
        let positions: Vec<usize> = (context..context + n).collect();
        let mut times = Vec::with_capacity(reps);
        for rep in 0..=reps.max(1) {
            let t0 = clock::now(model.device())?;
            model.forward(&ForwardInput::causal(&block, &positions, LogitRows::All))?;
            let dt = clock::since(model.device(), t0)?;
            model.truncate_cache(context)?;
            if rep > 0 {
                times.push(dt * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        curve.insert(n, times[times.len() / 2]);
    }
    model.clear_cache();
    Ok(curve)
}

/// Memory bandwidth in GB/s (a 256 MiB copy on every thread), for the bandwidth limit.
pub fn bandwidth_gbs() -> Option<f64> {
    let threads = candle_core::utils::get_num_threads();
    crate::doctor::memory_bandwidth(256 << 20, threads, 3, Duration::from_secs(3)).map(|b| b.gb_per_s)
}

/// The whole calibration of one model.
pub fn calibrate(model: &mut dyn DecoderModel, context: usize, tokens: &[usize], reps: usize) -> Result<CostCurve> {
    let forward_ms = forward_curve(model, context, tokens, reps)?;
    Ok(CostCurve { context, forward_ms, bandwidth_gbs: bandwidth_gbs() })
}

/// Parses `1,2,4,8` (the `--tokens` flag).
pub fn parse_tokens(text: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.split(',') {
        match part.trim().parse::<usize>() {
            Ok(n) if n > 0 => out.push(n),
            _ => bail!("--tokens: `{part}` is not a positive integer (expected a list like 1,2,4,8)"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use decodebench_strategies::toy::ToyModel;

    #[test]
    fn curve_has_every_size_and_leaves_the_cache_empty() {
        let mut m = ToyModel::hashed(64, 3, &candle_core::Device::Cpu);
        let curve = forward_curve(&mut m, 16, &[1, 4, 8], 2).unwrap();
        assert_eq!(curve.keys().copied().collect::<Vec<_>>(), vec![1, 4, 8]);
        assert!(curve.values().all(|ms| *ms >= 0.0));
        assert_eq!(m.cache_len(), 0);
        let e = forward_curve(&mut m, 4090, &[64], 1).unwrap_err().to_string();
        assert!(e.contains("--context"), "{e}");
        assert!(parse_tokens("1,x").is_err());
        assert_eq!(parse_tokens("1, 2,64").unwrap(), vec![1, 2, 64]);
    }
}

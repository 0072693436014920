//! The machine's cost curve: what one forward over N block tokens costs on a cache of a given
//! length, and a memory-bandwidth probe. The runner records it for every model it uses (the cost
//! model's input), and `decodebench calibrate` prints it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};
use decodebench_strategies::{clock, DecoderModel, ForwardInput, LogitRows};
use decodebench_tables::records::CostCurve;
use decodebench_tables::stats::median;

/// The block sizes measured by default.
pub const DEFAULT_TOKENS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Deterministic ordinary token ids (skipping the low ids, often special or byte tokens).
fn filler(n: usize, vocab: usize) -> Vec<u32> {
    let span = vocab.saturating_sub(300).max(1) as u64;
    (0..n as u64).map(|i| (256 + (i * 7919 + 13) % span) as u32).collect()
}

/// Median milliseconds of one causal forward over N tokens (logits for every row, as
/// verification needs) on a cache of `context` positions, for each N in `tokens`: one untimed
/// warm-up round, then `reps` timed rounds, each round one forward per N in turn. Interleaving the
/// sizes spreads a burst of load on a shared machine over all of them instead of one (a run here
/// once measured N = 2 above N = 4 when the sizes were timed one after the other).
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
    let blocks: Vec<(Vec<u32>, Vec<usize>)> =
        tokens.iter().map(|&n| (filler(n, vocab.saturating_sub(7)), (context..context + n).collect())).collect();
    let mut times = vec![Vec::with_capacity(reps); tokens.len()];
    for round in 0..=reps.max(1) {
        for ((block, positions), times) in blocks.iter().zip(&mut times) {
            let t0 = clock::now(model.device())?;
            model.forward(&ForwardInput::causal(block, positions, LogitRows::All))?;
            let dt = clock::since(model.device(), t0)?;
            model.truncate_cache(context)?;
            if round > 0 {
                times.push(dt * 1e3);
            }
        }
    }
    model.clear_cache();
    Ok(tokens.iter().zip(times).map(|(&n, t)| (n, median(&t).expect("at least one timed round"))).collect())
}

/// Block sizes that cost at least 10% less than a smaller one on `curve`: a sign that the machine
/// was disturbed while it was measured (a forward over more tokens does more work), as
/// `N = 2 (124.2 ms) > N = 4 (103.9 ms)`; empty for a plausible curve.
pub fn implausible_points(curve: &BTreeMap<usize, f64>) -> Vec<String> {
    let points: Vec<(usize, f64)> = curve.iter().map(|(n, ms)| (*n, *ms)).collect();
    let mut out = Vec::new();
    for (i, &(n, ms)) in points.iter().enumerate() {
        if let Some(&(small, small_ms)) = points[..i].iter().find(|(_, m)| ms < 0.9 * m) {
            out.push(format!("N = {small} ({small_ms:.1} ms) > N = {n} ({ms:.1} ms)"));
        }
    }
    out
}

/// Memory bandwidth in GB/s (a 256 MiB copy on every thread), for the bandwidth limit.
pub fn bandwidth_gbs() -> Option<f64> {
    let threads = candle_core::utils::get_num_threads();
    crate::doctor::memory_bandwidth(256 << 20, threads, 3, Duration::from_secs(3)).map(|b| b.gb_per_s)
}

/// The whole calibration of one model. A curve with [`implausible_points`] is measured again, up
/// to twice; the plausible one, or the least implausible with a warning, is kept.
pub fn calibrate(model: &mut dyn DecoderModel, context: usize, tokens: &[usize], reps: usize) -> Result<CostCurve> {
    let mut forward_ms = forward_curve(model, context, tokens, reps)?;
    let mut bad = implausible_points(&forward_ms);
    for _ in 0..2 {
        if bad.is_empty() {
            break;
        }
        let again = forward_curve(model, context, tokens, reps)?;
        let again_bad = implausible_points(&again);
        if again_bad.len() < bad.len() {
            (forward_ms, bad) = (again, again_bad);
        }
    }
    if !bad.is_empty() {
        eprintln!(
            "warning: the forward-cost curve stayed implausible over three measurements ({}): the machine is busy; the cost model's predictions will be off",
            bad.join(", ")
        );
    }
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
        let bumpy: BTreeMap<usize, f64> = [(1, 79.1), (2, 124.2), (4, 103.9), (8, 122.7)].into_iter().collect();
        assert_eq!(implausible_points(&bumpy), vec!["N = 2 (124.2 ms) > N = 4 (103.9 ms)".to_string()]);
        let smooth: BTreeMap<usize, f64> = [(1, 35.0), (2, 47.0), (4, 46.0), (8, 105.0)].into_iter().collect();
        assert!(implausible_points(&smooth).is_empty(), "within 10% is noise, not a warning");
        assert_eq!(parse_tokens("1, 2,64").unwrap(), vec![1, 2, 64]);
    }
}

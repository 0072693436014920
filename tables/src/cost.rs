//! The cost model: the speedup a strategy *should* get on this machine, from its acceptance
//! (measured in tokens, which do not depend on the machine) and the machine's forward-cost
//! curves (`calibration.json`). A measured speedup far below the predicted one points at
//! overhead outside the forwards; one above it at a curve measured on another cache length.
//!
//! With c_t(n) the target's milliseconds for one forward over n tokens and c_d(n) the draft
//! model's, over a configuration's decoding steps:
//!
//! ```text
//! τ̄ = mean tokens_accepted per step        (new tokens per target forward, bonus included)
//! n̄ = mean forward_tokens per step         (tokens in each target forward)
//! draft ms per step = mean tokens_proposed × c_d(1)   strategies with a draft model (speculative)
//!                   = mean draft_s × 1000             others (Medusa heads; lookup ≈ 0)
//! predicted speedup = τ̄ · c_t(1) / (c_t(n̄) + draft ms per step)
//! ```
//!
//! Greedy decoding costs c_t(1) per token, so this is the ratio of greedy's time per token to
//! the strategy's; it is 1.0 for greedy by definition. The draft model is charged one
//! single-token forward per proposed token (its extra read of the last accepted token is
//! ignored: the model keeps it simple). c_t(n̄) interpolates the calibrated points linearly, is
//! clamped to the first point below the smallest calibrated N, and extends the line through the
//! last two points above the largest.

use decodebench_strategies::StepRecord;

use crate::records::CostCurve;

/// Strategies whose candidates come from a separate draft model, charged by its cost curve.
pub fn uses_draft_model(strategy: &str) -> bool {
    strategy == "speculative"
}

/// Milliseconds of one forward over `n` tokens on `curve` (see the module doc for the
/// interpolation). `None` for an empty curve; a curve of one point is flat.
pub fn forward_ms(curve: &CostCurve, n: f64) -> Option<f64> {
    let points: Vec<(f64, f64)> = curve.forward_ms.iter().map(|(&k, &v)| (k as f64, v)).collect();
    let (first, last) = (*points.first()?, *points.last()?);
    if points.len() == 1 || n <= first.0 {
        return Some(first.1);
    }
    let line = |(x0, y0): (f64, f64), (x1, y1): (f64, f64)| y0 + (y1 - y0) * (n - x0) / (x1 - x0);
    if n >= last.0 {
        return Some(line(points[points.len() - 2], last));
    }
    let i = points.iter().position(|p| p.0 >= n)?;
    Some(line(points[i - 1], points[i]))
}

/// The predicted speedup of `steps` (one configuration's decoding steps, any number of turns)
/// over greedy decoding; see the module doc. `None` with no steps, an empty target curve, a
/// draft-model strategy without a draft curve, or a zero predicted cost.
pub fn predicted_speedup(steps: &[StepRecord], strategy: &str, target: &CostCurve, draft: Option<&CostCurve>) -> Option<f64> {
    predicted_speedup_by_machine(&[MachineSteps { steps, target: Some(target), draft }], strategy)
}

/// Steps that ran on one machine, with that machine's curves.
#[derive(Debug, Clone, Copy)]
pub struct MachineSteps<'a> {
    pub steps: &'a [StepRecord],
    pub target: Option<&'a CostCurve>,
    pub draft: Option<&'a CostCurve>,
}

/// The predicted speedup of steps run on several machines (merged shards), each priced by its
/// own machine's curves: the greedy time of all their tokens over the strategy's time,
/// Σ_m N_m·τ̄_m·c_m(1) / Σ_m N_m·(c_m(n̄_m) + draft ms per step), N_m steps on machine m. On one
/// machine this is the module doc's formula. Machines without steps are skipped; `None` when
/// no machine has steps or one that has lacks a prediction (no curve of its own: another
/// machine's would price it wrongly).
pub fn predicted_speedup_by_machine(machines: &[MachineSteps], strategy: &str) -> Option<f64> {
    let (mut greedy_ms, mut strategy_ms) = (0.0, 0.0);
    let mut any = false;
    for m in machines.iter().filter(|m| !m.steps.is_empty()) {
        let (g, s) = predicted_ms(m.steps, strategy, m.target?, m.draft)?;
        greedy_ms += g;
        strategy_ms += s;
        any = true;
    }
    if !any || strategy_ms <= 0.0 || !strategy_ms.is_finite() {
        return None;
    }
    if strategy == "greedy" {
        return Some(1.0);
    }
    Some(greedy_ms / strategy_ms)
}

/// Predicted milliseconds of `steps` (non-empty) under greedy decoding (every accepted token at
/// c_t(1)) and under the strategy (per step c_t(n̄) + draft ms per step).
fn predicted_ms(steps: &[StepRecord], strategy: &str, target: &CostCurve, draft: Option<&CostCurve>) -> Option<(f64, f64)> {
    let n = steps.len() as f64;
    let mean = |f: fn(&StepRecord) -> f64| steps.iter().map(f).sum::<f64>() / n;
    let accepted = mean(|s| s.tokens_accepted as f64);
    let forward_tokens = mean(|s| s.forward_tokens as f64);
    let draft_ms = if uses_draft_model(strategy) {
        mean(|s| s.tokens_proposed as f64) * forward_ms(draft?, 1.0)?
    } else {
        mean(|s| s.draft_s) * 1000.0
    };
    let step_ms = forward_ms(target, forward_tokens)? + draft_ms;
    Some((n * accepted * forward_ms(target, 1.0)?, n * step_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(points: &[(usize, f64)]) -> CostCurve {
        CostCurve { context: 256, forward_ms: points.iter().copied().collect(), bandwidth_gbs: None }
    }

    fn step(proposed: usize, accepted: usize, forward: usize, draft_s: f64) -> StepRecord {
        StepRecord { tokens_proposed: proposed, tokens_accepted: accepted, forward_tokens: forward, draft_s, ..Default::default() }
    }

    #[test]
    fn interpolation() {
        let c = curve(&[(1, 10.0), (2, 12.0), (4, 20.0)]);
        assert_eq!(forward_ms(&c, 1.0), Some(10.0));
        assert_eq!(forward_ms(&c, 2.0), Some(12.0));
        // Halfway between 2 (12) and 4 (20).
        assert_eq!(forward_ms(&c, 3.0), Some(16.0));
        // 1.5: halfway between 10 and 12.
        assert_eq!(forward_ms(&c, 1.5), Some(11.0));
        // Below the range: clamped to the first point.
        assert_eq!(forward_ms(&c, 0.5), Some(10.0));
        // Above: the line through (2, 12) and (4, 20), slope 4: 20 + 4·4 at 8.
        assert_eq!(forward_ms(&c, 8.0), Some(36.0));
        assert_eq!(forward_ms(&curve(&[(1, 7.0)]), 5.0), Some(7.0));
        assert_eq!(forward_ms(&curve(&[]), 1.0), None);
    }

    #[test]
    fn greedy_is_one() {
        let c = curve(&[(1, 10.0)]);
        assert_eq!(predicted_speedup(&[step(0, 1, 1, 0.0)], "greedy", &c, None), Some(1.0));
        // Plain sampling: one token per single-token forward, no draft: also 1.0.
        let p = predicted_speedup(&vec![step(0, 1, 1, 0.0); 3], "sample", &c, None).unwrap();
        assert!((p - 1.0).abs() < 1e-12);
    }

    #[test]
    fn speculative_prediction_by_hand() {
        let target = curve(&[(1, 10.0), (2, 12.0), (4, 20.0), (8, 36.0)]);
        let draft = curve(&[(1, 2.0), (2, 3.0)]);
        // γ = 4 (forward over 5 tokens), accepted 3 and 5 tokens: τ̄ = 4, n̄ = 5,
        // c_t(5) = 20 + (36 − 20)·(5 − 4)/(8 − 4) = 24, draft 4 proposed × c_d(1) = 8 ms.
        // Predicted 4 · 10 / (24 + 8) = 1.25.
        let steps = [step(4, 3, 5, 0.123), step(4, 5, 5, 0.456)];
        let p = predicted_speedup(&steps, "speculative", &target, Some(&draft)).unwrap();
        assert!((p - 1.25).abs() < 1e-12, "{p}");
        // Without a draft curve there is no prediction (measured draft_s is not used).
        assert_eq!(predicted_speedup(&steps, "speculative", &target, None), None);
    }

    #[test]
    fn medusa_and_lookup_prediction_by_hand() {
        let target = curve(&[(1, 10.0), (2, 12.0), (4, 20.0), (8, 36.0)]);
        // Medusa, tree of 8 tokens, heads 1 ms and 3 ms (mean 2 ms), accepted 2 and 4 (τ̄ = 3):
        // 3 · 10 / (36 + 2) = 30/38.
        let steps = [step(7, 2, 8, 0.001), step(7, 4, 8, 0.003)];
        let p = predicted_speedup(&steps, "medusa", &target, None).unwrap();
        assert!((p - 30.0 / 38.0).abs() < 1e-12, "{p}");
        // Lookup, chain of 2 (forward 2), draft free, accepted 2 each time: 2 · 10 / 12 = 5/3.
        let steps = vec![step(1, 2, 2, 0.0); 4];
        let p = predicted_speedup(&steps, "lookup", &target, None).unwrap();
        assert!((p - 5.0 / 3.0).abs() < 1e-12, "{p}");
        assert_eq!(predicted_speedup(&[], "lookup", &target, None), None);
        assert_eq!(predicted_speedup(&steps, "lookup", &curve(&[]), None), None);
    }
}

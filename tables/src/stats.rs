//! Summary statistics of paired speedups: the geometric mean (speedups are ratios, so they
//! average multiplicatively: a 2× and a 0.5× turn cancel out) and a paired bootstrap over
//! prompts for its confidence interval.
//!
//! The bootstrap resamples prompts, not turns: turns of one prompt (and its repeats) share the
//! prompt's difficulty and answer length, so they are not independent draws, and treating them
//! as such would give intervals that are too narrow. The random numbers come from a
//! self-contained splitmix64, so an interval depends only on the data and the seed, never on a
//! crate version.

/// Resamples of [`paired_bootstrap`] unless told otherwise.
pub const DEFAULT_RESAMPLES: usize = 2000;
/// The seed the analysis uses, so re-analysing a folder gives the same intervals.
pub const DEFAULT_SEED: u64 = 0x5eed_dec0_de00_0001;

/// exp(mean(ln x)). `None` when empty or when any value is not finite and positive (a ratio of
/// zero or a missing time has no logarithm; callers drop those first).
pub fn geometric_mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return None;
    }
    let sum: f64 = values.iter().map(|v| v.ln()).sum();
    Some((sum / values.len() as f64).exp())
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to pick bootstrap indices.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0), by the multiply-high method; its bias, at most n / 2^64, is far
    /// below anything a bootstrap can see.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// A point estimate with its bootstrap percentile interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// Paired bootstrap of the geometric mean of ratios. `groups` holds, per prompt, the ratios of
/// its turns (each a time or throughput ratio against the same turn's greedy baseline: the
/// pairing is done by the caller). The estimate is the geometric mean of all ratios; each of
/// `resamples` resamples draws as many prompts as there are, with replacement, and takes the
/// geometric mean of all ratios of the drawn prompts (a prompt with more turns weighs more,
/// as in the estimate). The interval is the 2.5 % and 97.5 % percentiles of those means.
///
/// Empty groups are ignored; `None` when no ratio is left, or any ratio is not finite and
/// positive.
pub fn paired_bootstrap(groups: &[Vec<f64>], resamples: usize, seed: u64) -> Option<Interval> {
    // Per prompt: the sum of log ratios and their count, so a resample is a few additions.
    let mut sums = Vec::new();
    for g in groups.iter().filter(|g| !g.is_empty()) {
        if g.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            return None;
        }
        sums.push((g.iter().map(|v| v.ln()).sum::<f64>(), g.len()));
    }
    if sums.is_empty() {
        return None;
    }
    let (total, count) = sums.iter().fold((0.0, 0usize), |(s, n), (gs, gn)| (s + gs, n + gn));
    let estimate = (total / count as f64).exp();
    if resamples == 0 {
        return Some(Interval { estimate, low: estimate, high: estimate });
    }
    let mut rng = SplitMix64::new(seed);
    let mut means = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let (mut s, mut n) = (0.0, 0usize);
        for _ in 0..sums.len() {
            let (gs, gn) = sums[rng.below(sums.len())];
            s += gs;
            n += gn;
        }
        means.push(s / n as f64);
    }
    means.sort_by(f64::total_cmp);
    Some(Interval { estimate, low: percentile_sorted(&means, 0.025).exp(), high: percentile_sorted(&means, 0.975).exp() })
}

/// The `p` quantile (0..=1) of sorted, non-empty `values`, interpolating linearly between
/// order statistics (the common "type 7" definition, numpy's default).
pub fn percentile_sorted(values: &[f64], p: f64) -> f64 {
    let pos = p.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
}

/// The middle of `values` (of an even count the upper of the two middle values: a timing that
/// was measured, not an average of two); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

/// Arithmetic mean; `None` when empty.
pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        None
    } else {
        Some(values.iter().sum::<f64>() / values.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_upper_middle_of_an_even_count() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(3.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn geometric_mean_cases() {
        assert_eq!(geometric_mean(&[]), None);
        assert_eq!(geometric_mean(&[1.0, 0.0]), None);
        assert_eq!(geometric_mean(&[1.0, f64::NAN]), None);
        // √(2 · 8) = 4; a 2× and a 0.5× cancel out.
        assert!((geometric_mean(&[2.0, 8.0]).unwrap() - 4.0).abs() < 1e-12);
        assert!((geometric_mean(&[2.0, 0.5]).unwrap() - 1.0).abs() < 1e-12);
        assert!((geometric_mean(&[3.0]).unwrap() - 3.0).abs() < 1e-12);
    }

    #[test]
    fn splitmix64_reference_values() {
        // The first outputs for seed 0 of the reference implementation (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        let mut r = SplitMix64::new(7);
        for _ in 0..1000 {
            assert!(r.below(5) < 5);
        }
    }

    #[test]
    fn percentiles() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile_sorted(&v, 0.0), 1.0);
        assert_eq!(percentile_sorted(&v, 1.0), 5.0);
        assert_eq!(percentile_sorted(&v, 0.5), 3.0);
        // pos = 0.1 · 4 = 0.4 → 1 + 0.4 · (2 − 1).
        assert!((percentile_sorted(&v, 0.1) - 1.4).abs() < 1e-12);
    }

    /// Times t for the baseline and t / 1.7 for the candidate, each with independent
    /// multiplicative noise exp(±0.15·u); ratios baseline / candidate per turn, 2 turns per
    /// prompt.
    fn synthetic(prompts: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = SplitMix64::new(seed);
        let mut noise = move || {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
            (0.3 * (u - 0.5)).exp()
        };
        (0..prompts)
            .map(|p| {
                (0..2)
                    .map(|t| {
                        let base = 0.5 + 0.01 * (p * 2 + t) as f64;
                        let greedy = base * noise();
                        let fast = base / 1.7 * noise();
                        greedy / fast
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn bootstrap_recovers_a_known_ratio() {
        let groups = synthetic(40, 1);
        let ci = paired_bootstrap(&groups, DEFAULT_RESAMPLES, DEFAULT_SEED).unwrap();
        // The noise is symmetric in log space, so the geometric mean of 80 ratios is 1.7 up to
        // a few percent (log-sd per ratio ≈ 0.3/√12·√2 ≈ 0.12, over √80 ≈ 0.014).
        assert!((ci.estimate - 1.7).abs() < 0.05, "{ci:?}");
        assert!(ci.low < 1.7 && 1.7 < ci.high, "{ci:?}");
        assert!(ci.low < ci.estimate && ci.estimate < ci.high, "{ci:?}");
        // Deterministic: the same seed gives the same interval.
        assert_eq!(paired_bootstrap(&groups, DEFAULT_RESAMPLES, DEFAULT_SEED), Some(ci));
    }

    #[test]
    fn bootstrap_narrows_with_more_prompts() {
        let small = paired_bootstrap(&synthetic(10, 2), DEFAULT_RESAMPLES, DEFAULT_SEED).unwrap();
        let large = paired_bootstrap(&synthetic(160, 3), DEFAULT_RESAMPLES, DEFAULT_SEED).unwrap();
        // Width shrinks like 1/√prompts: 16× the prompts, about a quarter of the width.
        let (ws, wl) = (small.high - small.low, large.high - large.low);
        assert!(wl < 0.5 * ws, "small {small:?} large {large:?}");
    }

    #[test]
    fn bootstrap_degenerate_cases() {
        // All ratios equal: every resample has the same mean, so the interval has no width
        // (up to the rounding of summing equal logs in another order).
        let groups = vec![vec![1.25, 1.25], vec![1.25], vec![1.25, 1.25, 1.25]];
        let ci = paired_bootstrap(&groups, 500, 9).unwrap();
        assert!((ci.estimate - 1.25).abs() < 1e-12);
        assert!((ci.high - ci.low).abs() < 1e-12, "{ci:?}");
        // Ratios of 1: exactly zero width.
        let ci = paired_bootstrap(&[vec![1.0; 3], vec![1.0]], 500, 9).unwrap();
        assert_eq!((ci.estimate, ci.low, ci.high), (1.0, 1.0, 1.0));
        // One prompt: every resample is that prompt.
        let ci = paired_bootstrap(&[vec![1.5, 2.5]], 500, 9).unwrap();
        assert_eq!(ci.low, ci.high);
        // Nothing to resample, or a ratio without a logarithm.
        assert_eq!(paired_bootstrap(&[], 500, 9), None);
        assert_eq!(paired_bootstrap(&[vec![]], 500, 9), None);
        assert_eq!(paired_bootstrap(&[vec![1.0, 0.0]], 500, 9), None);
    }
}

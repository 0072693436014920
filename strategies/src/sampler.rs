//! The shared sampler: distributions over the vocabulary (temperature, top-k, top-p) and seeded
//! draws from them. Strategies that need the whole distribution (rejection sampling, typical
//! acceptance) get it from [`Sampler::distribution`], so every strategy samples from the same
//! distribution for the same settings.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamplingConfig {
    /// 0 means greedy (a one-hot distribution on the arg-max).
    pub temperature: f64,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches p.
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl SamplingConfig {
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_k: None, top_p: None, seed: 0 }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Checks the settings; errors name the option.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("--temperature must be a finite number >= 0, got {}", self.temperature));
        }
        if self.top_k == Some(0) {
            return Err("--top-k must be at least 1".into());
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(format!("--top-p must be in (0, 1], got {p}"));
            }
        }
        Ok(())
    }
}

/// Index of the largest value, the first one on ties (as candle's arg-max).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// `softmax(logits / temperature)` in f64 accumulation, returned as f32 probabilities.
pub fn softmax(logits: &[f32], temperature: f64) -> Vec<f32> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) / t).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| (e / sum) as f32).collect()
}

/// Entropy (nats) of a distribution.
pub fn entropy(probs: &[f32]) -> f64 {
    probs.iter().filter(|&&p| p > 0.0).map(|&p| -(p as f64) * (p as f64).ln()).sum()
}

pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self { config, rng }
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// The distribution this sampler draws from for `logits`: softmax at the temperature,
    /// restricted to top-k then top-p and renormalised; one-hot on the arg-max when greedy.
    pub fn distribution(&self, logits: &[f32]) -> Vec<f32> {
        if self.config.is_greedy() {
            let mut p = vec![0f32; logits.len()];
            p[argmax(logits) as usize] = 1.0;
            return p;
        }
        let mut probs = softmax(logits, self.config.temperature);
        if self.config.top_k.is_some() || self.config.top_p.is_some() {
            let mut order: Vec<usize> = (0..probs.len()).collect();
            // Stable sort: equal probabilities keep index order, so the cut is deterministic.
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            let mut keep = self.config.top_k.unwrap_or(order.len()).min(order.len());
            if let Some(top_p) = self.config.top_p {
                let mut mass = 0f64;
                for (i, &t) in order[..keep].iter().enumerate() {
                    mass += probs[t] as f64;
                    if mass >= top_p {
                        keep = i + 1;
                        break;
                    }
                }
            }
            for &t in &order[keep..] {
                probs[t] = 0.0;
            }
            let sum: f64 = probs.iter().map(|&p| p as f64).sum();
            probs.iter_mut().for_each(|p| *p = (*p as f64 / sum) as f32);
        }
        probs
    }

    /// A uniform draw in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// Draws a token from `probs` (which need not be exactly normalised).
    pub fn sample(&mut self, probs: &[f32]) -> u32 {
        let total: f64 = probs.iter().map(|&p| p as f64).sum();
        let target = self.uniform() * total;
        let mut acc = 0f64;
        let mut last_nonzero = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                acc += p as f64;
                last_nonzero = i;
                if acc > target {
                    return i as u32;
                }
            }
        }
        last_nonzero as u32
    }

    /// `sample(distribution(logits))`, or the arg-max when greedy (no random draw is used).
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.config.is_greedy() {
            return argmax(logits);
        }
        let p = self.distribution(logits);
        self.sample(&p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> Sampler {
        Sampler::new(SamplingConfig { temperature, top_k, top_p, seed: 1 })
    }

    #[test]
    fn greedy_distribution_is_one_hot_on_first_max() {
        let p = sampler(0.0, None, None).distribution(&[1.0, 3.0, 3.0, 0.0]);
        assert_eq!(p, [0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn temperature_one_is_softmax() {
        let p = sampler(1.0, None, None).distribution(&[0.0, (2f32).ln()]);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-6 && (p[1] - 2.0 / 3.0).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn top_k_and_top_p_cut_and_renormalise() {
        let logits = [(0.1f32).ln(), (0.2f32).ln(), (0.3f32).ln(), (0.4f32).ln()];
        let p = sampler(1.0, Some(2), None).distribution(&logits);
        assert!((p[3] - 4.0 / 7.0).abs() < 1e-6 && (p[2] - 3.0 / 7.0).abs() < 1e-6 && p[0] == 0.0 && p[1] == 0.0);
        let p = sampler(1.0, None, Some(0.65)).distribution(&logits);
        assert!(p[0] == 0.0 && p[1] == 0.0 && (p[3] - 4.0 / 7.0).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn draws_follow_the_distribution_and_are_seeded() {
        let probs = [0.1f32, 0.0, 0.6, 0.3];
        let mut s = sampler(1.0, None, None);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[s.sample(&probs) as usize] += 1;
        }
        assert_eq!(counts[1], 0);
        for (i, &p) in probs.iter().enumerate() {
            let freq = counts[i] as f32 / 20_000.0;
            assert!((freq - p).abs() < 0.02, "token {i}: {freq} vs {p}");
        }
        let a: Vec<u32> = (0..10).map(|_| sampler(1.0, None, None).sample(&probs)).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]), "same seed, same first draw");
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = SamplingConfig { temperature: -1.0, ..SamplingConfig::greedy() };
        assert!(bad.validate().unwrap_err().contains("--temperature"));
        let bad = SamplingConfig { top_p: Some(1.5), ..SamplingConfig::greedy() };
        assert!(bad.validate().unwrap_err().contains("--top-p"));
    }
}

//! Draft-model speculative decoding on toy models: greedy acceptance reproduces greedy decoding
//! token for token; rejection sampling preserves the target's distribution (chi-square).

use std::sync::Arc;

use candle_core::Device;
use decodebench_strategies::autoregressive;
use decodebench_strategies::sampler::{Sampler, SamplingConfig};
use decodebench_strategies::speculative::{generate, rejection_step, GammaSchedule, SpecAcceptance, SpeculativeConfig};
use decodebench_strategies::toy::ToyModel;
use decodebench_strategies::StopConfig;
use statrs::distribution::{ChiSquared, ContinuousCDF};

const EOS: u32 = 0;

fn stop(max_new_tokens: usize) -> StopConfig {
    StopConfig { max_new_tokens, eos_token_ids: vec![EOS] }
}

fn config(gamma: usize, schedule: GammaSchedule, p_min: Option<f64>, acceptance: SpecAcceptance) -> SpeculativeConfig {
    SpeculativeConfig { gamma, schedule, p_min, acceptance, draft_vocab: None }
}

/// A draft that agrees with the target's arg-max most of the time: the target's logits plus
/// noise from another hashed model.
fn noisy_draft(vocab: usize, target_seed: u64, noise_seed: u64, noise: f32) -> ToyModel {
    let dev = Device::Cpu;
    let target = ToyModel::hashed(vocab, target_seed, &dev);
    let other = ToyModel::hashed(vocab, noise_seed, &dev);
    let (t, o) = (target.logits_fn(), other.logits_fn());
    ToyModel::new(vocab, 4096, Arc::new(move |seq: &[u32]| t(seq).iter().zip(o(seq)).map(|(a, b)| a + noise * b).collect()), &dev)
}

#[test]
fn greedy_acceptance_reproduces_greedy_decoding() {
    let dev = Device::Cpu;
    let vocab = 50;
    for prompt in [vec![5u32, 9, 13], vec![1, 2], vec![42; 7]] {
        let mut target = ToyModel::hashed(vocab, 3, &dev);
        let greedy = autoregressive::greedy(&mut target, &prompt, &stop(128), &mut |_| {}).unwrap();
        for (draft_name, noise) in [("same model", 0.0f32), ("close draft", 0.3), ("unrelated draft", 50.0)] {
            for gamma in 1..=8 {
                for (schedule, p_min) in
                    [(GammaSchedule::Constant, None), (GammaSchedule::Heuristic, None), (GammaSchedule::Constant, Some(0.3))]
                {
                    let mut target = ToyModel::hashed(vocab, 3, &dev);
                    let mut draft = noisy_draft(vocab, 3, 17, noise);
                    let mut sampler = Sampler::new(SamplingConfig::greedy());
                    let cfg = config(gamma, schedule, p_min, SpecAcceptance::Greedy);
                    let g = generate(&mut target, &mut draft, &prompt, &stop(128), &cfg, &mut sampler, &mut |_| {}).unwrap();
                    assert_eq!(g.tokens, greedy.tokens, "{draft_name}, γ={gamma}, {schedule:?}, p_min {p_min:?}, prompt {prompt:?}");
                    assert_eq!(g.stop, greedy.stop);
                    let emitted: usize = g.steps.iter().map(|s| s.tokens_accepted).sum();
                    assert_eq!(emitted + 1, g.tokens.len(), "records account for exactly every token but the first");
                    if noise == 0.0 && schedule == GammaSchedule::Constant && p_min.is_none() && g.tokens.len() > gamma + 1 {
                        assert_eq!(g.steps[0].accepted_depth, gamma, "a perfect draft is fully accepted");
                    }
                }
            }
        }
    }
}

/// Markov toy models over a 3-token vocabulary: the next-token distribution depends on the last
/// token only, so sequence probabilities are products of known conditionals.
fn markov(table: [[f32; 3]; 3]) -> ToyModel {
    let f = Arc::new(move |seq: &[u32]| table[*seq.last().unwrap() as usize].iter().map(|p| p.ln()).collect::<Vec<f32>>());
    ToyModel::new(3, 4096, f, &Device::Cpu)
}

const TARGET: [[f32; 3]; 3] = [[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.25, 0.25, 0.5]];
const DRAFT: [[f32; 3]; 3] = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.4, 0.4, 0.2]];

/// p-value of Pearson's chi-square test of `counts` against `probs`.
fn chi_square_p(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    let stat: f64 = counts.iter().zip(probs).map(|(&c, &p)| (c as f64 - n as f64 * p).powi(2) / (n as f64 * p)).sum();
    1.0 - ChiSquared::new((counts.len() - 1) as f64).unwrap().cdf(stat)
}

const SAMPLES: usize = 20_000;

#[test]
fn rejection_sampling_preserves_the_target_distribution_end_to_end() {
    // Three new tokens after the prompt [2]: the first from the target's prefill, the next two
    // from speculative steps (γ = 2, so a step can accept both).
    let mut counts = vec![0usize; 27];
    for seed in 0..SAMPLES as u64 {
        let mut target = markov(TARGET);
        let mut draft = markov(DRAFT);
        let mut sampler = Sampler::new(SamplingConfig { temperature: 1.0, top_k: None, top_p: None, seed });
        let cfg = config(2, GammaSchedule::Constant, None, SpecAcceptance::Rejection);
        let stop = StopConfig { max_new_tokens: 3, eos_token_ids: vec![] };
        let g = generate(&mut target, &mut draft, &[2], &stop, &cfg, &mut sampler, &mut |_| {}).unwrap();
        let t = &g.tokens;
        counts[(t[0] * 9 + t[1] * 3 + t[2]) as usize] += 1;
    }
    let mut probs = vec![0f64; 27];
    for (cell, p) in probs.iter_mut().enumerate() {
        let (a, b, c) = (cell / 9, cell / 3 % 3, cell % 3);
        *p = TARGET[2][a] as f64 * TARGET[a][b] as f64 * TARGET[b][c] as f64;
    }
    let p = chi_square_p(&counts, &probs);
    eprintln!("end-to-end chi-square p = {p}");
    assert!(p > 0.01, "speculative sampling changed the distribution: chi-square p = {p}, counts {counts:?}");
}

/// The first token a rejection step emits, with drafts drawn from q: either an accepted draft or
/// the replacement. Its distribution must be the target's p[0].
/// A rejection-sampling step: (drafts, q, p, sampler) → (accepted, next token).
type RejectionStep = dyn Fn(&[u32], &[Vec<f32>], &[Vec<f32>], &mut Sampler) -> (usize, u32);

fn first_emitted(step: &RejectionStep) -> Vec<usize> {
    let q: Vec<Vec<f32>> = vec![DRAFT[0].to_vec(), DRAFT[1].to_vec()];
    let p: Vec<Vec<f32>> = vec![TARGET[0].to_vec(), TARGET[1].to_vec(), TARGET[2].to_vec()];
    let mut sampler = Sampler::new(SamplingConfig { temperature: 1.0, top_k: None, top_p: None, seed: 99 });
    let mut counts = vec![0usize; 3];
    for _ in 0..SAMPLES {
        let drafts = [sampler.sample(&q[0]), sampler.sample(&q[1])];
        let (accepted, next) = step(&drafts, &q, &p, &mut sampler);
        let first = if accepted > 0 { drafts[0] } else { next };
        counts[first as usize] += 1;
    }
    counts
}

#[test]
fn chi_square_accepts_rejection_sampling_and_rejects_a_wrong_rule() {
    let expected: Vec<f64> = TARGET[0].iter().map(|&p| p as f64).collect();
    let good = first_emitted(&|d, q, p, s| rejection_step(d, q, p, s));
    let p_good = chi_square_p(&good, &expected);
    assert!(p_good > 0.01, "correct rule rejected: p = {p_good}, counts {good:?}");

    // Wrong: on rejection, resample from the target's p instead of the residual max(p − q, 0).
    let wrong_rule = |drafts: &[u32], q: &[Vec<f32>], p: &[Vec<f32>], s: &mut Sampler| -> (usize, u32) {
        for (i, &x) in drafts.iter().enumerate() {
            if s.uniform() * (q[i][x as usize] as f64) < p[i][x as usize] as f64 {
                continue;
            }
            return (i, s.sample(&p[i]));
        }
        (drafts.len(), s.sample(&p[drafts.len()]))
    };
    let bad = first_emitted(&wrong_rule);
    let p_bad = chi_square_p(&bad, &expected);
    eprintln!("correct rule p = {p_good}, wrong rule p = {p_bad}");
    assert!(p_bad < 0.01, "the wrong rule went undetected: p = {p_bad}, counts {bad:?}");
}

#[test]
fn bad_settings_are_rejected() {
    let dev = Device::Cpu;
    let mut target = ToyModel::hashed(10, 1, &dev);
    let mut draft = ToyModel::hashed(10, 2, &dev);
    let mut sampler = Sampler::new(SamplingConfig::greedy());
    let cfg = config(0, GammaSchedule::Constant, None, SpecAcceptance::Greedy);
    let err = generate(&mut target, &mut draft, &[1], &stop(4), &cfg, &mut sampler, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--gamma"), "{err}");
}

/// With prefix reuse on, a conversation's second turn keeps the caches of its first (target and
/// draft) and runs only the new tokens, with the same answer as from empty caches.
#[test]
fn a_second_turn_reuses_the_first_turns_caches_and_answers_the_same() {
    use decodebench_strategies::DecoderModel;
    let dev = Device::Cpu;
    let vocab = 50;
    let prompt1 = vec![5u32, 9, 13, 21];
    let cfg = config(3, GammaSchedule::Constant, None, SpecAcceptance::Greedy);
    let mut target = ToyModel::hashed(vocab, 3, &dev);
    let mut draft = noisy_draft(vocab, 3, 17, 0.3);
    target.set_prefix_reuse(true).unwrap();
    draft.set_prefix_reuse(true).unwrap();
    let mut sampler = Sampler::new(SamplingConfig::greedy());
    let first = generate(&mut target, &mut draft, &prompt1, &stop(20), &cfg, &mut sampler, &mut |_| {}).unwrap();
    assert!(first.tokens.len() > 4, "a first answer long enough to matter: {:?}", first.tokens);

    let mut prompt2 = prompt1.clone();
    prompt2.extend(&first.tokens);
    prompt2.extend([7, 8, 9]);
    // The target cache holds the prompt and every answer token but (at most) the last ones
    // emitted; the draft's the same less the drafts it did not get to read.
    let (t_kept, d_kept) = (target.reusable_prefix(&prompt2), draft.reusable_prefix(&prompt2));
    assert!(t_kept >= prompt1.len() + first.tokens.len() - 2, "target keeps {t_kept} of {}", prompt2.len());
    assert!(d_kept >= prompt1.len(), "draft keeps {d_kept} of {}", prompt2.len());
    let reused = generate(&mut target, &mut draft, &prompt2, &stop(20), &cfg, &mut sampler, &mut |_| {}).unwrap();

    let mut fresh_target = ToyModel::hashed(vocab, 3, &dev);
    let mut fresh_draft = noisy_draft(vocab, 3, 17, 0.3);
    let fresh = generate(&mut fresh_target, &mut fresh_draft, &prompt2, &stop(20), &cfg, &mut sampler, &mut |_| {}).unwrap();
    assert_eq!(reused.tokens, fresh.tokens);
    let greedy = autoregressive::greedy(&mut fresh_target, &prompt2, &stop(20), &mut |_| {}).unwrap();
    assert_eq!(reused.tokens, greedy.tokens);

    // Off (the default), nothing is kept.
    target.set_prefix_reuse(false).unwrap();
    assert_eq!(target.reusable_prefix(&prompt2), 0);
}

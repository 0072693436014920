//! Beam search against exhaustive search, against an independent slow reference of the same
//! (Hugging Face) rules, against greedy, and against the cache it leaves in the model.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor};
use decodebench_strategies::autoregressive;
use decodebench_strategies::beam::{self, BeamConfig, BeamStep, EarlyStopping};
use decodebench_strategies::toy::{LogitsFn, ToyModel};
use decodebench_strategies::{DecoderModel, ForwardInput, ForwardOutput, ModelInfo, StopConfig, StopReason};

const MODES: [EarlyStopping; 3] = [EarlyStopping::True, EarlyStopping::Heuristic, EarlyStopping::Never];
const PENALTIES: [f64; 5] = [0.0, 1.0, 2.0, -0.5, 0.5];

/// Pseudo-random logits in [0, 6) depending on the whole sequence (prompt included).
fn hashed(vocab: usize, seed: u64) -> LogitsFn {
    Arc::new(move |seq: &[u32]| {
        let mut h = seed.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ 0x1234_5678;
        for &t in seq {
            h = (h ^ (t as u64 + 1)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(23);
        }
        (0..vocab as u64)
            .map(|v| {
                let x = (h ^ v.wrapping_mul(0xA24B_AED4_963E_E407)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 6.0
            })
            .collect()
    })
}

fn config(num_beams: usize, length_penalty: f64, early_stopping: EarlyStopping) -> BeamConfig {
    BeamConfig { num_beams, length_penalty, early_stopping }
}

fn stop(max_new_tokens: usize, eos: &[u32]) -> StopConfig {
    StopConfig { max_new_tokens, eos_token_ids: eos.to_vec() }
}

/// `log_softmax` in f64, written out independently of the crate's.
fn log_probs(logits: &[f32]) -> Vec<f64> {
    let mut max = f64::NEG_INFINITY;
    for &x in logits {
        max = max.max(x as f64);
    }
    let mut sum = 0.0f64;
    for &x in logits {
        sum += (x as f64 - max).exp();
    }
    let lse = max + sum.ln();
    logits.iter().map(|&x| x as f64 - lse).collect()
}

fn with_prompt(prompt: &[u32], new: &[u32]) -> Vec<u32> {
    prompt.iter().chain(new).copied().collect()
}

/// The best complete sequence by brute force: every sequence that ends in EOS or reaches
/// `max_new` tokens, scored `sum log p / len ^ penalty`.
fn exhaustive(f: &LogitsFn, prompt: &[u32], eos: &[u32], max_new: usize, penalty: f64) -> (Vec<u32>, f64) {
    #[allow(clippy::too_many_arguments)]
    fn walk(
        f: &LogitsFn,
        prompt: &[u32],
        eos: &[u32],
        max_new: usize,
        penalty: f64,
        prefix: &mut Vec<u32>,
        sum: f64,
        best: &mut (Vec<u32>, f64),
    ) {
        let lp = log_probs(&f(&with_prompt(prompt, prefix)));
        for (t, &l) in lp.iter().enumerate() {
            let s = sum + l;
            prefix.push(t as u32);
            if eos.contains(&(t as u32)) || prefix.len() == max_new {
                let score = s / (prefix.len() as f64).powf(penalty);
                if score > best.1 {
                    *best = (prefix.clone(), score);
                }
            } else {
                walk(f, prompt, eos, max_new, penalty, prefix, s, best);
            }
            prefix.pop();
        }
    }
    let mut best = (Vec::new(), f64::NEG_INFINITY);
    walk(f, prompt, eos, max_new, penalty, &mut Vec::new(), 0.0, &mut best);
    best
}

/// A slow, independent implementation of HF's beam search for one prompt, written after the
/// vectorized `_beam_search` of transformers ≥ 4.50: logits recomputed from scratch for every
/// hypothesis (no cache, no batching), a full sort of all candidates, `num_beams` finished slots
/// that start empty at −1e9 and are merged with a stable sort, and the early-stop check written
/// per slot as HF does. Returns (tokens, score) of slot 0.
#[allow(clippy::too_many_arguments)]
fn reference(
    f: &LogitsFn,
    prompt: &[u32],
    vocab: usize,
    max_context: usize,
    stop: &StopConfig,
    num_beams: usize,
    penalty: f64,
    mode: EarlyStopping,
) -> (Vec<u32>, f64) {
    const BIG: f64 = -1.0e9;
    let mut n_eos: Vec<u32> = stop.eos_token_ids.clone();
    n_eos.sort();
    n_eos.dedup();
    let beams_to_keep = 2.max(1 + n_eos.len()) * num_beams;
    let max_new = stop.max_new_tokens.min(max_context + 1 - prompt.len());
    // (tokens, accumulated log-prob, descends from beam 0)
    let mut beams: Vec<(Vec<u32>, f64, bool)> = (0..num_beams).map(|b| (Vec::new(), if b == 0 { 0.0 } else { BIG }, b == 0)).collect();
    // (score, is finished, tokens)
    let mut slots: Vec<(f64, bool, Vec<u32>)> = vec![(BIG, false, Vec::new()); num_beams];
    let mut unsatisfied = true;
    let mut len = 0;
    loop {
        len += 1;
        let mut cands: Vec<(f64, usize, u32)> = Vec::new();
        for (b, (toks, acc, _)) in beams.iter().enumerate() {
            let lp = log_probs(&f(&with_prompt(prompt, toks)));
            assert_eq!(lp.len(), vocab);
            for (t, &l) in lp.iter().enumerate() {
                cands.push((acc + l, b, t as u32));
            }
        }
        cands.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        cands.truncate(beams_to_keep);
        let hits: Vec<bool> = cands.iter().map(|c| stop.eos_token_ids.contains(&c.2) || len == max_new).collect();

        // Finished slots: merge with the top num_beams hitting candidates (masked otherwise).
        let mut merged = slots.clone();
        for (rank, (c, &hit)) in cands.iter().zip(&hits).enumerate() {
            let fin = hit && rank < num_beams && beams[c.1].2;
            let mut score = c.0 / (len as f64).powf(penalty);
            if !fin {
                score += BIG;
            }
            let mut toks = beams[c.1].0.clone();
            toks.push(c.2);
            merged.push((score, fin, toks));
        }
        merged.sort_by(|x, y| y.0.total_cmp(&x.0));
        merged.truncate(num_beams);
        slots = merged;

        // Running beams: the best num_beams candidates, hitting ones pushed down by −1e9.
        let mut running: Vec<(f64, usize, u32)> =
            cands.iter().zip(&hits).map(|(c, &hit)| (if hit { c.0 + BIG } else { c.0 }, c.1, c.2)).collect();
        running.sort_by(|x, y| y.0.total_cmp(&x.0));
        running.truncate(num_beams);
        beams = running
            .iter()
            .map(|&(s, b, t)| {
                let mut toks = beams[b].0.clone();
                toks.push(t);
                (toks, s, beams[b].2)
            })
            .collect();

        // Early-stop check, slot by slot.
        let best_len = if mode == EarlyStopping::Never && penalty > 0.0 { max_new } else { len };
        let best_possible = beams[0].1 / (best_len as f64).powf(penalty);
        let min_slot = slots.iter().map(|s| s.0).fold(f64::INFINITY, f64::min);
        let any_better = slots.iter().any(|s| best_possible > if s.1 { min_slot } else { BIG });
        unsatisfied = unsatisfied && any_better;
        let exists_open = !(slots.iter().all(|s| s.1) && mode == EarlyStopping::True);
        let valid = !hits.iter().all(|&h| h);
        if !(unsatisfied && exists_open && valid) {
            break;
        }
    }
    assert!(slots[0].1, "reference: no finished hypothesis");
    (slots[0].2.clone(), slots[0].0)
}

fn run(model: &mut dyn DecoderModel, prompt: &[u32], stop: &StopConfig, cfg: &BeamConfig) -> beam::BeamOutput {
    beam::search(model, prompt, stop, cfg, &mut |_| {}).unwrap()
}

/// Test 1: with enough beams that nothing is ever pruned (at least as many beams as live
/// candidates at any step), every early-stopping mode returns the exhaustive optimum. For `Never`
/// this is the theory: its stopping bound is exact, so only pruning could lose the optimum. For
/// `True` and `Heuristic` it holds here because fewer than `num_beams` hypotheses can finish
/// before the last step, so they cannot stop early.
#[test]
fn wide_beams_find_the_exhaustive_optimum() {
    let dev = Device::Cpu;
    let prompt = [2u32, 1];
    // (vocab, eos ids, max_new_tokens): beams = non-eos^(T-1) * vocab, the live candidates of
    // the last step, and more than that.
    let cases: [(usize, &[u32], usize); 3] = [(4, &[0], 4), (4, &[3], 5), (5, &[0, 4], 4)];
    let mut lengths = std::collections::BTreeSet::new();
    for (vocab, eos, max_new) in cases {
        let non_eos = vocab - eos.len();
        let needed = non_eos.pow(max_new as u32 - 1) * vocab;
        for seed in 0..3u64 {
            let f = hashed(vocab, seed);
            for penalty in PENALTIES {
                let (want, want_score) = exhaustive(&f, &prompt, eos, max_new, penalty);
                lengths.insert(want.len());
                for mode in MODES {
                    for num_beams in [needed, needed + 7] {
                        let mut model = ToyModel::new(vocab, 64, f.clone(), &dev);
                        let out = run(&mut model, &prompt, &stop(max_new, eos), &config(num_beams, penalty, mode));
                        let what = format!("vocab {vocab} eos {eos:?} T {max_new} seed {seed} penalty {penalty} {mode} beams {num_beams}");
                        assert!((out.score - want_score).abs() < 1e-12, "{what}: score {} vs optimum {want_score}", out.score);
                        assert_eq!(out.generation.tokens, want, "{what}");
                        let expect_stop =
                            if want.last().is_some_and(|t| eos.contains(t)) { StopReason::Eos } else { StopReason::MaxTokens };
                        assert_eq!(out.generation.stop, expect_stop, "{what}");
                        let len_pen = (want.len() as f64).powf(penalty);
                        assert!((out.log_prob - want_score * len_pen).abs() < 1e-9, "{what}: log_prob");
                        assert_eq!(out.hypotheses[0].tokens, want, "{what}");
                        assert!(out.hypotheses.windows(2).all(|w| w[0].score >= w[1].score), "{what}: hypotheses sorted");
                    }
                }
            }
        }
    }
    // The optima cover short (EOS) and full-length answers.
    assert!(lengths.len() >= 3, "optimum lengths {lengths:?}");
}

/// The stopping rules on a hand-built distribution where the best sequence is long but an EOS
/// comes first: p(EOS) = 0.6 at the start, then 1 → 2 → EOS with probability 0.98 each; with a
/// length penalty of 2, [1, 2, EOS] scores ln(0.39·0.98²)/9 ≈ −0.109 against ln(0.6) ≈ −0.511.
/// One beam with `True` or `Heuristic` stops at [EOS]; `Never` keeps going and finds the optimum.
#[test]
fn never_keeps_searching_where_the_heuristic_stops() {
    let dev = Device::Cpu;
    let prompt = [9u32];
    let ln = |p: &[f32]| p.iter().map(|x| x.ln()).collect::<Vec<f32>>();
    let f: LogitsFn = Arc::new(move |seq: &[u32]| match &seq[1..] {
        [] => ln(&[0.6, 0.39, 0.01, 1e-9]),
        [1] => ln(&[0.01, 0.01, 0.98, 1e-9]),
        [1, 2] => ln(&[0.98, 0.01, 0.01, 1e-9]),
        _ => ln(&[0.3, 0.3, 0.3, 0.1]),
    });
    let st = stop(4, &[0]);
    let (want, want_score) = exhaustive(&f, &prompt, &[0], 4, 2.0);
    assert_eq!(want, vec![1, 2, 0]);
    for (mode, expect) in [(EarlyStopping::True, vec![0]), (EarlyStopping::Heuristic, vec![0]), (EarlyStopping::Never, want.clone())] {
        let mut model = ToyModel::new(4, 64, f.clone(), &dev);
        let out = run(&mut model, &prompt, &st, &config(1, 2.0, mode));
        assert_eq!(out.generation.tokens, expect, "{mode}");
        assert_eq!(out.generation.stop, StopReason::Eos);
        assert_eq!(reference(&f, &prompt, 4, 64, &st, 1, 2.0, mode).0, expect, "{mode}: reference");
        if mode == EarlyStopping::Never {
            assert!((out.score - want_score).abs() < 1e-12);
            // Three selections: two forwards after the prefill.
            assert_eq!(out.generation.steps.len(), 2);
        } else {
            assert!(out.generation.steps.is_empty(), "{mode}: stopped after the first selection");
        }
    }
    // The heuristic with penalty 0 agrees that [EOS] is best: ln 0.6 > ln(0.39·0.98²).
    let mut model = ToyModel::new(4, 64, f.clone(), &dev);
    assert_eq!(run(&mut model, &prompt, &st, &config(1, 0.0, EarlyStopping::Never)).generation.tokens, vec![0]);
}

/// Test 2: narrow beams equal the slow reference exactly (tokens and score, bit for bit).
#[test]
fn narrow_beams_match_the_reference() {
    let dev = Device::Cpu;
    let prompt = [1u32, 2, 3];
    let mut eos_endings = 0;
    let mut max_endings = 0;
    let mut compared = 0;
    for (vocab, eos) in [(6usize, vec![0u32]), (7, vec![0, 5]), (5, vec![])] {
        for seed in 0..8u64 {
            let f = hashed(vocab, 100 + seed);
            for num_beams in [2usize, 3, 5] {
                for penalty in PENALTIES {
                    for mode in MODES {
                        let st = stop(7, &eos);
                        let mut model = ToyModel::new(vocab, 64, f.clone(), &dev);
                        let out = run(&mut model, &prompt, &st, &config(num_beams, penalty, mode));
                        let (want, want_score) = reference(&f, &prompt, vocab, 64, &st, num_beams, penalty, mode);
                        let what = format!("vocab {vocab} eos {eos:?} seed {seed} beams {num_beams} penalty {penalty} {mode}");
                        assert_eq!(out.generation.tokens, want, "{what}");
                        assert_eq!(out.score.to_bits(), want_score.to_bits(), "{what}: {} vs {want_score}", out.score);
                        match out.generation.stop {
                            StopReason::Eos => eos_endings += 1,
                            StopReason::MaxTokens => max_endings += 1,
                            StopReason::ContextFull => panic!("{what}: context cannot fill"),
                        }
                        compared += 1;
                    }
                }
            }
        }
    }
    assert!(eos_endings > 50 && max_endings > 50, "coverage: {eos_endings} EOS, {max_endings} max-length endings of {compared}");
}

/// The context caps the length like `max_new_tokens` does (reported as `ContextFull`), the same
/// way in beam search, the reference and greedy.
#[test]
fn context_limit_acts_as_max_length() {
    let dev = Device::Cpu;
    let prompt = [1u32, 2, 3];
    let (vocab, max_context) = (6usize, 8usize);
    // 8 + 1 - 3 = 6 new tokens fit.
    let mut contexts = 0;
    for seed in 0..6u64 {
        let f = hashed(vocab, 300 + seed);
        for num_beams in [1usize, 2, 3] {
            for mode in MODES {
                let st = stop(20, &[0]);
                let mut model = ToyModel::new(vocab, max_context, f.clone(), &dev);
                let out = run(&mut model, &prompt, &st, &config(num_beams, 1.0, mode));
                let (want, want_score) = reference(&f, &prompt, vocab, max_context, &st, num_beams, 1.0, mode);
                assert_eq!(out.generation.tokens, want, "seed {seed} beams {num_beams} {mode}");
                assert_eq!(out.score.to_bits(), want_score.to_bits());
                assert!(out.generation.tokens.len() <= 6);
                if out.generation.stop == StopReason::ContextFull {
                    assert_eq!(out.generation.tokens.len(), 6);
                    contexts += 1;
                }
            }
        }
        // Greedy on the context limit.
        let st = stop(20, &[]);
        let mut model = ToyModel::new(vocab, max_context, f.clone(), &dev);
        let g = autoregressive::greedy(&mut model, &prompt, &st, &mut |_| {}).unwrap();
        let mut model = ToyModel::new(vocab, max_context, f.clone(), &dev);
        let b = run(&mut model, &prompt, &st, &config(1, 1.0, EarlyStopping::Heuristic)).generation;
        assert_eq!((b.tokens, b.stop), (g.tokens, g.stop));
        assert_eq!(g.stop, StopReason::ContextFull);
    }
    assert!(contexts > 0);
}

/// Test 3: one beam is greedy decoding, token for token, step for step, with and without EOS.
/// (Except `Never` with a positive length penalty, which keeps searching after an EOS.)
#[test]
fn one_beam_equals_greedy() {
    let dev = Device::Cpu;
    let prompt = [3u32, 1, 4];
    let mut endings = std::collections::BTreeMap::new();
    for (vocab, eos) in [(4usize, vec![0u32]), (8, vec![0]), (8, vec![2, 5]), (8, vec![])] {
        for seed in 0..10u64 {
            let f = hashed(vocab, 500 + seed);
            let st = stop(12, &eos);
            let mut model = ToyModel::new(vocab, 256, f.clone(), &dev);
            let g = autoregressive::greedy(&mut model, &prompt, &st, &mut |_| {}).unwrap();
            let greedy_forwards = model.forwards;
            *endings.entry(format!("{:?}", g.stop)).or_insert(0) += 1;
            for penalty in PENALTIES {
                for mode in MODES {
                    if mode == EarlyStopping::Never && penalty > 0.0 {
                        continue;
                    }
                    let mut model = ToyModel::new(vocab, 256, f.clone(), &dev);
                    let mut streamed = Vec::new();
                    let b = beam::generate(&mut model, &prompt, &st, &config(1, penalty, mode), &mut |t| streamed.push(t)).unwrap();
                    let what = format!("vocab {vocab} eos {eos:?} seed {seed} penalty {penalty} {mode}");
                    assert_eq!(b.tokens, g.tokens, "{what}");
                    assert_eq!(b.stop, g.stop, "{what}");
                    assert_eq!(streamed, g.tokens, "{what}: on_token");
                    assert_eq!(b.steps.len(), g.steps.len(), "{what}: steps");
                    assert_eq!(model.forwards, greedy_forwards, "{what}: forwards");
                }
            }
        }
    }
    assert!(endings.get("Eos").copied().unwrap_or(0) >= 5 && endings.get("MaxTokens").copied().unwrap_or(0) >= 5, "{endings:?}");
}

/// A toy model that records the sequence of every cache row after each forward and each reorder.
struct Recording {
    inner: ToyModel,
    /// ("forward" | "reorder", rows)
    events: Vec<(&'static str, Vec<Vec<u32>>)>,
}

impl Recording {
    fn snapshot(&mut self, what: &'static str) {
        let rows = (0..self.inner.cache_batch()).map(|r| self.inner.sequence(r).to_vec()).collect();
        self.events.push((what, rows));
    }
}

impl DecoderModel for Recording {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn forward(&mut self, input: &ForwardInput) -> Result<ForwardOutput> {
        let out = self.inner.forward(input)?;
        self.snapshot("forward");
        Ok(out)
    }
    fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.inner.lm_head(hidden)
    }
    fn cache_len(&self) -> usize {
        self.inner.cache_len()
    }
    fn cache_batch(&self) -> usize {
        self.inner.cache_batch()
    }
    fn truncate_cache(&mut self, len: usize) -> Result<()> {
        self.inner.truncate_cache(len)
    }
    fn compact_cache(&mut self, start: usize, keep: &[usize]) -> Result<()> {
        self.inner.compact_cache(start, keep)
    }
    fn reorder_cache(&mut self, rows: &[usize]) -> Result<()> {
        self.inner.reorder_cache(rows)?;
        self.snapshot("reorder");
        Ok(())
    }
    fn clear_cache(&mut self) {
        self.inner.clear_cache()
    }
}

/// Test 4: after every step the cache rows hold exactly the running hypotheses: after the
/// reorder, prompt + beam without its newest token; after the next forward, prompt + beam.
/// One batched forward of `num_beams` rows per step, one step record per forward.
#[test]
fn cache_rows_follow_the_beams() {
    let dev = Device::Cpu;
    let prompt = [5u32, 0, 2];
    let mut checked_steps = 0;
    for seed in 0..6u64 {
        for (num_beams, mode, penalty) in
            [(3usize, EarlyStopping::Never, 1.0), (4, EarlyStopping::Heuristic, 0.0), (6, EarlyStopping::True, 2.0)]
        {
            let vocab = 5;
            let mut model = Recording { inner: ToyModel::new(vocab, 64, hashed(vocab, 700 + seed), &dev), events: Vec::new() };
            let mut seen: Vec<(usize, Vec<Vec<u32>>, bool)> = Vec::new();
            let out = beam::search(&mut model, &prompt, &stop(9, &[0]), &config(num_beams, penalty, mode), &mut |s: &BeamStep| {
                assert_eq!(s.running.len(), num_beams);
                assert!(s.live[0], "the best running beam is live");
                seen.push((s.step, s.running.to_vec(), s.done));
            })
            .unwrap();
            // events: prefill forward, then per continuing step a reorder and a forward.
            assert_eq!(model.events[0], ("forward", vec![prompt.to_vec()]));
            let continuing: Vec<_> = seen.iter().filter(|s| !s.2).collect();
            assert_eq!(model.events.len(), 1 + 2 * continuing.len());
            assert!(seen.last().unwrap().2 && continuing.len() + 1 == seen.len());
            for (i, (step, running, _)) in continuing.iter().enumerate() {
                let after_reorder: Vec<Vec<u32>> = running.iter().map(|r| with_prompt(&prompt, &r[..r.len() - 1])).collect();
                let after_forward: Vec<Vec<u32>> = running.iter().map(|r| with_prompt(&prompt, r)).collect();
                assert!(running.iter().all(|r| r.len() == *step));
                assert_eq!(model.events[1 + 2 * i], ("reorder", after_reorder), "seed {seed} step {step}");
                assert_eq!(model.events[2 + 2 * i], ("forward", after_forward), "seed {seed} step {step}");
                checked_steps += 1;
            }
            let g = &out.generation;
            assert_eq!(g.steps.len(), continuing.len());
            assert_eq!(model.inner.forwards, 1 + g.steps.len());
            assert!(g
                .steps
                .iter()
                .all(|s| s.forward_tokens == num_beams && s.tokens_accepted == 1 && s.verify_s >= 0.0 && s.update_s >= 0.0));
            assert!(g.prefill_s >= 0.0 && g.decode_s >= 0.0);
        }
    }
    assert!(checked_steps > 40, "{checked_steps}");
}

#[test]
fn degenerate_inputs() {
    let dev = Device::Cpu;
    let f = hashed(6, 1);
    // No new tokens.
    let mut model = ToyModel::new(6, 64, f.clone(), &dev);
    let out = run(&mut model, &[1, 2], &stop(0, &[0]), &config(3, 1.0, EarlyStopping::Heuristic));
    assert!(out.generation.tokens.is_empty() && out.generation.stop == StopReason::MaxTokens);
    // One new token: the best first token under every setting.
    let lp = log_probs(&f(&[1, 2]));
    let best = (0..6).max_by(|&a, &b| lp[a].total_cmp(&lp[b])).unwrap() as u32;
    for mode in MODES {
        let mut model = ToyModel::new(6, 64, f.clone(), &dev);
        let out = run(&mut model, &[1, 2], &stop(1, &[0]), &config(3, 2.0, mode));
        assert_eq!(out.generation.tokens, vec![best]);
        assert_eq!(model.forwards, 1);
    }
    // Errors name the flags.
    let mut model = ToyModel::new(6, 64, f.clone(), &dev);
    let err = beam::search(&mut model, &[1], &stop(4, &[0]), &config(0, 1.0, EarlyStopping::Never), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--num-beams"), "{err}");
    let err = beam::search(&mut model, &[1], &stop(4, &[0]), &config(2, f64::INFINITY, EarlyStopping::Never), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--length-penalty"), "{err}");
    // A vocabulary too small for the candidates HF keeps per beam.
    let mut tiny = ToyModel::new(2, 64, hashed(2, 0), &dev);
    assert!(beam::search(&mut tiny, &[1], &stop(4, &[0, 1]), &config(2, 1.0, EarlyStopping::Never), &mut |_| {}).is_err());
}

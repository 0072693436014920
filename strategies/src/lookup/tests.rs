//! Unit tests that need the private generation loop: the end-to-end chi-square test run with
//! wrong acceptance rules swapped in (they must fail it), and the draft proposal.

use std::sync::Arc;

use candle_core::Device;
use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::*;
use crate::sampler::SamplingConfig;
use crate::toy::ToyModel;

const TARGET: [[f32; 3]; 3] = [[0.2, 0.5, 0.3], [0.55, 0.15, 0.3], [0.25, 0.25, 0.5]];
const PROMPT: [u32; 10] = [0, 1, 2, 1, 0, 2, 2, 0, 1, 2];
const SAMPLES: usize = 20_000;

fn markov() -> ToyModel {
    let f = Arc::new(|seq: &[u32]| TARGET[*seq.last().unwrap() as usize].iter().map(|p| p.ln()).collect::<Vec<f32>>());
    ToyModel::new(3, 4096, f, &Device::Cpu)
}

fn chi_square_p(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    let stat: f64 = counts.iter().zip(probs).map(|(&c, &p)| (c as f64 - n as f64 * p).powi(2) / (n as f64 * p)).sum();
    1.0 - ChiSquared::new((counts.len() - 1) as f64).unwrap().cdf(stat)
}

/// p-value of the four-token sequences generated after `PROMPT` with `rule`, against the exact
/// Markov probabilities; also returns the drafted tokens accepted in all.
fn end_to_end(rule: SamplingRule, tree: bool) -> (f64, usize) {
    let config =
        LookupConfig { max_ngram: 2, min_ngram: 1, num_draft: 2, tree, acceptance: LookupAcceptance::Sampling, ..LookupConfig::default() };
    let stop = StopConfig { max_new_tokens: 4, eos_token_ids: vec![] };
    let mut counts = vec![0usize; 81];
    let mut accepted = 0;
    for seed in 0..SAMPLES as u64 {
        let mut model = markov();
        let mut state = LookupState::new(&config);
        let mut sampler = Sampler::new(SamplingConfig { temperature: 1.0, top_k: None, top_p: None, seed });
        let g = run(&mut model, &PROMPT, &stop, &config, &mut state, &mut sampler, &mut |_| {}, rule).unwrap();
        let t = &g.tokens;
        counts[(t[0] * 27 + t[1] * 9 + t[2] * 3 + t[3]) as usize] += 1;
        accepted += g.steps.iter().map(|s| s.accepted_depth).sum::<usize>();
    }
    let last = *PROMPT.last().unwrap() as usize;
    let probs: Vec<f64> = (0..81)
        .map(|c| {
            let t = [last, c / 27, c / 9 % 3, c / 3 % 3, c % 3];
            t.windows(2).map(|w| TARGET[w[0]][w[1]] as f64).product()
        })
        .collect();
    (chi_square_p(&counts, &probs), accepted)
}

/// Wrong: every draft is accepted.
fn always_accept(
    children: &dyn Fn(usize) -> Vec<usize>,
    _tokens: &[u32],
    dist: &mut dyn FnMut(usize) -> Result<Vec<f32>>,
    sampler: &mut Sampler,
) -> Result<(Vec<usize>, u32)> {
    let mut path = Vec::new();
    let mut row = 0;
    while let Some(&c) = children(row).first() {
        path.push(c);
        row = c;
    }
    let p = dist(row)?;
    Ok((path, sampler.sample(&p)))
}

/// Wrong: accept x with probability p(x), but on rejection draw from p itself (x not removed).
fn resample_keeping_the_draft(
    children: &dyn Fn(usize) -> Vec<usize>,
    tokens: &[u32],
    dist: &mut dyn FnMut(usize) -> Result<Vec<f32>>,
    sampler: &mut Sampler,
) -> Result<(Vec<usize>, u32)> {
    let mut path = Vec::new();
    let mut row = 0;
    'walk: loop {
        let p = dist(row)?;
        for c in children(row) {
            if sampler.uniform() < p[tokens[c] as usize] as f64 {
                path.push(c);
                row = c;
                continue 'walk;
            }
        }
        return Ok((path, sampler.sample(&p)));
    }
}

#[test]
fn wrong_sampling_rules_fail_the_end_to_end_chi_square() {
    for tree in [false, true] {
        let (p_good, accepted) = end_to_end(sampling_path, tree);
        assert!(p_good > 0.01, "tree {tree}: the correct rule was rejected, p = {p_good}");
        assert!(accepted > SAMPLES / 4, "tree {tree}: only {accepted} drafts accepted in {SAMPLES} runs");
        let (p_always, _) = end_to_end(always_accept, tree);
        let (p_keep, _) = end_to_end(resample_keeping_the_draft, tree);
        eprintln!("tree {tree}: correct p = {p_good}, always-accept p = {p_always}, resample-with-x p = {p_keep}");
        assert!(p_always < 0.01, "tree {tree}: always accepting went undetected, p = {p_always}");
        assert!(p_keep < 0.01, "tree {tree}: resampling without removing the draft went undetected, p = {p_keep}");
    }
}

#[test]
fn chains_copy_the_best_occurrence_and_name_its_source() {
    let config = LookupConfig { max_ngram: 2, min_ngram: 1, num_draft: 3, use_cache: false, ..LookupConfig::default() };
    let cache = NgramCache::new(2);
    // Prompt [5, 6, 7, 8], output [9, 5, 6]: suffix [5, 6] occurs in the prompt, followed by 7, 8, 9.
    let text = [5, 6, 7, 8, 9, 5, 6];
    let (tree, cands) = propose(&text, 4, &config, &cache, 3, 3);
    assert_eq!(tree.tokens(), [7, 8, 9]);
    assert_eq!(cands, vec![Candidate { tokens: vec![7, 8, 9], match_len: 2, source: DraftSource::Prompt }]);
    // The same text with a 1-token prompt: the occurrence is generated text.
    assert_eq!(propose(&text, 1, &config, &cache, 3, 3).1[0].source, DraftSource::Output);
    // Budget and context: depth 2, or a single node.
    assert_eq!(propose(&text, 4, &config, &cache, 2, 3).0.tokens(), [7, 8]);
    assert_eq!(propose(&text, 4, &config, &cache, 3, 1).0.tokens(), [7]);
    assert!(propose(&text, 4, &config, &cache, 0, 3).0.is_empty());
}

#[test]
fn trees_merge_text_and_cache_continuations() {
    let config = LookupConfig { max_ngram: 2, min_ngram: 1, num_draft: 3, tree: true, max_tree_nodes: 16, ..LookupConfig::default() };
    let mut cache = NgramCache::new(2);
    cache.ingest(&[4, 2, 7, 7], 0);
    // Text: the suffix [2] occurred twice, followed by 9 and by 3 (no 2-gram [9, 2] earlier).
    let text = [1, 2, 3, 4, 2, 9, 2];
    let (tree, cands) = propose(&text, 7, &config, &cache, 3, 16);
    let sources: Vec<DraftSource> = cands.iter().map(|c| c.source).collect();
    assert_eq!(cands[0].tokens, vec![9, 2], "most recent occurrence first (its continuation ends with the text)");
    assert_eq!(cands[1].tokens, vec![3, 4, 2]);
    assert_eq!(sources, [DraftSource::Prompt, DraftSource::Prompt, DraftSource::Cache]);
    assert_eq!(cands[2].tokens, vec![7, 7, 7], "the cache knows [2] → 7 from another text");
    assert_eq!(tree.tokens(), [9, 2, 3, 4, 2, 7, 7, 7]);
    assert_eq!(tree.parents(), [None, Some(0), None, Some(2), Some(3), None, Some(5), Some(6)]);
}

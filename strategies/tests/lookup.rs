//! Draft-free lookup decoding (prompt lookup, the n-gram cache, trees of matches, cost-aware
//! drafting) on toy models: the matching and tree building on hand-made sequences, greedy
//! acceptance token-identical to greedy decoding with a meaningful share of drafts accepted,
//! the sampling rule distribution-preserving (chi-square) while wrong rules are caught, and the
//! cost-aware mode's two ends.

use std::sync::Arc;

use candle_core::Device;
use decodebench_strategies::autoregressive;
use decodebench_strategies::lookup::{
    generate, occurrences, propose, sampling_path, DraftTree, LookupAcceptance, LookupConfig, LookupState, NgramCache, Occurrence,
};
use decodebench_strategies::sampler::{Sampler, SamplingConfig};
use decodebench_strategies::toy::{LogitsFn, ToyModel};
use decodebench_strategies::{BlockAttention, Generation, StopConfig, StopReason};
use statrs::distribution::{ChiSquared, ContinuousCDF};

fn stop(max_new_tokens: usize, eos: &[u32]) -> StopConfig {
    StopConfig { max_new_tokens, eos_token_ids: eos.to_vec() }
}

fn greedy_sampler() -> Sampler {
    Sampler::new(SamplingConfig::greedy())
}

fn chain(max_ngram: usize, min_ngram: usize, num_draft: usize) -> LookupConfig {
    LookupConfig { max_ngram, min_ngram, num_draft, tree: false, use_cache: false, ..LookupConfig::default() }
}

/// Runs lookup decoding with a fresh state, checking that `on_token` streams the output.
fn lookup(
    model: &mut ToyModel,
    prompt: &[u32],
    stop: &StopConfig,
    config: &LookupConfig,
    state: &mut LookupState,
    sampler: &mut Sampler,
) -> Generation {
    let mut streamed = Vec::new();
    let g = generate(model, prompt, stop, config, state, sampler, &mut |t| streamed.push(t)).unwrap();
    assert_eq!(streamed, g.tokens, "on_token sees every output token in order");
    g
}

/// The records against the output and the forwards the model counted.
fn check_records(g: &Generation, forwards: usize, config: &LookupConfig) {
    assert_eq!(g.steps.len() + 1, forwards, "one record per target forward after the prompt's");
    let emitted: usize = g.steps.iter().map(|s| s.tokens_accepted).sum();
    assert_eq!(emitted + 1, g.tokens.len(), "records account for exactly every token but the first");
    for s in &g.steps {
        assert_eq!(s.forward_tokens, s.tokens_proposed + 1);
        assert!(s.proposed_depth <= config.num_draft);
        assert!(s.accepted_depth <= s.proposed_depth);
        assert!(s.tokens_accepted <= s.accepted_depth + 1);
        if config.tree {
            assert!(s.tokens_proposed <= config.max_tree_nodes);
        } else {
            assert_eq!(s.tokens_proposed, s.proposed_depth, "a chain's length is its depth");
        }
        let drafted = s.tokens_proposed > 0;
        assert_eq!(s.match_len.is_some(), drafted, "{s:?}");
        assert_eq!(s.draft_source.is_some(), drafted, "{s:?}");
        if let Some(m) = s.match_len {
            assert!((config.min_ngram..=config.max_ngram).contains(&m), "{s:?}");
        }
    }
}

/// A model whose logits are a hash of the last `order` tokens only: its greedy output falls into
/// a cycle, so its own text predicts it (lookup hits), after a transient where it does not.
fn local(vocab: usize, order: usize, seed: u64) -> ToyModel {
    let f: LogitsFn = Arc::new(move |seq: &[u32]| {
        let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
        for &t in &seq[seq.len().saturating_sub(order)..] {
            h = (h ^ t as u64).wrapping_mul(0x100_0000_01B3).rotate_left(17);
        }
        (0..vocab)
            .map(|v| {
                let x = (h ^ (v as u64).wrapping_mul(0x9E37_79B9)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 6.0
            })
            .collect()
    });
    ToyModel::new(vocab, 4096, f, &Device::Cpu)
}

/// The cycle 1 → 2 → 3 → 4 → 5 → 1 (token 0 never follows anything).
fn cycle5(max_context: usize) -> ToyModel {
    let f: LogitsFn = Arc::new(|seq: &[u32]| {
        let next = seq.last().unwrap() % 5 + 1;
        (0..6).map(|v| if v == next { 4.0 } else { 0.0 }).collect()
    });
    ToyModel::new(6, max_context, f, &Device::Cpu)
}

#[test]
fn longest_suffix_match_on_hand_made_sequences() {
    // No match: the last token never occurred before; a one-token text has nothing earlier.
    assert!(occurrences(&[1, 2, 3, 4], 1, 3).is_empty());
    assert!(occurrences(&[7], 1, 3).is_empty());

    // Suffix [1, 2, 3] occurred at 0..3 (followed by 9), [2, 3] also at 5..7 (followed by 7).
    let text = [1, 2, 3, 9, 5, 2, 3, 7, 1, 2, 3];
    assert_eq!(occurrences(&text, 1, 3), vec![Occurrence { ngram: 3, continuation: 3 }, Occurrence { ngram: 2, continuation: 7 }]);
    // Capped at 2 tokens both are 2-gram matches: the most recent wins.
    assert_eq!(occurrences(&text, 1, 2), vec![Occurrence { ngram: 2, continuation: 7 }, Occurrence { ngram: 2, continuation: 3 }]);
    assert_eq!(occurrences(&text, 1, 1)[0], Occurrence { ngram: 1, continuation: 7 });
    // min_ngram: the 3-gram alone is left at 3..3; nothing at 4.
    assert_eq!(occurrences(&text, 3, 3), vec![Occurrence { ngram: 3, continuation: 3 }]);
    assert!(occurrences(&text, 4, 4).is_empty());

    // Equal lengths: the most recent occurrence wins, and its continuation is the chain.
    let cache = NgramCache::new(3);
    let text = [1, 2, 8, 1, 2, 9, 1, 2];
    assert_eq!(occurrences(&text, 1, 3)[0], Occurrence { ngram: 2, continuation: 5 });
    let (tree, _) = propose(&text, text.len(), &chain(3, 1, 2), &cache, 2, 2);
    assert_eq!(tree.tokens(), [9, 1]);

    // A continuation that runs into the end of the text gives a shorter draft.
    let text = [5, 6, 7, 5, 6];
    let (tree, cands) = propose(&text, text.len(), &chain(3, 1, 8), &cache, 8, 8);
    assert_eq!(tree.tokens(), [7, 5, 6]);
    assert_eq!(cands[0].match_len, 2);

    // Runs of one token: the occurrence may overlap the suffix.
    assert_eq!(occurrences(&[4, 4, 4, 4], 1, 3)[0], Occurrence { ngram: 3, continuation: 3 });
}

#[test]
fn tree_of_continuations_merges_prefixes_parents_first_and_caps() {
    let drafts = vec![vec![1, 2, 3], vec![1, 2, 4], vec![1, 5], vec![6], vec![1, 2, 3]];
    let tree = DraftTree::build(&drafts, 16);
    assert_eq!(tree.tokens(), [1, 2, 3, 4, 5, 6], "shared prefixes are stored once, duplicates add nothing");
    assert_eq!(tree.parents(), [None, Some(0), Some(1), Some(1), Some(0), None]);
    assert_eq!(tree.depths(), [1, 2, 3, 3, 2, 1]);
    assert_eq!(tree.origins(), [0, 0, 0, 1, 2, 3]);
    assert_eq!(tree.ranks(), [0, 0, 0, 1, 1, 1]);
    assert_eq!(tree.depth(), 3);
    let block_parents = tree.block_parents();
    assert_eq!(block_parents, [None, Some(0), Some(1), Some(2), Some(2), Some(1), Some(0)]);
    assert!(block_parents.iter().enumerate().all(|(i, p)| p.is_none_or(|p| p < i)), "parents before children");
    BlockAttention::Tree { parents: block_parents }.validate(7).unwrap();
    assert_eq!(tree.block_children()[0], vec![1, 6]);
    assert_eq!(tree.block_children()[2], vec![3, 4]);
    // The cap keeps the first nodes in priority order, cutting a continuation where it is hit.
    assert_eq!(DraftTree::build(&drafts, 4).tokens(), [1, 2, 3, 4]);
    assert_eq!(DraftTree::build(&drafts, 2).tokens(), [1, 2]);
    assert_eq!(DraftTree::build(&drafts, 2).parents(), [None, Some(0)]);
}

/// Greedy lookup is greedy decoding, token for token, on models where lookup rarely hits
/// (`hashed`: the whole sequence decides) and where it hits a lot (`local`: cycles), for chains
/// and trees, with and without the cache (carried across the prompts), num_draft 1..8.
#[test]
fn greedy_lookup_is_token_identical_to_greedy_decoding() {
    // (name, model, EOS, least share of the output that must come from accepted drafts): the
    // short cycles of small local models are copied most of the time; the hashed model and the
    // order-3 model (long transients) only now and then.
    type Make = Box<dyn Fn() -> ToyModel>;
    let models: Vec<(&str, Make, Vec<u32>, f64)> = vec![
        ("hashed vocab 8", Box::new(|| ToyModel::hashed(8, 5, &Device::Cpu)), vec![0], 0.04),
        ("local order 1 vocab 40", Box::new(|| local(40, 1, 11)), vec![], 0.4),
        ("local order 2 vocab 12", Box::new(|| local(12, 2, 3)), vec![], 0.4),
        ("local order 3 vocab 24", Box::new(|| local(24, 3, 8)), vec![], 0.04),
    ];
    let mut sources = std::collections::HashMap::<String, usize>::new();
    let mut branching_steps = 0;
    for (name, make, eos, least) in &models {
        // Fixed prompts, and prompts holding the model's own greedy text (prompt lookup hits).
        let mut prompts: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![5], vec![7, 7, 7, 7], vec![2, 4, 6, 8, 2, 4, 6]];
        for seed in [9u32, 3] {
            let g = autoregressive::greedy(&mut make(), &[seed], &stop(20, &[]), &mut |_| {}).unwrap();
            prompts.push([vec![seed], g.tokens[..g.tokens.len() - 3].to_vec(), vec![1]].concat());
        }
        let stop = stop(40, eos);
        let references: Vec<Generation> =
            prompts.iter().map(|p| autoregressive::greedy(&mut make(), p, &stop, &mut |_| {}).unwrap()).collect();
        let (mut drafted_accepted, mut emitted) = (0usize, 0usize);
        for num_draft in 1..=8 {
            for tree in [false, true] {
                for (min_ngram, max_ngram) in [(1, 3), (2, 4)] {
                    for use_cache in [false, true] {
                        let config = LookupConfig {
                            max_ngram,
                            min_ngram,
                            num_draft,
                            tree,
                            max_tree_nodes: 12,
                            use_cache,
                            ..LookupConfig::default()
                        };
                        let mut state = LookupState::new(&config);
                        for (prompt, reference) in prompts.iter().zip(&references) {
                            let mut model = make();
                            let g = lookup(&mut model, prompt, &stop, &config, &mut state, &mut greedy_sampler());
                            let what = format!("{name}, prompt {prompt:?}, {config:?}");
                            assert_eq!(g.tokens, reference.tokens, "{what}");
                            assert_eq!(g.stop, reference.stop, "{what}");
                            check_records(&g, model.forwards, &config);
                            drafted_accepted += g.steps.iter().map(|s| s.accepted_depth).sum::<usize>();
                            emitted += g.tokens.len();
                            for s in &g.steps {
                                if let Some(src) = &s.draft_source {
                                    *sources.entry(src.clone()).or_default() += 1;
                                }
                                branching_steps += (s.tokens_proposed > s.proposed_depth) as usize;
                            }
                        }
                    }
                }
            }
        }
        let share = drafted_accepted as f64 / emitted as f64;
        eprintln!("{name}: {drafted_accepted} of {emitted} tokens were accepted drafts ({share:.2})");
        assert!(share >= *least, "{name}: only {share:.3} of the output came from accepted drafts");
    }
    eprintln!("draft sources {sources:?}, {branching_steps} branching tree steps");
    for src in ["prompt", "output", "cache"] {
        assert!(sources.get(src).copied().unwrap_or(0) > 0, "no draft from the {src}: {sources:?}");
    }
    assert!(branching_steps > 0, "no tree ever branched");
}

#[test]
fn ngram_cache_carries_over_between_calls() {
    // next = (last + 3) mod 10: one cycle through all ten tokens.
    let f: LogitsFn = Arc::new(|seq: &[u32]| {
        let next = (seq.last().unwrap() + 3) % 10;
        (0..10).map(|v| if v == next { 3.0 } else { (v as f32) * 0.1 }).collect()
    });
    let make = || ToyModel::new(10, 4096, f.clone(), &Device::Cpu);
    let config = LookupConfig { max_ngram: 2, min_ngram: 1, num_draft: 4, use_cache: true, ..LookupConfig::default() };
    let stop = stop(12, &[]);
    let mut state = LookupState::new(&config);
    let first = lookup(&mut make(), &[0], &stop, &config, &mut state, &mut greedy_sampler());
    assert!(!state.cache.is_empty());
    // Prompt [5]: the first token is 8, and [5, 8] holds no earlier 8, so the text alone has no
    // match; the cache saw 8 → 1 → 4 → 7 → 0 in the first call.
    let reference = autoregressive::greedy(&mut make(), &[5], &stop, &mut |_| {}).unwrap();
    let carried = lookup(&mut make(), &[5], &stop, &config, &mut state, &mut greedy_sampler());
    assert_eq!(carried.tokens, reference.tokens);
    assert_eq!(carried.steps[0].draft_source.as_deref(), Some("cache"), "{:?}", carried.steps[0]);
    assert_eq!(carried.steps[0].accepted_depth, 4, "the cache's draft is the model's own continuation");
    assert_eq!(carried.steps[0].match_len, Some(2), "[5, 8] was seen in the first call");
    // Without the first call's state, the same call cannot draft at its first step.
    let fresh = lookup(&mut make(), &[5], &stop, &config, &mut LookupState::new(&config), &mut greedy_sampler());
    assert_eq!(fresh.tokens, reference.tokens);
    assert_eq!(fresh.steps[0].tokens_proposed, 0);
    assert!(fresh.steps.len() > carried.steps.len(), "the carried cache saves forwards");
    // use_cache off: the carried cache is neither read nor fed.
    let before = state.cache.clone();
    let off = LookupConfig { use_cache: false, ..config.clone() };
    let g = lookup(&mut make(), &[5], &stop, &off, &mut state, &mut greedy_sampler());
    assert_eq!(g.steps[0].tokens_proposed, 0);
    assert_eq!(state.cache, before);
    assert!(first.steps.iter().any(|s| s.draft_source.as_deref() == Some("output")));
}

#[test]
fn eos_budget_and_context_end_generation_like_greedy() {
    let prompt = [1, 2, 3, 4, 5, 1, 2];
    for tree in [false, true] {
        let config = LookupConfig { tree, num_draft: 8, use_cache: false, ..LookupConfig::default() };
        // EOS inside an accepted draft: the draft [4, 5, 1, 2, ..] is right, the output stops at 5.
        let stop_eos = stop(32, &[5]);
        let reference = autoregressive::greedy(&mut cycle5(4096), &prompt, &stop_eos, &mut |_| {}).unwrap();
        let mut model = cycle5(4096);
        let g = lookup(&mut model, &prompt, &stop_eos, &config, &mut LookupState::new(&config), &mut greedy_sampler());
        assert_eq!((g.tokens.clone(), g.stop), (reference.tokens.clone(), StopReason::Eos));
        assert_eq!(g.tokens, [3, 4, 5]);
        assert!(g.steps[0].accepted_depth >= 2);
        assert_eq!(g.steps[0].tokens_accepted, 2, "EOS cut the step");
        check_records(&g, model.forwards, &config);
        // Every budget: never more tokens than asked, drafts never beyond the budget.
        for max_new in 1..=12 {
            let s = stop(max_new, &[]);
            let reference = autoregressive::greedy(&mut cycle5(4096), &prompt, &s, &mut |_| {}).unwrap();
            let mut model = cycle5(4096);
            let g = lookup(&mut model, &prompt, &s, &config, &mut LookupState::new(&config), &mut greedy_sampler());
            assert_eq!(g.tokens, reference.tokens, "max_new {max_new}");
            assert_eq!(g.stop, StopReason::MaxTokens);
            check_records(&g, model.forwards, &config);
            assert!(g.steps.iter().all(|s| s.tokens_accepted == s.accepted_depth + 1), "nothing drafted past the budget");
        }
        // Context of 20: greedy stops with ContextFull after 13 new tokens; so does lookup.
        let s = stop(100, &[]);
        let reference = autoregressive::greedy(&mut cycle5(20), &prompt, &s, &mut |_| {}).unwrap();
        assert_eq!(reference.stop, StopReason::ContextFull);
        let mut model = cycle5(20);
        let g = lookup(&mut model, &prompt, &s, &config, &mut LookupState::new(&config), &mut greedy_sampler());
        assert_eq!((g.tokens.clone(), g.stop), (reference.tokens, StopReason::ContextFull));
        check_records(&g, model.forwards, &config);
    }
}

/// Markov toy models over a 3-token vocabulary (the next-token distribution depends on the last
/// token only), so the probability of any generated sequence is a product of known conditionals.
const TARGET: [[f32; 3]; 3] = [[0.2, 0.5, 0.3], [0.55, 0.15, 0.3], [0.25, 0.25, 0.5]];
const PROMPT: [u32; 10] = [0, 1, 2, 1, 0, 2, 2, 0, 1, 2];
const SAMPLES: usize = 20_000;

fn markov() -> ToyModel {
    let f: LogitsFn = Arc::new(|seq: &[u32]| TARGET[*seq.last().unwrap() as usize].iter().map(|p| p.ln()).collect());
    ToyModel::new(3, 4096, f, &Device::Cpu)
}

/// p-value of Pearson's chi-square test of `counts` against `probs`.
fn chi_square_p(counts: &[usize], probs: &[f64]) -> f64 {
    let n: usize = counts.iter().sum();
    let stat: f64 = counts.iter().zip(probs).map(|(&c, &p)| (c as f64 - n as f64 * p).powi(2) / (n as f64 * p)).sum();
    1.0 - ChiSquared::new((counts.len() - 1) as f64).unwrap().cdf(stat)
}

/// Four new tokens after `PROMPT`, the first from the prompt forward and the rest from lookup
/// steps (two drafts at first, fewer as the budget shrinks): their distribution must be the
/// Markov chain's, for chains, small trees (3 nodes: some alternatives left out), and full trees
/// whose cache carries over every earlier sample (drafts that depend on history are still
/// deterministic given it).
#[test]
fn sampling_rule_preserves_the_target_distribution_end_to_end() {
    let last = *PROMPT.last().unwrap() as usize;
    let probs: Vec<f64> = (0..81)
        .map(|c| {
            let t = [last, c / 27, c / 9 % 3, c / 3 % 3, c % 3];
            t.windows(2).map(|w| TARGET[w[0]][w[1]] as f64).product()
        })
        .collect();
    for (tree, max_tree_nodes, carry) in [(false, 2, false), (true, 3, false), (true, 32, true)] {
        let config = LookupConfig {
            max_ngram: 2,
            min_ngram: 1,
            num_draft: 2,
            tree,
            max_tree_nodes,
            acceptance: LookupAcceptance::Sampling,
            ..LookupConfig::default()
        };
        let stop = stop(4, &[]);
        let mut carried = LookupState::new(&config);
        let (mut counts, mut accepted, mut rejected) = (vec![0usize; 81], 0, 0);
        for seed in 0..SAMPLES as u64 {
            let mut fresh = LookupState::new(&config);
            let state = if carry { &mut carried } else { &mut fresh };
            let mut sampler = Sampler::new(SamplingConfig { temperature: 1.0, top_k: None, top_p: None, seed });
            let g = generate(&mut markov(), &PROMPT, &stop, &config, state, &mut sampler, &mut |_| {}).unwrap();
            let t = &g.tokens;
            counts[(t[0] * 27 + t[1] * 9 + t[2] * 3 + t[3]) as usize] += 1;
            accepted += g.steps.iter().map(|s| s.accepted_depth).sum::<usize>();
            rejected += g.steps.iter().filter(|s| s.accepted_depth < s.proposed_depth).count();
        }
        let p = chi_square_p(&counts, &probs);
        eprintln!("tree {tree} ({max_tree_nodes} nodes), carried cache {carry}: chi-square p = {p}, {accepted} drafts accepted, {rejected} steps rejected one");
        assert!(accepted > SAMPLES / 4 && rejected > SAMPLES / 20, "the test must exercise both outcomes");
        assert!(p > 0.01, "lookup sampling changed the distribution (tree {tree}, carry {carry}): p = {p}, counts {counts:?}");
    }
}

/// The children of a block row, and the target's distribution after it (fetched by the rule).
type Children<'a> = &'a dyn Fn(usize) -> Vec<usize>;
type Dist<'a> = &'a mut dyn FnMut(usize) -> candle_core::Result<Vec<f32>>;
/// One step's acceptance over fixed drafts: the accepted path and the token after it.
type StepRule = dyn Fn(Children<'_>, &[u32], Dist<'_>, &mut Sampler) -> (Vec<usize>, u32);

/// The first token one step emits, with the drafts fixed: the accepted first draft or the
/// replacement. Its distribution must be the root's p, for a chain [1, 2] and for a root with two
/// children 1 and 2.
fn first_emitted(rule: &StepRule, tree: bool) -> Vec<usize> {
    let tokens = [0u32, 1, 2];
    let children = move |row: usize| -> Vec<usize> {
        match (tree, row) {
            (true, 0) => vec![1, 2],
            (true, _) => vec![],
            (false, r) if r < 2 => vec![r + 1],
            _ => vec![],
        }
    };
    let mut sampler = Sampler::new(SamplingConfig { temperature: 1.0, top_k: None, top_p: None, seed: 7 });
    let mut counts = vec![0usize; 3];
    for _ in 0..SAMPLES {
        let mut dist = |row: usize| Ok(TARGET[tokens[row] as usize].to_vec());
        let (path, next) = rule(&children, &tokens, &mut dist, &mut sampler);
        let first = path.first().map_or(next, |&row| tokens[row]);
        counts[first as usize] += 1;
    }
    counts
}

#[test]
fn chi_square_accepts_the_sampling_rule_and_rejects_wrong_ones() {
    let expected: Vec<f64> = TARGET[0].iter().map(|&p| p as f64).collect();
    // Wrong: accept x with probability p(x), then resample from p itself (x not removed).
    let keep_x = |children: &dyn Fn(usize) -> Vec<usize>,
                  tokens: &[u32],
                  dist: &mut dyn FnMut(usize) -> candle_core::Result<Vec<f32>>,
                  s: &mut Sampler| {
        let p = dist(0).unwrap();
        for c in children(0) {
            if s.uniform() < p[tokens[c] as usize] as f64 {
                return (vec![c], tokens[c]);
            }
        }
        (vec![], s.sample(&p))
    };
    // Wrong: always accept the first draft.
    let always = |children: &dyn Fn(usize) -> Vec<usize>,
                  _: &[u32],
                  _: &mut dyn FnMut(usize) -> candle_core::Result<Vec<f32>>,
                  _: &mut Sampler| { (children(0)[..1].to_vec(), 0) };
    for tree in [false, true] {
        let good = first_emitted(&|c, t, d, s| sampling_path(c, t, d, s).unwrap(), tree);
        let p_good = chi_square_p(&good, &expected);
        let bad = first_emitted(&keep_x, tree);
        let p_bad = chi_square_p(&bad, &expected);
        let p_always = chi_square_p(&first_emitted(&always, tree), &expected);
        eprintln!("tree {tree}: correct p = {p_good} {good:?}, resample-with-x p = {p_bad} {bad:?}, always-accept p = {p_always}");
        assert!(p_good > 0.01, "tree {tree}: correct rule rejected: p = {p_good}, counts {good:?}");
        assert!(p_bad < 0.01, "tree {tree}: resampling with x went undetected: p = {p_bad}");
        assert!(p_always < 0.01, "tree {tree}: always accepting went undetected: p = {p_always}");
    }
}

#[test]
fn sampling_acceptance_at_temperature_zero_is_greedy() {
    let config = LookupConfig { acceptance: LookupAcceptance::Sampling, tree: true, ..LookupConfig::default() };
    let s = stop(40, &[]);
    for prompt in [vec![1u32, 2, 3], vec![4, 4, 4]] {
        let reference = autoregressive::greedy(&mut local(12, 2, 3), &prompt, &s, &mut |_| {}).unwrap();
        let g = lookup(&mut local(12, 2, 3), &prompt, &s, &config, &mut LookupState::new(&config), &mut greedy_sampler());
        assert_eq!(g.tokens, reference.tokens);
        assert!(g.steps.iter().any(|s| s.accepted_depth > 0));
    }
}

/// c(N) = N · c(1): no draft can add tokens faster than it costs (an accepted fraction below
/// one per draft), so cost-aware lookup never drafts and is greedy step for step. A flat curve
/// makes every draft free, so it drafts.
#[test]
fn cost_aware_drafting_follows_the_cost_curve() {
    let prompts = [vec![1u32, 2, 3], vec![5, 6, 5, 6], vec![9]];
    let s = stop(48, &[]);
    for tree in [false, true] {
        let steep = LookupConfig { tree, cost_aware: true, cost_curve: Some(vec![(1, 10.0), (2, 20.0)]), ..LookupConfig::default() };
        let flat = LookupConfig { cost_curve: Some(vec![(1, 10.0), (64, 10.0)]), ..steep.clone() };
        let (mut steep_state, mut flat_state) = (LookupState::new(&steep), LookupState::new(&flat));
        let mut flat_accepted = 0;
        for prompt in &prompts {
            let reference = autoregressive::greedy(&mut local(12, 2, 3), prompt, &s, &mut |_| {}).unwrap();
            let mut model = local(12, 2, 3);
            let g = lookup(&mut model, prompt, &s, &steep, &mut steep_state, &mut greedy_sampler());
            assert_eq!(g.tokens, reference.tokens);
            assert_eq!(g.steps.len(), reference.steps.len(), "one token per forward, as greedy");
            assert!(g.steps.iter().all(|s| s.tokens_proposed == 0 && s.forward_tokens == 1 && s.tokens_accepted == 1));
            check_records(&g, model.forwards, &steep);

            let mut model = local(12, 2, 3);
            let g = lookup(&mut model, prompt, &s, &flat, &mut flat_state, &mut greedy_sampler());
            assert_eq!(g.tokens, reference.tokens);
            check_records(&g, model.forwards, &flat);
            flat_accepted += g.steps.iter().map(|s| s.accepted_depth).sum::<usize>();
            assert!(g.steps.len() < reference.steps.len(), "a flat curve drafts and saves forwards");
        }
        assert!(flat_accepted > 20, "tree {tree}: {flat_accepted}");
        assert!(steep_state.stats.observed().is_empty(), "nothing drafted, nothing learnt");
        assert!(!flat_state.stats.observed().is_empty(), "the statistics carry over in the state");
    }
}

#[test]
fn bad_settings_are_named() {
    let ok = LookupConfig::default();
    ok.validate().unwrap();
    let cases = [
        (LookupConfig { min_ngram: 0, ..ok.clone() }, "--min-ngram"),
        (LookupConfig { min_ngram: 4, max_ngram: 3, ..ok.clone() }, "--max-ngram"),
        (LookupConfig { max_ngram: 1000, ..ok.clone() }, "--max-ngram"),
        (LookupConfig { num_draft: 0, ..ok.clone() }, "--num-draft"),
        (LookupConfig { max_tree_nodes: 0, ..ok.clone() }, "--max-tree-nodes"),
        (LookupConfig { cost_aware: true, ..ok.clone() }, "--cost-curve"),
        (LookupConfig { cost_curve: Some(vec![(1, 1.0)]), ..ok.clone() }, "--cost-aware"),
        (LookupConfig { cost_aware: true, cost_curve: Some(vec![(2, 1.0)]), ..ok.clone() }, "N = 1"),
    ];
    for (config, name) in cases {
        let err = config.validate().unwrap_err();
        assert!(err.contains(name), "{config:?}: {err}");
        // generate refuses it too, before touching the model.
        let mut model = ToyModel::hashed(10, 1, &Device::Cpu);
        let err =
            generate(&mut model, &[1], &stop(4, &[]), &config, &mut LookupState::new(&ok), &mut greedy_sampler(), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
        assert_eq!(model.forwards, 0);
    }
    let mut sampler = Sampler::new(SamplingConfig { temperature: 0.7, top_k: None, top_p: None, seed: 1 });
    let err = generate(
        &mut ToyModel::hashed(10, 1, &Device::Cpu),
        &[1],
        &stop(4, &[]),
        &ok,
        &mut LookupState::new(&ok),
        &mut sampler,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("temperature 0"), "{err}");
    assert_eq!(LookupAcceptance::from_cli("sampling").unwrap(), LookupAcceptance::Sampling);
    assert!(LookupAcceptance::from_cli("typical").unwrap_err().contains("--accept"));
}

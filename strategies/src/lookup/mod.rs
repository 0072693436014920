//! Draft-free speculation: prompt lookup (Saxena 2023, Hugging Face's `prompt_lookup_num_tokens`)
//! and n-gram drafting (llama.cpp's lookup decoding). Instead of a draft model, the draft is
//! copied from text already seen: find the longest suffix of the current text (prompt + output
//! so far) that occurred earlier, and propose what followed it there. Code edits, summaries,
//! quoting and repetitive output copy long spans of the prompt, so drafts are often right and
//! cost nothing but a scan of the text.
//!
//! One step, with `root` the last emitted token (not yet in the KV cache):
//! 1. lookup: the text's earlier occurrences of its own suffix ([`occurrences`]: longest match
//!    first, then the most recent), else the caller's [`NgramCache`] (most frequent continuation
//!    of the longest known suffix, `draft_source = "cache"`); a chain takes the best one, a tree
//!    ([`LookupConfig::tree`]) merges every distinct continuation into a [`DraftTree`];
//! 2. cost-aware mode ([`LookupConfig::cost_aware`]) keeps only the part of the draft that is
//!    expected to add more tokens per millisecond than a plain step (possibly nothing);
//! 3. one target forward over `[root, drafts..]` (causal for a chain, `BlockAttention::Tree` at
//!    positions `cache_len + depth` for a tree), logits for every row;
//! 4. acceptance: greedy (the target's arg-max at each node, [`match_path`]: token-identical to
//!    greedy decoding) or the sampling rule for deterministic drafts ([`sampling_path`]);
//! 5. the cache keeps root + accepted path (`truncate_cache` for a chain, `compact_cache` for a
//!    tree), the output grows by path + bonus, and the n-gram cache and the acceptance
//!    statistics learn from the step.
//!
//! With nothing to draft the step is a plain one-token forward. Context and budget are handled
//! as in [`crate::speculative`]: drafts beyond the token budget could never be emitted, so at most
//! `max_new_tokens − emitted − 1` are proposed, and the draft shrinks to fit the context;
//! generation stops with [`StopReason::ContextFull`] exactly where greedy decoding does.

mod cost;
mod matching;
mod tree;

use std::time::Instant;

use candle_core::{IndexOp, Result};
use serde::Serialize;

pub use cost::{parse_cost_curve, AcceptanceStats, CostCurve, StatKey};
pub use matching::{occurrences, NgramCache, Occurrence};
pub use tree::DraftTree;

use crate::common::{prefill, push_tokens, StopConfig};
use crate::medusa::match_path;
use crate::sampler::Sampler;
use crate::{host, BlockAttention, DecoderModel, ForwardInput, Generation, LogitRows, StepRecord, StopReason};

/// How drafts are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupAcceptance {
    /// Keep drafts while they equal the target's arg-max: greedy decoding's tokens exactly.
    /// Needs temperature 0.
    Greedy,
    /// The rule for deterministic drafts (q is one-hot on the draft): accept draft x with
    /// probability p(x); on rejection draw from p with x removed and renormalised; after the
    /// last accepted node draw the bonus from p. Preserves the sampler's distribution exactly.
    Sampling,
}

impl LookupAcceptance {
    /// From `--accept greedy|sampling`.
    pub fn from_cli(name: &str) -> std::result::Result<Self, String> {
        match name {
            "greedy" => Ok(Self::Greedy),
            "sampling" => Ok(Self::Sampling),
            other => Err(format!("--accept must be greedy or sampling, got `{other}`")),
        }
    }
}

/// Longest n-gram matched: a bound on the scan and on the cache's size per token.
pub const MAX_NGRAM: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LookupConfig {
    /// Longest suffix looked for (longer matches are tried first).
    pub max_ngram: usize,
    /// Shortest suffix that counts as a match.
    pub min_ngram: usize,
    /// Most tokens drafted per step (a chain's length, a tree's depth).
    pub num_draft: usize,
    /// Verify every distinct continuation at once as a prefix tree.
    pub tree: bool,
    /// Node cap of a tree (root excluded).
    pub max_tree_nodes: usize,
    /// Draft only as much as the cost curve and the acceptance statistics say pays.
    pub cost_aware: bool,
    pub acceptance: LookupAcceptance,
    /// The target's forward cost: (block tokens N, ms) points; required by `cost_aware`.
    pub cost_curve: Option<Vec<(usize, f64)>>,
    /// Draft from (and feed) the caller's n-gram cache when the text has no match (chains), or
    /// next to the text's own continuations (trees).
    pub use_cache: bool,
}

impl Default for LookupConfig {
    /// Prompt lookup as commonly run: suffixes of 1 to 3 tokens, 8 drafted tokens, a chain, the
    /// n-gram cache on, greedy acceptance.
    fn default() -> Self {
        Self {
            max_ngram: 3,
            min_ngram: 1,
            num_draft: 8,
            tree: false,
            max_tree_nodes: 32,
            cost_aware: false,
            acceptance: LookupAcceptance::Greedy,
            cost_curve: None,
            use_cache: true,
        }
    }
}

impl LookupConfig {
    /// Checks the settings; errors name the option.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.min_ngram == 0 {
            return Err("--min-ngram must be at least 1".into());
        }
        if self.max_ngram < self.min_ngram {
            return Err(format!("--max-ngram ({}) must be at least --min-ngram ({})", self.max_ngram, self.min_ngram));
        }
        if self.max_ngram > MAX_NGRAM {
            return Err(format!("--max-ngram must be at most {MAX_NGRAM}, got {}", self.max_ngram));
        }
        if self.num_draft == 0 {
            return Err("--num-draft must be at least 1".into());
        }
        if self.max_tree_nodes == 0 {
            return Err("--max-tree-nodes must be at least 1".into());
        }
        match (&self.cost_curve, self.cost_aware) {
            (None, true) => Err("--cost-aware needs the target's forward-cost curve: --cost-curve N:MS,N:MS,... \
                                 (e.g. from the forward_cost benchmark)"
                .into()),
            (Some(_), false) => Err("--cost-curve applies to --cost-aware only".into()),
            (Some(points), true) => CostCurve::new(points.clone()).map(|_| ()),
            (None, false) => Ok(()),
        }
    }
}

/// What lookup decoding learns during a run, owned by the caller and passed to every
/// [`generate`] call of the run (prompts, chat turns), so later calls draft from what earlier
/// ones saw and cost-aware drafting keeps its statistics. Each call feeds the cache with its
/// whole prompt and every emitted token, so a runner whose prompts repeat earlier turns counts
/// that text again (which only strengthens those continuations).
#[derive(Debug, Clone)]
pub struct LookupState {
    pub cache: NgramCache,
    pub stats: AcceptanceStats,
}

impl LookupState {
    /// An empty cache for `config`'s n-gram lengths and the default Beta(1, 1) prior.
    pub fn new(config: &LookupConfig) -> Self {
        Self { cache: NgramCache::new(config.max_ngram), stats: AcceptanceStats::default() }
    }
}

/// Where a draft was copied from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftSource {
    /// The drafted tokens are prompt text (the continuation starts inside the prompt).
    Prompt,
    /// They are generated text.
    Output,
    /// The n-gram cache's most frequent continuation.
    Cache,
}

impl DraftSource {
    /// The name in [`StepRecord::draft_source`].
    pub fn as_str(self) -> &'static str {
        match self {
            DraftSource::Prompt => "prompt",
            DraftSource::Output => "output",
            DraftSource::Cache => "cache",
        }
    }
}

/// One continuation put into a step's draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub tokens: Vec<u32>,
    /// Length of the n-gram that matched.
    pub match_len: usize,
    pub source: DraftSource,
}

/// The draft for the text `text` (prompt + output, its last token the step's root) of which the
/// first `prompt_len` tokens are the prompt: a tree of at most `max_nodes` nodes and `max_depth`
/// levels, and the candidates its nodes came from ([`DraftTree::origins`] index them). A chain
/// (`config.tree` false) takes the best text occurrence, else the cache's draft.
pub fn propose(
    text: &[u32],
    prompt_len: usize,
    config: &LookupConfig,
    cache: &NgramCache,
    max_depth: usize,
    max_nodes: usize,
) -> (DraftTree, Vec<Candidate>) {
    let mut tree = DraftTree::default();
    let mut candidates = Vec::new();
    if max_depth == 0 || max_nodes == 0 {
        return (tree, candidates);
    }
    let (min_n, max_n) = (config.min_ngram, config.max_ngram);
    let from_text = occurrences(text, min_n, max_n).into_iter().map(|o| Candidate {
        tokens: text[o.continuation..(o.continuation + max_depth).min(text.len())].to_vec(),
        match_len: o.ngram,
        source: if o.continuation < prompt_len { DraftSource::Prompt } else { DraftSource::Output },
    });
    let mut add = |tree: &mut DraftTree, c: Candidate| {
        if tree.insert(&c.tokens, candidates.len(), max_nodes) > 0 {
            candidates.push(c);
        }
    };
    if !config.tree {
        let best = from_text.take(1).next().or_else(|| {
            if !config.use_cache {
                return None;
            }
            let (match_len, tokens) = cache.draft(text, min_n, max_n, max_depth)?;
            Some(Candidate { tokens, match_len, source: DraftSource::Cache })
        });
        if let Some(c) = best {
            add(&mut tree, c);
        }
        return (tree, candidates);
    }
    for c in from_text {
        if tree.len() >= max_nodes {
            break;
        }
        add(&mut tree, c);
    }
    if config.use_cache && tree.len() < max_nodes {
        if let Some((match_len, drafts)) = cache.branches(text, min_n, max_n, max_depth, max_nodes) {
            for tokens in drafts {
                add(&mut tree, Candidate { tokens, match_len, source: DraftSource::Cache });
            }
        }
    }
    (tree, candidates)
}

/// Sampling acceptance over a tree of deterministic drafts (a chain is a tree whose rows have
/// one child each). Walks from the root (block row 0): at a row whose distribution is p
/// (`dist(row)`, fetched once per row on the walk), each child x in order is accepted with
/// probability p'(x), where p' is p with the children already rejected removed and
/// renormalised; the first accepted child is descended into; when none is, the token is drawn
/// from p' (p with every child removed). The emitted token at each row is then distributed
/// exactly as p: P(x) = p(x), and for y ≠ x, (1 − p(x)) · p(y) / (1 − p(x)). Returns the
/// accepted path (block rows, root excluded) and the token drawn after it.
pub fn sampling_path(
    children: &dyn Fn(usize) -> Vec<usize>,
    tokens: &[u32],
    dist: &mut dyn FnMut(usize) -> Result<Vec<f32>>,
    sampler: &mut Sampler,
) -> Result<(Vec<usize>, u32)> {
    let mut path = Vec::new();
    let mut row = 0;
    'walk: loop {
        let p = dist(row)?;
        let mut residual = p.clone();
        for child in children(row).into_iter().filter(|&c| c < tokens.len()) {
            let x = tokens[child] as usize;
            let mass: f64 = residual.iter().map(|&r| r as f64).sum();
            let px = residual.get(x).copied().unwrap_or(0.0) as f64;
            if mass > 0.0 && sampler.uniform() * mass < px {
                path.push(child);
                row = child;
                continue 'walk;
            }
            if let Some(r) = residual.get_mut(x) {
                *r = 0.0;
            }
        }
        // Every child rejected: mass remains (a child holding all of it is always accepted).
        let next = if residual.iter().any(|&r| r > 0.0) { sampler.sample(&residual) } else { sampler.sample(&p) };
        return Ok((path, next));
    }
}

/// The signature of [`sampling_path`] (tests swap in wrong rules to see them caught).
type SamplingRule =
    fn(&dyn Fn(usize) -> Vec<usize>, &[u32], &mut dyn FnMut(usize) -> Result<Vec<f32>>, &mut Sampler) -> Result<(Vec<usize>, u32)>;

/// Lookup decoding of `prompt`. `state` carries the n-gram cache and the acceptance statistics
/// between calls (see [`LookupState`]); `on_token` sees every new token as soon as it is
/// accepted. One [`StepRecord`] per target forward after the prompt's: `tokens_proposed` =
/// drafted tokens (tree nodes), `tokens_accepted` = tokens that reached the output (path +
/// bonus, fewer when EOS or the budget cut the step), `accepted_depth` = accepted path length,
/// `proposed_depth` = draft length (tree depth), `forward_tokens` = drafts + 1, `draft_s` =
/// lookup (and cost planning), `verify_s` = the forward, `update_s` = acceptance, cache and
/// statistics; `match_len` and `draft_source` describe the draft (for a tree, the candidate the
/// accepted path followed, else the best-ranked one), None on plain steps.
pub fn generate(
    model: &mut dyn DecoderModel,
    prompt: &[u32],
    stop: &StopConfig,
    config: &LookupConfig,
    state: &mut LookupState,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    run(model, prompt, stop, config, state, sampler, on_token, sampling_path)
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &mut dyn DecoderModel,
    prompt: &[u32],
    stop: &StopConfig,
    config: &LookupConfig,
    state: &mut LookupState,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32),
    sampling_rule: SamplingRule,
) -> Result<Generation> {
    config.validate().map_err(candle_core::Error::Msg)?;
    if config.acceptance == LookupAcceptance::Greedy && !sampler.config().is_greedy() {
        candle_core::bail!("greedy acceptance needs temperature 0; use --accept sampling to sample");
    }
    let curve = match (&config.cost_curve, config.cost_aware) {
        (Some(points), true) => Some(CostCurve::new(points.clone()).map_err(candle_core::Error::Msg)?),
        _ => None,
    };
    // Distributions only depend on the settings; a copy lets acceptance borrow the sampler.
    let dist_of = Sampler::new(sampler.config().clone());

    let (out, prefill_s) = prefill(model, prompt)?;
    let t_decode = Instant::now();
    let first = match config.acceptance {
        LookupAcceptance::Greedy => host::argmax_tokens(&out.logits)?[0],
        LookupAcceptance::Sampling => sampler.choose(&host::logits_row(&out.logits)?),
    };
    let max_context = model.info().max_context;
    let mut tokens = Vec::with_capacity(stop.max_new_tokens);
    let mut steps = Vec::new();
    // Prompt + output: the model's cache holds all of it but the last token (the next root).
    let mut text: Vec<u32> = prompt.to_vec();
    let mut stop_reason = push_tokens(&mut tokens, &[first], stop, on_token);
    text.extend_from_slice(&tokens);
    if config.use_cache {
        state.cache.ingest(&text, 0);
    }
    let mut root = first;
    let mut block: Vec<u32> = Vec::new();
    let mut positions: Vec<usize> = Vec::new();

    while stop_reason.is_none() {
        let start = model.cache_len();
        if start + 1 > max_context {
            stop_reason = Some(StopReason::ContextFull);
            break;
        }
        let room = max_context - start - 1;
        let budget = stop.max_new_tokens - tokens.len();
        let max_depth = config.num_draft.min(budget.saturating_sub(1));
        let max_nodes = room.min(if config.tree { config.max_tree_nodes } else { config.num_draft });

        // 1–2. Lookup, then (cost-aware) the part of it worth verifying.
        let t_draft = Instant::now();
        let (mut draft, candidates) = propose(&text, prompt.len(), config, &state.cache, max_depth, max_nodes);
        let key = |draft: &DraftTree, v: usize| {
            let c = &candidates[draft.origins()[v]];
            StatKey { from_cache: c.source == DraftSource::Cache, match_len: c.match_len, depth: draft.depths()[v], rank: draft.ranks()[v] }
        };
        if let Some(curve) = &curve {
            if !draft.is_empty() {
                draft = cost::plan(&draft, &|v| state.stats.rate(&key(&draft, v)), curve);
            }
        }

        // 3. One forward over the root and the drafts.
        let t_verify = Instant::now();
        let n = draft.len() + 1;
        block.clear();
        block.push(root);
        block.extend_from_slice(draft.tokens());
        positions.clear();
        let attention = if config.tree {
            positions.push(start);
            positions.extend(draft.depths().iter().map(|d| start + d));
            BlockAttention::Tree { parents: draft.block_parents() }
        } else {
            positions.extend(start..start + n);
            BlockAttention::Causal
        };
        let rows = if n == 1 { LogitRows::Last } else { LogitRows::All };
        let out = model.forward(&ForwardInput { tokens: &block, batch: 1, positions: &positions, attention: &attention, rows })?;

        // 4. Acceptance.
        let t_update = Instant::now();
        let children = draft.block_children();
        let children_of = |row: usize| children[row].clone();
        let (path, bonus) = match config.acceptance {
            LookupAcceptance::Greedy => {
                let choices = host::argmax_tokens(&out.logits)?;
                match_path(&children_of, &block, &mut |row| Ok(choices[row]))?
            }
            LookupAcceptance::Sampling => {
                let logits = &out.logits;
                let mut dist = |row: usize| Ok(dist_of.distribution(&host::logits_row(&logits.i((0, row))?)?));
                sampling_rule(&children_of, &block, &mut dist, sampler)?
            }
        };

        // 5. Keep root + path, learn, emit path + bonus.
        if config.tree {
            let keep: Vec<usize> = std::iter::once(0).chain(path.iter().copied()).collect();
            model.compact_cache(start, &keep)?;
        } else {
            model.truncate_cache(start + 1 + path.len())?;
        }
        let mut on_path = vec![false; n];
        on_path[0] = true;
        path.iter().for_each(|&row| on_path[row] = true);
        for (v, parent) in draft.block_parents().into_iter().enumerate().skip(1) {
            // A node was put to the test when its parent was accepted.
            if parent.is_some_and(|p| on_path[p]) {
                state.stats.record(key(&draft, v - 1), on_path[v]);
            }
        }
        let lead = path.last().map_or(0, |&row| row - 1);
        let described = (!draft.is_empty()).then(|| &candidates[draft.origins()[lead]]);
        let mut new: Vec<u32> = path.iter().map(|&row| block[row]).collect();
        new.push(bonus);
        let before = tokens.len();
        stop_reason = push_tokens(&mut tokens, &new, stop, on_token);
        let text_len = text.len();
        text.extend_from_slice(&tokens[before..]);
        if config.use_cache {
            state.cache.ingest(&text, text_len);
        }
        root = bonus;
        steps.push(StepRecord {
            tokens_proposed: draft.len(),
            tokens_accepted: tokens.len() - before,
            accepted_depth: path.len(),
            forward_tokens: n,
            draft_s: (t_verify - t_draft).as_secs_f64(),
            verify_s: (t_update - t_verify).as_secs_f64(),
            update_s: t_update.elapsed().as_secs_f64(),
            proposed_depth: draft.depth(),
            match_len: described.map(|c| c.match_len),
            draft_source: described.map(|c| c.source.as_str().to_string()),
            ..StepRecord::default()
        });
    }
    Ok(Generation {
        tokens,
        stop: stop_reason.expect("the loop ends with a reason"),
        prefill_s,
        decode_s: t_decode.elapsed().as_secs_f64(),
        steps,
    })
}

#[cfg(test)]
mod tests;

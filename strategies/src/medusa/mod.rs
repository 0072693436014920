//! Medusa decoding: K heads on the target's last hidden state propose the next K tokens' top
//! candidates, a tree of candidate continuations is verified in ONE target forward with tree
//! attention, and the longest acceptable path plus one bonus token from the target is kept.
//!
//! One step, with `root` the last output token (not yet in the KV cache) and `h` the hidden
//! state of the token before it (whose logits chose `root`):
//! 1. heads(h) → per depth d the top-k tokens of head d − 1 (k = the tree's largest index + 1);
//! 2. block = `[root, node tokens..]`, one forward with `BlockAttention::Tree`, positions
//!    `cache_len + depth`, logits for every row;
//! 3. acceptance ([`AcceptanceRule`]) picks a root-to-node path, and the target's choice after
//!    the path's last node is the bonus token;
//! 4. `compact_cache(cache_len, [0, path..])` leaves exactly root + path in the cache; the output
//!    grows by path + bonus; the bonus is the next root and the path's last row (or the root)
//!    gives the next `h`.
//!
//! Context and budget: before each forward the tree is shrunk to its largest prefix (in
//! Medusa's depth-then-lexicographic order, so still a tree) that fits the context
//! (`cache_len + 1 + nodes ≤ max_context`) and whose paths cannot overshoot `max_new_tokens`
//! (depth ≤ tokens still wanted − 1). It may shrink down to a plain one-token step (no heads);
//! generation stops with [`StopReason::ContextFull`] only when not even the root fits, exactly
//! where greedy decoding stops.

mod acceptance;
mod heads;
mod tree;

use candle_core::{IndexOp, Result, Tensor};

pub use acceptance::{match_path, typical_path, typical_threshold, AcceptanceRule};
pub use heads::{heads_file, HeadLayout, MedusaHeads, HEADS_FILE, HEAD_VOCAB_FILE};
pub use tree::{TreeTopology, DEFAULT_MAX_TOP_K, MAX_TREE_NODES, SHIPPED_TREES};

use crate::clock;
use crate::common::{prefill, push_tokens, StopConfig};
use crate::sampler::Sampler;
use crate::{host, BlockAttention, DecoderModel, ForwardInput, Generation, LogitRows, StepRecord, StopReason};

/// What Medusa runs with (the heads are passed separately: they are weights, not settings).
#[derive(Debug, Clone)]
pub struct MedusaConfig {
    pub tree: TreeTopology,
    pub acceptance: AcceptanceRule,
}

/// How the target's choices are made in one run.
enum Mode {
    /// Arg-max everywhere (temperature 0, either rule).
    Argmax,
    /// Greedy rule at temperature > 0: match the target's sampled choice.
    SampleMatch,
    /// Typical acceptance at temperature > 0.
    Typical { epsilon: f64, alpha: f64 },
}

/// Medusa decoding of `prompt` with `heads` proposing candidates on `config.tree`. `on_token`
/// sees every new token as soon as it is accepted. One [`StepRecord`] per tree forward:
/// `tokens_proposed` = tree nodes used (root excluded), `forward_tokens` = nodes + 1,
/// `accepted_depth` = accepted path length, `tokens_accepted` = tokens added (path + bonus,
/// fewer when EOS or the budget cut the step), `draft_s` = heads + candidates, `verify_s` = the
/// tree forward, `update_s` = acceptance + cache compaction.
pub fn generate(
    model: &mut dyn DecoderModel,
    heads: &MedusaHeads,
    prompt: &[u32],
    stop: &StopConfig,
    config: &MedusaConfig,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    let tree = &config.tree;
    heads.check_model(model.info())?;
    if tree.depth() > heads.num_heads() {
        candle_core::bail!(
            "tree {} is {} deep but the Medusa heads ({}) are only {}",
            tree.name(),
            tree.depth(),
            heads.source(),
            heads.num_heads()
        );
    }
    config.acceptance.validate().map_err(candle_core::Error::Msg)?;
    if tree.top_k() > model.info().vocab_size {
        candle_core::bail!(
            "tree {} takes the top-{} candidates of each head, more than the vocabulary of {} ({})",
            tree.name(),
            tree.top_k(),
            model.info().name,
            model.info().vocab_size
        );
    }
    let mode = match config.acceptance {
        _ if sampler.config().is_greedy() => Mode::Argmax,
        AcceptanceRule::Greedy => Mode::SampleMatch,
        AcceptanceRule::Typical { epsilon, alpha } => Mode::Typical { epsilon, alpha },
    };

    let (out, prefill_s) = prefill(model, prompt)?;
    let t_decode = clock::now(model.device())?;
    let max_context = model.info().max_context;
    let first = match mode {
        Mode::Argmax => host::argmax_tokens(&out.logits)?[0],
        _ => sampler.choose(&host::logits_row(&out.logits)?),
    };
    // The hidden state whose logits chose the current root.
    let mut hidden: Tensor = out.hidden;
    let mut root = first;
    let mut tokens = Vec::with_capacity(stop.max_new_tokens);
    let mut steps = Vec::new();
    let mut stop_reason = push_tokens(&mut tokens, &[first], stop, on_token);

    let mut block: Vec<u32> = Vec::with_capacity(tree.len() + 1);
    let mut positions: Vec<usize> = Vec::with_capacity(tree.len() + 1);
    while stop_reason.is_none() {
        let start = model.cache_len();
        if start + 1 > max_context {
            stop_reason = Some(StopReason::ContextFull);
            break;
        }
        let remaining = stop.max_new_tokens - tokens.len();
        let nodes = tree.prefix_len(max_context - start - 1, remaining.saturating_sub(1));

        // 1. Candidates from the heads.
        let t_draft = clock::now(model.device())?;
        block.clear();
        block.push(root);
        let depth = tree.block_depths()[..=nodes].iter().copied().max().unwrap_or(0);
        if nodes > 0 {
            let candidates = heads.candidates(&hidden, &*model, depth, tree.top_k())?;
            block.extend((1..=nodes).map(|row| {
                let (d, i) = tree.choice(row);
                candidates[d - 1][i]
            }));
        }

        // 2. One tree forward.
        let t_verify = clock::now(model.device())?;
        let n = nodes + 1;
        let attention = BlockAttention::Tree { parents: tree.block_parents()[..n].to_vec() };
        positions.clear();
        positions.extend(tree.block_depths()[..n].iter().map(|d| start + d));
        let input = ForwardInput { tokens: &block, batch: 1, positions: &positions, attention: &attention, rows: LogitRows::All };
        let out = model.forward(&input)?;

        // 3. Acceptance and the bonus token.
        let t_update = clock::now(model.device())?;
        let children = |row: usize| tree.children(row).to_vec();
        let (path, bonus) = match mode {
            Mode::Argmax => {
                let choices = host::argmax_tokens(&out.logits)?;
                match_path(&children, &block, &mut |row| Ok(choices[row]))?
            }
            Mode::SampleMatch => {
                let logits = &out.logits;
                match_path(&children, &block, &mut |row| Ok(sampler.choose(&host::logits_row(&logits.i((0, row))?)?)))?
            }
            Mode::Typical { epsilon, alpha } => {
                let rows = host::logits_rows(&out.logits)?;
                let path = {
                    let sampler = &*sampler;
                    typical_path(&tree.block_parents()[..n], &block, epsilon, alpha, &mut |row| Ok(sampler.distribution(&rows[row])))?
                };
                let last = path.last().copied().unwrap_or(0);
                let p = sampler.distribution(&rows[last]);
                (path, sampler.sample(&p))
            }
        };

        // 4. Keep root + path in the cache, emit path + bonus.
        let mut keep = Vec::with_capacity(path.len() + 1);
        keep.push(0);
        keep.extend_from_slice(&path);
        model.compact_cache(start, &keep)?;
        let last = path.last().copied().unwrap_or(0);
        hidden = out.hidden.narrow(1, last, 1)?;
        let t_end = clock::now(model.device())?;
        let mut new: Vec<u32> = path.iter().map(|&row| block[row]).collect();
        new.push(bonus);
        let before = tokens.len();
        stop_reason = push_tokens(&mut tokens, &new, stop, on_token);
        root = bonus;
        steps.push(StepRecord {
            tokens_proposed: nodes,
            tokens_accepted: tokens.len() - before,
            accepted_depth: path.len(),
            forward_tokens: n,
            draft_s: (t_verify - t_draft).as_secs_f64(),
            verify_s: (t_update - t_verify).as_secs_f64(),
            update_s: (t_end - t_update).as_secs_f64(),
            proposed_depth: depth,
            accepted_ranks: path.iter().map(|&row| tree.choice(row).1).collect(),
            ..StepRecord::default()
        });
    }
    Ok(Generation {
        tokens,
        stop: stop_reason.expect("the loop ends with a reason"),
        prefill_s,
        decode_s: clock::since(model.device(), t_decode)?,
        steps,
    })
}

#[cfg(test)]
mod tests;

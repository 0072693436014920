use serde::{Deserialize, Serialize};

/// What one step of a strategy did: one target forward and what came of it.
///
/// The fields after `update_s` describe the candidates in enough detail for the acceptance
/// tables (by draft position, tree depth, head, and top-k rank); strategies that have nothing to
/// say there leave them at their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepRecord {
    /// Candidate tokens put to the target in this step (0 for plain decoding).
    pub tokens_proposed: usize,
    /// Tokens this step added to the output, the bonus token included.
    pub tokens_accepted: usize,
    /// Depth of the accepted path in the candidate tree or draft (0 when nothing was accepted).
    pub accepted_depth: usize,
    /// Tokens in the target forward: tree size, γ+1, number of beams, or 1.
    pub forward_tokens: usize,
    /// Seconds spent producing candidates (draft model, heads).
    pub draft_s: f64,
    /// Seconds in the target forward.
    pub verify_s: f64,
    /// Seconds choosing what to accept and updating caches.
    pub update_s: f64,
    /// Deepest candidate position put to the target: γ drafted (speculative), the tree's depth
    /// (Medusa, lookup trees), 0 for plain decoding. Draft position / depth d (1-based) was
    /// proposed when d ≤ proposed_depth and accepted when d ≤ accepted_depth.
    pub proposed_depth: usize,
    /// Medusa: for each depth of the accepted path, the rank (0 = best) of the accepted token in
    /// that depth's head's top-k. Empty for other strategies.
    pub accepted_ranks: Vec<usize>,
    /// Draft-free lookup: length of the n-gram that matched (None: no draft this step).
    pub match_len: Option<usize>,
    /// Draft-free lookup: where the draft came from (`prompt`, `output` or `cache`).
    pub draft_source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An end-of-sequence token was produced (it is part of the tokens).
    Eos,
    /// `max_new_tokens` reached.
    MaxTokens,
    /// The model's context is full.
    ContextFull,
}

/// Output of any strategy.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// New tokens only, the prompt excluded.
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// Seconds of the prompt forward.
    pub prefill_s: f64,
    /// Seconds from the end of prefill to the last token.
    pub decode_s: f64,
    pub steps: Vec<StepRecord>,
}

impl Generation {
    /// New tokens per target forward, bonus tokens included (1.0 for greedy).
    pub fn mean_accepted_tokens(&self) -> f64 {
        if self.steps.is_empty() {
            return 0.0;
        }
        let accepted: usize = self.steps.iter().map(|s| s.tokens_accepted).sum();
        accepted as f64 / self.steps.len() as f64
    }

    /// Decode throughput: new tokens after the first (which prefill produces) per decode second.
    pub fn tokens_per_s(&self) -> f64 {
        let decoded = self.tokens.len().saturating_sub(1);
        if self.decode_s > 0.0 {
            decoded as f64 / self.decode_s
        } else {
            0.0
        }
    }
}

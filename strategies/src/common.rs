//! Pieces every strategy shares: the stop rule and the prompt prefill.

use candle_core::Result;

use crate::clock;

use crate::{DecoderModel, ForwardInput, ForwardOutput, LogitRows};

/// When generation stops (shared by all strategies).
#[derive(Debug, Clone)]
pub struct StopConfig {
    pub max_new_tokens: usize,
    /// Generation stops after any of these (the token is kept in the output).
    pub eos_token_ids: Vec<u32>,
}

impl StopConfig {
    pub fn is_eos(&self, token: u32) -> bool {
        self.eos_token_ids.contains(&token)
    }
}

/// Runs the prompt as one causal block on an emptied cache, or, with prefix reuse on
/// ([`DecoderModel::set_prefix_reuse`]), on the part of the cache that the prompt starts with
/// ([`DecoderModel::reusable_prefix`]); returns the last row's logits and hidden state and the
/// seconds it took.
pub fn prefill(model: &mut dyn DecoderModel, prompt: &[u32]) -> Result<(ForwardOutput, f64)> {
    if prompt.is_empty() {
        candle_core::bail!("empty prompt: decoding needs at least one prompt token");
    }
    let max_context = model.info().max_context;
    if prompt.len() >= max_context {
        candle_core::bail!("prompt has {} tokens but model {} has a context of {max_context}", prompt.len(), model.info().name);
    }
    let t0 = clock::now(model.device())?;
    let keep = model.reusable_prefix(prompt);
    if keep == 0 {
        model.clear_cache();
    } else {
        model.truncate_cache(keep)?;
    }
    let positions: Vec<usize> = (keep..prompt.len()).collect();
    let out = model.forward(&ForwardInput::causal(&prompt[keep..], &positions, LogitRows::Last))?;
    Ok((out, clock::since(model.device(), t0)?))
}

/// Appends accepted tokens to the output one at a time, stopping at EOS or the token budget.
/// Returns the stop reason once generation must end.
pub(crate) fn push_tokens(
    tokens: &mut Vec<u32>,
    new: &[u32],
    stop: &StopConfig,
    on_token: &mut dyn FnMut(u32),
) -> Option<crate::StopReason> {
    for &t in new {
        if tokens.len() >= stop.max_new_tokens {
            return Some(crate::StopReason::MaxTokens);
        }
        tokens.push(t);
        on_token(t);
        if stop.is_eos(t) {
            return Some(crate::StopReason::Eos);
        }
    }
    (tokens.len() >= stop.max_new_tokens).then_some(crate::StopReason::MaxTokens)
}

//! Greedy decoding: the arg-max token, one forward per token. The reference every lossless
//! strategy must reproduce token for token.

use std::time::Instant;

use candle_core::Result;

use crate::{host, DecoderModel, ForwardInput, Generation, LogitRows, StepRecord, StopReason};

/// Settings shared by the autoregressive strategies.
#[derive(Debug, Clone)]
pub struct StopConfig {
    pub max_new_tokens: usize,
    /// Generation stops after any of these.
    pub eos_token_ids: Vec<u32>,
}

/// Feeds `prompt` to a cleared cache, then decodes greedily. `on_token` sees every new token as
/// soon as it is chosen (for streaming).
pub fn generate(
    model: &mut dyn DecoderModel,
    prompt: &[u32],
    stop: &StopConfig,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    if prompt.is_empty() {
        candle_core::bail!("empty prompt: greedy decoding needs at least one token");
    }
    let max_context = model.info().max_context;
    if prompt.len() >= max_context {
        candle_core::bail!(
            "prompt has {} tokens but model {} has a context of {max_context}",
            prompt.len(),
            model.info().name
        );
    }
    model.clear_cache();

    let t0 = Instant::now();
    let positions: Vec<usize> = (0..prompt.len()).collect();
    let out = model.forward(&ForwardInput::causal(prompt, &positions, LogitRows::Last))?;
    let mut next = host::argmax_tokens(&out.logits)?[0];
    let prefill_s = t0.elapsed().as_secs_f64();

    let t_decode = Instant::now();
    let mut tokens = Vec::with_capacity(stop.max_new_tokens);
    let mut steps = Vec::with_capacity(stop.max_new_tokens);
    let stop_reason = loop {
        if stop.max_new_tokens == 0 {
            break StopReason::MaxTokens;
        }
        tokens.push(next);
        on_token(next);
        if stop.eos_token_ids.contains(&next) {
            break StopReason::Eos;
        }
        if tokens.len() >= stop.max_new_tokens {
            break StopReason::MaxTokens;
        }
        let pos = model.cache_len();
        if pos + 1 > max_context {
            break StopReason::ContextFull;
        }
        let t_step = Instant::now();
        let out = model.forward(&ForwardInput::causal(&[next], &[pos], LogitRows::Last))?;
        next = host::argmax_tokens(&out.logits)?[0];
        steps.push(StepRecord {
            tokens_proposed: 0,
            tokens_accepted: 1,
            accepted_depth: 0,
            forward_tokens: 1,
            draft_s: 0.0,
            verify_s: t_step.elapsed().as_secs_f64(),
            update_s: 0.0,
        });
    };
    Ok(Generation { tokens, stop: stop_reason, prefill_s, decode_s: t_decode.elapsed().as_secs_f64(), steps })
}

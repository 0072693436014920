//! The autoregressive baselines: greedy (the arg-max, the reference every lossless strategy must
//! reproduce token for token) and sampling, one target forward per token.

use candle_core::{Result, Tensor};

use crate::clock;
use crate::common::{prefill, push_tokens, StopConfig};
use crate::sampler::Sampler;
use crate::{host, DecoderModel, ForwardInput, Generation, LogitRows, StepRecord, StopReason};

/// Greedy decoding. `on_token` sees every new token as soon as it is chosen (for streaming).
pub fn greedy(model: &mut dyn DecoderModel, prompt: &[u32], stop: &StopConfig, on_token: &mut dyn FnMut(u32)) -> Result<Generation> {
    run(model, prompt, stop, &mut |logits| Ok(host::argmax_tokens(logits)?[0]), on_token)
}

/// Sampling from the sampler's distribution (temperature, top-k, top-p, seed).
pub fn sample(
    model: &mut dyn DecoderModel,
    prompt: &[u32],
    stop: &StopConfig,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    run(model, prompt, stop, &mut |logits| Ok(sampler.choose(&host::logits_row(logits)?)), on_token)
}

fn run(
    model: &mut dyn DecoderModel,
    prompt: &[u32],
    stop: &StopConfig,
    choose: &mut dyn FnMut(&Tensor) -> Result<u32>,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    let (out, prefill_s) = prefill(model, prompt)?;
    let t_decode = clock::now(model.device())?;
    let mut next = choose(&out.logits)?;
    let max_context = model.info().max_context;
    let mut tokens = Vec::with_capacity(stop.max_new_tokens);
    let mut steps = Vec::with_capacity(stop.max_new_tokens);
    let stop_reason = loop {
        if let Some(reason) = push_tokens(&mut tokens, &[next], stop, on_token) {
            break reason;
        }
        let pos = model.cache_len();
        if pos + 1 > max_context {
            break StopReason::ContextFull;
        }
        let t_step = clock::now(model.device())?;
        let out = model.forward(&ForwardInput::causal(&[next], &[pos], LogitRows::Last))?;
        let t_chosen = clock::now(model.device())?;
        next = choose(&out.logits)?;
        steps.push(StepRecord {
            tokens_accepted: 1,
            forward_tokens: 1,
            verify_s: (t_chosen - t_step).as_secs_f64(),
            update_s: clock::since(model.device(), t_chosen)?,
            ..StepRecord::default()
        });
    };
    Ok(Generation { tokens, stop: stop_reason, prefill_s, decode_s: clock::since(model.device(), t_decode)?, steps })
}

//! Draft-model speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft
//! model proposes γ tokens one at a time, the target checks all of them in one forward of γ+1
//! positions, and both KV caches roll back to the accepted prefix.
//!
//! Acceptance is greedy (keep drafts while they equal the target's arg-max: token-identical to
//! greedy decoding) or lossless rejection sampling (accept a draft x with probability
//! min(1, p(x)/q(x)); on rejection draw from norm(max(p − q, 0)); when every draft is accepted,
//! draw a bonus token from p), which preserves the target's sampling distribution exactly.

use candle_core::Result;
use serde::Serialize;

use crate::clock;
use crate::common::{prefill, push_tokens, StopConfig};
use crate::sampler::{softmax, Sampler};
use crate::{host, DecoderModel, ForwardInput, Generation, LogitRows, StepRecord, StopReason};

/// How γ changes between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GammaSchedule {
    Constant,
    /// Hugging Face's assisted-generation heuristic: +2 after a step whose drafts were all
    /// accepted, −1 otherwise, never below 1.
    Heuristic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecAcceptance {
    /// Drafts are kept while they equal the target's arg-max (greedy output, exactly).
    Greedy,
    /// Lossless rejection sampling against the sampler's distribution.
    Rejection,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeculativeConfig {
    /// Draft tokens per step (the first step's, under the heuristic schedule).
    pub gamma: usize,
    pub schedule: GammaSchedule,
    /// Stop drafting early when the draft's top-1 probability falls below this (llama.cpp's
    /// `p_min`); None drafts all γ tokens.
    pub p_min: Option<f64>,
    pub acceptance: SpecAcceptance,
    /// Draft only among the first this many token ids ([`DecoderModel::set_logit_vocab`]): a
    /// cheaper draft step, and drafts outside it are never proposed. Greedy acceptance only
    /// (rejection sampling would need the draft's distribution over every id).
    pub draft_vocab: Option<usize>,
}

impl SpeculativeConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.gamma == 0 {
            return Err("--gamma must be at least 1".into());
        }
        if let Some(p) = self.p_min {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("--p-min must be in [0, 1], got {p}"));
            }
        }
        match self.draft_vocab {
            Some(0) => return Err("--draft-vocab must be at least 1".into()),
            Some(_) if self.acceptance == SpecAcceptance::Rejection => {
                return Err("--draft-vocab needs greedy acceptance (rejection sampling needs the draft's whole distribution)".into())
            }
            _ => {}
        }
        Ok(())
    }
}

/// γ is capped so that one step never proposes an absurd number of tokens under the heuristic.
const MAX_GAMMA: usize = 64;

/// Generates with `target`, drafting with `draft` (whose token ids must mean the same as the
/// target's for every id it can produce: the caller checks the tokenizers).
pub fn generate(
    target: &mut dyn DecoderModel,
    draft: &mut dyn DecoderModel,
    prompt: &[u32],
    stop: &StopConfig,
    config: &SpeculativeConfig,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    config.validate().map_err(candle_core::Error::Msg)?;
    draft.set_logit_vocab(config.draft_vocab)?;
    let generation = generate_limited(target, draft, prompt, stop, config, sampler, on_token);
    // The draft may serve other configurations next: whole again, whatever happened.
    draft.set_logit_vocab(None)?;
    generation
}

/// [`generate`], the draft's logits limited as the config says.
fn generate_limited(
    target: &mut dyn DecoderModel,
    draft: &mut dyn DecoderModel,
    prompt: &[u32],
    stop: &StopConfig,
    config: &SpeculativeConfig,
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    if config.acceptance == SpecAcceptance::Greedy && !sampler.config().is_greedy() {
        candle_core::bail!("greedy acceptance needs temperature 0; use rejection sampling to sample");
    }
    let (out, target_prefill_s) = prefill(target, prompt)?;
    let (_, draft_prefill_s) = prefill(draft, prompt)?;
    let t_decode = clock::now(target.device())?;
    let first = match config.acceptance {
        SpecAcceptance::Greedy => host::argmax_tokens(&out.logits)?[0],
        SpecAcceptance::Rejection => sampler.choose(&host::logits_row(&out.logits)?),
    };
    let max_context = target.info().max_context.min(draft.info().max_context);
    let mut tokens = Vec::with_capacity(stop.max_new_tokens);
    let mut steps = Vec::new();
    let mut gamma = config.gamma;
    // The last emitted token, which neither cache holds yet, and the tokens the draft still has
    // to read (the last emitted token, plus the last draft when every draft was accepted).
    let mut last = first;
    let mut draft_pending = vec![first];
    // Prompt and output so far: position i of both caches holds `sequence[i]`.
    let mut sequence: Vec<u32> = prompt.to_vec();
    sequence.push(first);

    let mut stop_reason = push_tokens(&mut tokens, &[first], stop, on_token);
    while stop_reason.is_none() {
        let base = target.cache_len();
        let room = max_context.saturating_sub(base + 1);
        let budget = stop.max_new_tokens - tokens.len();
        if base + 1 > max_context || draft.cache_len() + draft_pending.len() > max_context {
            stop_reason = Some(StopReason::ContextFull);
            break;
        }
        // Drafts beyond the token budget could never be emitted.
        let gamma_now = gamma.min(room).min(budget.saturating_sub(1));

        // Draft phase: γ single-token forwards of the draft model.
        let t_draft = clock::now(target.device())?;
        let mut drafts: Vec<u32> = Vec::with_capacity(gamma_now);
        let mut draft_dists: Vec<Vec<f32>> = Vec::with_capacity(gamma_now);
        let mut feed = std::mem::take(&mut draft_pending);
        while drafts.len() < gamma_now {
            let start = draft.cache_len();
            let positions: Vec<usize> = (start..start + feed.len()).collect();
            let out = draft.forward(&ForwardInput::causal(&feed, &positions, LogitRows::Last))?;
            let (token, dist) = match (config.acceptance, config.p_min) {
                (SpecAcceptance::Greedy, None) => (host::argmax_tokens(&out.logits)?[0], Vec::new()),
                (SpecAcceptance::Greedy, Some(_)) => {
                    let logits = host::logits_row(&out.logits)?;
                    (crate::sampler::argmax(&logits), softmax(&logits, 1.0))
                }
                (SpecAcceptance::Rejection, _) => {
                    let q = sampler.distribution(&host::logits_row(&out.logits)?);
                    (sampler.sample(&q), q)
                }
            };
            if let Some(p_min) = config.p_min {
                let top1 = dist.iter().copied().fold(0f32, f32::max) as f64;
                if top1 < p_min {
                    break;
                }
            }
            drafts.push(token);
            draft_dists.push(dist);
            feed = vec![token];
        }
        let draft_s = clock::since(target.device(), t_draft)?;
        // Positions the draft has read (the last draft, if any, it has not).
        let draft_fed = draft.cache_len();

        // Verification: one target forward over the last token and the drafts.
        let t_verify = clock::now(target.device())?;
        let mut block = Vec::with_capacity(drafts.len() + 1);
        block.push(last);
        block.extend_from_slice(&drafts);
        let positions: Vec<usize> = (base..base + block.len()).collect();
        let out = target.forward(&ForwardInput::causal(&block, &positions, LogitRows::All))?;
        let verify_s = clock::since(target.device(), t_verify)?;

        let t_update = clock::now(target.device())?;
        let (accepted, next) = match config.acceptance {
            SpecAcceptance::Greedy => {
                let best = host::argmax_tokens(&out.logits)?;
                let k = drafts.iter().zip(&best).take_while(|(d, b)| d == b).count();
                (k, best[k])
            }
            SpecAcceptance::Rejection => {
                let rows = host::logits_rows(&out.logits)?;
                let p: Vec<Vec<f32>> = rows.iter().map(|r| sampler.distribution(r)).collect();
                rejection_step(&drafts, &draft_dists, &p, sampler)
            }
        };
        // Roll back both caches to the accepted prefix. The target keeps `last` and the accepted
        // drafts; the draft keeps what it read of them, and reads the rest next step.
        target.truncate_cache(base + 1 + accepted)?;
        sequence.extend_from_slice(&drafts[..accepted]);
        sequence.push(next);
        let draft_keep = (base + 1 + accepted).min(draft_fed);
        draft.truncate_cache(draft_keep)?;
        draft_pending = sequence[draft_keep..].to_vec();
        last = next;

        let mut emitted = drafts[..accepted].to_vec();
        emitted.push(next);
        // Count what reached the output: an EOS or the budget can cut the step short.
        let before = tokens.len();
        stop_reason = push_tokens(&mut tokens, &emitted, stop, on_token);
        if config.schedule == GammaSchedule::Heuristic {
            gamma =
                if accepted == drafts.len() && !drafts.is_empty() { (gamma + 2).min(MAX_GAMMA) } else { gamma.saturating_sub(1).max(1) };
        }
        steps.push(StepRecord {
            tokens_proposed: drafts.len(),
            tokens_accepted: tokens.len() - before,
            accepted_depth: accepted,
            forward_tokens: block.len(),
            draft_s,
            verify_s,
            update_s: clock::since(target.device(), t_update)?,
            proposed_depth: drafts.len(),
            ..StepRecord::default()
        });
    }
    Ok(Generation {
        tokens,
        stop: stop_reason.unwrap_or(StopReason::MaxTokens),
        prefill_s: target_prefill_s + draft_prefill_s,
        decode_s: clock::since(target.device(), t_decode)?,
        steps,
    })
}

/// One step of rejection sampling: `drafts[i]` was drawn from `q[i]`; `p[i]` is the target's
/// distribution at the same position (`p` has one more row, for the bonus token). Returns how
/// many drafts are accepted and the token that follows them (a resample or the bonus).
pub fn rejection_step(drafts: &[u32], q: &[Vec<f32>], p: &[Vec<f32>], sampler: &mut Sampler) -> (usize, u32) {
    for (i, &x) in drafts.iter().enumerate() {
        let (pi, qi) = (&p[i], &q[i]);
        let px = pi.get(x as usize).copied().unwrap_or(0.0) as f64;
        let qx = qi.get(x as usize).copied().unwrap_or(0.0) as f64;
        // q(x) > 0 since x was drawn from q; accept with probability min(1, p/q).
        if sampler.uniform() * qx < px {
            continue;
        }
        let residual: Vec<f32> = pi.iter().enumerate().map(|(t, &pt)| (pt - qi.get(t).copied().unwrap_or(0.0)).max(0.0)).collect();
        let token = if residual.iter().any(|&r| r > 0.0) { sampler.sample(&residual) } else { sampler.sample(pi) };
        return (i, token);
    }
    (drafts.len(), sampler.sample(&p[drafts.len()]))
}

//! Beam search with the semantics of Hugging Face `generate(num_beams=…)`.
//!
//! The reference is `GenerationMixin._beam_search` in `transformers/generation/utils.py` as
//! rewritten in v4.50 (the vectorized version with `_get_top_k_continuations`,
//! `_get_running_beams_for_next_iteration`, `_update_finished_beams`,
//! `_check_early_stop_heuristic`, `_beam_search_has_unfinished_sequences`; the older
//! `BeamSearchScorer` / `BeamHypotheses` of `generation/beam_search.py` are deprecated and no
//! longer used by `generate`). For one prompt (HF's batch of 1) and no logits processors, each step:
//!
//! 1. Every running beam's next-token log-probabilities (`log_softmax` of its logits) are added to
//!    the beam's accumulated log-probability. At the first step only beam 0 is live: the others
//!    start at −1e9, exactly as HF initialises `running_beam_scores[:, 1:] = -1e9`.
//! 2. The best `max(2, 1 + n_eos) · num_beams` (beam, token) candidates by accumulated
//!    log-probability are kept (`2 · num_beams` with one EOS token; HF widens it with several EOS
//!    tokens so that at least `num_beams` candidates never end a sequence).
//! 3. A candidate "hits the stopping criteria" when its token is an EOS token or when it reaches
//!    the maximum length. Hitting candidates **ranked within the first `num_beams`** become
//!    finished hypotheses (`top_num_beam_mask`); the others are dropped. A finished hypothesis
//!    scores `sum_logprobs / generated_len ^ length_penalty`, where `generated_len` counts the new
//!    tokens **including the EOS token** (HF: `cur_len + 1 - decoder_prompt_len`; the pre-4.50
//!    `BeamHypotheses.add(…, generated_len=cur_len - decoder_prompt_len)` did not count the EOS,
//!    and versions before that divided by the full length, prompt included). The finished set
//!    keeps the best `num_beams` hypotheses.
//! 4. The next running beams are the best `num_beams` candidates that did not hit.
//! 5. Early stopping (`_check_early_stop_heuristic` + `_beam_search_has_unfinished_sequences`):
//!    the best running beam's accumulated log-probability divided by
//!    `best_len ^ length_penalty` is compared with the worst finished score once `num_beams`
//!    hypotheses are finished; search stops when it cannot beat it. `best_len` is the current
//!    generated length, except for [`EarlyStopping::Never`] with `length_penalty > 0`, where it is
//!    the maximum length (then the bound is exact: canonical beam search).
//!    [`EarlyStopping::True`] also stops as soon as `num_beams` hypotheses are finished. Search
//!    always stops when every kept candidate hits (the maximum length).
//!
//! The result is the best finished hypothesis (HF's `sequences[:, 0]`); its tokens include the
//! EOS token when it ended with one (HF's sequences do, and so does [`crate::autoregressive`]).
//!
//! Deliberate deviations, none of which changes anything when `num_beams` does not exceed the
//! number of live candidates of a step (i.e. in practice):
//! - Arithmetic is f64 on the host (HF: f32 on the device), and ties are broken deterministically:
//!   candidates by (score desc, beam asc, token asc), finished hypotheses keep the earlier one.
//!   In f32, `-1e9 + logp` rounds to `-1e9`, so HF cannot order the inactive beams' candidates
//!   at all; here they are ordered by their log-probability.
//! - Candidates that descend from the inactive beams of the first step (score ≈ −1e9) only fill
//!   running slots, as in HF, but never become finished hypotheses. In HF they can, whenever
//!   `num_beams` exceeds the number of live candidates (for example 4 beams over a 3-token
//!   vocabulary); with a positive length penalty such a "hypothesis" even outranks HF's empty
//!   slots (−1e9 / L^p > −1e9) and counts towards `early_stopping=True`.
//! - A finished hypothesis must score above −1e9, the value of HF's empty finished slots, which
//!   it would otherwise not displace.
//! - The maximum length is `max_new_tokens`, further capped by the model's context (the last token
//!   never needs a forward, so `max_context + 1 - prompt_len` new tokens fit, as in greedy). A
//!   hypothesis that reaches the context cap is reported as [`StopReason::ContextFull`].
//!
//! Beams share the prompt's KV cache: the prompt is prefilled once with batch 1 and the cache is
//! duplicated into `num_beams` rows when the first tokens are chosen; every later step is one
//! batched forward of `num_beams` rows × 1 token followed by `reorder_cache(parent of each beam)`.

use std::fmt;
use std::str::FromStr;

use candle_core::Result;
use serde::Serialize;

use crate::clock;
use crate::common::{prefill, StopConfig};
use crate::{host, BlockAttention, DecoderModel, ForwardInput, Generation, LogitRows, StepRecord, StopReason};

/// HF's finite "minus infinity": the initial score of the inactive beams and of empty finished
/// slots.
const NEG_BIG: f64 = -1.0e9;

/// When beam search may stop before the maximum length (HF's `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlyStopping {
    /// HF `True`: stop as soon as `num_beams` hypotheses are finished.
    True,
    /// HF `False` (its default): stop when the best running beam, scored at its current length,
    /// cannot beat the worst of `num_beams` finished hypotheses. Not a bound when
    /// `length_penalty > 0` (longer hypotheses get divided by more).
    Heuristic,
    /// HF `"never"`: stop only when no running beam can beat the worst of `num_beams` finished
    /// hypotheses at any length up to the maximum (canonical beam search).
    Never,
}

impl FromStr for EarlyStopping {
    type Err = String;

    /// Accepts HF's spellings `true`, `false`, `never` and the alias `heuristic` for `false`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(Self::True),
            "false" | "heuristic" => Ok(Self::Heuristic),
            "never" => Ok(Self::Never),
            other => Err(format!("--early-stopping must be one of true, false (= heuristic), never; got {other:?}")),
        }
    }
}

impl fmt::Display for EarlyStopping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::True => "true",
            Self::Heuristic => "heuristic",
            Self::Never => "never",
        })
    }
}

/// Beam search settings (HF's `num_beams`, `length_penalty`, `early_stopping`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BeamConfig {
    pub num_beams: usize,
    /// Exponent of the generated length that divides a finished hypothesis' summed
    /// log-probability: > 0 favours longer sequences, < 0 shorter ones, 0 compares raw sums.
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
}

impl BeamConfig {
    /// `num_beams` beams with HF's defaults for the rest (`length_penalty = 1.0`,
    /// `early_stopping = False`).
    pub fn new(num_beams: usize) -> Self {
        Self { num_beams, length_penalty: 1.0, early_stopping: EarlyStopping::Heuristic }
    }

    /// Checks the settings on their own (the vocabulary is checked when searching).
    pub fn validate(&self) -> Result<()> {
        if self.num_beams == 0 {
            candle_core::bail!("--num-beams must be at least 1 (got 0)");
        }
        if !self.length_penalty.is_finite() {
            candle_core::bail!("--length-penalty must be a finite number (got {})", self.length_penalty);
        }
        Ok(())
    }
}

/// A finished hypothesis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hypothesis {
    /// New tokens, the EOS token included when it ended with one.
    pub tokens: Vec<u32>,
    /// `log_prob / tokens.len() ^ length_penalty`: what beam search ranks by.
    pub score: f64,
    /// Summed log-probability of the new tokens.
    pub log_prob: f64,
}

/// What [`search`] returns.
#[derive(Debug, Clone, Serialize)]
pub struct BeamOutput {
    /// The best hypothesis as a [`Generation`].
    pub generation: Generation,
    /// Its length-penalised score.
    pub score: f64,
    /// Its summed log-probability.
    pub log_prob: f64,
    /// The finished hypotheses (at most `num_beams`), best first; the first is the returned one.
    pub hypotheses: Vec<Hypothesis>,
}

/// The state after one selection, for observers (progress, tests). `running` mirrors the batch
/// rows of the model's cache: after this step's `reorder_cache`, row i holds the prompt plus
/// `running[i]` without its last token (which the next forward feeds).
#[derive(Debug)]
pub struct BeamStep<'a> {
    /// Selections so far (1 for the choice made from the prefill logits) = new tokens per beam.
    pub step: usize,
    /// New tokens of each running beam.
    pub running: &'a [Vec<u32>],
    /// Accumulated log-probability of each running beam (≈ −1e9 for inactive ones).
    pub running_log_probs: &'a [f64],
    /// Whether each running beam descends from the one live beam of the first step.
    pub live: &'a [bool],
    /// Finished hypotheses so far, best first.
    pub finished: &'a [Hypothesis],
    /// Whether search stops after this step.
    pub done: bool,
}

/// Beam search; returns the best finished hypothesis (see the module documentation for the
/// exact rules). `on_step` sees the beams after every selection.
pub fn search(
    model: &mut dyn DecoderModel,
    prompt: &[u32],
    stop: &StopConfig,
    config: &BeamConfig,
    on_step: &mut dyn FnMut(&BeamStep),
) -> Result<BeamOutput> {
    config.validate()?;
    let nb = config.num_beams;
    let lp = config.length_penalty;
    let vocab = model.info().vocab_size;
    let mut eos_in_vocab: Vec<u32> = stop.eos_token_ids.iter().copied().filter(|&t| (t as usize) < vocab).collect();
    eos_in_vocab.sort_unstable();
    eos_in_vocab.dedup();
    // HF: beams_to_keep = max(2, 1 + n_eos) * num_beams.
    let per_beam = 2.max(1 + eos_in_vocab.len());
    if vocab < per_beam {
        candle_core::bail!(
            "beam search keeps {per_beam} candidates per beam ({} EOS tokens) but model {} has a vocabulary of only {vocab}",
            eos_in_vocab.len(),
            model.info().name
        );
    }
    let keep = per_beam * nb;

    let (out, prefill_s) = prefill(model, prompt)?;
    let t_decode = clock::now(model.device())?;
    let max_context = model.info().max_context;
    // prefill guarantees prompt.len() < max_context.
    let limit = stop.max_new_tokens.min(max_context + 1 - prompt.len());
    if limit == 0 {
        let generation = Generation {
            tokens: Vec::new(),
            stop: StopReason::MaxTokens,
            prefill_s,
            decode_s: clock::since(model.device(), t_decode)?,
            steps: Vec::new(),
        };
        return Ok(BeamOutput { generation, score: 0.0, log_prob: 0.0, hypotheses: Vec::new() });
    }

    let mut running: Vec<Vec<u32>> = vec![Vec::new(); nb];
    let mut running_lp = vec![NEG_BIG; nb];
    running_lp[0] = 0.0;
    let mut live = vec![false; nb];
    live[0] = true;
    let mut finished: Vec<Hypothesis> = Vec::with_capacity(nb + 1);
    // HF's `is_early_stop_heuristic_unsatisfied`.
    let mut improvable = true;
    let mut logits = out.logits;
    let mut steps: Vec<StepRecord> = Vec::with_capacity(limit);
    // Seconds of the forward whose logits the next selection reads (None: the prefill's).
    let mut pending_verify: Option<f64> = None;

    loop {
        let t_select = clock::now(model.device())?;
        let rows = host::logits_rows(&logits)?;
        let first = pending_verify.is_none();
        let expected_rows = if first { 1 } else { nb };
        if rows.len() != expected_rows {
            candle_core::bail!("beam search: model returned {} logits rows, expected {expected_rows}", rows.len());
        }
        let log_probs: Vec<Vec<f64>> = rows.iter().map(|r| log_softmax(r)).collect::<Result<_>>()?;
        // At the first step every beam is the prompt: all read the prefill row.
        let beam_rows: Vec<&[f64]> = (0..nb).map(|b| log_probs[if first { 0 } else { b }].as_slice()).collect();

        let gen_len = running[0].len() + 1;
        let at_limit = gen_len == limit;
        let hits = |token: u32| at_limit || stop.is_eos(token);
        let candidates = top_candidates(&beam_rows, &running_lp, keep);

        // Finished hypotheses: hitting candidates among the first num_beams ranks.
        let denom = (gen_len as f64).powf(lp);
        for c in candidates.iter().take(nb) {
            if hits(c.token) && live[c.beam] {
                let score = c.log_prob / denom;
                if score > NEG_BIG {
                    let mut tokens = running[c.beam].clone();
                    tokens.push(c.token);
                    finished.push(Hypothesis { tokens, score, log_prob: c.log_prob });
                }
            }
        }
        // Stable: on equal scores the earlier hypothesis stays ahead.
        finished.sort_by(|a, b| b.score.total_cmp(&a.score));
        finished.truncate(nb);

        // Running beams: the best num_beams candidates that did not hit.
        let next: Vec<&Candidate> = candidates.iter().filter(|c| !hits(c.token)).take(nb).collect();
        let can_continue = !next.is_empty();
        let mut parents = Vec::new();
        if can_continue {
            if next.len() != nb {
                candle_core::bail!("beam search: only {} of {nb} candidates can continue", next.len());
            }
            let best_len = if config.early_stopping == EarlyStopping::Never && lp > 0.0 { limit } else { gen_len };
            let best_possible = next[0].log_prob / (best_len as f64).powf(lp);
            let worst_finished = if finished.len() == nb { finished[nb - 1].score } else { NEG_BIG };
            improvable = improvable && best_possible > worst_finished;
            parents = next.iter().map(|c| c.beam).collect();
            running = next
                .iter()
                .map(|c| {
                    let mut t = running[c.beam].clone();
                    t.push(c.token);
                    t
                })
                .collect();
            running_lp = next.iter().map(|c| c.log_prob).collect();
            live = parents.iter().map(|&p| live[p]).collect();
        }
        let full_and_true = config.early_stopping == EarlyStopping::True && finished.len() == nb;
        let done = !can_continue || !improvable || full_and_true;
        if !done {
            // At the first step every row is a copy of the prompt row (the cache has one).
            let rows = if first { vec![0; nb] } else { parents };
            model.reorder_cache(&rows)?;
        }

        if let Some(verify_s) = pending_verify {
            steps.push(StepRecord {
                tokens_accepted: 1,
                forward_tokens: nb,
                verify_s,
                update_s: clock::since(model.device(), t_select)?,
                ..StepRecord::default()
            });
        }
        on_step(&BeamStep { step: gen_len, running: &running, running_log_probs: &running_lp, live: &live, finished: &finished, done });
        if done {
            break;
        }

        let t_forward = clock::now(model.device())?;
        let tokens: Vec<u32> = running.iter().map(|r| *r.last().expect("running beams have tokens")).collect();
        let positions = [prompt.len() + gen_len - 1];
        let input =
            ForwardInput { tokens: &tokens, batch: nb, positions: &positions, attention: &BlockAttention::Causal, rows: LogitRows::Last };
        logits = model.forward(&input)?.logits;
        pending_verify = Some(clock::since(model.device(), t_forward)?);
    }

    let best = match finished.first() {
        Some(h) => h.clone(),
        // Unreachable with finite logits (the best candidate of the last step is always live);
        // kept so that pathological logits still return the best running beam.
        None => {
            let tokens = running[0].clone();
            let score = running_lp[0] / (tokens.len() as f64).powf(lp);
            Hypothesis { tokens, score, log_prob: running_lp[0] }
        }
    };
    let stop_reason = if best.tokens.last().is_some_and(|&t| stop.is_eos(t)) {
        StopReason::Eos
    } else if best.tokens.len() >= stop.max_new_tokens {
        StopReason::MaxTokens
    } else {
        StopReason::ContextFull
    };
    let generation =
        Generation { tokens: best.tokens.clone(), stop: stop_reason, prefill_s, decode_s: clock::since(model.device(), t_decode)?, steps };
    Ok(BeamOutput { generation, score: best.score, log_prob: best.log_prob, hypotheses: finished })
}

/// [`search`] for the runner: returns the best hypothesis as a [`Generation`]. Beam search only
/// knows its output at the end, so `on_token` sees the tokens then, in order.
pub fn generate(
    model: &mut dyn DecoderModel,
    prompt: &[u32],
    stop: &StopConfig,
    config: &BeamConfig,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    let out = search(model, prompt, stop, config, &mut |_| {})?;
    out.generation.tokens.iter().for_each(|&t| on_token(t));
    Ok(out.generation)
}

/// One (beam, token) continuation with its accumulated log-probability.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    log_prob: f64,
    beam: usize,
    token: u32,
}

/// Candidate order: higher accumulated log-probability first, then lower beam, then lower token.
fn rank(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.log_prob.total_cmp(&a.log_prob).then(a.beam.cmp(&b.beam)).then(a.token.cmp(&b.token))
}

/// The best `k` candidates over all beams, in [`rank`] order. Each beam contributes at most its
/// own best `k`, selected with the same order (so the result equals a full sort).
fn top_candidates(beam_rows: &[&[f64]], beam_log_probs: &[f64], k: usize) -> Vec<Candidate> {
    let vocab = beam_rows.first().map_or(0, |r| r.len());
    let take = k.min(vocab);
    let mut pool = Vec::with_capacity(beam_rows.len() * take);
    let mut row: Vec<Candidate> = Vec::with_capacity(vocab);
    for (beam, (lps, &base)) in beam_rows.iter().zip(beam_log_probs).enumerate() {
        row.clear();
        row.extend(lps.iter().enumerate().map(|(t, &lp)| Candidate { log_prob: base + lp, beam, token: t as u32 }));
        if take < row.len() && take > 0 {
            row.select_nth_unstable_by(take - 1, rank);
        }
        pool.extend_from_slice(&row[..take]);
    }
    pool.sort_by(rank);
    pool.truncate(k);
    pool
}

/// `log_softmax` of one logits row, in f64.
fn log_softmax(row: &[f32]) -> Result<Vec<f64>> {
    if row.iter().any(|x| x.is_nan()) {
        candle_core::bail!("beam search: the model returned NaN logits");
    }
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    if !max.is_finite() {
        candle_core::bail!("beam search: logits row has no finite maximum ({max})");
    }
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    Ok(row.iter().map(|&x| x as f64 - lse).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_candidates_equal_a_full_sort() {
        let rows: Vec<Vec<f64>> = vec![vec![-1.0, -0.5, -3.0, -0.5, -2.0], vec![-0.1, -4.0, -0.2, -9.0, -0.3]];
        let base = [0.0, -1.0];
        let refs: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        let mut all: Vec<Candidate> = Vec::new();
        for (b, r) in rows.iter().enumerate() {
            for (t, &lp) in r.iter().enumerate() {
                all.push(Candidate { log_prob: base[b] + lp, beam: b, token: t as u32 });
            }
        }
        all.sort_by(rank);
        for k in 1..=10 {
            let got = top_candidates(&refs, &base, k);
            let want: Vec<(usize, u32)> = all.iter().take(k).map(|c| (c.beam, c.token)).collect();
            assert_eq!(got.iter().map(|c| (c.beam, c.token)).collect::<Vec<_>>(), want, "k = {k}");
        }
    }

    #[test]
    fn log_softmax_normalises_and_rejects_nan() {
        let lp = log_softmax(&[1.0, 2.0, f32::NEG_INFINITY, 0.5]).unwrap();
        let total: f64 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert_eq!(lp[2], f64::NEG_INFINITY);
        assert!(log_softmax(&[1.0, f32::NAN]).is_err());
        assert!(log_softmax(&[f32::NEG_INFINITY; 3]).is_err());
    }

    #[test]
    fn config_validation_names_the_flags() {
        let err = BeamConfig::new(0).validate().unwrap_err().to_string();
        assert!(err.contains("--num-beams"), "{err}");
        let err = BeamConfig { length_penalty: f64::NAN, ..BeamConfig::new(2) }.validate().unwrap_err().to_string();
        assert!(err.contains("--length-penalty"), "{err}");
        assert!(BeamConfig::new(1).validate().is_ok());
        assert_eq!("false".parse::<EarlyStopping>(), Ok(EarlyStopping::Heuristic));
        assert_eq!("True".parse::<EarlyStopping>(), Ok(EarlyStopping::True));
        assert_eq!("never".parse::<EarlyStopping>(), Ok(EarlyStopping::Never));
        assert!("sometimes".parse::<EarlyStopping>().unwrap_err().contains("--early-stopping"));
    }
}

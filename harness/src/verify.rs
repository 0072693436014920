//! `decodebench verify`: every lossless configuration against greedy decoding, token for token,
//! on the user's own hardware (a GPU's fp16 kernels can drift where this CPU's do not).

use anyhow::Result;
use decodebench_strategies::{DecoderModel, StopConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::data::PromptItem;
use crate::decoding::{self, prompt_ids, Models};
use crate::models::LoadedModel;
use crate::registry::{BuildContext, StrategySpec};

/// Where a configuration's output first left greedy's.
#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    pub prompt_id: String,
    /// Index among the new tokens.
    pub token_index: usize,
    /// Greedy's token there (None: greedy had stopped).
    pub expected: Option<u32>,
    pub got: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyOutcome {
    pub config: String,
    pub identical: usize,
    pub prompts: usize,
    pub first_divergence: Option<Divergence>,
}

/// The first index where two token sequences differ.
fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (common < a.len().max(b.len())).then_some(common)
}

/// Runs greedy on every prompt, then each configuration, and compares.
pub fn run(
    target: &mut LoadedModel,
    mut draft: Option<&mut LoadedModel>,
    heads: Option<&decodebench_strategies::medusa::MedusaHeads>,
    prompts: &[PromptItem],
    max_new_tokens: usize,
    configs: &[(String, StrategySpec)],
    progress: bool,
) -> Result<Vec<VerifyOutcome>> {
    let tok = target.tokenizer.clone();
    let stop = StopConfig { max_new_tokens, eos_token_ids: tok.eos_token_ids().to_vec() };
    let greedy = StrategySpec::resolve("greedy", &[], &crate::registry::Place::Cli)?;
    // Cost-aware configurations draft by this machine's cost curve.
    let cost_curve = if configs.iter().any(|(_, c)| c.params.bool("cost_aware")) {
        let context = 256.min(target.model.info().max_context / 2);
        Some(crate::calibrate::forward_curve(&mut target.model, context, &[1, 2, 4, 8, 16], 3)?.into_iter().collect())
    } else {
        None
    };
    let ctx = BuildContext { num_heads: heads.map(|h| h.num_heads()), cost_curve };
    let mut greedy_decoder = greedy.build(&ctx)?;
    let bar = if progress { ProgressBar::new(((configs.len() + 1) * prompts.len()) as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} runs {msg} [{elapsed}]").expect("valid template"));
    let mut inputs = Vec::with_capacity(prompts.len());
    let mut references = Vec::with_capacity(prompts.len());
    bar.set_message("greedy");
    for p in prompts {
        let ids = prompt_ids(&tok, &p.prompt, None, false)?;
        let models = Models { target, draft: None, heads: None };
        references.push(decoding::run(&greedy, greedy_decoder.as_mut(), models, &ids, &stop, 0, &mut |_| {})?.tokens);
        inputs.push(ids);
        bar.inc(1);
    }
    let mut outcomes = Vec::with_capacity(configs.len());
    for (name, spec) in configs {
        bar.set_message(name.clone());
        let mut decoder = spec.build(&ctx)?;
        let mut outcome = VerifyOutcome { config: name.clone(), identical: 0, prompts: prompts.len(), first_divergence: None };
        for ((p, ids), reference) in prompts.iter().zip(&inputs).zip(&references) {
            let models = Models { target, draft: draft.as_deref_mut(), heads };
            let tokens = decoding::run(spec, decoder.as_mut(), models, ids, &stop, 0, &mut |_| {})?.tokens;
            match first_difference(reference, &tokens) {
                None => outcome.identical += 1,
                Some(i) if outcome.first_divergence.is_none() => {
                    outcome.first_divergence = Some(Divergence {
                        prompt_id: p.id.clone(),
                        token_index: i,
                        expected: reference.get(i).copied(),
                        got: tokens.get(i).copied(),
                    })
                }
                Some(_) => {}
            }
            bar.inc(1);
        }
        outcomes.push(outcome);
    }
    bar.finish_and_clear();
    Ok(outcomes)
}

/// A table of outcomes, one line per configuration.
pub fn format_outcomes(outcomes: &[VerifyOutcome], tok: &crate::tokenizer::TextTokenizer) -> String {
    let width = outcomes.iter().map(|o| o.config.len()).max().unwrap_or(6).max(6);
    let mut out = format!("{:<width$}  {:>9}  first divergence\n", "config", "identical");
    for o in outcomes {
        let share = format!("{}/{}", o.identical, o.prompts);
        let div = match &o.first_divergence {
            None => "-".to_string(),
            Some(d) => {
                let show = |t: Option<u32>| t.map_or("(end)".to_string(), |t| format!("{t} {:?}", tok.decode(&[t]).unwrap_or_default()));
                format!("prompt {} token {}: greedy {} vs {}", d.prompt_id, d.token_index, show(d.expected), show(d.got))
            }
        };
        out.push_str(&format!("{:<width$}  {share:>9}  {div}\n", o.config));
    }
    out
}

//! One entry point from a chosen strategy and loaded models to a [`Generation`]: what
//! `generate`, `verify` and (later) the sweep runner share.

use anyhow::{bail, Result};
use decodebench_strategies::beam::{self, BeamConfig};
use decodebench_strategies::medusa::{self, MedusaConfig, MedusaHeads};
use decodebench_strategies::sampler::{Sampler, SamplingConfig};
use decodebench_strategies::speculative::{self, SpeculativeConfig};
use decodebench_strategies::{autoregressive, Generation, StopConfig};

use crate::models::LoadedModel;
use crate::tokenizer::{ChatMessage, TextTokenizer};

/// A decoding strategy with its settings.
#[derive(Debug, Clone)]
pub enum Strategy {
    Greedy,
    Sample,
    Beam(BeamConfig),
    Speculative(SpeculativeConfig),
    Medusa(MedusaConfig),
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Greedy => "greedy",
            Strategy::Sample => "sample",
            Strategy::Beam(_) => "beam",
            Strategy::Speculative(_) => "speculative",
            Strategy::Medusa(_) => "medusa",
        }
    }
}

/// The models a run uses: the target, the draft for speculative decoding, the heads for Medusa.
pub struct Models<'a> {
    pub target: &'a mut LoadedModel,
    pub draft: Option<&'a mut LoadedModel>,
    pub heads: Option<&'a MedusaHeads>,
}

/// Runs `strategy` on prompt token ids.
pub fn run(
    strategy: &Strategy,
    models: Models<'_>,
    prompt: &[u32],
    stop: &StopConfig,
    sampling: &SamplingConfig,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    sampling.validate().map_err(anyhow::Error::msg)?;
    let mut sampler = Sampler::new(sampling.clone());
    let target = &mut models.target.model;
    let generation = match strategy {
        Strategy::Greedy => autoregressive::greedy(target, prompt, stop, on_token),
        Strategy::Sample => autoregressive::sample(target, prompt, stop, &mut sampler, on_token),
        Strategy::Beam(config) => {
            config.validate().map_err(anyhow::Error::msg)?;
            beam::generate(target, prompt, stop, config, on_token)
        }
        Strategy::Speculative(config) => {
            config.validate().map_err(anyhow::Error::msg)?;
            let Some(draft) = models.draft else { bail!("--strategy speculative needs --draft MODEL") };
            speculative::generate(target, &mut draft.model, prompt, stop, config, &mut sampler, on_token)
        }
        Strategy::Medusa(config) => {
            let Some(heads) = models.heads else { bail!("--strategy medusa needs --heads PATH|random:K") };
            medusa::generate(target, heads, prompt, stop, config, &mut sampler, on_token)
        }
    };
    generation.map_err(|e| anyhow::anyhow!("{} ({}): {e}", models.target.name, strategy.name()))
}

/// Checks that a draft model's token ids mean what the target's mean: every id both tokenizers
/// know must be the same token, and the draft must not be able to propose an id the target's
/// embedding lacks.
pub fn check_draft_compatible(target: &LoadedModel, draft: &LoadedModel) -> Result<()> {
    let (t, d) = (&target.tokenizer, &draft.tokenizer);
    let common = t.vocab_size().min(d.vocab_size());
    for id in 0..common as u32 {
        let (a, b) = (t.id_to_token(id), d.id_to_token(id));
        if a != b {
            bail!(
                "--draft {}: its tokenizer differs from {}'s at id {id} ({:?} vs {:?}); speculative decoding needs the same token ids",
                draft.name,
                target.name,
                b.unwrap_or_default(),
                a.unwrap_or_default()
            );
        }
    }
    let (tv, dv) = (target.model.config().vocab_size, draft.model.config().vocab_size);
    if dv > tv {
        bail!("--draft {}: its vocabulary ({dv} ids) is larger than {}'s ({tv})", draft.name, target.name);
    }
    Ok(())
}

/// Token ids of a user prompt: wrapped in the model's chat template (with an optional system
/// message) unless `raw`, and with BOS where the tokenizer asks for one.
pub fn prompt_ids(tok: &TextTokenizer, prompt: &str, system: Option<&str>, raw: bool) -> Result<Vec<u32>> {
    let text = if raw {
        prompt.to_string()
    } else {
        let mut messages = Vec::new();
        if let Some(system) = system {
            messages.push(ChatMessage::system(system));
        }
        messages.push(ChatMessage::user(prompt));
        tok.chat_prompt(&messages, true)?
    };
    let mut ids = tok.encode(&text)?;
    if let (true, Some(bos)) = (tok.adds_bos(), tok.bos_token_id()) {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ids)
}

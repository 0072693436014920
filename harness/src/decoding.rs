//! One entry point from a chosen strategy and loaded models to a [`Generation`]: what
//! `generate`, `verify` and the sweep runner share.

use anyhow::{bail, Result};
use decodebench_strategies::medusa::MedusaHeads;
use decodebench_strategies::{DecoderModel, Generation, ModelInfo, StopConfig};

use crate::models::LoadedModel;
use crate::registry::{Decoder, StrategySpec};
use crate::tokenizer::{ChatMessage, TextTokenizer};

/// The models a run uses: the target, the draft for speculative decoding, the heads for Medusa.
pub struct Models<'a> {
    pub target: &'a mut LoadedModel,
    pub draft: Option<&'a mut LoadedModel>,
    pub heads: Option<&'a MedusaHeads>,
}

/// Runs a configured strategy on prompt token ids (errors name the model and strategy).
pub fn run(
    spec: &StrategySpec,
    decoder: &mut dyn Decoder,
    models: Models<'_>,
    prompt: &[u32],
    stop: &StopConfig,
    seed: u64,
    on_token: &mut dyn FnMut(u32),
) -> Result<Generation> {
    let name = models.target.name.clone();
    decoder.generate(models, prompt, stop, seed, on_token).map_err(|e| anyhow::anyhow!("{name} ({}): {e:#}", spec.name()))
}

/// Checks that a draft model's token ids mean what the target's mean: every id both tokenizers
/// know must be the same token, and the draft must not be able to propose an id the target's
/// embedding lacks.
pub fn check_draft_compatible(target: &LoadedModel, draft: &LoadedModel) -> Result<()> {
    check_vocabularies(&target.tokenizer, target.model.info(), &draft.tokenizer, draft.model.info())
        .map_err(|e| anyhow::anyhow!("--draft {}: {e:#}", draft.name))
}

/// [`check_draft_compatible`] on tokenizers and model facts alone (read from the files' headers,
/// so the runner checks a config before loading any weights).
pub fn check_vocabularies(t: &TextTokenizer, target: &ModelInfo, d: &TextTokenizer, draft: &ModelInfo) -> Result<()> {
    let common = t.vocab_size().min(d.vocab_size());
    for id in 0..common as u32 {
        let (a, b) = (t.id_to_token(id), d.id_to_token(id));
        if a != b {
            bail!(
                "its tokenizer differs from {}'s at id {id} ({:?} vs {:?}); speculative decoding needs the same token ids",
                target.name,
                b.unwrap_or_default(),
                a.unwrap_or_default()
            );
        }
    }
    if draft.vocab_size > target.vocab_size {
        bail!("its vocabulary ({} ids) is larger than {}'s ({})", draft.vocab_size, target.name, target.vocab_size);
    }
    Ok(())
}

/// The first CUDA device, or why there is none.
pub fn cuda_device() -> Result<candle_core::Device> {
    if !cfg!(feature = "cuda") {
        bail!("--device cuda: this build of decodebench has no CUDA support (rebuild with `--features cuda`)");
    }
    candle_core::Device::new_cuda(0).map_err(|e| anyhow::anyhow!("--device cuda: no usable CUDA device: {e}"))
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

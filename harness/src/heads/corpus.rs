//! The self-distillation corpus and its hidden states.
//!
//! - [`build_corpus`]: the base model answers every prompt greedily; each answer is appended to
//!   `corpus.jsonl` (token ids and text) as it finishes, so a killed run resumes where it stopped.
//! - [`hidden_states`]: one teacher-forced forward per sequence gives the backbone's last
//!   hidden state (after the final norm) at every answer position: what the heads read. Cached
//!   as one f16 file, so training epochs never rerun the backbone.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use decodebench_strategies::{autoregressive, DecoderModel, ForwardInput, LogitRows, StopConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::PromptItem;
use crate::decoding::prompt_ids;
use crate::models::LoadedModel;

pub const CORPUS_FILE: &str = "corpus.jsonl";

/// One prompt and the base model's own greedy answer to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusEntry {
    pub id: String,
    pub category: String,
    /// Tokens of the chat-templated prompt at the start of `tokens`.
    pub prompt_tokens: usize,
    /// Prompt and answer token ids.
    pub tokens: Vec<u32>,
    /// The answer, decoded.
    pub text: String,
}

impl CorpusEntry {
    pub fn answer_len(&self) -> usize {
        self.tokens.len() - self.prompt_tokens
    }
}

/// The first line of `corpus.jsonl`: what the answers were made with. A corpus of another model
/// or length is refused rather than mixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusHeader {
    pub model: String,
    pub model_sha256: String,
    pub max_new_tokens: usize,
}

pub(crate) fn bar(progress: bool, len: usize, what: &str) -> ProgressBar {
    let bar = if progress { ProgressBar::new(len as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

fn read_corpus(path: &Path) -> Result<(Option<CorpusHeader>, Vec<CorpusEntry>, bool)> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, Vec::new(), false)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut header = None;
    let mut entries = Vec::new();
    let mut torn = false;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).with_context(|| format!("cannot read {}", path.display()))? == 0 {
            break;
        }
        n += 1;
        let whole = line.ends_with('\n');
        if n == 1 {
            header = Some(
                serde_json::from_str::<CorpusHeader>(line.trim_end())
                    .with_context(|| format!("{}, line 1: not a corpus header (model, model_sha256, max_new_tokens)", path.display()))?,
            );
            continue;
        }
        match serde_json::from_str::<CorpusEntry>(line.trim_end()) {
            Ok(e) if (1..=e.tokens.len()).contains(&e.prompt_tokens) => entries.push(e),
            Ok(e) => bail!("{}, line {n}: prompt_tokens {} is not in 1..={}", path.display(), e.prompt_tokens, e.tokens.len()),
            // A killed run's half-written last line.
            Err(_) if !whole => torn = true,
            Err(e) => bail!("{}, line {n}: not a corpus entry: {e}", path.display()),
        }
    }
    Ok((header, entries, torn))
}

fn write_all(path: &Path, header: &CorpusHeader, entries: &[CorpusEntry]) -> Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = serde_json::to_string(header)? + "\n";
    for e in entries {
        text.push_str(&serde_json::to_string(e)?);
        text.push('\n');
    }
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The corpus for `prompts` in `path`: read where it exists (the answers already made are kept),
/// completed by greedy answers of `model` for the prompts it lacks. Entries come back in prompt
/// order.
pub fn build_corpus(
    model: &mut LoadedModel,
    header: &CorpusHeader,
    prompts: &[PromptItem],
    path: &Path,
    progress: bool,
) -> Result<Vec<CorpusEntry>> {
    let (old_header, mut entries, torn) = read_corpus(path)?;
    if let Some(h) = &old_header {
        if h != header {
            bail!(
                "{} was made by {} (sha256 {}) with max_new_tokens {}, not by {} with {}: remove it, or use another --out",
                path.display(),
                h.model,
                &h.model_sha256[..h.model_sha256.len().min(12)],
                h.max_new_tokens,
                header.model,
                header.max_new_tokens
            );
        }
    }
    if old_header.is_none() || torn {
        write_all(path, header, &entries)?;
    }
    let done: HashSet<String> = entries.iter().map(|e| e.id.clone()).collect();
    let todo: Vec<&PromptItem> = prompts.iter().filter(|p| !done.contains(&p.id)).collect();
    if !todo.is_empty() {
        let mut file = OpenOptions::new().append(true).open(path).with_context(|| format!("cannot append to {}", path.display()))?;
        let bar = bar(progress, prompts.len(), "corpus");
        bar.set_position((prompts.len() - todo.len()) as u64);
        let stop = StopConfig { max_new_tokens: header.max_new_tokens, eos_token_ids: model.tokenizer.eos_token_ids().to_vec() };
        let mut tokens_made = 0usize;
        let t0 = std::time::Instant::now();
        for p in todo {
            let entry = answer(model, p, &stop)?;
            tokens_made += entry.answer_len();
            let line = serde_json::to_string(&entry)? + "\n";
            file.write_all(line.as_bytes())
                .and_then(|()| file.sync_data())
                .with_context(|| format!("cannot append to {}", path.display()))?;
            entries.push(entry);
            bar.inc(1);
            bar.set_message(format!("{:.1} tok/s", tokens_made as f64 / t0.elapsed().as_secs_f64()));
        }
        bar.finish_and_clear();
    }
    let order: std::collections::HashMap<&str, usize> = prompts.iter().enumerate().map(|(i, p)| (p.id.as_str(), i)).collect();
    entries.retain(|e| order.contains_key(e.id.as_str()));
    entries.sort_by_key(|e| order[e.id.as_str()]);
    Ok(entries)
}

/// The base model's greedy answer to one prompt, in its chat template.
pub fn answer(model: &mut LoadedModel, p: &PromptItem, stop: &StopConfig) -> Result<CorpusEntry> {
    let prompt = prompt_ids(&model.tokenizer, &p.prompt, None, false)?;
    model.model.clear_cache();
    let generation = autoregressive::greedy(&mut model.model, &prompt, stop, &mut |_| {})
        .map_err(|e| anyhow::anyhow!("{}: prompt {}: {e}", model.name, p.id))?;
    let text = model.tokenizer.decode_skip_special(&generation.tokens)?;
    let mut tokens = prompt.clone();
    tokens.extend(&generation.tokens);
    Ok(CorpusEntry { id: p.id.clone(), category: p.category.clone(), prompt_tokens: prompt.len(), tokens, text })
}

/// Rows of hidden states per entry: one per answer position whose next token is an answer
/// token, i.e. positions `prompt_tokens - 1 .. len - 1`.
pub fn rows_of(e: &CorpusEntry) -> usize {
    e.answer_len()
}

/// Hidden states of every entry's answer positions, `(Σ rows, hidden)` f32 on the CPU: row `r`
/// of entry `e` is the state at position `prompt_tokens - 1 + r`, from which the base model
/// predicts token `prompt_tokens + r` and head k token `prompt_tokens + r + 1 + k`.
pub fn hidden_states(model: &mut LoadedModel, corpus: &[CorpusEntry], progress: bool) -> Result<Tensor> {
    let bar = bar(progress, corpus.len(), "hidden states");
    let mut parts = Vec::with_capacity(corpus.len());
    for e in corpus {
        if rows_of(e) == 0 {
            bar.inc(1);
            continue;
        }
        let n = e.tokens.len() - 1;
        let positions: Vec<usize> = (0..n).collect();
        model.model.clear_cache();
        let out = model
            .model
            .forward(&ForwardInput::causal(&e.tokens[..n], &positions, LogitRows::All))
            .map_err(|err| anyhow::anyhow!("{}: corpus entry {}: {err}", model.name, e.id))?;
        let start = e.prompt_tokens - 1;
        let h = out.hidden.squeeze(0)?.narrow(0, start, n - start)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        parts.push(h);
        bar.inc(1);
    }
    bar.finish_and_clear();
    model.model.clear_cache();
    if parts.is_empty() {
        bail!("the corpus has no answer tokens to train on");
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Hash of what the hidden states depend on: the model and every entry's tokens.
pub fn corpus_hash(header: &CorpusHeader, corpus: &[CorpusEntry]) -> String {
    let mut h = Sha256::new();
    h.update(header.model_sha256.as_bytes());
    for e in corpus {
        h.update(e.prompt_tokens.to_le_bytes());
        for t in &e.tokens {
            h.update(t.to_le_bytes());
        }
        h.update([0xff]);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// [`hidden_states`] through a cache file (f16 safetensors keyed by [`corpus_hash`]).
pub fn cached_hidden_states(model: &mut LoadedModel, corpus: &[CorpusEntry], hash: &str, cache: &Path, progress: bool) -> Result<Tensor> {
    let path = cache.join(format!("hidden-{hash}.safetensors"));
    if path.is_file() {
        let mut t = candle_core::safetensors::load(&path, &Device::Cpu).with_context(|| format!("cannot read {}", path.display()))?;
        if let Some(h) = t.remove("hidden") {
            return Ok(h.to_dtype(DType::F32)?);
        }
        bail!("{}: no `hidden` tensor (remove the file to recompute it)", path.display());
    }
    let h = hidden_states(model, corpus, progress)?;
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let map = std::collections::HashMap::from([("hidden".to_string(), h.to_dtype(DType::F16)?)]);
    super::save_safetensors_atomic(&map, &path)?;
    // Train on what the cache holds (f16), so a first run and a cached rerun see the same data.
    Ok(h.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}

//! The self-distillation corpus and its hidden states.
//!
//! - [`build_corpus`]: the base model answers every prompt, greedily, and optionally with more
//!   answers drawn at a temperature, all of a prompt's answers decoded together as the batch
//!   rows of one forward (the prompt is prefilled once). A prompt's answers are appended to
//!   `corpus.jsonl` (token ids and text) as they finish, so a killed run resumes where it
//!   stopped. The hidden states the decoding computed anyway are kept in `cache/hidden/`, one
//!   file per answer, so that they need not be computed a second time.
//! - [`hidden_states`]: the backbone's last hidden state (after the final norm) at every answer
//!   position: what the heads read. Taken from that store, or computed by one teacher-forced
//!   forward per sequence. Cached as one f16 file, so training epochs never rerun the backbone.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use decodebench_strategies::sampler::{argmax, Sampler, SamplingConfig};
use decodebench_strategies::{autoregressive, prefill, BlockAttention, DecoderModel, ForwardInput, LogitRows, StopConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::PromptItem;
use crate::decoding::prompt_ids;
use crate::models::LoadedModel;

pub const CORPUS_FILE: &str = "corpus.jsonl";
/// The folder, in the cache, of the hidden states saved while answering.
pub const HIDDEN_STORE: &str = "hidden";

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

/// The first line of `corpus.jsonl`: what the answers were made with. A corpus of another model,
/// length or sampling is refused rather than mixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusHeader {
    pub model: String,
    pub model_sha256: String,
    pub max_new_tokens: usize,
    /// Answers per prompt: the greedy one, then `samples - 1` drawn at `temperature`.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub samples: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub temperature: f64,
}

pub(crate) fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn is_zero(t: &f64) -> bool {
    *t == 0.0
}

impl CorpusHeader {
    /// The corpus id of a prompt's answer `sample` (0, the greedy answer, keeps the prompt's id).
    pub fn entry_id(prompt_id: &str, sample: usize) -> String {
        if sample == 0 {
            prompt_id.to_string()
        } else {
            format!("{prompt_id}#s{sample}")
        }
    }
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
/// completed by `header.samples` answers of `model` per prompt for the prompts it lacks. Entries
/// come back in prompt order, a prompt's samples in order. With `hidden_store`, the hidden
/// states of each new answer are saved there (see [`hidden_states`]).
pub fn build_corpus(
    model: &mut LoadedModel,
    header: &CorpusHeader,
    prompts: &[PromptItem],
    path: &Path,
    hidden_store: Option<&Path>,
    progress: bool,
) -> Result<Vec<CorpusEntry>> {
    if header.samples == 0 {
        bail!("--samples: must be at least 1");
    }
    if header.samples > 1 && !(header.temperature > 0.0 && header.temperature.is_finite()) {
        bail!("--temperature: more than one sample per prompt needs a temperature > 0, got {}", header.temperature);
    }
    let (old_header, mut entries, torn) = read_corpus(path)?;
    if let Some(h) = &old_header {
        if h != header {
            bail!(
                "{} was made by {} (sha256 {}) with max_new_tokens {}, {} sample(s) per prompt at temperature {}, not by {} with {}, {} at {}: remove it, or use another --out",
                path.display(),
                h.model,
                &h.model_sha256[..h.model_sha256.len().min(12)],
                h.max_new_tokens,
                h.samples,
                h.temperature,
                header.model,
                header.max_new_tokens,
                header.samples,
                header.temperature
            );
        }
    }
    if old_header.is_none() || torn {
        write_all(path, header, &entries)?;
    }
    if let Some(dir) = hidden_store {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let done: HashSet<String> = entries.iter().map(|e| e.id.clone()).collect();
    let missing = |p: &PromptItem| (0..header.samples).any(|s| !done.contains(&CorpusHeader::entry_id(&p.id, s)));
    let todo: Vec<&PromptItem> = prompts.iter().filter(|p| missing(p)).collect();
    if !todo.is_empty() {
        let mut file = OpenOptions::new().append(true).open(path).with_context(|| format!("cannot append to {}", path.display()))?;
        let bar = bar(progress, prompts.len(), "corpus");
        bar.set_position((prompts.len() - todo.len()) as u64);
        let stop = StopConfig { max_new_tokens: header.max_new_tokens, eos_token_ids: model.tokenizer.eos_token_ids().to_vec() };
        let mut tokens_made = 0usize;
        let t0 = std::time::Instant::now();
        for p in todo {
            let answers = answers(model, p, header, &stop)?;
            let mut lines = String::new();
            for (entry, hidden) in answers {
                if done.contains(&entry.id) {
                    continue;
                }
                // The states first: a corpus line whose states are missing is recomputed, never
                // paired with another answer's.
                if let Some(dir) = hidden_store {
                    let map = std::collections::HashMap::from([("hidden".to_string(), hidden)]);
                    super::save_safetensors_atomic(&map, &stored_hidden_path(dir, header, &entry))?;
                }
                tokens_made += entry.answer_len();
                lines.push_str(&(serde_json::to_string(&entry)? + "\n"));
                entries.push(entry);
            }
            file.write_all(lines.as_bytes())
                .and_then(|()| file.sync_data())
                .with_context(|| format!("cannot append to {}", path.display()))?;
            bar.inc(1);
            bar.set_message(format!("{:.1} tok/s", tokens_made as f64 / t0.elapsed().as_secs_f64()));
        }
        bar.finish_and_clear();
    }
    let mut order: std::collections::HashMap<String, (usize, usize)> = std::collections::HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        for s in 0..header.samples {
            order.insert(CorpusHeader::entry_id(&p.id, s), (i, s));
        }
    }
    entries.retain(|e| order.contains_key(&e.id));
    entries.sort_by_key(|e| order[&e.id]);
    Ok(entries)
}

/// A prompt's `header.samples` answers, decoded together: the prompt is prefilled once and its
/// cache copied to one batch row per answer; row 0 takes the arg-max, the others draw at the
/// temperature (seeded by the prompt id, so a rerun makes the same answers). Rows leave the
/// batch when they stop. Each answer comes with the hidden states the decoding computed at its
/// answer positions, `(answer_len, hidden)` f16 on the CPU.
pub fn answers(model: &mut LoadedModel, p: &PromptItem, header: &CorpusHeader, stop: &StopConfig) -> Result<Vec<(CorpusEntry, Tensor)>> {
    let err = |e: candle_core::Error| anyhow::anyhow!("{}: prompt {}: {e}", model.name, p.id);
    let prompt = prompt_ids(&model.tokenizer, &p.prompt, None, false)?;
    let max_context = model.model.info().max_context;
    if prompt.len() + stop.max_new_tokens > max_context {
        bail!(
            "{}: prompt {} has {} tokens: with {} new ones it overflows the context of {max_context}",
            model.name,
            p.id,
            prompt.len(),
            stop.max_new_tokens
        );
    }
    let seed = u64::from_le_bytes(Sha256::digest(p.id.as_bytes())[..8].try_into().expect("8 bytes"));
    let mut sampler = Sampler::new(SamplingConfig { temperature: header.temperature, top_k: None, top_p: None, seed });
    let b = header.samples;
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); b];
    let mut states: Vec<Vec<Tensor>> = vec![Vec::new(); b];
    let pick = |row: usize, logits: &[f32], sampler: &mut Sampler| -> u32 {
        if row == 0 {
            argmax(logits)
        } else {
            let probs = sampler.distribution(logits);
            sampler.sample(&probs)
        }
    };
    model.model.clear_cache();
    let (out, _) = prefill(&mut model.model, &prompt).map_err(err)?;
    let logits = out.logits.flatten_all().map_err(err)?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    let h0 = out.hidden.flatten_all().map_err(err)?.to_device(&Device::Cpu)?;
    for row in 0..b {
        tokens[row].push(pick(row, &logits, &mut sampler));
        states[row].push(h0.clone());
    }
    let finished = |t: &[u32]| t.len() >= stop.max_new_tokens || t.last().is_some_and(|&x| stop.is_eos(x));
    let mut active: Vec<usize> = (0..b).filter(|&r| !finished(&tokens[r])).collect();
    if !active.is_empty() {
        model.model.reorder_cache(&vec![0; active.len()]).map_err(err)?;
    }
    while !active.is_empty() {
        // Every row still running has as many tokens as every other.
        let position = prompt.len() + tokens[active[0]].len() - 1;
        let last: Vec<u32> = active.iter().map(|&r| *tokens[r].last().expect("one token at least")).collect();
        let out = model
            .model
            .forward(&ForwardInput {
                tokens: &last,
                batch: active.len(),
                positions: &[position],
                attention: &BlockAttention::Causal,
                rows: LogitRows::Last,
            })
            .map_err(err)?;
        let logits = out.logits.squeeze(1).map_err(err)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        let hidden = out.hidden.squeeze(1).map_err(err)?.to_device(&Device::Cpu)?;
        for (i, &row) in active.iter().enumerate() {
            tokens[row].push(pick(row, &logits[i], &mut sampler));
            states[row].push(hidden.get(i)?);
        }
        let keep: Vec<usize> = (0..active.len()).filter(|&i| !finished(&tokens[active[i]])).collect();
        if keep.len() < active.len() && !keep.is_empty() {
            model.model.reorder_cache(&keep).map_err(err)?;
        }
        active = keep.iter().map(|&i| active[i]).collect();
    }
    model.model.clear_cache();
    let mut out = Vec::with_capacity(b);
    for (row, (answer, hidden)) in tokens.into_iter().zip(states).enumerate() {
        let text = model.tokenizer.decode_skip_special(&answer)?;
        let mut all = prompt.clone();
        all.extend(&answer);
        let entry = CorpusEntry {
            id: CorpusHeader::entry_id(&p.id, row),
            category: p.category.clone(),
            prompt_tokens: prompt.len(),
            tokens: all,
            text,
        };
        out.push((entry, Tensor::stack(&hidden, 0)?.to_dtype(DType::F16)?));
    }
    Ok(out)
}

/// Where [`build_corpus`] keeps an answer's hidden states: named by the model and the tokens, so
/// a file never stands for another answer.
fn stored_hidden_path(dir: &Path, header: &CorpusHeader, e: &CorpusEntry) -> std::path::PathBuf {
    let mut h = Sha256::new();
    h.update(header.model_sha256.as_bytes());
    h.update(e.prompt_tokens.to_le_bytes());
    for t in &e.tokens {
        h.update(t.to_le_bytes());
    }
    let name: String = h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.safetensors"))
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
///
/// With `store` (the folder [`build_corpus`] saved states in, and the corpus header), an
/// answer's states are read from there when its file exists; the others are computed.
pub fn hidden_states(
    model: &mut LoadedModel,
    corpus: &[CorpusEntry],
    store: Option<(&Path, &CorpusHeader)>,
    progress: bool,
) -> Result<Tensor> {
    let bar = bar(progress, corpus.len(), "hidden states");
    let mut parts = Vec::with_capacity(corpus.len());
    let width = model.model.info().hidden_size;
    for e in corpus {
        if rows_of(e) == 0 {
            bar.inc(1);
            continue;
        }
        if let Some((dir, header)) = store {
            let path = stored_hidden_path(dir, header, e);
            if path.is_file() {
                let h = candle_core::safetensors::load(&path, &Device::Cpu)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .remove("hidden")
                    .with_context(|| format!("{}: no `hidden` tensor (remove the file to recompute it)", path.display()))?;
                if h.dims() != [rows_of(e), width] {
                    bail!(
                        "{}: hidden states of shape {:?}, not ({}, {width}) for corpus entry {} (remove the file to recompute it)",
                        path.display(),
                        h.dims(),
                        rows_of(e),
                        e.id
                    );
                }
                parts.push(h.to_dtype(DType::F32)?);
                bar.inc(1);
                continue;
            }
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
pub fn cached_hidden_states(
    model: &mut LoadedModel,
    corpus: &[CorpusEntry],
    header: &CorpusHeader,
    hash: &str,
    cache: &Path,
    progress: bool,
) -> Result<Tensor> {
    let path = cache.join(format!("hidden-{hash}.safetensors"));
    if path.is_file() {
        let mut t = candle_core::safetensors::load(&path, &Device::Cpu).with_context(|| format!("cannot read {}", path.display()))?;
        if let Some(h) = t.remove("hidden") {
            return Ok(h.to_dtype(DType::F32)?);
        }
        bail!("{}: no `hidden` tensor (remove the file to recompute it)", path.display());
    }
    let h = hidden_states(model, corpus, Some((&cache.join(HIDDEN_STORE), header)), progress)?;
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let map = std::collections::HashMap::from([("hidden".to_string(), h.to_dtype(DType::F16)?)]);
    super::save_safetensors_atomic(&map, &path)?;
    // Train on what the cache holds (f16), so a first run and a cached rerun see the same data.
    Ok(h.to_dtype(DType::F16)?.to_dtype(DType::F32)?)
}

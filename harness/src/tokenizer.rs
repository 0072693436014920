//! Text tokenizer for the models the harness runs: byte-level BPE built from GGUF metadata or
//! loaded from a Hugging Face `tokenizer.json`, plus chat-prompt rendering and streaming decode.
//!
//! Why not candle's `TokenizerFromGguf`: candle 0.11 maps `tokenizer.ggml.pre = "smollm"` to the
//! plain GPT-2 pipeline with a prefix space, so `<|im_start|>system` encodes differently from the
//! model's own tokenizer. Here every supported pre-tokenizer name maps to the pipeline of the
//! model's original `tokenizer.json`, and unknown names are an error instead of a silent fallback.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Qwen2 / Qwen2.5 split regex, verbatim from Qwen2.5's `tokenizer.json`: single digits,
/// letters with one optional leading non-letter, punctuation runs with trailing newlines.
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3 split regex (also llama.cpp's "smaug-bpe"): like Qwen2 but digits in groups of 1-3.
const LLAMA3_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// One chat turn, as chat templates see it (`message['role']`, `message['content']`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A chat template plus where it came from (named in render errors).
#[derive(Debug, Clone)]
struct ChatTemplate {
    source: String,
    text: String,
}

/// A tokenizer plus the special-token facts generation needs (BOS, stop tokens, chat template).
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Arc<Tokenizer>,
    /// What this tokenizer was loaded from, for error messages.
    origin: String,
    bos_token_id: Option<u32>,
    eos_token_ids: Vec<u32>,
    pad_token_id: Option<u32>,
    add_bos: bool,
    chat_template: Option<ChatTemplate>,
}

impl std::fmt::Debug for TextTokenizer {
    // The wrapped tokenizer's Debug would print the whole vocabulary.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.as_ref().map(|t| &t.source))
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF metadata helpers
// ---------------------------------------------------------------------------------------------

fn gguf_get<'a>(content: &'a gguf_file::Content, path: &Path, key: &str) -> Result<&'a gguf_file::Value> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| anyhow!("{}: GGUF metadata key `{key}` is missing (no tokenizer in this file?)", path.display()))
}

fn gguf_string<'a>(value: &'a gguf_file::Value, path: &Path, key: &str) -> Result<&'a str> {
    match value {
        gguf_file::Value::String(s) => Ok(s),
        other => bail!("{}: GGUF metadata `{key}` should be a string, found {:?}", path.display(), other.value_type()),
    }
}

/// Any GGUF integer as i64 (token ids and token types are stored as u32 or i32 depending on
/// the converter version).
fn gguf_int(value: &gguf_file::Value) -> Option<i64> {
    use gguf_file::Value as V;
    Some(match value {
        V::U8(v) => *v as i64,
        V::I8(v) => *v as i64,
        V::U16(v) => *v as i64,
        V::I16(v) => *v as i64,
        V::U32(v) => *v as i64,
        V::I32(v) => *v as i64,
        V::U64(v) => i64::try_from(*v).ok()?,
        V::I64(v) => *v,
        _ => return None,
    })
}

fn gguf_array<'a>(content: &'a gguf_file::Content, path: &Path, key: &str) -> Result<&'a [gguf_file::Value]> {
    match gguf_get(content, path, key)? {
        gguf_file::Value::Array(items) => Ok(items),
        other => bail!("{}: GGUF metadata `{key}` should be an array, found {:?}", path.display(), other.value_type()),
    }
}

fn gguf_string_array(content: &gguf_file::Content, path: &Path, key: &str) -> Result<Vec<String>> {
    gguf_array(content, path, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            gguf_file::Value::String(s) => Ok(s.clone()),
            other => bail!("{}: GGUF metadata `{key}`[{i}] should be a string, found {:?}", path.display(), other.value_type()),
        })
        .collect()
}

/// Optional token-id key (e.g. `tokenizer.ggml.bos_token_id`); present but malformed or out of
/// range is an error rather than silently ignored.
fn gguf_token_id(content: &gguf_file::Content, path: &Path, key: &str, vocab_size: usize) -> Result<Option<u32>> {
    let Some(value) = content.metadata.get(key) else {
        return Ok(None);
    };
    let id = gguf_int(value)
        .ok_or_else(|| anyhow!("{}: GGUF metadata `{key}` should be an integer, found {:?}", path.display(), value.value_type()))?;
    if id < 0 || id as u64 >= vocab_size as u64 {
        bail!("{}: GGUF metadata `{key}` = {id} is outside the vocabulary (size {vocab_size})", path.display());
    }
    Ok(Some(id as u32))
}

fn gguf_bool(content: &gguf_file::Content, path: &Path, key: &str) -> Result<Option<bool>> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(gguf_file::Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => bail!("{}: GGUF metadata `{key}` should be a bool, found {:?}", path.display(), other.value_type()),
    }
}

/// The normalizer and pre-tokenizer each `tokenizer.ggml.pre` value stands for. These mirror the
/// `tokenizer.json` of the model family the GGUF converter recognised. `Ok(None)` = unknown name.
fn pipeline_for_pre(pre: &str) -> tokenizers::Result<Option<(Option<NFC>, PreTokenizerWrapper)>> {
    // Split with a regex, then map bytes to GPT-2's printable alphabet without re-splitting.
    let split_then_bytes = |pattern: &str| -> tokenizers::Result<PreTokenizerWrapper> {
        let split = Split::new(SplitPattern::Regex(pattern.to_string()), SplitDelimiterBehavior::Isolated, false)?;
        Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
        ])))
    };
    Ok(Some(match pre {
        // Qwen2/2.5: NFC, Qwen regex (single digits), byte-level without its own regex.
        "qwen2" => (Some(NFC), split_then_bytes(QWEN2_PATTERN)?),
        // SmolLM/SmolLM2's tokenizer.json: every digit on its own, then GPT-2 byte-level with
        // its GPT-2 regex and no prefix space. No normalizer.
        "smollm" => (
            None,
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
            ])),
        ),
        "llama3" | "llama-bpe" | "smaug-bpe" => (None, split_then_bytes(LLAMA3_PATTERN)?),
        // Plain GPT-2: its regex inside ByteLevel, no prefix space (GPT-2's tokenizer.json and
        // llama.cpp both leave the first word unprefixed).
        "gpt2" | "default" => (None, PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))),
        _ => return Ok(None),
    }))
}

/// Built-in ChatML, used when a model ships no template.
fn chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HF folder helpers
// ---------------------------------------------------------------------------------------------

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{}: invalid JSON: {e}", path.display()))
}

fn read_json_if_exists(path: &Path) -> Result<Option<serde_json::Value>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// `tokenizer_config.json` writes special tokens either as `"<s>"` or as an AddedToken object
/// `{"content": "<s>", ...}`.
fn token_text(value: &serde_json::Value) -> Option<&str> {
    match value {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(map) => map.get("content").and_then(|c| c.as_str()),
        _ => None,
    }
}

/// `eos_token_id` in generation_config.json / config.json is an int or a list of ints.
fn json_ids(value: &serde_json::Value) -> Vec<u32> {
    match value {
        serde_json::Value::Number(n) => n.as_u64().map(|v| v as u32).into_iter().collect(),
        serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// TextTokenizer
// ---------------------------------------------------------------------------------------------

impl TextTokenizer {
    /// Build a byte-level BPE tokenizer from a GGUF file's `tokenizer.*` metadata.
    /// `path` is only used in error messages.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let p = path.display();
        let model = gguf_string(gguf_get(content, path, "tokenizer.ggml.model")?, path, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            bail!("{p}: tokenizer.ggml.model = {model:?} is not supported (only \"gpt2\" byte-level BPE)");
        }

        let tokens = gguf_string_array(content, path, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            bail!("{p}: GGUF metadata `tokenizer.ggml.tokens` is empty");
        }
        let merges = gguf_string_array(content, path, "tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => {
                    bail!("{p}: GGUF metadata `tokenizer.ggml.merges`[{i}] = {m:?} has no space")
                }
            })
            .collect::<Result<Vec<_>>>()?;

        // Token types are optional in principle; without them no token is special.
        let token_types: Vec<i64> = match content.metadata.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(_) => gguf_array(content, path, "tokenizer.ggml.token_type")?
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    gguf_int(v).ok_or_else(|| {
                        anyhow!("{p}: GGUF metadata `tokenizer.ggml.token_type`[{i}] should be an integer, found {:?}", v.value_type())
                    })
                })
                .collect::<Result<_>>()?,
        };
        if token_types.len() != tokens.len() {
            bail!(
                "{p}: GGUF metadata `tokenizer.ggml.token_type` has {} entries but `tokenizer.ggml.tokens` has {}",
                token_types.len(),
                tokens.len()
            );
        }

        // Older converters omit `pre`; llama.cpp treats that as "default".
        let pre = match content.metadata.get("tokenizer.ggml.pre") {
            Some(v) => gguf_string(v, path, "tokenizer.ggml.pre")?,
            None => "default",
        };
        let (normalizer, pre_tokenizer) =
            pipeline_for_pre(pre).map_err(|e| anyhow!("{p}: cannot build the {pre:?} pre-tokenizer: {e}"))?.ok_or_else(|| {
                anyhow!(
                "{p}: tokenizer.ggml.pre = {pre:?} is not supported (known: qwen2, smollm, llama3, llama-bpe, smaug-bpe, gpt2, default)"
            )
            })?;

        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            // llama.cpp looks whole llama3 pre-tokens up in the vocabulary before merging.
            .ignore_merges(matches!(pre, "llama3" | "llama-bpe"))
            .build()
            .map_err(|e| anyhow!("{p}: cannot build BPE from tokenizer.ggml.tokens/merges: {e}"))?;

        let mut tokenizer = Tokenizer::new(bpe);
        if let Some(nfc) = normalizer {
            tokenizer.with_normalizer(Some(nfc)).map_err(|e| anyhow!("{p}: cannot set normalizer: {e}"))?;
        }
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.with_decoder(Some(ByteLevel::new(false, false, false)));

        // Control and user-defined tokens (<|im_start|>, <|endoftext|>, <tool_call>...) must be
        // matched whole in the input text before BPE, as the original tokenizers do.
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, ty)| matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        tokenizer.add_special_tokens(special).map_err(|e| anyhow!("{p}: cannot register control tokens: {e}"))?;

        let n = tokens.len();
        let bos_token_id = gguf_token_id(content, path, "tokenizer.ggml.bos_token_id", n)?;
        let eos = gguf_token_id(content, path, "tokenizer.ggml.eos_token_id", n)?;
        let eot = gguf_token_id(content, path, "tokenizer.ggml.eot_token_id", n)?;
        let pad_token_id = gguf_token_id(content, path, "tokenizer.ggml.padding_token_id", n)?;
        let add_bos = gguf_bool(content, path, "tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        let chat_template = match content.metadata.get("tokenizer.chat_template") {
            None => None,
            Some(v) => Some(ChatTemplate {
                source: format!("{p} (GGUF tokenizer.chat_template)"),
                text: gguf_string(v, path, "tokenizer.chat_template")?.to_string(),
            }),
        };

        let mut out = Self {
            inner: Arc::new(tokenizer),
            origin: p.to_string(),
            bos_token_id,
            eos_token_ids: Vec::new(),
            pad_token_id,
            add_bos: add_bos && bos_token_id.is_some(),
            chat_template,
        };
        out.eos_token_ids = out.stop_ids(eos.into_iter().chain(eot));
        Ok(out)
    }

    /// Read a GGUF file's header and build its tokenizer (convenience over
    /// [`from_gguf`](Self::from_gguf) when the model weights are loaded elsewhere).
    pub fn from_gguf_path(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| anyhow!("{}: cannot open: {e}", path.display()))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
        Self::from_gguf(&content, path)
    }

    /// Load `tokenizer.json` from a Hugging Face model folder, with BOS/EOS and the chat template
    /// from `tokenizer_config.json` (+ `chat_template.jinja`) and `generation_config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            bail!("{}: not found (not a Hugging Face tokenizer folder?)", tok_path.display());
        }
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", tok_path.display()))?;

        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json_if_exists(&cfg_path)?.unwrap_or(serde_json::Value::Null);
        let gen = read_json_if_exists(&dir.join("generation_config.json"))?.unwrap_or(serde_json::Value::Null);
        let model_cfg = read_json_if_exists(&dir.join("config.json"))?.unwrap_or(serde_json::Value::Null);

        let lookup = |v: &serde_json::Value| token_text(v).and_then(|t| tokenizer.token_to_id(t));
        let bos_token_id = cfg
            .get("bos_token")
            .and_then(lookup)
            .or_else(|| json_ids(gen.get("bos_token_id")?).first().copied())
            .or_else(|| json_ids(model_cfg.get("bos_token_id")?).first().copied());

        // Stop tokens: generation_config's list is what HF generate() uses; the tokenizer's
        // eos_token is added in case the two disagree (they do for some instruct models).
        let mut eos: Vec<u32> = gen.get("eos_token_id").map(json_ids).unwrap_or_default();
        if eos.is_empty() {
            eos = model_cfg.get("eos_token_id").map(json_ids).unwrap_or_default();
        }
        eos.extend(cfg.get("eos_token").and_then(lookup));
        let pad_token_id = cfg.get("pad_token").and_then(lookup);

        // Newer HF repos keep the template in chat_template.jinja; older ones in
        // tokenizer_config.json, either as a string or as a list of named templates.
        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = if jinja_path.exists() {
            let text = std::fs::read_to_string(&jinja_path).map_err(|e| anyhow!("{}: cannot read: {e}", jinja_path.display()))?;
            Some(ChatTemplate { source: jinja_path.display().to_string(), text })
        } else {
            let source = format!("{} (chat_template)", cfg_path.display());
            match cfg.get("chat_template") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(ChatTemplate { source, text: s.clone() }),
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str())
                    .map(|s| ChatTemplate { source, text: s.to_string() }),
                Some(_) => bail!("{}: `chat_template` should be a string or a list of named templates", cfg_path.display()),
            }
        };

        // Whether plain encoding starts with BOS: tokenizer_config's flag if present, else
        // whatever tokenizer.json's post-processor does (Llama 3's TemplateProcessing adds it).
        let add_bos = match cfg.get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(b) => b,
            None => match bos_token_id {
                Some(bos) => tokenizer.encode_fast("a", true).map(|e| e.get_ids().first() == Some(&bos)).unwrap_or(false),
                None => false,
            },
        };

        let mut out = Self {
            inner: Arc::new(tokenizer),
            origin: dir.display().to_string(),
            bos_token_id,
            eos_token_ids: Vec::new(),
            pad_token_id,
            add_bos: add_bos && bos_token_id.is_some(),
            chat_template,
        };
        out.eos_token_ids = out.stop_ids(eos);
        Ok(out)
    }

    /// The metadata EOS ids plus the end-of-turn tokens of ChatML models: an instruct model ends
    /// its answer with `<|im_end|>` (and Qwen may emit `<|endoftext|>`), and generation must stop
    /// there even when the metadata names only one of them.
    fn stop_ids(&self, from_metadata: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::new();
        let mut push = |id: u32| {
            if !ids.contains(&id) {
                ids.push(id)
            }
        };
        from_metadata.into_iter().for_each(&mut push);
        if let Some(im_end) = self.token_to_id("<|im_end|>") {
            push(im_end);
            if let Some(eot) = self.token_to_id("<|endoftext|>") {
                push(eot);
            }
        }
        ids
    }

    /// Encode text. Special tokens written in the text (e.g. `<|im_start|>`) become their ids.
    /// BOS is prepended only when the model asks for it (`tokenizer.ggml.add_bos_token`,
    /// `add_bos_token`), and not twice if the text (e.g. a rendered chat template) already
    /// starts with it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| anyhow!("{}: encoding failed: {e}", self.origin))?;
        let mut ids = encoding.get_ids().to_vec();
        if let (true, Some(bos)) = (self.add_bos, self.bos_token_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Decode ids back to text, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_impl(ids, false)
    }

    /// Decode ids back to text, dropping special tokens (`<|im_end|>` etc.).
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        self.decode_impl(ids, true)
    }

    fn decode_impl(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        // The tokenizers crate silently drops unknown ids; an id past the vocabulary is a bug
        // upstream (wrong model/tokenizer pair) and should be loud.
        let n = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= n) {
            bail!("{}: cannot decode token id {bad}: outside the vocabulary (size {n})", self.origin);
        }
        self.inner.decode(ids, skip_special).map_err(|e| anyhow!("{}: decoding failed: {e}", self.origin))
    }

    /// Ids at which generation must stop (EOS and end-of-turn tokens), deduplicated.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    /// Whether `encode` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of ids, added tokens included (the model's embedding table may be larger).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The model's own chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_ref().map(|t| t.text.as_str())
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Render a conversation to prompt text with the model's chat template, or built-in ChatML
    /// when it has none. With `add_generation_prompt` the text ends with the opening of an
    /// assistant turn. Encode the result with [`encode`](Self::encode).
    pub fn chat_prompt(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let Some(template) = &self.chat_template else {
            if self.token_to_id("<|im_start|>").is_none() || self.token_to_id("<|im_end|>").is_none() {
                bail!("{}: no chat template and no <|im_start|>/<|im_end|> tokens for built-in ChatML", self.origin);
            }
            return Ok(chatml(messages, add_generation_prompt));
        };

        // Configured like transformers' apply_chat_template: trim_blocks + lstrip_blocks,
        // python string methods, raise_exception().
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| anyhow!("chat template {}: {e}", template.source))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<minijinja::Value, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });

        let tmpl = env
            .template_from_named_str("chat_template", &template.text)
            .map_err(|e| anyhow!("chat template {}: cannot parse: {e}", template.source))?;
        let msgs: Vec<minijinja::Value> =
            messages.iter().map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() }).collect();
        let token_str = |id: Option<u32>| id.and_then(|i| self.id_to_token(i)).unwrap_or_default();
        let ctx = minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => token_str(self.bos_token_id),
            eos_token => token_str(self.eos_token_ids.first().copied()),
        };
        tmpl.render(ctx).map_err(|e| anyhow!("chat template {}: render failed: {e}", template.source))
    }

    /// Start incremental decoding of generated ids (special tokens kept, like `decode`).
    pub fn stream(&self) -> TokenStream {
        TokenStream::new(self.clone(), false)
    }

    /// Like [`stream`](Self::stream) but drops special tokens from the text.
    pub fn stream_skip_special(&self) -> TokenStream {
        TokenStream::new(self.clone(), true)
    }
}

/// Incremental detokenizer: feed generated ids one at a time, get back the text they complete.
///
/// A character can span several byte-level tokens (an emoji is often 2-4 tokens), and decoding
/// a partial character yields U+FFFD. So each push decodes the ids and emits only the stable
/// new suffix, holding text back while it ends in an incomplete character. To keep a push O(1)
/// in the generation length, it decodes from `prefix_offset` (the start of the last emitted
/// piece) rather than from the first id, and diffs against the decode of the already-emitted
/// part; keeping one emitted piece as context also keeps decoders that strip a leading space
/// (sentencepiece-style `tokenizer.json`s) from mangling the window.
pub struct TokenStream {
    tokenizer: TextTokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the decode window: ids before it are emitted and no longer needed as context.
    prefix_offset: usize,
    /// Ids before this have been emitted as text.
    read_offset: usize,
}

impl TokenStream {
    fn new(tokenizer: TextTokenizer, skip_special: bool) -> Self {
        Self { tokenizer, skip_special, ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }

    /// Add one id; returns the newly completed text, if any. A bad id (outside the vocabulary)
    /// is an error and is not kept, so the stream stays usable.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        match self.new_text(false) {
            Ok(piece) => Ok(piece),
            Err(e) => {
                self.ids.pop();
                Err(e)
            }
        }
    }

    /// Flush whatever is left (including an incomplete trailing character, as U+FFFD).
    pub fn finish(&mut self) -> Result<Option<String>> {
        self.new_text(true)
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    fn new_text(&mut self, flush: bool) -> Result<Option<String>> {
        if self.read_offset == self.ids.len() {
            return Ok(None);
        }
        let decode = |ids: &[u32]| self.tokenizer.decode_impl(ids, self.skip_special);
        let prefix_text = decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full_text = decode(&self.ids[self.prefix_offset..])?;
        if full_text.len() <= prefix_text.len() || (!flush && full_text.ends_with('\u{FFFD}')) {
            // Nothing visible yet, or probably the first bytes of a multi-byte character.
            return Ok(None);
        }
        let Some(piece) = full_text.strip_prefix(prefix_text.as_str()) else {
            bail!("{}: streaming decode is not append-only here ({prefix_text:?} -> {full_text:?})", self.tokenizer.origin);
        };
        let piece = piece.to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(Some(piece))
    }
}

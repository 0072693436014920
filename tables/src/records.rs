//! What the runner writes as it goes, and reads back on `--resume` and `merge`.
//!
//! A results folder holds:
//! - `records.jsonl`: one [`UnitRecord`] per line, appended (and fsynced) as each unit finishes,
//!   so a killed run loses at most the unit in flight; a torn last line is dropped on reading;
//! - `meta.json`: [`RunMeta`], the run's config, expanded sweep, models, machine and times;
//! - `calibration.json`: [`Calibration`], each model's forward-cost curve on this machine (after
//!   `merge`, each shard's machine's too).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use decodebench_strategies::StepRecord;
use serde::{Deserialize, Serialize};

pub const RECORDS_FILE: &str = "records.jsonl";
pub const META_FILE: &str = "meta.json";
pub const CALIBRATION_FILE: &str = "calibration.json";

/// One strategy configuration of the sweep (the greedy baseline is one too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigKey {
    /// Registry name: `greedy`, `sample`, `beam`, `speculative`, `medusa`, `lookup`, ...
    pub strategy: String,
    /// Every parameter, defaults filled in, `name=value` joined by `,` in name order
    /// (e.g. `accept=greedy,gamma=4,p_min=none,schedule=constant`); empty for greedy.
    pub config: String,
    /// The same parameters as values.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Must be token-identical to greedy decoding.
    pub lossless: bool,
}

impl ConfigKey {
    /// `strategy` or `strategy[config]`: unique within a run.
    pub fn id(&self) -> String {
        if self.config.is_empty() {
            self.strategy.clone()
        } else {
            format!("{}[{}]", self.strategy, self.config)
        }
    }
}

/// One answered turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRecord {
    /// 1-based.
    pub turn: usize,
    pub prompt_tokens: usize,
    /// Leading prompt tokens the target's cache already held from the conversation's earlier
    /// turns (`prefix_cache`), which the prompt forward skipped; 0 without it.
    #[serde(default)]
    pub reused_prompt_tokens: usize,
    pub new_tokens: usize,
    pub token_ids: Vec<u32>,
    /// The answer, special tokens skipped.
    pub text: String,
    /// `eos`, `max_tokens` or `context_full`.
    pub stop: String,
    /// The whole call as the runner timed it (device synchronised on both sides).
    pub wall_s: f64,
    /// The strategy's own split of that call.
    pub prefill_s: f64,
    pub decode_s: f64,
    /// Target forwards, the prompt forward included.
    pub target_forwards: usize,
    /// The target's mean negative log-likelihood per token of this answer (teacher-forced, not
    /// timed); None for an empty answer.
    pub nll_per_token: Option<f64>,
    pub steps: Vec<StepRecord>,
}

/// One finished unit: a configuration on one question, one repeat, every turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// Hash of (config id, question id, repeat): the resume key.
    pub unit: String,
    #[serde(flatten)]
    pub key: ConfigKey,
    pub question_id: String,
    pub category: String,
    /// 0-based.
    pub repeat: usize,
    /// Peak resident set of the process during this unit, MiB.
    pub peak_rss_mb: f64,
    pub turns: Vec<TurnRecord>,
}

/// One model the run used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// `target`, `draft` or `heads`.
    pub role: String,
    /// As named in the config.
    pub name: String,
    pub path: String,
    /// sha256 of the weights file (heads: of the heads file; `random:K`: none).
    pub sha256: Option<String>,
    pub quantization: Option<String>,
}

/// The machine a run (or shard) ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineMeta {
    pub hostname: String,
    pub cpu: String,
    /// SIMD features the CPU has (run-time detection).
    pub simd: Vec<String>,
    /// Target features compiled into this binary.
    pub target_features: Vec<String>,
    pub threads: usize,
    pub device: String,
    /// Weight conversions done at load, e.g. `Q5_0 → Q8_0 (exact)`.
    #[serde(default)]
    pub conversions: Vec<String>,
    /// Set by a scheduler (Slurm's node and GPU), when there is one.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub gpu: Option<String>,
    /// The CPU kernels' SIMD path (`avx512vnni`, ...), with why when not the best the CPU has;
    /// absent in runs from before it was recorded.
    #[serde(default)]
    pub kernel_path: Option<String>,
}

/// The run's metadata (`meta.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// The config file as given, and its text.
    pub config_path: String,
    pub config_text: String,
    /// Hash of the expanded sweep (configs, questions, turns, tokens, repeats, seed): resuming
    /// with another is refused.
    pub sweep_hash: String,
    pub configs: Vec<ConfigKey>,
    /// Question ids of this run (this shard's only, when sharded).
    pub questions: Vec<String>,
    pub turns: usize,
    pub max_new_tokens: usize,
    pub repeats: usize,
    pub warmup: usize,
    pub seed: u64,
    /// The KV cache kept between the turns of a conversation (`[run] prefix_cache`).
    #[serde(default)]
    pub prefix_cache: bool,
    /// `K/N` when sharded.
    pub shard: Option<String>,
    pub models: Vec<ModelMeta>,
    /// Which Medusa heads were used and why (`shipped for <model>` or `random:K: no shipped heads`).
    pub heads_note: Option<String>,
    pub git_commit: Option<String>,
    pub decodebench_version: String,
    pub machine: MachineMeta,
    /// RFC 3339 (UTC).
    pub started: String,
    pub ended: Option<String>,
    /// The shards merged into this folder (`merge`), each with its machine.
    #[serde(default)]
    pub merged_from: Vec<ShardMeta>,
    /// Machines an earlier start of this run (or shard) ran on, where a resume (a requeued
    /// Slurm task, say) came back on other hardware: units from before and after the restart
    /// were timed on different machines.
    #[serde(default)]
    pub earlier_machines: Vec<MachineMeta>,
    /// Why this folder is not the whole sweep (`merge --allow-partial`: the shards missing or
    /// incomplete), one line each; empty when it is whole.
    #[serde(default)]
    pub partial: Vec<String>,
}

impl MachineMeta {
    /// Same hardware as far as timings go: CPU, SIMD, compiled features, threads, device, GPU
    /// (the host name and node aside: two identical nodes time alike).
    pub fn same_hardware(&self, other: &MachineMeta) -> bool {
        self.cpu == other.cpu
            && self.simd == other.simd
            && self.target_features == other.target_features
            && self.threads == other.threads
            && self.device == other.device
            && self.gpu == other.gpu
            && !self.kernel_paths_differ(other)
    }

    /// Both runs recorded their CPU kernels' path and the two differ (an unknown path, from a run
    /// older than the field, differs from none).
    pub fn kernel_paths_differ(&self, other: &MachineMeta) -> bool {
        matches!((&self.kernel_path, &other.kernel_path), (Some(a), Some(b)) if a != b)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    pub dir: String,
    pub shard: Option<String>,
    pub machine: MachineMeta,
    pub started: String,
    pub ended: Option<String>,
    /// The shard's own [`RunMeta::earlier_machines`].
    #[serde(default)]
    pub earlier_machines: Vec<MachineMeta>,
    /// The commit the shard ran (its [`RunMeta::git_commit`]).
    #[serde(default)]
    pub git_commit: Option<String>,
}

/// One model's forward-cost curve (`decodebench calibrate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostCurve {
    /// Cache length the forwards ran on.
    pub context: usize,
    /// Median milliseconds of one forward over N block tokens, by N.
    pub forward_ms: BTreeMap<usize, f64>,
    pub bandwidth_gbs: Option<f64>,
}

/// `calibration.json`: the curve of every model the run used, by role (`target`, `draft`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The run's curves; after `merge`, the first shard's (the `calibration` table shows these).
    pub models: BTreeMap<String, CostCurve>,
    /// After `merge`: every shard's own curves with the questions it ran, so that each shard's
    /// steps are predicted with the curves of the machine that ran them. Empty for a run that
    /// was not merged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardCalibration>,
}

/// One merged shard's curves (empty when the shard had no `calibration.json`: its
/// configurations then get no prediction rather than another machine's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardCalibration {
    /// `K/N`.
    pub shard: String,
    pub questions: Vec<String>,
    pub models: BTreeMap<String, CostCurve>,
}

impl Calibration {
    /// The curves that apply to `question_id`: its shard's after a merge, else the run's.
    pub fn curves_for(&self, question_id: &str) -> &BTreeMap<String, CostCurve> {
        self.shards.iter().find(|s| s.questions.iter().any(|q| q == question_id)).map_or(&self.models, |s| &s.models)
    }

    /// No curves at all: no predictions.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty() && self.shards.iter().all(|s| s.models.is_empty())
    }
}

/// Appends unit records to `records.jsonl`, one fsynced line each.
pub struct RecordWriter {
    file: File,
    path: PathBuf,
}

impl RecordWriter {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(RECORDS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        Ok(Self { file, path })
    }

    pub fn append(&mut self, record: &UnitRecord) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot append to {}", self.path.display()))
    }
}

/// What [`read_records`] found.
#[derive(Debug, Default)]
pub struct RecordSet {
    pub records: Vec<UnitRecord>,
    /// A last line that was cut off mid-write (a killed run), dropped.
    pub torn_tail: bool,
}

/// Reads `dir/records.jsonl` (missing: no records). A line that does not parse is an error,
/// naming the file and line, unless it is the last one and unterminated: that is a write a
/// killed run left half done, and it is dropped.
pub fn read_records(dir: &Path) -> Result<RecordSet> {
    let path = dir.join(RECORDS_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RecordSet::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut set = RecordSet::default();
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut line_no = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let terminated = line.ends_with('\n');
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<UnitRecord>(line.trim_end()) {
            Ok(r) => set.records.push(r),
            Err(_) if !terminated => set.torn_tail = true,
            Err(e) => anyhow::bail!("{}, line {line_no}: not a unit record: {e}", path.display()),
        }
    }
    Ok(set)
}

/// Writes `value` as pretty JSON to `path` through a temporary file and a rename, so a reader
/// never sees half a file.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(value)?).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid", path.display()))
}

//! Medusa heads made here: `train-heads` (the Medusa-1 recipe by self-distillation, backbone
//! frozen) and `eval-heads` (per-head top-k accuracy against the base model's own greedy
//! continuation).
//!
//! Data flow of training, every stage cached in `--out` so that a killed run resumes:
//! prompts → `corpus.jsonl` (the base model's greedy answers) → `cache/hidden-*.safetensors`
//! (its last hidden states) → `cache/checkpoint.safetensors` (heads and optimiser) →
//! `medusa_lm_head.safetensors` + `config.json` (the official layout) + `training.json`.

pub mod corpus;
pub mod train;
pub mod tune;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use decodebench_strategies::medusa::{MedusaHeads, HEADS_FILE, HEAD_VOCAB_FILE};
use decodebench_strategies::{DecoderModel, StopConfig};
use serde::{Deserialize, Serialize};

use crate::catalog::resolve_model;
use crate::data::PromptItem;
use crate::models::{self, LoadedModel};
use corpus::{CorpusEntry, CorpusHeader};
use train::{Samples, TrainConfig, Trainer};

pub const CONFIG_FILE: &str = "config.json";
pub const TRAINING_FILE: &str = "training.json";
const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
const CHECKPOINT_META: &str = "checkpoint.json";
/// Timed rounds of `tune-tree`'s forward-cost curve. The runner's three leave c(2) / c(1)
/// anywhere from 1.16 to 1.38 between runs on a shared 2-core machine, enough to flip a small
/// tree's predicted speedup across 1.0; the whole curve up to 65 tokens costs about 1.5 s a round.
const TUNE_ROUNDS: usize = 9;

/// `decodebench train-heads`'s arguments.
#[derive(Debug, Clone)]
pub struct TrainHeadsArgs {
    pub model: String,
    pub out: PathBuf,
    /// Training prompts (default: datasets/train-prompts.jsonl).
    pub prompts: Option<PathBuf>,
    pub max_new_tokens: usize,
    /// Answers per prompt: the greedy one and `samples - 1` drawn at `temperature`.
    pub samples: usize,
    pub temperature: f64,
    pub train: TrainConfig,
    /// Continue a training checkpoint in `out` (the corpus and hidden states are reused
    /// whenever they match, with or without it).
    pub resume: bool,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    pub progress: bool,
}

/// `config.json` as written: Medusa's keys, and what the heads were made from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadsConfig {
    pub medusa_num_heads: usize,
    pub medusa_num_layers: usize,
    pub version: u8,
    pub base_model_name_or_path: String,
    pub base_model_sha256: String,
    pub training: TrainConfig,
}

/// `training.json`: how long each stage took on this machine, and the last figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingLog {
    pub model: String,
    pub cpu: String,
    pub threads: usize,
    pub prompts: usize,
    /// Answers per prompt (the greedy one and those drawn at `temperature`).
    #[serde(default = "corpus::one")]
    pub samples: usize,
    #[serde(default)]
    pub temperature: f64,
    pub corpus_tokens: usize,
    pub examples: usize,
    pub steps: usize,
    pub corpus_s: f64,
    pub hidden_s: f64,
    pub train_s: f64,
    /// Per epoch (those this session ran, on resume): mean loss and per-head top-1 over its
    /// steps, on the training batches.
    pub epochs: Vec<EpochFigures>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochFigures {
    pub epoch: usize,
    pub loss: f64,
    pub top1: Vec<f64>,
}

/// What a checkpoint was made by: resuming another run is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CheckpointMeta {
    corpus_hash: String,
    training: TrainConfig,
}

/// Writes tensors as safetensors through a temporary file and a rename, so that a killed run
/// never leaves half a file where a cache or the heads are read from.
pub(crate) fn save_safetensors_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The folder holding the heads a spec names (a heads file or its folder): where their
/// `config.json` and a tuned tree sit.
fn heads_dir(spec: &str) -> PathBuf {
    decodebench_strategies::medusa::heads_file(Path::new(spec)).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn load_model(name: &str, progress: bool) -> Result<(LoadedModel, String)> {
    let source = resolve_model(name, progress)?;
    let sha = crate::runner::model_sha256(name, &source)?;
    Ok((models::load(&source, Some(name), None, &Device::Cpu)?, sha))
}

/// Trains heads as [`TrainHeadsArgs`] says; returns the training log.
pub fn train_heads(args: &TrainHeadsArgs) -> Result<TrainingLog> {
    let cfg = &args.train;
    if cfg.num_heads == 0 || cfg.epochs == 0 || cfg.batch == 0 {
        bail!("--heads, --epochs and --batch must be at least 1");
    }
    if ![1, 2].contains(&cfg.version) {
        bail!("--layout: v1 or v2, got version {}", cfg.version);
    }
    let prompts: Vec<PromptItem> = match &args.prompts {
        Some(p) => crate::data::load_prompts(p)?,
        None => crate::data::train_prompts(),
    };
    let out = &args.out;
    let cache = out.join("cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let checkpoint = cache.join(CHECKPOINT_FILE);
    if checkpoint.exists() && !args.resume {
        bail!("{} holds a training checkpoint: pass --resume to continue it, or use another --out", out.display());
    }

    let (mut model, sha) = load_model(&args.model, args.progress)?;
    let header = CorpusHeader {
        model: args.model.clone(),
        model_sha256: sha.clone(),
        max_new_tokens: args.max_new_tokens,
        samples: args.samples,
        temperature: if args.samples > 1 { args.temperature } else { 0.0 },
    };
    let t0 = Instant::now();
    let store = cache.join(corpus::HIDDEN_STORE);
    let corpus = corpus::build_corpus(&mut model, &header, &prompts, &out.join(corpus::CORPUS_FILE), Some(&store), args.progress)?;
    let corpus_s = t0.elapsed().as_secs_f64();
    let hash = corpus::corpus_hash(&header, &corpus);
    let t1 = Instant::now();
    let hidden = corpus::cached_hidden_states(&mut model, &corpus, &header, &hash, &cache, args.progress)?;
    let hidden_s = t1.elapsed().as_secs_f64();
    let mut lm_head = model.model.lm_head_weight()?;
    let info = model.model.info().clone();
    drop(model);

    // A reduced head vocabulary: the V most frequent answer tokens (ties to the lower id).
    let head_vocab: Option<Vec<u32>> = match cfg.head_vocab {
        Some(0) => bail!("--head-vocab: must be at least 1"),
        Some(v) => Some(frequent_tokens(&corpus, v.min(info.vocab_size))),
        None => None,
    };
    let vocab_index: Option<HashMap<u32, u32>> =
        head_vocab.as_ref().map(|ids| ids.iter().enumerate().map(|(i, &t)| (t, i as u32)).collect());
    if let Some(ids) = &head_vocab {
        lm_head = lm_head.index_select(&Tensor::new(ids.as_slice(), &Device::Cpu)?, 0)?;
    }
    let samples = Samples::from_corpus(&corpus, cfg.num_heads, vocab_index.as_ref());
    let examples = samples.len();
    let mut trainer = Trainer::new(cfg.clone(), &lm_head, hidden, samples)?;
    drop(lm_head);
    let meta = CheckpointMeta { corpus_hash: hash.clone(), training: trainer.config().clone() };
    let meta_path = cache.join(CHECKPOINT_META);
    if args.resume && checkpoint.exists() {
        let old: CheckpointMeta = decodebench_tables::records::read_json(&meta_path)?;
        if old != meta {
            bail!(
                "--resume: the checkpoint in {} was made with other training settings or another corpus; use another --out",
                out.display()
            );
        }
        trainer.load_checkpoint(&checkpoint)?;
    }
    decodebench_tables::records::write_json_atomic(&meta_path, &meta)?;

    let t2 = Instant::now();
    let total = trainer.total_steps();
    let per_epoch = total / cfg.epochs;
    let bar = corpus::bar(args.progress, total, "training");
    bar.set_position(trainer.step() as u64);
    let mut epochs: Vec<EpochFigures> = Vec::new();
    let mut steps_in_epoch = 0usize;
    while trainer.step() < total {
        let epoch = trainer.step() / per_epoch;
        let s = trainer.train_step()?;
        if epochs.last().is_none_or(|e| e.epoch != epoch) {
            epochs.push(EpochFigures { epoch, loss: 0.0, top1: vec![0.0; cfg.num_heads] });
            steps_in_epoch = 0;
        }
        let e = epochs.last_mut().expect("pushed above");
        steps_in_epoch += 1;
        // Running means over the epoch's steps so far.
        let w = 1.0 / steps_in_epoch as f64;
        e.loss += (s.loss - e.loss) * w;
        e.top1.iter_mut().zip(&s.top1).for_each(|(a, b)| *a += (b - *a) * w);
        let top1: Vec<String> = s.top1.iter().map(|t| format!("{t:.2}")).collect();
        bar.set_message(format!("loss {:.3} top-1 [{}] lr {:.1e}", s.loss, top1.join(" "), s.lr));
        bar.inc(1);
        if trainer.step() % args.checkpoint_every.max(1) == 0 || trainer.step() == total {
            trainer.save_checkpoint(&checkpoint)?;
        }
    }
    bar.finish_and_clear();
    let train_s = t2.elapsed().as_secs_f64();

    // The heads, f16, in the official layout, and what they were made from.
    let heads_path = out.join(HEADS_FILE);
    save_safetensors_atomic(&trainer.head_tensors(DType::F16)?, &heads_path)?;
    let config = HeadsConfig {
        medusa_num_heads: cfg.num_heads,
        medusa_num_layers: 1,
        version: cfg.version,
        base_model_name_or_path: args.model.clone(),
        base_model_sha256: sha,
        training: trainer.config().clone(),
    };
    decodebench_tables::records::write_json_atomic(&out.join(CONFIG_FILE), &config)?;
    let vocab_path = out.join(HEAD_VOCAB_FILE);
    match &head_vocab {
        Some(ids) => decodebench_tables::records::write_json_atomic(&vocab_path, &serde_json::json!({ "token_ids": ids }))?,
        None if vocab_path.exists() => {
            std::fs::remove_file(&vocab_path).with_context(|| format!("cannot remove {}", vocab_path.display()))?
        }
        None => {}
    }
    let log = TrainingLog {
        model: args.model.clone(),
        cpu: crate::runner::machine::machine("cpu", Vec::new()).cpu,
        threads: candle_core::utils::get_num_threads(),
        prompts: corpus.len() / header.samples,
        samples: header.samples,
        temperature: header.temperature,
        corpus_tokens: corpus.iter().map(CorpusEntry::answer_len).sum(),
        examples,
        steps: trainer.step(),
        corpus_s,
        hidden_s,
        train_s,
        epochs,
    };
    decodebench_tables::records::write_json_atomic(&out.join(TRAINING_FILE), &log)?;
    // The heads must load as what they claim to be.
    let heads = MedusaHeads::load(&heads_path, &Device::Cpu).map_err(|e| anyhow::anyhow!("{e}"))?;
    heads.check_model(&info).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(log)
}

/// The `v` most frequent answer tokens of the corpus, most frequent first (ties: lower id).
fn frequent_tokens(corpus: &[CorpusEntry], v: usize) -> Vec<u32> {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for e in corpus {
        for &t in &e.tokens[e.prompt_tokens..] {
            *counts.entry(t).or_default() += 1;
        }
    }
    let mut by_count: Vec<(u32, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    by_count.into_iter().take(v).map(|(t, _)| t).collect()
}

/// Gives reduced-vocabulary Medusa-2 heads the lm_head rows they project on (nothing to do for
/// other heads). Every place that loads heads for a model calls it.
pub fn bind_heads(heads: &mut MedusaHeads, model: &crate::models::transformer::Transformer) -> Result<()> {
    if let Some(ids) = heads.unbound_token_ids() {
        let rows = model.lm_head_weight()?.index_select(&Tensor::new(ids, &Device::Cpu)?, 0)?.to_device(model.device())?;
        heads.bind_lm_head_rows(&rows).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// Per-head accuracy of heads against the base model's own greedy continuation.
#[derive(Debug, Clone, Serialize)]
pub struct HeadAccuracy {
    pub heads: String,
    pub prompts: usize,
    /// Scored positions per head.
    pub positions: Vec<usize>,
    /// `topk[h][k-1]`: share of head h's positions whose target is in its top k (k = 1..10).
    pub topk: Vec<Vec<f64>>,
    /// Top-1 per head, by prompt category.
    pub top1_by_category: BTreeMap<String, Vec<f64>>,
    /// Per answer, per answer position: the rank of each head's target among its guesses, head
    /// by head up to the first one that is not in the top [`TOP_K`] (a tree node with that path
    /// of ranks is accepted there). What [`tune::replay`] and [`tune::measured_nodes`] read.
    #[serde(skip)]
    pub rank_paths: Vec<Vec<Vec<u8>>>,
}

pub const TOP_K: usize = 10;

/// Scores `heads` on the base model's greedy answers to `prompts`: head h at answer position p
/// guesses token p + 2 + h.
pub fn eval_heads(
    model: &mut LoadedModel,
    heads: &MedusaHeads,
    prompts: &[PromptItem],
    max_new_tokens: usize,
    progress: bool,
) -> Result<HeadAccuracy> {
    heads.check_model(model.model.info()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = StopConfig { max_new_tokens, eos_token_ids: model.tokenizer.eos_token_ids().to_vec() };
    let bar = corpus::bar(progress, prompts.len(), "answers");
    let mut entries = Vec::new();
    for p in prompts {
        entries.push(corpus::answer(model, p, &stop)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let hidden = corpus::hidden_states(model, &entries, None, progress)?;
    let k = heads.num_heads();
    let mut hits = vec![vec![0usize; TOP_K]; k];
    let mut positions = vec![0usize; k];
    let mut cat: BTreeMap<String, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    let mut offset = 0;
    let device = model.model.device().clone();
    let head_index: Option<HashMap<u32, u32>> = heads.head_vocab().map(|v| (0..v as u32).map(|i| (heads.token_id(i), i)).collect());
    let mut rank_paths = Vec::with_capacity(entries.len());
    for e in &entries {
        let rows = corpus::rows_of(e);
        let (c_hits, c_n) = cat.entry(e.category.clone()).or_insert_with(|| (vec![0; k], vec![0; k]));
        let mut ranks: Vec<Vec<Option<u32>>> = vec![vec![None; k]; rows];
        // Chunks of rows: (K, rows, vocab) logits at once would not fit for long answers.
        for start in (0..rows).step_by(32) {
            let n = (rows - start).min(32);
            let h = hidden.narrow(0, offset + start, n)?.to_device(&device)?;
            let logits = heads.logits_rows(&h, &model.model).map_err(|err| anyhow::anyhow!("{err}"))?.to_device(&Device::Cpu)?;
            for head in 0..k {
                let mut target_ids = Vec::new();
                let mut valid = Vec::new();
                let mut outside = 0;
                for r in 0..n {
                    let p = e.prompt_tokens - 1 + start + r;
                    if p + 2 + head < e.tokens.len() {
                        // A target outside a reduced head vocabulary is a miss at every k.
                        match head_index.as_ref().map_or(Some(e.tokens[p + 2 + head]), |m| m.get(&e.tokens[p + 2 + head]).copied()) {
                            Some(t) => {
                                target_ids.push(t);
                                valid.push(r as u32);
                            }
                            None => outside += 1,
                        }
                    }
                }
                positions[head] += outside;
                c_n[head] += outside;
                if valid.is_empty() {
                    continue;
                }
                let l = logits.get(head)?.index_select(&Tensor::new(valid.as_slice(), &Device::Cpu)?, 0)?;
                let t = Tensor::new(target_ids.as_slice(), &Device::Cpu)?.unsqueeze(1)?;
                let target_logit = l.gather(&t, 1)?;
                // Rank: how many tokens score above the target (ties go the target's way).
                let rank = l.broadcast_gt(&target_logit)?.to_dtype(DType::U32)?.sum(D::Minus1)?.to_vec1::<u32>()?;
                for (&row, &r) in valid.iter().zip(&rank) {
                    ranks[start + row as usize][head] = Some(r);
                }
                for r in rank {
                    positions[head] += 1;
                    c_n[head] += 1;
                    if r == 0 {
                        c_hits[head] += 1;
                    }
                    for (kk, slot) in hits[head].iter_mut().enumerate() {
                        if (r as usize) <= kk {
                            *slot += 1;
                        }
                    }
                }
            }
        }
        offset += rows;
        rank_paths.push(
            ranks
                .into_iter()
                .map(|row| row.into_iter().map_while(|r| r.filter(|&r| (r as usize) < TOP_K).map(|r| r as u8)).collect())
                .collect(),
        );
    }
    let share = |a: usize, n: usize| if n == 0 { 0.0 } else { a as f64 / n as f64 };
    Ok(HeadAccuracy {
        heads: if heads.is_packed() { format!("{} (Q8_0 copies on the CPU)", heads.source()) } else { heads.source().to_string() },
        prompts: entries.len(),
        topk: hits.iter().zip(&positions).map(|(h, &n)| h.iter().map(|&a| share(a, n)).collect()).collect(),
        positions,
        top1_by_category: cat.into_iter().map(|(c, (h, n))| (c, h.iter().zip(&n).map(|(&a, &m)| share(a, m)).collect())).collect(),
        rank_paths,
    })
}

/// Each tree of `specs` (names, `chain:D`, files) replayed over the ranks `a` measured:
/// (tree, nodes, what greedy Medusa decoding with it does on those answers).
pub fn replay_trees(a: &HeadAccuracy, specs: &[String]) -> Result<Vec<(String, usize, tune::Replay)>> {
    specs
        .iter()
        .map(|spec| {
            let tree = decodebench_strategies::medusa::TreeTopology::parse(spec, a.topk.len(), TOP_K)
                .map_err(|e| anyhow::anyhow!("--tree: {e}"))?;
            Ok((spec.clone(), tree.len(), tune::replay(&a.rank_paths, tree.paths())))
        })
        .collect()
}

/// `eval-heads` as a table: heads down, top-1..top-10 across, then top-1 by category.
pub fn format_accuracy(a: &HeadAccuracy) -> String {
    let mut s = format!("heads {} on {} prompts (head h guesses the token h + 2 ahead)\n", a.heads, a.prompts);
    s.push_str(&format!("{:>5} {:>9}", "head", "positions"));
    for k in 1..=TOP_K {
        s.push_str(&format!(" {:>6}", format!("top-{k}")));
    }
    s.push('\n');
    for (h, row) in a.topk.iter().enumerate() {
        s.push_str(&format!("{h:>5} {:>9}", a.positions[h]));
        for v in row {
            s.push_str(&format!(" {v:>6.3}"));
        }
        s.push('\n');
    }
    s.push_str("\ntop-1 by category:\n");
    for (c, row) in &a.top1_by_category {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:.3}")).collect();
        s.push_str(&format!("  {c:<12} {}\n", cells.join("  ")));
    }
    s
}

/// Heads from a spec, checked against the model: shapes first, then the base model they name.
fn load_checked_heads(spec: &str, model: &LoadedModel, sha: &str) -> Result<MedusaHeads> {
    let mut h = MedusaHeads::from_spec(spec, model.model.info(), 0, &Device::Cpu).map_err(|e| anyhow::anyhow!("--heads {spec}: {e}"))?;
    h.check_model(model.model.info()).map_err(|e| anyhow::anyhow!("--heads {spec}: {e}"))?;
    check_base_model(spec, &model.name, sha)?;
    bind_heads(&mut h, &model.model)?;
    Ok(h)
}

/// Heads made by `train-heads` name their base model and its sha256 in `config.json`; using
/// them on another model is refused. (Official checkpoints carry no hash: their shapes are all
/// that is checked, by [`MedusaHeads::check_model`].)
pub fn check_base_model(spec: &str, model: &str, sha: &str) -> Result<()> {
    if spec.starts_with("random:") {
        return Ok(());
    }
    let cfg_path = heads_dir(spec).join(CONFIG_FILE);
    let Ok(text) = std::fs::read_to_string(&cfg_path) else { return Ok(()) };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("Medusa heads config {}: not JSON", cfg_path.display()))?;
    if let Some(base) = v.get("base_model_sha256").and_then(serde_json::Value::as_str) {
        if base != sha {
            let name = v.get("base_model_name_or_path").and_then(serde_json::Value::as_str).unwrap_or("another model");
            bail!(
                "Medusa heads {spec}: {} says they were trained on {name} (sha256 {}), not on {model} (sha256 {})",
                cfg_path.display(),
                &base[..base.len().min(12)],
                &sha[..sha.len().min(12)]
            );
        }
    }
    Ok(())
}

/// What `eval-heads` and `tune-tree` score: a model, heads for it (default: the ones shipped
/// for the model) and prompts to answer (default: datasets/heads-heldout.jsonl).
#[derive(Debug, Clone)]
pub struct HeadsSource {
    pub model: String,
    pub heads: Option<String>,
    pub prompts: Option<PathBuf>,
    pub max_new_tokens: usize,
    pub progress: bool,
}

impl HeadsSource {
    /// The prompts, the loaded model, its heads (checked and bound) and their spec.
    fn load(&self) -> Result<(Vec<PromptItem>, LoadedModel, MedusaHeads, String)> {
        let prompts = match &self.prompts {
            Some(p) => crate::data::load_prompts(p)?,
            None => crate::data::heldout_prompts(),
        };
        let (spec, _) = crate::runner::default_heads(self.heads.as_deref(), &self.model);
        if spec.starts_with("random:") && self.heads.is_none() {
            bail!("no heads are shipped for {}: pass --heads PATH (or random:K)", self.model);
        }
        let (model, sha) = load_model(&self.model, self.progress)?;
        let heads = load_checked_heads(&spec, &model, &sha)?;
        Ok((prompts, model, heads, spec))
    }
}

/// `eval-heads`: loads the heads and scores them.
pub fn eval_command(source: &HeadsSource) -> Result<HeadAccuracy> {
    let (prompts, mut model, heads, _) = source.load()?;
    eval_heads(&mut model, &heads, &prompts, source.max_new_tokens, source.progress)
}

/// `decodebench tune-tree`'s arguments.
#[derive(Debug, Clone)]
pub struct TuneArgs {
    /// The heads, and the calibration prompts their acceptance is measured on.
    pub source: HeadsSource,
    pub max_nodes: usize,
    /// The tree file (default: `tuned-tree.json` beside the heads).
    pub out: Option<PathBuf>,
    /// Cache length the forward-cost curve is measured on.
    pub context: usize,
}

/// What `tune-tree` measured and built.
#[derive(Debug, Clone, Serialize)]
pub struct TuneOutcome {
    pub tree_file: PathBuf,
    pub tree: tune::TunedTree,
    pub accuracy: HeadAccuracy,
    pub curve: decodebench_tables::records::CostCurve,
    pub heads_ms: f64,
}

/// Measures the heads' rank probabilities and this machine's cost curve, builds the tree with
/// the highest predicted speedup, and writes it in the tree-file format.
pub fn tune_command(args: &TuneArgs) -> Result<TuneOutcome> {
    if args.max_nodes == 0 {
        bail!("--max-nodes: must be at least 1");
    }
    let (prompts, mut model, heads, spec) = args.source.load()?;
    let accuracy = eval_heads(&mut model, &heads, &prompts, args.source.max_new_tokens, args.source.progress)?;

    // The forward-cost curve up to the largest tree, and the heads' own time per step.
    let mut tokens: Vec<usize> = crate::calibrate::DEFAULT_TOKENS.iter().copied().filter(|&n| n <= args.max_nodes + 1).collect();
    if !tokens.contains(&(args.max_nodes + 1)) {
        tokens.push(args.max_nodes + 1);
    }
    let context = args.context.min(model.model.info().max_context.saturating_sub(args.max_nodes + 1));
    let curve = crate::calibrate::calibrate(&mut model.model, context, &tokens, TUNE_ROUNDS)?;
    let device = model.model.device().clone();
    let hidden = Tensor::zeros((1, 1, heads.hidden_size()), DType::F32, &device)?;
    let mut times = Vec::new();
    // The runner's clock (synchronised on both sides); the first call is a warm-up.
    for rep in 0..=21 {
        let t = decodebench_strategies::clock::now(&device)?;
        heads.logits(&hidden, &model.model).map_err(|e| anyhow::anyhow!("{e}"))?;
        let dt = decodebench_strategies::clock::since(&device, t)?;
        if rep > 0 {
            times.push(dt * 1000.0);
        }
    }
    let heads_ms = decodebench_tables::stats::median(&times).expect("21 timed calls");

    let nodes = tune::measured_nodes(&accuracy.rank_paths);
    let tree = tune::tune(&nodes, Some(&accuracy.rank_paths), &curve, heads_ms, args.max_nodes).context("the cost curve is empty")?;
    if tree.paths.is_empty() {
        bail!("the heads never rank the base model's next tokens in their top {TOP_K} on these prompts: there is no tree to build");
    }
    let tree_file = match &args.out {
        Some(p) => p.clone(),
        None => heads_dir(&spec).join("tuned-tree.json"),
    };
    let text = serde_json::to_string(&tree.paths)? + "\n";
    std::fs::write(&tree_file, text).with_context(|| format!("cannot write {}", tree_file.display()))?;
    // The file must be a tree the strategy takes.
    decodebench_strategies::medusa::TreeTopology::parse(&tree_file.display().to_string(), heads.num_heads(), TOP_K)
        .map_err(|e| anyhow::anyhow!("tune-tree wrote a tree the strategy refuses: {e}"))?;
    Ok(TuneOutcome { tree_file, tree, accuracy, curve, heads_ms })
}

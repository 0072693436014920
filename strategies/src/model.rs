use candle_core::{Device, Result, Tensor};

/// Static facts about a model that strategies need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Short name, for records and errors (a catalog name or a file name).
    pub name: String,
    /// `llama`, `qwen2`, ...
    pub arch: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Longest sequence (cache plus new tokens) the model accepts.
    pub max_context: usize,
}

/// How the N new tokens of one forward attend to each other. Every new token always sees the
/// whole KV cache; within the block it sees itself and:
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockAttention {
    /// every earlier token of the block (plain prefill / decode / draft verification);
    Causal,
    /// its ancestors only. `parents[i]` is the index (within the block) of token i's parent,
    /// which must be smaller than i; `None` makes token i a root attached directly to the cache.
    Tree { parents: Vec<Option<usize>> },
}

impl BlockAttention {
    /// Checks the structure against a block of `n` tokens.
    pub fn validate(&self, n: usize) -> Result<()> {
        if let BlockAttention::Tree { parents } = self {
            if parents.len() != n {
                candle_core::bail!("tree has {} parent entries for a block of {n} tokens", parents.len());
            }
            for (i, p) in parents.iter().enumerate() {
                if let Some(p) = p {
                    if *p >= i {
                        candle_core::bail!("tree node {i} has parent {p}: parents must come before their children");
                    }
                }
            }
        }
        Ok(())
    }

    /// Depth of every node of an `n`-token block (roots and causal tokens count from 0 for the
    /// first token: causal token i has depth i).
    pub fn depths(&self, n: usize) -> Vec<usize> {
        match self {
            BlockAttention::Causal => (0..n).collect(),
            BlockAttention::Tree { parents } => {
                let mut depth = vec![0usize; parents.len()];
                for (i, p) in parents.iter().enumerate() {
                    depth[i] = p.map_or(0, |p| depth[p] + 1);
                }
                depth
            }
        }
    }
}

/// Which rows of the block get logits and hidden states back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    /// Every new token (verification of drafts and trees).
    All,
    /// Only the last new token (prefill, plain decoding): saves the vocabulary projection.
    Last,
}

/// One forward over `tokens.len() / batch` new tokens for each of `batch` sequences.
#[derive(Debug, Clone)]
pub struct ForwardInput<'a> {
    /// Row-major `batch × n` token ids.
    pub tokens: &'a [u32],
    pub batch: usize,
    /// Position (for rotary embeddings) of each of the n tokens, shared by the batch rows.
    pub positions: &'a [usize],
    pub attention: &'a BlockAttention,
    pub rows: LogitRows,
}

impl<'a> ForwardInput<'a> {
    /// A causal block continuing a cache of length `cache_len`: positions cache_len.. .
    pub fn causal(tokens: &'a [u32], positions: &'a [usize], rows: LogitRows) -> Self {
        const CAUSAL: &BlockAttention = &BlockAttention::Causal;
        ForwardInput { tokens, batch: 1, positions, attention: CAUSAL, rows }
    }

    /// Tokens per batch row.
    pub fn block_len(&self) -> usize {
        self.positions.len()
    }

    /// Checks the block's shape: non-empty, `batch × n` tokens, a valid tree.
    pub fn validate(&self) -> Result<()> {
        let (b, n) = (self.batch, self.block_len());
        if n == 0 || b == 0 {
            candle_core::bail!("forward of an empty block ({b} rows × {n} tokens)");
        }
        if self.tokens.len() != b * n {
            candle_core::bail!("forward: {} tokens for {b} rows × {n} positions", self.tokens.len());
        }
        self.attention.validate(n)
    }
}

/// What a forward returns, on the model's device.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `(batch, rows, vocab)` logits in f32.
    pub logits: Tensor,
    /// `(batch, rows, hidden)` last hidden states after the final norm (what Medusa heads read).
    pub hidden: Tensor,
}

/// The one model interface every strategy uses.
///
/// The KV cache belongs to the model. Its length counts positions of every batch row (all rows
/// always have the same length). A forward appends its block to the cache; strategies then keep
/// the part they accept with [`truncate_cache`](DecoderModel::truncate_cache) or
/// [`compact_cache`](DecoderModel::compact_cache).
pub trait DecoderModel {
    fn info(&self) -> &ModelInfo;
    fn device(&self) -> &Device;

    /// Runs the block, appends its keys and values to the cache, returns the rows asked for.
    fn forward(&mut self, input: &ForwardInput) -> Result<ForwardOutput>;

    /// The base model's vocabulary projection applied to hidden states `(.., hidden)`
    /// (Medusa heads in the v2 layout share it).
    fn lm_head(&self, hidden: &Tensor) -> Result<Tensor>;

    /// Positions held in the cache (per batch row).
    fn cache_len(&self) -> usize;
    /// Batch rows held in the cache (0 when empty).
    fn cache_batch(&self) -> usize;
    /// Drops every position at or after `len`.
    fn truncate_cache(&mut self, len: usize) -> Result<()>;
    /// Keeps the block positions `start + keep[j]` (in that order) at `start + j` and drops
    /// everything after: accepting a path of a tree. `keep` must be strictly increasing.
    fn compact_cache(&mut self, start: usize, keep: &[usize]) -> Result<()>;
    /// New batch row i is old row `rows[i]`; rows may repeat (beam search duplicates beams).
    fn reorder_cache(&mut self, rows: &[usize]) -> Result<()>;
    /// Empties the cache.
    fn clear_cache(&mut self);

    /// How many leading tokens of `prompt` [`prefill`](crate::prefill) may keep from the cache
    /// rather than recompute: 0 unless prefix reuse is on
    /// ([`set_prefix_reuse`](DecoderModel::set_prefix_reuse)), else what the model's
    /// [`CacheLedger`](crate::CacheLedger) says the cache holds of it.
    fn reusable_prefix(&self, _prompt: &[u32]) -> usize {
        0
    }

    /// Lets [`prefill`](crate::prefill) keep the part of the cache that a new prompt starts
    /// with (the earlier turns of a conversation) instead of clearing it. Off by default: with
    /// it on, a prefill's cost depends on what ran before, so whoever turns it on decides
    /// what the cache holds at each prompt (the runner clears it before every unit).
    fn set_prefix_reuse(&mut self, on: bool) -> Result<()> {
        if on {
            candle_core::bail!("model {} does not track its cache's tokens, so it cannot reuse a prefix", self.info().name);
        }
        Ok(())
    }

    /// Limits the logits [`forward`](DecoderModel::forward) returns to the first `n` token ids
    /// (`None`: the whole vocabulary, the default). A draft model searches only there: with a
    /// byte-level BPE vocabulary, whose ids follow the merge order, the first ids are the most
    /// frequent tokens, and a large vocabulary's projection is a large part of a small model's
    /// step (FR-Spec, Zhao et al. 2025). [`lm_head`](DecoderModel::lm_head) stays whole.
    fn set_logit_vocab(&mut self, n: Option<usize>) -> Result<()> {
        match n {
            None => Ok(()),
            Some(_) => candle_core::bail!("model {} cannot limit its logits to part of its vocabulary", self.info().name),
        }
    }
}

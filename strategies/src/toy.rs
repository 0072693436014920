//! A toy [`DecoderModel`] for tests: its logits are any function of the sequence a token sees
//! (the cache plus, in a tree, its ancestors), so strategies can be checked against
//! distributions known in closed form and against brute-force enumeration. Its "KV cache" is the
//! token sequence itself, with the same truncate / compact / reorder semantics as a real cache.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use crate::{BlockAttention, CacheLedger, DecoderModel, ForwardInput, ForwardOutput, LogitRows, ModelInfo};

/// Logits for the next token after the given sequence.
pub type LogitsFn = Arc<dyn Fn(&[u32]) -> Vec<f32> + Send + Sync>;

pub struct ToyModel {
    info: ModelInfo,
    logits_fn: LogitsFn,
    device: Device,
    /// One token sequence per batch row.
    rows: Vec<Vec<u32>>,
    /// Counts target forwards (tests check how many a strategy used).
    pub forwards: usize,
    ledger: CacheLedger,
}

impl ToyModel {
    pub fn new(vocab_size: usize, max_context: usize, logits_fn: LogitsFn, device: &Device) -> Self {
        let info = ModelInfo { name: "toy".into(), arch: "toy".into(), vocab_size, hidden_size: 8, max_context };
        Self { info, logits_fn, device: device.clone(), rows: Vec::new(), forwards: 0, ledger: CacheLedger::default() }
    }

    /// A model whose next-token distribution is a pseudo-random function of the whole sequence
    /// (seeded), with occasional near-ties to exercise tie handling.
    pub fn hashed(vocab_size: usize, seed: u64, device: &Device) -> Self {
        let f: LogitsFn = Arc::new(move |seq: &[u32]| {
            let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
            for &t in seq {
                h = (h ^ t as u64).wrapping_mul(0x100_0000_01B3).rotate_left(17);
            }
            (0..vocab_size)
                .map(|v| {
                    let x = (h ^ (v as u64).wrapping_mul(0x9E37_79B9)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    ((x >> 40) as f32 / (1u64 << 24) as f32) * 6.0
                })
                .collect()
        });
        Self::new(vocab_size, 4096, f, device)
    }

    /// The function behind the logits (to build related models, e.g. a noisy draft).
    pub fn logits_fn(&self) -> LogitsFn {
        self.logits_fn.clone()
    }

    /// The sequence held for batch row `row`.
    pub fn sequence(&self, row: usize) -> &[u32] {
        &self.rows[row]
    }

    /// A deterministic hidden state for a sequence (what a real model's last layer would give).
    fn hidden_of(seq: &[u32]) -> Vec<f32> {
        let mut h = 0xCBF2_9CE4_8422_2325u64;
        for &t in seq {
            h = (h ^ t as u64).wrapping_mul(0x100_0000_01B3);
        }
        (0..8).map(|i| ((h.rotate_left(i * 8) & 0xFFFF) as f32 / 65535.0) - 0.5).collect()
    }
}

impl DecoderModel for ToyModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&mut self, input: &ForwardInput) -> Result<ForwardOutput> {
        input.validate()?;
        let n = input.block_len();
        let b = input.batch;
        if self.rows.is_empty() || self.rows.iter().all(Vec::is_empty) {
            self.rows = vec![Vec::new(); b];
        }
        if self.rows.len() != b {
            candle_core::bail!("toy forward with {b} rows on a cache of {}", self.rows.len());
        }
        if self.rows[0].len() + n > self.info.max_context {
            candle_core::bail!("toy: sequence exceeds the context of {}", self.info.max_context);
        }
        self.forwards += 1;
        let parents: Vec<Option<usize>> = match input.attention {
            BlockAttention::Causal => (0..n).map(|i| i.checked_sub(1)).collect(),
            BlockAttention::Tree { parents } => parents.clone(),
        };
        let wanted: Vec<usize> = match input.rows {
            LogitRows::All => (0..n).collect(),
            LogitRows::Last => vec![n - 1],
        };
        let (mut logits, mut hidden) = (Vec::new(), Vec::new());
        for (r, row) in self.rows.iter_mut().enumerate() {
            let block = &input.tokens[r * n..(r + 1) * n];
            for &i in &wanted {
                let mut chain = vec![i];
                while let Some(p) = parents[*chain.last().expect("non-empty")] {
                    chain.push(p);
                }
                let mut seq = row.clone();
                seq.extend(chain.iter().rev().map(|&j| block[j]));
                logits.extend((self.logits_fn)(&seq));
                hidden.extend(Self::hidden_of(&seq));
            }
            row.extend_from_slice(block);
        }
        self.ledger.appended(input);
        let rows = wanted.len();
        Ok(ForwardOutput {
            logits: Tensor::from_vec(logits, (b, rows, self.info.vocab_size), &self.device)?,
            hidden: Tensor::from_vec(hidden, (b, rows, 8), &self.device)?,
        })
    }

    fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        // A fixed projection: logit v = sum_i hidden_i * sin(v + i).
        let w: Vec<f32> =
            (0..8 * self.info.vocab_size).map(|k| ((k % self.info.vocab_size) as f32 + (k / self.info.vocab_size) as f32).sin()).collect();
        let w = Tensor::from_vec(w, (8, self.info.vocab_size), &self.device)?.to_dtype(DType::F32)?;
        hidden.broadcast_matmul(&w)
    }

    fn cache_len(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }

    fn cache_batch(&self) -> usize {
        if self.cache_len() == 0 {
            0
        } else {
            self.rows.len()
        }
    }

    fn truncate_cache(&mut self, len: usize) -> Result<()> {
        if len > self.cache_len() {
            candle_core::bail!("toy: cannot truncate {} to {len}", self.cache_len());
        }
        self.rows.iter_mut().for_each(|r| r.truncate(len));
        self.ledger.truncated(len);
        Ok(())
    }

    fn compact_cache(&mut self, start: usize, keep: &[usize]) -> Result<()> {
        for row in &mut self.rows {
            let kept: Vec<u32> = keep.iter().map(|&k| row[start + k]).collect();
            row.truncate(start);
            row.extend(kept);
        }
        self.ledger.compacted(start, keep);
        Ok(())
    }

    fn reorder_cache(&mut self, rows: &[usize]) -> Result<()> {
        self.rows = rows.iter().map(|&r| self.rows[r].clone()).collect();
        self.ledger.reordered(rows);
        Ok(())
    }

    fn clear_cache(&mut self) {
        self.rows.clear();
        self.ledger.cleared();
    }

    fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        self.ledger.reusable_prefix(prompt)
    }

    fn set_prefix_reuse(&mut self, on: bool) -> Result<()> {
        self.ledger.set_reuse(on);
        Ok(())
    }
}

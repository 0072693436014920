//! Medusa heads: K small networks on the base model's last hidden state, head k guessing the
//! token k + 2 positions ahead of the hidden state's token (the base model's own logits give the
//! next one).
//!
//! Head k is `ResBlock^n` (`x + SiLU(W x + b)`, the official heads have n = 1) followed by a
//! vocabulary projection: the head's own (the Medusa-1 layout, weight (vocab, hidden) without
//! bias) or the base model's `lm_head` (the Medusa-2 layout). The K heads are stacked and run as
//! batched matmuls, in f32, on the device the weights were put on (the caller passes the model's
//! device).
//!
//! On the CPU the heads run from Q8_0 copies of their weights instead, on the model's quantized
//! kernels ([`PackedHeads`]): a step reads every head's weights once, about 88 MB in f32 for four
//! heads on a 1.5B model with a reduced vocabulary, and that read, not the arithmetic, is its
//! cost. Decoding, `eval-heads` and `tune-tree` all take this path, so what is measured is what
//! decodes; the heads only draft, so greedy acceptance stays lossless.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use candle_core::quantized::{GgmlDType, QTensor};
use decodebench_kernels::packed::PackedWeight;

use crate::{DecoderModel, ModelInfo};

/// File name of the official heads (FasterDecoding Medusa checkpoints).
pub const HEADS_FILE: &str = "medusa_lm_head.safetensors";

/// The heads file a path names: the path itself, or `medusa_lm_head.safetensors` in the folder
/// it names.
pub fn heads_file(path: &Path) -> std::path::PathBuf {
    if path.is_dir() {
        path.join(HEADS_FILE)
    } else {
        path.to_path_buf()
    }
}

/// Beside a heads file, the id map of reduced-vocabulary heads: `{"token_ids": [..]}`, the
/// model token id of each of the heads' V outputs (`train-heads --head-vocab V`).
pub const HEAD_VOCAB_FILE: &str = "head_vocab.json";

/// Where each head's vocabulary projection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadLayout {
    /// Medusa-1: every head has its own `(vocab, hidden)` projection.
    OwnProjection,
    /// Medusa-2: the heads share the base model's `lm_head`.
    SharedLmHead,
}

/// One stacked ResBlock of all heads.
#[derive(Debug, Clone)]
struct ResBlock {
    /// `(K, hidden_in, hidden_out)`: every head's `W` transposed, so that `x · w_t = W x`.
    w_t: Tensor,
    /// `(K, 1, hidden)`.
    bias: Tensor,
}

/// K Medusa heads.
#[derive(Debug, Clone)]
pub struct MedusaHeads {
    num_heads: usize,
    hidden_size: usize,
    layout: HeadLayout,
    res_blocks: Vec<ResBlock>,
    /// `(K, hidden, vocab)` (own projections transposed), Medusa-1 only.
    projection: Option<Tensor>,
    /// Reduced vocabulary: the model token id of each head output. Own projections then have
    /// this many rows; Medusa-2 heads project on these rows of the base lm_head, bound once by
    /// [`MedusaHeads::bind_lm_head_rows`].
    token_ids: Option<Vec<u32>>,
    /// `(hidden, V)`: the bound lm_head rows of reduced Medusa-2 heads, transposed.
    reduced_rows: Option<Tensor>,
    /// Where the weights came from: a file or `random:K (seed S)`.
    source: String,
    /// Q8_0 copies for the CPU (None elsewhere, or with a hidden size the blocks do not fit).
    packed: Option<PackedHeads>,
}

/// The heads' weights in Q8_0 for the CPU kernels: per ResBlock and head, `W` `(out, in)` and
/// its bias; then the projection. The activations are quantized to 8 bits per row as the
/// model's own Q8_0 layers do, and a row's result does not depend on the rows beside it, so
/// scoring a corpus row by row gives what decoding gives.
#[derive(Debug, Clone)]
struct PackedHeads {
    res: Vec<Vec<(PackedWeight, Vec<f32>)>>,
    projection: PackedProjection,
}

#[derive(Debug, Clone)]
enum PackedProjection {
    /// The model's lm_head (Medusa-2, full vocabulary).
    ModelLmHead,
    /// Each head's own (Medusa-1).
    PerHead(Vec<PackedWeight>),
    /// The lm_head rows of reduced Medusa-2 heads, shared; `None` until bound.
    Rows(Option<PackedWeight>),
}

/// `w` `(n, k)` f32 in Q8_0, packed for the CPU kernels.
fn pack_q8(w: &Tensor) -> Result<PackedWeight> {
    let (n, k) = w.dims2()?;
    let q = QTensor::quantize(&w.to_dtype(DType::F32)?.contiguous()?, GgmlDType::Q8_0)?;
    PackedWeight::new(GgmlDType::Q8_0, &q.data()?, n, k)?.ok_or_else(|| candle_core::Error::Msg("Q8_0 is not packed".into()))
}

impl MedusaHeads {
    /// Heads with seeded random weights (one ResBlock each): no trained heads needed to check
    /// that a strategy is exact or to time a tree. `vocab_size` matters only for
    /// [`HeadLayout::OwnProjection`]. Weights are uniform with unit-variance outputs
    /// (`±sqrt(3 / hidden)`), biases `±0.1`.
    pub fn random(num_heads: usize, hidden_size: usize, vocab_size: usize, layout: HeadLayout, seed: u64, device: &Device) -> Result<Self> {
        if num_heads == 0 || hidden_size == 0 {
            candle_core::bail!(
                "random Medusa heads need at least one head and a hidden size (got {num_heads} heads, hidden {hidden_size})"
            );
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let scale = (3.0 / hidden_size as f32).sqrt();
        let mut uniform = |n: usize, s: f32| -> Vec<f32> { (0..n).map(|_| s * rng.random_range(-1.0f32..1.0)).collect() };
        let (k, h) = (num_heads, hidden_size);
        let w_t = Tensor::from_vec(uniform(k * h * h, scale), (k, h, h), device)?;
        let bias = Tensor::from_vec(uniform(k * h, 0.1), (k, 1, h), device)?;
        let projection = match layout {
            HeadLayout::SharedLmHead => None,
            HeadLayout::OwnProjection => Some(Tensor::from_vec(uniform(k * h * vocab_size, scale), (k, h, vocab_size), device)?),
        };
        Self {
            num_heads,
            hidden_size,
            layout,
            res_blocks: vec![ResBlock { w_t, bias }],
            projection,
            token_ids: None,
            reduced_rows: None,
            source: format!("random:{num_heads} (seed {seed})"),
            packed: None,
        }
        .packed_on(device)
    }

    /// Loads heads in the official FasterDecoding safetensors layout (`medusa_lm_head.safetensors`;
    /// `path` may also be the folder holding it): `{i}.{j}.linear.weight` `(hidden, hidden)` and
    /// `{i}.{j}.linear.bias` `(hidden)` for ResBlock j of head i, and `{i}.{n}.weight`
    /// `(vocab, hidden)` for head i's own projection after its n ResBlocks (Medusa-1); a file
    /// without projections holds Medusa-2 heads, which use the base model's `lm_head`. Keys may
    /// carry a `medusa_head.` prefix. Weights are converted to f32 on `device`. Errors name the
    /// file and the key.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let file = heads_file(path);
        let fname = file.display().to_string();
        if file.extension().is_some_and(|e| e == "pt" || e == "bin") {
            candle_core::bail!("Medusa heads {fname}: PyTorch pickles are not read; convert them to safetensors ({HEADS_FILE})");
        }
        if !file.is_file() {
            candle_core::bail!("Medusa heads {fname}: no such file");
        }
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| candle_core::Error::Msg(format!("Medusa heads {fname}: cannot read safetensors: {e}")))?;

        // head -> block -> (linear.weight, linear.bias, weight)
        #[derive(Default)]
        struct Block {
            linear_w: Option<Tensor>,
            linear_b: Option<Tensor>,
            proj: Option<Tensor>,
        }
        let mut heads: BTreeMap<usize, BTreeMap<usize, Block>> = BTreeMap::new();
        for (key, t) in tensors {
            let name = key.strip_prefix("medusa_head.").unwrap_or(&key);
            let parts: Vec<&str> = name.split('.').collect();
            let idx = |s: &str| s.parse::<usize>().ok();
            let (i, j, kind) = match parts.as_slice() {
                [i, j, "linear", "weight"] => (idx(i), idx(j), 0),
                [i, j, "linear", "bias"] => (idx(i), idx(j), 1),
                [i, j, "weight"] => (idx(i), idx(j), 2),
                _ => (None, None, 0),
            };
            let (Some(i), Some(j)) = (i, j) else {
                candle_core::bail!(
                    "Medusa heads {fname}: unexpected key `{key}` (expected {{head}}.{{block}}.linear.weight, {{head}}.{{block}}.linear.bias or {{head}}.{{n_res}}.weight)"
                );
            };
            let t = t.to_dtype(DType::F32)?;
            let block = heads.entry(i).or_default().entry(j).or_default();
            match kind {
                0 => block.linear_w = Some(t),
                1 => block.linear_b = Some(t),
                _ => block.proj = Some(t),
            }
        }
        let num_heads = heads.len();
        if num_heads == 0 {
            candle_core::bail!("Medusa heads {fname}: no head tensors in the file");
        }
        if let Some((i, _)) = heads.iter().enumerate().find(|(n, (i, _))| *n != **i) {
            candle_core::bail!("Medusa heads {fname}: head {i} is missing (key `{i}.0.linear.weight`): heads must be numbered 0..K");
        }

        // Each head: blocks 0..n are ResBlocks (linear weight + bias), then optionally block n is
        // the projection (weight only).
        let mut ws: Vec<Vec<Tensor>> = Vec::new();
        let mut bs: Vec<Vec<Tensor>> = Vec::new();
        let mut projs: Vec<Option<Tensor>> = Vec::new();
        let mut hidden: Option<usize> = None;
        let mut vocab: Option<usize> = None;
        let mut n_res_all: Option<usize> = None;
        for (i, blocks) in heads {
            let mut w_i = Vec::new();
            let mut b_i = Vec::new();
            let mut proj = None;
            let last = blocks.keys().copied().max().unwrap_or(0);
            for j in 0..=last {
                let Some(block) = blocks.get(&j) else {
                    candle_core::bail!("Medusa heads {fname}: head {i} has no block {j} (key `{i}.{j}.linear.weight` missing)");
                };
                match (&block.linear_w, &block.linear_b, &block.proj) {
                    (Some(w), Some(b), None) => {
                        let (o, inp) =
                            w.dims2().map_err(|_| shape_err(&fname, &format!("{i}.{j}.linear.weight"), "(hidden, hidden)", w))?;
                        let h = *hidden.get_or_insert(inp);
                        if o != h || inp != h {
                            return Err(shape_err(&fname, &format!("{i}.{j}.linear.weight"), &format!("({h}, {h})"), w));
                        }
                        if b.dims() != [h] {
                            return Err(shape_err(&fname, &format!("{i}.{j}.linear.bias"), &format!("({h})"), b));
                        }
                        if proj.is_some() {
                            candle_core::bail!("Medusa heads {fname}: head {i} has ResBlock {j} after its projection");
                        }
                        w_i.push(w.t()?.contiguous()?);
                        b_i.push(b.reshape((1, h))?);
                    }
                    (None, None, Some(p)) if j == last => {
                        let (v, inp) = p.dims2().map_err(|_| shape_err(&fname, &format!("{i}.{j}.weight"), "(vocab, hidden)", p))?;
                        let h = *hidden.get_or_insert(inp);
                        let v0 = *vocab.get_or_insert(v);
                        if inp != h || v != v0 {
                            return Err(shape_err(&fname, &format!("{i}.{j}.weight"), &format!("({v0}, {h})"), p));
                        }
                        proj = Some(p.t()?.contiguous()?);
                    }
                    (None, None, Some(_)) => {
                        candle_core::bail!("Medusa heads {fname}: key `{i}.{j}.weight` is a projection but head {i} has later blocks");
                    }
                    (Some(_), None, _) => candle_core::bail!("Medusa heads {fname}: key `{i}.{j}.linear.bias` is missing"),
                    (None, Some(_), _) => candle_core::bail!("Medusa heads {fname}: key `{i}.{j}.linear.weight` is missing"),
                    (Some(_), Some(_), Some(_)) => {
                        candle_core::bail!("Medusa heads {fname}: key `{i}.{j}.weight` next to a ResBlock `{i}.{j}.linear.weight`")
                    }
                    (None, None, None) => unreachable!("a block exists only with a tensor"),
                }
            }
            let n_res = w_i.len();
            match n_res_all {
                None => n_res_all = Some(n_res),
                Some(n) if n != n_res => candle_core::bail!(
                    "Medusa heads {fname}: head {i} has {n_res} ResBlocks but head 0 has {n} (key `{i}.{}.linear.weight`)",
                    n_res.min(n)
                ),
                _ => {}
            }
            if i > 0 && proj.is_some() != projs[0].is_some() {
                let key = format!("{i}.{n_res}.weight");
                candle_core::bail!(
                    "Medusa heads {fname}: head {i} {} its own projection `{key}` but head 0 {}",
                    if proj.is_some() { "has" } else { "lacks" },
                    if projs[0].is_some() { "has one" } else { "does not" }
                );
            }
            ws.push(w_i);
            bs.push(b_i);
            projs.push(proj);
        }
        let n_res = n_res_all.unwrap_or(0);
        let hidden_size = hidden.ok_or_else(|| candle_core::Error::Msg(format!("Medusa heads {fname}: no weights")))?;
        let res_blocks = (0..n_res)
            .map(|j| {
                let w: Vec<&Tensor> = ws.iter().map(|w| &w[j]).collect();
                let b: Vec<&Tensor> = bs.iter().map(|b| &b[j]).collect();
                Ok(ResBlock { w_t: Tensor::stack(&w, 0)?, bias: Tensor::stack(&b, 0)? })
            })
            .collect::<Result<Vec<_>>>()?;
        let (layout, projection) = if projs[0].is_some() {
            let p: Vec<Tensor> = projs.into_iter().map(|p| p.expect("checked: every head has one")).collect();
            (HeadLayout::OwnProjection, Some(Tensor::stack(&p, 0)?))
        } else {
            (HeadLayout::SharedLmHead, None)
        };
        let token_ids = read_head_vocab(&file.with_file_name(HEAD_VOCAB_FILE))?;
        if let (Some(ids), Some(p)) = (&token_ids, &projection) {
            if p.dims()[2] != ids.len() {
                candle_core::bail!(
                    "Medusa heads {fname}: the projections have {} rows but {HEAD_VOCAB_FILE} maps {} tokens",
                    p.dims()[2],
                    ids.len()
                );
            }
        }
        let heads =
            Self { num_heads, hidden_size, layout, res_blocks, projection, token_ids, reduced_rows: None, source: fname, packed: None };
        heads.check_config(&file.with_file_name("config.json"))?;
        heads.packed_on(device)
    }

    /// Token ids of reduced Medusa-2 heads whose lm_head rows are not bound yet: the caller
    /// passes those rows of the model's lm_head to [`MedusaHeads::bind_lm_head_rows`].
    pub fn unbound_token_ids(&self) -> Option<&[u32]> {
        match (self.layout, &self.token_ids, &self.reduced_rows) {
            (HeadLayout::SharedLmHead, Some(ids), None) => Some(ids),
            _ => None,
        }
    }

    /// Binds the lm_head rows `(V, hidden)` (in [`MedusaHeads::unbound_token_ids`] order) that
    /// reduced Medusa-2 heads project on; kept in f32 on their device.
    pub fn bind_lm_head_rows(&mut self, rows: &Tensor) -> Result<()> {
        let n = self.token_ids.as_ref().map_or(0, Vec::len);
        if rows.dims() != [n, self.hidden_size] {
            candle_core::bail!(
                "Medusa heads {}: lm_head rows of shape {:?}, expected ({n}, {})",
                self.source,
                rows.dims(),
                self.hidden_size
            );
        }
        self.reduced_rows = Some(rows.to_dtype(DType::F32)?.t()?.contiguous()?);
        if let Some(p) = &mut self.packed {
            p.projection = PackedProjection::Rows(Some(pack_q8(rows)?));
        }
        Ok(())
    }

    /// With [`PackedHeads`] built where the weights are on the CPU and the hidden size is a
    /// whole number of Q8_0 blocks.
    fn packed_on(mut self, device: &Device) -> Result<Self> {
        if !device.is_cpu() || !self.hidden_size.is_multiple_of(32) {
            return Ok(self);
        }
        let k = self.num_heads;
        let res = self
            .res_blocks
            .iter()
            .map(|b| (0..k).map(|i| Ok((pack_q8(&b.w_t.get(i)?.t()?)?, b.bias.get(i)?.flatten_all()?.to_vec1::<f32>()?))).collect())
            .collect::<Result<Vec<_>>>()?;
        let projection = match (&self.projection, &self.token_ids) {
            (Some(p), _) => PackedProjection::PerHead((0..k).map(|i| pack_q8(&p.get(i)?.t()?)).collect::<Result<_>>()?),
            (None, Some(_)) => PackedProjection::Rows(self.reduced_rows.as_ref().map(|r| pack_q8(&r.t()?)).transpose()?),
            (None, None) => PackedProjection::ModelLmHead,
        };
        self.packed = Some(PackedHeads { res, projection });
        Ok(self)
    }

    /// The same heads on the f32 path only (tests compare the two).
    #[cfg(test)]
    pub(crate) fn unpacked(&self) -> Self {
        Self { packed: None, ..self.clone() }
    }

    /// Whether the heads run from their [`PackedHeads`].
    pub fn is_packed(&self) -> bool {
        self.packed.as_ref().is_some_and(|p| !matches!(p.projection, PackedProjection::Rows(None)))
    }

    /// [`MedusaHeads::logits_rows`] on the [`PackedHeads`] for `n` hidden states `(.., hidden)`:
    /// `(K, n, vocab)`; `None` without them (not the CPU, or reduced rows not bound yet).
    fn packed_logits(&self, hidden: &Tensor, model: &dyn DecoderModel) -> Result<Option<Tensor>> {
        let Some(p) = &self.packed else { return Ok(None) };
        if matches!(p.projection, PackedProjection::Rows(None)) {
            return Ok(None);
        }
        let (k, h) = (self.num_heads, self.hidden_size);
        let x0 = hidden.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let n = x0.len() / h;
        let mut xs = vec![x0; k];
        for block in &p.res {
            for (x, (w, bias)) in xs.iter_mut().zip(block) {
                let y = w.matmul(x, n)?;
                for (xr, yr) in x.chunks_exact_mut(h).zip(y.chunks_exact(h)) {
                    for ((xi, yi), b) in xr.iter_mut().zip(yr).zip(bias) {
                        let z = yi + b;
                        *xi += z / (1.0 + (-z).exp());
                    }
                }
            }
        }
        let logits = match &p.projection {
            PackedProjection::ModelLmHead => {
                let x = Tensor::from_vec(xs.concat(), (k * n, h), &Device::Cpu)?.to_dtype(hidden.dtype())?;
                return Ok(Some(model.lm_head(&x)?.to_dtype(DType::F32)?.reshape((k, n, ()))?));
            }
            PackedProjection::PerHead(ws) => ws.iter().zip(&xs).map(|(w, x)| w.matmul(x, n)).collect::<Result<Vec<_>>>()?.concat(),
            PackedProjection::Rows(w) => w.as_ref().expect("checked above").matmul(&xs.concat(), k * n)?,
        };
        let vocab = logits.len() / (k * n);
        Ok(Some(Tensor::from_vec(logits, (k, n, vocab), &Device::Cpu)?))
    }

    /// Size of the heads' output vocabulary when reduced (`None`: the model's).
    pub fn head_vocab(&self) -> Option<usize> {
        self.token_ids.as_ref().map(Vec::len)
    }

    /// The model token id of head output `i`.
    pub fn token_id(&self, i: u32) -> u32 {
        self.token_ids.as_ref().map_or(i, |ids| ids[i as usize])
    }

    /// The top `top_k` candidate tokens of the first `depth` heads for ONE hidden state, best
    /// first, as model token ids.
    pub fn candidates(&self, hidden: &Tensor, model: &dyn DecoderModel, depth: usize, top_k: usize) -> Result<Vec<Vec<u32>>> {
        let logits = self.logits(hidden, model)?.narrow(0, 0, depth)?;
        let mut c = crate::host::top_k_tokens(&logits, top_k)?;
        if self.token_ids.is_some() {
            c.iter_mut().flatten().for_each(|t| *t = self.token_id(*t));
        }
        Ok(c)
    }

    /// Projection of reduced Medusa-2 heads: `x (.., hidden)` on the bound rows.
    fn reduced_logits(&self, x: &Tensor) -> Result<Tensor> {
        let Some(rows) = &self.reduced_rows else {
            candle_core::bail!(
                "Medusa heads {}: reduced-vocabulary heads need their lm_head rows bound (MedusaHeads::bind_lm_head_rows)",
                self.source
            );
        };
        x.broadcast_matmul(rows)
    }

    /// A `config.json` beside the heads file (Medusa's, or one `train-heads` wrote) must agree
    /// with the tensors: `medusa_num_heads`, `medusa_num_layers` and `version` (1: own
    /// projections, 2: the base lm_head), where present.
    fn check_config(&self, path: &Path) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
        let name = path.display();
        let cfg: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| candle_core::Error::Msg(format!("Medusa heads config {name}: not JSON: {e}")))?;
        let field = |key: &str| cfg.get(key).and_then(serde_json::Value::as_u64);
        let version = match self.layout {
            HeadLayout::OwnProjection => 1,
            HeadLayout::SharedLmHead => 2,
        };
        for (key, expected, what) in [
            ("medusa_num_heads", self.num_heads, "heads"),
            ("medusa_num_layers", self.res_blocks.len(), "ResBlocks per head"),
            ("version", version, "layout version (1: own projections, 2: the base lm_head)"),
        ] {
            if let Some(v) = field(key) {
                if v != expected as u64 {
                    candle_core::bail!("Medusa heads config {name}: `{key}` is {v}, but {} holds {expected} ({what})", self.source);
                }
            }
        }
        Ok(())
    }

    /// Heads from a CLI spec: `random:K` (seeded random Medusa-2 heads sized for the model) or
    /// the path of a heads file (or of the folder holding `medusa_lm_head.safetensors`).
    pub fn from_spec(spec: &str, info: &ModelInfo, seed: u64, device: &Device) -> Result<Self> {
        if let Some(k) = spec.strip_prefix("random:") {
            let k: usize =
                k.trim().parse().ok().filter(|&k| k > 0).ok_or_else(|| {
                    candle_core::Error::Msg(format!("--heads {spec}: expected random:K with K a positive number of heads"))
                })?;
            return Self::random(k, info.hidden_size, info.vocab_size, HeadLayout::SharedLmHead, seed, device);
        }
        Self::load(Path::new(spec), device)
    }

    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    pub fn layout(&self) -> HeadLayout {
        self.layout
    }

    /// ResBlocks per head.
    pub fn num_res_blocks(&self) -> usize {
        self.res_blocks.len()
    }

    /// Vocabulary of the heads' own projections (Medusa-1); `None` when they share the model's.
    pub fn vocab_size(&self) -> Option<usize> {
        self.projection.as_ref().map(|p| p.dims()[2])
    }

    /// The heads' file, or `random:K (seed S)`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Checks that the heads fit `model` (hidden size, and vocabulary for own projections).
    pub fn check_model(&self, info: &ModelInfo) -> Result<()> {
        if self.hidden_size != info.hidden_size {
            candle_core::bail!(
                "Medusa heads {} have hidden size {}, but model {} has {}",
                self.source,
                self.hidden_size,
                info.name,
                info.hidden_size
            );
        }
        if let Some(ids) = &self.token_ids {
            if let Some(&bad) = ids.iter().find(|&&t| t as usize >= info.vocab_size) {
                candle_core::bail!(
                    "Medusa heads {}: {HEAD_VOCAB_FILE} maps token {bad}, outside model {}'s vocabulary of {}",
                    self.source,
                    info.name,
                    info.vocab_size
                );
            }
        } else if let Some(v) = self.vocab_size() {
            if v != info.vocab_size {
                candle_core::bail!(
                    "Medusa heads {} project to {v} tokens, but model {} has a vocabulary of {}",
                    self.source,
                    info.name,
                    info.vocab_size
                );
            }
        }
        Ok(())
    }

    /// Every head's logits for each of `n` hidden states `(n, hidden)`: `(K, n, vocab)` f32.
    /// What evaluating heads on a corpus needs; decoding uses [`MedusaHeads::logits`].
    pub fn logits_rows(&self, hidden: &Tensor, model: &dyn DecoderModel) -> Result<Tensor> {
        let (n, h) = hidden.dims2()?;
        if h != self.hidden_size {
            candle_core::bail!("Medusa heads take hidden states of size {}, got shape {:?}", self.hidden_size, hidden.dims());
        }
        if let Some(logits) = self.packed_logits(hidden, model)? {
            return Ok(logits);
        }
        let dtype = hidden.dtype();
        let k = self.num_heads;
        let mut x = hidden.to_dtype(DType::F32)?.unsqueeze(0)?.broadcast_as((k, n, h))?.contiguous()?;
        for block in &self.res_blocks {
            let y = x.matmul(&block.w_t)?.broadcast_add(&block.bias)?.silu()?;
            x = (x + y)?;
        }
        match (&self.projection, &self.token_ids) {
            (Some(p), _) => x.matmul(p),
            (None, Some(_)) => self.reduced_logits(&x),
            (None, None) => model.lm_head(&x.reshape((k * n, h))?.to_dtype(dtype)?)?.to_dtype(DType::F32)?.reshape((k, n, ())),
        }
    }

    /// Every head's logits for ONE hidden state (`hidden` of shape `(.., hidden)` holding a single
    /// row, post final norm): `(K, vocab)` f32, row k for head k.
    pub fn logits(&self, hidden: &Tensor, model: &dyn DecoderModel) -> Result<Tensor> {
        let h = hidden.dim(D::Minus1)?;
        if h != self.hidden_size || hidden.elem_count() != h {
            candle_core::bail!("Medusa heads take one hidden state of size {}, got shape {:?}", self.hidden_size, hidden.dims());
        }
        let k = self.num_heads;
        if let Some(logits) = self.packed_logits(hidden, model)? {
            return logits.reshape((k, ()));
        }
        let dtype = hidden.dtype();
        let mut x = hidden.reshape((1, 1, h))?.to_dtype(DType::F32)?.broadcast_as((k, 1, h))?.contiguous()?;
        for block in &self.res_blocks {
            let y = x.matmul(&block.w_t)?.broadcast_add(&block.bias)?.silu()?;
            x = (x + y)?;
        }
        match (&self.projection, &self.token_ids) {
            (Some(p), _) => x.matmul(p)?.reshape((k, ())),
            (None, Some(_)) => self.reduced_logits(&x.reshape((k, h))?),
            (None, None) => model.lm_head(&x.reshape((k, h))?.to_dtype(dtype)?)?.to_dtype(DType::F32),
        }
    }
}

/// `head_vocab.json` (`{"token_ids": [..]}`), where present: non-empty, no id twice.
fn read_head_vocab(path: &Path) -> Result<Option<Vec<u32>>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(None) };
    let name = path.display();
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| candle_core::Error::Msg(format!("{name}: not JSON: {e}")))?;
    let ids: Vec<u32> = v
        .get("token_ids")
        .and_then(serde_json::Value::as_array)
        .and_then(|a| a.iter().map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok())).collect::<Option<Vec<u32>>>())
        .ok_or_else(|| candle_core::Error::Msg(format!("{name}: field `token_ids` must be a list of token ids")))?;
    if ids.is_empty() {
        candle_core::bail!("{name}: field `token_ids` is empty");
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(d) = ids.iter().find(|&&t| !seen.insert(t)) {
        candle_core::bail!("{name}: field `token_ids`: token {d} appears twice");
    }
    Ok(Some(ids))
}

fn shape_err(file: &str, key: &str, expected: &str, t: &Tensor) -> candle_core::Error {
    candle_core::Error::Msg(format!("Medusa heads {file}: key `{key}` has shape {:?}, expected {expected}", t.dims()))
}

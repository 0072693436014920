//! One layer's key/value cache: preallocated buffers `(batch, kv_heads, capacity, head_dim)`
//! written in place, so appending a token costs its own size, not a copy of the whole cache.

use candle_core::{Result, Tensor};
use decodebench_kernels::compact_rows;

/// Capacity is grown in steps of this many positions (and doubled), so the buffers of a model
/// with a 32k context are not allocated whole up front.
const GROWTH: usize = 256;

#[derive(Debug, Clone)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    /// Dimension of the sequence positions.
    seq_dim: usize,
}

impl KvCache {
    pub fn new(seq_dim: usize) -> Self {
        Self { k: None, v: None, len: 0, seq_dim }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        match &self.k {
            Some(k) if self.len > 0 => k.dim(0).unwrap_or(0),
            _ => 0,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    fn capacity(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.dim(self.seq_dim).unwrap_or(0))
    }

    /// Appends `(batch, kv_heads, n, head_dim)` keys and values; returns views of the whole cache.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(self.seq_dim)?;
        let batch = k.dim(0)?;
        let needed = self.len + n;
        let same_batch = self.k.as_ref().is_some_and(|buf| buf.dim(0).ok() == Some(batch));
        if !same_batch && self.len > 0 {
            candle_core::bail!("KV cache holds {} rows, block has {batch}", self.batch());
        }
        if !same_batch || needed > self.capacity() {
            // Doubling amortises growth within a sequence; a new batch size (the cache is empty
            // then) starts from what it needs, or a run alternating beam search with one-row
            // strategies would double the buffers at every switch.
            let grown = if same_batch { needed.max(2 * self.capacity()) } else { needed };
            let capacity = grown.next_multiple_of(GROWTH);
            let mut shape = k.dims().to_vec();
            shape[self.seq_dim] = capacity;
            let new_k = Tensor::zeros(shape.as_slice(), k.dtype(), k.device())?;
            let new_v = Tensor::zeros(shape.as_slice(), v.dtype(), v.device())?;
            if let (Some(old_k), Some(old_v)) = (&self.k, &self.v) {
                if self.len > 0 {
                    // A prefix of the positions is strided when there are several heads or rows.
                    new_k.slice_set(&old_k.narrow(self.seq_dim, 0, self.len)?.contiguous()?, self.seq_dim, 0)?;
                    new_v.slice_set(&old_v.narrow(self.seq_dim, 0, self.len)?.contiguous()?, self.seq_dim, 0)?;
                }
            }
            self.k = Some(new_k);
            self.v = Some(new_v);
        }
        let (kb, vb) = (self.k.as_ref().expect("allocated above"), self.v.as_ref().expect("allocated above"));
        kb.slice_set(&k.contiguous()?, self.seq_dim, self.len)?;
        vb.slice_set(&v.contiguous()?, self.seq_dim, self.len)?;
        self.len = needed;
        Ok((kb.narrow(self.seq_dim, 0, self.len)?, vb.narrow(self.seq_dim, 0, self.len)?))
    }

    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            candle_core::bail!("cannot truncate a KV cache of {} positions to {len}", self.len);
        }
        self.len = len;
        Ok(())
    }

    pub fn compact(&mut self, start: usize, keep: &[usize]) -> Result<()> {
        if let Some(&last) = keep.last() {
            if start + last >= self.len {
                candle_core::bail!("compact: position {} is beyond the cache ({} positions)", start + last, self.len);
            }
        }
        if start > self.len {
            candle_core::bail!("compact: block start {start} is beyond the cache ({} positions)", self.len);
        }
        if let (Some(k), Some(v)) = (&self.k, &self.v) {
            compact_rows(k, self.seq_dim, start, keep)?;
            compact_rows(v, self.seq_dim, start, keep)?;
        }
        self.len = start + keep.len();
        Ok(())
    }

    pub fn reorder(&mut self, rows: &[usize]) -> Result<()> {
        let batch = self.batch();
        if let Some(&bad) = rows.iter().find(|&&r| r >= batch) {
            candle_core::bail!("reorder: row {bad} does not exist (cache has {batch} rows)");
        }
        if let (Some(k), Some(v)) = (&self.k, &self.v) {
            let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            let idx = Tensor::from_vec(idx, rows.len(), k.device())?;
            // index_select makes a fresh contiguous buffer of the same capacity.
            self.k = Some(k.index_select(&idx, 0)?);
            self.v = Some(v.index_select(&idx, 0)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn block(batch: usize, n: usize) -> Tensor {
        Tensor::ones((batch, 2, n, 4), candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    /// Switching between one row and several (greedy, then beam search, then greedy, ...) on the
    /// same model keeps the buffers at the size a sequence needs.
    #[test]
    fn alternating_batch_sizes_do_not_grow_the_buffers() {
        let mut cache = KvCache::new(2);
        for round in 0..12 {
            let batch = if round % 2 == 0 { 1 } else { 2 };
            cache.clear();
            for _ in 0..300 {
                cache.append(&block(batch, 1), &block(batch, 1)).unwrap();
            }
            assert_eq!(cache.batch(), batch);
            assert!(cache.capacity() <= 512, "round {round}: capacity {} for 300 positions", cache.capacity());
        }
        // Within one sequence, growth still doubles.
        cache.clear();
        for _ in 0..1100 {
            cache.append(&block(2, 1), &block(2, 1)).unwrap();
        }
        assert_eq!(cache.len(), 1100);
        assert!(cache.capacity() >= 1100 && cache.capacity() <= 2048, "capacity {}", cache.capacity());
    }

    /// A block that crosses the capacity while the cache is not full (after a rollback, or a
    /// tree verified near the end of the buffer) grows it and keeps every position.
    #[test]
    fn a_block_crossing_the_capacity_keeps_the_cache() {
        let dev = Device::Cpu;
        let mut cache = KvCache::new(2);
        let positions = |from: usize, n: usize| {
            let v: Vec<f32> = (0..2 * 2 * n * 4).map(|i| (from * 1000 + i) as f32).collect();
            Tensor::from_vec(v, (2, 2, n, 4), &dev).unwrap()
        };
        cache.append(&positions(0, 250), &positions(0, 250)).unwrap();
        cache.truncate(240).unwrap();
        let kept = cache.k.as_ref().unwrap().narrow(2, 0, 240).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (k, _) = cache.append(&positions(7, 30), &positions(7, 30)).unwrap();
        assert_eq!(cache.len(), 270);
        assert_eq!(k.narrow(2, 0, 240).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), kept);
        let new = k.narrow(2, 240, 30).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(new, positions(7, 30).flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}

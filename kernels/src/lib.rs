//! Hot custom ops of decodebench, written once over candle tensors so they run on whatever device
//! the model is on.
//!
//! - [`attention_mask`]: the additive mask of one block forward (causal chain or tree).
//! - [`compact_rows`]: moving the accepted positions of a block into place in a KV buffer.

use candle_core::{DType, Device, Result, Tensor};

/// Additive attention mask `(n, cache_len + n)` for a block of `n` new tokens: 0 where a token may
/// look, -inf elsewhere. Every token sees the whole cache and itself; within the block it sees
/// the tokens for which `sees(i, j)` holds (`j < i`).
///
/// Returns `None` for a single token, which sees everything there is.
pub fn attention_mask(
    n: usize,
    cache_len: usize,
    parents: Option<&[Option<usize>]>,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    if n <= 1 {
        return Ok(None);
    }
    let width = cache_len + n;
    let mut mask = vec![f32::NEG_INFINITY; n * width];
    for i in 0..n {
        let row = &mut mask[i * width..(i + 1) * width];
        row[..cache_len].fill(0.0);
        match parents {
            None => row[cache_len..=cache_len + i].fill(0.0),
            Some(parents) => {
                // Walk up the ancestors: the tree is given by parent indices, parents first.
                let mut node = Some(i);
                while let Some(j) = node {
                    row[cache_len + j] = 0.0;
                    node = parents[j];
                }
            }
        }
    }
    Tensor::from_vec(mask, (n, width), device)?.to_dtype(dtype).map(Some)
}

/// In a buffer laid out `(.., seq, ..)` along `dim`, copies the rows `start + keep[j]` to
/// `start + j` for every j, in place. `keep` must be strictly increasing, so every destination is
/// at or before its source and rows already in place are skipped.
pub fn compact_rows(buffer: &Tensor, dim: usize, start: usize, keep: &[usize]) -> Result<()> {
    if keep.windows(2).any(|w| w[0] >= w[1]) {
        candle_core::bail!("compact_rows: kept positions {keep:?} are not strictly increasing");
    }
    // The prefix of `keep` that is already in place (keep[j] == j) needs no copy.
    let first_moved = keep.iter().enumerate().position(|(j, &k)| k != j);
    let Some(first) = first_moved else { return Ok(()) };
    let idx: Vec<u32> = keep[first..].iter().map(|&k| (start + k) as u32).collect();
    let idx = Tensor::from_vec(idx, keep.len() - first, buffer.device())?;
    // Gather first (a copy), then write: sources and destinations may overlap.
    let rows = buffer.index_select(&idx, dim)?;
    buffer.slice_set(&rows, dim, start + first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible(mask: &Tensor) -> Vec<Vec<bool>> {
        mask.to_vec2::<f32>().unwrap().into_iter().map(|r| r.into_iter().map(|v| v == 0.0).collect()).collect()
    }

    #[test]
    fn causal_mask_sees_cache_and_earlier_tokens() {
        let m = attention_mask(3, 2, None, DType::F32, &Device::Cpu).unwrap().unwrap();
        let v = visible(&m);
        assert_eq!(v[0], [true, true, true, false, false]);
        assert_eq!(v[1], [true, true, true, true, false]);
        assert_eq!(v[2], [true, true, true, true, true]);
    }

    #[test]
    fn tree_mask_sees_only_ancestors() {
        // 0 ─ 1 ─ 3
        //  └─ 2
        // 4 (second root)
        let parents = [None, Some(0), Some(0), Some(1), None];
        let m = attention_mask(5, 1, Some(&parents), DType::F32, &Device::Cpu).unwrap().unwrap();
        let v = visible(&m);
        assert_eq!(v[2], [true, true, false, true, false, false]);
        assert_eq!(v[3], [true, true, true, false, true, false]);
        assert_eq!(v[4], [true, false, false, false, false, true]);
    }

    #[test]
    fn single_token_needs_no_mask() {
        assert!(attention_mask(1, 7, None, DType::F32, &Device::Cpu).unwrap().is_none());
    }

    #[test]
    fn compact_moves_kept_rows_into_place() {
        let buf = Tensor::arange(0f32, 8., &Device::Cpu).unwrap().reshape((1, 8, 1)).unwrap();
        compact_rows(&buf, 1, 2, &[0, 2, 5]).unwrap();
        let v: Vec<f32> = buf.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&v[..5], &[0., 1., 2., 4., 7.]);
    }

    #[test]
    fn compact_rejects_unordered_positions() {
        let buf = Tensor::zeros((4, 1), DType::F32, &Device::Cpu).unwrap();
        let err = compact_rows(&buf, 0, 0, &[2, 1]).unwrap_err().to_string();
        assert!(err.contains("strictly increasing"), "{err}");
    }
}

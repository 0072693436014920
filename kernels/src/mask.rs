//! The additive attention mask of one block forward (the batched attention path).

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
}

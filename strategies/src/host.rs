//! The values that come back from the device to the host every step, named in one place so
//! that device round-trips stay few and small: chosen tokens (arg-max on the device) and, for the
//! strategies that sample or accept by probability, the logits rows they inspect.

use candle_core::{DType, Result, Tensor, D};

/// Arg-max token of each row of `(.., vocab)` logits, brought to the host.
pub fn argmax_tokens(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()
}

/// The one row of `(1, 1, vocab)` / `(1, vocab)` / `(vocab)` logits, as f32 on the host.
pub fn logits_row(logits: &Tensor) -> Result<Vec<f32>> {
    logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// Every row of `(.., vocab)` logits, as f32 on the host.
pub fn logits_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let vocab = logits.dim(D::Minus1)?;
    let rows = logits.elem_count() / vocab;
    logits.reshape((rows, vocab))?.to_dtype(DType::F32)?.to_vec2::<f32>()
}

/// The `k` largest entries of each row of `(.., vocab)` logits, as token ids on the host, best
/// first; equal values keep index order (the lower id first, as the arg-max). Medusa's candidates.
pub fn top_k_tokens(logits: &Tensor, k: usize) -> Result<Vec<Vec<u32>>> {
    let rows = logits_rows(logits)?;
    Ok(rows.iter().map(|row| top_k_of_row(row, k)).collect())
}

fn top_k_of_row(row: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    let better = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    let mut ids: Vec<u32> = (0..row.len() as u32).collect();
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, better);
        ids.truncate(k);
    }
    ids.sort_unstable_by(better);
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn top_k_is_ordered_and_breaks_ties_by_lower_id() {
        let t = Tensor::from_vec(vec![1f32, 5.0, 3.0, 5.0, -2.0, 3.0, 0.0, 9.0], (2, 4), &Device::Cpu).unwrap();
        assert_eq!(top_k_tokens(&t, 3).unwrap(), vec![vec![1, 3, 2], vec![3, 1, 2]]);
        assert_eq!(top_k_tokens(&t, 10).unwrap(), vec![vec![1, 3, 2, 0], vec![3, 1, 2, 0]]);
        assert_eq!(top_k_tokens(&t, 1).unwrap()[0], argmax_tokens(&t.get(0).unwrap()).unwrap());
    }
}

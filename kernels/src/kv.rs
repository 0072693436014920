//! KV-cache compaction: keeping the accepted positions of a block.

use candle_core::{Result, Tensor};

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
    use candle_core::{DType, Device};

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

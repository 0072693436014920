//! The values that come back from the device to the host every step, named in one place so
//! that device round-trips stay few and small.

use candle_core::{DType, Result, Tensor, D};

/// Arg-max token of each row of `(.., vocab)` logits, brought to the host.
pub fn argmax_tokens(logits: &Tensor) -> Result<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()
}

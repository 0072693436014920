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

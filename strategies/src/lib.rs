//! Decoding strategies over one small model trait.
//!
//! Every strategy drives the same [`DecoderModel`]: one forward over N new tokens with explicit
//! positions and an attention structure ([`BlockAttention`]: a causal chain or a tree), one KV
//! cache with truncate / compact / reorder, and logits plus last hidden states for the rows asked
//! for. Each strategy returns the generated tokens together with one [`StepRecord`] per target
//! forward, so the runner can build tables without knowing which strategy ran.
//!
//! Nothing here mentions a device: tensors stay wherever the model put them, and the few values
//! that must come back to the host each step go through [`host`].

pub mod autoregressive;
pub mod beam;
mod cache_ledger;
pub mod clock;
mod common;
pub mod host;
pub mod lookup;
pub mod medusa;
mod model;
mod record;
pub mod sampler;
pub mod speculative;
pub mod toy;

pub use cache_ledger::CacheLedger;
pub use common::{prefill, StopConfig};
pub use model::{BlockAttention, DecoderModel, ForwardInput, ForwardOutput, LogitRows, ModelInfo};
pub use record::{Generation, StepRecord, StopReason};

//! The clock strategies mark their phases (draft, verify, accept) on.
//!
//! Every mark synchronises the model's device first: on CUDA a forward returns once its kernels
//! are queued, so an unsynchronised timer would charge the work to whichever phase next reads a
//! value back. On the CPU synchronising is free.

use std::time::Instant;

use candle_core::{Device, Result};

/// The current time, after the device has finished its queued work.
pub fn now(device: &Device) -> Result<Instant> {
    device.synchronize()?;
    Ok(Instant::now())
}

/// Seconds since `start`, after the device has finished its queued work.
pub fn since(device: &Device, start: Instant) -> Result<f64> {
    Ok(now(device)?.duration_since(start).as_secs_f64())
}

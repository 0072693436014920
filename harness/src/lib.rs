//! decodebench: which decoding strategy is fastest on my model and my hardware, and what does it
//! cost in quality?
//!
//! Data flow: prompts → strategy → per-step records → tables → charts/report.
//! This crate holds the model layer (GGUF and safetensors decoders implementing
//! [`decodebench_strategies::DecoderModel`]), the tokenizer, the model catalog and fetcher, and
//! the CLI.

pub mod calibrate;
pub mod catalog;
pub mod data;
pub mod decoding;
pub mod doctor;
pub mod fetch;
pub mod heads;
pub mod models;
pub mod registry;
pub mod runner;
pub mod slurm;
pub mod testing;
pub mod tokenizer;
pub mod verify;

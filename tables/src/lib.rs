//! The analysis half of decodebench: the runner's per-unit records on disk (`records.jsonl`)
//! become polars tables (Parquet and CSV), with quality metrics, paired speedups and the cost
//! model's predictions. Measurement (the runner, in the `decodebench` crate) writes records;
//! this crate only reads them, so a results folder can be re-analysed without a model.
//!
//! - [`records`]: what the runner writes (records, meta.json, calibration.json);
//! - [`quality`], [`stats`], [`cost`]: the metrics, the geometric mean and its paired
//!   bootstrap, the cost model — pure functions;
//! - [`tables`]: records → rows → DataFrames, written and read back;
//! - [`answers`]: FastChat answer files;
//! - [`analysis`]: a results folder end to end, and the terminal summary.

pub mod analysis;
pub mod answers;
pub mod cost;
pub mod quality;
pub mod records;
pub mod stats;
pub mod tables;

pub use analysis::{analyse, analyse_records, format_summary, Analysis, LosslessFailure};
/// The polars this crate builds its tables with (features `parquet`, `csv`), for readers of
/// the tables: use it rather than a second polars of another version or feature set.
pub use polars;
pub use tables::{build, write, Tables};

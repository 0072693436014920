//! Reading a results folder into plain rows: the tables (Parquet first, the CSV twin when the
//! Parquet file is absent or unreadable), `meta.json` and `calibration.json`.
//!
//! Nothing here fails on a partial folder (a killed run, a table not written yet, a column from
//! an older schema): every absence becomes a note in [`Folder::missing`] and the rest is read, so
//! a report always shows what is there and says what is not.

use std::path::{Path, PathBuf};

use decodebench_tables::polars::prelude::*;
use decodebench_tables::records::{Calibration, RunMeta, CALIBRATION_FILE, META_FILE};

/// The tables a results folder holds, in the order the report lists them.
pub const TABLES: [&str; 5] = ["summary", "turns", "steps", "acceptance", "calibration"];

/// One row of `summary`: a configuration on one MT-Bench category (`all`: every turn).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SummaryRow {
    pub strategy: String,
    pub config: String,
    pub config_id: String,
    pub lossless: Option<bool>,
    pub category: String,
    pub turns: Option<f64>,
    pub speedup: Option<f64>,
    pub speedup_ci_low: Option<f64>,
    pub speedup_ci_high: Option<f64>,
    pub predicted_speedup: Option<f64>,
    pub mean_accepted_tokens: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub exact_match: Option<f64>,
    pub first_divergence_mean: Option<f64>,
    pub nll_per_token: Option<f64>,
    pub rouge_l: Option<f64>,
    pub distinct_2: Option<f64>,
    pub repetition_rate: Option<f64>,
    pub peak_rss_mb: Option<f64>,
}

/// The columns of `turns` the report uses (time split of each answered turn).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnRow {
    pub config_id: String,
    pub strategy: String,
    pub config: String,
    pub question_id: String,
    pub new_tokens: Option<f64>,
    pub decode_s: Option<f64>,
    pub draft_s: Option<f64>,
    pub verify_s: Option<f64>,
    pub update_s: Option<f64>,
}

/// One row of `acceptance`: a rate by draft position (`position`), by Medusa candidate rank at
/// a depth (`rank`), or the share of steps that accepted `length` tokens (`length`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AcceptanceRow {
    pub config_id: String,
    pub strategy: String,
    pub config: String,
    pub kind: String,
    pub depth: Option<f64>,
    pub rank: Option<f64>,
    pub length: Option<f64>,
    pub count: Option<f64>,
    pub total: Option<f64>,
    pub rate: Option<f64>,
}

/// One point of a model's forward-cost curve.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CalibrationRow {
    pub role: String,
    pub context: Option<f64>,
    pub tokens: f64,
    pub forward_ms: f64,
    pub bandwidth_gbs: Option<f64>,
}

/// What was found of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableStatus {
    pub name: String,
    /// The file read, when one was.
    pub source: Option<PathBuf>,
    pub rows: usize,
}

/// Everything the report shows of one results folder.
#[derive(Debug, Default)]
pub struct Folder {
    pub dir: PathBuf,
    pub summary: Vec<SummaryRow>,
    pub turns: Vec<TurnRow>,
    pub acceptance: Vec<AcceptanceRow>,
    pub calibration: Vec<CalibrationRow>,
    /// `calibration.json` as read: every shard's curves after a merge.
    pub calibration_json: Option<Calibration>,
    pub tables: Vec<TableStatus>,
    pub meta: Option<RunMeta>,
    /// `meta.json` when it exists but is not a [`RunMeta`] (another version): shown raw.
    pub meta_raw: Option<String>,
    /// One line per thing absent, empty or unreadable, naming the file.
    pub missing: Vec<String>,
}

impl Folder {
    /// The `all` rows of `summary`: one per configuration, in table order.
    pub fn overall(&self) -> Vec<&SummaryRow> {
        self.summary.iter().filter(|r| r.category == "all").collect()
    }

    pub fn table(&self, name: &str) -> Option<&TableStatus> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// Reads what `dir` holds. Errors only when `dir` itself is not a readable folder.
pub fn read_folder(dir: &Path) -> anyhow::Result<Folder> {
    anyhow::ensure!(dir.is_dir(), "{}: not a results folder (no such directory)", dir.display());
    let mut f = Folder { dir: dir.to_path_buf(), ..Folder::default() };
    let mut frames = Vec::new();
    for name in TABLES {
        let (frame, status) = read_table(dir, name, &mut f.missing);
        f.tables.push(status);
        frames.push(frame);
    }
    let mut frames = frames.into_iter();
    let (summary, turns, _steps, acceptance, calibration) =
        (frames.next().flatten(), frames.next().flatten(), frames.next().flatten(), frames.next().flatten(), frames.next().flatten());
    if let Some(df) = summary {
        f.summary = summary_rows(&df, &mut f.missing);
    }
    if let Some(df) = turns {
        f.turns = turn_rows(&df, &mut f.missing);
    }
    if let Some(df) = acceptance {
        f.acceptance = acceptance_rows(&df, &mut f.missing);
    }
    if let Some(df) = calibration {
        f.calibration = calibration_rows(&df, &mut f.missing);
    }
    read_meta(dir, &mut f);
    read_calibration_json(dir, &mut f);
    Ok(f)
}

/// `dir/<name>.parquet`, else `dir/<name>.csv`. An absent, unreadable or empty table is a note.
fn read_table(dir: &Path, name: &str, notes: &mut Vec<String>) -> (Option<DataFrame>, TableStatus) {
    let parquet = dir.join(format!("{name}.parquet"));
    let csv = dir.join(format!("{name}.csv"));
    let mut errors = Vec::new();
    let mut found = None;
    if parquet.is_file() {
        match std::fs::File::open(&parquet).map_err(PolarsError::from).and_then(|file| ParquetReader::new(file).finish()) {
            Ok(df) => found = Some((df, parquet.clone())),
            Err(e) => errors.push(format!("{} is unreadable ({})", parquet.display(), one_line(&e.to_string()))),
        }
    }
    if found.is_none() && csv.is_file() {
        let read = CsvReadOptions::default()
            .with_has_header(true)
            .with_infer_schema_length(None)
            .try_into_reader_with_file_path(Some(csv.clone()))
            .and_then(|r| r.finish());
        match read {
            Ok(df) => found = Some((df, csv.clone())),
            Err(e) => errors.push(format!("{} is unreadable ({})", csv.display(), one_line(&e.to_string()))),
        }
    }
    let status = TableStatus {
        name: name.to_string(),
        source: found.as_ref().map(|(_, p)| p.clone()),
        rows: found.as_ref().map_or(0, |(df, _)| df.height()),
    };
    match found {
        Some((df, path)) => {
            if let Some(e) = errors.first() {
                notes.push(format!("table `{name}`: {e}; read {} instead", path.display()));
            }
            if df.height() == 0 {
                notes.push(format!("table `{name}` ({}) is empty: no records", path.display()));
                return (None, status);
            }
            (Some(df), status)
        }
        None if errors.is_empty() => {
            notes.push(format!("table `{name}` is missing: neither {name}.parquet nor {name}.csv is in {}", dir.display()));
            (None, status)
        }
        None => {
            notes.push(format!("table `{name}`: {}", errors.join("; ")));
            (None, status)
        }
    }
}

fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Typed access to the columns of one table; an absent or mistyped column reads as all-null
/// and leaves one note.
struct Cols<'a> {
    df: &'a DataFrame,
    table: &'static str,
    notes: &'a mut Vec<String>,
}

impl Cols<'_> {
    fn column(&mut self, name: &str) -> Option<&Column> {
        match self.df.column(name) {
            Ok(c) => Some(c),
            Err(_) => {
                self.notes.push(format!("table `{}` has no column `{name}`: shown as –", self.table));
                None
            }
        }
    }

    fn f64(&mut self, name: &str) -> Vec<Option<f64>> {
        let n = self.df.height();
        let table = self.table;
        let Some(c) = self.column(name) else { return vec![None; n] };
        match c.cast(&DataType::Float64).and_then(|c| c.f64().map(|ca| ca.iter().collect::<Vec<_>>())) {
            Ok(v) => v.into_iter().map(|x| x.filter(|x| x.is_finite())).collect(),
            Err(e) => {
                self.notes.push(format!("table `{table}`, column `{name}`: not numeric ({})", one_line(&e.to_string())));
                vec![None; n]
            }
        }
    }

    fn str(&mut self, name: &str) -> Vec<String> {
        let n = self.df.height();
        let table = self.table;
        let Some(c) = self.column(name) else { return vec![String::new(); n] };
        let read = match c.dtype() {
            DataType::String => c.str().map(|ca| ca.iter().map(|s| s.unwrap_or("").to_string()).collect::<Vec<_>>()),
            _ => c.cast(&DataType::String).and_then(|c| c.str().map(|ca| ca.iter().map(|s| s.unwrap_or("").to_string()).collect())),
        };
        read.unwrap_or_else(|e| {
            self.notes.push(format!("table `{table}`, column `{name}`: not text ({})", one_line(&e.to_string())));
            vec![String::new(); n]
        })
    }

    fn bool(&mut self, name: &str) -> Vec<Option<bool>> {
        let n = self.df.height();
        let Some(c) = self.column(name) else { return vec![None; n] };
        match c.dtype() {
            DataType::Boolean => c.bool().map(|ca| ca.iter().collect()).unwrap_or_else(|_| vec![None; n]),
            DataType::String => c
                .str()
                .map(|ca| {
                    ca.iter()
                        .map(|s| match s.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
                            Some("true" | "1" | "yes") => Some(true),
                            Some("false" | "0" | "no") => Some(false),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_else(|_| vec![None; n]),
            _ => self.f64(name).into_iter().map(|x| x.map(|x| x != 0.0)).collect(),
        }
    }
}

fn summary_rows(df: &DataFrame, notes: &mut Vec<String>) -> Vec<SummaryRow> {
    let mut c = Cols { df, table: "summary", notes };
    let strategy = c.str("strategy");
    let config = c.str("config");
    let config_id = c.str("config_id");
    let lossless = c.bool("lossless");
    let category = c.str("category");
    let turns = c.f64("turns");
    let speedup = c.f64("speedup");
    let lo = c.f64("speedup_ci_low");
    let hi = c.f64("speedup_ci_high");
    let predicted = c.f64("predicted_speedup");
    let accepted = c.f64("mean_accepted_tokens");
    let tps = c.f64("tokens_per_s");
    let exact = c.f64("exact_match");
    let div = c.f64("first_divergence_mean");
    let nll = c.f64("nll_per_token");
    let rouge = c.f64("rouge_l");
    let distinct = c.f64("distinct_2");
    let rep = c.f64("repetition_rate");
    let rss = c.f64("peak_rss_mb");
    (0..df.height())
        .map(|i| SummaryRow {
            strategy: strategy[i].clone(),
            config: config[i].clone(),
            config_id: fallback_id(&config_id[i], &strategy[i], &config[i]),
            lossless: lossless[i],
            category: if category[i].is_empty() { "all".to_string() } else { category[i].clone() },
            turns: turns[i],
            speedup: speedup[i],
            speedup_ci_low: lo[i],
            speedup_ci_high: hi[i],
            predicted_speedup: predicted[i],
            mean_accepted_tokens: accepted[i],
            tokens_per_s: tps[i],
            exact_match: exact[i],
            first_divergence_mean: div[i],
            nll_per_token: nll[i],
            rouge_l: rouge[i],
            distinct_2: distinct[i],
            repetition_rate: rep[i],
            peak_rss_mb: rss[i],
        })
        .collect()
}

/// `config_id` as the tables write it (`strategy` or `strategy[config]`), rebuilt when the
/// column is absent.
fn fallback_id(id: &str, strategy: &str, config: &str) -> String {
    if !id.is_empty() {
        id.to_string()
    } else if config.is_empty() {
        strategy.to_string()
    } else {
        format!("{strategy}[{config}]")
    }
}

fn turn_rows(df: &DataFrame, notes: &mut Vec<String>) -> Vec<TurnRow> {
    let mut c = Cols { df, table: "turns", notes };
    let config_id = c.str("config_id");
    let strategy = c.str("strategy");
    let config = c.str("config");
    let question_id = c.str("question_id");
    let new_tokens = c.f64("new_tokens");
    let decode = c.f64("decode_s");
    let draft = c.f64("draft_s");
    let verify = c.f64("verify_s");
    let update = c.f64("update_s");
    (0..df.height())
        .map(|i| TurnRow {
            config_id: fallback_id(&config_id[i], &strategy[i], &config[i]),
            strategy: strategy[i].clone(),
            config: config[i].clone(),
            question_id: question_id[i].clone(),
            new_tokens: new_tokens[i],
            decode_s: decode[i],
            draft_s: draft[i],
            verify_s: verify[i],
            update_s: update[i],
        })
        .collect()
}

fn acceptance_rows(df: &DataFrame, notes: &mut Vec<String>) -> Vec<AcceptanceRow> {
    let mut c = Cols { df, table: "acceptance", notes };
    let config_id = c.str("config_id");
    let strategy = c.str("strategy");
    let config = c.str("config");
    let kind = c.str("kind");
    let depth = c.f64("depth");
    let rank = c.f64("rank");
    let length = c.f64("length");
    let count = c.f64("count");
    let total = c.f64("total");
    let rate = c.f64("rate");
    (0..df.height())
        .map(|i| AcceptanceRow {
            config_id: fallback_id(&config_id[i], &strategy[i], &config[i]),
            strategy: strategy[i].clone(),
            config: config[i].clone(),
            kind: kind[i].clone(),
            depth: depth[i],
            rank: rank[i],
            length: length[i],
            count: count[i],
            total: total[i],
            rate: rate[i].or_else(|| match (count[i], total[i]) {
                (Some(c), Some(t)) if t > 0.0 => Some(c / t),
                _ => None,
            }),
        })
        .collect()
}

fn calibration_rows(df: &DataFrame, notes: &mut Vec<String>) -> Vec<CalibrationRow> {
    let mut c = Cols { df, table: "calibration", notes };
    let role = c.str("role");
    let context = c.f64("context");
    let tokens = c.f64("tokens");
    let ms = c.f64("forward_ms");
    let bw = c.f64("bandwidth_gbs");
    (0..df.height())
        .filter_map(|i| {
            Some(CalibrationRow {
                role: role[i].clone(),
                context: context[i],
                tokens: tokens[i]?,
                forward_ms: ms[i]?,
                bandwidth_gbs: bw[i],
            })
        })
        .collect()
}

fn read_meta(dir: &Path, f: &mut Folder) {
    let path = dir.join(META_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            f.missing
                .push(format!("{META_FILE} is missing from {}: the run's machine, models, commit and config are unknown", dir.display()));
            return;
        }
        Err(e) => {
            f.missing.push(format!("{} is unreadable: {e}", path.display()));
            return;
        }
    };
    match serde_json::from_str::<RunMeta>(&text) {
        Ok(m) => f.meta = Some(m),
        Err(e) => {
            f.missing.push(format!("{} is not this version's run metadata ({e}): shown as it is", path.display()));
            f.meta_raw = Some(match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => serde_json::to_string_pretty(&v).unwrap_or(text),
                Err(_) => text,
            });
        }
    }
}

/// The `calibration` table is the forward-cost curve flattened; when it is absent,
/// `calibration.json` (the same curves) stands in.
fn read_calibration_json(dir: &Path, f: &mut Folder) {
    let path = dir.join(CALIBRATION_FILE);
    if !path.is_file() {
        f.missing.push(format!("{CALIBRATION_FILE} is missing from {}: the run has no forward-cost calibration", dir.display()));
        return;
    }
    let parsed = std::fs::read_to_string(&path)
        .map_err(anyhow::Error::from)
        .and_then(|t| serde_json::from_str::<Calibration>(&t).map_err(anyhow::Error::from));
    match parsed {
        Ok(cal) => {
            if f.calibration.is_empty() {
                for (role, curve) in &cal.models {
                    for (&tokens, &ms) in &curve.forward_ms {
                        f.calibration.push(CalibrationRow {
                            role: role.clone(),
                            context: Some(curve.context as f64),
                            tokens: tokens as f64,
                            forward_ms: ms,
                            bandwidth_gbs: curve.bandwidth_gbs,
                        });
                    }
                }
            }
            f.calibration_json = Some(cal);
        }
        Err(e) => f.missing.push(format!("{} is not valid: {e}", path.display())),
    }
}

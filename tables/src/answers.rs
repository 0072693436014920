//! FastChat (MT-Bench's `llm_judge`) answer files, so a run's answers can be judged with
//! FastChat's own scripts: `model_answer/<model_id>.jsonl`, one file per configuration, one line
//! per question (repeat 0), in FastChat's fields:
//!
//! ```json
//! {"question_id": 81, "answer_id": "…", "model_id": "qwen2.5-coder-1.5b__greedy",
//!  "choices": [{"index": 0, "turns": ["first answer", "second answer"]}], "tstamp": 1764595277.0}
//! ```
//!
//! `model_id` is `<target model name>__<config id>` with every character outside
//! `[A-Za-z0-9._-]` replaced by `_` (a model named by a path contributes its file name).
//! `answer_id` is a hash of the model id, question id and answers, so re-analysing a folder
//! writes the same files; `tstamp` is the run's end (its start while it has none), in seconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::records::{RunMeta, UnitRecord};
use crate::tables::question_order;

/// The folder of the answer files, as FastChat names it.
pub const ANSWER_DIR: &str = "model_answer";

/// Every character outside `[A-Za-z0-9._-]` replaced by `_`.
pub fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
}

/// The target model's name as meta.json records it (a path: its file name).
fn target_name(meta: &RunMeta) -> Result<String> {
    let Some(target) = meta.models.iter().find(|m| m.role == "target") else {
        bail!("meta.json lists no model with role target: the answers need its name");
    };
    let name = target.name.trim_end_matches('/');
    Ok(name.rsplit('/').next().unwrap_or(name).to_string())
}

/// FastChat's model id of a configuration.
pub fn model_id(meta: &RunMeta, config_id: &str) -> Result<String> {
    Ok(format!("{}__{}", sanitize(&target_name(meta)?), sanitize(config_id)))
}

/// 64-bit FNV-1a: a fixed hash (std's is randomised per process), enough for an id.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Seconds since 1970 of an RFC 3339 time (`2026-12-01T13:21:17.5Z`, `…+01:00`).
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.trim();
    let num = |a: usize, b: usize| -> Option<i64> { s.get(a..b)?.parse().ok() };
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if s.get(4..5)? != "-" || s.get(7..8)? != "-" || !matches!(s.get(10..11)?, "T" | "t" | " ") {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        frac = format!("0.{}", &r[..digits]).parse().ok()?;
        rest = &r[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.get(0..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    // Days from 1970-01-01 to y-mo-d (Howard Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset) as f64 + frac)
}

/// A question id as FastChat has it: a JSON number when all digits (MT-Bench's), else text.
fn question_value(id: &str) -> Value {
    match id.parse::<u64>() {
        Ok(n) if id.bytes().all(|b| b.is_ascii_digit()) && n.to_string() == id => json!(n),
        _ => json!(id),
    }
}

/// One FastChat answer line.
pub fn answer_line(model_id: &str, record: &UnitRecord, tstamp: f64) -> Value {
    let mut turns: Vec<_> = record.turns.iter().collect();
    turns.sort_by_key(|t| t.turn);
    let texts: Vec<&str> = turns.iter().map(|t| t.text.as_str()).collect();
    let mut parts = vec![model_id, record.question_id.as_str()];
    parts.extend(&texts);
    json!({
        "question_id": question_value(&record.question_id),
        "answer_id": format!("{:016x}", fnv1a(&parts)),
        "model_id": model_id,
        "choices": [{"index": 0, "turns": texts}],
        "tstamp": tstamp,
    })
}

/// Writes `dir/model_answer/<model_id>.jsonl` for every configuration with records (repeat 0
/// only, questions in order); returns the paths written.
pub fn write_answers(dir: &Path, records: &[UnitRecord], meta: &RunMeta) -> Result<Vec<PathBuf>> {
    let tstamp = meta.ended.as_deref().and_then(parse_rfc3339).or_else(|| parse_rfc3339(&meta.started)).unwrap_or(0.0);
    let mut by_config: BTreeMap<String, Vec<&UnitRecord>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.repeat == 0) {
        by_config.entry(r.key.id()).or_default().push(r);
    }
    let out = dir.join(ANSWER_DIR);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    let mut written = Vec::new();
    for (config_id, mut units) in by_config {
        let model_id = model_id(meta, &config_id)?;
        if let Some(other) = ids.insert(model_id.clone(), config_id.clone()) {
            bail!("configurations {other} and {config_id} both become FastChat model id {model_id}");
        }
        units.sort_by(|a, b| question_order(&a.question_id).cmp(&question_order(&b.question_id)));
        let mut text = String::new();
        for u in units {
            text.push_str(&answer_line(&model_id, u, tstamp).to_string());
            text.push('\n');
        }
        let path = out.join(format!("{model_id}.jsonl"));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_and_ids() {
        assert_eq!(sanitize("speculative[accept=greedy,gamma=4]"), "speculative_accept_greedy_gamma_4_");
        assert_eq!(sanitize("qwen2.5-coder_1.5b"), "qwen2.5-coder_1.5b");
        assert_eq!(question_value("81"), json!(81));
        assert_eq!(question_value("081"), json!("081"));
        assert_eq!(question_value("q-1"), json!("q-1"));
        assert_eq!(question_value(""), json!(""));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        // 2000-03-01 is day 11017 since 1970 (30 years · 365 + 7 leap days + Jan 31 + Feb 29).
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(11_017.0 * 86_400.0));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00.25+01:00"), Some(0.25));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:10-00:30"), Some(1810.0));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00"), None);
    }
}

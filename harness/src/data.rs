//! Prompt sets: JSON Lines with one prompt per line (`{"prompt": ...}`, or MT-Bench's
//! `{"question_id", "category", "turns": [...]}` whose first turn is used), or plain text with one
//! prompt per line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptItem {
    pub id: String,
    pub category: String,
    pub prompt: String,
}

#[derive(Deserialize)]
struct JsonPrompt {
    id: Option<serde_json::Value>,
    question_id: Option<serde_json::Value>,
    category: Option<String>,
    prompt: Option<String>,
    turns: Option<Vec<String>>,
}

/// The prompts shipped for `verify` (datasets/verify.jsonl).
pub fn default_verify_prompts() -> Vec<PromptItem> {
    parse_prompts(include_str!("../../datasets/verify.jsonl"), "datasets/verify.jsonl", true)
        .expect("datasets/verify.jsonl is valid (checked by a test)")
}

pub fn load_prompts(path: &Path) -> Result<Vec<PromptItem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read prompt file {}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl" || e == "json");
    parse_prompts(&text, &path.display().to_string(), jsonl)
}

fn id_string(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

pub fn parse_prompts(text: &str, name: &str, jsonl: bool) -> Result<Vec<PromptItem>> {
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if !jsonl {
            items.push(PromptItem { id: format!("line-{line_no}"), category: String::new(), prompt: line.to_string() });
            continue;
        }
        let p: JsonPrompt =
            serde_json::from_str(line).with_context(|| format!("{name}, line {line_no}: not a JSON object"))?;
        let prompt = match (p.prompt, p.turns) {
            (Some(prompt), _) => prompt,
            (None, Some(turns)) if !turns.is_empty() => turns[0].clone(),
            _ => bail!("{name}, line {line_no}: field `prompt` (or a non-empty `turns`) is missing"),
        };
        if prompt.trim().is_empty() {
            bail!("{name}, line {line_no}: field `prompt` is empty");
        }
        let id = p.id.or(p.question_id).map_or_else(|| format!("line-{line_no}"), |v| id_string(&v));
        items.push(PromptItem { id, category: p.category.unwrap_or_default(), prompt });
    }
    if items.is_empty() {
        bail!("{name}: no prompts");
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_prompts_parse() {
        assert!(default_verify_prompts().len() >= 3);
    }

    #[test]
    fn mt_bench_turns_and_plain_lines() {
        let v = parse_prompts(r#"{"question_id": 81, "category": "writing", "turns": ["a", "b"]}"#, "x", true).unwrap();
        assert_eq!(v[0], PromptItem { id: "81".into(), category: "writing".into(), prompt: "a".into() });
        let v = parse_prompts("one\n\ntwo\n", "x", false).unwrap();
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse_prompts("{\"prompt\": \"ok\"}\n{\"category\": \"x\"}", "p.jsonl", true).unwrap_err().to_string();
        assert!(e.contains("p.jsonl, line 2") && e.contains("`prompt`"), "{e}");
        let e = parse_prompts("not json", "p.jsonl", true).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}

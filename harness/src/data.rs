//! Prompt and question sets.
//!
//! Two shapes, because two consumers need different things:
//!
//! - [`PromptItem`]: one prompt, for `verify` (which only compares tokens of a first answer) and
//!   for the Medusa training prompts. Read from JSON Lines (`{"prompt": ...}`, or MT-Bench's
//!   `{"question_id", "category", "turns": [...]}` whose first turn is used) or plain text with one
//!   prompt per line.
//! - [`Question`]: a multi-turn question for the runner, which replays every turn on top of the
//!   model's own earlier answers (MT-Bench's second turns refer to the first answer, which is what
//!   makes them a test of decoding on model-written context). Read, unchanged, from FastChat's
//!   MT-Bench `question.jsonl`, Spec-Bench's `question.jsonl`, the project's simple
//!   `{"id", "category", "prompt"}` lines, or plain text.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Where the shipped question set lives, relative to the workspace root; the runner records it as
/// the source of the default questions.
pub const DEFAULT_QUESTIONS_PATH: &str = "datasets/mtbench-style.jsonl";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptItem {
    pub id: String,
    pub category: String,
    pub prompt: String,
}

/// One question of a benchmark set: the user turns in order, and, where the set has them,
/// reference answers per turn (MT-Bench's `reference`, used by judges for math, reasoning and
/// coding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// `question_id` or `id` as text (MT-Bench's ids are integers), or `line-N` when the line has
    /// none.
    pub id: String,
    /// Empty when the source has no category.
    pub category: String,
    /// At least one turn, none of them blank.
    pub turns: Vec<String>,
    pub reference: Option<Vec<String>>,
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

/// The single-turn prompts for Medusa-head self-distillation (datasets/train-prompts.jsonl),
/// disjoint from every evaluation set so that trained heads are never measured on their own
/// training prompts (checked by a test).
pub fn train_prompts() -> Vec<PromptItem> {
    parse_prompts(include_str!("../../datasets/train-prompts.jsonl"), "datasets/train-prompts.jsonl", true)
        .expect("datasets/train-prompts.jsonl is valid (checked by a test)")
}

/// Held-out prompts for `eval-heads` and `tune-tree` (datasets/heads-heldout.jsonl): disjoint
/// from the training prompts and from every other evaluation set (checked by a test).
pub fn heldout_prompts() -> Vec<PromptItem> {
    parse_prompts(include_str!("../../datasets/heads-heldout.jsonl"), HELDOUT_PROMPTS_PATH, true)
        .expect("datasets/heads-heldout.jsonl is valid (checked by a test)")
}

pub const HELDOUT_PROMPTS_PATH: &str = "datasets/heads-heldout.jsonl";

/// The shipped two-turn question set (datasets/mtbench-style.jsonl), embedded so that the runner
/// works from any directory.
pub fn default_questions() -> Vec<Question> {
    parse_questions(include_str!("../../datasets/mtbench-style.jsonl"), DEFAULT_QUESTIONS_PATH)
        .expect("datasets/mtbench-style.jsonl is valid (checked by a test)")
}

/// Whether a file is read as JSON Lines (by its extension) rather than one prompt per line.
fn is_json_lines(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "jsonl" || e == "json")
}

pub fn load_prompts(path: &Path) -> Result<Vec<PromptItem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read prompt file {}", path.display()))?;
    parse_prompts(&text, &path.display().to_string(), is_json_lines(path))
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
        let p: JsonPrompt = serde_json::from_str(line).with_context(|| format!("{name}, line {line_no}: not a JSON object"))?;
        let prompt = match (p.prompt, p.turns) {
            (Some(prompt), _) => prompt,
            (None, Some(turns)) if !turns.is_empty() => turns[0].clone(),
            _ => {
                bail!("{name}, line {line_no}: field `prompt` (or a non-empty `turns`) is missing")
            }
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

/// Reads a question set: JSON Lines for `.jsonl` / `.json` files (see [`parse_questions`]),
/// otherwise plain text with one single-turn question per non-blank line, as [`load_prompts`]
/// reads prompts.
pub fn load_questions(path: &Path) -> Result<Vec<Question>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read question file {}", path.display()))?;
    let name = path.display().to_string();
    if is_json_lines(path) {
        parse_questions(&text, &name)
    } else {
        parse_plain_questions(&text, &name)
    }
}

/// Plain text: every non-blank line is a one-turn question with id `line-N`.
fn parse_plain_questions(text: &str, name: &str) -> Result<Vec<Question>> {
    let questions: Vec<Question> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| Question {
            id: format!("line-{}", i + 1),
            category: String::new(),
            turns: vec![line.to_string()],
            reference: None,
        })
        .collect();
    if questions.is_empty() {
        bail!("{name}: no questions");
    }
    Ok(questions)
}

/// Parses JSON Lines question sets as their publishers ship them, so that a downloaded
/// `question.jsonl` needs no conversion:
///
/// - FastChat's MT-Bench: `question_id` (integer), `category`, `turns`, optional `reference`;
/// - Spec-Bench: the same shape, one or two turns, categories such as `translation` or `rag`;
/// - the project's own `{"id" | "question_id", "category"?, "prompt"}`: one turn.
///
/// Unknown fields are ignored and blank lines skipped. `name` (the file) and the line number
/// start every error, with the field at fault, because a benchmark set is usually edited by hand
/// and one bad line among hundreds is otherwise hard to find.
pub fn parse_questions(text: &str, name: &str) -> Result<Vec<Question>> {
    let mut questions = Vec::new();
    let mut first_line_of_id: HashMap<String, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{name}, line {line_no}");
        let (question, id_field) = parse_question_line(line, &at, line_no)?;
        if let Some(first) = first_line_of_id.insert(question.id.clone(), line_no) {
            bail!("{at}: field `{id_field}` repeats question id `{}` (first used on line {first})", question.id);
        }
        questions.push(question);
    }
    if questions.is_empty() {
        bail!("{name}: no questions");
    }
    Ok(questions)
}

/// A field's value, with JSON `null` read as absent (some exporters write `"reference": null`).
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// One JSON line as a question, and the name of the field its id came from (for the
/// duplicate-id error). `at` is the "file, line N" prefix of every error.
fn parse_question_line(line: &str, at: &str, line_no: usize) -> Result<(Question, &'static str)> {
    let value: Value = serde_json::from_str(line).with_context(|| format!("{at}: not valid JSON"))?;
    let Value::Object(obj) = value else {
        bail!("{at}: not a JSON object");
    };

    let (id_field, id_value) = match (field(&obj, "id"), field(&obj, "question_id")) {
        (Some(v), _) => ("id", Some(v)),
        (None, Some(v)) => ("question_id", Some(v)),
        (None, None) => ("question_id", None),
    };
    let id = match id_value {
        None => format!("line-{line_no}"),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(other) => {
            bail!("{at}: field `{id_field}` must be an integer or a non-empty string, not {other}")
        }
    };

    let category = match field(&obj, "category") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => bail!("{at}: field `category` must be a string, not {other}"),
    };

    let turns = match (field(&obj, "turns"), field(&obj, "prompt")) {
        (Some(_), Some(_)) => bail!("{at}: fields `turns` and `prompt` are both given; use one"),
        (None, None) => bail!("{at}: field `turns` (or `prompt`) is missing"),
        (Some(turns), None) => parse_turns(turns, at)?,
        (None, Some(Value::String(prompt))) => {
            if prompt.trim().is_empty() {
                bail!("{at}: field `prompt` is empty");
            }
            vec![prompt.clone()]
        }
        (None, Some(other)) => bail!("{at}: field `prompt` must be a string, not {other}"),
    };

    let reference = match field(&obj, "reference") {
        None => None,
        // A lone string is one reference for a one-turn question; sets differ on this.
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .enumerate()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => bail!("{at}: field `reference`: item {} must be a string, not {other}", k + 1),
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        Some(other) => bail!("{at}: field `reference` must be a list of strings, not {other}"),
    };

    let question = Question { id, category, turns, reference };
    Ok((question, id_field))
}

/// `turns` must be a non-empty list of non-blank strings: a blank turn would make the runner send
/// an empty user message and time a meaningless answer.
fn parse_turns(turns: &Value, at: &str) -> Result<Vec<String>> {
    let Value::Array(items) = turns else {
        bail!("{at}: field `turns` must be a list of strings, not {turns}");
    };
    if items.is_empty() {
        bail!("{at}: field `turns` is empty");
    }
    items
        .iter()
        .enumerate()
        .map(|(k, v)| match v {
            Value::String(s) if s.trim().is_empty() => {
                bail!("{at}: field `turns`: turn {} is empty", k + 1)
            }
            Value::String(s) => Ok(s.clone()),
            other => bail!("{at}: field `turns`: turn {} must be a string, not {other}", k + 1),
        })
        .collect()
}

/// The distinct non-empty categories in order of first appearance, for error messages.
fn categories_of(qs: &[Question]) -> Vec<&str> {
    let mut seen: Vec<&str> = Vec::new();
    for q in qs {
        if !q.category.is_empty() && !seen.contains(&q.category.as_str()) {
            seen.push(&q.category);
        }
    }
    seen
}

/// Keeps the questions in any of `categories` (ASCII case-insensitive, since users type them)
/// that also have any of `ids` (exact); `None` or an empty list does not filter. Every category
/// and id asked for must match some question, so that a typo is an error rather than a silently
/// smaller benchmark; an empty selection is an error too. Order is kept.
pub fn filter_questions(qs: Vec<Question>, categories: Option<&[String]>, ids: Option<&[String]>) -> Result<Vec<Question>> {
    let categories = categories.filter(|c| !c.is_empty());
    let ids = ids.filter(|i| !i.is_empty());
    for c in categories.unwrap_or_default() {
        if !qs.iter().any(|q| q.category.eq_ignore_ascii_case(c)) {
            bail!("no question has category `{c}`; available categories: {}", categories_of(&qs).join(", "));
        }
    }
    for id in ids.unwrap_or_default() {
        if !qs.iter().any(|q| q.id == *id) {
            match (qs.first(), qs.last()) {
                (Some(first), Some(last)) => {
                    bail!("unknown question id `{id}` (the set has {} questions, ids `{}` to `{}`)", qs.len(), first.id, last.id)
                }
                _ => bail!("unknown question id `{id}` (the set is empty)"),
            }
        }
    }
    let kept: Vec<Question> = qs
        .into_iter()
        .filter(|q| {
            categories.is_none_or(|cs| cs.iter().any(|c| q.category.eq_ignore_ascii_case(c))) && ids.is_none_or(|is| is.contains(&q.id))
        })
        .collect();
    if kept.is_empty() {
        bail!("no question matches both the selected categories and the selected ids");
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATEGORIES: [&str; 8] = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"];

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

    #[test]
    fn shipped_questions_are_80_two_turn_questions_10_per_category() {
        let qs = default_questions();
        assert_eq!(qs.len(), 80);
        let ids: Vec<String> = (1..=80).map(|i| i.to_string()).collect();
        let got: Vec<String> = qs.iter().map(|q| q.id.clone()).collect();
        assert_eq!(got, ids, "question ids are 1..80 in order, each once");
        for c in CATEGORIES {
            let n = qs.iter().filter(|q| q.category == c).count();
            assert_eq!(n, 10, "category {c}");
        }
        for q in &qs {
            assert!(CATEGORIES.contains(&q.category.as_str()), "{}", q.id);
            assert_eq!(q.turns.len(), 2, "question {}", q.id);
            if let Some(r) = &q.reference {
                assert!(
                    ["math", "reasoning", "coding"].contains(&q.category.as_str()),
                    "question {}: references only where answers are definite",
                    q.id
                );
                assert_eq!(r.len(), 2, "question {}: one reference per turn", q.id);
                assert!(r.iter().all(|s| !s.trim().is_empty()), "question {}", q.id);
            }
        }
        // Math and reasoning answers are definite: every one has references.
        for q in qs.iter().filter(|q| q.category == "math" || q.category == "reasoning") {
            assert!(q.reference.is_some(), "question {}", q.id);
        }
    }

    #[test]
    fn shipped_heldout_prompts_cover_every_category() {
        let ps = heldout_prompts();
        assert_eq!(ps.len(), 27);
        for c in CATEGORIES.iter().chain(&["code"]) {
            assert_eq!(ps.iter().filter(|p| p.category == *c).count(), 3, "{c}");
        }
    }

    #[test]
    fn shipped_train_prompts_are_valid() {
        let ps = train_prompts();
        assert_eq!(ps.len(), 300);
        let mut ids: Vec<&str> = ps.iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), ps.len(), "train prompt ids are unique");
        for c in CATEGORIES.iter().chain(&["code"]) {
            assert!(ps.iter().any(|p| p.category == *c), "no train prompt in {c}");
        }
        assert!(ps.iter().all(|p| p.id.starts_with("train-") && CATEGORIES.iter().chain(&["code"]).any(|c| *c == p.category)));
    }

    #[test]
    fn fastchat_mt_bench_lines_parse() {
        // FastChat's data/mt_bench/question.jsonl: integer ids, two turns, `reference` on some.
        let text = concat!(
            r#"{"question_id": 81, "category": "writing", "turns": ["Compose a poem.", "Rewrite it as prose."]}"#,
            "\n",
            r#"{"question_id": 111, "category": "math", "turns": ["What is 2+2?", "And 3+3?"], "reference": ["4", "6"]}"#,
            "\n\n",
            r#"{"question_id": 125, "category": "coding", "turns": ["Write code.", "Fix it."], "reference": null, "judge": "single"}"#,
            "\n",
        );
        let qs = parse_questions(text, "question.jsonl").unwrap();
        assert_eq!(qs.len(), 3);
        assert_eq!(
            qs[1],
            Question {
                id: "111".into(),
                category: "math".into(),
                turns: vec!["What is 2+2?".into(), "And 3+3?".into()],
                reference: Some(vec!["4".into(), "6".into()]),
            }
        );
        assert_eq!(qs[0].reference, None);
        assert_eq!(qs[2].reference, None);
    }

    #[test]
    fn spec_bench_lines_parse() {
        // Spec-Bench's data/spec_bench/question.jsonl: MT-Bench's 80 first, then single-turn
        // tasks; lines may carry fields the runner does not use.
        let text = concat!(
            r#"{"question_id": 81, "category": "writing", "turns": ["Write a travel post.", "Make it shorter."]}"#,
            "\n",
            r#"{"question_id": 161, "category": "translation", "turns": ["Translate German to English: Guten Morgen."]}"#,
            "\n",
            r#"{"question_id": 241, "category": "summarization", "turns": ["Summarize: ..."], "source": "cnn_dailymail"}"#,
            "\n",
            r#"{"question_id": 321, "category": "qa", "turns": ["Who wrote Hamlet?"], "answer": ["Shakespeare"]}"#,
            "\n",
            r#"{"question_id": 401, "category": "math_reasoning", "turns": ["Q: 3 apples..."], "reference": ["9"]}"#,
            "\n",
            r#"{"question_id": 481, "category": "rag", "turns": ["Context: ... Question: ..."], "meta": {"docs": 5}}"#,
            "\n",
        );
        let qs = parse_questions(text, "spec_bench/question.jsonl").unwrap();
        let cats: Vec<&str> = qs.iter().map(|q| q.category.as_str()).collect();
        assert_eq!(cats, ["writing", "translation", "summarization", "qa", "math_reasoning", "rag"]);
        assert_eq!(qs[0].turns.len(), 2);
        assert!(qs[1..].iter().all(|q| q.turns.len() == 1));
        assert_eq!(qs[4].reference, Some(vec!["9".to_string()]));
        assert_eq!(qs[5].id, "481");
    }

    #[test]
    fn simple_prompt_lines_and_plain_text_parse() {
        let text = concat!(
            r#"{"id": "code-1", "category": "coding", "prompt": "Reverse a list."}"#,
            "\n",
            r#"{"question_id": 7, "prompt": "Say hi."}"#,
            "\n",
            r#"{"prompt": "No id here."}"#,
            "\n",
        );
        let qs = parse_questions(text, "x.jsonl").unwrap();
        assert_eq!(qs[0].id, "code-1");
        assert_eq!(qs[0].turns, vec!["Reverse a list.".to_string()]);
        assert_eq!((qs[1].id.as_str(), qs[1].category.as_str()), ("7", ""));
        assert_eq!(qs[2].id, "line-3");

        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("prompts.txt");
        std::fs::write(&plain, "First question?\n\n  \nSecond question?\n").unwrap();
        let qs = load_questions(&plain).unwrap();
        assert_eq!(qs.len(), 2);
        assert_eq!(qs[1].id, "line-4");
        assert_eq!(qs[1].turns, vec!["Second question?".to_string()]);

        let jsonl = dir.path().join("q.jsonl");
        std::fs::write(&jsonl, text).unwrap();
        assert_eq!(load_questions(&jsonl).unwrap().len(), 3);

        let e = load_questions(&dir.path().join("missing.jsonl")).unwrap_err().to_string();
        assert!(e.contains("missing.jsonl"), "{e}");
    }

    /// Parses `text` as the second line of `datasets/x.jsonl` (after a valid first line) and
    /// returns the error.
    fn error_on_line_2(line: &str) -> String {
        let text = format!("{}\n{line}\n", r#"{"question_id": 1, "turns": ["ok"]}"#);
        format!("{:#}", parse_questions(&text, "datasets/x.jsonl").unwrap_err())
    }

    #[test]
    fn question_errors_name_file_line_and_field() {
        let cases: [(&str, &str); 12] = [
            (r#"{"question_id": 2, "category": "x"}"#, "`turns`"),
            (r#"{"question_id": 2, "turns": []}"#, "`turns`"),
            (r#"{"question_id": 2, "turns": ["a", "  "]}"#, "`turns`: turn 2 is empty"),
            (r#"{"question_id": 2, "turns": "a"}"#, "`turns`"),
            (r#"{"question_id": 2, "turns": ["a", 3]}"#, "`turns`: turn 2"),
            (r#"{"question_id": 2, "prompt": ""}"#, "`prompt`"),
            (r#"{"question_id": 2, "prompt": "a", "turns": ["b"]}"#, "`prompt`"),
            (r#"{"question_id": 1, "turns": ["again"]}"#, "`question_id` repeats question id `1` (first used on line 1)"),
            (r#"{"question_id": 2.5, "turns": ["a"]}"#, "`question_id`"),
            (r#"{"question_id": 2, "category": 3, "turns": ["a"]}"#, "`category`"),
            (r#"{"question_id": 2, "turns": ["a"], "reference": [1]}"#, "`reference`"),
            (r#"{"id": "1", "turns": ["a"]}"#, "`id` repeats"),
        ];
        for (line, field) in cases {
            let e = error_on_line_2(line);
            assert!(e.starts_with("datasets/x.jsonl, line 2: ") && e.contains(field), "{line}: {e}");
        }
        for line in ["not json", "[1, 2]", r#"{"turns": ["a"]"#] {
            let e = error_on_line_2(line);
            assert!(e.starts_with("datasets/x.jsonl, line 2: "), "{line}: {e}");
        }
        let e = parse_questions("\n  \n", "datasets/x.jsonl").unwrap_err().to_string();
        assert!(e.contains("datasets/x.jsonl") && e.contains("no questions"), "{e}");
    }

    fn strings(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn filters_by_category_and_id() {
        let qs = default_questions();
        let cats = strings(&["math", "Coding"]);
        let kept = filter_questions(qs.clone(), Some(&cats), None).unwrap();
        assert_eq!(kept.len(), 20);
        assert!(kept.iter().all(|q| q.category == "math" || q.category == "coding"));

        let ids = strings(&["3", "41", "42"]);
        let kept = filter_questions(qs.clone(), None, Some(&ids)).unwrap();
        let got: Vec<&str> = kept.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(got, ["3", "41", "42"]);

        let cats = strings(&["coding"]);
        let kept = filter_questions(qs.clone(), Some(&cats), Some(&ids)).unwrap();
        assert_eq!(kept.len(), 2, "both filters apply");

        assert_eq!(filter_questions(qs.clone(), Some(&[]), None).unwrap().len(), 80);
        assert_eq!(filter_questions(qs.clone(), None, None).unwrap().len(), 80);
    }

    #[test]
    fn filter_errors_say_what_is_available() {
        let qs = default_questions();
        let e = filter_questions(qs.clone(), Some(&strings(&["math", "poetry"])), None).unwrap_err().to_string();
        assert!(e.contains("`poetry`"), "{e}");
        for c in CATEGORIES {
            assert!(e.contains(c), "{e}");
        }
        let e = filter_questions(qs.clone(), None, Some(&strings(&["81"]))).unwrap_err().to_string();
        assert!(e.contains("unknown question id `81`"), "{e}");
        let e = filter_questions(qs, Some(&strings(&["writing"])), Some(&strings(&["41"]))).unwrap_err().to_string();
        assert!(e.contains("no question matches"), "{e}");
    }

    /// Lower-cased, whitespace runs collapsed to one space, trimmed: the form in which prompts are
    /// compared, so that a re-wrapped or re-capitalised copy still counts as a copy.
    fn normalized(s: &str) -> Vec<char> {
        s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase().chars().collect()
    }

    /// Suffix automaton of one text: finds the longest substring it shares with another text in
    /// time linear in that text, which keeps the 300 x 163 comparisons of the disjointness test
    /// fast in a debug build (a quadratic table per pair takes minutes there).
    struct SuffixAutomaton {
        len: Vec<usize>,
        link: Vec<usize>,
        next: Vec<HashMap<char, usize>>,
    }

    impl SuffixAutomaton {
        const NONE: usize = usize::MAX;

        fn new(text: &[char]) -> Self {
            let mut sa = SuffixAutomaton { len: vec![0], link: vec![Self::NONE], next: vec![HashMap::new()] };
            let mut last = 0;
            for &c in text {
                let cur = sa.push(sa.len[last] + 1, Self::NONE, HashMap::new());
                let mut p = last;
                while p != Self::NONE && !sa.next[p].contains_key(&c) {
                    sa.next[p].insert(c, cur);
                    p = sa.link[p];
                }
                if p == Self::NONE {
                    sa.link[cur] = 0;
                } else {
                    let q = sa.next[p][&c];
                    if sa.len[p] + 1 == sa.len[q] {
                        sa.link[cur] = q;
                    } else {
                        let clone = sa.push(sa.len[p] + 1, sa.link[q], sa.next[q].clone());
                        while p != Self::NONE && sa.next[p].get(&c) == Some(&q) {
                            sa.next[p].insert(c, clone);
                            p = sa.link[p];
                        }
                        sa.link[q] = clone;
                        sa.link[cur] = clone;
                    }
                }
                last = cur;
            }
            sa
        }

        fn push(&mut self, len: usize, link: usize, next: HashMap<char, usize>) -> usize {
            self.len.push(len);
            self.link.push(link);
            self.next.push(next);
            self.len.len() - 1
        }

        /// Length, in characters, of the longest common substring of `other` and this text.
        fn longest_common_substring(&self, other: &[char]) -> usize {
            let (mut state, mut matched, mut best) = (0, 0, 0);
            for c in other {
                while state != 0 && !self.next[state].contains_key(c) {
                    state = self.link[state];
                    matched = self.len[state];
                }
                match self.next[state].get(c) {
                    Some(&to) => {
                        state = to;
                        matched += 1;
                    }
                    None => matched = 0,
                }
                best = best.max(matched);
            }
            best
        }
    }

    fn brute_force_lcs(a: &[char], b: &[char]) -> usize {
        let mut best = 0;
        for i in 0..a.len() {
            for j in 0..b.len() {
                let n = a[i..].iter().zip(&b[j..]).take_while(|(x, y)| x == y).count();
                best = best.max(n);
            }
        }
        best
    }

    #[test]
    fn suffix_automaton_finds_the_longest_common_substring() {
        let cases = [
            ("write a python function that reverses a string.", "write a python function that sums a list."),
            ("abcabxabcd", "xabcabcd"),
            ("mississippi", "sip pissing"),
            ("aaaa", "aa"),
            ("abc", "xyz"),
            ("", "abc"),
        ];
        for (a, b) in cases {
            let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
            let expected = brute_force_lcs(&a, &b);
            assert_eq!(SuffixAutomaton::new(&b).longest_common_substring(&a), expected);
            assert_eq!(SuffixAutomaton::new(&a).longest_common_substring(&b), expected);
        }
    }

    /// The length of the longest common substring of `train` and `eval` (whose automaton is
    /// `eval_sa`) when the two are too similar: equal, or sharing 80 characters, or 60% of the
    /// shorter text.
    fn too_similar(train: &[char], eval: &[char], eval_sa: &SuffixAutomaton) -> Option<usize> {
        let common = eval_sa.longest_common_substring(train);
        let shorter = train.len().min(eval.len());
        (train == eval || common >= 80 || common * 10 >= shorter * 6).then_some(common)
    }

    /// Trained heads must never be measured on their own training prompts: no train prompt may
    /// equal (after normalisation) or share a long stretch with any turn of the shipped question
    /// set or any verify prompt. "Long" is 80 characters, or 60% of the shorter text, so that a
    /// short prompt with one word changed is caught too.
    #[test]
    fn train_prompts_are_disjoint_from_evaluation_sets() {
        let mut eval: Vec<(String, Vec<char>)> = Vec::new();
        for q in default_questions() {
            for (k, turn) in q.turns.iter().enumerate() {
                eval.push((format!("{DEFAULT_QUESTIONS_PATH} question {} turn {}", q.id, k + 1), normalized(turn)));
            }
        }
        for p in default_verify_prompts() {
            eval.push((format!("datasets/verify.jsonl {}", p.id), normalized(&p.prompt)));
        }
        let heldout: Vec<(String, Vec<char>)> =
            heldout_prompts().iter().map(|p| (format!("{HELDOUT_PROMPTS_PATH} {}", p.id), normalized(&p.prompt))).collect();
        // The held-out prompts are an evaluation set of their own: none may repeat another.
        for (what, text) in &heldout {
            for (other, o) in &eval {
                if let Some(common) = too_similar(text, o, &SuffixAutomaton::new(o)) {
                    panic!("{what} vs {other}: {common} common characters");
                }
            }
        }
        eval.extend(heldout);
        let automata: Vec<SuffixAutomaton> = eval.iter().map(|(_, t)| SuffixAutomaton::new(t)).collect();
        // The check itself must catch near-copies: a turn with its last word changed, and a
        // short prompt sharing only its opening phrase with a verify prompt.
        let turn = &default_questions()[0].turns[0];
        let near_copy = format!("{} today.", turn.rsplit_once(' ').unwrap().0);
        let verify_code = &eval.iter().find(|(what, _)| what.ends_with("code-1")).expect("verify.jsonl has code-1").1;
        for (probe, text) in [(near_copy.as_str(), &eval[0].1), ("Write a Python function that sums a list.", verify_code)] {
            let probe = normalized(probe);
            assert!(too_similar(&probe, text, &SuffixAutomaton::new(text)).is_some(), "{probe:?}");
        }

        let mut overlaps = Vec::new();
        for p in train_prompts() {
            let train = normalized(&p.prompt);
            for ((what, text), sa) in eval.iter().zip(&automata) {
                if let Some(common) = too_similar(&train, text, sa) {
                    let shorter = train.len().min(text.len());
                    overlaps.push(format!("{} vs {what}: {common} common characters of {shorter}", p.id));
                }
            }
        }
        assert!(overlaps.is_empty(), "{}", overlaps.join("\n"));
    }
}

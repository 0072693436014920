//! The `decodebench` binary end to end: the JSON contract of `generate`, and one-line errors with
//! a non-zero exit for bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use decodebench::testing::{write_gguf, write_gguf_with, TinySpec};

fn decodebench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_decodebench")).args(args).output().expect("run decodebench")
}

/// Asserts a clean failure: non-zero exit, one `error:` line naming `needle`, no panic.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "`{needle}` missing from: {stderr}");
    }
}

fn generate_json(model: &Path, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let model = model.to_str().unwrap();
    let mut args = vec!["generate", "--model", model, "--prompt", prompt, "--json"];
    args.extend_from_slice(extra);
    let out = decodebench(&args);
    assert!(out.status.success(), "generate failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn generate_json_has_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&TinySpec::llama(), &path).unwrap();
    let v = generate_json(&path, "hello", &["--max-new-tokens", "12"]);
    for key in ["text", "token_ids", "new_tokens", "prefill_s", "decode_s", "tokens_per_s"] {
        assert!(v.get(key).is_some(), "missing `{key}` in {v}");
    }
    let ids = v["token_ids"].as_array().unwrap();
    assert_eq!(ids.len() as u64, v["new_tokens"].as_u64().unwrap());
    assert!(!ids.is_empty() && ids.len() <= 12);
    if v["stop"] == "max_tokens" {
        assert_eq!(ids.len(), 12);
    }
}

#[test]
fn missing_model_file_is_named() {
    let out = decodebench(&["generate", "--model", "/no/such/model.gguf", "--prompt", "hi"]);
    assert_one_line_error(&out, &["/no/such/model.gguf"]);
}

#[test]
fn non_gguf_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.gguf");
    std::fs::write(&path, "this is not a model, just some text").unwrap();
    let out = decodebench(&["generate", "--model", path.to_str().unwrap(), "--prompt", "hi"]);
    assert_one_line_error(&out, &["notes.gguf", "not a GGUF file"]);
}

#[test]
fn truncated_gguf_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    write_gguf(&TinySpec::llama(), &path).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len * 2 / 3).unwrap();
    let out = decodebench(&["generate", "--model", path.to_str().unwrap(), "--prompt", "hi"]);
    assert_one_line_error(&out, &["cut.gguf", "truncated"]);
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2.gguf");
    write_gguf_with(&TinySpec::llama(), &path, "gpt2").unwrap();
    let out = decodebench(&["generate", "--model", path.to_str().unwrap(), "--prompt", "hi"]);
    assert_one_line_error(&out, &["gpt2.gguf", "unsupported architecture `gpt2`"]);
}

#[test]
fn prompt_longer_than_the_context_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let spec = TinySpec::llama();
    write_gguf(&spec, &path).unwrap();
    // The tiny tokenizer has one token per byte (but for "Ġt"): this is well past 256 tokens.
    let prompt = "xyz".repeat(spec.context);
    let out = decodebench(&["generate", "--model", path.to_str().unwrap(), "--prompt", &prompt, "--raw"]);
    assert_one_line_error(&out, &["--prompt", "context", &spec.context.to_string()]);
}

#[test]
fn unknown_model_name_lists_the_catalog() {
    let out = decodebench(&["generate", "--model", "llama-9000", "--prompt", "hi"]);
    assert_one_line_error(&out, &["llama-9000", "smollm2-135m"]);
}

#[test]
fn cuda_device_without_cuda_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&TinySpec::llama(), &path).unwrap();
    let out = decodebench(&["generate", "--model", path.to_str().unwrap(), "--prompt", "hi", "--device", "cuda"]);
    if cfg!(feature = "cuda") {
        return; // a CUDA build on a machine with a GPU may succeed
    }
    assert_one_line_error(&out, &["--device cuda", "CUDA"]);
}

#[test]
fn smollm2_answers_factual_questions() {
    // A 135M model at 4 bits is right on these, but some answers hang on near-ties (after "What is
    // the capital of France?" it puts "The" 0.1 logits above "La"), which the last bits of an
    // 8-bit kernel can flip; a broken forward gets none right.
    let path = common::smollm2_gguf();
    let questions = [
        ("What is the capital of France?", "Paris"),
        ("What is the capital of Japan?", "Tokyo"),
        ("What is the capital of Germany?", "Berlin"),
        ("What is the chemical symbol for water?", "H2O"),
        ("Who wrote Romeo and Juliet?", "Shakespeare"),
        ("What color is the sky on a clear day?", "blue"),
    ];
    let mut wrong = Vec::new();
    let mut short_and_ended = 0;
    for (question, answer) in questions {
        let v = generate_json(&path, question, &["--system", "You are a helpful assistant.", "--max-new-tokens", "24"]);
        let text = v["text"].as_str().unwrap().to_string();
        if !text.contains(answer) {
            wrong.push(format!("{question} -> {text:?}"));
        }
        short_and_ended += usize::from(v["stop"] == "eos");
    }
    assert!(wrong.len() <= 2, "{} of {} answers wrong:\n{}", wrong.len(), questions.len(), wrong.join("\n"));
    assert!(short_and_ended >= 2, "only {short_and_ended} short factual answers ended with end-of-turn");
}

fn tiny_pair(dir: &tempfile::TempDir) -> (String, String) {
    let target = dir.path().join("target.gguf");
    let draft = dir.path().join("draft.gguf");
    write_gguf(&TinySpec::llama(), &target).unwrap();
    write_gguf(&TinySpec::qwen2(), &draft).unwrap();
    (target.to_str().unwrap().to_string(), draft.to_str().unwrap().to_string())
}

#[test]
fn speculative_and_one_beam_reproduce_greedy_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (target, draft) = tiny_pair(&dir);
    let greedy = generate_json(Path::new(&target), "hello there", &["--max-new-tokens", "40"]);
    let spec = generate_json(
        Path::new(&target),
        "hello there",
        &["--max-new-tokens", "40", "--strategy", "speculative", "--draft", &draft, "--gamma", "3"],
    );
    assert_eq!(spec["token_ids"], greedy["token_ids"]);
    assert_eq!(spec["strategy"], "speculative");
    let steps = spec["steps"].as_array().unwrap();
    assert_eq!(spec["target_forwards"].as_u64().unwrap() as usize, steps.len() + 1);
    for key in ["tokens_proposed", "tokens_accepted", "accepted_depth", "forward_tokens", "draft_s", "verify_s", "update_s"] {
        assert!(steps[0].get(key).is_some(), "step record lacks `{key}`");
    }
    let beam = generate_json(Path::new(&target), "hello there", &["--max-new-tokens", "40", "--strategy", "beam", "--num-beams", "1"]);
    assert_eq!(beam["token_ids"], greedy["token_ids"]);
    assert_eq!(greedy["mean_accepted_tokens"], 1.0);
}

#[test]
fn verify_reports_every_configuration_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (target, draft) = tiny_pair(&dir);
    let prompts = dir.path().join("p.txt");
    std::fs::write(&prompts, "first prompt\nsecond one\n").unwrap();
    let out =
        decodebench(&["verify", "--model", &target, "--draft", &draft, "--prompts", prompts.to_str().unwrap(), "--max-new-tokens", "24"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "verify failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    for config in ["speculative γ=1", "speculative γ=8", "speculative γ=4 draft_vocab=", "beam num_beams=1"] {
        let line = stdout.lines().find(|l| l.starts_with(config)).unwrap_or_else(|| panic!("no `{config}` in {stdout}"));
        assert!(line.contains("2/2"), "{line}");
    }
}

#[test]
fn strategy_flag_mistakes_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (target, draft) = tiny_pair(&dir);
    let out = decodebench(&["generate", "--model", &target, "--prompt", "hi", "--strategy", "speculative"]);
    assert_one_line_error(&out, &["--draft"]);
    let out = decodebench(&[
        "generate",
        "--model",
        &target,
        "--prompt",
        "hi",
        "--strategy",
        "speculative",
        "--draft",
        &draft,
        "--accept",
        "typical",
    ]);
    assert_one_line_error(&out, &["--accept", "typical"]);
    let out = decodebench(&["generate", "--model", &target, "--prompt", "hi", "--strategy", "beam", "--num-beams", "0"]);
    assert_one_line_error(&out, &["--num-beams"]);
    let out = decodebench(&["generate", "--model", &target, "--prompt", "hi", "--temperature", "-1"]);
    assert_one_line_error(&out, &["--temperature"]);
    let prompts = dir.path().join("bad.jsonl");
    std::fs::write(&prompts, "{\"category\": \"x\"}\n").unwrap();
    let out = decodebench(&["verify", "--model", &target, "--draft", &draft, "--prompts", prompts.to_str().unwrap()]);
    assert_one_line_error(&out, &["bad.jsonl, line 1", "`prompt`"]);
}

#[test]
fn draft_with_another_tokenizer_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (target, _) = tiny_pair(&dir);
    let smollm2 = common::smollm2_gguf();
    let out =
        decodebench(&["generate", "--model", &target, "--prompt", "hi", "--strategy", "speculative", "--draft", smollm2.to_str().unwrap()]);
    assert_one_line_error(&out, &["--draft", "tokenizer differs", "at id"]);
}

/// Every config under `experiments/` expands (`run --dry-run`, from the repository root, where
/// their relative paths point): a shipped config that no longer parses fails here, not in a
/// user's hour-long run.
#[test]
fn every_shipped_config_expands() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("experiments")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_decodebench"))
            .args(["run", path.to_str().unwrap(), "--dry-run"])
            .current_dir(&root)
            .output()
            .expect("run decodebench");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.contains("units"), "{}: {}{stdout}", path.display(), String::from_utf8_lossy(&out.stderr));
        n += 1;
    }
    assert!(n >= 10, "{n} configs");
}

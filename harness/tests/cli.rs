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
fn smollm2_answers_a_factual_question() {
    let path = common::smollm2_gguf();
    let v = generate_json(
        &path,
        "What is the capital of France?",
        &["--system", "You are a helpful assistant.", "--max-new-tokens", "24"],
    );
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "answer without Paris: {text:?}");
    assert_eq!(v["stop"], "eos", "a short factual answer ends with end-of-turn: {v}");
}

//! `train-heads`, `eval-heads` and `tune-tree` end to end on a tiny random model: the loss falls
//! and the accuracy rises on the training data, training is deterministic for a seed, a finished
//! run resumes to the same heads, and heads that do not fit the model are refused with the file
//! named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use decodebench::testing::{write_gguf, TinySpec};

fn decodebench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_decodebench")).args(args).output().expect("run decodebench")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "decodebench failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "decodebench succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    prompts: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let model = root.join("tiny.gguf");
    write_gguf(&TinySpec::llama(), &model).unwrap();
    let prompts = root.join("p.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({"id": format!("p{i}"), "category": "writing", "prompt": format!("tell me about {i} and {}", i * 7)})
                .to_string()
        })
        .collect();
    std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();
    Setup { _dir: dir, root, model, prompts }
}

fn train(s: &Setup, out: &Path, epochs: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train-heads",
        "--model",
        s.model.to_str().unwrap(),
        "--heads",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--prompts",
        s.prompts.to_str().unwrap(),
        "--max-new-tokens",
        "40",
        "--epochs",
        epochs,
        "--batch",
        "32",
        "--lr",
        "0.01",
        "--checkpoint-every",
        "5",
    ];
    args.extend_from_slice(extra);
    decodebench(&args)
}

/// `eval-heads --json` of the heads in `heads` on the training prompts.
fn eval_json(s: &Setup, heads: &Path) -> serde_json::Value {
    let args = ["eval-heads", "--model", s.model.to_str().unwrap(), "--heads", heads.to_str().unwrap()];
    let out = ok(&decodebench(&[&args[..], &["--prompts", s.prompts.to_str().unwrap(), "--max-new-tokens", "40", "--json"]].concat()));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn heads_learn_the_models_own_continuation() {
    let s = setup();
    let out = s.root.join("heads");
    ok(&train(&s, &out, "12", &[]));
    for f in ["medusa_lm_head.safetensors", "config.json", "training.json", "corpus.jsonl"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let log: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("training.json")).unwrap()).unwrap();
    let epochs = log["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 12);
    let (first, last) = (&epochs[0], &epochs[11]);
    assert!(last["loss"].as_f64().unwrap() < 0.7 * first["loss"].as_f64().unwrap(), "loss {first} -> {last}");
    for h in 0..2 {
        let (a, b) = (first["top1"][h].as_f64().unwrap(), last["top1"][h].as_f64().unwrap());
        assert!(b > a + 0.2, "head {h}: top-1 {a} -> {b}");
    }
    // The heads score well on their own training answers, as eval-heads measures it.
    let acc = eval_json(&s, &out);
    let top1 = acc["top1"].as_array().unwrap();
    let top5 = acc["top5"].as_array().unwrap();
    assert_eq!(top1.len(), 2);
    assert!(top1[0].as_f64().unwrap() > 0.5, "{acc}");
    assert!(top5[0].as_f64().unwrap() >= top1[0].as_f64().unwrap());

    // A tree tuned for these heads on this machine is a tree the strategy runs.
    let tree = s.root.join("tree.json");
    let text = ok(&decodebench(&[
        "tune-tree",
        "--model",
        s.model.to_str().unwrap(),
        "--heads",
        out.to_str().unwrap(),
        "--prompts",
        s.prompts.to_str().unwrap(),
        "--max-nodes",
        "8",
        "--max-new-tokens",
        "40",
        "--out",
        tree.to_str().unwrap(),
    ]));
    assert!(text.contains("predicted speedup"), "{text}");
    let gen = ok(&decodebench(&[
        "generate",
        "--model",
        s.model.to_str().unwrap(),
        "--prompt",
        "tell me about 3 and 21",
        "--strategy",
        "medusa",
        "--heads",
        out.to_str().unwrap(),
        "--tree",
        tree.to_str().unwrap(),
        "--max-new-tokens",
        "20",
        "--json",
    ]));
    let g: serde_json::Value = serde_json::from_str(&gen).unwrap();
    assert!(g["mean_accepted_tokens"].as_f64().unwrap() >= 1.0, "{g}");

    // eval-heads --tree replays greedy Medusa decoding over the ranks it measured: on each
    // prompt it gives the tokens per forward a real run with that tree gets.
    let one = s.root.join("one.jsonl");
    let mut compared = 0;
    for i in [1, 3, 6] {
        let prompt = format!("tell me about {i} and {}", i * 7);
        std::fs::write(&one, serde_json::json!({"id": "x", "category": "writing", "prompt": prompt}).to_string() + "\n").unwrap();
        for tree in ["chain:2", "dense:2x2"] {
            let args = ["eval-heads", "--model", s.model.to_str().unwrap(), "--heads", out.to_str().unwrap()];
            let rest = ["--prompts", one.to_str().unwrap(), "--max-new-tokens", "40", "--json", "--tree", tree];
            let acc: serde_json::Value = serde_json::from_str(&ok(&decodebench(&[&args[..], &rest[..]].concat()))).unwrap();
            let replayed = &acc["replayed"][tree];
            let gen = ok(&decodebench(&[
                "generate",
                "--model",
                s.model.to_str().unwrap(),
                "--prompt",
                &prompt,
                "--strategy",
                "medusa",
                "--heads",
                out.to_str().unwrap(),
                "--tree",
                tree,
                "--max-new-tokens",
                "40",
                "--json",
            ]));
            let g: serde_json::Value = serde_json::from_str(&gen).unwrap();
            let (real, replay) = (g["mean_accepted_tokens"].as_f64().unwrap(), replayed["mean_accepted_tokens"].as_f64().unwrap());
            assert!((real - replay).abs() <= 0.05 * real, "prompt {i}, {tree}: real {real}, replayed {replay}: {replayed}");
            compared += usize::from(real > 1.0);
        }
    }
    assert!(compared >= 3, "the heads accepted nothing to compare");
}

#[test]
fn training_is_deterministic_and_resumes_to_the_same_heads() {
    let s = setup();
    let (a, b) = (s.root.join("a"), s.root.join("b"));
    ok(&train(&s, &a, "3", &[]));
    ok(&train(&s, &b, "3", &[]));
    let heads = |d: &Path| std::fs::read(d.join("medusa_lm_head.safetensors")).unwrap();
    assert_eq!(heads(&a), heads(&b), "same seed, different heads");
    // A second run into the same folder needs --resume; resuming a finished run changes nothing.
    assert!(err(&train(&s, &a, "3", &[])).contains("--resume"));
    ok(&train(&s, &a, "3", &["--resume"]));
    assert_eq!(heads(&a), heads(&b));
    // Resuming with other settings is refused.
    assert!(err(&train(&s, &a, "4", &["--resume"])).contains("other training settings"));
    // Another seed gives other heads.
    let c = s.root.join("c");
    ok(&train(&s, &c, "3", &["--seed", "9"]));
    assert_ne!(heads(&a), heads(&c));
}

#[test]
fn heads_that_do_not_fit_are_refused_naming_the_file() {
    let s = setup();
    let out = s.root.join("heads");
    ok(&train(&s, &out, "1", &[]));
    let eval = |model: &Path, heads: &Path| {
        decodebench(&[
            "eval-heads",
            "--model",
            model.to_str().unwrap(),
            "--heads",
            heads.to_str().unwrap(),
            "--prompts",
            s.prompts.to_str().unwrap(),
            "--max-new-tokens",
            "8",
        ])
    };
    let file = out.join("medusa_lm_head.safetensors");
    // A wider model: the hidden size differs.
    let wide = s.root.join("wide.gguf");
    write_gguf(&TinySpec { hidden: 128, intermediate: 256, seed: 3, ..TinySpec::llama() }, &wide).unwrap();
    let e = err(&eval(&wide, &out));
    assert!(e.contains("hidden size 64") && e.contains(file.to_str().unwrap()), "{e}");
    // Another model of the same shape: the heads' config names the model they were trained on.
    let other = s.root.join("other.gguf");
    write_gguf(&TinySpec { seed: 99, ..TinySpec::llama() }, &other).unwrap();
    let e = err(&eval(&other, &out));
    assert!(e.contains("trained on") && e.contains("config.json"), "{e}");
    // A config.json that contradicts the tensors.
    let cfg_path = out.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replace("\"medusa_num_heads\": 2", "\"medusa_num_heads\": 3")).unwrap();
    let e = err(&eval(&s.model, &out));
    assert!(e.contains("medusa_num_heads") && e.contains("config.json"), "{e}");
    std::fs::write(&cfg_path, cfg).unwrap();
    // A corrupt heads file.
    std::fs::write(&file, b"not safetensors").unwrap();
    let e = err(&eval(&s.model, &out));
    assert!(e.contains(file.to_str().unwrap()), "{e}");
}

#[test]
fn reduced_vocabulary_heads_train_load_and_draft() {
    let s = setup();
    for layout in ["v2", "v1"] {
        let out = s.root.join(format!("small-{layout}"));
        ok(&train(&s, &out, "8", &["--head-vocab", "24", "--layout", layout]));
        let map: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("head_vocab.json")).unwrap()).unwrap();
        assert_eq!(map["token_ids"].as_array().unwrap().len(), 24);
        let log: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("training.json")).unwrap()).unwrap();
        let epochs = log["epochs"].as_array().unwrap();
        assert!(epochs[7]["loss"].as_f64().unwrap() < epochs[0]["loss"].as_f64().unwrap(), "{layout}: {log}");
        let acc = eval_json(&s, &out);
        assert!(acc["top1"][0].as_f64().unwrap() > 0.3, "{layout}: {acc}");
        // Drafting over the reduced vocabulary, verified by the full model: greedy's tokens.
        let run = |strategy: &[&str]| -> serde_json::Value {
            let mut args = vec![
                "generate",
                "--model",
                s.model.to_str().unwrap(),
                "--prompt",
                "tell me about 5 and 35",
                "--max-new-tokens",
                "24",
                "--json",
            ];
            args.extend_from_slice(strategy);
            serde_json::from_str(&ok(&decodebench(&args))).unwrap()
        };
        let greedy = run(&["--strategy", "greedy"]);
        let medusa = run(&["--strategy", "medusa", "--heads", out.to_str().unwrap(), "--tree", "dense:2x2"]);
        assert_eq!(medusa["token_ids"], greedy["token_ids"], "{layout}");
        assert!(medusa["mean_accepted_tokens"].as_f64().unwrap() > 1.0, "{layout}: nothing accepted: {medusa}");
    }
}

#[test]
fn sampled_answers_are_batched_stored_and_resumed() {
    use decodebench::heads::corpus::{answers, hidden_states, CorpusHeader};
    let s = setup();
    let out = s.root.join("sampled");
    let extra = ["--samples", "3", "--temperature", "1.0"];
    ok(&train(&s, &out, "1", &extra));
    let corpus_path = out.join("corpus.jsonl");
    let lines = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p).unwrap().lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let entries = lines(&corpus_path);
    assert_eq!(entries.len(), 8 * 3);
    let log: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("training.json")).unwrap()).unwrap();
    assert_eq!((log["prompts"].as_u64(), log["samples"].as_u64()), (Some(8), Some(3)), "{log}");

    // Row 0 of the batch is the greedy answer, token for token what `generate` gives alone;
    // the drawn rows are other answers.
    let mut differs = 0;
    for i in 0..8 {
        let id = format!("p{i}");
        let get = |id: &str| entries.iter().find(|e| e["id"] == id).unwrap_or_else(|| panic!("{id} missing")).clone();
        let greedy = get(&id);
        let prompt_tokens = greedy["prompt_tokens"].as_u64().unwrap() as usize;
        let answer: Vec<u64> = greedy["tokens"].as_array().unwrap()[prompt_tokens..].iter().map(|t| t.as_u64().unwrap()).collect();
        let gen = ok(&decodebench(&[
            "generate",
            "--model",
            s.model.to_str().unwrap(),
            "--prompt",
            &format!("tell me about {i} and {}", i * 7),
            "--max-new-tokens",
            "40",
            "--json",
        ]));
        let g: serde_json::Value = serde_json::from_str(&gen).unwrap();
        let want: Vec<u64> = g["token_ids"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
        assert_eq!(answer, want, "{id}: batch row 0 is not the greedy answer");
        for k in 1..3 {
            if get(&format!("{id}#s{k}"))["tokens"] != greedy["tokens"] {
                differs += 1;
            }
        }
    }
    assert!(differs >= 8, "only {differs} of 16 drawn answers differ from the greedy one");

    // The states kept while decoding are what a teacher-forced forward computes (f16 apart).
    let source = decodebench::catalog::resolve_model(s.model.to_str().unwrap(), false).unwrap();
    let mut model = decodebench::models::load(&source, None, None, &candle_core::Device::Cpu).unwrap();
    let header = CorpusHeader { model: "tiny".into(), model_sha256: "x".into(), max_new_tokens: 40, samples: 3, temperature: 1.0 };
    let stop = decodebench_strategies::StopConfig { max_new_tokens: 40, eos_token_ids: Vec::new() };
    let prompt = decodebench::data::PromptItem { id: "q".into(), category: "writing".into(), prompt: "tell me about 9".into() };
    let made = answers(&mut model, &prompt, &header, &stop).unwrap();
    let made_entries: Vec<_> = made.iter().map(|(e, _)| e.clone()).collect();
    let recomputed = hidden_states(&mut model, &made_entries, None, false).unwrap();
    let kept = candle_core::Tensor::cat(&made.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>(), 0).unwrap();
    let kept = kept.to_dtype(candle_core::DType::F32).unwrap();
    assert_eq!(kept.dims(), recomputed.dims());
    let diff = (kept - &recomputed).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = recomputed.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff <= 1e-2 * scale.max(1.0), "kept states differ from recomputed ones by {diff} (scale {scale})");

    // A run killed mid-prompt: its last answers are made again, the same ones, and resuming the
    // finished training ends with the same heads.
    let heads_before = std::fs::read(out.join("medusa_lm_head.safetensors")).unwrap();
    let text = std::fs::read_to_string(&corpus_path).unwrap();
    let kept_lines: Vec<&str> = text.lines().collect();
    std::fs::write(&corpus_path, kept_lines[..kept_lines.len() - 2].join("\n") + "\n{\"id\": \"p7#s").unwrap();
    ok(&train(&s, &out, "1", &[&extra[..], &["--resume"]].concat()));
    let mut again: Vec<String> = lines(&corpus_path).iter().map(|e| e.to_string()).collect();
    let mut first: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
    again.sort();
    first.sort();
    assert_eq!(again, first);
    assert_eq!(std::fs::read(out.join("medusa_lm_head.safetensors")).unwrap(), heads_before);

    // Another number of samples is refused, naming the corpus.
    let e = err(&train(&s, &out, "1", &["--samples", "2", "--temperature", "1.0", "--resume"]));
    assert!(e.contains("corpus.jsonl") && e.contains("sample"), "{e}");
}

//! `decodebench run` end to end: a killed run resumes to exactly the rows of an uninterrupted
//! one; `--shard 1/2` + `--shard 2/2` + `merge` equals the unsharded run apart from timings;
//! bad configs stop with the file and key named; a results folder is complete.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use decodebench::testing::{write_gguf, TinySpec};
use decodebench_tables::records::{read_records, UnitRecord};
use decodebench_tables::tables::read_summary;

fn decodebench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_decodebench")).args(args).output().expect("run decodebench")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "decodebench failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One turn without its timings: number, tokens, text, NLL (printed to 9 digits).
type TurnContent = (usize, Vec<u32>, String, Option<String>);

/// What a unit produced, timings left out: the rows two runs of one config must share.
fn content(dir: &Path) -> BTreeMap<String, Vec<TurnContent>> {
    let set = read_records(dir).unwrap();
    assert!(!set.torn_tail, "{}: torn record", dir.display());
    let mut out = BTreeMap::new();
    for r in set.records {
        let UnitRecord { unit, turns, .. } = r;
        let turns = turns.into_iter().map(|t| (t.turn, t.token_ids, t.text, t.nll_per_token.map(|x| format!("{x:.9}")))).collect();
        assert!(out.insert(unit.clone(), turns).is_none(), "{}: unit {unit} recorded twice", dir.display());
    }
    out
}

fn write_questions(path: &Path, n: usize) {
    let cats = ["writing", "coding", "math"];
    let lines: Vec<String> = (1..=n)
        .map(|i| {
            serde_json::json!({"question_id": i, "category": cats[i % 3], "turns": [format!("say {i} then go"), "and again"]}).to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

fn tiny_setup(questions: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let target = root.join("target.gguf");
    let draft = root.join("draft.gguf");
    write_gguf(&TinySpec::llama(), &target).unwrap();
    write_gguf(&TinySpec::qwen2(), &draft).unwrap();
    let prompts = root.join("q.jsonl");
    write_questions(&prompts, questions);
    let config = root.join("tiny.toml");
    let text = format!(
        r#"[models]
target = "{}"
draft = "{}"
heads = "random:3"

[run]
prompts = "{}"
turns = 2
max_new_tokens = 12
warmup = 1
repeats = 2
seed = 7
calibrate_tokens = [1, 2, 4]

[[strategies]]
name = "sample"
temperature = 0.8

[[strategies]]
name = "speculative"
gamma = [2, 4]

[[strategies]]
name = "medusa"
tree = "chain:2"

[[strategies]]
name = "beam"
num_beams = 1
"#,
        target.display(),
        draft.display(),
        prompts.display()
    );
    std::fs::write(&config, text).unwrap();
    Setup { _dir: dir, root, config }
}

fn run_dir(s: &Setup, name: &str, extra: &[&str]) -> PathBuf {
    let out = s.root.join(name);
    let mut args = vec!["run", s.config.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(&decodebench(&args));
    out
}

#[test]
fn a_run_leaves_tables_answers_and_metadata_and_is_exact() {
    let s = tiny_setup(3);
    let out = s.root.join("full");
    let stdout = ok(&decodebench(&["run", s.config.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    for f in
        ["meta.json", "calibration.json", "records.jsonl", "summary.csv", "summary.parquet", "turns.csv", "steps.parquet", "acceptance.csv"]
    {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let answers: Vec<_> = std::fs::read_dir(out.join("model_answer")).unwrap().collect();
    assert_eq!(answers.len(), 6, "one answer file per configuration (greedy + 5)");
    // 6 configurations × 3 questions × 2 repeats.
    assert_eq!(content(&out).len(), 36);
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("meta.json")).unwrap()).unwrap();
    assert!(meta["ended"].is_string() && meta["machine"]["threads"].as_u64().unwrap() >= 1, "{meta}");
    assert!(meta["models"].as_array().unwrap().iter().any(|m| m["role"] == "draft"));
    // Lossless configurations are exact: the summary (read back from Parquet) says so for each.
    let summary = read_summary(&out).unwrap();
    let lossless: Vec<_> = summary.iter().filter(|r| r.lossless && r.category == "all").collect();
    assert_eq!(lossless.len(), 5, "greedy, speculative ×2, medusa greedy and beam 1 are lossless");
    for r in &lossless {
        assert_eq!(r.exact_match, Some(1.0), "{}", r.config_id);
        assert!(r.mean_accepted_tokens.unwrap() >= 1.0 && r.nll_per_token.is_some(), "{r:?}");
    }
    let sample = summary.iter().find(|r| r.strategy == "sample" && r.category == "all").unwrap();
    assert!(!sample.lossless && sample.speedup.is_some() && sample.speedup_ci_low <= sample.speedup);
    assert!(stdout.contains("speculative"), "summary screen: {stdout}");
    // A second run into the same folder is refused without --resume.
    let again = decodebench(&["run", s.config.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // Resuming a finished run adds nothing.
    let before = std::fs::read_to_string(out.join("records.jsonl")).unwrap();
    ok(&decodebench(&["run", s.config.to_str().unwrap(), "--out", out.to_str().unwrap(), "--resume"]));
    assert_eq!(std::fs::read_to_string(out.join("records.jsonl")).unwrap(), before);
    // Other weights under the same name (the sweep hash names models, not files) are refused.
    write_gguf(&TinySpec { seed: 99, ..TinySpec::llama() }, &s.root.join("target.gguf")).unwrap();
    let other = decodebench(&["run", s.config.to_str().unwrap(), "--out", out.to_str().unwrap(), "--resume"]);
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success() && stderr.contains("other weights") && stderr.contains("models.target: sha256"), "{stderr}");
    assert_eq!(std::fs::read_to_string(out.join("records.jsonl")).unwrap(), before);
}

/// `prefix_cache = true`: every turn after the first runs only what the conversation's cache
/// does not hold, the first turns nothing is kept (each unit starts on empty caches), the
/// lossless configurations stay exact, and the answers are those of a run without it. (A kept
/// prefix differs from a whole-prompt forward's in the last bits only: a prompt's first block
/// takes batched attention, later blocks the row-exact one. On these tiny random models no
/// token lies that close to a tie; on a real model some do, see the README.)
#[test]
fn a_run_with_prefix_cache_reuses_earlier_turns_only_and_keeps_the_answers() {
    let s = tiny_setup(2);
    let plain = run_dir(&s, "plain", &[]);
    let text = std::fs::read_to_string(&s.config).unwrap().replace("[run]\n", "[run]\nprefix_cache = true\n");
    std::fs::write(&s.config, text).unwrap();
    let cached = run_dir(&s, "cached", &[]);
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cached.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["prefix_cache"], true);
    let plain_meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(plain.join("meta.json")).unwrap()).unwrap();
    assert_ne!(meta["sweep_hash"], plain_meta["sweep_hash"], "a run with the setting is another sweep");
    // Resuming the plain run with the setting on is refused, naming it.
    let again = decodebench(&["run", s.config.to_str().unwrap(), "--out", plain.to_str().unwrap(), "--resume"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && stderr.contains("prefix_cache: false before, true now"), "{stderr}");

    for r in read_records(&cached).unwrap().records {
        let (first, second) = (&r.turns[0], &r.turns[1]);
        assert_eq!(first.reused_prompt_tokens, 0, "{} q{}: a first turn starts on empty caches", r.key.config, r.question_id);
        assert!(
            second.reused_prompt_tokens >= first.prompt_tokens && second.reused_prompt_tokens < second.prompt_tokens,
            "{} q{}: turn 2 keeps {} of {} prompt tokens (turn 1's prompt: {})",
            r.key.config,
            r.question_id,
            second.reused_prompt_tokens,
            second.prompt_tokens,
            first.prompt_tokens
        );
    }
    for r in read_records(&plain).unwrap().records {
        assert!(r.turns.iter().all(|t| t.reused_prompt_tokens == 0));
    }
    let summary = read_summary(&cached).unwrap();
    for r in summary.iter().filter(|r| r.lossless && r.category == "all") {
        assert_eq!(r.exact_match, Some(1.0), "{}", r.config_id);
    }
    let tokens = |dir: &Path| -> BTreeMap<String, Vec<Vec<u32>>> {
        content(dir).into_iter().map(|(unit, turns)| (unit, turns.into_iter().map(|t| t.1).collect())).collect()
    };
    assert_eq!(tokens(&cached), tokens(&plain), "the same answers with and without the cache kept");
}

#[test]
fn shards_merge_into_the_unsharded_run() {
    let s = tiny_setup(5);
    let full = run_dir(&s, "full", &[]);
    let one = run_dir(&s, "s1", &["--shard", "1/2"]);
    let two = run_dir(&s, "s2", &["--shard", "2/2"]);
    let merged = s.root.join("merged");
    // A missing shard is named, and stops the merge.
    let out = decodebench(&["merge", one.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("shard 2/2 is missing"), "{out:?}");
    ok(&decodebench(&["merge", one.to_str().unwrap(), two.to_str().unwrap(), "--out", merged.to_str().unwrap()]));
    assert_eq!(content(&merged), content(&full));
    assert_eq!(summary_rows(&merged), summary_rows(&full));
    // Each shard's cost curves come along with its questions, so each is priced by its own.
    let cal =
        |d: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(d.join("calibration.json")).unwrap()).unwrap() };
    let merged_cal = cal(&merged);
    let shards = merged_cal["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2, "{merged_cal}");
    let json = |p: PathBuf| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let merged_meta = json(merged.join("meta.json"));
    for (i, (s, dir)) in shards.iter().zip([&one, &two]).enumerate() {
        let meta = json(dir.join("meta.json"));
        assert_eq!((&s["shard"], &s["questions"]), (&meta["shard"], &meta["questions"]));
        assert_eq!(s["models"], cal(dir)["models"]);
        // Each shard's commit is kept (the report names them when they differ).
        assert_eq!(merged_meta["merged_from"][i]["git_commit"], meta["git_commit"]);
    }
    assert_eq!(merged_cal["models"], cal(&one)["models"]);

    // --allow-partial merges what there is, and the report says so before anything else.
    let partial = s.root.join("partial");
    ok(&decodebench(&["merge", one.to_str().unwrap(), "--out", partial.to_str().unwrap(), "--allow-partial"]));
    let md = std::fs::read_to_string(partial.join("report.md")).unwrap();
    let banner = md.find("PARTIAL RESULT").expect("no partial banner");
    assert!(banner < md.find("Headline").unwrap() && md.contains("shard 2/2 is missing"), "{md}");
}

/// The summary rows without timings: what two runs of one sweep must agree on.
fn summary_rows(dir: &Path) -> Vec<String> {
    read_summary(dir)
        .unwrap()
        .iter()
        .map(|r| {
            let f = |x: Option<f64>| x.map(|v| format!("{v:.9}")).unwrap_or_default();
            let (acc, exact, nll, rouge) = (f(r.mean_accepted_tokens), f(r.exact_match), f(r.nll_per_token), f(r.rouge_l));
            format!("{} {} {} {acc} {exact} {nll} {rouge} {}", r.config_id, r.category, r.turns, f(r.distinct_2))
        })
        .collect()
}

/// `dir/run.toml`: speculative decoding on SmolLM2 with itself as the draft (so units take
/// real time) on `questions` one-turn questions; `run_extra` adds lines to `[run]`.
fn self_draft_config(dir: &Path, questions: usize, run_extra: &str) -> PathBuf {
    let model = common::smollm2_gguf();
    let prompts = dir.join("q.jsonl");
    write_questions(&prompts, questions);
    let config = dir.join("run.toml");
    let text = format!(
        "[models]\ntarget = \"{0}\"\ndraft = \"{0}\"\n[run]\nprompts = \"{1}\"\nturns = 1\n{run_extra}warmup = 0\ncalibrate_tokens = [1, 2]\n[[strategies]]\nname = \"speculative\"\ngamma = 3\n",
        model.display(),
        prompts.display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn a_killed_run_resumes_to_exactly_the_uninterrupted_rows() {
    // A real model, so that units take long enough to be killed in the middle of the run.
    let dir = tempfile::tempdir().unwrap();
    let config = self_draft_config(dir.path(), 4, "max_new_tokens = 10\n");
    let (cfg, full, killed) = (config.to_str().unwrap(), dir.path().join("full"), dir.path().join("killed"));
    ok(&decodebench(&["run", cfg, "--out", full.to_str().unwrap()]));
    let total = content(&full).len();
    assert_eq!(total, 2 * 4);

    let mut child = Command::new(env!("CARGO_BIN_EXE_decodebench"))
        .args(["run", cfg, "--out", killed.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let records = killed.join("records.jsonl");
    let t0 = Instant::now();
    let lines = || std::fs::read_to_string(&records).map(|t| t.lines().count()).unwrap_or(0);
    while lines() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(300), "the run wrote no records");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = content(&killed).len();
    assert!(at_kill >= 2 && at_kill < total, "killed after {at_kill} of {total} units");
    assert!(!killed.join("summary.csv").exists(), "a killed run has no tables yet");

    ok(&decodebench(&["run", cfg, "--out", killed.to_str().unwrap(), "--resume"]));
    assert_eq!(content(&killed), content(&full), "resumed rows differ from the uninterrupted run");
    let n_lines = std::fs::read_to_string(&records).unwrap().lines().count();
    assert_eq!(n_lines, total, "no duplicate rows");

    // Resuming with a changed config is refused, saying what changed.
    let changed = std::fs::read_to_string(&config).unwrap().replace("max_new_tokens = 10", "max_new_tokens = 11");
    std::fs::write(&config, changed).unwrap();
    let out = decodebench(&["run", cfg, "--out", killed.to_str().unwrap(), "--resume"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("max_new_tokens: 10 before, 11 now"), "{err}");
}

#[test]
fn bad_configs_stop_before_any_model_loads() {
    let s = tiny_setup(2);
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let check = |text: String, needles: &[&str]| {
        let path = s.root.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = decodebench(&["run", path.to_str().unwrap(), "--out", s.root.join("never").to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        for n in needles {
            assert!(err.contains(n), "`{n}` missing from {err}");
        }
        assert!(!s.root.join("never").exists(), "a refused config must not start a results folder");
    };
    check(cfg.replace("name = \"beam\"", "name = \"bream\""), &["bad.toml", "strategies[3].name", "bream"]);
    check(cfg.replace("num_beams = 1", "num_beams = 1\nbeam_width = 2"), &["bad.toml", "strategies[3].beam_width"]);
    check(cfg.replace("gamma = [2, 4]", "gamma = []"), &["strategies[1].gamma", "empty grid"]);
    check(cfg.replace("gamma = [2, 4]", "gamma = [2, 99]"), &["strategies[1].gamma", "1..=64"]);
    // A draft whose token ids mean other tokens (SmolLM2's tokenizer against the tiny one's).
    let smollm2 = common::smollm2_gguf();
    let draft_line = cfg.lines().find(|l| l.starts_with("draft = ")).unwrap().to_string();
    check(cfg.replace(&draft_line, &format!("draft = \"{}\"", smollm2.display())), &["models.draft", "tokenizer differs"]);
    // Heads for another model: a heads file sized for another hidden size.
    let heads = s.root.join("heads.safetensors");
    write_heads(&heads, 8, 32);
    check(cfg.replace("heads = \"random:3\"", &format!("heads = \"{}\"", heads.display())), &["models.heads", "hidden size"]);
    // A prompt file with a broken line.
    let prompts = s.root.join("q.jsonl");
    std::fs::write(&prompts, "{\"question_id\": 1, \"turns\": [\"a\", \"b\"]}\n{\"question_id\": 2, \"turns\": \n").unwrap();
    check(cfg.clone(), &["q.jsonl", "line 2"]);
    std::fs::write(&prompts, "{\"question_id\": 1, \"category\": \"x\"}\n").unwrap();
    check(cfg, &["q.jsonl", "line 1", "turns"]);
}

/// One Medusa-2 head (a ResBlock) in the official key layout, sized `hidden`.
fn write_heads(path: &Path, hidden: usize, _vocab: usize) {
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let w = Tensor::zeros((hidden, hidden), candle_core::DType::F32, &dev).unwrap();
    let b = Tensor::zeros(hidden, candle_core::DType::F32, &dev).unwrap();
    let tensors = std::collections::HashMap::from([("0.0.linear.weight".to_string(), w), ("0.0.linear.bias".to_string(), b)]);
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// A real single-node Slurm (Debian's slurm-wlm and munge, installed where missing), started
/// by scripts/slurm-local.sh in a folder of its own and stopped when dropped.
struct LocalSlurm {
    dir: tempfile::TempDir,
    script: PathBuf,
    // One cluster at a time: they would share the ports and the cores.
    _one: std::sync::MutexGuard<'static, ()>,
}

static SLURM: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl LocalSlurm {
    fn start() -> Self {
        let one = SLURM.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-local.sh");
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash").arg(&script).arg("start").arg(dir.path()).output().expect("run slurm-local.sh");
        let slurm = LocalSlurm { dir, script, _one: one };
        assert!(
            out.status.success(),
            "slurm-local.sh start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        slurm
    }

    /// The last lines the daemons logged, for a failure's message.
    fn daemon_logs(&self) -> String {
        let mut text = String::new();
        for name in ["slurmctld.log", "slurmd.log"] {
            let log = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!("\n== {name} (last 40 lines)\n{}", lines[lines.len().saturating_sub(40)..].join("\n")));
        }
        text
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.conf());
        c
    }

    /// `decodebench slurm ...` against this cluster: (array job, merge job).
    fn submit(&self, args: &[&str]) -> (String, String) {
        let out = self.command(env!("CARGO_BIN_EXE_decodebench")).arg("slurm").args(args).output().unwrap();
        let stdout = ok(&out);
        // "array job 12 (2 tasks), merge job 13"
        let words: Vec<&str> = stdout.split_whitespace().collect();
        let id_after = |w: &str| words.iter().position(|x| *x == w).and_then(|i| words.get(i + 2)).expect(&stdout).to_string();
        (id_after("array"), id_after("merge"))
    }

    /// Every task's JobState of a job (one per array task).
    fn states(&self, job: &str) -> Vec<String> {
        let out = self.command("scontrol").args(["show", "job", "-o", job]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("JobState=")).map(str::to_string))
            .collect()
    }

    /// Waits until the job ended; its final state (the logs in the panic message otherwise).
    fn wait(&self, job: &str, logs: &Path, limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let states = self.states(job);
            if let [s] = states.as_slice() {
                if !["PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"].contains(&s.as_str()) {
                    return s.clone();
                }
            }
            if t0.elapsed() > limit {
                panic!("job {job} still {states:?} after {limit:?}; logs: {}", slurm_logs(logs));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for LocalSlurm {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(&self.script).arg("stop").arg(self.dir.path()).status();
    }
}

fn slurm_logs(dir: &Path) -> String {
    let mut text = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "log") {
            text.push_str(&format!("\n== {}\n{}", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default()));
        }
    }
    text
}

#[test]
#[ignore = "starts a real Slurm (root; Debian's slurm-wlm and munge): cargo test --workspace --test runner -- --ignored slurm"]
fn slurm_sweep_in_two_shards_merges_into_the_unsharded_run() {
    let s = tiny_setup(5);
    let full = run_dir(&s, "full", &[]);
    let slurm = LocalSlurm::start();
    let sweep = s.root.join("sweep");
    let (array, merge) = slurm.submit(&[s.config.to_str().unwrap(), "--shards", "2", "--out", sweep.to_str().unwrap()]);
    let state = slurm.wait(&merge, &sweep.join("slurm"), Duration::from_secs(600));
    assert_eq!(state, "COMPLETED", "merge job {merge} (array {array}): {}", slurm_logs(&sweep.join("slurm")));
    let merged = sweep.join("merged");
    assert_eq!(content(&merged), content(&full));
    assert_eq!(summary_rows(&merged), summary_rows(&full));
    assert!(merged.join("report.html").is_file() && merged.join("report.md").is_file());
    // Each shard says where it ran: the node Slurm gave it.
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(merged.join("meta.json")).unwrap()).unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let shards = meta["merged_from"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for sh in shards {
        assert_eq!(sh["machine"]["node"].as_str(), Some(host.split('.').next().unwrap()), "{sh}");
    }
}

#[test]
#[ignore = "starts a real Slurm (root; Debian's slurm-wlm and munge): cargo test --workspace --test runner -- --ignored slurm"]
fn slurm_task_requeued_mid_run_resumes_without_duplicate_rows() {
    // A real model, so that a shard runs long enough to be requeued in the middle.
    let dir = tempfile::tempdir().unwrap();
    let config = self_draft_config(dir.path(), 6, "max_new_tokens = 16\nthreads = 1\n");
    let full = dir.path().join("full");
    ok(&decodebench(&["run", config.to_str().unwrap(), "--out", full.to_str().unwrap()]));

    let slurm = LocalSlurm::start();
    let sweep = dir.path().join("sweep");
    let logs = sweep.join("slurm");
    let (array, merge) = slurm.submit(&[config.to_str().unwrap(), "--shards", "2", "--out", sweep.to_str().unwrap()]);
    // Shard 1 holds 3 questions × 2 configurations = 6 units: requeue it once 2 are written.
    let records = sweep.join("shard-1").join("records.jsonl");
    let lines = || std::fs::read_to_string(&records).map(|t| t.lines().count()).unwrap_or(0);
    let t0 = Instant::now();
    while lines() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(300), "shard 1 wrote no records: {}", slurm_logs(&logs));
        std::thread::sleep(Duration::from_millis(20));
    }
    let task = format!("{array}_0");
    let out = slurm.command("scontrol").args(["requeue", &task]).output().unwrap();
    assert!(out.status.success(), "scontrol requeue {task}: {}", String::from_utf8_lossy(&out.stderr));
    let at_requeue = lines();
    assert!(at_requeue < 6, "shard 1 finished ({at_requeue} units) before it could be requeued");

    // Slurm holds a requeued job for cred_expire + 1 s (Reason=BeginTime; slurm-local.sh sets
    // 10 s). Starting it earlier (`scontrol update StartTime=now`) made slurmd refuse the launch
    // now and then ("Job credential revoked"), and the task FAILED for good.
    let t1 = Instant::now();
    while slurm.states(&task) != ["PENDING"] {
        assert!(t1.elapsed() < Duration::from_secs(60), "{task} is not pending after the requeue: {:?}", slurm.states(&task));
        std::thread::sleep(Duration::from_millis(100));
    }
    let state = slurm.wait(&merge, &logs, Duration::from_secs(600));
    assert_eq!(state, "COMPLETED", "merge job {merge}: {}{}", slurm_logs(&logs), slurm.daemon_logs());
    // The task ran twice, and its second start took up the first one's units.
    let log = std::fs::read_to_string(logs.join("shard-0.log")).unwrap();
    assert!(log.contains("shard 1/2") && log.contains("start 2"), "{log}");
    assert!(log.contains("resuming ") && log.contains("units done"), "{log}");
    let n_lines = std::fs::read_to_string(&records).unwrap().lines().count();
    assert_eq!(n_lines, 6, "shard 1 holds duplicate or missing rows");
    assert_eq!(content(&sweep.join("merged")), content(&full), "the requeued sweep differs from the unsharded run");
}

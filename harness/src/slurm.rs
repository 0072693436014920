//! `decodebench slurm CONFIG --shards N --out DIR`: hands a sweep to Slurm as a job array of
//! `run --shard K/N --resume` tasks, and a merge job that waits for all of them
//! (`--dependency=afterany`, then [`wait_for_shards`]). Slurm does the scheduling; this module
//! only writes the scripts, submits them, and tells when the shards are there to merge.
//!
//! Layout of DIR: `shard-K/` (one results folder per task), `merged/` (the merge, with its
//! report), `slurm/` (the two scripts and the tasks' logs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::runner::{config, Overrides};

/// `decodebench slurm`'s arguments.
#[derive(Debug, Clone, Default)]
pub struct SlurmArgs {
    pub config: PathBuf,
    pub shards: usize,
    pub out: PathBuf,
    pub overrides: Overrides,
    pub partition: Option<String>,
    /// Generic resources per task, e.g. `gpu:1`.
    pub gres: Option<String>,
    /// Time limit per task, in any form sbatch takes (`2:00:00`).
    pub time: Option<String>,
    pub cpus_per_task: Option<usize>,
}

/// The two batch scripts, and where they go.
#[derive(Debug, Clone)]
pub struct SlurmScripts {
    pub array_path: PathBuf,
    pub array: String,
    pub merge_path: PathBuf,
    pub merge: String,
    /// Where the request and the config pull apart (a GPU asked for a CPU run, say).
    pub notes: Vec<String>,
}

/// What [`submit`] started.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub array_job: String,
    pub merge_job: String,
    pub merged: PathBuf,
    pub notes: Vec<String>,
}

/// Folder of shard `k` (1-based) under `out`.
pub fn shard_dir(out: &Path, k: usize) -> PathBuf {
    out.join(format!("shard-{k}"))
}

/// Where the merge job writes the merged results and report.
pub fn merged_dir(out: &Path) -> PathBuf {
    out.join("merged")
}

/// One shell word: single-quoted unless it is plainly safe.
fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=,@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn quote_path(p: &Path) -> String {
    quote(&p.display().to_string())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
}

/// Checks the request and writes nothing: the config loads, the shard count fits the questions,
/// the resource values are ones sbatch would take. Returns notes on what the config overrides.
fn check(args: &SlurmArgs) -> Result<Vec<String>> {
    if args.shards == 0 {
        bail!("--shards: must be at least 1");
    }
    let exp = config::load(&args.config, &args.overrides)?;
    let questions = exp.questions.len();
    if args.shards > questions {
        bail!(
            "--shards {}: {} has only {questions} question(s) after filters, so some shards would be empty; use at most {questions}",
            args.shards,
            args.config.display()
        );
    }
    for (flag, value) in [("--partition", &args.partition), ("--gres", &args.gres), ("--time", &args.time)] {
        if let Some(v) = value {
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '\'' || c == '"') {
                bail!("{flag} {v:?}: must be one word without quotes");
            }
        }
    }
    if args.cpus_per_task == Some(0) {
        bail!("--cpus-per-task: must be at least 1");
    }
    let mut notes = Vec::new();
    let config = args.config.display();
    if args.gres.as_deref().is_some_and(|g| g.starts_with("gpu")) && exp.run.device != "cuda" {
        notes.push(format!(
            "--gres {}: {config} runs on {} (run.device), so the tasks will not use the GPU",
            args.gres.as_deref().unwrap_or(""),
            exp.run.device
        ));
    }
    if let (Some(c), Some(t)) = (args.cpus_per_task, exp.run.threads) {
        if c != t {
            notes.push(format!("--cpus-per-task {c}: {config} sets run.threads = {t}, which the tasks use"));
        }
    }
    Ok(notes)
}

/// The `run` flags that carry the overrides into every task.
fn override_flags(o: &Overrides) -> Result<Vec<String>> {
    let mut flags = Vec::new();
    if let Some(p) = &o.prompts {
        flags.extend(["--prompts".to_string(), quote_path(&absolute(p)?)]);
    }
    if let Some(c) = &o.categories {
        flags.extend(["--categories".to_string(), quote(&c.join(","))]);
    }
    if let Some(n) = o.max_new_tokens {
        flags.extend(["--max-new-tokens".to_string(), n.to_string()]);
    }
    if let Some(n) = o.repeats {
        flags.extend(["--repeats".to_string(), n.to_string()]);
    }
    Ok(flags)
}

/// `#SBATCH` lines shared by both scripts.
fn resource_lines(args: &SlurmArgs, with_gres: bool) -> String {
    let mut s = String::new();
    if let Some(p) = &args.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let (true, Some(g)) = (with_gres, &args.gres) {
        s.push_str(&format!("#SBATCH --gres={g}\n"));
    }
    if let Some(t) = &args.time {
        s.push_str(&format!("#SBATCH --time={t}\n"));
    }
    s
}

/// The array and merge scripts for `args`, run by the binary `exe`.
pub fn scripts(args: &SlurmArgs, exe: &Path) -> Result<SlurmScripts> {
    let notes = check(args)?;
    let n = args.shards;
    let out = absolute(&args.out)?;
    let config = absolute(&args.config)?;
    let logs = out.join("slurm");
    let name = args.config.file_stem().map_or_else(|| "sweep".to_string(), |s| s.to_string_lossy().into_owned());
    let job = format!("decodebench-{}", name.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect::<String>());
    let overrides = override_flags(&args.overrides)?.iter().map(|f| format!(" {f}")).collect::<String>();
    let (exe_q, out_q) = (quote_path(exe), quote_path(&out));

    let mut array = format!(
        "#!/bin/bash\n\
         # decodebench sweep {config} in {n} shards, written by `decodebench slurm`.\n\
         # Task K-1 of the array runs shard K/{n} into {out}/shard-K. --resume keeps the units a\n\
         # preempted or requeued task finished and redoes only the rest (a half-written record is\n\
         # dropped), so a restart loses nothing and duplicates nothing.\n\
         #SBATCH --job-name={job}\n\
         #SBATCH --array=0-{last}\n\
         #SBATCH --output={logs}/shard-%a.log\n\
         #SBATCH --open-mode=append\n\
         #SBATCH --requeue\n",
        config = config.display(),
        out = out.display(),
        last = n - 1,
        logs = logs.display(),
    );
    array.push_str(&resource_lines(args, true));
    if let Some(c) = args.cpus_per_task {
        array.push_str(&format!("#SBATCH --cpus-per-task={c}\n"));
    }
    array.push_str("set -euo pipefail\n");
    array.push_str("k=$((SLURM_ARRAY_TASK_ID + 1))\n");
    array.push_str(&format!(
        "echo \"decodebench: shard $k/{n} on $(hostname), job ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}, start $((${{SLURM_RESTART_COUNT:-0}} + 1))\"\n"
    ));
    if args.cpus_per_task.is_some() {
        // The task's CPUs, unless the config sets `threads` (which wins).
        array.push_str("export RAYON_NUM_THREADS=\"$SLURM_CPUS_PER_TASK\"\n");
    }
    array
        .push_str(&format!("exec {exe_q} run {} --shard \"$k/{n}\" --out {out_q}/shard-\"$k\" --resume{overrides}\n", quote_path(&config)));

    let shard_dirs = (1..=n).map(|k| quote_path(&shard_dir(&out, k))).collect::<Vec<_>>().join(" ");
    let mut merge = format!(
        "#!/bin/bash\n\
         # decodebench sweep {config}: merges the {n} shards into {merged}, the tables of the\n\
         # whole sweep and its report. Submitted with --dependency=afterany on the array, whose job\n\
         # id is its first argument. A requeued task ends once before it runs again, so\n\
         # `slurm-wait` first waits until every shard has written all its units,\n\
         # or no task of an incomplete shard is left to run; then merge stops at a failed shard.\n\
         #SBATCH --job-name={job}-merge\n\
         #SBATCH --output={logs}/merge.log\n\
         #SBATCH --open-mode=append\n\
         #SBATCH --cpus-per-task=1\n",
        config = config.display(),
        merged = merged_dir(&out).display(),
        logs = logs.display(),
    );
    merge.push_str(&resource_lines(args, false));
    merge.push_str("set -euo pipefail\n");
    merge.push_str("array=${1:?the array job id}\n");
    merge.push_str(&format!("{exe_q} slurm-wait \"$array\" {shard_dirs}\n"));
    merge.push_str(&format!("exec {exe_q} merge {shard_dirs} --out {}\n", quote_path(&merged_dir(&out))));
    Ok(SlurmScripts { array_path: logs.join("shards.sbatch"), array, merge_path: logs.join("merge.sbatch"), merge, notes })
}

/// The job id `sbatch --parsable` printed (`123` or `123;cluster`).
fn parse_job_id(stdout: &str) -> Option<String> {
    let id = stdout.trim().split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| id.to_string())
}

fn sbatch(extra: &[&str], script: &Path, script_args: &[&str]) -> Result<String> {
    let out = Command::new("sbatch")
        .arg("--parsable")
        .args(extra)
        .arg(script)
        .args(script_args)
        .output()
        .context("cannot run sbatch: is Slurm's client installed and on PATH (a login node)?")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("sbatch {} failed ({}): {}", script.display(), out.status, stderr.trim());
    }
    parse_job_id(&stdout).with_context(|| format!("sbatch {}: no job id in its output {:?}", script.display(), stdout.trim()))
}

/// Writes the scripts under `DIR/slurm/` and submits them: the array, then the merge job
/// depending on it. `--dry-run` is [`scripts`] without this.
pub fn submit(args: &SlurmArgs, exe: &Path) -> Result<Submitted> {
    let s = scripts(args, exe)?;
    let logs = s.array_path.parent().expect("scripts live in DIR/slurm");
    std::fs::create_dir_all(logs).with_context(|| format!("cannot create {}", logs.display()))?;
    for (path, text) in [(&s.array_path, &s.array), (&s.merge_path, &s.merge)] {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let array_job = sbatch(&[], &s.array_path, &[])?;
    // afterany, not afterok: a failed shard still gets its merge job, which names it; the
    // merge script's slurm-wait keeps it from reading a shard before it is complete.
    let merge_job = sbatch(&[&format!("--dependency=afterany:{array_job}")], &s.merge_path, &[&array_job])
        .with_context(|| format!("the array job {array_job} is submitted; cancel it with `scancel {array_job}`"))?;
    Ok(Submitted { array_job, merge_job, merged: merged_dir(&absolute(&args.out)?), notes: s.notes })
}

/// Job states after which a task never runs again. Anything else (pending, running,
/// requeued, completing, a state this list does not know) is a task still to come.
const FINAL_STATES: &[&str] =
    &["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"];

/// The JobState of every task in `scontrol show job -o` output (one line per task).
fn task_states(scontrol_output: &str) -> Vec<(String, String)> {
    scontrol_output
        .lines()
        .filter_map(|l| {
            let field = |name: &str| l.split_whitespace().find_map(|f| f.strip_prefix(name)).map(str::to_string);
            let state = field("JobState=")?;
            let task = match (field("ArrayJobId="), field("ArrayTaskId=")) {
                (Some(job), Some(t)) => format!("{job}_{t}"),
                _ => field("JobId=").unwrap_or_default(),
            };
            Some((task, state))
        })
        .collect()
}

/// The tasks among `states` that are still to run or running.
fn still_to_run(states: Vec<(String, String)>) -> Vec<(String, String)> {
    states.into_iter().filter(|(_, state)| !FINAL_STATES.contains(&state.as_str())).collect()
}

/// What scontrol says of one array task.
enum TaskLook {
    /// Still to run, or running: its state.
    ToRun(String),
    /// Ended for good, or no longer known to Slurm (ended and purged): what scontrol said.
    Done(String),
    /// scontrol could not tell (the controller not answering, say): why.
    Unknown(String),
}

/// Asks scontrol about one array task (`ARRAY_TASK`): only the tasks of incomplete shards
/// matter, and each is named exactly.
fn look_at_task(task: &str) -> Result<TaskLook> {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", task])
        .output()
        .context("cannot run scontrol: is Slurm's client installed and on PATH?")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !stderr.contains("Invalid job id") {
        return Ok(TaskLook::Unknown(format!("scontrol show job {task} failed ({}): {}", out.status, stderr.trim())));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(match still_to_run(task_states(&stdout)).into_iter().next() {
        Some((_, state)) => TaskLook::ToRun(state),
        None => TaskLook::Done(if out.status.success() { stdout.trim().to_string() } else { stderr.trim().to_string() }),
    })
}

/// `decodebench slurm-wait ARRAY DIR...`, run by the merge job, with the shard folders in
/// shard order (task K-1 writes the K-th): returns once every one holds a complete run, or
/// once the tasks of the incomplete ones have all looked ended for `grace` straight. The
/// shards' own records decide when all went well, not Slurm's states: a requeued task ends
/// once before it runs again, and what Slurm shows in between is the scheduler's business
/// (the grace covers a reading taken in that window). A failed shard reaches the merge, which
/// names it, `grace` later.
pub fn wait_for_shards(array: &str, dirs: &[PathBuf], poll: Duration, grace: Duration) -> Result<()> {
    let mut quiet_since: Option<Instant> = None;
    let mut said = String::new();
    loop {
        let missing: Vec<(String, &PathBuf)> =
            dirs.iter().enumerate().filter(|(_, d)| !crate::runner::run_is_complete(d)).map(|(i, d)| (format!("{array}_{i}"), d)).collect();
        if missing.is_empty() {
            println!("slurm-wait: every shard is complete");
            return Ok(());
        }
        let (mut live, mut ended, mut unsure) = (Vec::new(), Vec::new(), None);
        for (task, _) in &missing {
            match look_at_task(task)? {
                TaskLook::ToRun(state) => live.push(format!("{task} {state}")),
                TaskLook::Done(what) => ended.push(format!("{task}: {what}")),
                TaskLook::Unknown(why) => unsure = Some(why),
            }
        }
        let dirs_named = missing.iter().map(|(_, d)| d.display().to_string()).collect::<Vec<_>>().join(", ");
        let now = if let Some(why) = unsure {
            quiet_since = None;
            why
        } else if !live.is_empty() {
            quiet_since = None;
            format!("waiting for {dirs_named} ({})", live.join(", "))
        } else {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= grace {
                println!("slurm-wait: no task of an incomplete shard is left to run; incomplete: {dirs_named}");
                return Ok(());
            }
            format!("every task of {dirs_named} looks ended; waiting {} s in case it was requeued ({})", grace.as_secs(), ended.join("; "))
        };
        if now != said {
            println!("slurm-wait: {now}");
            said = now;
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config(dir: &Path, questions: usize) -> PathBuf {
        let prompts = dir.join("q.jsonl");
        let lines: Vec<String> = (1..=questions)
            .map(|i| serde_json::json!({"question_id": i, "category": "writing", "turns": ["a", "b"]}).to_string())
            .collect();
        std::fs::write(&prompts, lines.join("\n")).unwrap();
        let config = dir.join("my sweep.toml");
        std::fs::write(
            &config,
            format!(
                "[models]\ntarget = \"m\"\n[run]\nprompts = \"{}\"\n[[strategies]]\nname = \"beam\"\nnum_beams = 2\n",
                prompts.display()
            ),
        )
        .unwrap();
        config
    }

    #[test]
    fn scripts_run_every_shard_with_resume_and_merge_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny_config(dir.path(), 3);
        let args = SlurmArgs {
            config: config.clone(),
            shards: 3,
            out: dir.path().join("out"),
            overrides: Overrides { max_new_tokens: Some(9), ..Overrides::default() },
            gres: Some("gpu:1".into()),
            time: Some("1:00:00".into()),
            cpus_per_task: Some(4),
            ..SlurmArgs::default()
        };
        let s = scripts(&args, Path::new("/opt/bin/decodebench")).unwrap();
        let out = dir.path().join("out");
        assert!(s.array.contains("#SBATCH --array=0-2\n") && s.array.contains("#SBATCH --requeue\n"), "{}", s.array);
        assert!(s.array.contains("#SBATCH --gres=gpu:1\n") && s.array.contains("#SBATCH --cpus-per-task=4\n"));
        assert!(s.array.contains("#SBATCH --time=1:00:00\n"));
        // The config path has a space: quoted.
        let run_line = s.array.lines().find(|l| l.starts_with("exec ")).unwrap();
        assert_eq!(
            run_line,
            format!(
                "exec /opt/bin/decodebench run '{}' --shard \"$k/3\" --out {}/shard-\"$k\" --resume --max-new-tokens 9",
                config.display(),
                out.display()
            )
        );
        // The merge waits for every shard of the array it is given (or for the array to have
        // nothing left to run), takes every shard, and needs no GPU.
        assert!(s.merge.contains("array=${1:?"), "{}", s.merge);
        assert!(!s.merge.contains("--gres"), "{}", s.merge);
        let wait_line = s.merge.lines().find(|l| l.starts_with("/opt/bin/decodebench slurm-wait \"$array\" ")).unwrap();
        let merge_line = s.merge.lines().find(|l| l.starts_with("exec /opt/bin/decodebench merge ")).unwrap();
        for k in 1..=3 {
            assert!(wait_line.contains(&format!("{}/shard-{k}", out.display())), "{wait_line}");
            assert!(merge_line.contains(&format!("{}/shard-{k}", out.display())), "{merge_line}");
        }
        assert!(merge_line.ends_with(&format!("--out {}/merged", out.display())));
        assert_eq!(s.array_path, out.join("slurm/shards.sbatch"));
        // A GPU asked for a CPU config is said.
        assert!(s.notes.iter().any(|n| n.contains("--gres gpu:1") && n.contains("runs on cpu")), "{:?}", s.notes);
    }

    #[test]
    fn bad_requests_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = tiny_config(dir.path(), 2);
        let base = SlurmArgs { config: config.clone(), shards: 2, out: dir.path().join("out"), ..SlurmArgs::default() };
        let err = |a: SlurmArgs| format!("{:#}", scripts(&a, Path::new("decodebench")).unwrap_err());
        assert!(err(SlurmArgs { shards: 3, ..base.clone() }).contains("only 2 question(s)"));
        assert!(err(SlurmArgs { shards: 0, ..base.clone() }).contains("--shards"));
        assert!(err(SlurmArgs { gres: Some("gpu 1".into()), ..base.clone() }).contains("--gres"));
        assert!(err(SlurmArgs { config: dir.path().join("none.toml"), ..base.clone() }).contains("none.toml"));
        assert!(!dir.path().join("out").exists());
    }

    #[test]
    fn job_ids_are_read_from_parsable_output() {
        assert_eq!(parse_job_id("1234\n").as_deref(), Some("1234"));
        assert_eq!(parse_job_id("77;cluster\n").as_deref(), Some("77"));
        assert_eq!(parse_job_id("Submitted batch job 5"), None);
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn task_states_are_read_per_task_and_requeued_ones_are_still_to_run() {
        let out = "JobId=13 ArrayJobId=12 ArrayTaskId=1 JobName=decodebench-x UserId=root(0) JobState=COMPLETED Reason=None\n\
                   JobId=12 ArrayJobId=12 ArrayTaskId=0 JobName=decodebench-x UserId=root(0) JobState=REQUEUED Reason=BeginTime\n\
                   JobId=20 JobName=decodebench-x-merge JobState=PENDING Reason=Dependency\n";
        let states = task_states(out);
        assert_eq!(states, [("12_1", "COMPLETED"), ("12_0", "REQUEUED"), ("20", "PENDING")].map(|(t, s)| (t.to_string(), s.to_string())));
        let live: Vec<String> = still_to_run(states).into_iter().map(|(t, _)| t).collect();
        assert_eq!(live, ["12_0", "20"]);
        assert!(task_states("slurm_load_jobs error: Invalid job id specified\n").is_empty());
    }
}

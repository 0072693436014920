//! `decodebench doctor [--device cuda]`: what this build and this machine offer a benchmark run —
//! devices (CUDA driver, runtime and GPUs when the build has the `cuda` feature), CPU model,
//! threads, SIMD features (detected at run time, and compiled in), the quantized-matmul kernel
//! path, a quick memory-bandwidth estimate and the installed models with the weight conversions
//! their loading does.
//!
//! [`run`] prints the report to stdout; with `require_cuda` it fails, after the report, with a
//! one-line reason when `--device cuda` would not work.

use crate::fetch::ModelRow;
use anyhow::{bail, Result};
use std::fmt;
use std::time::{Duration, Instant};

/// Buffer size of the bandwidth estimate: well past the last-level cache of any CPU.
const BANDWIDTH_BYTES: usize = 256 << 20;

/// Prints the report; with `require_cuda`, returns an error naming why CUDA is not usable.
/// Without `require_cuda` it always succeeds, CUDA or not.
pub fn run(require_cuda: bool) -> Result<()> {
    let report = Report::collect_with(BANDWIDTH_BYTES);
    print!("{report}");
    report.check(require_cuda)
}

/// Everything `doctor` reports.
#[derive(Debug, Clone)]
pub struct Report {
    /// The build has the `cuda` feature.
    pub build_has_cuda: bool,
    pub release_build: bool,
    pub cpu_model: Option<String>,
    /// `std::thread::available_parallelism`.
    pub available_threads: usize,
    /// The threads candle's CPU kernels use (`RAYON_NUM_THREADS`, default: physical cores).
    pub candle_threads: usize,
    /// (feature, detected), in a fixed order; empty off x86_64.
    pub simd: Vec<(&'static str, bool)>,
    /// x86 target features enabled at compile time ([`compiled_target_features`]).
    pub compiled: Vec<String>,
    /// The path of the project's quantized matmul kernels on this CPU (`avx512zmm path`,
    /// `avx512vnni path`, `avx2 path`, `scalar path`), and why when it is not the best this CPU
    /// has.
    pub kernel_path: String,
    pub bandwidth: Option<Bandwidth>,
    /// `None` when the build has no CUDA support.
    pub cuda: Option<CudaReport>,
    pub models: Vec<ModelRow>,
}

/// A memory-copy bandwidth estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// Bytes read plus bytes written per second (STREAM's "copy" convention), in GB/s (10⁹).
    pub gb_per_s: f64,
    pub buffer_bytes: usize,
    pub threads: usize,
    pub reps: usize,
}

/// What the CUDA driver says, in a build with the `cuda` feature.
#[derive(Debug, Clone, Default)]
pub struct CudaReport {
    /// e.g. "13.0": the newest CUDA version the installed driver supports.
    pub driver: Option<String>,
    /// e.g. "13.0": the CUDA runtime library loaded by this binary.
    pub runtime: Option<String>,
    pub devices: Vec<GpuInfo>,
    /// Why `--device cuda` (device 0) would fail; `None` when it works.
    pub problem: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
    pub free_memory: usize,
    pub bf16: bool,
}

impl Report {
    /// Collects the report, estimating the memory bandwidth with a buffer of `bandwidth_bytes`.
    pub fn collect_with(bandwidth_bytes: usize) -> Self {
        let available_threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Report {
            build_has_cuda: cfg!(feature = "cuda"),
            release_build: !cfg!(debug_assertions),
            cpu_model: std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| cpu_model(&s)),
            available_threads,
            candle_threads: candle_core::utils::get_num_threads(),
            simd: simd_features(),
            compiled: compiled_target_features(),
            kernel_path: decodebench_kernels::qmatmul::selected_path_description(),
            bandwidth: memory_bandwidth(bandwidth_bytes, available_threads, 3, Duration::from_millis(600)),
            cuda: probe_cuda(),
            models: crate::fetch::list_rows(),
        }
    }

    /// `Err` with a one-line reason when CUDA is required and not usable.
    pub fn check(&self, require_cuda: bool) -> Result<()> {
        if !require_cuda {
            return Ok(());
        }
        match &self.cuda {
            None => bail!(
                "--device cuda: this build of decodebench has no CUDA support (rebuild with `--features cuda`, see the README section On a GPU)"
            ),
            Some(CudaReport { problem: Some(p), .. }) => bail!("--device cuda: no usable CUDA device: {p}"),
            Some(_) => Ok(()),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        writeln!(
            f,
            "build      decodebench {} ({}), CUDA support: {}",
            env!("CARGO_PKG_VERSION"),
            if self.release_build { "release" } else { "debug" },
            yes(self.build_has_cuda)
        )?;
        let mut devices = vec!["cpu".to_string()];
        match &self.cuda {
            None => {
                writeln!(f, "cuda       this build has no CUDA support (rebuild with `--features cuda`, see the README section On a GPU)")?
            }
            Some(c) => {
                let v = |s: &Option<String>| s.clone().unwrap_or_else(|| "unknown".into());
                writeln!(f, "cuda       driver {}, runtime {}", v(&c.driver), v(&c.runtime))?;
                for g in &c.devices {
                    devices.push(format!("cuda:{}", g.ordinal));
                    writeln!(
                        f,
                        "cuda:{:<4}  {}, sm_{}{}, {} ({} free), bf16 {}",
                        g.ordinal,
                        g.name,
                        g.compute_capability.0,
                        g.compute_capability.1,
                        crate::fetch::human_size(g.total_memory as u64),
                        crate::fetch::human_size(g.free_memory as u64),
                        yes(g.bf16)
                    )?;
                }
                if let Some(p) = &c.problem {
                    writeln!(f, "cuda       not usable: {p}")?;
                }
            }
        }
        writeln!(f, "devices    {}", devices.join(", "))?;
        writeln!(f, "cpu        {}", self.cpu_model.as_deref().unwrap_or("unknown"))?;
        let mut env = String::new();
        for var in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
            if let Ok(v) = std::env::var(var) {
                env.push_str(&format!(", {var}={v}"));
            }
        }
        writeln!(f, "threads    {} available, candle uses {}{env}", self.available_threads, self.candle_threads)?;
        if self.simd.is_empty() {
            writeln!(f, "simd       (not x86_64)")?;
        } else {
            let list: Vec<String> = self.simd.iter().map(|(name, on)| format!("{name} {}", yes(*on))).collect();
            writeln!(f, "simd       {}", list.join(", "))?;
        }
        writeln!(f, "compiled   {}", if self.compiled.is_empty() { "(not x86_64)".to_string() } else { self.compiled.join(" ") })?;
        writeln!(
            f,
            "kernels    quantized matmul (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K): {}{}",
            self.kernel_path,
            if crate::models::transformer::own_kernels_default() { "" } else { " (off: DECODEBENCH_KERNELS=candle)" }
        )?;
        match &self.bandwidth {
            Some(b) => writeln!(
                f,
                "memory     ~{:.1} GB/s read+write (copying {} with {} thread{}, best of {})",
                b.gb_per_s,
                crate::fetch::human_size(b.buffer_bytes as u64),
                b.threads,
                if b.threads == 1 { "" } else { "s" },
                b.reps
            )?,
            None => writeln!(f, "memory     bandwidth not measured")?,
        }
        let installed = self.models.iter().filter(|m| m.installed).count();
        writeln!(f, "models     {installed} of {} catalog models installed", self.models.len())?;
        for m in &self.models {
            writeln!(
                f,
                "  {:<20} {:<13} {:>9}  {}",
                m.name,
                if m.installed { "installed" } else { "not installed" },
                m.size,
                m.path.display()
            )?;
            if m.installed {
                // Reading the GGUF header is cheap (no weights); the conversions follow from it.
                if let Ok(file) = crate::models::gguf::GgufFile::open(&m.path) {
                    let conv = file.planned_conversions();
                    let types = file.weight_types().iter().map(|(t, n)| format!("{t} ×{n}")).collect::<Vec<_>>().join(", ");
                    writeln!(f, "  {:<20} weights {types}", "")?;
                    if !conv.is_empty() {
                        writeln!(f, "  {:<20} at load: {}", "", conv.join("; "))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The CPU's model name from `/proc/cpuinfo` text (x86 `model name`, or the ARM fields).
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    for key in ["model name", "Model", "Hardware", "cpu model", "Processor"] {
        let value = cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_string())
        });
        if value.is_some() {
            return value;
        }
    }
    None
}

/// The SIMD features that matter to candle's CPU kernels, as detected at run time.
pub fn simd_features() -> Vec<(&'static str, bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        vec![
            ("avx", is_x86_feature_detected!("avx")),
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("f16c", is_x86_feature_detected!("f16c")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
            ("avx512bw", is_x86_feature_detected!("avx512bw")),
            ("avx512vl", is_x86_feature_detected!("avx512vl")),
            ("avx512vnni", is_x86_feature_detected!("avx512vnni")),
            ("avx512bf16", is_x86_feature_detected!("avx512bf16")),
            ("avxvnni", is_x86_feature_detected!("avxvnni")),
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The x86 target features enabled at compile time (`-C target-cpu` / `target-feature`), in a
/// fixed order, followed by a note saying whether the build matches this CPU: `(native: ...)`
/// when every feature of the list that the CPU has is compiled in, otherwise `(portable build:
/// this CPU also has ...)`. Empty off x86_64.
pub fn compiled_target_features() -> Vec<String> {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! features {
            ($($name:tt),*) => { vec![$(($name, cfg!(target_feature = $name), is_x86_feature_detected!($name))),*] };
        }
        let list: Vec<(&str, bool, bool)> = features!(
            "sse2",
            "sse3",
            "ssse3",
            "sse4.1",
            "sse4.2",
            "popcnt",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "bmi2",
            "avx512f",
            "avx512bw",
            "avx512dq",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avxvnni"
        );
        let mut out: Vec<String> = list.iter().filter(|f| f.1).map(|f| f.0.to_string()).collect();
        let missing: Vec<&str> = list.iter().filter(|f| f.2 && !f.1).map(|f| f.0).collect();
        if missing.is_empty() {
            out.push("(native: every listed feature of this CPU is compiled in)".into());
        } else {
            out.push(format!(
                "(portable build: this CPU also has {}; candle's scalar kernels are slower without them, see .cargo/config.toml)",
                missing.join(" ")
            ));
        }
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// Copies a `bytes` buffer with `threads` threads (one chunk each) up to `reps` times after a
/// warm-up copy that faults the pages in, stopping early once `budget` is spent; returns the best
/// rate. `None` for an empty buffer.
pub fn memory_bandwidth(bytes: usize, threads: usize, reps: usize, budget: Duration) -> Option<Bandwidth> {
    if bytes == 0 {
        return None;
    }
    let threads = threads.clamp(1, 64);
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let chunk = bytes.div_ceil(threads);
    let copy = |dst: &mut [u8]| {
        std::thread::scope(|s| {
            for (d, from) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(from));
            }
        });
    };
    let start = Instant::now();
    copy(&mut dst);
    let mut best = f64::INFINITY;
    let mut done = 0;
    while done < reps.max(1) && (done == 0 || start.elapsed() < budget) {
        let t = Instant::now();
        copy(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
        done += 1;
    }
    std::hint::black_box(&dst);
    Some(Bandwidth { gb_per_s: 2.0 * bytes as f64 / best.max(1e-9) / 1e9, buffer_bytes: bytes, threads, reps: done })
}

#[cfg(feature = "cuda")]
fn probe_cuda() -> Option<CudaReport> {
    use decodebench_kernels::cuda as kc;
    let mut report = CudaReport { runtime: kc::runtime_version().ok().map(kc::version_string), ..Default::default() };
    match kc::driver_version() {
        Ok(v) => report.driver = Some(kc::version_string(v)),
        Err(e) => {
            report.problem = Some(format!("CUDA driver: {e}"));
            return Some(report);
        }
    }
    let count = match kc::device_count() {
        Ok(0) => {
            report.problem = Some("the driver sees no CUDA device".into());
            return Some(report);
        }
        Ok(n) => n,
        Err(e) => {
            report.problem = Some(format!("{e}"));
            return Some(report);
        }
    };
    for ordinal in 0..count {
        // The same call as `--device cuda` (device 0): what works here works there.
        let info = candle_core::Device::new_cuda(ordinal).and_then(|d| kc::device_info(d.as_cuda_device()?));
        match info {
            Ok(i) => report.devices.push(GpuInfo {
                ordinal: i.ordinal,
                bf16: i.supports_bf16(),
                name: i.name,
                compute_capability: i.compute_capability,
                total_memory: i.total_memory,
                free_memory: i.free_memory,
            }),
            Err(e) if ordinal == 0 => report.problem = Some(format!("cuda:0: {e}")),
            Err(e) => eprintln!("warning: cuda:{ordinal}: {e}"),
        }
    }
    Some(report)
}

#[cfg(not(feature = "cuda"))]
fn probe_cuda() -> Option<CudaReport> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_from_cpuinfo() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n";
        assert_eq!(cpu_model(x86).as_deref(), Some("AMD EPYC 7B13"));
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\n\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        assert_eq!(cpu_model(arm).as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
        assert_eq!(cpu_model("processor : 0\n"), None);
    }

    /// Compiled features are a subset of what the CPU runs (the test binary runs here), and the
    /// note says whether the build is native.
    #[test]
    fn compiled_features_and_native_note() {
        let compiled = compiled_target_features();
        if cfg!(target_arch = "x86_64") {
            let note = compiled.last().unwrap();
            assert!(note.starts_with("(native") || note.starts_with("(portable build"), "{compiled:?}");
            assert!(compiled.iter().any(|f| f == "sse2"), "{compiled:?}");
            #[cfg(target_arch = "x86_64")]
            for f in &compiled[..compiled.len() - 1] {
                assert!(simd_features().iter().all(|(n, on)| n != f || *on), "{f} compiled in but not detected");
            }
        } else {
            assert!(compiled.is_empty());
        }
    }

    #[test]
    fn bandwidth_is_measured_within_budget() {
        let t = Instant::now();
        let b = memory_bandwidth(8 << 20, 2, 3, Duration::from_millis(500)).unwrap();
        assert!(b.gb_per_s > 0.0 && b.gb_per_s.is_finite(), "{b:?}");
        assert!((1..=3).contains(&b.reps) && b.threads == 2 && b.buffer_bytes == 8 << 20);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(memory_bandwidth(0, 2, 3, Duration::from_millis(1)).is_none());
    }

    #[test]
    fn report_and_cuda_requirement() {
        let report = Report::collect_with(1 << 20);
        let text = report.to_string();
        for line in ["build ", "devices    cpu", "cpu ", "threads ", "simd ", "compiled ", "kernels ", "memory ", "models "] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(report.available_threads >= 1 && report.candle_threads >= 1);
        assert!(report.check(false).is_ok(), "doctor without --device cuda must succeed");
        if !cfg!(feature = "cuda") {
            assert!(text.contains("this build has no CUDA support"), "{text}");
            let err = report.check(true).unwrap_err().to_string();
            assert!(err.contains("no CUDA support") && !err.contains('\n'), "{err}");
        }
    }

    /// The command itself: exit 0 without --device cuda, CUDA or not; without CUDA, --device cuda
    /// fails. Prints the real report (see it with --nocapture) within about a second.
    #[test]
    fn run_exits_zero_unless_cuda_is_required_and_missing() {
        let t = Instant::now();
        run(false).unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "doctor took {:?}", t.elapsed());
        if !cfg!(feature = "cuda") {
            assert!(run(true).unwrap_err().to_string().starts_with("--device cuda: this build"));
        }
    }

    #[test]
    fn usable_and_unusable_cuda_reports() {
        let mut report = Report::collect_with(0);
        report.cuda = Some(CudaReport { problem: Some("CUDA_ERROR_NO_DEVICE".into()), ..Default::default() });
        let err = report.check(true).unwrap_err().to_string();
        assert_eq!(err, "--device cuda: no usable CUDA device: CUDA_ERROR_NO_DEVICE");
        report.cuda = Some(CudaReport {
            driver: Some("13.0".into()),
            runtime: Some("13.0".into()),
            devices: vec![GpuInfo {
                ordinal: 0,
                name: "Test GPU".into(),
                compute_capability: (8, 6),
                total_memory: 24 << 30,
                free_memory: 23 << 30,
                bf16: true,
            }],
            problem: None,
        });
        report.check(true).unwrap();
        let text = report.to_string();
        assert!(text.contains("cuda:0     Test GPU, sm_86, 24.0 GiB (23.0 GiB free), bf16 yes"), "{text}");
        assert!(text.contains("devices    cpu, cuda:0"), "{text}");
        assert!(text.contains("memory     bandwidth not measured"), "{text}");
    }
}

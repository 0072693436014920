//! Facts about where and when a run happened: the machine, the commit, timestamps, and the
//! process's peak memory per unit.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use decodebench_tables::records::MachineMeta;

use crate::doctor;

/// This machine as a run records it. `conversions`: weight conversions done at load.
pub fn machine(device: &str, conversions: Vec<String>) -> MachineMeta {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    MachineMeta {
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default(),
        cpu: doctor::cpu_model(&cpuinfo).unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        simd: doctor::simd_features().into_iter().filter(|(_, on)| *on).map(|(name, _)| name.to_string()).collect(),
        target_features: doctor::compiled_target_features(),
        threads: candle_core::utils::get_num_threads(),
        device: device.to_string(),
        conversions,
        // Under Slurm the node and the GPUs it handed this task.
        node: std::env::var("SLURMD_NODENAME").ok(),
        kernel_path: (device == "cpu").then(decodebench_kernels::qmatmul::selected_path_description),
        gpu: std::env::var("SLURM_JOB_GPUS").or_else(|_| std::env::var("CUDA_VISIBLE_DEVICES")).ok().filter(|_| device == "cuda"),
    }
}

/// The checkout's commit (`-dirty` with uncommitted changes), when run inside one.
pub fn git_commit() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "HEAD"]).output().ok().filter(|o| o.status.success())?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    Some(if dirty { format!("{commit}-dirty") } else { commit })
}

/// Now, as RFC 3339 in UTC (`2026-12-01T13:16:15Z`).
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Starts a new peak-memory window: Linux resets the process's high-water mark (VmHWM) when "5"
/// is written to clear_refs. Without it, the peak is the process's since start.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set since the last reset, MiB (0 where /proc is missing).
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_130_975), "2026-12-01T13:16:15Z");
    }

    #[test]
    fn peak_rss_is_read() {
        reset_peak_rss();
        assert!(peak_rss_mb() > 0.0);
    }
}

//! report.html in a real browser: headless Chromium loads it from a file:// URL; every chart
//! image must decode (the page's own load check writes `data-images-ok="N/N"` into the DOM) and
//! no console error may be logged. Without Chromium: fails under CI (which runs
//! scripts/install-chromium.sh first), else prints a note and passes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Runs headless Chromium on `page` with `extra` flags and a fresh profile; (stdout, stderr).
fn run(bin: &Path, page: &Path, extra: &[String]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let mut cmd = Command::new("timeout");
    cmd.arg("120").arg(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.path().display()));
    cmd.args(extra).arg(url);
    let out = cmd.output().expect("cannot run chromium");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "chromium failed ({}): {stderr}", out.status);
    (stdout, stderr)
}

/// Console messages (errors and uncaught exceptions) that Chromium logged for the page.
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught")).collect()
}

fn images_ok(dom: &str) -> Option<&str> {
    let at = dom.find("data-images-ok=\"")? + "data-images-ok=\"".len();
    dom[at..].split('"').next()
}

#[test]
fn report_html_loads_in_headless_chromium() {
    let Some(bin) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is missing: CI must run scripts/install-chromium.sh before the tests");
        }
        eprintln!("note: /usr/bin/chromium is missing; skipping the browser test (scripts/install-chromium.sh installs it)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    common::write_folder(&dir, 1.0, "host-a");
    let out = decodebench_report::report(&dir, None).unwrap();
    let n = out.charts.len() / 2;
    assert!(n > 0);

    let (dom, stderr) = run(&bin, &out.html, &["--dump-dom".into()]);
    assert!(dom.contains("decodebench report: run"), "the page did not load: {dom:.300}");
    assert_eq!(images_ok(&dom), Some(format!("{n}/{n}").as_str()), "chart images did not all decode");
    assert!(console_errors(&stderr).is_empty(), "console errors: {:?}", console_errors(&stderr));

    let shot = tmp.path().join("report.png");
    run(&bin, &out.html, &[format!("--screenshot={}", shot.display()), "--window-size=1280,2400".into()]);
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "no screenshot");
    if let Some(keep) = std::env::var_os("DECODEBENCH_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }

    // The check itself is not vacuous: a broken image is counted and logged.
    let broken = tmp.path().join("broken.html");
    let html = std::fs::read_to_string(&out.html).unwrap();
    let at = html.find("data:image/png;base64,").unwrap() + "data:image/png;base64,".len();
    let (_, rest) = html[at..].split_once('"').unwrap();
    std::fs::write(&broken, format!("{}AAAA\"{rest}", &html[..at])).unwrap();
    let (dom, stderr) = run(&bin, &broken, &["--dump-dom".into()]);
    assert_eq!(images_ok(&dom), Some(format!("{}/{n}", n - 1).as_str()));
    assert!(console_errors(&stderr).iter().any(|l| l.contains("chart image did not load")), "{stderr}");
}

//! The report and the comparison on synthetic results folders: the chosen numbers reach both
//! pages, every chart is a valid PNG and SVG, and partial folders report what is there.

mod common;

use std::path::Path;

use common::*;
use decodebench_report::{compare, report};

const ALL_CHARTS: [&str; 13] = [
    "speedup_by_config",
    "speedup_by_category",
    "measured_vs_predicted",
    "accepted_vs_tree_size",
    "speed_quality_typical_nll",
    "speed_quality_typical_exact",
    "speed_quality_speculative_nll",
    "speed_quality_speculative_exact",
    "acceptance_by_depth",
    "acceptance_by_rank",
    "acceptance_length",
    "verification_cost",
    "time_share",
];

/// A PNG that decodes, and its size.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", path.display());
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Not blank: a chart has ink.
    assert!(buf.iter().any(|&b| b < 128), "{} is blank", path.display());
    (info.width, info.height)
}

fn assert_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let t = text.trim();
    assert!(t.starts_with("<svg") && t.ends_with("</svg>"), "{} is not an SVG document", path.display());
    assert!(t.contains("<text"), "{} has no text", path.display());
    assert_eq!(t.matches("<svg").count(), 1);
}

#[test]
fn report_has_the_numbers_and_every_chart() {
    let tmp = tempfile::tempdir().unwrap();
    // DECODEBENCH_REPORT_KEEP=DIR keeps the synthetic report there, to look at.
    let dir = std::env::var_os("DECODEBENCH_REPORT_KEEP").map_or_else(|| tmp.path().join("run"), |d| Path::new(&d).join("run"));
    let _ = std::fs::remove_dir_all(&dir);
    write_folder(&dir, 1.0, "host-a");
    let out = report(&dir, None).unwrap();
    assert!(out.skipped.is_empty(), "skipped: {:?}", out.skipped);
    assert!(out.missing.is_empty(), "missing: {:?}", out.missing);
    assert_eq!(out.lossless_mismatches, vec![SPEC8.to_string()]);

    let md = std::fs::read_to_string(&out.markdown).unwrap();
    let html = std::fs::read_to_string(&out.html).unwrap();
    for page in [&md, &html] {
        // SPEC4: speedup 1.5 [1.4, 1.6], predicted 1.7, mean accepted 2.3, 30 tok/s.
        for needle in ["1.50", "[1.40, 1.60]", "1.70", "2.30", "30.0", "0.900", "Test CPU 9000", "deadbeefcafef00d", "7a36a67"] {
            assert!(page.contains(needle), "`{needle}` not in the page");
        }
        // The loud flag names the diverged lossless configuration, before the headline.
        let flag = page.find("LOSSLESS CONFIGURATIONS DIVERGED").expect("no lossless flag");
        let headline = page.find("Headline").unwrap();
        assert!(flag < headline);
        assert!(page[flag..headline].contains("gamma=8"));
        assert!(!page[flag..headline].contains("gamma=4,"), "a matching config is flagged");
        // Shards on different hardware, and of different commits, are said so.
        assert!(page.contains("different hardware"));
        assert!(page.contains("different commits (1/2 7a36a67, 2/2 b0b0b0b)"), "shards' commits not named");
        // Column glossary.
        assert!(page.contains("geometric mean") && page.contains("bootstrap over prompts"));
    }
    // The headline row of speculative is its best configuration (γ=4 by speedup 1.5 vs 1.35).
    let spec_row = md.lines().find(|l| l.starts_with("| speculative |")).unwrap();
    assert!(spec_row.contains("gamma=4") && spec_row.contains("| 1.50 |"), "{spec_row}");
    // Per-category speedups: coding is 1.1× SPEC4's overall.
    assert!(md.contains("1.65"));

    // Every chart exists, as a valid PNG 1000 px wide and an SVG, linked from report.md and
    // inlined in report.html.
    for stem in ALL_CHARTS {
        let png = dir.join("charts").join(format!("{stem}.png"));
        let svg = dir.join("charts").join(format!("{stem}.svg"));
        assert!(out.charts.contains(&png) && out.charts.contains(&svg), "{stem} not written");
        let (w, h) = png_size(&png);
        assert_eq!(w, 1000);
        assert!(h >= 360, "{stem}: {h} px high");
        assert_svg(&svg);
        assert!(md.contains(&format!("](charts/{stem}.png)")), "{stem} not linked in report.md");
    }
    assert_eq!(out.charts.len(), 2 * ALL_CHARTS.len());
    assert_eq!(html.matches("<img src=\"data:image/png;base64,").count(), ALL_CHARTS.len());
    // Self-contained: nothing fetched.
    for bad in ["src=\"http", "href=\"http", "@import", "url(http", "<link"] {
        assert!(!html.contains(bad), "report.html loads something: {bad}");
    }
}

#[test]
fn out_dir_is_separate_from_the_results() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, 1.0, "host-a");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = report(&dir, Some(&out_dir)).unwrap();
    assert_eq!(out.html, out_dir.join("report.html"));
    assert!(out_dir.join("charts/speedup_by_config.svg").is_file());
    assert!(!dir.join("report.html").exists());
}

#[test]
fn partial_merges_and_resumes_on_other_hardware_are_said_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, 1.0, "host-a");
    // Shards on one kind of machine, but shard 2 resumed on another, and shard 3 missing.
    let mut m = meta("host-a");
    let same = m.merged_from[0].machine.clone();
    m.merged_from[1].machine = same;
    m.merged_from[1].earlier_machines = vec![machine("n9", "Older CPU 7")];
    m.partial = vec!["shard 3/3 is missing".into()];
    decodebench_tables::records::write_json_atomic(&dir.join(decodebench_tables::records::META_FILE), &m).unwrap();
    let out = report(&dir, None).unwrap();
    for page in [std::fs::read_to_string(&out.markdown).unwrap(), std::fs::read_to_string(&out.html).unwrap()] {
        let banner = page.find("PARTIAL RESULT").expect("no partial banner");
        assert!(banner < page.find("Headline").unwrap(), "the banner comes before the headline");
        assert!(page.contains("shard 3/3 is missing"));
        assert!(page.contains("Shard 2/2 was resumed on other hardware") && page.contains("Older CPU 7"), "no resume note");
        // The two shards themselves ran on the same hardware now.
        assert!(!page.contains("shards of this run ran on different hardware"));
    }
}

#[test]
fn folder_without_steps_and_meta_still_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, 1.0, "host-a");
    for f in ["steps.parquet", "steps.csv", "meta.json"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    let out = report(&dir, None).unwrap();
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    let html = std::fs::read_to_string(&out.html).unwrap();
    assert!(out.missing.iter().any(|m| m.contains("`steps`")), "{:?}", out.missing);
    assert!(out.missing.iter().any(|m| m.contains("meta.json")), "{:?}", out.missing);
    for page in [&md, &html] {
        assert!(page.contains("Incomplete results folder"));
        assert!(page.contains("table `steps` is missing") || page.contains("table &#39;steps"), "no steps note");
        assert!(page.contains("meta.json is missing"));
        assert!(page.contains("1.50") && page.contains("[1.40, 1.60]"), "the summary is still there");
    }
}

#[test]
fn parquet_falls_back_to_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, 1.0, "host-a");
    std::fs::write(dir.join("summary.parquet"), b"PAR1 torn").unwrap();
    let out = report(&dir, None).unwrap();
    assert!(out.missing.iter().any(|m| m.contains("summary.parquet is unreadable") && m.contains("summary.csv")), "{:?}", out.missing);
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    assert!(md.contains("[1.40, 1.60]"));
}

#[test]
fn killed_and_empty_folders_report_without_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    // A killed run: a torn summary with no CSV twin, an empty turns table, nothing else.
    let dir = tmp.path().join("killed");
    write_folder(&dir, 1.0, "host-a");
    std::fs::write(dir.join("summary.parquet"), b"PAR1\0\0").unwrap();
    std::fs::remove_file(dir.join("summary.csv")).unwrap();
    std::fs::write(dir.join("turns.csv"), "config_id,strategy,config,decode_s\n").unwrap();
    std::fs::remove_file(dir.join("turns.parquet")).unwrap();
    std::fs::write(dir.join("meta.json"), "{\"config_path\": \"x\"").unwrap();
    std::fs::write(dir.join("calibration.json"), "not json").unwrap();
    let out = report(&dir, None).unwrap();
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    assert!(md.contains("summary.parquet is unreadable"), "{md}");
    assert!(md.contains("table `turns`") && md.contains("is empty"));
    assert!(md.contains("Losslessness not checked"));
    assert!(!out.skipped.is_empty());
    assert!(md.contains("not drawn"));

    // An empty folder.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = report(&empty, None).unwrap();
    assert_eq!(out.missing.iter().filter(|m| m.contains("is missing")).count(), 7, "{:?}", out.missing);
    assert!(out.charts.is_empty());
    assert!(std::fs::read_to_string(&out.html).unwrap().contains("meta.json is missing"));

    // No folder at all is an error, not a panic.
    let e = report(&tmp.path().join("nope"), None).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn compare_shows_both_numbers_and_the_ratio() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::env::var_os("DECODEBENCH_REPORT_KEEP").map_or_else(|| tmp.path().to_path_buf(), |d| Path::new(&d).to_path_buf());
    let (a, b, out_dir) = (base.join("a"), base.join("b"), base.join("cmp"));
    for d in [&a, &b, &out_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
    write_folder(&a, 1.0, "host-a");
    // Run B: 4/3 the speedups and throughputs; one config fewer.
    write_folder(&b, 4.0 / 3.0, "host-b");
    let out = compare(&a, &b, &out_dir).unwrap();
    assert_eq!(out.common.len(), configs_a().len());
    assert!(out.only_a.is_empty() && out.only_b.is_empty());
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    let html = std::fs::read_to_string(&out.html).unwrap();
    for page in [&md, &html] {
        // SPEC4: 1.50 in A, 2.00 in B, ratio 1.333; 30.0 vs 40.0 tok/s.
        let row = page.lines().find(|l| l.contains("gamma=4") && l.contains("1.333")).expect("no SPEC4 row with its ratio");
        for needle in ["1.50", "2.00", "30.0", "40.0", "2.30"] {
            assert!(row.contains(needle), "`{needle}` not in {row}");
        }
        assert!(page.contains("host-a") && page.contains("host-b"));
        assert!(page.contains("differs"));
    }
    for stem in ["compare_speedup", "compare_tokens_per_s"] {
        let png = out_dir.join("charts").join(format!("{stem}.png"));
        assert_eq!(png_size(&png).0, 1000);
        assert_svg(&out_dir.join("charts").join(format!("{stem}.svg")));
        assert!(out.charts.contains(&png));
    }

    // A config only in one run is listed, not compared.
    std::fs::remove_file(b.join("summary.parquet")).unwrap();
    std::fs::remove_file(b.join("summary.csv")).unwrap();
    let out = compare(&a, &b, &out_dir).unwrap();
    assert!(out.common.is_empty());
    assert_eq!(out.only_a.len(), configs_a().len());
    assert!(out.missing.iter().any(|m| m.starts_with("B: table `summary`")));
}

#[test]
fn shards_on_different_kernel_paths_are_said_so() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, 1.0, "host-a");
    // The same hardware, but shard 2's kernels ran on another SIMD path.
    let mut m = meta("host-a");
    let mut other = m.merged_from[0].machine.clone();
    other.kernel_path = Some("avx512zmm path".into());
    m.merged_from[1].machine = other;
    decodebench_tables::records::write_json_atomic(&dir.join(decodebench_tables::records::META_FILE), &m).unwrap();
    let out = report(&dir, None).unwrap();
    let md = std::fs::read_to_string(&out.markdown).unwrap();
    assert!(md.contains("ran on different hardware (they differ in: CPU kernels)"), "no kernel-path note");
    assert!(md.contains("| avx512zmm path |") && md.contains("| avx2 path |"), "the Shards table names each path");
}

#[test]
fn a_calibration_that_disagrees_with_the_greedy_baseline_is_said_so() {
    use decodebench_tables::records::{read_json, write_json_atomic, Calibration, CALIBRATION_FILE};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    write_folder(&dir, 1.0, "host-a");
    // The synthetic greedy turns decode 64 tokens in 2.0 s: 31.7 ms per token after the first.
    let mut cal: Calibration = read_json(&dir.join(CALIBRATION_FILE)).unwrap();
    let note = "calibration prices one target forward at";
    for (c1, flagged) in [(33.0, false), (60.0, true), (20.0, true)] {
        cal.models.get_mut("target").unwrap().forward_ms.insert(1, c1);
        write_json_atomic(&dir.join(CALIBRATION_FILE), &cal).unwrap();
        let md = std::fs::read_to_string(report(&dir, None).unwrap().markdown).unwrap();
        assert_eq!(md.contains(note), flagged, "c(1) = {c1} ms");
        if flagged {
            assert!(
                md.contains(&format!("This run's {note} {c1:.1} ms, but its greedy baseline took 31.7 ms per token (median of 2 turns)"))
            );
        }
    }
}

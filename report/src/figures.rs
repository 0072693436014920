//! From a results folder to chart descriptions. Each function returns the chart, or why it
//! cannot be drawn from this folder (the page says so in its place).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::charts::*;
use crate::load::{Folder, SummaryRow};
use crate::params::{parse_config, short_labels, tree_info, varying_params};

/// Points of one line, in drawing order.
type Points = Vec<(f64, f64)>;

/// What a figure function gives: a chart, or the reason it was skipped.
pub type Figure = std::result::Result<Chart, Skipped>;

#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub stem: String,
    pub title: String,
    pub reason: String,
}

fn skip(stem: &str, title: &str, reason: impl Into<String>) -> Figure {
    Err(Skipped { stem: stem.into(), title: title.into(), reason: reason.into() })
}

/// Most series one line or column chart holds before it stops being readable.
const MAX_SERIES: usize = 8;
/// Most rows of the per-configuration bar chart.
const MAX_ROWS: usize = 60;

/// Every chart of the report, in page order.
pub fn all(f: &Folder) -> Vec<Figure> {
    let labels = labels(f);
    let mut out = vec![speedup_by_config(f, &labels), speedup_by_category(f, &labels), measured_vs_predicted(f), accepted_vs_tree_size(f)];
    for sweep in [Sweep::Typical, Sweep::Speculative] {
        for metric in [Quality::Nll, Quality::ExactMatch] {
            out.push(speed_quality(f, sweep, metric));
        }
    }
    out.push(acceptance_by_depth(f, &labels));
    out.push(acceptance_by_rank(f, &labels));
    out.push(acceptance_lengths(f, &labels));
    out.push(verification_cost(f));
    out.push(time_share(f));
    out
}

/// Short chart labels for every configuration the folder names (summary, turns, acceptance).
pub fn labels(f: &Folder) -> HashMap<String, String> {
    let mut seen = BTreeSet::new();
    let mut ids = Vec::new();
    let all = f
        .summary
        .iter()
        .map(|r| (&r.config_id, &r.strategy, &r.config))
        .chain(f.acceptance.iter().map(|r| (&r.config_id, &r.strategy, &r.config)))
        .chain(f.turns.iter().map(|r| (&r.config_id, &r.strategy, &r.config)));
    for (id, s, c) in all {
        if seen.insert(id.clone()) {
            ids.push((id.as_str(), s.as_str(), c.as_str()));
        }
    }
    short_labels(ids)
}

fn label<'a>(labels: &'a HashMap<String, String>, id: &'a str) -> &'a str {
    labels.get(id).map_or(id, String::as_str)
}

/// The best configuration of each strategy by overall speedup (greedy first, then by that
/// speedup, fastest first): the headline table's rows.
pub fn best_per_strategy(f: &Folder) -> Vec<&SummaryRow> {
    let mut best: BTreeMap<&str, &SummaryRow> = BTreeMap::new();
    for r in f.overall() {
        let better = match best.get(r.strategy.as_str()) {
            None => true,
            Some(b) => r.speedup.unwrap_or(f64::NEG_INFINITY) > b.speedup.unwrap_or(f64::NEG_INFINITY),
        };
        if better {
            best.insert(&r.strategy, r);
        }
    }
    let mut rows: Vec<&SummaryRow> = best.into_values().collect();
    rows.sort_by(|a, b| {
        (b.strategy == "greedy")
            .cmp(&(a.strategy == "greedy"))
            .then(b.speedup.unwrap_or(f64::NEG_INFINITY).total_cmp(&a.speedup.unwrap_or(f64::NEG_INFINITY)))
    });
    rows
}

fn bar(r: &SummaryRow) -> Option<Bar> {
    Some(Bar { value: r.speedup?, low: r.speedup_ci_low, high: r.speedup_ci_high })
}

const SPEEDUP_AXIS: &str = "speedup over greedy (×, geo. mean, paired per turn)";

pub fn speedup_by_config(f: &Folder, labels: &HashMap<String, String>) -> Figure {
    let (stem, title) = ("speedup_by_config", "Speedup over greedy by configuration (95% CI)");
    let mut rows: Vec<&SummaryRow> = f.overall().into_iter().filter(|r| r.speedup.is_some()).collect();
    if rows.is_empty() {
        return skip(stem, title, "no configuration has an overall speedup (summary table missing or empty)");
    }
    rows.sort_by(|a, b| b.speedup.unwrap_or(0.0).total_cmp(&a.speedup.unwrap_or(0.0)));
    let mut caption =
        "Bars: overall speedup of each configuration against greedy decoding in the same run; whiskers: 95% bootstrap CI over prompts; the line at 1 is greedy.".to_string();
    if rows.len() > MAX_ROWS {
        caption.push_str(&format!(" Only the {MAX_ROWS} fastest of {} configurations are drawn; the tables list all.", rows.len()));
        rows.truncate(MAX_ROWS);
    }
    let strategies: Vec<String> = rows.iter().map(|r| r.strategy.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let series = strategies
        .iter()
        .map(|s| BarSeries { name: s.clone(), values: rows.iter().map(|r| if &r.strategy == s { bar(r) } else { None }).collect() })
        .collect();
    Ok(Chart {
        stem: stem.into(),
        title: title.into(),
        caption,
        kind: ChartKind::Bars(Bars {
            rows: rows.iter().map(|r| label(labels, &r.config_id).to_string()).collect(),
            series,
            value_label: SPEEDUP_AXIS.into(),
            reference: Some((1.0, "greedy (1×)".into())),
        }),
    })
}

pub fn speedup_by_category(f: &Folder, labels: &HashMap<String, String>) -> Figure {
    let (stem, title) = ("speedup_by_category", "Speedup over greedy by MT-Bench category (95% CI)");
    let best: Vec<&SummaryRow> = best_per_strategy(f).into_iter().filter(|r| r.strategy != "greedy").take(MAX_SERIES).collect();
    let categories: Vec<String> = f
        .summary
        .iter()
        .filter(|r| r.category != "all" && r.speedup.is_some())
        .map(|r| r.category.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if best.is_empty() || categories.is_empty() {
        return skip(stem, title, "the summary table has no per-category speedups of a non-greedy configuration");
    }
    let series = best
        .iter()
        .map(|b| BarSeries {
            name: label(labels, &b.config_id).to_string(),
            values: categories
                .iter()
                .map(|c| f.summary.iter().find(|r| r.config_id == b.config_id && &r.category == c).and_then(bar))
                .collect(),
        })
        .collect();
    Ok(Chart {
        stem: stem.into(),
        title: title.into(),
        caption: "The best configuration of each strategy (by overall speedup), per MT-Bench category; whiskers: 95% bootstrap CI over that category's prompts."
            .into(),
        kind: ChartKind::Bars(Bars {
            rows: categories,
            series,
            value_label: SPEEDUP_AXIS.into(),
            reference: Some((1.0, "greedy (1×)".into())),
        }),
    })
}

pub fn measured_vs_predicted(f: &Folder) -> Figure {
    let (stem, title) = ("measured_vs_predicted", "Measured vs predicted speedup");
    let mut by_strategy: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for r in f.overall() {
        if let (Some(p), Some(m)) = (r.predicted_speedup, r.speedup) {
            by_strategy.entry(&r.strategy).or_default().push((p, m));
        }
    }
    if by_strategy.is_empty() {
        return skip(stem, title, "no configuration has both a measured and a predicted speedup (the cost model needs calibration.json)");
    }
    Ok(Chart {
        stem: stem.into(),
        title: title.into(),
        caption: "One point per configuration: the cost model's prediction (from the calibrated forward costs and the measured acceptance) against the measured speedup. Points below the diagonal ran slower than predicted.".into(),
        kind: ChartKind::Xy(Xy {
            x_label: "predicted speedup (×)".into(),
            y_label: "measured speedup (×)".into(),
            series: by_strategy
                .into_iter()
                .map(|(s, points)| XySeries { name: s.to_string(), points, line: false, style: PointStyle::Dot, labels: vec![] })
                .collect(),
            diagonal: true,
            x_from_zero: false,
            y_from_zero: false,
            x_integer: false,
        }),
    })
}

pub fn accepted_vs_tree_size(f: &Folder) -> Figure {
    let (stem, title) = ("accepted_vs_tree_size", "Mean accepted tokens vs Medusa tree size");
    // A curve per tree family and per setting of the other parameters (acceptance rule, ...).
    let mut found: Vec<(String, usize, f64, String)> = Vec::new();
    for r in f.overall().into_iter().filter(|r| r.strategy == "medusa") {
        let (Some((family, nodes)), Some(acc)) = (tree_info(&r.config), r.mean_accepted_tokens) else { continue };
        let rest: Vec<String> = parse_config(&r.config)
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "tree" | "tree_nodes" | "nodes"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        found.push((family, nodes, acc, rest.join(",")));
    }
    if found.is_empty() {
        return skip(stem, title, "no Medusa configuration with a known tree size and a mean accepted tokens figure");
    }
    let rests: Vec<&str> = found.iter().map(|f| f.3.as_str()).collect();
    let mut curves: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for ((family, nodes, acc, _), setting) in found.iter().zip(varying_params(&rests)) {
        curves.entry((family.clone(), setting)).or_default().push((*nodes as f64, *acc));
    }
    let mut caption = "Mean tokens accepted per target forward (bonus token included) by tree size, one line per tree family; a family with one size is a single point.".to_string();
    let mut curves: Vec<((String, String), Points)> = curves.into_iter().collect();
    if curves.len() > MAX_SERIES {
        curves.sort_by_key(|(_, p)| std::cmp::Reverse(p.len()));
        caption.push_str(&format!(" The {MAX_SERIES} curves with the most points of {} are drawn.", curves.len()));
        curves.truncate(MAX_SERIES);
    }
    let series = curves
        .into_iter()
        .map(|((family, setting), mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let name = if setting.is_empty() { family } else { format!("{family} ({setting})") };
            XySeries { name, points, line: true, style: PointStyle::Dot, labels: vec![] }
        })
        .collect();
    Ok(Chart {
        stem: stem.into(),
        title: title.into(),
        caption,
        kind: ChartKind::Xy(Xy {
            x_label: "tree size (nodes, root excluded)".into(),
            y_label: "mean accepted tokens per forward".into(),
            series,
            diagonal: false,
            x_from_zero: true,
            y_from_zero: true,
            x_integer: false,
        }),
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sweep {
    /// Medusa with typical acceptance: ε, α, T.
    Typical,
    /// Draft-model speculative decoding: γ, schedule, p_min.
    Speculative,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quality {
    Nll,
    ExactMatch,
}

fn in_sweep(r: &SummaryRow, sweep: Sweep) -> bool {
    match sweep {
        Sweep::Typical => r.strategy == "medusa" && parse_config(&r.config).get("accept").is_some_and(|a| a == "typical"),
        Sweep::Speculative => r.strategy == "speculative",
    }
}

/// The points no other point beats on both axes: higher speedup, and lower (`lower_better`) or
/// higher quality. Sorted by quality, so the front draws as a line.
pub fn pareto_front(points: &[(f64, f64)], lower_better: bool) -> Vec<(f64, f64)> {
    let better = |a: f64, b: f64| if lower_better { a <= b } else { a >= b };
    let mut front: Vec<(f64, f64)> =
        points.iter().copied().filter(|&(q, s)| !points.iter().any(|&(q2, s2)| better(q2, q) && s2 >= s && (q2 != q || s2 != s))).collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    front.dedup();
    front
}

pub fn speed_quality(f: &Folder, sweep: Sweep, metric: Quality) -> Figure {
    let (sweep_name, sweep_key, params) = match sweep {
        Sweep::Typical => ("Medusa typical acceptance", "typical", "ε, α, T"),
        Sweep::Speculative => ("speculative decoding", "speculative", "γ, schedule, p_min"),
    };
    let (metric_name, metric_key, axis, lower_better) = match metric {
        Quality::Nll => ("NLL per token", "nll", "target NLL per token (nats, lower is better)", true),
        Quality::ExactMatch => ("exact match", "exact", "exact match with greedy (share of turns, higher is better)", false),
    };
    let stem = format!("speed_quality_{sweep_key}_{metric_key}");
    let title = format!("Speed vs {metric_name}: {sweep_name} sweep");
    let q = |r: &SummaryRow| match metric {
        Quality::Nll => r.nll_per_token,
        Quality::ExactMatch => r.exact_match,
    };
    let rows: Vec<&SummaryRow> = f.overall().into_iter().filter(|r| in_sweep(r, sweep) && q(r).is_some() && r.speedup.is_some()).collect();
    if rows.is_empty() {
        return skip(&stem, &title, format!("no {sweep_name} configuration with both a speedup and {metric_name}"));
    }
    let points: Vec<(f64, f64)> = rows.iter().map(|r| (q(r).unwrap_or(0.0), r.speedup.unwrap_or(0.0))).collect();
    let names = varying_params(&rows.iter().map(|r| r.config.as_str()).collect::<Vec<_>>());
    let front = pareto_front(&points, lower_better);
    // The front's points are named by what sets them apart within the sweep.
    let front_labels = front.iter().map(|p| points.iter().position(|x| x == p).map(|i| names[i].clone()).unwrap_or_default()).collect();
    let mut series = vec![
        XySeries { name: format!("configuration ({params})"), points: points.clone(), line: false, style: PointStyle::Dot, labels: vec![] },
        XySeries { name: "Pareto front".into(), points: front, line: true, style: PointStyle::Ring, labels: front_labels },
    ];
    if let Some(g) = f.overall().into_iter().find(|r| r.strategy == "greedy").and_then(|g| Some((q(g)?, g.speedup.unwrap_or(1.0)))) {
        series.push(XySeries { name: "greedy".into(), points: vec![g], line: false, style: PointStyle::Cross, labels: vec![] });
    }
    Ok(Chart {
        stem,
        title,
        caption: format!(
            "One point per configuration of the {sweep_name} sweep ({params}); ringed points are the Pareto front: no other configuration is both faster and better in {metric_name}."
        ),
        kind: ChartKind::Xy(Xy {
            x_label: axis.into(),
            y_label: "speedup over greedy (×)".into(),
            series,
            diagonal: false,
            x_from_zero: false,
            y_from_zero: false,
            x_integer: false,
        }),
    })
}

/// Configurations to draw when one line or bar per configuration would be too many: the best
/// of each strategy first, then the rest by overall speedup.
fn pick_configs(f: &Folder, candidates: &BTreeSet<String>) -> (Vec<String>, usize) {
    let mut order: Vec<String> =
        best_per_strategy(f).into_iter().map(|r| r.config_id.clone()).filter(|id| candidates.contains(id)).collect();
    let mut rest: Vec<&SummaryRow> =
        f.overall().into_iter().filter(|r| candidates.contains(&r.config_id) && !order.contains(&r.config_id)).collect();
    rest.sort_by(|a, b| b.speedup.unwrap_or(0.0).total_cmp(&a.speedup.unwrap_or(0.0)));
    order.extend(rest.into_iter().map(|r| r.config_id.clone()));
    order.extend(candidates.iter().filter(|c| !order.contains(c)).cloned().collect::<Vec<_>>());
    let total = order.len();
    order.truncate(MAX_SERIES);
    (order, total)
}

fn truncation_note(shown: usize, total: usize) -> String {
    if total > shown {
        format!(" {shown} of {total} configurations are drawn (the best of each strategy first, then by speedup).")
    } else {
        String::new()
    }
}

pub fn acceptance_by_depth(f: &Folder, labels: &HashMap<String, String>) -> Figure {
    let (stem, title) = ("acceptance_by_depth", "Acceptance rate by draft position / Medusa head");
    let rows: Vec<_> = f.acceptance.iter().filter(|r| r.kind == "position" && r.depth.is_some() && r.rate.is_some()).collect();
    let ids: BTreeSet<String> = rows.iter().map(|r| r.config_id.clone()).collect();
    if ids.is_empty() {
        return skip(stem, title, "the acceptance table has no `position` rows (missing, or no drafting strategy ran)");
    }
    let (picked, total) = pick_configs(f, &ids);
    let series = picked
        .iter()
        .map(|id| {
            let mut points: Vec<(f64, f64)> =
                rows.iter().filter(|r| &r.config_id == id).filter_map(|r| Some((r.depth?, r.rate?))).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            XySeries { name: label(labels, id).to_string(), points, line: true, style: PointStyle::Dot, labels: vec![] }
        })
        .collect();
    Ok(Chart {
        stem: stem.into(),
        title: title.into(),
        caption: format!(
            "At each depth d (draft position; for Medusa, tree depth d is head d's guess), the share of the steps that put a token at depth d to the target in which it was accepted.{}",
            truncation_note(picked.len(), total)
        ),
        kind: ChartKind::Xy(Xy {
            x_label: "depth (draft position / Medusa head)".into(),
            y_label: "acceptance rate".into(),
            series,
            diagonal: false,
            x_from_zero: false,
            y_from_zero: true,
            x_integer: true,
        }),
    })
}

pub fn acceptance_by_rank(f: &Folder, labels: &HashMap<String, String>) -> Figure {
    let (stem, title) = ("acceptance_by_rank", "Medusa: rank of the accepted candidate, per head");
    let rows: Vec<_> = f.acceptance.iter().filter(|r| r.kind == "rank" && r.rank.is_some() && r.rate.is_some()).collect();
    let ids: BTreeSet<String> = rows.iter().map(|r| r.config_id.clone()).collect();
    if ids.is_empty() {
        return skip(stem, title, "the acceptance table has no `rank` rows (no Medusa configuration ran)");
    }
    let (picked, _) = pick_configs(f, &ids);
    let id = &picked[0];
    let mut depths: BTreeMap<i64, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| &r.config_id == id) {
        depths.entry(r.depth.unwrap_or(0.0) as i64).or_default().push((r.rank.unwrap_or(0.0), r.rate.unwrap_or(0.0)));
    }
    let series = depths
        .into_iter()
        .take(MAX_SERIES)
        .map(|(d, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            XySeries { name: format!("head / depth {d}"), points, line: true, style: PointStyle::Dot, labels: vec![] }
        })
        .collect();
    Ok(Chart {
        stem: stem.into(),
        title: format!("{title}: {}", label(labels, id)),
        caption: "Among the steps that accepted a token at depth d, the share in which it was head d's r-th best candidate (r = 0: its top-1), for the fastest Medusa configuration that has rank data.".into(),
        kind: ChartKind::Xy(Xy {
            x_label: "candidate rank (0 = the head's top-1)".into(),
            y_label: "share of accepted tokens".into(),
            series,
            diagonal: false,
            x_from_zero: false,
            y_from_zero: true,
            x_integer: true,
        }),
    })
}

pub fn acceptance_lengths(f: &Folder, labels: &HashMap<String, String>) -> Figure {
    let (stem, title) = ("acceptance_length", "Accepted length per step: histogram");
    let rows: Vec<_> = f.acceptance.iter().filter(|r| r.kind == "length" && r.length.is_some() && r.rate.is_some()).collect();
    let ids: BTreeSet<String> = rows.iter().map(|r| r.config_id.clone()).collect();
    if ids.is_empty() {
        return skip(stem, title, "the acceptance table has no `length` rows");
    }
    let (mut picked, total) = pick_configs(f, &ids);
    picked.truncate(5);
    let lengths: BTreeSet<i64> = rows.iter().filter(|r| picked.contains(&r.config_id)).map(|r| r.length.unwrap_or(0.0) as i64).collect();
    let lengths: Vec<i64> = lengths.into_iter().collect();
    let series = picked
        .iter()
        .map(|id| ColumnSeries {
            name: label(labels, id).to_string(),
            values: lengths
                .iter()
                .map(|&l| rows.iter().find(|r| &r.config_id == id && r.length.unwrap_or(-1.0) as i64 == l).and_then(|r| r.rate))
                .collect(),
        })
        .collect();
    Ok(Chart {
        stem: stem.into(),
        title: title.into(),
        caption: format!(
            "Share of decoding steps (target forwards) that accepted each number of tokens, bonus token included.{}",
            truncation_note(picked.len(), total)
        ),
        kind: ChartKind::Columns(Columns {
            x_label: "tokens accepted in one step (bonus included)".into(),
            y_label: "share of steps".into(),
            categories: lengths.iter().map(|l| l.to_string()).collect(),
            series,
        }),
    })
}

pub fn verification_cost(f: &Folder) -> Figure {
    let (stem, title) = ("verification_cost", "Verification cost: forward time vs block size");
    if f.calibration.is_empty() {
        return skip(stem, title, "no calibration (neither the calibration table nor calibration.json is there)");
    }
    let mut curves: BTreeMap<(String, Option<i64>), Points> = BTreeMap::new();
    for r in &f.calibration {
        curves.entry((r.role.clone(), r.context.map(|c| c as i64))).or_default().push((r.tokens, r.forward_ms));
    }
    let roles: BTreeSet<&String> = curves.keys().map(|(r, _)| r).collect();
    let one_context_each = roles.len() == curves.len();
    let series = curves
        .into_iter()
        .take(MAX_SERIES)
        .map(|((role, ctx), mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let name = match ctx {
                Some(c) if !one_context_each => format!("{role} (context {c})"),
                Some(c) => format!("{role}, context {c}"),
                None => role,
            };
            XySeries { name, points, line: true, style: PointStyle::Dot, labels: vec![] }
        })
        .collect();
    Ok(Chart {
        stem: stem.into(),
        title: title.into(),
        caption: "Median time of one forward over N block tokens on a cache of the given context, per model role, on this run's machine: what verifying a draft or tree of N tokens costs."
            .into(),
        kind: ChartKind::Xy(Xy {
            x_label: "block tokens per forward".into(),
            y_label: "forward time (ms)".into(),
            series,
            diagonal: false,
            x_from_zero: true,
            y_from_zero: true,
            x_integer: false,
        }),
    })
}

pub fn time_share(f: &Folder) -> Figure {
    let (stem, title) = ("time_share", "Decode time share: draft / verify / accept, per strategy");
    let mut sums: BTreeMap<&str, [f64; 4]> = BTreeMap::new();
    for t in &f.turns {
        let (d, v, u) = (t.draft_s.unwrap_or(0.0), t.verify_s.unwrap_or(0.0), t.update_s.unwrap_or(0.0));
        let parts = d + v + u;
        let other = t.decode_s.map_or(0.0, |dec| (dec - parts).max(0.0));
        let e = sums.entry(&t.strategy).or_default();
        for (slot, x) in e.iter_mut().zip([d, v, u, other]) {
            *slot += x;
        }
    }
    sums.retain(|_, s| s.iter().sum::<f64>() > 0.0);
    if sums.is_empty() {
        return skip(stem, title, "the turns table is missing or has no draft/verify/update times");
    }
    let rows: Vec<String> = sums.keys().map(|s| s.to_string()).collect();
    let values = sums
        .values()
        .map(|s| {
            let total: f64 = s.iter().sum();
            s.iter().map(|x| 100.0 * x / total).collect()
        })
        .collect();
    Ok(Chart {
        stem: stem.into(),
        title: title.into(),
        caption: "Share of each strategy's decode time (all its configurations and turns summed) spent drafting, verifying (target forwards), accepting (cache and state update), and elsewhere (decode time not in those three).".into(),
        kind: ChartKind::Stacked(Stacked {
            rows,
            parts: vec!["draft".into(), "verify".into(), "accept (update)".into(), "other".into()],
            values,
            value_label: "share of decode time (%)".into(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto() {
        // (quality, speedup): NLL lower is better.
        let pts = [(1.0, 2.0), (1.1, 2.5), (1.2, 2.4), (0.9, 1.5), (1.0, 1.8)];
        assert_eq!(pareto_front(&pts, true), vec![(0.9, 1.5), (1.0, 2.0), (1.1, 2.5)]);
        let pts = [(1.0, 1.5), (0.9, 2.0), (0.8, 1.9)];
        assert_eq!(pareto_front(&pts, false), vec![(0.9, 2.0), (1.0, 1.5)]);
    }
}

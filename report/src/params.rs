//! Reading a configuration label (`accept=greedy,gamma=4,p_min=none,schedule=constant`) back
//! into its parameters: for short chart labels, for picking sweeps, and for Medusa tree sizes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// `name=value` pairs of a config label, in label order. A part without `=` is kept as a name
/// with an empty value, so no label is ever dropped.
pub fn parse_config(config: &str) -> BTreeMap<String, String> {
    config
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// Parameter names as charts print them: the Greek letters the literature uses.
fn short_name(name: &str) -> &str {
    match name {
        "gamma" => "γ",
        "alpha" => "α",
        "epsilon" => "ε",
        "temperature" => "T",
        "schedule" => "sched",
        "tree_nodes" | "max_tree_nodes" => "nodes",
        "num_draft" => "draft",
        "max_ngram" => "ngram",
        "min_ngram" => "min-ngram",
        "cost_aware" => "cost-aware",
        "num_beams" => "beams",
        "length_penalty" => "len-penalty",
        other => other,
    }
}

/// For each config label, the `name=value` pairs (short names) of the parameters that differ
/// between the labels given, joined by spaces: what tells these configurations apart.
pub fn varying_params(configs: &[&str]) -> Vec<String> {
    let parsed: Vec<BTreeMap<String, String>> = configs.iter().map(|c| parse_config(c)).collect();
    let keys: BTreeSet<&String> = parsed.iter().flat_map(|c| c.keys()).collect();
    let varying: BTreeSet<&String> =
        keys.into_iter().filter(|k| parsed.iter().map(|c| c.get(*k)).collect::<BTreeSet<_>>().len() > 1).collect();
    parsed
        .iter()
        .map(|c| {
            c.iter()
                .filter(|(k, _)| varying.contains(k))
                .map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{}={v}", short_name(k)) })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Short, still unique, labels for chart axes: the strategy and its acceptance rule (the
/// family: `speculative greedy`, `medusa typical`), then only the parameters that differ
/// within that family (a lone configuration is just its family). Falls back to the full id
/// when two configurations would print alike.
pub fn short_labels<'a>(ids: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> HashMap<String, String> {
    let items: Vec<(&str, &str, &str)> = ids.into_iter().collect();
    let mut families: BTreeMap<String, Vec<(&str, &str)>> = BTreeMap::new();
    for (id, strategy, config) in &items {
        let family = match parse_config(config).get("accept") {
            Some(a) => format!("{strategy} {a}"),
            None => strategy.to_string(),
        };
        families.entry(family).or_default().push((id, config));
    }
    let mut labels: HashMap<String, String> = HashMap::new();
    for (family, members) in &families {
        let configs: Vec<&str> = members.iter().map(|m| m.1).collect();
        for ((id, _), parts) in members.iter().zip(varying_params(&configs)) {
            let label = if parts.is_empty() { family.clone() } else { format!("{family} {parts}") };
            labels.insert(id.to_string(), label);
        }
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in labels.values() {
        *seen.entry(l.clone()).or_default() += 1;
    }
    for (id, l) in labels.iter_mut() {
        if seen[l.as_str()] > 1 {
            *l = id.clone();
        }
    }
    labels
}

/// A Medusa tree's family (the curve it belongs to) and its size in nodes (root excluded).
///
/// The size is, in order: the `tree_nodes=N` or `nodes=N` parameter; for `chain:D`, D; for
/// `dense:KxD`, K + K² + … + K^D; a trailing `_N` of the tree name (the shipped trees are named
/// by size, e.g. `mc_sim_7b_63`); the shipped trees without one (all nine have 63 nodes, as
/// `strategies/trees/medusa_trees.json` holds them). The family is the name without the size:
/// `mc_sim_7b`, `chain`, `dense 2-wide`, or the file stem.
pub fn tree_info(config: &str) -> Option<(String, usize)> {
    let params = parse_config(config);
    let tree = params.get("tree")?.as_str();
    let explicit = params.get("tree_nodes").or_else(|| params.get("nodes")).and_then(|n| n.parse::<usize>().ok());
    let (family, implied) = if let Some(d) = tree.strip_prefix("chain:") {
        ("chain".to_string(), d.parse::<usize>().ok())
    } else if let Some(kd) = tree.strip_prefix("dense:") {
        let parsed = kd.split_once('x').and_then(|(k, d)| Some((k.parse::<usize>().ok()?, d.parse::<u32>().ok()?)));
        match parsed {
            Some((k, d)) => (format!("dense {k}-wide"), Some((1..=d).map(|i| k.saturating_pow(i)).sum())),
            None => (tree.to_string(), None),
        }
    } else {
        let stem = std::path::Path::new(tree).file_stem().and_then(|s| s.to_str()).unwrap_or(tree);
        let stem = stem.strip_suffix(".json").unwrap_or(stem);
        match stem.rsplit_once('_') {
            Some((fam, n)) if !fam.is_empty() && n.parse::<usize>().is_ok() => (fam.to_string(), n.parse().ok()),
            _ if SHIPPED_63.contains(&stem) => (stem.to_string(), Some(63)),
            _ => (stem.to_string(), None),
        }
    };
    Some((family, explicit.or(implied)?))
}

/// The shipped trees whose names carry no size; each has 63 nodes.
const SHIPPED_63: [&str; 8] = [
    "vicuna_7b_stage2",
    "vicuna_7b_stage1_ablation",
    "vicuna_7b_stage1",
    "vicuna_13b_stage2",
    "vicuna_13b_stage1",
    "vicuna_33b_stage2",
    "vicuna_33b_stage1",
    "zephyr_stage2",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_sizes() {
        assert_eq!(tree_info("accept=greedy,tree=mc_sim_7b_63"), Some(("mc_sim_7b".into(), 63)));
        assert_eq!(tree_info("accept=greedy,tree=mc_sim_7b_63,tree_nodes=31"), Some(("mc_sim_7b".into(), 31)));
        assert_eq!(tree_info("tree=chain:4"), Some(("chain".into(), 4)));
        assert_eq!(tree_info("tree=dense:2x3"), Some(("dense 2-wide".into(), 14)));
        assert_eq!(tree_info("tree=zephyr_stage2"), Some(("zephyr_stage2".into(), 63)));
        assert_eq!(tree_info("tree=vicuna_7b_stage1"), Some(("vicuna_7b_stage1".into(), 63)));
        assert_eq!(tree_info("tree=/x/my_tree_20.json"), Some(("my_tree".into(), 20)));
        assert_eq!(tree_info("tree=/x/custom.json"), None);
        assert_eq!(tree_info("gamma=4"), None);
    }

    #[test]
    fn labels_keep_what_varies() {
        let l = short_labels([
            ("greedy", "greedy", ""),
            ("speculative[accept=greedy,gamma=4]", "speculative", "accept=greedy,gamma=4"),
            ("speculative[accept=greedy,gamma=8]", "speculative", "accept=greedy,gamma=8"),
            ("medusa[tree=chain:4]", "medusa", "tree=chain:4"),
        ]);
        assert_eq!(l["greedy"], "greedy");
        assert_eq!(l["speculative[accept=greedy,gamma=4]"], "speculative greedy γ=4");
        assert_eq!(l["medusa[tree=chain:4]"], "medusa");
        assert_eq!(varying_params(&["a=1,b=2", "a=1,b=3,c=x"]), vec!["b=2", "b=3 c=x"]);
    }
}

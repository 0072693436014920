//! Candidate trees (Medusa "choices"): which top-k candidates of which heads are put to the
//! target in one tree forward.
//!
//! A tree is a list of paths in the Medusa format: the path `[i0, i1, .., i(d-1)]` is the node at
//! depth d whose token is head 0's top-i0 candidate at depth 1, head 1's top-i1 candidate at
//! depth 2, and so on (a node's ancestors are the prefixes of its path). The tree forward's
//! block is `[root, node 0, node 1, ..]`: the root is the last accepted token (not yet in the KV
//! cache) and the nodes follow in Medusa's order, by depth then lexicographically. In that order
//! every parent comes before its children, and every prefix of the order is itself a tree, which
//! is how a step that does not fit the context (or the token budget) shrinks its tree.

use std::collections::HashSet;
use std::path::Path;

/// The nine 63-node trees of the Medusa repository, as JSON (see `strategies/trees/README.md`).
const SHIPPED_JSON: &str = include_str!("../../trees/medusa_trees.json");

/// Names of the shipped trees, in the order of the Medusa repository's `medusa_choices.py`.
pub const SHIPPED_TREES: [&str; 9] = [
    "mc_sim_7b_63",
    "vicuna_7b_stage2",
    "vicuna_7b_stage1_ablation",
    "vicuna_7b_stage1",
    "vicuna_13b_stage2",
    "vicuna_13b_stage1",
    "vicuna_33b_stage2",
    "vicuna_33b_stage1",
    "zephyr_stage2",
];

/// How many top candidates a tree may take from one head by default (the Medusa repository's
/// `TOPK = 10`).
pub const DEFAULT_MAX_TOP_K: usize = 10;

/// Largest tree accepted (nodes, root excluded): a guard against `dense:10x5`-like specs.
pub const MAX_TREE_NODES: usize = 4096;

/// A validated candidate tree with everything a step needs precomputed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeTopology {
    /// Where the tree came from: a shipped name, `chain:D`, `dense:KxD` or a file path.
    name: String,
    /// Node paths in block order (block index i + 1 holds node i).
    paths: Vec<Vec<usize>>,
    /// Parent (block index) of every block row; the root (row 0) has none.
    parents: Vec<Option<usize>>,
    /// Depth of every block row (root 0).
    depths: Vec<usize>,
    /// Children (block indices, increasing) of every block row.
    children: Vec<Vec<usize>>,
    /// Candidates taken from each head: largest top-k index in the tree + 1.
    top_k: usize,
}

impl TreeTopology {
    /// Parses a tree spec: a shipped name ([`SHIPPED_TREES`]), `chain:D` (the top-1 chain of
    /// depth D), `dense:KxD` (every top-K candidate at every depth up to D: K + K² + .. + K^D
    /// nodes) or the path of a JSON file holding a list of paths (`[[0], [0, 0], [1], ...]`).
    ///
    /// The tree is checked against `num_heads` (a path may be at most that deep) and `max_top_k`
    /// (the most candidates taken from one head: every index must be below it); errors name the
    /// offending path and the tree (file) they come from.
    pub fn parse(spec: &str, num_heads: usize, max_top_k: usize) -> Result<Self, String> {
        let spec = spec.trim();
        if let Some(d) = spec.strip_prefix("chain:") {
            let depth = parse_count(d).ok_or_else(|| format!("tree `{spec}`: expected chain:D with D a positive integer"))?;
            return Self::chain(depth, num_heads, max_top_k);
        }
        if let Some(kd) = spec.strip_prefix("dense:") {
            let parsed = kd.split_once(['x', 'X']).and_then(|(k, d)| Some((parse_count(k)?, parse_count(d)?)));
            let (k, depth) = parsed.ok_or_else(|| format!("tree `{spec}`: expected dense:KxD with K and D positive integers"))?;
            return Self::dense(k, depth, num_heads, max_top_k);
        }
        if SHIPPED_TREES.contains(&spec) {
            return Self::shipped(spec, num_heads, max_top_k);
        }
        let path = Path::new(spec);
        if path.is_file() {
            return Self::from_file(path, num_heads, max_top_k);
        }
        Err(format!(
            "unknown tree `{spec}`: not a shipped tree ({}), chain:D, dense:KxD, or an existing JSON file",
            SHIPPED_TREES.join(", ")
        ))
    }

    /// One of the shipped Medusa trees ([`SHIPPED_TREES`]).
    pub fn shipped(name: &str, num_heads: usize, max_top_k: usize) -> Result<Self, String> {
        let all: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(SHIPPED_JSON).map_err(|e| format!("embedded medusa_trees.json: {e}"))?;
        let value = all
            .get(name)
            .filter(|_| SHIPPED_TREES.contains(&name))
            .ok_or_else(|| format!("unknown shipped tree `{name}` (shipped: {})", SHIPPED_TREES.join(", ")))?;
        let paths: Vec<Vec<usize>> =
            serde_json::from_value(value.clone()).map_err(|e| format!("embedded medusa_trees.json, tree {name}: {e}"))?;
        Self::from_paths(name, paths, num_heads, max_top_k)
    }

    /// A tree from a JSON file holding a list of paths.
    pub fn from_file(path: &Path, num_heads: usize, max_top_k: usize) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("tree file {}: cannot read it: {e}", path.display()))?;
        let paths: Vec<Vec<usize>> = serde_json::from_str(&text).map_err(|e| {
            format!("tree file {}: not a JSON list of paths (lists of non-negative integers, e.g. [[0], [0, 0], [1]]): {e}", path.display())
        })?;
        Self::from_paths(&path.display().to_string(), paths, num_heads, max_top_k)
    }

    /// The top-1 chain of depth `depth`: `[0], [0, 0], ..`.
    pub fn chain(depth: usize, num_heads: usize, max_top_k: usize) -> Result<Self, String> {
        let paths = (1..=depth).map(|d| vec![0; d]).collect();
        Self::from_paths(&format!("chain:{depth}"), paths, num_heads, max_top_k)
    }

    /// Every top-`k` candidate at every depth up to `depth`.
    pub fn dense(k: usize, depth: usize, num_heads: usize, max_top_k: usize) -> Result<Self, String> {
        let name = format!("dense:{k}x{depth}");
        if k > max_top_k {
            return Err(format!("tree {name}: takes the top-{k} candidates of each head, beyond the maximum top-{max_top_k}"));
        }
        if depth > num_heads {
            return Err(format!("tree {name}: depth {depth} needs {depth} Medusa heads, but there are only {num_heads}"));
        }
        let mut nodes = 0usize;
        let mut level = 1usize;
        for _ in 0..depth {
            level = level.saturating_mul(k);
            nodes = nodes.saturating_add(level);
        }
        if nodes > MAX_TREE_NODES {
            return Err(format!("tree {name}: {nodes} nodes, more than the {MAX_TREE_NODES} a tree may have"));
        }
        let mut paths: Vec<Vec<usize>> = Vec::with_capacity(nodes);
        let mut frontier: Vec<Vec<usize>> = vec![Vec::new()];
        for _ in 0..depth {
            let next: Vec<Vec<usize>> = frontier.iter().flat_map(|p| (0..k).map(move |i| [p.as_slice(), &[i]].concat())).collect();
            paths.extend(next.iter().cloned());
            frontier = next;
        }
        Self::from_paths(&name, paths, num_heads, max_top_k)
    }

    /// Validates a list of paths (any order) and builds the tree. `name` appears in errors.
    pub fn from_paths(name: &str, paths: Vec<Vec<usize>>, num_heads: usize, max_top_k: usize) -> Result<Self, String> {
        if paths.is_empty() {
            return Err(format!("tree {name}: has no paths (a tree needs at least one node)"));
        }
        if paths.len() > MAX_TREE_NODES {
            return Err(format!("tree {name}: {} nodes, more than the {MAX_TREE_NODES} a tree may have", paths.len()));
        }
        let mut seen: HashSet<&[usize]> = HashSet::with_capacity(paths.len());
        for p in &paths {
            if p.is_empty() {
                return Err(format!("tree {name}: path [] is empty (the root is implicit; every path needs at least one index)"));
            }
            if p.len() > num_heads {
                return Err(format!(
                    "tree {name}: path {p:?} has depth {}, but there are only {num_heads} Medusa heads (one per depth)",
                    p.len()
                ));
            }
            if let Some(&i) = p.iter().find(|&&i| i >= max_top_k) {
                return Err(format!(
                    "tree {name}: path {p:?} uses top-k index {i}, beyond the heads' top-{max_top_k} candidates (indices 0..{})",
                    max_top_k.saturating_sub(1)
                ));
            }
            if !seen.insert(p) {
                return Err(format!("tree {name}: path {p:?} appears more than once"));
            }
        }
        for p in &paths {
            if p.len() > 1 && !seen.contains(&p[..p.len() - 1]) {
                return Err(format!("tree {name}: path {p:?} has no parent: its prefix {:?} is not in the tree", &p[..p.len() - 1]));
            }
        }

        let mut paths = paths;
        // Medusa's order: by depth, then lexicographically.
        paths.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        let index: std::collections::HashMap<&[usize], usize> = paths.iter().enumerate().map(|(i, p)| (p.as_slice(), i + 1)).collect();
        let n = paths.len() + 1;
        let mut parents = vec![None; n];
        let mut depths = vec![0; n];
        let mut children = vec![Vec::new(); n];
        for (i, p) in paths.iter().enumerate() {
            let parent = if p.len() == 1 { 0 } else { index[&p[..p.len() - 1]] };
            parents[i + 1] = Some(parent);
            depths[i + 1] = p.len();
            children[parent].push(i + 1);
        }
        let top_k = paths.iter().flatten().max().map_or(0, |m| m + 1);
        Ok(Self { name: name.to_string(), paths, parents, depths, children, top_k })
    }

    /// Where the tree came from (shipped name, generated spec or file path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Nodes, the root excluded.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Never true for a validated tree (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Deepest path length.
    pub fn depth(&self) -> usize {
        self.depths.iter().copied().max().unwrap_or(0)
    }

    /// Candidates taken from each head (largest top-k index + 1).
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Node paths in block order (node i is block row i + 1).
    pub fn paths(&self) -> &[Vec<usize>] {
        &self.paths
    }

    /// Parent of every block row (row 0, the root, has none): the `BlockAttention::Tree` parents.
    pub fn block_parents(&self) -> &[Option<usize>] {
        &self.parents
    }

    /// Depth of every block row (root 0).
    pub fn block_depths(&self) -> &[usize] {
        &self.depths
    }

    /// Children (block rows, increasing) of block row `row`.
    pub fn children(&self, row: usize) -> &[usize] {
        &self.children[row]
    }

    /// `(depth, top-k index)` of block row `row` ≥ 1: its token is head (depth − 1)'s candidate
    /// number `index`.
    pub fn choice(&self, row: usize) -> (usize, usize) {
        let p = &self.paths[row - 1];
        (p.len(), p[p.len() - 1])
    }

    /// Number of nodes of the largest prefix of the tree (in block order, so itself a tree) with
    /// at most `max_nodes` nodes and no node deeper than `max_depth`.
    pub fn prefix_len(&self, max_nodes: usize, max_depth: usize) -> usize {
        let within_depth = self.paths.partition_point(|p| p.len() <= max_depth);
        within_depth.min(max_nodes)
    }
}

fn parse_count(s: &str) -> Option<usize> {
    s.trim().parse::<usize>().ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_trees_are_the_nine_63_node_medusa_trees() {
        let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(SHIPPED_JSON).unwrap();
        let mut keys: Vec<&str> = all.keys().map(String::as_str).collect();
        let mut names = SHIPPED_TREES.to_vec();
        keys.sort_unstable();
        names.sort_unstable();
        assert_eq!(keys, names);
        for name in SHIPPED_TREES {
            let t = TreeTopology::parse(name, 5, DEFAULT_MAX_TOP_K).unwrap();
            assert_eq!(t.len(), 63, "{name}");
            assert_eq!(t.top_k(), 10, "{name}");
            assert!(t.depth() <= 4, "{name}");
            assert_eq!(t.block_parents().len(), 64);
            assert_eq!(t.block_parents()[0], None);
        }
        // Spot checks against medusa_choices.py: mc_sim_7b_63's first and last paths (file
        // order) and its deepest nodes.
        let t = TreeTopology::parse("mc_sim_7b_63", 4, 10).unwrap();
        assert_eq!(t.depth(), 4);
        assert_eq!(t.paths()[0], vec![0]);
        assert!(t.paths().contains(&vec![0, 7, 0]));
        assert_eq!(t.paths().last().unwrap(), &vec![0, 0, 0, 1]);
        assert_eq!(TreeTopology::parse("vicuna_33b_stage1", 3, 10).unwrap().depth(), 3);
    }

    #[test]
    fn order_parents_depths_and_choices() {
        let paths = vec![vec![1], vec![0, 1], vec![0], vec![0, 0], vec![1, 0], vec![0, 0, 2]];
        let t = TreeTopology::from_paths("t", paths, 3, 10).unwrap();
        assert_eq!(t.paths(), &[vec![0], vec![1], vec![0, 0], vec![0, 1], vec![1, 0], vec![0, 0, 2]]);
        assert_eq!(t.block_parents(), &[None, Some(0), Some(0), Some(1), Some(1), Some(2), Some(3)]);
        assert_eq!(t.block_depths(), &[0, 1, 1, 2, 2, 2, 3]);
        assert_eq!(t.children(0), &[1, 2]);
        assert_eq!(t.children(1), &[3, 4]);
        assert_eq!(t.choice(6), (3, 2));
        assert_eq!(t.choice(5), (2, 0));
        assert_eq!(t.top_k(), 3);
        assert_eq!(t.depth(), 3);
        assert_eq!(t.prefix_len(100, 2), 5);
        assert_eq!(t.prefix_len(3, 5), 3);
        assert_eq!(t.prefix_len(100, 0), 0);
    }

    #[test]
    fn generated_trees() {
        let c = TreeTopology::parse("chain:4", 5, 10).unwrap();
        assert_eq!(c.paths(), &[vec![0], vec![0, 0], vec![0, 0, 0], vec![0, 0, 0, 0]]);
        assert_eq!(c.block_parents(), &[None, Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(c.top_k(), 1);
        let d = TreeTopology::parse("dense:2x3", 5, 10).unwrap();
        assert_eq!(d.len(), 2 + 4 + 8);
        assert_eq!(d.top_k(), 2);
        assert_eq!(d.depth(), 3);
        assert!(d.paths().contains(&vec![1, 0, 1]));
        assert!(TreeTopology::parse("dense:3x2", 5, 2).unwrap_err().contains("top-3"));
        assert!(TreeTopology::parse("chain:6", 5, 10).unwrap_err().contains("only 5 Medusa heads"));
        assert!(TreeTopology::parse("chain:0", 5, 10).unwrap_err().contains("chain:D"));
        assert!(TreeTopology::parse("dense:2by3", 5, 10).unwrap_err().contains("dense:KxD"));
        assert!(TreeTopology::parse("dense:10x5", 5, 10).unwrap_err().contains("111110 nodes"));
        let e = TreeTopology::parse("no_such_tree", 5, 10).unwrap_err();
        assert!(e.contains("no_such_tree") && e.contains("mc_sim_7b_63"), "{e}");
    }

    #[test]
    fn malformed_trees_name_the_path() {
        let t = |paths: Vec<Vec<usize>>| TreeTopology::from_paths("mytree", paths, 3, 10).unwrap_err();
        let e = t(vec![vec![0], vec![1, 0]]);
        assert!(e.contains("mytree") && e.contains("path [1, 0]") && e.contains("prefix [1]"), "{e}");
        let e = t(vec![vec![0], vec![0, 0], vec![0, 0, 0], vec![0, 0, 0, 0]]);
        assert!(e.contains("path [0, 0, 0, 0]") && e.contains("depth 4") && e.contains("only 3"), "{e}");
        let e = t(vec![vec![0], vec![10]]);
        assert!(e.contains("path [10]") && e.contains("index 10") && e.contains("top-10"), "{e}");
        let e = t(vec![vec![0], vec![0, 1], vec![0, 1]]);
        assert!(e.contains("path [0, 1]") && e.contains("more than once"), "{e}");
        let e = t(vec![vec![0], vec![]]);
        assert!(e.contains("path []") && e.contains("empty"), "{e}");
        let e = t(vec![]);
        assert!(e.contains("mytree") && e.contains("no paths"), "{e}");
        // The cap on top-k is configurable.
        let e = TreeTopology::from_paths("capped", vec![vec![0], vec![4]], 3, 4).unwrap_err();
        assert!(e.contains("path [4]") && e.contains("top-4"), "{e}");
    }

    #[test]
    fn tree_files_and_their_errors() {
        let dir = std::env::temp_dir().join(format!("medusa-tree-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, "[[0], [0, 0], [1], [0, 1]]").unwrap();
        let t = TreeTopology::parse(good.to_str().unwrap(), 2, 10).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t.name(), good.display().to_string());

        let bad_json = dir.join("bad.json");
        std::fs::write(&bad_json, "[[0], [0, 0").unwrap();
        let e = TreeTopology::parse(bad_json.to_str().unwrap(), 2, 10).unwrap_err();
        assert!(e.contains(&bad_json.display().to_string()) && e.contains("not a JSON list of paths"), "{e}");

        let not_paths = dir.join("strings.json");
        std::fs::write(&not_paths, r#"[["a"]]"#).unwrap();
        let e = TreeTopology::parse(not_paths.to_str().unwrap(), 2, 10).unwrap_err();
        assert!(e.contains(&not_paths.display().to_string()), "{e}");

        let orphan = dir.join("orphan.json");
        std::fs::write(&orphan, "[[0], [1, 1]]").unwrap();
        let e = TreeTopology::parse(orphan.to_str().unwrap(), 2, 10).unwrap_err();
        assert!(e.contains(&orphan.display().to_string()) && e.contains("path [1, 1]"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

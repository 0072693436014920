//! `decodebench tune-tree`: the candidate tree that pays off on this machine.
//!
//! The Medusa paper builds its trees greedily on expected accepted tokens: a node with path of
//! ranks (r_0, .., r_d) is on the accepted path when head h's target is its rank-r_h guess for
//! every h ≤ d, so a tree of nodes N accepts 1 + Σ_{n∈N} p(n) tokens per step, bonus included.
//! The paper takes the heads as independent, p(n) = Π_h q_h(r_h) with q_h(r) the share of
//! positions where head h's target is its rank-r guess ([`independent_nodes`]). The heads are
//! far from independent (when head 0 misses, head 1 mostly misses too), so here p(n) is
//! measured: the share of calibration positions where the heads' ranks start with n's path
//! ([`measured_nodes`]). Either way a child is never likelier than its parent, so the nodes in
//! order of p make a tree at every size, the one with the largest Σ p.
//!
//! Here the size is chosen by time: a step over n nodes costs c(n + 1), the measured forward over
//! n + 1 block tokens, plus the heads' own time, against c(1) per token for greedy decoding, so
//!
//! ```text
//! predicted speedup(n) = (1 + Σ p) · c(1) / (c(n + 1) + heads ms)
//! ```
//!
//! (the runner's cost model, `decodebench_tables::cost`), and the tree kept is the prefix of that
//! order with the highest predicted speedup. [`replay`] runs a given tree over the same ranks
//! step by step, as greedy Medusa decoding walks an answer, for its tokens per step; `tune-tree`
//! takes that, rather than 1 + Σ p, as each size's accepted tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};

use decodebench_tables::cost::forward_ms;
use decodebench_tables::records::CostCurve;
use serde::Serialize;

/// A tree and what it is expected to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TunedTree {
    /// Node paths in Medusa's order (by depth, then lexicographically).
    pub paths: Vec<Vec<usize>>,
    /// Mean accepted tokens per step, bonus included.
    pub expected_accepted: f64,
    pub predicted_speedup: f64,
    /// Every size tried: (nodes, expected accepted, predicted speedup).
    pub by_size: Vec<(usize, f64, f64)>,
}

struct Candidate {
    p: f64,
    path: Vec<usize>,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    // Highest probability first; ties to the shorter, then lexicographically smaller path, so
    // the result does not depend on the heap's order.
    fn cmp(&self, other: &Self) -> Ordering {
        self.p.total_cmp(&other.p).then_with(|| other.path.len().cmp(&self.path.len())).then_with(|| other.path.cmp(&self.path))
    }
}

/// Rank probabilities from cumulative top-k accuracies: `q[h][r] = topk[h][r] - topk[h][r-1]`.
pub fn rank_probabilities(topk: &[Vec<f64>]) -> Vec<Vec<f64>> {
    topk.iter().map(|row| row.iter().enumerate().map(|(r, &t)| (t - if r == 0 { 0.0 } else { row[r - 1] }).max(0.0)).collect()).collect()
}

/// Nodes in Medusa's greedy order under independent heads, from rank probabilities `q`
/// (`q[h][r]`, one row per head): at most `max_nodes`, each with its probability, none at 0.
pub fn independent_nodes(q: &[Vec<f64>], max_nodes: usize) -> Vec<(Vec<usize>, f64)> {
    let mut heap = BinaryHeap::new();
    if let Some(row) = q.first() {
        heap.extend(row.iter().enumerate().map(|(r, &p)| Candidate { p, path: vec![r] }));
    }
    let mut order = Vec::new();
    while order.len() < max_nodes {
        let Some(best) = heap.pop() else { break };
        if best.p <= 0.0 {
            break;
        }
        let depth = best.path.len();
        if depth < q.len() {
            for (r, &p) in q[depth].iter().enumerate() {
                let mut path = best.path.clone();
                path.push(r);
                heap.push(Candidate { p: best.p * p, path });
            }
        }
        order.push((best.path, best.p));
    }
    order
}

/// Every node some position accepts, with the share of positions that accept it, most likely
/// first (ties: the shorter, then lexicographically smaller path, so a node's parent always
/// comes first). `rank_paths[answer][position]` is the path of ranks the heads' targets have
/// there ([`super::HeadAccuracy::rank_paths`]).
pub fn measured_nodes(rank_paths: &[Vec<Vec<u8>>]) -> Vec<(Vec<usize>, f64)> {
    let mut counts: HashMap<Vec<usize>, usize> = HashMap::new();
    let mut positions = 0usize;
    for path in rank_paths.iter().flatten() {
        positions += 1;
        for d in 1..=path.len() {
            *counts.entry(path[..d].iter().map(|&r| r as usize).collect()).or_default() += 1;
        }
    }
    let mut nodes: Vec<(Vec<usize>, usize)> = counts.into_iter().collect();
    nodes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.len().cmp(&b.0.len())).then_with(|| a.0.cmp(&b.0)));
    nodes.into_iter().map(|(path, n)| (path, n as f64 / positions as f64)).collect()
}

/// The tree of at most `max_nodes` nodes with the highest predicted speedup, from nodes in order
/// of their probability of being accepted ([`independent_nodes`] or [`measured_nodes`]) and the
/// target's cost curve. With `rank_paths` (the ranks the probabilities were measured from), a
/// size's accepted tokens per step are its tree's [`replay`] over them rather than 1 + Σ p: steps
/// start only where the previous one ended, not at every position, and the replay is what
/// decoding does (on the held-out answers, 1 + Σ p overstates a 3-node tree's 1.58 by 7%).
pub fn tune(
    nodes: &[(Vec<usize>, f64)],
    rank_paths: Option<&[Vec<Vec<u8>>]>,
    curve: &CostCurve,
    heads_ms: f64,
    max_nodes: usize,
) -> Option<TunedTree> {
    let c1 = forward_ms(curve, 1.0)?;
    let mut by_size = vec![(0, 1.0, c1 / (c1 + heads_ms))];
    let order: Vec<&Vec<usize>> = nodes.iter().take_while(|(_, p)| *p > 0.0).take(max_nodes).map(|(path, _)| path).collect();
    // Accepted tokens per step of the tree made of the first `size` nodes.
    let accepted_with = |size: usize| match rank_paths {
        Some(ranks) => replay(ranks, &order[..size].iter().map(|p| p.to_vec()).collect::<Vec<_>>()).mean_accepted(),
        None => 1.0 + nodes[..size].iter().map(|(_, p)| p).sum::<f64>(),
    };
    for n in 0..order.len() {
        let accepted = accepted_with(n + 1);
        by_size.push((n + 1, accepted, accepted * c1 / (forward_ms(curve, (n + 2) as f64)? + heads_ms)));
    }
    // The best tree with at least one node (size 0, plain decoding with the heads' cost, is
    // kept in `by_size` for reference: when it wins, no tree pays off here, and the caller says so).
    let &(n, accepted, speedup) = by_size.iter().skip(1).max_by(|a, b| a.2.total_cmp(&b.2)).or(by_size.first())?;
    let mut paths: Vec<Vec<usize>> = order[..n].iter().map(|p| p.to_vec()).collect();
    paths.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    Some(TunedTree { paths, expected_accepted: accepted, predicted_speedup: speedup, by_size })
}

/// What greedy Medusa decoding with a tree does on the answers the ranks were measured on,
/// replayed without running the tree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Replay {
    pub steps: usize,
    /// Tokens the steps emit, bonus included (the prompt forward's first token is not a step's).
    pub tokens: usize,
}

impl Replay {
    /// Tokens per target forward, as [`Generation::mean_accepted_tokens`](decodebench_strategies::Generation::mean_accepted_tokens) counts them.
    pub fn mean_accepted(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.tokens as f64 / self.steps as f64
        }
    }
}

/// Walks every answer as greedy Medusa decoding with the tree `paths` would: after the prompt
/// forward has emitted the first token, a step at answer position r accepts the longest prefix
/// of r's rank path that is a node of the tree, emits it and the bonus token, and the next step
/// starts after them. Greedy acceptance emits the model's own greedy answer, so the positions a
/// step starts at are those of the answer whose ranks were measured: the replay is exact up to
/// the hidden states' rounding (teacher-forced here, from the tree forward in a real run).
pub fn replay(rank_paths: &[Vec<Vec<u8>>], paths: &[Vec<usize>]) -> Replay {
    let tree: HashSet<Vec<u8>> = paths.iter().map(|p| p.iter().map(|&r| r.min(u8::MAX as usize) as u8).collect()).collect();
    let mut out = Replay { steps: 0, tokens: 0 };
    for answer in rank_paths {
        // Row r is the state that chose answer token r (0-based); its heads guess tokens r + 1
        // onwards. After `emitted` tokens the root is token emitted - 1, chosen by that row.
        let n = answer.len();
        let mut emitted = 1;
        while emitted < n {
            let ranks = &answer[emitted - 1];
            let mut depth = 0;
            while depth < ranks.len() && tree.contains(&ranks[..=depth]) {
                depth += 1;
            }
            // Near the end of the budget the strategy proposes only what can still be emitted.
            let accepted = (1 + depth).min(n - emitted);
            out.steps += 1;
            out.tokens += accepted;
            emitted += accepted;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(points: &[(usize, f64)]) -> CostCurve {
        CostCurve { context: 256, forward_ms: points.iter().copied().collect(), bandwidth_gbs: None }
    }

    #[test]
    fn greedy_expansion_follows_the_node_probabilities() {
        // Head 0 right at rank 0 with 0.6, rank 1 with 0.2; head 1: 0.5 and 0.1.
        let q = vec![vec![0.6, 0.2], vec![0.5, 0.1]];
        // Free forwards: the whole tree pays off.
        let t = tune(&independent_nodes(&q, 10), None, &curve(&[(1, 10.0), (64, 10.0)]), 0.0, 10).unwrap();
        // Order by p: [0] .6, [0,0] .3, [1] .2, [0,1] .06, [1,0] .1 → [1,0] before [0,1].
        assert_eq!(t.by_size.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(t.paths, vec![vec![0], vec![1], vec![0, 0], vec![0, 1], vec![1, 0], vec![1, 1]]);
        let expected = 1.0 + 0.6 + 0.2 + 0.3 + 0.06 + 0.1 + 0.02;
        assert!((t.expected_accepted - expected).abs() < 1e-12 && (t.predicted_speedup - expected).abs() < 1e-12);
        // The third node added is [1] (p .2), after [0] and [0, 0].
        assert!((t.by_size[3].1 - 2.1).abs() < 1e-12);
    }

    #[test]
    fn cost_picks_the_size() {
        let q = vec![vec![0.6, 0.2], vec![0.5, 0.1]];
        // Each extra token costs a tenth of a forward: 1 node 1.6/1.1 = 1.455, 2 nodes 1.9/1.2 =
        // 1.583, 3 nodes 2.1/1.3 = 1.615, 4 nodes 2.2/1.4 = 1.571: three nodes win.
        let c = curve(&[(1, 10.0), (2, 11.0), (3, 12.0), (4, 13.0)]);
        let t = tune(&independent_nodes(&q, 6), None, &c, 0.0, 6).unwrap();
        assert_eq!(t.paths, vec![vec![0], vec![1], vec![0, 0]]);
        assert!((t.predicted_speedup - 21.0 / 13.0).abs() < 1e-12);
        let best = t.by_size.iter().map(|s| s.2).fold(f64::MIN, f64::max);
        assert_eq!(t.predicted_speedup, best);
        for &(n, acc, s) in &t.by_size {
            assert!((s - acc * 10.0 / (10.0 + n as f64)).abs() < 1e-9, "{n}");
        }
        // A steep curve keeps the tree small; heads' own time lowers every size alike.
        let steep = tune(&independent_nodes(&q, 6), None, &curve(&[(1, 10.0), (2, 15.0), (3, 30.0)]), 0.0, 6).unwrap();
        assert_eq!(steep.paths, vec![vec![0]]);
        let slow_heads = tune(&independent_nodes(&q, 6), None, &curve(&[(1, 10.0), (2, 15.0), (3, 30.0)]), 5.0, 6).unwrap();
        assert!(slow_heads.predicted_speedup < steep.predicted_speedup);
        // Heads that never guess right: no node has any chance, so there is no tree.
        let useless = tune(&independent_nodes(&vec![vec![0.0; 3]; 2], 6), None, &c, 0.0, 6).unwrap();
        assert!(useless.paths.is_empty() && useless.predicted_speedup == 1.0);
        // Heads too weak for the cost: the best non-empty tree, below 1.0, and size 0 above it.
        let weak = tune(&independent_nodes(&[vec![0.05, 0.01]], 2), None, &curve(&[(1, 10.0), (2, 15.0)]), 0.0, 2).unwrap();
        assert_eq!(weak.paths, vec![vec![0]]);
        assert!(weak.predicted_speedup < 1.0 && weak.by_size[0].2 == 1.0);
    }

    #[test]
    fn rank_probabilities_are_differences() {
        let q = rank_probabilities(&[vec![0.5, 0.7, 0.75]]);
        assert!((q[0][0] - 0.5).abs() < 1e-12 && (q[0][1] - 0.2).abs() < 1e-12 && (q[0][2] - 0.05).abs() < 1e-12);
    }

    #[test]
    fn measured_nodes_count_shared_prefixes() {
        // Four positions: heads right together twice, head 0 alone once, head 0 second-best once.
        let ranks = vec![vec![vec![0, 0], vec![0, 0], vec![0]], vec![vec![1, 0]]];
        let nodes = measured_nodes(&ranks);
        let want = vec![(vec![0], 0.75), (vec![0, 0], 0.5), (vec![1], 0.25), (vec![1, 0], 0.25)];
        assert_eq!(nodes, want);
        // Independence would put [0, 0] at 0.75 × 0.75 = 0.56: measured, it is what happened.
        let t = tune(&nodes, None, &curve(&[(1, 10.0), (64, 10.0)]), 0.0, 2).unwrap();
        assert_eq!(t.paths, vec![vec![0], vec![0, 0]]);
        assert!((t.expected_accepted - 2.25).abs() < 1e-12);
        // Scored by replay: the first answer's row 0 accepts [0, 0] (3 tokens, the whole
        // answer); the second answer has one token, from the prompt forward, so no step.
        let t = tune(&nodes, Some(&ranks), &curve(&[(1, 10.0), (64, 10.0)]), 0.0, 2).unwrap();
        assert_eq!(t.paths, vec![vec![0], vec![0, 0]]);
        assert_eq!(t.by_size[1].1, replay(&ranks, &[vec![0]]).mean_accepted());
        assert_eq!(t.expected_accepted, 2.0);
    }

    #[test]
    fn replay_walks_the_answer_step_by_step() {
        // Six answer tokens, one row of ranks each (the last rows have fewer heads' targets).
        let answer = vec![vec![0, 0], vec![1], vec![], vec![0, 0, 0], vec![0], vec![]];
        let chain2 = vec![vec![0], vec![0, 0]];
        // Token 1 from the prompt forward; row 0 accepts [0, 0]: 3 tokens (to 4); row 3 accepts
        // two nodes but only 2 tokens remain: 2 (to 6). Two steps, five tokens.
        assert_eq!(replay(std::slice::from_ref(&answer), &chain2), Replay { steps: 2, tokens: 5 });
        // No tree: one token per step.
        assert_eq!(replay(std::slice::from_ref(&answer), &[]), Replay { steps: 5, tokens: 5 });
        // A chain of one: row 0 → 2 tokens (to 3), row 2 → 1 (to 4), row 3 → 2 (to 6).
        assert_eq!(replay(&[answer], &[vec![0]]), Replay { steps: 3, tokens: 5 });
        // The rank-1 branch pays where a step starts on a row whose head 0 was second-best:
        // with it, row 0 → 2 tokens, row 2 → 2, row 4 → 1; without, row 0 → 1, row 1 → 1,
        // row 2 → 2, row 4 → 1.
        let second_best = vec![vec![1], vec![], vec![0], vec![], vec![], vec![]];
        assert_eq!(replay(std::slice::from_ref(&second_best), &[vec![0], vec![1]]), Replay { steps: 3, tokens: 5 });
        assert_eq!(replay(&[second_best], &[vec![0]]), Replay { steps: 4, tokens: 5 });
    }
}

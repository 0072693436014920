//! `decodebench tune-tree`: the candidate tree that pays off on this machine.
//!
//! The Medusa paper builds its trees greedily on expected accepted tokens: with q_h(r) the
//! probability that head h's target is its rank-r candidate (measured on calibration prompts),
//! a node with path (r_0, .., r_d) is on the accepted path with probability Π_h q_h(r_h)
//! (heads taken as independent), so a tree of nodes N accepts 1 + Σ_{n∈N} p(n) tokens per step,
//! bonus included. Adding the node of highest p among the children of the tree so far keeps it a
//! tree and maximises that sum at every size.
//!
//! Here the size is chosen by time: a step over n nodes costs c(n + 1), the measured forward over
//! n + 1 block tokens, plus the heads' own time, against c(1) per token for greedy decoding, so
//!
//! ```text
//! predicted speedup(n) = (1 + Σ p) · c(1) / (c(n + 1) + heads ms)
//! ```
//!
//! (the runner's cost model, `decodebench_tables::cost`), and the tree kept is the prefix of the
//! greedy order with the highest predicted speedup.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

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

/// The tree of at most `max_nodes` nodes with the highest predicted speedup, from rank
/// probabilities `q` (`q[h][r]`, one row per head) and the target's cost curve.
pub fn tune(q: &[Vec<f64>], curve: &CostCurve, heads_ms: f64, max_nodes: usize) -> Option<TunedTree> {
    let c1 = forward_ms(curve, 1.0)?;
    let mut heap = BinaryHeap::new();
    if let Some(row) = q.first() {
        heap.extend(row.iter().enumerate().map(|(r, &p)| Candidate { p, path: vec![r] }));
    }
    let mut order: Vec<Vec<usize>> = Vec::new();
    let mut sum = 0.0;
    let mut by_size = vec![(0, 1.0, c1 / (c1 + heads_ms))];
    while order.len() < max_nodes {
        let Some(best) = heap.pop() else { break };
        if best.p <= 0.0 {
            break;
        }
        sum += best.p;
        let depth = best.path.len();
        if depth < q.len() {
            for (r, &p) in q[depth].iter().enumerate() {
                let mut path = best.path.clone();
                path.push(r);
                heap.push(Candidate { p: best.p * p, path });
            }
        }
        order.push(best.path);
        let n = order.len();
        let accepted = 1.0 + sum;
        by_size.push((n, accepted, accepted * c1 / (forward_ms(curve, (n + 1) as f64)? + heads_ms)));
    }
    // The best tree with at least one node (size 0, plain decoding with the heads' cost, is
    // kept in `by_size` for reference: when it wins, no tree pays off here, and the caller says so).
    let &(n, accepted, speedup) = by_size.iter().skip(1).max_by(|a, b| a.2.total_cmp(&b.2)).or(by_size.first())?;
    let mut paths = order[..n].to_vec();
    paths.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    Some(TunedTree { paths, expected_accepted: accepted, predicted_speedup: speedup, by_size })
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
        let t = tune(&q, &curve(&[(1, 10.0), (64, 10.0)]), 0.0, 10).unwrap();
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
        let t = tune(&q, &c, 0.0, 6).unwrap();
        assert_eq!(t.paths, vec![vec![0], vec![1], vec![0, 0]]);
        assert!((t.predicted_speedup - 21.0 / 13.0).abs() < 1e-12);
        let best = t.by_size.iter().map(|s| s.2).fold(f64::MIN, f64::max);
        assert_eq!(t.predicted_speedup, best);
        for &(n, acc, s) in &t.by_size {
            assert!((s - acc * 10.0 / (10.0 + n as f64)).abs() < 1e-9, "{n}");
        }
        // A steep curve keeps the tree small; heads' own time lowers every size alike.
        let steep = tune(&q, &curve(&[(1, 10.0), (2, 15.0), (3, 30.0)]), 0.0, 6).unwrap();
        assert_eq!(steep.paths, vec![vec![0]]);
        let slow_heads = tune(&q, &curve(&[(1, 10.0), (2, 15.0), (3, 30.0)]), 5.0, 6).unwrap();
        assert!(slow_heads.predicted_speedup < steep.predicted_speedup);
        // Heads that never guess right: no node has any chance, so there is no tree.
        let useless = tune(&vec![vec![0.0; 3]; 2], &c, 0.0, 6).unwrap();
        assert!(useless.paths.is_empty() && useless.predicted_speedup == 1.0);
        // Heads too weak for the cost: the best non-empty tree, below 1.0, and size 0 above it.
        let weak = tune(&[vec![0.05, 0.01]], &curve(&[(1, 10.0), (2, 15.0)]), 0.0, 2).unwrap();
        assert_eq!(weak.paths, vec![vec![0]]);
        assert!(weak.predicted_speedup < 1.0 && weak.by_size[0].2 == 1.0);
    }

    #[test]
    fn rank_probabilities_are_differences() {
        let q = rank_probabilities(&[vec![0.5, 0.7, 0.75]]);
        assert!((q[0][0] - 0.5).abs() < 1e-12 && (q[0][1] - 0.2).abs() < 1e-12 && (q[0][2] - 0.05).abs() < 1e-12);
    }
}

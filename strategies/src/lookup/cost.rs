//! Cost-aware drafting: a draft only pays when the tokens it is expected to add per millisecond
//! beat a plain one-token step. On a CPU a forward over N tokens costs close to N single-token
//! forwards, so most drafts lose there; on a GPU the curve is nearly flat up to dozens of tokens.
//! The expected gain comes from running acceptance statistics, so the strategy learns, per match
//! length and draft position, how good its drafts are on this model and these prompts.

use std::collections::HashMap;

use super::tree::DraftTree;

/// The target's cost of one forward over N block tokens, from measured points (N, ms),
/// interpolated linearly. It must hold N = 1 (the plain step every draft is compared with);
/// beyond the last point the last segment's slope continues (never downwards; a one-point curve
/// is flat).
#[derive(Debug, Clone, PartialEq)]
pub struct CostCurve {
    points: Vec<(usize, f64)>,
}

impl CostCurve {
    /// Checks and sorts the points; errors name `--cost-curve`.
    pub fn new(mut points: Vec<(usize, f64)>) -> Result<Self, String> {
        if points.is_empty() {
            return Err("--cost-curve is empty: give at least the cost of a one-token forward (1:MS)".into());
        }
        for &(n, ms) in &points {
            if n == 0 {
                return Err("--cost-curve: block sizes must be at least 1, got 0".into());
            }
            if !(ms.is_finite() && ms > 0.0) {
                return Err(format!("--cost-curve: the cost of N = {n} must be a finite number of ms > 0, got {ms}"));
            }
        }
        points.sort_by_key(|p| p.0);
        if let Some(w) = points.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("--cost-curve gives N = {} twice", w[0].0));
        }
        if points[0].0 != 1 {
            return Err(format!("--cost-curve must include N = 1 (the cost of a plain one-token step); its smallest N is {}", points[0].0));
        }
        Ok(Self { points })
    }

    pub fn points(&self) -> &[(usize, f64)] {
        &self.points
    }

    /// Milliseconds for a forward over `n` tokens.
    pub fn cost(&self, n: usize) -> f64 {
        let p = &self.points;
        let x = n as f64;
        if let Some(i) = p.iter().position(|&(pn, _)| pn >= n) {
            if i == 0 || p[i].0 == n {
                return p[i].1;
            }
            let ((x0, y0), (x1, y1)) = ((p[i - 1].0 as f64, p[i - 1].1), (p[i].0 as f64, p[i].1));
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
        }
        let (xl, yl) = (p[p.len() - 1].0 as f64, p[p.len() - 1].1);
        if p.len() == 1 {
            return yl;
        }
        let (xp, yp) = (p[p.len() - 2].0 as f64, p[p.len() - 2].1);
        let slope = ((yl - yp) / (xl - xp)).max(0.0);
        yl + slope * (x - xl)
    }
}

/// Parses `N:MS,N:MS,...` (e.g. `1:21.5,2:22.0,4:23.1,8:26.4`), the form `--cost-curve` takes.
pub fn parse_cost_curve(spec: &str) -> Result<Vec<(usize, f64)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|point| {
            let (n, ms) = point.split_once(':').ok_or_else(|| format!("--cost-curve: expected N:MS, got `{point}`"))?;
            let n = n.trim().parse::<usize>().map_err(|_| format!("--cost-curve: `{n}` in `{point}` is not a block size"))?;
            let ms = ms.trim().parse::<f64>().map_err(|_| format!("--cost-curve: `{ms}` in `{point}` is not a number of ms"))?;
            Ok((n, ms))
        })
        .collect()
}

/// What one acceptance rate is kept for: drafts from the cache and from the text behave
/// differently, longer matches predict better, deeper positions are accepted less often, and a
/// tree's second-best alternative less often than its best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatKey {
    pub from_cache: bool,
    /// Length of the n-gram that matched.
    pub match_len: usize,
    /// Draft position / tree depth, 1-based.
    pub depth: usize,
    /// Rank among the node's siblings (always 0 in a chain).
    pub rank: usize,
}

/// Running acceptance statistics: for each [`StatKey`], how often a draft node was accepted when
/// its parent was (the root always is). Estimates are the posterior mean of a Beta prior, so
/// unseen keys start at the prior's mean and the strategy explores them.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptanceStats {
    prior_accepted: f64,
    prior_rejected: f64,
    counts: HashMap<StatKey, (u64, u64)>,
}

impl Default for AcceptanceStats {
    /// A uniform Beta(1, 1) prior: an unseen draft position is accepted half the time.
    fn default() -> Self {
        Self::with_prior(1.0, 1.0)
    }
}

impl AcceptanceStats {
    /// Beta(`accepted`, `rejected`) prior pseudo-counts (both > 0, so every rate stays in (0, 1)).
    pub fn with_prior(accepted: f64, rejected: f64) -> Self {
        assert!(accepted > 0.0 && rejected > 0.0, "Beta prior needs positive pseudo-counts");
        Self { prior_accepted: accepted, prior_rejected: rejected, counts: HashMap::new() }
    }

    /// Estimated probability that a node with this key is accepted given its parent was.
    pub fn rate(&self, key: &StatKey) -> f64 {
        let (accepted, trials) = self.counts(key);
        (accepted as f64 + self.prior_accepted) / (trials as f64 + self.prior_accepted + self.prior_rejected)
    }

    /// (accepted, trials) observed for the key.
    pub fn counts(&self, key: &StatKey) -> (u64, u64) {
        self.counts.get(key).copied().unwrap_or((0, 0))
    }

    pub fn record(&mut self, key: StatKey, accepted: bool) {
        let c = self.counts.entry(key).or_insert((0, 0));
        c.0 += accepted as u64;
        c.1 += 1;
    }

    /// Every key observed, with (accepted, trials), sorted (for reports).
    pub fn observed(&self) -> Vec<(StatKey, u64, u64)> {
        let mut out: Vec<_> = self.counts.iter().map(|(k, &(a, t))| (*k, a, t)).collect();
        out.sort_by_key(|e| e.0);
        out
    }
}

/// The part of `tree` worth verifying: nodes are ranked by their estimated probability of being
/// accepted (the product of the rates along their path, `rate(v)` for node v); a parent's is
/// never below its child's, so every prefix of that ranking is a tree, and the best subtree of s
/// nodes is the first s. Keeps the s maximising expected tokens per ms,
/// (1 + Σ reach) / cost(s + 1), and nothing (a plain step) unless that strictly beats
/// 1 / cost(1).
pub(crate) fn plan(tree: &DraftTree, rate: &dyn Fn(usize) -> f64, curve: &CostCurve) -> DraftTree {
    let n = tree.len();
    let mut reach = vec![0f64; n];
    for v in 0..n {
        let parent = tree.parents()[v].map_or(1.0, |p| reach[p]);
        reach[v] = parent * rate(v).clamp(0.0, 1.0);
    }
    let mut order: Vec<usize> = (0..n).collect();
    // Stable: equal reach keeps node order, so a parent still precedes its child.
    order.sort_by(|&a, &b| reach[b].total_cmp(&reach[a]));
    let (mut best_nodes, mut best) = (0, 1.0 / curve.cost(1));
    let mut expected = 1.0;
    for s in 1..=n {
        expected += reach[order[s - 1]];
        let per_ms = expected / curve.cost(s + 1);
        if per_ms > best {
            (best_nodes, best) = (s, per_ms);
        }
    }
    tree.select(&order[..best_nodes])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_interpolates_and_extrapolates() {
        let c = CostCurve::new(vec![(4, 16.0), (1, 10.0), (2, 12.0)]).unwrap();
        assert_eq!(c.cost(1), 10.0);
        assert_eq!(c.cost(2), 12.0);
        assert_eq!(c.cost(3), 14.0);
        assert_eq!(c.cost(8), 24.0, "the last slope (2 ms per token) continues");
        let flat = CostCurve::new(vec![(1, 5.0)]).unwrap();
        assert_eq!(flat.cost(64), 5.0);
        let noisy = CostCurve::new(vec![(1, 5.0), (2, 4.0)]).unwrap();
        assert_eq!(noisy.cost(10), 4.0, "a falling last segment is not extrapolated downwards");
    }

    #[test]
    fn bad_curves_name_the_option() {
        for bad in [vec![], vec![(2, 1.0)], vec![(1, 1.0), (1, 2.0)], vec![(0, 1.0)], vec![(1, f64::NAN)], vec![(1, -1.0)]] {
            let err = CostCurve::new(bad.clone()).unwrap_err();
            assert!(err.contains("--cost-curve"), "{bad:?}: {err}");
        }
        assert_eq!(parse_cost_curve("1:10, 2:12.5,4:15").unwrap(), vec![(1, 10.0), (2, 12.5), (4, 15.0)]);
        assert!(parse_cost_curve("1=10").unwrap_err().contains("N:MS"));
        assert!(parse_cost_curve("x:10").unwrap_err().contains("block size"));
        assert!(parse_cost_curve("1:fast").unwrap_err().contains("ms"));
    }

    #[test]
    fn stats_start_at_the_prior_and_learn() {
        let mut s = AcceptanceStats::default();
        let key = StatKey { from_cache: false, match_len: 2, depth: 1, rank: 0 };
        assert_eq!(s.rate(&key), 0.5);
        for accepted in [true, true, true, false] {
            s.record(key, accepted);
        }
        assert_eq!(s.counts(&key), (3, 4));
        assert!((s.rate(&key) - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(s.rate(&StatKey { depth: 2, ..key }), 0.5, "other keys are untouched");
    }

    /// Hand-computed: a chain of 4 with rates 0.9 each reaches 0.9, 0.81, 0.729, 0.6561.
    /// With cost(N) = 10 + (N − 1): plain 1/10 = 0.1; s = 1: 1.9/11 = 0.1727; s = 2: 2.71/12 =
    /// 0.2258; s = 3: 3.439/13 = 0.2645; s = 4: 4.0951/14 = 0.2925 → all four. With cost(N) = 10N
    /// nothing beats the plain step. With rate 0.1 and cost(N) = 10 + 5(N − 1): s = 1: 1.1/15 <
    /// 0.1 → nothing.
    #[test]
    fn plan_picks_the_best_tokens_per_ms() {
        let chain = DraftTree::chain(&[1, 2, 3, 4]);
        let cheap = CostCurve::new(vec![(1, 10.0), (2, 11.0)]).unwrap();
        assert_eq!(plan(&chain, &|_| 0.9, &cheap).len(), 4);
        let steep = CostCurve::new(vec![(1, 10.0), (2, 20.0)]).unwrap();
        assert!(plan(&chain, &|_| 0.9, &steep).is_empty());
        let middle = CostCurve::new(vec![(1, 10.0), (2, 15.0)]).unwrap();
        assert!(plan(&chain, &|_| 0.1, &middle).is_empty());
        // Middle ground: rate 0.5, cost 10 + 5(N − 1): s = 1: 1.5/15 = 0.1 (not strictly
        // better), s = 2: 1.75/20 < 0.1 → nothing; rate 0.6: s = 1: 1.6/15 = 0.1067, s = 2:
        // 1.96/20 = 0.098 → one token.
        assert!(plan(&chain, &|_| 0.5, &middle).is_empty());
        assert_eq!(plan(&chain, &|_| 0.6, &middle).tokens(), [1]);
        // A tree: the likelier branch's nodes come first, parents before children.
        let tree = DraftTree::build(&[vec![1, 2], vec![3, 4]], 8);
        let rates = [0.3, 0.9, 0.6, 0.9];
        let kept = plan(&tree, &|v| rates[v], &cheap);
        // reach: node 0 = 0.3, 1 = 0.27, 2 = 0.6, 3 = 0.54 → order 2, 3, 0, 1.
        assert_eq!(kept.tokens(), [3, 4, 1, 2]);
        assert_eq!(kept.parents(), [None, Some(0), None, Some(2)]);
    }
}

//! Choosing the accepted path of a verified tree.
//!
//! Block row i of the tree forward holds the target's logits for the token AFTER row i's token,
//! so a node is judged by its parent's row. Both rules below are pure functions of the tree, the
//! block's tokens and (lazily fetched) per-row values, so they are tested without a model.

use candle_core::Result;

use crate::sampler::entropy;

/// How candidates are accepted. The temperature comes from the sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AcceptanceRule {
    /// Accept a node when its token is the target's own choice after its parent: the arg-max at
    /// temperature 0 (Medusa reproduces greedy decoding exactly), a draw from the sampler's
    /// distribution at temperature > 0 (one draw per output token, in order, so Medusa then
    /// reproduces `autoregressive::sample` with the same seed exactly).
    Greedy,
    /// Medusa's typical acceptance: accept token x after a parent whose distribution is p
    /// (the sampler's distribution: `softmax(logits / T)`, then its top-k / top-p if set) when
    /// `p(x) > min(epsilon, alpha · exp(−H(p)))`. Longest accepted path wins, ties go to the
    /// highest summed log-probability; the bonus token is drawn from p at the last accepted
    /// node. At temperature 0 this is greedy acceptance (as in the Medusa repository).
    Typical { epsilon: f64, alpha: f64 },
}

impl AcceptanceRule {
    /// Medusa's defaults: ε = 0.09, α = sqrt(ε) = 0.3.
    pub const DEFAULT_EPSILON: f64 = 0.09;
    pub const DEFAULT_ALPHA: f64 = 0.3;

    /// Typical acceptance with Medusa's defaults.
    pub fn typical() -> Self {
        AcceptanceRule::Typical { epsilon: Self::DEFAULT_EPSILON, alpha: Self::DEFAULT_ALPHA }
    }

    /// From CLI values: `--accept greedy|typical [--epsilon E] [--alpha A]`.
    pub fn from_cli(name: &str, epsilon: Option<f64>, alpha: Option<f64>) -> std::result::Result<Self, String> {
        let rule = match name {
            "greedy" => {
                if epsilon.is_some() || alpha.is_some() {
                    return Err("--epsilon and --alpha apply to --accept typical only".into());
                }
                AcceptanceRule::Greedy
            }
            "typical" => {
                AcceptanceRule::Typical { epsilon: epsilon.unwrap_or(Self::DEFAULT_EPSILON), alpha: alpha.unwrap_or(Self::DEFAULT_ALPHA) }
            }
            other => return Err(format!("--accept must be greedy or typical, got `{other}`")),
        };
        rule.validate()?;
        Ok(rule)
    }

    /// Checks the settings; errors name the option.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let AcceptanceRule::Typical { epsilon, alpha } = *self {
            if !(epsilon.is_finite() && epsilon >= 0.0) {
                return Err(format!("--epsilon must be a finite number >= 0, got {epsilon}"));
            }
            if !(alpha.is_finite() && alpha >= 0.0) {
                return Err(format!("--alpha must be a finite number >= 0, got {alpha}"));
            }
        }
        Ok(())
    }
}

/// Typical acceptance threshold of a distribution: `min(epsilon, alpha · exp(−H(p)))`.
pub fn typical_threshold(probs: &[f32], epsilon: f64, alpha: f64) -> f64 {
    epsilon.min(alpha * (-entropy(probs)).exp())
}

/// Walks the tree from the root following the target's choices: `choose(row)` is the target's
/// token after block row `row` (called once per row on the walk, in order). Returns the accepted
/// path (block rows, root excluded, root to leaf) and the last choice, which matched no child:
/// the bonus token. Only rows below `block_len` exist (a step may use a prefix of the tree).
pub fn match_path(
    children: &dyn Fn(usize) -> Vec<usize>,
    tokens: &[u32],
    choose: &mut dyn FnMut(usize) -> Result<u32>,
) -> Result<(Vec<usize>, u32)> {
    let mut path = Vec::new();
    let mut row = 0;
    loop {
        let next = choose(row)?;
        // Siblings carry distinct tokens (distinct top-k candidates of one head), so at most one
        // child matches.
        match children(row).into_iter().find(|&c| c < tokens.len() && tokens[c] == next) {
            Some(c) => {
                path.push(c);
                row = c;
            }
            None => return Ok((path, next)),
        }
    }
}

/// Typical acceptance over a tree block: `parents[i]` is block row i's parent (row 0 is the root,
/// `parents[0] = None`, parents before children), `tokens[i]` its token, and `dist(row)` the
/// target's distribution after row `row` (fetched at most once per row, only for rows whose
/// children are reachable). A node is accepted when its parent is (the root always is) and
/// `p_parent(token) > typical_threshold(p_parent)`. Returns the deepest accepted node's path
/// (block rows, root excluded); among equally deep ones the highest summed log-probability wins,
/// then the first in block order. An empty path means only the bonus token is kept.
pub fn typical_path(
    parents: &[Option<usize>],
    tokens: &[u32],
    epsilon: f64,
    alpha: f64,
    dist: &mut dyn FnMut(usize) -> Result<Vec<f32>>,
) -> Result<Vec<usize>> {
    let n = parents.len();
    let mut accepted = vec![false; n];
    let mut depth = vec![0usize; n];
    let mut log_p = vec![0f64; n];
    let mut rows: Vec<Option<(Vec<f32>, f64)>> = vec![None; n];
    if n > 0 {
        accepted[0] = true;
    }
    for i in 1..n {
        let Some(p) = parents[i] else { continue };
        if !accepted[p] {
            continue;
        }
        if rows[p].is_none() {
            let probs = dist(p)?;
            let threshold = typical_threshold(&probs, epsilon, alpha);
            rows[p] = Some((probs, threshold));
        }
        let (probs, threshold) = rows[p].as_ref().expect("filled above");
        let q = probs.get(tokens[i] as usize).copied().unwrap_or(0.0) as f64;
        if q > *threshold {
            accepted[i] = true;
            depth[i] = depth[p] + 1;
            log_p[i] = log_p[p] + q.ln();
        }
    }
    let mut best = 0;
    for i in 1..n {
        if accepted[i] && (depth[i] > depth[best] || (depth[i] == depth[best] && log_p[i] > log_p[best])) {
            best = i;
        }
    }
    let mut path = Vec::with_capacity(depth[best]);
    let mut row = best;
    while row != 0 {
        path.push(row);
        row = parents[row].expect("non-root rows have parents");
    }
    path.reverse();
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root 0 with children 1 (token 0) and 2 (token 1); 1 has child 3 (token 2), 2 has child 4
    /// (token 3); 3 has child 5 (token 0).
    fn small_tree() -> (Vec<Option<usize>>, Vec<u32>) {
        (vec![None, Some(0), Some(0), Some(1), Some(2), Some(3)], vec![9, 0, 1, 2, 3, 0])
    }

    fn children_of(parents: &[Option<usize>]) -> impl Fn(usize) -> Vec<usize> + '_ {
        move |r| (0..parents.len()).filter(|&i| parents[i] == Some(r)).collect()
    }

    #[test]
    fn match_path_follows_the_target() {
        let (parents, tokens) = small_tree();
        let children = children_of(&parents);
        // Target: after root 0, after row 1 2, after row 3 0, after row 5 7 → path 1, 3, 5, bonus 7.
        let choice = [0u32, 2, 99, 0, 99, 7];
        let mut calls = Vec::new();
        let (path, bonus) = match_path(&children, &tokens, &mut |r| {
            calls.push(r);
            Ok(choice[r])
        })
        .unwrap();
        assert_eq!((path, bonus), (vec![1, 3, 5], 7));
        assert_eq!(calls, [0, 1, 3, 5], "one choice per output token, in order");
        // Nothing matches at the root: bonus only.
        let (path, bonus) = match_path(&children, &tokens, &mut |_| Ok(5)).unwrap();
        assert_eq!((path, bonus), (vec![], 5));
        // A prefix of the block (rows 0..3): row 3 does not exist, so the walk stops at row 1.
        let (path, bonus) = match_path(&children, &tokens[..3], &mut |r| Ok(choice[r])).unwrap();
        assert_eq!((path, bonus), (vec![1], 2));
    }

    /// Hand-computed middle case. Vocabulary of 4, the root's distribution
    /// p = [0.5, 0.25, 0.125, 0.125]:
    ///   H = 0.5·ln 2 + 0.25·ln 4 + 2·0.125·ln 8 = (0.5 + 0.5 + 0.75)·ln 2 = 1.75·ln 2 ≈ 1.2130,
    ///   exp(−H) = 2^−1.75 ≈ 0.2973.
    /// With ε = 0.2, α = 0.5: threshold = min(0.2, 0.5 · 0.2973 = 0.1487) = 0.1487, so tokens 0
    /// (0.5) and 1 (0.25) pass and tokens 2, 3 (0.125) fail.
    /// Rows 1 and 2 (the depth-1 nodes) have q = [0.05, 0.05, 0.6, 0.3] and r = [0.1, 0.1, 0.1, 0.7]:
    ///   H(q) = −(2·0.05·ln 0.05 + 0.6·ln 0.6 + 0.3·ln 0.3) ≈ 0.2996 + 0.3065 + 0.3612 = 0.9673,
    ///     threshold = min(0.2, 0.5 · e^−0.9673 ≈ 0.1901) = 0.1901: token 2 (0.6) passes.
    ///   H(r) = −(3·0.1·ln 0.1 + 0.7·ln 0.7) ≈ 0.6908 + 0.2497 = 0.9405,
    ///     threshold = min(0.2, 0.5 · e^−0.9405 ≈ 0.1952) = 0.1952: token 3 (0.7) passes.
    /// Both depth-2 nodes are accepted: path 1→3 scores ln 0.5 + ln 0.6 = ln 0.30, path 2→4
    /// scores ln 0.25 + ln 0.7 = ln 0.175, so 1→3 wins; row 3's own distribution rejects node 5
    /// (token 0 at 0.01 against a threshold of 0.2).
    #[test]
    fn typical_hand_computed_middle_case() {
        let p = [0.5f32, 0.25, 0.125, 0.125];
        let expected_threshold = 0.5 * (2f64).powf(-1.75);
        assert!((typical_threshold(&p, 0.2, 0.5) - expected_threshold).abs() < 1e-6);
        assert!((expected_threshold - 0.14865).abs() < 1e-4);
        let q = [0.05f32, 0.05, 0.6, 0.3];
        assert!((typical_threshold(&q, 0.2, 0.5) - 0.1901).abs() < 1e-3);
        let r = [0.1f32, 0.1, 0.1, 0.7];
        assert!((typical_threshold(&r, 0.2, 0.5) - 0.1952).abs() < 1e-3);
        let last = [0.01f32, 0.01, 0.01, 0.97];

        let (parents, tokens) = small_tree();
        let rows = [p.to_vec(), q.to_vec(), r.to_vec(), last.to_vec(), last.to_vec(), last.to_vec()];
        let mut fetched = Vec::new();
        let path = typical_path(&parents, &tokens, 0.2, 0.5, &mut |row| {
            fetched.push(row);
            Ok(rows[row].clone())
        })
        .unwrap();
        assert_eq!(path, vec![1, 3]);
        assert_eq!(fetched, [0, 1, 2, 3], "each reachable parent row fetched once, leaves never");

        // Swap which depth-1 child is likelier at the root: the scores become ln 0.25 + ln 0.6 =
        // ln 0.15 against ln 0.5 + ln 0.7 = ln 0.35, so the tie in depth now goes to 2→4.
        let rows = [vec![0.25f32, 0.5, 0.125, 0.125], q.to_vec(), r.to_vec(), last.to_vec(), last.to_vec(), last.to_vec()];
        let path = typical_path(&parents, &tokens, 0.2, 0.5, &mut |row| Ok(rows[row].clone())).unwrap();
        assert_eq!(path, vec![2, 4]);

        // ε caps the threshold: with ε = 0.3, α = 2 the root's α term is 2 · 0.2973 = 0.595, so
        // the threshold is min(0.3, 0.595) = 0.3 and only token 0 (0.5) passes, token 1 (0.25)
        // fails; row 1's threshold is min(0.3, 2 · e^−0.9673 = 0.760) = 0.3 and token 2 (0.6)
        // passes; row 3 rejects node 5 (0.01). Path 1→3, and node 2's subtree is never visited.
        let rows = [p.to_vec(), q.to_vec(), r.to_vec(), last.to_vec(), last.to_vec(), last.to_vec()];
        let mut fetched = Vec::new();
        let path = typical_path(&parents, &tokens, 0.3, 2.0, &mut |row| {
            fetched.push(row);
            Ok(rows[row].clone())
        })
        .unwrap();
        assert_eq!(path, vec![1, 3]);
        assert_eq!(fetched, [0, 1, 3], "row 2 is not needed: node 2 was rejected");
    }

    #[test]
    fn typical_extremes() {
        let (parents, tokens) = small_tree();
        let flat = vec![0.25f32; 4];
        // Threshold 0: every candidate with p > 0 is accepted, so the deepest path wins.
        let path = typical_path(&parents, &tokens, 0.0, 0.0, &mut |_| Ok(flat.clone())).unwrap();
        assert_eq!(path, vec![1, 3, 5]);
        // Threshold min(1, ·) with α huge = 1: no probability exceeds it, nothing is accepted.
        let path = typical_path(&parents, &tokens, 1.0, 1e9, &mut |_| Ok(flat.clone())).unwrap();
        assert!(path.is_empty());
        // A token outside the distribution's support (p = 0) is never accepted, even at threshold 0.
        let path = typical_path(&parents, &tokens, 0.0, 0.0, &mut |_| Ok(vec![0.5, 0.5, 0.0, 0.0])).unwrap();
        assert_eq!(path, vec![1]);
    }

    #[test]
    fn cli_values() {
        assert_eq!(AcceptanceRule::from_cli("greedy", None, None).unwrap(), AcceptanceRule::Greedy);
        assert_eq!(AcceptanceRule::from_cli("typical", None, None).unwrap(), AcceptanceRule::Typical { epsilon: 0.09, alpha: 0.3 });
        assert_eq!(
            AcceptanceRule::from_cli("typical", Some(0.2), Some(0.5)).unwrap(),
            AcceptanceRule::Typical { epsilon: 0.2, alpha: 0.5 }
        );
        assert!(AcceptanceRule::from_cli("typical", Some(-1.0), None).unwrap_err().contains("--epsilon"));
        assert!(AcceptanceRule::from_cli("typical", None, Some(f64::NAN)).unwrap_err().contains("--alpha"));
        assert!(AcceptanceRule::from_cli("greedy", Some(0.1), None).unwrap_err().contains("--accept typical"));
        assert!(AcceptanceRule::from_cli("nucleus", None, None).unwrap_err().contains("--accept"));
    }
}

//! Quality metrics of one answer, each against greedy decoding's answer to the same turn or on
//! the answer alone. Pure functions over token ids or text, so they can be tested by hand.

use std::collections::HashSet;

/// The first token position where `a` and `b` differ; when one is a prefix of the other, the
/// length of the shorter (the first position only one of them has). `None`: identical.
///
/// For a lossless strategy this is where it left greedy decoding's path, which is what a
/// person debugging it needs first.
pub fn first_divergence(a: &[u32], b: &[u32]) -> Option<usize> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i),
        None if a.len() == b.len() => None,
        None => Some(a.len().min(b.len())),
    }
}

/// ROUGE-L F-measure (β = 1) of `candidate` against `reference` over whitespace-separated,
/// lower-cased words: with L the length of their longest common subsequence,
/// P = L / |candidate|, R = L / |reference| and F = 2PR / (P + R) = 2L / (|candidate| + |reference|).
///
/// Both empty: 1.0 (two empty answers agree); one empty: 0.0.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let c = words(candidate);
    let r = words(reference);
    if c.is_empty() && r.is_empty() {
        return 1.0;
    }
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(&c, &r);
    2.0 * lcs as f64 / (c.len() + r.len()) as f64
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_lowercase).collect()
}

/// Longest common subsequence length, O(|a|·|b|) time and O(|b|) memory.
fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { prev[j + 1].max(cur[j]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Distinct-2: unique token bigrams / token bigrams. Low values mean a looping answer.
/// `None` under two tokens (no bigram).
pub fn distinct_2(tokens: &[u32]) -> Option<f64> {
    if tokens.len() < 2 {
        return None;
    }
    let unique: HashSet<(u32, u32)> = tokens.windows(2).map(|w| (w[0], w[1])).collect();
    Some(unique.len() as f64 / (tokens.len() - 1) as f64)
}

/// Repetition rate: the share of the sequence's token 4-grams (windows at positions
/// 0..len−3) that already occurred at an earlier position of the same sequence (overlapping
/// occurrences count). 0.0 for an answer that never repeats a 4-gram; close to 1.0 for one
/// stuck in a loop. `None` under four tokens (no 4-gram).
pub fn repetition_rate(tokens: &[u32]) -> Option<f64> {
    if tokens.len() < 4 {
        return None;
    }
    let mut seen: HashSet<&[u32]> = HashSet::new();
    let mut repeated = 0usize;
    let windows = tokens.windows(4);
    let total = windows.len();
    for w in windows {
        if !seen.insert(w) {
            repeated += 1;
        }
    }
    Some(repeated as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_divergence_cases() {
        assert_eq!(first_divergence(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_divergence(&[], &[]), None);
        assert_eq!(first_divergence(&[1, 2, 3], &[1, 9, 3]), Some(1));
        assert_eq!(first_divergence(&[5], &[6]), Some(0));
        // A prefix: the first position only the longer one has.
        assert_eq!(first_divergence(&[1, 2], &[1, 2, 3, 4]), Some(2));
        assert_eq!(first_divergence(&[1, 2, 3, 4], &[1, 2]), Some(2));
        assert_eq!(first_divergence(&[], &[7]), Some(0));
    }

    #[test]
    fn rouge_l_cases() {
        assert_eq!(rouge_l("", ""), 1.0);
        assert_eq!(rouge_l("a", ""), 0.0);
        assert_eq!(rouge_l("", "a"), 0.0);
        // Case and whitespace do not matter.
        assert_eq!(rouge_l("The  cat\nSAT", "the cat sat"), 1.0);
        // LCS("the cat sat on the mat", "the cat lay on a mat") = the cat on mat = 4;
        // F = 2·4 / (6 + 6) = 2/3.
        let f = rouge_l("the cat sat on the mat", "the cat lay on a mat");
        assert!((f - 2.0 / 3.0).abs() < 1e-12, "{f}");
        // Disjoint words: 0.
        assert_eq!(rouge_l("a b c", "d e"), 0.0);
        // Order matters: LCS("a b c", "c b a") = 1; F = 2·1 / 6 = 1/3.
        assert!((rouge_l("a b c", "c b a") - 1.0 / 3.0).abs() < 1e-12);
        // Unequal lengths: LCS("a b", "a x b y") = 2; P = 1, R = 1/2, F = 2/3 = 2·2/(2+4).
        assert!((rouge_l("a b", "a x b y") - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn distinct_2_cases() {
        assert_eq!(distinct_2(&[]), None);
        assert_eq!(distinct_2(&[1]), None);
        assert_eq!(distinct_2(&[1, 2]), Some(1.0));
        // Bigrams (1,2) (2,1) (1,2) (2,1): 2 unique of 4.
        assert_eq!(distinct_2(&[1, 2, 1, 2, 1]), Some(0.5));
        // (7,7) three times: 1 of 3.
        assert_eq!(distinct_2(&[7, 7, 7, 7]), Some(1.0 / 3.0));
    }

    #[test]
    fn repetition_rate_cases() {
        assert_eq!(repetition_rate(&[1, 2, 3]), None);
        assert_eq!(repetition_rate(&[1, 2, 3, 4]), Some(0.0));
        assert_eq!(repetition_rate(&[1, 2, 3, 4, 5, 6]), Some(0.0));
        // 1 2 3 4 1 2 3 4: windows 1234 2341 3412 4123 1234 → only the last repeats: 1/5.
        assert_eq!(repetition_rate(&[1, 2, 3, 4, 1, 2, 3, 4]), Some(0.2));
        // Six 9s: windows at 0, 1, 2 are all 9999; the two after the first repeat: 2/3.
        assert_eq!(repetition_rate(&[9; 6]), Some(2.0 / 3.0));
    }
}

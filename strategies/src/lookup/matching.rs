//! Where drafts come from: earlier occurrences of the text's own suffix (prompt lookup) and the
//! caller-owned n-gram cache of everything seen so far in a run.

use std::collections::HashMap;

/// An earlier occurrence of the text's suffix: the `ngram` tokens ending just before
/// `continuation` equal the text's last `ngram` tokens, and `text[continuation..]` is what
/// followed them there (the draft).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    /// Length of the match (the longest one at this occurrence, capped at `max_ngram`).
    pub ngram: usize,
    /// Index of the first token after the occurrence; always below `text.len()`, so at least one
    /// token follows it.
    pub continuation: usize,
}

/// Every earlier occurrence of a suffix of `text` between `min_ngram` and `max_ngram` tokens
/// long, best first: longer matches first (a longer context predicts better), then the most
/// recent (text nearby is the likeliest to be repeated). Each occurrence appears once, with its
/// longest match. The first entry is prompt lookup's chain; a tree takes as many as fit.
///
/// One pass over the text, comparing at most `max_ngram` tokens backwards at each position:
/// O(len · max_ngram), microseconds against a target forward, so no index is kept.
pub fn occurrences(text: &[u32], min_ngram: usize, max_ngram: usize) -> Vec<Occurrence> {
    let min_ngram = min_ngram.max(1);
    let len = text.len();
    let mut found = Vec::new();
    if len < 2 || max_ngram < min_ngram {
        return found;
    }
    // An occurrence ending at `end` (exclusive) is earlier than the suffix itself when end < len,
    // which leaves text[end] as its continuation. Matches may overlap the suffix (runs of a
    // repeated token), as in every prompt-lookup implementation.
    for end in (min_ngram..len).rev() {
        let mut n = 0;
        while n < max_ngram && n < end && text[end - 1 - n] == text[len - 1 - n] {
            n += 1;
        }
        if n >= min_ngram {
            found.push(Occurrence { ngram: n, continuation: end });
        }
    }
    // Stable: equal lengths stay most recent first.
    found.sort_by_key(|o| std::cmp::Reverse(o.ngram));
    found
}

/// Counts of the continuations of every n-gram (n = 1..=`max_ngram`) seen so far: llama.cpp's
/// "n-gram cache" idea. The caller owns it and passes it to every call, so it carries what
/// earlier prompts and answers of a run contained into later ones (chat turns, similar tasks),
/// where the current text alone may have nothing to copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NgramCache {
    max_ngram: usize,
    table: HashMap<Vec<u32>, HashMap<u32, u32>>,
}

impl NgramCache {
    /// An empty cache recording n-grams of 1..=`max_ngram` tokens.
    pub fn new(max_ngram: usize) -> Self {
        Self { max_ngram, table: HashMap::new() }
    }

    /// The longest n-gram length recorded.
    pub fn max_ngram(&self) -> usize {
        self.max_ngram
    }

    /// Distinct n-grams recorded.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Counts the tokens `text[from..]` as continuations of the n-grams before them. Callers
    /// feed each text once, growing: the prompt with `from = 0`, then each step's new tokens
    /// with `from` = the old length, so no token is counted twice within one text.
    pub fn ingest(&mut self, text: &[u32], from: usize) {
        for i in from.max(1)..text.len() {
            let next = text[i];
            for n in 1..=self.max_ngram.min(i) {
                let key = &text[i - n..i];
                match self.table.get_mut(key) {
                    Some(counts) => *counts.entry(next).or_insert(0) += 1,
                    None => {
                        self.table.insert(key.to_vec(), HashMap::from([(next, 1)]));
                    }
                }
            }
        }
    }

    /// How often `next` followed `key`.
    pub fn count(&self, key: &[u32], next: u32) -> u32 {
        self.table.get(key).and_then(|c| c.get(&next)).copied().unwrap_or(0)
    }

    /// The continuations of `key`, most frequent first (equal counts: lower token id first, so
    /// drafts are deterministic).
    pub fn continuations(&self, key: &[u32]) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = self.table.get(key).map(|c| c.iter().map(|(&t, &n)| (t, n)).collect()).unwrap_or_default();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// The longest suffix of `text` (between `min_ngram` and `max_ngram` tokens) the cache
    /// knows, with its length.
    fn longest_key<'t>(&self, text: &'t [u32], min_ngram: usize, max_ngram: usize) -> Option<(usize, &'t [u32])> {
        let top = max_ngram.min(self.max_ngram).min(text.len());
        (min_ngram.max(1)..=top).rev().map(|n| (n, &text[text.len() - n..])).find(|(_, key)| self.table.contains_key(*key))
    }

    /// Up to `len` tokens continuing `text`, each the most frequent continuation of the longest
    /// known suffix of the text extended by the tokens drafted so far. Returns the length of the
    /// first lookup's n-gram with the draft, or None when the cache knows no suffix.
    pub fn draft(&self, text: &[u32], min_ngram: usize, max_ngram: usize, len: usize) -> Option<(usize, Vec<u32>)> {
        let (n, key) = self.longest_key(text, min_ngram, max_ngram)?;
        let first = self.continuations(key).first()?.0;
        let mut context = text[text.len().saturating_sub(self.max_ngram)..].to_vec();
        context.push(first);
        let mut draft = vec![first];
        draft.extend(self.extend(&mut context, min_ngram, max_ngram, len.saturating_sub(1)));
        draft.truncate(len);
        Some((n, draft))
    }

    /// Distinct drafts for a tree: every known continuation of the longest known suffix (most
    /// frequent first, at most `branches`), each extended like [`draft`](Self::draft).
    pub fn branches(
        &self,
        text: &[u32],
        min_ngram: usize,
        max_ngram: usize,
        len: usize,
        branches: usize,
    ) -> Option<(usize, Vec<Vec<u32>>)> {
        if len == 0 {
            return None;
        }
        let (n, key) = self.longest_key(text, min_ngram, max_ngram)?;
        let tail = &text[text.len().saturating_sub(self.max_ngram)..];
        let drafts = self
            .continuations(key)
            .into_iter()
            .take(branches)
            .map(|(first, _)| {
                let mut context = tail.to_vec();
                context.push(first);
                let mut draft = vec![first];
                draft.extend(self.extend(&mut context, min_ngram, max_ngram, len - 1));
                draft
            })
            .collect();
        Some((n, drafts))
    }

    fn extend(&self, context: &mut Vec<u32>, min_ngram: usize, max_ngram: usize, len: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let Some((_, key)) = self.longest_key(context, min_ngram, max_ngram) else { break };
            let Some(&(next, _)) = self.continuations(key).first() else { break };
            out.push(next);
            context.push(next);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurrences_are_ordered_by_length_then_recency() {
        // Suffix [1, 2]: [1, 2] at 0..2 and 3..5, [2] alone at 7.
        let text = [1, 2, 8, 1, 2, 9, 5, 2, 1, 2];
        let occ = occurrences(&text, 1, 3);
        assert_eq!(
            occ,
            vec![
                Occurrence { ngram: 2, continuation: 5 },
                Occurrence { ngram: 2, continuation: 2 },
                Occurrence { ngram: 1, continuation: 8 },
            ]
        );
    }

    #[test]
    fn cache_counts_each_continuation_once_per_text_position() {
        let mut cache = NgramCache::new(2);
        let text = [1, 2, 1, 2, 3];
        cache.ingest(&text[..3], 0);
        cache.ingest(&text, 3);
        assert_eq!(cache.count(&[1], 2), 2);
        assert_eq!(cache.count(&[2], 1), 1);
        assert_eq!(cache.count(&[2], 3), 1);
        assert_eq!(cache.count(&[1, 2], 1), 1);
        assert_eq!(cache.count(&[1, 2], 3), 1);
        assert_eq!(cache.count(&[2, 1, 2], 3), 0, "3-grams are beyond max_ngram");
        assert_eq!(cache.continuations(&[2]), vec![(1, 1), (3, 1)], "ties: lower id first");
        // The draft follows the most frequent continuation of the longest known suffix.
        assert_eq!(cache.draft(&[7, 1], 1, 2, 4), Some((1, vec![2, 1, 2, 1])));
        assert_eq!(cache.draft(&[7, 9], 1, 2, 4), None);
        assert_eq!(cache.draft(&[7, 1], 2, 2, 4), None, "min_ngram 2: [7, 1] is unknown");
        let (n, branches) = cache.branches(&[5, 2], 1, 2, 2, 8).unwrap();
        assert_eq!((n, branches), (1, vec![vec![1, 2], vec![3]]));
    }
}

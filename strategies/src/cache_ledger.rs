//! Which token, at which position, each slot of a batch-1 KV cache holds: what lets a new
//! prompt that extends the cached sequence (the next turn of a conversation) skip the prefix
//! whose keys and values are already there, as serving engines do with prefix caching.

use crate::ForwardInput;

/// The ledger of a model's cache, kept in step with it by the model's own cache operations, and
/// whether a prefill may reuse what it records. A new ledger is that of an empty cache, reuse off.
#[derive(Debug, Clone)]
pub struct CacheLedger {
    /// `(token, position)` per slot; None once the cache holds several rows (beams), whose
    /// contents no prompt can reuse.
    slots: Option<Vec<(u32, usize)>>,
    reuse: bool,
}

impl Default for CacheLedger {
    fn default() -> Self {
        Self { slots: Some(Vec::new()), reuse: false }
    }
}

impl CacheLedger {
    /// Turns reuse on or off ([`crate::DecoderModel::set_prefix_reuse`]).
    pub fn set_reuse(&mut self, on: bool) {
        self.reuse = on;
    }

    /// A forward appended `input`'s block to the cache. A tree block's nodes are recorded in
    /// block order at their positions (cache length + depth); see [`Self::reusable_prefix`] for
    /// why that is enough to tell a kept path from a stale tree.
    pub fn appended(&mut self, input: &ForwardInput) {
        match (&mut self.slots, input.batch) {
            (Some(slots), 1) => slots.extend(input.tokens.iter().copied().zip(input.positions.iter().copied())),
            _ => self.slots = None,
        }
    }

    /// The cache was cut to `len` slots.
    pub fn truncated(&mut self, len: usize) {
        if let Some(slots) = &mut self.slots {
            slots.truncate(len);
        }
    }

    /// Slots `start + keep[j]` moved to `start + j`, everything after dropped.
    pub fn compacted(&mut self, start: usize, keep: &[usize]) {
        if let Some(slots) = &mut self.slots {
            let kept: Option<Vec<(u32, usize)>> = keep.iter().map(|&k| slots.get(start + k).copied()).collect();
            match kept {
                Some(kept) => {
                    slots.truncate(start);
                    slots.extend(kept);
                }
                None => self.slots = None,
            }
        }
    }

    /// Batch rows were reordered (beam search): only a single row kept as itself stays known.
    pub fn reordered(&mut self, rows: &[usize]) {
        if rows != [0] {
            self.slots = None;
        }
    }

    /// The cache was emptied: known again (and empty).
    pub fn cleared(&mut self) {
        self.slots = Some(Vec::new());
    }

    /// How many leading tokens of `prompt` the cache holds, each computed at its own position
    /// after exactly the tokens before it, at most `prompt.len() - 1` (a prefill must run at
    /// least one token to get logits); 0 with reuse off.
    ///
    /// Slot i counts when it holds `prompt[i]` at position i and every slot before it counts.
    /// A slot of a tree block sits at cache length + its depth, so a run of slots whose
    /// positions all equal their indices is a chain (each node's parent is the node before it,
    /// the only earlier node one level up): keys and values a causal block would have computed.
    /// Stale siblings of an uncompacted tree break the run at the first one.
    pub fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        let Some(slots) = self.slots.as_ref().filter(|_| self.reuse) else { return 0 };
        let same = slots.iter().zip(prompt).enumerate().take_while(|&(i, (&(t, p), &want))| t == want && p == i).count();
        same.min(prompt.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockAttention, LogitRows};

    fn on() -> CacheLedger {
        let mut l = CacheLedger::default();
        l.set_reuse(true);
        l
    }

    fn causal(ledger: &mut CacheLedger, tokens: &[u32], start: usize) {
        let positions: Vec<usize> = (start..start + tokens.len()).collect();
        ledger.appended(&ForwardInput::causal(tokens, &positions, LogitRows::Last));
    }

    #[test]
    fn a_cache_holding_a_prefix_lends_it_and_never_the_last_token() {
        let mut l = on();
        causal(&mut l, &[1, 2, 3], 0);
        assert_eq!(l.reusable_prefix(&[1, 2, 3, 4, 5]), 3);
        assert_eq!(l.reusable_prefix(&[1, 2, 9, 4]), 2);
        assert_eq!(l.reusable_prefix(&[1, 2, 3]), 2, "the whole prompt: its last token still runs");
        assert_eq!(l.reusable_prefix(&[7]), 0);
        l.truncated(1);
        assert_eq!(l.reusable_prefix(&[1, 2, 3]), 1);
        l.set_reuse(false);
        assert_eq!(l.reusable_prefix(&[1, 2, 3]), 0, "off, nothing is lent");
    }

    #[test]
    fn a_tree_counts_only_once_compacted_to_a_path() {
        let mut l = on();
        causal(&mut l, &[1, 2], 0);
        // Root 3 at position 2 with children 4 and 5 (position 3), 6 under 5 (position 4).
        let tree = BlockAttention::Tree { parents: vec![None, Some(0), Some(0), Some(2)] };
        let positions = [2, 3, 3, 4];
        l.appended(&ForwardInput { tokens: &[3, 4, 5, 6], batch: 1, positions: &positions, attention: &tree, rows: LogitRows::All });
        assert_eq!(l.reusable_prefix(&[1, 2, 3, 4, 5, 6, 0]), 4, "the first branch is a chain");
        assert_eq!(l.reusable_prefix(&[1, 2, 3, 5, 6, 0]), 3, "the sibling sits at the wrong position");
        l.compacted(2, &[0, 2, 3]);
        assert_eq!(l.reusable_prefix(&[1, 2, 3, 5, 6, 0]), 5);
    }

    #[test]
    fn beams_make_the_cache_unknown_until_cleared() {
        let mut l = on();
        causal(&mut l, &[1, 2], 0);
        l.reordered(&[0]);
        assert_eq!(l.reusable_prefix(&[1, 2, 3]), 2);
        l.reordered(&[0, 0]);
        assert_eq!(l.reusable_prefix(&[1, 2, 3]), 0);
        l.cleared();
        causal(&mut l, &[1, 2], 0);
        assert_eq!(l.reusable_prefix(&[1, 2, 3]), 2);
    }
}

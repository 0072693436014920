//! Drafts laid out as a prefix tree: distinct continuations share their common prefixes, so one
//! tree forward verifies all of them for the price of their distinct tokens.

use std::collections::HashMap;

/// A tree of draft tokens. Node i is block row i + 1 of the verifying forward (row 0 is the root:
/// the last emitted token, not yet in the KV cache). Nodes are numbered in insertion order, so
/// every parent comes before its children and every prefix of the nodes is itself a tree.
/// Siblings always carry distinct tokens (what [`crate::medusa::match_path`] relies on).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DraftTree {
    tokens: Vec<u32>,
    /// Parent node of each node; None: a child of the root.
    parents: Vec<Option<usize>>,
    /// 1 for the root's children.
    depths: Vec<usize>,
    /// The candidate (drafting order) whose insertion created the node.
    origins: Vec<usize>,
    /// Position among its siblings in insertion order (0: the best-ranked alternative).
    ranks: Vec<usize>,
    index: HashMap<(Option<usize>, u32), usize>,
    child_counts: HashMap<Option<usize>, usize>,
}

impl DraftTree {
    /// A tree holding one chain (a prompt-lookup draft).
    pub fn chain(tokens: &[u32]) -> Self {
        let mut tree = Self::default();
        tree.insert(tokens, 0, tokens.len());
        tree
    }

    /// Builds a tree from continuations in priority order, stopping at `max_nodes` nodes (a
    /// continuation cut by the cap keeps the prefix that fits). Node origins index `drafts`.
    pub fn build(drafts: &[Vec<u32>], max_nodes: usize) -> Self {
        let mut tree = Self::default();
        for (i, d) in drafts.iter().enumerate() {
            if tree.len() >= max_nodes {
                break;
            }
            tree.insert(d, i, max_nodes);
        }
        tree
    }

    /// Adds the path `draft` from the root, sharing the nodes that already exist, creating at
    /// most `max_nodes - len` new ones (the path is cut where the cap is reached). Returns how
    /// many nodes were created.
    pub fn insert(&mut self, draft: &[u32], origin: usize, max_nodes: usize) -> usize {
        let mut parent = None;
        let mut added = 0;
        for &token in draft {
            let node = match self.index.get(&(parent, token)) {
                Some(&node) => node,
                None => {
                    if self.len() >= max_nodes {
                        break;
                    }
                    let node = self.tokens.len();
                    let rank = self.child_counts.entry(parent).or_insert(0);
                    self.ranks.push(*rank);
                    *rank += 1;
                    self.tokens.push(token);
                    self.parents.push(parent);
                    self.depths.push(parent.map_or(1, |p| self.depths[p] + 1));
                    self.origins.push(origin);
                    self.index.insert((parent, token), node);
                    added += 1;
                    node
                }
            };
            parent = Some(node);
        }
        added
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn parents(&self) -> &[Option<usize>] {
        &self.parents
    }

    pub fn depths(&self) -> &[usize] {
        &self.depths
    }

    pub fn origins(&self) -> &[usize] {
        &self.origins
    }

    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }

    /// The deepest node's depth (0 for an empty tree).
    pub fn depth(&self) -> usize {
        self.depths.iter().copied().max().unwrap_or(0)
    }

    /// Parents of the block rows `[root, nodes..]`, for [`crate::BlockAttention::Tree`].
    pub fn block_parents(&self) -> Vec<Option<usize>> {
        let mut parents = Vec::with_capacity(self.len() + 1);
        parents.push(None);
        parents.extend(self.parents.iter().map(|p| Some(p.map_or(0, |p| p + 1))));
        parents
    }

    /// Children (block rows, increasing) of every block row.
    pub fn block_children(&self) -> Vec<Vec<usize>> {
        let mut children = vec![Vec::new(); self.len() + 1];
        for (node, p) in self.parents.iter().enumerate() {
            children[p.map_or(0, |p| p + 1)].push(node + 1);
        }
        children
    }

    /// The nodes `order` (each after its parent), renumbered in that order: a smaller tree.
    pub fn select(&self, order: &[usize]) -> Self {
        let mut new_index = vec![usize::MAX; self.len()];
        let mut tree = Self::default();
        for (j, &old) in order.iter().enumerate() {
            let parent = self.parents[old].map(|p| {
                assert!(new_index[p] != usize::MAX, "draft tree selection: node {old} comes before its parent {p}");
                new_index[p]
            });
            new_index[old] = j;
            *tree.child_counts.entry(parent).or_insert(0) += 1;
            tree.tokens.push(self.tokens[old]);
            tree.parents.push(parent);
            tree.depths.push(self.depths[old]);
            tree.origins.push(self.origins[old]);
            tree.ranks.push(self.ranks[old]);
            tree.index.insert((parent, self.tokens[old]), j);
        }
        tree
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_keeps_a_tree_and_its_ranks() {
        let tree = DraftTree::build(&[vec![1, 2], vec![3, 4], vec![1, 5]], 16);
        // Nodes: 0 = 1, 1 = 1→2, 2 = 3, 3 = 3→4, 4 = 1→5.
        let small = tree.select(&[2, 0, 4]);
        assert_eq!(small.tokens(), [3, 1, 5]);
        assert_eq!(small.parents(), [None, None, Some(1)]);
        assert_eq!(small.ranks(), [1, 0, 1], "ranks are the full tree's");
        assert_eq!(small.block_children(), vec![vec![1, 2], vec![], vec![3], vec![]]);
    }

    #[test]
    #[should_panic(expected = "before its parent")]
    fn select_refuses_a_child_before_its_parent() {
        DraftTree::chain(&[1, 2, 3]).select(&[1, 0]);
    }
}

//! A SHA-256 Merkle tree over a batch's replies, so that a replica signs
//! one root per executed batch instead of one reply per request, and each
//! client checks its own reply against that signature with a short path.
//!
//! Leaves and inner nodes are hashed with different one-byte prefixes
//! (0 and 1, as in RFC 6962), so a leaf can never pass for an inner node.
//! A level with an odd number of nodes carries its last node up unchanged;
//! the signed leaf count tells a verifier where that happens. About sixty
//! lines, written here rather than taken from a crate: the crates at hand
//! (rs_merkle among them) pair an odd node with itself or want a hasher
//! trait for one fixed hash, and this exact shape is part of the wire format.

use sha2::{Digest as _, Sha256};

use crate::crypto::Digest;

/// The hash of one leaf (an encoded reply).
pub fn leaf_hash(leaf: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

fn node_hash(left: &Digest, right: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the tree over `leaves` (leaf hashes) and, for each leaf, its
/// path: the sibling hashes from the leaf up. An empty batch has no tree.
pub fn root_and_paths(leaves: &[Digest]) -> Option<(Digest, Vec<Vec<Digest>>)> {
    if leaves.is_empty() {
        return None;
    }
    let mut paths = vec![Vec::new(); leaves.len()];
    // For each leaf, its index at the current level.
    let mut position: Vec<usize> = (0..leaves.len()).collect();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        for (leaf, pos) in position.iter_mut().enumerate() {
            let sibling = *pos ^ 1;
            if sibling < level.len() {
                paths[leaf].push(level[sibling]);
            }
            *pos /= 2;
        }
        level = level.chunks(2).map(|p| if let [l, r] = p { node_hash(l, r) } else { p[0] }).collect();
    }
    Some((level[0], paths))
}

/// The root that leaf `leaf` at `index` of a tree of `leaves` leaves leads to
/// through `path`; `None` when the index or the path's length do not fit
/// such a tree.
pub fn root_from_path(leaf: &Digest, index: u32, leaves: u32, path: &[impl AsRef<[u8]>]) -> Option<Digest> {
    if index >= leaves {
        return None;
    }
    let (mut index, mut width) = (index as u64, leaves as u64);
    let mut hash = *leaf;
    let mut siblings = path.iter();
    while width > 1 {
        let sibling = index ^ 1;
        if sibling < width {
            let s: &Digest = siblings.next()?.as_ref().try_into().ok()?;
            hash = if index % 2 == 0 { node_hash(&hash, s) } else { node_hash(s, &hash) };
        }
        index /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none().then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Digest> {
        (0..n).map(|i| leaf_hash(format!("reply {i}").as_bytes())).collect()
    }

    #[test]
    fn every_path_leads_to_the_root_for_every_size() {
        for n in 1..=70 {
            let ls = leaves(n);
            let (root, paths) = root_and_paths(&ls).unwrap();
            for (i, (leaf, path)) in ls.iter().zip(&paths).enumerate() {
                assert_eq!(root_from_path(leaf, i as u32, n as u32, path), Some(root), "n={n} leaf {i}");
                assert!(path.len() <= (n as f64).log2().ceil() as usize);
            }
        }
    }

    #[test]
    fn one_leaf_is_its_own_root() {
        let ls = leaves(1);
        let (root, paths) = root_and_paths(&ls).unwrap();
        assert_eq!(root, ls[0]);
        assert!(paths[0].is_empty());
        assert!(root_and_paths(&[]).is_none());
    }

    #[test]
    fn a_wrong_leaf_index_count_or_path_does_not_lead_to_the_root() {
        let ls = leaves(5);
        let (root, paths) = root_and_paths(&ls).unwrap();
        let other = leaf_hash(b"forged");
        assert_ne!(root_from_path(&other, 2, 5, &paths[2]), Some(root));
        assert_ne!(root_from_path(&ls[2], 3, 5, &paths[2]), Some(root));
        assert_eq!(root_from_path(&ls[2], 5, 5, &paths[2]), None, "index past the leaves");
        assert_eq!(root_from_path(&ls[2], 2, 3, &paths[2]), None, "a leaf count that does not fit the path");
        let mut long = paths[2].clone();
        long.push(other);
        assert_eq!(root_from_path(&ls[2], 2, 5, &long), None, "a path longer than the tree");
        assert_eq!(root_from_path(&ls[2], 2, 5, &paths[2][..1]), None, "a path shorter than the tree");
        let bad_len: Vec<Vec<u8>> = vec![vec![0u8; 31]; paths[2].len()];
        assert_eq!(root_from_path(&ls[2], 2, 5, &bad_len), None, "siblings of the wrong size");
    }

    #[test]
    fn an_inner_node_cannot_pass_for_a_leaf() {
        let ls = leaves(4);
        let (root, _) = root_and_paths(&ls).unwrap();
        // The left child of the root, presented as a one-leaf tree's leaf of a two-leaf tree.
        let left = node_hash(&ls[0], &ls[1]);
        let right = node_hash(&ls[2], &ls[3]);
        assert_eq!(node_hash(&left, &right), root);
        assert_ne!(leaf_hash(&[left, right].concat()), root);
    }
}

//! Beam search (in progress).

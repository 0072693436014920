//! Medusa decoding (in progress).

//! Draft-model speculative decoding (in progress).

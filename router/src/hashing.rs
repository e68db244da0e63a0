//! Stable 64-bit hashing: the same value on every node, every build and every Rust
//! version (std's `DefaultHasher` promises none of that), so that two routers agree on
//! where a session goes and the simulator's block hashes are reproducible.
//!
//! [`mix64`] is the SplitMix64 finalizer (Steele, Lea and Flood, "Fast splittable
//! pseudorandom number generators", OOPSLA 2014); [`hash_str`] is FNV-1a. They spread
//! keys well; they are not meant to resist an adversary choosing keys.

/// The SplitMix64 finalizer: a bijection on `u64` that spreads every input bit over the
/// output.
pub fn mix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes an ordered pair: `combine(a, b)` and `combine(b, a)` differ in general, so
/// chains (`combine(parent, child)`) keep their order.
pub fn combine(first: u64, second: u64) -> u64 {
    mix64(mix64(first) ^ second)
}

/// FNV-1a of a string's bytes, finished with [`mix64`].
pub fn hash_str(text: &str) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix64(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_stable_and_order_matters() {
        // Fixed values: a change here changes where every session is routed.
        assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(hash_str(""), mix64(0xCBF2_9CE4_8422_2325));
        assert_ne!(combine(1, 2), combine(2, 1));
        assert_ne!(hash_str("r1"), hash_str("r2"));
    }
}

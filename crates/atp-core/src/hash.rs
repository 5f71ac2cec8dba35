//! SKU → virtual shard routing.
//!
//! `shard_of(sku) = xxh3_64(utf-8 bytes of sku) % 1024`, with XXH3-64 at seed 0
//! (the default of every xxHash library, e.g. `xxhash.xxh3_64_intdigest(b)` in
//! Python or `XXH3_64bits(p, n)` in C). Clients in any language route the same
//! way; the test vectors below pin the function.

/// Number of virtual shards; fixed for the life of a deployment.
pub const SHARD_COUNT: u32 = 1024;

/// The virtual shard that owns `key` (a SKU, or a reservation id for its home).
pub fn shard_of(key: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(SHARD_COUNT)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vectors for other clients: (key, xxh3_64, shard), cross-checked with
    /// Python's `xxhash.xxh3_64_intdigest`.
    #[test]
    fn vectors() {
        let vectors: [(&str, u64, u32); 4] = [
            ("", 0x2d06800538d394c2, 194),
            ("a", 0xe6c632b61e964e1f, 543),
            ("sku-1", 0xde7c83fa11a4bfb7, 951),
            ("tee-ß-42", 0x13a0a32b4440a075, 117),
        ];
        for (key, hash, shard) in vectors {
            assert_eq!(xxhash_rust::xxh3::xxh3_64(key.as_bytes()), hash, "xxh3_64({key:?})");
            assert_eq!(shard_of(key), shard, "shard_of({key:?})");
        }
    }
}

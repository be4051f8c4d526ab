//! Feature hashing. This function is part of every trained model: serving re-hashes
//! raw values with it, so it must never change. A unit test pins its outputs.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The fixed xxh3 seed ("multigat" in ASCII).
pub const HASH_SEED: u64 = 0x6d75_6c74_6967_6174;

/// Row of the embedding table for `value` of `feature`: `xxh3("feature=value") % buckets`.
pub fn hash_bucket(feature: &str, value: &str, buckets: usize) -> u32 {
    let mut key = Vec::with_capacity(feature.len() + value.len() + 1);
    key.extend_from_slice(feature.as_bytes());
    key.push(b'=');
    key.extend_from_slice(value.as_bytes());
    (xxh3_64_with_seed(&key, HASH_SEED) % buckets.max(1) as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned() {
        // These values are part of the bundle format. If this test fails, the hash
        // changed and every trained model would silently look up the wrong rows.
        let full = xxh3_64_with_seed(b"site_id=1fbe01fe", HASH_SEED);
        assert_eq!(full, PINNED_SITE_ID);
        assert_eq!(hash_bucket("site_id", "1fbe01fe", 10_000), (PINNED_SITE_ID % 10_000) as u32);
        assert_eq!(hash_bucket("class_worker", "Private", 1000), PINNED_CLASS_WORKER);
    }

    // Cross-checked against the reference implementation (python-xxhash 3.x:
    // xxh3_64_intdigest(b"site_id=1fbe01fe", seed=HASH_SEED)).
    const PINNED_SITE_ID: u64 = 714_691_384_556_225_380;
    const PINNED_CLASS_WORKER: u32 = 173;
}

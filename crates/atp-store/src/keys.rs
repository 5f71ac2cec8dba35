//! Byte layout of every key and value the store writes.
//!
//! All integers are big-endian so that byte order is numeric order, which is
//! what makes a shard a key prefix and a time range a key range.
//!
//! | keyspace     | key                                   | value                     |
//! |--------------|---------------------------------------|---------------------------|
//! | meta         | `indexed`                             | log position indexed to   |
//! | ledger       | shard u16 ++ sequence u64             | postcard `LedgerEntry`    |
//! | ledger_index | `s` ++ len u16 ++ sku ++ suffix       | location bytes            |
//! | ledger_index | `l` ++ len u16 ++ location ++ suffix  | empty                     |
//! | ledger_index | `c` ++ len u16 ++ cause ++ suffix     | postcard (sku, location)  |
//!
//! where suffix = at_ms (sign bit flipped, so negative times sort first) ++
//! shard u16 ++ sequence u64. The length prefix makes a value's prefix
//! unambiguous without assuming anything about the bytes of ids. Index values
//! carry what a query's secondary filters need, so a query reads the primary
//! entry only of the index entries it returns.
//!
//! There is no time index: a shard's clock never goes back, so its ledger in
//! sequence order is in time order, and the retention sweep walks each
//! shard's oldest entries in the primary keyspace.

use atp_core::hash::SHARD_COUNT;
use atp_core::ledger::LedgerEntry;

use crate::StoreError;

/// Bytes of the (at_ms, shard, sequence) suffix of every index key.
pub(crate) const SUFFIX_BYTES: usize = 8 + 2 + 8;

/// Version byte in front of a page token, so the format can change.
const TOKEN_VERSION: u8 = 1;

/// The two-byte key prefix of `shard`.
///
/// Shards are numbered below [`SHARD_COUNT`]; anything else is a bug in the
/// caller, not input.
pub(crate) fn shard_prefix(shard: u32) -> [u8; 2] {
    assert!(shard < SHARD_COUNT, "shard {shard} is out of range (fewer than {SHARD_COUNT})");
    u16::try_from(shard).expect("SHARD_COUNT fits in u16").to_be_bytes()
}

/// The primary ledger key of entry `sequence` of `shard`.
pub(crate) fn ledger_key(shard: [u8; 2], sequence: u64) -> [u8; 10] {
    let mut key = [0; 10];
    key[..2].copy_from_slice(&shard);
    key[2..].copy_from_slice(&sequence.to_be_bytes());
    key
}

/// `at_ms` as bytes whose order is the order of the times.
fn time_bytes(at_ms: i64) -> [u8; 8] {
    // Flipping the sign bit maps i64::MIN..=i64::MAX onto 0..=u64::MAX in order.
    ((at_ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from_bytes(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// Which ledger index a key belongs to (its first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Index {
    /// By sku.
    Sku,
    /// By location.
    Location,
    /// By cause (reservation or event id).
    Cause,
}

impl Index {
    fn tag(self) -> u8 {
        match self {
            Self::Sku => b's',
            Self::Location => b'l',
            Self::Cause => b'c',
        }
    }
}

/// The key prefix of the entries of `index` with `value`; `None` if `value`
/// is too long to be an id at all.
pub(crate) fn index_prefix(index: Index, value: &str) -> Option<Vec<u8>> {
    let length = u16::try_from(value.len()).ok()?;
    let mut prefix = Vec::with_capacity(3 + value.len() + SUFFIX_BYTES);
    prefix.push(index.tag());
    prefix.extend_from_slice(&length.to_be_bytes());
    prefix.extend_from_slice(value.as_bytes());
    Some(prefix)
}

/// The part of an index key after its prefix: where the entry is in time and
/// in the primary keyspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Suffix {
    /// The entry's time.
    pub(crate) at_ms: i64,
    /// The entry's shard prefix.
    pub(crate) shard: [u8; 2],
    /// The entry's sequence.
    pub(crate) sequence: u64,
}

impl Suffix {
    /// The smallest suffix at `at_ms`.
    pub(crate) fn at(at_ms: i64) -> Self {
        Self { at_ms, shard: [0; 2], sequence: 0 }
    }

    /// The largest suffix there is.
    pub(crate) fn max() -> Self {
        Self { at_ms: i64::MAX, shard: [0xFF; 2], sequence: u64::MAX }
    }

    /// The suffix of `entry` of `shard`.
    pub(crate) fn of(shard: [u8; 2], entry: &LedgerEntry) -> Self {
        Self { at_ms: entry.at_ms, shard, sequence: entry.sequence }
    }

    pub(crate) fn to_bytes(self) -> [u8; SUFFIX_BYTES] {
        let mut bytes = [0; SUFFIX_BYTES];
        bytes[..8].copy_from_slice(&time_bytes(self.at_ms));
        bytes[8..10].copy_from_slice(&self.shard);
        bytes[10..].copy_from_slice(&self.sequence.to_be_bytes());
        bytes
    }

    /// The suffix at the end of index key `key`.
    pub(crate) fn from_key(key: &[u8]) -> Result<Self, StoreError> {
        let Some((_, bytes)) = key.split_last_chunk::<SUFFIX_BYTES>() else {
            return Err(StoreError::Corrupt(format!("index key of {} bytes", key.len())));
        };
        Ok(Self::from_bytes(bytes))
    }

    fn from_bytes(bytes: &[u8; SUFFIX_BYTES]) -> Self {
        let (time, rest) = bytes.split_first_chunk::<8>().expect("18 > 8");
        let (shard, sequence) = rest.split_first_chunk::<2>().expect("10 > 2");
        let sequence: [u8; 8] = sequence.try_into().expect("10 - 2 = 8");
        Self {
            at_ms: time_from_bytes(*time),
            shard: *shard,
            sequence: u64::from_be_bytes(sequence),
        }
    }

    /// The primary ledger key of the entry.
    pub(crate) fn ledger_key(self) -> [u8; 10] {
        ledger_key(self.shard, self.sequence)
    }

    /// An opaque page token that resumes after this suffix.
    pub(crate) fn to_token(self) -> Vec<u8> {
        let mut token = Vec::with_capacity(1 + SUFFIX_BYTES);
        token.push(TOKEN_VERSION);
        token.extend_from_slice(&self.to_bytes());
        token
    }

    /// The suffix a page token was made from.
    pub(crate) fn from_token(token: &[u8]) -> Result<Self, StoreError> {
        let invalid = || StoreError::InvalidQuery {
            field: "page_token",
            message: "is not a token this store returned".to_owned(),
        };
        let Some((&TOKEN_VERSION, bytes)) = token.split_first() else { return Err(invalid()) };
        let bytes: &[u8; SUFFIX_BYTES] = bytes.try_into().map_err(|_| invalid())?;
        Ok(Self::from_bytes(bytes))
    }
}

/// `prefix ++ suffix` (reusing the prefix's allocation, sized for this).
pub(crate) fn index_key(mut prefix: Vec<u8>, suffix: Suffix) -> Vec<u8> {
    prefix.extend_from_slice(&suffix.to_bytes());
    prefix
}

/// The index entries of `entry` of `shard`, as (key, value).
pub(crate) fn index_entries(shard: [u8; 2], entry: &LedgerEntry) -> [(Vec<u8>, Vec<u8>); 3] {
    let [by_sku, by_location, by_cause] = index_keys(shard, entry);
    let (sku, location) = (entry.sku.as_str(), entry.location.as_str());
    [
        (by_sku, location.as_bytes().to_vec()),
        (by_location, Vec::new()),
        (by_cause, encode(&(sku, location))),
    ]
}

/// The index keys of `entry` of `shard`: by sku, by location, by cause.
pub(crate) fn index_keys(shard: [u8; 2], entry: &LedgerEntry) -> [Vec<u8>; 3] {
    let suffix = Suffix::of(shard, entry);
    let key = |index, value| {
        let prefix = index_prefix(index, value).expect("ids in ledger entries are short");
        index_key(prefix, suffix)
    };
    [
        key(Index::Sku, entry.sku.as_str()),
        key(Index::Location, entry.location.as_str()),
        key(Index::Cause, &entry.cause),
    ]
}

/// Postcard encoding of something that always encodes.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding into a Vec cannot fail")
}

/// Postcard decoding of stored bytes.
pub(crate) fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|error| StoreError::Corrupt(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bytes_sort_like_times() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(time_bytes(pair[0]) < time_bytes(pair[1]), "{pair:?}");
        }
        for time in times {
            assert_eq!(time_from_bytes(time_bytes(time)), time);
        }
    }

    #[test]
    fn suffix_and_token_round_trip() {
        let suffix = Suffix { at_ms: -42, shard: [3, 255], sequence: 7 };
        assert_eq!(Suffix::from_key(&index_key(b"s\0\x01x".to_vec(), suffix)).unwrap(), suffix);
        assert_eq!(Suffix::from_token(&suffix.to_token()).unwrap(), suffix);
        assert!(Suffix::from_token(b"").is_err());
        assert!(Suffix::from_token(&[TOKEN_VERSION; 5]).is_err());
        let mut wrong_version = suffix.to_token();
        wrong_version[0] = 9;
        assert!(Suffix::from_token(&wrong_version).is_err());
    }

    #[test]
    fn prefixes_of_different_values_never_nest() {
        let short = index_prefix(Index::Sku, "ab").unwrap();
        let long = index_prefix(Index::Sku, "abc").unwrap();
        assert!(!long.starts_with(&short));
        assert!(index_prefix(Index::Sku, &"x".repeat(70_000)).is_none());
    }
}

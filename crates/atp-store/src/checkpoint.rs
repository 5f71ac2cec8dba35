//! A shard's checkpoint: every record of its state at a batch boundary, and
//! the sequence of the last batch it includes.
//!
//! ```text
//! file = "ATPCKPT1" format:u16 shard:u32 epoch:u64 sequence:u64
//!        count:varint (key:bytes value:bytes)* checksum:u64      (LE; xxh3_64 of all before it)
//! ```
//!
//! A checkpoint replaces the previous one atomically (write, fdatasync,
//! rename, fsync the directory), so a crash leaves one whole file. One that
//! fails its checksum is corruption: the store refuses to open naming it.

use crate::codec::{Reader, checksum, numbered_file, put_bytes, put_varint};

const MAGIC: &[u8; 8] = b"ATPCKPT1";
/// Version of the checkpoint layout.
pub const CHECKPOINT_FORMAT_VERSION: u16 = 1;

/// One shard's state as of a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The shard.
    pub shard: u32,
    /// Its epoch.
    pub epoch: u64,
    /// The sequence of the last batch included (0: none).
    pub sequence: u64,
    /// Every record, in key order.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Bytes of the fixed header: magic, version, shard, epoch, sequence.
pub(crate) const HEADER_BYTES: usize = 8 + 2 + 4 + 8 + 8;

/// The sequence in a checkpoint's header (unverified: the checksum covers
/// the whole file; `decode` checks it).
pub(crate) fn header_sequence(head: &[u8]) -> Option<u64> {
    let bytes = head.get(HEADER_BYTES - 8..HEADER_BYTES)?;
    Some(u64::from_le_bytes(bytes.try_into().expect("eight bytes")))
}

/// The file name of `shard`'s checkpoint in the checkpoint directory.
pub(crate) fn checkpoint_name(shard: u32) -> String {
    format!("{shard:04}.ckpt")
}

/// The shard of a checkpoint file name.
pub(crate) fn checkpoint_shard(name: &str) -> Option<u32> {
    numbered_file(name, 4, ".ckpt").and_then(|shard| u32::try_from(shard).ok())
}

/// The file's bytes.
/// The checkpoint file's bytes (also how a planned handoff ships a shard).
pub fn encode(checkpoint: &Checkpoint) -> Vec<u8> {
    let size: usize = checkpoint.records.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(40 + size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&CHECKPOINT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&checkpoint.shard.to_le_bytes());
    out.extend_from_slice(&checkpoint.epoch.to_le_bytes());
    out.extend_from_slice(&checkpoint.sequence.to_le_bytes());
    put_varint(&mut out, checkpoint.records.len() as u64);
    for (key, value) in &checkpoint.records {
        put_bytes(&mut out, key);
        put_bytes(&mut out, value);
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Reads a checkpoint file; any damage is an error saying where.
/// A checkpoint from its file's bytes, verified.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    let Some(body_len) = bytes.len().checked_sub(8) else {
        return Err(format!("{} bytes is too short for a checkpoint", bytes.len()));
    };
    let (body, sum) = bytes.split_at(body_len);
    let sum = u64::from_le_bytes(sum.try_into().expect("eight bytes"));
    let mut reader = Reader::new(body);
    let magic = reader.take(8)?;
    if magic != MAGIC {
        return Err("not a checkpoint: bad magic (offset 0)".to_owned());
    }
    let version = reader.u16()?;
    if version != CHECKPOINT_FORMAT_VERSION {
        return Err(format!(
            "checkpoint format version {version}; this atpd reads version \
             {CHECKPOINT_FORMAT_VERSION} (offset 8)"
        ));
    }
    if checksum(body) != sum {
        return Err(format!("checksum mismatch (offset {body_len})"));
    }
    let shard = reader.u32()?;
    let epoch = reader.u64()?;
    let sequence = reader.u64()?;
    let count = reader.count()?;
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let key = reader.bytes()?.to_vec();
        let value = reader.bytes()?.to_vec();
        records.push((key, value));
    }
    if !reader.is_empty() {
        return Err("bytes after the last record".to_owned());
    }
    Ok(Checkpoint { shard, epoch, sequence, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let checkpoint = Checkpoint {
            shard: 5,
            epoch: 2,
            sequence: 77,
            records: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())],
        };
        let bytes = encode(&checkpoint);
        assert_eq!(decode(&bytes), Ok(checkpoint));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(decode(&damaged).is_err(), "a flipped byte at {at} was accepted");
            assert!(decode(&bytes[..at]).is_err(), "a cut at {at} was accepted");
        }
        assert_eq!(checkpoint_shard(&checkpoint_name(5)), Some(5));
    }
}

//! The node's log: one record per shard batch, appended in groups (one write
//! and one fdatasync per group), in numbered segment files.
//!
//! ```text
//! segment  = header record*
//! header   = "ATPLOG" format:u16 segment:u64                (16 bytes, LE)
//! record   = length:u32 checksum:u64 body                   (LE; checksum = xxh3_64(body))
//! body     = version:u8 shard:u32 epoch:u64 sequence:u64
//!            records_len:varint records ledger
//! records  = count:varint (key:bytes flag:u8 [value:bytes])*  (flag 1 = put, 0 = delete)
//! ledger   = count:varint (entry:bytes)*                    (postcard LedgerEntry)
//! bytes    = length:varint byte*
//! ```
//!
//! Reading a segment stops at the first record that is not whole and valid.
//! If nothing valid follows it (no later offset of the segment starts a valid
//! record, and no later segment exists), it is a **torn tail** — the write of
//! the last group was cut by a crash, and nothing of it was acknowledged —
//! and the segment is truncated there. Otherwise it is **corruption**: the
//! store refuses to open, naming the file and offset. Nothing is skipped
//! silently.

use atp_core::ledger::LedgerEntry;

use crate::ShardBatch;
use crate::codec::{
    Reader, bytes_len, checksum, numbered_file, put_bytes, put_framed, put_varint, varint_len,
};

/// Magic bytes at the start of every segment.
const MAGIC: &[u8; 6] = b"ATPLOG";
/// Version of the segment layout (the header).
pub const LOG_FORMAT_VERSION: u16 = 1;
/// Version of a record's body layout.
pub const RECORD_VERSION: u8 = 1;
/// Bytes of a segment header.
pub const HEADER_BYTES: u64 = 16;
/// Bytes in front of a record's body (length + checksum).
const FRAME_BYTES: usize = 4 + 8;
/// Smallest possible body: version, shard, epoch, sequence, three empty varints.
const MIN_BODY_BYTES: usize = 1 + 4 + 8 + 8 + 3;
/// Largest record body accepted (a bigger length is corruption).
pub const MAX_RECORD_BYTES: usize = 1 << 30;

/// A position in the log: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    /// The segment number.
    pub segment: u64,
    /// Bytes from the segment's start.
    pub offset: u64,
}

/// The file name of segment `id` inside the log directory.
pub(crate) fn segment_name(id: u64) -> String {
    format!("{id:020}.log")
}

/// The segment number of a file name, if it is a segment.
pub(crate) fn segment_id(name: &str) -> Option<u64> {
    numbered_file(name, 20, ".log")
}

/// The header of segment `id`.
pub(crate) fn header(id: u64) -> [u8; HEADER_BYTES as usize] {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[..6].copy_from_slice(MAGIC);
    header[6..8].copy_from_slice(&LOG_FORMAT_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&id.to_le_bytes());
    header
}

/// Appends `batch` as one framed record.
pub(crate) fn encode_record(batch: &ShardBatch, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_BYTES]);
    let body_start = out.len();
    out.push(RECORD_VERSION);
    out.extend_from_slice(&batch.shard.to_le_bytes());
    out.extend_from_slice(&batch.epoch.to_le_bytes());
    out.extend_from_slice(&batch.sequence.to_le_bytes());
    // Keys, values and ledger entries are written once, straight into `out`
    // (no intermediate buffers): the records section's length is computed
    // first, each ledger entry's length is patched in after it is encoded.
    let records_len = varint_len(batch.records.len() as u64)
        + batch
            .records
            .iter()
            .map(|(key, value)| {
                bytes_len(key) + 1 + value.as_ref().map_or(0, |value| bytes_len(value))
            })
            .sum::<usize>();
    put_varint(out, records_len as u64);
    put_varint(out, batch.records.len() as u64);
    for (key, value) in &batch.records {
        put_bytes(out, key);
        match value {
            Some(value) => {
                out.push(1);
                put_bytes(out, value);
            }
            None => out.push(0),
        }
    }
    put_varint(out, batch.ledger.len() as u64);
    for entry in &batch.ledger {
        put_framed(out, |out| {
            let taken = std::mem::take(out);
            *out = postcard::to_extend(entry, taken).expect("a ledger entry always encodes");
        });
    }
    let body_len = out.len() - body_start;
    assert!(
        body_len <= MAX_RECORD_BYTES,
        "a shard batch of {body_len} bytes exceeds the record limit"
    );
    let sum = checksum(&out[body_start..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + FRAME_BYTES].copy_from_slice(&sum.to_le_bytes());
}

/// A record's fixed fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHead {
    /// The shard.
    pub shard: u32,
    /// Its epoch when the batch was applied.
    pub epoch: u64,
    /// The shard's batch sequence number (from 1, gap-free per shard).
    pub sequence: u64,
}

/// A record's body, split but not decoded further.
pub(crate) struct Body<'a> {
    pub(crate) head: RecordHead,
    records: &'a [u8],
    ledger: &'a [u8],
}

/// Splits a body whose checksum was verified.
pub(crate) fn split_body(body: &[u8]) -> Result<Body<'_>, String> {
    let mut reader = Reader::new(body);
    let version = reader.u8()?;
    if version != RECORD_VERSION {
        return Err(format!("record version {version}; this atpd reads version {RECORD_VERSION}"));
    }
    let head = RecordHead { shard: reader.u32()?, epoch: reader.u64()?, sequence: reader.u64()? };
    let records = reader.bytes()?;
    let ledger = reader.rest();
    Ok(Body { head, records, ledger })
}

/// Record writes of a body: (key, Some(value)) puts, (key, None) deletes.
pub(crate) type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl Body<'_> {
    /// The records section, decoded.
    pub(crate) fn records(&self) -> Result<Writes, String> {
        let mut reader = Reader::new(self.records);
        let count = reader.count()?;
        let mut writes = Vec::with_capacity(count);
        for _ in 0..count {
            let key = reader.bytes()?.to_vec();
            let value = match reader.u8()? {
                1 => Some(reader.bytes()?.to_vec()),
                0 => None,
                flag => return Err(format!("record flag {flag}")),
            };
            writes.push((key, value));
        }
        if !reader.is_empty() {
            return Err("bytes after the records".to_owned());
        }
        Ok(writes)
    }

    /// The ledger section, decoded.
    pub(crate) fn ledger(&self) -> Result<Vec<LedgerEntry>, String> {
        let mut reader = Reader::new(self.ledger);
        let count = reader.count()?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let bytes = reader.bytes()?;
            entries.push(postcard::from_bytes(bytes).map_err(|error| error.to_string())?);
        }
        if !reader.is_empty() {
            return Err("bytes after the ledger".to_owned());
        }
        Ok(entries)
    }

    /// Both sections decoded, as the batch that was written.
    pub(crate) fn batch(&self) -> Result<ShardBatch, String> {
        Ok(ShardBatch {
            shard: self.head.shard,
            epoch: self.head.epoch,
            sequence: self.head.sequence,
            records: self.records()?,
            ledger: self.ledger()?,
        })
    }
}

/// A whole, valid record found in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    /// Offset of the record's frame in the segment.
    pub(crate) offset: usize,
    /// Offset just after it.
    pub(crate) end: usize,
}

impl Found {
    pub(crate) fn body<'a>(&self, segment: &'a [u8]) -> &'a [u8] {
        &segment[self.offset + FRAME_BYTES..self.end]
    }
}

/// The valid record at `offset`, if one starts there.
pub(crate) fn record_at(segment: &[u8], offset: usize) -> Option<Found> {
    let frame = segment.get(offset..offset.checked_add(FRAME_BYTES)?)?;
    let len = u32::from_le_bytes(frame[..4].try_into().expect("four bytes")) as usize;
    if !(MIN_BODY_BYTES..=MAX_RECORD_BYTES).contains(&len) {
        return None;
    }
    let sum = u64::from_le_bytes(frame[4..].try_into().expect("eight bytes"));
    let body_start = offset + FRAME_BYTES;
    let body = segment.get(body_start..body_start.checked_add(len)?)?;
    // Cheap checks before the checksum: the search for a valid record after
    // a bad one tries every offset, and most fail here.
    let shard = u32::from_le_bytes(body[1..5].try_into().expect("four bytes"));
    if body[0] != RECORD_VERSION || shard >= atp_core::hash::SHARD_COUNT {
        return None;
    }
    if checksum(body) != sum || split_body(body).is_err() {
        return None;
    }
    Some(Found { offset, end: body_start + len })
}

/// How a segment ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every byte belongs to a valid record.
    Clean,
    /// Bytes from `offset` on are not a valid record and nothing valid follows.
    Torn {
        /// Where the valid part ends.
        offset: usize,
    },
    /// A bad record at `offset` with a valid one after it.
    Corrupt {
        /// Where the bad record starts.
        offset: usize,
    },
}

/// The records of one segment's bytes and how it ends. `id` must match the
/// header's segment number.
pub(crate) fn scan_segment(segment: &[u8], id: u64) -> Result<(Vec<Found>, Ending), String> {
    let header_len = HEADER_BYTES as usize;
    if segment.len() < header_len {
        // A header cut by a crash right after the segment was started.
        let prefix = &header(id)[..segment.len()];
        return if segment == prefix {
            Ok((Vec::new(), Ending::Torn { offset: 0 }))
        } else {
            Err("the segment header is damaged (offset 0)".to_owned())
        };
    }
    if &segment[..6] != MAGIC {
        return Err("not a log segment: bad magic (offset 0)".to_owned());
    }
    let version = u16::from_le_bytes([segment[6], segment[7]]);
    if version != LOG_FORMAT_VERSION {
        return Err(format!(
            "log format version {version}; this atpd reads version {LOG_FORMAT_VERSION} (offset 6)"
        ));
    }
    let stored_id = u64::from_le_bytes(segment[8..16].try_into().expect("eight bytes"));
    if stored_id != id {
        return Err(format!("the header names segment {stored_id} (offset 8)"));
    }
    let mut found = Vec::new();
    let mut offset = header_len;
    while offset < segment.len() {
        match record_at(segment, offset) {
            Some(record) => {
                offset = record.end;
                found.push(record);
            }
            None => {
                let valid_after =
                    (offset + 1..segment.len()).any(|at| record_at(segment, at).is_some());
                let ending =
                    if valid_after { Ending::Corrupt { offset } } else { Ending::Torn { offset } };
                return Ok((found, ending));
            }
        }
    }
    Ok((found, Ending::Clean))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(shard: u32, sequence: u64) -> ShardBatch {
        ShardBatch {
            shard,
            epoch: 1,
            sequence,
            records: vec![(b"pkey".to_vec(), Some(vec![1, 2, 3])), (b"hgone".to_vec(), None)],
            ledger: Vec::new(),
        }
    }

    #[test]
    fn records_round_trip() {
        let mut segment = header(7).to_vec();
        encode_record(&batch(3, 1), &mut segment);
        encode_record(&batch(4, 9), &mut segment);
        let (found, ending) = scan_segment(&segment, 7).expect("a valid segment");
        assert_eq!(ending, Ending::Clean);
        assert_eq!(found.len(), 2);
        let body = split_body(found[1].body(&segment)).expect("a valid body");
        assert_eq!(body.head, RecordHead { shard: 4, epoch: 1, sequence: 9 });
        assert_eq!(body.batch().expect("decodes").records, batch(4, 9).records);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_id(&segment_name(42)), Some(42));
        assert_eq!(segment_id("00000000000000000042.tmp"), None);
        assert_eq!(segment_id("42.log"), None);
    }
}

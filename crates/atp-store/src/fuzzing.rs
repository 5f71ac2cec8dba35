//! The log-segment and checkpoint readers and writers, and the properties
//! the fuzz target (`crates/atp-store/fuzz`) and the randomized format test
//! (`tests/fuzz.rs`) check on arbitrary bytes. Not part of the store's API.
//!
//! The properties: the readers never panic, and whatever they accept
//! re-encodes to exactly the bytes they accepted — so a damaged record or
//! checkpoint is never taken for a valid one (short of an xxh3 collision).
//! [`check`] panics when one fails: it is a test harness.

pub use crate::log::Ending;
use crate::log::HEADER_BYTES;
use crate::{Checkpoint, ShardBatch};

/// Every batch of a segment's bytes (`id` = the segment number its header
/// must name), and how the segment ends. `Err` for a damaged header or a
/// checksummed record that does not decode.
pub fn read_segment(bytes: &[u8], id: u64) -> Result<(Vec<ShardBatch>, Ending), String> {
    let (found, ending) = crate::log::scan_segment(bytes, id)?;
    let mut batches = Vec::with_capacity(found.len());
    for record in found {
        batches.push(crate::log::split_body(record.body(bytes))?.batch()?);
    }
    Ok((batches, ending))
}

/// A checkpoint file's content, or why it is damaged.
pub fn read_checkpoint(bytes: &[u8]) -> Result<Checkpoint, String> {
    crate::checkpoint::decode(bytes)
}

/// Segment `id` holding `batches`, as the store writes it.
pub fn encode_segment(id: u64, batches: &[ShardBatch]) -> Vec<u8> {
    let mut out = crate::log::header(id).to_vec();
    for batch in batches {
        crate::log::encode_record(batch, &mut out);
    }
    out
}

/// A checkpoint file's bytes.
pub fn encode_checkpoint(checkpoint: &Checkpoint) -> Vec<u8> {
    crate::checkpoint::encode(checkpoint)
}

/// Reads `bytes` as segment `id`: what is accepted must be exactly the
/// encoding of the batches returned.
pub fn check_segment(bytes: &[u8], id: u64) {
    let Ok((batches, ending)) = read_segment(bytes, id) else { return };
    let end = match ending {
        Ending::Clean => bytes.len(),
        Ending::Torn { offset } | Ending::Corrupt { offset } => offset,
    };
    if (end as u64) < HEADER_BYTES {
        assert!(batches.is_empty(), "records accepted from a segment without a header");
        return;
    }
    assert!(
        encode_segment(id, &batches) == bytes[..end],
        "the reader accepted {end} bytes that are not the encoding of what it returned"
    );
}

/// Reads `bytes` as a checkpoint: one accepted must re-encode to `bytes`.
pub fn check_checkpoint(bytes: &[u8]) {
    if let Ok(checkpoint) = read_checkpoint(bytes) {
        assert!(
            encode_checkpoint(&checkpoint) == bytes,
            "the reader accepted a checkpoint that does not re-encode to its bytes"
        );
    }
}

/// Batches built from arbitrary bytes (for valid encodings to mutate).
fn batches_from(data: &[u8]) -> Vec<ShardBatch> {
    data.chunks(23)
        .enumerate()
        .map(|(index, chunk)| {
            let first = u32::from(chunk[0]);
            let (key, value) = chunk.split_at(chunk.len() / 2);
            ShardBatch {
                shard: first,
                epoch: u64::from(first >> 4),
                sequence: index as u64 + 1,
                records: vec![
                    (key.to_vec(), Some(value.to_vec())),
                    (value.to_vec(), (first % 2 == 0).then(Vec::new)),
                ],
                ledger: Vec::new(),
            }
        })
        .collect()
}

/// A mutation of `bytes` chosen by `how`: flip, cut, or splice.
fn mutate(bytes: &[u8], how: &[u8]) -> Vec<u8> {
    let mut mutated = bytes.to_vec();
    if mutated.is_empty() {
        return mutated;
    }
    let pick = |at: usize| -> usize {
        let b = |i: usize| usize::from(how.get(at + i).copied().unwrap_or(0));
        (b(0) | b(1) << 8 | b(2) << 16) % bytes.len()
    };
    match how.first().copied().unwrap_or(0) % 4 {
        0 => mutated[pick(1)] ^= how.get(4).copied().unwrap_or(1).max(1),
        1 => mutated.truncate(pick(1)),
        2 => {
            // Splice: a copy of one range over another.
            let (from, to) = (pick(1), pick(4));
            let len = (bytes.len() - from).min(bytes.len() - to).min(pick(7) + 1);
            mutated[to..to + len].copy_from_slice(&bytes[from..from + len]);
        }
        _ => {
            let at = pick(1);
            mutated.insert(at, how.get(4).copied().unwrap_or(0));
        }
    }
    mutated
}

/// The fuzz target's body: the first byte picks what `data` is fed to.
pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let header_id = |bytes: &[u8]| {
        bytes.get(8..16).map_or(1, |id| u64::from_le_bytes(id.try_into().expect("eight bytes")))
    };
    match mode % 4 {
        0 => check_segment(rest, header_id(rest)),
        1 => check_checkpoint(rest),
        2 => {
            // A valid segment built from the input, then damaged.
            let (how, content) = rest.split_at(rest.len().min(10));
            let batches = batches_from(content);
            let segment = encode_segment(7, &batches);
            let read = read_segment(&segment, 7).expect("a valid segment reads");
            assert!(read == (batches, Ending::Clean), "a valid segment read back differently");
            check_segment(&mutate(&segment, how), 7);
        }
        _ => {
            let (how, content) = rest.split_at(rest.len().min(10));
            let checkpoint = Checkpoint {
                shard: u32::from(content.first().copied().unwrap_or(0)),
                epoch: 3,
                sequence: content.len() as u64,
                records: content
                    .chunks(9)
                    .map(|chunk| (chunk[..chunk.len() / 2].to_vec(), chunk.to_vec()))
                    .collect(),
            };
            let bytes = encode_checkpoint(&checkpoint);
            assert!(read_checkpoint(&bytes) == Ok(checkpoint), "a valid checkpoint read back");
            check_checkpoint(&mutate(&bytes, how));
        }
    }
}

//! The fuzz target's properties (`atp_store::fuzzing::check`) over seeded
//! random inputs, so every `cargo test` runs them: arbitrary bytes, bytes
//! behind a valid segment header, and valid segments and checkpoints that are
//! bit-flipped, cut, spliced or grown. The coverage-guided run is
//! `crates/atp-store/fuzz` (`cargo fuzz run formats`).

use atp_store::fuzzing::{self, encode_segment};
use atp_store::{Checkpoint, ShardBatch};

/// Inputs per run; each is short, so this takes about ten seconds unoptimized.
const INPUTS: u64 = 1_000_000;

/// A seeded generator (fastrand's), with the few draws the inputs need.
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.u64(..)
    }

    fn below(&mut self, bound: u64) -> usize {
        self.0.usize(..bound.max(1) as usize)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// `min` and up to `extra - 1` more random bytes.
    fn some(&mut self, min: usize, extra: u64) -> Vec<u8> {
        let len = min + self.below(extra);
        self.bytes(len)
    }
}

fn segment(rng: &mut Rng) -> Vec<u8> {
    let batches: Vec<ShardBatch> = (0..1 + rng.below(4))
        .map(|index| ShardBatch {
            shard: rng.below(1024) as u32,
            epoch: rng.below(3) as u64,
            sequence: index as u64 + 1,
            records: (0..rng.below(3))
                .map(|_| {
                    let key = rng.some(1, 8);
                    let value = if rng.below(3) != 0 { Some(rng.some(0, 12)) } else { None };
                    (key, value)
                })
                .collect(),
            ledger: Vec::new(),
        })
        .collect();
    encode_segment(5, &batches)
}

fn checkpoint(rng: &mut Rng) -> Vec<u8> {
    fuzzing::encode_checkpoint(&Checkpoint {
        shard: rng.below(1024) as u32,
        epoch: 1,
        sequence: rng.below(100) as u64,
        records: (0..rng.below(4)).map(|_| (rng.some(0, 6), rng.some(0, 9))).collect(),
    })
}

/// Damages `bytes` one to three times.
fn damage(rng: &mut Rng, mut bytes: Vec<u8>, donor: &[u8]) -> Vec<u8> {
    for _ in 0..1 + rng.below(3) {
        let len = bytes.len() as u64;
        match rng.below(5) {
            0 if len > 0 => {
                let at = rng.below(len);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 => bytes.truncate(rng.below(len + 1)),
            2 if !donor.is_empty() => {
                // Splice: a piece of another valid encoding.
                let from = rng.below(donor.len() as u64);
                let piece = &donor[from..from + rng.below((donor.len() - from) as u64 + 1)];
                let at = rng.below(len + 1);
                bytes.splice(at..at, piece.iter().copied());
            }
            3 if len > 0 => {
                let at = rng.below(len);
                bytes[at] = rng.next() as u8;
            }
            _ => {
                let extra = rng.some(0, 16);
                bytes.extend(extra);
            }
        }
    }
    bytes
}

#[test]
fn the_readers_accept_nothing_damaged_and_never_panic() {
    let mut rng = Rng::new(0x5EED_F00D);
    for _ in 0..INPUTS {
        let (mode, bytes) = match rng.below(6) {
            0 => (0, rng.some(0, 64)),
            1 => {
                let mut bytes = encode_segment(5, &[]);
                let tail = rng.some(0, 64);
                bytes.extend(tail);
                (0, bytes)
            }
            2 | 3 => {
                let (valid, donor) = (segment(&mut rng), segment(&mut rng));
                (0, damage(&mut rng, valid, &donor))
            }
            4 => {
                let (valid, donor) = (checkpoint(&mut rng), checkpoint(&mut rng));
                (1, damage(&mut rng, valid, &donor))
            }
            _ => (2 + rng.below(2) as u8, rng.some(0, 80)),
        };
        let mut input = vec![mode];
        input.extend(bytes);
        fuzzing::check(&input);
    }
}

#[test]
fn whole_records_before_a_damaged_one_are_kept_and_nothing_after() {
    let mut rng = Rng::new(7);
    for _ in 0..2_000 {
        let valid = segment(&mut rng);
        let (batches, _) = fuzzing::read_segment(&valid, 5).expect("a valid segment");
        let at = 16 + rng.below(valid.len() as u64 - 16);
        let mut damaged = valid.clone();
        damaged[at] ^= 1 << rng.below(8);
        let (kept, ending) = fuzzing::read_segment(&damaged, 5).expect("the header is intact");
        assert!(kept.len() < batches.len(), "a flipped byte at {at} went unnoticed");
        assert_eq!(kept, batches[..kept.len()]);
        assert_ne!(ending, fuzzing::Ending::Clean);
    }
}

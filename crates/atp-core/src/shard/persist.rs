//! A shard's state as store records: what changed in a batch
//! ([`ShardState::drain_changes`]) and the state rebuilt from every record
//! ([`ShardState::restore`]).
//!
//! Keys are a tag byte and an id: `p`+sku → the SKU's positions, `r`+id → a
//! reservation record (home side), `h`+id → line holds, `e`+id → a stock event
//! memo, `d`+sku → the SKU's observed demand per channel (issue 13), `m` →
//! sequences and clock. Values are postcard; a record or hold
//! value may be followed by [`Extra`]s, fields added after its layout was
//! fixed (data written before has none, so it still loads). A reservation still
//! being created (PENDING) is never written: if the node dies before the
//! Reserve finishes, recovery finds its line holds without a record and
//! rebuilds the record from them if every line shard holds it, else releases
//! them (see [`super::recover`] and `docs/PROTOCOL.md`).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Deadline, PositionState, ShardSettings, ShardState, home, lines, stock};
use crate::ids::{EventId, ReservationId, Sku};
use crate::ledger::LedgerEntry;
use crate::location_map::LocationMap;
use crate::reservation::{Metadata, ReservationState};

const META: u8 = b'm';

/// How far a restored shard's operation sequence jumps: more operations
/// than a process can perform between two durable batches of a shard.
pub const RESTART_GAP: u64 = 1 << 32;
const POSITIONS: u8 = b'p';
const RECORD: u8 = b'r';
const HOLDS: u8 = b'h';
const EVENT: u8 = b'e';
const DEMAND: u8 = b'd';

/// Sequences and clock of a shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    ledger_sequence: u64,
    applied_sequence: u64,
    clock_ms: i64,
}

/// What one batch changed, ready for the store.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Records to write (`Some`) or delete (`None`).
    pub records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// New ledger entries, in sequence order.
    pub ledger: Vec<LedgerEntry>,
    /// SKUs whose positions changed (to publish to a read view).
    pub skus: Vec<Sku>,
}

impl Changes {
    /// True when nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.ledger.is_empty()
    }
}

/// A stored record could not be read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("shard {shard}: record {key:?}: {message}")]
pub struct RestoreError {
    /// The shard.
    pub shard: u32,
    /// The record's key (lossy text).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn key(tag: u8, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(tag);
    key.extend_from_slice(id.as_bytes());
    key
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("in-memory state always encodes")
}

/// A field added to a stored value after its postcard layout was fixed:
/// written after the value as a postcard list, only when there is one, so
/// values without extras are byte for byte what older versions wrote, and
/// their values (no trailing bytes) load with every extra at its default.
/// New kinds of extra are new variants at the end (never reordered).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Extra {
    /// The reservation's caller data ([`crate::reservation::ReserveRequest::metadata`]).
    Metadata(Metadata),
    /// A record's latest Extend keyed by a request id.
    KeyedExtend(home::KeyedExtend),
    /// A changing hold's new version ([`lines::LineHolds::next`]); its
    /// metadata is the hold's.
    Next(lines::Incarnation),
    /// One of a record's latest changes (ModifyReservation), for its
    /// retries; one extra per change, oldest first.
    KeyedChange(home::KeyedChange),
}

fn encode_with(value: &impl Serialize, extras: &[Extra]) -> Vec<u8> {
    let mut bytes = encode(value);
    if !extras.is_empty() {
        bytes.extend(encode(&extras));
    }
    bytes
}

fn decode_with<'a, T: Deserialize<'a>>(value: &'a [u8]) -> Result<(T, Vec<Extra>), String> {
    let (decoded, rest) = postcard::take_from_bytes(value).map_err(|error| error.to_string())?;
    if rest.is_empty() {
        return Ok((decoded, Vec::new()));
    }
    let extras: Vec<Extra> = postcard::from_bytes(rest).map_err(|error| error.to_string())?;
    Ok((decoded, extras))
}

fn record_extras(record: &home::Record) -> Vec<Extra> {
    let mut extras = Vec::new();
    if !record.metadata().is_empty() {
        extras.push(Extra::Metadata(record.metadata().clone()));
    }
    if let Some(extend) = record.last_extend() {
        extras.push(Extra::KeyedExtend(extend.clone()));
    }
    for change in record.changes() {
        extras.push(Extra::KeyedChange(change.clone()));
    }
    extras
}

fn hold_extras(holds: &lines::LineHolds) -> Vec<Extra> {
    let mut extras = Vec::new();
    let metadata = &holds.reservation.request.metadata;
    if !metadata.is_empty() {
        extras.push(Extra::Metadata(metadata.clone()));
    }
    if let Some(next) = &holds.next {
        extras.push(Extra::Next(next.clone()));
    }
    extras
}

fn encode_record(record: &home::Record) -> Vec<u8> {
    encode_with(record, &record_extras(record))
}

fn encode_holds(holds: &lines::LineHolds) -> Vec<u8> {
    encode_with(holds, &hold_extras(holds))
}

impl ShardState {
    fn meta(&self) -> Meta {
        Meta {
            ledger_sequence: self.ledger_sequence,
            applied_sequence: self.applied_sequence,
            clock_ms: self.clock_ms,
        }
    }

    /// True when [`ShardState::drain_changes`] has something to write.
    pub fn has_changes(&self) -> bool {
        !self.positions.touched_is_empty()
            || !self.records.touched_is_empty()
            || !self.holds.touched_is_empty()
            || !self.events.touched_is_empty()
            || !self.ledger_outbox.is_empty()
            || self.meta_unwritten
    }

    /// Everything changed since the last call, as store records.
    pub fn drain_changes(&mut self) -> Changes {
        let mut changes = Changes::default();
        let skus = self.positions.take_touched();
        for sku in &skus {
            let value = self.positions.get(sku).map(encode);
            changes.records.push((key(POSITIONS, sku.as_str()), value));
        }
        // The positions' SKUs are sorted (taken from a BTreeSet).
        let mut skus = skus;
        let positions_touched = skus.len();
        for sku in self.demand.take_touched() {
            let value = self.demand.get(&sku).map(encode);
            changes.records.push((key(DEMAND, sku.as_str()), value));
            // Its published figure changed: readers see it again.
            if skus[..positions_touched].binary_search(&sku).is_err() {
                skus.push(sku);
            }
        }
        changes.skus = skus;
        for id in self.records.take_touched() {
            let value = match self.records.get(&id) {
                // A PENDING record is not a promise yet; it is never stored
                // (so a Reserve's first step costs no fsync).
                Some(record) if record.state() == ReservationState::Pending => continue,
                Some(record) => Some(encode_record(record)),
                None => None,
            };
            changes.records.push((key(RECORD, id.as_str()), value));
        }
        for id in self.holds.take_touched() {
            let value = self.holds.get(&id).map(encode_holds);
            changes.records.push((key(HOLDS, id.as_str()), value));
        }
        for id in self.events.take_touched() {
            let value = self.events.get(&id).map(encode);
            changes.records.push((key(EVENT, id.as_str()), value));
        }
        changes.ledger = std::mem::take(&mut self.ledger_outbox);
        // The meta record rides along with real changes only: sequences and
        // clock alone (a read, a PENDING record) are not worth an fsync.
        let meta = self.meta();
        let changed = !changes.records.is_empty() || !changes.ledger.is_empty();
        if (changed && meta != self.drained_meta) || self.meta_unwritten {
            self.drained_meta = meta;
            self.meta_unwritten = false;
            changes.records.push((vec![META], Some(encode(&meta))));
        }
        changes
    }

    /// Every record of the shard as [`ShardState::drain_changes`] would have
    /// written them, in key order: the store's content should equal this.
    pub fn dump(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut records = BTreeMap::new();
        for (sku, positions) in self.positions.iter() {
            records.insert(key(POSITIONS, sku.as_str()), encode(positions));
        }
        for (sku, rates) in self.demand.iter() {
            records.insert(key(DEMAND, sku.as_str()), encode(rates));
        }
        for (id, record) in self.records.iter() {
            if record.state() != ReservationState::Pending {
                records.insert(key(RECORD, id.as_str()), encode_record(record));
            }
        }
        for (id, holds) in self.holds.iter() {
            records.insert(key(HOLDS, id.as_str()), encode_holds(holds));
        }
        for (id, memo) in self.events.iter() {
            records.insert(key(EVENT, id.as_str()), encode(memo));
        }
        records.insert(vec![META], encode(&self.meta()));
        records
    }

    /// Rebuilds a shard from every record it wrote. Deadlines (expiry and
    /// id retention) are scheduled again from the records; call
    /// [`super::recover`] before serving.
    pub fn restore(
        shard: u32,
        epoch: u64,
        settings: ShardSettings,
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, RestoreError> {
        let mut state = Self::new(shard, epoch, settings);
        for (key, value) in records {
            state.load(&key, &value).map_err(|message| RestoreError {
                shard,
                key: String::from_utf8_lossy(&key).into_owned(),
                message,
            })?;
        }
        // The operation sequence numbers versions (a Reserve's incarnation,
        // a change). The stored one may lag what the process handed out
        // (a begin writes nothing), and a Hold of a version handed out just
        // before the crash may still be on its way from another node: jump
        // past every version the dead process can have used, so none is
        // handed out twice (a late Hold would pass for the new one's).
        state.applied_sequence = state.applied_sequence.saturating_add(RESTART_GAP);
        state.drained_meta = state.meta();
        // Written by the first batch (recovery's, before anything is
        // served), so a second restart jumps from here, not from before.
        state.meta_unwritten = true;
        // Demand decays from the latest rate event on.
        let latest = state.demand.values().flatten().map(|(_, rate)| rate.at_ms).max();
        state.decay_at =
            latest.map(|at| at.saturating_add(crate::publish::DEMAND_DECAY_INTERVAL_MS));
        state.deadlines = state.rebuild_deadlines().into_iter().map(Reverse).collect();
        state.rebuild_retained();
        Ok(state)
    }

    fn load(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        fn decode<'a, T: Deserialize<'a>>(value: &'a [u8]) -> Result<T, String> {
            postcard::from_bytes(value).map_err(|error| error.to_string())
        }
        let Some((&tag, id)) = key.split_first() else {
            return Err("empty key".to_owned());
        };
        let id = std::str::from_utf8(id).map_err(|error| error.to_string())?;
        let parse_error = |violation: crate::error::FieldViolation| violation.description;
        match tag {
            META => {
                let meta: Meta = decode(value)?;
                self.ledger_sequence = meta.ledger_sequence;
                self.applied_sequence = meta.applied_sequence;
                self.clock_ms = meta.clock_ms;
            }
            POSITIONS => {
                let sku = Sku::parse("sku", id).map_err(parse_error)?;
                let positions: LocationMap<PositionState> = decode(value)?;
                self.positions.load(sku, positions);
            }
            DEMAND => {
                let sku = Sku::parse("sku", id).map_err(parse_error)?;
                let rates: Vec<(crate::ids::ChannelId, crate::publish::DemandRate)> =
                    decode(value)?;
                self.demand.load(sku, rates);
            }
            RECORD => {
                let id = ReservationId::parse("reservation_id", id).map_err(parse_error)?;
                let (mut record, extras) = decode_with::<home::Record>(value)?;
                for extra in extras {
                    match extra {
                        Extra::Metadata(metadata) => record.set_metadata(metadata),
                        Extra::KeyedExtend(extend) => record.set_last_extend(extend),
                        Extra::KeyedChange(change) => record.remember_change(change),
                        Extra::Next(_) => return Err("a record carries no next version".to_owned()),
                    }
                }
                self.records.load(id, record);
            }
            HOLDS => {
                let id = ReservationId::parse("reservation_id", id).map_err(parse_error)?;
                let (mut holds, extras) = decode_with::<lines::LineHolds>(value)?;
                for extra in extras {
                    match extra {
                        Extra::Metadata(metadata) => {
                            std::sync::Arc::make_mut(&mut holds.reservation.request).metadata =
                                metadata
                        }
                        Extra::Next(next) => holds.next = Some(next),
                        Extra::KeyedExtend(_) | Extra::KeyedChange(_) => {
                            return Err("a hold carries no extend or change".to_owned());
                        }
                    }
                }
                if let Some(next) = &mut holds.next {
                    // A change keeps the reservation's metadata.
                    let metadata = holds.reservation.request.metadata.clone();
                    std::sync::Arc::make_mut(&mut next.request).metadata = metadata;
                }
                self.holds.load(id, holds);
            }
            EVENT => {
                let id = EventId::parse("event_id", id).map_err(parse_error)?;
                let memo: stock::EventMemo = decode(value)?;
                self.events.load(id, memo);
            }
            other => return Err(format!("unknown record tag {other}")),
        }
        Ok(())
    }

    /// Every live deadline, computed from the records and memos.
    pub(super) fn rebuild_deadlines(&self) -> Vec<(i64, Deadline)> {
        let retention_ms = self.settings.retention_ms;
        let mut deadlines = Vec::new();
        for (id, record) in self.records.iter() {
            if let Some((at, version)) = record.abandon_at(self.settings.pending_timeout_ms) {
                deadlines.push((at, Deadline::Abandon(id.clone(), version)));
            } else if let Some(at) = record.deadline(retention_ms) {
                let deadline = if record.state() == ReservationState::Held {
                    Deadline::Expire(id.clone())
                } else {
                    Deadline::ForgetReservation(id.clone())
                };
                deadlines.push((at, deadline));
            }
        }
        for (id, memo) in self.events.iter() {
            deadlines
                .push((memo.applied_at_ms() + retention_ms, Deadline::ForgetEvent(id.clone())));
        }
        if let Some(at) = self.decay_at {
            deadlines.push((at, Deadline::DecayDemand));
        }
        deadlines
    }
}

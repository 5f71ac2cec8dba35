//! Reservation records on their home shard: the authority for a reservation's
//! state. Lines' shards only apply what the home decided.

mod listing;
mod recovery;
pub(super) use recovery::Dropped;

pub use listing::ScanPage;

use super::lines::{Incarnation, LineQuantity};
use super::{Deadline, LineOp, ShardState};
use crate::error::{CoreError, FieldViolation};
use crate::hash::shard_of;
use crate::ids::ReservationId;
use crate::ledger::LedgerKind;
use crate::reservation::{
    CommitLine, LineView, Reply, ReservationState, ReservationView, ReserveLine, ReserveRequest,
};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    request: std::sync::Arc<ReserveRequest>,
    state: ReservationState,
    created_at_ms: i64,
    expires_at_ms: i64,
    first_expires_at_ms: i64,
    ended_at_ms: i64,
    /// Per line, once committed.
    committed: Option<Vec<i64>>,
    /// Per line, as reported by the lines' shards.
    shipped: Vec<i64>,
    /// The incarnation its holds carry (see [`Incarnation::version`]).
    version: u64,
    /// The latest Extend that named a request id, for its retries. Stored
    /// after the record (`persist::Extra`), not in its serde layout.
    #[serde(skip)]
    last_extend: Option<KeyedExtend>,
    /// The latest changes (ModifyReservation), oldest first, at most
    /// [`REMEMBERED_CHANGES`], for their retries. Stored after the record
    /// (`persist::Extra`), not in its serde layout.
    #[serde(skip)]
    changes: Vec<KeyedChange>,
    /// A change in flight (not stored: a crash leaves it to recovery).
    /// Commit, Release, Cancel, Extend and another change wait for it.
    #[serde(skip)]
    changing: Option<ChangeInFlight>,
    /// While PENDING: the id's stored record was deleted earlier in this
    /// batch (forgotten), so a refused Reserve must still write the delete.
    #[serde(skip)]
    replaces_stored: bool,
    /// Not expired before this time (ms), whatever its TTL: set when
    /// recovery rebuilds the record from its holds, so the rebuild is
    /// written before any expiry frees those holds (recovery's own writes
    /// may be cut short; a freed hold with its rebuilt record lost would
    /// lose an acknowledged reservation). Not stored.
    #[serde(skip)]
    not_expired_before_ms: i64,
}

/// An Extend keyed by a request id, as first answered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct KeyedExtend {
    /// The caller's key of the Extend.
    pub(crate) request_id: String,
    /// The lifetime it asked for.
    pub(crate) ttl_ms: i64,
    /// The expiry it answered.
    pub(crate) expires_at_ms: i64,
}

/// Changes of one reservation whose keys it remembers (the latest ones): a
/// retry of an older key is a new change.
pub const REMEMBERED_CHANGES: usize = 8;

/// A change keyed by a request id, as first answered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct KeyedChange {
    /// The caller's key of the change.
    pub(crate) request_id: String,
    /// The lines it asked for.
    pub(crate) lines: Vec<ReserveLine>,
    /// The version it made.
    pub(crate) version: u64,
    /// The expiry it answered.
    pub(crate) expires_at_ms: i64,
}

/// A change between its begin and its end on the home.
#[derive(Clone, Debug)]
struct ChangeInFlight {
    request_id: String,
    to: Incarnation,
    /// Set once applied or refused; the line shards may still be settling.
    decided: bool,
}

/// What the home shard says when a change of a HELD reservation arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeBegin {
    /// New: apply these `Replace`s (one per shard of the old or new lines),
    /// then call [`ShardState::finish_change`] with `version`.
    Started {
        /// `(shard, LineOp::Replace)`.
        replaces: Vec<(u32, LineOp)>,
        /// The new version.
        version: u64,
    },
    /// The latest change with this request id and these lines: its first
    /// answer, and the reservation as it stands now.
    Replay(Box<Reply>),
}

/// A change's outcome on its home: the answer (None when refused) and the
/// `Settle`s or `Revert`s to deliver before answering.
pub type ChangeDecided = (Option<ReservationView>, Vec<(u32, LineOp)>);

/// What the home shard says when a Reserve arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// New: apply these holds (one per line shard), then call
    /// [`ShardState::finish_reserve`] with `version`. Each carries the whole
    /// reservation.
    Started {
        /// `(shard, LineOp::Hold)` for every shard holding a line.
        holds: Vec<(u32, LineOp)>,
        /// The incarnation's version (what `Abort` and the finish name).
        version: u64,
    },
    /// Seen before with the same payload: the first answer, and the
    /// reservation as it stands now.
    Replay(Box<Reply>),
}

impl Record {
    /// The HELD record of `incarnation`, as first answered.
    fn held(incarnation: &Incarnation) -> Self {
        Self {
            request: std::sync::Arc::clone(&incarnation.request),
            state: ReservationState::Held,
            created_at_ms: incarnation.created_at_ms,
            expires_at_ms: incarnation.expires_at_ms,
            first_expires_at_ms: incarnation.expires_at_ms,
            ended_at_ms: 0,
            committed: None,
            shipped: vec![0; incarnation.request.lines.len()],
            version: incarnation.version,
            last_extend: None,
            changes: Vec::new(),
            changing: None,
            replaces_stored: false,
            not_expired_before_ms: 0,
        }
    }

    pub(super) fn state(&self) -> ReservationState {
        self.state
    }

    pub(super) fn metadata(&self) -> &crate::reservation::Metadata {
        &self.request.metadata
    }

    pub(super) fn last_extend(&self) -> Option<&KeyedExtend> {
        self.last_extend.as_ref()
    }

    pub(super) fn changes(&self) -> &[KeyedChange] {
        &self.changes
    }

    /// Puts back a change stored beside the record (`persist`), oldest first.
    pub(super) fn remember_change(&mut self, change: KeyedChange) {
        if self.changes.len() == REMEMBERED_CHANGES {
            self.changes.remove(0);
        }
        self.changes.push(change);
    }

    /// The incarnation the record stands at (what its holds carry).
    fn incarnation(&self) -> Incarnation {
        Incarnation {
            request: std::sync::Arc::clone(&self.request),
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            version: self.version,
        }
    }

    /// Puts back the keyed Extend stored beside the record (`persist`).
    pub(super) fn set_last_extend(&mut self, extend: KeyedExtend) {
        self.last_extend = Some(extend);
    }

    /// Puts back the metadata stored beside the record (`persist`).
    pub(super) fn set_metadata(&mut self, metadata: crate::reservation::Metadata) {
        std::sync::Arc::make_mut(&mut self.request).metadata = metadata;
    }

    pub(super) fn ended_at_ms(&self) -> i64 {
        self.ended_at_ms
    }

    /// When the shard must next look at this record (expiry or forgetting).
    pub(super) fn deadline(&self, retention_ms: i64) -> Option<i64> {
        match self.state {
            ReservationState::Held => Some(self.expires_at_ms.max(self.not_expired_before_ms)),
            state if state.is_final() => Some(self.ended_at_ms + retention_ms),
            _ => None,
        }
    }

    /// While PENDING: when it is abandoned, and its version.
    pub(super) fn abandon_at(&self, pending_timeout_ms: i64) -> Option<(i64, u64)> {
        (self.state == ReservationState::Pending)
            .then(|| (self.created_at_ms.saturating_add(pending_timeout_ms), self.version))
    }

    fn view(&self, state: ReservationState) -> ReservationView {
        let lines = self
            .request
            .lines
            .iter()
            .enumerate()
            .map(|(index, line)| LineView {
                sku: line.sku.clone(),
                location: line.location.clone(),
                quantity: line.quantity,
                committed: self.committed.as_ref().map_or(0, |c| c[index]),
                shipped: self.shipped[index],
            })
            .collect();
        ReservationView {
            id: self.request.id.clone(),
            channel: self.request.channel.clone(),
            state,
            lines,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
            ended_at_ms: self.ended_at_ms,
            metadata: self.request.metadata.clone(),
        }
    }

    fn current(&self) -> ReservationView {
        self.view(self.state)
    }

    /// Moves the record to the changed incarnation `to` (a HELD record).
    fn apply_change(&mut self, to: &Incarnation) {
        self.request = std::sync::Arc::clone(&to.request);
        self.version = to.version;
        self.shipped = vec![0; to.request.lines.len()];
    }

    /// The answer the first Reserve got.
    fn reserve_answer(&self) -> ReservationView {
        let mut view = self.view(ReservationState::Held);
        view.expires_at_ms = self.first_expires_at_ms;
        view.ended_at_ms = 0;
        for line in &mut view.lines {
            line.committed = 0;
            line.shipped = 0;
        }
        view
    }

    /// The answer the first Commit got.
    fn commit_answer(&self) -> ReservationView {
        let mut view = self.view(ReservationState::Committed);
        view.ended_at_ms = 0;
        for line in &mut view.lines {
            line.shipped = 0;
        }
        view
    }

    /// Line ops grouped by the lines' shards.
    fn line_ops(&self, make: impl Fn(Vec<LineQuantity>) -> LineOp) -> Vec<(u32, LineOp)> {
        let mut groups: Vec<(u32, Vec<LineQuantity>)> = Vec::new();
        for (index, line) in self.request.lines.iter().enumerate() {
            let shard = shard_of(line.sku.as_str());
            let quantity = self.committed.as_ref().map_or(line.quantity, |c| c[index]);
            let entry = (line.sku.clone(), line.location.clone(), quantity);
            match groups.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, lines)) => lines.push(entry),
                None => groups.push((shard, vec![entry])),
            }
        }
        groups.into_iter().map(|(shard, lines)| (shard, make(lines))).collect()
    }

    /// Per-line commit quantities for `lines` (a line not named commits all it holds).
    fn commit_quantities(&self, lines: &[CommitLine]) -> Result<Vec<i64>, CoreError> {
        let mut quantities: Vec<i64> = self.request.lines.iter().map(|l| l.quantity).collect();
        let mut violations = Vec::new();
        for (index, commit) in lines.iter().enumerate() {
            let found = self
                .request
                .lines
                .iter()
                .position(|l| l.sku == commit.sku && l.location == commit.location);
            let Some(line) = found else {
                violations.push(FieldViolation::new(
                    format!("lines[{index}]"),
                    format!(
                        "sku {} at {} is not on reservation {}",
                        commit.sku, commit.location, self.request.id
                    ),
                ));
                continue;
            };
            if lines[..index].iter().any(|c| c.sku == commit.sku && c.location == commit.location) {
                violations.push(FieldViolation::new(
                    format!("lines[{index}]"),
                    format!("sku {} at {} is named twice", commit.sku, commit.location),
                ));
            }
            let held = self.request.lines[line].quantity;
            if !(0..=held).contains(&commit.quantity) {
                violations.push(FieldViolation::new(
                    format!("lines[{index}].quantity"),
                    format!("is {}; must be 0..={held} (the units held)", commit.quantity),
                ));
            }
            quantities[line] = commit.quantity;
        }
        if violations.is_empty() && quantities.iter().all(|q| *q == 0) {
            violations.push(FieldViolation::new(
                "lines",
                "would commit no units; use Release to free the reservation",
            ));
        }
        if violations.is_empty() {
            Ok(quantities)
        } else {
            Err(CoreError::InvalidArgument(violations))
        }
    }
}

impl ShardState {
    fn record(&self, id: &ReservationId) -> Result<&Record, CoreError> {
        match self.records.get(id) {
            None => Err(CoreError::NotFound(format!("reservation {id} not found"))),
            Some(record) if record.state == ReservationState::Pending => {
                Err(CoreError::InProgress(format!("reservation {id} is being created; retry")))
            }
            Some(record) => Ok(record),
        }
    }

    /// The record, refusing while a change of it is in flight.
    fn settled_record(&self, id: &ReservationId) -> Result<&Record, CoreError> {
        let record = self.record(id)?;
        if record.changing.is_some() {
            return Err(CoreError::InProgress(format!("reservation {id} is being changed; retry")));
        }
        Ok(record)
    }

    fn end(&mut self, id: &ReservationId, state: ReservationState, now: i64) {
        let retention_ms = self.settings.retention_ms;
        let record = self.records.get_mut(id).expect("ending a reservation that exists");
        record.state = state;
        record.ended_at_ms = now;
        self.schedule(now + retention_ms, Deadline::ForgetReservation(id.clone()));
        self.retain_ended(id, now);
    }

    /// Home side of Reserve: deduplicates by id, or records the reservation as pending.
    pub fn begin_reserve(
        &mut self,
        request: &ReserveRequest,
        now: i64,
    ) -> Result<Begin, CoreError> {
        self.begin_reserve_shared(&std::sync::Arc::new(request.clone()), now)
    }

    /// [`Self::begin_reserve`] for a request the caller already shares: the
    /// reservation keeps that `Arc` instead of a copy.
    pub fn begin_reserve_shared(
        &mut self,
        request: &std::sync::Arc<ReserveRequest>,
        now: i64,
    ) -> Result<Begin, CoreError> {
        let now = self.advance(now);
        if self.in_doubt.contains(&request.id) {
            return Err(CoreError::InProgress(format!(
                "reservation {} is being recovered; retry",
                request.id
            )));
        }
        if let Some(record) = self.records.get(&request.id) {
            if !std::sync::Arc::ptr_eq(&record.request, request) && *record.request != **request {
                return Err(CoreError::AlreadyExists(format!(
                    "reservation {} already exists with another payload",
                    request.id
                )));
            }
            if record.state == ReservationState::Pending {
                return Err(CoreError::InProgress(format!(
                    "reservation {} is being created; retry",
                    request.id
                )));
            }
            let reply = Reply::replayed(record.reserve_answer(), record.current());
            return Ok(Begin::Replay(Box::new(reply)));
        }
        self.applied_sequence += 1;
        let incarnation = Incarnation {
            request: std::sync::Arc::clone(request),
            created_at_ms: now,
            expires_at_ms: now + request.ttl_ms,
            version: self.applied_sequence,
        };
        let replaces_stored = self.records.is_touched(&request.id);
        let mut record = Record::held(&incarnation);
        record.state = ReservationState::Pending;
        record.replaces_stored = replaces_stored;
        self.records.insert(request.id.clone(), record);
        let abandon_at = now.saturating_add(self.settings.pending_timeout_ms);
        self.schedule(abandon_at, Deadline::Abandon(request.id.clone(), incarnation.version));
        Ok(Begin::Started { holds: incarnation.holds(), version: incarnation.version })
    }

    /// Home side, after the lines' shards answered: `held` = every line's
    /// hold is durable. Returns the Reserve's answer when held (the caller
    /// may answer at once: the holds rebuild this record if it is lost);
    /// forgets the reservation otherwise. None if the PENDING record of
    /// `version` is gone (abandoned after `pending_timeout_ms`).
    pub fn finish_reserve(
        &mut self,
        id: &ReservationId,
        version: u64,
        held: bool,
        now: i64,
    ) -> Option<ReservationView> {
        self.advance(now);
        let record = self.records.get_mut(id)?;
        if record.state != ReservationState::Pending || record.version != version {
            return None;
        }
        self.applied_sequence += 1;
        if !held {
            let limit = self.settings.max_ended_reservations;
            self.dropped.insert(id, version, limit);
            let record = self.records.get(id).expect("checked above");
            // A PENDING record is never stored: nothing to delete, unless
            // it replaced a stored one this batch.
            if record.replaces_stored {
                self.records.remove(id);
            } else {
                self.records.discard(id);
            }
            return None;
        }
        record.state = ReservationState::Held;
        let answer = record.reserve_answer();
        let expires_at_ms = record.expires_at_ms;
        self.schedule(expires_at_ms, Deadline::Expire(id.clone()));
        Some(answer)
    }

    /// Ticks to `now`, then runs a home-side request. The tick's line ops go
    /// out with the request's; if the request fails they are kept for the next
    /// [`ShardState::tick`], so a refused request never loses an expiry's releases.
    fn after_tick<T>(
        &mut self,
        now: i64,
        request: impl FnOnce(&mut Self) -> Result<(T, Vec<(u32, LineOp)>), CoreError>,
    ) -> Result<(T, Vec<(u32, LineOp)>), CoreError> {
        let mut effects = self.tick(now);
        match request(self) {
            Ok((view, ops)) => {
                effects.extend(ops);
                Ok((view, effects))
            }
            Err(error) => {
                self.undelivered.extend(effects);
                Err(error)
            }
        }
    }

    /// Commit: HELD → COMMITTED. Returns the answer and the line ops to apply.
    pub fn commit(
        &mut self,
        id: &ReservationId,
        lines: &[CommitLine],
        now: i64,
    ) -> Result<(ReservationView, Vec<(u32, LineOp)>), CoreError> {
        first_answer(self.commit_reply(id, lines, now))
    }

    /// [`ShardState::commit`], saying whether it was a replay.
    pub fn commit_reply(
        &mut self,
        id: &ReservationId,
        lines: &[CommitLine],
        now: i64,
    ) -> Result<(Reply, Vec<(u32, LineOp)>), CoreError> {
        self.after_tick(now, |state| state.commit_ticked(id, lines))
    }

    fn commit_ticked(
        &mut self,
        id: &ReservationId,
        lines: &[CommitLine],
    ) -> Result<(Reply, Vec<(u32, LineOp)>), CoreError> {
        let mut effects = Vec::new();
        let record = self.settled_record(id)?;
        let quantities = record.commit_quantities(lines)?;
        match record.state {
            ReservationState::Held => {}
            ReservationState::Committed
            | ReservationState::Cancelled
            | ReservationState::Fulfilled => {
                if record.committed.as_ref() == Some(&quantities) {
                    // A replay re-sends what the state implies, so its
                    // answer, too, waits until the lines have it.
                    let reply = Reply::replayed(record.commit_answer(), record.current());
                    return Ok((reply, record.implied_ops(id)));
                }
                return Err(CoreError::AlreadyExists(format!(
                    "reservation {id} was already committed with other quantities"
                )));
            }
            state => {
                return Err(CoreError::WrongState {
                    reservation_id: id.to_string(),
                    state,
                    operation: "commit",
                });
            }
        }
        self.applied_sequence += 1;
        let record = self.records.get_mut(id).expect("record checked above");
        record.state = ReservationState::Committed;
        record.committed = Some(quantities);
        let answer = record.commit_answer();
        let request_id = id.clone();
        let version = record.version;
        effects.extend(record.line_ops(|lines| LineOp::Commit {
            id: request_id.clone(),
            version,
            lines,
        }));
        Ok((Reply::first(answer), effects))
    }

    /// Release: HELD → RELEASED.
    pub fn release(
        &mut self,
        id: &ReservationId,
        now: i64,
    ) -> Result<(ReservationView, Vec<(u32, LineOp)>), CoreError> {
        first_answer(self.release_reply(id, now))
    }

    /// [`ShardState::release`], saying whether it was a replay.
    pub fn release_reply(
        &mut self,
        id: &ReservationId,
        now: i64,
    ) -> Result<(Reply, Vec<(u32, LineOp)>), CoreError> {
        self.after_tick(now, |state| state.release_ticked(id))
    }

    fn release_ticked(
        &mut self,
        id: &ReservationId,
    ) -> Result<(Reply, Vec<(u32, LineOp)>), CoreError> {
        let mut effects = Vec::new();
        let now = self.clock_ms;
        let record = self.settled_record(id)?;
        match record.state {
            ReservationState::Held => {}
            ReservationState::Released => {
                let reply = Reply::replayed(record.current(), record.current());
                return Ok((reply, record.implied_ops(id)));
            }
            state => {
                return Err(CoreError::WrongState {
                    reservation_id: id.to_string(),
                    state,
                    operation: "release",
                });
            }
        }
        self.applied_sequence += 1;
        self.end(id, ReservationState::Released, now);
        let record = &self.records[id];
        let request_id = id.clone();
        effects.extend(record.line_ops(|_| LineOp::Release {
            id: request_id.clone(),
            version: record.version,
            kind: LedgerKind::Release,
        }));
        Ok((Reply::first(record.current()), effects))
    }

    /// Cancel: COMMITTED → CANCELLED, freeing unshipped units.
    pub fn cancel(
        &mut self,
        id: &ReservationId,
        now: i64,
    ) -> Result<(ReservationView, Vec<(u32, LineOp)>), CoreError> {
        first_answer(self.cancel_reply(id, now))
    }

    /// [`ShardState::cancel`], saying whether it was a replay.
    pub fn cancel_reply(
        &mut self,
        id: &ReservationId,
        now: i64,
    ) -> Result<(Reply, Vec<(u32, LineOp)>), CoreError> {
        self.after_tick(now, |state| state.cancel_ticked(id))
    }

    fn cancel_ticked(
        &mut self,
        id: &ReservationId,
    ) -> Result<(Reply, Vec<(u32, LineOp)>), CoreError> {
        let mut effects = Vec::new();
        let now = self.clock_ms;
        let record = self.settled_record(id)?;
        match record.state {
            ReservationState::Committed => {}
            ReservationState::Cancelled => {
                let reply = Reply::replayed(record.current(), record.current());
                return Ok((reply, record.implied_ops(id)));
            }
            state => {
                return Err(CoreError::WrongState {
                    reservation_id: id.to_string(),
                    state,
                    operation: "cancel",
                });
            }
        }
        self.applied_sequence += 1;
        self.end(id, ReservationState::Cancelled, now);
        let record = &self.records[id];
        let request_id = id.clone();
        let version = record.version;
        effects.extend(record.line_ops(|_| LineOp::Cancel { id: request_id.clone(), version }));
        Ok((Reply::first(record.current()), effects))
    }

    /// Extend: moves a HELD reservation's expiry to `now + ttl_ms`.
    pub fn extend(
        &mut self,
        id: &ReservationId,
        ttl_ms: i64,
        now: i64,
    ) -> Result<(ReservationView, Vec<(u32, LineOp)>), CoreError> {
        first_answer(self.extend_reply(id, ttl_ms, None, now))
    }

    /// Extend keyed by `request_id`: a retry of the reservation's latest
    /// keyed Extend (same key, same `ttl_ms`) gets its first answer and the
    /// reservation now, and moves nothing; the same key with another
    /// `ttl_ms` is ALREADY_EXISTS. Without a key, every call moves the expiry.
    pub fn extend_reply(
        &mut self,
        id: &ReservationId,
        ttl_ms: i64,
        request_id: Option<&str>,
        now: i64,
    ) -> Result<(Reply, Vec<(u32, LineOp)>), CoreError> {
        self.after_tick(now, |state| state.extend_ticked(id, ttl_ms, request_id))
    }

    fn extend_ticked(
        &mut self,
        id: &ReservationId,
        ttl_ms: i64,
        request_id: Option<&str>,
    ) -> Result<(Reply, Vec<(u32, LineOp)>), CoreError> {
        let effects = Vec::new();
        let now = self.clock_ms;
        let record = self.settled_record(id)?;
        if let Some(request_id) = request_id
            && let Some(last) = record.last_extend.as_ref().filter(|e| e.request_id == request_id)
        {
            if last.ttl_ms != ttl_ms {
                return Err(CoreError::AlreadyExists(format!(
                    "extend {request_id} of reservation {id} was already applied with another ttl"
                )));
            }
            let mut first = record.reserve_answer();
            first.expires_at_ms = last.expires_at_ms;
            return Ok((Reply::replayed(first, record.current()), effects));
        }
        if record.state != ReservationState::Held {
            return Err(CoreError::WrongState {
                reservation_id: id.to_string(),
                state: record.state,
                operation: "extend",
            });
        }
        self.applied_sequence += 1;
        let record = self.records.get_mut(id).expect("record checked above");
        // A later expiry needs no new deadline: the scheduled one fires first
        // and re-arms (`ShardState::rearm_expiry`), so repeated Extends do not
        // grow the heap.
        let earlier = now + ttl_ms < record.expires_at_ms;
        record.expires_at_ms = now + ttl_ms;
        if let Some(request_id) = request_id {
            record.last_extend = Some(KeyedExtend {
                request_id: request_id.to_owned(),
                ttl_ms,
                expires_at_ms: record.expires_at_ms,
            });
        }
        let view = record.current();
        if earlier {
            self.schedule(now + ttl_ms, Deadline::Expire(id.clone()));
        }
        Ok((Reply::first(view), effects))
    }

    /// Home side of ModifyReservation: replaces a HELD reservation's lines
    /// with `lines` (checked by the caller like a Reserve's). A retry of the
    /// latest change (same `request_id`, same lines) gets its first answer;
    /// the same key with other lines is ALREADY_EXISTS.
    pub fn begin_change(
        &mut self,
        id: &ReservationId,
        request_id: &str,
        lines: Vec<ReserveLine>,
        catalog: &crate::catalog::Catalog,
        now: i64,
    ) -> Result<ChangeBegin, CoreError> {
        self.advance(now);
        let record = self.record(id)?;
        // An order's daily capacity stays taken while it still ships from
        // the location: see [`kept_counters`].
        let mut lines = lines;
        let kept = kept_counters(&record.request.lines, &lines);
        lines.extend(kept);
        // The new lines under the Reserve's rules, for this reservation's channel.
        let candidate = ReserveRequest { lines: lines.clone(), ..(*record.request).clone() };
        candidate.check(catalog)?;
        if let Some(earlier) = record.changes.iter().find(|c| c.request_id == request_id)
            && record.changing.is_none()
        {
            if earlier.lines != lines {
                return Err(CoreError::AlreadyExists(format!(
                    "change {request_id} of reservation {id} was already applied with other lines"
                )));
            }
            let mut first = record.reserve_answer();
            first.expires_at_ms = earlier.expires_at_ms;
            first.lines = earlier
                .lines
                .iter()
                .map(|line| LineView {
                    sku: line.sku.clone(),
                    location: line.location.clone(),
                    quantity: line.quantity,
                    committed: 0,
                    shipped: 0,
                })
                .collect();
            return Ok(ChangeBegin::Replay(Box::new(Reply::replayed(first, record.current()))));
        }
        let record = self.settled_record(id)?;
        if record.state != ReservationState::Held {
            return Err(CoreError::WrongState {
                reservation_id: id.to_string(),
                state: record.state,
                operation: "modify",
            });
        }
        let from = record.incarnation();
        self.applied_sequence += 1;
        let to = Incarnation {
            request: std::sync::Arc::new(candidate),
            version: self.applied_sequence,
            ..from.clone()
        };
        let mut shards = from.line_shards();
        for shard in to.line_shards() {
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
        let replaces = shards
            .into_iter()
            .map(|shard| (shard, LineOp::Replace { from: from.clone(), to: to.clone() }))
            .collect();
        let version = to.version;
        let changing = ChangeInFlight { request_id: request_id.to_owned(), to, decided: false };
        // Only in memory: the record is not written until the change is applied.
        self.records.get_untracked_mut(id).expect("checked above").changing = Some(changing);
        Ok(ChangeBegin::Started { replaces, version })
    }

    /// Home side, after every `Replace` answered: `replaced` = all of them
    /// held. Applies the change (the record moves to the new version and
    /// lines) or drops it, and returns the answer (when applied) and the
    /// `Settle`s or `Revert`s to deliver before answering; then call
    /// [`ShardState::change_done`]. None if no such change is in flight.
    pub fn finish_change(
        &mut self,
        id: &ReservationId,
        version: u64,
        replaced: bool,
        now: i64,
    ) -> Option<ChangeDecided> {
        self.advance(now);
        let record = self.records.get(id)?;
        let change = record.changing.as_ref().filter(|c| c.to.version == version && !c.decided)?;
        let mut shards = record.incarnation().line_shards();
        for shard in change.to.line_shards() {
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
        if !replaced {
            let record = self.records.get_untracked_mut(id).expect("checked above");
            record.changing.as_mut().expect("checked above").decided = true;
            let ops = shards
                .into_iter()
                .map(|shard| (shard, LineOp::Revert { id: id.clone(), version }))
                .collect();
            return Some((None, ops));
        }
        self.applied_sequence += 1;
        let record = self.records.get_mut(id).expect("checked above");
        let change = record.changing.as_mut().expect("checked above");
        change.decided = true;
        let to = change.to.clone();
        let request_id = change.request_id.clone();
        record.apply_change(&to);
        record.remember_change(KeyedChange {
            request_id,
            lines: to.request.lines.clone(),
            version,
            expires_at_ms: record.expires_at_ms,
        });
        let answer = record.current();
        let ops = shards
            .into_iter()
            .map(|shard| (shard, LineOp::Settle { id: id.clone(), version }))
            .collect();
        Some((Some(answer), ops))
    }

    /// The change to `version` of `id` is over on every shard (its
    /// `Settle`s or `Revert`s delivered): other operations of the id may run.
    pub fn change_done(&mut self, id: &ReservationId, version: u64, now: i64) {
        let now = self.advance(now);
        let Some(record) = self.records.get_untracked_mut(id) else { return };
        if record.changing.as_ref().is_none_or(|c| c.to.version != version) {
            return;
        }
        record.changing = None;
        if record.state == ReservationState::Held {
            let at = record.expires_at_ms.max(now);
            self.schedule(at, Deadline::Expire(id.clone()));
        }
    }

    /// The reservation as it stands.
    pub fn get(&self, id: &ReservationId) -> Result<ReservationView, CoreError> {
        self.record(id).map(Record::current)
    }

    /// A line's shard reports the units shipped so far for one line; the
    /// reservation becomes FULFILLED when every committed unit has shipped.
    pub fn note_shipped(&mut self, notice: &super::ShipNotice, now: i64) {
        let now = self.advance(now);
        let Some(record) = self.records.get_mut(&notice.reservation) else { return };
        let Some(index) = record
            .request
            .lines
            .iter()
            .position(|l| l.sku == notice.sku && l.location == notice.location)
        else {
            return;
        };
        record.shipped[index] = record.shipped[index].max(notice.shipped_total);
        let all_shipped = record.committed.as_ref().is_some_and(|c| {
            // Capacity counters never ship: they do not hold FULFILLED up.
            c.iter()
                .zip(&record.shipped)
                .zip(&record.request.lines)
                .all(|((c, s), line)| s >= c || crate::capacity::is_counter(&line.sku))
        });
        if record.state == ReservationState::Committed && all_shipped {
            self.applied_sequence += 1;
            self.end(&notice.reservation, ReservationState::Fulfilled, now);
        }
    }

    pub(super) fn expire(&mut self, id: &ReservationId, now: i64) -> Vec<(u32, LineOp)> {
        let Some(record) = self.records.get(id) else { return Vec::new() };
        // A change in flight re-arms the expiry when it ends (`change_done`).
        if record.state != ReservationState::Held
            || record.changing.is_some()
            || record.expires_at_ms > now
            || record.not_expired_before_ms > now
        {
            return Vec::new();
        }
        self.applied_sequence += 1;
        self.end(id, ReservationState::Expired, now);
        let request_id = id.clone();
        self.records[id].line_ops(|_| LineOp::Release {
            id: request_id.clone(),
            version: self.records[id].version,
            kind: LedgerKind::Expire,
        })
    }

    /// A PENDING Reserve of `version` outlived `pending_timeout_ms`: forget
    /// it and abort its holds wherever they were taken (line shards refuse
    /// holds arriving after this, so none is left behind).
    pub(super) fn abandon(&mut self, id: &ReservationId, version: u64) -> Vec<(u32, LineOp)> {
        let Some(record) = self.records.get(id) else { return Vec::new() };
        if record.state != ReservationState::Pending || record.version != version {
            return Vec::new();
        }
        let ops = record.line_ops(|_| LineOp::Abort { id: id.clone(), version });
        let replaces_stored = record.replaces_stored;
        self.applied_sequence += 1;
        self.dropped.insert(id, version, self.settings.max_ended_reservations);
        if replaces_stored {
            self.records.remove(id);
        } else {
            self.records.discard(id);
        }
        ops
    }

    pub(super) fn forget_reservation(&mut self, id: &ReservationId, now: i64) {
        let retention_ms = self.settings.retention_ms;
        let due = self
            .records
            .get(id)
            .is_some_and(|r| r.state.is_final() && r.ended_at_ms + retention_ms <= now);
        if due {
            self.forget_ended(id);
        }
    }
}

/// The answer alone, for callers that do not ask whether it was a replay.
/// The counter lines of `held` a change to `new` keeps: those of a
/// location that `new` still ships stock from and names no counter of that
/// kind for. Changing an order's lines does not give back its day's
/// capacity; moving it off a location does (a rebind names its new
/// locations' counters itself). See docs/PROTOCOL.md, "Capacity counters".
fn kept_counters(held: &[ReserveLine], new: &[ReserveLine]) -> Vec<ReserveLine> {
    use crate::capacity::{is_counter, parse_counter};
    let ships_from = |line: &ReserveLine| {
        new.iter().any(|other| !is_counter(&other.sku) && other.location == line.location)
    };
    let renamed = |line: &ReserveLine| {
        let kind = parse_counter(&line.sku).map(|(kind, _)| kind);
        new.iter().any(|other| {
            other.location == line.location
                && is_counter(&other.sku)
                && parse_counter(&other.sku).map(|(kind, _)| kind) == kind
        })
    };
    held.iter()
        .filter(|line| is_counter(&line.sku) && ships_from(line) && !renamed(line))
        .cloned()
        .collect()
}

fn first_answer(
    result: Result<(Reply, Vec<(u32, LineOp)>), CoreError>,
) -> Result<(ReservationView, Vec<(u32, LineOp)>), CoreError> {
    result.map(|(reply, ops)| (reply.reservation, ops))
}

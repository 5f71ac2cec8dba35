//! Reservation requests, states and the views returned to callers.

use std::collections::BTreeMap;
use std::fmt;

use crate::catalog::Catalog;
use crate::error::{CoreError, FieldViolation};
use crate::hash::shard_of;
use crate::ids::{
    ChannelId, LocationId, MAX_LABEL_KEY_BYTES, MAX_LABEL_VALUE_BYTES, MAX_LABELS_PER_RESERVATION,
    MAX_LINES_PER_RESERVATION, ReservationId, Sku, validate_id,
};

/// Where a reservation is in its life.
///
/// ```text
/// HELD ──commit──▶ COMMITTED ──ship events──▶ FULFILLED
///  │ └─release──▶ RELEASED    └──cancel──▶ CANCELLED
///  └──ttl passes──▶ EXPIRED
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ReservationState {
    /// Being created across shards; not yet answered.
    Pending,
    /// Units held until `expires_at`.
    Held,
    /// An order: units committed until shipped or cancelled.
    Committed,
    /// Freed by Release.
    Released,
    /// Freed because its TTL passed.
    Expired,
    /// Unshipped units freed by Cancel.
    Cancelled,
    /// Every committed unit shipped.
    Fulfilled,
}

impl ReservationState {
    /// Whether the reservation has ended (no units held or committed by it).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Released | Self::Expired | Self::Cancelled | Self::Fulfilled)
    }
}

impl fmt::Display for ReservationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Pending => "PENDING",
            Self::Held => "HELD",
            Self::Committed => "COMMITTED",
            Self::Released => "RELEASED",
            Self::Expired => "EXPIRED",
            Self::Cancelled => "CANCELLED",
            Self::Fulfilled => "FULFILLED",
        };
        f.write_str(name)
    }
}

/// One line of a Reserve: units of a SKU at a location.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReserveLine {
    /// The SKU.
    pub sku: Sku,
    /// Where the units are held.
    pub location: LocationId,
    /// Units, 1..=MAX_LINE_QUANTITY.
    pub quantity: i64,
}

/// Caller data kept with a reservation and shown with it: the caller's
/// order or cart id and a few labels (limits in [`crate::ids`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    /// The caller's order or cart id; empty for none.
    pub order_id: String,
    /// Labels, by key (sorted, so equal metadata encodes equally).
    pub labels: BTreeMap<String, String>,
}

impl Metadata {
    /// True when nothing was given.
    pub fn is_empty(&self) -> bool {
        self.order_id.is_empty() && self.labels.is_empty()
    }

    /// Checks the limits; `field` is the path of the metadata in the request.
    pub fn validate(&self, field: &str) -> Vec<FieldViolation> {
        let mut violations = Vec::new();
        if !self.order_id.is_empty()
            && let Err(violation) = validate_id(&format!("{field}.order_id"), &self.order_id)
        {
            violations.push(violation);
        }
        violations.extend(validate_labels(&format!("{field}.labels"), &self.labels));
        violations
    }

    /// Whether every label of `wanted` is on this metadata with the same value.
    pub fn has_labels(&self, wanted: &BTreeMap<String, String>) -> bool {
        wanted.iter().all(|(key, value)| self.labels.get(key) == Some(value))
    }
}

/// Checks a set of labels against the limits (count, key and value sizes).
pub fn validate_labels(field: &str, labels: &BTreeMap<String, String>) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    if labels.len() > MAX_LABELS_PER_RESERVATION {
        violations.push(FieldViolation::new(
            field,
            format!("has {}; the limit is {MAX_LABELS_PER_RESERVATION}", labels.len()),
        ));
        return violations;
    }
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_KEY_BYTES
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !key_ok {
            violations.push(FieldViolation::new(
                format!("{field}[{key:?}]"),
                format!("keys are 1..={MAX_LABEL_KEY_BYTES} bytes of [A-Za-z0-9_.-]"),
            ));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES || value.chars().any(char::is_control) {
            violations.push(FieldViolation::new(
                format!("{field}[{key:?}]"),
                format!("values are at most {MAX_LABEL_VALUE_BYTES} bytes, no control characters"),
            ));
        }
    }
    violations
}

/// A validated Reserve.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReserveRequest {
    /// Idempotency key; the home shard is `shard_of(id)`.
    pub id: ReservationId,
    /// Channel whose rules apply.
    pub channel: ChannelId,
    /// At most MAX_LINES_PER_RESERVATION lines, each (sku, location) once.
    pub lines: Vec<ReserveLine>,
    /// Hold lifetime.
    pub ttl_ms: i64,
    /// Caller data. Part of the payload (a retry must repeat it). Not in
    /// this struct's serde encoding, whose layout data already written
    /// fixes: the shard stores it after the record (`shard::persist`).
    #[serde(skip)]
    pub metadata: Metadata,
}

impl ReserveRequest {
    /// Checks what depends on configuration: the channel exists, every line's
    /// location exists and feeds the channel, and no (sku, location) repeats.
    pub fn check(&self, catalog: &Catalog) -> Result<(), CoreError> {
        let mut violations = Vec::new();
        if self.lines.is_empty() {
            violations.push(FieldViolation::new("lines", "must have at least one line"));
        }
        if self.lines.len() > MAX_LINES_PER_RESERVATION {
            violations.push(FieldViolation::new(
                "lines",
                format!("has {}; the limit is {MAX_LINES_PER_RESERVATION}", self.lines.len()),
            ));
            return Err(CoreError::InvalidArgument(violations));
        }
        let Some(channel) = catalog.channels.get(&self.channel) else {
            violations.push(FieldViolation::new(
                "channel_id",
                format!("unknown channel {}", self.channel),
            ));
            return Err(CoreError::InvalidArgument(violations));
        };
        for (index, line) in self.lines.iter().enumerate() {
            if !catalog.locations.contains_key(&line.location) {
                violations.push(FieldViolation::new(
                    format!("lines[{index}].location_id"),
                    format!("unknown location {}", line.location),
                ));
            } else if !channel.feeds_from(&line.location) {
                violations.push(FieldViolation::new(
                    format!("lines[{index}].location_id"),
                    format!("location {} does not feed channel {}", line.location, channel.id),
                ));
            }
            let repeated = self.lines[..index]
                .iter()
                .any(|earlier| earlier.sku == line.sku && earlier.location == line.location);
            if repeated {
                violations.push(FieldViolation::new(
                    format!("lines[{index}]"),
                    format!("sku {} at {} is already on an earlier line", line.sku, line.location),
                ));
            }
        }
        if !violations.is_empty() {
            return Err(CoreError::InvalidArgument(violations));
        }
        self.check_active(catalog)
    }

    /// A well-formed request may still be refused: only an ACTIVE channel
    /// and ACTIVE locations take holds.
    pub fn check_active(&self, catalog: &Catalog) -> Result<(), CoreError> {
        let not_active = |kind, id: &str, state| CoreError::NotActive {
            kind,
            id: id.to_owned(),
            state,
            operation: "take holds",
        };
        let channel = catalog.channels.get(&self.channel);
        if let Some(channel) = channel.filter(|channel| !channel.state.is_active()) {
            return Err(not_active("channel", self.channel.as_str(), channel.state));
        }
        for line in &self.lines {
            let location = catalog.locations.get(&line.location);
            if let Some(location) = location.filter(|location| !location.state.is_active()) {
                return Err(not_active("location", line.location.as_str(), location.state));
            }
        }
        Ok(())
    }

    /// The shards holding this reservation's lines, each with its lines.
    pub fn lines_by_shard(&self) -> Vec<(u32, Vec<ReserveLine>)> {
        let mut groups: Vec<(u32, Vec<ReserveLine>)> = Vec::new();
        for line in &self.lines {
            let shard = shard_of(line.sku.as_str());
            match groups.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, lines)) => lines.push(line.clone()),
                None => groups.push((shard, vec![line.clone()])),
            }
        }
        groups
    }
}

/// A Commit's quantity for one line (a line not named commits all it holds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitLine {
    /// The SKU of the line.
    pub sku: Sku,
    /// The location of the line.
    pub location: LocationId,
    /// Units to commit, 0..=held.
    pub quantity: i64,
}

/// A line of a reservation as shown to callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineView {
    /// The SKU.
    pub sku: Sku,
    /// The location.
    pub location: LocationId,
    /// Units held by the Reserve.
    pub quantity: i64,
    /// Units committed.
    pub committed: i64,
    /// Committed units shipped.
    pub shipped: i64,
}

/// A reservation as shown to callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationView {
    /// Its id.
    pub id: ReservationId,
    /// Its channel.
    pub channel: ChannelId,
    /// Its state.
    pub state: ReservationState,
    /// Its lines.
    pub lines: Vec<LineView>,
    /// When it was accepted (ms).
    pub created_at_ms: i64,
    /// When its hold expires (ms).
    pub expires_at_ms: i64,
    /// When it ended (ms), 0 while open.
    pub ended_at_ms: i64,
    /// The caller's data, as given by the Reserve.
    pub metadata: Metadata,
}

/// Which reservations ListReservations shows: every condition set must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservationFilter {
    /// Only those with a line of this SKU (at `location`, if that is set too).
    pub sku: Option<Sku>,
    /// Only those with a line at this location.
    pub location: Option<LocationId>,
    /// Only those of this channel.
    pub channel: Option<ChannelId>,
    /// Only those in one of these states (empty: any).
    pub states: Vec<ReservationState>,
    /// Only those whose metadata has this order id.
    pub order_id: Option<String>,
    /// Only those whose metadata has every one of these labels.
    pub labels: BTreeMap<String, String>,
}

/// Where a ListReservations scan stands: reservations are visited in
/// (home shard, id) order, and this is the last one visited, so
/// reservations created or forgotten meanwhile never shift the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPosition {
    /// The home shard being read.
    pub shard: u32,
    /// The last id read on it; `None` to start at the shard's first.
    pub after: Option<ReservationId>,
}

/// What an operation on a reservation answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The answer. For a replay (the operation was done before: a retry),
    /// the answer the first call got.
    pub reservation: ReservationView,
    /// For a replay, the reservation as it stands now (the first answer may
    /// be stale: a replayed Reserve of a since released reservation).
    /// `None` when this call did the work.
    pub current: Option<ReservationView>,
}

impl Reply {
    /// An answer to a call that did the work.
    pub fn first(reservation: ReservationView) -> Self {
        Self { reservation, current: None }
    }

    /// An answer to a retry: the first answer and the reservation now.
    pub fn replayed(reservation: ReservationView, current: ReservationView) -> Self {
        Self { reservation, current: Some(current) }
    }

    /// Whether this answered a retry.
    pub fn is_replay(&self) -> bool {
        self.current.is_some()
    }
}

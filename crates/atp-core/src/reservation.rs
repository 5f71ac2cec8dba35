//! Reservation requests, states and the views returned to callers.

use std::fmt;

use crate::catalog::Catalog;
use crate::error::{CoreError, FieldViolation};
use crate::hash::shard_of;
use crate::ids::{ChannelId, LocationId, MAX_LINES_PER_RESERVATION, ReservationId, Sku};

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
}

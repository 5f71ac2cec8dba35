//! Request messages → validated domain values.
//!
//! Each `parse_*` function checks a whole message and either returns the
//! domain value or [`CoreError::InvalidArgument`] listing every bad field by
//! its path in the message. What depends on configuration (does the channel
//! exist, does the location feed it) is checked later by the node; what
//! depends only on the message is checked here, so nothing malformed reaches a
//! shard.

mod allocate;
mod batch;
mod config;
mod events;
mod listing;
mod reassign;
mod reserved;

use atp_core::catalog::{MAX_CHANNELS, MAX_LOCATIONS};
use atp_core::hash::{SHARD_COUNT, shard_of};
use atp_core::ids::{
    ChannelId, LocationId, MAX_LINE_QUANTITY, MAX_LINES_PER_RESERVATION, MAX_SKUS_PER_QUERY,
    ReservationId, Sku, validate_line_quantity, validate_ttl_ms,
};
use atp_core::reservation::{CommitLine, Metadata, ReserveLine, ReserveRequest};
use atp_core::{CoreError, FieldViolation};

pub use allocate::{exclusion_name, parse_allocate, routing_plan};
pub use batch::{MAX_RESERVATIONS_PER_BATCH, parse_reserve_batch, within_item};
pub use config::{parse_channel, parse_kit, parse_location};
pub use events::parse_stock_events;
pub use listing::{
    DEFAULT_LIST_PAGE_SIZE, ListQuery, MAX_IDS_PER_GET, MAX_LIST_PAGE_SIZE, decode_list_token,
    encode_list_token, parse_get_reservations, parse_list_reservations,
};
pub use reassign::{
    MAX_NODE_ID_CHARS, MAX_OPERATOR_CHARS, ReassignShards, ReassignTarget, parse_reassign_shards,
};
pub use reserved::{RESERVED_LABEL_PREFIX, refuse_reserved_names};

use crate::v1;

/// Ledger entries returned when a QueryLedger names no limit.
pub const DEFAULT_LEDGER_LIMIT: usize = 100;
/// Most ledger entries one QueryLedger returns (a larger limit is lowered to it).
pub const MAX_LEDGER_LIMIT: usize = 1_000;

/// Collects the violations of one request while it is checked.
#[derive(Debug, Default)]
pub(crate) struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Keeps the value, or records why there is none.
    pub(crate) fn parse<T>(&mut self, result: Result<T, FieldViolation>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(violation) => {
                self.0.push(violation);
                None
            }
        }
    }

    /// Records a failed check; returns whether the check passed.
    pub(crate) fn check(&mut self, result: Result<(), FieldViolation>) -> bool {
        self.parse(result).is_some()
    }

    /// Records a violation of `field`.
    pub(crate) fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records violations found by a domain check.
    pub(crate) fn extend(&mut self, violations: Vec<FieldViolation>) {
        self.0.extend(violations);
    }

    /// The value when nothing was wrong, else every violation.
    pub(crate) fn finish<T>(self, value: Option<T>) -> Result<T, CoreError> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => {
                assert!(!self.0.is_empty(), "a field failed to parse without a violation");
                Err(CoreError::InvalidArgument(self.0))
            }
        }
    }
}

/// A hold lifetime in ms: `0` means `default_ttl_ms`, anything else must be
/// within the domain's TTL bounds.
fn ttl_ms(field: &str, seconds: u32, default_ttl_ms: i64) -> Result<i64, FieldViolation> {
    if seconds == 0 {
        return Ok(default_ttl_ms);
    }
    let ttl_ms = i64::from(seconds) * 1000;
    validate_ttl_ms(field, ttl_ms)?;
    Ok(ttl_ms)
}

/// Checks a repeated field's length before its items: an oversized list is
/// refused as a whole without looking at each item.
fn within_count(violations: &mut Violations, field: &str, count: usize, limit: usize) -> bool {
    if count > limit {
        violations.push(field, format!("has {count}; the limit is {limit}"));
        return false;
    }
    true
}

/// Reserve. `ttl_seconds == 0` takes `default_ttl_ms` (the node's default).
pub fn parse_reserve(
    message: v1::ReserveRequest,
    default_ttl_ms: i64,
) -> Result<ReserveRequest, CoreError> {
    let mut violations = Violations::default();
    let id = violations.parse(ReservationId::parse("reservation_id", &message.reservation_id));
    let channel = violations.parse(ChannelId::parse("channel_id", &message.channel_id));
    let ttl_ms = violations.parse(ttl_ms("ttl_seconds", message.ttl_seconds, default_ttl_ms));
    let mut lines = None;
    if message.lines.is_empty() {
        violations.push("lines", "must have at least one line");
    } else if within_count(&mut violations, "lines", message.lines.len(), MAX_LINES_PER_RESERVATION)
    {
        lines = parse_reserve_lines(&mut violations, &message.lines);
    }
    let metadata = parse_metadata(&mut violations, "metadata", message.metadata);
    let request = match (id, channel, lines, ttl_ms) {
        (Some(id), Some(channel), Some(lines), Some(ttl_ms)) => {
            Some(ReserveRequest { id, channel, lines, ttl_ms, metadata })
        }
        _ => None,
    };
    violations.finish(request)
}

/// A reservation's caller data, checked against its limits (see
/// [`atp_core::ids::MAX_LABELS_PER_RESERVATION`] and the constants beside it).
pub(crate) fn parse_metadata(
    violations: &mut Violations,
    field: &str,
    message: Option<v1::ReservationMetadata>,
) -> Metadata {
    let Some(message) = message else { return Metadata::default() };
    let metadata =
        Metadata { order_id: message.order_id, labels: message.labels.into_iter().collect() };
    violations.extend(metadata.validate(field));
    metadata
}

fn parse_reserve_lines(
    violations: &mut Violations,
    lines: &[v1::ReservationLine],
) -> Option<Vec<ReserveLine>> {
    let mut parsed = Vec::with_capacity(lines.len());
    let mut all_good = true;
    for (index, line) in lines.iter().enumerate() {
        let sku = violations.parse(Sku::parse(&format!("lines[{index}].sku"), &line.sku));
        let location = violations
            .parse(LocationId::parse(&format!("lines[{index}].location_id"), &line.location_id));
        let quantity = violations
            .check(validate_line_quantity(&format!("lines[{index}].quantity"), line.quantity));
        match (sku, location, quantity) {
            (Some(sku), Some(location), true) => {
                parsed.push(ReserveLine { sku, location, quantity: line.quantity });
            }
            _ => all_good = false,
        }
    }
    all_good.then_some(parsed)
}

/// A validated Commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The reservation to commit.
    pub id: ReservationId,
    /// Per-line quantities; lines not named commit all they hold.
    pub lines: Vec<CommitLine>,
}

/// Commit. Line quantities are checked against 0..=[`MAX_LINE_QUANTITY`]
/// here; against what the reservation holds by its home shard.
pub fn parse_commit(message: v1::CommitRequest) -> Result<Commit, CoreError> {
    let mut violations = Violations::default();
    let id = violations.parse(ReservationId::parse("reservation_id", &message.reservation_id));
    let mut lines = None;
    if within_count(&mut violations, "lines", message.lines.len(), MAX_LINES_PER_RESERVATION) {
        lines = parse_commit_lines(&mut violations, &message.lines);
    }
    let commit = match (id, lines) {
        (Some(id), Some(lines)) => Some(Commit { id, lines }),
        _ => None,
    };
    violations.finish(commit)
}

fn parse_commit_lines(
    violations: &mut Violations,
    lines: &[v1::CommitLine],
) -> Option<Vec<CommitLine>> {
    let mut parsed = Vec::with_capacity(lines.len());
    let mut all_good = true;
    for (index, line) in lines.iter().enumerate() {
        let sku = violations.parse(Sku::parse(&format!("lines[{index}].sku"), &line.sku));
        let location = violations
            .parse(LocationId::parse(&format!("lines[{index}].location_id"), &line.location_id));
        let quantity_ok = (0..=MAX_LINE_QUANTITY).contains(&line.quantity);
        if !quantity_ok {
            violations.push(
                format!("lines[{index}].quantity"),
                format!("is {}; must be 0..={MAX_LINE_QUANTITY}", line.quantity),
            );
        }
        match (sku, location, quantity_ok) {
            (Some(sku), Some(location), true) => {
                parsed.push(CommitLine { sku, location, quantity: line.quantity });
            }
            _ => all_good = false,
        }
    }
    all_good.then_some(parsed)
}

/// The `reservation_id` field of Release, Cancel and GetReservation.
pub fn parse_reservation_id(reservation_id: &str) -> Result<ReservationId, CoreError> {
    Ok(ReservationId::parse("reservation_id", reservation_id)?)
}

/// A validated ExtendReservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extend {
    /// The reservation to extend.
    pub id: ReservationId,
    /// The new lifetime, counted from now.
    pub ttl_ms: i64,
    /// The Extend's idempotency key, if any.
    pub request_id: Option<String>,
}

/// ExtendReservation. `ttl_seconds == 0` takes `default_ttl_ms`, as in Reserve.
pub fn parse_extend(
    message: v1::ExtendReservationRequest,
    default_ttl_ms: i64,
) -> Result<Extend, CoreError> {
    let mut violations = Violations::default();
    let id = violations.parse(ReservationId::parse("reservation_id", &message.reservation_id));
    let ttl_ms = violations.parse(ttl_ms("ttl_seconds", message.ttl_seconds, default_ttl_ms));
    let request_id = (!message.request_id.is_empty()).then_some(message.request_id);
    if let Some(request_id) = &request_id {
        violations.check(atp_core::ids::validate_id("request_id", request_id));
    }
    let extend = match (id, ttl_ms) {
        (Some(id), Some(ttl_ms)) => Some(Extend { id, ttl_ms, request_id }),
        _ => None,
    };
    violations.finish(extend)
}

/// A validated ModifyReservation (the lines are checked against the
/// reservation's channel on its home shard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Modify {
    /// The reservation to change.
    pub id: ReservationId,
    /// The change's idempotency key.
    pub request_id: String,
    /// Every line after the change.
    pub lines: Vec<ReserveLine>,
}

/// ModifyReservation.
pub fn parse_modify(message: v1::ModifyReservationRequest) -> Result<Modify, CoreError> {
    let mut violations = Violations::default();
    let id = violations.parse(ReservationId::parse("reservation_id", &message.reservation_id));
    let request_id = if message.request_id.is_empty() {
        violations.push("request_id", "is required: the key that makes a retried change safe");
        None
    } else {
        violations
            .check(atp_core::ids::validate_id("request_id", &message.request_id))
            .then_some(message.request_id)
    };
    let mut lines = None;
    if message.lines.is_empty() {
        violations.push(
            "lines",
            "must have at least one line; use Release to free the whole reservation",
        );
    } else if within_count(&mut violations, "lines", message.lines.len(), MAX_LINES_PER_RESERVATION)
    {
        lines = parse_reserve_lines(&mut violations, &message.lines);
    }
    let modify = match (id, request_id, lines) {
        (Some(id), Some(request_id), Some(lines)) => Some(Modify { id, request_id, lines }),
        _ => None,
    };
    violations.finish(modify)
}

/// A validated GetAvailability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvailabilityQuery {
    /// 1..=[`MAX_SKUS_PER_QUERY`] SKUs.
    pub skus: Vec<Sku>,
    /// Only these locations (empty: every location with a position).
    pub locations: Vec<LocationId>,
    /// Only these channels (empty: every configured channel).
    pub channels: Vec<ChannelId>,
}

/// GetAvailability.
pub fn parse_availability_query(
    message: v1::GetAvailabilityRequest,
) -> Result<AvailabilityQuery, CoreError> {
    let mut violations = Violations::default();
    let mut skus = None;
    if message.skus.is_empty() {
        violations.push("skus", "must name at least one sku");
    } else if within_count(&mut violations, "skus", message.skus.len(), MAX_SKUS_PER_QUERY) {
        skus = parse_ids(&mut violations, "skus", &message.skus, Sku::parse);
    }
    let mut locations = None;
    if within_count(&mut violations, "location_ids", message.location_ids.len(), MAX_LOCATIONS) {
        locations =
            parse_ids(&mut violations, "location_ids", &message.location_ids, LocationId::parse);
    }
    let mut channels = None;
    if within_count(&mut violations, "channel_ids", message.channel_ids.len(), MAX_CHANNELS) {
        channels =
            parse_ids(&mut violations, "channel_ids", &message.channel_ids, ChannelId::parse);
    }
    let query = match (skus, locations, channels) {
        (Some(skus), Some(locations), Some(channels)) => {
            Some(AvailabilityQuery { skus, locations, channels })
        }
        _ => None,
    };
    violations.finish(query)
}

/// Parses every id of a repeated field; `None` if any is bad.
pub(crate) fn parse_ids<T>(
    violations: &mut Violations,
    field: &str,
    values: &[String],
    parse: fn(&str, &str) -> Result<T, FieldViolation>,
) -> Option<Vec<T>> {
    let mut parsed = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        if let Some(id) = violations.parse(parse(&format!("{field}[{index}]"), value)) {
            parsed.push(id);
        }
    }
    (parsed.len() == values.len()).then_some(parsed)
}

/// GetShard: the shard named, or the shard of the SKU named.
pub fn parse_shard_target(message: v1::GetShardRequest) -> Result<u32, CoreError> {
    use v1::get_shard_request::Target;
    match message.target {
        None => Err(CoreError::invalid("target", "must be set: a shard number or a sku")),
        Some(Target::Shard(shard)) if shard >= SHARD_COUNT => {
            Err(CoreError::invalid("shard", format!("is {shard}; must be 0..{SHARD_COUNT}")))
        }
        Some(Target::Shard(shard)) => Ok(shard),
        Some(Target::Sku(sku)) => Ok(shard_of(Sku::parse("sku", &sku)?.as_str())),
    }
}

/// A validated QueryLedger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerQuery {
    /// Only this SKU.
    pub sku: Option<Sku>,
    /// Only this location.
    pub location: Option<LocationId>,
    /// Only changes caused by this reservation or event id.
    pub cause: Option<String>,
    /// Entries at or after this time (ms).
    pub from_ms: Option<i64>,
    /// Entries before this time (ms).
    pub to_ms: Option<i64>,
    /// Entries per page: 1..=[`MAX_LEDGER_LIMIT`].
    pub limit: usize,
    /// Where the previous page ended (decoded from hex; empty for the first page).
    pub page_token: Vec<u8>,
}

pub(crate) fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

/// A page token as it travels in QueryLedgerResponse (lowercase hex).
pub fn encode_page_token(token: &[u8]) -> String {
    token.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// QueryLedger. A limit of 0 is [`DEFAULT_LEDGER_LIMIT`]; one above
/// [`MAX_LEDGER_LIMIT`] is lowered to it (a page size, not an error).
pub fn parse_ledger_query(message: v1::QueryLedgerRequest) -> Result<LedgerQuery, CoreError> {
    let mut violations = Violations::default();
    let optional = |value: &str| (!value.is_empty()).then_some(value.to_owned());
    let sku = match optional(&message.sku) {
        None => Some(None),
        Some(sku) => violations.parse(Sku::parse("sku", &sku)).map(Some),
    };
    let location = match optional(&message.location_id) {
        None => Some(None),
        Some(location) => violations.parse(LocationId::parse("location_id", &location)).map(Some),
    };
    let cause = optional(&message.cause_id);
    if let Some(cause) = &cause {
        violations.check(atp_core::ids::validate_id("cause_id", cause));
    }
    if message.sku.is_empty() && message.location_id.is_empty() && message.cause_id.is_empty() {
        violations.push("sku", "one of sku, location_id or cause_id is required");
    }
    if message.from_ms < 0 || message.to_ms < 0 {
        violations.push("from_ms", "times are ms since the Unix epoch and not negative");
    }
    if message.to_ms != 0 && message.from_ms > message.to_ms {
        violations.push("to_ms", "must not be before from_ms");
    }
    let page_token = decode_hex(&message.page_token);
    if page_token.is_none() {
        violations.push("page_token", "is not a token this server returned");
    }
    let limit = match usize::try_from(message.limit) {
        Ok(0) => DEFAULT_LEDGER_LIMIT,
        Ok(limit) => limit.min(MAX_LEDGER_LIMIT),
        Err(_) => MAX_LEDGER_LIMIT,
    };
    let query = match (sku, location, page_token) {
        (Some(sku), Some(location), Some(page_token)) => Some(LedgerQuery {
            sku,
            location,
            cause,
            from_ms: (message.from_ms != 0).then_some(message.from_ms),
            to_ms: (message.to_ms != 0).then_some(message.to_ms),
            limit,
            page_token,
        }),
        _ => None,
    };
    violations.finish(query)
}

#[cfg(test)]
mod tests;

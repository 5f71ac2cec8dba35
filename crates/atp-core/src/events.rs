//! Stock events: physical facts from ERP/WMS, each applied at most once.

use crate::ids::{EventId, LocationId, ReservationId, Sku};

/// The `as_of_ms` of a count given without a time: the count is as of the
/// moment its shard applies it.
pub const COUNTED_NOW: i64 = 0;

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StockEventKind {
    /// Units arrived: on_hand += quantity.
    Received {
        /// Units.
        quantity: i64,
    },
    /// Units left the building. Naming a committed reservation lowers its
    /// committed units at this location together with on_hand.
    Shipped {
        /// Units.
        quantity: i64,
        /// The reservation fulfilled, if any.
        reservation: Option<ReservationId>,
    },
    /// Absolute on_hand as of a time; movements applied after it are added.
    Counted {
        /// Units counted.
        on_hand: i64,
        /// When the count was true (ms); [`COUNTED_NOW`] (0) means when it is applied.
        as_of_ms: i64,
    },
    /// Signed correction of on_hand.
    Adjusted {
        /// Units (non-zero).
        delta: i64,
        /// Why.
        reason: String,
    },
    /// Units damaged or on hold: unavailable += quantity.
    MarkedUnavailable {
        /// Units.
        quantity: i64,
        /// Why.
        reason: String,
    },
    /// Units back from unavailable.
    ReleasedUnavailable {
        /// Units.
        quantity: i64,
    },
    /// Units expected at a time: shown, not sellable.
    IncomingExpected {
        /// Units.
        quantity: i64,
        /// Expected arrival (ms).
        expected_at_ms: i64,
    },
    /// Expected units arrived: incoming −= quantity (earliest first), on_hand += quantity.
    IncomingReceived {
        /// Units.
        quantity: i64,
    },
}

impl StockEventKind {
    /// Every kind's [`StockEventKind::name`].
    pub const NAMES: [&'static str; 8] = [
        "received",
        "shipped",
        "counted",
        "adjusted",
        "unavailable",
        "released_unavailable",
        "incoming",
        "incoming_received",
    ];

    /// Short name used in the ledger.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Received { .. } => "received",
            Self::Shipped { .. } => "shipped",
            Self::Counted { .. } => "counted",
            Self::Adjusted { .. } => "adjusted",
            Self::MarkedUnavailable { .. } => "unavailable",
            Self::ReleasedUnavailable { .. } => "released_unavailable",
            Self::IncomingExpected { .. } => "incoming",
            Self::IncomingReceived { .. } => "incoming_received",
        }
    }
}

/// One (sku, location) fact with its own id.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StockEvent {
    /// Applied at most once (deduplicated on the SKU's shard).
    pub id: EventId,
    /// The SKU.
    pub sku: Sku,
    /// The location.
    pub location: LocationId,
    /// What happened.
    pub kind: StockEventKind,
}

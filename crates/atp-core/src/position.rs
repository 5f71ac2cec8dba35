//! A (sku, location) position: the buckets of DESIGN.md §2 and the ATP formula.

use std::collections::BTreeMap;

/// Quantities of one SKU at one location.
///
/// `safety_stock` is configuration (per location) and is passed in where needed,
/// so the stored position holds only what events and requests change.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Physical units in the building (may go negative if a fact says so).
    pub on_hand: i64,
    /// Units held by open checkout reservations.
    pub reserved: i64,
    /// Units of placed orders not yet shipped.
    pub committed: i64,
    /// Damaged, quality hold, quarantine.
    pub unavailable: i64,
    /// Units expected, by expected time (ms); shown, not yet sellable.
    pub incoming: BTreeMap<i64, i64>,
}

/// Changes to the buckets of a position, as recorded in the ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deltas {
    /// Change of on_hand.
    pub on_hand: i64,
    /// Change of reserved.
    pub reserved: i64,
    /// Change of committed.
    pub committed: i64,
    /// Change of unavailable.
    pub unavailable: i64,
    /// Change of the incoming total.
    pub incoming: i64,
}

impl Deltas {
    /// Whether nothing changed.
    pub fn is_zero(&self) -> bool {
        *self == Deltas::default()
    }
}

impl Position {
    /// Units spoken for: `reserved + committed + unavailable + safety_stock`.
    pub fn claimed(&self, safety_stock: i64) -> i64 {
        self.reserved + self.committed + self.unavailable + safety_stock
    }

    /// `max(0, on_hand − reserved − committed − unavailable − safety_stock)`.
    pub fn atp(&self, safety_stock: i64) -> i64 {
        (self.on_hand - self.claimed(safety_stock)).max(0)
    }

    /// Units by which claims exceed on_hand (0 when healthy).
    pub fn shortfall(&self, safety_stock: i64) -> i64 {
        (self.claimed(safety_stock) - self.on_hand).max(0)
    }

    /// Total incoming units.
    pub fn incoming_total(&self) -> i64 {
        self.incoming.values().sum()
    }

    /// Whether every bucket is zero (the position can be forgotten).
    pub fn is_empty(&self) -> bool {
        self.on_hand == 0
            && self.reserved == 0
            && self.committed == 0
            && self.unavailable == 0
            && self.incoming.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atp_and_shortfall() {
        let position = Position {
            on_hand: 10,
            reserved: 3,
            committed: 2,
            unavailable: 1,
            ..Default::default()
        };
        assert_eq!(position.atp(2), 2);
        assert_eq!(position.shortfall(2), 0);
        assert_eq!(position.atp(6), 0);
        assert_eq!(position.shortfall(6), 2);
    }
}

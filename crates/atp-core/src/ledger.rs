//! The ledger: every change of a quantity, with its cause.

use crate::ids::{LocationId, Sku};
use crate::position::Deltas;

/// Why a position changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerKind {
    /// A hold was placed.
    Reserve,
    /// A hold was released by Release.
    Release,
    /// A hold expired.
    Expire,
    /// A hold was undone because another line of its reservation failed.
    Abort,
    /// A hold became committed units (the remainder freed).
    Commit,
    /// Unshipped committed units were freed.
    Cancel,
    /// A HELD reservation's line was changed: units held for it grew (the
    /// first step of a change) or shrank (its settlement or revert).
    Change,
    /// A stock event (its kind's name).
    Event(&'static str),
}

impl LedgerKind {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Release => "release",
            Self::Expire => "expire",
            Self::Abort => "abort",
            Self::Commit => "commit",
            Self::Cancel => "cancel",
            Self::Change => "change",
            Self::Event(name) => name,
        }
    }

    /// The kind named `name` (the inverse of [`LedgerKind::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "reserve" => Self::Reserve,
            "release" => Self::Release,
            "expire" => Self::Expire,
            "abort" => Self::Abort,
            "commit" => Self::Commit,
            "cancel" => Self::Cancel,
            "change" => Self::Change,
            other => {
                Self::Event(crate::events::StockEventKind::NAMES.iter().find(|n| **n == other)?)
            }
        })
    }
}

impl serde::Serialize for LedgerKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for LedgerKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown ledger kind {name}")))
    }
}

/// One change of one position.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    /// Position in the shard's ledger (gap-free, from 1).
    pub sequence: u64,
    /// When it was applied (ms).
    pub at_ms: i64,
    /// The SKU.
    pub sku: Sku,
    /// The location.
    pub location: LocationId,
    /// The reservation or event id that caused it (shared with the id).
    pub cause: std::sync::Arc<str>,
    /// What kind of change.
    pub kind: LedgerKind,
    /// The changes.
    pub deltas: Deltas,
    /// Resulting on_hand.
    pub on_hand: i64,
    /// Resulting reserved.
    pub reserved: i64,
    /// Resulting committed.
    pub committed: i64,
    /// Resulting unavailable.
    pub unavailable: i64,
    /// Resulting incoming total.
    pub incoming: i64,
}

//! The pure domain core of atp.
//!
//! Everything here is synchronous, deterministic and free of I/O; time is a
//! parameter (`now`, ms since the Unix epoch). The main types:
//!
//! - ids and limits ([`ids`]): validated newtypes and the named bounds every
//!   request is checked against;
//! - [`position::Position`]: the buckets of one (sku, location) and the ATP formula;
//! - [`catalog::Catalog`]: locations and channels (configuration);
//! - [`shard::ShardState`]: the state machine of one virtual shard — holds,
//!   reservation records, stock events, ledger, expiry deadlines;
//! - [`hash::shard_of`]: the documented SKU → shard function.

pub mod availability;
pub mod capacity;
pub mod catalog;
pub mod catalog_codec;
pub mod error;
pub mod events;
pub mod hash;
pub mod ids;
pub mod kits;
pub mod ledger;
pub mod location_map;
pub mod position;
pub mod publish;
pub mod reservation;
pub mod routing;
pub mod shard;

pub use error::{CoreError, FieldViolation};

//! The Rust SDK of atp: the one client every tool uses (atpctl, atp-loadgen,
//! services).
//!
//! A [`Client`] is built from one or more endpoints ([`Client::builder`]) and
//! holds a pool of HTTP/2 connections to each (the transport lives in one
//! private module, where a shard map will later choose the node). Every call
//! goes through one path that applies:
//!
//! - a **deadline** per attempt ([`ClientBuilder::deadline`], default 10 s);
//! - **typed errors** ([`Error`]) read from the status code and its
//!   `google.rpc` details: one variant per reason the server sends
//!   ([`Error::InsufficientStock`] with the SKU, location and numbers,
//!   [`Error::WrongState`], [`Error::PayloadMismatch`], ...) and
//!   [`Error::Other`] keeping code, reason and message of anything else;
//! - **retries of only what is safe** ([`RetryPolicy`]): the very same
//!   request (so the same reservation or event id) is sent again on
//!   UNAVAILABLE, DEADLINE_EXCEEDED, and RESOURCE_EXHAUSTED only when its
//!   reason is `OVERLOADED`; refusals, a message too large and a full disk are
//!   sent once. Backoff with jitter and a retry budget come from
//!   `tower::retry`.
//!
//! The common flows take and return plain types ([`Reserve`],
//! [`Reservation`]): [`Client::reserve`], [`Client::commit`],
//! [`Client::release`], [`Client::reserve_many`] (over ReserveBatch), ...
//! Every RPC is also reachable with its generated messages through
//! [`Client::rpc`], and the messages themselves through [`proto`].
//!
//! ```no_run
//! # async fn checkout() -> Result<(), atp_client::Error> {
//! use atp_client::{Client, Error, Reserve};
//!
//! let client = Client::new("http://127.0.0.1:50051")?;
//! let reserve = Reserve::new("order-1001", "web").line("tee", "dc-1", 2);
//! match client.reserve(reserve).await {
//!     Ok(held) => {
//!         client.commit(&held.reservation_id).await?;
//!     }
//!     Err(Error::InsufficientStock { sku, available, .. }) => {
//!         eprintln!("only {available} of {sku} left");
//!     }
//!     Err(other) => return Err(other),
//! }
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod retry;
mod rpc;
mod transport;
mod types;

pub use client::{
    Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONNECTIONS_PER_ENDPOINT,
    DEFAULT_DEADLINE, MAX_BATCH_RESERVATIONS, MAX_CONNECTIONS_PER_ENDPOINT,
};
pub use error::{Error, FieldViolation};
pub use retry::{MAX_ATTEMPTS_LIMIT, RetryPolicy};
pub use rpc::Rpc;
pub use types::{Line, Reservation, ReservationLine, ReservationState, Reserve};

/// The `ErrorInfo` reasons the server sends (`INSUFFICIENT_STOCK`, ...).
pub use atp_proto::status::{DISK_FULL, INSUFFICIENT_STOCK, OVERLOADED, WRONG_STATE};
/// The generated `atp.v1` messages (requests, replies, enums).
pub use atp_proto::v1 as proto;
/// A gRPC status code, as [`Error::code`] returns it.
pub use tonic::Code;

//! The Rust SDK of atp: the one client every tool uses (atpctl, atp-loadgen,
//! services).
//!
//! A [`Client`] is built from one or more endpoints ([`Client::builder`]) and
//! holds a pool of HTTP/2 connections to each. Every call goes through one
//! path that applies:
//!
//! - **routing by the shard map** (cluster mode; on unless
//!   [`ClientBuilder::route_by_shard_map`] turns it off): the client follows
//!   `AdminService.WatchShardMap` on a configured endpoint and sends each
//!   call straight to its shard's owner (the reservation id's home, else
//!   the first SKU's shard) with the epoch the map gives; a call the owner
//!   refuses because the map was behind (`NOT_OWNER`, `STALE_EPOCH`), or
//!   that cannot reach it or gets no answer in time, goes at once to a
//!   configured endpoint,
//!   which forwards it. Until the first map, and on a single node, calls go
//!   round-robin to the configured endpoints;
//! - a **deadline** per attempt ([`ClientBuilder::deadline`], default 10 s);
//! - **typed errors** ([`Error`]) read from the [`Reason`] each status
//!   carries (`google.rpc.ErrorInfo`): one variant per reason, with its
//!   metadata as fields ([`Error::InsufficientStock`] with the SKU, location
//!   and numbers, [`Error::WrongState`], [`Error::NotActive`],
//!   [`Error::MessageTooLarge`] with the limit, ...); the code is read only
//!   when there is no atp reason (a broken connection, the client's
//!   deadline), and [`Error::Other`] keeps code, reason and message of a
//!   reason this SDK does not know;
//! - **retries of only what is safe** ([`RetryPolicy`],
//!   [`Error::is_retryable`]): the very same request (so the same
//!   reservation or event id) is sent again on `IN_PROGRESS`, `RECOVERING`,
//!   `SHUTTING_DOWN`, `STORAGE_FAILED`, `OVERLOADED`, `REQUEST_TIMEOUT`,
//!   `FAILING_CLOSED`, a transport failure and the client's deadline;
//!   refusals, `DISK_FULL`, `MESSAGE_TOO_LARGE` and `NOT_OWNER` (cluster
//!   mode: send it to the owner the error names) and `STALE_EPOCH` (the
//!   `x-atp-epoch` a request carried is not current) are sent once. Backoff with jitter and a retry
//!   budget come from `tower::retry`.
//!
//! The common flows take and return plain types ([`Reserve`],
//! [`Reservation`], [`Allocate`], [`Allocation`]): [`Client::reserve`],
//! [`Client::commit`], [`Client::release`], [`Client::reserve_many`] (over
//! ReserveBatch), [`Client::allocate`] (choose the locations that ship an
//! order and hold them), ...
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
mod routing;
mod rpc;
mod transport;
mod types;
mod watch;

pub use client::{
    Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_CONNECTIONS_PER_ENDPOINT,
    DEFAULT_DEADLINE, MAX_BATCH_RESERVATIONS, MAX_CONNECTIONS_PER_ENDPOINT,
};
pub use error::{Error, FieldViolation};
pub use retry::{MAX_ATTEMPTS_LIMIT, RetryPolicy};
pub use routing::RouteKey;
pub use rpc::Rpc;
pub use types::{
    Allocate, Allocation, Destination, ExcludedLocation, FillRule, Line, OrderLine, Plan,
    Reservation, ReservationLine, ReservationState, Reserve, RoutingPolicy, Shipment,
};
pub use watch::{Applied, Figure, Version, WatchView};

/// The generated `atp.v1` messages (requests, replies, enums).
pub use atp_proto::v1 as proto;
/// Every reason the server sends (`google.rpc.ErrorInfo.reason` in domain
/// [`ERROR_DOMAIN`]), as [`Error::reason`] returns it.
pub use atp_proto::{ERROR_DOMAIN, Reason};
/// A gRPC status code, as [`Error::code`] returns it.
pub use tonic::Code;

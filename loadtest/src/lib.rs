//! `atp-loadgen`: drives an atp node with realistic traffic over gRPC,
//! measures throughput and latency, then checks through the API that
//! nothing was oversold or lost.
//!
//! A run has three phases, each a function so a crash test can drive them
//! (and restart the node in between):
//!
//! 1. [`setup()`] creates the run's data through the API — locations, one
//!    channel, stock by `received` events (at most
//!    [`setup::MAX_EVENTS_PER_CALL`] per call) — every id prefixed with the
//!    run id, every call idempotent. It returns a [`Setup`].
//! 2. [`run`] sends a [`Scenario`] closed-loop (N clients) or open-loop (a
//!    fixed arrival rate, latency from the intended send time) over M
//!    connections, records HDR histograms in microseconds and counts errors
//!    by gRPC code. Every operation is logged in an [`AckLog`] before it is
//!    sent and again when answered; an answer lost (connection broken, node
//!    killed, timeout) leaves it "in doubt". Connection failures never stop
//!    the run: channels reconnect on next use. It returns a [`Report`]
//!    (which carries the log).
//! 3. [`check()`] compares the node's numbers with the setup and the log
//!    (merged over every run against the same setup) and returns a
//!    [`CheckReport`].
//!
//! [`Config`] is the command line of the `atp-loadgen` binary and the
//! library's input alike.

mod acks;
pub mod check;
pub mod client;
pub mod config;
mod routing;
mod run;
mod scenario;
pub mod setup;
pub mod stats;

pub use acks::{AckEntry, AckLog, Acked, Found, InDoubt, LineRef, OrderRef};
pub use check::{CheckReport, check};
pub use config::{Config, Mode, Scenario};
pub use run::{run, run_until};
pub use setup::{Setup, setup};
pub use stats::{Latency, Report};

/// Why a phase could not be carried out (broken invariants are not errors:
/// they are in the [`CheckReport`]).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The configuration cannot be run.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A setup or check call failed for good (or kept failing past its retry deadline).
    #[error("{what} failed: {error}")]
    Call {
        /// The call, in words.
        what: String,
        /// Its last error.
        #[source]
        error: atp_client::Error,
    },
    /// The node refused part of the setup.
    #[error("setup: {0}")]
    Setup(String),
    /// A worker task panicked or was cancelled.
    #[error("a load worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

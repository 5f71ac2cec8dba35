//! The real `atpd` process harness, shared with the other crates' tests
//! through `atp-testkit`.

#![allow(unused_imports)] // Each test binary uses a different part of it.

pub use atp_testkit::{Atpd, POLL_INTERVAL, STARTUP_DEADLINE, eventually};

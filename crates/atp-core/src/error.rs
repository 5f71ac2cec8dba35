//! Domain errors. The server maps each variant to one gRPC code in one table.

use crate::catalog::Lifecycle;
use crate::reservation::ReservationState;

/// One bad field of a request: which field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `lines[3].quantity`.
    pub field: String,
    /// What is wrong, in lowercase words.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// Malformed input; nothing was changed.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// A promise would exceed what can be promised at a position or channel.
    #[error(
        "insufficient stock for sku {sku} at {location}: requested {requested}, available {available}"
    )]
    InsufficientStock {
        /// The SKU short of stock.
        sku: String,
        /// The location (or `channel:<id>` when the channel's total is the limit).
        location: String,
        /// Units asked for.
        requested: i64,
        /// Units that could be promised.
        available: i64,
    },
    /// The reservation is in a state that does not allow the operation.
    #[error("reservation {reservation_id} is {state}; cannot {operation}")]
    WrongState {
        /// The reservation.
        reservation_id: String,
        /// Its current state.
        state: ReservationState,
        /// What was attempted.
        operation: &'static str,
    },
    /// A location or channel that is not ACTIVE was asked to promise, or a
    /// RETIRED one to change its state.
    #[error("{kind} {id} is {state}; cannot {operation}")]
    NotActive {
        /// `location` or `channel`.
        kind: &'static str,
        /// Its id.
        id: String,
        /// Its state.
        state: Lifecycle,
        /// What was attempted.
        operation: &'static str,
    },
    /// A request or event failed a precondition other than stock or state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// An id was reused with another payload.
    #[error("{0}")]
    AlreadyExists(String),
    /// No such reservation (or other object).
    #[error("{0}")]
    NotFound(String),
    /// The request is being worked on by an earlier call with the same id; retry.
    #[error("{0}")]
    InProgress(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{} {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl CoreError {
    /// One field violation as an error.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        CoreError::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<FieldViolation> for CoreError {
    fn from(violation: FieldViolation) -> Self {
        CoreError::InvalidArgument(vec![violation])
    }
}

//! Typed errors, read from the status code and its `google.rpc` details.
//!
//! One variant per reason the server sends (see `atp_proto::status` and
//! `atp-server`'s error table), and [`Error::Other`] for anything else, which
//! keeps the code, the reason (if any) and the message.

use std::time::Duration;

use atp_proto::status as reasons;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// One bad field of a request, as the server named it (`lines[3].quantity`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// What a call failed with. Refusals (the server decided, nothing changed)
/// are never retried; [`Error::is_retryable`] says which errors are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// INVALID_ARGUMENT: the request is malformed; `violations` name each bad
    /// field (as many as fit in a status).
    #[error("{message}")]
    InvalidArgument {
        /// The server's message (it names the first fields too).
        message: String,
        /// The fields the server named.
        violations: Vec<FieldViolation>,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// FAILED_PRECONDITION, reason `INSUFFICIENT_STOCK`: a line asked for more
    /// than the channel may promise at its location.
    #[error(
        "insufficient stock of {sku} at {location}: requested {requested}, available {available}"
    )]
    InsufficientStock {
        /// The SKU of the refused line.
        sku: String,
        /// Its location.
        location: String,
        /// Units the line asked for.
        requested: i64,
        /// Units the channel could promise there.
        available: i64,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// FAILED_PRECONDITION, reason `WRONG_STATE`: the reservation is not in a
    /// state that allows the operation (commit an expired hold, cancel a held one).
    #[error("reservation {reservation_id} is {state}; cannot {operation}")]
    WrongState {
        /// The reservation.
        reservation_id: String,
        /// Its state, as the server spells it (`EXPIRED`).
        state: String,
        /// The refused operation (`commit`, `release`, `cancel`, `extend`).
        operation: String,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// FAILED_PRECONDITION without a reason: another refused precondition
    /// (an inactive channel or location, a missing configuration).
    #[error("failed precondition: {message}")]
    FailedPrecondition {
        /// The server's message.
        message: String,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// ALREADY_EXISTS: the id was used before with another payload (a Reserve
    /// with other lines, a Commit with other quantities, a stock event that differs).
    #[error("payload mismatch: {message}")]
    PayloadMismatch {
        /// The server's message (it names the id).
        message: String,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// NOT_FOUND: no such reservation (or it was forgotten after its retention).
    #[error("{message}")]
    NotFound {
        /// The server's message.
        message: String,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// UNAVAILABLE with a `RetryInfo`: the id is still being worked on by an
    /// earlier call; the same request may be sent again after `retry_after`.
    #[error("in progress: {message}")]
    InProgress {
        /// The server's message.
        message: String,
        /// The wait the server suggested.
        retry_after: Option<Duration>,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// RESOURCE_EXHAUSTED, reason `OVERLOADED`: a full shard mailbox or too
    /// many requests in flight; nothing was done, a retry later may succeed.
    #[error("overloaded: {message}")]
    Overloaded {
        /// The server's message.
        message: String,
        /// The wait the server suggested.
        retry_after: Option<Duration>,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// RESOURCE_EXHAUSTED, reason `DISK_FULL`: the node refuses writes until
    /// an operator frees space; not worth a retry.
    #[error("disk full: {message}")]
    DiskFull {
        /// The server's message.
        message: String,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// UNAVAILABLE without a `RetryInfo`: no connection, or the node is
    /// starting, stopping or its storage failed. The call may or may not have
    /// been applied; the same request is safe to send again.
    #[error("unavailable: {message}")]
    Unavailable {
        /// The server's (or the transport's) message.
        message: String,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// DEADLINE_EXCEEDED: the call took longer than the client's deadline or
    /// the server's request timeout. Its outcome is unknown.
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded {
        /// Who gave up, and after how long.
        message: String,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// Any other status, kept whole: a request over the server's size limit
    /// (OUT_OF_RANGE from tonic), a RESOURCE_EXHAUSTED that does not say
    /// `OVERLOADED`, UNIMPLEMENTED, INTERNAL, a reason this SDK does not know.
    #[error("{code:?}: {message}")]
    Other {
        /// The gRPC code.
        code: Code,
        /// The `ErrorInfo` reason, when the status had one.
        reason: Option<String>,
        /// The message.
        message: String,
        /// The status as received, kept as this error's source (`None`
        /// when the client itself gave up or found the reply malformed).
        #[source]
        status: Option<Box<Status>>,
    },
    /// The client could not be built (an endpoint that is not a URI, a bad
    /// setting): nothing was sent.
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The typed error of `status`.
    pub fn from_status(status: &Status) -> Self {
        let message = status.message().to_owned();
        let kept = || Some(Box::new(status.clone()));
        let info = status.get_details_error_info();
        let reason = info.as_ref().map(|info| info.reason.as_str());
        let metadata = |key: &str| {
            info.as_ref().and_then(|info| info.metadata.get(key)).cloned().unwrap_or_default()
        };
        let number = |key: &str| metadata(key).parse::<i64>().unwrap_or_default();
        let retry_after = || status.get_details_retry_info().and_then(|info| info.retry_delay);
        match (status.code(), reason) {
            (Code::InvalidArgument, _) => Error::InvalidArgument {
                message,
                violations: violations_of(status),
                status: kept(),
            },
            (Code::FailedPrecondition, Some(reasons::INSUFFICIENT_STOCK)) => {
                Error::InsufficientStock {
                    sku: metadata("sku"),
                    location: metadata("location"),
                    requested: number("requested"),
                    available: number("available"),
                    status: kept(),
                }
            }
            (Code::FailedPrecondition, Some(reasons::WRONG_STATE)) => Error::WrongState {
                reservation_id: metadata("reservation_id"),
                state: metadata("state"),
                operation: metadata("operation"),
                status: kept(),
            },
            (Code::FailedPrecondition, None) => {
                Error::FailedPrecondition { message, status: kept() }
            }
            (Code::AlreadyExists, None) => Error::PayloadMismatch { message, status: kept() },
            (Code::NotFound, None) => Error::NotFound { message, status: kept() },
            (Code::Unavailable, None) => match retry_after() {
                Some(delay) => {
                    Error::InProgress { message, retry_after: Some(delay), status: kept() }
                }
                None => Error::Unavailable { message, status: kept() },
            },
            (Code::ResourceExhausted, Some(reasons::OVERLOADED)) => {
                Error::Overloaded { message, retry_after: retry_after(), status: kept() }
            }
            (Code::ResourceExhausted, Some(reasons::DISK_FULL)) => {
                Error::DiskFull { message, status: kept() }
            }
            (Code::DeadlineExceeded, None) => Error::DeadlineExceeded { message, status: kept() },
            (code, reason) => {
                Error::Other { code, reason: reason.map(str::to_owned), message, status: kept() }
            }
        }
    }

    /// Whether sending the very same request again is safe and may help:
    /// UNAVAILABLE (in progress, no connection, node starting or stopping),
    /// DEADLINE_EXCEEDED, and RESOURCE_EXHAUSTED only when it says
    /// `OVERLOADED`. Every request the SDK sends carries its own id (a
    /// reservation id, event ids) or only reads, so a repeat is applied once.
    /// Refusals, a message too large (OUT_OF_RANGE) and a full disk are final.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InProgress { .. }
            | Error::Overloaded { .. }
            | Error::Unavailable { .. }
            | Error::DeadlineExceeded { .. } => true,
            Error::InvalidArgument { .. }
            | Error::InsufficientStock { .. }
            | Error::WrongState { .. }
            | Error::FailedPrecondition { .. }
            | Error::PayloadMismatch { .. }
            | Error::NotFound { .. }
            | Error::DiskFull { .. }
            | Error::Other { .. }
            | Error::Config(_) => false,
        }
    }

    /// The gRPC code this error stands for (INVALID_ARGUMENT for [`Error::Config`]).
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } | Error::Config(_) => Code::InvalidArgument,
            Error::InsufficientStock { .. }
            | Error::WrongState { .. }
            | Error::FailedPrecondition { .. } => Code::FailedPrecondition,
            Error::PayloadMismatch { .. } => Code::AlreadyExists,
            Error::NotFound { .. } => Code::NotFound,
            Error::InProgress { .. } | Error::Unavailable { .. } => Code::Unavailable,
            Error::Overloaded { .. } | Error::DiskFull { .. } => Code::ResourceExhausted,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::Other { code, .. } => *code,
        }
    }

    /// The `ErrorInfo` reason the server gave, if any (`INSUFFICIENT_STOCK`).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Error::InsufficientStock { .. } => Some(reasons::INSUFFICIENT_STOCK),
            Error::WrongState { .. } => Some(reasons::WRONG_STATE),
            Error::Overloaded { .. } => Some(reasons::OVERLOADED),
            Error::DiskFull { .. } => Some(reasons::DISK_FULL),
            Error::Other { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }

    /// The status this error was read from, with every `google.rpc` detail
    /// (`None` for [`Error::Config`] and errors the client raised itself).
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::InvalidArgument { status, .. }
            | Error::InsufficientStock { status, .. }
            | Error::WrongState { status, .. }
            | Error::FailedPrecondition { status, .. }
            | Error::PayloadMismatch { status, .. }
            | Error::NotFound { status, .. }
            | Error::InProgress { status, .. }
            | Error::Overloaded { status, .. }
            | Error::DiskFull { status, .. }
            | Error::Unavailable { status, .. }
            | Error::DeadlineExceeded { status, .. }
            | Error::Other { status, .. } => status.as_deref(),
            Error::Config(_) => None,
        }
    }

    /// The wait the server suggested before a retry, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::InProgress { retry_after, .. } | Error::Overloaded { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::from_status(&status)
    }
}

fn violations_of(status: &Status) -> Vec<FieldViolation> {
    let Some(bad_request) = status.get_details_bad_request() else {
        return Vec::new();
    };
    bad_request
        .field_violations
        .into_iter()
        .map(|violation| FieldViolation {
            field: violation.field,
            description: violation.description,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The reasons a real atpd cannot be made to send on demand (a full disk,
    // an id in progress), built the way the server builds them.
    #[test]
    fn disk_full_is_final() {
        let details = tonic_types::ErrorDetails::with_error_info(
            reasons::DISK_FULL,
            reasons::ERROR_DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        );
        let status = Status::with_error_details(Code::ResourceExhausted, "disk full", details);
        let error = Error::from_status(&status);
        assert!(matches!(error, Error::DiskFull { .. }), "{error:?}");
        assert!(!error.is_retryable());
        assert_eq!(error.reason(), Some("DISK_FULL"));
    }

    #[test]
    fn in_progress_is_retried_after_its_delay() {
        let details = tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_millis(50)));
        let status = Status::with_error_details(Code::Unavailable, "r-1 in progress", details);
        let error = Error::from_status(&status);
        assert!(matches!(error, Error::InProgress { .. }), "{error:?}");
        assert!(error.is_retryable());
        assert_eq!(error.retry_after(), Some(Duration::from_millis(50)));
    }

    #[test]
    fn resource_exhausted_without_a_reason_is_kept_and_final() {
        let status = Status::resource_exhausted("quota used up");
        let error = Error::from_status(&status);
        assert!(
            matches!(&error, Error::Other { code: Code::ResourceExhausted, reason: None, message, .. }
                if message == "quota used up"),
            "{error:?}"
        );
        assert!(!error.is_retryable());
    }

    #[test]
    fn an_unknown_reason_is_kept() {
        let details = tonic_types::ErrorDetails::with_error_info(
            "SHARD_MOVED",
            reasons::ERROR_DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        );
        let status = Status::with_error_details(Code::FailedPrecondition, "moved", details);
        let error = Error::from_status(&status);
        assert_eq!(error.reason(), Some("SHARD_MOVED"));
        assert_eq!(error.code(), Code::FailedPrecondition);
        assert!(!error.is_retryable());
    }
}

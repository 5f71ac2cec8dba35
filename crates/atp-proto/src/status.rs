//! The error table: every [`CoreError`] to one [`Reason`] (so one gRPC code), with `google.rpc`
//! details a client can act on without parsing the message.

use std::time::Duration;

use atp_core::{CoreError, FieldViolation};
use prost::Message;
use tonic::{Code, Status};
use tonic_types::ErrorDetails;

use crate::reason::Reason;

/// `PreconditionFailure` violation type (and `ErrorInfo` reason) of a refused promise.
pub const INSUFFICIENT_STOCK: &str = Reason::InsufficientStock.name();
/// `PreconditionFailure` violation type (and `ErrorInfo` reason) of a reservation
/// in the wrong state for the operation.
pub const WRONG_STATE: &str = Reason::WrongState.name();
/// Bytes of field violations (paths and descriptions) carried in one status.
/// The details travel base64-encoded in a trailer next to the message, and
/// common clients (hyper, so tonic) refuse response headers over 16 KiB: a
/// request with 100 bad lines must still get a readable answer.
pub const MAX_REPORTED_VIOLATION_BYTES: usize = 6 * 1024;
/// Bytes of violations spelled out in the status message; the rest are counted.
const MAX_MESSAGE_VIOLATION_BYTES: usize = 1024;
/// Protobuf framing of one field violation, counted against the budget.
const VIOLATION_OVERHEAD_BYTES: usize = 8;
/// Suggested wait before retrying a request whose id is still being worked on.
const IN_PROGRESS_RETRY_DELAY: Duration = Duration::from_millis(50);
/// `ErrorInfo` reason of an overload (a full shard mailbox, too many requests
/// in flight): worth a retry after the `RetryInfo` delay.
pub const OVERLOADED: &str = Reason::Overloaded.name();
/// `ErrorInfo` reason of a write refused because the node's disk is full.
pub const DISK_FULL: &str = Reason::DiskFull.name();
/// Suggested wait before retrying an overloaded node.
pub const OVERLOADED_RETRY_DELAY: Duration = Duration::from_millis(100);

pub use crate::reason::ERROR_DOMAIN;

/// RESOURCE_EXHAUSTED for an overload, with reason [`OVERLOADED`] and a
/// `RetryInfo` of [`OVERLOADED_RETRY_DELAY`].
pub fn overloaded(message: impl Into<String>) -> Status {
    let retry = ErrorDetails::with_retry_info(Some(OVERLOADED_RETRY_DELAY));
    Reason::Overloaded.status(message, [], retry)
}

/// The reason a domain error is reported with.
pub fn reason_of_error(error: &CoreError) -> Reason {
    match error {
        CoreError::InvalidArgument(_) => Reason::InvalidArgument,
        CoreError::InsufficientStock { .. } => Reason::InsufficientStock,
        CoreError::WrongState { .. } => Reason::WrongState,
        CoreError::NotActive { .. } => Reason::NotActive,
        CoreError::FailedPrecondition(_) => Reason::PreconditionFailed,
        CoreError::AlreadyExists(_) => Reason::IdReused,
        CoreError::NotFound(_) => Reason::NotFound,
        CoreError::InProgress(_) => Reason::InProgress,
    }
}

/// The gRPC status of a domain error. One exhaustive match: a new variant
/// does not compile until it has a reason (and so a code).
pub fn status_of(error: CoreError) -> Status {
    let message = error.to_string();
    let reason = reason_of_error(&error);
    match error {
        CoreError::InvalidArgument(violations) => invalid_argument(violations),
        CoreError::InsufficientStock { sku, location, requested, available } => {
            let details = ErrorDetails::with_precondition_failure_violation(
                INSUFFICIENT_STOCK,
                format!("sku:{sku}/location:{location}"),
                message.clone(),
            );
            let metadata = [
                ("sku", sku),
                ("location", location),
                ("requested", requested.to_string()),
                ("available", available.to_string()),
            ];
            reason.status(message, metadata, details)
        }
        CoreError::WrongState { reservation_id, state, operation } => {
            let details = ErrorDetails::with_precondition_failure_violation(
                WRONG_STATE,
                format!("reservation:{reservation_id}"),
                message.clone(),
            );
            let metadata = [
                ("reservation_id", reservation_id),
                ("state", state.to_string()),
                ("operation", operation.to_owned()),
            ];
            reason.status(message, metadata, details)
        }
        CoreError::NotActive { kind, id, state, operation } => {
            let details = ErrorDetails::with_precondition_failure_violation(
                reason.name(),
                format!("{kind}:{id}"),
                message.clone(),
            );
            let metadata = [
                ("kind", kind.to_owned()),
                ("id", id),
                ("state", state.to_string()),
                ("operation", operation.to_owned()),
            ];
            reason.status(message, metadata, details)
        }
        CoreError::FailedPrecondition(_) | CoreError::AlreadyExists(_) | CoreError::NotFound(_) => {
            reason.plain(message)
        }
        CoreError::InProgress(_) => {
            reason.status(message, [], ErrorDetails::with_retry_info(Some(IN_PROGRESS_RETRY_DELAY)))
        }
    }
}

/// A gRPC code's name as gRPC spells it (`FAILED_PRECONDITION`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `status` as a `google.rpc.Status` message (code, message and the same
/// details), for an error carried inside a reply, such as one item of a
/// ReserveBatch. [`tonic::Status::details`] already holds an encoded
/// `google.rpc.Status` when the status was built with details.
pub fn rpc_status(status: &Status) -> tonic_types::pb::Status {
    let decoded = (!status.details().is_empty())
        .then(|| tonic_types::pb::Status::decode(status.details()).ok())
        .flatten();
    let details = decoded.map(|decoded| decoded.details).unwrap_or_default();
    tonic_types::pb::Status {
        code: status.code().into(),
        message: status.message().to_owned(),
        details,
    }
}

/// The [`tonic::Status`] that a `google.rpc.Status` carried in a reply
/// stands for, so a client reads its details as it would a call's error
/// (`tonic_types::StatusExt`).
pub fn status_from_rpc(status: tonic_types::pb::Status) -> Status {
    let code = Code::from(status.code);
    let message = status.message.clone();
    Status::with_details(code, message, status.encode_to_vec().into())
}

/// INVALID_ARGUMENT with a `BadRequest` naming each field, as many as fit in
/// [`MAX_REPORTED_VIOLATION_BYTES`] (the message says how many more there were).
fn invalid_argument(violations: Vec<FieldViolation>) -> Status {
    let total = violations.len();
    let mut message = String::from("invalid argument: ");
    let mut in_message = 0;
    let mut reported = Vec::new();
    let mut reported_bytes = 0;
    for violation in violations {
        let text = format!("{} {}", violation.field, violation.description);
        if in_message == reported.len() && message.len() + text.len() <= MAX_MESSAGE_VIOLATION_BYTES
        {
            if in_message > 0 {
                message.push_str("; ");
            }
            message.push_str(&text);
            in_message += 1;
        }
        let size = violation.field.len() + violation.description.len() + VIOLATION_OVERHEAD_BYTES;
        if reported_bytes + size > MAX_REPORTED_VIOLATION_BYTES {
            break;
        }
        reported_bytes += size;
        reported.push(tonic_types::FieldViolation::new(violation.field, violation.description));
    }
    if in_message < total {
        message.push_str(&format!("; and {} more", total - in_message));
    }
    let violations = ("violations", total.to_string());
    Reason::InvalidArgument.status(message, [violations], ErrorDetails::with_bad_request(reported))
}

#[cfg(test)]
mod tests {
    use atp_core::reservation::ReservationState;
    use tonic_types::StatusExt;

    use super::*;

    fn bad_request_fields(status: &Status) -> Vec<String> {
        let bad_request = status.get_details_bad_request().expect("a BadRequest detail");
        bad_request.field_violations.into_iter().map(|violation| violation.field).collect()
    }

    #[test]
    fn invalid_argument_names_every_field() {
        let status = status_of(CoreError::InvalidArgument(vec![
            FieldViolation::new("lines[0].sku", "must not be empty"),
            FieldViolation::new("lines[3].quantity", "is 0; must be 1..=1000000"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(bad_request_fields(&status), vec!["lines[0].sku", "lines[3].quantity"]);
        assert!(status.message().contains("lines[3].quantity is 0"), "{}", status.message());
    }

    #[test]
    fn many_violations_fit_in_a_header() {
        let violations = (0..300)
            .map(|index| {
                let field = format!("lines[{index}].location_id");
                FieldViolation::new(field, format!("unknown location {}", "x".repeat(128)))
            })
            .collect();
        let status = status_of(CoreError::InvalidArgument(violations));
        let fields = bad_request_fields(&status);
        assert!((10..300).contains(&fields.len()), "{} reported", fields.len());
        assert_eq!(fields[0], "lines[0].location_id");
        // The encoded google.rpc.Status repeats the message; base64 adds a third.
        let encoded = status.details().len() * 4 / 3 + status.message().len();
        assert!(encoded < 12 * 1024, "{encoded} bytes of trailers");
        assert!(status.message().len() <= MAX_MESSAGE_VIOLATION_BYTES + 32);
        assert!(status.message().ends_with("more"), "{}", status.message());
    }

    #[test]
    fn insufficient_stock_names_sku_location_and_numbers() {
        let status = status_of(CoreError::InsufficientStock {
            sku: "tee".into(),
            location: "dc-1".into(),
            requested: 3,
            available: 1,
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        for part in ["tee", "dc-1", "requested 3", "available 1"] {
            assert!(status.message().contains(part), "{part} missing in {}", status.message());
        }
        let failure = status.get_details_precondition_failure().expect("a PreconditionFailure");
        assert_eq!(failure.violations[0].r#type, INSUFFICIENT_STOCK);
        assert_eq!(failure.violations[0].subject, "sku:tee/location:dc-1");
        let info = status.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.metadata["available"], "1");
    }

    #[test]
    fn every_variant_has_its_code() {
        let cases = [
            (
                CoreError::WrongState {
                    reservation_id: "r-1".into(),
                    state: ReservationState::Expired,
                    operation: "commit",
                },
                Code::FailedPrecondition,
            ),
            (CoreError::FailedPrecondition("inactive".into()), Code::FailedPrecondition),
            (
                CoreError::NotActive {
                    kind: "location",
                    id: "dc-1".into(),
                    state: atp_core::catalog::Lifecycle::Paused,
                    operation: "take holds",
                },
                Code::FailedPrecondition,
            ),
            (CoreError::AlreadyExists("r-1".into()), Code::AlreadyExists),
            (CoreError::NotFound("r-1".into()), Code::NotFound),
            (CoreError::InProgress("r-1".into()), Code::Unavailable),
        ];
        for (error, code) in cases {
            let status = status_of(error.clone());
            assert_eq!(status.code(), code, "{error:?}");
            assert_eq!(status.message(), error.to_string());
        }
    }

    #[test]
    fn wrong_state_names_the_state() {
        let status = status_of(CoreError::WrongState {
            reservation_id: "r-1".into(),
            state: ReservationState::Expired,
            operation: "commit",
        });
        assert!(status.message().contains("EXPIRED"), "{}", status.message());
        let failure = status.get_details_precondition_failure().expect("a PreconditionFailure");
        assert_eq!(failure.violations[0].r#type, WRONG_STATE);
    }

    #[test]
    fn rpc_status_keeps_code_message_and_details() {
        let status = status_of(CoreError::InvalidArgument(vec![FieldViolation::new(
            "reservations[2].lines[0].sku",
            "must not be empty",
        )]));
        let rpc = rpc_status(&status);
        assert_eq!(rpc.code, i32::from(Code::InvalidArgument));
        assert_eq!(rpc.message, status.message());
        let back = status_from_rpc(rpc);
        assert_eq!(back.code(), Code::InvalidArgument);
        assert_eq!(bad_request_fields(&back), vec!["reservations[2].lines[0].sku"]);

        let plain = rpc_status(&Status::not_found("r-1"));
        assert_eq!((plain.code, plain.details.len()), (i32::from(Code::NotFound), 0));
    }

    #[test]
    fn in_progress_suggests_a_retry() {
        let status = status_of(CoreError::InProgress("reservation r-1 is being created".into()));
        assert!(status.get_details_retry_info().is_some());
    }
}

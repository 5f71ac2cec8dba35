//! Turning a failed call into words: the gRPC code, the message and the
//! `google.rpc` details, for people (stderr), for programs (`--json`), and
//! as an exit status.

use std::fmt::Write as _;

use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

/// Exit statuses, one per class of error (documented in the README). A
/// failed call is classed by its reason ([`atp_client::Reason`]), through the
/// SDK's typed error: what the SDK retries is [`exit::TRY_AGAIN`], the rest
/// by the reason's code.
pub mod exit {
    /// Some items of the work were refused (stock events, import rows,
    /// batch reservations); the rest was done and everything was printed.
    pub const PARTLY_REFUSED: u8 = 1;
    /// atpctl's own error: bad arguments (clap's usage errors are 2 too) or a
    /// bad input file, found before anything was sent; or an answer it could
    /// not read.
    pub const LOCAL: u8 = 2;
    /// The server found the request malformed: `INVALID_ARGUMENT`,
    /// `MESSAGE_TOO_LARGE`.
    pub const INVALID: u8 = 3;
    /// The server refused it by its rules: `INSUFFICIENT_STOCK`,
    /// `WRONG_STATE`, `NOT_ACTIVE`, `PRECONDITION_FAILED`, `ID_REUSED`.
    pub const REFUSED: u8 = 4;
    /// No such reservation (`NOT_FOUND`).
    pub const NOT_FOUND: u8 = 5;
    /// Not reachable, too busy or too slow now; the same command may work
    /// later: what the SDK retries (`IN_PROGRESS`, `OVERLOADED`,
    /// `STORAGE_FAILED`, `RECOVERING`, `SHUTTING_DOWN`, `REQUEST_TIMEOUT`, a
    /// broken connection, the client's deadline).
    pub const TRY_AGAIN: u8 = 6;
    /// Anything else (`DISK_FULL`, a reason atpctl does not know, INTERNAL,
    /// UNIMPLEMENTED, ...).
    pub const OTHER: u8 = 7;
}

/// The SDK error or status in `error`'s chain, if a call failed.
fn call_error(error: &anyhow::Error) -> Option<(&atp_client::Error, Option<&tonic::Status>)> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<atp_client::Error>().map(|sdk| (sdk, sdk.status())))
}

/// The exit status of `error` (see [`exit`]).
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some((sdk, _)) = call_error(error) {
        return exit_code_of(sdk);
    }
    // A bare status (the generated clients, not the SDK): read as the SDK would.
    match error.chain().find_map(|cause| cause.downcast_ref::<tonic::Status>()) {
        Some(status) => exit_code_of(&atp_client::Error::from_status(status)),
        None => exit::LOCAL,
    }
}

/// The exit status of a failed call, by its reason.
pub fn exit_code_of(error: &atp_client::Error) -> u8 {
    if let atp_client::Error::Config(_) = error {
        return exit::LOCAL;
    }
    if error.is_retryable() {
        return exit::TRY_AGAIN;
    }
    match error.code() {
        Code::InvalidArgument | Code::OutOfRange => exit::INVALID,
        Code::FailedPrecondition | Code::AlreadyExists => exit::REFUSED,
        Code::NotFound => exit::NOT_FOUND,
        // ABORTED: STALE_EPOCH (send again, with the epoch it names or none).
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => exit::TRY_AGAIN,
        _ => exit::OTHER,
    }
}

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`): the one atp-proto keeps.
pub use atp_proto::code_name;

/// `error` as one JSON object for `--json`: `code` (the gRPC code's name,
/// or `LOCAL` for atpctl's own errors), `message` (the whole chain, as on
/// stderr's first line), `exit_code`, and `details` (the `google.rpc`
/// details by kind; empty when there are none).
pub fn error_json(error: &anyhow::Error) -> Value {
    let described = describe_error(error);
    let described = described.strip_prefix("error: ").unwrap_or(&described);
    // A call's details are under `details`; atpctl's own error may take
    // several lines (every problem of a file) and keeps them all.
    let (code, details, message) = match call_error(error) {
        Some((sdk, status)) => (
            code_name(sdk.code()),
            status.map(details_json).unwrap_or_else(|| json!({})),
            described.lines().next().unwrap_or_default(),
        ),
        None => ("LOCAL", json!({}), described),
    };
    json!({
        "error": {
            "code": code,
            "message": message,
            "exit_code": exit_code(error),
            "details": details,
        }
    })
}

/// The `google.rpc` details of `status` as JSON, by kind.
pub fn details_json(status: &tonic::Status) -> Value {
    let details = status.get_error_details();
    let mut out = serde_json::Map::new();
    if let Some(bad_request) = details.bad_request() {
        let violations: Vec<Value> = bad_request
            .field_violations
            .iter()
            .map(|violation| json!({ "field": violation.field, "description": violation.description }))
            .collect();
        out.insert("field_violations".into(), violations.into());
    }
    if let Some(failure) = details.precondition_failure() {
        let violations: Vec<Value> = failure
            .violations
            .iter()
            .map(|violation| {
                json!({
                    "type": violation.r#type,
                    "subject": violation.subject,
                    "description": violation.description,
                })
            })
            .collect();
        out.insert("precondition_failures".into(), violations.into());
    }
    if let Some(info) = details.error_info() {
        let metadata: serde_json::Map<String, Value> =
            info.metadata.iter().map(|(key, value)| (key.clone(), value.clone().into())).collect();
        out.insert(
            "error_info".into(),
            json!({ "reason": info.reason, "domain": info.domain, "metadata": metadata }),
        );
    }
    if let Some(retry_delay) = details.retry_info().and_then(|retry| retry.retry_delay) {
        out.insert("retry_delay_ms".into(), (retry_delay.as_millis() as u64).into());
    }
    Value::Object(out)
}

/// The whole error for stderr: `error: <context>: <Code>: <message>`, then one indented
/// line per detail (field violations as `field: description`).
pub fn describe_error(error: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    let mut details = String::new();
    for cause in error.chain() {
        // The SDK's typed error keeps the status it was read from: say it
        // from the status, with its details.
        let status = match cause.downcast_ref::<atp_client::Error>() {
            Some(error) => error.status(),
            None => cause.downcast_ref::<tonic::Status>(),
        };
        if let Some(status) = status {
            parts.push(status_headline(status));
            details = status_details(status);
            break;
        }
        // Wrapped errors often repeat their source's message word for word.
        let message = cause.to_string();
        if parts.last() != Some(&message) {
            parts.push(message);
        }
    }
    format!("error: {}{details}", parts.join(": "))
}

/// `FailedPrecondition: insufficient stock …` (the code's description when there is no message).
pub fn status_headline(status: &tonic::Status) -> String {
    let code = status.code();
    if status.message().is_empty() {
        format!("{code:?}: {}", code.description())
    } else {
        format!("{code:?}: {}", status.message())
    }
}

/// The status's rich error details, one `\n  …` line each (empty when there are none).
pub fn status_details(status: &tonic::Status) -> String {
    let details = status.get_error_details();
    let mut out = String::new();
    if let Some(bad_request) = details.bad_request() {
        for violation in &bad_request.field_violations {
            let _ = write!(out, "\n  {}: {}", violation.field, violation.description);
        }
    }
    if let Some(failure) = details.precondition_failure() {
        for violation in &failure.violations {
            let _ = write!(out, "\n  precondition {} {}", violation.r#type, violation.subject);
            // Servers often repeat the status message here; say it once.
            if !violation.description.is_empty() && violation.description != status.message() {
                let _ = write!(out, ": {}", violation.description);
            }
        }
    }
    if let Some(resource) = details.resource_info() {
        let _ = write!(out, "\n  resource {} {}", resource.resource_type, resource.resource_name);
        if !resource.owner.is_empty() {
            let _ = write!(out, " (owner {})", resource.owner);
        }
        if !resource.description.is_empty() {
            let _ = write!(out, ": {}", resource.description);
        }
    }
    if let Some(info) = details.error_info() {
        let _ = write!(out, "\n  reason {} ({})", info.reason, info.domain);
        let mut metadata: Vec<_> = info.metadata.iter().collect();
        metadata.sort();
        let pairs: Vec<String> =
            metadata.iter().map(|(key, value)| format!("{key}={value}")).collect();
        if !pairs.is_empty() {
            let _ = write!(out, ": {}", pairs.join(" "));
        }
    }
    if let Some(retry_delay) = details.retry_info().and_then(|retry| retry.retry_delay) {
        let _ = write!(out, "\n  retry after {} ms", retry_delay.as_millis());
    }
    if let Some(help) = details.help() {
        for link in &help.links {
            let _ = write!(out, "\n  see {}: {}", link.url, link.description);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;
    use tonic::Code;
    use tonic_types::{ErrorDetails, FieldViolation};

    use super::*;

    #[test]
    fn field_violations_are_listed_under_the_code_and_message() {
        let details = ErrorDetails::with_bad_request(vec![
            FieldViolation::new("lines[0].quantity", "must be 1..=1000000"),
            FieldViolation::new("channel_id", "must not be empty"),
        ]);
        let status =
            tonic::Status::with_error_details(Code::InvalidArgument, "invalid argument", details);
        let error = Err::<(), _>(status).context("reserve r1").expect_err("an error");
        assert_eq!(
            describe_error(&error),
            "error: reserve r1: InvalidArgument: invalid argument\n  \
             lines[0].quantity: must be 1..=1000000\n  channel_id: must not be empty"
        );
    }

    #[test]
    fn precondition_and_error_info_take_one_line_each() {
        let message = "insufficient stock for sku s at dc: requested 3, available 0";
        let mut details = ErrorDetails::new();
        details
            .add_precondition_failure_violation("INSUFFICIENT_STOCK", "sku:s/location:dc", message)
            .set_error_info(
                "INSUFFICIENT_STOCK",
                "atp.v1",
                std::collections::HashMap::from([
                    ("sku".to_owned(), "s".to_owned()),
                    ("available".to_owned(), "0".to_owned()),
                ]),
            );
        let status = tonic::Status::with_error_details(Code::FailedPrecondition, message, details);
        assert_eq!(
            status_details(&status),
            "\n  precondition INSUFFICIENT_STOCK sku:s/location:dc\
             \n  reason INSUFFICIENT_STOCK (atp.v1): available=0 sku=s"
        );
    }

    #[test]
    fn every_reason_has_its_exit_status() {
        use atp_client::Reason;
        for &reason in Reason::ALL {
            let expected = match reason {
                Reason::InvalidArgument | Reason::MessageTooLarge => exit::INVALID,
                Reason::InsufficientStock
                | Reason::WrongState
                | Reason::NotActive
                | Reason::PreconditionFailed
                | Reason::IdReused => exit::REFUSED,
                Reason::NotFound => exit::NOT_FOUND,
                Reason::InProgress
                | Reason::Overloaded
                | Reason::StorageFailed
                | Reason::Recovering
                | Reason::ShuttingDown
                | Reason::RequestTimeout
                | Reason::FailingClosed
                // Unavailable here; another node (the owner) answers.
                | Reason::NotOwner
                | Reason::StaleEpoch => exit::TRY_AGAIN,
                Reason::DiskFull => exit::OTHER,
            };
            let error = anyhow::Error::new(reason.plain("why"));
            assert_eq!(exit_code(&error), expected, "{reason:?}");
            let sdk = anyhow::Error::new(atp_client::Error::from_status(&reason.plain("why")));
            assert_eq!(exit_code(&sdk), expected, "{reason:?} through the SDK");
        }
        let unknown = tonic_types::ErrorDetails::with_error_info(
            "SHARD_MOVED",
            atp_client::ERROR_DOMAIN,
            std::collections::HashMap::new(),
        );
        let status = tonic::Status::with_error_details(Code::Unavailable, "moved", unknown);
        assert_eq!(exit_code(&anyhow::Error::new(status)), exit::TRY_AGAIN, "by its code");
    }

    #[test]
    fn a_plain_status_prints_code_and_message() {
        let error = anyhow::Error::new(tonic::Status::not_found("no reservation r9"));
        assert_eq!(describe_error(&error), "error: NotFound: no reservation r9");
    }

    #[test]
    fn an_empty_message_falls_back_to_the_code_description() {
        let status = tonic::Status::new(Code::Unavailable, "");
        assert!(status_headline(&status).starts_with("Unavailable: "));
        assert!(status_headline(&status).len() > "Unavailable: ".len());
    }

    #[test]
    fn a_message_repeated_down_the_chain_is_printed_once() {
        let error = anyhow::anyhow!("refused").context("refused").context("connecting");
        assert_eq!(describe_error(&error), "error: connecting: refused");
    }

    #[test]
    fn other_errors_print_their_chain() {
        let error = anyhow::anyhow!("file not found").context("reading stock.csv");
        assert_eq!(describe_error(&error), "error: reading stock.csv: file not found");
    }
}

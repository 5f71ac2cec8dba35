//! Turning a failed call into words: the gRPC code, the message and the `google.rpc` details.

use std::fmt::Write as _;

use tonic_types::StatusExt;

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

//! Typed errors, read from the reason a status carries.
//!
//! The server puts a reason from one list ([`Reason`], `atp_proto::reason`)
//! in every status it answers, and a reason always comes with the same code.
//! [`Error`] has one variant per reason, with the reason's `ErrorInfo`
//! metadata as typed fields. [`Error::from_status`] reads the reason first;
//! the code matters only for a status without an atp reason (the transport's
//! failures and tonic's own refusals); a reason this SDK does not know (a
//! newer server) is kept as [`Error::Other`].
//!
//! The `errors!` list below has one entry per reason: its variant, whether
//! it is retried, and how its fields are read. Its `match` over [`Reason`]
//! has no catch-all, so a reason added to `atp_proto::reason` does not
//! compile until it has an entry here: a one-line change for a reason with
//! no metadata.

use std::collections::HashMap;
use std::time::Duration;

use atp_proto::v1::LifecycleState;
use atp_proto::{Reason, reason_of};
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

/// The parts of a status the fields of an [`Error`] are read from.
struct Details<'a> {
    status: &'a Status,
    metadata: HashMap<String, String>,
}

impl<'a> Details<'a> {
    fn of(status: &'a Status) -> Self {
        let metadata =
            status.get_details_error_info().map(|info| info.metadata).unwrap_or_default();
        Self { status, metadata }
    }
}

// Readers of one field each, named in the `errors!` list. A key the status
// lacks reads as empty (or 0): the message still says what happened.

fn text(details: &Details<'_>, key: &str) -> String {
    details.metadata.get(key).cloned().unwrap_or_default()
}

fn number(details: &Details<'_>, key: &str) -> i64 {
    details.metadata.get(key).and_then(|value| value.parse().ok()).unwrap_or_default()
}

fn optional_number(details: &Details<'_>, key: &str) -> Option<u64> {
    details.metadata.get(key).and_then(|value| value.parse().ok())
}

/// A lifecycle state as the server spells it (`PAUSED`); UNSPECIFIED when unknown.
fn lifecycle(details: &Details<'_>, key: &str) -> LifecycleState {
    let name = format!("LIFECYCLE_STATE_{}", text(details, key));
    LifecycleState::from_str_name(&name).unwrap_or(LifecycleState::Unspecified)
}

fn retry_delay(details: &Details<'_>) -> Option<Duration> {
    details.status.get_details_retry_info().and_then(|info| info.retry_delay)
}

fn violations(details: &Details<'_>) -> Vec<FieldViolation> {
    let Some(bad_request) = details.status.get_details_bad_request() else {
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

/// `errors! { doc Variant = Reason, retry: bool, "display prefix" { field: Type = reader(args) }; }`:
/// the variants of [`Error`] that stand for a reason, each with the status
/// it was read from besides the listed fields, and the functions that need
/// one arm per reason.
macro_rules! errors {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $reason:ident, retry: $retry:literal, $prefix:literal {
            $($(#[$field_doc:meta])* $field:ident: $type:ty = $read:ident($($argument:expr),*),)*
        };
    )*) => {
        /// What a call failed with: one variant per [`Reason`] the server
        /// sends, then what has no atp reason ([`Error::Unavailable`],
        /// [`Error::DeadlineExceeded`], [`Error::Other`]) and the client's own
        /// [`Error::Config`]. [`Error::is_retryable`] says which may be sent
        /// again; [`Error::message`] is the server's message. Non-exhaustive:
        /// a reason added to the list adds a variant.
        #[derive(Debug)]
        #[non_exhaustive]
        pub enum Error {
            $(
                $(#[$doc])*
                $variant {
                    $($(#[$field_doc])* $field: $type,)*
                    /// The status as received (its message, every
                    /// `google.rpc` detail), this error's source.
                    status: Box<Status>,
                },
            )*
            /// UNAVAILABLE without an atp reason: no connection, or the
            /// connection broke. The call may or may not have been applied;
            /// the same request is safe to send again.
            Unavailable {
                /// The transport's (or a proxy's) message.
                message: String,
                /// The status as received, this error's source (`None` when
                /// the client built the error itself).
                status: Option<Box<Status>>,
            },
            /// DEADLINE_EXCEEDED without an atp reason: the client's deadline
            /// passed. The outcome is unknown; the same request is safe to
            /// send again. (The server's own timeout is [`Error::RequestTimeout`].)
            DeadlineExceeded {
                /// Who gave up, and after how long.
                message: String,
                /// The status as received, this error's source (`None` when
                /// the client itself gave up).
                status: Option<Box<Status>>,
            },
            /// Anything else, kept whole: a reason this SDK does not know (a
            /// newer server), a status without an atp reason (UNIMPLEMENTED,
            /// INTERNAL, CANCELLED, ...), or a reply the client found malformed.
            Other {
                /// The gRPC code.
                code: Code,
                /// The `ErrorInfo` reason, when the status had one.
                reason: Option<String>,
                /// The message.
                message: String,
                /// The status as received, this error's source (`None` when
                /// the client found the reply malformed).
                status: Option<Box<Status>>,
            },
            /// The client could not be built (an endpoint that is not a URI, a
            /// bad setting): nothing was sent.
            Config(String),
        }

        impl std::fmt::Display for Error {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $(Error::$variant { status, .. } => {
                        write!(formatter, "{}{}", $prefix, status.message())
                    })*
                    Error::Unavailable { message, .. } => write!(formatter, "unavailable: {message}"),
                    Error::DeadlineExceeded { message, .. } => {
                        write!(formatter, "deadline exceeded: {message}")
                    }
                    Error::Other { code, message, .. } => write!(formatter, "{code:?}: {message}"),
                    Error::Config(problem) => {
                        write!(formatter, "invalid client configuration: {problem}")
                    }
                }
            }
        }

        impl std::error::Error for Error {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.status().map(|status| status as &(dyn std::error::Error + 'static))
            }
        }

        impl Error {
            /// The typed error of a status whose reason is `reason`. One arm
            /// per reason and no catch-all: a new reason must be listed above.
            fn from_reason(reason: Reason, status: &Status) -> Self {
                let details = Details::of(status);
                match reason {
                    $(
                        Reason::$reason => Error::$variant {
                            $($field: $read(&details, $($argument),*),)*
                            status: Box::new(status.clone()),
                        },
                    )*
                }
            }

            /// Whether an error of `reason` is worth sending again as is
            /// (see [`Error::is_retryable`]).
            pub const fn is_retryable_reason(reason: Reason) -> bool {
                match reason {
                    $(Reason::$reason => $retry,)*
                }
            }

            /// The reason the server gave, if it is one of [`Reason::ALL`]
            /// (see [`Error::reason_name`] for one this SDK does not know).
            pub fn reason(&self) -> Option<Reason> {
                match self {
                    $(Error::$variant { .. } => Some(Reason::$reason),)*
                    Error::Unavailable { .. }
                    | Error::DeadlineExceeded { .. }
                    | Error::Other { .. }
                    | Error::Config(_) => None,
                }
            }

            /// The status this error was read from, with every `google.rpc`
            /// detail (`None` for [`Error::Config`] and errors the client
            /// raised itself).
            pub fn status(&self) -> Option<&Status> {
                match self {
                    $(Error::$variant { status, .. } => Some(status),)*
                    Error::Unavailable { status, .. }
                    | Error::DeadlineExceeded { status, .. }
                    | Error::Other { status, .. } => status.as_deref(),
                    Error::Config(_) => None,
                }
            }

            /// The server's (or the client's) message.
            pub fn message(&self) -> &str {
                match self {
                    $(Error::$variant { status, .. } => status.message(),)*
                    Error::Unavailable { message, .. }
                    | Error::DeadlineExceeded { message, .. }
                    | Error::Other { message, .. }
                    | Error::Config(message) => message,
                }
            }
        }
    };
}

errors! {
    /// INVALID_ARGUMENT: the request is malformed; `violations` name each bad
    /// field (as many as fit in a status). Nothing changed.
    InvalidArgument = InvalidArgument, retry: false, "" {
        /// The fields the server named.
        violations: Vec<FieldViolation> = violations(),
    };
    /// FAILED_PRECONDITION `INSUFFICIENT_STOCK`: a line asked for more than
    /// the channel may promise at its location. Nothing was held.
    InsufficientStock = InsufficientStock, retry: false, "" {
        /// The SKU of the refused line.
        sku: String = text("sku"),
        /// Its location (`channel <id>` when the channel's total was the limit).
        location: String = text("location"),
        /// Units the line asked for.
        requested: i64 = number("requested"),
        /// Units the channel could promise there.
        available: i64 = number("available"),
    };
    /// FAILED_PRECONDITION `WRONG_STATE`: the reservation's state does not
    /// allow the operation (commit an expired hold, cancel a held one).
    WrongState = WrongState, retry: false, "" {
        /// The reservation.
        reservation_id: String = text("reservation_id"),
        /// Its state, as the server spells it (`EXPIRED`).
        state: String = text("state"),
        /// The refused operation (`commit`, `release`, `cancel`, `extend`).
        operation: String = text("operation"),
    };
    /// FAILED_PRECONDITION `NOT_ACTIVE`: a location or channel is PAUSED or
    /// RETIRED (or RETIRED and asked to change); not worth a retry until an
    /// operator makes it ACTIVE.
    NotActive = NotActive, retry: false, "" {
        /// `location` or `channel`.
        kind: String = text("kind"),
        /// Its id.
        id: String = text("id"),
        /// Its state (PAUSED, RETIRED; UNSPECIFIED for a state this SDK
        /// does not know, which the message still names).
        state: LifecycleState = lifecycle("state"),
        /// What it refused (`take holds`, ...).
        operation: String = text("operation"),
    };
    /// FAILED_PRECONDITION `PRECONDITION_FAILED`: another refused
    /// precondition (a configuration limit, a reservation id whose earlier
    /// use still has committed units); the message says which.
    PreconditionFailed = PreconditionFailed, retry: false, "failed precondition: " {};
    /// ALREADY_EXISTS `ID_REUSED`: the id was used before with another
    /// payload (a Reserve with other lines, a Commit with other quantities).
    IdReused = IdReused, retry: false, "id reused: " {};
    /// NOT_FOUND `NOT_FOUND`: no such reservation (or it was forgotten after its retention).
    NotFound = NotFound, retry: false, "" {};
    /// UNAVAILABLE `IN_PROGRESS`: the id is still being worked on by an
    /// earlier call; the same request may be sent again after `retry_after`.
    InProgress = InProgress, retry: true, "" {
        /// The wait the server suggested.
        retry_after: Option<Duration> = retry_delay(),
    };
    /// RESOURCE_EXHAUSTED `OVERLOADED`: a full shard mailbox or too many
    /// requests in flight; nothing was done, a retry later may succeed.
    Overloaded = Overloaded, retry: true, "" {
        /// The wait the server suggested.
        retry_after: Option<Duration> = retry_delay(),
    };
    /// RESOURCE_EXHAUSTED `DISK_FULL`: the node refuses writes until an
    /// operator frees space and restarts it; not worth a retry.
    DiskFull = DiskFull, retry: false, "" {};
    /// UNAVAILABLE `STORAGE_FAILED`: a durable write failed and the node
    /// exits to be restarted; the write was not acknowledged, the same
    /// request is safe to send again.
    StorageFailed = StorageFailed, retry: true, "" {};
    /// UNAVAILABLE `RECOVERING`: the node is loading its state.
    Recovering = Recovering, retry: true, "" {};
    /// UNAVAILABLE `SHUTTING_DOWN`: the node is stopping.
    ShuttingDown = ShuttingDown, retry: true, "" {};
    /// DEADLINE_EXCEEDED `REQUEST_TIMEOUT`: the request ran longer than the
    /// server allows (`request_timeout_ms`). Work already handed to a shard
    /// still finishes; the same request (same id) gets its answer.
    RequestTimeout = RequestTimeout, retry: true, "" {};
    /// OUT_OF_RANGE `MESSAGE_TOO_LARGE`: the request is larger than the
    /// server's `max_message_bytes`; split it. Also tonic's own OUT_OF_RANGE
    /// without a reason (from a server before reasons), with no limit.
    MessageTooLarge = MessageTooLarge, retry: false, "message too large: " {
        /// The server's limit, in bytes.
        limit_bytes: Option<u64> = optional_number("limit_bytes"),
    };
    /// UNAVAILABLE `NOT_OWNER` (cluster mode): another node owns a shard the
    /// request touches and the node did not forward it there (the request
    /// spans nodes, or the owner is down or unreachable); send it to
    /// `owner_address` when it has one. Not retried here: the same node
    /// would likely refuse again.
    NotOwner = NotOwner, retry: false, "not owner: " {
        /// The refused shard.
        shard: i64 = number("shard"),
        /// The owner's node id (empty if unknown).
        owner: String = text("owner"),
        /// The owner's advertised address (empty if unknown).
        owner_address: String = text("owner_address"),
        /// The owner's epoch for the shard, if claimed.
        epoch: Option<u64> = optional_number("epoch"),
    };
    /// ABORTED `STALE_EPOCH` (cluster mode): the request carried an epoch
    /// (`x-atp-epoch`) that is not its first shard's current one. Nothing
    /// ran. Not retried as is: read the shard's owner and epoch again (the
    /// fields say them) and send it with the current epoch.
    StaleEpoch = StaleEpoch, retry: false, "stale epoch: " {
        /// The shard the epoch was for.
        shard: i64 = number("shard"),
        /// The current owner's node id (empty if unknown; on a single node).
        owner: String = text("owner"),
        /// The current owner's advertised address (empty if unknown).
        owner_address: String = text("owner_address"),
        /// The shard's current epoch, if claimed.
        epoch: Option<u64> = optional_number("epoch"),
    };
    /// UNAVAILABLE `FAILING_CLOSED` (cluster mode): the shard is assigned to
    /// this node but not served now (lease or claim not confirmed, or the
    /// owner is down); a retry with backoff may succeed.
    FailingClosed = FailingClosed, retry: true, "" {
        /// The refused shard.
        shard: i64 = number("shard"),
    };
}

impl Error {
    /// The typed error of `status`: by its reason when it carries an atp
    /// one, else by its code (UNAVAILABLE and DEADLINE_EXCEEDED from the
    /// transport or the client, OUT_OF_RANGE from tonic), else
    /// [`Error::Other`].
    pub fn from_status(status: &Status) -> Self {
        if let Some(reason) = reason_of(status) {
            return Self::from_reason(reason, status);
        }
        let message = status.message().to_owned();
        let kept = Some(Box::new(status.clone()));
        let reason = status.get_details_error_info().map(|info| info.reason);
        match (status.code(), reason) {
            (Code::Unavailable, None) => Error::Unavailable { message, status: kept },
            (Code::DeadlineExceeded, None) => Error::DeadlineExceeded { message, status: kept },
            (Code::OutOfRange, None) => {
                Error::MessageTooLarge { limit_bytes: None, status: Box::new(status.clone()) }
            }
            (code, reason) => Error::Other { code, reason, message, status: kept },
        }
    }

    /// The error a rejected stock event stands for, or `None` when the
    /// event was not rejected: the one a whole call failing this way would
    /// be (a result names its code and reason, but carries no metadata; the
    /// kept status is rebuilt from them).
    pub fn from_rejected_event(result: &atp_proto::v1::StockEventResult) -> Option<Self> {
        if result.outcome() != atp_proto::v1::StockEventOutcome::Rejected {
            return None;
        }
        let message = result.error_message.clone();
        Some(match Reason::from_name(&result.error_reason) {
            Some(reason) => Self::from_reason(reason, &reason.plain(message)),
            None => Error::Other {
                code: Code::from(result.error_code),
                reason: (!result.error_reason.is_empty()).then(|| result.error_reason.clone()),
                message,
                status: None,
            },
        })
    }

    /// Whether sending the very same request again is safe and may help.
    /// Every request the SDK sends carries its own id (a reservation id,
    /// event ids) or only reads, so a repeat is applied once. Retried:
    /// `IN_PROGRESS`, `RECOVERING`, `SHUTTING_DOWN`, `STORAGE_FAILED` (the
    /// node restarts), `OVERLOADED`, `REQUEST_TIMEOUT`, and without a reason
    /// UNAVAILABLE and CANCELLED (the transport) and DEADLINE_EXCEEDED (the
    /// client's deadline). Never: refusals, `DISK_FULL`, `MESSAGE_TOO_LARGE`, an
    /// unknown reason.
    pub fn is_retryable(&self) -> bool {
        match (self.reason(), self) {
            (Some(reason), _) => Self::is_retryable_reason(reason),
            (None, Error::Unavailable { .. } | Error::DeadlineExceeded { .. }) => true,
            // A stream the transport cancelled (a broken connection): the
            // outcome is unknown, like UNAVAILABLE without a reason.
            (None, Error::Other { code: Code::Cancelled, reason: None, .. }) => true,
            (None, _) => false,
        }
    }

    /// The gRPC code this error stands for: its reason's (INVALID_ARGUMENT
    /// for [`Error::Config`]).
    pub fn code(&self) -> Code {
        match (self.reason(), self) {
            (Some(reason), _) => reason.code(),
            (None, Error::Unavailable { .. }) => Code::Unavailable,
            (None, Error::DeadlineExceeded { .. }) => Code::DeadlineExceeded,
            (None, Error::Other { code, .. }) => *code,
            (None, _) => Code::InvalidArgument,
        }
    }

    /// The `ErrorInfo` reason as it travelled (`INSUFFICIENT_STOCK`),
    /// including one this SDK does not know.
    pub fn reason_name(&self) -> Option<&str> {
        match self {
            Error::Other { reason, .. } => reason.as_deref(),
            other => other.reason().map(Reason::name),
        }
    }

    /// The wait the server suggested before a retry, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::InProgress { retry_after, .. } | Error::Overloaded { retry_after, .. } => {
                *retry_after
            }
            other => other.status().and_then(|status| retry_delay(&Details::of(status))),
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::from_status(&status)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::ErrorDetails;

    use super::*;

    /// A status of `reason` with `metadata`, built as the server builds it.
    fn status(reason: Reason, metadata: &[(&'static str, &str)], details: ErrorDetails) -> Status {
        let metadata = metadata.iter().map(|(key, value)| (*key, (*value).to_owned()));
        reason.status("why", metadata, details)
    }

    #[test]
    fn every_reason_has_its_own_variant() {
        for &reason in Reason::ALL {
            let error = Error::from_status(&reason.plain("why"));
            assert!(!matches!(error, Error::Other { .. }), "{reason:?} read as {error:?}");
            assert_eq!(error.reason(), Some(reason), "{error:?}");
            assert_eq!(error.reason_name(), Some(reason.name()));
            assert_eq!(error.code(), reason.code(), "{reason:?}");
            assert_eq!(error.message(), "why");
            assert!(error.status().is_some());
        }
    }

    #[test]
    fn retried_reasons_are_the_safe_ones() {
        let retried: Vec<Reason> = Reason::ALL
            .iter()
            .copied()
            .filter(|&reason| Error::is_retryable_reason(reason))
            .collect();
        assert_eq!(
            retried,
            [
                Reason::InProgress,
                Reason::Overloaded,
                Reason::StorageFailed,
                Reason::Recovering,
                Reason::ShuttingDown,
                Reason::RequestTimeout,
                Reason::FailingClosed,
            ]
        );
        for &reason in Reason::ALL {
            let error = Error::from_status(&reason.plain("why"));
            assert_eq!(error.is_retryable(), Error::is_retryable_reason(reason), "{reason:?}");
        }
    }

    // The reasons a real atpd cannot be made to send on demand, built
    // exactly as `atp-server` (`error.rs`) and `atp-proto` (`status.rs`)
    // build them.
    #[test]
    fn node_failures_read_as_their_variants() {
        let cases = [
            (Reason::DiskFull.plain("disk full: no space left on device"), false),
            (Reason::StorageFailed.plain("storage failed: fsync"), true),
            (Reason::Recovering.plain("the node is recovering"), true),
            (Reason::ShuttingDown.plain("the node is shutting down"), true),
        ];
        for (status, retried) in cases {
            let error = Error::from_status(&status);
            assert_eq!(error.is_retryable(), retried, "{error:?}");
            assert_eq!(error.code(), status.code());
            assert!(error.to_string().contains(status.message()), "{error}");
        }
        let disk_full = Error::from_status(&Reason::DiskFull.plain("disk full"));
        assert!(matches!(disk_full, Error::DiskFull { .. }), "{disk_full:?}");
    }

    #[test]
    fn in_progress_is_retried_after_its_delay() {
        let retry = ErrorDetails::with_retry_info(Some(Duration::from_millis(50)));
        let error = Error::from_status(&status(Reason::InProgress, &[], retry));
        assert!(
            matches!(error, Error::InProgress { retry_after: Some(delay), .. }
                if delay == Duration::from_millis(50)),
            "{error:?}"
        );
        assert!(error.is_retryable());
        assert_eq!(error.retry_after(), Some(Duration::from_millis(50)));
        let overloaded = Error::from_status(&atp_proto::status::overloaded("busy"));
        assert_eq!(overloaded.retry_after(), Some(atp_proto::status::OVERLOADED_RETRY_DELAY));
    }

    #[test]
    fn metadata_becomes_typed_fields() {
        let metadata = [
            ("kind", "location"),
            ("id", "dc-1"),
            ("state", "PAUSED"),
            ("operation", "take holds"),
        ];
        let error = Error::from_status(&status(Reason::NotActive, &metadata, ErrorDetails::new()));
        let Error::NotActive { kind, id, state, operation, .. } = &error else {
            panic!("{error:?}")
        };
        assert_eq!([kind, id, operation], ["location", "dc-1", "take holds"]);
        assert_eq!(*state, LifecycleState::Paused);
        let limit = [("limit_bytes", "4096")];
        let error =
            Error::from_status(&status(Reason::MessageTooLarge, &limit, ErrorDetails::new()));
        assert!(matches!(error, Error::MessageTooLarge { limit_bytes: Some(4096), .. }));
        assert!(!error.is_retryable());
    }

    #[test]
    fn statuses_without_a_reason_are_read_by_code() {
        let error = Error::from_status(&Status::unavailable("connection refused"));
        assert!(matches!(error, Error::Unavailable { .. }) && error.is_retryable(), "{error:?}");
        let error = Error::from_status(&Status::deadline_exceeded("timeout expired"));
        assert!(matches!(error, Error::DeadlineExceeded { .. }) && error.is_retryable());
        let error = Error::from_status(&Status::cancelled("stream reset"));
        assert!(
            matches!(error, Error::Other { code: Code::Cancelled, .. }) && error.is_retryable()
        );
        // tonic's own refusal of a large message, from a server before reasons.
        let error = Error::from_status(&Status::out_of_range("message too large"));
        assert!(matches!(error, Error::MessageTooLarge { limit_bytes: None, .. }), "{error:?}");
        assert!(!error.is_retryable());
        let error = Error::from_status(&Status::resource_exhausted("quota used up"));
        assert!(
            matches!(&error, Error::Other { code: Code::ResourceExhausted, reason: None, message, .. }
                if message == "quota used up"),
            "{error:?}"
        );
        assert!(!error.is_retryable());
    }

    #[test]
    fn an_unknown_reason_is_kept_and_not_retried() {
        let details =
            ErrorDetails::with_error_info("SHARD_MOVED", atp_proto::ERROR_DOMAIN, HashMap::new());
        let status = Status::with_error_details(Code::Unavailable, "moved", details);
        let error = Error::from_status(&status);
        assert!(
            matches!(&error, Error::Other { code: Code::Unavailable, reason: Some(reason), .. }
                if reason == "SHARD_MOVED"),
            "{error:?}"
        );
        assert_eq!((error.reason(), error.reason_name()), (None, Some("SHARD_MOVED")));
        assert!(!error.is_retryable(), "a newer server's reason is not guessed at");
    }
}

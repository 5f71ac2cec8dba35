//! Every reason atp puts in a status: the one list that server code must
//! use to build an error (`google.rpc.ErrorInfo.reason`, domain
//! [`ERROR_DOMAIN`]), each with its gRPC code.
//!
//! A status is built only through [`Reason::status`], so its code follows
//! from its reason and a client can switch on the reason alone. `docs/API.md`
//! lists every reason with its code, metadata keys and retry advice; a test
//! in `atp-server` (`tests/error_catalogue.rs`) fails when the two differ, or
//! when server code builds a status some other way. To add a reason: add a
//! line to the `reasons!` list below and a row to the table in `docs/API.md`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo.domain` of atp's errors.
pub const ERROR_DOMAIN: &str = "atp.v1";

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $name:literal => $code:ident;)*) => {
        /// Why a request failed, as carried in `google.rpc.ErrorInfo.reason`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in the order of the list.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The reason as it travels (`UPPER_SNAKE_CASE`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            /// The gRPC code every status of this reason has.
            pub const fn code(self) -> Code {
                match self {
                    $(Reason::$variant => Code::$code,)*
                }
            }
        }
    };
}

reasons! {
    /// Malformed input; `google.rpc.BadRequest` names every bad field. Nothing changed.
    InvalidArgument = "INVALID_ARGUMENT" => InvalidArgument;
    /// A hold would promise more than a position or channel can.
    InsufficientStock = "INSUFFICIENT_STOCK" => FailedPrecondition;
    /// The reservation's state does not allow the operation.
    WrongState = "WRONG_STATE" => FailedPrecondition;
    /// A location or channel is not ACTIVE (or RETIRED and asked to change).
    NotActive = "NOT_ACTIVE" => FailedPrecondition;
    /// Another precondition failed (a stock event the position cannot take,
    /// a configuration limit, an id still in use by committed units).
    PreconditionFailed = "PRECONDITION_FAILED" => FailedPrecondition;
    /// An id (reservation or stock event) was reused with another payload.
    IdReused = "ID_REUSED" => AlreadyExists;
    /// No such reservation (never seen, or forgotten after retention).
    NotFound = "NOT_FOUND" => NotFound;
    /// An earlier request with the same id is still being worked on.
    InProgress = "IN_PROGRESS" => Unavailable;
    /// Overload: a shard's mailbox is full, or the node has as many requests
    /// in flight as it allows. Nothing was done; retry after `RetryInfo`.
    Overloaded = "OVERLOADED" => ResourceExhausted;
    /// The disk is full: writes are refused until an operator frees space and restarts.
    DiskFull = "DISK_FULL" => ResourceExhausted;
    /// A durable write failed; the node exits to be restarted.
    StorageFailed = "STORAGE_FAILED" => Unavailable;
    /// The node is recovering its state at start.
    Recovering = "RECOVERING" => Unavailable;
    /// The node is stopping.
    ShuttingDown = "SHUTTING_DOWN" => Unavailable;
    /// The request ran longer than the server allows (`request_timeout_ms`).
    RequestTimeout = "REQUEST_TIMEOUT" => DeadlineExceeded;
    /// The request message is larger than `max_message_bytes`.
    MessageTooLarge = "MESSAGE_TOO_LARGE" => OutOfRange;
    /// Cluster mode: another node owns a shard the request touches and the
    /// request was not forwarded to it (it spans nodes, the owner is down or
    /// unreachable, or it was forwarded already); the metadata name the
    /// shard, its owner and epoch.
    NotOwner = "NOT_OWNER" => Unavailable;
    /// Cluster mode: a shard the request touches is assigned to this node
    /// but not served now (lease lost or not yet renewed, shard map not
    /// confirmed, claim not made yet, or its owner is down).
    FailingClosed = "FAILING_CLOSED" => Unavailable;
    /// Cluster mode: the request carried an epoch (`x-atp-epoch`) that is
    /// not its first shard's current one; the metadata name the shard, its
    /// owner and current epoch. Nothing ran.
    StaleEpoch = "STALE_EPOCH" => Aborted;
}

impl Reason {
    /// The reason called `name`, if it is one of [`Reason::ALL`].
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|reason| reason.name() == name)
    }

    /// A status of this reason: its code, `message`, an `ErrorInfo` with
    /// `metadata`, and whatever else `details` carries (`BadRequest`,
    /// `PreconditionFailure`, `RetryInfo`).
    pub fn status<'a>(
        self,
        message: impl Into<String>,
        metadata: impl IntoIterator<Item = (&'a str, String)>,
        mut details: ErrorDetails,
    ) -> Status {
        let metadata: HashMap<String, String> =
            metadata.into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
        details.set_error_info(self.name(), ERROR_DOMAIN, metadata);
        Status::with_error_details(self.code(), message, details)
    }

    /// A status of this reason with no metadata and no other details.
    pub fn plain(self, message: impl Into<String>) -> Status {
        self.status(message, [], ErrorDetails::new())
    }
}

/// The reason a status carries (its `ErrorInfo` in domain [`ERROR_DOMAIN`]), if any.
pub fn reason_of(status: &Status) -> Option<Reason> {
    let info = status.get_details_error_info()?;
    (info.domain == ERROR_DOMAIN).then(|| Reason::from_name(&info.reason)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_upper_snake_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for reason in Reason::ALL {
            let name = reason.name();
            assert!(seen.insert(name), "{name} twice");
            assert!(name.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{name}");
            assert_eq!(Reason::from_name(name), Some(*reason));
            let status = reason.plain("why");
            assert_eq!((status.code(), reason_of(&status)), (reason.code(), Some(*reason)));
        }
        assert_eq!(Reason::from_name("NO_SUCH_REASON"), None);
    }
}

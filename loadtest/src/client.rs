//! Channels to the node, and how an error is read: which codes prove that
//! nothing happened, which leave the outcome unknown, which are worth a retry.

use std::future::Future;
use std::time::Duration;

use atp_proto::v1::availability_service_client::AvailabilityServiceClient;
use atp_proto::v1::config_service_client::ConfigServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::LoadError;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two tries of a setup or check call that failed for a
/// passing reason (node restarting, overloaded).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long setup and check keep retrying one call before giving up.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(60);

/// A lazily connected channel: it connects on first use and again after the
/// connection broke, so a node that is killed and restarted costs failed
/// calls, never the run.
pub fn channel(endpoint: &str, request_timeout: Duration) -> Result<Channel, LoadError> {
    let endpoint = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|error| LoadError::Config(format!("endpoint {endpoint:?}: {error}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(request_timeout)
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// The availability client over `channel`.
pub fn availability(channel: Channel) -> AvailabilityServiceClient<Channel> {
    AvailabilityServiceClient::new(channel)
}

/// The configuration client over `channel`.
pub fn configuration(channel: Channel) -> ConfigServiceClient<Channel> {
    ConfigServiceClient::new(channel)
}

/// Whether a failed call certainly changed nothing. The server refuses these
/// before it writes anything (bad input, not enough stock, wrong state, id
/// reused, unknown id, full mailbox or too many requests in flight). Every
/// other code — UNAVAILABLE (a broken connection, a node stopping, a failed
/// fsync), DEADLINE_EXCEEDED, CANCELLED, UNKNOWN, INTERNAL — may hide a
/// write that landed: its outcome is unknown.
pub fn refused(code: Code) -> bool {
    match code {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::NotFound
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => true,
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => false,
    }
}

/// Whether the node could not take the call now (restarting, unreachable,
/// overloaded): the caller should pause before sending more.
pub fn passing(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
    )
}

/// Runs `call` until it succeeds, fails for good, or [`RETRY_DEADLINE`]
/// passes. For setup and check calls, which are all idempotent.
pub async fn retry<T, F, Fut>(what: &str, mut call: F) -> Result<T, LoadError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_DEADLINE;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) if passing(status.code()) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(status) => return Err(LoadError::Call { what: what.to_owned(), status }),
        }
    }
}

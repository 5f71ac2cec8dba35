//! Clients of the node (the SDK, `atp-client`), and how an error is read:
//! which codes prove that nothing happened, which leave the outcome unknown,
//! which are worth a retry.

use std::future::Future;
use std::time::Duration;

use atp_client::{Client, Code, Error, RetryPolicy};

use crate::LoadError;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two tries of a setup or check call that failed for a
/// passing reason (node restarting, overloaded).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long setup and check keep retrying one call before giving up.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(60);

/// An SDK client over one lazily connected HTTP/2 connection per endpoint
/// (`endpoint` may list several, comma-separated; calls go round-robin, or
/// straight to each shard's owner once the SDK has the shard map): it
/// connects on first use and again after the connection broke, so a node
/// that is killed and restarted costs failed calls, never the run. It never
/// retries by itself: a worker measures each call once and logs its
/// outcome, and setup and check retry with [`retry`] (which, over several
/// endpoints, reaches the next one on the next try).
pub fn client(endpoint: &str, request_timeout: Duration) -> Result<Client, LoadError> {
    routed_client(endpoint, request_timeout, true)
}

/// [`client`], routing by the shard map only when `route` (`--route`).
pub fn routed_client(
    endpoint: &str,
    request_timeout: Duration,
    route: bool,
) -> Result<Client, LoadError> {
    Client::builder(crate::config::split_endpoints(endpoint))
        .route_by_shard_map(route)
        .connections_per_endpoint(1)
        .connect_timeout(CONNECT_TIMEOUT)
        .deadline(request_timeout)
        .retry(RetryPolicy::never())
        .build()
        .map_err(|error| LoadError::Config(format!("endpoint {endpoint:?}: {error}")))
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
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_DEADLINE;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if passing(error.code()) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(error) => return Err(LoadError::Call { what: what.to_owned(), error }),
        }
    }
}

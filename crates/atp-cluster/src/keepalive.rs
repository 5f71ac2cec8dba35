//! The keepalive loop: keeps a node's lease or declares it lost.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};

use crate::membership::{LeaseState, LostReason, MembershipConfig, ms};
use crate::store::{Keeper, Lease, Store, StoreError, describe};

/// Keeps `lease` alive until it is lost. The deadline is measured from the
/// time each acknowledged keepalive was *sent*; a failed or timed-out
/// keepalive drops the stream and retries after a backoff; the moment the
/// deadline passes (or etcd says the lease is gone) the state becomes `Lost`.
pub(crate) async fn keep_lease<S: Store>(
    store: S,
    config: MembershipConfig,
    lease: Lease,
    mut deadline: Instant,
    state: watch::Sender<LeaseState>,
) {
    let margin = ms(config.safety_margin_ms);
    let keepalive_timeout = ms(config.keepalive_timeout_ms);
    let mut keeper: Option<S::Keeper> = None;
    let mut next_renewal = Instant::now() + ms(config.keepalive_interval_ms);
    let lose = |reason: LostReason| {
        tracing::warn!(lease_id = lease.id, ?reason, "lost the lease: stepping down");
        state.send_replace(LeaseState::Lost { lease_id: lease.id, reason });
    };
    loop {
        tokio::select! {
            () = sleep_until(next_renewal) => {}
            () = sleep_until(deadline) => return lose(LostReason::DeadlinePassed),
        }
        let sent = Instant::now();
        let outcome = tokio::select! {
            outcome = timeout(keepalive_timeout, renew_once(&store, &mut keeper, lease.id)) => outcome,
            () = sleep_until(deadline) => return lose(LostReason::DeadlinePassed),
        };
        match outcome {
            Ok(Ok(Some(ttl))) => {
                deadline = sent + ttl.saturating_sub(margin);
                state.send_replace(LeaseState::Held { lease_id: lease.id, deadline });
                next_renewal = sent + ms(config.keepalive_interval_ms);
            }
            Ok(Ok(None)) | Ok(Err(StoreError::LeaseNotFound(_))) => {
                return lose(LostReason::Expired);
            }
            Ok(Err(error)) => {
                tracing::warn!(
                    lease_id = lease.id,
                    error = describe(&error),
                    "keepalive failed; re-creating the stream"
                );
                keeper = None;
                next_renewal = Instant::now() + ms(config.retry_backoff_ms);
            }
            Err(_) => {
                tracing::warn!(
                    lease_id = lease.id,
                    ?keepalive_timeout,
                    "keepalive timed out; re-creating the stream"
                );
                keeper = None;
                next_renewal = Instant::now() + ms(config.retry_backoff_ms);
            }
        }
    }
}

async fn renew_once<S: Store>(
    store: &S,
    keeper: &mut Option<S::Keeper>,
    lease_id: i64,
) -> Result<Option<Duration>, StoreError> {
    if keeper.is_none() {
        *keeper = Some(store.keep_alive(lease_id).await?);
    }
    let result = keeper.as_mut().expect("keeper was just opened").renew().await;
    if result.is_err() {
        *keeper = None;
    }
    result
}

//! Shards this node does not serve: where their line ops, ship notices and
//! recovery questions go (`docs/PROTOCOL.md`, "Across nodes").
//!
//! A single node has no [`Peers`]: every shard is local. In cluster mode the
//! server gives the node an implementation that sends to each shard's
//! current owner over the internal `atp.internal.v1.PeerService`. What
//! travels is postcard-encoded core values ([`encode`], [`decode`]); a
//! shard's refusal travels as a [`WireRefusal`], which keeps what a client
//! acts on (the reason, the SKU and location short of stock, the numbers).
//!
//! Delivery is at least once: an op that is not acknowledged is kept in the
//! node's [`Outbox`] and sent again until it is (every op is idempotent and
//! names its version, so a late or second copy does nothing wrong). The
//! outbox is memory only: after a crash recovery derives the ops again from
//! the durable records (`Recovered::remote_ops`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atp_core::CoreError;
use atp_core::ids::ReservationId;
use atp_core::shard::{Incarnation, LineOp, ShardFacts, ShipNotice};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// What a call to another node gives back.
pub type PeerFuture<T> = BoxFuture<'static, Result<T, PeerError>>;

/// A call to another node that did not give an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The shard's owner could not be reached, did not answer in time, or
    /// does not serve the shard now (unknown owner, failing closed, not the
    /// owner any more). What was sent may or may not have been applied.
    #[error("shard {shard}: {reason}")]
    Unavailable {
        /// The shard asked about.
        shard: u32,
        /// Why, for the log and the caller's message.
        reason: String,
    },
}

/// Sends to the owners of shards this node does not serve.
pub trait Peers: Send + Sync + 'static {
    /// Whether this node serves `shard` now (its ops go to its actor here).
    fn is_local(&self, shard: u32) -> bool;

    /// Applies `ops` on `shard` at its owner, in order; one result per op,
    /// answered once durable there. Gives up after `deadline`.
    fn line_ops(
        &self,
        shard: u32,
        ops: Vec<LineOp>,
        deadline: Duration,
    ) -> PeerFuture<Vec<Result<(), CoreError>>>;

    /// Tells the home of `notice.reservation` (on another node) what shipped.
    fn notice(&self, notice: ShipNotice, deadline: Duration) -> PeerFuture<()>;

    /// What `shard`'s owner knows of `id` ([`atp_core::shard::ShardState::facts`]).
    fn facts(&self, shard: u32, id: ReservationId, deadline: Duration) -> PeerFuture<ShardFacts>;

    /// Makes the record of `incarnation`'s id stand at it on its home's
    /// owner ([`atp_core::shard::ShardState::adopt`]).
    fn adopt(&self, incarnation: Incarnation, deadline: Duration) -> PeerFuture<()>;

    /// Whether the owner of `line.sku`'s shard still holds that line of
    /// `line.reservation` ([`atp_core::shard::ShardState::has_line`]).
    fn has_line(&self, line: ShipNotice, deadline: Duration) -> PeerFuture<bool>;
}

/// A shard's refusal of one line op, as it travels between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireRefusal {
    /// [`CoreError::InsufficientStock`], whole.
    InsufficientStock {
        /// The SKU short of stock.
        sku: String,
        /// The location (or `channel:<id>`).
        location: String,
        /// Units asked for.
        requested: i64,
        /// Units that could be promised.
        available: i64,
    },
    /// [`CoreError::AlreadyExists`].
    AlreadyExists(String),
    /// [`CoreError::InProgress`].
    InProgress(String),
    /// [`CoreError::NotFound`].
    NotFound(String),
    /// Any other refusal (a state, a location or channel not active, an
    /// invalid line): its message, answered as a failed precondition.
    Other(String),
}

impl From<&CoreError> for WireRefusal {
    fn from(error: &CoreError) -> Self {
        match error {
            CoreError::InsufficientStock { sku, location, requested, available } => {
                Self::InsufficientStock {
                    sku: sku.clone(),
                    location: location.clone(),
                    requested: *requested,
                    available: *available,
                }
            }
            CoreError::AlreadyExists(message) => Self::AlreadyExists(message.clone()),
            CoreError::InProgress(message) => Self::InProgress(message.clone()),
            CoreError::NotFound(message) => Self::NotFound(message.clone()),
            other => Self::Other(other.to_string()),
        }
    }
}

impl From<WireRefusal> for CoreError {
    fn from(refusal: WireRefusal) -> Self {
        match refusal {
            WireRefusal::InsufficientStock { sku, location, requested, available } => {
                CoreError::InsufficientStock { sku, location, requested, available }
            }
            WireRefusal::AlreadyExists(message) => CoreError::AlreadyExists(message),
            WireRefusal::InProgress(message) => CoreError::InProgress(message),
            WireRefusal::NotFound(message) => CoreError::NotFound(message),
            WireRefusal::Other(message) => CoreError::FailedPrecondition(message),
        }
    }
}

/// The results of line ops as they travel.
pub fn encode_results(results: &[Result<(), CoreError>]) -> Vec<u8> {
    let wire: Vec<Option<WireRefusal>> =
        results.iter().map(|result| result.as_ref().err().map(WireRefusal::from)).collect();
    encode(&wire)
}

/// [`encode_results`]' inverse.
pub fn decode_results(bytes: &[u8]) -> Result<Vec<Result<(), CoreError>>, String> {
    let wire: Vec<Option<WireRefusal>> = decode(bytes)?;
    Ok(wire.into_iter().map(|refusal| refusal.map_or(Ok(()), |r| Err(r.into()))).collect())
}

/// A value as it travels between nodes (postcard).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("encoding to memory cannot fail")
}

/// [`encode`]'s inverse; the error says what could not be read.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|error| format!("undecodable peer message: {error}"))
}

/// How long a first attempt at a follow-up op (a Commit, Release, Abort,
/// Settle, ship notice) may take before it is left to the outbox.
pub(crate) const FOLLOW_UP_DEADLINE: Duration = Duration::from_secs(2);
/// How long a Hold or Replace on another node may take: past it the
/// Reserve or change is refused (and what may have landed is aborted).
pub(crate) const HOLD_DEADLINE: Duration = Duration::from_secs(3);
/// The outbox's first pause after a failed send; it doubles up to
/// [`OUTBOX_MAX_BACKOFF`].
const OUTBOX_BACKOFF: Duration = Duration::from_millis(100);
const OUTBOX_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Most ops the outbox sends to one shard in one call.
const OUTBOX_BATCH: usize = 256;

/// Something to send again until acknowledged.
#[derive(Clone, Debug)]
pub(crate) enum Pending {
    /// A line op for a shard.
    Op(u32, LineOp),
    /// A ship notice for a home.
    Notice(ShipNotice),
}

/// Ops and notices waiting to be acknowledged by another node, sent again
/// by a background task until they are.
#[derive(Clone, Default)]
pub(crate) struct Outbox {
    queue: Arc<Mutex<VecDeque<Pending>>>,
    wake: Arc<Notify>,
}

impl Outbox {
    /// Keeps `pending` until an owner acknowledges it.
    pub(crate) fn push(&self, pending: impl IntoIterator<Item = Pending>) {
        let mut queue = self.queue.lock().expect("outbox lock is never poisoned");
        let before = queue.len();
        queue.extend(pending);
        if queue.len() > before {
            self.wake.notify_one();
        }
    }

    /// Sends everything queued until acknowledged, until `stop` turns true:
    /// to the owner through `shared`'s peers, or to the shard actor here
    /// when the shard is served here by then (an op left here while this
    /// node failed closed on its own shard, e.g. after a lost lease or at a
    /// restart before its claims were made, must be applied here once the
    /// node serves the shard again: no other node will).
    pub(crate) async fn run(
        self,
        shared: Arc<crate::actor::Shared>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut backoff = OUTBOX_BACKOFF;
        loop {
            let batch: Vec<Pending> = {
                let mut queue = self.queue.lock().expect("outbox lock is never poisoned");
                queue.drain(..).collect()
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = stop.changed() => return,
                }
            }
            let failed = send_all(&shared, batch).await;
            if failed.is_empty() {
                backoff = OUTBOX_BACKOFF;
                continue;
            }
            tracing::debug!(waiting = failed.len(), "outbox: owners unreachable; sending again");
            self.push(failed);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(OUTBOX_MAX_BACKOFF);
        }
    }
}

/// Sends `batch` (one call per shard, notices one by one), each to the
/// shard's owner or, when served here now, to its actor here; returns what
/// was not acknowledged.
async fn send_all(shared: &crate::actor::Shared, batch: Vec<Pending>) -> Vec<Pending> {
    let mut by_shard: BTreeMap<u32, Vec<LineOp>> = BTreeMap::new();
    let mut notices = Vec::new();
    for pending in batch {
        match pending {
            Pending::Op(shard, op) => by_shard.entry(shard).or_default().push(op),
            Pending::Notice(notice) => notices.push(notice),
        }
    }
    let sends = by_shard.into_iter().flat_map(|(shard, ops)| {
        let chunks: Vec<Vec<LineOp>> = ops.chunks(OUTBOX_BATCH).map(<[LineOp]>::to_vec).collect();
        chunks.into_iter().map(move |ops| async move {
            match shared.line_ops(shard, ops.clone(), false).await {
                // A refusal is an answer: the op was applied or judged.
                Ok(_) => Vec::new(),
                Err(_) => ops.into_iter().map(|op| Pending::Op(shard, op)).collect(),
            }
        })
    });
    let mut failed: Vec<Pending> = futures::future::join_all(sends).await.concat();
    for notice in notices {
        let home = atp_core::hash::shard_of(notice.reservation.as_str());
        let delivered = match shared.peers() {
            Some(peers) if !peers.is_local(home) => {
                peers.notice(notice.clone(), FOLLOW_UP_DEADLINE).await.is_ok()
            }
            _ => {
                let here = notice.clone();
                shared.shards[home as usize]
                    .call(move |state, _, now| state.note_shipped(&here, now))
                    .await
                    .is_ok()
            }
        };
        if !delivered {
            failed.push(Pending::Notice(notice));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_what_a_client_acts_on() {
        let errors = vec![
            Ok(()),
            Err(CoreError::InsufficientStock {
                sku: "A".into(),
                location: "web".into(),
                requested: 3,
                available: 1,
            }),
            Err(CoreError::InProgress("busy".into())),
            Err(CoreError::FailedPrecondition("location x is RETIRED".into())),
        ];
        let decoded = decode_results(&encode_results(&errors)).expect("decodes");
        assert_eq!(decoded, errors);
        assert!(decode_results(&[0xff, 0xff]).is_err());
    }
}

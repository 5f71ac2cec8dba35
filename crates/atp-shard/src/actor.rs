//! The shard actor: state + a bounded mailbox of operations + a handle.
//!
//! An operation is a closure over the pure [`ShardState`] that returns the
//! reply to send once the batch it belongs to is finished. Splitting "apply"
//! from "reply" is what lets a durable group commit slot in between.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use atp_core::catalog::Catalog;
use atp_core::ids::{LocationId, Sku};
use atp_core::position::Position;
use atp_core::shard::{LineOp, ShardState};
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::error::NodeError;

/// What to do once the batch is finished (send the answer).
pub(crate) type Reply = Box<dyn FnOnce() + Send>;
/// One unit of work for a shard.
pub(crate) type Operation = Box<dyn FnOnce(&mut ShardState, &Catalog, i64) -> Reply + Send>;

/// State every actor and the node share.
pub(crate) struct Shared {
    pub(crate) catalog: RwLock<Arc<Catalog>>,
    /// Positions per SKU as of each shard's last finished batch.
    pub(crate) view: DashMap<Sku, Arc<BTreeMap<LocationId, Position>>>,
    pub(crate) clock: Clock,
    pub(crate) shards: Vec<ShardHandle>,
    pub(crate) batch_max: usize,
}

impl Shared {
    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.read().expect("catalog lock is never poisoned"))
    }
}

/// A cloneable handle to one shard's mailbox.
#[derive(Clone)]
pub(crate) struct ShardHandle {
    shard: u32,
    sender: mpsc::Sender<Operation>,
}

fn operation<T, F>(work: F) -> (Operation, oneshot::Receiver<T>)
where
    T: Send + 'static,
    F: FnOnce(&mut ShardState, &Catalog, i64) -> T + Send + 'static,
{
    let (reply_to, receiver) = oneshot::channel();
    let op: Operation = Box::new(move |state, catalog, now| {
        let answer = work(state, catalog, now);
        Box::new(move || {
            // The caller may have gone away; the work is done either way.
            let _ = reply_to.send(answer);
        })
    });
    (op, receiver)
}

impl ShardHandle {
    pub(crate) fn new(shard: u32, capacity: usize) -> (Self, mpsc::Receiver<Operation>) {
        let (sender, receiver) = mpsc::channel(capacity);
        (Self { shard, sender }, receiver)
    }

    /// Messages waiting in the mailbox.
    pub(crate) fn depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.sender.max_capacity()
    }

    /// Enqueues `work` if there is room now; a full mailbox is `Overloaded` at once.
    pub(crate) async fn try_call<T, F>(&self, work: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&mut ShardState, &Catalog, i64) -> T + Send + 'static,
    {
        let (op, receiver) = operation(work);
        self.sender.try_send(op).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => NodeError::Overloaded { shard: self.shard },
            mpsc::error::TrySendError::Closed(_) => NodeError::ShuttingDown,
        })?;
        receiver.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Enqueues `work`, waiting for room: for follow-ups of work already
    /// accepted (rollbacks, commits on the lines' shards), which must not be dropped.
    pub(crate) async fn call<T, F>(&self, work: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&mut ShardState, &Catalog, i64) -> T + Send + 'static,
    {
        let (op, receiver) = operation(work);
        self.sender.send(op).await.map_err(|_| NodeError::ShuttingDown)?;
        receiver.await.map_err(|_| NodeError::ShuttingDown)
    }
}

/// Delivers line ops to their shards (waiting for room), in order per call.
pub(crate) async fn deliver(shared: &Shared, ops: Vec<(u32, LineOp)>) -> Result<(), NodeError> {
    for (shard, op) in ops {
        let handle = &shared.shards[shard as usize];
        handle.call(move |state, catalog, now| state.apply_line_op(&op, catalog, now)).await??;
    }
    Ok(())
}

/// Runs one shard until `stop` turns true.
pub(crate) async fn run(
    mut state: ShardState,
    mut mailbox: mpsc::Receiver<Operation>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch: Vec<Operation> = Vec::with_capacity(shared.batch_max);
    let mut replies: Vec<Reply> = Vec::with_capacity(shared.batch_max);
    loop {
        let wake_at = state.next_deadline().map(|at| shared.clock.instant_at(at));
        tokio::select! {
            received = mailbox.recv_many(&mut batch, shared.batch_max) => {
                if received == 0 {
                    break;
                }
            }
            () = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = stop.changed() => break,
        }
        let now = shared.clock.now_ms();
        let catalog = shared.catalog();
        let expired = state.tick(now);
        for op in batch.drain(..) {
            replies.push(op(&mut state, &catalog, now));
        }
        // The durable group commit of this batch goes here (next issue).
        for sku in state.take_dirty_skus() {
            let positions = state.positions_of(&sku);
            shared.view.insert(sku, Arc::new(positions));
        }
        for reply in replies.drain(..) {
            reply();
        }
        if !expired.is_empty() {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                if let Err(error) = deliver(&shared, expired).await {
                    tracing::warn!(%error, "could not deliver expiry releases");
                }
            });
        }
    }
    tracing::debug!(shard = state.shard(), "shard actor stopped");
}

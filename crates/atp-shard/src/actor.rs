//! The shard actor: state + a bounded mailbox of operations + a handle.
//!
//! An operation is a closure over the pure [`ShardState`] that returns the
//! reply to send once the batch it belongs to is finished. The actor applies a
//! whole batch and hands its changes, the positions to publish and the
//! replies to the node's group committer, then goes on with the next batch
//! without waiting: once the batch is durable (after every earlier one), the
//! committer publishes the positions to the read view and sends the replies.
//! A batch that wrote nothing still answers after the shard's batches in
//! flight. If a write fails, every reply of it is the error and every shard
//! refuses all later work (memory is ahead of disk).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use atp_core::catalog::Catalog;
use atp_core::ids::Sku;
use atp_core::shard::{LineOp, ShardState, Version};
use atp_store::{Checkpoint, ShardBatch, StoreError};
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, watch};

use std::collections::BTreeMap;

use atp_core::CoreError;
use atp_core::hash::shard_of;
use atp_core::shard::ShipNotice;

use crate::clock::Clock;
use crate::committer::Committer;
use crate::error::NodeError;
use crate::peers::{FOLLOW_UP_DEADLINE, HOLD_DEADLINE, Outbox, Peers, Pending};

/// What to do once the batch is finished: send the answer, or the error that
/// kept the batch from becoming durable.
pub(crate) type Reply = Box<dyn FnOnce(Result<(), NodeError>) + Send>;
/// One unit of work for a shard.
pub(crate) type Operation = Box<dyn FnOnce(&mut ShardState, &Catalog, i64) -> Reply + Send>;

/// State every actor and the node share.
pub(crate) struct Shared {
    pub(crate) catalog: RwLock<Arc<Catalog>>,
    /// Positions per SKU as of each shard's last finished batch.
    pub(crate) view: DashMap<Sku, Arc<atp_core::shard::SkuView>>,
    pub(crate) clock: Clock,
    pub(crate) shards: Vec<ShardHandle>,
    pub(crate) batch_max: usize,
    /// None: an in-memory node (tests only) whose answers are not durable.
    pub(crate) committer: Option<Committer>,
    /// Longest time a shard paused to hand over its state for a checkpoint (µs).
    pub(crate) longest_checkpoint_pause_us: AtomicU64,
    /// When (node clock, ms) the checkpoints last covered the whole log: a
    /// round's start, or a poll that found nothing written since.
    pub(crate) checkpoints_current_ms: std::sync::atomic::AtomicI64,
    /// Reserves in flight by id: a retry waits for the first one's answer.
    pub(crate) in_flight: DashMap<atp_core::ids::ReservationId, InFlight>,
    /// The owners of shards this node does not serve (cluster mode only).
    pub(crate) peers: RwLock<Option<Arc<dyn Peers>>>,
    /// Ops and notices for other nodes waiting to be acknowledged.
    pub(crate) outbox: Outbox,
    /// The epoch each shard's batches are written under (grows only; set
    /// by cluster mode through `Node::set_epoch`, else 1 or what recovery
    /// found).
    pub(crate) epochs: Vec<AtomicU64>,
    /// Cluster mode (peers are set): a shard runs its own deadlines
    /// (expiries, forgetting, deliveries it owes) only while `serving` says
    /// this node serves it, so nothing is written under an epoch it does
    /// not hold.
    pub(crate) clustered: AtomicBool,
    /// Per shard: whether this node serves it now (cluster mode only).
    pub(crate) serving: Vec<AtomicBool>,
    /// Per shard: being handed to another node (its deadlines wait).
    pub(crate) moving: Vec<AtomicBool>,
    /// Per shard: exported for a handoff; it takes no more operations
    /// (they fail; deliveries go to the outbox) until the move ends.
    pub(crate) frozen: Vec<AtomicBool>,
    /// The change feed watchers follow, and each shard's published version.
    pub(crate) feed: crate::changes::Feed,
}

/// A Reserve being worked on, and where its answer will appear.
pub(crate) struct InFlight {
    pub(crate) request: Arc<atp_core::reservation::ReserveRequest>,
    pub(crate) answer: watch::Receiver<Option<Result<atp_core::reservation::Reply, NodeError>>>,
}

/// Asks an actor for its state between two batches.
pub(crate) enum Control {
    /// A checkpoint of the shard, unless nothing changed since `since`
    /// (the sequence of its last checkpoint).
    Checkpoint { since: u64, reply: oneshot::Sender<Option<Checkpoint>> },
    /// Its whole durable state, changed or not (a planned handoff).
    Export { reply: oneshot::Sender<Option<Checkpoint>> },
    /// The sequence of its last durable batch.
    Sequence { reply: oneshot::Sender<u64> },
    /// Replaces its state with an installed copy, continuing from `sequence`.
    Replace { state: Box<ShardState>, sequence: u64, reply: oneshot::Sender<()> },
    /// Publishes every SKU's figures again under the shard's epoch (this
    /// node started serving it: watchers learn the new owner's versions).
    Republish,
    /// Panics the actor (tests of "a dead shard fails the node").
    #[cfg(feature = "testing")]
    Panic,
}

impl Shared {
    /// Whether `shard` runs its own deadlines: always on a single node; in
    /// a cluster only while this node serves it.
    pub(crate) fn runs_deadlines(&self, shard: u32) -> bool {
        let index = shard as usize;
        let flag = |flags: &[AtomicBool]| {
            flags.get(index).is_some_and(|flag| flag.load(Ordering::Acquire))
        };
        !flag(&self.moving) && (!self.clustered.load(Ordering::Acquire) || flag(&self.serving))
    }

    /// The epoch `shard`'s next batch is written under.
    pub(crate) fn epoch(&self, shard: u32) -> u64 {
        self.epochs.get(shard as usize).map_or(0, |epoch| epoch.load(Ordering::Acquire))
    }

    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.read().expect("catalog lock is never poisoned"))
    }

    /// The other nodes, in cluster mode.
    pub(crate) fn peers(&self) -> Option<Arc<dyn Peers>> {
        self.peers.read().expect("peers lock is never poisoned").clone()
    }

    /// Applies `ops` on `shard`, here or at its owner, in order: one result
    /// per op once durable. `try_first`: a full mailbox here refuses at
    /// once (Holds, Replaces) instead of waiting for room.
    pub(crate) async fn line_ops(
        &self,
        shard: u32,
        ops: Vec<LineOp>,
        try_first: bool,
    ) -> Result<Vec<Result<(), CoreError>>, NodeError> {
        let peers = self.peers();
        self.line_ops_via(remote_owner(peers.as_ref(), shard), shard, ops, try_first).await
    }

    /// [`Self::line_ops`] with the owner already looked up
    /// ([`remote_owner`]): `remote` is Some when another node owns `shard`.
    pub(crate) async fn line_ops_via(
        &self,
        remote: Option<&Arc<dyn Peers>>,
        shard: u32,
        ops: Vec<LineOp>,
        try_first: bool,
    ) -> Result<Vec<Result<(), CoreError>>, NodeError> {
        match remote {
            Some(peers) => {
                let deadline = if try_first { HOLD_DEADLINE } else { FOLLOW_UP_DEADLINE };
                match peers.line_ops(shard, ops.clone(), deadline).await {
                    // The shard came here meanwhile (this node just claimed
                    // it): applied here (ops are idempotent, a copy that
                    // reached the old owner first came with the shard).
                    Err(_) if peers.is_local(shard) => {
                        self.line_ops_here(shard, ops, try_first).await
                    }
                    answer => answer.map_err(NodeError::from),
                }
            }
            _ => self.line_ops_here(shard, ops, try_first).await,
        }
    }

    /// [`Self::line_ops`] on the shard's actor here.
    async fn line_ops_here(
        &self,
        shard: u32,
        ops: Vec<LineOp>,
        try_first: bool,
    ) -> Result<Vec<Result<(), CoreError>>, NodeError> {
        let work = move |state: &mut ShardState, catalog: &Catalog, now: i64| {
            ops.iter().map(|op| state.apply_line_op(op, catalog, now)).collect::<Vec<_>>()
        };
        let handle = &self.shards[shard as usize];
        if try_first { handle.try_call(work).await } else { handle.call(work).await }
    }
}

/// A cloneable handle to one shard's mailbox.
#[derive(Clone)]
pub(crate) struct ShardHandle {
    shard: u32,
    sender: mpsc::Sender<Operation>,
    control: mpsc::Sender<Control>,
    committer: Option<Committer>,
}

/// When an operation's caller hears its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Once the batch's changes are durable (every acknowledged write).
    Durable,
    /// As soon as it is applied, before the batch is durable: only for work
    /// whose answer promises nothing the log does not already hold or that
    /// recovery cannot rebuild (a Reserve's begin and finish, see
    /// `docs/PROTOCOL.md`).
    Applied,
}

fn operation<T, F>(work: F, answer: Answer) -> (Operation, oneshot::Receiver<Result<T, NodeError>>)
where
    T: Send + 'static,
    F: FnOnce(&mut ShardState, &Catalog, i64) -> T + Send + 'static,
{
    let (reply_to, receiver) = oneshot::channel();
    let op: Operation = match answer {
        Answer::Durable => Box::new(move |state, catalog, now| {
            let answer = work(state, catalog, now);
            Box::new(move |outcome: Result<(), NodeError>| {
                // The caller may have gone away; the work is done either way.
                let _ = reply_to.send(outcome.map(|()| answer));
            })
        }),
        Answer::Applied => Box::new(move |state, catalog, now| {
            let _ = reply_to.send(Ok(work(state, catalog, now)));
            // A closure capturing nothing: boxing it does not allocate.
            Box::new(|_: Result<(), NodeError>| {})
        }),
    };
    (op, receiver)
}

impl ShardHandle {
    pub(crate) fn new(
        shard: u32,
        capacity: usize,
        committer: Option<Committer>,
    ) -> (Self, mpsc::Receiver<Operation>, mpsc::Receiver<Control>) {
        let (sender, receiver) = mpsc::channel(capacity);
        let (control, controls) = mpsc::channel(4);
        (Self { shard, sender, control, committer }, receiver, controls)
    }

    /// Its whole durable state, once every batch begun is durable (None:
    /// stopped or failed).
    pub(crate) async fn export(&self) -> Option<Checkpoint> {
        let (reply, answer) = oneshot::channel();
        self.control.send(Control::Export { reply }).await.ok()?;
        answer.await.ok()?
    }

    /// The sequence of its last durable batch.
    pub(crate) async fn sequence(&self) -> Result<u64, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Sequence { reply })
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Replaces its state with `state`, continuing from `sequence`.
    pub(crate) async fn replace(&self, state: ShardState, sequence: u64) -> Result<(), NodeError> {
        let (reply, answer) = oneshot::channel();
        let request = Control::Replace { state: Box::new(state), sequence, reply };
        self.control.send(request).await.map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Publishes every SKU again under the shard's epoch here, after the
    /// batches in flight (see [`Control::Republish`]).
    pub(crate) fn republish(&self) {
        if self.control.try_send(Control::Republish).is_err()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let control = self.control.clone();
            runtime.spawn(async move {
                let _ = control.send(Control::Republish).await;
            });
        }
    }

    /// Wakes the actor (an empty operation) so it looks at its deadlines
    /// again; a full mailbox wakes it anyway.
    pub(crate) fn wake(&self) {
        let (op, _) = operation(|_, _, _| (), Answer::Applied);
        let _ = self.sender.try_send(op);
    }

    /// A checkpoint of the shard between two batches, unless nothing changed
    /// since the one covering `since` (or the shard is stopped or failed).
    pub(crate) async fn checkpoint(&self, since: u64) -> Option<Checkpoint> {
        let (reply, answer) = oneshot::channel();
        let request = Control::Checkpoint { since, reply };
        let asked = tokio::time::timeout(CHECKPOINT_WAIT, self.control.send(request)).await;
        if !matches!(asked, Ok(Ok(()))) {
            return None;
        }
        tokio::time::timeout(CHECKPOINT_WAIT, answer).await.ok()?.ok()?
    }

    /// Makes the shard's actor panic (tests only).
    #[cfg(feature = "testing")]
    pub(crate) async fn panic(&self) {
        let _ = self.control.send(Control::Panic).await;
    }

    fn refuse_if_failed(&self) -> Result<(), NodeError> {
        match &self.committer {
            Some(committer) => committer.refusal(),
            None => Ok(()),
        }
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
        self.try_call_answered(work, Answer::Durable).await
    }

    /// [`ShardHandle::try_call`], answered when `answer` says.
    pub(crate) async fn try_call_answered<T, F>(
        &self,
        work: F,
        answer: Answer,
    ) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&mut ShardState, &Catalog, i64) -> T + Send + 'static,
    {
        let (op, receiver) = operation(work, answer);
        self.refuse_if_failed()?;
        self.sender.try_send(op).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => NodeError::Overloaded { shard: self.shard },
            mpsc::error::TrySendError::Closed(_) => NodeError::ShuttingDown,
        })?;
        receiver.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Enqueues `work`, waiting for room: for follow-ups of work already
    /// accepted (rollbacks, commits on the lines' shards), which must not be dropped.
    pub(crate) async fn call<T, F>(&self, work: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&mut ShardState, &Catalog, i64) -> T + Send + 'static,
    {
        self.call_answered(work, Answer::Durable).await
    }

    /// [`ShardHandle::call`], answered when `answer` says.
    pub(crate) async fn call_answered<T, F>(&self, work: F, answer: Answer) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&mut ShardState, &Catalog, i64) -> T + Send + 'static,
    {
        let (op, receiver) = operation(work, answer);
        self.refuse_if_failed()?;
        self.sender.send(op).await.map_err(|_| NodeError::ShuttingDown)?;
        receiver.await.map_err(|_| NodeError::ShuttingDown)?
    }
}

/// The other nodes when one of them owns `shard`; None when this node
/// serves it (always, on a single node).
pub(crate) fn remote_owner(peers: Option<&Arc<dyn Peers>>, shard: u32) -> Option<&Arc<dyn Peers>> {
    peers.filter(|peers| !peers.is_local(shard))
}

/// Delivers line ops to their shards (waiting for room), in order per
/// shard: here, durable before this returns; on another node, acknowledged
/// within [`FOLLOW_UP_DEADLINE`] or else left to the outbox, which sends
/// them again until they are.
pub(crate) async fn deliver(shared: &Shared, ops: Vec<(u32, LineOp)>) -> Result<(), NodeError> {
    let mut by_shard: BTreeMap<u32, Vec<LineOp>> = BTreeMap::new();
    for (shard, op) in ops {
        by_shard.entry(shard).or_default().push(op);
    }
    let peers = shared.peers();
    let peers = peers.as_ref();
    let sent = futures::future::join_all(by_shard.into_iter().map(|(shard, ops)| async move {
        let owner = remote_owner(peers, shard);
        let remote = owner.is_some();
        // Kept for the outbox (cluster mode): a remote owner may not
        // answer, and a shard here may be moving away.
        let kept = if peers.is_some() { ops.clone() } else { Vec::new() };
        let outcome = shared.line_ops_via(owner, shard, ops, false).await;
        (shard, remote, kept, outcome)
    }))
    .await;
    for (shard, remote, kept, outcome) in sent {
        match outcome {
            // Refusals of follow-ups are judged by the shard (a late duplicate).
            Ok(_) => {}
            Err(error) if remote => {
                tracing::debug!(%error, shard, "line ops left to the outbox");
                shared.outbox.push(kept.into_iter().map(|op| Pending::Op(shard, op)));
            }
            // A cluster node's shard here that took nothing (exported for a
            // handoff: the outbox sends them on to its new owner).
            Err(error) if peers.is_some() => {
                tracing::debug!(%error, shard, "line ops for a shard here left to the outbox");
                shared.outbox.push(kept.into_iter().map(|op| Pending::Op(shard, op)));
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Tells `notice`'s home what shipped: here, durable before this returns;
/// on another node, acknowledged in time or else left to the outbox.
pub(crate) async fn notify_home(shared: &Shared, notice: ShipNotice) -> Result<(), NodeError> {
    let home = shard_of(notice.reservation.as_str());
    match shared.peers() {
        Some(peers) if !peers.is_local(home) => {
            if let Err(error) = peers.notice(notice.clone(), FOLLOW_UP_DEADLINE).await {
                tracing::debug!(%error, home, "ship notice left to the outbox");
                shared.outbox.push([Pending::Notice(notice)]);
            }
            Ok(())
        }
        _ => {
            shared.shards[home as usize]
                .call(move |state, _, now| state.note_shipped(&notice, now))
                .await
        }
    }
}

/// Delivers an expiry's releases on their own task (nobody waits for them).
fn spawn_delivery(
    runtime: &tokio::runtime::Handle,
    shared: &Arc<Shared>,
    expired: Vec<(u32, LineOp)>,
) {
    if expired.is_empty() {
        return;
    }
    let shared = Arc::clone(shared);
    runtime.spawn(async move {
        if let Err(error) = deliver(&shared, expired).await {
            tracing::warn!(%error, "could not deliver expiry releases");
        }
    });
}

/// Where a shard's actor starts.
pub(crate) struct Start {
    pub(crate) state: ShardState,
    /// The sequence of its last durable batch.
    pub(crate) sequence: u64,
}

/// The node error for a store error of a shard's commit.
pub(crate) fn storage_error(error: &StoreError) -> NodeError {
    match error {
        StoreError::DiskFull(reason) => NodeError::DiskFull(reason.clone()),
        other => NodeError::StorageFailed(other.to_string()),
    }
}

/// Runs one shard until `stop` turns true.
pub(crate) async fn run(
    start: Start,
    mut mailbox: mpsc::Receiver<Operation>,
    mut control: mpsc::Receiver<Control>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let Start { mut state, mut sequence } = start;
    let mut batch: Vec<Operation> = Vec::with_capacity(shared.batch_max);
    // Jobs handed to the committer, and how many of them completed: the
    // actor goes on applying while its last batches are being made durable.
    let mut submitted: u64 = 0;
    let (completed_sender, mut completed) = watch::channel(0u64);
    let completed_sender = Arc::new(completed_sender);
    let runtime = tokio::runtime::Handle::current();
    let has_failed = |shared: &Shared| shared.committer.as_ref().is_some_and(Committer::has_failed);
    loop {
        let failed = has_failed(&shared);
        // A shard this cluster node does not serve sleeps until a message
        // (`Node::set_serving` sends one when it starts serving).
        let runs_deadlines = shared.runs_deadlines(state.shard());
        let wake_at =
            state.next_deadline().filter(|_| runs_deadlines).map(|at| shared.clock.instant_at(at));
        tokio::select! {
            received = mailbox.recv_many(&mut batch, shared.batch_max) => {
                if received == 0 {
                    break;
                }
            }
            Some(request) = control.recv() => {
                // A checkpoint covers only durable state: wait for the
                // batches in flight first.
                let _ = completed.wait_for(|done| *done >= submitted).await;
                handle_control(request, &mut state, &mut sequence, has_failed(&shared), &shared);
                continue;
            }
            () = async {
                match wake_at {
                    Some(at) if !failed => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            } => {}
            _ = stop.changed() => break,
        }
        if has_failed(&shared) || shared.frozen[state.shard() as usize].load(Ordering::SeqCst) {
            // Memory is ahead of the disk, or the shard was exported for a
            // handoff: apply nothing, acknowledge nothing (dropped
            // operations answer Unavailable).
            batch.clear();
            continue;
        }
        let now = shared.clock.now_ms();
        let catalog = shared.catalog();
        let expired =
            if shared.runs_deadlines(state.shard()) { state.tick(now) } else { Vec::new() };
        let replies: Vec<Reply> = batch.drain(..).map(|op| op(&mut state, &catalog, now)).collect();
        let changes = state.drain_changes();
        let Some(committer) = &shared.committer else {
            // In memory: nothing to wait for.
            if !changes.skus.is_empty() {
                sequence += 1;
                let views = changes.skus.into_iter().map(|sku| {
                    let view = state.view_of(&sku);
                    (sku, view)
                });
                let version = Version { epoch: shared.epoch(state.shard()), sequence };
                shared.feed.publish(&shared.view, state.shard(), version, views.collect());
            }
            replies.into_iter().for_each(|reply| reply(Ok(())));
            spawn_delivery(&runtime, &shared, expired);
            continue;
        };
        let in_flight = *completed.borrow() < submitted;
        if changes.is_empty() && !in_flight {
            // Nothing written and nothing of this shard on its way to disk:
            // every answer is already durable.
            replies.into_iter().for_each(|reply| reply(Ok(())));
            spawn_delivery(&runtime, &shared, expired);
            continue;
        }
        let write = (!changes.is_empty()).then(|| {
            sequence += 1;
            ShardBatch {
                shard: state.shard(),
                epoch: shared.epoch(state.shard()),
                sequence,
                records: changes.records,
                ledger: changes.ledger,
            }
        });
        let version = Version { epoch: shared.epoch(state.shard()), sequence };
        // The positions as of this batch, published once it is durable.
        let published: Vec<(Sku, atp_core::shard::SkuView)> = changes
            .skus
            .into_iter()
            .map(|sku| {
                let view = state.view_of(&sku);
                (sku, view)
            })
            .collect();
        submitted += 1;
        let (shared_for_completion, runtime_for_completion) =
            (Arc::clone(&shared), runtime.clone());
        let completed_sender = Arc::clone(&completed_sender);
        let shard = state.shard();
        committer.submit(
            write,
            Box::new(move |outcome: Result<(), StoreError>| {
                let outcome = outcome.map_err(|error| {
                    tracing::error!(shard, %error, "batch not durable; shard stops");
                    storage_error(&error)
                });
                if outcome.is_ok() {
                    let shared = &shared_for_completion;
                    shared.feed.publish(&shared.view, shard, version, published);
                }
                for reply in replies {
                    reply(outcome.clone());
                }
                if outcome.is_ok() {
                    spawn_delivery(&runtime_for_completion, &shared_for_completion, expired);
                }
                completed_sender.send_modify(|done| *done += 1);
            }),
        );
    }
    tracing::debug!(shard = state.shard(), "shard actor stopped");
}

/// Answers a control request. Runs between batches, once every batch
/// handed to the committer completed: everything the state holds is
/// durable up to `sequence`.
fn handle_control(
    request: Control,
    state: &mut ShardState,
    sequence: &mut u64,
    failed: bool,
    shared: &Shared,
) {
    let checkpoint = |state: &ShardState, sequence: u64| {
        let started = Instant::now();
        let records = state.dump().into_iter().collect();
        let checkpoint = Checkpoint {
            shard: state.shard(),
            epoch: shared.epoch(state.shard()),
            sequence,
            records,
        };
        let paused = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        shared.longest_checkpoint_pause_us.fetch_max(paused, Ordering::Relaxed);
        checkpoint
    };
    match request {
        Control::Checkpoint { since, reply } => {
            let taken = (!failed && *sequence > since).then(|| checkpoint(state, *sequence));
            let _ = reply.send(taken);
        }
        Control::Export { reply } => {
            let exported = (!failed).then(|| checkpoint(state, *sequence));
            shared.frozen[state.shard() as usize].store(exported.is_some(), Ordering::SeqCst);
            let _ = reply.send(exported);
        }
        Control::Sequence { reply } => {
            let _ = reply.send(*sequence);
        }
        Control::Replace { state: installed, sequence: from, reply } => {
            let old: Vec<Sku> = state.skus().cloned().collect();
            *state = *installed;
            *sequence = from;
            for sku in old {
                shared.view.remove(&sku);
            }
            republish(state, *sequence, shared);
            let _ = reply.send(());
        }
        Control::Republish => republish(state, *sequence, shared),
        #[cfg(feature = "testing")]
        Control::Panic => panic!("shard {} was told to panic (test switch)", state.shard()),
    }
}

/// Publishes every SKU of `state` at (its epoch here, `sequence`).
fn republish(state: &ShardState, sequence: u64, shared: &Shared) {
    let shard = state.shard();
    let views = state.skus().map(|sku| (sku.clone(), state.view_of(sku))).collect();
    let version = Version { epoch: shared.epoch(shard), sequence };
    shared.feed.publish(&shared.view, shard, version, views);
}

/// How long a checkpoint request may wait for a busy shard.
pub(crate) const CHECKPOINT_WAIT: Duration = Duration::from_secs(30);

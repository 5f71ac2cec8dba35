//! The node API: routes requests to shard actors and coordinates reservations
//! whose lines live on other shards than their home.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::changes::Changed;
use atp_core::availability::{SkuAvailability, sku_availability};
use atp_core::catalog::{Catalog, Channel, Location};
use atp_core::catalog_codec::{decode_catalog, encode_catalog};
use atp_core::error::{CoreError, FieldViolation};
use atp_core::events::StockEvent;
use atp_core::hash::{SHARD_COUNT, shard_of};
use atp_core::ids::{ChannelId, LocationId, MAX_SKUS_PER_QUERY, ReservationId, Sku};
use atp_core::ledger::LedgerEntry;
use atp_core::reservation::{CommitLine, Reply, ReservationView, ReserveLine, ReserveRequest};
use atp_core::shard::{
    Begin, ChangeBegin, EventApplied, Incarnation, LineOp, ShardFacts, ShardSettings, ShardState,
    ShardStats, ShipNotice,
};
use atp_core::shard::{RecoveryReport, Version, recover_owned};
use atp_store::{
    Checkpoint, LedgerPage, LedgerQuery, LoadedShard, LogStats, ShardBatch, Store, StoreError,
};
use dashmap::DashMap;
use futures::future::join_all;
use tokio::sync::{mpsc, watch};

use crate::actor::{self, Answer, Control, InFlight, Operation, ShardHandle, Shared, Start};
use crate::clock::Clock;
use crate::committer::{Committer, CommitterStats};
use crate::doubts::{self, Confirmed};
use crate::error::NodeError;
use crate::peers::{Outbox, Peers, Pending};
use crate::write_log::WriteLogConfig;

/// The epoch of every shard on a single node (a cluster fences with real ones).
pub const SINGLE_NODE_EPOCH: u64 = 1;

/// Tunables of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Name shown by the admin API.
    pub node_name: String,
    /// Operations each shard's mailbox holds before callers get `Overloaded`.
    pub mailbox_capacity: usize,
    /// Most operations a shard applies per batch.
    pub batch_max: usize,
    /// Hold lifetime when a Reserve names none.
    pub default_ttl_ms: i64,
    /// Per-shard tunables.
    pub shard: ShardSettings,
    /// How long the durable ledger keeps an entry.
    pub ledger_retention_ms: i64,
    /// How often entries past the ledger retention are deleted.
    pub ledger_sweep_interval_ms: i64,
    /// A checkpoint round starts once the log grew this much since the last one.
    pub checkpoint_log_bytes: u64,
    /// A checkpoint round starts at least this often while anything changed.
    pub checkpoint_interval_ms: u64,
    /// Cluster mode: log every durable batch (shard, epoch, this node's id,
    /// host time) to this write log. None: nothing is logged.
    pub write_log: Option<WriteLogConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_name: "atpd-0".to_owned(),
            mailbox_capacity: 4096,
            batch_max: 256,
            default_ttl_ms: 15 * 60 * 1000,
            shard: ShardSettings::default(),
            ledger_retention_ms: 30 * 24 * 60 * 60 * 1000,
            ledger_sweep_interval_ms: 60 * 1000,
            checkpoint_log_bytes: 64 << 20,
            checkpoint_interval_ms: 5 * 60 * 1000,
            write_log: None,
        }
    }
}

/// One shard as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard number.
    pub shard: u32,
    /// Its epoch.
    pub epoch: u64,
    /// Counters from the state machine.
    pub stats: ShardStats,
    /// Operations waiting in its mailbox.
    pub mailbox_depth: u64,
    /// Mailbox size.
    pub mailbox_capacity: u64,
    /// The node serving it.
    pub node: String,
}

/// What recovery found and did, and how long it took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Positions loaded.
    pub positions: u64,
    /// Open line holds after recovery.
    pub open_holds: u64,
    /// Reservation records loaded.
    pub reservations: u64,
    /// What the cross-shard recovery did.
    pub report: RecoveryReport,
    /// Time to read the store (checkpoints and log).
    pub read: Duration,
    /// Time to read and decode every shard (includes `read`).
    pub load: Duration,
    /// Time of the cross-shard recovery and its write.
    pub cross_shard: Duration,
    /// Time in total.
    pub elapsed: Duration,
}

/// How often the checkpointer looks at the log's size.
const CHECKPOINT_POLL: Duration = Duration::from_secs(1);

/// What one checkpoint round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointRound {
    /// Shards checkpointed.
    pub checkpoints: u64,
    /// Log segments deleted after it.
    pub segments_deleted: u64,
    /// How long the round took.
    pub elapsed: Duration,
    /// The longest time any shard paused to hand over its state (since start).
    pub longest_pause: Duration,
}

/// A running node: 1024 shard actors and the shared read view.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
    config: Arc<NodeConfig>,
    stop: Arc<watch::Sender<bool>>,
    store: Option<Arc<dyn Store>>,
    /// Mailboxes of actors not started yet (until recovery ends).
    mailboxes: Arc<Mutex<Option<Vec<Mailboxes>>>>,
    ready: Arc<watch::Sender<bool>>,
    failure_sender: Arc<watch::Sender<Option<String>>>,
    failure: watch::Receiver<Option<String>>,
    /// Serialises catalog changes.
    catalog_updates: Arc<tokio::sync::Mutex<()>>,
}

type Mailboxes = (mpsc::Receiver<Operation>, mpsc::Receiver<Control>);

impl Node {
    /// Starts an in-memory node: nothing is durable and a restart loses all.
    /// For tests and benchmarks of the actors alone; atpd uses [`Node::open`].
    pub fn start(config: NodeConfig, clock: Clock) -> Self {
        let node = Self::build(config, clock, None);
        let starts = (0..SHARD_COUNT)
            .map(|shard| Start {
                state: ShardState::new(shard, SINGLE_NODE_EPOCH, node.config.shard.clone()),
                sequence: 0,
            })
            .collect();
        node.spawn_actors(starts);
        node
    }

    /// A durable node over `store`. It answers `Recovering` (and health says
    /// NOT_SERVING) until [`Node::recover`] has loaded its state.
    pub fn open(config: NodeConfig, clock: Clock, store: Arc<dyn Store>) -> Self {
        Self::build(config, clock, Some(store))
    }

    fn build(config: NodeConfig, clock: Clock, store: Option<Arc<dyn Store>>) -> Self {
        let (failure_sender, failure) = watch::channel(None);
        let failure_sender = Arc::new(failure_sender);
        let committer = store.as_ref().map(|store| {
            let write_log = config.write_log.as_ref();
            Committer::start(Arc::clone(store), Arc::clone(&failure_sender), write_log)
        });
        let mut handles = Vec::with_capacity(SHARD_COUNT as usize);
        let mut mailboxes = Vec::with_capacity(SHARD_COUNT as usize);
        for shard in 0..SHARD_COUNT {
            let (handle, mailbox, controls) =
                ShardHandle::new(shard, config.mailbox_capacity, committer.clone());
            handles.push(handle);
            mailboxes.push((mailbox, controls));
        }
        let shared = Arc::new(Shared {
            catalog: RwLock::new(Arc::new(Catalog::default())),
            view: DashMap::new(),
            clock,
            shards: handles,
            batch_max: config.batch_max.max(1),
            committer,
            longest_checkpoint_pause_us: AtomicU64::new(0),
            checkpoints_current_ms: std::sync::atomic::AtomicI64::new(clock.now_ms()),
            in_flight: DashMap::new(),
            peers: RwLock::new(None),
            outbox: Outbox::default(),
            epochs: (0..SHARD_COUNT).map(|_| AtomicU64::new(SINGLE_NODE_EPOCH)).collect(),
            clustered: AtomicBool::new(false),
            serving: (0..SHARD_COUNT).map(|_| AtomicBool::new(false)).collect(),
            moving: (0..SHARD_COUNT).map(|_| AtomicBool::new(false)).collect(),
            frozen: (0..SHARD_COUNT).map(|_| AtomicBool::new(false)).collect(),
            feed: crate::changes::Feed::new(SHARD_COUNT, clock),
        });
        let (stop, _) = watch::channel(false);
        let (ready, _) = watch::channel(false);
        Self {
            shared,
            config: Arc::new(config),
            stop: Arc::new(stop),
            store,
            mailboxes: Arc::new(Mutex::new(Some(mailboxes))),
            ready: Arc::new(ready),
            failure_sender,
            failure,
            catalog_updates: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn spawn_actors(&self, starts: Vec<Start>) {
        let mailboxes = self
            .mailboxes
            .lock()
            .expect("mailbox lock is never poisoned")
            .take()
            .expect("actors start once");
        for (start, (mailbox, controls)) in starts.into_iter().zip(mailboxes) {
            let shard = start.state.shard();
            // The epoch recovery found, unless a higher one was set already.
            self.shared.epochs[shard as usize].fetch_max(start.state.epoch(), Ordering::AcqRel);
            let stopped = self.stop.subscribe();
            let actor = tokio::spawn(actor::run(
                start,
                mailbox,
                controls,
                Arc::clone(&self.shared),
                stopped,
            ));
            // A shard whose actor panicked is dead: the node must not go on
            // saying SERVING. It fails (health NOT_SERVING; atpd exits 1) so
            // its supervisor restarts it and recovery reloads the shard.
            let failure = Arc::clone(&self.failure_sender);
            tokio::spawn(async move {
                if let Err(error) = actor.await
                    && error.is_panic()
                {
                    let reason = format!("shard {shard}'s actor panicked; the node must restart");
                    tracing::error!(shard, "{reason}");
                    failure.send_replace(Some(reason));
                }
            });
        }
        self.ready.send_replace(true);
    }

    /// Loads every shard and the configuration from the store, finishes or
    /// rolls back what a crash cut short, expires holds whose TTL passed while
    /// the node was down, makes that durable, and starts serving.
    pub async fn recover(&self) -> Result<RecoveryStats, NodeError> {
        self.recover_owning(None).await
    }

    /// [`Node::recover`] for a node of a cluster that owns the shards in
    /// `owned` (None: every shard): a shard it does not own is no evidence
    /// (`docs/PROTOCOL.md`, "Across nodes"). Ops and ship notices for other
    /// owners go to the outbox; reservations in doubt are decided in the
    /// background from the owners' answers; the sweep starts. Set the
    /// peers ([`Node::set_peers`]) first.
    pub async fn recover_owning(
        &self,
        owned: Option<BTreeSet<u32>>,
    ) -> Result<RecoveryStats, NodeError> {
        let Some(store) = self.store.clone() else { return Ok(RecoveryStats::default()) };
        let started = Instant::now();
        let storage = |error: StoreError| NodeError::StorageFailed(error.to_string());
        let catalog = match store.load_catalog().map_err(storage)? {
            Some(bytes) => decode_catalog(&bytes)
                .map_err(|error| NodeError::StorageFailed(format!("catalog: {error}")))?,
            None => Catalog::default(),
        };
        *self.shared.catalog.write().expect("catalog lock is never poisoned") =
            Arc::new(catalog.clone());
        let settings = self.config.shard.clone();
        let loaded: Vec<LoadedShard> = {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || store.load_all())
                .await
                .map_err(|error| NodeError::StorageFailed(error.to_string()))?
                .map_err(storage)?
        };
        let mut sequences: Vec<u64> = vec![0; SHARD_COUNT as usize];
        for shard in &loaded {
            sequences[shard.shard as usize] = shard.sequence;
        }
        // Decoding is the bulk of the work: two blocking decoders in parallel.
        let (even, odd): (Vec<_>, Vec<_>) =
            loaded.into_iter().partition(|loaded| loaded.shard % 2 == 0);
        // Each decoder also publishes its shards' positions to the read view
        // (recovery's own changes are published again below).
        let read = started.elapsed();
        let decoders = [even, odd].map(|part| {
            let settings = settings.clone();
            let shared = Arc::clone(&self.shared);
            tokio::task::spawn_blocking(move || {
                part.into_iter()
                    .map(|loaded| {
                        let epoch = loaded.epoch.max(SINGLE_NODE_EPOCH);
                        let version = Version { epoch, sequence: loaded.sequence };
                        let state = ShardState::restore(
                            loaded.shard,
                            epoch,
                            settings.clone(),
                            loaded.records,
                        )
                        .map_err(|error| NodeError::StorageFailed(error.to_string()))?;
                        let views =
                            state.skus().map(|sku| (sku.clone(), state.view_of(sku))).collect();
                        shared.feed.publish(&shared.view, state.shard(), version, views);
                        Ok(state)
                    })
                    .collect::<Result<Vec<_>, NodeError>>()
            })
        });
        let mut states = BTreeMap::new();
        for decoded in join_all(decoders).await {
            let decoded =
                decoded.map_err(|error| NodeError::StorageFailed(error.to_string()))??;
            states.extend(decoded.into_iter().map(|state| (state.shard(), state)));
        }
        let load = started.elapsed();
        let is_owned = |shard: u32| owned.as_ref().is_none_or(|owned| owned.contains(&shard));
        let recovered = recover_owned(&mut states, &is_owned, &catalog, self.shared.clock.now_ms());
        let report = recovered.report;
        // The shards here holding something of each id in doubt: where
        // deciding it starts.
        let doubts: Vec<(ReservationId, Vec<u32>)> = recovered
            .in_doubt
            .into_iter()
            .map(|id| {
                let known = states
                    .iter()
                    .filter(|(shard, state)| {
                        let facts = state.facts(&id);
                        is_owned(**shard) && (facts.record.is_some() || facts.hold.is_some())
                    })
                    .map(|(shard, _)| *shard)
                    .collect();
                (id, known)
            })
            .collect();
        let unconfirmed = recovered.unconfirmed;
        let outbound: Vec<Pending> = recovered
            .remote_ops
            .into_iter()
            .map(|(shard, op)| Pending::Op(shard, op))
            .chain(recovered.remote_notices.into_iter().map(Pending::Notice))
            .collect();
        let mut republish = Vec::new();
        let batches: Vec<ShardBatch> = states
            .values_mut()
            .map(|state| {
                let changes = state.drain_changes();
                republish.extend(changes.skus.into_iter().map(|sku| (state.shard(), sku)));
                ShardBatch {
                    shard: state.shard(),
                    epoch: state.epoch(),
                    sequence: sequences[state.shard() as usize] + 1,
                    records: changes.records,
                    ledger: changes.ledger,
                }
            })
            .filter(|batch| !batch.is_empty())
            .collect();
        if !batches.is_empty() {
            let written: Vec<u32> = batches.iter().map(|batch| batch.shard).collect();
            let store = Arc::clone(&store);
            let outcome = tokio::task::spawn_blocking(move || store.commit(&batches))
                .await
                .map_err(|error| NodeError::StorageFailed(error.to_string()))?;
            match outcome {
                Ok(()) => {
                    for shard in written {
                        sequences[shard as usize] += 1;
                    }
                }
                Err(error @ StoreError::DiskFull(_)) => {
                    // No crash loop on a full disk: serve reads of the
                    // recovered state and refuse writes until space is freed
                    // and the node restarts.
                    tracing::error!(%error, "recovery could not write its changes; serving reads only");
                    if let Some(committer) = &self.shared.committer {
                        committer.note_failure(&error);
                    }
                }
                Err(error) => return Err(storage(error)),
            }
        }
        let cross_shard = started.elapsed() - load;
        let mut stats =
            RecoveryStats { report, read, load, cross_shard, ..RecoveryStats::default() };
        for (shard, sku) in republish {
            let state = &states[&shard];
            let view = state.view_of(&sku);
            let version = Version { epoch: state.epoch(), sequence: sequences[shard as usize] };
            self.shared.feed.publish(&self.shared.view, shard, version, vec![(sku, view)]);
        }
        for state in states.values() {
            let shard_stats = state.stats();
            stats.positions += shard_stats.position_count;
            stats.open_holds += shard_stats.open_holds;
            stats.reservations += shard_stats.reservation_count;
        }
        let starts = states
            .into_values()
            .map(|state| {
                let sequence = sequences[state.shard() as usize];
                Start { state, sequence }
            })
            .collect();
        self.spawn_actors(starts);
        if !outbound.is_empty() || !doubts.is_empty() {
            tracing::info!(
                outbound = outbound.len(),
                in_doubt = doubts.len(),
                "recovery left ops for other nodes and reservations in doubt"
            );
        }
        self.shared.outbox.push(outbound);
        let pending_timeout_ms = self.config.shard.pending_timeout_ms;
        if self.shared.peers().is_some() {
            let confirmed = Arc::new(Confirmed::default());
            doubts::spawn_resolver(
                Arc::clone(&self.shared),
                doubts,
                pending_timeout_ms,
                Arc::clone(&confirmed),
                self.stop.subscribe(),
            );
            doubts::spawn_sweeper(
                Arc::clone(&self.shared),
                pending_timeout_ms,
                confirmed,
                self.stop.subscribe(),
            );
            doubts::spawn_confirmer(Arc::clone(&self.shared), unconfirmed, self.stop.subscribe());
        }
        self.spawn_ledger_sweeper(Arc::clone(&store));
        self.spawn_checkpointer(store);
        stats.elapsed = started.elapsed();
        Ok(stats)
    }

    /// Starts the background checkpointer: a round starts once the log grew
    /// `checkpoint_log_bytes` since the last one (or `checkpoint_interval_ms`
    /// passed with anything written); it closes the current segment, takes a
    /// checkpoint of every shard that changed since its last one, then
    /// deletes the segments the checkpoints cover.
    fn spawn_checkpointer(&self, store: Arc<dyn Store>) {
        let node = self.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut covered = vec![0u64; SHARD_COUNT as usize];
            let mut last_round = tokio::time::Instant::now();
            let mut round_start = store.log_stats().log_bytes;
            let mut poll = tokio::time::interval(CHECKPOINT_POLL);
            loop {
                tokio::select! {
                    _ = poll.tick() => {}
                    _ = stop.changed() => break,
                }
                let log_bytes = store.log_stats().log_bytes;
                let grown = log_bytes.saturating_sub(round_start);
                if grown == 0 {
                    node.shared.checkpoints_current_ms.store(node.now_ms(), Ordering::Relaxed);
                }
                let due = grown >= node.config.checkpoint_log_bytes
                    || (grown > 0
                        && last_round.elapsed()
                            >= Duration::from_millis(node.config.checkpoint_interval_ms));
                if !due {
                    continue;
                }
                let round_started_ms = node.now_ms();
                match node.checkpoint_round(&store, &mut covered).await {
                    Ok(round) => {
                        node.shared
                            .checkpoints_current_ms
                            .store(round_started_ms, Ordering::Relaxed);
                        let sizes = store.log_stats();
                        tracing::info!(
                            checkpoints = round.checkpoints,
                            segments_deleted = round.segments_deleted,
                            elapsed_ms = round.elapsed.as_millis() as u64,
                            longest_pause_us = round.longest_pause.as_micros() as u64,
                            log_bytes = sizes.log_bytes,
                            checkpoint_bytes = sizes.checkpoint_bytes,
                            "checkpoint round"
                        );
                    }
                    Err(error) => tracing::warn!(%error, "checkpoint round failed"),
                }
                last_round = tokio::time::Instant::now();
                round_start = store.log_stats().log_bytes;
            }
        });
    }

    /// One checkpoint round (see [`Node::checkpoint_now`]).
    async fn checkpoint_round(
        &self,
        store: &Arc<dyn Store>,
        covered: &mut [u64],
    ) -> Result<CheckpointRound, NodeError> {
        let started = Instant::now();
        store.rotate_log();
        let mut round = CheckpointRound::default();
        for shard in 0..SHARD_COUNT {
            let since = covered[shard as usize];
            let Some(checkpoint) = self.shard(shard).checkpoint(since).await else { continue };
            let sequence = checkpoint.sequence;
            let store = Arc::clone(store);
            tokio::task::spawn_blocking(move || store.write_checkpoint(&checkpoint))
                .await
                .map_err(|error| NodeError::StorageFailed(error.to_string()))?
                .map_err(|error| NodeError::StorageFailed(error.to_string()))?;
            covered[shard as usize] = sequence;
            round.checkpoints += 1;
        }
        let compacting = Arc::clone(store);
        round.segments_deleted = tokio::task::spawn_blocking(move || compacting.compact_log())
            .await
            .map_err(|error| NodeError::StorageFailed(error.to_string()))?
            .map_err(|error| NodeError::StorageFailed(error.to_string()))?;
        round.elapsed = started.elapsed();
        round.longest_pause =
            Duration::from_micros(self.shared.longest_checkpoint_pause_us.load(Ordering::Relaxed));
        Ok(round)
    }

    /// Runs a checkpoint round now: every shard that changed since its last
    /// checkpoint writes a new one, then covered log segments are deleted.
    /// (The background checkpointer does this on its own; for tests, tools
    /// and benchmarks.) Every shard is checkpointed whose state changed since
    /// this node started, as the round does not know the older checkpoints.
    pub async fn checkpoint_now(&self) -> Result<CheckpointRound, NodeError> {
        self.check_ready()?;
        let Some(store) = self.store.clone() else { return Ok(CheckpointRound::default()) };
        let mut covered = vec![0u64; SHARD_COUNT as usize];
        self.checkpoint_round(&store, &mut covered).await
    }

    /// How long (ms) the log has held writes no checkpoint covers: since a
    /// checkpoint round last started, or the checkpointer last found nothing
    /// written (0 for an in-memory node).
    pub fn checkpoint_age_ms(&self) -> i64 {
        if self.store.is_none() {
            return 0;
        }
        (self.now_ms() - self.shared.checkpoints_current_ms.load(Ordering::Relaxed)).max(0)
    }

    /// Whether the node refuses every write because a durable write failed
    /// (a full disk: until restarted with space; else it is exiting).
    pub fn writes_refused(&self) -> bool {
        self.shared.committer.as_ref().is_some_and(|committer| committer.has_failed())
    }

    /// Operations waiting in the mailboxes of the shards this node serves:
    /// (their sum, the deepest one's).
    pub fn mailbox_depths(&self) -> (u64, u64) {
        let mut sum = 0u64;
        let mut deepest = 0u64;
        for (shard, handle) in self.shared.shards.iter().enumerate() {
            if !self.serves(shard as u32) {
                continue;
            }
            let depth = handle.depth() as u64;
            sum += depth;
            deepest = deepest.max(depth);
        }
        (sum, deepest)
    }

    /// Sizes of the log and checkpoints (None for an in-memory node).
    pub fn log_stats(&self) -> Option<LogStats> {
        self.store.as_ref().map(|store| store.log_stats())
    }

    /// Makes shard `shard`'s actor panic, to test that the node then fails.
    #[cfg(feature = "testing")]
    pub async fn panic_shard(&self, shard: u32) {
        self.shard(shard).panic().await;
    }

    fn spawn_ledger_sweeper(&self, store: Arc<dyn Store>) {
        let retention_ms = self.config.ledger_retention_ms;
        let interval_ms =
            u64::try_from(self.config.ledger_sweep_interval_ms.max(1000)).unwrap_or(60_000);
        let clock = self.shared.clock;
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(interval_ms));
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = stop.changed() => break,
                }
                let before = clock.now_ms().saturating_sub(retention_ms);
                let store = Arc::clone(&store);
                match tokio::task::spawn_blocking(move || store.sweep_ledger(before)).await {
                    Ok(Ok(0)) => {}
                    Ok(Ok(deleted)) => {
                        tracing::info!(deleted, "ledger entries past retention deleted")
                    }
                    Ok(Err(error)) => tracing::warn!(%error, "ledger sweep failed"),
                    Err(error) => tracing::warn!(%error, "ledger sweep panicked"),
                }
            }
        });
    }

    /// An in-memory node answers from each shard's ledger tail: by sku only,
    /// one page.
    async fn query_ledger_tail(&self, query: LedgerQuery) -> Result<LedgerPage, NodeError> {
        let Some(sku) = &query.sku else {
            return Err(
                CoreError::invalid("sku", "an in-memory node reads its ledger by sku").into()
            );
        };
        let sku = Sku::parse("sku", sku)
            .map_err(|violation| CoreError::InvalidArgument(vec![violation]))?;
        let location = match &query.location {
            Some(location) => Some(
                LocationId::parse("location_id", location)
                    .map_err(|violation| CoreError::InvalidArgument(vec![violation]))?,
            ),
            None => None,
        };
        let entries = self.ledger(sku, location, usize::MAX).await?;
        let entries = entries
            .into_iter()
            .filter(|entry| query.cause.as_ref().is_none_or(|cause| *entry.cause == **cause))
            .filter(|entry| query.from_ms.is_none_or(|from| entry.at_ms >= from))
            .filter(|entry| query.to_ms.is_none_or(|to| entry.at_ms < to))
            .take(query.limit.max(1))
            .collect();
        Ok(LedgerPage { entries, next_page_token: Vec::new() })
    }

    /// Whether the node has recovered and serves.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once the node serves.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Changes to `Some(reason)` when a durable write failed: the node takes
    /// no more writes and must be restarted.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.clone()
    }

    /// Group-commit counters (None for an in-memory node).
    pub fn committer_stats(&self) -> Option<Arc<CommitterStats>> {
        self.shared.committer.as_ref().map(|committer| Arc::clone(&committer.stats))
    }

    pub(crate) fn check_ready(&self) -> Result<(), NodeError> {
        if self.is_ready() { Ok(()) } else { Err(NodeError::Recovering) }
    }

    /// One page of the durable ledger. An in-memory node has none.
    pub async fn query_ledger(&self, query: LedgerQuery) -> Result<LedgerPage, NodeError> {
        self.check_ready()?;
        let Some(store) = self.store.clone() else {
            return self.query_ledger_tail(query).await;
        };
        tokio::task::spawn_blocking(move || store.query_ledger(&query))
            .await
            .map_err(|_| NodeError::ShuttingDown)?
            .map_err(|error| match error {
                StoreError::InvalidQuery { field, message } => {
                    CoreError::invalid(field, message).into()
                }
                other => NodeError::StorageFailed(other.to_string()),
            })
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Sets the epoch `shard` is served under (cluster mode: its claim's
    /// create revision). Every batch of the shard made durable from now on
    /// carries it, so set it before admitting a request under it. Epochs
    /// only grow: a lower one than the current is ignored.
    pub fn set_epoch(&self, shard: u32, epoch: u64) {
        if let Some(current) = self.shared.epochs.get(shard as usize) {
            current.fetch_max(epoch, Ordering::AcqRel);
        }
    }

    /// Cluster mode: whether this node serves `shard` now, and under which
    /// epoch (see [`Node::set_epoch`]). A shard not served runs none of its
    /// own deadlines (no expiry, nothing forgotten, no delivery it owes):
    /// its batches would carry an epoch this node does not hold. When it
    /// starts serving it catches up at once.
    pub fn set_serving(&self, shard: u32, epoch: Option<u64>) {
        let Some(serving) = self.shared.serving.get(shard as usize) else { return };
        match epoch {
            Some(epoch) => {
                self.set_epoch(shard, epoch);
                if !serving.swap(true, Ordering::AcqRel) {
                    self.shard(shard).wake();
                    // Watchers learn this node's versions of every SKU.
                    self.shard(shard).republish();
                }
            }
            None => serving.store(false, Ordering::Release),
        }
    }

    /// A planned handoff at the old owner (`docs/PROTOCOL.md`, "Planned
    /// handoff"), once no new request for `shard` is admitted: lets its
    /// deadlines deliver what they owe, stops them, lets every operation
    /// already queued finish durably, and returns the shard's whole durable
    /// state. Its deadlines stay stopped, and it takes no more operations
    /// (they fail; deliveries to it go to the outbox, which sends them to
    /// its owner once that is another node), until [`Node::end_export`].
    pub async fn export_shard(&self, shard: u32) -> Result<Checkpoint, NodeError> {
        self.check_ready()?;
        check_shard(shard)?;
        let handle = self.shard(shard).clone();
        // A batch ticks first: what the shard owes goes out before it stops.
        handle.call(|_, _, _| ()).await?;
        self.shared.moving[shard as usize].store(true, Ordering::SeqCst);
        // Every batch begun before the stop is durable after this one.
        handle.call(|_, _, _| ()).await?;
        handle.export().await.ok_or(NodeError::ShuttingDown)
    }

    /// Ends [`Node::export_shard`]: `shard`'s deadlines run again while
    /// this node serves it (a failed move; after a move it no longer does).
    pub fn end_export(&self, shard: u32) {
        if let Some(moving) = self.shared.moving.get(shard as usize)
            && moving.swap(false, Ordering::SeqCst)
        {
            self.shared.frozen[shard as usize].store(false, Ordering::SeqCst);
            self.shard(shard).wake();
        }
    }

    /// A planned handoff at the new owner: makes `checkpoint` (another
    /// node's [`Node::export_shard`]) durable as this node's copy of its
    /// shard, replacing the copy held, and loads it. Call only while this
    /// node does not serve the shard: it serves it after claiming it.
    /// Returns the batch sequence the copy continues from (above every
    /// batch of the old copy, which recovery then skips).
    pub async fn install_shard(&self, checkpoint: Checkpoint) -> Result<u64, NodeError> {
        self.check_ready()?;
        check_shard(checkpoint.shard)?;
        let shard = checkpoint.shard;
        let handle = self.shard(shard).clone();
        let settings = self.config.shard.clone();
        let records = checkpoint.records.clone();
        let epoch = checkpoint.epoch.max(SINGLE_NODE_EPOCH);
        let state = tokio::task::spawn_blocking(move || {
            ShardState::restore(shard, epoch, settings, records)
        })
        .await
        .map_err(|error| NodeError::StorageFailed(error.to_string()))?
        .map_err(|error| NodeError::Core(CoreError::invalid("checkpoint", error.to_string())))?;
        let sequence = handle.sequence().await?.max(checkpoint.sequence) + 1;
        if let Some(store) = self.store.clone() {
            let installed = Checkpoint { sequence, ..checkpoint };
            tokio::task::spawn_blocking(move || store.write_checkpoint(&installed))
                .await
                .map_err(|error| NodeError::StorageFailed(error.to_string()))?
                .map_err(|error| actor::storage_error(&error))?;
        }
        handle.replace(state, sequence).await?;
        Ok(sequence)
    }

    /// The epoch `shard`'s batches are written under (1 on a single node).
    pub fn epoch(&self, shard: u32) -> u64 {
        self.shared.epoch(shard)
    }

    /// The node's clock reading (ms since the epoch).
    pub fn now_ms(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    /// Stops every shard actor; later calls answer `ShuttingDown`.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Cluster mode: line ops, ship notices and recovery questions for
    /// shards `peers` says this node does not serve go to their owners
    /// through it. Set once, before serving; starts the outbox.
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        *self.shared.peers.write().expect("peers lock is never poisoned") =
            Some(Arc::clone(&peers));
        self.shared.clustered.store(true, Ordering::Release);
        let outbox = self.shared.outbox.clone();
        tokio::spawn(outbox.run(Arc::clone(&self.shared), self.stop.subscribe()));
    }

    /// Another node's line ops for `shard`, which this node serves: one
    /// result per op, answered once durable. A Hold or Replace is refused
    /// at once by a full mailbox; other ops wait for room.
    pub async fn apply_line_ops(
        &self,
        shard: u32,
        ops: Vec<LineOp>,
    ) -> Result<Vec<Result<(), CoreError>>, NodeError> {
        self.check_ready()?;
        check_shard(shard)?;
        let try_first =
            ops.iter().any(|op| matches!(op, LineOp::Hold { .. } | LineOp::Replace { .. }));
        let handle = self.shard(shard).clone();
        let work = move |state: &mut ShardState, catalog: &Catalog, now: i64| {
            ops.iter().map(|op| state.apply_line_op(op, catalog, now)).collect::<Vec<_>>()
        };
        spawn_to_completion(async move {
            if try_first { handle.try_call(work).await } else { handle.call(work).await }
        })
        .await
    }

    /// Another node's ship notice for a reservation homed on a shard this
    /// node serves; answered once durable.
    pub async fn note_shipped(&self, notice: ShipNotice) -> Result<(), NodeError> {
        self.check_ready()?;
        let home = self.shard(shard_of(notice.reservation.as_str())).clone();
        spawn_to_completion(async move {
            home.call(move |state, _, now| state.note_shipped(&notice, now)).await
        })
        .await
    }

    /// What `shard` (served here) knows of `id`, for another node's
    /// recovery; answered after the shard's earlier batches are durable.
    pub async fn shard_facts(
        &self,
        shard: u32,
        id: ReservationId,
    ) -> Result<ShardFacts, NodeError> {
        self.check_ready()?;
        check_shard(shard)?;
        self.shard(shard).call(move |state, _, _| state.facts(&id)).await
    }

    /// Makes the record of `incarnation`'s id (homed on a shard served
    /// here) stand at it: another node's recovery decided so.
    pub async fn adopt(&self, incarnation: Incarnation) -> Result<(), NodeError> {
        self.check_ready()?;
        let home = self.shard(shard_of(incarnation.request.id.as_str())).clone();
        spawn_to_completion(async move {
            home.call(move |state, _, now| {
                state.adopt(&incarnation, now);
            })
            .await
        })
        .await
    }

    /// Whether the shard of `line.sku` (served here) still holds that line
    /// of `line.reservation`; answered after its earlier batches are durable.
    pub async fn has_line(&self, line: ShipNotice) -> Result<bool, NodeError> {
        self.check_ready()?;
        let shard = shard_of(line.sku.as_str());
        self.shard(shard)
            .call(move |state, _, _| state.has_line(&line.reservation, &line.sku, &line.location))
            .await
    }

    pub(crate) fn shard(&self, shard: u32) -> &ShardHandle {
        &self.shared.shards[shard as usize]
    }

    /// Holds every line or none. Runs to completion even if the caller goes away.
    pub async fn reserve(&self, request: ReserveRequest) -> Result<Reply, NodeError> {
        self.check_ready()?;
        request.check(&self.shared.catalog())?;
        let shared = Arc::clone(&self.shared);
        spawn_to_completion(async move {
            reserve_many(shared, vec![request]).await.pop().expect("one result per request")
        })
        .await
    }

    /// Reserves many at once (ReserveBatch): one message per shard per step,
    /// whatever the number of requests. One result per request, in order.
    /// Requests sharing an id run one after another in order, as a client's
    /// retries would: a repeat gets the first answer or `ALREADY_EXISTS`.
    pub async fn reserve_batch(
        &self,
        requests: Vec<ReserveRequest>,
    ) -> Result<Vec<Result<Reply, NodeError>>, NodeError> {
        self.check_ready()?;
        let catalog = self.shared.catalog();
        let count = requests.len();
        let mut results: Vec<Option<ReserveResult>> = (0..count).map(|_| None).collect();
        // Rounds: the n-th use of an id goes in round n.
        let mut rounds: Vec<Vec<(usize, ReserveRequest)>> = Vec::new();
        let mut uses: std::collections::HashMap<ReservationId, usize> = Default::default();
        for (index, request) in requests.into_iter().enumerate() {
            if let Err(error) = request.check(&catalog) {
                results[index] = Some(Err(error.into()));
                continue;
            }
            let round = uses.entry(request.id.clone()).or_default();
            if rounds.len() <= *round {
                rounds.push(Vec::new());
            }
            rounds[*round].push((index, request));
            *round += 1;
        }
        let shared = Arc::clone(&self.shared);
        let answered = spawn_to_completion(async move {
            let mut answered = Vec::with_capacity(count);
            for round in rounds {
                let (indexes, requests): (Vec<usize>, Vec<ReserveRequest>) =
                    round.into_iter().unzip();
                let answers = reserve_many(Arc::clone(&shared), requests).await;
                answered.extend(indexes.into_iter().zip(answers));
            }
            Ok(answered)
        })
        .await?;
        for (index, answer) in answered {
            results[index] = Some(answer);
        }
        Ok(results.into_iter().map(|result| result.expect("every request has a result")).collect())
    }

    /// Waits until no Reserve of `id` is in flight (a Commit or Release sent
    /// right after a retried Reserve must not see it PENDING).
    pub(crate) async fn settled(&self, id: &ReservationId) {
        let answer = self.shared.in_flight.get(id).map(|entry| entry.answer.clone());
        if let Some(mut answer) = answer {
            let _ = answer.wait_for(Option::is_some).await;
        }
    }

    /// Commits a HELD reservation (lines not named commit all they hold).
    pub async fn commit(
        &self,
        id: ReservationId,
        lines: Vec<CommitLine>,
    ) -> Result<Reply, NodeError> {
        self.check_ready()?;
        self.settled(&id).await;
        let home = shard_of(id.as_str());
        self.home_then_lines(home, move |state, _, now| state.commit_reply(&id, &lines, now)).await
    }

    /// Releases a HELD reservation.
    pub async fn release(&self, id: ReservationId) -> Result<Reply, NodeError> {
        self.check_ready()?;
        self.settled(&id).await;
        let home = shard_of(id.as_str());
        self.home_then_lines(home, move |state, _, now| state.release_reply(&id, now)).await
    }

    /// Cancels a COMMITTED reservation's unshipped units.
    pub async fn cancel(&self, id: ReservationId) -> Result<Reply, NodeError> {
        self.check_ready()?;
        self.settled(&id).await;
        let home = shard_of(id.as_str());
        self.home_then_lines(home, move |state, _, now| state.cancel_reply(&id, now)).await
    }

    /// Moves a HELD reservation's expiry to now + `ttl_ms`; a retry of the
    /// latest Extend keyed by `request_id` gets its first answer instead.
    pub async fn extend(
        &self,
        id: ReservationId,
        ttl_ms: i64,
        request_id: Option<String>,
    ) -> Result<Reply, NodeError> {
        self.check_ready()?;
        self.settled(&id).await;
        let home = shard_of(id.as_str());
        self.home_then_lines(home, move |state, _, now| {
            state.extend_reply(&id, ttl_ms, request_id.as_deref(), now)
        })
        .await
    }

    /// Changes a HELD reservation's lines (ModifyReservation; see
    /// `docs/PROTOCOL.md`): all or nothing, answered once every line shard
    /// holds exactly the new lines. A retry of the latest change (same
    /// `request_id` and lines) gets its first answer. Runs to completion
    /// even if the caller goes away; other operations of the id wait for it.
    pub async fn modify(
        &self,
        id: ReservationId,
        request_id: String,
        lines: Vec<ReserveLine>,
    ) -> Result<Reply, NodeError> {
        self.check_ready()?;
        let shared = Arc::clone(&self.shared);
        spawn_to_completion(async move {
            // One operation of an id at a time: wait for a Reserve or change
            // in flight. The entry's request stands for no Reserve (its
            // channel is no channel's), so a Reserve retry that finds it
            // waits, then runs on its own.
            let placeholder = Arc::new(ReserveRequest {
                id: id.clone(),
                channel: ChannelId::parse("channel", "modify").expect("a valid id"),
                lines: lines.clone(),
                ttl_ms: 0,
                metadata: Default::default(),
            });
            let answer = loop {
                let (first, mut waiting) = match shared.in_flight.entry(id.clone()) {
                    dashmap::Entry::Occupied(first) => {
                        let first = first.get();
                        (Arc::clone(&first.request), first.answer.clone())
                    }
                    dashmap::Entry::Vacant(slot) => {
                        let (answer, receiver) = watch::channel(None);
                        let request = Arc::clone(&placeholder);
                        slot.insert(InFlight { request, answer: receiver });
                        break answer;
                    }
                };
                if waiting.wait_for(Option::is_some).await.is_err() {
                    // Its task is gone without an answer: its entry is stale.
                    shared.in_flight.remove_if(&id, |_, entry| Arc::ptr_eq(&entry.request, &first));
                }
            };
            let result = run_change(&shared, &id, request_id, lines).await;
            shared.in_flight.remove_if(&id, |_, entry| Arc::ptr_eq(&entry.request, &placeholder));
            if answer.receiver_count() > 0 {
                answer.send_replace(Some(result.clone()));
            }
            result
        })
        .await
    }

    /// The reservation as its home shard knows it.
    pub async fn get_reservation(&self, id: ReservationId) -> Result<ReservationView, NodeError> {
        self.check_ready()?;
        self.settled(&id).await;
        let home = shard_of(id.as_str());
        Ok(self.shard(home).try_call(move |state, _, _| state.get(&id)).await??)
    }

    /// Runs a home-shard operation, then applies the line ops it produced
    /// before answering, so the caller's next read sees them.
    async fn home_then_lines<T, F>(&self, home: u32, work: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&mut ShardState, &Catalog, i64) -> Result<(T, Vec<(u32, LineOp)>), CoreError>
            + Send
            + 'static,
    {
        let shared = Arc::clone(&self.shared);
        spawn_to_completion(async move {
            let (view, ops) = shared.shards[home as usize].try_call(work).await??;
            actor::deliver(&shared, ops).await?;
            Ok(view)
        })
        .await
    }

    /// The configuration (locations and channels) as the node holds it now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.shared.catalog()
    }

    /// The change feed (issue 13): one event per durable batch (and per
    /// republish when this node starts serving a shard) naming the SKUs
    /// whose figures changed, sent after the read view holds them.
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<Arc<Changed>> {
        self.shared.feed.subscribe()
    }

    /// The version of `shard`'s last published batch here.
    pub fn published_version(&self, shard: u32) -> Version {
        self.shared.feed.published(shard)
    }

    /// Whether this node serves `shard` now (always on a single node).
    pub fn serves(&self, shard: u32) -> bool {
        !self.shared.clustered.load(Ordering::Acquire)
            || self.shared.serving.get(shard as usize).is_some_and(|s| s.load(Ordering::Acquire))
    }

    /// What the read view holds of `sku` now (None: no position, no demand).
    pub fn sku_view(&self, sku: &Sku) -> Option<Arc<atp_core::shard::SkuView>> {
        self.shared.view.get(sku).map(|entry| Arc::clone(entry.value()))
    }

    /// Calls `visit` with every SKU in the read view (a snapshot's scan; a
    /// SKU changed during it is seen at some version, and again in the
    /// change feed).
    pub fn for_each_view(&self, mut visit: impl FnMut(&Sku, &Arc<atp_core::shard::SkuView>)) {
        for entry in &self.shared.view {
            visit(entry.key(), entry.value());
        }
    }

    /// Availability of `skus` from the read view (never queued behind writes).
    pub fn availability(
        &self,
        skus: &[Sku],
        locations: &[LocationId],
        channels: &[ChannelId],
    ) -> Result<Vec<SkuAvailability>, NodeError> {
        self.check_ready()?;
        let catalog = self.shared.catalog();
        let mut violations = Vec::new();
        if skus.is_empty() {
            violations.push(FieldViolation::new("skus", "must name at least one sku"));
        }
        if skus.len() > MAX_SKUS_PER_QUERY {
            violations.push(FieldViolation::new(
                "skus",
                format!("has {}; the limit is {MAX_SKUS_PER_QUERY}", skus.len()),
            ));
        }
        for (index, location) in locations.iter().enumerate() {
            if !catalog.locations.contains_key(location) {
                violations.push(FieldViolation::new(
                    format!("location_ids[{index}]"),
                    format!("unknown location {location}"),
                ));
            }
        }
        for (index, channel) in channels.iter().enumerate() {
            if !catalog.channels.contains_key(channel) {
                violations.push(FieldViolation::new(
                    format!("channel_ids[{index}]"),
                    format!("unknown channel {channel}"),
                ));
            }
        }
        if !violations.is_empty() {
            return Err(CoreError::InvalidArgument(violations).into());
        }
        let empty = atp_core::shard::SkuView::default();
        let now = self.now_ms();
        Ok(skus
            .iter()
            .map(|sku| {
                let view = self.shared.view.get(sku).map(|entry| Arc::clone(entry.value()));
                let view = view.as_deref().unwrap_or(&empty);
                let shard = shard_of(sku.as_str());
                let mut figures = sku_availability(
                    sku,
                    shard,
                    SINGLE_NODE_EPOCH,
                    &view.positions,
                    &catalog,
                    locations,
                    channels,
                );
                figures.publish(&catalog, &view.demand, now);
                figures
            })
            .collect())
    }

    /// Applies stock events: one result per event, in the order given. Events
    /// naming an unknown location refuse the whole call (nothing applied).
    pub async fn apply_events(
        &self,
        events: Vec<StockEvent>,
    ) -> Result<Vec<Result<EventApplied, NodeError>>, NodeError> {
        self.check_events(&events)?;
        let shared = Arc::clone(&self.shared);
        spawn_to_completion(async move { Ok(apply_events(&shared, events).await) }).await
    }

    /// Refuses a batch of stock events naming an unknown location (the
    /// whole batch: nothing is applied).
    pub fn check_events(&self, events: &[StockEvent]) -> Result<(), NodeError> {
        self.check_ready()?;
        let catalog = self.shared.catalog();
        let violations: Vec<FieldViolation> = events
            .iter()
            .enumerate()
            .filter(|(_, event)| !catalog.locations.contains_key(&event.location))
            .map(|(index, event)| {
                FieldViolation::new(
                    format!("events[{index}].location_id"),
                    format!("unknown location {}", event.location),
                )
            })
            .collect();
        if !violations.is_empty() {
            return Err(CoreError::InvalidArgument(violations).into());
        }
        Ok(())
    }

    /// The configured locations.
    pub fn locations(&self) -> Vec<Location> {
        self.shared.catalog().locations.values().cloned().collect()
    }

    /// The configured channels.
    pub fn channels(&self) -> Vec<Channel> {
        self.shared.catalog().channels.values().cloned().collect()
    }

    /// Inserts or replaces a location; returns whether it changed.
    pub async fn upsert_location(&self, location: Location) -> Result<bool, NodeError> {
        self.update_catalog(|catalog| catalog.upsert_location(location)).await
    }

    /// Inserts or replaces a kit; returns whether it changed.
    pub async fn upsert_kit(&self, kit: atp_core::kits::Kit) -> Result<bool, NodeError> {
        self.update_catalog(|catalog| catalog.upsert_kit(kit)).await
    }

    /// Every configured kit.
    pub fn kits(&self) -> Vec<atp_core::kits::Kit> {
        self.shared.catalog().kits.values().cloned().collect()
    }

    /// Inserts or replaces a channel; returns whether it changed.
    pub async fn upsert_channel(&self, channel: Channel) -> Result<bool, NodeError> {
        self.update_catalog(|catalog| catalog.upsert_channel(channel)).await
    }

    /// Changes the catalog: durable before it is visible or acknowledged.
    /// Updates run one at a time; the file is written on a blocking thread,
    /// never on a runtime worker, and the lock that actors and reads take is
    /// held only to swap the new catalog in.
    async fn update_catalog(
        &self,
        change: impl FnOnce(&mut Catalog) -> Result<bool, CoreError> + Send + 'static,
    ) -> Result<bool, NodeError> {
        self.check_ready()?;
        let node = self.clone();
        spawn_to_completion(async move {
            let _one_at_a_time = node.catalog_updates.lock().await;
            let mut next = Catalog::clone(&node.shared.catalog());
            if !change(&mut next)? {
                return Ok(false);
            }
            if let Some(store) = node.store.clone() {
                if let Some(committer) = &node.shared.committer {
                    committer.refusal()?;
                }
                let bytes = encode_catalog(&next);
                tokio::task::spawn_blocking(move || store.save_catalog(&bytes))
                    .await
                    .map_err(|_| NodeError::ShuttingDown)?
                    .map_err(|error| actor::storage_error(&error))?;
            }
            *node.shared.catalog.write().expect("catalog lock is never poisoned") = Arc::new(next);
            Ok(true)
        })
        .await
    }

    /// Admin view of one shard.
    pub async fn shard_info(&self, shard: u32) -> Result<ShardInfo, NodeError> {
        self.check_ready()?;
        if shard >= SHARD_COUNT {
            return Err(CoreError::invalid("shard", format!("must be < {SHARD_COUNT}")).into());
        }
        let handle = self.shard(shard);
        let stats = handle.try_call(|state, _, _| state.stats()).await?;
        Ok(ShardInfo {
            shard,
            epoch: self.epoch(shard),
            stats,
            mailbox_depth: handle.depth() as u64,
            mailbox_capacity: handle.capacity() as u64,
            node: self.config.node_name.clone(),
        })
    }

    /// Admin view of every shard (only those holding something unless `include_empty`).
    pub async fn list_shards(&self, include_empty: bool) -> Result<Vec<ShardInfo>, NodeError> {
        let infos = join_all((0..SHARD_COUNT).map(|shard| self.shard_info(shard))).await;
        let mut shards = Vec::new();
        for info in infos {
            let info = info?;
            if include_empty || info.stats != ShardStats::default() {
                shards.push(info);
            }
        }
        Ok(shards)
    }

    /// The newest `limit` ledger entries of `sku`, oldest first.
    pub async fn ledger(
        &self,
        sku: Sku,
        location: Option<LocationId>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, NodeError> {
        self.check_ready()?;
        let shard = shard_of(sku.as_str());
        self.shard(shard)
            .try_call(move |state, _, _| state.ledger(&sku, location.as_ref(), limit))
            .await
    }
}

/// Refuses a shard number out of range.
fn check_shard(shard: u32) -> Result<(), NodeError> {
    if shard >= SHARD_COUNT {
        return Err(CoreError::invalid("shard", format!("must be < {SHARD_COUNT}")).into());
    }
    Ok(())
}

/// Runs `work` on its own task so that it finishes even if the caller's future
/// is dropped (a client disconnecting mid-Reserve must not strand holds).
async fn spawn_to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, NodeError>> + Send + 'static,
) -> Result<T, NodeError> {
    // In the caller's span: a trace follows the work to the other nodes.
    tokio::spawn(tracing::Instrument::in_current_span(work))
        .await
        .map_err(|_| NodeError::ShuttingDown)?
}

type ReserveResult = Result<Reply, NodeError>;

/// Reserves `requests` together, one message per shard per step (see
/// `docs/PROTOCOL.md`): the homes begin them, the line shards hold them
/// (answered once durable), refused ones are rolled back, then the homes
/// finish them and the held ones are answered. One result per request, in
/// order. A request whose id is already in flight (a retry racing the
/// first) waits for that one's answer: the same one if the payload is the
/// same, else it runs once the first is done (and gets `ALREADY_EXISTS` if
/// that one holds).
fn reserve_many(
    shared: Arc<Shared>,
    requests: Vec<ReserveRequest>,
) -> futures::future::BoxFuture<'static, Vec<ReserveResult>> {
    Box::pin(async move {
        let count = requests.len();
        let mut results: Vec<Option<ReserveResult>> = (0..count).map(|_| None).collect();
        let mut claimed = Vec::with_capacity(count);
        let mut waiting = Vec::new();
        for (index, request) in requests.into_iter().enumerate() {
            let request = Arc::new(request);
            match shared.in_flight.entry(request.id.clone()) {
                dashmap::Entry::Occupied(first) => {
                    let first = first.get();
                    waiting.push((
                        index,
                        request,
                        Arc::clone(&first.request),
                        first.answer.clone(),
                    ));
                }
                dashmap::Entry::Vacant(slot) => {
                    let (answer, receiver) = watch::channel(None);
                    slot.insert(InFlight { request: Arc::clone(&request), answer: receiver });
                    claimed.push((index, request, answer));
                }
            }
        }
        let work: Vec<(usize, Arc<ReserveRequest>)> =
            claimed.iter().map(|(index, request, _)| (*index, Arc::clone(request))).collect();
        for (index, result) in run_reserves(&shared, work).await {
            results[index] = Some(result);
        }
        for (index, request, answer) in claimed {
            // Forget it first: no retry can start waiting after this, so the
            // answer is copied only for the retries already waiting.
            shared
                .in_flight
                .remove_if(&request.id, |_, entry| Arc::ptr_eq(&entry.request, &request));
            if answer.receiver_count() > 0 {
                answer.send_replace(results[index].clone());
            }
        }
        let mut again = Vec::new();
        for (index, request, first, mut answer) in waiting {
            let outcome = answer.wait_for(Option::is_some).await.ok().and_then(|seen| seen.clone());
            match outcome {
                // A retry that raced the first: the first's answer, marked
                // as a replay (the reservation has not changed since).
                Some(result) if *first == *request => {
                    results[index] = Some(result.map(|reply| {
                        let current = reply.current.unwrap_or_else(|| reply.reservation.clone());
                        Reply::replayed(reply.reservation, current)
                    }))
                }
                // Another payload, or the first's task is gone: run it now.
                _ => again.push((index, Arc::unwrap_or_clone(request))),
            }
        }
        if !again.is_empty() {
            let (indexes, requests): (Vec<usize>, Vec<ReserveRequest>) = again.into_iter().unzip();
            let answers = reserve_many(Arc::clone(&shared), requests).await;
            for (index, answer) in indexes.into_iter().zip(answers) {
                results[index] = Some(answer);
            }
        }
        results.into_iter().map(|result| result.expect("every Reserve has a result")).collect()
    })
}

/// A Reserve past its home's begin.
struct Started {
    index: usize,
    id: ReservationId,
    version: u64,
    /// Line shards whose hold is durable, or (on another node) unanswered.
    held: Vec<u32>,
    /// Some line shard is on another node.
    remote_lines: bool,
    failure: Option<NodeError>,
}

/// The protocol's steps for Reserves of distinct ids, none in flight.
async fn run_reserves(
    shared: &Shared,
    work: Vec<(usize, Arc<ReserveRequest>)>,
) -> Vec<(usize, ReserveResult)> {
    let mut results = Vec::with_capacity(work.len());
    let peers = shared.peers();
    let peers = peers.as_ref();
    // 1. Begin on the homes (answered when applied: nothing is written).
    let mut by_home: BTreeMap<u32, Vec<(usize, Arc<ReserveRequest>)>> = BTreeMap::new();
    for (index, request) in work {
        by_home.entry(shard_of(request.id.as_str())).or_default().push((index, request));
    }
    let begins = join_all(by_home.into_iter().map(|(home, items)| async move {
        let indexes: Vec<usize> = items.iter().map(|(index, _)| *index).collect();
        let begun = shared.shards[home as usize]
            .try_call_answered(
                move |state, _, now| {
                    items
                        .into_iter()
                        .map(|(_, request)| {
                            (request.id.clone(), state.begin_reserve_shared(&request, now))
                        })
                        .collect::<Vec<_>>()
                },
                Answer::Applied,
            )
            .await;
        (indexes, begun)
    }))
    .await;
    let mut started: Vec<Started> = Vec::new();
    let mut holds: BTreeMap<u32, Vec<(usize, LineOp)>> = BTreeMap::new();
    for (indexes, begun) in begins {
        match begun {
            Err(error) => {
                results.extend(indexes.into_iter().map(|index| (index, Err(error.clone()))))
            }
            Ok(begun) => {
                for (index, (id, begin)) in indexes.into_iter().zip(begun) {
                    match begin {
                        Err(error) => results.push((index, Err(error.into()))),
                        Ok(Begin::Replay(reply)) => results.push((index, Ok(*reply))),
                        Ok(Begin::Started { holds: ops, version }) => {
                            let which = started.len();
                            let mut remote_lines = false;
                            for (shard, op) in ops {
                                remote_lines |= actor::remote_owner(peers, shard).is_some();
                                holds.entry(shard).or_default().push((which, op));
                            }
                            started.push(Started {
                                index,
                                id,
                                version,
                                held: Vec::new(),
                                remote_lines,
                                failure: None,
                            });
                        }
                    }
                }
            }
        }
    }
    if started.is_empty() {
        return results;
    }
    // 2. Hold on the line shards, each answered once durable (here, or by
    // the owner on another node).
    let outcomes = join_all(holds.into_iter().map(|(shard, ops)| async move {
        let which: Vec<usize> = ops.iter().map(|(which, _)| *which).collect();
        let ops: Vec<LineOp> = ops.into_iter().map(|(_, op)| op).collect();
        let owner = actor::remote_owner(peers, shard);
        let outcome = shared.line_ops_via(owner, shard, ops, true).await;
        (shard, which, owner.is_some(), outcome)
    }))
    .await;
    for (shard, which, remote, outcome) in outcomes {
        match outcome {
            Ok(applied) => {
                for (which, applied) in which.into_iter().zip(applied) {
                    let reserve = &mut started[which];
                    match applied {
                        Ok(()) => reserve.held.push(shard),
                        Err(error) => {
                            reserve.failure = reserve.failure.take().or(Some(error.into()))
                        }
                    }
                }
            }
            Err(error) => {
                for which in which {
                    let reserve = &mut started[which];
                    reserve.failure = reserve.failure.take().or(Some(error.clone()));
                    // Unanswered by another node: the Hold may have landed.
                    if remote {
                        reserve.held.push(shard);
                    }
                }
            }
        }
    }
    // 3. Roll back the holds of Reserves refused somewhere (here durable
    // before the refusal is answered; on another node acknowledged, or left
    // to the outbox after its deadline).
    let mut aborts: Vec<(u32, LineOp)> = Vec::new();
    for reserve in started.iter().filter(|reserve| reserve.failure.is_some()) {
        for shard in &reserve.held {
            let op = LineOp::Abort { id: reserve.id.clone(), version: reserve.version };
            aborts.push((*shard, op));
        }
    }
    if let Err(error) = actor::deliver(shared, aborts).await {
        // The node is failing; its restart rolls the holds back (recovery).
        tracing::warn!(%error, "could not roll back a refused Reserve's holds");
    }
    // 4. Finish on the homes, answered when applied: the holds are durable,
    // so the HELD record is rebuilt from them if the home's next batch is
    // lost. With a line on another node the record is durable first: a
    // restarted home cannot see holds elsewhere (the one-round rule).
    let mut finishes: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (which, reserve) in started.iter().enumerate() {
        finishes.entry(shard_of(reserve.id.as_str())).or_default().push(which);
    }
    let finishing = join_all(finishes.into_iter().map(|(home, which)| {
        let answer = if which.iter().any(|which| started[*which].remote_lines) {
            Answer::Durable
        } else {
            Answer::Applied
        };
        let items: Vec<(ReservationId, u64, bool)> = which
            .iter()
            .map(|which| {
                let reserve = &started[*which];
                (reserve.id.clone(), reserve.version, reserve.failure.is_none())
            })
            .collect();
        async move {
            let answers = shared.shards[home as usize]
                .call_answered(
                    move |state, _, now| {
                        items
                            .iter()
                            .map(|(id, version, held)| {
                                state.finish_reserve(id, *version, *held, now)
                            })
                            .collect::<Vec<_>>()
                    },
                    answer,
                )
                .await;
            (which, answers)
        }
    }))
    .await;
    for (which, answers) in finishing {
        let answers: Vec<Option<ReservationView>> = match answers {
            Ok(answers) => answers,
            Err(error) => {
                // PENDING stays until its deadline abandons it.
                for which in which {
                    let reserve = &mut started[which];
                    reserve.failure = reserve.failure.take().or(Some(error.clone()));
                }
                continue;
            }
        };
        for (which, answer) in which.into_iter().zip(answers) {
            let reserve = &mut started[which];
            let result = match (reserve.failure.take(), answer) {
                (Some(error), _) => Err(error),
                (None, Some(view)) => Ok(Reply::first(view)),
                (None, None) => Err(CoreError::InProgress(format!(
                    "reservation {}: the Reserve was abandoned after the pending timeout; nothing is held; retry",
                    reserve.id
                ))
                .into()),
            };
            results.push((reserve.index, result));
        }
    }
    for reserve in &mut started {
        if let Some(error) = reserve.failure.take() {
            results.push((reserve.index, Err(error)));
        }
    }
    results
}

/// The protocol's steps for one change (the id claimed in flight).
async fn run_change(
    shared: &Shared,
    id: &ReservationId,
    request_id: String,
    lines: Vec<ReserveLine>,
) -> Result<Reply, NodeError> {
    let home = &shared.shards[shard_of(id.as_str()) as usize];
    // 1. Begin on the home (in memory only).
    let begin_id = id.clone();
    let begun = home
        .try_call_answered(
            move |state, catalog, now| {
                state.begin_change(&begin_id, &request_id, lines, catalog, now)
            },
            Answer::Applied,
        )
        .await??;
    let (replaces, version) = match begun {
        ChangeBegin::Replay(reply) => return Ok(*reply),
        ChangeBegin::Started { replaces, version } => (replaces, version),
    };
    // 2. Replace on every shard of the old or new lines, each answered once
    // durable (here, or by the owner on another node). An unanswered one is
    // a refusal: the Revert below goes to every shard of the change.
    let outcomes =
        join_all(replaces.into_iter().map(|(shard, op)| shared.line_ops(shard, vec![op], true)))
            .await;
    let mut refusal: Option<NodeError> = None;
    for outcome in outcomes {
        let error = match outcome.map(|mut results| results.pop()) {
            Ok(Some(Ok(()))) => continue,
            Ok(Some(Err(error))) => error.into(),
            Ok(None) => NodeError::ShuttingDown,
            Err(error) => error,
        };
        refusal = refusal.or(Some(error));
    }
    // 3. Apply or drop the change on the home, durable before any Settle.
    let finish_id = id.clone();
    let replaced = refusal.is_none();
    let finished = home
        .call(move |state, _, now| state.finish_change(&finish_id, version, replaced, now))
        .await?;
    let Some((answer, ops)) = finished else {
        return Err(CoreError::InProgress(format!(
            "reservation {id}: the change was not in flight on its home; retry"
        ))
        .into());
    };
    // 4. Settle or revert on every shard (on another node: acknowledged, or
    // left to the outbox), then let the id's other operations in. A failing
    // shard here fails the node; its restart settles the change (recovery).
    actor::deliver(shared, ops).await?;
    let done_id = id.clone();
    home.call_answered(
        move |state, _, now| state.change_done(&done_id, version, now),
        Answer::Applied,
    )
    .await?;
    match (answer, refusal) {
        (Some(view), _) => Ok(Reply::first(view)),
        (None, Some(error)) => Err(error),
        (None, None) => unreachable!("a change is applied exactly when every Replace held"),
    }
}

async fn apply_events(
    shared: &Shared,
    events: Vec<StockEvent>,
) -> Vec<Result<EventApplied, NodeError>> {
    let mut by_shard: BTreeMap<u32, Vec<(usize, StockEvent)>> = BTreeMap::new();
    let count = events.len();
    for (index, event) in events.into_iter().enumerate() {
        by_shard.entry(shard_of(event.sku.as_str())).or_default().push((index, event));
    }
    let batches = join_all(by_shard.into_iter().map(|(shard, events)| async move {
        let indexes: Vec<usize> = events.iter().map(|(index, _)| *index).collect();
        let outcome = shared.shards[shard as usize]
            .try_call(move |state, catalog, now| {
                events
                    .iter()
                    .map(|(_, event)| state.apply_event(event, catalog, now))
                    .collect::<Vec<_>>()
            })
            .await;
        (indexes, outcome)
    }))
    .await;
    let mut results: Vec<Option<Result<EventApplied, NodeError>>> =
        (0..count).map(|_| None).collect();
    for (indexes, outcome) in batches {
        match outcome {
            Ok(answers) => {
                for (index, answer) in indexes.into_iter().zip(answers) {
                    results[index] = Some(answer.map_err(NodeError::Core));
                }
            }
            Err(error) => {
                for index in indexes {
                    results[index] = Some(Err(error.clone()));
                }
            }
        }
    }
    // Tell each shipped reservation's home what shipped, before answering.
    let notices: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().and_then(|r| r.as_ref().ok()).and_then(|a| a.notice.clone()))
        .collect();
    for notice in notices {
        if let Err(error) = actor::notify_home(shared, notice).await {
            tracing::warn!(%error, "could not tell a reservation's home about a shipment");
        }
    }
    results.into_iter().map(|r| r.expect("every event has a result")).collect()
}

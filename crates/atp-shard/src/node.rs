//! The node API: routes requests to shard actors and coordinates reservations
//! whose lines live on other shards than their home.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use atp_core::availability::{SkuAvailability, sku_availability};
use atp_core::catalog::{Catalog, Channel, Location};
use atp_core::error::{CoreError, FieldViolation};
use atp_core::events::StockEvent;
use atp_core::hash::{SHARD_COUNT, shard_of};
use atp_core::ids::{ChannelId, LocationId, MAX_SKUS_PER_QUERY, ReservationId, Sku};
use atp_core::ledger::{LedgerEntry, LedgerKind};
use atp_core::reservation::{CommitLine, ReservationView, ReserveRequest};
use atp_core::shard::{Begin, EventApplied, LineOp, ShardSettings, ShardState, ShardStats};
use atp_core::shard::{RecoveryReport, recover};
use atp_store::{LedgerPage, LedgerQuery, ShardBatch, Store, StoreError};
use dashmap::DashMap;
use futures::future::join_all;
use tokio::sync::{mpsc, watch};

use crate::actor::{self, Operation, ShardHandle, Shared};
use crate::clock::Clock;
use crate::committer::{Committer, CommitterStats};
use crate::error::NodeError;

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
    /// Time to read the store.
    pub load: Duration,
    /// Time in total.
    pub elapsed: Duration,
}

/// A running node: 1024 shard actors and the shared read view.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
    config: Arc<NodeConfig>,
    stop: Arc<watch::Sender<bool>>,
    store: Option<Arc<dyn Store>>,
    /// Mailboxes of actors not started yet (until recovery ends).
    mailboxes: Arc<Mutex<Option<Vec<mpsc::Receiver<Operation>>>>>,
    ready: Arc<watch::Sender<bool>>,
    failure: watch::Receiver<Option<String>>,
}

impl Node {
    /// Starts an in-memory node: nothing is durable and a restart loses all.
    /// For tests and benchmarks of the actors alone; atpd uses [`Node::open`].
    pub fn start(config: NodeConfig, clock: Clock) -> Self {
        let node = Self::build(config, clock, None);
        let states = (0..SHARD_COUNT)
            .map(|shard| ShardState::new(shard, SINGLE_NODE_EPOCH, node.config.shard.clone()))
            .collect();
        node.spawn_actors(states);
        node
    }

    /// A durable node over `store`. It answers `Recovering` (and health says
    /// NOT_SERVING) until [`Node::recover`] has loaded its state.
    pub fn open(config: NodeConfig, clock: Clock, store: Arc<dyn Store>) -> Self {
        Self::build(config, clock, Some(store))
    }

    fn build(config: NodeConfig, clock: Clock, store: Option<Arc<dyn Store>>) -> Self {
        let (failure_sender, failure) = watch::channel(None);
        let committer =
            store.as_ref().map(|store| Committer::start(Arc::clone(store), failure_sender));
        let mut handles = Vec::with_capacity(SHARD_COUNT as usize);
        let mut mailboxes = Vec::with_capacity(SHARD_COUNT as usize);
        for shard in 0..SHARD_COUNT {
            let (handle, mailbox) =
                ShardHandle::new(shard, config.mailbox_capacity, committer.clone());
            handles.push(handle);
            mailboxes.push(mailbox);
        }
        let shared = Arc::new(Shared {
            catalog: RwLock::new(Arc::new(Catalog::default())),
            view: DashMap::new(),
            clock,
            shards: handles,
            batch_max: config.batch_max.max(1),
            committer,
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
            failure,
        }
    }

    fn spawn_actors(&self, states: Vec<ShardState>) {
        let mailboxes = self
            .mailboxes
            .lock()
            .expect("mailbox lock is never poisoned")
            .take()
            .expect("actors start once");
        for (state, mailbox) in states.into_iter().zip(mailboxes) {
            let stopped = self.stop.subscribe();
            tokio::spawn(actor::run(state, mailbox, Arc::clone(&self.shared), stopped));
        }
        self.ready.send_replace(true);
    }

    /// Loads every shard and the configuration from the store, finishes or
    /// rolls back what a crash cut short, expires holds whose TTL passed while
    /// the node was down, makes that durable, and starts serving.
    pub async fn recover(&self) -> Result<RecoveryStats, NodeError> {
        let Some(store) = self.store.clone() else { return Ok(RecoveryStats::default()) };
        let started = Instant::now();
        let storage = |error: StoreError| NodeError::StorageFailed(error.to_string());
        let catalog = match store.load_catalog().map_err(storage)? {
            Some(bytes) => postcard::from_bytes::<Catalog>(&bytes)
                .map_err(|error| NodeError::StorageFailed(format!("catalog: {error}")))?,
            None => Catalog::default(),
        };
        *self.shared.catalog.write().expect("catalog lock is never poisoned") =
            Arc::new(catalog.clone());
        let settings = self.config.shard.clone();
        let loaded = {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || store.load_all())
                .await
                .map_err(|error| NodeError::StorageFailed(error.to_string()))?
                .map_err(storage)?
        };
        // Decoding is the bulk of the work: two blocking decoders in parallel.
        let (even, odd): (Vec<_>, Vec<_>) =
            loaded.into_iter().partition(|loaded| loaded.shard % 2 == 0);
        let decoders = [even, odd].map(|part| {
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || {
                part.into_iter()
                    .map(|loaded| {
                        let epoch = loaded.epoch.max(SINGLE_NODE_EPOCH);
                        ShardState::restore(loaded.shard, epoch, settings.clone(), loaded.records)
                            .map_err(|error| NodeError::StorageFailed(error.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        });
        let mut states = BTreeMap::new();
        for decoded in join_all(decoders).await {
            let decoded =
                decoded.map_err(|error| NodeError::StorageFailed(error.to_string()))??;
            states.extend(decoded.into_iter().map(|state| (state.shard(), state)));
        }
        let load = started.elapsed();
        let report = recover(&mut states, &catalog, self.shared.clock.now_ms());
        let batches: Vec<ShardBatch> = states
            .values_mut()
            .map(|state| {
                let changes = state.drain_changes();
                ShardBatch {
                    shard: state.shard(),
                    epoch: state.epoch(),
                    records: changes.records,
                    ledger: changes.ledger,
                }
            })
            .filter(|batch| !batch.is_empty())
            .collect();
        if !batches.is_empty() {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || store.commit(&batches))
                .await
                .map_err(|error| NodeError::StorageFailed(error.to_string()))?
                .map_err(storage)?;
        }
        let mut stats = RecoveryStats { report, load, ..RecoveryStats::default() };
        for state in states.values() {
            let shard_stats = state.stats();
            stats.positions += shard_stats.position_count;
            stats.open_holds += shard_stats.open_holds;
            stats.reservations += shard_stats.reservation_count;
            for sku in state.skus() {
                self.shared.view.insert(sku.clone(), Arc::new(state.positions_of(sku)));
            }
        }
        self.spawn_actors(states.into_values().collect());
        self.spawn_ledger_sweeper(store);
        stats.elapsed = started.elapsed();
        Ok(stats)
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
            .filter(|entry| query.cause.as_ref().is_none_or(|cause| &entry.cause == cause))
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

    fn check_ready(&self) -> Result<(), NodeError> {
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

    /// The node's clock reading (ms since the epoch).
    pub fn now_ms(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    /// Stops every shard actor; later calls answer `ShuttingDown`.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    fn shard(&self, shard: u32) -> &ShardHandle {
        &self.shared.shards[shard as usize]
    }

    /// Holds every line or none. Runs to completion even if the caller goes away.
    pub async fn reserve(&self, request: ReserveRequest) -> Result<ReservationView, NodeError> {
        self.check_ready()?;
        request.check(&self.shared.catalog())?;
        let shared = Arc::clone(&self.shared);
        spawn_to_completion(async move { reserve(&shared, request).await }).await
    }

    /// Commits a HELD reservation (lines not named commit all they hold).
    pub async fn commit(
        &self,
        id: ReservationId,
        lines: Vec<CommitLine>,
    ) -> Result<ReservationView, NodeError> {
        self.check_ready()?;
        let home = shard_of(id.as_str());
        self.home_then_lines(home, move |state, _, now| state.commit(&id, &lines, now)).await
    }

    /// Releases a HELD reservation.
    pub async fn release(&self, id: ReservationId) -> Result<ReservationView, NodeError> {
        self.check_ready()?;
        let home = shard_of(id.as_str());
        self.home_then_lines(home, move |state, _, now| state.release(&id, now)).await
    }

    /// Cancels a COMMITTED reservation's unshipped units.
    pub async fn cancel(&self, id: ReservationId) -> Result<ReservationView, NodeError> {
        self.check_ready()?;
        let home = shard_of(id.as_str());
        self.home_then_lines(home, move |state, _, now| state.cancel(&id, now)).await
    }

    /// Moves a HELD reservation's expiry to now + `ttl_ms`.
    pub async fn extend(
        &self,
        id: ReservationId,
        ttl_ms: i64,
    ) -> Result<ReservationView, NodeError> {
        self.check_ready()?;
        let home = shard_of(id.as_str());
        self.home_then_lines(home, move |state, _, now| state.extend(&id, ttl_ms, now)).await
    }

    /// The reservation as its home shard knows it.
    pub async fn get_reservation(&self, id: ReservationId) -> Result<ReservationView, NodeError> {
        self.check_ready()?;
        let home = shard_of(id.as_str());
        Ok(self.shard(home).try_call(move |state, _, _| state.get(&id)).await??)
    }

    /// Runs a home-shard operation, then applies the line ops it produced
    /// before answering, so the caller's next read sees them.
    async fn home_then_lines<F>(&self, home: u32, work: F) -> Result<ReservationView, NodeError>
    where
        F: FnOnce(
                &mut ShardState,
                &Catalog,
                i64,
            ) -> Result<(ReservationView, Vec<(u32, LineOp)>), CoreError>
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
        let empty = BTreeMap::new();
        Ok(skus
            .iter()
            .map(|sku| {
                let positions = self.shared.view.get(sku).map(|entry| Arc::clone(entry.value()));
                let positions = positions.as_deref().unwrap_or(&empty);
                let shard = shard_of(sku.as_str());
                sku_availability(
                    sku,
                    shard,
                    SINGLE_NODE_EPOCH,
                    positions,
                    &catalog,
                    locations,
                    channels,
                )
            })
            .collect())
    }

    /// Applies stock events: one result per event, in the order given. Events
    /// naming an unknown location refuse the whole call (nothing applied).
    pub async fn apply_events(
        &self,
        events: Vec<StockEvent>,
    ) -> Result<Vec<Result<EventApplied, NodeError>>, NodeError> {
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
        let shared = Arc::clone(&self.shared);
        spawn_to_completion(async move { Ok(apply_events(&shared, events).await) }).await
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
    pub fn upsert_location(&self, location: Location) -> Result<bool, NodeError> {
        self.update_catalog(|catalog| catalog.upsert_location(location))
    }

    /// Inserts or replaces a channel; returns whether it changed.
    pub fn upsert_channel(&self, channel: Channel) -> Result<bool, NodeError> {
        self.update_catalog(|catalog| catalog.upsert_channel(channel))
    }

    fn update_catalog(
        &self,
        change: impl FnOnce(&mut Catalog) -> Result<bool, CoreError>,
    ) -> Result<bool, NodeError> {
        self.check_ready()?;
        let mut current = self.shared.catalog.write().expect("catalog lock is never poisoned");
        let mut next = Catalog::clone(&current);
        let changed = change(&mut next)?;
        if changed {
            // Durable before it is visible or acknowledged.
            if let Some(store) = &self.store {
                let bytes = postcard::to_stdvec(&next).expect("a catalog always encodes");
                // A rare, small write: done in place (blocking this worker
                // for one fsync) so the change is durable before it is seen.
                store
                    .save_catalog(&bytes)
                    .map_err(|error| NodeError::StorageFailed(error.to_string()))?;
            }
            *current = Arc::new(next);
        }
        Ok(changed)
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
            epoch: SINGLE_NODE_EPOCH,
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

/// Runs `work` on its own task so that it finishes even if the caller's future
/// is dropped (a client disconnecting mid-Reserve must not strand holds).
async fn spawn_to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, NodeError>> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::spawn(work).await.map_err(|_| NodeError::ShuttingDown)?
}

async fn reserve(shared: &Shared, request: ReserveRequest) -> Result<ReservationView, NodeError> {
    let home = &shared.shards[shard_of(request.id.as_str()) as usize];
    let begin = {
        let request = request.clone();
        home.try_call(move |state, _, now| state.begin_reserve(&request, now)).await??
    };
    let groups = match begin {
        Begin::Replay(view) => return Ok(view),
        Begin::Started { holds } => holds,
    };
    let holds = join_all(groups.iter().map(|(shard, op)| {
        let op = op.clone();
        shared.shards[*shard as usize]
            .try_call(move |state, catalog, now| state.apply_line_op(&op, catalog, now))
    }))
    .await;
    let mut failure = None;
    let mut rollback = Vec::new();
    for ((shard, _), outcome) in groups.iter().zip(holds) {
        match outcome {
            Ok(Ok(())) => rollback.push((
                *shard,
                LineOp::Release { id: request.id.clone(), kind: LedgerKind::Abort },
            )),
            Ok(Err(error)) => failure = failure.or(Some(NodeError::Core(error))),
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    let held = failure.is_none();
    if !held {
        actor::deliver(shared, rollback).await?;
    }
    let id = request.id.clone();
    let answer = home.call(move |state, _, now| state.finish_reserve(&id, held, now)).await?;
    match (failure, answer) {
        (Some(error), _) => Err(error),
        (None, Some(view)) => Ok(view),
        (None, None) => Err(NodeError::ShuttingDown),
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
        let home = &shared.shards[shard_of(notice.reservation.as_str()) as usize];
        if let Err(error) = home.call(move |state, _, now| state.note_shipped(&notice, now)).await {
            tracing::warn!(%error, "could not tell a reservation's home about a shipment");
        }
    }
    results.into_iter().map(|r| r.expect("every event has a result")).collect()
}

//! WatchAvailability (issue 13): a channel's figures as a stream.
//!
//! Two parts. A **local source** streams what this node serves: it
//! subscribes to the node's change feed first, then scans the read view
//! (the snapshot, or on a resume every SKU whose version is past the
//! caller's mark for its shard), then follows the feed, reading each
//! changed SKU's figures from the read view when the receiver can take
//! them (so a burst of changes to one SKU is one update). A **merger**
//! serves the caller: it runs the local source and, in cluster mode, one
//! source per other member (the same RPC, marked forwarded, which serves
//! only that node's shards), keeps per SKU the latest update not yet sent
//! and per shard the latest mark, and drops what an older epoch of a shard
//! sends once a newer one was seen. A receiver that stops reading is
//! coalesced harder (its pending updates are per SKU) until more than the
//! configured number of SKUs wait: then its sources stop, and when it reads
//! again it is told RESYNC and given a new snapshot. Nothing of this ever
//! waits on a shard (the feed is a bounded broadcast; a source that falls
//! behind it catches up from its marks).
//!
//! The whole design, with the version rules, is in docs/ARCHITECTURE.md,
//! "WatchAvailability".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use atp_core::CoreError;
use atp_core::availability::Watched;
use atp_core::error::FieldViolation;
use atp_core::hash::{SHARD_COUNT, shard_of};
use atp_core::ids::{ChannelId, LocationId, Sku};
use atp_core::kits::Kit;
use atp_core::shard::{SkuView, Version};
use atp_proto::v1;
use atp_proto::v1::availability_service_client::AvailabilityServiceClient;
use atp_shard::Node;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::fence::Fence;
use crate::forward::{FORWARDED_HEADER, Forwarder, WIRE_HEADER, WIRE_VERSION};

/// Most SKUs one stream may name.
pub const MAX_WATCHED_SKUS: usize = 10_000;
/// Most updates in one message.
pub const MAX_UPDATES_PER_MESSAGE: usize = 1_000;
/// Streams (callers' and other nodes') one node serves at once.
pub const MAX_WATCH_STREAMS: usize = 4_096;
/// Messages queued for a receiver before its updates wait (coalesced).
const OUT_BUFFER: usize = 8;
/// Pause before a merger reopens a cut stream to another node (doubling).
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// How long a live receiver with the pending bound reached may take
/// nothing before it is told RESYNC (until then its sources wait).
const STALL: Duration = Duration::from_secs(1);

/// The stream a caller receives.
pub type WatchStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<v1::WatchAvailabilityResponse, Status>> + Send>,
>;

/// How watch streams behave (atpd config `[watch]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchSettings {
    /// A resume whose `resume_at_ms` is older than this (by the serving
    /// node's clock) is answered RESYNC and a snapshot.
    pub resume_window_ms: i64,
    /// SKUs a receiver may have waiting (changed, not yet sent) before it
    /// is told RESYNC.
    pub max_pending_skus: usize,
    /// How long a node's source gathers changes after the first one before
    /// it sends them (more per message, fewer messages; 0: at once).
    pub flush_interval_ms: u64,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self { resume_window_ms: 10 * 60 * 1000, max_pending_skus: 100_000, flush_interval_ms: 0 }
    }
}

/// A parsed request.
#[derive(Clone, Debug)]
pub struct WatchQuery {
    watched: Watched,
    skus: Option<Arc<HashSet<Sku>>>,
    resume: Option<(HashMap<u32, Version>, i64)>,
}

impl WatchQuery {
    /// The marks a resume continues from (None: a snapshot).
    pub(crate) fn resume_marks(&self) -> Option<HashMap<u32, Version>> {
        self.resume.as_ref().map(|(marks, _)| marks.clone())
    }

    fn wants(&self, sku: &Sku) -> bool {
        self.skus.as_ref().is_none_or(|skus| skus.contains(sku))
    }
}

/// Parses and checks a request against the node's configuration.
pub fn parse_watch(
    message: &v1::WatchAvailabilityRequest,
    catalog: &atp_core::catalog::Catalog,
    forwarded: bool,
) -> Result<WatchQuery, CoreError> {
    // A merger adds the components of the kits asked for (at most a
    // kit's components each, so at most this many more).
    let most_skus = if forwarded { MAX_WATCHED_SKUS * 4 } else { MAX_WATCHED_SKUS };
    let mut violations = Vec::new();
    let watched = match (message.channel_id.is_empty(), message.location_ids.is_empty()) {
        (false, true) => match ChannelId::parse("channel_id", &message.channel_id) {
            Ok(id) if catalog.channels.contains_key(&id) => Some(Watched::Channel(id)),
            Ok(id) => {
                violations.push(FieldViolation::new("channel_id", format!("unknown channel {id}")));
                None
            }
            Err(violation) => {
                violations.push(violation);
                None
            }
        },
        (true, false) => {
            let mut locations = Vec::new();
            if message.location_ids.len() > atp_core::catalog::MAX_LOCATIONS {
                violations.push(FieldViolation::new(
                    "location_ids",
                    format!(
                        "has {}; the limit is {}",
                        message.location_ids.len(),
                        atp_core::catalog::MAX_LOCATIONS
                    ),
                ));
            } else {
                for (index, value) in message.location_ids.iter().enumerate() {
                    let field = format!("location_ids[{index}]");
                    match LocationId::parse(&field, value) {
                        Ok(id) if catalog.locations.contains_key(&id) => locations.push(id),
                        Ok(id) => violations
                            .push(FieldViolation::new(field, format!("unknown location {id}"))),
                        Err(violation) => violations.push(violation),
                    }
                }
            }
            Some(Watched::Locations(locations))
        }
        (false, false) => {
            violations.push(FieldViolation::new(
                "location_ids",
                "give either channel_id or location_ids, not both",
            ));
            None
        }
        (true, true) => {
            violations.push(FieldViolation::new(
                "channel_id",
                "name the channel to watch (or give location_ids)",
            ));
            None
        }
    };
    let mut skus = None;
    if message.skus.len() > most_skus {
        violations.push(FieldViolation::new(
            "skus",
            format!("has {}; the limit is {most_skus}", message.skus.len()),
        ));
    } else if !message.skus.is_empty() {
        let mut set = HashSet::with_capacity(message.skus.len());
        for (index, value) in message.skus.iter().enumerate() {
            match Sku::parse(&format!("skus[{index}]"), value) {
                Ok(sku) => {
                    set.insert(sku);
                }
                Err(violation) => violations.push(violation),
            }
        }
        skus = Some(Arc::new(set));
    }
    let mut resume = None;
    if message.resume {
        if message.resume_marks.len() > SHARD_COUNT as usize {
            violations.push(FieldViolation::new(
                "resume_marks",
                format!("has {}; the limit is {SHARD_COUNT}", message.resume_marks.len()),
            ));
        }
        let mut marks = HashMap::new();
        for (index, mark) in message.resume_marks.iter().enumerate() {
            if mark.shard >= SHARD_COUNT {
                violations.push(FieldViolation::new(
                    format!("resume_marks[{index}].shard"),
                    format!("{} is not a shard (0..{SHARD_COUNT})", mark.shard),
                ));
                continue;
            }
            let version = version_of(mark.version.as_ref());
            let entry = marks.entry(mark.shard).or_insert(version);
            *entry = (*entry).max(version);
        }
        if message.resume_at_ms <= 0 {
            violations.push(FieldViolation::new(
                "resume_at_ms",
                "give the sent_at_ms of the last message received",
            ));
        }
        resume = Some((marks, message.resume_at_ms));
    } else if !message.resume_marks.is_empty() {
        violations.push(FieldViolation::new("resume", "resume_marks are given: set resume"));
    }
    if !violations.is_empty() {
        return Err(CoreError::InvalidArgument(violations));
    }
    let watched = watched.expect("no violation means a target");
    Ok(WatchQuery { watched, skus, resume })
}

fn version_of(version: Option<&v1::Version>) -> Version {
    version.map_or_else(Version::default, |version| Version {
        epoch: version.epoch,
        sequence: version.sequence,
    })
}

fn wire_version(version: Version) -> v1::Version {
    v1::Version { epoch: version.epoch, sequence: version.sequence }
}

fn marks_message(marks: &BTreeMap<u32, Version>) -> Vec<v1::ShardMark> {
    marks
        .iter()
        .map(|(shard, version)| v1::ShardMark {
            shard: *shard,
            version: Some(wire_version(*version)),
        })
        .collect()
}

fn message(
    event: v1::WatchEvent,
    updates: Vec<v1::AvailabilityUpdate>,
    marks: &BTreeMap<u32, Version>,
    now_ms: i64,
) -> v1::WatchAvailabilityResponse {
    v1::WatchAvailabilityResponse {
        event: event as i32,
        updates,
        marks: marks_message(marks),
        sent_at_ms: now_ms,
    }
}

// ---------------------------------------------------------------- local

type Out = mpsc::Sender<Result<v1::WatchAvailabilityResponse, Status>>;

/// Streams the shards this node serves into `out` until the receiver goes
/// or `stopping` turns true. `resume`: the marks to continue from (None: a
/// snapshot first).
pub(crate) async fn local_source(
    node: Node,
    query: Arc<WatchQuery>,
    resume: Option<HashMap<u32, Version>>,
    out: Out,
    flush_interval: Duration,
) {
    let mut feed = node.subscribe_changes();
    let mut sent: Vec<Version> = vec![Version::default(); SHARD_COUNT as usize];
    let first = match &resume {
        Some(marks) => {
            for (shard, version) in marks {
                sent[*shard as usize] = *version;
            }
            v1::WatchEvent::Update
        }
        None => v1::WatchEvent::Snapshot,
    };
    let (skus, marks) = scan(&node, &query, resume.as_ref().map(|_| sent.as_slice()));
    if send_all(&node, &query, skus, marks, first, &out, &mut sent).await.is_err() {
        return;
    }
    let synced = message(v1::WatchEvent::Synced, Vec::new(), &BTreeMap::new(), node.now_ms());
    if out.send(Ok(synced)).await.is_err() {
        return;
    }
    let mut pending: HashSet<Sku> = HashSet::new();
    let mut pending_marks: BTreeMap<u32, Version> = BTreeMap::new();
    // When the oldest change not sent arrived.
    let mut gathering_since: Option<tokio::time::Instant> = None;
    loop {
        let waiting = !pending.is_empty() || !pending_marks.is_empty();
        if !waiting {
            gathering_since = None;
        } else if gathering_since.is_none() {
            gathering_since = Some(tokio::time::Instant::now());
        }
        let due = gathering_since.map(|since| since + flush_interval);
        let flush = waiting && due.is_none_or(|due| due <= tokio::time::Instant::now());
        tokio::select! {
            () = async {
                match due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            }, if waiting && !flush => {}
            received = feed.recv() => match received {
                Ok(changed) => {
                    if !node.serves(changed.shard) {
                        continue;
                    }
                    pending.extend(changed.skus.iter().filter(|sku| query.wants(sku)).cloned());
                    let mark = pending_marks.entry(changed.shard).or_default();
                    *mark = (*mark).max(changed.version);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Events were missed: what changed since the marks sent.
                    let (skus, marks) = scan(&node, &query, Some(&sent));
                    pending.extend(skus);
                    for (shard, version) in marks {
                        let mark = pending_marks.entry(shard).or_default();
                        *mark = (*mark).max(version);
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            permit = out.reserve(), if flush => {
                let Ok(permit) = permit else { return };
                let take = pending.len().min(MAX_UPDATES_PER_MESSAGE);
                let batch: Vec<Sku> = if take == pending.len() {
                    pending.drain().collect()
                } else {
                    let batch: Vec<Sku> = pending.iter().take(take).cloned().collect();
                    for sku in &batch {
                        pending.remove(sku);
                    }
                    batch
                };
                let updates = updates_of(&node, &query, batch);
                let marks = if pending.is_empty() {
                    let marks = std::mem::take(&mut pending_marks);
                    for (shard, version) in &marks {
                        sent[*shard as usize] = sent[*shard as usize].max(*version);
                    }
                    marks
                } else {
                    BTreeMap::new()
                };
                permit.send(Ok(message(v1::WatchEvent::Update, updates, &marks, node.now_ms())));
            }
            () = out.closed() => return,
        }
    }
}

/// The SKUs of shards served here that the query wants, and each served
/// shard's published version read before the scan (every change up to it
/// is in the figures read now). `since`: only SKUs past their shard's mark.
fn scan(
    node: &Node,
    query: &WatchQuery,
    since: Option<&[Version]>,
) -> (Vec<Sku>, BTreeMap<u32, Version>) {
    let mut marks = BTreeMap::new();
    let mut served = vec![false; SHARD_COUNT as usize];
    for shard in 0..SHARD_COUNT {
        if node.serves(shard) {
            served[shard as usize] = true;
            let version = node.published_version(shard);
            if version > Version::default() {
                marks.insert(shard, version);
            }
        }
    }
    let mut skus = Vec::new();
    let mut consider = |sku: &Sku, view: &SkuView| {
        let shard = shard_of(sku.as_str()) as usize;
        if !served[shard] {
            return;
        }
        if let Some(since) = since
            && view.version <= since[shard]
        {
            return;
        }
        skus.push(sku.clone());
    };
    match &query.skus {
        Some(wanted) => {
            for sku in wanted.iter() {
                if let Some(view) = node.sku_view(sku) {
                    consider(sku, &view);
                }
            }
        }
        None => node.for_each_view(|sku, view| consider(sku, view)),
    }
    (skus, marks)
}

/// Sends `skus` in messages of `event`, the marks with the last one.
async fn send_all(
    node: &Node,
    query: &WatchQuery,
    skus: Vec<Sku>,
    marks: BTreeMap<u32, Version>,
    event: v1::WatchEvent,
    out: &Out,
    sent: &mut [Version],
) -> Result<(), ()> {
    let mut chunks: Vec<Vec<Sku>> =
        skus.chunks(MAX_UPDATES_PER_MESSAGE).map(<[Sku]>::to_vec).collect();
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let last = chunks.len() - 1;
    for (index, chunk) in chunks.into_iter().enumerate() {
        let updates = updates_of(node, query, chunk);
        let marks = if index == last { marks.clone() } else { BTreeMap::new() };
        out.send(Ok(message(event, updates, &marks, node.now_ms()))).await.map_err(|_| ())?;
    }
    for (shard, version) in marks {
        sent[shard as usize] = sent[shard as usize].max(version);
    }
    Ok(())
}

/// The figures of `skus` now, from the read view.
fn updates_of(node: &Node, query: &WatchQuery, skus: Vec<Sku>) -> Vec<v1::AvailabilityUpdate> {
    let catalog = node.catalog();
    let now = node.now_ms();
    skus.into_iter()
        .map(|sku| {
            let shard = shard_of(sku.as_str());
            let (atp, published, version, changed_at_ms) = match node.sku_view(&sku) {
                Some(view) => {
                    let (atp, published) =
                        query.watched.figures(&catalog, &view.positions, &view.demand, now);
                    (atp, published, view.version, view.changed_at_ms)
                }
                None => (0, 0, Version::default(), 0),
            };
            v1::AvailabilityUpdate {
                sku: sku.as_str().to_owned(),
                atp,
                published,
                version: Some(wire_version(version)),
                shard,
                changed_at_ms,
            }
        })
        .collect()
}

// --------------------------------------------------------------- merger

/// Where a merger's sources write: (source id, message or end).
type SourceMessage = (u64, Option<Result<v1::WatchAvailabilityResponse, Status>>);

/// Serves one caller: the local source and one source per other member,
/// merged. Ends when the receiver goes or `stopping` turns true.
pub(crate) async fn merge(
    node: Node,
    fence: Fence,
    forwarder: Forwarder,
    settings: WatchSettings,
    request: v1::WatchAvailabilityRequest,
    query: Arc<WatchQuery>,
    out: Out,
) {
    // Kits asked for: their figures are made here from their components',
    // which the sources are asked for too (and not passed on unless asked).
    let catalog = node.catalog();
    let kits: Vec<Kit> =
        catalog.kits.values().filter(|kit| query.wants(&kit.sku)).cloned().collect();
    let asked = query.skus.clone();
    let (request, query) = widened(request, query, &kits);
    let mut merger = Merger::new(node, fence, forwarder, request, Arc::clone(&query), settings);
    merger.with_kits(kits, asked);
    let mut resume = merger.query.resume.clone();
    let expired = resume
        .as_ref()
        .is_some_and(|(_, at_ms)| merger.node.now_ms() - at_ms > settings.resume_window_ms);
    // A resume sends only what changed; a kit needs all its components'
    // figures, so a stream with kits starts over (said RESYNC) instead.
    if resume.is_some() && (expired || !merger.kits.is_empty()) {
        resume = None;
        let resync =
            message(v1::WatchEvent::Resync, Vec::new(), &BTreeMap::new(), merger.node.now_ms());
        if out.send(Ok(resync)).await.is_err() {
            return;
        }
    }
    merger.start(resume.map(|(marks, _)| marks));
    let mut members = merger.fence.map_changes().map(|(_, members)| members);
    loop {
        let waiting = merger.has_output();
        let members_changed = async {
            match &mut members {
                Some(members) => members.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((source, received)) = merger.inbox.recv(), if merger.accepts() => {
                merger.receive(source, received);
            }
            permit = out.reserve(), if waiting => {
                let Ok(permit) = permit else { break };
                permit.send(Ok(merger.next_message()));
                merger.last_taken = tokio::time::Instant::now();
            }
            () = tokio::time::sleep_until(merger.last_taken + STALL), if !merger.accepts() => {}
            alive = members_changed => {
                if alive {
                    merger.follow_members();
                } else {
                    members = None;
                }
            }
            () = out.closed() => break,
        }
        if merger.overflowing() {
            // A receiver this far behind: stop, say RESYNC when it reads
            // again, and start over with a snapshot.
            tracing::info!(
                pending = merger.pending.len(),
                "a watch receiver stopped reading with the pending bound reached: RESYNC"
            );
            merger.stop_sources();
            let Ok(permit) = out.reserve().await else { break };
            let now = merger.node.now_ms();
            permit.send(Ok(message(v1::WatchEvent::Resync, Vec::new(), &BTreeMap::new(), now)));
            merger.start(None);
        }
    }
    merger.stop_sources();
}

struct Merger {
    node: Node,
    fence: Fence,
    forwarder: Forwarder,
    settings: WatchSettings,
    request: v1::WatchAvailabilityRequest,
    query: Arc<WatchQuery>,
    inbox: mpsc::Receiver<SourceMessage>,
    inbox_sender: mpsc::Sender<SourceMessage>,
    /// Running sources: id → (node id or "" for the local one, its address, task).
    sources: HashMap<u64, (String, String, JoinHandle<()>)>,
    next_source: u64,
    /// Sources that have not said SYNCED yet (the caller's snapshot or
    /// catch-up is complete once none is left).
    unsynced: HashSet<u64>,
    /// Whether SYNCED is still owed to the caller.
    synced_owed: bool,
    /// A source asked for a resync.
    force_resync: bool,
    /// When the caller last took a message.
    last_taken: tokio::time::Instant,
    snapshot: bool,
    pending: HashMap<Sku, v1::AvailabilityUpdate>,
    pending_marks: BTreeMap<u32, Version>,
    /// Per shard: the latest mark received (what a reopened source resumes
    /// from; its epoch is the newest seen, and older epochs are dropped).
    marks: Arc<std::sync::Mutex<Vec<Version>>>,
    /// Kits asked for, the SKUs the caller asked for (None: all), each
    /// kit component's latest update, and which kits each component is in.
    kits: Vec<Kit>,
    asked: Option<Arc<HashSet<Sku>>>,
    components: HashMap<Sku, v1::AvailabilityUpdate>,
    kits_of: HashMap<Sku, Vec<usize>>,
    /// Every source synced once: a kit with a component never seen is
    /// sent with that component at 0.
    kits_complete: bool,
}

impl Merger {
    fn new(
        node: Node,
        fence: Fence,
        forwarder: Forwarder,
        request: v1::WatchAvailabilityRequest,
        query: Arc<WatchQuery>,
        settings: WatchSettings,
    ) -> Self {
        let (inbox_sender, inbox) = mpsc::channel(64);
        Self {
            node,
            fence,
            forwarder,
            settings,
            request,
            query,
            inbox,
            inbox_sender,
            sources: HashMap::new(),
            next_source: 0,
            unsynced: HashSet::new(),
            synced_owed: false,
            force_resync: false,
            last_taken: tokio::time::Instant::now(),
            snapshot: false,
            pending: HashMap::new(),
            pending_marks: BTreeMap::new(),
            marks: Arc::new(std::sync::Mutex::new(vec![Version::default(); SHARD_COUNT as usize])),
            kits: Vec::new(),
            asked: None,
            components: HashMap::new(),
            kits_of: HashMap::new(),
            kits_complete: false,
        }
    }

    fn with_kits(&mut self, kits: Vec<Kit>, asked: Option<Arc<HashSet<Sku>>>) {
        for (index, kit) in kits.iter().enumerate() {
            for (component, _) in &kit.components {
                self.kits_of.entry(component.clone()).or_default().push(index);
            }
        }
        self.kits = kits;
        self.asked = asked;
    }

    /// A kit's update from its components' latest: atp and published are
    /// the min over components of ⌊figure / units per kit⌋; the version is
    /// (the newest epoch, the sum of sequences), which grows with any
    /// component's change or move. None while a component was never seen,
    /// until every source synced (then it counts as 0).
    fn kit_update(&self, index: usize) -> Option<v1::AvailabilityUpdate> {
        let kit = &self.kits[index];
        let (mut atp, mut published) = (i64::MAX, i64::MAX);
        let (mut epoch, mut sequence, mut changed_at_ms) = (0, 0_u64, 0);
        for (component, units) in &kit.components {
            let units = (*units).max(1);
            match self.components.get(component) {
                Some(update) => {
                    atp = atp.min(update.atp.max(0) / units);
                    published = published.min(update.published.max(0) / units);
                    let version = version_of(update.version.as_ref());
                    epoch = epoch.max(version.epoch);
                    sequence = sequence.saturating_add(version.sequence);
                    changed_at_ms = changed_at_ms.max(update.changed_at_ms);
                }
                None if self.kits_complete => (atp, published) = (0, 0),
                None => return None,
            }
        }
        if kit.components.is_empty() {
            (atp, published) = (0, 0);
        }
        Some(v1::AvailabilityUpdate {
            sku: kit.sku.to_string(),
            atp,
            published,
            version: Some(wire_version(Version { epoch, sequence })),
            shard: shard_of(kit.sku.as_str()),
            changed_at_ms,
        })
    }

    /// Puts the updates of kits `indexes` into the pending ones.
    fn pend_kits(&mut self, indexes: impl IntoIterator<Item = usize>) {
        for index in indexes {
            if let Some(update) = self.kit_update(index) {
                self.pending.insert(self.kits[index].sku.clone(), update);
            }
        }
    }

    /// Once every source synced: every kit goes out (a component never
    /// seen counts as 0), before the caller's SYNCED.
    fn complete_kits(&mut self) {
        if !self.kits_complete && self.synced_owed && self.unsynced.is_empty() {
            self.kits_complete = true;
            self.pend_kits(0..self.kits.len());
        }
    }

    /// Starts every source: from `resume`'s marks, or with a snapshot.
    fn start(&mut self, resume: Option<HashMap<u32, Version>>) {
        self.pending.clear();
        self.pending_marks.clear();
        {
            let mut marks = self.marks.lock().expect("never poisoned");
            marks.iter_mut().for_each(|mark| *mark = Version::default());
            for (shard, version) in resume.iter().flatten() {
                marks[*shard as usize] = *version;
            }
        }
        self.snapshot = resume.is_none();
        self.synced_owed = true;
        self.force_resync = false;
        self.components.clear();
        self.kits_complete = false;
        self.unsynced.clear();
        self.spawn_local(resume.clone());
        for (id, address) in self.other_members() {
            self.spawn_remote(id, address, resume.is_some());
        }
    }

    fn other_members(&self) -> Vec<(String, String)> {
        let Fence::Cluster(cluster) = &self.fence else { return Vec::new() };
        let members = cluster.members.borrow();
        members
            .nodes
            .iter()
            .filter(|(id, _)| **id != cluster.node_id)
            .map(|(id, address)| (id.clone(), address.clone()))
            .collect()
    }

    /// Opens sources to members that joined, stops those of members gone.
    fn follow_members(&mut self) {
        let members = self.other_members();
        let gone: Vec<u64> = self
            .sources
            .iter()
            .filter(|(_, (node, address, _))| {
                !node.is_empty() && !members.iter().any(|(id, at)| id == node && at == address)
            })
            .map(|(source, _)| *source)
            .collect();
        for source in gone {
            if let Some((_, _, task)) = self.sources.remove(&source) {
                task.abort();
            }
            self.unsynced.remove(&source);
        }
        for (id, address) in members {
            let known = self.sources.values().any(|(node, at, _)| *node == id && *at == address);
            if !known {
                // A node that joined: what it serves now, from the marks held.
                self.spawn_remote(id, address, true);
            }
        }
    }

    fn spawn_local(&mut self, resume: Option<HashMap<u32, Version>>) {
        let source = self.next_id();
        let (sender, mut receiver) = mpsc::channel(OUT_BUFFER);
        let inbox = self.inbox_sender.clone();
        let (node, query) = (self.node.clone(), Arc::clone(&self.query));
        let flush_interval = Duration::from_millis(self.settings.flush_interval_ms);
        let task = tokio::spawn(async move {
            let produce = local_source(node, query, resume, sender, flush_interval);
            let forward = async {
                while let Some(message) = receiver.recv().await {
                    if inbox.send((source, Some(message))).await.is_err() {
                        return;
                    }
                }
            };
            tokio::join!(produce, forward);
            let _ = inbox.send((source, None)).await;
        });
        self.sources.insert(source, (String::new(), String::new(), task));
        self.unsynced.insert(source);
    }

    /// A source reading `node`'s own shards through its WatchAvailability,
    /// reopened (from the marks held) while it is a member.
    fn spawn_remote(&mut self, node_id: String, address: String, resume: bool) {
        let source = self.next_id();
        let inbox = self.inbox_sender.clone();
        let forwarder = self.forwarder.clone();
        let request = self.request.clone();
        let marks = Arc::clone(&self.marks);
        let clock = self.node.clone();
        let peer = address.clone();
        let task = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let mut resume = resume;
            let mut pause = RECONNECT_MIN;
            loop {
                let mut message = request.clone();
                message.resume = resume;
                message.resume_marks.clear();
                message.resume_at_ms = 0;
                if resume {
                    let marks = marks.lock().expect("never poisoned");
                    message.resume_marks = marks
                        .iter()
                        .enumerate()
                        .filter(|(_, version)| **version > Version::default())
                        .map(|(shard, version)| v1::ShardMark {
                            shard: u32::try_from(shard).unwrap_or(0),
                            version: Some(wire_version(*version)),
                        })
                        .collect();
                    message.resume_at_ms = clock.now_ms();
                }
                match open_remote(&forwarder, &peer, message).await {
                    Ok(mut stream) => loop {
                        match stream.message().await {
                            Ok(Some(received)) => {
                                pause = RECONNECT_MIN;
                                // From here on a reopened stream resumes.
                                resume = true;
                                if inbox.send((source, Some(Ok(received)))).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(peer = %peer, error = %status.message(), "a watch source stream broke; reopening");
                                break;
                            }
                        }
                    },
                    Err(error) => {
                        tracing::debug!(peer = %peer, %error, "could not open a watch source stream");
                    }
                }
                // Not synced from this source: do not hold the caller's
                // SYNCED for it (its shards come back with new epochs).
                if inbox.send((source, None)).await.is_err() {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RECONNECT_MAX);
            }
        }));
        self.sources.insert(source, (node_id, address, task));
        self.unsynced.insert(source);
    }

    fn next_id(&mut self) -> u64 {
        self.next_source += 1;
        self.next_source
    }

    fn stop_sources(&mut self) {
        for (_, (_, _, task)) in self.sources.drain() {
            task.abort();
        }
        // Messages already queued from them are dropped with the inbox.
        let (inbox_sender, inbox) = mpsc::channel(64);
        self.inbox = inbox;
        self.inbox_sender = inbox_sender;
        self.unsynced.clear();
        self.pending.clear();
        self.pending_marks.clear();
    }

    /// Takes one source message in.
    fn receive(
        &mut self,
        source: u64,
        received: Option<Result<v1::WatchAvailabilityResponse, Status>>,
    ) {
        let Some(Ok(message)) = received else {
            // A source ended or broke: it owes the caller no SYNCED.
            self.unsynced.remove(&source);
            self.complete_kits();
            return;
        };
        let event = v1::WatchEvent::try_from(message.event).unwrap_or(v1::WatchEvent::Unspecified);
        if event == v1::WatchEvent::Resync {
            // A source could not resume: the caller starts over.
            self.pending.clear();
            self.pending_marks.clear();
            self.force_resync = true;
            return;
        }
        let marks = Arc::clone(&self.marks);
        let marks = marks.lock().expect("never poisoned");
        let mut kits_changed: Vec<usize> = Vec::new();
        for update in message.updates {
            let shard = update.shard.min(SHARD_COUNT - 1) as usize;
            let version = version_of(update.version.as_ref());
            if version.epoch < marks[shard].epoch {
                // An older owner's figure, after a newer owner's.
                continue;
            }
            let Ok(sku) = Sku::parse("sku", &update.sku) else { continue };
            if let Some(indexes) = self.kits_of.get(&sku) {
                let newer = self
                    .components
                    .get(&sku)
                    .is_none_or(|held| version_of(held.version.as_ref()) <= version);
                if newer {
                    kits_changed.extend(indexes.iter().copied());
                    self.components.insert(sku.clone(), update.clone());
                }
            }
            if self.asked.as_ref().is_some_and(|asked| !asked.contains(&sku)) {
                // A kit's component the caller did not ask for.
                continue;
            }
            match self.pending.get(&sku) {
                Some(held) if version_of(held.version.as_ref()) > version => {}
                _ => {
                    self.pending.insert(sku, update);
                }
            }
        }
        drop(marks);
        kits_changed.sort_unstable();
        kits_changed.dedup();
        self.pend_kits(kits_changed);
        let mut marks = self.marks.lock().expect("never poisoned");
        for mark in message.marks {
            if mark.shard >= SHARD_COUNT {
                continue;
            }
            let version = version_of(mark.version.as_ref());
            let held = &mut marks[mark.shard as usize];
            if version > *held {
                *held = version;
                let pending = self.pending_marks.entry(mark.shard).or_default();
                *pending = (*pending).max(version);
            }
        }
        drop(marks);
        if event == v1::WatchEvent::Synced {
            self.unsynced.remove(&source);
            self.complete_kits();
        }
    }

    fn has_output(&self) -> bool {
        !self.pending.is_empty()
            || !self.pending_marks.is_empty()
            || (self.synced_owed && self.unsynced.is_empty())
            || self.force_resync
    }

    /// Whether to take more from the sources. While the caller's snapshot
    /// (or a resume's catch-up) is being sent, the sources wait instead of
    /// the pending updates growing past the bound (they are sent at the
    /// pace the caller reads); once live, a caller that falls behind by
    /// more than the bound is told RESYNC ([`Self::overflowing`]).
    fn accepts(&self) -> bool {
        self.pending.len() < self.settings.max_pending_skus
    }

    /// Whether the caller is told RESYNC: live, the bound reached, and
    /// nothing taken by the caller for [`STALL`].
    fn overflowing(&self) -> bool {
        let stalled = !self.synced_owed && !self.accepts() && self.last_taken.elapsed() >= STALL;
        stalled || self.force_resync
    }

    /// The next message for the caller (`has_output` is true).
    fn next_message(&mut self) -> v1::WatchAvailabilityResponse {
        let now = self.node.now_ms();
        if self.pending.is_empty() && self.pending_marks.is_empty() {
            self.synced_owed = false;
            self.snapshot = false;
            return message(v1::WatchEvent::Synced, Vec::new(), &BTreeMap::new(), now);
        }
        let take = self.pending.len().min(MAX_UPDATES_PER_MESSAGE);
        let skus: Vec<Sku> = self.pending.keys().take(take).cloned().collect();
        let updates: Vec<v1::AvailabilityUpdate> =
            skus.iter().filter_map(|sku| self.pending.remove(sku)).collect();
        let marks = if self.pending.is_empty() {
            std::mem::take(&mut self.pending_marks)
        } else {
            BTreeMap::new()
        };
        let event = if self.snapshot { v1::WatchEvent::Snapshot } else { v1::WatchEvent::Update };
        message(event, updates, &marks, now)
    }
}

/// `request` and `query` also asking for the components of `kits` when
/// they name SKUs (every SKU is asked for already when they name none).
fn widened(
    mut request: v1::WatchAvailabilityRequest,
    query: Arc<WatchQuery>,
    kits: &[Kit],
) -> (v1::WatchAvailabilityRequest, Arc<WatchQuery>) {
    let Some(asked) = &query.skus else { return (request, query) };
    if kits.is_empty() {
        return (request, query);
    }
    let mut skus: HashSet<Sku> = asked.as_ref().clone();
    for kit in kits {
        for (component, _) in &kit.components {
            if skus.insert(component.clone()) {
                request.skus.push(component.to_string());
            }
        }
    }
    let query = WatchQuery { skus: Some(Arc::new(skus)), ..query.as_ref().clone() };
    (request, Arc::new(query))
}

/// Opens `address`'s own-shards stream.
async fn open_remote(
    forwarder: &Forwarder,
    address: &str,
    message: v1::WatchAvailabilityRequest,
) -> Result<tonic::Streaming<v1::WatchAvailabilityResponse>, String> {
    let Some(channel) = forwarder.channel(address) else {
        return Err(format!("{address} is not an address"));
    };
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(FORWARDED_HEADER, "1".parse().expect("ascii"));
    request.metadata_mut().insert(WIRE_HEADER, WIRE_VERSION.parse().expect("ascii"));
    crate::telemetry::inject(request.metadata_mut());
    let mut client = AvailabilityServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let stream =
        client.watch_availability(request).await.map_err(|status| status.message().to_owned())?;
    Ok(stream.into_inner())
}

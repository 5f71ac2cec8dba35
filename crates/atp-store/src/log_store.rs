//! The node's store: the log is the store.
//!
//! ```text
//! data_dir/FORMAT                  "atp-data-format 2"
//! data_dir/log/NNNN….log           segments of shard-batch records (`log`)
//! data_dir/checkpoints/SSSS.ckpt   one checkpoint per shard (`checkpoint`)
//! data_dir/catalog                 locations and channels
//! data_dir/ledger-index/           the ledger and its indexes (fjall), built by the indexer
//! ```
//!
//! A commit appends one record per shard batch to the current segment with
//! one write and one fdatasync. Recovery = each shard's checkpoint + the
//! records after it. A segment is deleted once every shard that wrote into
//! it has a checkpoint covering its records there and the ledger indexer has
//! read past it (and the index is synced); a shard with nothing in a segment
//! never pins it. Only checkpoints whose checksum this process verified
//! (written by it, or decoded by `load_all`) count as covering.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use atp_core::hash::SHARD_COUNT;

use crate::backend::Backend;
use crate::checkpoint::{self, Checkpoint, checkpoint_name, checkpoint_shard};
use crate::codec::checksum;
use crate::disk::{Disk, RealDisk, SimDisk};
use crate::fjall_store::FjallIndex;
use crate::indexer::{self, Progress};
use crate::log::{
    Ending, HEADER_BYTES, LogPosition, encode_record, header, scan_segment, segment_id,
    segment_name, split_body,
};
use crate::memory::{LedgerIndex, MemoryIndex};
use crate::{LedgerPage, LedgerQuery, LoadedShard, LogStats, ShardBatch, Store, StoreError};

/// Version of the data directory as a whole (`FORMAT`). Version 1 was the
/// fjall store of shard-state records (no `FORMAT` file).
pub const DATA_FORMAT_VERSION: u32 = 2;
const FORMAT_FILE: &str = "FORMAT";
const CATALOG_FILE: &str = "catalog";
const CATALOG_MAGIC: &[u8; 8] = b"ATPCAT01";
const LOG_DIR: &str = "log";
const CHECKPOINT_DIR: &str = "checkpoints";

/// Tuning of a [`LogStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// A segment is closed (and a new one started) once it holds this many bytes.
    pub segment_bytes: u64,
    /// How long new ledger entries may wait to be indexed when no query asks.
    pub index_interval_ms: u64,
    /// How long a ledger query waits for the indexer to catch up.
    pub index_wait_ms: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self { segment_bytes: 64 << 20, index_interval_ms: 200, index_wait_ms: 30_000 }
    }
}

struct Writer {
    segment: u64,
    /// Bytes in the segment file (0: not created yet).
    offset: u64,
    /// Set by a failed write: nothing more is written.
    failed: Option<StoreError>,
    buffer: Vec<u8>,
}

#[derive(Default)]
struct SegmentInfo {
    bytes: u64,
    /// The highest batch sequence of each shard with a record in the segment.
    sequences: BTreeMap<u32, u64>,
}

#[derive(Default)]
struct Layout {
    segments: BTreeMap<u64, SegmentInfo>,
    /// Per shard: (sequence covered, file bytes).
    checkpoints: BTreeMap<u32, (u64, u64)>,
    /// Shards whose checkpoint was checksum-verified (written by this
    /// process or decoded by `load_all`). Opening reads only each file's
    /// header; compaction trusts only these, so bit rot in a header never
    /// deletes log segments that the checkpoint does not really cover.
    verified: BTreeSet<u32>,
}

/// Opens the ledger index (on the indexer thread).
type OpenIndex = Box<dyn FnOnce() -> Result<LedgerIndex, StoreError> + Send>;

struct Inner<D: Disk> {
    disk: D,
    /// Set by the indexer thread once open.
    index: OnceLock<LedgerIndex>,
    progress: Arc<Progress>,
    writer: Mutex<Writer>,
    layout: Mutex<Layout>,
    options: LogOptions,
}

/// The node's durable store: a log of shard batches, per-shard checkpoints,
/// the catalog, and the ledger index (see the module docs).
pub struct LogStore<D: Disk> {
    inner: Arc<Inner<D>>,
    indexer: Option<JoinHandle<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder leaves the data consistent before it could panic.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn io(doing: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |error| StoreError::Io(format!("{doing}: {error}"))
}

impl LogStore<RealDisk> {
    /// Opens (or creates) the store in `dir`. Refuses a directory of another
    /// data format, a damaged log or checkpoint, naming the file and offset;
    /// truncates a torn tail of the last segment.
    pub fn open(dir: &Path, options: LogOptions) -> Result<Self, StoreError> {
        let disk = RealDisk::new(dir).map_err(io(format!("creating {}", dir.display())))?;
        check_format(&disk, dir)?;
        // Opened by the indexer thread: replaying fjall's journal takes a
        // second or more and recovery of the shards does not need it.
        let index_dir = dir.join("ledger-index");
        let open_index = Box::new(move || FjallIndex::open(&index_dir).map(LedgerIndex::Fjall));
        Self::with_parts(disk, open_index, options)
    }
}

impl LogStore<Arc<SimDisk>> {
    /// A store on a simulated disk with the ledger index in memory, for tests
    /// and simulation. Opening another on the same disk recovers from it as a
    /// restart would (its index rebuilt from the log that is left).
    pub fn simulated(disk: Arc<SimDisk>, options: LogOptions) -> Result<Self, StoreError> {
        if disk.read(FORMAT_FILE).is_err() {
            disk.replace(FORMAT_FILE, format_line().as_bytes())
                .map_err(io("writing FORMAT".to_owned()))?;
        }
        let open_index = Box::new(|| Ok(LedgerIndex::Memory(MemoryIndex::default())));
        Self::with_parts(disk, open_index, options)
    }

    /// A fresh simulated store (see [`LogStore::simulated`]).
    pub fn new() -> Self {
        Self::simulated(Arc::new(SimDisk::new()), LogOptions::default())
            .expect("an empty simulated disk opens")
    }
}

impl Default for LogStore<Arc<SimDisk>> {
    fn default() -> Self {
        Self::new()
    }
}

fn format_line() -> String {
    format!("atp-data-format {DATA_FORMAT_VERSION}\n")
}

fn check_format(disk: &RealDisk, dir: &Path) -> Result<(), StoreError> {
    match disk.read(FORMAT_FILE) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let version = text.trim().strip_prefix("atp-data-format ").and_then(|v| v.parse().ok());
            match version {
                Some(DATA_FORMAT_VERSION) => Ok(()),
                Some(version) => Err(StoreError::Format(format!(
                    "data directory {} is in data format {version}; this atpd reads data format \
                     {DATA_FORMAT_VERSION} only",
                    dir.display()
                ))),
                None => Err(StoreError::Format(format!(
                    "{}: unreadable FORMAT file {text:?}",
                    dir.join(FORMAT_FILE).display()
                ))),
            }
        }
        Err(_) => {
            let entries = std::fs::read_dir(dir)
                .map_err(io(format!("reading {}", dir.display())))?
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>();
            if !entries.is_empty() {
                return Err(StoreError::Format(format!(
                    "data directory {} is not empty but has no FORMAT file ({}): it holds data \
                     format 1 (the fjall store of shard-state records written by earlier atpd \
                     versions) or is not an atp data directory; this atpd reads data format \
                     {DATA_FORMAT_VERSION} only. Start with an empty data_dir, or run the atpd \
                     that wrote it",
                    dir.display(),
                    entries.join(", ")
                )));
            }
            disk.replace(FORMAT_FILE, format_line().as_bytes())
                .map_err(io("writing FORMAT".to_owned()))
        }
    }
}

impl<D: Disk> LogStore<D> {
    fn with_parts(disk: D, open_index: OpenIndex, options: LogOptions) -> Result<Self, StoreError> {
        let mut layout = Layout::default();
        let (segment, offset) = open_log(&disk, &mut layout)?;
        for name in disk.list(CHECKPOINT_DIR).map_err(io("listing checkpoints".to_owned()))? {
            let Some(shard) = checkpoint_shard(&name) else { continue };
            let path = format!("{CHECKPOINT_DIR}/{name}");
            let head = disk
                .read_at(&path, 0, checkpoint::HEADER_BYTES)
                .map_err(io(format!("reading {path}")))?;
            let bytes = disk.len(&path).map_err(io(format!("reading {path}")))?;
            let sequence = checkpoint::header_sequence(&head)
                .ok_or_else(|| StoreError::Corrupt(format!("{path}: truncated header")))?;
            layout.checkpoints.insert(shard, (sequence, bytes));
        }
        let durable = LogPosition { segment, offset };
        let first = layout.segments.keys().next().copied().unwrap_or(segment);
        let start = LogPosition { segment: first, offset: 0 };
        let progress = Arc::new(Progress::default());
        // Until the index is open, nothing counts as indexed: queries wait,
        // and no segment may be deleted.
        progress.lock().durable = durable;
        let inner = Arc::new(Inner {
            disk,
            index: OnceLock::new(),
            progress,
            writer: Mutex::new(Writer { segment, offset, failed: None, buffer: Vec::new() }),
            layout: Mutex::new(layout),
            options,
        });
        let thread_inner = Arc::clone(&inner);
        let interval = Duration::from_millis(inner.options.index_interval_ms);
        let indexer = std::thread::Builder::new()
            .name("atp-indexer".to_owned())
            .spawn(move || {
                let inner = &*thread_inner;
                if !inner.progress.wait_until_open_allowed() {
                    return;
                }
                match open_ledger_index(open_index, start, durable) {
                    Ok((index, indexed)) => {
                        let index = inner.index.get_or_init(|| index);
                        inner.progress.lock().indexed = indexed;
                        inner.progress.to_queries.notify_all();
                        indexer::run(&inner.disk, index, &inner.progress, interval);
                    }
                    Err(error) => {
                        tracing::error!(%error, "could not open the ledger index");
                        inner.progress.lock().failed = Some(error.to_string());
                        inner.progress.to_queries.notify_all();
                    }
                }
            })
            .map_err(io("starting the ledger indexer".to_owned()))?;
        Ok(Self { inner, indexer: Some(indexer) })
    }

    fn ledger_index(&self) -> Result<&LedgerIndex, StoreError> {
        self.inner
            .index
            .get()
            .ok_or_else(|| StoreError::Io("the ledger index is not open yet; retry".to_owned()))
    }

    /// The disk under the store.
    pub fn disk(&self) -> &D {
        &self.inner.disk
    }

    /// The ledger index once everything durable is in it.
    #[cfg(test)]
    pub(crate) fn indexed_for_tests(&self) -> &LedgerIndex {
        self.inner.progress.wait_indexed(Duration::from_secs(30)).expect("the indexer catches up");
        self.inner.index.get().expect("indexed, so open")
    }
}

/// Scans every segment: refuses corruption, truncates a torn tail of the last
/// segment, fills `layout`; returns where the next write goes.
fn open_log<D: Disk>(disk: &D, layout: &mut Layout) -> Result<(u64, u64), StoreError> {
    let mut ids: Vec<u64> = disk
        .list(LOG_DIR)
        .map_err(io("listing the log".to_owned()))?
        .iter()
        .filter_map(|name| segment_id(name))
        .collect();
    ids.sort_unstable();
    for pair in ids.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(StoreError::Corrupt(format!(
                "log segments {} and {} are not consecutive: a segment is missing",
                segment_name(pair[0]),
                segment_name(pair[1])
            )));
        }
    }
    let mut next = (1, 0);
    for (index, &id) in ids.iter().enumerate() {
        let path = format!("{LOG_DIR}/{}", segment_name(id));
        let bytes = disk.read(&path).map_err(io(format!("reading {path}")))?;
        let (found, ending) = scan_segment(&bytes, id)
            .map_err(|message| StoreError::Corrupt(format!("{path}: {message}")))?;
        let last = index + 1 == ids.len();
        let end = match ending {
            Ending::Clean => bytes.len(),
            Ending::Torn { offset } if last && (offset as u64) < HEADER_BYTES => {
                // Not even the header made it: drop the file, so that no
                // headerless segment is left for `load_all` to refuse; the
                // next commit starts the segment again.
                tracing::warn!(file = %path, "removing a log segment whose header a crash cut");
                disk.remove(&path).map_err(io(format!("removing {path}")))?;
                next = (id, 0);
                continue;
            }
            Ending::Torn { offset } if last => {
                tracing::warn!(file = %path, offset, dropped = bytes.len() - offset, "truncating a torn log tail (an unacknowledged write cut by a crash)");
                disk.truncate(&path, offset as u64).map_err(io(format!("truncating {path}")))?;
                offset
            }
            Ending::Torn { offset } | Ending::Corrupt { offset } => {
                return Err(StoreError::Corrupt(format!(
                    "{path}: damaged record at offset {offset} with valid data after it; \
                     refusing to start (this is not a torn write: restore the data directory)"
                )));
            }
        };
        let mut info = SegmentInfo { bytes: end as u64, sequences: BTreeMap::new() };
        for record in found {
            let body = split_body(record.body(&bytes)).map_err(StoreError::Corrupt)?;
            let sequence = info.sequences.entry(body.head.shard).or_default();
            *sequence = (*sequence).max(body.head.sequence);
        }
        layout.segments.insert(id, info);
        next = (id, end as u64);
    }
    Ok(next)
}

/// Opens the ledger index and finds where its indexer resumes in the log
/// (`start`: the oldest segment; `durable`: the log's end).
fn open_ledger_index(
    open_index: OpenIndex,
    start: LogPosition,
    durable: LogPosition,
) -> Result<(LedgerIndex, LogPosition), StoreError> {
    let index = open_index()?;
    let indexed = match indexer::stored_cursor(&index)? {
        Some(cursor) if cursor < start => {
            tracing::warn!(
                ?cursor,
                ?start,
                "ledger index is behind the oldest log segment; entries in between are missing from it"
            );
            start
        }
        Some(cursor) if cursor > durable => {
            tracing::warn!(
                ?cursor,
                ?durable,
                "ledger index is ahead of the log; re-indexing from the log's end"
            );
            durable
        }
        Some(cursor) => cursor,
        None => start,
    };
    Ok((index, indexed))
}

impl<D: Disk> Drop for LogStore<D> {
    fn drop(&mut self) {
        self.inner.progress.lock().stop = true;
        self.inner.progress.to_indexer.notify_all();
        if let Some(indexer) = self.indexer.take() {
            let _ = indexer.join();
        }
    }
}

impl<D: Disk> Store for LogStore<D> {
    fn commit(&self, batches: &[ShardBatch]) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut writer = lock(&inner.writer);
        if let Some(error) = &writer.failed {
            return Err(StoreError::Io(format!(
                "an earlier write failed ({error}); restart the node"
            )));
        }
        if writer.offset >= inner.options.segment_bytes {
            writer.segment += 1;
            writer.offset = 0;
        }
        let writer = &mut *writer;
        writer.buffer.clear();
        if writer.offset == 0 {
            writer.buffer.extend_from_slice(&header(writer.segment));
        }
        for batch in batches {
            encode_record(batch, &mut writer.buffer);
        }
        let path = format!("{LOG_DIR}/{}", segment_name(writer.segment));
        let written =
            inner.disk.append(&path, &writer.buffer).and_then(|()| inner.disk.sync(&path));
        if let Err(error) = written {
            let error = if error.kind() == std::io::ErrorKind::StorageFull {
                // Put the log back as it was, so nothing half-written stays.
                let _ = inner.disk.truncate(&path, writer.offset);
                StoreError::DiskFull(format!("appending to {path}: {error}"))
            } else {
                StoreError::Io(format!("appending to {path}: {error}"))
            };
            writer.failed = Some(error.clone());
            return Err(error);
        }
        writer.offset += writer.buffer.len() as u64;
        {
            let mut layout = lock(&inner.layout);
            let info = layout.segments.entry(writer.segment).or_default();
            info.bytes = writer.offset;
            for batch in batches {
                let sequence = info.sequences.entry(batch.shard).or_default();
                *sequence = (*sequence).max(batch.sequence);
            }
        }
        inner.progress.set_durable(LogPosition { segment: writer.segment, offset: writer.offset });
        Ok(())
    }

    fn load_all(&self) -> Result<Vec<LoadedShard>, StoreError> {
        let inner = &*self.inner;
        let mut shards = load_checkpoints(&inner.disk)?;
        {
            let mut layout = lock(&inner.layout);
            let Layout { checkpoints, verified, .. } = &mut *layout;
            for shard in &shards {
                // A checkpoint written since was verified already (and is newer).
                if let Some((sequence, _)) = checkpoints.get_mut(&shard.shard)
                    && verified.insert(shard.shard)
                {
                    *sequence = shard.checkpoint_sequence;
                }
            }
        }
        replay_log(inner, &mut shards)?;
        Ok(shards.into_iter().map(Replayed::finish).collect())
    }

    fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        // A checkpoint taken before a handoff installed a newer copy of the
        // shard (a higher sequence) must not replace it.
        // (Only a verified one: a damaged header may claim any sequence.)
        let newer = {
            let layout = lock(&self.inner.layout);
            layout.verified.contains(&checkpoint.shard)
                && layout
                    .checkpoints
                    .get(&checkpoint.shard)
                    .is_some_and(|(sequence, _)| *sequence > checkpoint.sequence)
        };
        if newer {
            return Ok(());
        }
        let path = format!("{CHECKPOINT_DIR}/{}", checkpoint_name(checkpoint.shard));
        let bytes = checkpoint::encode(checkpoint);
        self.inner.disk.replace(&path, &bytes).map_err(io(format!("writing {path}")))?;
        let mut layout = lock(&self.inner.layout);
        layout.checkpoints.insert(checkpoint.shard, (checkpoint.sequence, bytes.len() as u64));
        layout.verified.insert(checkpoint.shard);
        Ok(())
    }

    fn rotate_log(&self) {
        let mut writer = lock(&self.inner.writer);
        if writer.offset > HEADER_BYTES {
            writer.segment += 1;
            writer.offset = 0;
        }
    }

    fn compact_log(&self) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        let current = lock(&inner.writer).segment;
        let indexed = inner.progress.lock().indexed;
        let deletable: Vec<u64> = {
            let layout = lock(&inner.layout);
            layout
                .segments
                .iter()
                .take_while(|(id, info)| {
                    **id < current
                        && **id < indexed.segment
                        && info.sequences.iter().all(|(shard, sequence)| {
                            layout.verified.contains(shard)
                                && layout
                                    .checkpoints
                                    .get(shard)
                                    .is_some_and(|(covered, _)| covered >= sequence)
                        })
                })
                .map(|(id, _)| *id)
                .collect()
        };
        if deletable.is_empty() {
            return Ok(0);
        }
        // The ledger read from these segments must outlive them.
        let Some(index) = inner.index.get() else { return Ok(0) };
        index.persist()?;
        for id in &deletable {
            let path = format!("{LOG_DIR}/{}", segment_name(*id));
            inner.disk.remove(&path).map_err(io(format!("removing {path}")))?;
            lock(&inner.layout).segments.remove(id);
        }
        Ok(deletable.len() as u64)
    }

    fn log_stats(&self) -> LogStats {
        let layout = lock(&self.inner.layout);
        let progress = self.inner.progress.lock();
        LogStats {
            segments: layout.segments.len() as u64,
            log_bytes: layout.segments.values().map(|info| info.bytes).sum(),
            checkpoints: layout.checkpoints.len() as u64,
            checkpoint_bytes: layout.checkpoints.values().map(|(_, bytes)| bytes).sum(),
            durable: progress.durable,
            indexed: progress.indexed,
        }
    }

    fn save_catalog(&self, catalog: &[u8]) -> Result<(), StoreError> {
        let mut bytes = CATALOG_MAGIC.to_vec();
        bytes.extend_from_slice(catalog);
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum.to_le_bytes());
        self.inner.disk.replace(CATALOG_FILE, &bytes).map_err(io("writing the catalog".to_owned()))
    }

    fn load_catalog(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let Ok(bytes) = self.inner.disk.read(CATALOG_FILE) else { return Ok(None) };
        let corrupt = |what: &str| StoreError::Corrupt(format!("{CATALOG_FILE}: {what}"));
        let Some(body_len) = bytes.len().checked_sub(8) else { return Err(corrupt("too short")) };
        let (body, sum) = bytes.split_at(body_len);
        if !body.starts_with(CATALOG_MAGIC) {
            return Err(corrupt("bad magic or format version (offset 0)"));
        }
        if checksum(body) != u64::from_le_bytes(sum.try_into().expect("eight bytes")) {
            return Err(corrupt(&format!("checksum mismatch (offset {body_len})")));
        }
        Ok(Some(body[CATALOG_MAGIC.len()..].to_vec()))
    }

    fn query_ledger(&self, query: &LedgerQuery) -> Result<LedgerPage, StoreError> {
        let wait = Duration::from_millis(self.inner.options.index_wait_ms);
        self.inner.progress.wait_indexed(wait)?;
        crate::ledger::query(self.ledger_index()?, query)
    }

    fn sweep_ledger(&self, before_ms: i64) -> Result<u64, StoreError> {
        // Like a query, a sweep covers every entry durable before it began:
        // one still waiting for the indexer would otherwise outlive it.
        let wait = Duration::from_millis(self.inner.options.index_wait_ms);
        self.inner.progress.wait_indexed(wait)?;
        crate::ledger::sweep(self.ledger_index()?, before_ms)
    }
}

/// A shard being rebuilt: its checkpoint, then the log's writes over it.
#[derive(Default)]
struct Replayed {
    shard: u32,
    epoch: u64,
    checkpoint_sequence: u64,
    sequence: u64,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    /// Writes from the log after the checkpoint (the last one of a key wins).
    overrides: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Replayed {
    fn finish(self) -> LoadedShard {
        let records = if self.overrides.is_empty() {
            self.records
        } else {
            let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = self.records.into_iter().collect();
            for (key, value) in self.overrides {
                match value {
                    Some(value) => merged.insert(key, value),
                    None => merged.remove(&key),
                };
            }
            merged.into_iter().collect()
        };
        LoadedShard { shard: self.shard, epoch: self.epoch, sequence: self.sequence, records }
    }
}

/// Every shard's checkpoint, decoded on up to two threads.
fn load_checkpoints<D: Disk>(disk: &D) -> Result<Vec<Replayed>, StoreError> {
    let names = disk.list(CHECKPOINT_DIR).map_err(io("listing checkpoints".to_owned()))?;
    let mut by_shard: Vec<Option<String>> = vec![None; SHARD_COUNT as usize];
    for name in names {
        if let Some(shard) = checkpoint_shard(&name).filter(|shard| *shard < SHARD_COUNT) {
            by_shard[shard as usize] = Some(name);
        }
    }
    let load = |shard: u32, name: &Option<String>| -> Result<Replayed, StoreError> {
        let mut replayed = Replayed { shard, ..Replayed::default() };
        let Some(name) = name else { return Ok(replayed) };
        let path = format!("{CHECKPOINT_DIR}/{name}");
        let bytes = disk.read(&path).map_err(io(format!("reading {path}")))?;
        let checkpoint = checkpoint::decode(&bytes)
            .map_err(|message| StoreError::Corrupt(format!("{path}: {message}")))?;
        if checkpoint.shard != shard {
            return Err(StoreError::Corrupt(format!("{path}: holds shard {}", checkpoint.shard)));
        }
        replayed.epoch = checkpoint.epoch;
        replayed.checkpoint_sequence = checkpoint.sequence;
        replayed.sequence = checkpoint.sequence;
        replayed.records = checkpoint.records;
        Ok(replayed)
    };
    let half = by_shard.len() / 2;
    let (first, second) = by_shard.split_at(half);
    let (left, right) = std::thread::scope(|scope| {
        let right = scope.spawn(|| {
            (half..).zip(second).map(|(shard, name)| load(shard as u32, name)).collect::<Vec<_>>()
        });
        let left: Vec<_> = (0..).zip(first).map(|(shard, name)| load(shard as u32, name)).collect();
        (left, right.join().expect("a checkpoint loader panicked"))
    });
    left.into_iter().chain(right).collect()
}

/// Applies every log record after each shard's checkpoint, in log order.
fn replay_log<D: Disk>(inner: &Inner<D>, shards: &mut [Replayed]) -> Result<(), StoreError> {
    let ids: Vec<u64> = lock(&inner.layout).segments.keys().copied().collect();
    for id in ids {
        let path = format!("{LOG_DIR}/{}", segment_name(id));
        let bytes = inner.disk.read(&path).map_err(io(format!("reading {path}")))?;
        let (found, ending) = scan_segment(&bytes, id)
            .map_err(|message| StoreError::Corrupt(format!("{path}: {message}")))?;
        if ending != Ending::Clean {
            return Err(StoreError::Corrupt(format!("{path}: {ending:?} after it was opened")));
        }
        for record in found {
            let body = split_body(record.body(&bytes)).map_err(StoreError::Corrupt)?;
            let head = body.head;
            let Some(shard) = shards.get_mut(head.shard as usize) else {
                return Err(StoreError::Corrupt(format!(
                    "{path}: record of shard {} at offset {}",
                    head.shard, record.offset
                )));
            };
            if head.sequence <= shard.checkpoint_sequence {
                continue;
            }
            if head.sequence != shard.sequence + 1 {
                return Err(StoreError::Corrupt(format!(
                    "{path}: shard {} jumps from batch {} to {} at offset {}: batches are missing",
                    head.shard, shard.sequence, head.sequence, record.offset
                )));
            }
            shard.sequence = head.sequence;
            shard.epoch = shard.epoch.max(head.epoch);
            for (key, value) in body.records().map_err(StoreError::Corrupt)? {
                shard.overrides.insert(key, value);
            }
        }
    }
    Ok(())
}

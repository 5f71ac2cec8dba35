//! The ledger indexer: a background thread that reads the log behind the
//! committer and writes its ledger entries, with their sku/location/cause
//! indexes, into the index store in large unsynced batches.
//!
//! Its cursor (the log position it has indexed up to) is written in the same
//! batch as the entries, so after a crash it resumes from wherever the index
//! store's own journal got to and indexes the rest again (idempotent: the same
//! keys). The index store is synced before log segments are deleted, so the
//! ledger outlives the log. A query first waits until the indexer has passed
//! the log's durable end as of the query's start: it sees every entry
//! acknowledged before it began.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::StoreError;
use crate::backend::{Backend, Space, Write};
use crate::disk::Disk;
use crate::keys::{encode, index_entries, ledger_key, shard_prefix};
use crate::log::{HEADER_BYTES, LogPosition, record_at, segment_name, split_body};

/// The ledger index opens at the latest this long after the store did.
pub(crate) const OPEN_INDEX_AFTER: Duration = Duration::from_secs(10);

/// Key of the indexer's cursor in the meta keyspace.
const CURSOR_KEY: &[u8] = b"indexed";

/// Progress shared by the committer, the indexer and queries.
#[derive(Default)]
pub(crate) struct Progress {
    state: Mutex<ProgressState>,
    /// Signalled when the durable end moves, a query waits, or on stop.
    pub(crate) to_indexer: Condvar,
    /// Signalled when the indexer moves its cursor or fails.
    pub(crate) to_queries: Condvar,
}

#[derive(Default)]
pub(crate) struct ProgressState {
    /// End of the durable log.
    pub(crate) durable: LogPosition,
    /// Where the indexer got to.
    pub(crate) indexed: LogPosition,
    /// Queries waiting for the indexer.
    pub(crate) waiting: usize,
    /// Set when the store closes.
    pub(crate) stop: bool,
    /// Why the indexer stopped, if it failed.
    pub(crate) failed: Option<String>,
    /// Set once the ledger index may be opened (see [`Progress::wait_until_open_allowed`]).
    pub(crate) may_open: bool,
}

impl Progress {
    pub(crate) fn lock(&self) -> MutexGuard<'_, ProgressState> {
        // Plain counters and positions, consistent at every unlock.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `position` durable and wakes the indexer. The first commit
    /// also lets the index open (see [`Progress::wait_until_open_allowed`]).
    pub(crate) fn set_durable(&self, position: LogPosition) {
        let mut state = self.lock();
        state.durable = position;
        state.may_open = true;
        drop(state);
        self.to_indexer.notify_one();
    }

    /// Waits on `signal` until `done` holds or `deadline` (if any) passes.
    fn wait_until<'a>(
        &self,
        signal: &Condvar,
        mut state: MutexGuard<'a, ProgressState>,
        deadline: Option<Instant>,
        done: impl Fn(&ProgressState) -> bool,
    ) -> MutexGuard<'a, ProgressState> {
        while !done(&state) {
            state = match deadline {
                None => signal.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    signal
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
        }
        state
    }

    /// Blocks the indexer thread until it may open the ledger index; false
    /// on stop. Opening replays the index store's journal (a second or more
    /// on a 2-core machine), which would compete with recovery's decoding for
    /// the cores; so it waits for the first commit (recovery's own write, or
    /// the first request's) or query, or [`OPEN_INDEX_AFTER`].
    pub(crate) fn wait_until_open_allowed(&self) -> bool {
        let deadline = Instant::now() + OPEN_INDEX_AFTER;
        let state = self
            .wait_until(&self.to_indexer, self.lock(), Some(deadline), |s| s.may_open || s.stop);
        !state.stop
    }

    /// Waits until everything durable now is indexed (at most `timeout`).
    pub(crate) fn wait_indexed(&self, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        let target = state.durable;
        state.waiting += 1;
        state.may_open = true;
        self.to_indexer.notify_all();
        let mut state = self.wait_until(&self.to_queries, state, Some(deadline), |s| {
            s.failed.is_some() || s.indexed >= target
        });
        state.waiting -= 1;
        if let Some(reason) = &state.failed {
            return Err(StoreError::Io(format!("the ledger indexer failed: {reason}")));
        }
        if state.indexed < target {
            return Err(StoreError::Io(format!(
                "the ledger index is behind the log (indexed {:?}, wanted {target:?}); retry",
                state.indexed
            )));
        }
        Ok(())
    }
}

/// The cursor stored in the index, if any.
pub(crate) fn stored_cursor<B: Backend>(backend: &B) -> Result<Option<LogPosition>, StoreError> {
    let Some(value) = backend.get(Space::Meta, CURSOR_KEY)? else { return Ok(None) };
    if value.len() != 16 {
        return Err(StoreError::Corrupt(format!("indexer cursor of {} bytes", value.len())));
    }
    let segment = u64::from_be_bytes(value[..8].try_into().expect("eight bytes"));
    let offset = u64::from_be_bytes(value[8..].try_into().expect("eight bytes"));
    Ok(Some(LogPosition { segment, offset }))
}

fn cursor_write(position: LogPosition) -> Write {
    let mut value = position.segment.to_be_bytes().to_vec();
    value.extend_from_slice(&position.offset.to_be_bytes());
    Write::put(Space::Meta, CURSOR_KEY.to_vec(), value)
}

/// Runs the indexer until the store stops. `interval` bounds how long new
/// entries wait when no query asks for them.
pub(crate) fn run<D: Disk, B: Backend>(
    disk: &D,
    backend: &B,
    progress: &Arc<Progress>,
    interval: Duration,
) {
    loop {
        let (from, to) = {
            let state = progress.lock();
            let state = progress
                .wait_until(&progress.to_indexer, state, None, |s| s.stop || s.durable > s.indexed);
            // New entries wait up to `interval` to be indexed in one larger
            // batch, unless a query wants them now.
            let deadline = Instant::now() + interval;
            let state = progress.wait_until(&progress.to_indexer, state, Some(deadline), |s| {
                s.stop || s.waiting > 0
            });
            if state.stop {
                return;
            }
            (state.indexed, state.durable)
        };
        match index_range(disk, backend, from, to) {
            Ok(reached) => {
                progress.lock().indexed = reached;
                progress.to_queries.notify_all();
            }
            Err(error) => {
                tracing::error!(%error, "the ledger indexer stopped");
                progress.lock().failed = Some(error.to_string());
                progress.to_queries.notify_all();
                return;
            }
        }
    }
}

/// Indexes the log from `from` up to `to`, one index write per segment;
/// returns where it got to.
fn index_range<D: Disk, B: Backend>(
    disk: &D,
    backend: &B,
    mut from: LogPosition,
    to: LogPosition,
) -> Result<LogPosition, StoreError> {
    while from < to {
        let path = format!("log/{}", segment_name(from.segment));
        let start = from.offset.max(HEADER_BYTES);
        let last = from.segment == to.segment;
        let want = if last {
            usize::try_from(to.offset - start).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        let bytes = disk
            .read_at(&path, start, want)
            .map_err(|error| StoreError::Io(format!("reading {path}: {error}")))?;
        let mut writes = Vec::new();
        let mut offset = 0;
        while let Some(found) = record_at(&bytes, offset) {
            let body = split_body(found.body(&bytes)).map_err(StoreError::Corrupt)?;
            let shard = shard_prefix(body.head.shard);
            for entry in body.ledger().map_err(StoreError::Corrupt)? {
                writes.push(Write::put(
                    Space::Ledger,
                    ledger_key(shard, entry.sequence).to_vec(),
                    encode(&entry),
                ));
                for (key, value) in index_entries(shard, &entry) {
                    writes.push(Write::put(Space::Index, key, value));
                }
            }
            offset = found.end;
        }
        let reached = start + offset as u64;
        if offset < bytes.len() {
            // Durable bytes that are not a record: the log is damaged.
            return Err(StoreError::Corrupt(format!(
                "{path}: no valid record at offset {reached}"
            )));
        }
        from = if last {
            LogPosition { segment: from.segment, offset: reached }
        } else {
            LogPosition { segment: from.segment + 1, offset: HEADER_BYTES }
        };
        writes.push(cursor_write(from));
        backend.write(writes, false)?;
    }
    Ok(from)
}

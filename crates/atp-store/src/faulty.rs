//! A store wrapper that holds back or fails commits, for tests that prove
//! nothing is acknowledged before (or without) its durable write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{
    Checkpoint, LedgerPage, LedgerQuery, LoadedShard, LogStats, ShardBatch, Store, StoreError,
};

/// Wraps a [`Store`] and lets a test delay or fail its commits.
///
/// A commit goes through these steps, in order:
/// 1. it is counted ([`FaultyStore::commit_count`]);
/// 2. it sleeps the fixed delay, if one is set ([`FaultyStore::set_commit_delay`]);
/// 3. while any [`CommitHold`] is alive, it waits — as if its fsync were in
///    flight ([`FaultyStore::hold_commits`]); nothing of it is written yet;
/// 4. if failures are pending ([`FaultyStore::fail_next_commits`]), it
///    returns [`StoreError::Io`] without writing anything;
/// 5. otherwise it commits to the wrapped store.
///
/// Every other operation goes straight to the wrapped store.
pub struct FaultyStore<S: Store> {
    inner: S,
    gate: Arc<Gate>,
    delay: Mutex<Duration>,
    failures_pending: AtomicU64,
    commits: AtomicU64,
    failed_commits: AtomicU64,
}

#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Live [`CommitHold`]s.
    holds: usize,
    /// Commits waiting for the holds to go.
    waiting: usize,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state is two counters, consistent at every unlock.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// While alive, commits of the [`FaultyStore`] that made it wait before
/// writing. Dropping it (or [`CommitHold::release`]) lets them go on.
#[must_use = "commits are held only while the hold is alive"]
pub struct CommitHold {
    gate: Arc<Gate>,
}

impl CommitHold {
    /// Lets held commits go on (the same as dropping the hold).
    pub fn release(self) {}
}

impl Drop for CommitHold {
    fn drop(&mut self) {
        self.gate.lock().holds -= 1;
        self.gate.changed.notify_all();
    }
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`, with no fault injected.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            gate: Arc::default(),
            delay: Mutex::new(Duration::ZERO),
            failures_pending: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
        }
    }

    /// The wrapped store (to look at what really was written).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Makes commits wait before writing until the returned hold is dropped.
    pub fn hold_commits(&self) -> CommitHold {
        self.gate.lock().holds += 1;
        CommitHold { gate: Arc::clone(&self.gate) }
    }

    /// How many commits are waiting for a [`CommitHold`] right now.
    pub fn waiting_commits(&self) -> usize {
        self.gate.lock().waiting
    }

    /// Blocks until at least `count` commits wait for a hold; false if that
    /// did not happen within `timeout`. (Blocking: from async code, call it
    /// through `spawn_blocking`.)
    pub fn wait_for_waiting_commits(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.gate.lock();
        while state.waiting < count {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            state = self
                .gate
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Makes every commit sleep `delay` before going on (zero: no delay).
    pub fn set_commit_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = delay;
    }

    /// Makes the next `count` commits fail with [`StoreError::Io`] without
    /// writing anything (added to failures still pending).
    pub fn fail_next_commits(&self, count: u64) {
        self.failures_pending.fetch_add(count, Ordering::SeqCst);
    }

    /// Commits attempted so far (failed ones included).
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    /// Commits failed on purpose so far.
    pub fn failed_commit_count(&self) -> u64 {
        self.failed_commits.load(Ordering::SeqCst)
    }

    fn wait_at_gate(&self) {
        let mut state = self.gate.lock();
        if state.holds == 0 {
            return;
        }
        state.waiting += 1;
        self.gate.changed.notify_all();
        while state.holds > 0 {
            state =
                self.gate.changed.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.waiting -= 1;
        self.gate.changed.notify_all();
    }

    /// Takes one pending failure, if any.
    fn take_failure(&self) -> bool {
        self.failures_pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |pending| pending.checked_sub(1))
            .is_ok()
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn commit(&self, batches: &[ShardBatch]) -> Result<(), StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        self.wait_at_gate();
        if self.take_failure() {
            self.failed_commits.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Io("injected fsync failure".to_owned()));
        }
        self.inner.commit(batches)
    }

    fn load_all(&self) -> Result<Vec<LoadedShard>, StoreError> {
        self.inner.load_all()
    }

    fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.inner.write_checkpoint(checkpoint)
    }

    fn rotate_log(&self) {
        self.inner.rotate_log()
    }

    fn compact_log(&self) -> Result<u64, StoreError> {
        self.inner.compact_log()
    }

    fn log_stats(&self) -> LogStats {
        self.inner.log_stats()
    }

    fn save_catalog(&self, catalog: &[u8]) -> Result<(), StoreError> {
        self.inner.save_catalog(catalog)
    }

    fn load_catalog(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.load_catalog()
    }

    fn query_ledger(&self, query: &LedgerQuery) -> Result<LedgerPage, StoreError> {
        self.inner.query_ledger(query)
    }

    fn sweep_ledger(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.inner.sweep_ledger(before_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::MemoryStore;

    fn batch() -> Vec<ShardBatch> {
        vec![ShardBatch {
            shard: 1,
            epoch: 1,
            sequence: 1,
            records: vec![(b"k".to_vec(), Some(b"v".to_vec()))],
            ledger: Vec::new(),
        }]
    }

    #[test]
    fn held_commits_write_nothing_and_return_nothing_until_released() {
        let store = Arc::new(FaultyStore::new(MemoryStore::new()));
        let hold = store.hold_commits();
        let (done, finished) = mpsc::channel();
        let committing = Arc::clone(&store);
        let thread = std::thread::spawn(move || done.send(committing.commit(&batch())).unwrap());

        assert!(store.wait_for_waiting_commits(1, Duration::from_secs(10)));
        assert!(finished.try_recv().is_err(), "no answer while held");
        assert!(
            store.inner().load_all().unwrap()[1].records.is_empty(),
            "nothing written while held"
        );

        hold.release();
        assert_eq!(finished.recv().unwrap(), Ok(()));
        thread.join().unwrap();
        assert_eq!(store.inner().load_all().unwrap()[1].records.len(), 1);
        assert_eq!(store.waiting_commits(), 0);
        assert_eq!(store.commit_count(), 1);
    }

    #[test]
    fn failed_commits_write_nothing() {
        let store = FaultyStore::new(MemoryStore::new());
        store.fail_next_commits(2);
        assert!(matches!(store.commit(&batch()), Err(StoreError::Io(_))));
        assert!(matches!(store.commit(&batch()), Err(StoreError::Io(_))));
        assert!(store.inner().load_all().unwrap()[1].records.is_empty());
        assert_eq!(store.commit(&batch()), Ok(()));
        assert_eq!(store.inner().load_all().unwrap()[1].records.len(), 1);
        assert_eq!((store.commit_count(), store.failed_commit_count()), (3, 2));
    }

    #[test]
    fn waiting_for_commits_times_out() {
        let store = FaultyStore::new(MemoryStore::new());
        assert!(!store.wait_for_waiting_commits(1, Duration::from_millis(10)));
        assert!(store.wait_for_waiting_commits(0, Duration::ZERO));
    }
}

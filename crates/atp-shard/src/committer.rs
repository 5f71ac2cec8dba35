//! The node's group committer: one thread that takes the changes of many
//! shards' batches, writes them as one atomic store batch with one fsync, then
//! completes every waiting batch.
//!
//! A batch arriving while a write is in flight waits for the next one, so the
//! busier the node, the more batches share an fsync. A failed write is never
//! retried and never reported as success: every batch in it gets the error,
//! the committer refuses everything after it, and the node reports itself
//! failed (atpd then exits so its supervisor restarts it; recovery reloads the
//! state from the store — whatever the failed write did or did not keep).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Instant;

use atp_store::{ShardBatch, Store, StoreError};
use tokio::sync::watch;

use crate::error::NodeError;
use crate::write_log::{WriteLog, WriteLogConfig};

/// Most shard batches written by one store commit.
const MAX_GROUP: usize = 1024;

/// What runs once a job's group is durable (or failed), on the committer
/// thread, in the order the jobs were submitted.
pub(crate) type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct Job {
    /// None: nothing to write; completes after the jobs submitted before it
    /// (the replies of a batch that changed nothing, behind earlier writes).
    batch: Option<ShardBatch>,
    complete: Completion,
}

/// Counters of the committer, for the admin API and benchmarks.
#[derive(Debug, Default)]
pub struct CommitterStats {
    /// Store commits (fsyncs) made.
    pub commits: AtomicU64,
    /// Shard batches written.
    pub batches: AtomicU64,
}

/// A handle to the committer thread.
#[derive(Clone)]
pub(crate) struct Committer {
    sender: mpsc::Sender<Job>,
    failed: Arc<AtomicBool>,
    /// Why writes are refused when the failure was a full disk.
    disk_full: Arc<OnceLock<String>>,
    pub(crate) stats: Arc<CommitterStats>,
}

impl Committer {
    /// Starts the committer thread over `store`; a failed write is reported
    /// on `failure`. With `write_log`, every durable group's batches are
    /// logged there before their completions run.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        failure: Arc<watch::Sender<Option<String>>>,
        write_log: Option<&WriteLogConfig>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel::<Job>();
        let failed = Arc::new(AtomicBool::new(false));
        let disk_full = Arc::new(OnceLock::new());
        let stats = Arc::new(CommitterStats::default());
        let thread = Shared {
            failed: Arc::clone(&failed),
            disk_full: Arc::clone(&disk_full),
            stats: Arc::clone(&stats),
            failure,
        };
        let mut write_log = write_log.and_then(WriteLog::open);
        thread::Builder::new()
            .name("atp-committer".to_owned())
            .spawn(move || run(&*store, &receiver, &thread, write_log.as_mut()))
            .expect("the committer thread starts");
        Self { sender, failed, disk_full, stats }
    }

    /// Why new work must be refused, if a write failed: a full disk refuses
    /// writes (`DiskFull`, reads go on); any other failure stops the node.
    pub(crate) fn refusal(&self) -> Result<(), NodeError> {
        if !self.has_failed() {
            return Ok(());
        }
        Err(match self.disk_full.get() {
            Some(reason) => NodeError::DiskFull(reason.clone()),
            None => NodeError::StorageFailed(
                "an earlier durable write failed; restart the node".to_owned(),
            ),
        })
    }

    /// Records a failure found outside the committer (recovery's own write).
    pub(crate) fn note_failure(&self, error: &StoreError) {
        if let StoreError::DiskFull(reason) = error {
            let _ = self.disk_full.set(reason.clone());
        }
        self.failed.store(true, Ordering::Release);
    }

    /// Whether a write has failed (the node must not acknowledge anything more).
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Makes `batch` durable, then runs `complete` with the outcome (on the
    /// committer thread). Jobs complete in the order they were submitted, and
    /// a job's group is durable only if every earlier group is: so a shard
    /// may submit its next batch before the last one is durable.
    pub(crate) fn submit(&self, batch: Option<ShardBatch>, complete: Completion) {
        if let Err(mpsc::SendError(job)) = self.sender.send(Job { batch, complete }) {
            (job.complete)(Err(StoreError::Io("the committer has stopped".to_owned())));
        }
    }
}

struct Shared {
    failed: Arc<AtomicBool>,
    disk_full: Arc<OnceLock<String>>,
    stats: Arc<CommitterStats>,
    failure: Arc<watch::Sender<Option<String>>>,
}

fn run(
    store: &dyn Store,
    receiver: &mpsc::Receiver<Job>,
    shared: &Shared,
    mut write_log: Option<&mut WriteLog>,
) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    // Handles of the installed metrics recorder (no-ops without one).
    let fsync_seconds = metrics::histogram!("atp_fsync_duration_seconds");
    let group_size = metrics::histogram!("atp_group_commit_batches");
    while let Ok(first) = receiver.recv() {
        jobs.push(first);
        while jobs.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (completions, batches): (Vec<Completion>, Vec<Option<ShardBatch>>) =
            jobs.drain(..).map(|job| (job.complete, job.batch)).unzip();
        let batches: Vec<ShardBatch> = batches.into_iter().flatten().collect();
        let outcome = if shared.failed.load(Ordering::Acquire) {
            Err(match shared.disk_full.get() {
                Some(reason) => StoreError::DiskFull(reason.clone()),
                None => StoreError::Io("an earlier write failed; the node must restart".to_owned()),
            })
        } else if batches.is_empty() {
            Ok(())
        } else {
            let started = Instant::now();
            let outcome = store.commit(&batches);
            fsync_seconds.record(started.elapsed());
            group_size.record(batches.len() as f64);
            shared.stats.commits.fetch_add(1, Ordering::Relaxed);
            shared.stats.batches.fetch_add(batches.len() as u64, Ordering::Relaxed);
            tracing::trace!(batches = batches.len(), elapsed = ?started.elapsed(), "group commit");
            match &outcome {
                Err(StoreError::DiskFull(reason)) => {
                    let _ = shared.disk_full.set(reason.clone());
                    shared.failed.store(true, Ordering::Release);
                    tracing::error!(%reason, "disk full: refusing every write until space is freed and the node restarts; reads go on");
                }
                Err(error) => {
                    shared.failed.store(true, Ordering::Release);
                    tracing::error!(%error, "durable write failed; refusing every write from now on");
                    shared.failure.send_replace(Some(error.to_string()));
                }
                Ok(()) => {
                    // Before any reply of the group: no reply precedes its line.
                    if let Some(write_log) = write_log.as_deref_mut() {
                        write_log.append(&batches);
                    }
                }
            }
            outcome
        };
        for complete in completions {
            complete(outcome.clone());
        }
    }
}

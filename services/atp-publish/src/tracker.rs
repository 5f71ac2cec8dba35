//! What one channel owes its receiver, and how far the stream is safely
//! delivered: [`Tracker`].
//!
//! Every stream message gets a local sequence number. A changed SKU waits in
//! `pending` (coalesced: the latest figure wins) until a push takes it
//! (`in_flight`, one push at a time) and the receiver acknowledges it. Each
//! waiting change remembers the message it came with (`since`); the
//! earliest such message bounds what is delivered: every message before it
//! is fully acknowledged, so the marks held after it are a safe resume point
//! ([`Checkpoint`]), which the caller persists as the cursor.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use atp_client::{Figure, Version};

/// Most resume points kept between two advances of the cursor; past it the
/// newest is replaced (the cursor then jumps further when it advances).
pub const MAX_CHECKPOINTS: usize = 4_096;

/// Marks: per shard, every change up to the version has been received.
pub type Marks = BTreeMap<u32, Version>;

/// A resume point: the marks held and the `sent_at_ms` after one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The local number of the message.
    pub seq: u64,
    /// The marks held after it.
    pub marks: Arc<Marks>,
    /// Its `sent_at_ms`.
    pub sent_at_ms: i64,
}

/// One SKU owed to the receiver.
#[derive(Clone, Debug)]
struct Entry {
    figure: Figure,
    /// The message of the earliest unacknowledged change (None: a
    /// republish, owed but not a change of the stream).
    since: Option<u64>,
    /// Position in the send order (first owed, first sent).
    order: u64,
}

/// One item of a push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The SKU.
    pub sku: String,
    /// Its figures.
    pub figure: Figure,
}

/// The state of one channel's delivery (no I/O; the caller pushes and persists).
#[derive(Debug, Default)]
pub struct Tracker {
    pending: HashMap<String, Entry>,
    queue: BTreeSet<(u64, String)>,
    in_flight: Vec<(String, Entry)>,
    /// Message → (unacknowledged changes from it, its sent_at_ms).
    unacked: BTreeMap<u64, (usize, i64)>,
    next_order: u64,
    last_seq: u64,
    marks: Arc<Marks>,
    checkpoints: VecDeque<Checkpoint>,
    acked: Option<Checkpoint>,
    last_acked_version: Option<Version>,
}

impl Tracker {
    /// A tracker resuming from `cursor` (None: nothing delivered yet).
    pub fn new(cursor: Option<Checkpoint>) -> Self {
        let marks = cursor.as_ref().map(|cursor| Arc::clone(&cursor.marks)).unwrap_or_default();
        Self { marks, acked: cursor, ..Self::default() }
    }

    /// Takes in one stream message: `resynced` (RESYNC: the marks are
    /// forgotten), its marks, its `sent_at_ms` and the SKUs it changed.
    pub fn received(
        &mut self,
        resynced: bool,
        marks: &[(u32, Version)],
        sent_at_ms: i64,
        changed: &[(String, Figure)],
    ) {
        self.last_seq += 1;
        let seq = self.last_seq;
        if resynced {
            self.marks = Arc::default();
        }
        let grows =
            marks.iter().any(|(shard, at)| self.marks.get(shard).is_none_or(|held| at > held));
        if grows {
            let held = Arc::make_mut(&mut self.marks);
            for (shard, at) in marks {
                let mark = held.entry(*shard).or_default();
                *mark = (*mark).max(*at);
            }
        }
        for (sku, figure) in changed {
            self.owe(sku, *figure, Some((seq, sent_at_ms)));
        }
        if sent_at_ms > 0 {
            if self.checkpoints.len() >= MAX_CHECKPOINTS {
                self.checkpoints.pop_back();
            }
            let marks = Arc::clone(&self.marks);
            self.checkpoints.push_back(Checkpoint { seq, marks, sent_at_ms });
        }
    }

    /// Owes `figure` again without it being a change (republish).
    pub fn republish(&mut self, sku: &str, figure: Figure) {
        self.owe(sku, figure, None);
    }

    fn owe(&mut self, sku: &str, figure: Figure, change: Option<(u64, i64)>) {
        if let Some(entry) = self.pending.get_mut(sku) {
            if figure.version >= entry.figure.version {
                entry.figure = figure;
            }
            if entry.since.is_none()
                && let Some((seq, sent_at_ms)) = change
            {
                entry.since = Some(seq);
                self.count(seq, sent_at_ms);
            }
            return;
        }
        let order = self.next_order;
        self.next_order += 1;
        let since = change.map(|(seq, sent_at_ms)| {
            self.count(seq, sent_at_ms);
            seq
        });
        self.queue.insert((order, sku.to_owned()));
        self.pending.insert(sku.to_owned(), Entry { figure, since, order });
    }

    fn count(&mut self, seq: u64, sent_at_ms: i64) {
        self.unacked.entry(seq).or_insert((0, sent_at_ms)).0 += 1;
    }

    fn uncount(&mut self, seq: u64) {
        if let Some((count, _)) = self.unacked.get_mut(&seq) {
            *count -= 1;
            if *count == 0 {
                self.unacked.remove(&seq);
            }
        }
    }

    /// Whether a push is in flight.
    pub fn in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// SKUs owed (waiting or in flight, each counted once).
    pub fn owed(&self) -> usize {
        let only_in_flight =
            self.in_flight.iter().filter(|(sku, _)| !self.pending.contains_key(sku)).count();
        self.pending.len() + only_in_flight
    }

    /// SKUs waiting for a push.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// Takes up to `batch_max` waiting SKUs, first owed first, into flight
    /// (nothing if a push is in flight already).
    pub fn take_batch(&mut self, batch_max: usize) -> Vec<Item> {
        if self.in_flight() {
            return Vec::new();
        }
        while self.in_flight.len() < batch_max {
            let Some((_, sku)) = self.queue.pop_first() else { break };
            let entry = self.pending.remove(&sku).expect("queued SKUs are pending");
            self.in_flight.push((sku, entry));
        }
        self.batch()
    }

    /// The batch in flight, as items.
    pub fn batch(&self) -> Vec<Item> {
        self.in_flight
            .iter()
            .map(|(sku, entry)| Item { sku: sku.clone(), figure: entry.figure })
            .collect()
    }

    /// The push in flight failed: it is retried with the same SKUs, each
    /// with its latest figure (a newer one that waited joins it).
    pub fn failed(&mut self) {
        for (sku, entry) in &mut self.in_flight {
            let Some(newer) = self.pending.remove(sku.as_str()) else { continue };
            self.queue.remove(&(newer.order, sku.clone()));
            if newer.figure.version >= entry.figure.version {
                entry.figure = newer.figure;
            }
            // One change owed for the SKU: the earliest.
            match (entry.since, newer.since) {
                (Some(_), Some(later)) => {
                    if let Some((count, _)) = self.unacked.get_mut(&later) {
                        *count -= 1;
                        if *count == 0 {
                            self.unacked.remove(&later);
                        }
                    }
                }
                (None, Some(later)) => entry.since = Some(later),
                _ => {}
            }
        }
    }

    /// The push in flight was acknowledged: returns the SKUs it delivered.
    pub fn acked(&mut self) -> usize {
        let delivered = std::mem::take(&mut self.in_flight);
        for (_, entry) in &delivered {
            if let Some(seq) = entry.since {
                self.uncount(seq);
            }
            let version = entry.figure.version;
            self.last_acked_version = self.last_acked_version.max(Some(version));
        }
        delivered.len()
    }

    /// The newest resume point every change before and at which is
    /// acknowledged, if it moved since the last call; it becomes the
    /// acknowledged state.
    pub fn advance(&mut self) -> Option<Checkpoint> {
        let safe = match self.unacked.first_key_value() {
            Some((seq, _)) => seq - 1,
            None => self.last_seq,
        };
        let mut newest = None;
        while self.checkpoints.front().is_some_and(|checkpoint| checkpoint.seq <= safe) {
            newest = self.checkpoints.pop_front();
        }
        let newest = newest?;
        if self.acked.as_ref().is_some_and(|acked| {
            acked.marks == newest.marks && acked.sent_at_ms == newest.sent_at_ms
        }) {
            return None;
        }
        self.acked = Some(newest.clone());
        Some(newest)
    }

    /// The acknowledged resume point (None: start with a snapshot).
    pub fn acknowledged(&self) -> Option<&Checkpoint> {
        self.acked.as_ref()
    }

    /// The highest version acknowledged.
    pub fn last_acked_version(&self) -> Option<Version> {
        self.last_acked_version
    }

    /// sent_at_ms of the oldest unacknowledged change.
    pub fn oldest_unacked_sent_at_ms(&self) -> Option<i64> {
        self.unacked.values().map(|(_, sent_at_ms)| *sent_at_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(atp: i64, sequence: u64) -> Figure {
        Figure { atp, published: atp, version: (1, sequence) }
    }

    fn changed(sku: &str, atp: i64, sequence: u64) -> Vec<(String, Figure)> {
        vec![(sku.to_owned(), figure(atp, sequence))]
    }

    #[test]
    fn the_cursor_waits_for_every_earlier_change_to_be_acknowledged() {
        let mut tracker = Tracker::new(None);
        tracker.received(false, &[], 10, &changed("a", 1, 1));
        tracker.received(false, &[(0, (1, 2))], 11, &changed("b", 2, 2));
        assert_eq!(tracker.take_batch(1).len(), 1);
        tracker.acked();
        // "b" (message 2) is not acknowledged: only message 1 is safe, and
        // it carried no marks.
        let first = tracker.advance().expect("message 1 is safe");
        assert_eq!(first.seq, 1);
        assert!(first.marks.is_empty());
        assert_eq!(tracker.take_batch(10).len(), 1);
        tracker.acked();
        let second = tracker.advance().expect("message 2 is safe");
        assert_eq!(*second.marks, Marks::from([(0, (1, 2))]));
        assert_eq!(second.sent_at_ms, 11);
        assert_eq!(tracker.advance(), None);
    }

    #[test]
    fn a_failed_push_is_retried_with_the_latest_figures_of_the_same_skus() {
        let mut tracker = Tracker::new(None);
        tracker.received(false, &[], 10, &changed("a", 1, 1));
        tracker.received(false, &[], 11, &changed("c", 1, 1));
        let batch = tracker.take_batch(1);
        assert_eq!(batch[0].sku, "a");
        tracker.received(false, &[(0, (1, 3))], 12, &changed("a", 5, 3));
        tracker.failed();
        let retry = tracker.batch();
        assert_eq!(retry, vec![Item { sku: "a".into(), figure: figure(5, 3) }]);
        assert_eq!(tracker.waiting(), 1);
        tracker.acked();
        // "c" (message 2) still owed: the cursor stays at message 1.
        assert_eq!(tracker.advance().map(|c| c.seq), Some(1));
        assert_eq!(tracker.oldest_unacked_sent_at_ms(), Some(11));
        tracker.take_batch(10);
        tracker.acked();
        assert_eq!(tracker.advance().map(|c| c.seq), Some(3));
        assert_eq!(tracker.owed(), 0);
        assert_eq!(tracker.oldest_unacked_sent_at_ms(), None);
        assert_eq!(tracker.last_acked_version(), Some((1, 3)));
    }

    #[test]
    fn a_change_while_in_flight_waits_for_its_own_push() {
        let mut tracker = Tracker::new(None);
        tracker.received(false, &[], 10, &changed("a", 1, 1));
        tracker.take_batch(10);
        tracker.received(false, &[(0, (1, 2))], 11, &changed("a", 2, 2));
        tracker.acked();
        assert_eq!(tracker.advance().map(|c| c.seq), Some(1));
        assert_eq!(tracker.take_batch(10), vec![Item { sku: "a".into(), figure: figure(2, 2) }]);
        tracker.acked();
        assert_eq!(tracker.advance().map(|c| c.seq), Some(2));
    }

    #[test]
    fn republished_skus_do_not_hold_the_cursor_back_but_are_pushed() {
        let mut tracker = Tracker::new(None);
        tracker.received(false, &[(0, (1, 1))], 10, &[]);
        tracker.republish("a", figure(1, 1));
        assert_eq!(tracker.advance().map(|c| c.seq), Some(1));
        assert_eq!(tracker.take_batch(10).len(), 1);
        assert_eq!(tracker.oldest_unacked_sent_at_ms(), None);
    }

    #[test]
    fn resync_forgets_the_marks_and_the_cursor_starts_from_the_resume_point() {
        let start =
            Checkpoint { seq: 0, marks: Arc::new(Marks::from([(3, (1, 9))])), sent_at_ms: 5 };
        let mut tracker = Tracker::new(Some(start.clone()));
        assert_eq!(tracker.acknowledged(), Some(&start));
        tracker.received(true, &[], 20, &[]);
        tracker.received(false, &[(1, (2, 1))], 21, &[]);
        let now = tracker.advance().expect("safe");
        assert_eq!(*now.marks, Marks::from([(1, (2, 1))]));
    }
}

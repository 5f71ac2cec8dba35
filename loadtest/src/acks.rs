//! The log of what the node acknowledged: per reservation id, the lines sent
//! (or, for an Allocate, the order sent and the lines the node chose), the
//! last acknowledged state and the operations sent after it whose answer
//! was lost. The checker compares the node's state with it; logs of several
//! runs against the same [`crate::Setup`] merge into one.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// One line of a reservation, by index into the [`crate::Setup`]'s SKUs and
/// locations (compact: a long run logs millions of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LineRef {
    /// Index into [`crate::Setup::skus`].
    pub sku: u32,
    /// Index into [`crate::Setup::locations`].
    pub location: u16,
    /// Units asked for.
    pub quantity: i64,
}

/// One line of an order sent with Allocate: units of a SKU, the location
/// left to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrderRef {
    /// Index into [`crate::Setup::skus`].
    pub sku: u32,
    /// Units ordered.
    pub quantity: i64,
}

/// A state the node acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Acked {
    /// Reserve refused with a code that proves nothing was stored: the id
    /// must not exist.
    Refused,
    /// Reserve acknowledged: units held.
    Held,
    /// Commit acknowledged: every line's units committed.
    Committed,
    /// Release acknowledged.
    Released,
}

/// An operation sent without an answer (connection lost, timeout,
/// UNAVAILABLE): it may or may not have been applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum InDoubt {
    /// A Reserve, or an Allocate (whose hold is a Reserve under the order
    /// id): the reservation may exist, HELD (or EXPIRED since).
    Reserve,
    /// A Commit of a HELD reservation: it may be COMMITTED.
    Commit,
    /// A Release of a HELD reservation: it may be RELEASED.
    Release,
}

/// What the load generator knows of one reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckEntry {
    /// The lines as sent with the Reserve; for an Allocate, the lines its
    /// answer held, or none while no answer came (see `order`).
    pub lines: Vec<LineRef>,
    /// An Allocate's order (empty for a Reserve). The node chose its lines,
    /// so while `lines` is empty the checker accepts any lines that hold
    /// exactly these units of these SKUs at the setup's locations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order: Vec<OrderRef>,
    /// The last acknowledged state; `None` while only unanswered operations
    /// were sent.
    pub acked: Option<Acked>,
    /// Operations sent after `acked` whose outcome is unknown.
    pub in_doubt: BTreeSet<InDoubt>,
}

/// State of a reservation as the checker finds it on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Found {
    /// GetReservation answered NOT_FOUND.
    Missing,
    /// HELD.
    Held,
    /// COMMITTED.
    Committed,
    /// RELEASED.
    Released,
    /// EXPIRED.
    Expired,
    /// CANCELLED.
    Cancelled,
    /// FULFILLED.
    Fulfilled,
}

impl AckEntry {
    /// The states the node may show for this entry: the acknowledged state's
    /// legal successors, plus those of every operation in doubt. The load
    /// generator never cancels or ships, but a COMMITTED order may legally
    /// move on, so those successors are allowed.
    pub fn allowed(&self) -> BTreeSet<Found> {
        let mut allowed = BTreeSet::new();
        match self.acked {
            None | Some(Acked::Refused) => {
                allowed.insert(Found::Missing);
            }
            Some(Acked::Held) => allowed.extend([Found::Held, Found::Expired]),
            Some(Acked::Committed) => {
                allowed.extend([Found::Committed, Found::Cancelled, Found::Fulfilled]);
            }
            Some(Acked::Released) => {
                allowed.insert(Found::Released);
            }
        }
        for attempt in &self.in_doubt {
            match attempt {
                InDoubt::Reserve => allowed.extend([Found::Missing, Found::Held, Found::Expired]),
                InDoubt::Commit => {
                    allowed.extend([Found::Committed, Found::Cancelled, Found::Fulfilled]);
                }
                InDoubt::Release => {
                    allowed.insert(Found::Released);
                }
            }
        }
        allowed
    }
}

/// Acknowledged operations by reservation id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckLog {
    entries: HashMap<String, AckEntry>,
}

impl AckLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reservations logged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is logged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of `id`.
    pub fn get(&self, id: &str) -> Option<&AckEntry> {
        self.entries.get(id)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &AckEntry)> {
        self.entries.iter().map(|(id, entry)| (id.as_str(), entry))
    }

    /// Entries whose last acknowledged state is `state`.
    pub fn count(&self, state: Acked) -> usize {
        self.entries.values().filter(|entry| entry.acked == Some(state)).count()
    }

    /// Entries with an operation in doubt.
    pub fn in_doubt(&self) -> usize {
        self.entries.values().filter(|entry| !entry.in_doubt.is_empty()).count()
    }

    /// A Reserve of `lines` is about to be sent under `id`.
    pub fn reserve_sent(&mut self, id: &str, lines: Vec<LineRef>) {
        let entry = AckEntry {
            lines,
            order: Vec::new(),
            acked: None,
            in_doubt: BTreeSet::from([InDoubt::Reserve]),
        };
        self.entries.insert(id.to_owned(), entry);
    }

    /// An Allocate of `order` is about to be sent under `id`; the lines are
    /// the node's to choose. Until it answers, it is a Reserve in doubt.
    pub fn allocate_sent(&mut self, id: &str, order: Vec<OrderRef>) {
        let entry = AckEntry {
            lines: Vec::new(),
            order,
            acked: None,
            in_doubt: BTreeSet::from([InDoubt::Reserve]),
        };
        self.entries.insert(id.to_owned(), entry);
    }

    /// The node answered `id`'s Allocate: it holds `lines` (empty when the
    /// answer did not say which, so the checker compares with the order).
    pub fn allocated(&mut self, id: &str, lines: Vec<LineRef>) {
        self.acknowledged(id, Acked::Held);
        let entry = self.entries.get_mut(id).expect("acknowledged just now");
        entry.lines = lines;
    }

    /// The node answered `id`'s pending operation: now `state`.
    pub fn acknowledged(&mut self, id: &str, state: Acked) {
        let entry = self.entries.get_mut(id).expect("an operation is logged before it is answered");
        entry.acked = Some(state);
        entry.in_doubt.clear();
    }

    /// The operation last sent for `id` was refused: nothing changed.
    pub fn refused(&mut self, id: &str, attempt: InDoubt) {
        let entry = self.entries.get_mut(id).expect("an operation is logged before it is answered");
        entry.in_doubt.remove(&attempt);
        if attempt == InDoubt::Reserve {
            entry.acked = Some(Acked::Refused);
        }
    }

    /// A Commit or Release of `id` is about to be sent; until it is answered
    /// its outcome is unknown.
    pub fn sent(&mut self, id: &str, attempt: InDoubt) {
        let entry = self.entries.get_mut(id).expect("a reservation is logged before it changes");
        entry.in_doubt.insert(attempt);
    }

    /// Inserts or replaces `id`'s entry (tests, and logs built elsewhere).
    pub fn insert(&mut self, id: impl Into<String>, entry: AckEntry) {
        self.entries.insert(id.into(), entry);
    }

    /// Takes in the entries of `other` (another worker, or another run
    /// against the same setup). An id in both keeps the further acknowledged
    /// state (a Commit or Release outranks a Hold) and every doubt of both.
    pub fn merge(&mut self, other: AckLog) {
        if self.entries.is_empty() {
            self.entries = other.entries;
            return;
        }
        for (id, theirs) in other.entries {
            match self.entries.get_mut(&id) {
                None => {
                    self.entries.insert(id, theirs);
                }
                Some(ours) => {
                    ours.acked = ours.acked.max(theirs.acked);
                    ours.in_doubt.extend(theirs.in_doubt);
                    // An Allocate's lines are known once one log saw its answer.
                    if ours.lines.is_empty() {
                        ours.lines = theirs.lines;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: LineRef = LineRef { sku: 0, location: 0, quantity: 1 };

    #[test]
    fn an_answered_reserve_is_held_and_in_doubt_no_more() {
        let mut log = AckLog::new();
        log.reserve_sent("r-1", vec![LINE]);
        assert_eq!(
            log.get("r-1").expect("logged").allowed(),
            BTreeSet::from([Found::Missing, Found::Held, Found::Expired])
        );
        log.acknowledged("r-1", Acked::Held);
        assert_eq!(
            log.get("r-1").expect("logged").allowed(),
            BTreeSet::from([Found::Held, Found::Expired])
        );
        log.sent("r-1", InDoubt::Commit);
        let allowed = log.get("r-1").expect("logged").allowed();
        assert!(allowed.contains(&Found::Committed) && allowed.contains(&Found::Held));
        assert!(!allowed.contains(&Found::Released));
        log.acknowledged("r-1", Acked::Committed);
        let allowed = log.get("r-1").expect("logged").allowed();
        assert!(!allowed.contains(&Found::Held) && allowed.contains(&Found::Fulfilled));
    }

    #[test]
    fn a_refused_reserve_must_not_exist() {
        let mut log = AckLog::new();
        log.reserve_sent("r-1", vec![LINE]);
        log.refused("r-1", InDoubt::Reserve);
        assert_eq!(log.get("r-1").expect("logged").allowed(), BTreeSet::from([Found::Missing]));
        assert_eq!(log.count(Acked::Refused), 1);
    }

    #[test]
    fn an_allocate_learns_its_lines_from_the_answer() {
        let mut log = AckLog::new();
        let order = vec![OrderRef { sku: 0, quantity: 1 }];
        log.allocate_sent("o-1", order.clone());
        let entry = log.get("o-1").expect("logged");
        assert!(entry.lines.is_empty() && entry.order == order);
        assert!(entry.allowed().contains(&Found::Missing), "in doubt until answered");
        log.allocated("o-1", vec![LINE]);
        let entry = log.get("o-1").expect("logged");
        assert_eq!((entry.lines.as_slice(), entry.acked), ([LINE].as_slice(), Some(Acked::Held)));
        assert!(entry.in_doubt.is_empty());
        log.allocate_sent("o-2", order);
        log.refused("o-2", InDoubt::Reserve);
        assert_eq!(log.get("o-2").expect("logged").allowed(), BTreeSet::from([Found::Missing]));
    }

    #[test]
    fn merge_keeps_the_further_state_and_all_doubts() {
        let mut first = AckLog::new();
        first.reserve_sent("a", vec![LINE]);
        first.acknowledged("a", Acked::Held);
        first.reserve_sent("b", vec![LINE]);
        let mut second = AckLog::new();
        second.insert(
            "a",
            AckEntry {
                lines: vec![LINE],
                order: Vec::new(),
                acked: Some(Acked::Held),
                in_doubt: BTreeSet::from([InDoubt::Release]),
            },
        );
        second.reserve_sent("c", vec![LINE]);
        second.acknowledged("c", Acked::Held);
        first.merge(second);
        assert_eq!(first.len(), 3);
        let a = first.get("a").expect("merged");
        assert_eq!((a.acked, a.in_doubt.len()), (Some(Acked::Held), 1));
        assert_eq!(first.count(Acked::Held), 2);
        assert_eq!(first.in_doubt(), 2);
    }
}

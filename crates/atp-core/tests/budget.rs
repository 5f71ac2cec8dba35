//! The shard's bounded memory: repeated Extends keep the deadline heap small,
//! and the retention budget forgets the oldest ended reservations and event
//! memos first, persists the forgetting, and never touches live reservations.

mod common;

use std::collections::BTreeMap;

use atp_core::CoreError;
use atp_core::events::{StockEvent, StockEventKind};
use atp_core::ids::ReservationId;
use atp_core::reservation::{ReservationState, ReservationView};
use atp_core::shard::{
    Begin, MIN_AGE_BEFORE_EARLY_FORGET_MS, STALE_DEADLINES_ALLOWED, ShardSettings, ShardState,
};

use common::{START_MS, WEB, catalog, event_id, line, location, reservation, reserve_request, sku};

/// Long enough that no hold of these tests expires unless a test waits for it.
const TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// Ended records this far apart may forget each other early.
const AGE_MS: i64 = MIN_AGE_BEFORE_EARLY_FORGET_MS;

fn shard(settings: ShardSettings) -> ShardState {
    let mut state = ShardState::new(0, 1, settings);
    state.tick(START_MS);
    state
}

/// A HELD reservation on `state` as its home (the lines' shards are not needed here).
fn held(state: &mut ShardState, id: &str, now: i64) -> ReservationId {
    let request = reserve_request(id, WEB, vec![line("sku-apple", "loc-north", 1)], TTL_MS);
    let Ok(Begin::Started { version, .. }) = state.begin_reserve(&request, now) else {
        panic!("a new id starts")
    };
    state.finish_reserve(&request.id, version, true, now).expect("held");
    request.id
}

fn released(state: &mut ShardState, id: &str, now: i64) -> ReservationId {
    let id = held(state, id, now);
    state.release(&id, now).expect("release");
    id
}

fn state_of(state: &ShardState, id: &ReservationId) -> Result<ReservationState, CoreError> {
    state.get(id).map(|view: ReservationView| view.state)
}

/// Applies drained changes to a map standing in for the store.
fn persist(state: &mut ShardState, store: &mut BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<Vec<u8>> {
    let mut deleted = Vec::new();
    for (key, value) in state.drain_changes().records {
        match value {
            Some(value) => {
                store.insert(key, value);
            }
            None => {
                store.remove(&key);
                deleted.push(key);
            }
        }
    }
    deleted
}

fn record_key(id: &str) -> Vec<u8> {
    [b"r", id.as_bytes()].concat()
}

#[test]
fn a_million_extends_keep_one_deadline_and_expire_at_the_last_expiry() {
    let mut state = shard(ShardSettings::default());
    let id = held(&mut state, "r-extended", START_MS);
    let mut now = START_MS;
    for _ in 0..1_000_000 {
        now += 1;
        state.extend(&id, TTL_MS, now).expect("extend");
    }
    assert!(state.deadline_count() <= 2, "heap holds {}", state.deadline_count());
    let last_expiry = now + TTL_MS;
    assert!(state.tick(last_expiry - 1).is_empty(), "nothing expires before the last expiry");
    assert_eq!(state_of(&state, &id), Ok(ReservationState::Held));
    assert_eq!(state.next_deadline(), Some(last_expiry), "re-armed at the last expiry");
    assert!(!state.tick(last_expiry).is_empty(), "the expiry releases the lines");
    assert_eq!(state_of(&state, &id), Ok(ReservationState::Expired));
}

#[test]
fn extends_that_shorten_the_hold_are_compacted() {
    let mut state = shard(ShardSettings::default());
    let id = held(&mut state, "r-shortened", START_MS);
    let now = START_MS + 1;
    let mut last_ttl = 0;
    for index in 0..100_000_i64 {
        // Each Extend is shorter than the one before: each needs a new, earlier deadline.
        last_ttl = 200_000 - index;
        state.extend(&id, last_ttl, now).expect("extend");
        assert!(state.deadline_count() <= 2 + STALE_DEADLINES_ALLOWED + 1);
    }
    let expiry = now + last_ttl;
    assert!(state.tick(expiry - 1).is_empty());
    assert!(!state.tick(expiry).is_empty());
    assert_eq!(state_of(&state, &id), Ok(ReservationState::Expired));
}

#[test]
fn the_budget_forgets_the_oldest_ended_reservations_first_and_persists_it() {
    let settings = ShardSettings { max_ended_reservations: 3, ..ShardSettings::default() };
    let mut state = shard(settings.clone());
    let mut store = BTreeMap::new();
    // Live reservations older than every ended one: never forgotten by the budget.
    let live_held = held(&mut state, "live-held", START_MS);
    let live_committed = held(&mut state, "live-committed", START_MS);
    state.commit(&live_committed, &[], START_MS).expect("commit");
    // Ended at 1 (c), 2 (b then a: same time, id order decides), 3 (d), 4 (e) ages.
    released(&mut state, "c", START_MS + AGE_MS);
    released(&mut state, "b", START_MS + 2 * AGE_MS);
    released(&mut state, "a", START_MS + 2 * AGE_MS);
    persist(&mut state, &mut store);
    assert_eq!(state.stats().evicted_ended_reservations, 0);

    released(&mut state, "d", START_MS + 3 * AGE_MS);
    let deleted = persist(&mut state, &mut store);
    assert_eq!(deleted, vec![record_key("c")], "the oldest by ended time goes first");
    released(&mut state, "e", START_MS + 4 * AGE_MS);
    let deleted = persist(&mut state, &mut store);
    assert_eq!(deleted, vec![record_key("a")], "same ended time: the smaller id goes first");
    assert_eq!(state.stats().evicted_ended_reservations, 2);

    for gone in ["a", "c"] {
        assert!(matches!(state.get(&reservation(gone)), Err(CoreError::NotFound(_))));
    }
    for kept in ["b", "d", "e"] {
        assert_eq!(state_of(&state, &reservation(kept)), Ok(ReservationState::Released));
    }
    assert_eq!(state_of(&state, &live_held), Ok(ReservationState::Held));
    assert_eq!(state_of(&state, &live_committed), Ok(ReservationState::Committed));

    // The store equals the state, and a restored shard keeps evicting oldest first.
    let mut dump = state.dump();
    let mut stored = store.clone();
    dump.remove(&b"m"[..]);
    stored.remove(&b"m"[..]);
    assert_eq!(stored, dump);
    let mut restored = ShardState::restore(0, 1, settings, store.clone()).expect("restore");
    released(&mut restored, "f", START_MS + 5 * AGE_MS);
    assert_eq!(persist(&mut restored, &mut store), vec![record_key("b")]);
}

#[test]
fn the_budget_never_forgets_live_reservations() {
    let settings = ShardSettings { max_ended_reservations: 1, ..ShardSettings::default() };
    let mut state = shard(settings);
    let mut live = Vec::new();
    for index in 0..50 {
        let now = START_MS + index * AGE_MS;
        let id = held(&mut state, &format!("held-{index}"), now);
        if index % 2 == 0 {
            state.commit(&id, &[], now).expect("commit");
        }
        live.push(id);
        released(&mut state, &format!("ended-{index}"), now);
    }
    assert_eq!(state.stats().evicted_ended_reservations, 49);
    assert_eq!(state.stats().reservation_count, 51, "50 live and the newest ended");
    for id in &live {
        assert!(state_of(&state, id).is_ok_and(|s| !s.is_final()), "{id} kept");
    }
    // A retry of an evicted id is new: it is held again.
    let request = reserve_request("ended-0", WEB, vec![line("sku-apple", "loc-north", 1)], TTL_MS);
    assert!(matches!(
        state.begin_reserve(&request, START_MS + 100 * AGE_MS),
        Ok(Begin::Started { .. })
    ));
}

#[test]
fn records_ended_within_the_minimum_age_are_kept_until_they_are_old_enough() {
    let settings = ShardSettings { max_ended_reservations: 2, ..ShardSettings::default() };
    let mut state = shard(settings);
    let mut store = BTreeMap::new();
    for index in 0..5 {
        released(&mut state, &format!("young-{index}"), START_MS + index);
    }
    // Their line ops may still be in flight: over budget for now.
    assert_eq!(state.stats().reservation_count, 5);
    assert_eq!(state.stats().evicted_ended_reservations, 0);
    persist(&mut state, &mut store);
    // The next end, once they are old enough, brings the shard back to its limit.
    released(&mut state, "later", START_MS + 4 + AGE_MS);
    let deleted = persist(&mut state, &mut store);
    let expected: Vec<Vec<u8>> =
        (0..4).map(|index| record_key(&format!("young-{index}"))).collect();
    assert_eq!(deleted, expected);
    assert_eq!(state.stats().reservation_count, 2);
    assert_eq!(state.stats().evicted_ended_reservations, 4);
}

fn received(id: &str, quantity: i64) -> StockEvent {
    StockEvent {
        id: event_id(id),
        sku: sku("sku-apple"),
        location: location("loc-north"),
        kind: StockEventKind::Received { quantity },
    }
}

#[test]
fn the_budget_forgets_the_oldest_event_memos_first() {
    let settings = ShardSettings { max_event_memos: 2, ..ShardSettings::default() };
    let mut state = shard(settings);
    let mut store = BTreeMap::new();
    let catalog = catalog();
    for (index, id) in ["e1", "e2", "e3"].into_iter().enumerate() {
        let now = START_MS + i64::try_from(index).expect("small");
        state.apply_event(&received(id, 1), &catalog, now).expect("applied");
    }
    // e1 was never stored; its delete is harmless, as for any id forgotten in its own batch.
    assert_eq!(persist(&mut state, &mut store), vec![b"ee1".to_vec()]);
    assert_eq!(state.stats().evicted_event_memos, 1);
    state.apply_event(&received("e4", 1), &catalog, START_MS + 10).expect("applied");
    assert_eq!(persist(&mut state, &mut store), vec![b"ee2".to_vec()]);
    assert_eq!(state.stats().evicted_event_memos, 2);

    let on_hand =
        |state: &ShardState| state.positions_of(&sku("sku-apple"))[&location("loc-north")].on_hand;
    assert_eq!(on_hand(&state), 4);
    let again = state.apply_event(&received("e4", 1), &catalog, START_MS + 11).expect("dup");
    assert!(again.duplicate, "a remembered id is a duplicate");
    let again = state.apply_event(&received("e1", 1), &catalog, START_MS + 12).expect("new");
    assert!(!again.duplicate, "a forgotten id is applied again");
    assert_eq!(on_hand(&state), 5);
}

#[test]
fn a_batch_writes_its_records_in_key_order() {
    // Rule 16: the order of a batch's records (and of recovery's line ops)
    // must not depend on a hash seed.
    let mut state = shard(ShardSettings::default());
    let catalog = catalog();
    for index in 0..200 {
        let event = received(&format!("event-{index:03}"), 1);
        state.apply_event(&event, &catalog, START_MS).expect("applied");
        held(&mut state, &format!("held-{}", 199 - index), START_MS);
    }
    let keys: Vec<Vec<u8>> =
        state.drain_changes().records.into_iter().map(|(key, _)| key).collect();
    let events: Vec<&Vec<u8>> = keys.iter().filter(|key| key[0] == b'e').collect();
    let records: Vec<&Vec<u8>> = keys.iter().filter(|key| key[0] == b'r').collect();
    assert_eq!(events.len(), 200);
    assert_eq!(records.len(), 200);
    assert!(events.is_sorted() && records.is_sorted(), "records in key order");
}

/// A small seeded generator (no dependency; the same sequence on every run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 =
            self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }

    fn signed_below(&mut self, bound: u64) -> i64 {
        i64::try_from(self.below(bound)).expect("small")
    }
}

fn assert_stored_equals_state(state: &mut ShardState, store: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
    persist(state, store);
    let mut dump = state.dump();
    let mut stored = store.clone();
    dump.remove(&b"m"[..]);
    stored.remove(&b"m"[..]);
    assert_eq!(stored, dump, "the store holds exactly the state");
}

#[test]
fn mixed_operations_under_a_small_budget_persist_every_forget() {
    let settings =
        ShardSettings { max_ended_reservations: 3, max_event_memos: 3, ..ShardSettings::default() };
    let mut state = shard(settings.clone());
    let mut store = BTreeMap::new();
    let catalog = catalog();
    let mut random = Lcg(7);
    let mut now = START_MS;
    let mut created = 0;
    let mut committed: Vec<ReservationId> = Vec::new();
    for _ in 0..5_000 {
        now += random.signed_below(20_000);
        let known = reservation(&format!("r-{}", random.below(created.max(1))));
        match random.below(7) {
            0 => {
                let ttl_ms = 1_000 + random.signed_below(60_000);
                let lines = vec![line("sku-apple", "loc-north", 1)];
                let request = reserve_request(&format!("r-{created}"), WEB, lines, ttl_ms);
                created += 1;
                if let Ok(Begin::Started { version, .. }) = state.begin_reserve(&request, now) {
                    state.finish_reserve(&request.id, version, true, now).expect("held");
                }
            }
            1 => {
                // A replayed Commit of a cancelled order answers Ok too.
                let is_committed = state.commit(&known, &[], now).is_ok()
                    && state_of(&state, &known) == Ok(ReservationState::Committed);
                if is_committed && !committed.contains(&known) {
                    committed.push(known);
                }
            }
            2 => drop(state.release(&known, now)),
            3 => {
                if let Some(index) = (!committed.is_empty())
                    .then(|| usize::try_from(random.below(committed.len() as u64)).expect("small"))
                {
                    let id = committed.remove(index);
                    state.cancel(&id, now).expect("a committed order cancels");
                }
            }
            4 => drop(state.extend(&known, 1_000 + random.signed_below(60_000), now)),
            5 => {
                let event = received(&format!("e-{}", random.below(20)), 1);
                state.apply_event(&event, &catalog, now).expect("applied");
            }
            _ => drop(state.tick(now)),
        }
        assert_stored_equals_state(&mut state, &mut store);
        for id in &committed {
            assert_eq!(state_of(&state, id), Ok(ReservationState::Committed), "{id} kept");
        }
    }
    let stats = state.stats();
    assert!(stats.evicted_ended_reservations > 100, "{stats:?}");
    assert!(stats.evicted_event_memos > 100, "{stats:?}");
    let restored = ShardState::restore(0, 1, settings, store).expect("restore");
    let (mut again, mut live) = (restored.dump(), state.dump());
    // The meta record rides along with real changes only (see `drain_changes`).
    again.remove(&b"m"[..]);
    live.remove(&b"m"[..]);
    let differing: Vec<String> = again
        .keys()
        .chain(live.keys())
        .filter(|key| again.get(*key) != live.get(*key))
        .map(|key| String::from_utf8_lossy(key).into_owned())
        .collect();
    assert!(differing.is_empty(), "a restore reproduces the state; differs: {differing:?}");
}

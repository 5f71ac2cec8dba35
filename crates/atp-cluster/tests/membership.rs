//! Membership behaviour, one test body run on two stores: the in-memory etcd
//! (paused tokio time) and a real etcd process (real time). A test body gets
//! a [`Fixture`]: stores to build nodes on, and the faults (pause = SIGSTOP,
//! restart = SIGKILL + start on the same data directory).

use std::time::Duration;

use atp_cluster::store::{Store, StoreError, Watch, WatchEvent};
use atp_cluster::testing::Faulty;
use atp_cluster::{LeaseState, LostReason, Member, Members, Membership, MembershipConfig};
use tokio::time::{Instant, timeout};

#[macro_use]
mod common;
use common::{Fixture, WAIT, until};

const TTL_MS: u64 = 2_000;
const MARGIN_MS: u64 = 500;
fn config(node: &str) -> MembershipConfig {
    MembershipConfig {
        lease_ttl_ms: TTL_MS,
        keepalive_interval_ms: 300,
        keepalive_timeout_ms: 500,
        safety_margin_ms: MARGIN_MS,
        request_timeout_ms: 1_000,
        retry_backoff_ms: 50,
        ..MembershipConfig::new("test", node, format!("{node}.local:7000"))
    }
}

fn lists(node: &'static str) -> impl FnMut(&Members) -> bool {
    move |members| members.nodes.contains_key(node)
}

fn held_lease(state: &LeaseState) -> i64 {
    match state {
        LeaseState::Held { lease_id, .. } => *lease_id,
        other => panic!("expected a held lease, got {other:?}"),
    }
}

/// Joins, retrying while the store is still coming back.
async fn join_when_possible(member: &impl Membership) -> i64 {
    let until_time = Instant::now() + WAIT;
    loop {
        match member.join().await {
            Ok(lease_id) => return lease_id,
            Err(error) => assert!(Instant::now() < until_time, "join kept failing: {error}"),
        }
    }
}

on_both_stores!(a_joined_node_is_listed_and_seen_leaving);
async fn a_joined_node_is_listed_and_seen_leaving(fixture: impl Fixture) {
    let a = Member::new(fixture.store().await, config("a")).expect("valid config");
    let b = Member::new(fixture.store().await, config("b")).expect("valid config");
    let mut seen_by_b = b.members();
    let lease_id = a.join().await.expect("join");
    assert_eq!(held_lease(&a.lease_state().borrow()), lease_id);

    let members = until(&mut seen_by_b, "b to list a", lists("a")).await;
    assert_eq!(members.nodes.get("a").map(String::as_str), Some("a.local:7000"));
    assert!(!members.nodes.contains_key("b"), "b never joined");
    assert!(members.revision > 0);
    let mut seen_by_a = a.members();
    until(&mut seen_by_a, "a to list itself", lists("a")).await;

    a.leave().await.expect("leave");
    assert_eq!(*a.lease_state().borrow(), LeaseState::Idle);
    let after =
        until(&mut seen_by_b, "b to see a leave", |members| !members.nodes.contains_key("a")).await;
    assert!(after.revision > members.revision);
}

on_both_stores!(keepalives_hold_the_lease_past_several_ttls);
async fn keepalives_hold_the_lease_past_several_ttls(fixture: impl Fixture) {
    let store = fixture.store().await;
    let a = Member::new(store.clone(), config("a")).expect("valid config");
    let started = Instant::now();
    a.join().await.expect("join");
    let mut state = a.lease_state();
    // The lease must stay held for three TTLs: waiting for anything else times out.
    let held_for = Duration::from_millis(3 * TTL_MS);
    let lost = timeout(held_for, state.wait_for(|state| !matches!(state, LeaseState::Held { .. })))
        .await
        .is_ok();

    assert!(!lost, "the lease was not held for 3 TTLs: {:?}", *state.borrow());
    let LeaseState::Held { deadline, .. } = *state.borrow() else { unreachable!() };
    assert!(deadline > started + held_for, "the deadline did not move with the keepalives");
    let snapshot = store.get_prefix("/atp/test/nodes/").await.expect("read");
    assert_eq!(snapshot.kvs.len(), 1, "the node key is still there: {snapshot:?}");
}

on_both_stores!(a_paused_etcd_means_lost_at_the_deadline_then_a_new_lease);
async fn a_paused_etcd_means_lost_at_the_deadline_then_a_new_lease(fixture: impl Fixture) {
    let a = Member::new(fixture.store().await, config("a")).expect("valid config");
    let b = Member::new(fixture.store().await, config("b")).expect("valid config");
    let first_lease = a.join().await.expect("join");
    let mut state = a.lease_state();
    until(&mut state, "a first renewal", |state| state.is_held_at(Instant::now())).await;

    fixture.pause();
    // Follow every deadline published (a renewal already on the wire may
    // still land) until the state turns Lost.
    let mut last_deadline = None;
    let lost_at = loop {
        match *state.borrow_and_update() {
            LeaseState::Held { deadline, .. } => last_deadline = Some(deadline),
            LeaseState::Lost { lease_id, reason } => {
                assert_eq!(lease_id, first_lease);
                assert_eq!(reason, LostReason::DeadlinePassed);
                break Instant::now();
            }
            LeaseState::Idle => panic!("unexpected idle"),
        }
        timeout(WAIT, state.changed()).await.expect("lost within the wait").expect("sender alive");
    };
    let deadline = last_deadline.expect("a deadline was seen");
    assert!(lost_at >= deadline, "stepped down before the deadline");
    assert!(
        lost_at <= deadline + Duration::from_millis(MARGIN_MS),
        "stepped down {:?} after the deadline",
        lost_at - deadline
    );

    fixture.resume();
    let second_lease = join_when_possible(&a).await;
    assert_ne!(second_lease, first_lease, "a lost lease is never reused");
    assert_eq!(held_lease(&a.lease_state().borrow()), second_lease);
    let mut seen_by_b = b.members();
    until(&mut seen_by_b, "b to list a again", lists("a")).await;
}

on_both_stores!(the_deadline_counts_from_when_the_keepalive_was_sent);
/// A keepalive answered late must not stretch the deadline: etcd renewed the
/// lease when the request arrived, which is no later than when it was sent
/// plus the delay the node sees.
async fn the_deadline_counts_from_when_the_keepalive_was_sent(fixture: impl Fixture) {
    let faulty = Faulty::new(fixture.store().await);
    let a = Member::new(faulty.clone(), config("a")).expect("valid config");
    a.join().await.expect("join");
    let delay = Duration::from_millis(200);
    faulty.delay_keepalive_answers(delay);
    let mut state = a.lease_state();
    let mut renewals = 0;
    while renewals < 3 {
        timeout(WAIT, state.changed()).await.expect("a renewal in time").expect("sender alive");
        let answered_at = Instant::now();
        let LeaseState::Held { deadline, .. } = *state.borrow_and_update() else {
            panic!("lost the lease: {:?}", *state.borrow());
        };
        let latest_allowed = answered_at - delay + Duration::from_millis(TTL_MS - MARGIN_MS);
        assert!(
            deadline <= latest_allowed,
            "deadline {:?} past the send-based one",
            deadline - latest_allowed
        );
        renewals += 1;
    }
}

on_both_stores!(a_timed_out_keepalive_is_retried_on_a_new_stream);
/// Keepalives that time out are retried on a new stream; if one gets through
/// before the deadline the lease is kept (no step-down on one failure).
async fn a_timed_out_keepalive_is_retried_on_a_new_stream(fixture: impl Fixture) {
    let faulty = Faulty::new(fixture.store().await);
    let roomy = MembershipConfig { lease_ttl_ms: 4_000, safety_margin_ms: 1_000, ..config("a") };
    let a = Member::new(faulty.clone(), roomy).expect("valid config");
    let lease_id = a.join().await.expect("join");
    // Answers later than the keepalive timeout (500 ms): every renewal times out.
    faulty.delay_keepalive_answers(Duration::from_millis(600));
    let opens = faulty.clone();
    atp_cluster::testing::wait_for("a keepalive stream re-created", WAIT, move || {
        opens.calls().keepalive_opens >= 2
    })
    .await;
    let mut state = a.lease_state();
    let LeaseState::Held { deadline: stale, .. } = *state.borrow() else {
        panic!("lost the lease on a timed-out keepalive: {:?}", *state.borrow());
    };
    faulty.delay_keepalive_answers(Duration::ZERO);
    let renewed = until(
        &mut state,
        "a renewal after the timeouts",
        |state| !matches!(state, LeaseState::Held { deadline, .. } if *deadline <= stale),
    )
    .await;
    // Lost is final for a lease: still held with the same lease means never lost.
    assert_eq!(held_lease(&renewed), lease_id);
}

on_both_stores!(a_lease_revoked_behind_the_nodes_back_is_lost_at_once);
async fn a_lease_revoked_behind_the_nodes_back_is_lost_at_once(fixture: impl Fixture) {
    let store = fixture.store().await;
    let a = Member::new(store.clone(), config("a")).expect("valid config");
    let lease_id = a.join().await.expect("join");
    let revoked_at = Instant::now();
    store.revoke(lease_id).await.expect("revoke");
    let mut state = a.lease_state();
    let lost =
        until(&mut state, "a to lose its lease", |state| matches!(state, LeaseState::Lost { .. }))
            .await;
    assert_eq!(lost, LeaseState::Lost { lease_id, reason: LostReason::Expired });
    // At the next keepalive, well before any deadline.
    assert!(Instant::now() < revoked_at + Duration::from_millis(TTL_MS - MARGIN_MS));
}

on_both_stores!(a_restart_breaks_streams_and_both_loops_recover);
async fn a_restart_breaks_streams_and_both_loops_recover(mut fixture: impl Fixture) {
    // A longer lease, so that a real etcd restarts well within it.
    let slow =
        |node| MembershipConfig { lease_ttl_ms: 8_000, safety_margin_ms: 1_000, ..config(node) };
    let a = Member::new(fixture.store().await, slow("a")).expect("valid config");
    let b = Member::new(fixture.store().await, slow("b")).expect("valid config");
    let c = Member::new(fixture.store().await, slow("c")).expect("valid config");
    let lease_id = a.join().await.expect("join");
    let mut seen_by_b = b.members();
    until(&mut seen_by_b, "b to list a", lists("a")).await;

    fixture.restart().await;
    let restarted = Instant::now();
    let mut state = a.lease_state();
    let renewed = until(
        &mut state,
        "a renewal after the restart",
        |state| !matches!(state, LeaseState::Held { deadline, .. } if *deadline < restarted),
    )
    .await;
    assert_eq!(held_lease(&renewed), lease_id, "etcd keeps leases across a restart");

    join_when_possible(&c).await;
    let members = until(&mut seen_by_b, "b to list c after the restart", lists("c")).await;
    assert!(members.nodes.contains_key("a"));
}

on_both_stores!(a_broken_watch_resumes_without_missing_a_change);
async fn a_broken_watch_resumes_without_missing_a_change(fixture: impl Fixture) {
    let faulty = Faulty::new(fixture.store().await);
    let a = Member::new(fixture.store().await, config("a")).expect("valid config");
    let b = Member::new(faulty.clone(), config("b")).expect("valid config");
    let c = Member::new(fixture.store().await, config("c")).expect("valid config");
    a.join().await.expect("join");
    let mut seen_by_b = b.members();
    let before = until(&mut seen_by_b, "b to list a", lists("a")).await;

    faulty.open_watches(false);
    faulty.break_watches();
    wait_until_held(&faulty).await;
    c.join().await.expect("join while b is disconnected");
    faulty.open_watches(true);

    let after = until(&mut seen_by_b, "b to list c", lists("c")).await;
    assert!(after.nodes.contains_key("a"));
    let calls = faulty.calls();
    assert_eq!(calls.reads, 1, "resumed without a full read: {calls:?}");
    assert_eq!(calls.watch_starts.last(), Some(&(before.revision + 1)), "{calls:?}");
}

on_both_stores!(a_compacted_watch_reads_everything_again);
async fn a_compacted_watch_reads_everything_again(fixture: impl Fixture) {
    let faulty = Faulty::new(fixture.store().await);
    let store = fixture.store().await;
    let a = Member::new(store.clone(), config("a")).expect("valid config");
    let b = Member::new(faulty.clone(), config("b")).expect("valid config");
    let c = Member::new(store.clone(), config("c")).expect("valid config");
    a.join().await.expect("join");
    let mut seen_by_b = b.members();
    until(&mut seen_by_b, "b to list a", lists("a")).await;

    faulty.open_watches(false);
    faulty.break_watches();
    wait_until_held(&faulty).await;
    c.join().await.expect("join while b is disconnected");
    a.leave().await.expect("leave while b is disconnected");
    let revision = store.get_prefix("/atp/").await.expect("read").revision;
    store.compact(revision).await.expect("compact");
    faulty.open_watches(true);

    let after = until(&mut seen_by_b, "b to list c without a", |members| {
        members.nodes.contains_key("c") && !members.nodes.contains_key("a")
    })
    .await;
    assert!(after.revision >= revision);
    assert_eq!(faulty.calls().reads, 2, "a full read after the compaction");
}

/// Waits until the member watch behind `faulty` is disconnected and held.
async fn wait_until_held<S: Store>(faulty: &Faulty<S>) {
    let faulty = faulty.clone();
    atp_cluster::testing::wait_for("the member watch to be held", WAIT, move || {
        faulty.held_watches() > 0
    })
    .await;
}

on_both_stores!(a_restart_resets_lease_ttls_like_etcd);
/// etcd persists leases and, when a member becomes leader (every restart of
/// a one-member cluster), gives each its full TTL again (plus an election
/// timeout): a lease granted before a restart outlives its original expiry.
/// The in-memory etcd must agree with the real one.
async fn a_restart_resets_lease_ttls_like_etcd(mut fixture: impl Fixture) {
    let store = fixture.store().await;
    let granted = Instant::now();
    let lease = store.grant(Duration::from_secs(3)).await.expect("grant");
    store.put("/atp/test/probe", b"x", lease.id).await.expect("put");
    // The passing of time is what is tested here, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    fixture.restart().await;
    let store = fixture.store().await;
    let read_probe = async || store.get_prefix("/atp/test/probe").await.map(|s| s.kvs.len());
    // Past the original expiry (granted + 3 s), the key is still there.
    let past_original_expiry = granted + Duration::from_millis(3_300);
    tokio::time::sleep_until(past_original_expiry.max(Instant::now())).await;
    assert_eq!(read_probe().await.expect("read"), 1, "the lease outlived its original expiry");
    // It expires a full TTL after the restart (>= granted + 1.5 s + 3 s).
    let until_time = Instant::now() + WAIT;
    while read_probe().await.expect("read") != 0 {
        assert!(Instant::now() < until_time, "the lease never expired");
        tokio::time::sleep(atp_cluster::testing::POLL_INTERVAL).await;
    }
    let gone_at = Instant::now();
    assert!(
        gone_at >= granted + Duration::from_millis(4_400),
        "expired {:?} after the grant",
        gone_at - granted
    );
}

on_both_stores!(a_watch_replays_from_its_start_and_refuses_a_compacted_one);
/// The store semantics membership relies on, checked on the real etcd and the
/// in-memory one alike: one revision per change, a revoked lease deletes its
/// keys, a watch replays history from its start revision, a compacted start
/// revision is refused.
async fn a_watch_replays_from_its_start_and_refuses_a_compacted_one(fixture: impl Fixture) {
    let store = fixture.store().await;
    let prefix = "/atp/test/watched/";
    let lease = store.grant(Duration::from_secs(5)).await.expect("grant");
    let first = store.put("/atp/test/watched/x", b"1", 0).await.expect("put");
    let second = store.put("/atp/test/watched/y", b"2", lease.id).await.expect("put");
    assert_eq!(second, first + 1);
    store.revoke(lease.id).await.expect("revoke");
    let mut watch = store.watch_prefix(prefix, first).await.expect("watch");
    let mut events = Vec::new();
    while events.len() < 3 {
        let batch = timeout(WAIT, watch.next()).await.expect("events in time").expect("events");
        events.extend(batch);
    }
    let event = |revision, key: &str, value: Option<&[u8]>, lease_id| WatchEvent {
        revision,
        key: format!("{prefix}{key}"),
        value: value.map(<[u8]>::to_vec),
        create_revision: if value.is_some() { revision } else { 0 },
        lease_id,
    };
    assert_eq!(
        events,
        [
            event(first, "x", Some(b"1"), 0),
            event(second, "y", Some(b"2"), lease.id),
            event(second + 1, "y", None, 0)
        ]
    );

    store.compact(second + 1).await.expect("compact");
    // etcd refuses on the stream, the in-memory store at once: either is `Compacted`.
    let refused = match store.watch_prefix(prefix, first).await {
        Err(error) => error,
        Ok(mut watch) => {
            timeout(WAIT, watch.next()).await.expect("an answer").expect_err("compacted")
        }
    };
    assert!(
        matches!(refused, StoreError::Compacted { compact_revision } if compact_revision == second + 1),
        "{refused:?}"
    );
}

#[test]
fn configs_that_leave_no_room_for_a_retry_are_refused() {
    let mut config = config("a");
    assert!(config.validate().is_ok());
    config.safety_margin_ms = TTL_MS;
    assert!(config.validate().is_err());
    config.safety_margin_ms = 1_500;
    config.keepalive_interval_ms = 300;
    assert!(config.validate().is_err(), "500 ms usable cannot fit two 500 ms keepalive timeouts");
    let mut config = MembershipConfig::new("test", "a/b", "x");
    assert!(config.validate().is_err());
    config.node_id = "a".into();
    assert!(config.validate().is_ok(), "the defaults are valid");
}

//! Claims and epochs, one test body run on two stores (see `common`): the
//! store's transactions, the coordinator's election and sticky table, the
//! claims each node makes and drops, an etcd restart keeping the epochs,
//! and `reassign --accept-loss`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use atp_cluster::store::{Compare, Store, StoreError, Txn, TxnOp};
use atp_cluster::testing::{Faulty, POLL_INTERVAL};
use atp_cluster::{
    Assignment, Claims, Clock, ClusterKeys, Coordinator, LeaseState, Member, Membership,
    MembershipConfig, Ownership, ReassignError, ReassignRequest, ReassignTarget, SHARD_COUNT,
    ShardMap, ShardState, reassign,
};
use tokio::time::{Instant, timeout};

#[macro_use]
mod common;
use common::{Fixture, WAIT, until};

/// Long enough for a slow etcd on a busy machine, short for paused time.
const NODES: [&str; 3] = ["a", "b", "c"];

fn config(node: &str) -> MembershipConfig {
    MembershipConfig {
        lease_ttl_ms: 2_000,
        keepalive_interval_ms: 300,
        keepalive_timeout_ms: 500,
        safety_margin_ms: 500,
        request_timeout_ms: 1_000,
        retry_backoff_ms: 50,
        ..MembershipConfig::new("test", node, format!("{node}.local:7000"))
    }
}

/// A wall clock on tokio's time (so paused time moves it) that a test can
/// also move forward.
#[derive(Clone)]
struct TestClock {
    start: Instant,
    skipped_ms: Arc<AtomicU64>,
}

impl TestClock {
    fn new() -> Self {
        Self { start: Instant::now(), skipped_ms: Arc::new(AtomicU64::new(0)) }
    }
    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).expect("small");
        1_700_000_000_000 + elapsed + self.skipped_ms.load(Ordering::SeqCst)
    }
    fn skip(&self, duration: Duration) {
        let skipped = u64::try_from(duration.as_millis()).expect("small");
        self.skipped_ms.fetch_add(skipped, Ordering::SeqCst);
    }
    fn clock(&self) -> Clock {
        let this = self.clone();
        Arc::new(move || this.now_ms())
    }
}

/// One atp node's cluster parts.
struct Node<S: Store> {
    name: &'static str,
    member: Member<S>,
    claims: Claims,
    coordinator: Coordinator,
}

impl<S: Store> Node<S> {
    fn start(store: S, name: &'static str, config: MembershipConfig, clock: Clock) -> Self {
        let member = Member::new(store.clone(), config.clone()).expect("valid config");
        let claims =
            Claims::new(store.clone(), config.clone(), member.lease_state()).expect("valid config");
        let coordinator =
            Coordinator::new(store, config, 3, clock, member.lease_state(), member.members())
                .expect("valid config");
        Self { name, member, claims, coordinator }
    }

    fn leading(&self) -> bool {
        *self.coordinator.leading().borrow()
    }

    fn lease_id(&self) -> i64 {
        match *self.member.lease_state().borrow() {
            LeaseState::Held { lease_id, .. } => lease_id,
            ref other => panic!("{} holds no lease: {other:?}", self.name),
        }
    }

    fn serving(&self) -> BTreeMap<u32, i64> {
        self.claims.view().serving_at(Instant::now())
    }
}

/// Waits until an async `check` holds, polling; panics with `what` after [`WAIT`].
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn start_three<S: Store>(
    fixture: &impl Fixture<S = S>,
    config: impl Fn(&str) -> MembershipConfig,
    clock: &TestClock,
) -> Vec<Node<S>> {
    let mut nodes = Vec::new();
    for name in NODES {
        nodes.push(Node::start(fixture.store().await, name, config(name), clock.clock()));
    }
    for node in &nodes {
        node.member.join().await.expect("join");
    }
    nodes
}

async fn table_of<S: Store>(node: &Node<S>) -> Arc<Assignment> {
    let map =
        until(&mut node.claims.shard_map(), "the assignment table", |map| map.assignment.is_some())
            .await;
    map.assignment.expect("waited for it")
}

/// Waits until `node` serves exactly the shards the table gives it; returns
/// their epochs.
async fn serving_its_shards<S: Store>(node: &Node<S>, table: &Assignment) -> BTreeMap<u32, i64> {
    let expected: BTreeSet<u32> = table.shards_of(node.name).collect();
    let what = format!("{} to serve its {} shards", node.name, expected.len());
    let ownership = until(&mut node.claims.ownership(), &what, |ownership| {
        ownership.serving_at(Instant::now()).keys().copied().collect::<BTreeSet<_>>() == expected
    })
    .await;
    ownership.serving_at(Instant::now())
}

/// The claims in the store: shard → (node, create revision, lease).
async fn stored_claims(store: &impl Store) -> BTreeMap<u32, (String, i64, i64)> {
    let keys = ClusterKeys::new("test");
    let snapshot = store.get_prefix(&keys.claims_prefix()).await.expect("read the claims");
    snapshot
        .kvs
        .into_iter()
        .map(|kv| {
            let shard = keys.shard_of_claim(&kv.key).expect("a claim key");
            let node = String::from_utf8(kv.value).expect("utf-8");
            (shard, (node, kv.create_revision, kv.lease_id))
        })
        .collect()
}

on_both_stores!(transactions_compare_and_write_in_one_revision);
async fn transactions_compare_and_write_in_one_revision(fixture: impl Fixture) {
    let store = fixture.store().await;
    let lease = store.grant(Duration::from_secs(5)).await.expect("grant");
    let claim = |key: &str| Txn {
        compares: vec![Compare::absent(key)],
        success: vec![TxnOp::put(key, "a", lease.id), TxnOp::put("/t/other", "x", 0)],
        failure: vec![TxnOp::put("/t/refused", "1", 0)],
    };
    let first = store.txn(claim("/t/claim")).await.expect("txn");
    assert!(first.succeeded);
    let (kv, revision) = store.get("/t/claim").await.expect("get");
    let kv = kv.expect("created");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.lease_id),
        (first.revision, first.revision, lease.id)
    );
    assert_eq!(revision, first.revision, "both puts in one revision");
    let (other, _) = store.get("/t/other").await.expect("get");
    assert_eq!(other.expect("put").mod_revision, first.revision);

    let second = store.txn(claim("/t/claim")).await.expect("txn");
    assert!(!second.succeeded, "the key exists");
    assert_eq!(second.revision, first.revision + 1, "the failure branch wrote");
    assert!(store.get("/t/refused").await.expect("get").0.is_some());

    store.put("/t/claim", b"b", lease.id).await.expect("overwrite");
    let (kv, _) = store.get("/t/claim").await.expect("get");
    let kv = kv.expect("still there");
    assert_eq!(kv.create_revision, first.revision, "an overwrite keeps the create revision");
    let holds = async |compare: Compare| {
        let txn = Txn { compares: vec![compare], ..Txn::default() };
        store.txn(txn).await.expect("txn").succeeded
    };
    assert!(holds(Compare::create_revision("/t/claim", first.revision)).await);
    assert!(holds(Compare::mod_revision("/t/claim", kv.mod_revision)).await);
    assert!(holds(Compare::version("/t/claim", 2)).await);
    assert!(holds(Compare::value("/t/claim", "b")).await);
    assert!(!holds(Compare::value("/t/claim", "a")).await);
    assert!(holds(Compare::create_revision("/t/none", 0)).await, "absent: create revision 0");
    assert!(!holds(Compare::value("/t/none", "")).await, "absent: no value");
    let unchanged = store.get("/t/none").await.expect("get").1;
    assert_eq!(store.delete("/t/none").await.expect("delete"), unchanged, "nothing deleted");

    let bound_to_gone =
        Txn { success: vec![TxnOp::put("/t/late", "x", lease.id + 1_000)], ..Txn::default() };
    let refused = store.txn(bound_to_gone).await.expect_err("an unknown lease");
    assert!(matches!(refused, StoreError::LeaseNotFound(_)), "{refused:?}");
    assert!(store.get("/t/late").await.expect("get").0.is_none());

    store.revoke(lease.id).await.expect("revoke");
    assert!(store.get("/t/claim").await.expect("get").0.is_none(), "gone with its lease");
    let deleted_at = store.delete("/t/other").await.expect("delete");
    assert!(store.get("/t/other").await.expect("get").0.is_none());
    assert!(deleted_at > unchanged);
    let too_large = Txn {
        compares: (0..129).map(|index| Compare::absent(format!("/t/{index}"))).collect(),
        ..Txn::default()
    };
    let refused = store.txn(too_large).await.expect_err("too large");
    assert!(matches!(refused, StoreError::TxnTooLarge(129)), "{refused:?}");
}

on_both_stores!(three_members_elect_one_coordinator_and_claim_every_shard_once);
async fn three_members_elect_one_coordinator_and_claim_every_shard_once(fixture: impl Fixture) {
    let clock = TestClock::new();
    let nodes = start_three(&fixture, config, &clock).await;
    let table = table_of(&nodes[0]).await;
    assert_eq!(nodes.iter().filter(|node| node.leading()).count(), 1, "one coordinator");
    for node in &nodes {
        let count = table.shards_of(node.name).count();
        assert!(count > 200, "{} got {count} shards", node.name);
    }
    assert_eq!(table.nodes(), NODES.into_iter().collect());

    let mut served = BTreeMap::new();
    for node in &nodes {
        for (shard, epoch) in serving_its_shards(node, &table).await {
            served.insert(shard, (node.name.to_owned(), epoch, node.lease_id()));
        }
    }
    assert_eq!(served.len(), SHARD_COUNT as usize);
    let store = fixture.store().await;
    assert_eq!(stored_claims(&store).await, served, "epochs are the claims' create revisions");
    let keys = ClusterKeys::new("test");
    let (table_kv, _) = store.get(&keys.assignment()).await.expect("get");
    let table_kv = table_kv.expect("written");
    assert_eq!(table_kv.create_revision, table_kv.mod_revision, "written once");
    // Every node sees every claim.
    for node in &nodes {
        let all = until(&mut node.claims.shard_map(), "every claim", |map: &ShardMap| {
            map.claims.len() == SHARD_COUNT as usize
        })
        .await;
        for (shard, (owner, epoch, _)) in &served {
            let claim = all.claim(*shard).expect("claimed");
            assert_eq!((&claim.node, claim.epoch), (owner, *epoch));
        }
    }
}

on_both_stores!(a_new_coordinator_keeps_the_table);
async fn a_new_coordinator_keeps_the_table(fixture: impl Fixture) {
    let clock = TestClock::new();
    let nodes = start_three(&fixture, config, &clock).await;
    let table = table_of(&nodes[0]).await;
    let store = fixture.store().await;
    let keys = ClusterKeys::new("test");
    let before = store.get(&keys.assignment()).await.expect("get").0.expect("written");
    let leader = nodes.iter().find(|node| node.leading()).expect("a coordinator");
    store.revoke(leader.lease_id()).await.expect("revoke the coordinator's lease");

    let others: Vec<&Node<_>> = nodes.iter().filter(|node| node.name != leader.name).collect();
    atp_cluster::testing::wait_for("another coordinator", WAIT, || {
        !leader.leading() && others.iter().filter(|node| node.leading()).count() == 1
    })
    .await;
    let successor = others.iter().find(|node| node.leading()).expect("one leads");
    // The successor marks the old coordinator down: it has done a round.
    let mark = keys.down(leader.name);
    eventually("the old coordinator marked down", || async {
        store.get(&mark).await.expect("get").0.is_some()
    })
    .await;
    let after = store.get(&keys.assignment()).await.expect("get").0.expect("still there");
    assert_eq!(after.mod_revision, before.mod_revision, "{} rewrote the table", successor.name);
    assert_eq!(Assignment::decode(&after.value).expect("decodes"), *table);
}

on_both_stores!(a_crashed_coordinators_shards_wait_for_it_to_come_back);
/// A crash (tasks gone, no revoke): the lease expires on its own, another
/// node becomes coordinator, nobody claims the crashed node's shards, and
/// the node restarted under the same id claims them again.
async fn a_crashed_coordinators_shards_wait_for_it_to_come_back(fixture: impl Fixture) {
    let clock = TestClock::new();
    let mut nodes = start_three(&fixture, config, &clock).await;
    let table = table_of(&nodes[0]).await;
    let mut epochs = BTreeMap::new();
    for node in &nodes {
        epochs.insert(node.name, serving_its_shards(node, &table).await);
    }
    let leader = nodes.iter().position(Node::leading).expect("a coordinator");
    let crashed = nodes.remove(leader);
    let name = crashed.name;
    drop(crashed);

    atp_cluster::testing::wait_for("another coordinator", WAIT, || {
        nodes.iter().filter(|node| node.leading()).count() == 1
    })
    .await;
    let store = fixture.store().await;
    let mark = ClusterKeys::new("test").down(name);
    eventually("the crashed node marked down", || async {
        store.get(&mark).await.expect("get").0.is_some()
    })
    .await;
    let claims = stored_claims(&store).await;
    for shard in epochs[name].keys() {
        assert_eq!(claims.get(shard), None, "shard {shard} claimed while {name} is down");
    }
    for node in &nodes {
        assert_eq!(node.serving(), epochs[node.name], "{} kept its shards", node.name);
    }

    let restarted = Node::start(fixture.store().await, name, config(name), clock.clock());
    restarted.member.join().await.expect("join again");
    let again = serving_its_shards(&restarted, &table).await;
    let newest_old = epochs.values().flat_map(BTreeMap::values).max().expect("epochs");
    assert!(again.values().all(|epoch| epoch > newest_old), "new epochs");
    assert!(!restarted.leading(), "the coordinator stays where it moved");
}

on_both_stores!(a_node_restarted_within_its_old_lease_waits_for_its_old_claims);
/// A process restarted at once (new lease) finds its claims still bound to
/// the old lease: it fails closed on its shards (it is not elsewhere) until
/// the old lease expires, then claims them under new epochs.
async fn a_node_restarted_within_its_old_lease_waits_for_its_old_claims(fixture: impl Fixture) {
    let clock = TestClock::new();
    let mut nodes = start_three(&fixture, config, &clock).await;
    let table = table_of(&nodes[0]).await;
    let before = serving_its_shards(&nodes[1], &table).await;
    let old_lease = nodes[1].lease_id();
    drop(nodes.remove(1));

    let restarted = Node::start(fixture.store().await, "b", config("b"), clock.clock());
    restarted.member.join().await.expect("join again");
    let mut map = restarted.claims.shard_map();
    let read_at = until(&mut map, "b to read the map", |map| map.reads > 0).await.revision;
    let mut ownership = restarted.claims.ownership();
    let waiting = until(&mut ownership, "b's states from that map", |ownership| {
        ownership.lease_id != 0 && ownership.lease_id != old_lease && ownership.revision >= read_at
    })
    .await;
    let store = fixture.store().await;
    let claims = stored_claims(&store).await;
    let mut waited_on = 0;
    for shard in before.keys() {
        if claims.get(shard).is_some_and(|(_, _, lease)| *lease == old_lease) {
            waited_on += 1;
            assert_eq!(waiting.shards[*shard as usize], ShardState::FailingClosed);
            assert!(!waiting.serving_at(Instant::now()).contains_key(shard));
        }
    }
    assert!(waited_on > 0, "the old lease expired before the check: nothing was checked");
    let after = serving_its_shards(&restarted, &table).await;
    let newest_old = before.values().max().expect("b had shards");
    assert!(after.values().all(|epoch| epoch > newest_old), "new epochs");
}

on_both_stores!(a_lost_lease_drops_every_shard_at_once_and_a_rejoin_reclaims_them);
async fn a_lost_lease_drops_every_shard_at_once_and_a_rejoin_reclaims_them(fixture: impl Fixture) {
    let clock = TestClock::new();
    let nodes = start_three(&fixture, config, &clock).await;
    let table = table_of(&nodes[0]).await;
    for node in &nodes {
        serving_its_shards(node, &table).await;
    }
    let b = &nodes[1];
    let old_epochs = b.serving();
    let mut ownership = b.claims.ownership();
    ownership.borrow_and_update();
    let store = fixture.store().await;
    store.revoke(b.lease_id()).await.expect("revoke b's lease behind its back");

    // Every published state serves all of b's shards or none.
    loop {
        timeout(WAIT, ownership.changed()).await.expect("a step-down").expect("sender alive");
        let state: Ownership = ownership.borrow_and_update().clone();
        let serving =
            state.shards.iter().filter(|state| matches!(state, ShardState::Serving { .. })).count();
        if serving == 0 {
            for shard in old_epochs.keys() {
                assert_eq!(state.shards[*shard as usize], ShardState::FailingClosed);
            }
            break;
        }
        assert_eq!(serving, old_epochs.len(), "a partial step-down");
    }
    // The claims went with the lease; the coordinator marks b down; nobody
    // else claims b's shards.
    until(&mut nodes[0].claims.shard_map(), "b's claims to vanish", |map| {
        map.claims.values().all(|claim| claim.node != "b")
    })
    .await;
    let mark = ClusterKeys::new("test").down("b");
    eventually("b marked down", || async { store.get(&mark).await.expect("get").0.is_some() })
        .await;
    let claims = stored_claims(&store).await;
    for shard in old_epochs.keys() {
        assert_eq!(claims.get(shard), None, "shard {shard} was claimed by another node");
        for other in [&nodes[0], &nodes[2]] {
            assert!(!other.serving().contains_key(shard), "{} serves {shard}", other.name);
        }
    }

    until(&mut b.member.lease_state(), "b to see its lease lost", |state| {
        matches!(state, LeaseState::Lost { .. })
    })
    .await;
    b.member.join().await.expect("rejoin with a new lease");
    let new_epochs = serving_its_shards(b, &table).await;
    let newest_old = old_epochs.values().max().expect("b had shards");
    assert!(new_epochs.values().all(|epoch| epoch > newest_old), "new, higher epochs");
    let claims = stored_claims(&store).await;
    for (shard, epoch) in &new_epochs {
        assert_eq!(claims[shard], ("b".to_owned(), *epoch, b.lease_id()));
    }
    eventually("b's down mark cleared", || async {
        store.get(&mark).await.expect("get").0.is_none()
    })
    .await;
}

on_both_stores!(an_etcd_restart_keeps_the_claims_and_their_epochs);
async fn an_etcd_restart_keeps_the_claims_and_their_epochs(mut fixture: impl Fixture) {
    // A longer lease, so that a real etcd restarts well within it.
    let slow = |node: &str| MembershipConfig {
        lease_ttl_ms: 8_000,
        safety_margin_ms: 1_000,
        ..config(node)
    };
    let clock = TestClock::new();
    let nodes = start_three(&fixture, slow, &clock).await;
    let table = table_of(&nodes[0]).await;
    let mut before = BTreeMap::new();
    for node in &nodes {
        before.insert(node.name, serving_its_shards(node, &table).await);
    }
    let leases: Vec<i64> = nodes.iter().map(Node::lease_id).collect();

    fixture.restart().await;
    for (node, lease_id) in nodes.iter().zip(leases) {
        until(&mut node.claims.shard_map(), "the claims read again", |map| {
            map.reads >= 2 && map.confirmed
        })
        .await;
        let after = serving_its_shards(node, &table).await;
        assert_eq!(after, before[node.name], "{} resumed under the same epochs", node.name);
        assert_eq!(node.lease_id(), lease_id);
    }
}

on_both_stores!(a_broken_shard_watch_fails_closed_until_the_claims_are_read_again);
async fn a_broken_shard_watch_fails_closed_until_the_claims_are_read_again(fixture: impl Fixture) {
    let clock = TestClock::new();
    let faulty = Faulty::new(fixture.store().await);
    let mut nodes = start_three(&fixture, config, &clock).await;
    // Replace c by one whose store can break its watches (same name, new lease).
    nodes.pop();
    let c = Node::start(faulty.clone(), "c", config("c"), clock.clock());
    c.member.join().await.expect("join");
    let table = table_of(&nodes[0]).await;
    let before = serving_its_shards(&c, &table).await;

    faulty.open_watches(false);
    faulty.break_watches();
    let mut ownership = c.claims.ownership();
    until(&mut ownership, "c to fail closed", |ownership| {
        ownership.serving_at(Instant::now()).is_empty()
            && before
                .keys()
                .all(|shard| ownership.shards[*shard as usize] == ShardState::FailingClosed)
    })
    .await;
    faulty.open_watches(true);
    let after = serving_its_shards(&c, &table).await;
    assert_eq!(after, before, "resumed under the same epochs");
}

on_both_stores!(a_vanished_claim_is_claimed_again_under_a_new_epoch);
async fn a_vanished_claim_is_claimed_again_under_a_new_epoch(fixture: impl Fixture) {
    let clock = TestClock::new();
    let nodes = start_three(&fixture, config, &clock).await;
    let table = table_of(&nodes[0]).await;
    let a = &nodes[0];
    let before = serving_its_shards(a, &table).await;
    let (shard, old_epoch) = before.iter().next().map(|(s, e)| (*s, *e)).expect("a has shards");
    let store = fixture.store().await;
    store.delete(&ClusterKeys::new("test").claim(shard)).await.expect("delete the claim");
    let new_epoch = until(&mut a.claims.ownership(), "the shard claimed again", |ownership| {
        matches!(ownership.state_at(shard, Instant::now()), ShardState::Serving { epoch } if epoch > old_epoch)
    })
    .await
    .serving_at(Instant::now())[&shard];
    assert_eq!(stored_claims(&store).await[&shard], ("a".to_owned(), new_epoch, a.lease_id()));
}

on_both_stores!(reassign_moves_a_dead_nodes_shards_only_with_accept_loss_after_the_grace);
async fn reassign_moves_a_dead_nodes_shards_only_with_accept_loss_after_the_grace(
    fixture: impl Fixture,
) {
    let clock = TestClock::new();
    let nodes = start_three(&fixture, config, &clock).await;
    let table = table_of(&nodes[0]).await;
    for node in &nodes {
        serving_its_shards(node, &table).await;
    }
    let store = fixture.store().await;
    let keys = ClusterKeys::new("test");
    let c_shards: BTreeSet<u32> = table.shards_of("c").collect();
    nodes[2].member.leave().await.expect("c leaves");
    let mark = keys.down("c");
    eventually("c marked down", || async { store.get(&mark).await.expect("get").0.is_some() })
        .await;

    let request = |target: ReassignTarget, accept_loss: bool| ReassignRequest {
        cluster: "test".to_owned(),
        target,
        accept_loss,
        grace_ms: 60_000,
        operator: "alice".to_owned(),
        now_unix_ms: clock.now_ms(),
        request_timeout_ms: 1_000,
    };
    let c = || ReassignTarget::Node("c".to_owned());
    let refused = reassign(&store, &request(c(), false)).await.expect_err("no --accept-loss");
    assert!(matches!(refused, ReassignError::LossNotAccepted), "{refused:?}");
    let refused = reassign(&store, &request(c(), true)).await.expect_err("within the grace");
    assert!(matches!(refused, ReassignError::WithinGrace { .. }), "{refused:?}");
    let alive = ReassignTarget::Node("a".to_owned());
    clock.skip(Duration::from_secs(61));
    let refused = reassign(&store, &request(alive, true)).await.expect_err("a is alive");
    assert!(matches!(refused, ReassignError::NodeAlive(_)), "{refused:?}");
    let a_shard = table.shards_of("a").next().expect("a has shards");
    let refused = reassign(&store, &request(ReassignTarget::Shard(a_shard), true))
        .await
        .expect_err("a is alive");
    assert!(matches!(refused, ReassignError::NodeAlive(_)), "{refused:?}");

    let first = *c_shards.first().expect("c has shards");
    let one = reassign(&store, &request(ReassignTarget::Shard(first), true))
        .await
        .expect("reassign one of c's shards");
    assert_eq!(one.moves.keys().copied().collect::<Vec<_>>(), [first]);
    assert!(store.get(&mark).await.expect("get").0.is_some(), "c still has shards");

    let done = reassign(&store, &request(c(), true)).await.expect("reassign c's other shards");
    let rest: BTreeSet<u32> = c_shards.iter().copied().filter(|shard| *shard != first).collect();
    assert_eq!(done.moves.keys().copied().collect::<BTreeSet<_>>(), rest);
    assert!(done.moves.values().all(|(from, to)| from == "c" && (to == "a" || to == "b")));
    let (audit, _) = store.get(&done.audit_key).await.expect("get");
    let audit = String::from_utf8(audit.expect("an audit entry").value).expect("utf-8");
    for line in ["operator=alice", "dead_node=c", "target=node c", "grace_ms=60000"] {
        assert!(audit.lines().any(|entry| entry == line), "{line} missing from {audit}");
    }
    assert_eq!(audit.lines().filter(|line| line.starts_with("moved=")).count(), rest.len());
    assert_ne!(one.audit_key, done.audit_key, "one audit entry per reassignment");
    assert!(store.get(&mark).await.expect("get").0.is_none(), "the mark went with the shards");

    let mut new_table = (*table).clone();
    for (shard, (_, to)) in one.moves.iter().chain(&done.moves) {
        new_table.set_owner(*shard, to.clone());
    }
    assert_eq!(*table_of_revision(&nodes[0], done.revision).await, new_table);
    let a = serving_its_shards(&nodes[0], &new_table).await;
    let b = serving_its_shards(&nodes[1], &new_table).await;
    assert_eq!(a.len() + b.len(), SHARD_COUNT as usize);
    for shard in &c_shards {
        let epoch = a.get(shard).or(b.get(shard)).expect("served");
        assert!(*epoch > one.revision, "claimed after the move, under a new epoch");
    }
    let again = reassign(&store, &request(c(), true)).await.expect_err("nothing left");
    assert!(matches!(again, ReassignError::NoShards(_)), "{again:?}");

    // c comes back: it is assigned nothing and serves nothing; a and b keep all.
    nodes[2].member.join().await.expect("c joins again");
    let seen = until(&mut nodes[2].claims.ownership(), "c to see the new owners", |ownership| {
        ownership.lease_id != 0
            && c_shards.iter().all(|shard| {
                matches!(&ownership.shards[*shard as usize],
                    ShardState::NotOwned { owner: Some(owner), epoch: Some(_) } if owner != "c")
            })
    })
    .await;
    assert!(seen.serving_at(Instant::now()).is_empty());
    assert_eq!(nodes[0].serving(), a);
    assert_eq!(nodes[1].serving(), b);
}

async fn table_of_revision<S: Store>(node: &Node<S>, revision: i64) -> Arc<Assignment> {
    let map = until(&mut node.claims.shard_map(), "the new table", |map| {
        map.assignment_revision >= revision
    })
    .await;
    map.assignment.expect("a table")
}

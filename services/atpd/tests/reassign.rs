//! `atpctl shard reassign --accept-loss` with real parts: one real etcd,
//! three real `atpd` processes and the real `atpctl` binary. A SIGKILLed
//! node's shards stay unserved until its grace period has passed; before
//! that, and without `--accept-loss`, a reassign is refused and etcd is
//! unchanged; after it, a reassign through a survivor moves every shard of
//! the dead node to the survivors, which claim them under new epochs and
//! serve them, with an audit entry in etcd, and the epoch checker passes.
//! A single node refuses the call. Skipped without an etcd binary (failed
//! if `CI` is set).

mod common;
#[path = "common/three_nodes.rs"]
mod three_nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use atp_cluster::store::{KeyValue, Store};
use atp_cluster::testing::EtcdProcess;
use atp_cluster::{Assignment, ClusterKeys, EtcdStore, SHARD_COUNT};
use atp_core::hash::shard_of;
use atp_proto::v1;
use atp_proto::v1::reassign_shards_request::Target;
use common::{Atpd, eventually};
use serde_json::Value;
use three_nodes::{Cluster, DEADLINE, claims};
use tonic::Code;

/// The nodes' `reassign_grace_ms`: long enough that a reassign right after
/// the down mark appears is refused even on a loaded machine, short enough
/// for the test.
const GRACE_MS: u64 = 6_000;

/// The `atpctl` binary, built by `cargo build -p atpctl` the first time.
fn atpctl_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "atpctl", "--bin", "atpctl"])
            .current_dir(&workspace)
            .status()
            .expect("run cargo build -p atpctl");
        assert!(status.success(), "cargo build -p atpctl failed: {status}");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace.join("target"), PathBuf::from);
        let binary = target.join("debug").join(format!("atpctl{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.exists(), "no atpctl at {}", binary.display());
        binary
    })
}

/// Runs `atpctl --addr ADDR ARGS…`.
async fn atpctl(addr: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(atpctl_binary())
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("ATP_ADDR")
        .output()
        .await
        .expect("run the atpctl binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One key's current entry.
async fn get(store: &EtcdStore, key: &str) -> Option<KeyValue> {
    store.get(key).await.expect("read etcd").0
}

/// The assignment table in etcd and its entry.
async fn table(store: &EtcdStore, keys: &ClusterKeys) -> (Assignment, KeyValue) {
    let entry = get(store, &keys.assignment()).await.expect("an assignment table");
    (Assignment::decode(&entry.value).expect("a readable table"), entry)
}

/// The audit entries in etcd.
async fn audit_entries(store: &EtcdStore, keys: &ClusterKeys) -> Vec<KeyValue> {
    store.get_prefix(&keys.audit_prefix()).await.expect("read the audit entries").kvs
}

fn now_unix_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch");
    u64::try_from(since.as_millis()).expect("fits")
}

fn reassign_request(target: Target, accept_loss: bool) -> v1::ReassignShardsRequest {
    v1::ReassignShardsRequest { target: Some(target), accept_loss, operator: "tester".into() }
}

/// `node` refuses `request` with FAILED_PRECONDITION; its message.
async fn refused(node: &Atpd, request: v1::ReassignShardsRequest) -> String {
    let status = match node.admin().reassign_shards(request).await {
        Ok(moved) => panic!("not refused: {} shards moved", moved.get_ref().moves.len()),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    status.message().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_shards_move_to_the_survivors_after_the_grace_period() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let name = "reassign";
    // The harness's short leases, and [`GRACE_MS`].
    let grace = GRACE_MS.to_string();
    let mut cluster =
        Cluster::start_with(&etcd, name, &[("ATP_REASSIGN_GRACE_MS", grace.as_str())]).await;
    let (store, keys, ids) = (cluster.store.clone(), cluster.keys.clone(), cluster.ids.clone());
    let (before, _) = table(&store, &keys).await;
    let victim = ids[2].clone();
    let orphaned: BTreeSet<u32> = before.shards_of(&victim).collect();
    assert!(!orphaned.is_empty(), "the victim has shards");
    let mut dead = cluster.nodes.pop().expect("three nodes");
    let nodes = &cluster.nodes;
    let survivor = &nodes[0];

    // A live node's shards are not moved.
    let alive = refused(survivor, reassign_request(Target::NodeId(victim.clone()), true)).await;
    assert!(alive.contains("is alive"), "{alive}");
    let mut admin = survivor.admin();
    let bad = admin.reassign_shards(reassign_request(Target::Shard(SHARD_COUNT), true)).await;
    let bad = bad.expect_err("no such shard");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    // SIGKILL, never restarted: its lease expires, the coordinator marks it down.
    dead.kill();
    let marked = eventually(DEADLINE, || async {
        let claims = claims(&store, &keys).await;
        get(&store, &keys.down(&victim)).await.is_some()
            && claims.values().all(|(owner, _)| owner != &victim)
    })
    .await;
    assert!(marked, "the killed node was never marked down");
    let mark = get(&store, &keys.down(&victim)).await.expect("a down mark");
    let down_since: u64 = String::from_utf8_lossy(&mark.value).parse().expect("unix ms");
    let (_, table_before) = table(&store, &keys).await;

    // Refused without accept_loss, then within the grace period; nothing changes.
    let no_loss = refused(survivor, reassign_request(Target::NodeId(victim.clone()), false)).await;
    assert!(no_loss.contains("accept_loss"), "{no_loss}");
    let early = refused(survivor, reassign_request(Target::NodeId(victim.clone()), true)).await;
    assert!(early.contains("grace period") && early.contains("retry in"), "{early}");
    let one_shard = *orphaned.first().expect("a shard");
    let early_shard = refused(survivor, reassign_request(Target::Shard(one_shard), true)).await;
    assert!(early_shard.contains("grace period"), "{early_shard}");
    let addr = survivor.endpoint();
    let local = atpctl(&addr, &["shard", "reassign", "--node", &victim]).await;
    assert_eq!(local.status.code(), Some(2), "{}", stderr(&local));
    assert!(stderr(&local).contains("--accept-loss") && stderr(&local).contains("lost"));
    let (_, table_now) = table(&store, &keys).await;
    assert_eq!(table_now.mod_revision, table_before.mod_revision, "the table changed");
    let mark_now = get(&store, &keys.down(&victim)).await.expect("the down mark stays");
    assert_eq!(mark_now.mod_revision, mark.mod_revision, "the down mark changed");
    assert!(audit_entries(&store, &keys).await.is_empty(), "an audit entry was written");

    // Once the grace period has passed (same clock as the nodes'), through
    // the real atpctl on a survivor.
    let grace_over =
        eventually(DEADLINE, || async { now_unix_ms() >= down_since + GRACE_MS }).await;
    assert!(grace_over);
    // One shard first (through the RPC): the node keeps its other shards
    // and its down mark.
    let request = reassign_request(Target::Shard(one_shard), true);
    let single = survivor.admin().reassign_shards(request).await.expect("moved").into_inner();
    assert_eq!(single.moves.len(), 1, "{single:?}");
    let single_move = &single.moves[0];
    assert_eq!((single_move.shard, single_move.from_node.as_str()), (one_shard, victim.as_str()));
    assert!(ids[..2].contains(&single_move.to_node), "{single_move:?}");
    assert!(get(&store, &keys.down(&victim)).await.is_some(), "the node has shards left");
    assert_eq!(audit_entries(&store, &keys).await.len(), 1);

    // Then the rest, through the real atpctl.
    let output = atpctl(
        &addr,
        &[
            "--json",
            "shard",
            "reassign",
            "--node",
            &victim,
            "--accept-loss",
            "--operator",
            "tester",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let answer: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    let mut moves: BTreeMap<u32, (String, String)> = answer["moves"]
        .as_array()
        .expect("moves")
        .iter()
        .map(|shard_move| {
            let text = |field: &str| shard_move[field].as_str().expect("a node id").to_owned();
            let shard = u32::try_from(shard_move["shard"].as_u64().expect("a shard")).expect("u32");
            (shard, (text("from"), text("to")))
        })
        .collect();
    let rest: BTreeSet<u32> =
        orphaned.iter().copied().filter(|shard| *shard != one_shard).collect();
    assert_eq!(moves.keys().copied().collect::<BTreeSet<_>>(), rest, "every shard left");
    let survivors: BTreeSet<&str> = [ids[0].as_str(), ids[1].as_str()].into();
    for (shard, (from, to)) in &moves {
        assert_eq!(from, &victim, "shard {shard}");
        assert!(survivors.contains(to.as_str()), "shard {shard} to {to}");
    }
    let revision = answer["revision"].as_i64().expect("a revision");

    // etcd: the new table (nothing left to the victim), the audit entry, no mark.
    let (after, entry) = table(&store, &keys).await;
    assert_eq!(entry.mod_revision, revision);
    assert_eq!(after.shards_of(&victim).count(), 0);
    for (shard, (_, to)) in &moves {
        assert_eq!(after.owner(*shard), to, "shard {shard}");
    }
    assert_eq!(after.owner(one_shard), single_move.to_node);
    let audit_key = answer["audit_key"].as_str().expect("an audit key");
    let audit = get(&store, audit_key).await.expect("the audit entry");
    assert_eq!(audit.create_revision, revision);
    let audit = String::from_utf8_lossy(&audit.value).into_owned();
    assert!(audit.contains("operator=tester\n"), "{audit}");
    assert!(audit.contains(&format!("dead_node={victim}\n")), "{audit}");
    assert_eq!(audit.lines().filter(|line| line.starts_with("moved=")).count(), moves.len());
    assert!(get(&store, &keys.down(&victim)).await.is_none(), "the down mark stays");
    let logged = eventually(DEADLINE, || async {
        let log = survivor.log();
        log.contains("shard reassign --accept-loss") && log.contains("tester")
    })
    .await;
    assert!(logged, "no warning logged:\n{}", survivor.log());

    // The survivors claim the moved shards under new epochs and serve them.
    moves.insert(one_shard, (victim.clone(), single_move.to_node.clone()));
    let claimed = eventually(DEADLINE, || async {
        let now = claims(&store, &keys).await;
        moves.iter().all(|(shard, (_, to))| {
            let moved_at = if *shard == one_shard { single.revision } else { revision };
            now.get(shard).is_some_and(|(owner, epoch)| owner == to && *epoch > moved_at)
        })
    })
    .await;
    assert!(claimed, "the moved shards were not claimed by their new owners");
    let now = claims(&store, &keys).await;
    let new_owner = &moves[&one_shard].1;
    let owns = |key: &str| moves.get(&shard_of(key)).is_some_and(|(_, to)| to == new_owner);
    let id = (0..).map(|n| format!("order-{n}")).find(|id| owns(id)).expect("an id");
    let sku = (0..).map(|n| format!("sku-{n}")).find(|sku| owns(sku)).expect("a sku");
    let owner = &nodes[ids.iter().position(|id| id == new_owner).expect("a survivor")];
    owner.configure_web(&["dc-1"], &["dc-1"]).await;
    owner.receive(&sku, "dc-1", 10).await;
    let request = v1::ReserveRequest {
        reservation_id: id.clone(),
        channel_id: "web".into(),
        lines: vec![v1::ReservationLine { sku, location_id: "dc-1".into(), quantity: 2 }],
        ttl_seconds: 0,
        metadata: None,
    };
    let reserved = owner.availability().reserve(request).await.expect("served").into_inner();
    assert_eq!(reserved.epoch, u64::try_from(now[&shard_of(&id)].1).expect("positive"));
    // The other survivor routes the moved shard to its new owner too.
    let other = nodes.iter().find(|node| node.address != owner.address).expect("two survivors");
    let routed = eventually(DEADLINE, || async {
        let request = v1::GetReservationRequest { reservation_id: id.clone() };
        other.availability().get_reservation(request).await.is_ok()
    })
    .await;
    assert!(routed, "the other survivor never forwarded to the new owner");

    // A reassign again: nothing left to move, nothing changes.
    let again = refused(survivor, reassign_request(Target::NodeId(victim.clone()), true)).await;
    assert!(again.contains("has no shards"), "{again}");
    assert_eq!(audit_entries(&store, &keys).await.len(), 2);

    cluster.check_epochs(&etcd).await;
}

#[tokio::test]
async fn a_single_node_refuses_to_reassign() {
    let atpd = Atpd::start(&[("ATP_NODE_NAME", "solo")]).await;
    let message = refused(&atpd, reassign_request(Target::Shard(3), true)).await;
    assert!(message.contains("not a cluster"), "{message}");
    let addr = atpd.endpoint();
    let output = atpctl(&addr, &["shard", "reassign", "--shard", "3", "--accept-loss"]).await;
    assert_eq!(output.status.code(), Some(4), "refused by the server: {}", stderr(&output));
    assert!(stderr(&output).contains("not a cluster"), "{}", stderr(&output));
    let local = atpctl(&addr, &["shard", "reassign", "--shard", "3"]).await;
    assert_eq!(local.status.code(), Some(2), "refused locally: {}", stderr(&local));
    assert!(stderr(&local).contains("--accept-loss"), "{}", stderr(&local));
    // `shard N` still shows a shard.
    let shown = atpctl(&addr, &["--json", "shard", "17"]).await;
    assert!(shown.status.success(), "{}", stderr(&shown));
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    assert_eq!(shown["shard"], 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_unavailable() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let data = tempfile::tempdir().expect("a data directory");
    let endpoint = etcd.endpoint();
    let variables = [
        ("ATP_ETCD_ENDPOINTS", endpoint.as_str()),
        ("ATP_CLUSTER_NAME", "unreachable"),
        ("ATP_INITIAL_MEMBERS", "1"),
        ("ATP_REASSIGN_GRACE_MS", "0"),
    ];
    let atpd = Atpd::start_in(data.path(), &variables).await;
    let store = etcd.store().await;
    let keys = ClusterKeys::new("unreachable");
    let claimed = eventually(DEADLINE, || async {
        claims(&store, &keys).await.len() == SHARD_COUNT as usize
    })
    .await;
    assert!(claimed, "the node never claimed its shards:\n{}", atpd.log());

    etcd.pause();
    let mut request = tonic::Request::new(reassign_request(Target::NodeId("gone".into()), true));
    request.set_timeout(Duration::from_secs(15));
    let started = tokio::time::Instant::now();
    let status = atpd.admin().reassign_shards(request).await.expect_err("etcd is stopped");
    etcd.resume();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("etcd"), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

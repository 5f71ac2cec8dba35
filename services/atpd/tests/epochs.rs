//! Epochs with real parts: one real etcd, three real `atpd` processes.
//!
//! - A request carrying a stale `x-atp-epoch` is refused with ABORTED
//!   `STALE_EPOCH` naming the current owner and epoch, by the owner and
//!   through another node (which forwards it with the header); a single
//!   node takes only epoch 1.
//! - A node SIGSTOPped past its lease deadline while writes go on to it,
//!   then SIGCONTed, serves its shards again under higher epochs and wrote
//!   nothing under its old ones after it continued; a node SIGKILLed and
//!   restarted on its data directory likewise. After each, the epoch checker
//!   (`atp_cluster::testing::epochs`) passes over every node's write log
//!   and etcd's claim history.
//!
//! Skipped without an etcd binary (failed if `CI` is set).

mod common;
#[path = "common/three_nodes.rs"]
mod three_nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atp_cluster::testing::EtcdProcess;
use atp_cluster::testing::epochs::parse_write_log;
use atp_core::hash::shard_of;
use atp_proto::v1;
use atp_server::EPOCH_HEADER;
use common::{Atpd, POLL_INTERVAL, eventually};
use three_nodes::{Cluster, DEADLINE, claims, start};
use tokio::task::JoinHandle;
use tonic::{Code, Request};
use tonic_types::StatusExt;

impl Cluster {
    /// The write log of node `index`: (epoch, host ms) per line.
    fn logged(&self, index: usize) -> Vec<(u64, u64)> {
        let text = std::fs::read_to_string(&self.write_logs()[index]).unwrap_or_default();
        let writes = parse_write_log(&text).expect("a well-formed write log");
        writes.iter().map(|write| (write.epoch, write.time_ms)).collect()
    }
}

/// Host wall-clock time, as the write log writes it.
fn now_ms() -> u64 {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
    u64::try_from(elapsed.as_millis()).expect("fits")
}

fn reserve_request(id: &str, sku: &str) -> v1::ReserveRequest {
    v1::ReserveRequest {
        reservation_id: id.into(),
        channel_id: "web".into(),
        lines: vec![v1::ReservationLine {
            sku: sku.into(),
            location_id: "dc-1".into(),
            quantity: 1,
        }],
        ttl_seconds: 0,
        metadata: None,
    }
}

/// `message` carrying `epoch` in `x-atp-epoch`.
fn carrying<T>(message: T, epoch: i64) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(EPOCH_HEADER, epoch.to_string().parse().expect("ascii"));
    request.set_timeout(Duration::from_secs(5));
    request
}

/// Reservation ids (`{prefix}-{n}`) homed on shards `owner` owns.
fn ids_owned_by<'a>(
    claims: &'a BTreeMap<u32, (String, i64)>,
    owner: &'a str,
    prefix: &'a str,
) -> impl Iterator<Item = String> + 'a {
    (0..).map(move |n| format!("{prefix}-{n}")).filter(move |id| claims[&shard_of(id)].0 == owner)
}

/// A SKU whose shard `owner` owns.
fn sku_owned_by(claims: &BTreeMap<u32, (String, i64)>, owner: &str) -> String {
    (0..).map(|n| format!("sku-{n}")).find(|sku| claims[&shard_of(sku)].0 == owner).expect("a sku")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_carried_epoch_is_aborted_naming_the_owner() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let cluster = Cluster::start(&etcd, "stale").await;
    let claims = claims(&cluster.store, &cluster.keys).await;
    let (owner, other) = (&cluster.nodes[0], &cluster.nodes[1]);
    let sku = sku_owned_by(&claims, &cluster.ids[0]);
    owner.configure_web(&["dc-1"], &["dc-1"]).await;
    owner.receive(&sku, "dc-1", 100).await;
    let mut ids = ids_owned_by(&claims, &cluster.ids[0], "order");

    // The current epoch, through the owner and through another node: served.
    for node in [owner, other] {
        let id = ids.next().expect("an id");
        let current = claims[&shard_of(&id)].1;
        // The shard is served once its node has read the map: wait for it.
        let served =
            eventually(DEADLINE, || {
                let (mut client, id, sku) = (node.availability(), id.clone(), sku.clone());
                async move {
                    client.reserve(carrying(reserve_request(&id, &sku), current)).await.is_ok()
                }
            })
            .await;
        assert!(served, "a Reserve under the current epoch {current} was never served");
        let again = node
            .availability()
            .reserve(carrying(reserve_request(&id, &sku), current))
            .await
            .expect("the same Reserve again")
            .into_inner();
        assert_eq!(again.epoch, current as u64);
    }

    // A stale epoch (lower, and higher), through the owner and through
    // another node, which forwards the header: ABORTED, nothing held.
    for (node, stale_by) in [(owner, -1), (other, -1), (owner, 1), (other, 1)] {
        let id = ids.next().expect("an id");
        let shard = shard_of(&id);
        let current = claims[&shard].1;
        let request = carrying(reserve_request(&id, &sku), current + stale_by);
        let answer = node.availability().reserve(request).await;
        let refused = answer.expect_err(&format!(
            "epoch {} (current {current}) through {}",
            current + stale_by,
            node.address
        ));
        assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
        let info = refused.get_details_error_info().expect("an ErrorInfo");
        assert_eq!(info.reason, "STALE_EPOCH", "{refused:?}");
        assert_eq!(info.metadata["shard"], shard.to_string());
        assert_eq!(info.metadata["owner"], cluster.ids[0]);
        assert_eq!(info.metadata["owner_address"], owner.address.to_string());
        assert_eq!(info.metadata["epoch"], current.to_string());
        match atp_client::Error::from_status(&refused) {
            atp_client::Error::StaleEpoch { shard: named, owner: owner_id, epoch, .. } => {
                assert_eq!(named, i64::from(shard));
                assert_eq!(owner_id, cluster.ids[0]);
                assert_eq!(epoch, Some(current as u64));
            }
            other => panic!("not read as StaleEpoch: {other:?}"),
        }
        let read = owner
            .availability()
            .get_reservation(v1::GetReservationRequest { reservation_id: id.clone() })
            .await
            .expect_err("nothing was held");
        assert_eq!(read.code(), Code::NotFound, "{read:?}");
    }

    // Commit and a read carry it too (their home shard's epoch).
    let id = ids.next().expect("an id");
    let current = claims[&shard_of(&id)].1;
    let mut client = other.availability();
    client.reserve(carrying(reserve_request(&id, &sku), current)).await.expect("held");
    let commit = v1::CommitRequest { reservation_id: id.clone(), lines: vec![] };
    let refused = client.commit(carrying(commit.clone(), current + 7)).await.expect_err("stale");
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    client.commit(carrying(commit, current)).await.expect("committed under the current epoch");
    let read = v1::GetReservationRequest { reservation_id: id.clone() };
    let refused = client.get_reservation(carrying(read, current - 1)).await.expect_err("stale");
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");

    let summary = cluster.check_epochs(&etcd).await;
    assert!(summary.writes > 0, "{summary:?}");
}

#[tokio::test]
async fn a_single_node_takes_only_epoch_one() {
    let atpd = Atpd::start(&[]).await;
    atpd.configure_web(&["dc-1"], &["dc-1"]).await;
    atpd.receive("mug", "dc-1", 10).await;
    let mut client = atpd.availability();
    let held = client.reserve(carrying(reserve_request("r-1", "mug"), 1)).await.expect("epoch 1");
    assert_eq!(held.into_inner().epoch, 1);
    let refused =
        client.reserve(carrying(reserve_request("r-2", "mug"), 2)).await.expect_err("epoch 2");
    assert_eq!(refused.code(), Code::Aborted, "{refused:?}");
    let info = refused.get_details_error_info().expect("an ErrorInfo");
    assert_eq!((info.reason.as_str(), info.metadata["epoch"].as_str()), ("STALE_EPOCH", "1"));
    let mut request = Request::new(reserve_request("r-3", "mug"));
    request.metadata_mut().insert(EPOCH_HEADER, "soon".parse().expect("ascii"));
    let refused = client.reserve(request).await.expect_err("not a number");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}

/// Reserves that go on while a test stops and continues a node: one at a
/// time, alternately straight to the victim and through another node. The
/// gate is held around each request, so the test can wait for none to be in
/// flight before it stops the victim.
struct Writer {
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Served Reserves: (host ms when answered, the reply's epoch).
    served: Arc<Mutex<Vec<(u64, u64)>>>,
    task: JoinHandle<()>,
}

type AvailabilityClient =
    v1::availability_service_client::AvailabilityServiceClient<tonic::transport::Channel>;

impl Writer {
    /// Reserves one unit of `sku` for id after id homed on `owner`'s shards
    /// (per `claims`), through `clients` in turn.
    fn start(
        clients: Vec<AvailabilityClient>,
        claims: BTreeMap<u32, (String, i64)>,
        owner: String,
        prefix: &str,
        sku: String,
    ) -> Self {
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let served = Arc::new(Mutex::new(Vec::new()));
        let (task_gate, task_served, prefix) =
            (Arc::clone(&gate), Arc::clone(&served), prefix.to_owned());
        let task = tokio::spawn(async move {
            let ids = ids_owned_by(&claims, &owner, &prefix);
            for (id, mut client) in ids.zip(clients.iter().cycle().cloned()) {
                let _in_flight = task_gate.lock().await;
                let mut request = Request::new(reserve_request(&id, &sku));
                request.set_timeout(Duration::from_secs(1));
                if let Ok(reply) = client.reserve(request).await {
                    task_served.lock().expect("lock").push((now_ms(), reply.into_inner().epoch));
                    // A Reserve is answered once applied, before its last
                    // batch is durable; a read of it on its home shard is
                    // answered after that batch. So with the gate held,
                    // nothing of the victim's is on its way to disk.
                    let mut read = Request::new(v1::GetReservationRequest { reservation_id: id });
                    read.set_timeout(Duration::from_secs(1));
                    let _ = client.get_reservation(read).await;
                }
            }
        });
        Self { gate, served, task }
    }

    /// Whether a Reserve was served at or after `since_ms` under an epoch
    /// not in `old`.
    fn served_since(&self, since_ms: u64, old: &BTreeSet<u64>) -> bool {
        let served = self.served.lock().expect("lock");
        served.iter().any(|(at, epoch)| *at >= since_ms && !old.contains(epoch))
    }

    fn count(&self) -> usize {
        self.served.lock().expect("lock").len()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// The epochs `owner`'s claims have in `claims`.
fn epochs_of(claims: &BTreeMap<u32, (String, i64)>, owner: &str) -> BTreeSet<u64> {
    claims.values().filter(|(node, _)| node == owner).map(|(_, epoch)| *epoch as u64).collect()
}

/// Waits until `owner` holds again every shard it held in `before`, each
/// under a higher epoch; returns the claims then.
async fn reclaimed(
    cluster: &Cluster,
    before: &BTreeMap<u32, (String, i64)>,
    owner: &str,
) -> BTreeMap<u32, (String, i64)> {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = claims(&cluster.store, &cluster.keys).await;
        let again =
            before.iter().filter(|(_, (node, _))| node == owner).all(|(shard, (_, epoch))| {
                now.get(shard).is_some_and(|(node, now_epoch)| node == owner && now_epoch > epoch)
            });
        if again {
            return now;
        }
        assert!(tokio::time::Instant::now() < until, "{owner} never claimed its shards again");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until etcd holds no claim of `owner` (its lease expired).
async fn claims_gone(cluster: &Cluster, owner: &str) {
    let gone = eventually(DEADLINE, || async {
        claims(&cluster.store, &cluster.keys).await.values().all(|(node, _)| node != owner)
    })
    .await;
    assert!(gone, "{owner}'s claims never expired");
}

/// Waits until `writer` has a Reserve served since `since_ms` under an
/// epoch not in `old`.
async fn serves_again(
    writer: &Writer,
    since_ms: u64,
    old: &BTreeSet<u64>,
    log: impl Fn() -> String,
) {
    let again = eventually(DEADLINE, || async { writer.served_since(since_ms, old) }).await;
    assert!(again, "no Reserve was served under a new epoch; the node's log:\n{}", log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_or_killed_node_never_writes_under_its_old_epochs_again() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let mut cluster = Cluster::start(&etcd, "paused").await;
    let before = claims(&cluster.store, &cluster.keys).await;
    let victim = cluster.ids[2].clone();
    let sku = sku_owned_by(&before, &victim);
    cluster.nodes[2].configure_web(&["dc-1"], &["dc-1"]).await;
    cluster.nodes[2].receive(&sku, "dc-1", 1_000_000).await;
    let clients =
        |cluster: &Cluster| vec![cluster.nodes[2].availability(), cluster.nodes[0].availability()];
    let writer =
        Writer::start(clients(&cluster), before.clone(), victim.clone(), "paused", sku.clone());
    let writing = eventually(DEADLINE, || async { writer.count() >= 10 }).await;
    assert!(writing, "the writes never got going; the victim's log:\n{}", cluster.nodes[2].log());

    // Stopped (with no Reserve in flight) past its lease deadline while
    // the writer goes on sending to it and through node 0.
    let old = epochs_of(&before, &victim);
    let gate = writer.gate.lock().await;
    signal(cluster.nodes[2].pid(), "STOP");
    drop(gate);
    claims_gone(&cluster, &victim).await;
    let continued_at = now_ms();
    signal(cluster.nodes[2].pid(), "CONT");
    let after_pause = reclaimed(&cluster, &before, &victim).await;
    serves_again(&writer, continued_at, &old, || cluster.nodes[2].log()).await;
    drop(writer);

    let summary = cluster.check_epochs(&etcd).await;
    eprintln!("after the pause: {summary:?}");
    assert!(summary.shards_with_several_epochs > 0, "{summary:?}");
    let logged = cluster.logged(2);
    let late_old: Vec<_> =
        logged.iter().filter(|(epoch, at)| old.contains(epoch) && *at >= continued_at).collect();
    assert!(late_old.is_empty(), "written under an old epoch after SIGCONT: {late_old:?}");
    assert!(
        logged.iter().any(|(epoch, at)| *at >= continued_at && !old.contains(epoch)),
        "nothing written after SIGCONT"
    );
    assert!(logged.iter().any(|(epoch, _)| old.contains(epoch)), "nothing written before SIGSTOP");

    // Killed and started again on its data directory: higher epochs again.
    let old = epochs_of(&after_pause, &victim);
    cluster.nodes[2].kill();
    claims_gone(&cluster, &victim).await;
    let restarted_at = now_ms();
    cluster.nodes[2] = start(cluster.data[2].path(), &cluster.variables).await;
    reclaimed(&cluster, &after_pause, &victim).await;
    let writer = Writer::start(clients(&cluster), before.clone(), victim.clone(), "killed", sku);
    serves_again(&writer, restarted_at, &old, || cluster.nodes[2].log()).await;
    drop(writer);

    let summary = cluster.check_epochs(&etcd).await;
    eprintln!("after the restart: {summary:?}");
    let logged = cluster.logged(2);
    let late_old: Vec<_> =
        logged.iter().filter(|(epoch, at)| old.contains(epoch) && *at >= restarted_at).collect();
    assert!(late_old.is_empty(), "written under an old epoch after the restart: {late_old:?}");
}

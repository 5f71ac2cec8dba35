//! Faults under load: one real etcd, three real `atpd` processes, and
//! `atp-loadgen`'s checkout scenario (reserve 1–3 lines, then commit,
//! release or let expire) sent through all three nodes while one node is
//!
//! - SIGKILLed and restarted on its data directory,
//! - SIGSTOPped until etcd has expired its lease, then SIGCONTinued,
//! - cut off from etcd, clients and the other nodes by its network
//!   namespace's link (packets dropped both ways) until etcd has expired
//!   its lease, then reconnected (needs root, see `atp_testkit::netns`).
//!
//! After each fault the test waits (conditions with deadlines) until every
//! node answers for every shard as etcd's claims say, lets the load run on,
//! then runs the load generator's checker: no acknowledged reservation
//! lost, nothing oversold, units conserved. It also checks where calls
//! failed: every failure other than `INSUFFICIENT_STOCK` happened between
//! the fault and the moment the cluster had settled again, and either went
//! to the faulted node itself or touched a shard that node owns (the
//! reservation's home or a line's SKU). Load goes through the faulted node
//! too: its own clients fail for any shard, which is allowed, and the
//! others must not notice anything beyond its shards.
//!
//! Also: etcd SIGSTOPped while the nodes' lease deadlines hold (they keep
//! serving), then past them (every node fails closed on its shards before
//! etcd could expire its lease), then resumed (they serve again on their
//! own). Short versions always run; `ATP_LONG_TESTS=1` adds more faults per
//! test and the 30 s etcd outage. `ATP_FAULT_SEED` replays a run's timing
//! and request mix. Skipped without an etcd binary (failed if `CI` is set).

mod common;
#[path = "common/three_nodes.rs"]
mod three_nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use atp_cluster::store::Store;
use atp_cluster::testing::EtcdProcess;
use atp_cluster::{ClusterKeys, EtcdStore, SHARD_COUNT};
use atp_core::hash::shard_of;
use atp_loadgen::stats::{Failure, unix_ms};
use atp_loadgen::{Config, Mode, Report, Scenario, check, run_until, setup};
use atp_proto::v1;
use atp_testkit::netns::NetNs;
use common::{Atpd, eventually};
use futures::future::join_all;
use three_nodes::{
    Answer, agrees, answers_within, claims_in, epoch_check, probe_ids, until_consistent, variables,
};
use tonic::{Code, Request};

/// Longest wait for a condition (a loaded 2-core machine; polled, not waited out).
const DEADLINE: Duration = Duration::from_secs(30);
/// How long a probe waits for one node's answer (it may be stopped or cut off).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// The faulted node (node 2 of 0..3).
const VICTIM: usize = 2;
/// How long the load goes on once the cluster settled after the last fault.
const LOAD_AFTER_FAULTS: Duration = Duration::from_secs(3);

/// Whether the long versions run (`ATP_LONG_TESTS=1`).
fn long_tests() -> bool {
    std::env::var("ATP_LONG_TESTS").is_ok_and(|value| value == "1")
}

/// The seed of this run: `ATP_FAULT_SEED`, or the clock.
fn seed() -> u64 {
    std::env::var("ATP_FAULT_SEED").ok().and_then(|value| value.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |since| since.as_nanos() as u64)
    })
}

/// A random pause of `low..low + spread` ms: the moment a fault strikes is
/// what is random, nothing waits on it to synchronise.
async fn random_pause(rng: &mut fastrand::Rng, low: u64, spread: u64) {
    tokio::time::sleep(Duration::from_millis(low + rng.u64(..spread))).await;
}

/// A port nobody listens on now, on every interface (so a node restarted on
/// it keeps its address and its clients' endpoint).
fn free_port() -> u16 {
    atp_cluster::testing::unassigned_port()
}

/// One node's place: where it listens, what it advertises, its data.
struct Slot {
    listen: SocketAddr,
    advertised: SocketAddr,
    data: tempfile::TempDir,
    netns: Option<Arc<NetNs>>,
}

/// etcd and three nodes; node [`VICTIM`] optionally in its own network
/// namespace.
struct Cluster {
    etcd: EtcdProcess,
    slots: Vec<Slot>,
    nodes: Vec<Atpd>,
    variables: Vec<(String, String)>,
    store: EtcdStore,
    keys: ClusterKeys,
    netns: Option<Arc<NetNs>>,
}

/// Node `index`'s id.
fn node_id(index: usize) -> String {
    format!("node-{index}")
}

impl Cluster {
    /// Starts etcd and three nodes with `extra` variables; with
    /// `namespaced`, node [`VICTIM`] runs in a new network namespace (None
    /// when that is skipped: not root). Returns once every shard is claimed.
    async fn start(name: &str, namespaced: bool, extra: &[(&str, &str)]) -> Option<Self> {
        let netns = if namespaced { Some(Arc::new(NetNs::create_or_skip()?)) } else { None };
        let etcd = match &netns {
            Some(_) => EtcdProcess::start_on_every_interface_or_skip().await?,
            None => EtcdProcess::start_or_skip().await?,
        };
        // Nodes in the root namespace listen on every interface and
        // advertise the root end of the link when there is a namespace
        // (reachable from both sides); else loopback.
        let host_ip = netns
            .as_ref()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |netns| IpAddr::V4(netns.host_ip()));
        let slots: Vec<Slot> = (0..3)
            .map(|index| {
                let port = free_port();
                let data = tempfile::tempdir().expect("a data directory");
                match &netns {
                    Some(netns) if index == VICTIM => {
                        let address = SocketAddr::new(IpAddr::V4(netns.ip()), port);
                        Slot {
                            listen: address,
                            advertised: address,
                            data,
                            netns: Some(Arc::clone(netns)),
                        }
                    }
                    Some(_) => Slot {
                        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                        advertised: SocketAddr::new(host_ip, port),
                        data,
                        netns: None,
                    },
                    None => {
                        let address = SocketAddr::new(host_ip, port);
                        Slot { listen: address, advertised: address, data, netns: None }
                    }
                }
            })
            .collect();
        let mut variables = variables(etcd.endpoint_at(host_ip), name, 3);
        // Doubts about Reserves without a record are decided soon after.
        variables.push(("ATP_RESERVE_PENDING_TIMEOUT_MS".to_owned(), "1500".to_owned()));
        variables.extend(extra.iter().map(|(key, value)| (key.to_string(), value.to_string())));
        let store = etcd.store().await;
        let keys = ClusterKeys::new(name);
        let mut cluster = Self { etcd, slots, nodes: Vec::new(), variables, store, keys, netns };
        let nodes = join_all((0..3).map(|index| cluster.launch(index))).await;
        cluster.nodes = nodes;
        let claimed =
            eventually(DEADLINE, || async { cluster.claims().await.len() == SHARD_COUNT as usize })
                .await;
        assert!(claimed, "not every shard was claimed; node 0's log:\n{}", cluster.nodes[0].log());
        Some(cluster)
    }

    /// Starts node `index` on its slot and waits until it answers SERVING.
    async fn launch(&self, index: usize) -> Atpd {
        let slot = &self.slots[index];
        let mut variables = self.variables.clone();
        variables.push(("ATP_NODE_ID".to_owned(), node_id(index)));
        variables.push(("ATP_LISTEN_ADDR".to_owned(), slot.listen.to_string()));
        variables.push(("ATP_ADVERTISED_ADDR".to_owned(), slot.advertised.to_string()));
        let variables: Vec<(&str, &str)> =
            variables.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
        match &slot.netns {
            Some(netns) => Atpd::start_in_netns(netns, slot.data.path(), &variables).await,
            None => Atpd::start_in(slot.data.path(), &variables).await,
        }
    }

    /// Starts one more node (loopback, a fresh data directory) and returns
    /// its index.
    async fn add_node(&mut self) -> usize {
        let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
        let data = tempfile::tempdir().expect("a data directory");
        self.slots.push(Slot { listen: address, advertised: address, data, netns: None });
        let index = self.slots.len() - 1;
        let node = self.launch(index).await;
        self.nodes.push(node);
        index
    }

    /// `http://<advertised>` of every node, in order.
    fn endpoints(&self) -> Vec<String> {
        self.slots.iter().map(|slot| format!("http://{}", slot.advertised)).collect()
    }

    /// Every claim in etcd: shard → (node id, epoch).
    async fn claims(&self) -> BTreeMap<u32, (String, i64)> {
        let Ok(snapshot) = self.store.get_prefix(&self.keys.claims_prefix()).await else {
            return BTreeMap::new();
        };
        claims_in(&snapshot, &self.keys)
    }

    /// Waits until every shard is claimed and every node serves exactly
    /// the shards etcd says it owns and names the owner of the others;
    /// returns the claims.
    async fn wait_until_consistent(&self, probes: &[String]) -> BTreeMap<u32, (String, i64)> {
        let read = async || self.claims().await;
        match until_consistent(DEADLINE, read, async |claims| self.agree(claims, probes).await)
            .await
        {
            Ok(claims) => claims,
            Err(claims) => {
                let logs: Vec<String> = self.nodes.iter().map(Atpd::log).collect();
                panic!(
                    "the nodes never agreed with etcd's claims ({} claimed); logs:\n{}",
                    claims.len(),
                    tail(&logs.join("\n-----\n"), 6_000)
                );
            }
        }
    }

    /// Whether every node answers and serves exactly the shards `claims`
    /// give it and names the owner of the others.
    async fn agree(&self, claims: &BTreeMap<u32, (String, i64)>, probes: &[String]) -> bool {
        for (index, node) in self.nodes.iter().enumerate() {
            let id = node_id(index);
            let seen = answers_within(node, probes, ANSWER_TIMEOUT).await;
            let agree = (0..SHARD_COUNT).zip(&seen).all(|(shard, answer)| {
                answer.as_ref().is_some_and(|answer| agrees(answer, &claims[&shard].0, &id))
            });
            if !agree {
                return false;
            }
        }
        true
    }

    /// The epoch checker over every node's write log and etcd's claim
    /// history: no shard was ever written by two nodes at once, nor under
    /// an epoch that was not its claim's.
    async fn check_epochs(&self, name: &str) {
        let logs: Vec<std::path::PathBuf> =
            self.slots.iter().map(|slot| slot.data.path().join("writes.log")).collect();
        let summary = epoch_check(&self.etcd.endpoint(), name, &logs).await;
        eprintln!("{name}: epoch check passed: {summary:?}");
    }

    /// Whether etcd holds no claim of node `index` (its lease is gone).
    async fn claims_gone(&self, index: usize) -> bool {
        let id = node_id(index);
        let claims = self.claims().await;
        !claims.is_empty() && claims.values().all(|(owner, _)| owner != &id)
    }

    /// The load generator's configuration for a checkout run of `duration`
    /// through every node.
    fn load(&self, duration: Duration, seed: u64) -> Config {
        Config {
            endpoint: self.endpoints().join(","),
            scenario: Scenario::Checkout,
            mode: Mode::Closed,
            clients: 12,
            connections: 1,
            skus: 40,
            locations: 2,
            stock: 5_000,
            warmup: Duration::ZERO,
            duration,
            request_timeout: Duration::from_secs(2),
            seed: Some(seed),
            ..Config::default()
        }
    }
}

/// The last `bytes` of `text`.
fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// One fault's time span and the node it struck.
#[derive(Clone, Copy, Debug)]
struct Window {
    /// Unix ms when the fault was injected.
    from_ms: i64,
    /// Unix ms when the cluster was seen consistent again.
    to_ms: i64,
}

/// The shards a failed call touched: its reservation's home and its lines' SKUs.
fn touched(failure: &Failure) -> BTreeSet<u32> {
    let lines = failure.skus.iter().map(|sku| shard_of(sku));
    std::iter::once(shard_of(&failure.reservation_id)).chain(lines).collect()
}

/// Checks where calls failed (see the module comment); returns the number
/// of failures inside the windows, (through the victim, through the others).
fn check_failures(
    report: &Report,
    windows: &[Window],
    victim_endpoint: &str,
    victim_shards: &BTreeSet<u32>,
) -> (usize, usize) {
    let mut through_victim = 0;
    let mut through_others = 0;
    let mut problems = Vec::new();
    for failure in &report.failures {
        if failure.reason.as_deref() == Some("INSUFFICIENT_STOCK") {
            continue;
        }
        let inside = windows.iter().any(|window| {
            failure.failed_unix_ms >= window.from_ms && failure.sent_unix_ms <= window.to_ms
        });
        let victims = touched(failure).intersection(victim_shards).count() > 0;
        let named_ok = failure.shard.is_none_or(|shard| victim_shards.contains(&(shard as u32)));
        if !inside {
            problems.push(format!("outside every fault window {windows:?}: {failure:?}"));
        } else if failure.endpoint == victim_endpoint {
            through_victim += 1;
        } else if !victims || !named_ok {
            problems.push(format!("touches none of the faulted node's shards: {failure:?}"));
        } else {
            through_others += 1;
        }
    }
    assert!(
        problems.is_empty(),
        "{} calls failed where the fault should not reach (first 20):\n{}",
        problems.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    (through_victim, through_others)
}

/// Whether `violation` is a position holding more units than its HELD
/// reservations: an under-sell that goes away by itself (a refused or
/// rolled-back Reserve's aborts to other nodes are sent before its answer
/// but acknowledged after; the sweep rolls back holds orphaned by a fault
/// after the pending timeout).
fn transient_under_sell(violation: &str) -> bool {
    let Some((before, after)) = violation.split_once(" but the HELD reservations hold ") else {
        return false;
    };
    let reserved = before.rsplit(' ').next().and_then(|units| units.parse::<i64>().ok());
    let held = after.trim().parse::<i64>().ok();
    matches!((reserved, held), (Some(reserved), Some(held)) if reserved > held)
}

/// The load generator's check, repeated while its only violations are
/// transient under-sells (see [`transient_under_sell`]), up to
/// [`DEADLINE`]; any other violation is final at once.
async fn check_settled(
    config: &Config,
    setup: &atp_loadgen::Setup,
    report: &Report,
) -> atp_loadgen::CheckReport {
    let started = tokio::time::Instant::now();
    loop {
        let checked = check(&config.endpoint, setup, &report.acks).await.expect("the check ran");
        let transient = !checked.violations.is_empty()
            && checked.violation_count == checked.violations.len()
            && checked.violations.iter().all(|violation| transient_under_sell(violation));
        if !transient || started.elapsed() >= DEADLINE {
            if started.elapsed() > Duration::from_millis(500) {
                eprintln!("the check passed or gave up after {:?} of re-checks", started.elapsed());
            }
            return checked;
        }
        eprintln!("under-sell still settling: {:?}", checked.violations);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// For a violation's position `sku@location`: every reservation whose
/// ledger entries there leave units reserved, with what the load generator
/// logged of it, what GetReservation says and the nodes' log lines naming it.
async fn explain_holds(
    cluster: &Cluster,
    position: &str,
    report: &Report,
    windows: &[Window],
) -> String {
    let Some((sku, location)) = position.split_once('@') else { return String::new() };
    let claims = cluster.claims().await;
    let owner = |key: &str| claims.get(&shard_of(key)).map(|(owner, _)| owner.clone());
    let mut net: BTreeMap<String, i64> = BTreeMap::new();
    let mut entries: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (index, node) in cluster.nodes.iter().enumerate() {
        let mut page_token = String::new();
        loop {
            let request = v1::QueryLedgerRequest {
                sku: sku.to_owned(),
                location_id: location.to_owned(),
                limit: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            };
            let Ok(page) = node.admin().query_ledger(request).await else { break };
            let page = page.into_inner();
            for entry in page.entries {
                *net.entry(entry.cause_id.clone()).or_default() += entry.reserved_delta;
                entries.entry(entry.cause_id).or_default().push(format!(
                    "node {index} at {} {} reserved {:+} committed {:+}",
                    entry.at_ms, entry.kind, entry.reserved_delta, entry.committed_delta
                ));
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
    }
    let mut text = format!(
        "{position} (shard {}, owner {:?}; fault windows {windows:?}): reservations leaving units reserved:",
        shard_of(sku),
        owner(sku)
    );
    for (id, units) in net.iter().filter(|(_, units)| **units != 0) {
        let request = v1::GetReservationRequest { reservation_id: id.clone() };
        let read = cluster.nodes[0].availability().get_reservation(request).await;
        let read =
            read.map(|read| read.into_inner().reservation.map(|r| (r.state(), r.lines.len())));
        let logged = report.acks.get(id);
        let lines: Vec<String> = cluster
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(index, node)| {
                node.log()
                    .lines()
                    .filter(|line| line.contains(id.as_str()))
                    .map(|line| format!("node {index}: {line}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        let failures: Vec<&Failure> =
            report.failures.iter().filter(|failure| &failure.reservation_id == id).collect();
        text.push_str(&format!(
            "\n  {id}: {units} units; home shard {} on {:?}; logged {logged:?}; failures \
             {failures:?}; read {read:?}; ledger here: {:?}; log lines:\n    {}",
            shard_of(id),
            owner(id),
            entries.get(id),
            lines.join("\n    ")
        ));
    }
    text
}

/// The faults a test injects into node [`VICTIM`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, then a restart on the same data directory and address.
    Kill,
    /// SIGSTOP until etcd has dropped its claims, then SIGCONT.
    Stop,
    /// Cut its namespace's link until etcd has dropped its claims, then heal it.
    Cut,
}

/// Runs the checkout load through all three nodes while `fault` strikes
/// node [`VICTIM`] `faults` times, then checks the invariants and where
/// calls failed.
async fn load_under(fault: Fault, name: &str) {
    let faults = if long_tests() { 4 } else { 1 };
    let seed = seed();
    eprintln!("{name}: seed {seed} (ATP_FAULT_SEED replays it), {faults} × {fault:?}");
    let started = std::time::Instant::now();
    let Some(mut cluster) = Cluster::start(name, fault == Fault::Cut, &[]).await else { return };
    let probes = probe_ids();
    let before = cluster.wait_until_consistent(&probes).await;
    let victim_id = node_id(VICTIM);
    let victim_shards: BTreeSet<u32> = before
        .iter()
        .filter(|(_, (owner, _))| owner == &victim_id)
        .map(|(shard, _)| *shard)
        .collect();

    // The load runs until stopped, [`LOAD_AFTER_FAULTS`] after the last
    // fault settled (at most 10 minutes).
    let config = cluster.load(Duration::from_secs(600), seed);
    let setup = setup(&config).await.expect("setup through every node");
    eprintln!("{name}: cluster up and load set up after {:.1} s", started.elapsed().as_secs_f64());
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (config, setup, stop) = (config.clone(), setup.clone(), Arc::clone(&stop));
        tokio::spawn(async move { run_until(&config, &setup, stop).await })
    };

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut windows = Vec::new();
    for _ in 0..faults {
        random_pause(&mut rng, 1_000, 1_500).await;
        let from_ms = unix_ms();
        match fault {
            Fault::Kill => {
                cluster.nodes[VICTIM].kill();
                cluster.nodes[VICTIM] = cluster.launch(VICTIM).await;
            }
            Fault::Stop | Fault::Cut => {
                if fault == Fault::Stop {
                    cluster.nodes[VICTIM].pause();
                } else {
                    cluster.netns.as_ref().expect("a namespace").cut();
                }
                // Past its lease: etcd has dropped its claims.
                let gone = eventually(DEADLINE, || cluster.claims_gone(VICTIM)).await;
                if fault == Fault::Stop {
                    cluster.nodes[VICTIM].resume();
                } else {
                    cluster.netns.as_ref().expect("a namespace").heal();
                }
                assert!(gone, "etcd kept the claims of node {VICTIM} during a {fault:?}");
            }
        }
        let after = cluster.wait_until_consistent(&probes).await;
        let to_ms = unix_ms();
        for shard in &victim_shards {
            let (owner, epoch) = &after[shard];
            assert_eq!(owner, &victim_id, "shard {shard} moved");
            assert!(*epoch > before[shard].1, "shard {shard}: epoch {epoch} not above the old");
        }
        eprintln!("{name}: {fault:?} settled after {} ms", to_ms - from_ms);
        windows.push(Window { from_ms, to_ms });
    }
    // Load on the settled cluster: calls sent now must not fail.
    tokio::time::sleep(LOAD_AFTER_FAULTS).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.expect("the load task").expect("the load ran");
    let acknowledged = report.acknowledged.get("held").copied().unwrap_or(0)
        + report.acknowledged.get("committed").copied().unwrap_or(0)
        + report.acknowledged.get("released").copied().unwrap_or(0);
    assert!(acknowledged > 0, "nothing was acknowledged: {:?}", report.errors);
    let checked = check_settled(&config, &setup, &report).await;
    let (through_victim, through_others) =
        check_failures(&report, &windows, &cluster.endpoints()[VICTIM], &victim_shards);
    eprintln!(
        "{name}: {} steps, acknowledged {:?}, {} in doubt, errors {:?}; failures in the \
         windows: {through_victim} through node {VICTIM}, {through_others} through the others \
         (all on its shards); found {:?}; {:.1} s in all",
        report.steps,
        report.acknowledged,
        report.unknown_outcomes,
        report.errors,
        checked.found,
        started.elapsed().as_secs_f64()
    );
    if !checked.violations.is_empty() {
        for violation in &checked.violations {
            if let Some(position) = violation.split(':').next() {
                eprintln!("{}", explain_holds(&cluster, position, &report, &windows).await);
            }
        }
        let logs: Vec<String> = cluster.nodes.iter().map(Atpd::log).collect();
        panic!(
            "{} violations (seed {seed}): {:#?}\nlogs (tails):\n{}",
            checked.violation_count,
            checked.violations,
            logs.iter().map(|log| tail(log, 3_000)).collect::<Vec<_>>().join("\n-----\n")
        );
    }
    assert!(
        through_victim + through_others > 0,
        "no call failed: the {fault:?} never reached the load"
    );
    cluster.check_epochs(name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_load_survives_a_node_killed_and_restarted() {
    load_under(Fault::Kill, "fault-kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_load_survives_a_node_stopped_past_its_lease() {
    load_under(Fault::Stop, "fault-stop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_load_survives_a_node_cut_off_the_network_past_its_lease() {
    load_under(Fault::Cut, "fault-cut").await;
}

/// For each node, the probe ids of up to `count` shards it owns in `claims`.
fn owned_probes(
    claims: &BTreeMap<u32, (String, i64)>,
    probes: &[String],
    count: usize,
) -> Vec<Vec<String>> {
    (0..3)
        .map(|index| {
            let id = node_id(index);
            let owned = claims.iter().filter(|(_, (owner, _))| owner == &id);
            owned.take(count).map(|(shard, _)| probes[*shard as usize].clone()).collect()
        })
        .collect()
}

/// Whether node `index` answers `expected` for every one of `ids`.
async fn all_answer(cluster: &Cluster, index: usize, ids: &[String], expected: &Answer) -> bool {
    let seen = answers_within(&cluster.nodes[index], ids, ANSWER_TIMEOUT).await;
    seen.iter().all(|answer| answer.as_ref() == Some(expected))
}

/// A Reserve of one unit of `sku` under a fresh id homed on `owner`'s
/// shards, through node `owner`.
async fn reserve_on(
    cluster: &Cluster,
    claims: &BTreeMap<u32, (String, i64)>,
    owner: usize,
    sku: &str,
    name: &str,
) -> Result<(), tonic::Status> {
    let id = (0..)
        .map(|n| format!("{name}-{n}"))
        .find(|id| claims[&shard_of(id)].0 == node_id(owner))
        .expect("an id");
    let request = v1::ReserveRequest {
        reservation_id: id,
        channel_id: "web".into(),
        lines: vec![v1::ReservationLine {
            sku: sku.into(),
            location_id: "dc-1".into(),
            quantity: 1,
        }],
        ttl_seconds: 600,
        metadata: None,
    };
    let mut request = Request::new(request);
    request.set_timeout(Duration::from_secs(2));
    cluster.nodes[owner].availability().reserve(request).await.map(drop)
}

/// etcd SIGSTOPped for `outage`: the nodes keep serving (reads and writes)
/// while their lease deadlines hold, every node fails closed on its shards
/// before etcd could expire its lease, none serves again while etcd is
/// away, and once it is back they serve again by themselves, the same
/// shards under the same or higher epochs. Lease TTL 6 s, margin 1.5 s,
/// keepalives every 0.5 s: a node's deadline is at least 4 s after etcd
/// stopped (TTL − margin − one interval), at most 4.5 s.
async fn etcd_outage(name: &str, outage: Duration) {
    const TTL_MS: u64 = 6_000;
    const MARGIN_MS: u64 = 1_500;
    const INTERVAL_MS: u64 = 500;
    let started = std::time::Instant::now();
    let extra = [
        ("ATP_LEASE_TTL_MS", "6000"),
        ("ATP_LEASE_SAFETY_MARGIN_MS", "1500"),
        ("ATP_KEEPALIVE_INTERVAL_MS", "500"),
    ];
    let Some(cluster) = Cluster::start(name, false, &extra).await else { return };
    let probes = probe_ids();
    let before = cluster.wait_until_consistent(&probes).await;
    let sampled = owned_probes(&before, &probes, 16);
    // A SKU of node 0's, stocked.
    let sku = (0..)
        .map(|n| format!("sku-{n}"))
        .find(|sku| before[&shard_of(sku)].0 == node_id(0))
        .expect("a sku");
    for node in &cluster.nodes {
        node.configure_web(&["dc-1"], &["dc-1"]).await;
    }
    cluster.nodes[0].receive(&sku, "dc-1", 100).await;

    // An outage shorter than the deadlines: nobody notices. Phase one.
    let short = Duration::from_millis(TTL_MS - MARGIN_MS - INTERVAL_MS) / 2;
    cluster.etcd.pause();
    let paused = tokio::time::Instant::now();
    while paused.elapsed() < short {
        for (index, ids) in sampled.iter().enumerate() {
            let serving = all_answer(&cluster, index, ids, &Answer::Serving).await;
            assert!(
                serving || paused.elapsed() >= short,
                "node {index} stopped serving {:?} into a {short:?} outage",
                paused.elapsed()
            );
        }
    }
    cluster.etcd.resume();
    let kept = cluster.wait_until_consistent(&probes).await;
    assert_eq!(kept, before, "a short etcd outage changed claims or epochs");

    // Phase two: past the deadlines.
    cluster.etcd.pause();
    let paused = tokio::time::Instant::now();
    // Reads and writes go on while the deadlines hold.
    for (index, ids) in sampled.iter().enumerate() {
        assert!(
            all_answer(&cluster, index, ids, &Answer::Serving).await,
            "node {index} failed closed early"
        );
    }
    reserve_on(&cluster, &before, 0, &sku, "during-outage")
        .await
        .expect("a write while the lease holds");
    let checked_at = paused.elapsed();
    assert!(
        checked_at < Duration::from_millis(TTL_MS - MARGIN_MS - INTERVAL_MS),
        "the machine is too slow for this test: serving checked {checked_at:?} into the outage"
    );
    // Every node fails closed before etcd could expire its lease (its
    // last keepalive reached etcd at most one interval before the pause).
    let expiry_at_the_earliest = Duration::from_millis(TTL_MS - INTERVAL_MS);
    for (index, ids) in sampled.iter().enumerate() {
        let closed =
            eventually(DEADLINE, || all_answer(&cluster, index, ids, &Answer::FailingClosed)).await;
        let seen_at = paused.elapsed();
        assert!(closed, "node {index} kept serving without etcd");
        assert!(
            seen_at <= expiry_at_the_earliest,
            "node {index} was still serving {seen_at:?} into the outage (its lease may have ended at {expiry_at_the_earliest:?})"
        );
        eprintln!("{name}: node {index} failing closed {seen_at:?} into the outage");
    }
    let refused = reserve_on(&cluster, &before, 0, &sku, "past-deadline").await;
    let refused = refused.expect_err("no write past the deadline");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Nobody serves again while etcd is away (this is the outage itself).
    while paused.elapsed() < outage {
        for (index, ids) in sampled.iter().enumerate() {
            let seen = answers_within(&cluster.nodes[index], ids, ANSWER_TIMEOUT).await;
            assert!(
                !seen.contains(&Some(Answer::Serving)),
                "node {index} served {:?} into the outage, without etcd",
                paused.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // etcd is back: the nodes serve again by themselves.
    cluster.etcd.resume();
    let resumed = tokio::time::Instant::now();
    let after = cluster.wait_until_consistent(&probes).await;
    eprintln!("{name}: serving again {:?} after etcd resumed", resumed.elapsed());
    for (shard, (owner, epoch)) in &after {
        assert_eq!(owner, &before[shard].0, "shard {shard} moved");
        assert!(*epoch >= before[shard].1, "shard {shard}: epoch went down");
    }
    reserve_on(&cluster, &after, 0, &sku, "after-outage").await.expect("a write after the outage");
    cluster.check_epochs(name).await;
    eprintln!("{name}: {:.1} s in all", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_briefly_then_past_the_lease_deadlines() {
    etcd_outage("etcd-short", Duration::from_secs(7)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_for_30_s_long() {
    if !long_tests() {
        eprintln!("skipped: the 30 s etcd outage runs with ATP_LONG_TESTS=1");
        return;
    }
    etcd_outage("etcd-long", Duration::from_secs(30)).await;
}

/// Planned handoffs under load (issue 11): shards move one after another
/// between live nodes (`AdminService.MoveShard`, asked of a random node,
/// which forwards it to the owner) while the checkout load runs through the
/// SDK. No client request fails, the checker finds nothing lost or
/// oversold, and the epoch checker passes over the whole run. Half of the
/// moves take a shard the load's SKUs live on. Prints each move's time
/// (the fence to the new owner's claim): p50 and max.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_load_sees_no_failed_request_while_shards_move() {
    let name = "moves";
    let moves = if long_tests() { 50 } else { 12 };
    let seed = seed();
    eprintln!("{name}: seed {seed} (ATP_FAULT_SEED replays it), {moves} moves");
    let started = std::time::Instant::now();
    let Some(cluster) = Cluster::start(name, false, &[]).await else { return };
    let probes = probe_ids();
    cluster.wait_until_consistent(&probes).await;
    let config = cluster.load(Duration::from_secs(600), seed);
    let setup = setup(&config).await.expect("setup through every node");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (config, setup, stop) = (config.clone(), setup.clone(), Arc::clone(&stop));
        tokio::spawn(async move { run_until(&config, &setup, stop).await })
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut times = Vec::new();
    for index in 0..moves {
        random_pause(&mut rng, 100, 300).await;
        let claims = cluster.claims().await;
        let shard = if index % 2 == 0 {
            shard_of(&setup.skus[rng.usize(..setup.skus.len())])
        } else {
            rng.u32(..SHARD_COUNT)
        };
        let owner = claims[&shard].0.clone();
        let others: Vec<String> = (0..3).map(node_id).filter(|id| *id != owner).collect();
        let to = others[rng.usize(..others.len())].clone();
        let asked = rng.usize(..3);
        let mut admin = v1::admin_service_client::AdminServiceClient::connect(
            cluster.endpoints()[asked].clone(),
        )
        .await
        .expect("connect");
        let moved = admin
            .move_shard(v1::MoveShardRequest { shard, to_node: to.clone() })
            .await
            .unwrap_or_else(|status| panic!("moving shard {shard} {owner} → {to}: {status:?}"))
            .into_inner();
        assert_eq!(
            (moved.from_node.as_str(), moved.to_node.as_str()),
            (owner.as_str(), to.as_str())
        );
        assert!(moved.to_epoch > moved.from_epoch, "{moved:?}");
        times.push(moved.elapsed_ms);
        let claimed = eventually(DEADLINE, || async {
            cluster.claims().await.get(&shard).is_some_and(|(node, _)| *node == to)
        })
        .await;
        assert!(claimed, "shard {shard} is not claimed by {to} after its move");
    }
    tokio::time::sleep(LOAD_AFTER_FAULTS).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.expect("the load task").expect("the load ran");
    let failed: Vec<&Failure> = report
        .failures
        .iter()
        .filter(|failure| failure.reason.as_deref() != Some("INSUFFICIENT_STOCK"))
        .collect();
    let checked = check_settled(&config, &setup, &report).await;
    times.sort_unstable();
    eprintln!(
        "{name}: {} steps, acknowledged {:?}, errors {:?}; {moves} moves: p50 {} ms, max {} ms; \
         {:.1} s in all",
        report.steps,
        report.acknowledged,
        report.errors,
        times[times.len() / 2],
        times[times.len() - 1],
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} requests failed during the moves: {:#?}",
        failed.len(),
        &failed[..failed.len().min(20)]
    );
    assert!(checked.violations.is_empty(), "violations (seed {seed}): {:#?}", checked.violations);
    assert!(report.steps > 0, "the load made no step");
    cluster.check_epochs(name).await;
}

/// Leave, join, drain (issue 11): under the checkout load through the SDK
/// (its endpoints nodes 0 and 1), node 2 gets SIGTERM, moves all its
/// shards to the others while serving and exits 0; a 4th node joins and
/// the coordinator moves its rendezvous share to it (placement on join);
/// then `DrainNode` of node 1, asked of the new node, moves node 1's shards
/// to nodes 0 and 3 (2 at a time). No client request fails,
/// the checker and the epoch checker pass. Prints both drain times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_load_sees_no_failed_request_while_nodes_drain() {
    let name = "drains";
    let seed = seed();
    eprintln!("{name}: seed {seed} (ATP_FAULT_SEED replays it)");
    let started = std::time::Instant::now();
    let Some(mut cluster) = Cluster::start(name, false, &[]).await else { return };
    let probes = probe_ids();
    let before = cluster.wait_until_consistent(&probes).await;
    let mut config = cluster.load(Duration::from_secs(600), seed);
    config.endpoint = cluster.endpoints()[..2].join(",");
    let setup = setup(&config).await.expect("setup");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (config, setup, stop) = (config.clone(), setup.clone(), Arc::clone(&stop));
        tokio::spawn(async move { run_until(&config, &setup, stop).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SIGTERM: node 2 drains itself, then exits.
    let owned = before.values().filter(|(owner, _)| *owner == node_id(2)).count();
    let drain_started = std::time::Instant::now();
    cluster.nodes[2].terminate();
    let exited = cluster.nodes[2].wait_for_exit(Duration::from_secs(120)).await;
    let sigterm_drain = drain_started.elapsed();
    assert!(
        exited.is_some_and(|status| status.success()),
        "node 2 exited {exited:?}:\n{}",
        cluster.nodes[2].log()
    );
    let log = cluster.nodes[2].log();
    assert!(log.contains("drained before exit"), "{}", tail(&log, 3_000));
    let claims = cluster.claims().await;
    assert!(claims.values().all(|(owner, _)| *owner != node_id(2)), "node 2 kept shards");
    eprintln!("{name}: SIGTERM drain of {owned} shards took {sigterm_drain:?}");

    // A 4th node joins: the coordinator moves its rendezvous share to it
    // (over nodes 0, 1 and 3), nothing else moves.
    let members: Vec<String> = [0, 1, 3].into_iter().map(node_id).collect();
    let expected: BTreeSet<u32> = (0..SHARD_COUNT)
        .filter(|shard| {
            atp_cluster::rendezvous_owner(*shard, members.iter().map(String::as_str))
                == Some(node_id(3).as_str())
        })
        .collect();
    let join_started = std::time::Instant::now();
    let fourth = cluster.add_node().await;
    assert_eq!(fourth, 3);
    let joined = eventually(Duration::from_secs(120), || async {
        let claims = cluster.claims().await;
        let owned: BTreeSet<u32> = claims
            .iter()
            .filter(|(_, (owner, _))| *owner == node_id(3))
            .map(|(shard, _)| *shard)
            .collect();
        owned == expected
    })
    .await;
    assert!(joined, "node 3 did not receive its share ({} shards)", expected.len());
    eprintln!(
        "{name}: node 3 joined and received its {} shards in {:?}",
        expected.len(),
        join_started.elapsed()
    );

    // Then node 1 drained through the new node.
    let owned = cluster.claims().await.values().filter(|(owner, _)| *owner == node_id(1)).count();
    let mut admin =
        v1::admin_service_client::AdminServiceClient::connect(cluster.endpoints()[3].clone())
            .await
            .expect("connect");
    let drained = admin
        .drain_node(v1::DrainNodeRequest { node_id: node_id(1), max_parallel: 2 })
        .await
        .expect("drain node 1 through node 3")
        .into_inner();
    assert!(drained.failures.is_empty(), "{:?}", drained.failures);
    assert_eq!(drained.moves.len(), owned);
    let claims = cluster.claims().await;
    assert!(claims.values().all(|(owner, _)| *owner != node_id(1)), "node 1 kept shards");
    assert!(claims.values().all(|(owner, _)| *owner == node_id(0) || *owner == node_id(3)));
    let times: Vec<u64> = drained.moves.iter().map(|moved| moved.elapsed_ms).collect();
    eprintln!(
        "{name}: DrainNode of {owned} shards (2 at a time) took {} ms; moves p50 {} ms, max {} ms",
        drained.elapsed_ms,
        percentile(&times, 50),
        percentile(&times, 100)
    );

    eprintln!(
        "{name}: node 1's moves, medians from the fence: {}",
        move_phases(&cluster.nodes[1].log())
    );

    tokio::time::sleep(LOAD_AFTER_FAULTS).await;
    stop.store(true, Ordering::Relaxed);
    let report = load.await.expect("the load task").expect("the load ran");
    let failed: Vec<&Failure> = report
        .failures
        .iter()
        .filter(|failure| failure.reason.as_deref() != Some("INSUFFICIENT_STOCK"))
        .collect();
    let checked = check_settled(&config, &setup, &report).await;
    eprintln!(
        "{name}: {} steps, acknowledged {:?}, errors {:?}; {:.1} s in all",
        report.steps,
        report.acknowledged,
        report.errors,
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} requests failed during the drains: {:#?}",
        failed.len(),
        &failed[..failed.len().min(20)]
    );
    assert!(checked.violations.is_empty(), "violations (seed {seed}): {:#?}", checked.violations);
    cluster.check_epochs(name).await;
}

/// The `p`-th percentile of `values` (0 when empty).
fn percentile(values: &[u64], p: usize) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get((sorted.len().saturating_sub(1) * p) / 100).copied().unwrap_or(0)
}

/// The median of each phase of the moves a node logged ("moved a shard":
/// drained, exported, installed, handed over, claimed = elapsed), in ms
/// from the fence.
fn move_phases(log: &str) -> String {
    let phases = ["drained_ms", "exported_ms", "installed_ms", "handed_over_ms", "elapsed_ms"];
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("moved a shard")).collect();
    let medians: Vec<String> = phases
        .iter()
        .map(|phase| {
            let values: Vec<u64> = lines
                .iter()
                .filter_map(|line| {
                    let start = line.find(&format!("{phase}="))? + phase.len() + 1;
                    line[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
                })
                .collect();
            format!("{phase} {}", percentile(&values, 50))
        })
        .collect();
    format!("{} moves: {}", lines.len(), medians.join(", "))
}

//! Seeded simulation on the in-memory etcd with paused time: three nodes,
//! random etcd pauses and restarts, partitions of single nodes, slow
//! keepalive answers, joins and leaves. The safety property of the
//! local deadline is checked every 5 ms of simulated time: a node that
//! believes it holds its lease (`Held` and now before the deadline) really
//! does — etcd has not expired it. At the end, with faults over, every node's member list
//! converges to the keys in the store. A failure names its seed.

use std::time::Duration;

use atp_cluster::memory::MemoryEtcd;
use atp_cluster::store::Store;
use atp_cluster::testing::Faulty;
use atp_cluster::{LeaseState, Member, Membership, MembershipConfig};
use tokio::time::{Instant, timeout};

const SEEDS: u64 = 16;
const STEPS: usize = 150;
/// How often (simulated) the checker looks at every node.
const CHECK_INTERVAL: Duration = Duration::from_millis(5);

/// xorshift64*: enough randomness for fault schedules, no dependency.
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

fn config(node: &str) -> MembershipConfig {
    MembershipConfig {
        lease_ttl_ms: 2_000,
        // Longer than any answer delay, so a partition can start between an
        // acknowledged keepalive and the next one.
        keepalive_interval_ms: 600,
        // Answers may come up to 550 ms late and still count, more than the
        // margin: a deadline counted from the answer would overrun etcd's.
        keepalive_timeout_ms: 600,
        safety_margin_ms: 300,
        request_timeout_ms: 1_000,
        retry_backoff_ms: 50,
        ..MembershipConfig::new("sim", node, format!("{node}:1"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_that_believes_it_holds_its_lease_holds_it() {
    for seed in 0..SEEDS {
        run(seed).await;
    }
}

async fn run(seed: u64) {
    let etcd = MemoryEtcd::new();
    let links: Vec<Faulty<MemoryEtcd>> = (0..3).map(|_| Faulty::new(etcd.clone())).collect();
    let nodes: Vec<Member<Faulty<MemoryEtcd>>> = ["a", "b", "c"]
        .iter()
        .zip(&links)
        .map(|(node, link)| Member::new(link.clone(), config(node)).expect("valid config"))
        .collect();
    let checker = tokio::spawn(check_leases(
        seed,
        etcd.clone(),
        nodes.iter().map(Membership::lease_state).collect(),
    ));
    let mut random = Random::new(seed);
    let mut paused = false;
    for _ in 0..STEPS {
        let pick = usize::try_from(random.below(3)).expect("small");
        match random.below(24) {
            0 if !paused => {
                etcd.pause();
                paused = true;
            }
            1 | 2 if paused => {
                etcd.resume();
                paused = false;
            }
            3 => {
                etcd.restart();
                paused = false;
            }
            4..=7 if !paused => {
                let node = &nodes[pick];
                if !matches!(*node.lease_state().borrow(), LeaseState::Held { .. }) {
                    let _ = node.join().await;
                }
            }
            8 if !paused && random.below(3) == 0 => {
                let _ = nodes[pick].leave().await;
            }
            9 => links[pick].partition(true),
            10 | 11 => links[pick].partition(false),
            12 | 13 => {
                links[pick].delay_keepalive_answers(Duration::from_millis(random.below(560)));
            }
            _ => tokio::time::sleep(Duration::from_millis(random.below(900))).await,
        }
    }
    checker.abort();
    if let Err(error) = checker.await {
        assert!(error.is_cancelled(), "seed {seed}: {error}");
    }
    etcd.resume();
    for link in &links {
        link.partition(false);
    }
    let store_nodes = async || {
        let snapshot = etcd.get_prefix("/atp/sim/nodes/").await.expect("read");
        snapshot
            .kvs
            .into_iter()
            .map(|kv| kv.key.rsplit('/').next().expect("a key").to_owned())
            .collect::<Vec<_>>()
    };
    let converged = timeout(Duration::from_secs(30), async {
        loop {
            let expected = store_nodes().await;
            let all_agree = nodes.iter().all(|node| {
                node.members().borrow().nodes.keys().cloned().collect::<Vec<_>>() == expected
            });
            if all_agree {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        converged.is_ok(),
        "seed {seed}: member lists did not converge to {:?}",
        store_nodes().await
    );
}

/// Fails (panics in its task, surfaced by the join) the moment a node
/// believes it holds a lease that etcd no longer has.
async fn check_leases(
    seed: u64,
    etcd: MemoryEtcd,
    states: Vec<tokio::sync::watch::Receiver<LeaseState>>,
) {
    let mut checked: u64 = 0;
    loop {
        let now = Instant::now();
        for (index, state) in states.iter().enumerate() {
            if let LeaseState::Held { lease_id, deadline } = *state.borrow() {
                assert!(
                    now >= deadline || etcd.lease_exists(lease_id),
                    "seed {seed}: node {index} holds lease {lease_id} for {:?} more, but etcd expired it (check {checked})",
                    deadline - now
                );
            }
        }
        checked += 1;
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

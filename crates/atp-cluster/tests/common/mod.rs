//! The test fixture shared by the integration tests: one test body run on
//! two stores, the in-memory etcd (paused tokio time) and a real etcd
//! process (real time). A body gets a [`Fixture`]: stores to build nodes on,
//! and the faults (pause = SIGSTOP, restart = SIGKILL + start on the same
//! data directory).

#![allow(dead_code, async_fn_in_trait)]

use atp_cluster::EtcdStore;
use atp_cluster::memory::MemoryEtcd;
use atp_cluster::store::Store;
use atp_cluster::testing::EtcdProcess;

/// What a test body may do to "etcd".
pub trait Fixture {
    type S: Store;
    /// A new client of the one store.
    async fn store(&self) -> Self::S;
    /// Stop answering (SIGSTOP).
    fn pause(&self);
    /// Answer again (SIGCONT).
    fn resume(&self);
    /// Kill and start again on the same data.
    async fn restart(&mut self);
}

pub struct Memory(pub MemoryEtcd);

impl Fixture for Memory {
    type S = MemoryEtcd;
    async fn store(&self) -> MemoryEtcd {
        self.0.clone()
    }
    fn pause(&self) {
        self.0.pause();
    }
    fn resume(&self) {
        self.0.resume();
    }
    async fn restart(&mut self) {
        self.0.restart();
    }
}

pub struct Real(pub EtcdProcess);

impl Fixture for Real {
    type S = EtcdStore;
    async fn store(&self) -> EtcdStore {
        self.0.store().await
    }
    fn pause(&self) {
        self.0.pause();
    }
    fn resume(&self) {
        self.0.resume();
    }
    async fn restart(&mut self) {
        self.0.restart().await;
    }
}

/// Runs one test body on both stores.
macro_rules! on_both_stores {
    ($body:ident) => {
        mod $body {
            #[tokio::test(start_paused = true)]
            async fn memory() {
                super::$body(super::common::Memory(atp_cluster::memory::MemoryEtcd::new())).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                let _ = tracing_subscriber::fmt()
                    .with_test_writer()
                    .with_env_filter("atp_cluster=debug")
                    .try_init();
                let Some(etcd) = atp_cluster::testing::EtcdProcess::start_or_skip().await else {
                    return;
                };
                super::$body(super::common::Real(etcd)).await;
            }
        }
    };
}

/// How long a test waits for a condition (real etcd on a loaded machine;
/// the in-memory store runs on paused time).
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Waits (at most [`WAIT`]) until `receiver` shows a value meeting
/// `condition`, and returns it; panics naming `what` (and the last value).
pub async fn until<T: Clone + std::fmt::Debug>(
    receiver: &mut tokio::sync::watch::Receiver<T>,
    what: &str,
    condition: impl FnMut(&T) -> bool,
) -> T {
    let outcome = tokio::time::timeout(WAIT, receiver.wait_for(condition))
        .await
        .map(|result| result.map(|value| value.clone()));
    match outcome {
        Ok(Ok(value)) => value,
        Ok(Err(_)) => panic!("the sender went away while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}; last: {:?}", *receiver.borrow()),
    }
}

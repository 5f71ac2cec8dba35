//! Test support (feature `testing`): a real etcd process on free loopback
//! ports ([`EtcdProcess`]), a fault-injecting [`Store`] wrapper
//! ([`Faulty`]), and [`wait_for`], which waits on a condition with a
//! deadline. Other crates' tests reuse these through the feature.
//!
//! The etcd binary is `ATP_ETCD_BIN`, or `etcd` on the `PATH`, or
//! `/usr/bin/etcd` (Debian's `etcd-server`, which `.ci/run` installs). When
//! it is missing, [`EtcdProcess::start_or_skip`] fails the test if `CI` is
//! set and otherwise skips it with a message.
//!
//! [`epochs`] checks nodes' write logs against etcd's claim history.

pub mod epochs;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::etcd::EtcdStore;
use crate::store::{
    Keeper, KeyValue, Lease, Snapshot, Store, StoreError, Txn, TxnOutcome, Watch, WatchEvent,
};

/// How long etcd may take to start answering.
pub const ETCD_STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two polls of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Waits until `condition` holds, polling every [`POLL_INTERVAL`]; panics
/// with `what` after `deadline`.
pub async fn wait_for(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !condition() {
        assert!(Instant::now() < until, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether `CI` is set, as CI runners do (`CI=true`); empty, `false` and `0`
/// count as unset (the same rule as atpd's tests).
pub fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "false" | "0"))
}

/// Where the etcd binary is, if anywhere.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ATP_ETCD_BIN") {
        // A named binary that is not there counts as missing.
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join("etcd")).find(|path| path.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|path| path.is_file()))
}

/// A real etcd (one member) on free loopback ports with a temporary data
/// directory; killed when dropped. Fast elections (heartbeat 50 ms, election
/// 500 ms) so the minimum lease TTL is 1 s and start-up is quick.
pub struct EtcdProcess {
    binary: PathBuf,
    child: Option<Child>,
    client_address: SocketAddr,
    peer_address: SocketAddr,
    data: tempfile::TempDir,
}

impl EtcdProcess {
    /// Starts etcd, or returns `None` after printing why the test is skipped
    /// (no etcd binary); panics if `CI` is set and there is no etcd.
    pub async fn start_or_skip() -> Option<Self> {
        let Some(binary) = etcd_binary() else {
            assert!(
                !running_in_ci(),
                "etcd is missing: install Debian's etcd-server (apt-get install -y etcd-server; .ci/run does) or set ATP_ETCD_BIN"
            );
            eprintln!("skipped: no etcd binary (install etcd-server or set ATP_ETCD_BIN)");
            return None;
        };
        Some(Self::start(binary).await)
    }

    /// [`EtcdProcess::start_or_skip`], but taking clients on every
    /// interface (`0.0.0.0:<port>`), so that processes in other network
    /// namespaces reach it ([`EtcdProcess::endpoint_at`]).
    pub async fn start_on_every_interface_or_skip() -> Option<Self> {
        let Some(binary) = etcd_binary() else {
            // The same message and CI rule as start_or_skip.
            return Self::start_or_skip().await;
        };
        Some(Self::start_with(binary, true).await)
    }

    /// Starts `binary` and waits until it answers.
    pub async fn start(binary: PathBuf) -> Self {
        Self::start_with(binary, false).await
    }

    async fn start_with(binary: PathBuf, every_interface: bool) -> Self {
        let data = tempfile::tempdir().expect("a temporary etcd data directory");
        let client_address = if every_interface { free_port_everywhere() } else { free_port() };
        let mut etcd =
            Self { binary, child: None, client_address, peer_address: free_port(), data };
        etcd.spawn().await;
        etcd
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_address.port())
    }

    /// The client URL through `ip`, an address of this host (only useful
    /// when started on every interface).
    pub fn endpoint_at(&self, ip: std::net::IpAddr) -> String {
        format!("http://{}", SocketAddr::new(ip, self.client_address.port()))
    }

    /// A new client connection.
    pub async fn store(&self) -> EtcdStore {
        EtcdStore::connect(&[self.endpoint()], Duration::from_secs(5))
            .await
            .expect("connect to the test etcd")
    }

    /// SIGSTOP: etcd stops answering, its connections stay open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL, then start again on the same data directory and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("etcd is running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} etcd failed");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn spawn(&mut self) {
        let client_url = format!("http://{}", self.client_address);
        let advertised_url = self.endpoint();
        let peer_url = format!("http://{}", self.peer_address);
        let log =
            std::fs::File::create(self.data.path().join("etcd.log")).expect("create etcd.log");
        let child = Command::new(&self.binary)
            .arg("--name=atp-test")
            .arg(format!("--data-dir={}", self.data.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={advertised_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=atp-test={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", self.binary.display()));
        self.child = Some(child);
        self.wait_until_ready().await;
    }

    async fn wait_until_ready(&mut self) {
        let until = Instant::now() + ETCD_STARTUP_DEADLINE;
        loop {
            if let Some(status) =
                self.child.as_mut().and_then(|child| child.try_wait().ok().flatten())
            {
                panic!("etcd exited with {status} during start-up; log: {}", self.log_tail());
            }
            if let Ok(store) =
                EtcdStore::connect(&[self.endpoint()], Duration::from_millis(500)).await
            {
                let read =
                    tokio::time::timeout(Duration::from_millis(500), store.get_prefix("/")).await;
                if matches!(read, Ok(Ok(_))) {
                    return;
                }
            }
            assert!(
                Instant::now() < until,
                "etcd did not answer within {ETCD_STARTUP_DEADLINE:?}; log: {}",
                self.log_tail()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data.path().join("etcd.log")).unwrap_or_default();
        let start = log.len().saturating_sub(2_000);
        log.get(start..).unwrap_or(&log).to_owned()
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        // A paused process ignores nothing but SIGKILL, which is what kill sends.
        self.kill();
    }
}

/// A free loopback port (bound, read, released: another process may take it
/// before etcd binds it, which start-up then reports).
fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unassigned_port()))
}

/// A free port on every interface (`0.0.0.0:<port>`), released like [`free_port`]'s.
fn free_port_everywhere() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], unassigned_port()))
}

/// Ports handed out for a process to bind later: below Linux's ephemeral
/// range (32768–60999), which the kernel gives to outgoing connections and
/// `:0` binds, so a connection made meanwhile cannot take the port. Chosen at
/// random (other test processes pick too) and checked free on every
/// interface when chosen.
const UNASSIGNED_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port in [`UNASSIGNED_PORTS`] free on every interface now.
pub fn unassigned_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    let _ = STATE.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    let span = u64::from(UNASSIGNED_PORTS.end - UNASSIGNED_PORTS.start);
    for _ in 0..10_000 {
        // xorshift64 over a shared state: every call draws a new port.
        let mut next = STATE.load(Ordering::Relaxed);
        next ^= next << 13;
        next ^= next >> 7;
        next ^= next << 17;
        STATE.store(next, Ordering::Relaxed);
        let port = UNASSIGNED_PORTS.start + (next % span) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {UNASSIGNED_PORTS:?}");
}

/// A [`Store`] wrapper that breaks watch streams on demand, can hold new
/// watches until released, delays keepalive answers, partitions its client
/// from the store, and records calls, so a test can make changes
/// (and compact) while a watcher is disconnected, on either store.
#[derive(Clone)]
pub struct Faulty<S> {
    inner: S,
    faults: Arc<Faults>,
}

struct Faults {
    /// Bumped by [`Faulty::break_watches`]: every open watch fails.
    breaks: watch::Sender<u64>,
    /// `false` while new watches are held.
    watches_open: watch::Sender<bool>,
    calls: Mutex<Calls>,
    /// Watch opens that found the gate closed.
    held: AtomicUsize,
    /// Added to every keepalive answer (ms), as a slow network would.
    keepalive_delay_ms: AtomicU64,
    /// `false` while partitioned away from the store: every call and stream hangs.
    reachable: watch::Sender<bool>,
}

impl Faults {
    /// Waits while partitioned.
    async fn reachable(&self) {
        let mut reachable = self.reachable.subscribe();
        reachable.wait_for(|reachable| *reachable).await.expect("the sender lives in self");
    }
}

/// What a [`Faulty`] store was asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// Number of prefix reads.
    pub reads: usize,
    /// The start revision of every watch opened.
    pub watch_starts: Vec<i64>,
    /// Number of keepalive streams opened.
    pub keepalive_opens: usize,
}

impl<S: Store> Faulty<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        let faults = Faults {
            breaks: watch::channel(0).0,
            watches_open: watch::channel(true).0,
            calls: Mutex::new(Calls::default()),
            held: AtomicUsize::new(0),
            keepalive_delay_ms: AtomicU64::new(0),
            reachable: watch::channel(true).0,
        };
        Self { inner, faults: Arc::new(faults) }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Breaks every open watch stream (its next read fails).
    pub fn break_watches(&self) {
        self.faults.breaks.send_modify(|breaks| *breaks += 1);
    }

    /// Holds (`false`) or lets through (`true`) new watches.
    pub fn open_watches(&self, open: bool) {
        self.faults.watches_open.send_replace(open);
    }

    /// Delays every keepalive answer by `delay` after etcd handled it (the
    /// renewal happened; the node learns it late).
    pub fn delay_keepalive_answers(&self, delay: Duration) {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.faults.keepalive_delay_ms.store(delay_ms, Ordering::SeqCst);
    }

    /// Cuts (`true`) or heals (`false`) the network between this client and
    /// the store: calls and streams hang meanwhile (the store goes on,
    /// leases expire), as behind a partition; they go on once healed.
    pub fn partition(&self, partitioned: bool) {
        self.faults.reachable.send_replace(!partitioned);
    }

    /// How many watch opens found new watches held.
    pub fn held_watches(&self) -> usize {
        self.faults.held.load(Ordering::SeqCst)
    }

    /// What was called so far.
    pub fn calls(&self) -> Calls {
        self.faults.calls.lock().expect("calls lock poisoned").clone()
    }
}

impl<S: Store> Store for Faulty<S> {
    type Keeper = FaultyKeeper<S::Keeper>;
    type Watch = FaultyWatch<S::Watch>;

    async fn grant(&self, ttl: Duration) -> Result<Lease, StoreError> {
        self.faults.reachable().await;
        self.inner.grant(ttl).await
    }

    async fn revoke(&self, lease_id: i64) -> Result<(), StoreError> {
        self.faults.reachable().await;
        self.inner.revoke(lease_id).await
    }

    async fn put(&self, key: &str, value: &[u8], lease_id: i64) -> Result<i64, StoreError> {
        self.faults.reachable().await;
        self.inner.put(key, value, lease_id).await
    }

    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, i64), StoreError> {
        self.faults.reachable().await;
        self.inner.get(key).await
    }

    async fn delete(&self, key: &str) -> Result<i64, StoreError> {
        self.faults.reachable().await;
        self.inner.delete(key).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.faults.reachable().await;
        let outcome = self.inner.txn(txn).await;
        // An answer sent into a partition arrives only once it heals.
        self.faults.reachable().await;
        outcome
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        self.faults.calls.lock().expect("calls lock poisoned").reads += 1;
        self.faults.reachable().await;
        self.inner.get_prefix(prefix).await
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.faults.reachable().await;
        self.inner.compact(revision).await
    }

    async fn keep_alive(&self, lease_id: i64) -> Result<Self::Keeper, StoreError> {
        self.faults.calls.lock().expect("calls lock poisoned").keepalive_opens += 1;
        self.faults.reachable().await;
        let inner = self.inner.keep_alive(lease_id).await?;
        Ok(FaultyKeeper { inner, faults: Arc::clone(&self.faults) })
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<Self::Watch, StoreError> {
        let mut open = self.faults.watches_open.subscribe();
        if !*open.borrow() {
            self.faults.held.fetch_add(1, Ordering::SeqCst);
        }
        open.wait_for(|open| *open).await.expect("the sender lives in self");
        self.faults.calls.lock().expect("calls lock poisoned").watch_starts.push(start_revision);
        let mut breaks = self.faults.breaks.subscribe();
        breaks.mark_unchanged();
        self.faults.reachable().await;
        let inner = self.inner.watch_prefix(prefix, start_revision).await?;
        Ok(FaultyWatch { inner, breaks, faults: Arc::clone(&self.faults) })
    }
}

/// A keeper whose answers may be delayed ([`Faulty::delay_keepalive_answers`]).
pub struct FaultyKeeper<K> {
    inner: K,
    faults: Arc<Faults>,
}

impl<K: Keeper> Keeper for FaultyKeeper<K> {
    async fn renew(&mut self) -> Result<Option<Duration>, StoreError> {
        self.faults.reachable().await;
        let answer = self.inner.renew().await;
        let delay = Duration::from_millis(self.faults.keepalive_delay_ms.load(Ordering::SeqCst));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // An answer sent into a partition arrives only once it heals.
        self.faults.reachable().await;
        answer
    }
}

/// A watch that fails once [`Faulty::break_watches`] is called.
pub struct FaultyWatch<W> {
    inner: W,
    breaks: watch::Receiver<u64>,
    faults: Arc<Faults>,
}

impl<W: Watch> Watch for FaultyWatch<W> {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        let events = tokio::select! {
            biased;
            _ = self.breaks.changed() => return Err(StoreError::StreamClosed),
            events = self.inner.next() => events,
        };
        // Events sent into a partition arrive only once it heals.
        self.faults.reachable().await;
        events
    }
}

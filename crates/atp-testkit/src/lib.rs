//! Test support, dev-only: starts the real `atpd` binary on `127.0.0.1:0`
//! ([`Atpd`]), optionally inside a Linux network namespace whose link a
//! test can cut and heal ([`netns::NetNs`]), and waits on conditions with a
//! deadline ([`eventually`]).
//!
//! Nothing here sleeps to synchronise: readiness and exits are conditions
//! polled until a deadline. The binary is the one [`atpd_binary`] names: the
//! `ATPD_BIN` variable, or else `atpd` as `cargo build -p atpd` leaves it in
//! this workspace's target directory (built once per test process, so a
//! test of another crate never runs a stale node).

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use atp_proto::v1::admin_service_client::AdminServiceClient;
use atp_proto::v1::availability_service_client::AvailabilityServiceClient;
use atp_proto::v1::config_service_client::ConfigServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub mod netns;

use netns::NetNs;

/// How long a node may take to print its address and answer health checks.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two polls of a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A running `atpd` process, killed when dropped.
pub struct Atpd {
    child: Child,
    /// The address it bound.
    pub address: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// The data directory it owns (removed when dropped), if the test gave none.
    data: Option<tempfile::TempDir>,
}

impl Atpd {
    /// Starts `atpd` on a free port with a fresh data directory and
    /// `variables` set, and waits until it answers health checks.
    pub async fn start(variables: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("a temporary data directory");
        let mut atpd = Self::start_in(data.path(), variables).await;
        atpd.data = Some(data);
        atpd
    }

    /// Starts `atpd` on the data directory `data_dir` (kept by the caller),
    /// and waits until it has recovered and answers SERVING.
    pub async fn start_in(data_dir: &Path, variables: &[(&str, &str)]) -> Self {
        let atpd = Self::spawn_in(data_dir, variables);
        atpd.wait_until_serving().await;
        atpd
    }

    /// Starts `atpd` on `data_dir` and waits only until it printed its address.
    pub fn spawn_in(data_dir: &Path, variables: &[(&str, &str)]) -> Self {
        Self::spawn_binary_in(atpd_binary(), data_dir, variables)
    }

    /// Starts the node binary `binary` on `data_dir` and waits only until it
    /// printed its address.
    pub fn spawn_binary_in(binary: &Path, data_dir: &Path, variables: &[(&str, &str)]) -> Self {
        Self::spawn_command(Command::new(binary), data_dir, variables)
    }

    /// Starts `atpd` inside the network namespace `netns` on `data_dir`,
    /// and waits until it has recovered and answers SERVING (through the
    /// namespace's link: `variables` must make it listen on an address
    /// reachable from outside, e.g. `ATP_LISTEN_ADDR` = `netns.ip():PORT`).
    pub async fn start_in_netns(
        netns: &NetNs,
        data_dir: &Path,
        variables: &[(&str, &str)],
    ) -> Self {
        let command = netns.command(atpd_binary());
        let atpd = Self::spawn_command(command, data_dir, variables);
        atpd.wait_until_serving().await;
        atpd
    }

    /// Starts `command` (atpd, possibly behind a wrapper that execs it) on
    /// `data_dir` and waits only until it printed its address.
    fn spawn_command(mut command: Command, data_dir: &Path, variables: &[(&str, &str)]) -> Self {
        // Only what the test says: no inherited ATP_* keys or RUST_LOG.
        for (name, _) in std::env::vars() {
            if name.starts_with("ATP_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        command
            .env("ATP_LISTEN_ADDR", "127.0.0.1:0")
            .env("ATP_DATA_DIR", data_dir)
            .envs(variables.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start atpd");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (address_found, address_seen) = mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(address) = line.strip_prefix("atpd listening on ") {
                    let _ = address_found.send(address.trim().parse::<SocketAddr>());
                }
                lines.lock().expect("log lock").push(line);
            }
        });
        let address = match address_seen.recv_timeout(STARTUP_DEADLINE) {
            Ok(Ok(address)) => address,
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.lock().expect("log lock").join("\n");
                panic!("atpd printed no address ({outcome:?}); its stderr:\n{log}");
            }
        };
        Self { child, address, log, data: None }
    }

    /// Kills the process with SIGKILL (no shutdown, no flush) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// A channel to the node (connects lazily, reconnects as needed).
    pub fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address))
            .expect("a valid uri")
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy()
    }

    /// `http://IP:PORT` of the node.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The generated availability client over [`Atpd::channel`].
    pub fn availability(&self) -> AvailabilityServiceClient<Channel> {
        AvailabilityServiceClient::new(self.channel())
    }

    /// The generated configuration client over [`Atpd::channel`].
    pub fn config(&self) -> ConfigServiceClient<Channel> {
        ConfigServiceClient::new(self.channel())
    }

    /// The generated admin client over [`Atpd::channel`].
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel())
    }

    /// The health client over [`Atpd::channel`].
    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel())
    }

    /// Waits until the node answers SERVING (panics with its log past
    /// [`STARTUP_DEADLINE`]).
    pub async fn wait_until_serving(&self) {
        let mut health = self.health();
        let serving = eventually(STARTUP_DEADLINE, || {
            let mut health = health.clone();
            async move {
                let request = HealthCheckRequest { service: String::new() };
                matches!(
                    health.check(request).await,
                    Ok(response) if response.get_ref().status() == ServingStatus::Serving
                )
            }
        })
        .await;
        if !serving {
            panic!("atpd never reported SERVING; its stderr:\n{}", self.log());
        }
        // Keep one connection warm for the test's first call.
        let _ = health.check(HealthCheckRequest { service: String::new() }).await;
    }

    /// Sends SIGTERM through the `kill` command (no libc or nix needed).
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// SIGSTOP: the process stops where it is; its sockets stay open and
    /// their peers see no answer (nor a reset) until [`Atpd::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Atpd::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed: {status}");
    }

    /// Waits for the process to exit, up to `deadline`. Async, so that the
    /// test's own connections keep answering the server's goodbye meanwhile.
    pub async fn wait_for_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let mut status = None;
        eventually(deadline, || {
            status = self.child.try_wait().expect("poll the child");
            std::future::ready(status.is_some())
        })
        .await;
        status
    }
}

impl Drop for Atpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` until it holds or `deadline` passes; returns whether it held.
pub async fn eventually<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The `atpd` binary the tests start: `ATPD_BIN` if set, else the workspace's
/// debug `atpd`, built by `cargo build -p atpd` the first time it is asked for.
pub fn atpd_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(binary) = std::env::var_os("ATPD_BIN") {
            return PathBuf::from(binary);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "atpd", "--bin", "atpd"])
            .current_dir(&workspace)
            .status()
            .expect("run cargo build -p atpd");
        assert!(status.success(), "cargo build -p atpd failed: {status}");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace.join("target"), PathBuf::from);
        let binary = target.join("debug").join(format!("atpd{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.exists(), "no atpd at {}", binary.display());
        binary
    })
}

/// Fixtures most tests start from: warehouses, a `web` channel, stock.
impl Atpd {
    /// Upserts an ACTIVE warehouse for each of `locations` (named
    /// "warehouse ID") and the ACTIVE channel `web` selling from
    /// `channel_locations` (no buffer, no cap).
    pub async fn configure_web(&self, locations: &[&str], channel_locations: &[&str]) {
        use atp_proto::v1;
        let mut config = self.config();
        for id in locations {
            let location = v1::Location {
                location_id: (*id).into(),
                kind: v1::LocationKind::Warehouse.into(),
                name: format!("warehouse {id}"),
                state: v1::LifecycleState::Active.into(),
                ..Default::default()
            };
            let request = v1::UpsertLocationRequest { location: Some(location) };
            config.upsert_location(request).await.expect("upsert location");
        }
        let channel = v1::Channel {
            channel_id: "web".into(),
            name: "web shop".into(),
            location_ids: channel_locations.iter().map(|id| (*id).into()).collect(),
            buffer: 0,
            cap: None,
            state: v1::LifecycleState::Active.into(),
            ..Default::default()
        };
        let request = v1::UpsertChannelRequest { channel: Some(channel) };
        config.upsert_channel(request).await.expect("upsert channel");
    }

    /// Receives `quantity` units of each of `skus` at dc-1 (event ids
    /// `{tag}-{sku}`), in calls of 1,000 events.
    pub async fn receive_all(&self, skus: &[String], quantity: i64, tag: &str) {
        use atp_proto::v1;
        for chunk in skus.chunks(1000) {
            let events = chunk
                .iter()
                .map(|sku| v1::StockEvent {
                    event_id: format!("{tag}-{sku}"),
                    sku: sku.clone(),
                    location_id: "dc-1".into(),
                    kind: Some(v1::stock_event::Kind::Received(v1::Received { quantity })),
                })
                .collect();
            let request = v1::ApplyStockEventsRequest { events };
            self.availability().apply_stock_events(request).await.expect("stock events");
        }
    }

    /// Holds `quantity` of `sku` at dc-1 on the web channel for an hour,
    /// as reservation `id`.
    pub async fn hold_on_web(&self, id: &str, sku: &str, quantity: i64) {
        use atp_proto::v1;
        let reserve = v1::ReserveRequest {
            reservation_id: id.into(),
            channel_id: "web".into(),
            lines: vec![v1::ReservationLine {
                sku: sku.into(),
                location_id: "dc-1".into(),
                quantity,
            }],
            ttl_seconds: 3600,
            metadata: None,
        };
        self.availability().reserve(reserve).await.expect("reserve");
    }

    /// Receives `quantity` units of `sku` at `location` (event id
    /// `recv-{sku}-{location}`) and checks the event was applied.
    pub async fn receive(&self, sku: &str, location: &str, quantity: i64) {
        use atp_proto::v1;
        let event = v1::StockEvent {
            event_id: format!("recv-{sku}-{location}"),
            sku: sku.into(),
            location_id: location.into(),
            kind: Some(v1::stock_event::Kind::Received(v1::Received { quantity })),
        };
        let request = v1::ApplyStockEventsRequest { events: vec![event] };
        let reply = self.availability().apply_stock_events(request).await.expect("stock events");
        let result = &reply.get_ref().results[0];
        assert_eq!(result.outcome(), v1::StockEventOutcome::Applied, "{result:?}");
    }
}

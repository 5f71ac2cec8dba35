//! Starts the real `atpd` binary on `127.0.0.1:0` and connects to it.
//!
//! Nothing here sleeps to synchronise: readiness and exits are conditions
//! polled until a deadline.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use atp_proto::v1::admin_service_client::AdminServiceClient;
use atp_proto::v1::availability_service_client::AvailabilityServiceClient;
use atp_proto::v1::config_service_client::ConfigServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

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
        let mut command = Command::new(env!("CARGO_BIN_EXE_atpd"));
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

    pub fn availability(&self) -> AvailabilityServiceClient<Channel> {
        AvailabilityServiceClient::new(self.channel())
    }

    pub fn config(&self) -> ConfigServiceClient<Channel> {
        ConfigServiceClient::new(self.channel())
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel())
    }

    pub fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel())
    }

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
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
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

//! Test support: a real HTTP receiver that fails on purpose ([`Receiver`]),
//! the publisher as a real process ([`Publisher`]), plain HTTP calls to its
//! admin API, and the node-side helpers (stock events, holds, the truth by
//! GetAvailability).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atp_proto::v1;
use atp_testkit::{Atpd, eventually};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A version as the receiver compares it.
pub type Version = (u64, u64);

/// What the receiver holds and saw.
#[derive(Debug, Default)]
pub struct Received {
    /// Per SKU: the applied (atp, published, version).
    pub applied: HashMap<String, (i64, i64, Version)>,
    /// Per SKU: every version applied, in order.
    pub history: HashMap<String, Vec<Version>>,
    /// Items received per SKU (applied or not).
    pub items_per_sku: HashMap<String, usize>,
    /// Items older than the applied one (dropped; fine).
    pub stale: usize,
    /// Items with the applied version but other figures (a bug).
    pub conflicts: Vec<String>,
    /// Requests answered 500 / held past the timeout / answered 200.
    pub failed: usize,
    /// Requests held past the publisher's timeout.
    pub timed_out: usize,
    /// Requests answered 200.
    pub acknowledged: usize,
    /// Bodies that were not the documented JSON (a bug).
    pub malformed: usize,
}

impl Received {
    /// Reads a request's items; applies them if `apply`. False: malformed.
    fn take(&mut self, body: &[u8], apply: bool) -> bool {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            self.malformed += 1;
            return false;
        };
        let Some(items) = value["items"].as_array() else {
            self.malformed += 1;
            return false;
        };
        if value["channel_id"] != "web" {
            self.malformed += 1;
        }
        for item in items {
            let (Some(sku), Some(atp), Some(published), Some(epoch), Some(sequence)) = (
                item["sku"].as_str(),
                item["atp"].as_i64(),
                item["published"].as_i64(),
                item["version"]["epoch"].as_u64(),
                item["version"]["sequence"].as_u64(),
            ) else {
                self.malformed += 1;
                continue;
            };
            *self.items_per_sku.entry(sku.to_owned()).or_default() += 1;
            let version = (epoch, sequence);
            if !apply {
                continue;
            }
            match self.applied.get(sku) {
                Some((_, _, held)) if *held > version => self.stale += 1,
                Some((held_atp, held_published, held)) if *held == version => {
                    if (*held_atp, *held_published) != (atp, published) {
                        self.conflicts.push(format!("{sku} at {version:?}"));
                    }
                }
                _ => {
                    self.applied.insert(sku.to_owned(), (atp, published, version));
                    self.history.entry(sku.to_owned()).or_default().push(version);
                }
            }
        }
        true
    }

    /// SKUs whose applied version ever decreased (must be none).
    pub fn went_backwards(&self) -> Vec<String> {
        self.history
            .iter()
            .filter(|(_, versions)| versions.windows(2).any(|pair| pair[1] < pair[0]))
            .map(|(sku, _)| sku.clone())
            .collect()
    }
}

/// How the receiver misbehaves.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Percent of requests answered 500.
    pub fail_percent: u32,
    /// Percent of requests held for `hold` (after applying them: an
    /// acknowledgement lost).
    pub timeout_percent: u32,
    /// How long a held request is held.
    pub hold: Duration,
}

struct ReceiverState {
    received: Arc<Mutex<Received>>,
    blackhole: Arc<AtomicBool>,
    rng: Mutex<fastrand::Rng>,
    faults: Faults,
}

/// A real HTTP receiver on 127.0.0.1:0.
pub struct Receiver {
    /// What it holds.
    pub received: Arc<Mutex<Received>>,
    /// While true every request fails (503), its items only recorded as attempted.
    pub blackhole: Arc<AtomicBool>,
    /// Its address.
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn figures(State(state): State<Arc<ReceiverState>>, body: Bytes) -> StatusCode {
    if state.blackhole.load(Ordering::SeqCst) {
        let mut received = state.received.lock().expect("lock");
        received.take(&body, false);
        received.failed += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let roll = state.rng.lock().expect("rng lock").u32(0..100);
    if roll < state.faults.fail_percent {
        state.received.lock().expect("lock").failed += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if roll < state.faults.fail_percent + state.faults.timeout_percent {
        {
            let mut received = state.received.lock().expect("lock");
            received.take(&body, true);
            received.timed_out += 1;
        }
        // A slow receiver, not a synchronisation: the publisher gives up first.
        tokio::time::sleep(state.faults.hold).await;
        return StatusCode::OK;
    }
    let mut received = state.received.lock().expect("lock");
    if !received.take(&body, true) {
        return StatusCode::BAD_REQUEST;
    }
    received.acknowledged += 1;
    StatusCode::OK
}

impl Receiver {
    /// Starts a receiver with `faults`, its randomness seeded by `seed`.
    pub async fn start(faults: Faults, seed: u64) -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let blackhole = Arc::new(AtomicBool::new(false));
        let state = Arc::new(ReceiverState {
            received: Arc::clone(&received),
            blackhole: Arc::clone(&blackhole),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            faults,
        });
        let router = Router::new().route("/figures", post(figures)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("an address");
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("the receiver serves");
        });
        Self { received, blackhole, address, task }
    }

    /// `http://ADDR/figures`.
    pub fn url(&self) -> String {
        format!("http://{}/figures", self.address)
    }
}

/// The publisher as a real process, killed (SIGKILL) when dropped.
pub struct Publisher {
    child: Child,
    /// Its admin API's address.
    pub admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// A config file for one channel `web` pushing to `url`.
pub fn write_config(directory: &Path, atpd: &Atpd, url: &str, extra: &str) -> PathBuf {
    let path = directory.join("publish.toml");
    let state_dir = directory.join("state");
    let text = format!(
        "atp_endpoints = [\"http://127.0.0.1:1\", \"{}\"]\n\
         state_dir = {:?}\n\
         admin_listen = \"127.0.0.1:0\"\n\
         [[channels]]\n\
         channel_id = \"web\"\n\
         url = \"{url}\"\n{extra}\n",
        atpd.endpoint(),
        state_dir.display().to_string(),
    );
    std::fs::write(&path, text).expect("write the config");
    path
}

impl Publisher {
    /// Starts `atp-publish PATH` and waits until its admin API listens.
    pub async fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_atp-publish"))
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start atp-publish");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().expect("log lock").push(line);
            }
        });
        let mut admin = None;
        let found = eventually(Duration::from_secs(20), || {
            admin = log.lock().expect("log lock").iter().find_map(|line| {
                line.strip_prefix("atp-publish admin listening on ")
                    .and_then(|address| address.trim().parse().ok())
            });
            std::future::ready(admin.is_some())
        })
        .await;
        let log_text = log.lock().expect("log lock").join("\n");
        assert!(found, "atp-publish printed no admin address; its stderr:\n{log_text}");
        Self { child, admin: admin.expect("found"), log }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// GET /v1/status.
    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = http(self.admin, "GET", "/v1/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One plain HTTP/1.1 request without a body: (status code, body).
pub async fn http(address: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let code =
        answer.split_whitespace().nth(1).and_then(|code| code.parse().ok()).expect("a status line");
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (code, body)
}

/// SKU names.
pub fn skus(count: usize) -> Vec<String> {
    (0..count).map(|n| format!("sku-{n:04}")).collect()
}

/// web's (atp, published) of every SKU by GetAvailability.
pub async fn truth(atpd: &Atpd, skus: &[String]) -> HashMap<String, (i64, i64)> {
    let request = v1::GetAvailabilityRequest {
        skus: skus.to_vec(),
        channel_ids: vec!["web".into()],
        ..Default::default()
    };
    let reply = atpd.availability().get_availability(request).await.expect("availability");
    reply
        .into_inner()
        .skus
        .into_iter()
        .map(|sku| {
            let channel = &sku.channels[0];
            (sku.sku, (channel.atp, channel.published))
        })
        .collect()
}

/// The receiver's applied (atp, published) of `skus` ((0, 0) if never received).
pub fn seen(received: &Mutex<Received>, skus: &[String]) -> HashMap<String, (i64, i64)> {
    figures_of(&received.lock().expect("lock").applied, skus)
}

/// (atp, published) of `skus` in `held` ((0, 0) if absent).
pub fn figures_of(
    held: &HashMap<String, (i64, i64, Version)>,
    skus: &[String],
) -> HashMap<String, (i64, i64)> {
    skus.iter()
        .map(|sku| {
            let figure = held.get(sku).map_or((0, 0), |(atp, published, _)| (*atp, *published));
            (sku.clone(), figure)
        })
        .collect()
}

/// Waits (up to `deadline`) until the receiver's figures equal GetAvailability's.
pub async fn converges(
    atpd: &Atpd,
    receiver: &Receiver,
    skus: &[String],
    deadline: Duration,
) -> bool {
    eventually(deadline, move || async move {
        let want = truth(atpd, skus).await;
        seen(&receiver.received, skus) == want
    })
    .await
}

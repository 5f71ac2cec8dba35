//! An in-process atp node served on `127.0.0.1:0`, and short load configs.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::net::SocketAddr;
use std::time::Duration;

use atp_loadgen::{Config, Mode, Scenario};
use atp_server::{ServerConfig, serve};
use atp_shard::{Clock, Node, NodeConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A node (in memory) and the gRPC server in front of it.
pub struct Server {
    /// The node; it outlives a stop and restart of the server.
    pub node: Node,
    /// Where the server listens.
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<()>>,
}

impl Server {
    /// A fresh in-memory node served on a free port.
    pub async fn start() -> Self {
        let node = Node::start(NodeConfig::default(), Clock::system());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let address = listener.local_addr().expect("bound address");
        let (stop, serving) = serve_on(node.clone(), listener);
        Self { node, address, stop: Some(stop), serving: Some(serving) }
    }

    /// The endpoint the load generator takes.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops serving (the node keeps its state) and waits until the port is free.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(serving) = self.serving.take() {
            serving.await.expect("the server task ends");
        }
    }

    /// Serves the same node on the same port again.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.address).await.expect("bind the same port again");
        let (stop, serving) = serve_on(self.node.clone(), listener);
        (self.stop, self.serving) = (Some(stop), Some(serving));
    }
}

fn serve_on(node: Node, listener: TcpListener) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let served = serve(node, listener, ServerConfig::default(), shutdown);
    (stop, tokio::spawn(async move { served.await.expect("serves cleanly") }))
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.node.shutdown();
    }
}

/// About one second of `scenario` in `mode` against `server`, on a small
/// data set (setup stays quick in a debug build).
pub fn short(server: &Server, scenario: Scenario, mode: Mode) -> Config {
    Config {
        endpoint: server.endpoint(),
        scenario,
        mode,
        clients: 32,
        rate: 300.0,
        connections: 2,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        skus: 200,
        locations: 3,
        // A debug build on a busy machine: a slow answer is not a lost one.
        request_timeout: Duration::from_secs(30),
        ..Config::default()
    }
}

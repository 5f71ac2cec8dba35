//! Telemetry with real parts: a trace across two real `atpd` nodes received
//! by an OTLP TraceService the test serves on loopback, and a real
//! Prometheus (Debian's `prometheus`) scraping three nodes, read back
//! through its HTTP API. Skipped without an etcd binary (failed if `CI` is
//! set); the Prometheus test likewise without a `prometheus` binary.

mod common;
#[path = "common/three_nodes.rs"]
mod three_nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use atp_cluster::testing::EtcdProcess;
use atp_core::hash::shard_of;
use atp_proto::v1;
use common::{Atpd, eventually};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use three_nodes::{Claims, Cluster, DEADLINE, claims};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Request, Response, Status};

/// One span as received: which node sent it and its ids.
#[derive(Clone, Debug)]
struct Received {
    node: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// An OTLP TraceService keeping every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("not poisoned");
        for resource_spans in request.into_inner().resource_spans {
            let node = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.instance.id")
                .and_then(|attribute| attribute.value.as_ref()?.value.clone())
                .map(|value| match value {
                    Value::StringValue(text) => text,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        node: node.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Serves `receiver` on 127.0.0.1:0; returns its address.
async fn serve_receiver(receiver: Receiver) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    address
}

/// The first `prefix-N` key whose shard node `owner` serves in `claims`.
fn owned_by(claims: &Claims, owner: &str, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|key| claims[&shard_of(key)].0 == owner)
        .expect("a key of that node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_with_lines_on_two_nodes_is_one_trace_across_them() {
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let receiver = Receiver::default();
    let collector = format!("http://{}", serve_receiver(receiver.clone()).await);
    // Sample nothing of atpd's own: only the caller's sampled traceparent
    // is followed, so every span received must be of the test's trace.
    let cluster = Cluster::start_with(
        &etcd,
        "traces",
        &[
            ("ATP_OTLP_ENDPOINT", &collector),
            ("ATP_TRACE_SAMPLE_RATIO", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let claims = claims(&cluster.store, &cluster.keys).await;
    let (first, second) = (&cluster.nodes[0], &cluster.nodes[1]);
    let here = owned_by(&claims, &cluster.ids[0], "sku-here");
    let there = owned_by(&claims, &cluster.ids[1], "sku-there");
    let id = owned_by(&claims, &cluster.ids[0], "order");
    first.configure_web(&["dc-1"], &["dc-1"]).await;
    first.receive(&here, "dc-1", 10).await;
    second.receive(&there, "dc-1", 10).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let line = |sku: &str| v1::ReservationLine {
        sku: sku.to_owned(),
        location_id: "dc-1".into(),
        quantity: 2,
    };
    let mut request = Request::new(v1::ReserveRequest {
        reservation_id: id.clone(),
        channel_id: "web".into(),
        lines: vec![line(&here), line(&there)],
        ttl_seconds: 600,
        metadata: None,
    });
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    request.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
    let reply = first.availability().reserve(request).await.expect("reserve").into_inner();
    assert_eq!(reply.reservation.expect("the reservation").lines.len(), 2);

    let trace = hex(trace_id);
    let ours = |spans: &[Received]| -> Vec<Received> {
        spans.iter().filter(|span| span.trace_id == trace).cloned().collect()
    };
    let across = eventually(DEADLINE, || async {
        let spans = receiver.spans.lock().expect("not poisoned").clone();
        let nodes: BTreeSet<String> = ours(&spans).into_iter().map(|span| span.node).collect();
        nodes.contains(&cluster.ids[0]) && nodes.contains(&cluster.ids[1])
    })
    .await;
    let spans = receiver.spans.lock().expect("not poisoned").clone();
    assert!(across, "no trace with spans of both nodes; received {spans:#?}");

    // Node 0's Reserve is the child of the caller's span; node 1's
    // ApplyLineOps (the line it holds) the child of node 0's Reserve.
    let reserve = ours(&spans)
        .into_iter()
        .find(|span| span.node == cluster.ids[0] && span.name.ends_with("/Reserve"))
        .unwrap_or_else(|| panic!("no Reserve span of node 0 in {spans:#?}"));
    assert_eq!(reserve.name, "atp.v1.AvailabilityService/Reserve");
    assert_eq!(reserve.parent_span_id, hex(parent_id), "the caller's span is the parent");
    let applied = ours(&spans)
        .into_iter()
        .find(|span| span.node == cluster.ids[1] && span.parent_span_id == reserve.span_id)
        .unwrap_or_else(|| panic!("no span of node 1 under node 0's Reserve in {spans:#?}"));
    assert_eq!(applied.name, "atp.internal.v1.PeerService/ApplyLineOps");
    // Sampling follows the caller: nothing else was traced (ratio 0).
    let others: Vec<&Received> = spans.iter().filter(|span| span.trace_id != trace).collect();
    assert!(others.is_empty(), "spans of unsampled requests were exported: {others:#?}");
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex"))
        .collect()
}

/// The address a node's metrics endpoint printed (`atpd metrics on ...`).
fn metrics_address(node: &Atpd) -> String {
    let log = node.log();
    log.lines()
        .find_map(|line| line.strip_prefix("atpd metrics on "))
        .unwrap_or_else(|| panic!("no metrics line in the log:\n{log}"))
        .trim()
        .to_owned()
}

/// GET `path` from `address` over plain HTTP/1.0; the status line and body.
async fn http_get(address: &str, path: &str) -> Option<(String, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// Percent-encodes a PromQL query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A real Prometheus on loopback with its own data directory, killed on drop.
struct Prometheus {
    child: tokio::process::Child,
    address: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// The Prometheus binary: `ATP_PROMETHEUS_BIN`, else Debian's.
    fn binary() -> Option<PathBuf> {
        let path = std::env::var_os("ATP_PROMETHEUS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
        path.exists().then_some(path)
    }

    /// Starts it scraping `targets` every 500 ms.
    async fn start(binary: &PathBuf, targets: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("a directory");
        let targets: Vec<String> = targets.iter().map(|target| format!("'{target}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n\
             scrape_configs:\n  - job_name: atpd\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write the config");
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("address").port()
        };
        let address = format!("127.0.0.1:{port}");
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("a log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        Self { child, address, dir }
    }

    /// The log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The instant query's result vector (`data.result`), if it answered.
    async fn query(&self, query: &str) -> Option<Vec<serde_json::Value>> {
        let path = format!("/api/v1/query?query={}", encode(query));
        let (status, body) = http_get(&self.address, &path).await?;
        if !status.contains(" 200 ") {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The value of one sample of an instant query's result.
fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().and_then(|text| text.parse().ok()).unwrap_or(f64::NAN)
}

/// Metric names used by the Grafana dashboard in the chart.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../helm/atp/dashboards/atp-overview.json");
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    let mut names = BTreeSet::new();
    for expr in exprs {
        let bytes = expr.as_bytes();
        let mut at = 0;
        while let Some(found) = expr[at..].find("atp_") {
            let start = at + found;
            let boundary = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let end = expr[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |length| start + length);
            if boundary {
                names.insert(expr[start..end].to_owned());
            }
            at = end;
        }
    }
    names
}

fn collect_exprs(json: &serde_json::Value, into: &mut Vec<String>) {
    match json {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query" | "definition", serde_json::Value::String(text)) => {
                        into.push(text.clone())
                    }
                    _ => collect_exprs(value, into),
                }
            }
        }
        serde_json::Value::Array(values) => {
            values.iter().for_each(|value| collect_exprs(value, into))
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_request_counter_and_the_fsync_histogram_of_three_nodes() {
    let Some(binary) = Prometheus::binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs prometheus (apt-get install prometheus)"
        );
        eprintln!(
            "skipped: no prometheus binary (install Debian's prometheus or set ATP_PROMETHEUS_BIN)"
        );
        return;
    };
    let Some(etcd) = EtcdProcess::start_or_skip().await else { return };
    let cluster =
        Cluster::start_with(&etcd, "metrics", &[("ATP_METRICS_LISTEN_ADDR", "127.0.0.1:0")]).await;
    let targets: Vec<String> = cluster.nodes.iter().map(metrics_address).collect();
    let prometheus = Prometheus::start(&binary, &targets).await;
    let scraping = eventually(DEADLINE, || async {
        let up = prometheus.query("sum(up{job=\"atpd\"})").await;
        up.is_some_and(|result| result.first().map(value) == Some(3.0))
    })
    .await;
    assert!(scraping, "Prometheus never scraped the three nodes; its log:\n{}", prometheus.log());

    // Reserves through every node, of SKUs spread over all of them.
    let node = &cluster.nodes[0];
    node.configure_web(&["dc-1"], &["dc-1"]).await;
    let skus: Vec<String> = (0..30).map(|n| format!("metered-{n}")).collect();
    node.receive_all(&skus, 100, "stock").await;
    // Each node handles the Reserves sent to it, and those forwarded to it
    // as the owner of the reservation id's home shard.
    let claims = claims(&cluster.store, &cluster.keys).await;
    let mut handled: BTreeMap<String, f64> = BTreeMap::new();
    for (n, sku) in skus.iter().enumerate() {
        let id = format!("order-{n}");
        cluster.nodes[n % 3].hold_on_web(&id, sku, 1).await;
        *handled.entry(targets[n % 3].clone()).or_default() += 1.0;
        let home = &claims[&shard_of(&id)].0;
        if *home != cluster.ids[n % 3] {
            let owner = cluster.ids.iter().position(|node| node == home).expect("a member");
            *handled.entry(targets[owner].clone()).or_default() += 1.0;
        }
    }

    // Every node's Reserve counter, through Prometheus's HTTP API.
    let reserve_query = "sum by (instance) (atp_grpc_server_handled_total{grpc_service=\"atp.v1.AvailabilityService\",grpc_method=\"Reserve\",grpc_code=\"OK\"})";
    let per_instance = |result: Vec<serde_json::Value>| -> BTreeMap<String, f64> {
        result
            .iter()
            .filter_map(|sample| {
                Some((sample["metric"]["instance"].as_str()?.to_owned(), value(sample)))
            })
            .collect()
    };
    let counted = eventually(DEADLINE, || async {
        prometheus.query(reserve_query).await.map(per_instance) == Some(handled.clone())
    })
    .await;
    assert!(
        counted,
        "Prometheus never counted the Reserves each node handled ({handled:?}); last answer {:?}; its log:\n{}",
        prometheus.query(reserve_query).await,
        prometheus.log()
    );

    // A refusal is counted under its code (a trailers-only answer).
    let refused = v1::ReserveRequest { reservation_id: String::new(), ..Default::default() };
    let status = node.availability().reserve(refused).await.expect_err("no id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let invalid = "sum(atp_grpc_server_handled_total{grpc_method=\"Reserve\",grpc_code=\"INVALID_ARGUMENT\"})";
    let counted = eventually(DEADLINE, || async {
        prometheus.query(invalid).await.is_some_and(|result| result.first().map(value) == Some(1.0))
    })
    .await;
    assert!(counted, "the refusal was not counted once: {:?}", prometheus.query(invalid).await);

    // The fsync histogram: durable commits were made, in buckets.
    let fsyncs = "sum(atp_fsync_duration_seconds_count)";
    let synced = eventually(DEADLINE, || async {
        prometheus
            .query(fsyncs)
            .await
            .is_some_and(|result| result.first().is_some_and(|sample| value(sample) >= 30.0))
    })
    .await;
    assert!(synced, "no fsyncs counted: {:?}", prometheus.query(fsyncs).await);
    // Over every commit since start (a rate over a window could be empty
    // by now: the load is over).
    let p99 = "histogram_quantile(0.99, sum by (le) (atp_fsync_duration_seconds_bucket))";
    let p99_seconds = async || prometheus.query(p99).await?.first().map(value);
    let measured = eventually(DEADLINE, || async {
        p99_seconds().await.is_some_and(|seconds| seconds.is_finite() && seconds > 0.0)
    })
    .await;
    let seconds = p99_seconds().await;
    assert!(measured, "no fsync p99 from the buckets: {seconds:?}");
    let seconds = seconds.expect("a p99");
    assert!(seconds > 0.0 && seconds <= 10.0, "fsync p99 {seconds} s");

    // Every node's shards add up to the whole cluster's.
    let owned = "sum(atp_shards_owned)";
    let all = eventually(DEADLINE, || async {
        prometheus
            .query(owned)
            .await
            .is_some_and(|result| result.first().map(value) == Some(1024.0))
    })
    .await;
    assert!(all, "the nodes' shards do not add up to 1024: {:?}", prometheus.query(owned).await);

    // Every metric the dashboard draws is one atpd exports.
    let exported: BTreeSet<String> = prometheus
        .query("count by (__name__) ({__name__=~\"atp_.+\"})")
        .await
        .expect("an answer")
        .iter()
        .filter_map(|sample| sample["metric"]["__name__"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<String> =
        dashboard_metrics().into_iter().filter(|name| !exported.contains(name)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics atpd does not export: {missing:?}; exported: {exported:?}"
    );
}

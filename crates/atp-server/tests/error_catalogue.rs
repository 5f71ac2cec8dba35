//! `docs/API.md`'s error catalogue against what the server really answers.
//!
//! The reasons come from statuses the server code builds (one sample of every
//! domain and node error, the layers' refusals, the message-size rewrite), not
//! from a copy of the table; the table is parsed out of `docs/API.md`. Both
//! ways: a reason the server answers must have a row with its code and
//! metadata keys, and every row must be a reason the server has. A scan of
//! the server's sources makes sure no status is built around [`Reason`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use atp_cluster::{Members, Refusal};
use atp_core::CoreError;
use atp_core::catalog::Lifecycle;
use atp_core::reservation::ReservationState;
use atp_proto::{Reason, code_name, reason_of};
use atp_server::layers::{TooLargeLayer, layers};
use atp_server::{node_status, refusal_status};
use atp_shard::NodeError;
use tonic::Status;
use tonic::codegen::http;
use tonic_types::StatusExt;
use tower::{BoxError, Layer, Service, ServiceExt};

/// One row of the table: code, metadata keys, retry advice.
#[derive(Debug)]
struct Row {
    code: String,
    metadata: BTreeSet<String>,
    retry: String,
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The rows of the table under `### Error catalogue` in `docs/API.md`.
fn catalogue() -> BTreeMap<String, Row> {
    let text = std::fs::read_to_string(repository().join("docs/API.md")).expect("docs/API.md");
    let section = text.split("### Error catalogue").nth(1).expect("an error catalogue section");
    let section = section.split("\n#").next().expect("the section's text");
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 4, "a row has reason, code, metadata keys, retry: {line}");
        let unquote = |cell: &str| cell.trim_matches('`').to_owned();
        let metadata = match cells[2] {
            "—" => BTreeSet::new(),
            keys => keys.split(',').map(|key| unquote(key.trim())).collect(),
        };
        let row = Row { code: unquote(cells[1]), metadata, retry: cells[3].to_owned() };
        let previous = rows.insert(unquote(cells[0]), row);
        assert!(previous.is_none(), "{} has two rows", cells[0]);
    }
    assert!(!rows.is_empty(), "no rows found in the catalogue");
    rows
}

/// One instance of every domain error; the match makes a new variant fail
/// to compile here until it has a sample.
fn core_samples() -> Vec<CoreError> {
    let samples = vec![
        CoreError::invalid("lines[0].sku", "must not be empty"),
        CoreError::InsufficientStock {
            sku: "mug".into(),
            location: "dc-1".into(),
            requested: 3,
            available: 1,
        },
        CoreError::WrongState {
            reservation_id: "r-1".into(),
            state: ReservationState::Expired,
            operation: "commit",
        },
        CoreError::NotActive {
            kind: "location",
            id: "dc-1".into(),
            state: Lifecycle::Paused,
            operation: "take holds",
        },
        CoreError::FailedPrecondition("releasing more than is unavailable".into()),
        CoreError::AlreadyExists("event e-1 was already applied with another payload".into()),
        CoreError::NotFound("reservation r-1 not found".into()),
        CoreError::InProgress("reservation r-1 is being created; retry".into()),
    ];
    for sample in &samples {
        match sample {
            CoreError::InvalidArgument(_)
            | CoreError::InsufficientStock { .. }
            | CoreError::WrongState { .. }
            | CoreError::NotActive { .. }
            | CoreError::FailedPrecondition(_)
            | CoreError::AlreadyExists(_)
            | CoreError::NotFound(_)
            | CoreError::InProgress(_) => {}
        }
    }
    samples
}

/// One instance of every node error (domain errors wrapped), likewise exhaustive.
fn node_samples() -> Vec<NodeError> {
    let mut samples: Vec<NodeError> = core_samples().into_iter().map(NodeError::Core).collect();
    samples.extend([
        NodeError::Overloaded { shard: 3 },
        NodeError::ShuttingDown,
        NodeError::Recovering,
        NodeError::StorageFailed("fsync failed".into()),
        NodeError::DiskFull("no space left on device".into()),
        NodeError::ShardUnavailable { shard: 7, reason: "no answer within 3000 ms".into() },
    ]);
    for sample in &samples {
        match sample {
            NodeError::Core(_)
            | NodeError::Overloaded { .. }
            | NodeError::ShuttingDown
            | NodeError::Recovering
            | NodeError::StorageFailed(_)
            | NodeError::DiskFull(_)
            | NodeError::ShardUnavailable { .. } => {}
        }
    }
    samples
}

type Request = http::Request<()>;
type Response = http::Response<()>;

fn never_answers(_: Request) -> std::future::Pending<Result<Response, BoxError>> {
    std::future::pending()
}

fn layer_status(error: BoxError) -> Status {
    *error.downcast::<Status>().expect("the layers answer statuses")
}

/// The statuses the tower layers answer: shed load, and a timeout.
async fn layer_samples() -> Vec<Status> {
    let mut service = layers(Duration::from_millis(1), 1, 1024).service_fn(never_answers);
    let in_flight = service.ready().await.expect("ready").call(Request::new(()));
    let shed = service.ready().await.expect("ready").call(Request::new(())).await;
    let timed_out = in_flight.await;
    vec![
        layer_status(shed.expect_err("over the limit")),
        layer_status(timed_out.expect_err("past the timeout")),
    ]
}

/// The status of a request over the message limit: tonic's own refusal, as
/// the server's layer passes it on.
async fn too_large_sample() -> Status {
    let tonic_refusal = |_: Request| async {
        let status = Status::out_of_range(
            "Error, decoded message length too large: found 5000 bytes, the limit is: 1024 bytes",
        );
        Ok::<_, BoxError>(status.into_http::<()>())
    };
    let service = TooLargeLayer::new(1024).layer(tower::service_fn(tonic_refusal));
    let response = service.oneshot(Request::new(())).await.expect("an answer");
    Status::from_header_map(response.headers()).expect("a status in the headers")
}

async fn every_status() -> Vec<Status> {
    let mut statuses: Vec<Status> = node_samples().into_iter().map(node_status).collect();
    statuses.extend(layer_samples().await);
    statuses.push(too_large_sample().await);
    statuses.extend(refusal_samples());
    statuses
}

/// The statuses a node in cluster mode answers for a shard it does not serve.
fn refusal_samples() -> Vec<Status> {
    let mut members = Members::default();
    members.nodes.insert("b".to_owned(), "10.0.0.2:50051".to_owned());
    [
        Refusal::FailingClosed,
        Refusal::NotOwner { owner: Some("b".to_owned()), epoch: Some(9) },
        Refusal::StaleEpoch { owner: None, epoch: None },
        Refusal::StaleEpoch { owner: Some("b".to_owned()), epoch: Some(9) },
    ]
    .iter()
    .map(|refusal| refusal_status(refusal, 3, &members))
    .collect()
}

#[tokio::test]
async fn every_reason_the_server_answers_is_in_the_catalogue_and_back() {
    let rows = catalogue();
    let mut answered = BTreeSet::new();
    for status in every_status().await {
        let reason = reason_of(&status)
            .unwrap_or_else(|| panic!("a status without an atp reason: {status:?}"));
        answered.insert(reason);
        let row = rows.get(reason.name()).unwrap_or_else(|| {
            panic!("the server answers {} but docs/API.md does not list it", reason.name())
        });
        assert_eq!(row.code, code_name(status.code()), "code of {}", reason.name());
        let info = status.get_details_error_info().expect("an ErrorInfo");
        let keys: BTreeSet<String> = info.metadata.keys().cloned().collect();
        assert_eq!(keys, row.metadata, "metadata keys of {}", reason.name());
        if status.get_details_retry_info().is_some() {
            assert!(
                row.retry.contains("RetryInfo"),
                "{}: say how long RetryInfo waits",
                reason.name()
            );
        }
    }
    let every: BTreeSet<Reason> = Reason::ALL.iter().copied().collect();
    let unanswered: Vec<_> = every.difference(&answered).map(|reason| reason.name()).collect();
    assert!(unanswered.is_empty(), "reasons with no sample in this test: {unanswered:?}");
    let names: BTreeSet<&str> = Reason::ALL.iter().map(|reason| reason.name()).collect();
    let unknown: Vec<_> = rows.keys().filter(|name| !names.contains(name.as_str())).collect();
    assert!(unknown.is_empty(), "docs/API.md lists reasons the server does not have: {unknown:?}");
}

/// Ways to build a status other than [`Reason::status`]; none may appear in
/// the server's own code.
const STATUS_BUILDERS: &[&str] = &[
    "set_error_info(",
    "with_error_info(",
    "ErrorInfo::new(",
    "Status::new(",
    "Status::with_details(",
    "Status::with_error_details(",
    "Status::with_metadata(",
    "Status::with_details_and_metadata(",
    "Status::from_error(",
    "Status::cancelled(",
    "Status::unknown(",
    "Status::invalid_argument(",
    "Status::deadline_exceeded(",
    "Status::not_found(",
    "Status::already_exists(",
    "Status::permission_denied(",
    "Status::resource_exhausted(",
    "Status::failed_precondition(",
    "Status::aborted(",
    "Status::out_of_range(",
    "Status::unimplemented(",
    "Status::internal(",
    "Status::unavailable(",
    "Status::data_loss(",
    "Status::unauthenticated(",
];

/// Where the list lives, and the one place a status is rebuilt from a
/// `google.rpc.Status` that the server made through it.
const ALLOWED: &[(&str, &str)] = &[
    ("crates/atp-proto/src/reason.rs", "Status::with_error_details("),
    ("crates/atp-proto/src/reason.rs", "set_error_info("),
    ("crates/atp-proto/src/status.rs", "Status::with_details("),
];

/// The server's sources, without their `#[cfg(test)]` modules (tests come last in a file).
fn server_sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let roots = [
        "crates/atp-proto/src",
        "crates/atp-server/src",
        "crates/atp-shard/src",
        "services/atpd/src",
    ];
    let mut pending: Vec<PathBuf> = roots.iter().map(|root| repository().join(root)).collect();
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(
                std::fs::read_dir(&path).expect("a source dir").map(|e| e.expect("entry").path()),
            );
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let text = std::fs::read_to_string(&path).expect("a source file");
            let code = text.split("#[cfg(test)]").next().expect("the code").to_owned();
            let relative = path.strip_prefix(repository()).expect("inside the repository");
            files.push((relative.to_string_lossy().replace("/./", "/"), code));
        }
    }
    assert!(files.len() > 10, "found only {} source files", files.len());
    files
}

#[test]
fn no_server_code_builds_a_status_around_the_reason_list() {
    let mut found = Vec::new();
    for (file, code) in server_sources() {
        for builder in STATUS_BUILDERS {
            if code.contains(builder) && !ALLOWED.contains(&(file.as_str(), builder)) {
                found.push(format!("{file}: {builder}"));
            }
        }
    }
    assert!(found.is_empty(), "statuses built without atp_proto::Reason: {found:?}");
}

/// A string literal that looks like a reason (`"SOME_REASON"`) in server code
/// must be one (or a gRPC code's name): a reason spelled by hand would bypass
/// the list.
#[test]
fn every_reason_like_literal_in_server_code_is_a_listed_reason() {
    let mut names: BTreeSet<&str> = Reason::ALL.iter().map(|reason| reason.name()).collect();
    names.extend((0..=16).map(|code| code_name(tonic::Code::from(code))));
    // Upper-case literals that are not errors at all.
    names.extend(["RUST_LOG", "CARGO_PKG_VERSION"]);
    // Allocate's reasons a location was not a candidate (not errors).
    names.extend(["DOES_NOT_SHIP_THERE", "NO_CAPACITY", "NO_STOCK"]);
    let mut found = Vec::new();
    for (file, code) in server_sources() {
        for literal in code.split('"').skip(1).step_by(2) {
            let looks_like_reason = literal.len() >= 4
                && literal.contains('_')
                && literal
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && !literal.starts_with("ATP_");
            if looks_like_reason && !names.contains(literal) {
                found.push(format!("{file}: \"{literal}\""));
            }
        }
    }
    assert!(found.is_empty(), "reason-like literals that are not reasons: {found:?}");
}

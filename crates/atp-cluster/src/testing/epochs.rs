//! The epoch checker: reads etcd's whole claim history and the nodes' write
//! logs (`<data_dir>/writes.log`, see `atp_shard`'s write log) and checks,
//! for every shard, that no two nodes ever served it at once:
//!
//! 1. every logged epoch is the create revision of a put of that shard's
//!    claim key, and that claim names the logging node;
//! 2. within one node's log a shard's epochs never go down and its batch
//!    sequences always go up;
//! 3. every write under epoch `e` precedes (by host time, in ms: all nodes
//!    of a test run on one machine) the first write under any later epoch
//!    of the shard, whichever node wrote them.
//!
//! [`check`] is pure (unit-tested on hand-made histories);
//! [`claim_history`] reads the history from a real etcd;
//! [`check_cluster`] does both over write-log files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::time::Instant;

use crate::assignment::ClusterKeys;

/// How long reading the claim history may take.
const HISTORY_DEADLINE: Duration = Duration::from_secs(15);
/// Most violations spelled out in an error; the rest are counted.
const MAX_REPORTED: usize = 50;

/// One put of a claim key: `node` claimed `shard`; the put's create
/// revision is the epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPut {
    /// The claimed shard.
    pub shard: u32,
    /// The key's create revision (the epoch).
    pub epoch: i64,
    /// The node id the claim names.
    pub node: String,
}

/// One line of a write log: a durable batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The shard written.
    pub shard: u32,
    /// The epoch the batch carries.
    pub epoch: u64,
    /// The node that wrote it.
    pub node: String,
    /// Host wall-clock time after the batch was durable (ms since 1970).
    pub time_ms: u64,
    /// The shard's batch sequence.
    pub sequence: u64,
}

/// What a passing check saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Writes checked.
    pub writes: usize,
    /// Shards with at least one write.
    pub shards: usize,
    /// Shards written under more than one epoch.
    pub shards_with_several_epochs: usize,
}

/// Why a check failed: every violation found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violations(pub Vec<String>);

impl fmt::Display for Violations {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "{} epoch violation(s):", self.0.len())?;
        for violation in self.0.iter().take(MAX_REPORTED) {
            writeln!(formatter, "  {violation}")?;
        }
        if self.0.len() > MAX_REPORTED {
            writeln!(formatter, "  … and {} more", self.0.len() - MAX_REPORTED)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

/// Parses a write log (`<shard> <epoch> <node> <ms> <sequence>` lines).
pub fn parse_write_log(text: &str) -> Result<Vec<Write>, String> {
    let mut writes = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let bad = |what: &str| format!("write log line {}: {what}: {line:?}", index + 1);
        let fields: Vec<&str> = line.split(' ').collect();
        let [shard, epoch, node, time_ms, sequence] = fields[..] else {
            return Err(bad("not 5 fields"));
        };
        writes.push(Write {
            shard: shard.parse().map_err(|_| bad("shard"))?,
            epoch: epoch.parse().map_err(|_| bad("epoch"))?,
            node: node.to_owned(),
            time_ms: time_ms.parse().map_err(|_| bad("time"))?,
            sequence: sequence.parse().map_err(|_| bad("sequence"))?,
        });
    }
    Ok(writes)
}

/// The writes of one shard under one epoch: the first and last write
/// time (ms), and the nodes that wrote.
type Span = (u64, u64, BTreeSet<String>);

/// Checks `logs` (each one node's write log, in file order) against the
/// claim history `claims` (rules 1–3 of the module).
pub fn check(claims: &[ClaimPut], logs: &[Vec<Write>]) -> Result<Summary, Violations> {
    let claimed: BTreeMap<(u32, i64), &str> =
        claims.iter().map(|claim| ((claim.shard, claim.epoch), claim.node.as_str())).collect();
    let mut violations = Vec::new();
    let mut spans: BTreeMap<u32, BTreeMap<u64, Span>> = BTreeMap::new();
    let mut writes = 0;
    for log in logs {
        let mut last: BTreeMap<u32, &Write> = BTreeMap::new();
        for write in log {
            writes += 1;
            let Write { shard, epoch, node, time_ms, sequence } = write;
            match i64::try_from(*epoch).ok().and_then(|epoch| claimed.get(&(*shard, epoch))) {
                None => violations.push(format!(
                    "shard {shard}: node {node} wrote under epoch {epoch} (sequence {sequence}), \
                     which is no claim's create revision"
                )),
                Some(owner) if owner != node => violations.push(format!(
                    "shard {shard}: node {node} wrote under epoch {epoch} (sequence {sequence}), \
                     claimed by node {owner}"
                )),
                Some(_) => {}
            }
            if let Some(before) = last.insert(*shard, write) {
                if *epoch < before.epoch {
                    violations.push(format!(
                        "shard {shard}: node {node}'s epoch went down from {} to {epoch} \
                         (sequence {} then {sequence})",
                        before.epoch, before.sequence
                    ));
                }
                if *sequence <= before.sequence {
                    violations.push(format!(
                        "shard {shard}: node {node}'s sequence did not go up: {} then {sequence}",
                        before.sequence
                    ));
                }
            }
            let span = spans.entry(*shard).or_default().entry(*epoch).or_insert((
                *time_ms,
                *time_ms,
                BTreeSet::new(),
            ));
            span.0 = span.0.min(*time_ms);
            span.1 = span.1.max(*time_ms);
            span.2.insert(node.clone());
        }
    }
    for (shard, epochs) in &spans {
        // The first write under any later epoch, from the highest down.
        let mut later_first: Option<(u64, u64)> = None;
        for (epoch, (first, last, nodes)) in epochs.iter().rev() {
            if let Some((later, later_time)) = later_first
                && *last > later_time
            {
                violations.push(format!(
                    "shard {shard}: a write under epoch {epoch} (by {nodes:?}) at {last} ms \
                     follows the first write under the later epoch {later} at {later_time} ms"
                ));
            }
            if later_first.is_none_or(|(_, time)| *first <= time) {
                later_first = Some((*epoch, *first));
            }
        }
    }
    if !violations.is_empty() {
        return Err(Violations(violations));
    }
    Ok(Summary {
        writes,
        shards: spans.len(),
        shards_with_several_epochs: spans.values().filter(|epochs| epochs.len() > 1).count(),
    })
}

/// Every put of a claim key of `cluster` since revision 1, read from the
/// etcd at `endpoint`. Fails if the history was compacted.
///
/// A watch from revision 1 gives the history, but not where it ends (etcd
/// 3.4 answers a progress request before a catching-up watch has sent its
/// events). So the read first puts an end marker, `/atp/<cluster>/shards0`
/// (just past the range of `/atp/<cluster>/shards/`, so no node watches or
/// reads it), watches the range from the claims prefix to that marker, and
/// stops at the marker's put; then deletes the marker.
pub async fn claim_history(endpoint: &str, cluster: &str) -> Result<Vec<ClaimPut>, String> {
    let keys = ClusterKeys::new(cluster);
    let prefix = keys.claims_prefix();
    let marker = format!("{}0", keys.shards_prefix().trim_end_matches('/'));
    let etcd = |error: etcd_client::Error| format!("reading the claim history: {error}");
    let mut client = Client::connect([endpoint], None).await.map_err(etcd)?;
    let end = client
        .put(marker.as_str(), "claim history end", None)
        .await
        .map_err(etcd)?
        .header()
        .map_or(0, |header| header.revision());
    let range_end = format!("{marker}\0");
    let options = WatchOptions::new().with_range(range_end).with_start_revision(1);
    let mut stream = client.watch(prefix.as_str(), Some(options)).await.map_err(etcd)?;
    let until = Instant::now() + HISTORY_DEADLINE;
    let mut puts = Vec::new();
    'read: loop {
        let Ok(message) = tokio::time::timeout_at(until, stream.message()).await else {
            return Err(format!("the claim history was not read within {HISTORY_DEADLINE:?}"));
        };
        let Some(response) = message.map_err(etcd)? else {
            return Err("the claim history watch ended".to_owned());
        };
        if response.canceled() {
            return Err(format!(
                "the claim history watch was cancelled (compacted at {}): {}",
                response.compact_revision(),
                response.cancel_reason()
            ));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            if kv.mod_revision() >= end {
                break 'read;
            }
            if event.event_type() != EventType::Put {
                continue;
            }
            let Some(shard) = kv.key_str().ok().and_then(|key| keys.shard_of_claim(key)) else {
                continue;
            };
            let node = String::from_utf8_lossy(kv.value()).into_owned();
            puts.push(ClaimPut { shard, epoch: kv.create_revision(), node });
        }
    }
    client.delete(marker.as_str(), None).await.map_err(etcd)?;
    Ok(puts)
}

/// Reads `cluster`'s claim history from etcd at `endpoint` and the write
/// logs at `logs` (one per node; a missing file is an empty log) and
/// [`check`]s them.
pub async fn check_cluster(
    endpoint: &str,
    cluster: &str,
    logs: &[PathBuf],
) -> Result<Summary, String> {
    let claims = claim_history(endpoint, cluster).await?;
    let mut parsed = Vec::with_capacity(logs.len());
    for path in logs {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(format!("reading {}: {error}", path.display())),
        };
        parsed
            .push(parse_write_log(&text).map_err(|error| format!("{}: {error}", path.display()))?);
    }
    check(&claims, &parsed).map_err(|violations| violations.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(shard: u32, epoch: i64, node: &str) -> ClaimPut {
        ClaimPut { shard, epoch, node: node.to_owned() }
    }

    fn write(shard: u32, epoch: u64, node: &str, time_ms: u64, sequence: u64) -> Write {
        Write { shard, epoch, node: node.to_owned(), time_ms, sequence }
    }

    fn claims() -> Vec<ClaimPut> {
        vec![claim(1, 10, "a"), claim(2, 10, "a"), claim(1, 20, "a"), claim(1, 30, "b")]
    }

    fn failure(logs: &[Vec<Write>]) -> String {
        check(&claims(), logs).expect_err("must fail").to_string()
    }

    #[test]
    fn a_clean_history_passes() {
        let a = vec![
            write(1, 10, "a", 100, 1),
            write(2, 10, "a", 100, 1),
            write(1, 10, "a", 105, 2),
            write(1, 20, "a", 200, 3),
        ];
        let b = vec![write(1, 30, "b", 300, 4)];
        let summary = check(&claims(), &[a, b]).expect("passes");
        assert_eq!(summary, Summary { writes: 5, shards: 2, shards_with_several_epochs: 1 });
        assert_eq!(check(&claims(), &[]), Ok(Summary::default()));
    }

    #[test]
    fn an_epoch_that_is_no_claim_fails() {
        let message = failure(&[vec![write(1, 11, "a", 100, 1)]]);
        assert!(message.contains("epoch 11") && message.contains("no claim"), "{message}");
        // A claim's revision, but of another shard.
        let message = failure(&[vec![write(3, 10, "a", 100, 1)]]);
        assert!(message.contains("shard 3"), "{message}");
    }

    #[test]
    fn a_write_under_another_nodes_claim_fails() {
        let message = failure(&[vec![write(1, 30, "a", 100, 1)]]);
        assert!(message.contains("claimed by node b"), "{message}");
    }

    #[test]
    fn an_epoch_going_down_in_one_log_fails() {
        let log = vec![write(1, 20, "a", 100, 1), write(1, 10, "a", 100, 2)];
        let message = failure(&[log]);
        assert!(message.contains("went down from 20 to 10"), "{message}");
    }

    #[test]
    fn a_sequence_not_going_up_fails() {
        let log = vec![write(1, 10, "a", 100, 2), write(1, 10, "a", 101, 2)];
        let message = failure(&[log]);
        assert!(message.contains("sequence did not go up"), "{message}");
    }

    #[test]
    fn an_old_epoch_written_after_a_later_one_began_fails() {
        // Node a goes on under epoch 20 after node b began under 30.
        let a = vec![write(1, 20, "a", 200, 1), write(1, 20, "a", 350, 2)];
        let b = vec![write(1, 30, "b", 300, 1)];
        let message = failure(&[a, b]);
        assert!(message.contains("epoch 20") && message.contains("later epoch 30"), "{message}");
        // Also across a skipped epoch: 10 after 30 began, 20 never written.
        let a = vec![write(1, 10, "a", 400, 1)];
        let b = vec![write(1, 30, "b", 300, 1)];
        let message = failure(&[a, b]);
        assert!(message.contains("epoch 10") && message.contains("later epoch 30"), "{message}");
        // Two shards do not fence each other.
        let a = vec![write(2, 10, "a", 400, 1)];
        let b = vec![write(1, 30, "b", 300, 1)];
        assert!(check(&claims(), &[a, b]).is_ok());
    }

    #[test]
    fn every_violation_is_listed() {
        let log = vec![write(1, 11, "a", 100, 1), write(1, 30, "a", 100, 2)];
        let Err(Violations(found)) = check(&claims(), &[log]) else { panic!("must fail") };
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn write_logs_parse_and_bad_lines_are_named() {
        let parsed = parse_write_log("1 10 a 100 1\n2 10 a 101 7\n").expect("parses");
        assert_eq!(parsed, [write(1, 10, "a", 100, 1), write(2, 10, "a", 101, 7)]);
        let error = parse_write_log("1 10 a 100 1\n1 x a 100 2\n").expect_err("bad epoch");
        assert!(error.contains("line 2: epoch"), "{error}");
        let error = parse_write_log("1 10 a 100\n").expect_err("short");
        assert!(error.contains("line 1: not 5 fields"), "{error}");
    }
}

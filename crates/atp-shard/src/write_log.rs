//! The write log: an audit trail of every durable shard batch a node in
//! cluster mode wrote, one line per batch, so a checker can verify that two
//! nodes never served one shard at once (see `atp_cluster::testing::epochs`).
//!
//! It is not the durable record (the store is): lines are written once per
//! committed group, after the group is durable and before any of its
//! replies is sent, and never fsynced. A line is
//!
//! ```text
//! <shard> <epoch> <node id> <host wall-clock ms> <batch sequence>
//! ```
//!
//! separated by single spaces (node ids hold no whitespace: the config
//! checks them), one `\n` each.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use atp_store::ShardBatch;

/// Where and as whom a node logs its durable writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteLogConfig {
    /// The node id written on every line.
    pub node_id: String,
    /// The file lines are appended to (created if absent).
    pub path: PathBuf,
}

/// The open write log, owned by the committer thread.
pub(crate) struct WriteLog {
    node_id: String,
    file: File,
    /// Reused for every group: one `write` per group.
    buffer: String,
}

impl WriteLog {
    /// Opens `config.path` for appending; `None` (logged) when it cannot be.
    pub(crate) fn open(config: &WriteLogConfig) -> Option<Self> {
        match OpenOptions::new().create(true).append(true).open(&config.path) {
            Ok(file) => Some(Self { node_id: config.node_id.clone(), file, buffer: String::new() }),
            Err(error) => {
                tracing::error!(path = %config.path.display(), %error, "could not open the write log; writes are not logged");
                None
            }
        }
    }

    /// Appends one line per batch of a durable group, in one write.
    pub(crate) fn append(&mut self, batches: &[ShardBatch]) {
        if batches.is_empty() {
            return;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        self.buffer.clear();
        for batch in batches {
            let _ = writeln!(
                self.buffer,
                "{} {} {} {now_ms} {}",
                batch.shard, batch.epoch, self.node_id, batch.sequence
            );
        }
        if let Err(error) = self.file.write_all(self.buffer.as_bytes()) {
            tracing::warn!(%error, "could not append to the write log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_batch_appended() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("writes.log");
        let config = WriteLogConfig { node_id: "n1".to_owned(), path: path.clone() };
        let batch = |shard, epoch, sequence| ShardBatch {
            shard,
            epoch,
            sequence,
            records: Vec::new(),
            ledger: Vec::new(),
        };
        let mut log = WriteLog::open(&config).expect("opens");
        log.append(&[batch(3, 17, 1), batch(9, 18, 4)]);
        log.append(&[]);
        drop(log);
        let mut log = WriteLog::open(&config).expect("opens again");
        log.append(&[batch(3, 17, 2)]);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<Vec<&str>> = text.lines().map(|line| line.split(' ').collect()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        let fields: Vec<(&str, &str, &str, &str)> =
            lines.iter().map(|line| (line[0], line[1], line[2], line[4])).collect();
        assert_eq!(
            fields,
            [("3", "17", "n1", "1"), ("9", "18", "n1", "4"), ("3", "17", "n1", "2")]
        );
        let time: u64 = lines[0][3].parse().expect("ms");
        assert!(time > 1_600_000_000_000, "{time}");
    }
}

//! The durable cursor of a channel: `STATE_DIR/<channel_id>.cursor`, JSON
//! `{"marks": [{"shard", "epoch", "sequence"}], "sent_at_ms"}`, the resume
//! point every change before which was acknowledged. Written as a temporary
//! file, fsynced, renamed over the old one, and the directory fsynced: a
//! crash leaves the old cursor or the new one, never half of one.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::tracker::{Checkpoint, Marks};

/// Largest cursor file read (1,024 shards' marks fit in far less).
const MAX_CURSOR_BYTES: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct CursorFile {
    marks: Vec<MarkFile>,
    sent_at_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct MarkFile {
    shard: u32,
    epoch: u64,
    sequence: u64,
}

/// A cursor file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// Reading, writing or syncing failed.
    #[error("accessing the cursor file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a cursor.
    #[error("the cursor file {path} is not a cursor (remove it to start with a snapshot)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The file is over [`MAX_CURSOR_BYTES`].
    #[error("the cursor file {path} is too large")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
}

/// The cursor file of `channel_id` in `state_dir`.
pub fn path_of(state_dir: &Path, channel_id: &str) -> PathBuf {
    state_dir.join(format!("{channel_id}.cursor"))
}

/// Reads the cursor at `path` (None: there is none). Blocking.
pub fn load(path: &Path) -> Result<Option<Checkpoint>, CursorError> {
    let io = |source| CursorError::Io { path: path.to_owned(), source };
    let size = match std::fs::metadata(path) {
        Ok(metadata) => metadata.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io(error)),
    };
    if size > MAX_CURSOR_BYTES {
        return Err(CursorError::TooLarge { path: path.to_owned() });
    }
    let text = std::fs::read(path).map_err(io)?;
    let file: CursorFile = serde_json::from_slice(&text)
        .map_err(|source| CursorError::Malformed { path: path.to_owned(), source })?;
    let marks: Marks =
        file.marks.iter().map(|mark| (mark.shard, (mark.epoch, mark.sequence))).collect();
    Ok(Some(Checkpoint { seq: 0, marks: Arc::new(marks), sent_at_ms: file.sent_at_ms }))
}

/// Writes `checkpoint` as the cursor at `path`, durably. Blocking.
pub fn store(path: &Path, checkpoint: &Checkpoint) -> Result<(), CursorError> {
    let io = |source| CursorError::Io { path: path.to_owned(), source };
    let file = CursorFile {
        marks: checkpoint
            .marks
            .iter()
            .map(|(shard, (epoch, sequence))| MarkFile {
                shard: *shard,
                epoch: *epoch,
                sequence: *sequence,
            })
            .collect(),
        sent_at_ms: checkpoint.sent_at_ms,
    };
    let text = serde_json::to_vec(&file).expect("a cursor serializes");
    let temporary = path.with_extension("cursor.tmp");
    let mut out = File::create(&temporary).map_err(io)?;
    out.write_all(&text).map_err(io)?;
    out.sync_all().map_err(io)?;
    drop(out);
    std::fs::rename(&temporary, path).map_err(io)?;
    if let Some(directory) = path.parent() {
        File::open(directory).and_then(|directory| directory.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_cursor_loads_back() {
        let directory = tempfile::tempdir().expect("a directory");
        let path = path_of(directory.path(), "web");
        assert_eq!(load(&path).expect("no cursor yet"), None);
        let marks = Marks::from([(3, (1, 7)), (900, (2, 1))]);
        let checkpoint = Checkpoint { seq: 0, marks: Arc::new(marks), sent_at_ms: 42 };
        store(&path, &checkpoint).expect("stored");
        assert_eq!(load(&path).expect("a cursor"), Some(checkpoint));
        std::fs::write(&path, b"{").expect("overwrite");
        assert!(matches!(load(&path), Err(CursorError::Malformed { .. })));
    }
}

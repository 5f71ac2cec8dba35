//! The disk under the log and the checkpoints, behind a trait so that a
//! simulation can replace it with one that tears writes, drops unsynced data
//! on a crash and fails fsyncs ([`SimDisk`]).
//!
//! Paths are relative to the disk's root and use `/`. Only the few operations
//! the log store needs exist: append to a file, sync it, read it, truncate it,
//! replace a small file atomically, list and remove files.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A directory of files, as the log store uses it.
pub trait Disk: Send + Sync + 'static {
    /// Names of the files in `dir` (not recursive), sorted. A missing
    /// directory has none.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;

    /// Up to `max_len` bytes of `path` from `offset` (fewer at its end).
    fn read_at(&self, path: &str, offset: u64, max_len: usize) -> io::Result<Vec<u8>>;

    /// The whole file.
    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        self.read_at(path, 0, usize::MAX)
    }

    /// The file's length.
    fn len(&self, path: &str) -> io::Result<u64>;

    /// Appends `data` to `path`, creating it (and its directory) if missing.
    /// Not durable until [`Disk::sync`].
    fn append(&self, path: &str, data: &[u8]) -> io::Result<()>;

    /// Makes everything appended to `path` durable (fdatasync). A new file's
    /// directory entry is made durable too.
    fn sync(&self, path: &str) -> io::Result<()>;

    /// Cuts `path` to `len` bytes, durably.
    fn truncate(&self, path: &str, len: u64) -> io::Result<()>;

    /// Replaces `path` with `data` atomically and durably: after a crash the
    /// file holds either the old or the new content, whole.
    fn replace(&self, path: &str, data: &[u8]) -> io::Result<()>;

    /// Removes `path` (a missing file is fine).
    fn remove(&self, path: &str) -> io::Result<()>;
}

/// The real file system, under `root`.
///
/// Appends go through one open handle per file, kept until the file is
/// removed or truncated, so the log's hot path is a `write` and an
/// `fdatasync` on an open file.
pub struct RealDisk {
    root: PathBuf,
    open: Mutex<BTreeMap<String, Arc<File>>>,
}

impl RealDisk {
    /// A disk rooted at `root` (created if missing).
    pub fn new(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Self { root: root.to_path_buf(), open: Mutex::new(BTreeMap::new()) })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn handles(&self) -> MutexGuard<'_, BTreeMap<String, Arc<File>>> {
        // The map only caches handles; it is consistent at every unlock.
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn handle(&self, path: &str) -> io::Result<Arc<File>> {
        if let Some(file) = self.handles().get(path) {
            return Ok(Arc::clone(file));
        }
        let full = self.path(path);
        let parent = full.parent().map(Path::to_path_buf);
        let created = !full.exists();
        if let Some(parent) = &parent {
            std::fs::create_dir_all(parent)?;
        }
        let file = Arc::new(OpenOptions::new().create(true).append(true).read(true).open(&full)?);
        if created && let Some(parent) = &parent {
            sync_dir(parent)?;
        }
        self.handles().insert(path.to_owned(), Arc::clone(&file));
        Ok(file)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Disk for RealDisk {
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(self.path(dir)) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn read_at(&self, path: &str, offset: u64, max_len: usize) -> io::Result<Vec<u8>> {
        let mut file = File::open(self.path(path))?;
        file.seek(SeekFrom::Start(offset))?;
        let mut data = Vec::new();
        file.take(u64::try_from(max_len).unwrap_or(u64::MAX)).read_to_end(&mut data)?;
        Ok(data)
    }

    fn len(&self, path: &str) -> io::Result<u64> {
        Ok(std::fs::metadata(self.path(path))?.len())
    }

    fn append(&self, path: &str, data: &[u8]) -> io::Result<()> {
        let file = self.handle(path)?;
        (&*file).write_all(data)
    }

    fn sync(&self, path: &str) -> io::Result<()> {
        self.handle(path)?.sync_data()
    }

    fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        self.handles().remove(path);
        let file = OpenOptions::new().write(true).open(self.path(path))?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn replace(&self, path: &str, data: &[u8]) -> io::Result<()> {
        let full = self.path(path);
        let parent = full.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        std::fs::create_dir_all(&parent)?;
        let temporary = full.with_extension("tmp");
        {
            let mut file = File::create(&temporary)?;
            file.write_all(data)?;
            file.sync_data()?;
        }
        std::fs::rename(&temporary, &full)?;
        sync_dir(&parent)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        self.handles().remove(path);
        match std::fs::remove_file(self.path(path)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

/// A shared disk is a disk (a test keeps a handle to crash it).
impl<D: Disk + ?Sized> Disk for Arc<D> {
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        (**self).list(dir)
    }
    fn read_at(&self, path: &str, offset: u64, max_len: usize) -> io::Result<Vec<u8>> {
        (**self).read_at(path, offset, max_len)
    }
    fn len(&self, path: &str) -> io::Result<u64> {
        (**self).len(path)
    }
    fn append(&self, path: &str, data: &[u8]) -> io::Result<()> {
        (**self).append(path, data)
    }
    fn sync(&self, path: &str) -> io::Result<()> {
        (**self).sync(path)
    }
    fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        (**self).truncate(path, len)
    }
    fn replace(&self, path: &str, data: &[u8]) -> io::Result<()> {
        (**self).replace(path, data)
    }
    fn remove(&self, path: &str) -> io::Result<()> {
        (**self).remove(path)
    }
}

/// A simulated disk in memory: what was appended but not synced is lost (or
/// torn) by [`SimDisk::crash`]; syncs and appends can be made to fail.
///
/// For tests and simulation only.
#[derive(Default)]
pub struct SimDisk {
    state: Mutex<SimState>,
}

#[derive(Default)]
struct SimState {
    files: BTreeMap<String, SimFile>,
    /// Syncs that will fail (each failing one consumes one).
    failing_syncs: u64,
    /// Bytes that may still be appended before appends fail with "disk full".
    space_left: Option<u64>,
}

#[derive(Clone, Default)]
struct SimFile {
    /// Bytes that survive a crash.
    durable: Vec<u8>,
    /// Bytes appended since the last sync.
    pending: Vec<u8>,
}

impl SimFile {
    fn content(&self) -> Vec<u8> {
        let mut all = self.durable.clone();
        all.extend_from_slice(&self.pending);
        all
    }
}

/// How a [`SimDisk::crash`] treats data that was appended but not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// All of it is lost.
    DropUnsynced,
    /// A prefix of it survives: `keep` bytes of every file's unsynced tail
    /// (capped at the tail's length).
    Tear {
        /// Bytes of each unsynced tail kept.
        keep: usize,
    },
    /// All of it survives (the OS wrote it back before the crash).
    KeepUnsynced,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // Every operation leaves the state consistent before unlocking.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Loses (or tears) what was not synced, as a power cut would.
    pub fn crash(&self, mode: CrashMode) {
        let mut state = self.lock();
        for file in state.files.values_mut() {
            let pending = std::mem::take(&mut file.pending);
            match mode {
                CrashMode::DropUnsynced => {}
                CrashMode::Tear { keep } => {
                    file.durable.extend_from_slice(&pending[..keep.min(pending.len())]);
                }
                CrashMode::KeepUnsynced => file.durable.extend_from_slice(&pending),
            }
        }
    }

    /// The next `count` syncs fail (and lose nothing they had not made durable).
    pub fn fail_next_syncs(&self, count: u64) {
        self.lock().failing_syncs = count;
    }

    /// Appends fail with "storage full" once `bytes` more were appended
    /// (`None`: unlimited).
    pub fn set_space_left(&self, bytes: Option<u64>) {
        self.lock().space_left = bytes;
    }

    /// Overwrites byte `offset` of `path` (durably) with `byte`: bit rot.
    pub fn corrupt(&self, path: &str, offset: usize, byte: u8) {
        let mut state = self.lock();
        if let Some(file) = state.files.get_mut(path) {
            let mut all = file.content();
            if let Some(target) = all.get_mut(offset) {
                *target = byte;
            }
            *file = SimFile { durable: all, pending: Vec::new() };
        }
    }

    /// Every file and its current content (synced or not).
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        self.lock().files.iter().map(|(name, file)| (name.clone(), file.content())).collect()
    }

    /// Replaces a file's content (durably), e.g. with a cut copy.
    pub fn set_file(&self, path: &str, content: Vec<u8>) {
        self.lock()
            .files
            .insert(path.to_owned(), SimFile { durable: content, pending: Vec::new() });
    }
}

fn not_found(path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{path}: no such file"))
}

impl Disk for SimDisk {
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let prefix = format!("{dir}/");
        Ok(self
            .lock()
            .files
            .keys()
            .filter_map(|name| name.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect())
    }

    fn read_at(&self, path: &str, offset: u64, max_len: usize) -> io::Result<Vec<u8>> {
        let state = self.lock();
        let file = state.files.get(path).ok_or_else(|| not_found(path))?;
        let content = file.content();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(content.len());
        let end = start.saturating_add(max_len).min(content.len());
        Ok(content[start..end].to_vec())
    }

    fn len(&self, path: &str) -> io::Result<u64> {
        let state = self.lock();
        let file = state.files.get(path).ok_or_else(|| not_found(path))?;
        Ok((file.durable.len() + file.pending.len()) as u64)
    }

    fn append(&self, path: &str, data: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        if let Some(left) = state.space_left {
            let size = data.len() as u64;
            if size > left {
                // A short write: what fits is written, then the error.
                let fits = usize::try_from(left).unwrap_or(usize::MAX);
                state.space_left = Some(0);
                state
                    .files
                    .entry(path.to_owned())
                    .or_default()
                    .pending
                    .extend_from_slice(&data[..fits]);
                return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device"));
            }
            state.space_left = Some(left - size);
        }
        state.files.entry(path.to_owned()).or_default().pending.extend_from_slice(data);
        Ok(())
    }

    fn sync(&self, path: &str) -> io::Result<()> {
        let mut state = self.lock();
        if state.failing_syncs > 0 {
            state.failing_syncs -= 1;
            // Like Linux after a failed fsync: the dirty pages are gone.
            if let Some(file) = state.files.get_mut(path) {
                file.pending.clear();
            }
            return Err(io::Error::other("simulated fsync failure"));
        }
        let file = state.files.entry(path.to_owned()).or_default();
        let pending = std::mem::take(&mut file.pending);
        file.durable.extend_from_slice(&pending);
        Ok(())
    }

    fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        let mut state = self.lock();
        let file = state.files.get_mut(path).ok_or_else(|| not_found(path))?;
        let mut all = file.content();
        all.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        *file = SimFile { durable: all, pending: Vec::new() };
        Ok(())
    }

    fn replace(&self, path: &str, data: &[u8]) -> io::Result<()> {
        self.set_file(path, data.to_vec());
        Ok(())
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        self.lock().files.remove(path);
        Ok(())
    }
}

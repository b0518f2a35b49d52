//! The directory as openraft's state machine.
//!
//! Each log entry is applied in one redb transaction of the directory that also records
//! the entry's log id (`raft_applied`) and, for a membership entry, the membership
//! (`raft_membership`), so the applied position always matches the data. A snapshot is
//! the whole directory streamed into a file (see [`MAGIC`] for the format); the latest
//! one is `raft-snapshot.bin` in the data directory, sent to other nodes from there.
//!
//! # Durability
//!
//! The Raft log is the one durable write per command: an entry is acknowledged once a
//! majority has it in its log on disk. Applies commit without a sync, and a checkpoint
//! makes them durable (one empty durable commit covers every apply before it):
//!
//! - every [`Checkpoint::interval`] while anything was applied since the last one, and
//!   sooner once [`Checkpoint::max_entries`] entries were applied since;
//! - before a snapshot is built, after its read transaction is taken (see below);
//! - when a `StateMachine` handle is dropped (openraft drops its own at shutdown).
//!
//! A crash loses the applies after the last checkpoint, whole and together with the
//! `raft_applied` position they recorded, so the directory holds the state as of some
//! earlier log index `d`; the log on disk still holds every entry after `d`. Two things
//! apply those entries again:
//!
//! - [`catch_up`], when the node's directory is opened (`node::open_directory`: node
//!   start, offline import and export), applies durably what the log holds as committed
//!   (all of it on a single-node cluster), before anything reads the directory;
//! - openraft itself on start: it reads `d` ([`RaftStateMachine::applied_state`]) and
//!   applies the log from `d + 1` up to the committed id the log store saved
//!   (`StorageHelper::get_initial_state`, `reapply_committed`), and the rest once this
//!   node learns the commit index again (at once as a restored sole leader, from the
//!   leader's next append as a follower).
//!
//! Every entry after `d` is still in the log because openraft purges only entries inside a
//! snapshot (`calc_purge_upto` keeps `max_in_snapshot_log_to_keep` behind the snapshot,
//! `trigger_purge_log` is capped at it), the checkpoint before a build makes the directory
//! durable at least up to the snapshot's index, and a snapshot this node installs is
//! written in one durable transaction. (openraft 0.9 issues the purge that follows an
//! install without waiting for the install to finish; a crash in between leaves the log
//! purged past the directory whatever the applies do.) Applying again is deterministic: an entry re-runs on exactly
//! the state it first ran on, and the request-id record that makes a retried write apply
//! once is written in the same transaction as the change it describes.

// openraft's StorageError is large by design; every storage method returns it.
#![allow(clippy::result_large_err)]

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, StorageError, StorageIOError, StoredMembership,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use super::log_store::Entry;
use super::types::{ClusterNode, ClusterRequest, ClusterResponse, NodeId, TypeConfig};
use crate::directory::Directory;

/// The directory meta key holding the last applied log id (bincode `LogId`).
pub const META_APPLIED: &str = "raft_applied";
/// The directory meta key holding the last applied membership (bincode
/// `StoredMembership`).
pub const META_MEMBERSHIP: &str = "raft_membership";
/// The file name of the current snapshot inside the data directory.
pub const SNAPSHOT_FILE: &str = "raft-snapshot.bin";
/// Where a snapshot sent by the leader is received.
const INCOMING_FILE: &str = "raft-snapshot.incoming";

type StErr = StorageError<NodeId>;
type Membership = StoredMembership<NodeId, ClusterNode>;
type Meta = SnapshotMeta<NodeId, ClusterNode>;

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, AnyError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(|e| AnyError::new(&e))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AnyError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| AnyError::new(&e))
}

fn read_err(e: impl Into<AnyError>) -> StErr {
    StorageIOError::read_state_machine(e).into()
}

fn write_err(e: impl Into<AnyError>) -> StErr {
    StorageIOError::write_state_machine(e).into()
}

/// Snapshot files, on disk and as sent to other nodes: [`MAGIC`]; a frame (u32
/// big-endian length, bincode) with the `SnapshotMeta`; a u32 count of directory
/// metadata pairs, each a u32-length key and a u32-length value; then one record per
/// entry, `1`, id (u64), u32 length, the encoded entry; `0` at the end, followed by the
/// SHA-256 of everything before it, checked before an install commits. Built and
/// installed as a stream, so a snapshot costs disk, not memory.
const MAGIC: &[u8; 8] = b"PASNAP1\n";
const REC_END: u8 = 0;
const REC_ENTRY: u8 = 1;
/// The largest frame a snapshot file may hold (a sanity bound for damaged files).
const MAX_FRAME: usize = 64 << 20;

/// A snapshot file that cannot be written or read.
#[derive(Debug)]
struct SnapError(String);

impl std::fmt::Display for SnapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SnapError {}

impl From<std::io::Error> for SnapError {
    fn from(e: std::io::Error) -> Self {
        SnapError(e.to_string())
    }
}

impl From<crate::directory::store::StoreError> for SnapError {
    fn from(e: crate::directory::store::StoreError) -> Self {
        SnapError(e.to_string())
    }
}

impl From<AnyError> for SnapError {
    fn from(e: AnyError) -> Self {
        SnapError(e.to_string())
    }
}

fn write_frame(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| std::io::Error::other("a snapshot frame over 4 GiB"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(bytes)
}

fn read_u32(r: &mut impl Read) -> Result<u32, SnapError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, SnapError> {
    let len = read_u32(r)? as usize;
    if len > MAX_FRAME {
        return Err(SnapError(format!("a snapshot frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Reads a snapshot file's magic and meta.
fn read_header(r: &mut impl Read) -> Result<Meta, SnapError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(SnapError("not a PigeonAir snapshot file".into()));
    }
    Ok(decode(&read_frame(r)?)?)
}

/// Reads the directory metadata pairs that follow the header.
fn read_dir_meta(r: &mut impl Read) -> Result<Vec<(String, Vec<u8>)>, SnapError> {
    let n = read_u32(r)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let k = String::from_utf8(read_frame(r)?)
            .map_err(|_| SnapError("a metadata key that is not UTF-8".into()))?;
        out.push((k, read_frame(r)?));
    }
    Ok(out)
}

/// The next entry record; `None` at the end marker, once the checksum after it
/// matches what was read.
fn read_entry<R: Read>(r: &mut Hashed<R>) -> Result<Option<(u64, Vec<u8>)>, SnapError> {
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag)?;
    match tag[0] {
        REC_END => {
            use sha2::Digest;
            let expected = r.hash.clone().finalize();
            let mut sum = [0u8; 32];
            r.read_exact(&mut sum)?;
            if expected.as_slice() != sum {
                return Err(SnapError("the snapshot's checksum does not match".into()));
            }
            Ok(None)
        }
        REC_ENTRY => {
            let mut id = [0u8; 8];
            r.read_exact(&mut id)?;
            Ok(Some((u64::from_be_bytes(id), read_frame(r)?)))
        }
        t => Err(SnapError(format!("unknown snapshot record {t}"))),
    }
}

/// Hashes everything read through it, or written through it.
struct Hashed<T> {
    inner: T,
    hash: sha2::Sha256,
}

impl<T> Hashed<T> {
    fn new(inner: T) -> Hashed<T> {
        use sha2::Digest;
        Hashed {
            inner,
            hash: sha2::Sha256::new(),
        }
    }
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads through `r`, copying everything read to `w`.
struct Tee<R, W> {
    r: R,
    w: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Syncs the directory holding `path` (after a rename into it).
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
}

/// When applied entries are made durable in the directory (see the module docs); from
/// `[cluster] checkpoint_interval_ms` and `checkpoint_max_entries`.
///
/// The default, a checkpoint every second or every 1,000 applied entries, costs one
/// `fdatasync` a second under load instead of one per entry. Safety does not depend on
/// it (the Raft log holds every entry after the last checkpoint); it bounds how much of
/// the log a restart applies again and how long redb holds back pages freed by unsynced
/// commits, which it may reuse only after a durable one. A checkpoint writes out every
/// page the applies since the last one changed while it holds the directory's write
/// lock, so applies wait for it: measured on the development machine, about 11 ms after
/// 100 modifies of random entries and 62 ms after 1,000 (0.8 ms for one). Shorter
/// checkpoints wait less each time but cost more in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The longest an applied entry waits for a checkpoint.
    pub interval: Duration,
    /// A checkpoint is due once this many entries were applied since the last one.
    pub max_entries: u64,
}

impl Checkpoint {
    /// The policy a node's configuration sets.
    pub fn from_config(c: &crate::config::ClusterConfig) -> Checkpoint {
        Checkpoint {
            interval: Duration::from_millis(c.checkpoint_interval_ms),
            max_entries: c.checkpoint_max_entries,
        }
    }
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint::from_config(&crate::config::ClusterConfig::default())
    }
}

/// What the state machine and its snapshot builders share.
struct Shared {
    dir: Arc<Directory>,
    snapshot_path: PathBuf,
    /// The last applied index (0 when nothing was applied).
    applied: AtomicU64,
    applied_tx: watch::Sender<u64>,
    /// The DN key of the cluster settings entry ([`crate::settings::settings_dn`]).
    settings_key: String,
    /// Counts applied changes that may have changed the cluster settings entry.
    settings_tx: watch::Sender<u64>,
    /// The meta of the current snapshot (in `snapshot_path`); the lock also
    /// serialises replacing that file.
    current: Mutex<Option<Meta>>,
    /// Makes snapshot ids unique.
    counter: AtomicU64,
    /// Entries applied (committed unsynced) since the last checkpoint began.
    unsynced: AtomicU64,
    policy: Checkpoint,
    /// Wakes the checkpoint thread early; dropping it stops the thread.
    wake: mpsc::SyncSender<()>,
}

impl Shared {
    fn set_applied(&self, index: u64) {
        self.applied.store(index, Ordering::Release);
        self.applied_tx.send_replace(index);
    }

    /// Tell the settings' followers that the settings entry may have changed.
    fn settings_may_have_changed(&self) {
        self.settings_tx.send_modify(|n| *n += 1);
    }

    /// Whether `cmd` may change the cluster settings entry: a change to that entry, or
    /// any rename (one could move an entry there).
    fn touches_settings(&self, cmd: &crate::directory::DirectoryCommand) -> bool {
        use crate::directory::DirectoryCommand as C;
        match cmd {
            C::ModifyDn { .. } => true,
            C::Add { dn, .. } | C::Modify { dn, .. } | C::Delete { dn, .. } => self
                .dir
                .parse_dn(dn)
                .map_or(true, |(_, key)| key == self.settings_key),
        }
    }

    /// Note that `entry` was applied (unsynced): count it towards the next checkpoint
    /// and tell the settings' followers when it may have changed the settings.
    fn count_applied(&self, entry: &Entry) {
        self.applied_unsynced();
        if request(entry).is_some_and(|(_, _, cmd)| self.touches_settings(cmd)) {
            self.settings_may_have_changed();
        }
    }

    /// Count one unsynced apply; wake the checkpoint thread when a checkpoint is due.
    fn applied_unsynced(&self) {
        let n = self.unsynced.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.policy.max_entries {
            // A full channel already holds a wake-up.
            let _ = self.wake.try_send(());
        }
    }

    /// Make every apply so far durable; with `force`, commit durably even when nothing
    /// was counted (a count lags its apply's commit by an instant).
    fn checkpoint(&self, force: bool) -> Result<(), crate::directory::store::StoreError> {
        // Taken before the sync: an apply counted here committed before the sync began,
        // so the sync covers it; one counted after is left for the next checkpoint.
        let n = self.unsynced.swap(0, Ordering::AcqRel);
        if n == 0 && !force {
            return Ok(());
        }
        self.dir.sync().inspect_err(|_| {
            self.unsynced.fetch_add(n, Ordering::AcqRel);
        })
    }

    /// Last applied log id and membership, read from the directory's meta keys.
    fn applied_state(&self) -> Result<(Option<LogId<NodeId>>, Membership), StErr> {
        let applied = match self.dir.meta(META_APPLIED).map_err(|e| read_err(&e))? {
            Some(v) => Some(decode::<LogId<NodeId>>(&v).map_err(read_err)?),
            None => None,
        };
        let membership = match self.dir.meta(META_MEMBERSHIP).map_err(|e| read_err(&e))? {
            Some(v) => decode::<Membership>(&v).map_err(read_err)?,
            None => Membership::default(),
        };
        Ok((applied, membership))
    }

    /// A fresh temporary file name beside the snapshot file.
    fn temp_path(&self, what: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.snapshot_path.with_extension(format!("{what}.{n}.tmp"))
    }

    /// Make the synced file `tmp` (holding a snapshot with `meta`) the current
    /// snapshot: rename it over the snapshot file and sync the directory. With
    /// `only_if_newer`, a snapshot older than the current one is dropped.
    fn promote(&self, tmp: &Path, meta: Meta, only_if_newer: bool) -> Result<(), SnapError> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if only_if_newer
            && cur
                .as_ref()
                .is_some_and(|c| c.last_log_id > meta.last_log_id)
        {
            let _ = std::fs::remove_file(tmp);
            return Ok(());
        }
        std::fs::rename(tmp, &self.snapshot_path)?;
        sync_parent(&self.snapshot_path);
        *cur = Some(meta);
        Ok(())
    }

    /// Build a snapshot of the directory as it is now, streamed from one read
    /// transaction into a file, and make it current.
    fn build_snapshot(&self) -> Result<Meta, SnapError> {
        let source = self.dir.snapshot_source(&[META_APPLIED, META_MEMBERSHIP])?;
        // openraft purges the log up to (at most) this snapshot's last index once it is
        // built, so the directory's durable state must reach that index first. The sync
        // comes after the read transaction is taken: it covers everything the read sees,
        // even entries applied while the read was being opened.
        self.checkpoint(true)?;
        // The log id and membership come from the same read transaction as the entries.
        let mut last_log_id = None;
        let mut last_membership = Membership::default();
        for (k, v) in &source.meta {
            if k == META_APPLIED {
                last_log_id = Some(decode::<LogId<NodeId>>(v)?);
            } else if k == META_MEMBERSHIP {
                last_membership = decode::<Membership>(v)?;
            }
        }
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &last_log_id {
            Some(l) => format!("{}-{}-{counter}", l.leader_id.term, l.index),
            None => format!("0-0-{counter}"),
        };
        let meta = Meta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let tmp = self.temp_path("build");
        let written = (|| -> Result<u64, SnapError> {
            let mut w = Hashed::new(std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(&tmp)?,
            ));
            w.write_all(MAGIC)?;
            write_frame(&mut w, &encode(&meta)?)?;
            let pairs = u32::try_from(source.meta.len()).unwrap_or(u32::MAX);
            w.write_all(&pairs.to_be_bytes())?;
            for (k, v) in &source.meta {
                write_frame(&mut w, k.as_bytes())?;
                write_frame(&mut w, v)?;
            }
            let n = source.for_each_entry(|id, raw| -> Result<(), SnapError> {
                w.write_all(&[REC_ENTRY])?;
                w.write_all(&id.to_be_bytes())?;
                write_frame(&mut w, raw)?;
                Ok(())
            })?;
            w.write_all(&[REC_END])?;
            let sum = {
                use sha2::Digest;
                w.hash.clone().finalize()
            };
            w.write_all(&sum)?;
            let f = w.inner.into_inner().map_err(|e| SnapError(e.to_string()))?;
            f.sync_all()?;
            Ok(n)
        })();
        let entries = match written {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        drop(source);
        tracing::info!(snapshot = %meta.snapshot_id, entries, "built a directory snapshot");
        self.promote(&tmp, meta.clone(), true)?;
        Ok(meta)
    }

    /// Install the snapshot in `src` (whose meta openraft gives as `meta`): stream its
    /// entries into the directory in one transaction, copying the file as it is read;
    /// then the copy becomes the current snapshot.
    fn install_snapshot(&self, meta: &Meta, src: std::fs::File) -> Result<u64, SnapError> {
        let tmp = self.temp_path("install");
        let result = (|| -> Result<u64, SnapError> {
            let out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
            let mut r = Hashed::new(Tee {
                r: std::io::BufReader::with_capacity(1 << 20, src),
                w: out,
            });
            let header = read_header(&mut r)?;
            if header.last_log_id != meta.last_log_id {
                return Err(SnapError(format!(
                    "the snapshot file is {} but openraft installs {}",
                    header.snapshot_id, meta.snapshot_id
                )));
            }
            let mut dir_meta = read_dir_meta(&mut r)?;
            // The applied position and membership are those the snapshot's meta names,
            // written in the same transaction as the data.
            dir_meta.retain(|(k, _)| k != META_APPLIED && k != META_MEMBERSHIP);
            if let Some(l) = &meta.last_log_id {
                dir_meta.push((META_APPLIED.to_string(), encode(l)?));
            }
            dir_meta.push((META_MEMBERSHIP.to_string(), encode(&meta.last_membership)?));
            let entries = std::iter::from_fn(|| read_entry(&mut r).transpose());
            let n = self.dir.install_from(entries, &dir_meta)?;
            let mut rest = [0u8; 1];
            if r.read(&mut rest)? != 0 {
                return Err(SnapError("data after the snapshot's end".into()));
            }
            let f = r
                .inner
                .w
                .into_inner()
                .map_err(|e| SnapError(e.to_string()))?;
            f.sync_all()?;
            Ok(n)
        })();
        match result {
            Ok(n) => {
                self.promote(&tmp, meta.clone(), false)?;
                Ok(n)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

/// The directory replica as openraft's state machine. Cheap to clone (clones share
/// everything): keep a clone to watch the applied index after handing one to openraft.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("applied", &self.applied_index())
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    /// The state machine over `dir`, keeping its snapshot in `data_dir/raft-snapshot.bin`
    /// (loaded when present), with the default [`Checkpoint`]. Blocking; call it at
    /// startup.
    pub fn open(
        dir: Arc<Directory>,
        data_dir: &Path,
    ) -> Result<StateMachine, StorageError<NodeId>> {
        StateMachine::open_with(dir, data_dir, Checkpoint::default())
    }

    /// [`StateMachine::open`] with its own checkpoint policy. Starts a thread that makes
    /// the applies durable by that policy; it ends when the last handle (and snapshot
    /// builder) is dropped.
    pub fn open_with(
        dir: Arc<Directory>,
        data_dir: &Path,
        policy: Checkpoint,
    ) -> Result<StateMachine, StorageError<NodeId>> {
        std::fs::create_dir_all(data_dir).map_err(|e| write_err(&e))?;
        let snapshot_path = data_dir.join(SNAPSHOT_FILE);
        // Leftovers of builds, installs and transfers cut short.
        if let Ok(list) = std::fs::read_dir(data_dir) {
            for f in list.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with("raft-snapshot.")
                    && (name.ends_with(".tmp") || name == INCOMING_FILE)
                {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        let current = match std::fs::File::open(&snapshot_path) {
            Ok(f) => match read_header(&mut std::io::BufReader::new(f)) {
                Ok(meta) => Some(meta),
                Err(e) => {
                    // Not fatal: the next snapshot replaces it.
                    tracing::warn!(error = %e, path = %snapshot_path.display(), "ignoring an unreadable snapshot file");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        };
        let counter = current
            .as_ref()
            .and_then(|m| m.snapshot_id.rsplit('-').next()?.parse::<u64>().ok())
            .map_or(0, |c| c + 1);
        let (applied_tx, _) = watch::channel(0);
        let (settings_tx, _) = watch::channel(0);
        let (_, settings_key) = dir
            .parse_dn(&crate::settings::settings_dn(&dir.suffix().to_string()))
            .map_err(|e| read_err(AnyError::error(format!("the cluster settings DN: {e}"))))?;
        let (wake, woken) = mpsc::sync_channel(1);
        let shared = Shared {
            dir,
            snapshot_path,
            applied: AtomicU64::new(0),
            applied_tx,
            settings_key,
            settings_tx,
            current: Mutex::new(current),
            counter: AtomicU64::new(counter),
            unsynced: AtomicU64::new(0),
            policy,
            wake,
        };
        let (applied, _) = shared.applied_state()?;
        shared.set_applied(applied.map_or(0, |l| l.index));
        let shared = Arc::new(shared);
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("pa-checkpoint".into())
            .spawn(move || run_checkpoints(weak, woken, policy.interval))
            .map_err(|e| write_err(&e))?;
        Ok(StateMachine { shared })
    }

    /// Make every entry applied so far durable in the directory now.
    pub fn checkpoint(&self) -> Result<(), crate::directory::store::StoreError> {
        self.shared.checkpoint(false)
    }

    /// The directory this state machine applies to.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.shared.dir
    }

    /// The index of the last applied log entry (0 when nothing was applied).
    pub fn applied_index(&self) -> u64 {
        self.shared.applied.load(Ordering::Acquire)
    }

    /// A receiver of the last applied index, updated after each applied entry and each
    /// installed snapshot: wait on it until this replica applied a given index.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    /// A receiver that changes after each applied change that may have changed the
    /// cluster settings entry, and after each installed snapshot.
    pub fn subscribe_settings(&self) -> watch::Receiver<u64> {
        self.shared.settings_tx.subscribe()
    }

    /// Wait until this replica applied `index` (or more).
    pub async fn wait_applied(&self, index: u64) {
        let mut rx = self.subscribe_applied();
        // The sender lives in `self.shared`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|&i| i >= index).await;
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StErr>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, StErr> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| write_err(&e))?
    }
}

/// The checkpoint thread: a checkpoint every `interval` (when anything was applied) and
/// whenever an apply wakes it; it ends when the state machine is gone.
fn run_checkpoints(shared: Weak<Shared>, woken: mpsc::Receiver<()>, interval: Duration) {
    loop {
        match woken.recv_timeout(interval) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.checkpoint(false) {
            // The applies stay counted and the next round tries again; redb refuses
            // further commits after an I/O failure, so applying stops on its own.
            tracing::warn!(error = %e, "cannot make the applied entries durable");
        }
    }
}

impl Drop for StateMachine {
    /// A clean shutdown leaves nothing to apply again: openraft drops its handle when
    /// it stops.
    fn drop(&mut self) {
        if let Err(e) = self.shared.checkpoint(false) {
            tracing::warn!(error = %e, "cannot make the applied entries durable at shutdown");
        }
    }
}

/// Apply `entries` in order. A run of two or more directory requests shares one
/// directory transaction ([`Directory::apply_requests`]); other entries, and a run in
/// which a request is refused, are applied one by one.
fn apply_entries(shared: &Shared, entries: &[Entry]) -> Result<Vec<ClusterResponse>, StErr> {
    let mut out = Vec::with_capacity(entries.len());
    let mut rest = entries;
    while let Some(first) = rest.first() {
        let run = rest.iter().take_while(|e| request(e).is_some()).count();
        if run >= 2 {
            let (batch, tail) = rest.split_at(run);
            match apply_batch(shared, batch)? {
                Some(responses) => out.extend(responses),
                None => {
                    for e in batch {
                        out.push(apply_entry(shared, e)?);
                    }
                }
            }
            rest = tail;
        } else {
            out.push(apply_entry(shared, first)?);
            rest = &rest[1..];
        }
    }
    Ok(out)
}

/// The directory request an entry carries: its id, its position (the log index) and
/// the command.
fn request(entry: &Entry) -> Option<(&str, u64, &crate::directory::DirectoryCommand)> {
    match &entry.payload {
        EntryPayload::Normal(ClusterRequest::Directory { id, cmd }) => {
            Some((id.as_str(), entry.log_id.index, cmd))
        }
        _ => None,
    }
}

/// Apply a run of directory requests in one unsynced transaction that records the last
/// one's log id; `None` when one was refused and nothing was written.
fn apply_batch(shared: &Shared, batch: &[Entry]) -> Result<Option<Vec<ClusterResponse>>, StErr> {
    let Some(last) = batch.last().map(|e| e.log_id) else {
        return Ok(Some(Vec::new()));
    };
    let apply_err = |e: AnyError| -> StErr { StorageIOError::apply(last, e).into() };
    let applied = encode(&last).map_err(apply_err)?;
    let requests: Vec<_> = batch.iter().filter_map(request).collect();
    let outcomes = shared
        .dir
        .apply_requests(&requests, &[(META_APPLIED, &applied)])
        .map_err(|e| apply_err(AnyError::new(&e)))?;
    let Some(outcomes) = outcomes else {
        return Ok(None);
    };
    for e in batch {
        shared.count_applied(e);
    }
    shared.set_applied(last.index);
    Ok(Some(outcomes.into_iter().map(ClusterResponse).collect()))
}

/// Apply one entry in one directory transaction, unsynced (see the module docs).
fn apply_entry(shared: &Shared, entry: &Entry) -> Result<ClusterResponse, StErr> {
    let response = apply_to(&shared.dir, entry)?;
    shared.count_applied(entry);
    shared.set_applied(entry.log_id.index);
    Ok(response)
}

/// Apply one entry to `dir` in one unsynced transaction that records its log id.
fn apply_to(dir: &Directory, entry: &Entry) -> Result<ClusterResponse, StErr> {
    let log_id = entry.log_id;
    let apply_err = |e: AnyError| -> StErr { StorageIOError::apply(log_id, e).into() };
    let applied = encode(&log_id).map_err(apply_err)?;
    let result = match &entry.payload {
        EntryPayload::Blank => dir.apply_with_meta(None, &[(META_APPLIED, &applied)]),
        EntryPayload::Normal(ClusterRequest::Directory { id, cmd }) => {
            dir.apply_request(id, log_id.index, cmd, &[(META_APPLIED, &applied)])
        }
        EntryPayload::Membership(m) => {
            let stored = Membership::new(Some(log_id), m.clone());
            let membership = encode(&stored).map_err(apply_err)?;
            dir.apply_with_meta(
                None,
                &[(META_APPLIED, &applied), (META_MEMBERSHIP, &membership)],
            )
        }
    };
    // A storage failure stops applying: openraft shuts the node down rather than skip.
    let inner = result.map_err(|e| apply_err(AnyError::new(&e)))?;
    Ok(ClusterResponse(inner))
}

/// Bring a stopped node's directory up to its Raft log: apply again, durably, the
/// committed entries whose applies a crash dropped (see the module docs). Whatever opens
/// the directory of a stopped node calls this first (node start, offline import and
/// export). An entry counts as committed up to the committed id the log saved and, when
/// this node is the cluster's only member (by `cluster-state.toml`), to the end of the
/// log: a sole voter commits its whole log as soon as it starts. Does nothing without a
/// log (a new data directory); refuses a log purged past what the directory holds.
/// Returns how many entries were applied.
pub fn catch_up(dir: &Directory, data_dir: &Path) -> Result<u64, StorageError<NodeId>> {
    if !super::log_store::exists(data_dir) {
        return Ok(0);
    }
    let log = super::log_store::LogStore::open(data_dir)?;
    let applied = match dir.meta(META_APPLIED).map_err(|e| read_err(&e))? {
        Some(v) => Some(decode::<LogId<NodeId>>(&v).map_err(read_err)?),
        None => None,
    };
    let next = applied.map_or(0, |l| l.index + 1);
    if let Some(purged) = log.purged_blocking()? {
        if purged.index >= next {
            // Applying what follows on this directory would skip entries: refuse.
            return Err(read_err(AnyError::error(format!(
                "the directory has applied the raft log up to {} but the log starts at {}",
                applied.map_or("nothing".to_string(), |l| l.index.to_string()),
                purged.index + 1
            ))));
        }
    }
    let entries = log.entries_blocking(next..)?;
    if entries.is_empty() {
        return Ok(0);
    }
    // The effective membership is the last one in the log, committed or not.
    let membership = match entries.iter().rev().find_map(|e| match &e.payload {
        EntryPayload::Membership(m) => Some(m.clone()),
        _ => None,
    }) {
        Some(m) => m,
        None => match dir.meta(META_MEMBERSHIP).map_err(|e| read_err(&e))? {
            Some(v) => decode::<Membership>(&v)
                .map_err(read_err)?
                .membership()
                .clone(),
            None => openraft::Membership::default(),
        },
    };
    let me = super::member::MemberState::load(data_dir)
        .ok()
        .map(|m| m.node_id);
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let sole_voter = membership.get_joint_config().len() == 1
        && membership.nodes().count() == 1
        && me.is_some_and(|me| voters == [me]);
    let committed = if sole_voter {
        entries.last().map(|e| e.log_id.index)
    } else {
        log.committed_blocking()?.map(|l| l.index)
    };
    drop(log);
    let mut n = 0;
    for entry in entries
        .iter()
        .take_while(|e| committed.is_some_and(|c| e.log_id.index <= c))
    {
        apply_to(dir, entry)?;
        n += 1;
    }
    if n > 0 {
        dir.sync().map_err(|e| write_err(&e))?;
        tracing::info!(
            entries = n,
            "applied the committed raft entries a crash left out of the directory"
        );
    }
    Ok(n)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ClusterNode>), StorageError<NodeId>>
    {
        self.blocking(|s| s.applied_state()).await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ClusterResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.blocking(move |s| apply_entries(s, &entries)).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let path = self.shared.snapshot_path.with_file_name(INCOMING_FILE);
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| StErr::from(StorageIOError::write_snapshot(None, &e)))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ClusterNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let meta = meta.clone();
        let sig = Some(meta.signature());
        let rerr = |e: &dyn std::error::Error| -> StErr {
            StorageIOError::read_snapshot(sig.clone(), AnyError::error(e.to_string())).into()
        };
        // Finish the writes in flight, then read it from the start.
        snapshot.sync_all().await.map_err(|e| rerr(&e))?;
        let mut file = snapshot.into_std().await;
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(|e| rerr(&e))?;
        let shared = self.shared.clone();
        let installed = tokio::task::spawn_blocking(move || {
            let n = shared.install_snapshot(&meta, file);
            let _ = std::fs::remove_file(shared.snapshot_path.with_file_name(INCOMING_FILE));
            n.map(|n| (n, meta))
        })
        .await
        .map_err(|e| rerr(&e))?;
        let (entries, meta) = installed.map_err(|e| rerr(&e))?;
        tracing::info!(snapshot = %meta.snapshot_id, entries, "installed a directory snapshot");
        self.shared
            .set_applied(meta.last_log_id.map_or(0, |l| l.index));
        self.shared.settings_may_have_changed();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let cur = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(meta) = cur.as_ref() else {
            return Ok(None);
        };
        // Opened under the lock, so the file and the meta belong together.
        let file = std::fs::File::open(&self.shared.snapshot_path)
            .map_err(|e| StErr::from(StorageIOError::read_snapshot(Some(meta.signature()), &e)))?;
        Ok(Some(Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

/// Builds a snapshot of the directory (openraft runs it beside the state machine).
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let shared = self.shared.clone();
        let meta = tokio::task::spawn_blocking(move || shared.build_snapshot())
            .await
            .map_err(|e| read_err(&e))?
            .map_err(|e| StErr::from(StorageIOError::write_snapshot(None, &e)))?;
        let file = std::fs::File::open(&self.shared.snapshot_path)
            .map_err(|e| StErr::from(StorageIOError::read_snapshot(Some(meta.signature()), &e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::log_store::LogStore;
    use crate::directory::entry::Attribute;
    use crate::directory::{DirectoryCommand, WriteMeta};
    use openraft::error::{RPCError, RaftError};
    use openraft::network::RPCOption;
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, Membership as RaftMembership, RaftLogReader, Vote};
    use std::collections::{BTreeMap, BTreeSet};
    use tempfile::TempDir;

    fn config(path: &Path) -> crate::config::Config {
        let mut config = crate::config::Config::default();
        config.node.data_dir = path.to_path_buf();
        config
    }

    /// The directory in `path` as it is on disk (without catching up with the log, as
    /// the node's `open_directory` does).
    fn open_dir(path: &Path) -> Arc<Directory> {
        let config = config(path);
        let settings = crate::directory::DirectorySettings {
            suffix: config.directory.suffix.clone(),
            indexes: config.directory.indexes.clone(),
            cache_bytes: config.directory.cache_mb << 20,
        };
        Arc::new(
            Directory::open(path, crate::directory::schema::Schema::builtin(), &settings)
                .expect("open directory"),
        )
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            let tmp = TempDir::new().expect("tempdir");
            let log = LogStore::open(tmp.path())?;
            let sm = StateMachine::open(open_dir(tmp.path()), tmp.path())?;
            Ok((tmp, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("storage suite");
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn add(dn: &str, attrs: &[(&str, &[&str])]) -> DirectoryCommand {
        DirectoryCommand::Add {
            dn: dn.into(),
            attrs: attrs
                .iter()
                .map(|(n, v)| Attribute::new(n, v.iter()))
                .collect(),
            meta: WriteMeta {
                actor: "cn=admin,ou=system,dc=pigeonair".into(),
                time: "20240101000000Z".into(),
                entry_uuid: Some("6f1c1a8e-0000-4000-8000-000000000001".into()),
            },
        }
    }

    fn normal(term: u64, index: u64, cmd: DirectoryCommand) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(ClusterRequest::Directory {
                id: format!("test-{index}"),
                cmd,
            }),
        }
    }

    fn membership(term: u64, index: u64) -> Entry {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            1,
            ClusterNode {
                name: "n1".into(),
                addr: "127.0.0.1:7000".into(),
            },
        );
        let voters: BTreeSet<NodeId> = [1].into_iter().collect();
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Membership(RaftMembership::new(vec![voters], nodes)),
        }
    }

    fn suffix() -> DirectoryCommand {
        add(
            "dc=pigeonair",
            &[("objectClass", &["top", "domain"]), ("dc", &["pigeonair"])],
        )
    }

    fn ou(name: &str) -> DirectoryCommand {
        add(
            &format!("ou={name},dc=pigeonair"),
            &[
                ("objectClass", &["top", "organizationalUnit"]),
                ("ou", &[name]),
            ],
        )
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn apply_adds_entries_and_records_position() {
        let tmp = TempDir::new().unwrap();
        let mut sm = StateMachine::open(open_dir(tmp.path()), tmp.path()).unwrap();
        let rx = sm.subscribe_applied();
        assert_eq!(sm.applied_index(), 0);
        let out = sm
            .apply([
                membership(1, 1),
                normal(1, 2, suffix()),
                normal(1, 3, suffix()),
                normal(1, 4, ou("people")),
            ])
            .await
            .unwrap();
        assert_eq!(out.len(), 4);
        assert!(out[1].0.is_ok());
        assert!(
            matches!(out[2].0, Err(crate::directory::DirError::AlreadyExists)),
            "the deterministic failure is the entry's response: {:?}",
            out[2].0
        );
        assert!(out[3].0.is_ok());
        let view = sm.directory().view().unwrap();
        assert!(view.find("ou=people,dc=pigeonair").unwrap().is_some());
        drop(view);
        let (applied, mem) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 4)));
        assert_eq!(mem.log_id(), &Some(log_id(1, 1)));
        assert_eq!(sm.applied_index(), 4);
        assert_eq!(*rx.borrow(), 4);
        sm.wait_applied(4).await;

        // Reopened over the same directory, the position is still there.
        let dir = sm.directory().clone();
        drop(sm);
        let mut sm2 = StateMachine::open(dir, tmp.path()).unwrap();
        assert_eq!(sm2.applied_index(), 4);
        assert_eq!(sm2.applied_state().await.unwrap().0, Some(log_id(1, 4)));
    }

    /// A run of requests applied in one call (one shared transaction, or one by one
    /// after a refusal) answers and writes what one call per entry does: a retried
    /// request id within the run is answered from its record, not applied again.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_run_of_requests_applies_as_one_call_per_entry_would() {
        let retried = |index: u64, id: &str, cmd: DirectoryCommand| Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(ClusterRequest::Directory { id: id.into(), cmd }),
        };
        let calls = || {
            vec![
                vec![
                    membership(1, 1),
                    normal(1, 2, suffix()),
                    normal(1, 3, ou("a")),
                    normal(1, 4, ou("b")),
                    normal(1, 5, ou("c")),
                ],
                // Answered from the record the run above wrote.
                vec![retried(6, "test-4", ou("b"))],
                vec![
                    retried(7, "test-3", ou("a")),
                    normal(1, 8, ou("a")),
                    normal(1, 9, ou("d")),
                ],
            ]
        };
        let (one, each) = (TempDir::new().unwrap(), TempDir::new().unwrap());
        let mut sm_one = StateMachine::open(open_dir(one.path()), one.path()).unwrap();
        let mut sm_each = StateMachine::open(open_dir(each.path()), each.path()).unwrap();
        let (mut by_run, mut by_entry) = (Vec::new(), Vec::new());
        for call in calls() {
            by_run.extend(sm_one.apply(call.clone()).await.unwrap());
            for e in call {
                by_entry.extend(sm_each.apply([e]).await.unwrap());
            }
        }
        let answers = |out: &[ClusterResponse]| -> Vec<String> {
            out.iter().map(|r| format!("{:?}", r.0)).collect()
        };
        assert_eq!(answers(&by_run), answers(&by_entry));
        assert!(by_run[5].0.is_ok(), "a retry is answered from its record");
        assert!(by_run[6].0.is_ok(), "a retry is answered from its record");
        assert!(
            matches!(by_run[7].0, Err(crate::directory::DirError::AlreadyExists)),
            "{:?}",
            by_run[7].0
        );
        for sm in [&sm_one, &sm_each] {
            assert_eq!(sm.applied_index(), 9);
            for name in ["a", "b", "c", "d"] {
                let dn = format!("ou={name},dc=pigeonair");
                let found = sm.directory().view().unwrap().find(&dn).unwrap();
                assert!(found.is_some(), "{dn}");
            }
        }
        assert_eq!(
            sm_one.directory().digest().unwrap(),
            sm_each.directory().digest().unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn snapshot_transfers_the_directory() {
        let a = TempDir::new().unwrap();
        let b = TempDir::new().unwrap();
        let mut sm_a = StateMachine::open(open_dir(a.path()), a.path()).unwrap();
        let mut sm_b = StateMachine::open(open_dir(b.path()), b.path()).unwrap();
        // b has something of its own that the snapshot must replace.
        sm_b.apply([normal(1, 1, suffix()), normal(1, 2, ou("stale"))])
            .await
            .unwrap();
        sm_a.apply([
            membership(1, 1),
            normal(1, 2, suffix()),
            normal(1, 3, ou("people")),
            normal(2, 4, ou("groups")),
        ])
        .await
        .unwrap();
        let snap = sm_a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(2, 4)));
        assert!(snap.meta.snapshot_id.starts_with("2-4-"));

        let mut rx = sm_b.begin_receiving_snapshot().await.unwrap();
        *rx = *snap.snapshot;
        sm_b.install_snapshot(&snap.meta, rx).await.unwrap();
        assert_eq!(
            sm_a.directory().digest().unwrap(),
            sm_b.directory().digest().unwrap()
        );
        assert_ne!(
            sm_a.directory().digest().unwrap(),
            open_dir(TempDir::new().unwrap().path()).digest().unwrap()
        );
        assert_eq!(sm_b.applied_index(), 4);
        assert_eq!(
            sm_b.applied_state().await.unwrap(),
            sm_a.applied_state().await.unwrap()
        );
        assert!(sm_b
            .directory()
            .view()
            .unwrap()
            .find("ou=stale,dc=pigeonair")
            .unwrap()
            .is_none());

        // The current snapshot survives a restart.
        let dir_b = sm_b.directory().clone();
        drop(sm_b);
        let mut sm_b2 = StateMachine::open(dir_b, b.path()).unwrap();
        let cur = sm_b2
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("snapshot");
        assert_eq!(cur.meta, snap.meta);
        // A later build on the reopened machine gets a fresh id.
        let again = sm_b2
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(again.meta.last_log_id, snap.meta.last_log_id);
        assert_ne!(again.meta.snapshot_id, snap.meta.snapshot_id);

        // A damaged snapshot (cut short, or garbage) is refused and changes nothing.
        let whole = std::fs::read(a.path().join(SNAPSHOT_FILE)).unwrap();
        let c = TempDir::new().unwrap();
        let mut sm_c = StateMachine::open(open_dir(c.path()), c.path()).unwrap();
        sm_c.apply([normal(1, 1, suffix()), normal(1, 2, ou("mine"))])
            .await
            .unwrap();
        let before = sm_c.directory().digest().unwrap();
        let mut garbage = whole.clone();
        garbage[whole.len() / 2] ^= 0xff;
        for bad in [whole[..whole.len() - 3].to_vec(), b"junk".to_vec(), garbage] {
            let mut rx = sm_c.begin_receiving_snapshot().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut *rx, &bad)
                .await
                .unwrap();
            let _ = sm_c.install_snapshot(&snap.meta, rx).await;
            assert_eq!(sm_c.directory().digest().unwrap(), before);
            assert_eq!(sm_c.applied_index(), 2);
        }
        assert!(sm_c.get_current_snapshot().await.unwrap().is_none());
    }

    /// openraft's network for a one-node cluster, which never calls it.
    struct NoPeers;

    impl openraft::network::RaftNetworkFactory<TypeConfig> for NoPeers {
        type Network = NoPeers;
        async fn new_client(&mut self, _: NodeId, _: &ClusterNode) -> NoPeers {
            NoPeers
        }
    }

    fn unreachable<E: std::error::Error>() -> RPCError<NodeId, ClusterNode, E> {
        RPCError::Unreachable(openraft::error::Unreachable::new(&AnyError::error(
            "a one-node cluster has no peers",
        )))
    }

    impl openraft::network::RaftNetwork<TypeConfig> for NoPeers {
        async fn append_entries(
            &mut self,
            _: openraft::raft::AppendEntriesRequest<TypeConfig>,
            _: RPCOption,
        ) -> Result<
            openraft::raft::AppendEntriesResponse<NodeId>,
            RPCError<NodeId, ClusterNode, RaftError<NodeId>>,
        > {
            Err(unreachable())
        }
        async fn install_snapshot(
            &mut self,
            _: openraft::raft::InstallSnapshotRequest<TypeConfig>,
            _: RPCOption,
        ) -> Result<
            openraft::raft::InstallSnapshotResponse<NodeId>,
            RPCError<NodeId, ClusterNode, RaftError<NodeId, openraft::error::InstallSnapshotError>>,
        > {
            Err(unreachable())
        }
        async fn vote(
            &mut self,
            _: openraft::raft::VoteRequest<NodeId>,
            _: RPCOption,
        ) -> Result<
            openraft::raft::VoteResponse<NodeId>,
            RPCError<NodeId, ClusterNode, RaftError<NodeId>>,
        > {
            Err(unreachable())
        }
    }

    /// A one-node Raft over the log and directory in `path`; openraft snapshots only
    /// when told to and then purges every entry the snapshot holds.
    async fn one_node(
        path: &Path,
        policy: Checkpoint,
    ) -> (crate::cluster::types::Raft, StateMachine) {
        let config = openraft::Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            ..Default::default()
        };
        let log = LogStore::open(path).expect("open the log");
        let sm =
            StateMachine::open_with(open_dir(path), path, policy).expect("open the state machine");
        let raft = crate::cluster::types::Raft::new(
            1,
            Arc::new(config.validate().expect("raft config")),
            NoPeers,
            log,
            sm.clone(),
        )
        .await
        .expect("start raft");
        (raft, sm)
    }

    fn request(index: u64, cmd: DirectoryCommand) -> ClusterRequest {
        ClusterRequest::Directory {
            id: format!("crash-{index}"),
            cmd,
        }
    }

    /// No periodic checkpoint while the test runs: only the checkpoint before the
    /// snapshot makes applies durable.
    const NO_PERIODIC_CHECKPOINT: Checkpoint = Checkpoint {
        interval: Duration::from_secs(3600),
        max_entries: u64::MAX,
    };

    /// Set in the child process of `acknowledged_applies_survive_sigkill`: the data
    /// directory it writes to before it is killed.
    const CRASH_CHILD: &str = "PIGEONAIR_TEST_CRASH_CHILD";

    /// The child: a one-node cluster that acknowledges writes, snapshots (the log is
    /// purged behind the snapshot), acknowledges more writes, says so on stdout and
    /// waits to be killed. Nothing after the snapshot was checkpointed.
    async fn crash_child(path: &Path) {
        let (raft, sm) = one_node(path, NO_PERIODIC_CHECKPOINT).await;
        let mut members = BTreeMap::new();
        members.insert(
            1,
            ClusterNode {
                name: "n1".into(),
                addr: "127.0.0.1:9".into(),
            },
        );
        raft.initialize(members).await.expect("initialize");
        raft.wait(Some(Duration::from_secs(30)))
            .current_leader(1, "the node leads")
            .await
            .expect("a leader");
        let write = |i: u64, cmd| {
            let raft = raft.clone();
            async move {
                let resp = raft.client_write(request(i, cmd)).await.expect("write");
                assert!(resp.data.0.is_ok(), "{:?}", resp.data.0);
            }
        };
        write(0, suffix()).await;
        for i in 1..=5 {
            write(i, ou(&format!("before{i}"))).await;
        }
        raft.trigger().snapshot().await.expect("trigger a snapshot");
        let applied = sm.applied_index();
        let m = raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied) && m.purged == m.snapshot,
                "the snapshot is built and the log purged behind it",
            )
            .await
            .expect("snapshot and purge");
        let snapshot = m.snapshot.expect("a snapshot").index;
        for i in 6..=10 {
            write(i, ou(&format!("after{i}"))).await;
        }
        println!(
            "crash-point snapshot={snapshot} applied={}",
            sm.applied_index()
        );
        std::future::pending::<()>().await;
    }

    /// Applies are not synced, so a crash loses the latest ones from the directory; the
    /// log has them, and both the catch-up at open and openraft's recovery at start apply
    /// them again. The log is purged behind a snapshot first, so this also fails when the
    /// directory is not durable up to the snapshot before the purge. A real SIGKILL of a
    /// child process: dropping a redb database in-process makes its unsynced commits
    /// durable, which a crash does not.
    #[test]
    fn acknowledged_applies_survive_sigkill() {
        if let Some(dir) = std::env::var_os(CRASH_CHILD) {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(crash_child(Path::new(&dir)));
            return;
        }
        let tmp = TempDir::new().unwrap();
        let name = concat!(module_path!(), "::acknowledged_applies_survive_sigkill");
        let name = name.split_once("::").map_or(name, |(_, rest)| rest);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD, tmp.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        // libtest may print the test's name on the same line first.
        let point = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find("crash-point ") {
                        break line[at..].to_string();
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the child never reached the crash point: {e}");
                }
            }
        };
        // std's Child::kill is SIGKILL on Unix.
        child.kill().expect("kill the child");
        child.wait().expect("reap the child");
        let number = |key: &str| -> u64 {
            point
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {point:?}"))
        };
        let (snapshot, applied) = (number("snapshot="), number("applied="));
        assert!(applied > snapshot, "{point}");

        let has = |dir: &Directory, name: &str| {
            dir.view()
                .unwrap()
                .find(&format!("ou={name},dc=pigeonair"))
                .unwrap()
                .is_some()
        };
        // What was durable at the crash: the directory as of the snapshot, which the log
        // no longer holds, and none of the applies after it.
        {
            let dir = open_dir(tmp.path());
            let durable: LogId<NodeId> =
                decode(&dir.meta(META_APPLIED).unwrap().expect("an applied id")).unwrap();
            assert_eq!(
                durable.index, snapshot,
                "the directory is durable exactly up to the snapshot (the crash lost the later applies)"
            );
            assert!((1..=5).all(|i| has(&dir, &format!("before{i}"))));
            assert!((6..=10).all(|i| !has(&dir, &format!("after{i}"))));
        }

        // Two ways back from here, each on its own copy of the crashed node's files.
        let copy = TempDir::new().unwrap();
        for f in std::fs::read_dir(tmp.path()).unwrap() {
            let f = f.unwrap();
            if f.file_type().unwrap().is_dir() {
                let sub = copy.path().join(f.file_name());
                std::fs::create_dir(&sub).unwrap();
                for g in std::fs::read_dir(f.path()).unwrap() {
                    let g = g.unwrap();
                    std::fs::copy(g.path(), sub.join(g.file_name())).unwrap();
                }
            } else {
                std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
            }
        }

        // 1. What a node start and the offline tools open: the directory caught up with
        // the log before anyone reads it. This node is the cluster's only member, so its
        // whole log counts as committed.
        crate::cluster::member::MemberState {
            cluster_id: "crash-test".into(),
            node_id: 1,
        }
        .save(copy.path())
        .unwrap();
        {
            let dir = crate::node::open_directory(&config(copy.path())).expect("open and catch up");
            let now: LogId<NodeId> =
                decode(&dir.meta(META_APPLIED).unwrap().expect("an applied id")).unwrap();
            assert_eq!(now.index, applied, "caught up with the whole log");
            for i in 6..=10 {
                assert!(has(&dir, &format!("after{i}")), "after{i} not caught up");
            }
        }
        // The catch-up was durable: the next open has nothing left to apply.
        assert_eq!(catch_up(&open_dir(copy.path()), copy.path()).unwrap(), 0);

        // 2. openraft's own recovery on a restart (without the catch-up): it applies the
        // log again from the directory's durable position.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut log = LogStore::open(tmp.path()).unwrap();
            let state = log.get_log_state().await.unwrap();
            assert_eq!(
                state.last_purged_log_id.map(|l| l.index),
                Some(snapshot),
                "the log was purged behind the snapshot"
            );
            drop(log);
            let (raft, sm) = one_node(tmp.path(), Checkpoint::default()).await;
            raft.wait(Some(Duration::from_secs(30)))
                .applied_index_at_least(Some(applied), "the acknowledged entries are applied again")
                .await
                .expect("re-applied after the restart");
            let dir = sm.directory();
            for i in 1..=5 {
                assert!(has(dir, &format!("before{i}")), "before{i}");
            }
            for i in 6..=10 {
                assert!(
                    has(dir, &format!("after{i}")),
                    "after{i} was acknowledged and lost"
                );
            }
            raft.shutdown().await.expect("shutdown");
        });
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn catch_up_applies_what_the_log_holds_as_committed() {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path();
        let mut log = LogStore::open(path).unwrap();
        log.blocking_append(vec![
            membership(1, 1),
            normal(1, 2, suffix()),
            normal(1, 3, ou("a")),
            normal(1, 4, ou("b")),
            normal(1, 5, ou("c")),
        ])
        .await
        .unwrap();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        drop(log);
        let dir = open_dir(path);
        let has = |name: &str| {
            dir.view()
                .unwrap()
                .find(&format!("ou={name},dc=pigeonair"))
                .unwrap()
                .is_some()
        };
        let applied = || {
            decode::<LogId<NodeId>>(&dir.meta(META_APPLIED).unwrap().unwrap())
                .unwrap()
                .index
        };

        // Not known to be the only member: up to the saved committed id.
        assert_eq!(catch_up(&dir, path).unwrap(), 3);
        assert_eq!(applied(), 3);
        assert!(has("a") && !has("b"));
        assert_eq!(catch_up(&dir, path).unwrap(), 0, "nothing twice");

        // This node is the only voter: the whole log.
        crate::cluster::member::MemberState {
            cluster_id: "c".into(),
            node_id: 1,
        }
        .save(path)
        .unwrap();
        assert_eq!(catch_up(&dir, path).unwrap(), 2);
        assert_eq!(applied(), 5);
        assert!(has("c"));

        // A second member joins (its entry not yet committed): back to the committed id.
        let mut nodes = BTreeMap::new();
        for id in [1, 2] {
            nodes.insert(
                id,
                ClusterNode {
                    name: format!("n{id}"),
                    addr: format!("127.0.0.{id}:7000"),
                },
            );
        }
        let voters: BTreeSet<NodeId> = [1].into_iter().collect();
        let mut log = LogStore::open(path).unwrap();
        log.blocking_append(vec![
            Entry {
                log_id: log_id(1, 6),
                payload: EntryPayload::Membership(RaftMembership::new(vec![voters], nodes)),
            },
            normal(1, 7, ou("d")),
        ])
        .await
        .unwrap();
        drop(log);
        assert_eq!(catch_up(&dir, path).unwrap(), 0);
        assert!(!has("d"));

        // A log purged past what the directory holds is refused, not papered over.
        let other = TempDir::new().unwrap();
        let mut log = LogStore::open(other.path()).unwrap();
        log.blocking_append(vec![
            membership(1, 1),
            normal(1, 2, suffix()),
            normal(1, 3, ou("a")),
        ])
        .await
        .unwrap();
        log.save_committed(Some(log_id(1, 3))).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
        drop(log);
        let err = catch_up(&open_dir(other.path()), other.path()).unwrap_err();
        assert!(err.to_string().contains("the log starts at 3"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn log_store_is_durable_across_reopen() {
        let tmp = TempDir::new().unwrap();
        let entries = vec![
            membership(1, 1),
            normal(1, 2, suffix()),
            normal(1, 3, ou("a")),
        ];
        {
            let mut log = LogStore::open(tmp.path()).unwrap();
            log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
            log.blocking_append(entries.clone()).await.unwrap();
            log.truncate(log_id(1, 3)).await.unwrap();
            // Last: only the log's closing transaction writes it.
            log.save_committed(Some(log_id(1, 2))).await.unwrap();
        }
        let mut log = LogStore::open(tmp.path()).unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(1, 1))
        );
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 2)));
        let got = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(format!("{got:?}"), format!("{:?}", &entries[..2]));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 2)));
        assert_eq!(state.last_purged_log_id, None);

        log.purge(log_id(1, 2)).await.unwrap();
        drop(log);
        let mut log = LogStore::open(tmp.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 2)));
        assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
    }
}

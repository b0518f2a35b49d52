//! The Raft log on redb: `raft-log.redb` in the node's data directory.
//!
//! Two tables: `log` (index → bincode [`Entry`]) and `meta` (the vote, the committed log
//! id and the last purged log id). The log is the one durable record of a command: the
//! state machine applies it without a sync and relies on the log to apply it again after
//! a crash.
//!
//! One writer thread owns every write, in the order openraft asked for them (openraft
//! requires its log and vote writes to be serialised). It takes whatever is queued when
//! it wakes and commits it in one transaction, so concurrent writes share one sync:
//!
//! - `append` returns as soon as the entries are queued and readable (from the `tail`
//!   kept in memory); openraft replicates them meanwhile, and the writer reports them
//!   flushed once their transaction is synced ([`Durability::Immediate`]). A leader's
//!   own sync thus overlaps its followers'.
//! - The tail also keeps the last [`KEEP_WRITTEN`] entries written, so replication and
//!   apply, which mostly read the newest entries, read them from memory.
//! - `save_vote`, `truncate` and `purge` wait until their transaction is synced.
//! - `save_committed` only records the id; the writer's next transaction carries it
//!   (and the last one, when the store closes). Losing it in a crash is safe, see
//!   [`RaftLogStorage::save_committed`] below.

// openraft's StorageError is large by design; every storage method returns it.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use super::types::{NodeId, TypeConfig};

/// A log entry of PigeonAir's Raft log.
pub type Entry = openraft::Entry<TypeConfig>;

/// The log entries: index → bincode-encoded entry.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Vote, committed and last purged log id.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged_log_id";

/// The file name of the log database inside the data directory.
pub const LOG_FILE: &str = "raft-log.redb";

/// How many written entries the in-memory tail keeps at most.
const KEEP_WRITTEN: usize = 1024;

/// At most this many queued writes go into one transaction.
const MAX_BATCH: usize = 1024;

type StErr = StorageError<NodeId>;

/// The error constructors of [`StorageIOError`], by what was being done.
#[derive(Clone, Copy)]
enum Op {
    ReadLogs,
    WriteLogs,
    ReadVote,
    WriteVote,
    Read,
    Write,
}

impl Op {
    fn err(self, e: AnyError) -> StErr {
        StorageError::from(match self {
            Op::ReadLogs => StorageIOError::read_logs(e),
            Op::WriteLogs => StorageIOError::write_logs(e),
            Op::ReadVote => StorageIOError::read_vote(e),
            Op::WriteVote => StorageIOError::write_vote(e),
            Op::Read => StorageIOError::read(e),
            Op::Write => StorageIOError::write(e),
        })
    }

    /// A closure mapping any error to a [`StorageError`] of this kind.
    fn map<E: std::error::Error + 'static>(self) -> impl FnOnce(E) -> StErr {
        move |e| self.err(AnyError::new(&e))
    }
}

fn encode<T: Serialize>(v: &T, op: Op) -> Result<Vec<u8>, StErr> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(op.map())
}

fn decode<T: DeserializeOwned>(bytes: &[u8], op: Op) -> Result<T, StErr> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(op.map())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One write for the writer thread.
enum Job {
    /// Entries `(index, sequence number in the tail, bytes)`; `done` reports the sync.
    Append {
        entries: Vec<(u64, u64, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    /// A vote to store.
    Vote {
        bytes: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Entries to remove and, for a purge, the last purged log id.
    Remove {
        range: (Bound<u64>, Bound<u64>),
        purged: Option<Vec<u8>>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

impl Job {
    fn finish(self, result: &Result<(), String>) {
        match self {
            Job::Append { done, .. } => {
                done.log_io_completed(result.clone().map_err(std::io::Error::other))
            }
            // The caller may have gone away (openraft shutting down): nothing to tell.
            Job::Vote { done, .. } | Job::Remove { done, .. } => {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// The newest entries of the log, in memory: index → (sequence number, entry). Every
/// entry not yet written, and at most [`KEEP_WRITTEN`] written ones before them. Always
/// a contiguous tail of the log: written entries leave from its front, a truncation
/// cuts its end, a purge its front.
#[derive(Default)]
struct Tail {
    /// The sequence number of the next append. Appends reach the writer in this order.
    next_seq: u64,
    /// Every entry whose sequence number is below this is written.
    written_below: u64,
    entries: BTreeMap<u64, (u64, Entry)>,
}

impl Tail {
    /// The entries of the tail whose index lies in `bounds`.
    fn copy(&self, bounds: (Bound<u64>, Bound<u64>)) -> Vec<Entry> {
        self.entries
            .range(bounds)
            .map(|(_, (_, e))| e.clone())
            .collect()
    }
}

/// What the store's handles and its writer thread share.
struct Shared {
    db: Database,
    tail: Mutex<Tail>,
    /// The committed log id openraft saved last, not yet written.
    committed: Mutex<Option<Vec<u8>>>,
}

impl Shared {
    /// Commit `jobs` and the `committed` id in one transaction, synced when `durable`.
    fn commit(
        &self,
        jobs: &[Job],
        committed: Option<Vec<u8>>,
        durable: bool,
    ) -> Result<(), redb::Error> {
        if jobs.is_empty() && committed.is_none() {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let mut log = txn.open_table(LOG)?;
            let mut meta = txn.open_table(META)?;
            for job in jobs {
                match job {
                    Job::Append { entries, .. } => {
                        for (index, _, bytes) in entries {
                            log.insert(*index, bytes.as_slice())?;
                        }
                    }
                    Job::Vote { bytes, .. } => {
                        meta.insert(KEY_VOTE, bytes.as_slice())?;
                    }
                    Job::Remove { range, purged, .. } => {
                        log.retain_in::<u64, _>(*range, |_, _| false)?;
                        if let Some(p) = purged {
                            meta.insert(KEY_PURGED, p.as_slice())?;
                        }
                    }
                }
            }
            if let Some(c) = &committed {
                meta.insert(KEY_COMMITTED, c.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Note that `jobs` are written, and let the oldest written entries leave the tail.
    fn forget_written(&self, jobs: &[Job]) {
        let Some(last) = jobs
            .iter()
            .filter_map(|job| match job {
                Job::Append { entries, .. } => entries.last().map(|(_, seq, _)| *seq),
                _ => None,
            })
            .max()
        else {
            return;
        };
        let mut tail = lock(&self.tail);
        tail.written_below = tail.written_below.max(last + 1);
        while tail.entries.len() > KEEP_WRITTEN {
            match tail.entries.first_key_value() {
                Some((&index, &(seq, _))) if seq < tail.written_below => {
                    tail.entries.remove(&index);
                }
                _ => break,
            }
        }
    }

    /// The writer thread: commit what is queued, in order, until every handle is gone;
    /// then write the last committed id.
    fn write_loop(&self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            // The committed id is taken before the queue is drained: openraft saves it
            // after queueing the entries it covers, so they are all in this batch or
            // already written, and the id never names an entry the log does not hold.
            let mut committed = lock(&self.committed).take();
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if jobs.len() == MAX_BATCH {
                // More may be queued, the entries the id covers among them: it waits.
                let mut slot = lock(&self.committed);
                if slot.is_none() {
                    *slot = committed.take();
                }
            }
            let result = self
                .commit(&jobs, committed, true)
                .map_err(|e| e.to_string());
            if result.is_ok() {
                self.forget_written(&jobs);
            }
            for job in jobs {
                job.finish(&result);
            }
        }
        let committed = lock(&self.committed).take();
        if let Err(e) = self.commit(&[], committed, true) {
            tracing::warn!(error = %e, "cannot save the committed log id at close");
        }
    }

    /// The entries whose index lies in `bounds` when the tail holds them all; `None`
    /// when some of them are older.
    fn tail_only(&self, bounds: (Bound<u64>, Bound<u64>)) -> Option<Vec<Entry>> {
        let tail = lock(&self.tail);
        let first = *tail.entries.keys().next()?;
        let in_tail = match bounds.0 {
            Bound::Included(start) => start >= first,
            Bound::Excluded(start) => start >= first.saturating_sub(1),
            Bound::Unbounded => false,
        };
        in_tail.then(|| tail.copy(bounds))
    }

    /// The entries whose index lies in `bounds`: from the database up to the tail, then
    /// from the tail.
    fn entries(&self, bounds: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, StErr> {
        // The tail first: an entry that leaves it meanwhile is written, so the read
        // transaction begun after this copy sees it.
        let newest = lock(&self.tail).copy(bounds);
        let written_end = match newest.first() {
            Some(e) => Bound::Excluded(e.log_id.index),
            None => bounds.1,
        };
        let mut out = read_entries(&self.db, (bounds.0, written_end))?;
        out.extend(newest);
        Ok(out)
    }
}

/// The Raft log and vote of one node, in its own redb database. Cheap to clone: clones
/// share the database and the writer (openraft's log readers are clones).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

/// Closing the last handle stops the writer after it wrote everything queued, and waits
/// for it, so the database is closed when the last handle is gone.
struct Inner {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Open (or create) the log in `data_dir/raft-log.redb`, creating the directory if
    /// needed, and start its writer thread. Blocking; call it at startup.
    pub fn open(data_dir: &Path) -> Result<LogStore, StorageError<NodeId>> {
        std::fs::create_dir_all(data_dir).map_err(Op::Write.map())?;
        let path = data_dir.join(LOG_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Op::Read.err(AnyError::error(format!(
                "{} is in use by another process (is a node running on this data directory?)",
                path.display()
            ))),
            other => Op::Read.map()(other),
        })?;
        let mut txn = db.begin_write().map_err(Op::Write.map())?;
        txn.set_durability(Durability::Immediate)
            .map_err(Op::Write.map())?;
        {
            txn.open_table(LOG).map_err(Op::Write.map())?;
            txn.open_table(META).map_err(Op::Write.map())?;
        }
        txn.commit().map_err(Op::Write.map())?;
        let shared = Arc::new(Shared {
            db,
            tail: Mutex::new(Tail::default()),
            committed: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("raft-log".into())
                .spawn(move || shared.write_loop(rx))
                .map_err(Op::Write.map())?
        };
        Ok(LogStore {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                writer: Some(writer),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Queue a job for the writer.
    fn send(&self, job: Job, op: Op) -> Result<(), StErr> {
        let stopped = || op.err(AnyError::error("the raft log's writer has stopped"));
        self.inner
            .tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())
    }

    /// Queue a job and wait until its transaction is synced.
    async fn write(
        &self,
        op: Op,
        job: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Job,
    ) -> Result<(), StErr> {
        let (done, synced) = oneshot::channel();
        self.send(job(done), op)?;
        synced
            .await
            .map_err(op.map())?
            .map_err(|e| op.err(AnyError::error(e)))
    }

    /// Run a blocking read over the store on tokio's blocking pool.
    async fn blocking<T, F>(&self, op: Op, f: F) -> Result<T, StErr>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, StErr> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner.shared))
            .await
            .map_err(op.map())?
    }

    /// Remove the entries whose index lies in `range` and, with `purged`, record the last
    /// purged log id, in one durable transaction.
    async fn remove_range(
        &self,
        range: (Bound<u64>, Bound<u64>),
        purged: Option<LogId<NodeId>>,
    ) -> Result<(), StErr> {
        let op = Op::WriteLogs;
        let purged = purged.map(|p| encode(&p, op)).transpose()?;
        lock(&self.shared().tail)
            .entries
            .retain(|index, _| !range.contains(index));
        self.write(op, |done| Job::Remove {
            range,
            purged,
            done,
        })
        .await
    }

    /// The committed log id last saved, read without a runtime (for a stopped node).
    pub fn committed_blocking(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.shared().committed()
    }

    /// The last purged log id, read without a runtime.
    pub fn purged_blocking(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        read_meta(&self.shared().db, KEY_PURGED, Op::ReadLogs)
    }

    /// The entries whose index lies in `range`, read without a runtime.
    pub fn entries_blocking(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.shared()
            .entries((range.start_bound().cloned(), range.end_bound().cloned()))
    }
}

impl Shared {
    /// The committed log id openraft saved last: the one waiting for the writer, else the
    /// one written.
    fn committed(&self) -> Result<Option<LogId<NodeId>>, StErr> {
        let op = Op::Read;
        let waiting = lock(&self.committed).clone();
        let value: Option<Option<LogId<NodeId>>> = match waiting {
            Some(bytes) => Some(decode(&bytes, op)?),
            None => read_meta(&self.db, KEY_COMMITTED, op)?,
        };
        Ok(value.flatten())
    }
}

fn read_entries(db: &Database, bounds: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, StErr> {
    let op = Op::ReadLogs;
    let txn = db.begin_read().map_err(op.map())?;
    let t = txn.open_table(LOG).map_err(op.map())?;
    let mut out = Vec::new();
    for item in t.range::<u64>(bounds).map_err(op.map())? {
        let (_, v) = item.map_err(op.map())?;
        out.push(decode::<Entry>(v.value(), op)?);
    }
    Ok(out)
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str, op: Op) -> Result<Option<T>, StErr> {
    let txn = db.begin_read().map_err(op.map())?;
    let t = txn.open_table(META).map_err(op.map())?;
    match t.get(key).map_err(op.map())? {
        Some(v) => Ok(Some(decode(v.value(), op)?)),
        None => Ok(None),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        // Entries not yet written (what replication and apply mostly ask for) are
        // copied right here, without a trip to the blocking pool.
        if let Some(entries) = self.shared().tail_only(bounds) {
            return Ok(entries);
        }
        self.blocking(Op::ReadLogs, move |s| s.entries(bounds))
            .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let op = Op::ReadLogs;
        self.blocking(op, move |s| {
            let purged: Option<LogId<NodeId>> = read_meta(&s.db, KEY_PURGED, op)?;
            let tail_last = lock(&s.tail)
                .entries
                .last_key_value()
                .map(|(_, (_, e))| e.log_id);
            let last = match tail_last {
                Some(id) => Some(id),
                None => {
                    let txn = s.db.begin_read().map_err(op.map())?;
                    let t = txn.open_table(LOG).map_err(op.map())?;
                    let last = match t.last().map_err(op.map())? {
                        Some((_, v)) => Some(decode::<Entry>(v.value(), op)?.log_id),
                        None => None,
                    };
                    last
                }
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last.or(purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let op = Op::WriteVote;
        let bytes = encode(vote, op)?;
        self.write(op, |done| Job::Vote { bytes, done }).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let op = Op::ReadVote;
        self.blocking(op, move |s| read_meta(&s.db, KEY_VOTE, op))
            .await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced on its own; the writer's next transaction (an append, a vote, or the
        // last one at close) carries it. On restart openraft applies the log again from
        // the directory's durable applied id up to this one (the state machine's applies
        // are unsynced too, see state_machine.rs). Losing the latest value in a crash is
        // safe: the entries after it stay in the log, since a purge never passes a
        // snapshot and the directory is durable up to its snapshot, and they are applied
        // as soon as this node learns the commit index again (from its leader, or at once
        // as a restored sole leader).
        *lock(&self.shared().committed) = Some(encode(&committed, Op::Write)?);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.blocking(Op::Read, |s| s.committed()).await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let op = Op::WriteLogs;
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut encoded = Vec::with_capacity(entries.len());
        for e in &entries {
            encoded.push(encode(e, op)?);
        }
        // Readable from here on. Queued under the same lock, so the writer gets the
        // appends in the order they became readable.
        let mut tail = lock(&self.shared().tail);
        let mut queued = Vec::with_capacity(entries.len());
        for (e, bytes) in entries.into_iter().zip(encoded) {
            let seq = tail.next_seq;
            tail.next_seq += 1;
            queued.push((e.log_id.index, seq, bytes));
            tail.entries.insert(e.log_id.index, (seq, e));
        }
        self.send(
            Job::Append {
                entries: queued,
                done: callback,
            },
            op,
        )
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "truncating the raft log");
        self.remove_range((Bound::Included(log_id.index), Bound::Unbounded), None)
            .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "purging the raft log");
        self.remove_range(
            (Bound::Unbounded, Bound::Included(log_id.index)),
            Some(log_id),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    async fn indexes(log: &mut LogStore, range: impl RangeBounds<u64>) -> Vec<u64> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        log.try_get_log_entries(bounds)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    /// Reads that span the database and the in-memory tail return every entry once, in
    /// order, before and after a truncation and a purge.
    #[tokio::test(flavor = "multi_thread")]
    async fn reads_across_the_in_memory_tail_see_the_whole_log() {
        let tmp = tempfile::TempDir::new().unwrap();
        let mut log = LogStore::open(tmp.path()).unwrap();
        let n = KEEP_WRITTEN as u64 + 100;
        for i in 1..=n {
            let entry = Entry {
                log_id: id(i),
                payload: EntryPayload::Blank,
            };
            log.blocking_append([entry]).await.unwrap();
        }
        assert_eq!(indexes(&mut log, ..).await, (1..=n).collect::<Vec<_>>());
        assert_eq!(
            indexes(&mut log, 50..=60).await,
            (50..=60).collect::<Vec<_>>()
        );
        assert_eq!(
            indexes(&mut log, 90..=110).await,
            (90..=110).collect::<Vec<_>>()
        );
        assert_eq!(
            indexes(&mut log, n - 5..).await,
            (n - 5..=n).collect::<Vec<_>>()
        );
        log.truncate(id(n - 10)).await.unwrap();
        log.purge(id(95)).await.unwrap();
        let want: Vec<u64> = (96..n - 10).collect();
        assert_eq!(indexes(&mut log, ..).await, want);
        drop(log);
        let mut log = LogStore::open(tmp.path()).unwrap();
        assert_eq!(indexes(&mut log, ..).await, want);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(id(n - 11)));
        assert_eq!(state.last_purged_log_id, Some(id(95)));
    }
}

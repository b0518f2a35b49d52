//! The Raft log on redb: `raft-log.redb` in the node's data directory.
//!
//! Two tables: `log` (index → bincode [`Entry`]) and `meta` (the vote, the committed log
//! id and the last purged log id). Every write that openraft relies on for safety (an
//! append reported flushed, a saved vote, a truncation, a purge) is committed with
//! [`Durability::Immediate`] before it is reported done. The log is the one durable
//! record of a command: the state machine applies it without a sync and relies on the
//! log to apply it again after a crash. The redb calls run on tokio's blocking pool, so
//! the store works on any tokio runtime.

// openraft's StorageError is large by design; every storage method returns it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

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

/// The Raft log and vote of one node, in its own redb database. Cheap to clone: clones
/// share the database (openraft's log readers are clones).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Open (or create) the log in `data_dir/raft-log.redb`, creating the directory if
    /// needed. Blocking; call it at startup.
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
        Ok(LogStore { db: Arc::new(db) })
    }

    /// Run a blocking closure over the database on tokio's blocking pool.
    async fn blocking<T, F>(&self, op: Op, f: F) -> Result<T, StErr>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StErr> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(op.map())?
    }

    /// Write one meta value durably (or, with `durable == false`, without a sync).
    async fn put_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durable: bool,
        op: Op,
    ) -> Result<(), StErr> {
        let bytes = encode(value, op)?;
        self.blocking(op, move |db| {
            let mut txn = db.begin_write().map_err(op.map())?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(op.map())?;
            {
                let mut t = txn.open_table(META).map_err(op.map())?;
                t.insert(key, bytes.as_slice()).map_err(op.map())?;
            }
            txn.commit().map_err(op.map())
        })
        .await
    }

    /// Read one meta value.
    async fn get_meta<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
        op: Op,
    ) -> Result<Option<T>, StErr> {
        self.blocking(op, move |db| read_meta(db, key, op)).await
    }

    /// Remove the entries whose index lies in `range` and, with `purged`, record the last
    /// purged log id, in one durable transaction.
    async fn remove_range<R>(&self, range: R, purged: Option<LogId<NodeId>>) -> Result<(), StErr>
    where
        R: RangeBounds<u64> + Send + 'static,
    {
        let op = Op::WriteLogs;
        let purged = purged.map(|p| encode(&p, op)).transpose()?;
        self.blocking(op, move |db| {
            let mut txn = db.begin_write().map_err(op.map())?;
            txn.set_durability(Durability::Immediate)
                .map_err(op.map())?;
            {
                let mut t = txn.open_table(LOG).map_err(op.map())?;
                t.retain_in::<u64, _>(range, |_, _| false)
                    .map_err(op.map())?;
                if let Some(p) = &purged {
                    let mut m = txn.open_table(META).map_err(op.map())?;
                    m.insert(KEY_PURGED, p.as_slice()).map_err(op.map())?;
                }
            }
            txn.commit().map_err(op.map())
        })
        .await
    }

    /// The committed log id last saved, read without a runtime (for a stopped node).
    pub fn committed_blocking(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(read_meta::<Option<LogId<NodeId>>>(&self.db, KEY_COMMITTED, Op::Read)?.flatten())
    }

    /// The last purged log id, read without a runtime.
    pub fn purged_blocking(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        read_meta(&self.db, KEY_PURGED, Op::ReadLogs)
    }

    /// The entries whose index lies in `range`, read without a runtime.
    pub fn entries_blocking(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        read_entries(
            &self.db,
            (range.start_bound().cloned(), range.end_bound().cloned()),
        )
    }
}

fn read_entries(
    db: &Database,
    bounds: (std::ops::Bound<u64>, std::ops::Bound<u64>),
) -> Result<Vec<Entry>, StErr> {
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
        self.blocking(Op::ReadLogs, move |db| read_entries(db, bounds))
            .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let op = Op::ReadLogs;
        self.blocking(op, move |db| {
            let purged: Option<LogId<NodeId>> = read_meta(db, KEY_PURGED, op)?;
            let txn = db.begin_read().map_err(op.map())?;
            let t = txn.open_table(LOG).map_err(op.map())?;
            let last = match t.last().map_err(op.map())? {
                Some((_, v)) => Some(decode::<Entry>(v.value(), op)?.log_id),
                None => None,
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
        self.put_meta(KEY_VOTE, vote, true, Op::WriteVote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(KEY_VOTE, Op::ReadVote).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced on its own; the next durable commit (an append, a vote) carries it to
        // disk. On restart openraft applies the log again from the directory's durable
        // applied id up to this one (the state machine's applies are unsynced too, see
        // state_machine.rs). Losing the latest value in a crash is safe: the entries after
        // it stay in the log, since a purge never passes a snapshot and the directory is
        // durable up to its snapshot, and they are applied as soon as this node learns
        // the commit index again (from its leader, or at once as a restored sole leader).
        self.put_meta(KEY_COMMITTED, &committed, false, Op::Write)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED, Op::Read)
            .await?
            .flatten())
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
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((e.log_id.index, encode(&e, op)?));
        }
        let res = self
            .blocking(op, move |db| {
                let mut txn = db.begin_write().map_err(op.map())?;
                txn.set_durability(Durability::Immediate)
                    .map_err(op.map())?;
                {
                    let mut t = txn.open_table(LOG).map_err(op.map())?;
                    for (index, bytes) in &encoded {
                        t.insert(*index, bytes.as_slice()).map_err(op.map())?;
                    }
                }
                txn.commit().map_err(op.map())
            })
            .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "truncating the raft log");
        self.remove_range(log_id.index.., None).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "purging the raft log");
        self.remove_range(..=log_id.index, Some(log_id)).await
    }
}

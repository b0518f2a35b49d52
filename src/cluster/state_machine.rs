//! The directory as openraft's state machine.
//!
//! Each log entry is applied in one durable redb transaction of the directory that also
//! records the entry's log id (`raft_applied`) and, for a membership entry, the membership
//! (`raft_membership`), so the applied position always matches the data. Snapshots are the
//! whole directory ([`DirectorySnapshot`], bincode); the latest one is kept in memory and
//! in `raft-snapshot.bin` in the data directory so it survives a restart.

// openraft's StorageError is large by design; every storage method returns it.
#![allow(clippy::result_large_err)]

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, StorageError, StorageIOError, StoredMembership,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use super::log_store::Entry;
use super::types::{ClusterNode, ClusterRequest, ClusterResponse, NodeId, TypeConfig};
use crate::directory::{Directory, DirectorySnapshot};

/// The directory meta key holding the last applied log id (bincode `LogId`).
pub const META_APPLIED: &str = "raft_applied";
/// The directory meta key holding the last applied membership (bincode
/// `StoredMembership`).
pub const META_MEMBERSHIP: &str = "raft_membership";
/// The file name of the current snapshot inside the data directory.
pub const SNAPSHOT_FILE: &str = "raft-snapshot.bin";

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

/// The latest snapshot: its meta and its bytes.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

impl StoredSnapshot {
    fn to_snapshot(&self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.clone())),
        }
    }
}

/// What the state machine and its snapshot builders share.
struct Shared {
    dir: Arc<Directory>,
    snapshot_path: PathBuf,
    /// The last applied index (0 when nothing was applied).
    applied: AtomicU64,
    applied_tx: watch::Sender<u64>,
    /// The current snapshot; the lock also serialises writing its file.
    current: Mutex<Option<StoredSnapshot>>,
    /// Makes snapshot ids unique.
    counter: AtomicU64,
}

impl Shared {
    fn set_applied(&self, index: u64) {
        self.applied.store(index, Ordering::Release);
        self.applied_tx.send_replace(index);
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

    /// Make `snap` the current snapshot: write it to a temporary file, sync it, rename
    /// it over the snapshot file, sync the directory. With `only_if_newer`, a snapshot
    /// older than the current one is dropped.
    fn store_snapshot(&self, snap: StoredSnapshot, only_if_newer: bool) -> Result<(), StErr> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if only_if_newer {
            if let Some(c) = cur.as_ref() {
                if c.meta.last_log_id > snap.meta.last_log_id {
                    return Ok(());
                }
            }
        }
        let sig = Some(snap.meta.signature());
        let werr = |e: AnyError| -> StErr { StorageIOError::write_snapshot(sig.clone(), e).into() };
        let bytes = encode(&snap).map_err(werr)?;
        let tmp = self.snapshot_path.with_extension("bin.tmp");
        let io = |e: std::io::Error| werr(AnyError::new(&e));
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.snapshot_path).map_err(io)?;
        if let Some(parent) = self.snapshot_path.parent() {
            if let Ok(d) = std::fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        *cur = Some(snap);
        Ok(())
    }

    /// Build a snapshot of the directory as it is now and make it current.
    fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, StErr> {
        let snap = self
            .dir
            .snapshot(&[META_APPLIED, META_MEMBERSHIP])
            .map_err(|e| read_err(&e))?;
        // The log id and membership come from the same read transaction as the entries.
        let mut last_log_id = None;
        let mut last_membership = Membership::default();
        for (k, v) in &snap.meta {
            if k == META_APPLIED {
                last_log_id = Some(decode::<LogId<NodeId>>(v).map_err(read_err)?);
            } else if k == META_MEMBERSHIP {
                last_membership = decode::<Membership>(v).map_err(read_err)?;
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
        let data = encode(&snap)
            .map_err(|e| StErr::from(StorageIOError::write_snapshot(Some(meta.signature()), e)))?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            entries = snap.entries.len(),
            bytes = data.len(),
            "built a directory snapshot"
        );
        let stored = StoredSnapshot { meta, data };
        let out = stored.to_snapshot();
        self.store_snapshot(stored, true)?;
        Ok(out)
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
    /// (loaded when present). Blocking; call it at startup.
    pub fn open(
        dir: Arc<Directory>,
        data_dir: &Path,
    ) -> Result<StateMachine, StorageError<NodeId>> {
        std::fs::create_dir_all(data_dir).map_err(|e| write_err(&e))?;
        let snapshot_path = data_dir.join(SNAPSHOT_FILE);
        let current = match std::fs::read(&snapshot_path) {
            Ok(bytes) => {
                let s: StoredSnapshot = decode(&bytes)
                    .map_err(|e| StErr::from(StorageIOError::read_snapshot(None, e)))?;
                Some(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        };
        let counter = current
            .as_ref()
            .and_then(|s| s.meta.snapshot_id.rsplit('-').next()?.parse::<u64>().ok())
            .map_or(0, |c| c + 1);
        let (applied_tx, _) = watch::channel(0);
        let shared = Shared {
            dir,
            snapshot_path,
            applied: AtomicU64::new(0),
            applied_tx,
            current: Mutex::new(current),
            counter: AtomicU64::new(counter),
        };
        let (applied, _) = shared.applied_state()?;
        shared.set_applied(applied.map_or(0, |l| l.index));
        Ok(StateMachine {
            shared: Arc::new(shared),
        })
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

/// Apply one entry in one durable directory transaction.
fn apply_entry(shared: &Shared, entry: &Entry) -> Result<ClusterResponse, StErr> {
    let log_id = entry.log_id;
    let apply_err = |e: AnyError| -> StErr { StorageIOError::apply(log_id, e).into() };
    let applied = encode(&log_id).map_err(apply_err)?;
    let result =
        match &entry.payload {
            EntryPayload::Blank => shared
                .dir
                .apply_with_meta(None, &[(META_APPLIED, &applied)]),
            EntryPayload::Normal(ClusterRequest::Directory { id, cmd }) => shared
                .dir
                .apply_request(id, log_id.index, cmd, &[(META_APPLIED, &applied)]),
            EntryPayload::Membership(m) => {
                let stored = Membership::new(Some(log_id), m.clone());
                let membership = encode(&stored).map_err(apply_err)?;
                shared.dir.apply_with_meta(
                    None,
                    &[(META_APPLIED, &applied), (META_MEMBERSHIP, &membership)],
                )
            }
        };
    // A storage failure stops applying: openraft shuts the node down rather than skip.
    let inner = result.map_err(|e| apply_err(AnyError::new(&e)))?;
    shared.set_applied(log_id.index);
    Ok(ClusterResponse(inner))
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
        self.blocking(move |s| entries.iter().map(|e| apply_entry(s, e)).collect())
            .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ClusterNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let meta = meta.clone();
        let data = snapshot.into_inner();
        self.blocking(move |s| {
            let sig = Some(meta.signature());
            let rerr =
                |e: AnyError| -> StErr { StorageIOError::read_snapshot(sig.clone(), e).into() };
            let mut snap: DirectorySnapshot = decode(&data).map_err(rerr)?;
            // The applied position and membership are those the snapshot's meta names,
            // written in the same transaction as the data.
            snap.meta
                .retain(|(k, _)| k != META_APPLIED && k != META_MEMBERSHIP);
            if let Some(l) = &meta.last_log_id {
                snap.meta
                    .push((META_APPLIED.to_string(), encode(l).map_err(rerr)?));
            }
            snap.meta.push((
                META_MEMBERSHIP.to_string(),
                encode(&meta.last_membership).map_err(rerr)?,
            ));
            s.dir.install(&snap).map_err(|e| write_err(&e))?;
            tracing::info!(
                snapshot = %meta.snapshot_id,
                entries = snap.entries.len(),
                "installed a directory snapshot"
            );
            s.set_applied(meta.last_log_id.map_or(0, |l| l.index));
            s.store_snapshot(StoredSnapshot { meta, data }, false)
        })
        .await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let cur = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(cur.as_ref().map(StoredSnapshot::to_snapshot))
    }
}

/// Builds a snapshot of the directory (openraft runs it beside the state machine).
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.build_snapshot())
            .await
            .map_err(|e| read_err(&e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::log_store::LogStore;
    use crate::directory::entry::Attribute;
    use crate::directory::{DirectoryCommand, WriteMeta};
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, Membership as RaftMembership, RaftLogReader, Vote};
    use std::collections::{BTreeMap, BTreeSet};
    use tempfile::TempDir;

    fn open_dir(path: &Path) -> Arc<Directory> {
        let mut config = crate::config::Config::default();
        config.node.data_dir = path.to_path_buf();
        Arc::new(crate::node::open_directory(&config).expect("open directory"))
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
            log.save_committed(Some(log_id(1, 2))).await.unwrap();
            log.truncate(log_id(1, 3)).await.unwrap();
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

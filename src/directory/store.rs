//! Storage of the directory in redb, behind a narrow API.
//!
//! Four tables: `dn2id` (the normalised DN key, root first, to the entry id: a subtree is
//! a key prefix), `entries` (id to the encoded entry), `index` (index key to entry ids)
//! and `meta` (next id, index configuration, last applied command). Every write goes
//! through one [`WriteBatch`], and a crash leaves all of a batch or none. A batch from
//! [`Store::write`] is durable when `commit` returns (fsync). A batch from
//! [`Store::write_unsynced`] is visible to readers at once but reaches the disk only with
//! the next durable commit ([`Store::sync`]): a crash before that reverts the database to
//! its last durable commit, dropping every unsynced batch after it, never part of one.
//! Closing the database (dropping it) makes pending unsynced batches durable.

use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{
    Database, Durability, MultimapTableDefinition, ReadOnlyMultimapTable, ReadOnlyTable,
    ReadTransaction, ReadableDatabase, ReadableMultimapTable, ReadableTable, TableDefinition,
    WriteTransaction,
};

use super::entry::StoredEntry;

const DN2ID: TableDefinition<&str, u64> = TableDefinition::new("dn2id");
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const INDEX: MultimapTableDefinition<&[u8], u64> = MultimapTableDefinition::new("index");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A storage failure. The directory maps it to LDAP `other` (80) or `busy`.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError(e.to_string())
            }
        }
    )*};
}
store_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The directory's database file.
pub struct Store {
    db: Database,
    shared: Arc<Mutex<SharedView>>,
}

/// The read snapshot that readers share until the next commit (see [`Store::snapshot`]).
#[derive(Default)]
struct SharedView {
    /// Bumped by every commit.
    generation: u64,
    /// A snapshot taken at `generation`, if one was taken since the last commit.
    view: Option<Arc<ReadView>>,
}

impl Store {
    /// Open (or create) the database at `path` with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError(format!(
                    "{} is in use by another process (is a node running on this data directory?)",
                    path.display()
                )),
                other => StoreError::from(other),
            })?;
        let store = Store {
            db,
            shared: Arc::default(),
        };
        // Create the tables so readers never meet a missing one.
        let w = store.write()?;
        {
            w.txn.open_table(DN2ID)?;
            w.txn.open_table(ENTRIES)?;
            w.txn.open_multimap_table(INDEX)?;
            w.txn.open_table(META)?;
        }
        w.commit()?;
        Ok(store)
    }

    /// A consistent snapshot for reading.
    pub fn read(&self) -> Result<ReadView, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(ReadView {
            dn2id: txn.open_table(DN2ID)?,
            entries: txn.open_table(ENTRIES)?,
            index: txn.open_multimap_table(INDEX)?,
            meta: txn.open_table(META)?,
            _txn: txn,
        })
    }

    /// The latest committed state, shared with other readers: a read transaction costs
    /// a few B-tree lookups to begin, which a small search would pay on every request,
    /// so one is kept until the next commit. Reads see every commit that returned before
    /// they asked.
    pub fn snapshot(&self) -> Result<Arc<ReadView>, StoreError> {
        let generation = {
            let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = &shared.view {
                return Ok(v.clone());
            }
            shared.generation
        };
        let view = Arc::new(self.read()?);
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        // Keep it only if no commit happened meanwhile (it might predate that commit).
        if shared.generation == generation {
            shared.view = Some(view.clone());
        }
        Ok(view)
    }

    /// A write batch; nothing is visible to readers until [`WriteBatch::commit`].
    pub fn write(&self) -> Result<WriteBatch, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        Ok(WriteBatch {
            txn,
            shared: self.shared.clone(),
        })
    }

    /// A write batch whose commit is not synced: visible to readers when it commits,
    /// durable only with the next durable commit (see [`Store::sync`]). For bulk imports
    /// and for applies whose durable record is elsewhere (the Raft log).
    pub fn write_unsynced(&self) -> Result<WriteBatch, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        Ok(WriteBatch {
            txn,
            shared: self.shared.clone(),
        })
    }

    /// Make every earlier commit durable: when this returns, every batch committed before
    /// it was called, synced or not, is on disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.write()?.commit()
    }
}

/// Decode a stored entry.
pub fn decode(bytes: &[u8]) -> Result<StoredEntry, StoreError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(e, _)| e)
        .map_err(|e| StoreError(format!("corrupt entry: {e}")))
}

fn encode(e: &StoredEntry) -> Vec<u8> {
    bincode::serde::encode_to_vec(e, bincode::config::standard()).expect("entries always encode")
}

/// The exclusive upper bound of all keys that start with `prefix`.
fn prefix_end(prefix: &str) -> String {
    // '\u{10FFFF}' sorts after every character a key can hold.
    let mut s = prefix.to_string();
    s.push(char::MAX);
    s
}

/// A consistent read-only snapshot of the directory.
pub struct ReadView {
    dn2id: ReadOnlyTable<&'static str, u64>,
    entries: ReadOnlyTable<u64, &'static [u8]>,
    index: ReadOnlyMultimapTable<&'static [u8], u64>,
    meta: ReadOnlyTable<&'static str, &'static [u8]>,
    _txn: ReadTransaction,
}

/// Read operations shared by snapshots and write batches.
pub trait Reader {
    /// The id of the entry with this DN key.
    fn id_of(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// The entry with this id.
    fn entry(&self, id: u64) -> Result<Option<StoredEntry>, StoreError>;
    /// Every (key, id) whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError>;
    /// True when some entry lies below the entry with this key.
    fn has_children(&self, key: &str) -> Result<bool, StoreError>;
    /// The ids stored under an index key, ascending.
    fn index_get(&self, key: &[u8]) -> Result<Vec<u64>, StoreError>;
    /// How many ids are stored under an index key (without reading them).
    fn index_len(&self, key: &[u8]) -> Result<u64, StoreError>;
    /// A metadata value.
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

macro_rules! scan {
    ($table:expr, $prefix:expr, $limit:expr) => {{
        let end = prefix_end($prefix);
        let mut out = Vec::new();
        for item in $table.range::<&str>($prefix..end.as_str())? {
            let (k, v) = item?;
            out.push((k.value().to_string(), v.value()));
            if out.len() >= $limit {
                break;
            }
        }
        Ok::<_, StoreError>(out)
    }};
}

impl ReadView {
    /// Calls `f` with every (DN key, id) in key order; stops at the first error.
    pub fn for_each_dn<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(&str, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        for item in self.dn2id.iter().map_err(StoreError::from)? {
            let (k, v) = item.map_err(StoreError::from)?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    /// The entry with this id, with only the attributes `keep` accepts.
    pub fn entry_with(
        &self,
        id: u64,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Option<StoredEntry>, StoreError> {
        match self.entries.get(id)? {
            Some(v) => super::entry::decode_some(v.value(), keep)
                .map(Some)
                .ok_or_else(|| StoreError(format!("corrupt entry {id}"))),
            None => Ok(None),
        }
    }

    /// An entry's stored encoding.
    pub fn raw_entry(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries.get(id)?.map(|v| v.value().to_vec()))
    }

    /// Calls `f` with every (id, encoded entry) in id order, for snapshots; stops at
    /// the first error. Returns how many entries there were.
    pub fn for_each_raw<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut n = 0;
        for item in self.entries.iter().map_err(StoreError::from)? {
            let (k, v) = item.map_err(StoreError::from)?;
            f(k.value(), v.value())?;
            n += 1;
        }
        Ok(n)
    }
}

impl Reader for ReadView {
    fn id_of(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.dn2id.get(key)?.map(|v| v.value()))
    }
    fn entry(&self, id: u64) -> Result<Option<StoredEntry>, StoreError> {
        self.entries.get(id)?.map(|v| decode(v.value())).transpose()
    }
    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        scan!(self.dn2id, prefix, usize::MAX)
    }
    fn has_children(&self, key: &str) -> Result<bool, StoreError> {
        Ok(scan!(self.dn2id, key, 2)?.len() > 1)
    }
    fn index_get(&self, key: &[u8]) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for v in self.index.get(key)? {
            out.push(v?.value());
        }
        Ok(out)
    }
    fn index_len(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(self.index.get(key)?.len())
    }
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(name)?.map(|v| v.value().to_vec()))
    }
}

/// One atomic change to the directory.
pub struct WriteBatch {
    txn: WriteTransaction,
    shared: Arc<Mutex<SharedView>>,
}

impl Reader for WriteBatch {
    fn id_of(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let t = self.txn.open_table(DN2ID)?;
        let v = t.get(key)?.map(|v| v.value());
        Ok(v)
    }
    fn entry(&self, id: u64) -> Result<Option<StoredEntry>, StoreError> {
        let t = self.txn.open_table(ENTRIES)?;
        let v = t.get(id)?.map(|v| decode(v.value())).transpose();
        v
    }
    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let t = self.txn.open_table(DN2ID)?;
        let r = scan!(t, prefix, usize::MAX);
        r
    }
    fn has_children(&self, key: &str) -> Result<bool, StoreError> {
        let t = self.txn.open_table(DN2ID)?;
        let r = scan!(t, key, 2)?.len() > 1;
        Ok(r)
    }
    fn index_get(&self, key: &[u8]) -> Result<Vec<u64>, StoreError> {
        let t = self.txn.open_multimap_table(INDEX)?;
        let mut out = Vec::new();
        for v in t.get(key)? {
            out.push(v?.value());
        }
        Ok(out)
    }
    fn index_len(&self, key: &[u8]) -> Result<u64, StoreError> {
        let t = self.txn.open_multimap_table(INDEX)?;
        let n = t.get(key)?.len();
        Ok(n)
    }
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.txn.open_table(META)?;
        let v = t.get(name)?.map(|v| v.value().to_vec());
        Ok(v)
    }
}

impl WriteBatch {
    /// Store an entry under its id and DN key (replacing what was there).
    pub fn put_entry(&mut self, id: u64, entry: &StoredEntry) -> Result<(), StoreError> {
        self.txn.open_table(DN2ID)?.insert(entry.key.as_str(), id)?;
        self.put_body(id, entry)
    }

    /// Replace an entry's body; its DN key, unchanged, stays as it is.
    pub fn put_body(&mut self, id: u64, entry: &StoredEntry) -> Result<(), StoreError> {
        self.txn
            .open_table(ENTRIES)?
            .insert(id, encode(entry).as_slice())?;
        Ok(())
    }

    /// Remove a DN key (the entry body stays until [`WriteBatch::remove_entry`]).
    pub fn remove_key(&mut self, key: &str) -> Result<(), StoreError> {
        self.txn.open_table(DN2ID)?.remove(key)?;
        Ok(())
    }

    /// Remove an entry and its DN key.
    pub fn remove_entry(&mut self, id: u64, key: &str) -> Result<(), StoreError> {
        self.txn.open_table(DN2ID)?.remove(key)?;
        self.txn.open_table(ENTRIES)?.remove(id)?;
        Ok(())
    }

    /// Add ids under index keys.
    pub fn index_insert(&mut self, keys: &[Vec<u8>], id: u64) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(()); // the index table stays untouched
        }
        let mut t = self.txn.open_multimap_table(INDEX)?;
        for k in keys {
            t.insert(k.as_slice(), id)?;
        }
        Ok(())
    }

    /// Remove ids from index keys.
    pub fn index_remove(&mut self, keys: &[Vec<u8>], id: u64) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(()); // the index table stays untouched
        }
        let mut t = self.txn.open_multimap_table(INDEX)?;
        for k in keys {
            t.remove(k.as_slice(), id)?;
        }
        Ok(())
    }

    /// Drop every index key (before a rebuild).
    pub fn index_clear(&mut self) -> Result<(), StoreError> {
        self.txn
            .delete_multimap_table(INDEX)
            .map_err(|e| StoreError(e.to_string()))?;
        self.txn.open_multimap_table(INDEX)?;
        Ok(())
    }

    /// Drop every entry, DN key and index key (before installing a snapshot).
    pub fn clear_all(&mut self) -> Result<(), StoreError> {
        self.txn
            .delete_table(DN2ID)
            .map_err(|e| StoreError(e.to_string()))?;
        self.txn
            .delete_table(ENTRIES)
            .map_err(|e| StoreError(e.to_string()))?;
        self.txn.open_table(DN2ID)?;
        self.txn.open_table(ENTRIES)?;
        self.index_clear()
    }

    /// Every (id, entry), for rebuilding indexes and exports.
    pub fn all_entries(&self) -> Result<Vec<(u64, StoredEntry)>, StoreError> {
        let t = self.txn.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value(), decode(v.value())?));
        }
        Ok(out)
    }

    /// Set a metadata value.
    pub fn set_meta(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.txn.open_table(META)?.insert(name, value)?;
        Ok(())
    }

    /// Remove a metadata value.
    pub fn remove_meta(&mut self, name: &str) -> Result<(), StoreError> {
        self.txn.open_table(META)?.remove(name)?;
        Ok(())
    }

    /// A fresh entry id.
    pub fn next_id(&mut self) -> Result<u64, StoreError> {
        let cur = self
            .meta("next_id")?
            .map(|v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])))
            .unwrap_or(1);
        self.set_meta("next_id", &(cur + 1).to_le_bytes())?;
        Ok(cur)
    }

    /// Commit: durable when this returns, unless made with [`Store::write_unsynced`].
    pub fn commit(self) -> Result<(), StoreError> {
        self.txn.commit()?;
        // Readers that ask from now on must see this commit.
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.generation += 1;
        shared.view = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_snapshot_never_hides_a_returned_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("d.redb"), 1 << 20).unwrap();
        let first = store.snapshot().unwrap();
        // Readers share the snapshot while nothing is written.
        assert!(Arc::ptr_eq(&first, &store.snapshot().unwrap()));
        for (i, durable) in [(1u8, true), (2, false), (3, true)] {
            let mut w = if durable {
                store.write().unwrap()
            } else {
                store.write_unsynced().unwrap()
            };
            w.set_meta("k", &[i]).unwrap();
            w.commit().unwrap();
            // The next reader sees the commit that just returned.
            let now = store.snapshot().unwrap();
            assert_eq!(now.meta("k").unwrap(), Some(vec![i]));
            assert!(!Arc::ptr_eq(&first, &now));
        }
        // A snapshot taken earlier keeps its own state.
        assert_eq!(first.meta("k").unwrap(), None);
    }
}

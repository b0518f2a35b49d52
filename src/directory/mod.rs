//! The directory: DNs, schema, entries, filters, indexes and storage. No network code.
//!
//! Every change is a [`DirectoryCommand`]. [`Directory::apply`] checks everything that can
//! fail (existence, schema, non-leaf delete, RDN rules) against the current state and
//! writes the entry, its index keys and the applied position in one durable redb
//! transaction. Applying never reads a clock or a random source: timestamps, the new
//! entry's UUID and password hashes are decided by whoever builds the command and
//! travel inside it, so every replica that applies the same commands reaches the same
//! state. Reads go through [`Directory::view`], a consistent snapshot.

pub mod acl;
pub mod dn;
pub mod entry;
pub mod eval;
pub mod filter;
pub mod index;
pub mod password;
pub mod routing;
pub mod schema;
pub mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use self::dn::{Dn, Rdn};
use self::entry::{Attribute, StoredEntry};
use self::filter::Filter;
use self::index::IndexSet;
use self::schema::{ClassKind, Schema, Syntax, Violation};
use self::store::{ReadView, Reader, Store, StoreError, WriteBatch};

/// Who made a change and when: decided once by the node that took the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteMeta {
    /// The DN of the bound identity that asked for the change.
    pub actor: String,
    /// The time of the change, Generalized Time in UTC (`YYYYMMDDHHMMSSZ`).
    pub time: String,
    /// The entryUUID of a new entry (for adds).
    pub entry_uuid: Option<String>,
}

impl WriteMeta {
    /// Meta for a change made now by `actor`, with a fresh UUID for a new entry.
    pub fn now(actor: &str) -> WriteMeta {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let time = schema::GeneralizedTime::from_unix(now.as_secs() as i64, 0).canonical();
        WriteMeta {
            actor: actor.to_string(),
            time,
            entry_uuid: Some(uuid::Uuid::new_v4().to_string()),
        }
    }
}

/// A modification operation (RFC 4511 section 4.6, RFC 4525).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOp {
    /// Add values.
    Add,
    /// Delete values, or the whole attribute when no values are given.
    Delete,
    /// Replace all values (none: remove the attribute).
    Replace,
    /// Add the given integer to every value.
    Increment,
}

/// One change within a modify command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What to do.
    pub op: ChangeOp,
    /// The attribute description.
    pub attr: String,
    /// The values.
    pub values: Vec<Vec<u8>>,
}

/// Every change to the directory. The replicated log carries these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryCommand {
    /// Add an entry.
    Add {
        /// Its DN.
        dn: String,
        /// Its attributes (passwords already hashed).
        attrs: Vec<Attribute>,
        /// Who and when.
        meta: WriteMeta,
    },
    /// Modify an entry.
    Modify {
        /// The entry.
        dn: String,
        /// The changes, applied in order, all or none.
        changes: Vec<Change>,
        /// Who and when.
        meta: WriteMeta,
    },
    /// Delete a leaf entry.
    Delete {
        /// The entry.
        dn: String,
        /// Who and when.
        meta: WriteMeta,
    },
    /// Rename an entry and/or move it (with its subtree) to a new superior.
    ModifyDn {
        /// The entry.
        dn: String,
        /// The new RDN.
        new_rdn: String,
        /// Remove the old RDN's values from the entry.
        delete_old_rdn: bool,
        /// The new parent, if it moves.
        new_superior: Option<String>,
        /// Who and when.
        meta: WriteMeta,
    },
}

/// Why a directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The database file cannot be opened or created.
    #[error("{0}")]
    Store(String),
    /// The configured suffix is not a usable naming context.
    #[error("suffix: {0}")]
    Suffix(String),
    /// The schema lacks what the directory needs (the subschema DN's attributes).
    #[error("the subschema DN: {0}")]
    Schema(String),
    /// The index configuration names unknown attributes or kinds, or a rebuild failed.
    #[error("indexes: {0}")]
    Indexes(String),
}

/// Why a directory operation failed; each variant maps to one LDAP result code.
/// Serialisable, so the outcome of a replicated apply can travel back to the node that
/// took the request.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum DirError {
    /// The entry (or its parent) does not exist (noSuchObject, 32).
    #[error("no such object")]
    NoSuchObject {
        /// The deepest existing ancestor.
        matched: String,
    },
    /// An entry with that DN exists (entryAlreadyExists, 68).
    #[error("entry already exists")]
    AlreadyExists,
    /// Delete of an entry with children (notAllowedOnNonLeaf, 66).
    #[error("entry has subordinates")]
    NotAllowedOnNonLeaf,
    /// A change would remove an RDN value (notAllowedOnRDN, 67).
    #[error("{0}")]
    NotAllowedOnRdn(String),
    /// A change of the structural object class (objectClassModsProhibited, 69).
    #[error("{0}")]
    ObjectClassModsProhibited(String),
    /// Deleting a value or attribute that is not there (noSuchAttribute, 16).
    #[error("{0}: no such attribute or value")]
    NoSuchAttribute(String),
    /// Adding a value that is there (attributeOrValueExists, 20).
    #[error("{0}: value exists")]
    AttributeOrValueExists(String),
    /// A schema rule is broken.
    #[error(transparent)]
    Schema(#[from] Violation),
    /// The request is valid but will not be done (unwillingToPerform, 53).
    #[error("{0}")]
    UnwillingToPerform(String),
    /// The requester may not do this (insufficientAccessRights, 50).
    #[error("insufficient access")]
    InsufficientAccess,
    /// No leader could take the write in time (unavailable, 52); nothing was applied.
    #[error("{0}")]
    Unavailable(String),
    /// The size limit was reached (sizeLimitExceeded, 4).
    #[error("size limit exceeded")]
    SizeLimit,
    /// The time limit was reached (timeLimitExceeded, 3).
    #[error("time limit exceeded")]
    TimeLimit,
    /// Storage failed (other, 80).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A consistent read of the whole directory for a Raft snapshot: the metadata asked
/// for, then the entries streamed one by one (nothing is held in memory).
pub struct SnapshotSource {
    read: store::ReadView,
    /// Metadata (the id counter and the keys asked for), from the same read.
    pub meta: Vec<(String, Vec<u8>)>,
}

impl SnapshotSource {
    /// Calls `f` with every (id, encoded entry) in id order; stops at the first error.
    /// Returns how many entries there were.
    pub fn for_each_entry<E: From<StoreError>>(
        &self,
        f: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        self.read.for_each_raw(f)
    }
}

/// Search scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The base entry only.
    Base,
    /// Its direct children.
    One,
    /// The base and everything below it.
    Subtree,
}

/// What a caller may see of an entry: its view of it, or `None` when it is hidden.
pub type EntryView<'a> = &'a dyn Fn(&StoredEntry) -> Option<StoredEntry>;

/// A search request, after parsing.
#[derive(Clone)]
pub struct SearchRequest<'a> {
    /// The base DN.
    pub base: &'a str,
    /// The scope.
    pub scope: Scope,
    /// The filter.
    pub filter: &'a Filter,
    /// At most this many entries (0: no limit).
    pub size_limit: usize,
    /// Give up at this instant.
    pub deadline: Option<Instant>,
    /// What the caller may search of an entry (`None`: the entry is hidden from it);
    /// the filter is evaluated on that view. `None` here: everything is visible.
    pub view: Option<EntryView<'a>>,
    /// Fill in `hasSubordinates` (one more lookup per entry): only when the filter, the
    /// access rules or the requested attributes can see it. `entryDN` and
    /// `subschemaSubentry` cost nothing and are always there.
    pub subordinates: bool,
    /// Read only the stored attributes this accepts (by name) of each entry: those the
    /// filter, the access rules and the answer need. `None`: all of them.
    pub keep: Option<&'a dyn Fn(&str) -> bool>,
}

/// The entries a search will read, found before any is read: from the indexes, the
/// base alone, or every DN key under the base.
pub struct SearchPlan {
    base_key: String,
    base_depth: usize,
    ids: Vec<u64>,
    /// The ids come from an index (id order), not from a DN scan (DN order).
    indexed: bool,
}

impl SearchPlan {
    /// How many entries the search will read at most.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when the search reads nothing.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Settings of a directory (from the node's configuration).
#[derive(Debug, Clone)]
pub struct DirectorySettings {
    /// The naming context, e.g. `dc=pigeonair`.
    pub suffix: String,
    /// Indexed attributes: name to `eq,pres,sub`.
    pub indexes: BTreeMap<String, String>,
    /// redb page cache in bytes.
    pub cache_bytes: usize,
}

/// How many recent request ids the directory remembers to apply retried writes once.
pub const REQUEST_MEMORY: u64 = 8192;

/// Operational attributes computed when read, not stored.
pub const VIRTUAL_ATTRS: &[&str] = &["entryDN", "hasSubordinates", "subschemaSubentry"];
/// The DN of the subschema subentry.
pub const SUBSCHEMA_DN: &str = "cn=Subschema";

/// The outcome recorded for `request_id`, when it was applied among the last
/// [`REQUEST_MEMORY`] requests.
fn recorded_outcome(
    w: &WriteBatch,
    request_id: &str,
) -> Result<Option<Result<(), DirError>>, StoreError> {
    let Some(raw) = w.meta(&format!("req/{request_id}"))? else {
        return Ok(None);
    };
    bincode::serde::decode_from_slice(&raw, bincode::config::standard())
        .map(|(o, _)| Some(o))
        .map_err(|e| StoreError(format!("corrupt request record: {e}")))
}

/// Record the outcome of `request_id`, applied at `position`, in the slot of the ring
/// that `position` picks, forgetting the request the slot held.
fn record_outcome(
    w: &mut WriteBatch,
    request_id: &str,
    position: u64,
    outcome: &Result<(), DirError>,
) -> Result<(), StoreError> {
    let slot = format!("reqring/{}", position % REQUEST_MEMORY);
    if let Some(old) = w.meta(&slot)? {
        w.remove_meta(&format!("req/{}", String::from_utf8_lossy(&old)))?;
    }
    w.set_meta(&slot, request_id.as_bytes())?;
    let encoded = bincode::serde::encode_to_vec(outcome, bincode::config::standard())
        .map_err(|e| StoreError(e.to_string()))?;
    w.set_meta(&format!("req/{request_id}"), &encoded)
}

/// The directory of one node.
pub struct Directory {
    schema: Arc<Schema>,
    store: Store,
    suffix: Dn,
    suffix_key: String,
    /// The DN key of [`SUBSCHEMA_DN`] under this schema.
    subschema_key: String,
    indexes: IndexSet,
}

impl Directory {
    /// Open (or create) the directory in `data_dir/directory.redb`, rebuilding the
    /// indexes when their configuration changed since the last start.
    pub fn open(
        data_dir: &Path,
        schema: Schema,
        settings: &DirectorySettings,
    ) -> Result<Directory, OpenError> {
        let store = Store::open(&data_dir.join("directory.redb"), settings.cache_bytes)
            .map_err(|e| OpenError::Store(e.0))?;
        let suffix_error = |e: &dyn std::fmt::Display| OpenError::Suffix(e.to_string());
        let suffix = Dn::parse(&settings.suffix).map_err(|e| suffix_error(&e))?;
        if suffix.is_root() {
            return Err(suffix_error(&"the naming context may not be empty"));
        }
        let suffix_key = schema.dn_key(&suffix).map_err(|e| suffix_error(&e))?;
        let subschema_key = Dn::parse(SUBSCHEMA_DN)
            .map_err(|e| e.to_string())
            .and_then(|dn| schema.dn_key(&dn).map_err(|e| e.to_string()))
            .map_err(OpenError::Schema)?;
        let indexes =
            IndexSet::from_config(&schema, &settings.indexes).map_err(OpenError::Indexes)?;
        let dir = Directory {
            schema: Arc::new(schema),
            store,
            suffix,
            suffix_key,
            subschema_key,
            indexes,
        };
        dir.ensure_indexes()
            .map_err(|e| OpenError::Indexes(e.to_string()))?;
        Ok(dir)
    }

    fn ensure_indexes(&self) -> Result<(), DirError> {
        let wanted =
            bincode::serde::encode_to_vec(&self.indexes.attrs, bincode::config::standard())
                .unwrap_or_default();
        let r = self.store.read()?;
        if r.meta("index_config")?.as_deref() == Some(wanted.as_slice()) {
            return Ok(());
        }
        drop(r);
        let mut w = self.store.write()?;
        w.index_clear()?;
        let entries = w.all_entries()?;
        tracing::info!(entries = entries.len(), "rebuilding directory indexes");
        for (id, e) in entries {
            let keys = self.indexes.keys_of(&self.schema, &e);
            w.index_insert(&keys, id)?;
        }
        w.set_meta("index_config", &wanted)?;
        w.commit()?;
        Ok(())
    }

    /// Use another index configuration (the cluster-wide one), rebuilding the indexes
    /// when it differs. Called at start, before the directory is shared.
    pub fn use_indexes(&mut self, spec: &BTreeMap<String, String>) -> Result<(), String> {
        let set = IndexSet::from_config(&self.schema, spec)?;
        if set != self.indexes {
            self.indexes = set;
            self.ensure_indexes().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The schema.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// The naming context.
    pub fn suffix(&self) -> &Dn {
        &self.suffix
    }

    /// The DN key of the subschema subentry ([`SUBSCHEMA_DN`]).
    pub fn subschema_key(&self) -> &str {
        &self.subschema_key
    }

    /// A consistent snapshot for reading.
    pub fn view(&self) -> Result<DirView<'_>, DirError> {
        Ok(DirView {
            dir: self,
            r: self.store.snapshot()?,
        })
    }

    /// True when nothing has been stored yet.
    pub fn is_empty(&self) -> Result<bool, DirError> {
        Ok(self.view()?.r.id_of(&self.suffix_key)?.is_none())
    }

    /// Apply one command durably.
    pub fn apply(&self, cmd: &DirectoryCommand) -> Result<(), DirError> {
        let mut w = self.store.write()?;
        self.apply_in(&mut w, cmd)?;
        w.commit()?;
        Ok(())
    }

    /// Apply one command (if any) and write `meta` (e.g. the applied log id and the
    /// membership) in the same transaction. A command that fails its checks still
    /// records the meta: the failure is its deterministic outcome. `Err` of the outer
    /// result is a storage failure; the inner result is the command's own. The
    /// transaction is not synced: it is visible at once and durable with the next
    /// [`Directory::sync`]; a crash before that loses it whole, with its meta, so the
    /// caller keeps its own durable record of the command (the Raft log) to apply again.
    pub fn apply_with_meta(
        &self,
        cmd: Option<&DirectoryCommand>,
        meta: &[(&str, &[u8])],
    ) -> Result<Result<(), DirError>, StoreError> {
        let w = self.store.write_unsynced()?;
        self.apply_and_record(w, cmd, meta, |_, _| Ok(()))
    }

    /// Apply `cmd` (if any) in `w`; when it fails, discard its partial work in a fresh
    /// (unsynced) batch. Then let `record` write what it must about the outcome, write
    /// `meta`, and commit: the change, the record and the meta become durable together.
    fn apply_and_record(
        &self,
        mut w: WriteBatch,
        cmd: Option<&DirectoryCommand>,
        meta: &[(&str, &[u8])],
        record: impl FnOnce(&mut WriteBatch, &Result<(), DirError>) -> Result<(), StoreError>,
    ) -> Result<Result<(), DirError>, StoreError> {
        let out = match cmd {
            Some(c) => self.apply_in(&mut w, c),
            None => Ok(()),
        };
        if let Err(DirError::Store(e)) = out {
            return Err(e);
        }
        if out.is_err() {
            drop(w);
            w = self.store.write_unsynced()?;
        }
        record(&mut w, &out)?;
        for (k, v) in meta {
            w.set_meta(k, v)?;
        }
        w.commit()?;
        Ok(out)
    }

    /// Apply a command identified by `request_id` at most once: when the id was seen
    /// among the last [`REQUEST_MEMORY`] requests, its recorded outcome is returned and
    /// nothing is applied again. `position` (the log index) picks the slot of the ring
    /// that forgets old ids, so every replica forgets the same ones. The outcome, the
    /// ring and `meta` are written in the same transaction as the change, unsynced as in
    /// [`Directory::apply_with_meta`].
    pub fn apply_request(
        &self,
        request_id: &str,
        position: u64,
        cmd: &DirectoryCommand,
        meta: &[(&str, &[u8])],
    ) -> Result<Result<(), DirError>, StoreError> {
        let w = self.store.write_unsynced()?;
        if let Some(outcome) = recorded_outcome(&w, request_id)? {
            // Nothing is applied again; only the meta is written (its inner result is Ok).
            let _ = self.apply_and_record(w, None, meta, |_, _| Ok(()))?;
            return Ok(outcome);
        }
        self.apply_and_record(w, Some(cmd), meta, |w, out| {
            record_outcome(w, request_id, position, out)
        })
    }

    /// Apply requests `(request id, position, command)` in order in one unsynced
    /// transaction, with the same outcomes and the same writes as
    /// [`Directory::apply_request`] one after the other. When one is refused (any error
    /// but a storage failure) nothing is written and the answer is `None`: apply them
    /// one by one instead, so that the refused one leaves no trace.
    pub fn apply_requests(
        &self,
        requests: &[(&str, u64, &DirectoryCommand)],
        meta: &[(&str, &[u8])],
    ) -> Result<Option<Vec<Result<(), DirError>>>, StoreError> {
        let mut w = self.store.write_unsynced()?;
        let mut outcomes = Vec::with_capacity(requests.len());
        for &(request_id, position, cmd) in requests {
            if let Some(outcome) = recorded_outcome(&w, request_id)? {
                outcomes.push(outcome);
                continue;
            }
            match self.apply_in(&mut w, cmd) {
                Ok(()) => {}
                Err(DirError::Store(e)) => return Err(e),
                Err(_) => return Ok(None),
            }
            record_outcome(&mut w, request_id, position, &Ok(()))?;
            outcomes.push(Ok(()));
        }
        for (k, v) in meta {
            w.set_meta(k, v)?;
        }
        w.commit()?;
        Ok(Some(outcomes))
    }

    /// Set a metadata flag durably.
    pub fn set_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut w = self.store.write()?;
        w.set_meta(name, value)?;
        w.commit()
    }

    /// Remove a metadata value durably.
    pub fn clear_meta(&self, name: &str) -> Result<(), StoreError> {
        let mut w = self.store.write()?;
        w.remove_meta(name)?;
        w.commit()
    }

    /// Make every earlier write durable, the unsynced applies of
    /// [`Directory::apply_with_meta`] and [`Directory::apply_request`] included.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.store.sync()
    }

    /// A metadata value written by [`Directory::apply_with_meta`].
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.read()?.meta(name)
    }

    /// The whole directory as of now, for a snapshot: the id counter and the given
    /// metadata keys, and the entries to stream from the same read.
    pub fn snapshot_source(&self, meta_keys: &[&str]) -> Result<SnapshotSource, StoreError> {
        let read = self.store.read()?;
        let mut meta = Vec::new();
        for k in meta_keys.iter().chain(["next_id"].iter()) {
            if let Some(v) = read.meta(k)? {
                meta.push((k.to_string(), v));
            }
        }
        Ok(SnapshotSource { read, meta })
    }

    /// Replace the whole directory with a snapshot's entries (id, encoded entry) and
    /// metadata, rebuilding the indexes, in one durable transaction: a failure part-way
    /// leaves the directory as it was. Returns how many entries were installed.
    pub fn install_from<E: From<StoreError>>(
        &self,
        entries: impl Iterator<Item = Result<(u64, Vec<u8>), E>>,
        meta: &[(String, Vec<u8>)],
    ) -> Result<u64, E> {
        let mut w = self.store.write()?;
        w.clear_all()?;
        let mut n = 0;
        for item in entries {
            let (id, raw) = item?;
            let e = store::decode(&raw)?;
            w.put_entry(id, &e)?;
            w.index_insert(&self.indexes.keys_of(&self.schema, &e), id)?;
            n += 1;
        }
        for (k, v) in meta {
            w.set_meta(k, v)?;
        }
        w.commit()?;
        Ok(n)
    }

    /// A digest of the directory's content (every entry's DN key and encoded form, in
    /// key order): equal on replicas that hold the same data.
    pub fn digest(&self) -> Result<String, StoreError> {
        use sha2::{Digest, Sha256};
        let r = self.store.read()?;
        let mut h = Sha256::new();
        r.for_each_dn(|key, id| {
            h.update(key.as_bytes());
            h.update([0u8]);
            if let Some(raw) = r.raw_entry(id)? {
                h.update(raw);
            }
            Ok::<(), StoreError>(())
        })?;
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Apply many commands in large transactions that are synced once at the end (bulk
    /// import). Calls `progress` with the count applied so far. Stops at the first
    /// failure, reporting its index; everything before it is kept.
    pub fn apply_bulk(
        &self,
        cmds: impl IntoIterator<Item = DirectoryCommand>,
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<usize, (usize, DirError)> {
        let mut n = 0usize;
        let mut w = self.store.write_unsynced().map_err(|e| (n, e.into()))?;
        let mut in_batch = 0;
        for cmd in cmds {
            self.apply_in(&mut w, &cmd).map_err(|e| (n, e))?;
            n += 1;
            in_batch += 1;
            if in_batch >= batch {
                w.commit().map_err(|e| (n, e.into()))?;
                progress(n);
                w = self.store.write_unsynced().map_err(|e| (n, e.into()))?;
                in_batch = 0;
            }
        }
        w.commit().map_err(|e| (n, e.into()))?;
        self.store.sync().map_err(|e| (n, e.into()))?;
        progress(n);
        Ok(n)
    }

    /// A DN string parsed, with its key under this directory's schema.
    pub fn parse_dn(&self, s: &str) -> Result<(Dn, String), DirError> {
        let dn = Dn::parse(s).map_err(|e| Violation::InvalidDn(e.to_string()))?;
        let key = self.schema.dn_key(&dn)?;
        Ok((dn, key))
    }

    fn in_context(&self, key: &str) -> bool {
        key.starts_with(&self.suffix_key)
    }

    /// The deepest existing ancestor of a key, as a DN string.
    fn matched(&self, r: &impl Reader, dn: &Dn) -> Result<String, DirError> {
        let mut cur = dn.parent();
        while !cur.is_root() {
            let key = self.schema.dn_key(&cur)?;
            if let Some(id) = r.id_of(&key)? {
                return Ok(r.entry(id)?.map(|e| e.dn).unwrap_or_default());
            }
            cur = cur.parent();
        }
        Ok(String::new())
    }

    fn apply_in(&self, w: &mut WriteBatch, cmd: &DirectoryCommand) -> Result<(), DirError> {
        match cmd {
            DirectoryCommand::Add { dn, attrs, meta } => self.add(w, dn, attrs, meta),
            DirectoryCommand::Modify { dn, changes, meta } => self.modify(w, dn, changes, meta),
            DirectoryCommand::Delete { dn, .. } => self.delete(w, dn),
            DirectoryCommand::ModifyDn {
                dn,
                new_rdn,
                delete_old_rdn,
                new_superior,
                meta,
            } => self.modify_dn(
                w,
                dn,
                new_rdn,
                *delete_old_rdn,
                new_superior.as_deref(),
                meta,
            ),
        }
    }

    fn add(
        &self,
        w: &mut WriteBatch,
        dn_str: &str,
        attrs: &[Attribute],
        meta: &WriteMeta,
    ) -> Result<(), DirError> {
        let (dn, key) = self.parse_dn(dn_str)?;
        if !self.in_context(&key) {
            return Err(DirError::UnwillingToPerform(
                "the entry is not within this directory's naming context".into(),
            ));
        }
        if w.id_of(&key)?.is_some() {
            return Err(DirError::AlreadyExists);
        }
        if key != self.suffix_key {
            let parent_key = self.schema.dn_key(&dn.parent())?;
            if w.id_of(&parent_key)?.is_none() {
                return Err(DirError::NoSuchObject {
                    matched: self.matched(w, &dn)?,
                });
            }
        }
        let mut entry = StoredEntry {
            dn: dn.to_string(),
            key,
            attrs: Vec::new(),
        };
        for a in attrs {
            let at = self
                .schema
                .attr(&a.name)
                .ok_or_else(|| Violation::UndefinedAttribute(a.name.clone()))?;
            if at.no_user_modification {
                return Err(Violation::NoUserModification(format!(
                    "{}: no user modification allowed",
                    at.name()
                ))
                .into());
            }
            if a.values.is_empty() {
                return Err(Violation::Constraint(format!("{}: no values", at.name())).into());
            }
            let name = at.name().to_string();
            let mut values = entry
                .get(&name)
                .map(|x| x.values.clone())
                .unwrap_or_default();
            for v in &a.values {
                self.schema.check_syntax(at, v)?;
                if self.has_value(at, &values, v) {
                    return Err(DirError::AttributeOrValueExists(name));
                }
                values.push(v.clone());
            }
            entry.set(&name, values);
        }
        self.check_rdn_present(&dn, &entry)?;
        let structural = self.check_entry(&entry)?;
        let uuid = meta.entry_uuid.clone().unwrap_or_default();
        entry.set("entryUUID", vec![uuid.into_bytes()]);
        entry.set("creatorsName", vec![meta.actor.clone().into_bytes()]);
        entry.set("createTimestamp", vec![meta.time.clone().into_bytes()]);
        entry.set("modifiersName", vec![meta.actor.clone().into_bytes()]);
        entry.set("modifyTimestamp", vec![meta.time.clone().into_bytes()]);
        entry.set("structuralObjectClass", vec![structural.into_bytes()]);
        let id = w.next_id()?;
        w.put_entry(id, &entry)?;
        w.index_insert(&self.indexes.keys_of(&self.schema, &entry), id)?;
        Ok(())
    }

    fn has_value(&self, at: &schema::AttributeType, values: &[Vec<u8>], v: &[u8]) -> bool {
        match self.schema.normalize(at, v) {
            Some(n) => values
                .iter()
                .any(|x| self.schema.normalize(at, x).as_ref() == Some(&n)),
            None => values.iter().any(|x| x == v),
        }
    }

    fn check_rdn_present(&self, dn: &Dn, entry: &StoredEntry) -> Result<(), DirError> {
        let Some(rdn) = dn.rdn() else { return Ok(()) };
        for ava in &rdn.0 {
            let at = self
                .schema
                .attr(&ava.attr)
                .ok_or_else(|| Violation::UndefinedAttribute(ava.attr.clone()))?;
            let present = entry
                .get(at.name())
                .is_some_and(|a| self.has_value(at, &a.values, &ava.value));
            if !present {
                return Err(Violation::Naming(format!(
                    "value of naming attribute {} is not in the entry",
                    at.name()
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Check an entry against its object classes; returns its structural class.
    fn check_entry(&self, e: &StoredEntry) -> Result<String, DirError> {
        let oc_attr = e
            .get("objectClass")
            .ok_or_else(|| Violation::ObjectClass("no objectClass attribute".into()))?;
        let mut classes = Vec::new();
        for v in &oc_attr.values {
            let name = String::from_utf8_lossy(v);
            let oc = self
                .schema
                .class(name.trim())
                .ok_or_else(|| Violation::ObjectClass(format!("unknown object class {name:?}")))?;
            classes.push(oc);
        }
        let structurals: Vec<_> = classes
            .iter()
            .filter(|c| c.kind == ClassKind::Structural)
            .collect();
        let most_specific = structurals
            .iter()
            .find(|c| {
                let chain = self.schema.class_chain(c);
                structurals
                    .iter()
                    .all(|o| chain.iter().any(|x| x.oid == o.oid))
            })
            .copied();
        let structural = match (structurals.is_empty(), most_specific) {
            (true, _) => {
                return Err(
                    Violation::ObjectClass("no structural object class provided".into()).into(),
                )
            }
            (false, None) => {
                return Err(
                    Violation::ObjectClass("invalid structural object class chain".into()).into(),
                )
            }
            (false, Some(s)) => s,
        };
        let extensible = classes
            .iter()
            .any(|c| c.name().eq_ignore_ascii_case("extensibleObject"));
        let allowed = self.schema.allowed(&classes);
        let missing = allowed
            .must
            .iter()
            .filter(|at| e.get(at.name()).is_none())
            .map(|at| at.name().to_ascii_lowercase())
            .min();
        if let Some(m) = missing {
            return Err(
                Violation::ObjectClass(format!("object class requires attribute {m}")).into(),
            );
        }
        for a in &e.attrs {
            let Some(at) = self.schema.attr(&a.name) else {
                return Err(Violation::UndefinedAttribute(a.name.clone()).into());
            };
            if at.single_value && a.values.len() > 1 {
                return Err(Violation::Constraint(format!(
                    "{}: single-valued attribute has several values",
                    at.name()
                ))
                .into());
            }
            if at.is_operational() || extensible {
                continue;
            }
            if !allowed.allows(at) && !at.name().eq_ignore_ascii_case("objectClass") {
                return Err(Violation::ObjectClass(format!(
                    "attribute {} is not allowed by the entry's object classes",
                    at.name()
                ))
                .into());
            }
        }
        Ok(structural.name().to_string())
    }

    fn modify(
        &self,
        w: &mut WriteBatch,
        dn_str: &str,
        changes: &[Change],
        meta: &WriteMeta,
    ) -> Result<(), DirError> {
        let (dn, key) = self.parse_dn(dn_str)?;
        let Some(id) = w.id_of(&key)? else {
            return Err(DirError::NoSuchObject {
                matched: self.matched(w, &dn)?,
            });
        };
        let old = w.entry(id)?.ok_or(DirError::NoSuchObject {
            matched: String::new(),
        })?;
        let mut e = old.clone();
        for ch in changes {
            let at = self
                .schema
                .attr(&ch.attr)
                .ok_or_else(|| Violation::UndefinedAttribute(ch.attr.clone()))?;
            let name = at.name().to_string();
            if at.no_user_modification {
                return Err(Violation::NoUserModification(format!(
                    "{name}: no user modification allowed"
                ))
                .into());
            }
            for v in &ch.values {
                if ch.op != ChangeOp::Delete {
                    self.schema.check_syntax(at, v)?;
                }
            }
            let mut values = e.get(&name).map(|a| a.values.clone()).unwrap_or_default();
            match ch.op {
                ChangeOp::Add => {
                    if ch.values.is_empty() {
                        return Err(
                            Violation::Constraint(format!("{name}: add needs values")).into()
                        );
                    }
                    for v in &ch.values {
                        if self.has_value(at, &values, v) {
                            return Err(DirError::AttributeOrValueExists(name));
                        }
                        values.push(v.clone());
                    }
                }
                ChangeOp::Delete => {
                    if e.get(&name).is_none() {
                        return Err(DirError::NoSuchAttribute(name));
                    }
                    if ch.values.is_empty() {
                        values.clear();
                    } else {
                        for v in &ch.values {
                            let before = values.len();
                            let target = self.schema.normalize(at, v);
                            values.retain(|x| match &target {
                                Some(t) => self.schema.normalize(at, x).as_ref() != Some(t),
                                None => x != v,
                            });
                            if values.len() == before {
                                return Err(DirError::NoSuchAttribute(name));
                            }
                        }
                    }
                }
                ChangeOp::Replace => {
                    values.clear();
                    for v in &ch.values {
                        if !self.has_value(at, &values, v) {
                            values.push(v.clone());
                        }
                    }
                }
                ChangeOp::Increment => {
                    if at.syntax != Syntax::Integer {
                        return Err(Violation::Constraint(format!(
                            "{name}: increment needs an integer attribute"
                        ))
                        .into());
                    }
                    let [delta] = ch.values.as_slice() else {
                        return Err(Violation::Constraint(format!(
                            "{name}: increment takes exactly one value"
                        ))
                        .into());
                    };
                    if values.is_empty() {
                        return Err(DirError::NoSuchAttribute(name));
                    }
                    let delta: i128 =
                        parse_int(delta).ok_or_else(|| Violation::InvalidSyntax(name.clone()))?;
                    for v in values.iter_mut() {
                        let cur = parse_int(v).ok_or_else(|| {
                            Violation::Constraint(format!("{name}: stored value is not an integer"))
                        })?;
                        let next = cur
                            .checked_add(delta)
                            .ok_or_else(|| Violation::Constraint(format!("{name}: overflow")))?;
                        *v = next.to_string().into_bytes();
                    }
                }
            }
            if values.is_empty() {
                e.remove(&name);
            } else {
                e.set(&name, values);
            }
        }
        // RDN values stay.
        if let Some(rdn) = dn.rdn() {
            for ava in &rdn.0 {
                if let Some(at) = self.schema.attr(&ava.attr) {
                    let present = e
                        .get(at.name())
                        .is_some_and(|a| self.has_value(at, &a.values, &ava.value));
                    if !present {
                        return Err(DirError::NotAllowedOnRdn(format!(
                            "{}: cannot remove the RDN value",
                            at.name()
                        )));
                    }
                }
            }
        }
        let structural = self.check_entry(&e)?;
        if old
            .first_str("structuralObjectClass")
            .is_some_and(|s| !s.eq_ignore_ascii_case(&structural))
        {
            return Err(DirError::ObjectClassModsProhibited(
                "the structural object class cannot change".into(),
            ));
        }
        e.set("modifiersName", vec![meta.actor.clone().into_bytes()]);
        e.set("modifyTimestamp", vec![meta.time.clone().into_bytes()]);
        self.replace_entry(w, id, &old, &e)
    }

    fn replace_entry(
        &self,
        w: &mut WriteBatch,
        id: u64,
        old: &StoredEntry,
        new: &StoredEntry,
    ) -> Result<(), DirError> {
        // Only an attribute whose values changed can change the index keys.
        let changed = |a: &Attribute| {
            old.get(&a.name).map(|x| &x.values) != new.get(&a.name).map(|x| &x.values)
        };
        let old_keys = self.indexes.keys_where(&self.schema, old, changed);
        let new_keys = self.indexes.keys_where(&self.schema, new, changed);
        let gone: Vec<_> = old_keys
            .iter()
            .filter(|k| new_keys.binary_search(k).is_err())
            .cloned()
            .collect();
        let added: Vec<_> = new_keys
            .iter()
            .filter(|k| old_keys.binary_search(k).is_err())
            .cloned()
            .collect();
        w.index_remove(&gone, id)?;
        w.index_insert(&added, id)?;
        if old.key != new.key {
            w.remove_key(&old.key)?;
            w.put_entry(id, new)?;
        } else {
            w.put_body(id, new)?;
        }
        Ok(())
    }

    fn delete(&self, w: &mut WriteBatch, dn_str: &str) -> Result<(), DirError> {
        let (dn, key) = self.parse_dn(dn_str)?;
        let Some(id) = w.id_of(&key)? else {
            return Err(DirError::NoSuchObject {
                matched: self.matched(w, &dn)?,
            });
        };
        if w.has_children(&key)? {
            return Err(DirError::NotAllowedOnNonLeaf);
        }
        if let Some(e) = w.entry(id)? {
            w.index_remove(&self.indexes.keys_of(&self.schema, &e), id)?;
        }
        w.remove_entry(id, &key)?;
        Ok(())
    }

    fn modify_dn(
        &self,
        w: &mut WriteBatch,
        dn_str: &str,
        new_rdn: &str,
        delete_old_rdn: bool,
        new_superior: Option<&str>,
        meta: &WriteMeta,
    ) -> Result<(), DirError> {
        let (dn, key) = self.parse_dn(dn_str)?;
        let Some(id) = w.id_of(&key)? else {
            return Err(DirError::NoSuchObject {
                matched: self.matched(w, &dn)?,
            });
        };
        if key == self.suffix_key {
            return Err(DirError::UnwillingToPerform(
                "the naming context's root cannot be renamed".into(),
            ));
        }
        let rdn = Rdn::parse(new_rdn).map_err(|e| Violation::InvalidDn(e.to_string()))?;
        let parent = match new_superior {
            Some(s) => {
                let (p, pkey) = self.parse_dn(s)?;
                if !self.in_context(&pkey) {
                    return Err(DirError::UnwillingToPerform(
                        "the new superior is not within this naming context".into(),
                    ));
                }
                if w.id_of(&pkey)?.is_none() {
                    return Err(DirError::NoSuchObject {
                        matched: self.matched(w, &p.child(rdn.clone()))?,
                    });
                }
                if pkey.starts_with(&key) {
                    return Err(DirError::UnwillingToPerform(
                        "an entry cannot move below itself".into(),
                    ));
                }
                p
            }
            None => dn.parent(),
        };
        let new_dn = parent.child(rdn.clone());
        let new_key = self.schema.dn_key(&new_dn)?;
        if new_key != key && w.id_of(&new_key)?.is_some() {
            return Err(DirError::AlreadyExists);
        }
        let old = w.entry(id)?.ok_or(DirError::NoSuchObject {
            matched: String::new(),
        })?;
        let mut e = old.clone();
        // Add the new RDN's values.
        for ava in &rdn.0 {
            let at = self
                .schema
                .attr(&ava.attr)
                .ok_or_else(|| Violation::UndefinedAttribute(ava.attr.clone()))?;
            self.schema.check_syntax(at, &ava.value)?;
            let mut values = e
                .get(at.name())
                .map(|a| a.values.clone())
                .unwrap_or_default();
            if !self.has_value(at, &values, &ava.value) {
                values.push(ava.value.clone());
                e.set(at.name(), values);
            }
        }
        if delete_old_rdn {
            for ava in dn.rdn().map(|r| r.0.as_slice()).unwrap_or_default() {
                let Some(at) = self.schema.attr(&ava.attr) else {
                    continue;
                };
                let kept_by_new = rdn.0.iter().any(|n| {
                    self.schema.attr(&n.attr).is_some_and(|t| t.oid == at.oid)
                        && self.has_value(at, std::slice::from_ref(&n.value), &ava.value)
                });
                if kept_by_new {
                    continue;
                }
                if let Some(a) = e.get_mut(at.name()) {
                    let target = self.schema.normalize(at, &ava.value);
                    a.values.retain(|x| self.schema.normalize(at, x) != target);
                    if a.values.is_empty() {
                        e.remove(at.name());
                    }
                }
            }
        }
        self.check_entry(&e)?;
        e.dn = new_dn.to_string();
        e.key = new_key.clone();
        e.set("modifiersName", vec![meta.actor.clone().into_bytes()]);
        e.set("modifyTimestamp", vec![meta.time.clone().into_bytes()]);
        // Move the subtree: every descendant's key and DN change with it.
        let depth = dn.rdns.len();
        for (child_key, child_id) in w.scan_prefix(&key)? {
            if child_id == id {
                continue;
            }
            let Some(mut child) = w.entry(child_id)? else {
                continue;
            };
            let child_dn = Dn::parse(&child.dn).map_err(|e| Violation::InvalidDn(e.to_string()))?;
            let keep = child_dn.rdns.len().saturating_sub(depth);
            let mut rdns: Vec<Rdn> = child_dn.rdns[..keep].to_vec();
            rdns.extend(new_dn.rdns.iter().cloned());
            child.dn = Dn { rdns }.to_string();
            child.key = format!("{new_key}{}", &child_key[key.len()..]);
            w.remove_key(&child_key)?;
            w.put_entry(child_id, &child)?;
        }
        self.replace_entry(w, id, &old, &e)
    }
}

fn parse_int(v: &[u8]) -> Option<i128> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// The path a node's writes take: straight to the local directory, or through the
/// replicated log. `Ok` means durable (for the cluster: on a majority's disks) and
/// applied on this node's replica, so the caller reads its own write.
pub trait WritePath: Send + Sync + 'static {
    /// Submit one command.
    fn write(
        &self,
        cmd: DirectoryCommand,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), DirError>> + Send + '_>>;
}

/// Writes applied to a directory that is not replicated (tools and tests).
pub struct LocalWrites(pub Arc<Directory>);

impl WritePath for LocalWrites {
    fn write(
        &self,
        cmd: DirectoryCommand,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), DirError>> + Send + '_>>
    {
        let dir = self.0.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || dir.apply(&cmd)).await {
                Ok(r) => r,
                Err(e) => Err(DirError::UnwillingToPerform(format!(
                    "write task failed: {e}"
                ))),
            }
        })
    }
}

/// Hash every clear-text `userPassword` value (values that already name a scheme, such
/// as `{SSHA}...`, are kept as given). Called by the node that takes a request, before
/// the command is built.
pub fn hash_clear_passwords(attr: &str, values: &mut [Vec<u8>]) {
    if is_user_password(attr) {
        for v in values.iter_mut() {
            if !password::is_hashed(v) {
                *v = password::hash(v);
            }
        }
    }
}

/// Whether [`hash_clear_passwords`] has anything to hash in these values.
pub fn has_clear_passwords(attr: &str, values: &[Vec<u8>]) -> bool {
    is_user_password(attr) && values.iter().any(|v| !password::is_hashed(v))
}

fn is_user_password(attr: &str) -> bool {
    attr.split(';')
        .next()
        .is_some_and(|a| a.eq_ignore_ascii_case("userPassword") || a == "2.5.4.35")
}

/// A consistent snapshot of the directory for reading.
pub struct DirView<'d> {
    dir: &'d Directory,
    r: std::sync::Arc<ReadView>,
}

/// What a search produced besides the entries it handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchEnd {
    /// All matching entries were delivered.
    Complete,
    /// The consumer asked to stop.
    Stopped,
}

impl DirView<'_> {
    /// The entry with a DN, with its virtual attributes filled in.
    pub fn find(&self, dn: &str) -> Result<Option<StoredEntry>, DirError> {
        let (_, key) = self.dir.parse_dn(dn)?;
        match self.r.id_of(&key)? {
            Some(id) => self.entry(id),
            None => Ok(None),
        }
    }

    /// The entry with an id, with its virtual attributes filled in.
    pub fn entry(&self, id: u64) -> Result<Option<StoredEntry>, DirError> {
        let Some(mut e) = self.r.entry(id)? else {
            return Ok(None);
        };
        self.add_virtual(&mut e, true)?;
        Ok(Some(e))
    }

    fn add_virtual(&self, e: &mut StoredEntry, subordinates: bool) -> Result<(), DirError> {
        e.set("entryDN", vec![e.dn.clone().into_bytes()]);
        if subordinates {
            let subs = self.r.has_children(&e.key)?;
            e.set(
                "hasSubordinates",
                vec![if subs {
                    b"TRUE".to_vec()
                } else {
                    b"FALSE".to_vec()
                }],
            );
        }
        e.set("subschemaSubentry", vec![SUBSCHEMA_DN.as_bytes().to_vec()]);
        Ok(())
    }

    /// The deepest existing ancestor of a DN (for noSuchObject's matchedDN).
    pub fn matched(&self, dn: &Dn) -> Result<String, DirError> {
        self.dir.matched(&*self.r, dn)
    }

    /// Search: calls `each` with every matching entry (virtual attributes filled in), in
    /// DN order, until it returns false. The size limit is reported as
    /// [`DirError::SizeLimit`] after that many entries were delivered.
    pub fn search(
        &self,
        req: &SearchRequest<'_>,
        each: impl FnMut(u64, StoredEntry) -> bool,
    ) -> Result<SearchEnd, DirError> {
        let plan = self.plan(req)?;
        self.run(req, plan, each)
    }

    /// The first half of [`DirView::search`]: which entries it will read (the base must
    /// exist).
    pub fn plan(&self, req: &SearchRequest<'_>) -> Result<SearchPlan, DirError> {
        // Without a limit a plan is always made.
        self.plan_within(req, None)?
            .ok_or_else(|| DirError::Store(StoreError("no search plan".into())))
    }

    /// [`DirView::plan`], but `None` as soon as it is clear that the search would read
    /// more than `max` entries: a search that needs a scan of the DN table is never
    /// planned here (the scan alone can take long).
    pub fn plan_within(
        &self,
        req: &SearchRequest<'_>,
        max: Option<usize>,
    ) -> Result<Option<SearchPlan>, DirError> {
        let base = Dn::parse(req.base).map_err(|e| Violation::InvalidDn(e.to_string()))?;
        let base_key = self.dir.schema.dn_key(&base)?;
        let Some(base_id) = self.r.id_of(&base_key)? else {
            return Err(DirError::NoSuchObject {
                matched: self.matched(&base)?,
            });
        };
        let base_depth = base_key.matches('\0').count();
        let schema = &self.dir.schema;
        let (ids, indexed) = if req.scope == Scope::Base {
            (vec![base_id], false)
        } else {
            match self.dir.indexes.candidates(schema, &*self.r, req.filter)? {
                Some(cands) if max.is_some_and(|m| cands.len() > m) => return Ok(None),
                Some(cands) => (cands, true),
                None if max.is_some() => return Ok(None),
                None => {
                    let ids = self
                        .r
                        .scan_prefix(&base_key)?
                        .into_iter()
                        .filter(|(k, _)| in_scope(req.scope, &base_key, base_depth, k))
                        .map(|(_, id)| id)
                        .collect();
                    (ids, false)
                }
            }
        };
        Ok(Some(SearchPlan {
            base_key,
            base_depth,
            ids,
            indexed,
        }))
    }

    /// The second half of [`DirView::search`]: read, check and hand over the planned
    /// entries.
    pub fn run(
        &self,
        req: &SearchRequest<'_>,
        plan: SearchPlan,
        mut each: impl FnMut(u64, StoredEntry) -> bool,
    ) -> Result<SearchEnd, DirError> {
        let schema = &self.dir.schema;
        let mut delivered = 0usize;
        // Index candidates come in id order; they are handed over in DN order like a
        // scan, so they are collected first. A scan is already in DN order and streams.
        let mut ordered: Vec<(String, u64, StoredEntry)> = Vec::new();
        for (n, id) in plan.ids.into_iter().enumerate() {
            if n % 256 == 0 && req.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(DirError::TimeLimit);
            }
            let found = match req.keep {
                Some(keep) => self.r.entry_with(id, keep)?,
                None => self.r.entry(id)?,
            };
            let Some(mut e) = found else {
                continue;
            };
            if !in_scope(req.scope, &plan.base_key, plan.base_depth, &e.key) {
                continue;
            }
            self.add_virtual(&mut e, req.subordinates)?;
            let visible = match req.view {
                Some(view) => view(&e).is_some_and(|seen| eval::matches(schema, req.filter, &seen)),
                None => eval::matches(schema, req.filter, &e),
            };
            if !visible {
                continue;
            }
            if plan.indexed {
                ordered.push((e.key.clone(), id, e));
                continue;
            }
            if req.size_limit > 0 && delivered >= req.size_limit {
                return Err(DirError::SizeLimit);
            }
            delivered += 1;
            if !each(id, e) {
                return Ok(SearchEnd::Stopped);
            }
        }
        ordered.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, id, e) in ordered {
            if req.size_limit > 0 && delivered >= req.size_limit {
                return Err(DirError::SizeLimit);
            }
            delivered += 1;
            if !each(id, e) {
                return Ok(SearchEnd::Stopped);
            }
        }
        Ok(SearchEnd::Complete)
    }
}

/// Is the DN key `key` within `scope` of the base (key `base_key`, `base_depth` RDNs)?
fn in_scope(scope: Scope, base_key: &str, base_depth: usize, key: &str) -> bool {
    match scope {
        Scope::Base => key == base_key,
        Scope::One => key.starts_with(base_key) && key.matches('\0').count() == base_depth + 1,
        Scope::Subtree => key.starts_with(base_key),
    }
}

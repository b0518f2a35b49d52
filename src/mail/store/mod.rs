//! The Maildir++ store: where delivery writes mail and what IMAP and POP3 read.
//!
//! # Layout
//!
//! ```text
//! <root>/<domain>/<local>/Maildir/        INBOX: tmp/ new/ cur/
//!                         Maildir/maildirsize                  Maildir++ quota usage
//!                         Maildir/pigeonair-maildirsize.lock   guards its rebuilds
//!                         Maildir/.Archive.2024/               folder "Archive.2024":
//!                                 tmp/ new/ cur/ maildirfolder   `.` separates levels
//! ```
//!
//! `root` is `<data_dir>/mail` on a node, or a shared Maildir root that several nodes
//! mount (`[mail] storage = "shared"`). Every operation is safe against other
//! processes on this host and on other hosts working in the same mailbox: names are
//! unique per host, process and delivery, files are never overwritten, and a message
//! renamed under an operation is found again.
//!
//! A message file is written in tmp/, fsynced, then linked into new/ under a name
//! ([`maildir_name`]) `<secs>.M<usecs>P<pid>Q<n>R<random>.<host>,S=<size>`; once a
//! client session has seen it, it lives in cur/ as `<id>:2,<flags>`.
//!
//! Folder names are stored as the bytes the caller gives; the IMAP layer encodes
//! modified UTF-7 and maps its namespace onto them.
//!
//! # UIDs
//!
//! IMAP's UIDVALIDITY and UIDs live in a per-folder index beside tmp/new/cur
//! (`pigeonair-uidlist`), keyed by [`MessageEntry::id`], which is stable across flag
//! changes and the move from new/ to cur/: [`Folder::uids`] gives every message its
//! UID, assigning new ones in delivery order (see the `uids` module).

#![deny(missing_docs)]

mod flags;
mod folder;
mod maildir_name;
mod quota;
#[cfg(test)]
mod tests;
mod uids;

pub use flags::Flags;
pub use folder::{Folder, MessageDir, MessageEntry};
pub use quota::{Quota, Usage};
pub use uids::UidMap;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quota::QuotaLock;

/// Why the store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The message would take the mailbox past its quota: a temporary refusal (SMTP
    /// `452 4.2.2`), the sender may try again once the user has made room.
    #[error("mailbox is over quota")]
    OverQuota,
    /// The folder does not exist.
    #[error("no such folder")]
    NoSuchFolder,
    /// A folder of that name exists already.
    #[error("folder exists")]
    FolderExists,
    /// No message with that id in the folder (it may have been expunged meanwhile).
    #[error("no such message")]
    NoSuchMessage,
    /// A domain, local part, folder name or message id that cannot name anything in the
    /// store (a path separator, `..`, a leading dot, a control character, too long), or
    /// an operation INBOX does not allow; the text says which rule.
    #[error("invalid name: {0}")]
    InvalidName(&'static str),
    /// The file system failed.
    #[error("mail store i/o: {0}")]
    Io(#[from] io::Error),
}

/// Longest folder name, in bytes: `.` plus the name must fit a file name.
const MAX_FOLDER_NAME_LEN: usize = 200;

/// A folder of a mailbox: INBOX, or a named folder whose levels are separated by `.`
/// (`Archive.2024`). Only valid names can be built, so a `FolderName` always maps to
/// one directory inside the Maildir. Sorts with INBOX first, then by name bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FolderName {
    /// `None` for INBOX.
    subfolder: Option<String>,
}

impl FolderName {
    /// INBOX, the Maildir root itself.
    pub fn inbox() -> FolderName {
        FolderName { subfolder: None }
    }

    /// The folder called `name`; `INBOX` in any case is the inbox. `InvalidName` for an
    /// empty name, an empty level (`.a`, `a.`, `a..b`), `/`, `\`, a control character
    /// (NUL included), or more than 200 bytes.
    pub fn new(name: &str) -> Result<FolderName, StoreError> {
        if name.eq_ignore_ascii_case("INBOX") {
            return Ok(FolderName::inbox());
        }
        if name.is_empty() || name.len() > MAX_FOLDER_NAME_LEN {
            return Err(StoreError::InvalidName("folder name is empty or too long"));
        }
        if name
            .chars()
            .any(|c| matches!(c, '/' | '\\') || c.is_control())
        {
            return Err(StoreError::InvalidName(
                "folder name has a separator or control character",
            ));
        }
        if name.split('.').any(str::is_empty) {
            return Err(StoreError::InvalidName("folder name has an empty level"));
        }
        Ok(FolderName {
            subfolder: Some(name.to_owned()),
        })
    }

    /// Whether this is INBOX.
    pub fn is_inbox(&self) -> bool {
        self.subfolder.is_none()
    }

    /// The name: `INBOX`, or the name as given to [`FolderName::new`].
    pub fn as_str(&self) -> &str {
        self.subfolder.as_deref().unwrap_or("INBOX")
    }
}

impl fmt::Display for FolderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The store under one root directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MailStore {
    root: PathBuf,
    host: Arc<str>,
    changes: Arc<Changes>,
}

/// Which mailboxes changed, for the sessions of this process that wait on them (IMAP
/// IDLE): one counter per Maildir, bumped by every delivery, flag change, expunge and
/// copy made through this store. A change made by another process (another node on a
/// shared root) is not seen here; sessions poll for those.
#[derive(Debug, Default)]
struct Changes {
    watched: std::sync::Mutex<std::collections::HashMap<PathBuf, tokio::sync::watch::Sender<u64>>>,
}

impl Changes {
    fn subscribe(&self, root: &Path) -> tokio::sync::watch::Receiver<u64> {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        watched
            .entry(root.to_path_buf())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    fn changed(&self, root: &Path) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = watched.get(root) {
            if sender.receiver_count() == 0 {
                watched.remove(root);
            } else {
                sender.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }
}

impl MailStore {
    /// The store under `root`, which must be an existing directory (so that an
    /// unmounted shared root is noticed rather than filled on the local disk). Names
    /// made here carry this host's name.
    pub fn open(root: impl Into<PathBuf>) -> Result<MailStore, StoreError> {
        let root = root.into();
        if !fs::metadata(&root)?.is_dir() {
            return Err(io::Error::from(io::ErrorKind::NotADirectory).into());
        }
        Ok(MailStore {
            root,
            host: maildir_name::escape_host(&system_host_name()).into(),
            changes: Arc::default(),
        })
    }

    /// This store with message names carrying `name` instead of the system's host
    /// name; every process writing into one shared root needs a name of its own.
    pub fn with_host_name(self, name: &str) -> MailStore {
        MailStore {
            host: maildir_name::escape_host(name).into(),
            ..self
        }
    }

    /// The mailbox of `local`@`domain`, both already normalised by the caller. Touches
    /// nothing on disk: the Maildir is created by its first delivery. `InvalidName`
    /// when either is empty, starts with `.`, or holds `/`, `\` or a control character.
    pub fn mailbox(&self, domain: &str, local: &str) -> Result<Mailbox, StoreError> {
        for part in [domain, local] {
            let bad = part.is_empty()
                || part.len() > 255
                || part.starts_with('.')
                || part
                    .chars()
                    .any(|c| matches!(c, '/' | '\\') || c.is_control());
            if bad {
                return Err(StoreError::InvalidName("not a domain or local part"));
            }
        }
        let root = self.root.join(domain).join(local).join("Maildir");
        Ok(Mailbox {
            root,
            host: self.host.clone(),
            changes: self.changes.clone(),
        })
    }
}

fn system_host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What a delivery stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The file name in new/, which is also the message's id in its folder.
    pub file_name: String,
    /// The message's size in bytes.
    pub size: u64,
    /// A repeated [`Mailbox::deliver_once`] found the copy an earlier attempt stored.
    pub again: bool,
}

/// What names a repeatable delivery (see [`Mailbox::deliver_once`]).
#[derive(Debug, Clone, Copy)]
pub struct DeliveryKey<'a> {
    /// Unique per message and mailbox: the queue id. ASCII letters and digits only.
    pub token: &'a str,
    /// When the message was accepted, in microseconds since the Unix epoch: the time
    /// the file name starts with.
    pub at_micros: u64,
    /// An earlier attempt may have stored the message (a retry, or a message found in
    /// the spool at start), so cur/ is searched too.
    pub maybe_stored: bool,
}

/// One account's Maildir. Cheap to clone; clones and handles in other processes may
/// be used at once.
#[derive(Debug, Clone)]
pub struct Mailbox {
    root: PathBuf,
    host: Arc<str>,
    changes: Arc<Changes>,
}

impl Mailbox {
    /// A receiver whose value changes whenever a message of this mailbox is delivered,
    /// changed, copied in or expunged through this process's store (see `Changes`).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe(&self.root)
    }

    /// Tell this process's sessions on the mailbox that it changed.
    pub(crate) fn changed(&self) {
        self.changes.changed(&self.root);
    }

    /// The Maildir directory (INBOX).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Store `message` in `folder`'s new/. Once this returns `Ok` the message is on
    /// disk (file and directory fsynced) under a name no other delivery uses, and
    /// counted in the usage. `OverQuota` (nothing stored) when it would take the
    /// mailbox past `quota`; `NoSuchFolder` when a named folder does not exist (INBOX
    /// is created on first delivery). On any error nothing is left behind.
    pub fn deliver(
        &self,
        folder: &FolderName,
        message: &[u8],
        quota: &Quota,
    ) -> Result<Delivered, StoreError> {
        let file_name = maildir_name::unique(&self.host, message.len() as u64);
        self.store(folder, message, quota, file_name)
    }

    /// [`Mailbox::deliver`] made repeatable: the file is named after `key`, and when a
    /// file of that name is already in the folder (an earlier attempt stored it, then
    /// the node crashed before recording it) nothing is stored again and the earlier
    /// copy is reported, with [`Delivered::again`] set. new/ is always checked (a
    /// hard link cannot replace a file); cur/, where a client may have moved the first
    /// copy, only when `key.maybe_stored` says an earlier attempt may have happened.
    pub fn deliver_once(
        &self,
        folder: &FolderName,
        message: &[u8],
        quota: &Quota,
        key: &DeliveryKey<'_>,
    ) -> Result<Delivered, StoreError> {
        if key.token.is_empty() || !key.token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(StoreError::InvalidName("a delivery key is alphanumeric"));
        }
        let size = message.len() as u64;
        let file_name = maildir_name::keyed(key.at_micros, key.token, &self.host, size);
        if key.maybe_stored {
            let earlier = self.open_folder(folder).and_then(|f| f.entry(&file_name));
            if earlier.is_ok() {
                return Ok(Delivered {
                    file_name,
                    size,
                    again: true,
                });
            }
        }
        match self.store(folder, message, quota, file_name.clone()) {
            Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Delivered {
                file_name,
                size,
                again: true,
            }),
            other => other,
        }
    }

    fn store(
        &self,
        folder: &FolderName,
        message: &[u8],
        quota: &Quota,
        file_name: String,
    ) -> Result<Delivered, StoreError> {
        let dir = self.existing_folder_dir(folder)?;
        create_maildir_dirs(&self.root)?;
        create_maildir_dirs(&dir)?;
        let size = message.len() as u64;
        if let Err(refusal) = self.quota_check(size, quota) {
            tracing::info!(maildir = %self.root.display(), size, "delivery refused: over quota");
            return Err(refusal);
        }
        let tmp = dir.join("tmp").join(&file_name);
        write_new_file(&tmp, message)?;
        let landed = QuotaLock::shared(&self.root).and_then(|lock| {
            land(&tmp, &dir.join("new"), &file_name)?;
            lock.added(Usage::message(size));
            Ok(())
        });
        if let Err(e) = landed {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        tracing::debug!(maildir = %self.root.display(), folder = %folder, %file_name, "delivered");
        self.changed();
        Ok(Delivered {
            file_name,
            size,
            again: false,
        })
    }

    /// What the mailbox holds now, from `maildirsize` (rebuilt from the folders when
    /// it is missing, damaged or too long).
    pub fn usage(&self) -> Result<Usage, StoreError> {
        Ok(quota::load(self, None)?)
    }

    /// Whether a message of `size` bytes would be accepted under `quota` now (for the
    /// RCPT stage, which answers `452 4.2.2` on `OverQuota`): the current usage, or
    /// `OverQuota`. When `maildirsize` names another quota than `quota`, it is
    /// rebuilt first. Concurrent deliveries that each pass may together overshoot.
    pub fn quota_check(&self, size: u64, quota: &Quota) -> Result<Usage, StoreError> {
        let usage = quota::load(self, Some(*quota))?;
        if quota.allows(usage, size) {
            Ok(usage)
        } else {
            Err(StoreError::OverQuota)
        }
    }

    /// Every folder: INBOX first, then the named folders sorted by name. Directories
    /// whose names [`FolderName::new`] would refuse are not listed.
    pub fn folders(&self) -> Result<Vec<FolderName>, StoreError> {
        let mut folders = vec![FolderName::inbox()];
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(folders),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let Some(name) = name.strip_prefix('.') else {
                continue;
            };
            match FolderName::new(name) {
                Ok(folder) if !folder.is_inbox() && entry.path().is_dir() => folders.push(folder),
                _ => {}
            }
        }
        folders.sort();
        Ok(folders)
    }

    /// Create the empty folder `name` (its parent levels need not exist).
    /// `FolderExists` when it does, INBOX included.
    pub fn create_folder(&self, name: &FolderName) -> Result<(), StoreError> {
        if name.is_inbox() {
            return Err(StoreError::FolderExists);
        }
        fs::create_dir_all(&self.root)?;
        let dir = self.folder_dir(name);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StoreError::FolderExists),
            Err(e) => Err(e.into()),
            Ok(()) => Ok(create_maildir_dirs(&dir)?),
        }
    }

    /// Make sure the folder `name` exists with its tmp/new/cur (the standard folders
    /// Drafts, Sent, Trash, Junk are created this way when the caller asks).
    /// Idempotent; also repairs a folder missing one of its directories.
    pub fn ensure_folder(&self, name: &FolderName) -> Result<(), StoreError> {
        Ok(create_maildir_dirs(&self.folder_dir(name))?)
    }

    /// Delete the folder `name` and its messages, taking them off the usage. Its
    /// sub-folders (`name.*`) stay. `InvalidName` for INBOX.
    pub fn delete_folder(&self, name: &FolderName) -> Result<(), StoreError> {
        if name.is_inbox() {
            return Err(StoreError::InvalidName("INBOX cannot be deleted"));
        }
        let dir = self.existing_folder_dir(name)?;
        fs::create_dir_all(self.root.join("tmp"))?;
        // Moved out of sight first, so no reader sees a half-deleted folder.
        let doomed = self
            .root
            .join("tmp")
            .join(format!("deleted-{}", maildir_name::unique(&self.host, 0)));
        {
            let lock = QuotaLock::shared(&self.root)?;
            fs::rename(&dir, &doomed)?;
            lock.removed(quota::folder_usage(&doomed)?);
        }
        fs::remove_dir_all(&doomed)?;
        Ok(())
    }

    /// Rename the folder `from` to `to`, and each sub-folder `from.*` to `to.*`.
    /// `NoSuchFolder` when `from` is missing, `FolderExists` when any new name is
    /// taken (nothing is renamed then), `InvalidName` for INBOX on either side. The
    /// renames happen one folder after the other.
    pub fn rename_folder(&self, from: &FolderName, to: &FolderName) -> Result<(), StoreError> {
        let (Some(old), Some(new)) = (&from.subfolder, &to.subfolder) else {
            return Err(StoreError::InvalidName("INBOX cannot be renamed"));
        };
        self.existing_folder_dir(from)?;
        let prefix = format!("{old}.");
        let mut moves = vec![(from.clone(), to.clone())];
        for folder in self.folders()? {
            if let Some(rest) = folder.as_str().strip_prefix(&prefix) {
                let target = FolderName::new(&format!("{new}.{rest}"))?;
                moves.push((folder, target));
            }
        }
        if moves
            .iter()
            .any(|(_, target)| fs::symlink_metadata(self.folder_dir(target)).is_ok())
        {
            return Err(StoreError::FolderExists);
        }
        for (source, target) in moves {
            fs::rename(self.folder_dir(&source), self.folder_dir(&target))?;
        }
        sync_dir(&self.root)?;
        Ok(())
    }

    /// The folder `name`, to read and change its messages. `NoSuchFolder` when a named
    /// folder does not exist; INBOX always opens (empty before the first delivery).
    pub fn open_folder(&self, name: &FolderName) -> Result<Folder, StoreError> {
        let dir = self.existing_folder_dir(name)?;
        Ok(Folder {
            mailbox: self.clone(),
            name: name.clone(),
            dir,
        })
    }

    fn folder_dir(&self, name: &FolderName) -> PathBuf {
        match &name.subfolder {
            None => self.root.clone(),
            Some(name) => self.root.join(format!(".{name}")),
        }
    }

    fn existing_folder_dir(&self, name: &FolderName) -> Result<PathBuf, StoreError> {
        let dir = self.folder_dir(name);
        if name.is_inbox() || dir.is_dir() {
            Ok(dir)
        } else {
            Err(StoreError::NoSuchFolder)
        }
    }
}

/// Create `dir` with tmp/, new/ and cur/ where missing; a named folder (one whose
/// directory name starts with `.`) also gets the Maildir++ `maildirfolder` marker.
fn create_maildir_dirs(dir: &Path) -> io::Result<()> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    if dir
        .file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
    {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("maildirfolder"))?;
    }
    Ok(())
}

/// Write `contents` to the new file `path` (mode 0600) and fsync it; on failure the
/// file is removed.
fn write_new_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// Give the finished file `tmp` the name `name` in `dir` (new/ or cur/), never
/// replacing a file already there (`AlreadyExists` then), and make the change durable;
/// on an error the name is not left in `dir`.
fn land(tmp: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    let target = dir.join(name);
    match fs::hard_link(tmp, &target) {
        Ok(()) => {
            if let Err(e) = fs::remove_file(tmp) {
                tracing::warn!(tmp = %tmp.display(), error = %e, "cannot remove delivered tmp file");
            }
        }
        // A file system without hard links (EPERM on Linux, e.g. vfat or some CIFS):
        // rename, having checked the name is free.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
            ) =>
        {
            if fs::symlink_metadata(&target).is_ok() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            fs::rename(tmp, &target)?;
        }
        Err(e) => return Err(e),
    }
    // Only the new name must be durable: a tmp/ file a crash leaves behind is
    // unnamed in new/ and cur/, and is cleaned as Maildir readers clean tmp/.
    if let Err(e) = sync_dir(dir) {
        // Not durable, so not delivered: the sender will try again.
        let _ = fs::remove_file(&target);
        return Err(e);
    }
    Ok(target)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

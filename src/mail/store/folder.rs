//! One folder's messages: listing, reading, flag changes, expunge, copy.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::quota::{self, QuotaLock, Usage};
use super::{
    create_maildir_dirs, land, maildir_name, Flags, FolderName, Mailbox, Quota, StoreError,
};

/// Which of a folder's directories a message file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageDir {
    /// new/: delivered and not yet seen by any client session.
    New,
    /// cur/: seen by a session; its name carries the flags.
    Cur,
}

impl MessageDir {
    fn dir_name(self) -> &'static str {
        match self {
            MessageDir::New => "new",
            MessageDir::Cur => "cur",
        }
    }
}

/// One message file as a scan found it. The `id` stays the same for the life of the
/// message (flag changes and the move from new/ to cur/ only change `path`), so it is
/// what a session keeps; `path` may be stale by the time it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEntry {
    /// The file name before the info `:2,...`: unique in the folder.
    pub id: String,
    /// Whether the file is in new/ or cur/.
    pub dir: MessageDir,
    /// Size in bytes, from the name's `S=` or else from the file.
    pub size: u64,
    /// The flags from the name's `:2,` info (none for a file in new/).
    pub flags: Flags,
    /// Where the file was when it was found.
    pub path: PathBuf,
}

impl MessageEntry {
    fn from_file(dir: MessageDir, path: PathBuf, name: &str) -> Option<MessageEntry> {
        let parts = maildir_name::parse(name);
        let size = match parts.size {
            Some(size) => size,
            None => fs::metadata(&path).ok()?.len(),
        };
        Some(MessageEntry {
            id: parts.id.to_owned(),
            dir,
            size,
            flags: parts.flags,
            path,
        })
    }
}

/// The messages in `folder_dir`'s new/ or cur/, unordered. Dot files, directories and
/// names that are not UTF-8 are not messages; a missing directory holds none.
pub(super) fn list(folder_dir: &Path, which: MessageDir) -> io::Result<Vec<MessageEntry>> {
    let dir = folder_dir.join(which.dir_name());
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut messages = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || entry.file_type()?.is_dir() {
            continue;
        }
        messages.extend(MessageEntry::from_file(which, entry.path(), &name));
    }
    Ok(messages)
}

pub(super) fn sort_in_delivery_order(messages: &mut [MessageEntry]) {
    // By name, then (stably) by the seconds each name starts with, parsed once per
    // message rather than once per comparison.
    messages.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    messages.sort_by_cached_key(|m| maildir_name::seconds(&m.id));
}

/// A message's name in cur/ with `flags`.
fn cur_name(id: &str, flags: Flags) -> String {
    format!("{id}:2,{flags}")
}

/// An id that could name a message file: no separator, no info, not hidden.
fn check_message_id(id: &str) -> Result<(), StoreError> {
    let bad = id.is_empty()
        || id.starts_with('.')
        || id
            .chars()
            .any(|c| matches!(c, '/' | '\\' | ':') || c.is_control());
    if bad {
        return Err(StoreError::InvalidName("not a message id"));
    }
    Ok(())
}

/// One folder of a mailbox, as [`Mailbox::open_folder`] opened it. Several handles on
/// one folder, in this process or others, may work at once: every operation finds
/// the message by id afresh and follows a rename made meanwhile.
#[derive(Debug, Clone)]
pub struct Folder {
    pub(super) mailbox: Mailbox,
    pub(super) name: FolderName,
    pub(super) dir: PathBuf,
}

impl Folder {
    /// The folder's name.
    pub fn name(&self) -> &FolderName {
        &self.name
    }

    /// Every message in new/ and cur/, in delivery order (by the seconds the name
    /// starts with, then by name).
    pub fn scan(&self) -> Result<Vec<MessageEntry>, StoreError> {
        let mut messages = self.scan_unordered()?;
        sort_in_delivery_order(&mut messages);
        Ok(messages)
    }

    /// Every message in new/ and cur/, in no particular order.
    pub(super) fn scan_unordered(&self) -> Result<Vec<MessageEntry>, StoreError> {
        let mut messages = list(&self.dir, MessageDir::New)?;
        messages.extend(list(&self.dir, MessageDir::Cur)?);
        Ok(messages)
    }

    /// The message `id` where it is now. `NoSuchMessage` when it is gone,
    /// `InvalidName` when `id` cannot name a message. Costs a listing of cur/ unless
    /// the message is still in new/.
    pub fn entry(&self, id: &str) -> Result<MessageEntry, StoreError> {
        check_message_id(id)?;
        let fresh = self.dir.join("new").join(id);
        if fs::symlink_metadata(&fresh).is_ok_and(|m| m.is_file()) {
            if let Some(entry) = MessageEntry::from_file(MessageDir::New, fresh, id) {
                return Ok(entry);
            }
        }
        for which in [MessageDir::Cur, MessageDir::New] {
            if let Some(entry) = list(&self.dir, which)?.into_iter().find(|e| e.id == id) {
                return Ok(entry);
            }
        }
        Err(StoreError::NoSuchMessage)
    }

    /// Where the message `id` is now, to stream it from; the path stays valid until
    /// its flags change or it is expunged.
    pub fn path(&self, id: &str) -> Result<PathBuf, StoreError> {
        Ok(self.entry(id)?.path)
    }

    /// The whole message `id`.
    pub fn read(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        self.with_message(id, |entry| Ok(fs::read(&entry.path)?))
    }

    /// Give the message `id` exactly `flags` (the caller passes what it read from the
    /// entry, changed): it ends up as `cur/<id>:2,<flags>`, moved out of new/ if it was
    /// there. Returns the message as it is now.
    pub fn set_flags(&self, id: &str, flags: Flags) -> Result<MessageEntry, StoreError> {
        self.with_message(id, |entry| {
            let path = self.dir.join("cur").join(cur_name(&entry.id, flags));
            // The target can only be this same message, so rename may replace it.
            if path != entry.path {
                fs::rename(&entry.path, &path)?;
                self.mailbox.changed();
            }
            Ok(MessageEntry {
                dir: MessageDir::Cur,
                flags,
                path,
                ..entry.clone()
            })
        })
    }

    /// Remove the message `id` and take it off the mailbox's usage.
    pub fn expunge(&self, id: &str) -> Result<(), StoreError> {
        self.with_message(id, |entry| {
            let lock = QuotaLock::shared(&self.mailbox.root)?;
            fs::remove_file(&entry.path)?;
            lock.removed(Usage::message(entry.size));
            self.mailbox.changed();
            Ok(())
        })
    }

    /// Copy the message `id` into `target` (any folder, of this mailbox or another),
    /// with the same flags and in new/ or cur/ as here, under a new id which the
    /// returned entry carries. The copy counts against the target mailbox's usage:
    /// `OverQuota` when it would take it past `quota` (the target's).
    pub fn copy_to(
        &self,
        id: &str,
        target: &Folder,
        quota: &Quota,
    ) -> Result<MessageEntry, StoreError> {
        self.with_message(id, |source| self.copy_entry_to(source, target, quota))
    }

    /// [`Folder::copy_to`] of a message a scan saw, found again by id only when it
    /// moved since.
    pub fn copy_known_to(
        &self,
        known: &MessageEntry,
        target: &Folder,
        quota: &Quota,
    ) -> Result<MessageEntry, StoreError> {
        match self.copy_entry_to(known, target, quota) {
            Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                self.copy_to(&known.id, target, quota)
            }
            other => other,
        }
    }

    fn copy_entry_to(
        &self,
        source: &MessageEntry,
        target: &Folder,
        quota: &Quota,
    ) -> Result<MessageEntry, StoreError> {
        create_maildir_dirs(&target.mailbox.root)?;
        create_maildir_dirs(&target.dir)?;
        let copy_id = maildir_name::unique(&target.mailbox.host, source.size);
        let tmp = target.dir.join("tmp").join(&copy_id);
        link_or_copy(&source.path, &tmp)?;
        let landed = (|| {
            if !quota.allows(quota::load(&target.mailbox, Some(*quota))?, source.size) {
                return Err(StoreError::OverQuota);
            }
            let name = match source.dir {
                MessageDir::New => copy_id.clone(),
                MessageDir::Cur => cur_name(&copy_id, source.flags),
            };
            let lock = QuotaLock::shared(&target.mailbox.root)?;
            let path = land(&tmp, &target.dir.join(source.dir.dir_name()), &name)?;
            lock.added(Usage::message(source.size));
            Ok(path)
        })();
        match landed {
            Ok(path) => {
                target.mailbox.changed();
                Ok(MessageEntry {
                    id: copy_id,
                    path,
                    ..source.clone()
                })
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Move every message in new/ to cur/ (what an IMAP SELECT or a POP3 session does)
    /// and return those moved, in delivery order. A message another session moved
    /// first is left to it.
    pub fn take_new(&self) -> Result<Vec<MessageEntry>, StoreError> {
        let cur = self.dir.join("cur");
        let mut taken = Vec::new();
        for entry in list(&self.dir, MessageDir::New)? {
            let path = cur.join(cur_name(&entry.id, entry.flags));
            match fs::rename(&entry.path, &path) {
                Ok(()) => taken.push(MessageEntry {
                    dir: MessageDir::Cur,
                    path,
                    ..entry
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        sort_in_delivery_order(&mut taken);
        Ok(taken)
    }

    /// The whole message `known`, read where a scan saw it; found again by id when it
    /// moved since (its flags changed).
    pub fn read_entry(&self, known: &MessageEntry) -> Result<Vec<u8>, StoreError> {
        match fs::read(&known.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.read(&known.id),
            other => Ok(other?),
        }
    }

    /// Change the flags of the message `known` to `change(its flags)`. The flags are
    /// those in its file name, so when the file is where a scan saw it `known.flags`
    /// are current; when another session renamed it meanwhile it is found again and
    /// `change` applied to the flags it has now, so no concurrent change is lost.
    pub fn update_flags(
        &self,
        known: &MessageEntry,
        change: impl Fn(Flags) -> Flags,
    ) -> Result<MessageEntry, StoreError> {
        let mut entry = known.clone();
        for attempt in 0..3 {
            if attempt > 0 {
                entry = self.entry(&known.id)?;
            }
            let flags = change(entry.flags);
            if flags == entry.flags && entry.dir == MessageDir::Cur {
                return Ok(entry);
            }
            let path = self.dir.join("cur").join(cur_name(&entry.id, flags));
            match fs::rename(&entry.path, &path) {
                Ok(()) => {
                    self.mailbox.changed();
                    return Ok(MessageEntry {
                        dir: MessageDir::Cur,
                        flags,
                        path,
                        ..entry
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::NoSuchMessage)
    }

    /// [`Folder::expunge`] of a message a scan saw, without looking for it first.
    pub fn expunge_entry(&self, known: &MessageEntry) -> Result<(), StoreError> {
        let lock = QuotaLock::shared(&self.mailbox.root)?;
        match fs::remove_file(&known.path) {
            Ok(()) => {
                lock.removed(Usage::message(known.size));
                self.mailbox.changed();
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                drop(lock);
                self.expunge(&known.id)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The mailbox this folder belongs to.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// Run `op` on the message `id`; when its file vanished under `op` (another
    /// process renamed it), find it again and retry once.
    fn with_message<T>(
        &self,
        id: &str,
        mut op: impl FnMut(&MessageEntry) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for _ in 0..2 {
            match op(&self.entry(id)?) {
                Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::NotFound => continue,
                other => return other,
            }
        }
        Err(StoreError::NoSuchMessage)
    }
}

/// Put a copy of the message file `source` at `tmp`: a hard link where the file
/// system allows (message files never change), else a copy made durable.
fn link_or_copy(source: &Path, tmp: &Path) -> io::Result<()> {
    match fs::hard_link(source, tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            let mut from = File::open(source)?;
            let mut to = OpenOptions::new().write(true).create_new(true).open(tmp)?;
            let copied = io::copy(&mut from, &mut to).and_then(|_| to.sync_all());
            if copied.is_err() {
                let _ = fs::remove_file(tmp);
            }
            copied
        }
        linked => linked,
    }
}

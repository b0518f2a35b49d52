//! The per-folder UID index IMAP needs (RFC 3501 §2.3.1.1): a UIDVALIDITY and, for
//! each message, a UID that never changes while the message lives and is never given
//! to another message.
//!
//! The index is the file `pigeonair-uidlist` in the folder's directory, next to
//! tmp/new/cur, so it moves with a folder rename:
//!
//! ```text
//! 3 V<uidvalidity> N<next uid>
//! <uid> <message id>
//! ...
//! ```
//!
//! It is keyed by [`MessageEntry::id`], which flag changes and the move from new/ to
//! cur/ leave alone. [`Folder::uids`] brings it up to date under an exclusive `flock`
//! of `pigeonair-uidlist.lock`: messages it has not seen get the next UIDs in delivery
//! order, vanished ones leave the list (their UIDs are not reused), and a changed list
//! is replaced atomically and fsynced. A list that cannot be read is started again
//! with a new UIDVALIDITY, as the RFC requires when UIDs may have changed: larger
//! than the last one, which the lock file remembers.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

use super::folder::MessageEntry;
use super::{maildir_name, sync_dir, write_new_file, Folder, StoreError};

const LIST_FILE: &str = "pigeonair-uidlist";
const LOCK_FILE: &str = "pigeonair-uidlist.lock";
const VERSION: &str = "3";

/// A folder's messages with their UIDs, as [`Folder::uids`] found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidMap {
    /// The folder's UIDVALIDITY.
    pub validity: u32,
    /// The UID the next new message will get (UIDNEXT).
    pub next: u32,
    /// Every message with its UID, in ascending UID order.
    pub messages: Vec<(u32, MessageEntry)>,
}

struct List {
    validity: u32,
    next: u32,
    uids: Vec<(u32, String)>,
}

fn parse(text: &str) -> Option<List> {
    let mut lines = text.lines();
    let mut head = lines.next()?.split(' ');
    if head.next()? != VERSION {
        return None;
    }
    let validity = head.next()?.strip_prefix('V')?.parse().ok()?;
    let next = head.next()?.strip_prefix('N')?.parse().ok()?;
    let mut uids = Vec::new();
    let mut last = 0u32;
    for line in lines {
        let (uid, id) = line.split_once(' ')?;
        let uid: u32 = uid.parse().ok()?;
        // Ascending and below `next`, or the file is not ours to trust.
        if uid <= last || uid >= next || id.is_empty() {
            return None;
        }
        last = uid;
        uids.push((uid, id.to_string()));
    }
    text.ends_with('\n').then_some(List {
        validity,
        next,
        uids,
    })
}

fn render(list: &List) -> String {
    let mut out = format!("{VERSION} V{} N{}\n", list.validity, list.next);
    for (uid, id) in &list.uids {
        out.push_str(&format!("{uid} {id}\n"));
    }
    out
}

/// A UIDVALIDITY for a list started now: the time in seconds, so that a list started
/// again later gets a larger value.
fn new_validity(old: Option<u32>) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
        .max(1);
    match old {
        Some(v) if v >= now => v.saturating_add(1),
        _ => now,
    }
}

impl Folder {
    /// The folder's messages with their UIDs, the index brought up to date first (see
    /// the module documentation). Safe against other sessions and processes working
    /// on the folder at once.
    pub fn uids(&self) -> Result<UidMap, StoreError> {
        fs::create_dir_all(&self.dir)?;
        let _lock = lock(&self.dir)?;
        let path = self.dir.join(LIST_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::InvalidData
                ) =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        let parsed = text.as_deref().map(parse);
        let started = !matches!(parsed, Some(Some(_)));
        let mut list = match parsed {
            Some(Some(list)) => list,
            damaged => {
                if damaged.is_some() {
                    tracing::warn!(folder = %self.dir.display(), "UID list unreadable; starting a new UIDVALIDITY");
                }
                List {
                    validity: new_validity(remembered(&self.dir)),
                    next: 1,
                    uids: Vec::new(),
                }
            }
        };
        if started {
            // Remembered beside the list, so that a list lost later starts above it.
            fs::write(self.dir.join(LOCK_FILE), format!("V{}\n", list.validity))?;
        }
        let mut by_id: HashMap<String, MessageEntry> = self
            .scan_unordered()?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        let before = list.uids.len();
        let mut changed = started;
        let mut messages = Vec::with_capacity(by_id.len());
        list.uids
            .retain(|(uid, id)| match by_id.remove(id.as_str()) {
                Some(entry) => {
                    messages.push((*uid, entry));
                    true
                }
                None => false,
            });
        changed |= list.uids.len() != before;
        // What is left is new: UIDs in delivery order.
        let mut fresh: Vec<MessageEntry> = by_id.into_values().collect();
        super::folder::sort_in_delivery_order(&mut fresh);
        for entry in fresh {
            let uid = list.next;
            list.next += 1;
            list.uids.push((uid, entry.id.clone()));
            messages.push((uid, entry));
            changed = true;
        }
        if changed {
            save(&self.dir, &self.mailbox.host, &render(&list))?;
        }
        Ok(UidMap {
            validity: list.validity,
            next: list.next,
            messages,
        })
    }
}

/// The last UIDVALIDITY this folder used, as the lock file remembers it.
fn remembered(dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(dir.join(LOCK_FILE)).ok()?;
    text.trim().strip_prefix('V')?.parse().ok()
}

fn lock(dir: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))?;
    match file.lock() {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
        other => other?,
    }
    Ok(file)
}

fn save(dir: &Path, host: &str, text: &str) -> io::Result<()> {
    fs::create_dir_all(dir.join("tmp"))?;
    let tmp = dir.join("tmp").join(maildir_name::unique(host, 0));
    write_new_file(&tmp, text.as_bytes())?;
    if let Err(e) = fs::rename(&tmp, dir.join(LIST_FILE)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

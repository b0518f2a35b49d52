//! Maildir++ quota: limits from the directory, usage kept in the `maildirsize` file.
//!
//! The file's first line is the quota (`<bytes>S,<count>C`, 0 meaning no limit), each
//! further line a delta `<bytes> <count>`. Deltas are appended with one `write` on an
//! `O_APPEND` descriptor. The file is rebuilt from the folders when it is missing,
//! unreadable, over 5120 bytes, or names a quota other than the directory's.
//!
//! Appending deltas (delivery, copy, expunge, folder deletion) holds a shared lock on
//! `pigeonair-maildirsize.lock`, a rebuild holds it exclusively, so a rebuild never
//! misses or double-counts a message landing meanwhile. The lock is `flock`, which
//! Linux maps onto NFS byte-range locks for a shared root.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::folder::{list, MessageDir};
use super::{maildir_name, sync_dir, write_new_file, Mailbox};

/// The Maildir++ usage file in the Maildir root.
pub(super) const SIZE_FILE: &str = "maildirsize";
const LOCK_FILE: &str = "pigeonair-maildirsize.lock";
/// Past this length the file is rebuilt, as Maildir++ prescribes.
const MAX_SIZE_FILE_LEN: usize = 5120;

/// An account's limits, as the directory gives them (`mailQuotaSize`,
/// `mailQuotaCount`). `None` and `Some(0)` both mean no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Most bytes the account's messages may take, summed over all folders.
    pub max_bytes: Option<u64>,
    /// Most messages the account may hold, over all folders.
    pub max_count: Option<u64>,
}

impl Quota {
    /// No limit on bytes or messages.
    pub const UNLIMITED: Quota = Quota {
        max_bytes: None,
        max_count: None,
    };

    /// Whether one more message of `size` bytes fits beside `usage`: usage plus the
    /// message may reach the limits but not pass them.
    pub fn allows(&self, usage: Usage, size: u64) -> bool {
        let quota = self.normalized();
        quota
            .max_bytes
            .is_none_or(|max| usage.bytes.saturating_add(size) <= max)
            && quota
                .max_count
                .is_none_or(|max| usage.count.saturating_add(1) <= max)
    }

    fn normalized(self) -> Quota {
        Quota {
            max_bytes: self.max_bytes.filter(|&n| n > 0),
            max_count: self.max_count.filter(|&n| n > 0),
        }
    }

    /// The `maildirsize` first line.
    fn definition(self) -> String {
        let quota = self.normalized();
        format!(
            "{}S,{}C",
            quota.max_bytes.unwrap_or(0),
            quota.max_count.unwrap_or(0)
        )
    }

    fn parse_definition(line: &str) -> Option<Quota> {
        let mut quota = Quota::UNLIMITED;
        for field in line.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            if let Some(bytes) = field.strip_suffix('S') {
                quota.max_bytes = Some(bytes.parse().ok()?);
            } else if let Some(count) = field.strip_suffix('C') {
                quota.max_count = Some(count.parse().ok()?);
            } else {
                return None;
            }
        }
        Some(quota.normalized())
    }
}

/// What a mailbox holds, summed over all its folders (Trash included, as Maildir++
/// counts it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of all messages, by their `S=` sizes.
    pub bytes: u64,
    /// Number of messages.
    pub count: u64,
}

impl Usage {
    /// What one message of `size` bytes takes.
    pub(super) fn message(size: u64) -> Usage {
        Usage {
            bytes: size,
            count: 1,
        }
    }
}

/// A `maildirsize` file as read.
pub(super) struct SizeFile {
    pub quota: Quota,
    pub usage: Usage,
    /// Every line whole and the file short enough to be trusted.
    pub fresh: bool,
}

/// Read a `maildirsize` text; `None` when even the quota line is unreadable.
pub(super) fn parse(text: &str) -> Option<SizeFile> {
    let (first, deltas) = text.split_once('\n')?;
    let quota = Quota::parse_definition(first)?;
    let (mut bytes, mut count, mut whole) = (0i64, 0i64, text.ends_with('\n'));
    for line in deltas.lines() {
        let mut fields = line.split_whitespace().map(str::parse::<i64>);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(b)), Some(Ok(c)), None) => {
                bytes = bytes.saturating_add(b);
                count = count.saturating_add(c);
            }
            _ => whole = false,
        }
    }
    let usage = Usage {
        bytes: bytes.max(0) as u64,
        count: count.max(0) as u64,
    };
    Some(SizeFile {
        quota,
        usage,
        fresh: whole && text.len() <= MAX_SIZE_FILE_LEN,
    })
}

/// The mailbox's usage from `maildirsize`, rebuilding the file first when it cannot be
/// trusted or, with `wanted`, names another quota (the rebuilt file then names `wanted`).
/// A mailbox never delivered to has no usage and is not created.
pub(super) fn load(mailbox: &Mailbox, wanted: Option<Quota>) -> io::Result<Usage> {
    let root = &mailbox.root;
    if !root.is_dir() {
        return Ok(Usage::default());
    }
    let wanted = wanted.map(Quota::normalized);
    let trusted = |file: &Option<SizeFile>| {
        file.as_ref()
            .filter(|f| f.fresh && wanted.is_none_or(|q| q == f.quota))
            .map(|f| f.usage)
    };
    if let Some(usage) = trusted(&read(root)?) {
        return Ok(usage);
    }
    let _lock = QuotaLock::exclusive(root)?;
    // Another process may have rebuilt it while this one waited for the lock.
    let file = read(root)?;
    if let Some(usage) = trusted(&file) {
        return Ok(usage);
    }
    let quota = wanted.or(file.map(|f| f.quota)).unwrap_or_default();
    let usage = mailbox_usage(root)?;
    let tmp = root
        .join("tmp")
        .join(maildir_name::unique(&mailbox.host, 0));
    fs::create_dir_all(root.join("tmp"))?;
    let text = format!("{}\n{} {}\n", quota.definition(), usage.bytes, usage.count);
    write_new_file(&tmp, text.as_bytes())?;
    if let Err(e) = fs::rename(&tmp, root.join(SIZE_FILE)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(root)?;
    tracing::debug!(maildir = %root.display(), bytes = usage.bytes, count = usage.count,
        "rebuilt maildirsize");
    Ok(usage)
}

fn read(root: &Path) -> io::Result<Option<SizeFile>> {
    match fs::read_to_string(root.join(SIZE_FILE)) {
        Ok(text) => Ok(parse(&text)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::InvalidData
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Usage counted from the files of every folder: the root and each `.Name` directory.
pub(super) fn mailbox_usage(root: &Path) -> io::Result<Usage> {
    let mut total = folder_usage(root)?;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") && entry.path().is_dir() {
            let folder = folder_usage(&entry.path())?;
            total.bytes += folder.bytes;
            total.count += folder.count;
        }
    }
    Ok(total)
}

/// Usage counted from the files in one folder's new/ and cur/.
pub(super) fn folder_usage(dir: &Path) -> io::Result<Usage> {
    let mut usage = Usage::default();
    for which in [MessageDir::New, MessageDir::Cur] {
        for message in list(dir, which)? {
            usage.bytes += message.size;
            usage.count += 1;
        }
    }
    Ok(usage)
}

/// A lock on a mailbox's quota accounting: shared by those who append deltas,
/// exclusive for a rebuild. Released when dropped.
pub(super) struct QuotaLock {
    maildir: PathBuf,
    _file: File,
}

impl QuotaLock {
    /// The lock that changing the mailbox's contents and recording it takes.
    pub(super) fn shared(maildir: &Path) -> io::Result<QuotaLock> {
        QuotaLock::take(maildir, File::lock_shared)
    }

    fn exclusive(maildir: &Path) -> io::Result<QuotaLock> {
        QuotaLock::take(maildir, File::lock)
    }

    fn take(maildir: &Path, lock: fn(&File) -> io::Result<()>) -> io::Result<QuotaLock> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(maildir.join(LOCK_FILE))?;
        match lock(&file) {
            // A file system without locks: run unlocked, as plain Maildir++ does.
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
            other => other?,
        }
        Ok(QuotaLock {
            maildir: maildir.to_owned(),
            _file: file,
        })
    }

    /// Record that `change` was added to the mailbox (delivery, copy).
    pub(super) fn added(&self, change: Usage) {
        self.append(&format!("{} {}\n", change.bytes, change.count));
    }

    /// Record that `change` was removed from the mailbox (expunge, folder deletion).
    pub(super) fn removed(&self, change: Usage) {
        self.append(&format!("-{} -{}\n", change.bytes, change.count));
    }

    /// Append a delta line to `maildirsize`. Without the file nothing is written (the
    /// next [`load`] rebuilds it, counting this change). When the append fails, the
    /// file is removed so it is rebuilt rather than left wrong: the change itself has
    /// happened and must not be reported as failed.
    fn append(&self, line: &str) {
        let path = self.maildir.join(SIZE_FILE);
        // One write of a short line on O_APPEND: concurrent appenders never interleave.
        let result = OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(maildir = %self.maildir.display(), error = %e,
                    "cannot append to maildirsize; it will be rebuilt");
                let _ = fs::remove_file(&path);
            }
        }
    }
}

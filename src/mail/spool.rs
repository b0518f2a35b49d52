//! The spool: where an accepted message waits, on disk, until every recipient has it.
//!
//! Contract:
//! - [`Spool::accept`] returns only once the message and its envelope are on disk
//!   (file and directory fsynced): SMTP answers 250 after it, never before.
//! - An accepted message is one file, `queue/<id>`: its envelope as one line of JSON,
//!   then the message's bytes. It is written as `queue/.<id>.tmp`, fsynced and renamed
//!   into place, and the folder fsynced: two fsyncs per message. At open, a leftover
//!   `.tmp` file is an acceptance that never completed and is removed.
//! - Delivery progress (recipients done, attempts, the next attempt) is written to
//!   `state/<id>` ([`Spool::update`], an atomic replace), which overrides the envelope
//!   in the queue file; a message delivered at its first attempt never writes one.
//! - A message is removed when every recipient is done; the removal is not synced. A
//!   crash may bring a removed message back, and then every recipient is delivered
//!   again, so a delivery must be idempotent per (queue id, recipient): the stores name
//!   their files by the queue id.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::durable::{sync_dir, write_atomic, Access};

/// Why the spool could not take or give a message.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Reading or writing the spool's files failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// An envelope cannot be decoded.
    #[error("spool {path}: damaged envelope: {message}")]
    Damaged {
        /// The envelope file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No message has this queue id.
    #[error("no queued message {0}")]
    NotFound(String),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where one recipient's copy goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Destination {
    /// The mailbox of the account whose primary address this is (resolved again at
    /// delivery, so that a changed home node is followed).
    Mailbox(String),
    /// An address outside the cluster.
    External(String),
}

/// One recipient of a spooled message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The address as the client gave it in RCPT TO (for the bounce).
    pub rcpt: String,
    /// Where it goes.
    pub destination: Destination,
    /// Delivered (or failed for good): nothing more to do.
    pub done: bool,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Not before this time (Unix seconds).
    pub next_attempt: u64,
    /// The last failure, for `pigeonair queue list` and the bounce.
    pub last_error: Option<String>,
    /// Failed for good (the bounce reports it).
    pub failed: bool,
}

impl Recipient {
    /// A recipient not tried yet.
    pub fn new(rcpt: String, destination: Destination) -> Recipient {
        Recipient {
            rcpt,
            destination,
            done: false,
            attempts: 0,
            next_attempt: 0,
            last_error: None,
            failed: false,
        }
    }
}

/// Everything about a spooled message but its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The queue id.
    pub id: String,
    /// The envelope sender (empty: the null sender of a bounce).
    pub sender: String,
    /// When it was accepted (Unix seconds).
    pub received_at: u64,
    /// The message's size in bytes.
    pub size: u64,
    /// The recipients, in RCPT order, aliases expanded.
    pub recipients: Vec<Recipient>,
}

impl Envelope {
    /// True when no recipient is left to deliver.
    pub fn finished(&self) -> bool {
        self.recipients.iter().all(|r| r.done)
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh queue id: the time in hex and 48 random bits, sortable by arrival.
pub fn new_queue_id() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!(
        "{micros:014x}{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    )
}

/// A queue id is the only thing that names spool files: refuse anything else.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The spool folder of a node.
pub struct Spool {
    queue: PathBuf,
    state: PathBuf,
}

impl Spool {
    /// Open (or create) the spool in `dir`, removing acceptances that never completed
    /// and progress records of messages already removed.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        let spool = Spool {
            queue: dir.join("queue"),
            state: dir.join("state"),
        };
        for d in [&spool.queue, &spool.state] {
            fs::create_dir_all(d).map_err(io_at(d))?;
        }
        for entry in fs::read_dir(&spool.queue).map_err(io_at(&spool.queue))? {
            let entry = entry.map_err(io_at(&spool.queue))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                tracing::info!(file = %name, "removing a message whose acceptance did not complete");
                let _ = fs::remove_file(entry.path());
            }
        }
        for entry in fs::read_dir(&spool.state).map_err(io_at(&spool.state))? {
            let entry = entry.map_err(io_at(&spool.state))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !spool.queue.join(&name).exists() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(spool)
    }

    /// Write a message and its envelope durably; afterwards the message is queued.
    pub fn accept(&self, envelope: &Envelope, message: &[u8]) -> Result<(), SpoolError> {
        if !valid_id(&envelope.id) {
            return Err(SpoolError::NotFound(envelope.id.clone()));
        }
        let path = self.queue.join(&envelope.id);
        let mut head = serde_json::to_vec(envelope).map_err(|e| SpoolError::Damaged {
            path: path.clone(),
            message: e.to_string(),
        })?;
        head.push(b'\n');
        let tmp = self.queue.join(format!(".{}.tmp", envelope.id));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&head)?;
            f.write_all(message)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(&self.queue)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_at(&path)(e));
        }
        Ok(())
    }

    /// Record a message's delivery progress durably (recipients done, attempts).
    pub fn update(&self, envelope: &Envelope) -> Result<(), SpoolError> {
        if !valid_id(&envelope.id) || !self.queue.join(&envelope.id).exists() {
            return Err(SpoolError::NotFound(envelope.id.clone()));
        }
        let path = self.state.join(&envelope.id);
        let bytes = serde_json::to_vec(envelope).map_err(|e| SpoolError::Damaged {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &bytes, Access::Private).map_err(io_at(&path))
    }

    /// Remove a message (all its recipients are done). Not synced: see the module
    /// documentation.
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        let path = self.queue.join(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(id.to_string()))
            }
            Err(e) => return Err(io_at(&path)(e)),
        }
        let _ = fs::remove_file(self.state.join(id));
        Ok(())
    }

    /// One message's envelope: its progress record, or the one it was accepted with.
    pub fn envelope(&self, id: &str) -> Result<Envelope, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        let state = self.state.join(id);
        let (path, bytes) = match fs::read(&state) {
            Ok(b) => (state, b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let path = self.queue.join(id);
                let head = read_head(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => SpoolError::NotFound(id.to_string()),
                    _ => io_at(&path)(e),
                })?;
                (path, head)
            }
            Err(e) => return Err(io_at(&state)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| SpoolError::Damaged {
            path,
            message: e.to_string(),
        })
    }

    /// One message's bytes.
    pub fn message(&self, id: &str) -> Result<Vec<u8>, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::NotFound(id.to_string()));
        }
        let path = self.queue.join(id);
        let mut bytes = fs::read(&path).map_err(io_at(&path))?;
        let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
            return Err(SpoolError::Damaged {
                path,
                message: "no envelope line".into(),
            });
        };
        bytes.drain(..=end);
        Ok(bytes)
    }

    /// Every queued message's envelope, oldest first. A damaged envelope is logged and
    /// skipped (its files stay for an operator to look at).
    pub fn envelopes(&self) -> Result<Vec<Envelope>, SpoolError> {
        let mut ids: Vec<String> = fs::read_dir(&self.queue)
            .map_err(io_at(&self.queue))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| valid_id(n))
            .collect();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.envelope(&id) {
                Ok(e) => out.push(e),
                Err(SpoolError::NotFound(_)) => {}
                Err(e) => tracing::error!(error = %e, "skipping a queued message"),
            }
        }
        Ok(out)
    }
}

/// The envelope line at the start of a queue file.
fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(fs::File::open(path)?);
    let mut head = Vec::new();
    reader.read_until(b'\n', &mut head)?;
    if head.last() == Some(&b'\n') {
        head.pop();
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(id: &str) -> Envelope {
        Envelope {
            id: id.to_string(),
            sender: "a@example.org".into(),
            received_at: unix_now(),
            size: 5,
            recipients: vec![Recipient::new(
                "b@example.org".into(),
                Destination::Mailbox("b@example.org".into()),
            )],
        }
    }

    #[test]
    fn accepted_messages_survive_a_reopen_and_leave_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = new_queue_id();
        spool.accept(&envelope(&id), b"hello").unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.envelopes().unwrap(), vec![envelope(&id)]);
        assert_eq!(spool.message(&id).unwrap(), b"hello");
        let mut env = spool.envelope(&id).unwrap();
        env.recipients[0].done = true;
        spool.update(&env).unwrap();
        assert!(spool.envelope(&id).unwrap().finished());
        spool.remove(&id).unwrap();
        assert!(spool.envelopes().unwrap().is_empty());
        assert!(matches!(spool.message(&id), Err(SpoolError::Io { .. })));
    }

    #[test]
    fn an_unfinished_acceptance_and_stale_progress_are_cleaned_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        fs::write(dir.path().join("queue").join(".00ff.tmp"), b"half").unwrap();
        fs::write(dir.path().join("state").join("00aa"), b"{}").unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert!(!dir.path().join("queue").join(".00ff.tmp").exists());
        assert!(!dir.path().join("state").join("00aa").exists());
        assert!(spool.envelopes().unwrap().is_empty());
    }

    #[test]
    fn ids_that_could_name_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        for id in ["../x", "", "a/b", ".hidden"] {
            assert!(spool.envelope(id).is_err());
            assert!(spool.remove(id).is_err());
            assert!(spool.accept(&envelope(id), b"x").is_err());
        }
        let ids: Vec<String> = (0..50).map(|_| new_queue_id()).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 50);
        assert!(ids.iter().all(|i| valid_id(i)));
    }
}

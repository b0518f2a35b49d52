//! The Raft log in append-only segment files: `raft-log/` in the node's data directory.
//!
//! - `segment-NNNNNNNNNN.log`: records appended in order, each
//!   `[length u32][crc32 u32][kind u8][index u64][payload]` (little endian; the CRC covers
//!   the length and everything after the CRC). A record is a log entry (the bincode
//!   [`Entry`]) or the committed log id openraft saved last. A segment that reached
//!   [`SEGMENT_BYTES`] is closed and the next one begun; a purge deletes the segments
//!   that hold only purged entries, a truncation cuts a segment and deletes the ones
//!   after it.
//! - `meta`: the vote and the last purged log id, replaced atomically (a new file, synced,
//!   renamed over the old one).
//!
//! `raft-log.lock`, beside it, is locked while the log is open, so that two processes
//! never share a log.
//!
//! The log is the one durable record of a command: the state machine applies it without
//! a sync and relies on the log to apply it again after a crash.
//!
//! One writer thread owns every write, in the order openraft asked for them (openraft
//! requires its log and vote writes to be serialised). It takes whatever is queued when
//! it wakes, appends it with one `write` and syncs it with one `fdatasync`, so
//! concurrent writes share one sync:
//!
//! - `append` returns as soon as the entries are queued and readable (from the `tail`
//!   kept in memory); openraft replicates them meanwhile, and the writer reports them
//!   flushed once they are synced. A leader's own sync thus overlaps its followers'.
//! - The tail also keeps the last [`KEEP_WRITTEN`] entries written, so replication and
//!   apply, which mostly read the newest entries, read them from memory. Older entries
//!   are read from the segment files at the positions the writer noted.
//! - `save_vote`, `truncate` and `purge` wait until they are synced.
//! - `save_committed` only records the id; the writer's next append carries it (and the
//!   last one, when the store closes). Losing it in a crash is safe, see
//!   [`RaftLogStorage::save_committed`] below.
//!
//! After a crash, a record cut short or failing its CRC at the end of the newest segment
//! is a write that was never acknowledged: the segment is cut there. The same damage in
//! an older segment (which was synced whole before the next one began) is corruption,
//! and the log refuses to open. A failed write or sync stops the writer for good: every
//! later write fails, and openraft stops the node, rather than trust a file whose state
//! is unknown.
//!
//! Earlier versions kept the log in a redb database, `raft-log.redb`; [`LogStore::open`]
//! moves it into segments once, through a directory renamed into place when complete.

// openraft's StorageError is large by design; every storage method returns it.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::ops::{Bound, Range, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::durable::{sync_dir, write_atomic, Access};

use super::types::{NodeId, TypeConfig};

/// A log entry of PigeonAir's Raft log.
pub type Entry = openraft::Entry<TypeConfig>;

/// The log's directory inside the data directory.
pub const LOG_DIR: &str = "raft-log";
/// The log of earlier versions, moved into `raft-log/` at open.
const OLD_LOG_FILE: &str = "raft-log.redb";
/// Where the move from `raft-log.redb` (or a new, empty log) is prepared.
const PREPARING_DIR: &str = "raft-log.preparing";
const META_FILE: &str = "meta";
/// Held while the log is open (and while it is prepared), beside the log's directory.
const LOCK_FILE: &str = "raft-log.lock";

/// A segment is closed once it holds this many bytes.
const SEGMENT_BYTES: u64 = 64 << 20;

/// The largest record payload the log reads back; anything larger is damage.
const MAX_PAYLOAD: u32 = 1 << 30;

/// `length u32`, `crc32 u32`, `kind u8`, `index u64`.
const HEADER: usize = 17;
const KIND_ENTRY: u8 = 1;
const KIND_COMMITTED: u8 = 2;

/// How many written entries the in-memory tail keeps at most.
const KEEP_WRITTEN: usize = 1024;

/// At most this many queued writes are taken in one round.
const MAX_BATCH: usize = 1024;

type StErr = StorageError<NodeId>;
type Id = LogId<NodeId>;

/// Whether `data_dir` holds a Raft log (in either format).
pub fn exists(data_dir: &Path) -> bool {
    data_dir.join(LOG_DIR).is_dir() || data_dir.join(OLD_LOG_FILE).exists()
}

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

    fn msg(self, m: impl Into<String>) -> StErr {
        self.err(AnyError::error(m.into()))
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

/// An I/O error with the path it concerns.
fn io_at(path: &Path, what: &str, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Append one record to `buf`.
fn put_record(buf: &mut Vec<u8>, kind: u8, index: u64, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(&[kind]);
    crc.update(&index.to_le_bytes());
    crc.update(payload);
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// A record read back: its kind, index and where its payload lies.
struct Record {
    kind: u8,
    index: u64,
    payload: Range<usize>,
}

/// The record starting at `at` in `bytes`: `Ok(None)` at the end, `Err` with what is
/// wrong when the bytes there are not a whole, intact record.
fn read_record(bytes: &[u8], at: usize) -> Result<Option<Record>, String> {
    let rest = &bytes[at..];
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < HEADER {
        return Err(format!("a record header cut short ({} bytes)", rest.len()));
    }
    let field = |r: Range<usize>| &rest[r];
    let len = u32::from_le_bytes(field(0..4).try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD {
        return Err(format!("a record length of {len} bytes"));
    }
    let end = HEADER + len as usize;
    if rest.len() < end {
        return Err(format!(
            "a record of {end} bytes cut short at {} bytes",
            rest.len()
        ));
    }
    let stored = u32::from_le_bytes(field(4..8).try_into().expect("4 bytes"));
    let mut crc = crc32fast::Hasher::new();
    crc.update(field(0..4));
    crc.update(field(8..end));
    if crc.finalize() != stored {
        return Err("a record whose checksum does not match".into());
    }
    Ok(Some(Record {
        kind: rest[8],
        index: u64::from_le_bytes(field(9..17).try_into().expect("8 bytes")),
        payload: at + HEADER..at + end,
    }))
}

fn segment_name(seq: u64) -> String {
    format!("segment-{seq:010}.log")
}

/// The sequence number of a segment file's name, `None` for any other file.
fn segment_seq(name: &str) -> Option<u64> {
    name.strip_prefix("segment-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// What `meta` holds.
#[derive(Clone, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote<NodeId>>,
    purged: Option<Id>,
}

impl Meta {
    fn read(dir: &Path) -> Result<Meta, StErr> {
        let path = dir.join(META_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Meta::default()),
            Err(e) => return Err(Op::ReadVote.msg(io_at(&path, "cannot read", e))),
        };
        match read_record(&bytes, 0) {
            Ok(Some(r)) if r.payload.end == bytes.len() => decode(&bytes[r.payload], Op::ReadVote),
            _ => Err(Op::ReadVote.msg(format!("{} is damaged", path.display()))),
        }
    }

    /// Replace `meta` in `dir` with this, durably.
    fn write(&self, dir: &Path) -> Result<(), String> {
        let payload = encode(self, Op::WriteVote).map_err(|e| e.to_string())?;
        let mut bytes = Vec::with_capacity(HEADER + payload.len());
        put_record(&mut bytes, 0, 0, &payload);
        write_atomic(&dir.join(META_FILE), &bytes, Access::Private)
            .map_err(|e| io_at(dir, "cannot save the vote and purge state in", e))
    }
}

/// Where a written entry's record lies.
#[derive(Clone, Copy)]
struct Pos {
    segment: u64,
    offset: u64,
    len: u64,
}

/// The written part of the log, for readers and the writer.
#[derive(Default)]
struct Files {
    /// Open segments by sequence number.
    segments: BTreeMap<u64, Arc<File>>,
    /// The index of `pos[0]`.
    first: u64,
    /// The records of the written entries not purged, in index order.
    pos: VecDeque<Pos>,
    /// The last written entry's id.
    last: Option<Id>,
    /// The last committed id written.
    committed: Option<Id>,
}

impl Files {
    fn end(&self) -> u64 {
        self.first + self.pos.len() as u64
    }

    /// The positions of the written entries whose index lies in `bounds`, grouped into
    /// runs of consecutive records in one segment: (file, byte range, entry count).
    fn runs(&self, bounds: (Bound<u64>, Bound<u64>)) -> Vec<(Arc<File>, Range<u64>, usize)> {
        let lo = match bounds.0 {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(self.first);
        let hi = match bounds.1 {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => e,
            Bound::Unbounded => u64::MAX,
        }
        .min(self.end());
        if hi <= lo {
            return Vec::new();
        }
        let mut runs: Vec<(Arc<File>, Range<u64>, usize)> = Vec::new();
        let mut last_segment = None;
        for p in self
            .pos
            .range((lo - self.first) as usize..(hi - self.first) as usize)
        {
            match runs.last_mut() {
                Some(run) if last_segment == Some(p.segment) => {
                    run.1.end = p.offset + p.len;
                    run.2 += 1;
                }
                _ => {
                    let Some(file) = self.segments.get(&p.segment) else {
                        continue;
                    };
                    runs.push((file.clone(), p.offset..p.offset + p.len, 1));
                    last_segment = Some(p.segment);
                }
            }
        }
        runs
    }
}

/// Read the entries of `runs` (see [`Files::runs`]) from their files.
fn read_runs(runs: Vec<(Arc<File>, Range<u64>, usize)>) -> Result<Vec<Entry>, StErr> {
    let op = Op::ReadLogs;
    let mut out = Vec::new();
    for (file, range, count) in runs {
        let mut buf = vec![0; (range.end - range.start) as usize];
        file.read_exact_at(&mut buf, range.start)
            .map_err(op.map())?;
        let mut at = 0;
        let mut found = 0;
        while let Some(r) = read_record(&buf, at).map_err(|e| op.msg(e))? {
            at = r.payload.end;
            // Committed ids lie between entries; only entries are wanted.
            if r.kind == KIND_ENTRY {
                out.push(decode::<Entry>(&buf[r.payload], op)?);
                found += 1;
            }
        }
        if found != count {
            return Err(op.msg(format!(
                "expected {count} log entries at offset {} but found {found}",
                range.start
            )));
        }
    }
    Ok(out)
}

/// One write for the writer thread.
enum Job {
    /// Entries `(id, sequence number in the tail, bytes)`; `done` reports the sync.
    Append {
        entries: Vec<(Id, u64, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    /// A vote to store.
    Vote {
        vote: Vote<NodeId>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Remove the entries from `index` on.
    Truncate {
        index: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Remove the entries up to `upto` and record it as the last purged log id.
    Purge {
        upto: Id,
        done: oneshot::Sender<Result<(), String>>,
    },
}

impl Job {
    fn finish(self, result: Result<(), String>) {
        match self {
            Job::Append { done, .. } => {
                done.log_io_completed(result.map_err(std::io::Error::other))
            }
            // The caller may have gone away (openraft shutting down): nothing to tell.
            Job::Vote { done, .. } | Job::Truncate { done, .. } | Job::Purge { done, .. } => {
                let _ = done.send(result);
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

    /// Note that the appends up to sequence number `last` are written, and let the oldest
    /// written entries leave.
    fn written(&mut self, last: u64) {
        self.written_below = self.written_below.max(last + 1);
        while self.entries.len() > KEEP_WRITTEN {
            match self.entries.first_key_value() {
                Some((&index, &(seq, _))) if seq < self.written_below => {
                    self.entries.remove(&index);
                }
                _ => break,
            }
        }
    }
}

/// What the store's handles and its writer thread share.
struct Shared {
    dir: PathBuf,
    tail: Mutex<Tail>,
    files: Mutex<Files>,
    meta: Mutex<Meta>,
    /// The committed log id openraft saved last, not yet written.
    committed: Mutex<Option<Option<Id>>>,
    /// Held for the store's lifetime: `raft-log.lock`, locked.
    _lock: File,
}

/// The segment the writer appends to.
struct Active {
    seq: u64,
    file: Arc<File>,
    len: u64,
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    segment_bytes: u64,
    active: Active,
    /// Records not yet written, to go at the end of the active segment.
    buf: Vec<u8>,
    /// The entries in `buf`: index and position.
    staged: Vec<(u64, Pos)>,
    staged_last: Option<Id>,
    staged_committed: Option<Option<Id>>,
    /// The highest tail sequence number in `buf`.
    staged_seq: Option<u64>,
    /// Set by the first failed write; every later write fails with it.
    failed: Option<String>,
}

impl Writer {
    fn stage_entry(&mut self, id: Id, seq: u64, bytes: &[u8]) {
        let offset = self.active.len + self.buf.len() as u64;
        put_record(&mut self.buf, KIND_ENTRY, id.index, bytes);
        let pos = Pos {
            segment: self.active.seq,
            offset,
            len: (HEADER + bytes.len()) as u64,
        };
        self.staged.push((id.index, pos));
        self.staged_last = Some(id);
        self.staged_seq = Some(seq);
    }

    fn stage_committed(&mut self, committed: Option<Id>) -> Result<(), String> {
        let bytes = encode(&committed, Op::Write).map_err(|e| e.to_string())?;
        let index = committed.map_or(0, |c| c.index);
        put_record(&mut self.buf, KIND_COMMITTED, index, &bytes);
        self.staged_committed = Some(committed);
        Ok(())
    }

    /// Write and sync what is staged, then make it readable from the files.
    fn flush(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.shared.dir.join(segment_name(self.active.seq));
        self.active
            .file
            .write_all_at(&self.buf, self.active.len)
            .and_then(|()| self.active.file.sync_data())
            .map_err(|e| io_at(&path, "cannot write", e))?;
        self.active.len += self.buf.len() as u64;
        self.buf.clear();
        {
            let mut files = lock(&self.shared.files);
            for (index, pos) in self.staged.drain(..) {
                if files.pos.is_empty() {
                    files.first = index;
                }
                files.pos.push_back(pos);
            }
            if let Some(last) = self.staged_last.take() {
                files.last = Some(last);
            }
            if let Some(c) = self.staged_committed.take() {
                files.committed = c;
            }
        }
        if let Some(seq) = self.staged_seq.take() {
            lock(&self.shared.tail).written(seq);
        }
        Ok(())
    }

    /// Begin the next segment when the active one is full (only with nothing staged).
    fn roll_if_full(&mut self) -> Result<(), String> {
        if self.active.len < self.segment_bytes || !self.buf.is_empty() {
            return Ok(());
        }
        let seq = self.active.seq + 1;
        let active = create_segment(&self.shared.dir, seq)?;
        lock(&self.shared.files)
            .segments
            .insert(seq, active.file.clone());
        self.active = active;
        Ok(())
    }

    fn truncate(&mut self, index: u64) -> Result<(), String> {
        self.flush()?;
        let dir = &self.shared.dir;
        let mut files = lock(&self.shared.files);
        let k = index.saturating_sub(files.first) as usize;
        let Some(&cut) = files.pos.get(k) else {
            return Ok(()); // nothing written from `index` on
        };
        let later: Vec<u64> = files
            .segments
            .range(cut.segment + 1..)
            .map(|(s, _)| *s)
            .collect();
        remove_segments(dir, &mut files, later)?;
        let file = files
            .segments
            .get(&cut.segment)
            .cloned()
            .ok_or("the segment to cut is not open")?;
        let path = dir.join(segment_name(cut.segment));
        file.set_len(cut.offset)
            .and_then(|()| file.sync_all())
            .and_then(|()| sync_dir(dir))
            .map_err(|e| io_at(&path, "cannot cut", e))?;
        files.pos.truncate(k);
        files.last = if k == 0 {
            None
        } else {
            let before = files.runs((Bound::Included(index - 1), Bound::Excluded(index)));
            let entries = read_runs(before).map_err(|e| e.to_string())?;
            entries.last().map(|e| e.log_id)
        };
        let committed = files.committed;
        drop(files);
        self.active = Active {
            seq: cut.segment,
            file,
            len: cut.offset,
        };
        self.keep_committed(committed)
    }

    /// Write what is staged, then save `meta` changed by `change`, durably.
    fn save_meta(&mut self, change: impl FnOnce(&mut Meta)) -> Result<(), String> {
        self.flush()?;
        let mut meta = lock(&self.shared.meta).clone();
        change(&mut meta);
        meta.write(&self.shared.dir)?;
        *lock(&self.shared.meta) = meta;
        Ok(())
    }

    fn purge(&mut self, upto: Id) -> Result<(), String> {
        self.save_meta(|m| m.purged = Some(upto))?;
        let mut files = lock(&self.shared.files);
        let n = (upto.index + 1)
            .saturating_sub(files.first)
            .min(files.pos.len() as u64);
        files.pos.drain(..n as usize);
        files.first = files.first.max(upto.index + 1);
        if files.pos.is_empty() {
            files.last = None; // the purged id is the last one now
        }
        // Every segment before the one holding the oldest entry kept holds only purged
        // entries, and committed ids.
        let keep_from = files.pos.front().map_or(self.active.seq, |p| p.segment);
        let old: Vec<u64> = files.segments.range(..keep_from).map(|(s, _)| *s).collect();
        if old.is_empty() {
            return Ok(());
        }
        remove_segments(&self.shared.dir, &mut files, old)?;
        sync_dir(&self.shared.dir).map_err(|e| io_at(&self.shared.dir, "cannot sync", e))?;
        let committed = files.committed;
        drop(files);
        self.keep_committed(committed)
    }

    /// Write the last committed id again, after a truncation or purge that may have
    /// removed the record of it.
    fn keep_committed(&mut self, committed: Option<Id>) -> Result<(), String> {
        if committed.is_none() {
            return Ok(());
        }
        self.stage_committed(committed)?;
        self.flush()
    }

    fn vote(&mut self, vote: Vote<NodeId>) -> Result<(), String> {
        self.save_meta(|m| m.vote = Some(vote))
    }

    /// Carry out `jobs` in order and report each. Appends are staged and written
    /// together; a vote, truncation or purge first writes what is staged.
    fn run(&mut self, jobs: Vec<Job>, committed: Option<Option<Id>>) {
        let mut results: Vec<Result<(), String>> = Vec::with_capacity(jobs.len());
        let mut staged_jobs = 0;
        if self.failed.is_none() {
            if let Err(e) = self.roll_if_full() {
                self.failed = Some(e);
            }
        }
        for job in &jobs {
            if let Some(e) = &self.failed {
                results.push(Err(e.clone()));
                continue;
            }
            let step = match job {
                Job::Append { entries, .. } => {
                    for (id, seq, bytes) in entries {
                        self.stage_entry(*id, *seq, bytes);
                    }
                    staged_jobs += 1;
                    results.push(Ok(()));
                    continue;
                }
                Job::Vote { vote, .. } => self.vote(*vote),
                Job::Truncate { index, .. } => self.truncate(*index),
                Job::Purge { upto, .. } => self.purge(*upto),
            };
            // Whatever was staged before this job was written by it (or failed with it).
            self.settle(&mut results, &mut staged_jobs, &step);
            results.push(step);
        }
        if self.failed.is_none() {
            let step = match committed {
                Some(c) => self.stage_committed(c).and_then(|()| self.flush()),
                None => self.flush(),
            };
            self.settle(&mut results, &mut staged_jobs, &step);
        }
        for (job, result) in jobs.into_iter().zip(results) {
            job.finish(result);
        }
    }

    /// After a write of the staged appends: on failure, fail the appends staged for it
    /// (the last `staged_jobs` of `results` that are appends) and every later write.
    fn settle(
        &mut self,
        results: &mut [Result<(), String>],
        staged_jobs: &mut usize,
        step: &Result<(), String>,
    ) {
        if let Err(e) = step {
            let e = format!("the raft log stopped: {e}");
            tracing::error!(error = %e, "raft log write failed");
            for r in results.iter_mut().rev().take(*staged_jobs) {
                *r = Err(e.clone());
            }
            self.buf.clear();
            self.staged.clear();
            (self.staged_last, self.staged_committed, self.staged_seq) = (None, None, None);
            self.failed = Some(e);
        }
        *staged_jobs = 0;
    }

    /// The writer thread: carry out what is queued, in order, until every handle is
    /// gone; then write the last committed id.
    fn write_loop(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            // The committed id is taken before the queue is drained: openraft saves it
            // after queueing the entries it covers, so they are all in this round or
            // already written, and the id never names an entry the log does not hold.
            let mut committed = lock(&self.shared.committed).take();
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if jobs.len() == MAX_BATCH {
                // More may be queued, the entries the id covers among them: it waits.
                let mut slot = lock(&self.shared.committed);
                if slot.is_none() {
                    *slot = committed.take();
                }
            }
            self.run(jobs, committed);
        }
        let committed = lock(&self.shared.committed).take();
        if let Some(c) = committed {
            if self.failed.is_none() {
                if let Err(e) = self.stage_committed(c).and_then(|()| self.flush()) {
                    tracing::warn!(error = %e, "cannot save the committed log id at close");
                }
            }
        }
    }
}

/// Delete segments `seqs` from `dir` and from `files` (the caller syncs `dir`).
fn remove_segments(dir: &Path, files: &mut Files, seqs: Vec<u64>) -> Result<(), String> {
    for seq in seqs {
        files.segments.remove(&seq);
        let path = dir.join(segment_name(seq));
        fs::remove_file(&path).map_err(|e| io_at(&path, "cannot remove", e))?;
    }
    Ok(())
}

/// Create segment `seq` in `dir`, durably, for appending.
fn create_segment(dir: &Path, seq: u64) -> Result<Active, String> {
    let path = dir.join(segment_name(seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|f| sync_dir(dir).map(|()| f))
        .map_err(|e| io_at(&path, "cannot create", e))?;
    Ok(Active {
        seq,
        file: Arc::new(file),
        len: 0,
    })
}

/// Read the segments of `dir`: the written entries and the active segment. A damaged
/// record ends the newest segment (cut there); in an older one it is an error.
fn recover(dir: &Path, purged: Option<Id>) -> Result<(Files, Active), StErr> {
    let op = Op::ReadLogs;
    let mut seqs: Vec<u64> = Vec::new();
    for item in fs::read_dir(dir).map_err(op.map())? {
        let item = item.map_err(op.map())?;
        if let Some(seq) = item.file_name().to_str().and_then(segment_seq) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    let mut files = Files::default();
    let mut last_record: Option<(u64, Range<usize>, Vec<u8>)> = None;
    let mut active = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let path = dir.join(segment_name(seq));
        let bytes = fs::read(&path).map_err(|e| op.msg(io_at(&path, "cannot read", e)))?;
        let mut at = 0;
        let mut last_entry = None;
        loop {
            let r = match read_record(&bytes, at) {
                Ok(Some(r)) if matches!(r.kind, KIND_ENTRY | KIND_COMMITTED) => r,
                Ok(Some(r)) => Err(format!("a record of unknown kind {}", r.kind))
                    .map_err(|e| op.msg(format!("{}: {e} at {at}", path.display())))?,
                Ok(None) => break,
                Err(e) if i + 1 == seqs.len() => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = at,
                        dropped = bytes.len() - at,
                        "the raft log ends in an unfinished write ({e}); cutting it off"
                    );
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(at as u64).and_then(|()| f.sync_all()))
                        .map_err(|e| op.msg(io_at(&path, "cannot cut", e)))?;
                    break;
                }
                Err(e) => {
                    return Err(op.msg(format!(
                        "{} is damaged at offset {at}: {e}; the raft log cannot be read \
                         (restore this node from a snapshot: remove its data directory and \
                         join it again)",
                        path.display()
                    )))
                }
            };
            let next = r.payload.end;
            if r.kind == KIND_COMMITTED {
                files.committed = decode(&bytes[r.payload], op)?;
            } else if purged.is_none_or(|p| r.index > p.index) {
                // Entries follow each other, and the first follows the last purged one.
                let expected = match (files.pos.is_empty(), purged) {
                    (false, _) => Some(files.end()),
                    (true, Some(p)) => Some(p.index + 1),
                    (true, None) => None,
                };
                if let Some(expected) = expected.filter(|&x| x != r.index) {
                    return Err(op.msg(format!(
                        "{}: entry {} where entry {expected} should be",
                        path.display(),
                        r.index
                    )));
                }
                if files.pos.is_empty() {
                    files.first = r.index;
                }
                files.pos.push_back(Pos {
                    segment: seq,
                    offset: at as u64,
                    len: (next - at) as u64,
                });
                last_entry = Some(r.payload);
            }
            at = next;
        }
        if let Some(p) = last_entry {
            last_record = Some((seq, p, bytes));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| op.msg(io_at(&path, "cannot open", e)))?;
        let len = file.metadata().map_err(op.map())?.len();
        let file = Arc::new(file);
        files.segments.insert(seq, file.clone());
        active = Some(Active { seq, file, len });
    }
    if let Some((_, payload, bytes)) = last_record {
        files.last = Some(decode::<Entry>(&bytes[payload], op)?.log_id);
    }
    if files.pos.is_empty() {
        files.first = purged.map_or(0, |p| p.index + 1);
    }
    let active = match active {
        Some(a) => a,
        None => {
            let a = create_segment(dir, 1).map_err(|e| op.msg(e))?;
            files.segments.insert(1, a.file.clone());
            a
        }
    };
    Ok((files, active))
}

/// Prepare `raft-log/` in `data_dir`: empty, or holding the redb log of earlier versions
/// when there is one. Built in a separate directory and renamed into place, so that a
/// crash leaves either no log directory (and the old file) or a complete one.
fn prepare(data_dir: &Path) -> Result<(), StErr> {
    let op = Op::Write;
    let tmp = data_dir.join(PREPARING_DIR);
    let err = |what: &str, e: std::io::Error| op.msg(io_at(&tmp, what, e));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| err("cannot remove", e))?;
    }
    fs::create_dir(&tmp).map_err(|e| err("cannot create", e))?;
    let old = data_dir.join(OLD_LOG_FILE);
    if old.exists() {
        let (meta, committed, entries) = old_format::read(&old)?;
        tracing::info!(
            entries = entries.len(),
            from = %old.display(),
            "moving the raft log into segment files"
        );
        meta.write(&tmp).map_err(|e| op.msg(e))?;
        let mut buf = Vec::new();
        for e in &entries {
            put_record(&mut buf, KIND_ENTRY, e.log_id.index, &encode(e, op)?);
        }
        let bytes = encode(&committed, op)?;
        put_record(
            &mut buf,
            KIND_COMMITTED,
            committed.map_or(0, |c| c.index),
            &bytes,
        );
        let seg = create_segment(&tmp, 1).map_err(|e| op.msg(e))?;
        seg.file
            .write_all_at(&buf, 0)
            .and_then(|()| seg.file.sync_all())
            .map_err(|e| err("cannot write into", e))?;
    }
    sync_dir(&tmp).map_err(|e| err("cannot sync", e))?;
    fs::rename(&tmp, data_dir.join(LOG_DIR)).map_err(|e| err("cannot rename", e))?;
    sync_dir(data_dir).map_err(|e| err("cannot sync the parent of", e))?;
    if old.exists() {
        fs::remove_file(&old).map_err(|e| op.msg(io_at(&old, "cannot remove", e)))?;
    }
    Ok(())
}

/// The redb log of earlier versions, read once to move it into segments.
mod old_format {
    use super::*;
    use redb::{Database, ReadableDatabase, TableDefinition};

    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

    /// The vote and last purged id, the committed id and the entries of `path`.
    pub(super) fn read(path: &Path) -> Result<(Meta, Option<Id>, Vec<Entry>), StErr> {
        let op = Op::Read;
        let db = Database::open(path).map_err(op.map())?;
        let txn = db.begin_read().map_err(op.map())?;
        let meta = txn.open_table(META).map_err(op.map())?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, StErr> {
            Ok(meta.get(key).map_err(op.map())?.map(|v| v.value().to_vec()))
        };
        let vote = get("vote")?.map(|b| decode(&b, op)).transpose()?;
        let purged = get("last_purged_log_id")?
            .map(|b| decode(&b, op))
            .transpose()?;
        let committed: Option<Option<Id>> =
            get("committed")?.map(|b| decode(&b, op)).transpose()?;
        let log = txn.open_table(LOG).map_err(op.map())?;
        let mut entries = Vec::new();
        for item in log.range::<u64>(..).map_err(op.map())? {
            let (_, v) = item.map_err(op.map())?;
            entries.push(decode::<Entry>(v.value(), op)?);
        }
        Ok((Meta { vote, purged }, committed.flatten(), entries))
    }

    #[cfg(test)]
    /// Write a log in the old format, as earlier versions did.
    pub(super) fn write(
        path: &Path,
        vote: Vote<NodeId>,
        committed: Option<Id>,
        purged: Option<Id>,
        entries: &[Entry],
    ) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            let op = Op::Write;
            meta.insert("vote", encode(&vote, op).unwrap().as_slice())
                .unwrap();
            meta.insert("committed", encode(&committed, op).unwrap().as_slice())
                .unwrap();
            if let Some(p) = purged {
                meta.insert("last_purged_log_id", encode(&p, op).unwrap().as_slice())
                    .unwrap();
            }
            let mut log = txn.open_table(LOG).unwrap();
            for e in entries {
                log.insert(e.log_id.index, encode(e, op).unwrap().as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }
}

/// The Raft log and vote of one node. Cheap to clone: clones share the files and the
/// writer (openraft's log readers are clones).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

/// Closing the last handle stops the writer after it wrote everything queued, and waits
/// for it, so the log is closed (and its lock released) when the last handle is gone.
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
    /// Open (or create) the log in `data_dir/raft-log/`, creating the data directory if
    /// needed and moving a `raft-log.redb` of an earlier version into it, and start its
    /// writer thread. Blocking; call it at startup.
    pub fn open(data_dir: &Path) -> Result<LogStore, StorageError<NodeId>> {
        Self::open_with(data_dir, SEGMENT_BYTES)
    }

    fn open_with(data_dir: &Path, segment_bytes: u64) -> Result<LogStore, StErr> {
        let op = Op::Read;
        fs::create_dir_all(data_dir).map_err(op.map())?;
        let dir = data_dir.join(LOG_DIR);
        let lock_path = data_dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| op.msg(io_at(&lock_path, "cannot open", e)))?;
        if lock_file.try_lock().is_err() {
            return Err(op.msg(format!(
                "{} is in use by another process (is a node running on this data directory?)",
                dir.display()
            )));
        }
        if !dir.is_dir() {
            prepare(data_dir)?;
        }
        let meta = Meta::read(&dir)?;
        let (files, active) = recover(&dir, meta.purged)?;
        let shared = Arc::new(Shared {
            dir,
            tail: Mutex::new(Tail::default()),
            files: Mutex::new(files),
            meta: Mutex::new(meta),
            committed: Mutex::new(None),
            _lock: lock_file,
        });
        let writer = Writer {
            shared: shared.clone(),
            segment_bytes,
            active,
            buf: Vec::new(),
            staged: Vec::new(),
            staged_last: None,
            staged_committed: None,
            staged_seq: None,
            failed: None,
        };
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("raft-log".into())
            .spawn(move || writer.write_loop(rx))
            .map_err(Op::Write.map())?;
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
        let stopped = || op.msg("the raft log's writer has stopped");
        self.inner
            .tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())
    }

    /// Queue a job and wait until it is synced.
    async fn write(
        &self,
        op: Op,
        job: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Job,
    ) -> Result<(), StErr> {
        let (done, synced) = oneshot::channel();
        self.send(job(done), op)?;
        synced.await.map_err(op.map())?.map_err(|e| op.msg(e))
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

    /// The committed log id last saved, read without a runtime (for a stopped node).
    pub fn committed_blocking(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.shared().committed())
    }

    /// The last purged log id, read without a runtime.
    pub fn purged_blocking(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.shared().meta).purged)
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
    fn committed(&self) -> Option<Id> {
        let waiting = *lock(&self.committed);
        waiting.unwrap_or_else(|| lock(&self.files).committed)
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

    /// The entries whose index lies in `bounds`: from the files up to the tail, then from
    /// the tail.
    fn entries(&self, bounds: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, StErr> {
        // The tail first: an entry leaves it only once the files hold it, so the files
        // read after this copy hold every entry before the copy's first.
        let newest = lock(&self.tail).copy(bounds);
        let written_end = match newest.first() {
            Some(e) => Bound::Excluded(e.log_id.index),
            None => bounds.1,
        };
        let runs = lock(&self.files).runs((bounds.0, written_end));
        let mut out = read_runs(runs)?;
        out.extend(newest);
        Ok(out)
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
        let s = self.shared();
        let purged = lock(&s.meta).purged;
        let tail_last = lock(&s.tail)
            .entries
            .last_key_value()
            .map(|(_, (_, e))| e.log_id);
        let last = tail_last.or_else(|| lock(&s.files).last);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.write(Op::WriteVote, |done| Job::Vote { vote, done })
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.shared().meta).vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced on its own; the writer's next append (or the last one, at close)
        // carries it. On restart openraft applies the log again from the directory's
        // durable applied id up to this one (the state machine's applies are unsynced
        // too, see state_machine.rs). Losing the latest value in a crash is safe: the
        // entries after it stay in the log, since a purge never passes a snapshot and
        // the directory is durable up to its snapshot, and they are applied as soon as
        // this node learns the commit index again (from its leader, or at once as a
        // restored sole leader).
        *lock(&self.shared().committed) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.shared().committed())
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
            let bytes = encode(e, op)?;
            if bytes.len() > MAX_PAYLOAD as usize {
                return Err(op.msg(format!(
                    "log entry {} is {} bytes, more than the log takes ({MAX_PAYLOAD})",
                    e.log_id.index,
                    bytes.len()
                )));
            }
            encoded.push(bytes);
        }
        // Readable from here on. Queued under the same lock, so the writer gets the
        // appends in the order they became readable.
        let mut tail = lock(&self.shared().tail);
        let mut queued = Vec::with_capacity(entries.len());
        for (e, bytes) in entries.into_iter().zip(encoded) {
            let seq = tail.next_seq;
            tail.next_seq += 1;
            queued.push((e.log_id, seq, bytes));
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
        let index = log_id.index;
        lock(&self.shared().tail).entries.retain(|i, _| *i < index);
        self.write(Op::WriteLogs, |done| Job::Truncate { index, done })
            .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "purging the raft log");
        lock(&self.shared().tail)
            .entries
            .retain(|i, _| *i > log_id.index);
        self.write(Op::WriteLogs, |done| Job::Purge { upto: log_id, done })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn id_in(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn id(index: u64) -> LogId<NodeId> {
        id_in(1, index)
    }

    fn blank(log_id: LogId<NodeId>) -> Entry {
        Entry {
            log_id,
            payload: EntryPayload::Blank,
        }
    }

    async fn ids(log: &mut LogStore, range: impl RangeBounds<u64>) -> Vec<LogId<NodeId>> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        log.try_get_log_entries(bounds)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id)
            .collect()
    }

    async fn indexes(log: &mut LogStore, range: impl RangeBounds<u64>) -> Vec<u64> {
        ids(log, range).await.iter().map(|i| i.index).collect()
    }

    /// A log in `path` with `segment_bytes` segments, holding entries 1..=n of term 1,
    /// each appended (and synced) on its own.
    async fn filled(path: &Path, segment_bytes: u64, n: u64) -> LogStore {
        let mut log = LogStore::open_with(path, segment_bytes).unwrap();
        for i in 1..=n {
            log.blocking_append([blank(id(i))]).await.unwrap();
        }
        log
    }

    fn segments(data_dir: &Path) -> Vec<u64> {
        let mut seqs: Vec<u64> = fs::read_dir(data_dir.join(LOG_DIR))
            .unwrap()
            .filter_map(|f| segment_seq(f.unwrap().file_name().to_str()?))
            .collect();
        seqs.sort_unstable();
        seqs
    }

    fn segment_path(data_dir: &Path, seq: u64) -> PathBuf {
        data_dir.join(LOG_DIR).join(segment_name(seq))
    }

    /// Reads that span the files and the in-memory tail return every entry once, in
    /// order, before and after a truncation and a purge.
    #[tokio::test(flavor = "multi_thread")]
    async fn reads_across_the_in_memory_tail_see_the_whole_log() {
        let tmp = tempfile::TempDir::new().unwrap();
        let n = KEEP_WRITTEN as u64 + 100;
        let mut log = filled(tmp.path(), SEGMENT_BYTES, n).await;
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

    /// With small segments: the log spreads over several files; a truncation into an
    /// older segment removes the newer ones and the log goes on from the cut; a purge
    /// removes the segments holding only purged entries; all of it survives a reopen.
    #[tokio::test(flavor = "multi_thread")]
    async fn segments_roll_over_and_are_cut_and_removed() {
        let tmp = tempfile::TempDir::new().unwrap();
        let path = tmp.path();
        let mut log = filled(path, 256, 60).await;
        let before = segments(path);
        assert!(
            before.len() >= 4,
            "60 entries in 256-byte segments: {before:?}"
        );

        // Cut into the second segment: entry 20 and everything after it go.
        log.truncate(id(20)).await.unwrap();
        let after_cut = segments(path);
        assert!(
            after_cut.len() < before.len(),
            "{before:?} -> {after_cut:?}"
        );
        // A new leader's entries follow the cut.
        for i in 20..=30 {
            log.blocking_append([blank(id_in(2, i))]).await.unwrap();
        }
        let want: Vec<LogId<NodeId>> = (1..20)
            .map(id)
            .chain((20..=30).map(|i| id_in(2, i)))
            .collect();
        assert_eq!(ids(&mut log, ..).await, want);

        log.purge(id_in(2, 25)).await.unwrap();
        let after_purge = segments(path);
        assert!(
            after_purge.first() > after_cut.first(),
            "the purge removed the oldest segments: {after_cut:?} -> {after_purge:?}"
        );
        assert!(
            !segment_path(path, after_cut[0]).exists(),
            "segment {} is gone from the disk",
            after_cut[0]
        );
        assert_eq!(ids(&mut log, ..).await, want[25..].to_vec());

        // The committed id rides with the next append, into a segment that a later purge
        // removes: the log keeps it all the same.
        log.save_committed(Some(id_in(2, 28))).await.unwrap();
        for i in 31..=60 {
            log.blocking_append([blank(id_in(2, i))]).await.unwrap();
        }
        let holding_it = *segments(path).last().unwrap();
        for i in 61..=90 {
            log.blocking_append([blank(id_in(2, i))]).await.unwrap();
        }
        log.purge(id_in(2, 80)).await.unwrap();
        assert!(!segment_path(path, holding_it).exists());
        drop(log);

        let mut log = LogStore::open_with(path, 256).unwrap();
        let want: Vec<LogId<NodeId>> = (81..=90).map(|i| id_in(2, i)).collect();
        assert_eq!(ids(&mut log, ..).await, want);
        assert_eq!(ids(&mut log, 84..=85).await, want[3..5].to_vec());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(id_in(2, 90)));
        assert_eq!(state.last_purged_log_id, Some(id_in(2, 80)));
        assert_eq!(log.read_committed().await.unwrap(), Some(id_in(2, 28)));
    }

    /// A write cut short by a crash at the end of the newest segment was never
    /// acknowledged: the log opens without it, and later appends are read back whole.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_torn_write_at_the_end_is_cut_off() {
        let tmp = tempfile::TempDir::new().unwrap();
        let path = tmp.path();
        drop(filled(path, SEGMENT_BYTES, 10).await);
        let seg = segment_path(path, *segments(path).last().unwrap());
        let whole = fs::read(&seg).unwrap();
        // Half of a next record: a header claiming more than follows.
        let mut torn = Vec::new();
        put_record(&mut torn, KIND_ENTRY, 11, &[7; 100]);
        let mut bytes = whole.clone();
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        fs::write(&seg, &bytes).unwrap();

        let mut log = LogStore::open(path).unwrap();
        assert_eq!(indexes(&mut log, ..).await, (1..=10).collect::<Vec<_>>());
        assert_eq!(fs::read(&seg).unwrap(), whole, "the torn bytes are cut off");
        log.blocking_append([blank(id(11))]).await.unwrap();
        drop(log);

        // The last record's bytes damaged (as a write the disk never finished): it goes.
        let mut bytes = fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let mut log = LogStore::open(path).unwrap();
        assert_eq!(indexes(&mut log, ..).await, (1..=10).collect::<Vec<_>>());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(id(10)));
    }

    /// Damage in a segment that was complete (not the newest) is not a torn write: the
    /// log refuses to open and says which file and where.
    #[tokio::test(flavor = "multi_thread")]
    async fn damage_in_an_older_segment_refuses_to_open() {
        let tmp = tempfile::TempDir::new().unwrap();
        let path = tmp.path();
        drop(filled(path, 256, 40).await);
        let first = segment_path(path, segments(path)[0]);
        let mut bytes = fs::read(&first).unwrap();
        bytes[HEADER + 2] ^= 0xff;
        fs::write(&first, &bytes).unwrap();
        let err = LogStore::open_with(path, 256).unwrap_err().to_string();
        assert!(
            err.contains("is damaged at offset 0")
                && err.contains(&segment_name(segments(path)[0])),
            "{err}"
        );
    }

    /// The redb log of earlier versions is moved into segments at the first open: same
    /// entries, vote, committed and purged ids; the old file is gone.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_log_of_an_earlier_version_is_moved_into_segments() {
        let tmp = tempfile::TempDir::new().unwrap();
        let path = tmp.path();
        let old = path.join(OLD_LOG_FILE);
        let entries: Vec<Entry> = (6..=20).map(|i| blank(id(i))).collect();
        let vote = Vote::new_committed(3, 2);
        old_format::write(&old, vote, Some(id(18)), Some(id(5)), &entries);
        assert!(exists(path));

        for _ in 0..2 {
            let mut log = LogStore::open(path).unwrap();
            assert!(!old.exists(), "the old log is removed once moved");
            assert_eq!(
                ids(&mut log, ..).await,
                (6..=20).map(id).collect::<Vec<_>>()
            );
            assert_eq!(log.read_vote().await.unwrap(), Some(vote));
            assert_eq!(log.read_committed().await.unwrap(), Some(id(18)));
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(id(5)));
            assert_eq!(state.last_log_id, Some(id(20)));
        }
    }

    /// A second open of a log in use (another node process on the same data directory)
    /// is refused with a clear error; once the first is closed, it opens.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_log_in_use_is_not_opened_twice() {
        let tmp = tempfile::TempDir::new().unwrap();
        let log = LogStore::open(tmp.path()).unwrap();
        let err = LogStore::open(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("is in use by another process"), "{err}");
        drop(log);
        LogStore::open(tmp.path()).unwrap();
    }
}

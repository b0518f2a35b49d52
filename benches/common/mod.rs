//! Process plumbing the benchmarks share: the `pigeonair` binary, one-shot commands
//! with a timeout, finding a peer's programs, reading a child's output lines, the
//! temporary directory with the servers started in it (`Lab`), PigeonAir's
//! `status --json` view, and LDAP result codes.

#![allow(dead_code)] // each bench uses its own subset

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The `pigeonair` binary cargo built alongside this benchmark: with the bench profile
/// (optimised, as `--release`) under `cargo bench`, the debug one under `cargo test`.
/// Building it again here with `cargo build --release` would resolve other features
/// than the bench build (no dev-dependencies) and rebuild half the tree each time.
pub fn pigeonair_binary(bench_mode: bool, bench: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pigeonair"));
    assert!(bin.exists(), "{} is missing", bin.display());
    if bench_mode {
        eprintln!("{bench}: using {}", bin.display());
    }
    bin
}

/// Run a one-shot command to completion, killing it after `timeout`; its stdout.
pub fn run_within(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    let stdout = to.join().unwrap_or_default();
    let stderr = te.join().unwrap_or_default();
    match status {
        None => Err(format!(
            "timed out after {timeout:?}; stderr: {}",
            stderr.trim()
        )),
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(format!("{s}; stderr: {}", stderr.trim())),
    }
}

pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/usr/sbin", "/usr/local/sbin", "/usr/local/libexec"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

pub fn line_channel(stdout: std::process::ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Keep draining after the receiver is gone so the child never blocks on stdout.
            let _ = tx.send(line);
        }
    });
    rx
}

/// The last `lines` lines of a log file (empty when it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A long-running child (a PigeonAir node or slapd) and where its stderr goes.
struct Proc {
    name: String,
    log: PathBuf,
    child: Child,
}

/// The temporary directory and every server started in it. Dropping it kills the
/// servers; with `keep`, or during a panic, it keeps the directory and says where, and
/// during a panic it also prints the tail of every server's log.
pub struct Lab {
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    procs: Vec<Proc>,
    keep: bool,
    bench: &'static str,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!(
                    "--- tail of {} log ({}) ---\n{}",
                    p.name,
                    p.log.display(),
                    log_tail(&p.log, 30)
                );
            }
        }
        if self.keep || std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!("{}: kept {}", self.bench, d.keep().display());
            }
        }
    }
}

impl Lab {
    /// A new temporary directory `pigeonair-<bench>-*` (underscores as dashes).
    pub fn new(bench: &'static str, keep: bool) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pigeonair-{}-", bench.replace('_', "-")))
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        Lab {
            dir: Some(dir),
            root,
            procs: Vec::new(),
            keep,
            bench,
        }
    }

    /// Where the child `name` writes its stderr: `<root>/<name>.log`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.log"))
    }

    /// Start `cmd` as `name` with stderr appended to its log; its stdout lines, drained
    /// also when the receiver is dropped. A name may be started again once its
    /// previous process has exited or been stopped.
    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> Receiver<String> {
        if let Some(p) = self.procs.iter_mut().find(|p| p.name == name) {
            assert!(
                !matches!(p.child.try_wait(), Ok(None)),
                "{name} already runs"
            );
        }
        let log = self.log_path(name);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let lines = line_channel(child.stdout.take().expect("piped"));
        let p = Proc {
            name: name.to_string(),
            log,
            child,
        };
        match self.procs.iter_mut().find(|p| p.name == name) {
            Some(old) => *old = p,
            None => self.procs.push(p),
        }
        lines
    }

    fn proc_mut(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// The process id of the child `name`.
    pub fn pid(&self, name: &str) -> u32 {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// Panics, with the tail of its log, when the child `name` has exited.
    pub fn check_alive(&mut self, name: &str) {
        let p = self.proc_mut(name);
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("{name} exited ({status}); log:\n{}", log_tail(&p.log, 40));
        }
    }

    /// Kill the child `name` and wait for it.
    pub fn stop(&mut self, name: &str) {
        let p = self.proc_mut(name);
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    /// Try `bind` (an administrator's bind to the server `name`) every `poll` until it
    /// succeeds; the time from this call until then. Panics when `name` exits first or
    /// after `timeout`.
    pub fn wait_admin_bind(
        &mut self,
        name: &str,
        timeout: Duration,
        poll: Duration,
        mut bind: impl FnMut() -> Result<(), String>,
    ) -> Duration {
        let started = Instant::now();
        loop {
            self.check_alive(name);
            match bind() {
                Ok(()) => return started.elapsed(),
                Err(e) => assert!(
                    started.elapsed() < timeout,
                    "{name} did not accept the administrator's bind within {timeout:?}: {e}"
                ),
            }
            std::thread::sleep(poll);
        }
    }
}

/// One node as `pigeonair status --json` reports it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeStat {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub applied: u64,
    pub voters: Vec<u64>,
    pub digest: String,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub error: Option<String>,
}

/// `pigeonair status --json`: every node the queried node knows of.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StatusView {
    pub nodes: Vec<NodeStat>,
}

impl StatusView {
    /// The leader every listed node agrees on, when `expect` nodes are listed, all
    /// reachable, exactly one of them is leader, and each reports `voters` voters.
    pub fn agreed_leader(&self, expect: usize, voters: usize) -> Option<u64> {
        if self.nodes.len() != expect || self.nodes.iter().any(|n| n.error.is_some()) {
            return None;
        }
        let leaders: Vec<&NodeStat> = self.nodes.iter().filter(|n| n.role == "leader").collect();
        if leaders.len() != 1 {
            return None;
        }
        let l = leaders[0].id;
        let all = self
            .nodes
            .iter()
            .all(|n| n.leader == Some(l) && n.voters.len() == voters);
        all.then_some(l)
    }

    /// The leader and its term, when `expect` nodes agree on it (each with `expect`
    /// voters) and report the same applied index and the same, non-empty, digest.
    pub fn converged(&self, expect: usize) -> Option<(u64, u64)> {
        let l = self.agreed_leader(expect, expect)?;
        let first = &self.nodes[0];
        let same = self.nodes.iter().all(|n| {
            n.applied == first.applied && n.digest == first.digest && !n.digest.is_empty()
        });
        let term = self.nodes.iter().find(|n| n.role == "leader")?.term;
        same.then_some((l, term))
    }

    /// One line per node, for a timeout's panic message.
    pub fn brief(&self) -> String {
        self.nodes
            .iter()
            .map(|n| match &n.error {
                Some(e) => format!("[{}: unreachable: {e}]", n.id),
                None => format!(
                    "[{}: {} term {} leader {:?} applied {} voters {:?} digest {}]",
                    n.id,
                    n.role,
                    n.term,
                    n.leader,
                    n.applied,
                    n.voters,
                    &n.digest[..n.digest.len().min(12)]
                ),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `Ok` when the server answered `op` on `dn` with success (rc 0); otherwise
/// `"<op> <dn>: rc <rc> <text>"`.
pub fn check_rc(op: &str, dn: &str, r: &ldap3::LdapResult) -> Result<(), String> {
    if r.rc == 0 {
        Ok(())
    } else {
        Err(format!("{op} {dn}: rc {} {}", r.rc, r.text))
    }
}

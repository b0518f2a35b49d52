//! A cluster of real `pigeonair` processes on loopback addresses, and what the tests
//! ask of it: write each node's configuration, `init`, `run`, join with tokens, read
//! `pigeonair status --json`, SIGKILL and restart nodes, wait on observable state, talk
//! LDAP to any node, and keep a write load running.
//!
//! Addresses: node `i` of a cluster on subnet `S` listens on `127.0.S.(base+i)`, LDAP
//! on port 3389, SMTP (MX) on 2525 and the cluster port on 7400; every test uses its own subnet, so tests
//! run in parallel and a restarted node keeps its address. Processes are killed and the
//! temporary directory removed when the [`TestCluster`] is dropped; when a test fails,
//! the tail of every node's log is printed and the directory is kept for a post-mortem.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The administrator's DN (the default suffix).
pub const ADMIN_DN: &str = "cn=admin,ou=system,dc=pigeonair";
/// The administrator's password given to `pigeonair init`.
pub const ADMIN_PW: &str = "cluster-test-pw";
/// The naming context.
pub const SUFFIX: &str = "dc=pigeonair";

/// The LDAP port of every node (the addresses differ).
const LDAP_PORT: u16 = 3389;
/// The cluster port of every node.
const CLUSTER_PORT: u16 = 7400;
/// The SMTP (MX) port of every node.
const SMTP_PORT: u16 = 2525;
/// The POP3 port of every node.
const POP3_PORT: u16 = 1110;
const IMAP_PORT: u16 = 1143;
/// Every node's `[mail]` table: SMTP on its own address, and retries of a deferred
/// delivery after 1 s, then every 2 s, so a test sees a node that came back get its mail
/// within seconds.
const MAIL_SETTINGS: &str = "retry_first_secs = 1\nretry_max_secs = 2\n";
/// How long a node may take to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a one-shot command (`init`, `status`, `token ...`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a writer waits before it connects again after a failed connect.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// The `pigeonair` binary of this workspace, built once per test process.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "--bin", "pigeonair", "--manifest-path"])
            .arg(&manifest)
            .status()
            .expect("cargo build");
        assert!(status.success(), "building pigeonair failed");
        let exe = std::env::current_exe().expect("test executable path");
        exe.ancestors()
            .nth(2)
            .expect("target dir")
            .join("pigeonair")
    })
}

/// Call `probe` until it returns `Some` or `deadline` passes; returns what it returned.
///
/// This is the harness's one polling loop, for state a test can only observe by asking
/// a node: every probe that goes through it runs a command or a query against the
/// cluster, and that round trip paces the loop. State the harness itself holds (the
/// acknowledgements of a [`WriteLoad`], a command's exit) is waited for with blocking
/// waits instead. `probe` runs once more when the deadline is reached.
pub fn poll_until<T>(deadline: Instant, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// Poll `probe` until it returns `Some`, at most `timeout`; panics naming `what` when
/// the deadline passes.
#[track_caller]
pub fn wait_until<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Option<T>) -> T {
    match poll_until(Instant::now() + timeout, probe) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting until {what}"),
    }
}

/// Run a command to completion, killing it if it outlives `timeout`.
fn output_within(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a command");
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out_pipe, &mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err_pipe, &mut buf);
        buf
    });
    // A thread blocks in `wait` and hands the exit status over; this thread waits for it
    // with the deadline.
    let pid = child.id();
    let (tx, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match exited.recv_timeout(timeout) {
        Ok(status) => status.expect("wait for a command"),
        Err(RecvTimeoutError::Timeout) => {
            // The waiter owns the `Child`, so SIGKILL goes by pid through kill(1) (the
            // tests do not link libc). The pid stays the command's until the waiter reaps
            // it; only a command exiting in the instant between the deadline and the kill
            // frees it first, and Linux hands pids out in turn, not a freed one at once.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let status = match exited.recv_timeout(COMMAND_TIMEOUT) {
                Ok(status) => status.expect("reap a killed command"),
                Err(e) => panic!("a command (pid {pid}) outlived SIGKILL: {e}"),
            };
            let mut stderr = err.join().unwrap_or_default();
            stderr.extend_from_slice(b"\n[killed by the test: it did not exit in time]");
            return Output {
                status,
                stdout: out.join().unwrap_or_default(),
                stderr,
            };
        }
        Err(RecvTimeoutError::Disconnected) => panic!("the thread waiting for a command died"),
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// One member as `pigeonair status --json` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: u64,
    pub name: String,
    pub addr: String,
    /// `leader`, `follower`, `learner` or `candidate`.
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub applied: u64,
    pub last_log: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// On a leader: each member's matched log index.
    pub replication: Vec<(u64, Option<u64>)>,
    pub digest: String,
    pub members: Vec<(u64, String)>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
}

/// A member the queried node could not get a status from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    pub id: u64,
    pub addr: String,
    pub error: String,
}

/// The whole cluster as one node sees it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub up: Vec<NodeView>,
    pub down: Vec<Unreachable>,
}

impl ClusterView {
    /// Parse the output of `pigeonair status --json`.
    pub fn parse(text: &str) -> Result<ClusterView, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("{e}: {text}"))?;
        let nodes = v["nodes"]
            .as_array()
            .ok_or_else(|| format!("no `nodes` array: {text}"))?;
        let mut view = ClusterView {
            up: Vec::new(),
            down: Vec::new(),
        };
        for n in nodes {
            if let Some(error) = n.get("error") {
                view.down.push(Unreachable {
                    id: n["id"].as_u64().unwrap_or_default(),
                    addr: n["addr"].as_str().unwrap_or_default().to_string(),
                    error: error.to_string(),
                });
            } else {
                view.up
                    .push(node_view(n).ok_or_else(|| format!("bad node: {n}"))?);
            }
        }
        Ok(view)
    }

    /// The status of node `id`, if it answered.
    pub fn node(&self, id: u64) -> Option<&NodeView> {
        self.up.iter().find(|n| n.id == id)
    }

    /// The leader every answering node agrees on, if they agree, that leader answered
    /// and calls itself leader.
    pub fn agreed_leader(&self) -> Option<u64> {
        let first = self.up.first()?.leader?;
        let agree = self.up.iter().all(|n| n.leader == Some(first));
        let leads = self.node(first).is_some_and(|n| n.role == "leader");
        (agree && leads).then_some(first)
    }
}

fn ids(v: &Value) -> Option<Vec<u64>> {
    let mut out: Vec<u64> = v.as_array()?.iter().filter_map(Value::as_u64).collect();
    out.sort_unstable();
    Some(out)
}

fn node_view(n: &Value) -> Option<NodeView> {
    Some(NodeView {
        id: n["id"].as_u64()?,
        name: n["name"].as_str()?.to_string(),
        addr: n["addr"].as_str()?.to_string(),
        role: n["role"].as_str()?.to_string(),
        term: n["term"].as_u64()?,
        leader: n["leader"].as_u64(),
        applied: n["applied"].as_u64()?,
        last_log: n["last_log"].as_u64()?,
        voters: ids(&n["voters"])?,
        learners: ids(&n["learners"])?,
        replication: n["replication"]
            .as_array()?
            .iter()
            .filter_map(|p| Some((p[0].as_u64()?, p[1].as_u64())))
            .collect(),
        digest: n["digest"].as_str()?.to_string(),
        members: n["members"]
            .as_array()?
            .iter()
            .filter_map(|p| Some((p[0].as_u64()?, p[1].as_str()?.to_string())))
            .collect(),
        snapshot_index: n["snapshot_index"].as_u64(),
        purged_index: n["purged_index"].as_u64(),
    })
}

/// A running node process (killed when dropped).
pub struct TestNode {
    child: Child,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a `pigeonair join` that was expected to be refused ended.
#[derive(Debug)]
pub struct Refusal {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Up to `n` nodes of one cluster on one loopback subnet.
pub struct TestCluster {
    subnet: u8,
    host_base: u8,
    cluster_settings: String,
    mail_settings: String,
    dir: Option<tempfile::TempDir>,
    /// The running nodes by index (1-based).
    nodes: BTreeMap<usize, TestNode>,
    /// Node ids by index, kept while a node is down.
    ids: BTreeMap<usize, u64>,
    attempts: usize,
}

impl TestCluster {
    /// A cluster whose node `i` will listen on `127.0.subnet.i`.
    pub fn new(subnet: u8) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pigeonair-ct-{subnet}-"))
            .tempdir()
            .expect("temporary directory");
        TestCluster {
            subnet,
            host_base: 0,
            cluster_settings: String::new(),
            mail_settings: String::new(),
            dir: Some(dir),
            nodes: BTreeMap::new(),
            ids: BTreeMap::new(),
            attempts: 0,
        }
    }

    /// Put node `i` on `127.0.subnet.(base+i)` (a second cluster in the same test).
    pub fn with_host_base(mut self, base: u8) -> TestCluster {
        self.host_base = base;
        self
    }

    /// Extra lines for every node's `[cluster]` table (`snapshot_every = 50`).
    pub fn with_cluster_settings(mut self, lines: &str) -> TestCluster {
        self.cluster_settings = lines.to_string();
        self
    }

    /// Extra lines for every node's `[mail]` table (`submission_listen = [...]`).
    pub fn with_mail_settings(mut self, lines: &str) -> TestCluster {
        self.mail_settings = lines.to_string();
        self
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("directory").path()
    }

    /// A path for a scratch file in the cluster's temporary directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    fn host(&self, i: usize) -> String {
        format!("127.0.{}.{}", self.subnet, self.host_base as usize + i)
    }

    /// Node `i`'s cluster address (`host:7400`).
    pub fn cluster_addr(&self, i: usize) -> String {
        format!("{}:{CLUSTER_PORT}", self.host(i))
    }

    /// Node `i`'s SMTP (MX) address (`host:2525`).
    pub fn smtp_addr(&self, i: usize) -> String {
        format!("{}:{SMTP_PORT}", self.host(i))
    }

    /// Node `i`'s POP3 address (`host:1110`).
    pub fn pop3_addr(&self, i: usize) -> String {
        format!("{}:{POP3_PORT}", self.host(i))
    }

    /// Node `i`'s IMAP address (`host:1143`).
    pub fn imap_addr(&self, i: usize) -> String {
        format!("{}:{IMAP_PORT}", self.host(i))
    }

    /// Node `i`'s data directory (`[node] data_dir`; its mail store is `mail/` in it).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir().join(format!("data-n{i}"))
    }

    /// Node `i`'s LDAP URL.
    pub fn url(&self, i: usize) -> String {
        format!("ldap://{}:{LDAP_PORT}", self.host(i))
    }

    /// Node `i`'s configuration file (written on first use).
    pub fn config(&self, i: usize) -> PathBuf {
        self.config_file(&format!("n{i}"), &self.host(i))
    }

    fn config_file(&self, name: &str, host: &str) -> PathBuf {
        let path = self.dir().join(format!("{name}.toml"));
        if !path.exists() {
            let data = self.dir().join(format!("data-{name}"));
            let text = format!(
                "[node]\nname = \"{name}\"\ndata_dir = {:?}\n\n[ldap]\nlisten = [\"{host}:{LDAP_PORT}\"]\n\n\
                 [cluster]\nlisten = \"{host}:{CLUSTER_PORT}\"\nheartbeat_ms = 100\nelection_timeout_min_ms = 300\n\
                 election_timeout_max_ms = 600\nwrite_timeout_ms = 5000\n{}\n\n\
                 [mail]\nsmtp_listen = [\"{host}:{SMTP_PORT}\"]\npop3_listen = [\"{host}:{POP3_PORT}\"]\nimap_listen = [\"{host}:{IMAP_PORT}\"]\n{MAIL_SETTINGS}{}\n",
                data.display().to_string(),
                self.cluster_settings,
                self.mail_settings,
            );
            std::fs::write(&path, text).expect("write a node configuration");
        }
        path
    }

    fn log(&self, i: usize) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(format!("n{i}.log")))
            .expect("node log file")
    }

    /// Run `pigeonair ARGS --config n<i>.toml` to completion.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .arg("--config")
            .arg(self.config(i))
            .env("NO_COLOR", "1");
        output_within(cmd, COMMAND_TIMEOUT)
    }

    /// Like [`TestCluster::cli`], panicking unless it succeeds; returns stdout.
    #[track_caller]
    pub fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        assert!(
            out.status.success(),
            "pigeonair {args:?} on node {i}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `pigeonair init` on node 1: a new one-voter cluster.
    pub fn init(&mut self) {
        self.cli_ok(1, &["init", "--admin-password", ADMIN_PW]);
    }

    /// Spawn `pigeonair ARGS --config n<i>.toml` as node `i` and wait for `ready`.
    fn spawn_node(&mut self, i: usize, args: &[&str]) -> u64 {
        assert!(!self.nodes.contains_key(&i), "node {i} is already running");
        let mut child = Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(self.config(i))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(self.log(i))
            .spawn()
            .expect("spawn pigeonair");
        let lines = line_channel(child.stdout.take().expect("stdout"));
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut id = None;
        let mut url = String::new();
        let mut seen = Vec::new();
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(u) = line.strip_prefix("ldap: ") {
                        url = u.to_string();
                    }
                    if let Some(n) = line.strip_prefix("node: ") {
                        id = n.trim().parse().ok();
                    }
                    let ready = line == "ready";
                    seen.push(line);
                    if ready {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("reap pigeonair");
                    panic!(
                        "node {i} ({args:?}) exited with {status} before `ready`; stdout {seen:?}\n{}",
                        self.log_tail(i, 30)
                    );
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {i} ({args:?}) not ready in {READY_TIMEOUT:?}; stdout {seen:?}\n{}",
                    self.log_tail(i, 30)
                );
            }
        }
        // Keep draining stdout so the node never blocks writing to it.
        std::thread::spawn(move || for _ in lines {});
        let id = id.unwrap_or_else(|| panic!("node {i} printed no `node: ID` line: {seen:?}"));
        assert_eq!(url, self.url(i), "node {i} LDAP address");
        self.nodes.insert(i, TestNode { child });
        self.ids.insert(i, id);
        id
    }

    /// `pigeonair run` node `i` (first start after `init`, or a restart).
    pub fn start(&mut self, i: usize) -> u64 {
        self.spawn_node(i, &["run"])
    }

    /// Restart a stopped node with `pigeonair run`; its id must not change.
    pub fn restart(&mut self, i: usize) {
        let before = self.ids.get(&i).copied();
        let id = self.start(i);
        assert_eq!(Some(id), before, "node {i} kept its id across a restart");
    }

    /// A join token made on node `via` (`extra` e.g. `["--uses", "2"]`).
    pub fn token(&self, via: usize, extra: &[&str]) -> String {
        let mut args = vec!["token", "create"];
        args.extend_from_slice(extra);
        let out = self.cli_ok(via, &args);
        let token = out.trim().to_string();
        assert!(token.starts_with("PA1."), "a token: {out}");
        token
    }

    /// `pigeonair join` node `i` through node 1 with `token`; returns its id once it is
    /// `ready`.
    pub fn join(&mut self, i: usize, token: &str) -> u64 {
        let peer = self.cluster_addr(1);
        self.spawn_node(i, &["join", "--token", token, "--peer", &peer])
    }

    /// A fresh node (never started) tries to join through `peer` with `token`; the
    /// process must exit on its own. Panics if it starts serving instead.
    pub fn try_join(&mut self, token: &str, peer: &str) -> Refusal {
        self.attempts += 1;
        // Each attempt gets a configuration of its own, on an address no node uses.
        assert!(self.attempts < 15, "too many join attempts for one cluster");
        let host = format!("127.0.{}.{}", self.subnet, 240 + self.attempts);
        let config = self.config_file(&format!("joiner{}", self.attempts), &host);
        let mut cmd = Command::new(binary());
        cmd.args(["join", "--token", token, "--peer", peer, "--config"])
            .arg(config)
            .env("NO_COLOR", "1");
        let out = output_within(cmd, Duration::from_secs(20));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !stdout.contains("ready") && !stdout.contains("joined cluster"),
            "a join that should be refused was accepted: {stdout}"
        );
        Refusal {
            success: out.status.success(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// SIGKILL node `i` (no shutdown, no flush beyond what the node already made durable).
    pub fn kill9(&mut self, i: usize) {
        let node = self
            .nodes
            .remove(&i)
            .unwrap_or_else(|| panic!("node {i} is not running"));
        drop(node); // Child::kill is SIGKILL
    }

    /// The indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        self.nodes.keys().copied().collect()
    }

    /// Node `i`'s id (also while it is down).
    pub fn id(&self, i: usize) -> u64 {
        self.ids[&i]
    }

    /// The index of the node with id `id`.
    pub fn index_of(&self, id: u64) -> usize {
        *self
            .ids
            .iter()
            .find(|(_, v)| **v == id)
            .unwrap_or_else(|| panic!("no node with id {id}"))
            .0
    }

    /// Node `i`'s mail queue as `pigeonair queue list --json` reports it: one JSON
    /// object per queued message (`id`, `recipients` with `rcpt`, `done`, `attempts`,
    /// `last_error`, ...).
    pub fn queue(&self, i: usize) -> Result<Vec<Value>, String> {
        let out = self.cli(i, &["queue", "list", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str(&text) {
            Ok(Value::Array(list)) => Ok(list),
            Ok(other) => Err(format!("not a list: {other}")),
            Err(e) => Err(format!("{e}: {text}")),
        }
    }

    /// `pigeonair status --json` through node `via`.
    pub fn status(&self, via: usize) -> Result<ClusterView, String> {
        let out = self.cli(via, &["status", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        ClusterView::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Wait until every node in `nodes` answers, all agree on one leader among them,
    /// and that leader calls itself leader; returns the leader's index.
    #[track_caller]
    pub fn wait_leader(&self, nodes: &[usize], timeout: Duration) -> usize {
        let via = nodes[0];
        let want: Vec<u64> = nodes.iter().map(|i| self.id(*i)).collect();
        wait_until("the nodes agree on a leader", timeout, || {
            let view = self.status(via).ok()?;
            let leader = view.agreed_leader()?;
            let all_up = want.iter().all(|id| view.node(*id).is_some());
            (all_up && want.contains(&leader)).then(|| self.index_of(leader))
        })
    }

    /// Wait until every node in `nodes` reports the same applied index and digest (and
    /// nothing is left in any log beyond what is applied); returns them.
    #[track_caller]
    pub fn wait_converged(&self, nodes: &[usize], timeout: Duration) -> (u64, String) {
        let via = nodes[0];
        let want: Vec<u64> = nodes.iter().map(|i| self.id(*i)).collect();
        let mut last = None;
        let converged = poll_until(Instant::now() + timeout, || {
            let view = self.status(via).ok()?;
            let views: Option<Vec<&NodeView>> = want.iter().map(|id| view.node(*id)).collect();
            if let Some(views) = views {
                let first = views[0];
                if views.iter().all(|v| {
                    v.applied == first.applied
                        && v.digest == first.digest
                        && v.last_log == first.applied
                }) {
                    return Some((first.applied, first.digest.clone()));
                }
            }
            last = Some(view);
            None
        });
        match converged {
            Some(converged) => converged,
            None => panic!(
                "nodes {nodes:?} did not converge within {timeout:?}; last status: {last:#?}"
            ),
        }
    }

    /// An `ldap3` connection to node `i`, bound as the administrator.
    pub fn ldap(&self, i: usize) -> ldap3::LdapConn {
        admin_conn(&self.url(i)).unwrap_or_else(|e| panic!("LDAP to node {i}: {e}"))
    }

    /// The DNs (lower case) of [`WriteLoad`] entries with `prefix` on node `i`'s replica.
    pub fn entries_with_prefix(&self, i: usize, prefix: &str) -> HashSet<String> {
        let mut conn = self.ldap(i);
        let (entries, res) = conn
            .with_timeout(Duration::from_secs(30))
            .search(
                SUFFIX,
                ldap3::Scope::Subtree,
                &format!("(ou={prefix}-*)"),
                vec!["ou"],
            )
            .unwrap_or_else(|e| panic!("search on node {i}: {e}"))
            .success()
            .unwrap_or_else(|e| panic!("search on node {i}: {e}"));
        assert_eq!(res.rc, 0);
        entries
            .into_iter()
            .map(|e| ldap3::SearchEntry::construct(e).dn.to_ascii_lowercase())
            .collect()
    }

    /// Check that every acknowledged write of the [`WriteLoad`] with `prefix` is on each
    /// of `nodes`.
    #[track_caller]
    pub fn assert_all_present(&self, nodes: &[usize], prefix: &str, acked: &[String]) {
        for &i in nodes {
            let found = self.entries_with_prefix(i, prefix);
            let missing: Vec<&String> = acked
                .iter()
                .filter(|dn| !found.contains(&dn.to_ascii_lowercase()))
                .collect();
            assert!(
                missing.is_empty(),
                "node {i} lacks {} of {} acknowledged writes, e.g. {:?}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(5)]
            );
        }
    }

    /// The last `n` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, n: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir().join(format!("n{i}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- last lines of node {i}'s log ---\n{}",
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }

    /// A three-voter cluster: `init` node 1, then nodes 2 and 3 join; returns once all
    /// three are voters agreeing on a leader.
    pub fn three_voters(subnet: u8) -> TestCluster {
        TestCluster::new(subnet).start_three_voters()
    }

    /// [`TestCluster::three_voters`] for a cluster already configured (host base,
    /// settings).
    pub fn start_three_voters(self) -> TestCluster {
        let mut c = self;
        c.init();
        c.start(1);
        for i in 2..=3 {
            let token = c.token(1, &[]);
            c.join(i, &token);
        }
        c.wait_voters(&[1, 2, 3], Duration::from_secs(30));
        c
    }

    /// Wait until every node in `voters` answers as a voter, the voter set is exactly
    /// those nodes on every answering node, and they agree on a leader.
    #[track_caller]
    pub fn wait_voters(&self, voters: &[usize], timeout: Duration) -> ClusterView {
        let mut want: Vec<u64> = voters.iter().map(|i| self.id(*i)).collect();
        want.sort_unstable();
        wait_until("the voter set is complete", timeout, || {
            let view = self.status(voters[0]).ok()?;
            let ok = view.down.is_empty()
                && view.up.iter().all(|n| n.voters == want)
                && view.agreed_leader().is_some();
            ok.then_some(view)
        })
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let indexes: Vec<usize> = self.ids.keys().copied().collect();
        self.nodes.clear(); // kills every process
        if std::thread::panicking() {
            for i in indexes {
                eprintln!("{}", self.log_tail(i, 25));
            }
            if let Some(dir) = self.dir.take() {
                eprintln!("kept {} for a post-mortem", dir.keep().display());
            }
        }
    }
}

fn line_channel(stdout: std::process::ChildStdout) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// An `ldap3` connection to `url` bound as the administrator (5 s connect timeout).
pub fn admin_conn(url: &str) -> Result<ldap3::LdapConn, String> {
    let settings = ldap3::LdapConnSettings::new().set_conn_timeout(Duration::from_secs(5));
    let mut conn = ldap3::LdapConn::with_settings(settings, url).map_err(|e| e.to_string())?;
    let res = conn
        .with_timeout(Duration::from_secs(10))
        .simple_bind(ADMIN_DN, ADMIN_PW)
        .map_err(|e| e.to_string())?;
    if res.rc != 0 {
        return Err(format!("bind: {res:?}"));
    }
    Ok(conn)
}

/// Add `ou=<name>,dc=pigeonair` as an organizational unit; returns the result code.
pub fn add_unit(conn: &mut ldap3::LdapConn, name: &str) -> Result<u32, String> {
    let dn = format!("ou={name},{SUFFIX}");
    conn.with_timeout(Duration::from_secs(15))
        .add(
            &dn,
            vec![
                ("objectClass", HashSet::from(["top", "organizationalUnit"])),
                ("ou", HashSet::from([name])),
            ],
        )
        .map(|r| r.rc)
        .map_err(|e| e.to_string())
}

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    pub dn: String,
    pub at: Instant,
}

/// Writer threads adding unique entries through given nodes until stopped, bounded in
/// count and time. Only adds answered with result code 0 count as acknowledged.
pub struct WriteLoad {
    stop: Arc<StopSignal>,
    acks: Arc<Acks>,
    threads: Vec<JoinHandle<WriterOutcome>>,
    started: Instant,
}

/// What one writer thread saw besides its acknowledgements.
struct WriterOutcome {
    failures: BTreeMap<String, u64>,
    refused: Vec<(String, u32)>,
}

/// What a stopped [`WriteLoad`] did.
#[derive(Debug)]
pub struct LoadReport {
    pub acked: Vec<Ack>,
    /// Failures by kind (`rc 52`, connection errors, ...).
    pub failures: BTreeMap<String, u64>,
    /// Adds answered with a result code other than 0: (DN, code).
    pub refused: Vec<(String, u32)>,
}

impl LoadReport {
    /// The DNs acknowledged.
    pub fn dns(&self) -> Vec<String> {
        self.acked.iter().map(|a| a.dn.clone()).collect()
    }

    /// The longest time between two consecutive acknowledgements (all writers together).
    pub fn longest_gap(&self) -> Duration {
        let mut times: Vec<Instant> = self.acked.iter().map(|a| a.at).collect();
        times.sort_unstable();
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}

impl WriteLoad {
    /// One writer per URL; entries are `ou=<prefix>-w<k>-<n>,dc=pigeonair`. Each writer
    /// stops after `max_writes` attempts or `max_time`, whichever comes first.
    pub fn start(
        urls: &[String],
        prefix: &str,
        max_writes: usize,
        max_time: Duration,
    ) -> WriteLoad {
        let stop = Arc::new(StopSignal::default());
        let acks = Arc::new(Acks::default());
        let started = Instant::now();
        let threads = urls
            .iter()
            .enumerate()
            .map(|(k, url)| {
                let (stop, acks, url) = (stop.clone(), acks.clone(), url.clone());
                let prefix = format!("{prefix}-w{k}");
                std::thread::spawn(move || {
                    write_until_stopped(&url, &prefix, max_writes, started + max_time, &stop, &acks)
                })
            })
            .collect();
        WriteLoad {
            stop,
            acks,
            threads,
            started,
        }
    }

    /// Wait until at least `n` writes were acknowledged after `t`: woken by each
    /// acknowledgement, at most `timeout`.
    #[track_caller]
    pub fn wait_acked_since(&self, t: Instant, n: usize, timeout: Duration) {
        let list = self.acks.list.lock().unwrap();
        let (list, _) = self
            .acks
            .added
            .wait_timeout_while(list, timeout, |l| Acks::since(l, t) < n)
            .unwrap();
        let have = Acks::since(&list, t);
        assert!(
            have >= n,
            "timed out after {timeout:?} waiting until {n} writes are acknowledged (have {have})"
        );
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stop every writer and collect what they did.
    pub fn stop(self) -> LoadReport {
        self.stop.raise();
        let mut failures = BTreeMap::new();
        let mut refused = Vec::new();
        for t in self.threads {
            let outcome = t.join().expect("writer thread");
            for (k, v) in outcome.failures {
                *failures.entry(k).or_insert(0) += v;
            }
            refused.extend(outcome.refused);
        }
        let acked = std::mem::take(&mut *self.acks.list.lock().unwrap());
        LoadReport {
            acked,
            failures,
            refused,
        }
    }
}

/// The acknowledged writes of a load; waiters wake on each new one.
#[derive(Default)]
struct Acks {
    list: Mutex<Vec<Ack>>,
    added: Condvar,
}

impl Acks {
    fn push(&self, ack: Ack) {
        self.list.lock().unwrap().push(ack);
        self.added.notify_all();
    }

    /// How many of `list` were acknowledged after `t`.
    fn since(list: &[Ack], t: Instant) -> usize {
        list.iter().filter(|a| a.at > t).count()
    }
}

/// Told once that the writers must stop; a writer waiting on it wakes at once.
#[derive(Default)]
struct StopSignal {
    raised: Mutex<bool>,
    changed: Condvar,
}

impl StopSignal {
    fn raise(&self) {
        *self.raised.lock().unwrap() = true;
        self.changed.notify_all();
    }

    fn is_raised(&self) -> bool {
        *self.raised.lock().unwrap()
    }

    /// Block until the signal is raised, at most `timeout`.
    fn wait_at_most(&self, timeout: Duration) {
        let raised = self.raised.lock().unwrap();
        let _ = self
            .changed
            .wait_timeout_while(raised, timeout, |raised| !*raised)
            .unwrap();
    }
}

fn write_until_stopped(
    url: &str,
    prefix: &str,
    max_writes: usize,
    deadline: Instant,
    stop: &StopSignal,
    acks: &Acks,
) -> WriterOutcome {
    let mut failures = BTreeMap::new();
    let mut refused = Vec::new();
    let mut conn = None;
    let mut n = 0;
    while n < max_writes && !stop.is_raised() && Instant::now() < deadline {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match admin_conn(url) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    *failures.entry("connect".to_string()).or_insert(0) += 1;
                    // Pause before reconnecting, never past the deadline, and not at all
                    // once the load is stopped.
                    stop.wait_at_most(
                        deadline
                            .saturating_duration_since(Instant::now())
                            .min(RECONNECT_PAUSE),
                    );
                    continue;
                }
            },
        };
        // A fresh name for every attempt: a failed add may still have been applied.
        let name = format!("{prefix}-{n}");
        n += 1;
        match add_unit(c, &name) {
            Ok(0) => acks.push(Ack {
                dn: format!("ou={name},{SUFFIX}"),
                at: Instant::now(),
            }),
            Ok(rc) => {
                *failures.entry(format!("rc {rc}")).or_insert(0) += 1;
                refused.push((format!("ou={name},{SUFFIX}"), rc));
            }
            Err(_) => {
                *failures.entry("connection".to_string()).or_insert(0) += 1;
                conn = None;
            }
        }
    }
    WriterOutcome { failures, refused }
}

//! Failover benchmark: a real three-voter PigeonAir cluster on loopback, measured from
//! the outside with an LDAP client (`ldap3`), the way an operator would see it.
//!
//! 1. Build `pigeonair` (release), `init` node 1, `run` it, join nodes 2 and 3 with
//!    tokens, and wait until every node reports three voters and the same leader.
//! 2. Replication lag: add entries through the leader's LDAP and time, from the add's
//!    acknowledgement, until each follower's LDAP returns the entry.
//! 3. Leader kill, N rounds: one writer (unique adds) and one reader (local searches)
//!    per node; SIGKILL the leader; measure the longest gap between acknowledged adds
//!    across all writers; wait for a new leader; keep writing about a second; restart the
//!    killed node; wait until all three report the same applied index and digest; then
//!    check that every acknowledged add is on every node.
//!
//! `cargo bench --bench failover` runs 10 rounds; `-- --rounds 2` fewer; `-- --keep`
//! keeps the temporary directory (configs, data, logs); `-- --heartbeat-ms 100
//! --election-timeout-ms 300-600` overrides the project's default Raft timing;
//! `--lag-samples N` sets the number of replication-lag samples (200). Without `--bench` (that is,
//! under `cargo test --benches`) it runs a one-round smoke pass with the test-profile
//! binary. Every child process is killed when the program ends, also on a panic.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Lab, NodeStat, StatusView};
use ldap3::{LdapConn, LdapConnSettings, Scope};

const ADMIN_DN: &str = "cn=admin,ou=system,dc=pigeonair";
const ADMIN_PW: &str = "failover-bench-pw";
const BENCH_OU: &str = "ou=failover,dc=pigeonair";
const NODES: usize = 3;
const LDAP_PORT: u16 = 3389;
const CLUSTER_PORT: u16 = 7400;
/// The goal for the median write unavailability.
const GOAL_MS: f64 = 500.0;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);
const LAG_DEADLINE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

fn host(i: usize) -> String {
    format!("127.0.30.{}", i + 1)
}

// ---------------------------------------------------------------------------------
// Options

struct Opts {
    rounds: usize,
    lag_samples: usize,
    keep: bool,
    bench_mode: bool,
    timing: Timing,
}

/// Raft timing of the nodes: the project's defaults (`[cluster]` in `src/config.rs`)
/// unless `--heartbeat-ms` / `--election-timeout-ms MIN-MAX` override them, in which
/// case the values are written into every node's configuration.
#[derive(Clone, Copy)]
struct Timing {
    heartbeat_ms: u64,
    election_min_ms: u64,
    election_max_ms: u64,
    explicit: bool,
}

impl Timing {
    fn defaults() -> Timing {
        let c = pigeonair::config::ClusterConfig::default();
        Timing {
            heartbeat_ms: c.heartbeat_ms,
            election_min_ms: c.election_timeout_min_ms,
            election_max_ms: c.election_timeout_max_ms,
            explicit: false,
        }
    }

    fn toml(&self) -> String {
        if !self.explicit {
            return String::new();
        }
        format!(
            "heartbeat_ms = {}\nelection_timeout_min_ms = {}\nelection_timeout_max_ms = {}\n",
            self.heartbeat_ms, self.election_min_ms, self.election_max_ms
        )
    }
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let mut o = Opts {
        rounds: if bench_mode { 10 } else { 1 },
        lag_samples: if bench_mode { 200 } else { 20 },
        keep: false,
        bench_mode,
        timing: Timing::defaults(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => {}
            "--keep" => o.keep = true,
            "--rounds" => o.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--lag-samples" => {
                o.lag_samples = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--lag-samples N")
            }
            "--heartbeat-ms" => {
                o.timing.heartbeat_ms = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--heartbeat-ms N");
                o.timing.explicit = true;
            }
            "--election-timeout-ms" => {
                let (min, max) = it
                    .next()
                    .and_then(|v| v.split_once('-'))
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .expect("--election-timeout-ms MIN-MAX");
                o.timing.election_min_ms = min;
                o.timing.election_max_ms = max;
                o.timing.explicit = true;
            }
            other if other.starts_with("--rounds=") => {
                o.rounds = other[9..].parse().expect("--rounds=N")
            }
            other => eprintln!("failover: ignoring argument {other:?}"),
        }
    }
    assert!(o.rounds >= 1 && o.rounds <= 100, "--rounds must be 1..=100");
    assert!(
        o.lag_samples >= 1 && o.lag_samples <= 10_000,
        "--lag-samples must be 1..=10000"
    );
    o
}

// ---------------------------------------------------------------------------------
// Processes

struct Node {
    /// Its process in the lab, and the stem of its config, data and log names.
    name: String,
    config: PathBuf,
    id: u64,
}

/// The cluster; its lab kills every node it started when dropped.
struct Cluster {
    bin: PathBuf,
    lab: Lab,
    nodes: Vec<Node>,
}

impl Cluster {
    fn new(bin: PathBuf, keep: bool, timing: Timing) -> Cluster {
        let lab = Lab::new("failover", keep);
        let mut nodes = Vec::new();
        for i in 0..NODES {
            let name = format!("n{}", i + 1);
            let config = lab.root.join(format!("{name}.toml"));
            let data = lab.root.join(format!("{name}-data"));
            let text = format!(
                "[node]\nname = {name:?}\ndata_dir = {data:?}\n\n\
                 [ldap]\nlisten = [\"{h}:{LDAP_PORT}\"]\n\n\
                 [cluster]\nlisten = \"{h}:{CLUSTER_PORT}\"\n{t}",
                data = data.to_str().expect("utf-8 temp path"),
                h = host(i),
                t = timing.toml(),
            );
            std::fs::write(&config, text).expect("writing a config");
            nodes.push(Node {
                name,
                config,
                id: 0,
            });
        }
        Cluster { bin, lab, nodes }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).env(
            "PIGEONAIR_LOG",
            std::env::var("PIGEONAIR_LOG").unwrap_or_else(|_| "warn".into()),
        );
        c
    }

    fn cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--config");
        let cfg = self.nodes[i].config.to_str().expect("utf-8").to_string();
        all.push(&cfg);
        common::run_within(self.cmd(&all), COMMAND_TIMEOUT)
            .map_err(|e| format!("pigeonair {} (node {}): {e}", args.join(" "), i + 1))
    }

    fn log_tail(&self, i: usize, lines: usize) -> String {
        common::log_tail(&self.lab.log_path(&self.nodes[i].name), lines)
    }

    /// Spawn a long-running node command and wait for `ready` on its stdout.
    fn spawn(&mut self, i: usize, args: &[&str]) {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.push("--config".into());
        all.push(self.nodes[i].config.to_str().expect("utf-8").into());
        let all_ref: Vec<&str> = all.iter().map(String::as_str).collect();
        let cmd = self.cmd(&all_ref);
        let lines = self.lab.spawn(&self.nodes[i].name, cmd);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut id = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = line.strip_prefix("node: ") {
                        id = v.trim().parse().ok();
                    }
                    if line.trim() == "ready" {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "node {} (`pigeonair {}`) did not print `ready` within {READY_TIMEOUT:?}; log:\n{}",
                    i + 1,
                    args.join(" "),
                    self.log_tail(i, 40)
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    self.lab.check_alive(&self.nodes[i].name);
                    panic!(
                        "node {} (`pigeonair {}`) closed its stdout before `ready`; log:\n{}",
                        i + 1,
                        args.join(" "),
                        self.log_tail(i, 40)
                    );
                }
            }
        }
        let id = id.unwrap_or_else(|| panic!("node {} printed no `node: ID` line", i + 1));
        if self.nodes[i].id != 0 {
            assert_eq!(
                self.nodes[i].id,
                id,
                "node {} came back with another id",
                i + 1
            );
        }
        self.nodes[i].id = id;
    }

    fn kill(&mut self, i: usize) {
        self.lab.stop(&self.nodes[i].name);
    }

    fn index_of(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node with id {id}"))
    }

    fn status(&self, via: usize) -> Result<StatusView, String> {
        let out = self.cli(via, &["status", "--json"])?;
        serde_json::from_str(&out).map_err(|e| format!("status JSON: {e}: {out}"))
    }

    /// Poll status through `via` until `probe` accepts it; panics with the last view.
    fn wait_status<T>(
        &self,
        via: usize,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&StatusView) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.status(via) {
                Ok(v) => {
                    if let Some(t) = probe(&v) {
                        return t;
                    }
                    v.brief()
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting until {what}; last status via node {}: {last}", via + 1);
            }
            std::thread::sleep(POLL);
        }
    }

    fn start_cluster(&mut self) {
        let cfg = self.nodes[0].config.to_str().expect("utf-8").to_string();
        common::run_within(
            self.cmd(&["init", "--config", &cfg, "--admin-password", ADMIN_PW]),
            COMMAND_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("pigeonair init: {e}"));
        self.spawn(0, &["run"]);
        let peer = format!("{}:{CLUSTER_PORT}", host(0));
        for i in 1..NODES {
            let token = self
                .cli(0, &["token", "create"])
                .unwrap_or_else(|e| panic!("{e}"));
            let token = token.trim().to_string();
            assert!(
                token.starts_with("PA1."),
                "unexpected token output {token:?}"
            );
            self.spawn(i, &["join", "--token", &token, "--peer", &peer]);
        }
        for via in 0..NODES {
            self.wait_status(
                via,
                "every node reports 3 voters and one leader",
                CLUSTER_TIMEOUT,
                |v| v.agreed_leader(NODES, NODES),
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// LDAP

fn url(i: usize) -> String {
    format!("ldap://{}:{LDAP_PORT}", host(i))
}

fn connect(i: usize) -> Result<LdapConn, String> {
    let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(2));
    let mut c = LdapConn::with_settings(settings, &url(i))
        .map_err(|e| format!("connect {}: {e}", url(i)))?;
    c.with_timeout(Duration::from_secs(10))
        .simple_bind(ADMIN_DN, ADMIN_PW)
        .map_err(|e| format!("bind: {e}"))?
        .success()
        .map_err(|e| format!("bind: {e}"))?;
    Ok(c)
}

/// Add an entry; `Ok(rc)` when the server answered.
fn add(c: &mut LdapConn, dn: &str, attrs: Vec<(&str, Vec<&str>)>) -> Result<(u32, String), String> {
    let attrs: Vec<(&str, HashSet<&str>)> = attrs
        .into_iter()
        .map(|(a, v)| (a, v.into_iter().collect()))
        .collect();
    c.with_timeout(Duration::from_secs(15))
        .add(dn, attrs)
        .map(|r| (r.rc, r.text))
        .map_err(|e| e.to_string())
}

fn add_ou(c: &mut LdapConn, dn: &str) -> Result<u32, String> {
    let ou = dn
        .split(',')
        .next()
        .and_then(|r| r.strip_prefix("ou="))
        .expect("ou=… DN");
    add(
        c,
        dn,
        vec![
            ("objectClass", vec!["top", "organizationalUnit"]),
            ("ou", vec![ou]),
        ],
    )
    .map(|(rc, _)| rc)
}

/// Whether `dn` exists on the node behind `c`.
fn exists(c: &mut LdapConn, dn: &str) -> Result<bool, String> {
    let r = c
        .with_timeout(Duration::from_secs(5))
        .search(dn, Scope::Base, "(objectClass=*)", vec!["1.1"])
        .map_err(|e| e.to_string())?;
    match r.1.rc {
        0 => Ok(!r.0.is_empty()),
        32 => Ok(false),
        rc => Err(format!("search rc {rc}: {}", r.1.text)),
    }
}

/// The first RDNs (lower case) of the children of `base` on node `i`.
fn children(i: usize, base: &str) -> Result<HashSet<String>, String> {
    let mut c = connect(i)?;
    let r = c
        .with_timeout(Duration::from_secs(60))
        .search(base, Scope::OneLevel, "(objectClass=*)", vec!["1.1"])
        .map_err(|e| e.to_string())?;
    let (entries, _) = r.success().map_err(|e| e.to_string())?;
    Ok(entries
        .into_iter()
        .map(|e| first_rdn(&ldap3::SearchEntry::construct(e).dn))
        .collect())
}

fn first_rdn(dn: &str) -> String {
    dn.split(',')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

// ---------------------------------------------------------------------------------
// Statistics

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

// ---------------------------------------------------------------------------------
// Replication lag

struct LagResult {
    samples: Vec<f64>,
    timeouts: usize,
    per_follower: HashMap<usize, Vec<f64>>,
}

fn replication_lag(cluster: &Cluster, samples: usize) -> LagResult {
    let view = cluster.status(0).expect("status");
    let leader = cluster.index_of(view.agreed_leader(NODES, NODES).expect("a leader"));
    let followers: Vec<usize> = (0..NODES).filter(|&i| i != leader).collect();
    let mut lc = connect(leader).expect("LDAP to the leader");
    let mut fcs: Vec<(usize, LdapConn)> = followers
        .iter()
        .map(|&i| (i, connect(i).expect("LDAP to a follower")))
        .collect();
    let base = format!("ou=lag,{BENCH_OU}");
    assert_eq!(add_ou(&mut lc, &base), Ok(0), "creating {base}");
    let mut out = LagResult {
        samples: Vec::new(),
        timeouts: 0,
        per_follower: HashMap::new(),
    };
    let started = Instant::now();
    for k in 0..samples {
        if started.elapsed() > Duration::from_secs(120) {
            eprintln!("failover: replication lag stopped after {k} samples (time bound)");
            break;
        }
        let dn = format!("cn=lag-{k},{base}");
        let cn = format!("lag-{k}");
        let rc = add(
            &mut lc,
            &dn,
            vec![
                ("objectClass", vec!["top", "applicationProcess"]),
                ("cn", vec![&cn]),
            ],
        )
        .expect("add on the leader")
        .0;
        assert_eq!(rc, 0, "add {dn} on the leader");
        let acked = Instant::now();
        let mut pending: Vec<usize> = (0..fcs.len()).collect();
        while !pending.is_empty() {
            let now = acked.elapsed();
            if now > LAG_DEADLINE {
                out.timeouts += pending.len();
                eprintln!(
                    "failover: {dn} not visible on node(s) {:?} after {LAG_DEADLINE:?}",
                    pending.iter().map(|&p| fcs[p].0 + 1).collect::<Vec<_>>()
                );
                break;
            }
            pending.retain(|&p| {
                let (node, c) = &mut fcs[p];
                match exists(c, &dn) {
                    Ok(true) => {
                        let t = ms(acked.elapsed());
                        out.samples.push(t);
                        out.per_follower.entry(*node).or_default().push(t);
                        false
                    }
                    Ok(false) => true,
                    Err(e) => panic!("search on follower node {}: {e}", *node + 1),
                }
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Failover rounds

/// What the load threads share with the conductor.
struct Shared {
    /// Whether node i is up (its writer and reader use it only then).
    alive: Vec<AtomicBool>,
    /// Bumped whenever node i goes down or comes up: an error seen across a change is
    /// not counted against the node.
    epoch: Vec<AtomicU64>,
    stop_writers: AtomicBool,
    stop_readers: AtomicBool,
}

#[derive(Default)]
struct WriterOut {
    acks: Vec<(Instant, String)>,
    failed: u64,
    /// Adds of a fresh DN answered entryAlreadyExists: (when, cn, diagnostic text).
    exists: Vec<(Instant, String, String)>,
    errors: Vec<String>,
}

#[derive(Default)]
struct ReaderOut {
    ok: u64,
    failed: u64,
    errors: Vec<String>,
}

fn note(errors: &mut Vec<String>, e: String) {
    if errors.len() < 5 {
        errors.push(e);
    }
}

fn writer(i: usize, container: String, sh: Arc<Shared>) -> WriterOut {
    let mut out = WriterOut::default();
    let mut conn: Option<LdapConn> = None;
    let started = Instant::now();
    let mut seq = 0u64;
    // Bounded in count and in time.
    while !sh.stop_writers.load(Ordering::Relaxed)
        && seq < 200_000
        && started.elapsed() < Duration::from_secs(120)
    {
        if !sh.alive[i].load(Ordering::Relaxed) {
            conn = None;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if conn.is_none() {
            match connect(i) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    if sh.alive[i].load(Ordering::Relaxed) {
                        out.failed += 1;
                        note(&mut out.errors, e);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        // A fresh DN per attempt: a retry never meets its own earlier attempt.
        let cn = format!("w{i}-{seq}");
        seq += 1;
        let dn = format!("cn={cn},{container}");
        match add(
            c,
            &dn,
            vec![
                ("objectClass", vec!["top", "applicationProcess"]),
                ("cn", vec![&cn]),
            ],
        ) {
            Ok((0, _)) => out.acks.push((Instant::now(), cn.to_ascii_lowercase())),
            Ok((68, text)) => {
                out.exists
                    .push((Instant::now(), cn.to_ascii_lowercase(), text));
            }
            Ok((rc, text)) => {
                out.failed += 1;
                note(&mut out.errors, format!("rc {rc}: {text}"));
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                out.failed += 1;
                note(&mut out.errors, e);
                conn = None;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    out
}

fn reader(i: usize, container: String, sh: Arc<Shared>) -> ReaderOut {
    let mut out = ReaderOut::default();
    let mut conn: Option<LdapConn> = None;
    let started = Instant::now();
    let mut n = 0u64;
    while !sh.stop_readers.load(Ordering::Relaxed)
        && n < 1_000_000
        && started.elapsed() < Duration::from_secs(300)
    {
        if !sh.alive[i].load(Ordering::Relaxed) {
            conn = None;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let epoch = sh.epoch[i].load(Ordering::SeqCst);
        n += 1;
        let result = (|| {
            if conn.is_none() {
                conn = Some(connect(i)?);
            }
            let c = conn.as_mut().expect("connected");
            match exists(c, &container) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("{container} missing")),
                Err(e) => Err(e),
            }
        })();
        match result {
            Ok(()) => out.ok += 1,
            Err(e) => {
                conn = None;
                // Count it only when the node was up for the whole read.
                if sh.alive[i].load(Ordering::SeqCst) && sh.epoch[i].load(Ordering::SeqCst) == epoch
                {
                    out.failed += 1;
                    note(&mut out.errors, e);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    out
}

struct Round {
    killed: usize,
    old_term: u64,
    new_leader: usize,
    new_term: u64,
    gap: Duration,
    gap_start_ms: f64,
    leader_seen_after: Duration,
    acked: usize,
    failed_writes: u64,
    exists: u64,
    lost: usize,
    reads_ok: u64,
    failed_reads: u64,
    rejoin: Duration,
    converge: Duration,
}

fn round(cluster: &mut Cluster, r: usize) -> Round {
    // Healthy and agreed before we start.
    let before = cluster.wait_status(
        0,
        "all three agree on a leader before the round",
        CLUSTER_TIMEOUT,
        |v| {
            let l = v.agreed_leader(NODES, NODES)?;
            Some((
                l,
                v.nodes
                    .iter()
                    .find(|n| n.id == l)
                    .map(|n| n.term)
                    .unwrap_or(0),
            ))
        },
    );
    let container = format!("ou=round-{r},{BENCH_OU}");
    {
        let mut c = connect(cluster.index_of(before.0)).expect("LDAP to the leader");
        assert_eq!(add_ou(&mut c, &container), Ok(0), "creating {container}");
    }
    let sh = Arc::new(Shared {
        alive: (0..NODES).map(|_| AtomicBool::new(true)).collect(),
        epoch: (0..NODES).map(|_| AtomicU64::new(0)).collect(),
        stop_writers: AtomicBool::new(false),
        stop_readers: AtomicBool::new(false),
    });
    // The container must be on every node before the readers look for it.
    for i in 0..NODES {
        let mut c = connect(i).expect("LDAP");
        let deadline = Instant::now() + LAG_DEADLINE;
        while !exists(&mut c, &container).expect("search") {
            assert!(
                Instant::now() < deadline,
                "{container} did not reach node {}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let readers: Vec<JoinHandle<ReaderOut>> = (0..NODES)
        .map(|i| {
            let (c, s) = (container.clone(), sh.clone());
            std::thread::spawn(move || reader(i, c, s))
        })
        .collect();
    let writers: Vec<JoinHandle<WriterOut>> = (0..NODES)
        .map(|i| {
            let (c, s) = (container.clone(), sh.clone());
            std::thread::spawn(move || writer(i, c, s))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    // The leader, as reported now (through any node).
    let (leader_id, old_term) = cluster.wait_status(
        0,
        "all three agree on the leader to kill",
        CLUSTER_TIMEOUT,
        |v| {
            let l = v.agreed_leader(NODES, NODES)?;
            Some((
                l,
                v.nodes
                    .iter()
                    .find(|n| n.id == l)
                    .map(|n| n.term)
                    .unwrap_or(0),
            ))
        },
    );
    let killed = cluster.index_of(leader_id);
    sh.alive[killed].store(false, Ordering::SeqCst);
    sh.epoch[killed].fetch_add(1, Ordering::SeqCst);
    let kill_at = Instant::now();
    cluster.kill(killed);

    // Wait until a survivor reports a new leader that the other survivor agrees on.
    let via = (0..NODES).find(|&i| i != killed).expect("a survivor");
    let (new_id, new_term) = cluster.wait_status(
        via,
        "a new leader is reported after the kill",
        CLUSTER_TIMEOUT,
        |v| {
            let live: Vec<&NodeStat> = v.nodes.iter().filter(|n| n.id != leader_id).collect();
            if live.len() != NODES - 1 || live.iter().any(|n| n.error.is_some()) {
                return None;
            }
            let l = live.iter().find(|n| n.role == "leader")?;
            (l.term > old_term && live.iter().all(|n| n.leader == Some(l.id)))
                .then_some((l.id, l.term))
        },
    );
    let leader_seen_after = kill_at.elapsed();
    // Keep writing about a second after the new leader is known.
    std::thread::sleep(Duration::from_secs(1));
    sh.stop_writers.store(true, Ordering::SeqCst);
    let wouts: Vec<WriterOut> = writers
        .into_iter()
        .map(|h| h.join().expect("writer thread"))
        .collect();

    // Restart the killed node, and wait for the three replicas to converge.
    let restart_at = Instant::now();
    cluster.spawn(killed, &["run"]);
    let rejoin = restart_at.elapsed();
    sh.epoch[killed].fetch_add(1, Ordering::SeqCst);
    sh.alive[killed].store(true, Ordering::SeqCst);
    cluster.wait_status(
        via,
        "all three report the same applied index and digest",
        CLUSTER_TIMEOUT,
        |v| v.converged(NODES),
    );
    let converge = restart_at.elapsed();

    // Every acknowledged add on every node.
    let acked: Vec<&(Instant, String)> = wouts.iter().flat_map(|w| w.acks.iter()).collect();
    let mut missing: HashSet<&str> = HashSet::new();
    // Adds of fresh DNs answered entryAlreadyExists, and on how many nodes each is.
    let dup: Vec<&(Instant, String, String)> = wouts.iter().flat_map(|w| w.exists.iter()).collect();
    let mut dup_present = vec![0usize; dup.len()];
    for i in 0..NODES {
        let have = children(i, &container)
            .unwrap_or_else(|e| panic!("listing {container} on node {}: {e}", i + 1));
        for (k, (_, cn, _)) in dup.iter().enumerate() {
            if have.contains(&format!("cn={cn}")) {
                dup_present[k] += 1;
            }
        }
        for (_, cn) in &acked {
            if !have.contains(&format!("cn={cn}")) {
                missing.insert(cn.as_str());
                eprintln!(
                    "failover: round {r}: acknowledged cn={cn} missing on node {}",
                    i + 1
                );
            }
        }
    }
    sh.stop_readers.store(true, Ordering::SeqCst);
    let routs: Vec<ReaderOut> = readers
        .into_iter()
        .map(|h| h.join().expect("reader thread"))
        .collect();

    // Write unavailability: the longest gap between consecutive acknowledged adds
    // (all writers together) from a second before the kill until writing stopped.
    let mut times: Vec<Instant> = acked.iter().map(|(t, _)| *t).collect();
    times.sort();
    let window_start = kill_at - Duration::from_secs(1);
    let in_window: Vec<Instant> = times
        .iter()
        .copied()
        .filter(|t| *t >= window_start)
        .collect();
    let before = times.iter().filter(|t| **t <= kill_at).count();
    if before == 0 || before == times.len() {
        panic!(
            "round {r}: no acknowledged add on one side of the kill ({} acks, {before} before it)",
            times.len()
        );
    }
    let (gap, gap_start) = in_window
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .expect("acks around the kill");
    // When the longest gap began, relative to the kill (negative: before it).
    let gap_start_ms = if gap_start >= kill_at {
        ms(gap_start - kill_at)
    } else {
        -ms(kill_at - gap_start)
    };
    for (i, w) in wouts.iter().enumerate() {
        if !w.errors.is_empty() && std::env::var_os("FAILOVER_VERBOSE").is_some() {
            eprintln!(
                "failover: round {r}: writer {} errors (first {}): {:?}",
                i + 1,
                w.errors.len(),
                w.errors
            );
        }
    }
    for (k, (t, cn, text)) in dup.iter().enumerate() {
        let at = if *t >= kill_at {
            format!("{:.0} ms after", ms(*t - kill_at))
        } else {
            format!("{:.0} ms before", ms(kill_at - *t))
        };
        eprintln!(
            "failover: round {r}: the only add of cn={cn},{container} (through node {}) was answered \
             entryAlreadyExists ({text:?}) {at} the kill; the entry is on {}/{NODES} nodes",
            cn[1..].split('-').next().and_then(|n| n.parse::<usize>().ok()).map(|n| n + 1).unwrap_or(0),
            dup_present[k]
        );
    }
    for (i, rd) in routs.iter().enumerate() {
        if rd.failed > 0 {
            eprintln!(
                "failover: round {r}: reader on node {} failed {} reads: {:?}",
                i + 1,
                rd.failed,
                rd.errors
            );
        }
    }
    Round {
        killed,
        old_term,
        new_leader: cluster.index_of(new_id),
        new_term,
        gap,
        gap_start_ms,
        leader_seen_after,
        acked: acked.len(),
        failed_writes: wouts.iter().map(|w| w.failed).sum(),
        exists: dup.len() as u64,
        lost: missing.len(),
        reads_ok: routs.iter().map(|r| r.ok).sum(),
        failed_reads: routs.iter().map(|r| r.failed).sum(),
        rejoin,
        converge,
    }
}

// ---------------------------------------------------------------------------------

fn main() {
    let o = opts();
    let bin = common::pigeonair_binary(o.bench_mode, "failover");
    if !o.bench_mode {
        eprintln!(
            "failover: test mode (no --bench): {} round(s), {} lag samples, {}",
            o.rounds,
            o.lag_samples,
            bin.display()
        );
    }
    let mut cluster = Cluster::new(bin, o.keep, o.timing);
    eprintln!("failover: cluster in {}", cluster.lab.root.display());
    let t = Instant::now();
    cluster.start_cluster();
    eprintln!(
        "failover: 3 voters up in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    {
        let view = cluster.status(0).expect("status");
        let leader = cluster.index_of(view.agreed_leader(NODES, NODES).expect("leader"));
        let mut c = connect(leader).expect("LDAP to the leader");
        assert_eq!(add_ou(&mut c, BENCH_OU), Ok(0), "creating {BENCH_OU}");
    }

    let lag = replication_lag(&cluster, o.lag_samples);
    let lag_sorted = sorted(lag.samples.clone());
    println!(
        "replication lag: {} samples over {} followers: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms{}",
        lag.samples.len(),
        lag.per_follower.len(),
        pct(&lag_sorted, 50.0),
        pct(&lag_sorted, 99.0),
        lag_sorted.last().copied().unwrap_or(f64::NAN),
        if lag.timeouts > 0 {
            format!("  ({} not visible within 5 s)", lag.timeouts)
        } else {
            String::new()
        }
    );
    let mut followers: Vec<_> = lag.per_follower.iter().collect();
    followers.sort_by_key(|(k, _)| **k);
    for (node, v) in followers {
        let s = sorted(v.clone());
        println!(
            "  node {}: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            node + 1,
            pct(&s, 50.0),
            pct(&s, 99.0),
            s.last().copied().unwrap_or(f64::NAN)
        );
    }

    let mut rounds = Vec::new();
    for r in 1..=o.rounds {
        let x = round(&mut cluster, r);
        println!(
            "round {r:>2}: killed node {} (leader, term {}) -> node {} leads (term {}); write gap {:.0} ms (from {:+.0} ms after the kill); \
             new leader seen after {:.0} ms; {} adds acked, {} failed; lost {}; reads ok {} failed {}; restart ready {:.0} ms, converged {:.1} s",
            x.killed + 1,
            x.old_term,
            x.new_leader + 1,
            x.new_term,
            ms(x.gap),
            x.gap_start_ms,
            ms(x.leader_seen_after),
            x.acked,
            x.failed_writes,
            x.lost,
            x.reads_ok,
            x.failed_reads,
            ms(x.rejoin),
            x.converge.as_secs_f64(),
        );
        rounds.push(x);
    }

    let gaps = sorted(rounds.iter().map(|x| ms(x.gap)).collect());
    let med = median(&gaps);
    let lost: usize = rounds.iter().map(|x| x.lost).sum();
    let failed_reads: u64 = rounds.iter().map(|x| x.failed_reads).sum();
    let exists: u64 = rounds.iter().map(|x| x.exists).sum();
    println!();
    println!(
        "failover ({NODES} voters, heartbeat {} ms, election timeout {}-{} ms{}), {} round{}",
        o.timing.heartbeat_ms,
        o.timing.election_min_ms,
        o.timing.election_max_ms,
        if o.timing.explicit {
            ", set on the command line"
        } else {
            ""
        },
        rounds.len(),
        if rounds.len() == 1 { "" } else { "s" }
    );
    println!(
        "  write unavailability  min {:.0} ms  median {:.0} ms  max {:.0} ms   (goal: median < {GOAL_MS:.0} ms{}; etcd's defaults give about 1 s)",
        gaps[0],
        med,
        gaps[gaps.len() - 1],
        if med < GOAL_MS { ", met" } else { ", NOT met" }
    );
    println!(
        "  replication lag       p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        pct(&lag_sorted, 50.0),
        pct(&lag_sorted, 99.0),
        lag_sorted.last().copied().unwrap_or(f64::NAN)
    );
    println!("  lost acknowledged writes {lost}   failed reads {failed_reads}");
    if exists > 0 {
        println!("  adds of a fresh DN answered entryAlreadyExists {exists}   (applied once, reported to the client as failed)");
    }
    drop(cluster);
    assert_eq!(lost, 0, "acknowledged writes were lost");
}

//! LDAP load benchmark: PigeonAir against OpenLDAP's slapd (back-mdb) on the same
//! machine, in the same run, with the same data, indexes, client and durability.
//!
//! 1. Hash a handful of passwords once (argon2id in the `{ARGON2}` form PigeonAir stores
//!    and slapd's argon2 module verifies) and write an LDIF of N accounts
//!    `uid=userK,ou=people,dc=example.org,ou=domains,dc=pigeonair` (100,000; `--accounts`
//!    or `PIGEONAIR_BENCH_ACCOUNTS`).
//! 2. slapd: `slapadd` into a temporary back-mdb database (no `dbnosync`, so every write
//!    is synced), then `slapd -d 0` in the foreground on `127.0.31.9:3389`; check that it
//!    accepts an account's password and refuses a wrong one.
//! 3. PigeonAir, one node: `init`, offline `ldif import`, `run` on `127.0.31.1`.
//! 4. PigeonAir, three nodes: `init` + `ldif import` + `run` on `127.0.31.2`; wait until
//!    the import is in a snapshot; `token create` + `join` on `127.0.31.3` and
//!    `127.0.31.4`; wait until `status --json` shows three voters, one leader and equal
//!    digests.
//! 5. Workloads, each bounded by `--seconds` and `--max-ops`, one `ldap3` connection per
//!    OS thread, run on the three targets one after the other per row: searches by
//!    `mail` as the administrator (1, 4, 16 connections), simple binds of random
//!    accounts (1, 4, 16), adds of new accounts (1, 4), modifies replacing
//!    `description` of random accounts (1, 4). Every response is checked. On the
//!    cluster, reads and writes go to the leader (`--spread-reads`: reads round robin
//!    over the three nodes).
//! 6. A table of ops/s and p99 latency per target and the ratios PigeonAir/slapd, a
//!    table of CPU time per operation (server processes and client threads, from
//!    `/proc`), then the goal check.
//!
//! Both servers index `objectClass`, `uid`, `mail` and `mailLocalAddress` for equality
//! and nothing else (`--pigeonair-default-indexes` keeps PigeonAir's defaults instead;
//! `--pigeonair-cache-mb N` sets its cache). Neither logs per operation (slapd
//! `loglevel 0`, PigeonAir `warn`). `--rows search,bind,add,modify` selects workloads;
//! `--keep` keeps the temporary directory (data, configs, logs).
//!
//! `cargo bench --bench ldap_load` runs the full pass with the optimised `pigeonair`;
//! without `--bench` (`cargo test --benches`) a smoke pass runs with a few hundred
//! accounts and a fraction of a second per row, with the test-profile binary. slapd
//! missing is an error in both modes. Every child process is killed when the program
//! ends, also on a panic.

mod common;

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Lab, StatusView};
use ldap3::{LdapConn, LdapConnSettings, Mod, Scope, SearchEntry};

const ADMIN_DN: &str = "cn=admin,ou=system,dc=pigeonair";
const ADMIN_PW: &str = "ldap-load-admin-pw";
const SUFFIX: &str = "dc=pigeonair";
const DOMAIN_DN: &str = "dc=example.org,ou=domains,dc=pigeonair";
const PEOPLE_DN: &str = "ou=people,dc=example.org,ou=domains,dc=pigeonair";
const MAIL_DOMAIN: &str = "example.org";
/// Distinct passwords (and hashes) shared round-robin by the accounts.
const PASSWORDS: usize = 4;

const LDAP_PORT: u16 = 3389;
const CLUSTER_PORT: u16 = 7400;
const SLAPD_HOST: &str = "127.0.31.9";
/// The indexes both servers get: equality on these, nothing else.
const INDEXED: [&str; 4] = ["objectClass", "uid", "mail", "mailLocalAddress"];

/// The goals: search ops/s at least slapd's at every concurrency; adds and modifies on
/// the three-node cluster at least half of slapd's.
const SEARCH_GOAL: f64 = 1.0;
const WRITE_GOAL_3: f64 = 0.5;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const OP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// Between `status` calls: each one makes every node hash its whole directory (about a
/// second per node at 100,000 accounts), so polling it tightly would load the nodes.
const STATUS_POLL: Duration = Duration::from_millis(250);

/// PigeonAir node `i`'s address: 0 is the single node, 1..=3 the cluster.
fn pa_host(i: usize) -> String {
    format!("127.0.31.{}", i + 1)
}

fn ldap_url(host: &str) -> String {
    format!("ldap://{host}:{LDAP_PORT}")
}

// ---------------------------------------------------------------------------------
// Options

struct Opts {
    accounts: usize,
    seconds: f64,
    max_ops: u64,
    keep: bool,
    bench_mode: bool,
    spread_reads: bool,
    default_indexes: bool,
    cache_mb: Option<usize>,
    /// The workloads to run (all by default).
    ops: Vec<Op>,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let env_accounts = std::env::var("PIGEONAIR_BENCH_ACCOUNTS")
        .ok()
        .map(|v| v.parse().expect("PIGEONAIR_BENCH_ACCOUNTS=N"));
    let mut o = Opts {
        accounts: env_accounts.unwrap_or(if bench_mode { 100_000 } else { 300 }),
        seconds: if bench_mode { 3.0 } else { 0.2 },
        max_ops: if bench_mode { 200_000 } else { 200 },
        keep: false,
        bench_mode,
        spread_reads: false,
        default_indexes: false,
        cache_mb: None,
        ops: vec![Op::Search, Op::Bind, Op::Add, Op::Modify],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> String {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match a.as_str() {
            "--bench" => {}
            "--keep" => o.keep = true,
            "--rows" => {
                o.ops = value("--rows")
                    .split(',')
                    .map(|w| match w.trim() {
                        "search" => Op::Search,
                        "bind" => Op::Bind,
                        "add" => Op::Add,
                        "modify" => Op::Modify,
                        other => {
                            panic!("--rows: unknown workload {other:?} (search,bind,add,modify)")
                        }
                    })
                    .collect()
            }
            "--spread-reads" => o.spread_reads = true,
            "--pigeonair-default-indexes" => o.default_indexes = true,
            "--accounts" => o.accounts = value("--accounts").parse().expect("--accounts N"),
            "--seconds" => o.seconds = value("--seconds").parse().expect("--seconds S"),
            "--max-ops" => o.max_ops = value("--max-ops").parse().expect("--max-ops N"),
            "--pigeonair-cache-mb" => {
                o.cache_mb = Some(
                    value("--pigeonair-cache-mb")
                        .parse()
                        .expect("--pigeonair-cache-mb N"),
                )
            }
            other => eprintln!("ldap_load: ignoring argument {other:?}"),
        }
    }
    assert!(o.accounts >= 10, "--accounts must be at least 10");
    assert!(
        o.seconds > 0.0 && o.seconds <= 600.0,
        "--seconds must be in (0, 600]"
    );
    assert!(o.max_ops >= 1, "--max-ops must be at least 1");
    o
}

// ---------------------------------------------------------------------------------
// slapd installation

/// Where OpenLDAP's programs, modules and schema files are.
struct OpenLdap {
    slapd: PathBuf,
    slapadd: PathBuf,
    modules: PathBuf,
    /// Whether back-mdb is a loadable module (Debian) rather than built in.
    mdb_module: bool,
    schema: PathBuf,
}

/// Find slapd, slapadd, the argon2 module and the schema files; panics with how to
/// install them when something is missing.
fn find_openldap() -> OpenLdap {
    const INSTALL: &str = "this benchmark compares PigeonAir with OpenLDAP's slapd and needs it \
         installed: `apt-get install -y slapd` (Debian/Ubuntu; it provides slapd, slapadd, \
         the back_mdb and argon2 modules in /usr/lib/ldap and the schema in /etc/ldap/schema)";
    let slapd =
        common::find_program("slapd").unwrap_or_else(|| panic!("slapd not found; {INSTALL}"));
    let slapadd =
        common::find_program("slapadd").unwrap_or_else(|| panic!("slapadd not found; {INSTALL}"));
    let modules = [
        "/usr/lib/ldap",
        "/usr/lib64/openldap",
        "/usr/lib/openldap",
        "/usr/local/libexec/openldap",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|d| d.join("argon2.so").is_file() || d.join("argon2.la").is_file())
    .unwrap_or_else(|| panic!("slapd's argon2 module (argon2.so) not found; {INSTALL}"));
    let mdb_module = modules.join("back_mdb.so").is_file() || modules.join("back_mdb.la").is_file();
    let schema = ["/etc/ldap/schema", "/etc/openldap/schema"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("misc.schema").is_file())
        .unwrap_or_else(|| panic!("OpenLDAP's schema files (misc.schema) not found; {INSTALL}"));
    OpenLdap {
        slapd,
        slapadd,
        modules,
        mdb_module,
        schema,
    }
}

// ---------------------------------------------------------------------------------
// Data

/// The password of account `k` and the index of its hash.
fn password_of(k: usize) -> String {
    format!("ldap-load-user-pw-{}", k % PASSWORDS)
}

/// One `{ARGON2}$argon2id$...` hash per distinct password, made by PigeonAir's own
/// password code (the same parameters its server writes).
fn password_hashes() -> Vec<String> {
    (0..PASSWORDS)
        .map(|i| {
            let h = pigeonair::directory::password::hash(password_of(i).as_bytes());
            String::from_utf8(h).expect("an ASCII hash")
        })
        .collect()
}

fn account_ldif(out: &mut impl Write, uid: &str, hash: &str) -> std::io::Result<()> {
    write!(
        out,
        "dn: uid={uid},{PEOPLE_DN}\n\
         objectClass: top\n\
         objectClass: inetOrgPerson\n\
         objectClass: inetLocalMailRecipient\n\
         uid: {uid}\n\
         cn: {uid}\n\
         sn: Bench\n\
         mail: {uid}@{MAIL_DOMAIN}\n\
         mailLocalAddress: {uid}@{MAIL_DOMAIN}\n\
         mailHost: node1.{MAIL_DOMAIN}\n\
         userPassword: {hash}\n\n"
    )
}

/// The domain, `ou=people` and the accounts: the entries both servers load.
fn write_accounts_ldif(path: &Path, accounts: usize, hashes: &[String]) {
    let mut out = BufWriter::new(std::fs::File::create(path).expect("creating the LDIF"));
    write!(
        out,
        "\
         dn: {DOMAIN_DN}\nobjectClass: top\nobjectClass: domain\ndc: {MAIL_DOMAIN}\n\n\
         dn: {PEOPLE_DN}\nobjectClass: top\nobjectClass: organizationalUnit\nou: people\n\n"
    )
    .expect("writing the LDIF");
    for k in 0..accounts {
        account_ldif(&mut out, &format!("user{k}"), &hashes[k % PASSWORDS])
            .expect("writing the LDIF");
    }
    out.flush().expect("writing the LDIF");
}

/// What `pigeonair init` creates and slapd needs first: the suffix and `ou=domains`.
fn write_slapd_base_ldif(path: &Path) {
    std::fs::write(
        path,
        format!(
            "dn: {SUFFIX}\nobjectClass: top\nobjectClass: domain\ndc: pigeonair\n\n\
             dn: ou=domains,{SUFFIX}\nobjectClass: top\nobjectClass: organizationalUnit\nou: domains\n\n"
        ),
    )
    .expect("writing the base LDIF");
}

// ---------------------------------------------------------------------------------
// slapd

fn slapd_config(ol: &OpenLdap, db: &Path, admin_hash: &str) -> String {
    let schema = |f: &str| ol.schema.join(f).display().to_string();
    let mut text = String::new();
    for f in [
        "core.schema",
        "cosine.schema",
        "inetorgperson.schema",
        "misc.schema",
    ] {
        text.push_str(&format!("include {}\n", schema(f)));
    }
    text.push_str(&format!("modulepath {}\n", ol.modules.display()));
    if ol.mdb_module {
        text.push_str("moduleload back_mdb\n");
    }
    text.push_str("moduleload argon2\nloglevel 0\nsizelimit unlimited\n\n");
    text.push_str(&format!(
        "database mdb\nsuffix \"{SUFFIX}\"\nrootdn \"{ADMIN_DN}\"\nrootpw {admin_hash}\n\
         directory {}\nmaxsize 4294967296\n",
        db.display()
    ));
    for a in INDEXED {
        text.push_str(&format!("index {a} eq\n"));
    }
    text
}

/// Load the data with slapadd and start slapd; the time slapadd took for the accounts.
fn start_slapd(lab: &mut Lab, ol: &OpenLdap, accounts_ldif: &Path, admin_hash: &str) -> Duration {
    let db = lab.root.join("slapd-db");
    std::fs::create_dir_all(&db).expect("slapd db dir");
    let conf = lab.root.join("slapd.conf");
    std::fs::write(&conf, slapd_config(ol, &db, admin_hash)).expect("slapd.conf");
    let base = lab.root.join("slapd-base.ldif");
    write_slapd_base_ldif(&base);
    let slapadd = |ldif: &Path, timeout: Duration| {
        let mut c = Command::new(&ol.slapadd);
        c.arg("-f").arg(&conf).arg("-q").arg("-l").arg(ldif);
        common::run_within(c, timeout)
            .unwrap_or_else(|e| panic!("slapadd -l {}: {e}", ldif.display()))
    };
    slapadd(&base, COMMAND_TIMEOUT);
    let t = Instant::now();
    slapadd(accounts_ldif, Duration::from_secs(3600));
    let load = t.elapsed();

    let mut cmd = Command::new(&ol.slapd);
    cmd.arg("-h")
        .arg(format!("{}/", ldap_url(SLAPD_HOST)))
        .arg("-f")
        .arg(&conf)
        .arg("-d")
        .arg("0");
    let _ = lab.spawn("slapd", cmd);
    lab.wait_admin_bind("slapd", COMMAND_TIMEOUT, POLL, || {
        connect_admin(&ldap_url(SLAPD_HOST)).map(drop)
    });
    load
}

// ---------------------------------------------------------------------------------
// PigeonAir

/// A PigeonAir node of this benchmark.
struct PaNode {
    name: String,
    host: String,
    config: PathBuf,
    id: u64,
}

struct PigeonAir {
    bin: PathBuf,
}

impl PigeonAir {
    fn cmd(&self, args: &[&str], config: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).arg("--config").arg(config).env(
            "PIGEONAIR_LOG",
            std::env::var("PIGEONAIR_LOG").unwrap_or_else(|_| "warn".into()),
        );
        c
    }

    fn cli(&self, node: &PaNode, args: &[&str], timeout: Duration) -> String {
        common::run_within(self.cmd(args, &node.config), timeout)
            .unwrap_or_else(|e| panic!("pigeonair {} ({}): {e}", args.join(" "), node.name))
    }

    fn node(&self, lab: &Lab, o: &Opts, i: usize) -> PaNode {
        let name = if i == 0 {
            "pigeonair-1".to_string()
        } else {
            format!("pigeonair-3-n{i}")
        };
        let host = pa_host(i);
        let config = lab.root.join(format!("{name}.toml"));
        let data = lab.root.join(format!("{name}-data"));
        let mut directory = String::new();
        if let Some(mb) = o.cache_mb {
            directory.push_str(&format!("cache_mb = {mb}\n"));
        }
        if !o.default_indexes {
            directory.push_str("\n[directory.indexes]\n");
            for a in INDEXED {
                directory.push_str(&format!("{a} = \"eq\"\n"));
            }
        }
        let text = format!(
            "[node]\nname = {name:?}\ndata_dir = {data:?}\n\n\
             [ldap]\nlisten = [\"{host}:{LDAP_PORT}\"]\n\n\
             [cluster]\nlisten = \"{host}:{CLUSTER_PORT}\"\n\n\
             [directory]\n{directory}",
            data = data.to_str().expect("utf-8 temp path"),
        );
        std::fs::write(&config, text).expect("writing a node config");
        PaNode {
            name,
            host,
            config,
            id: 0,
        }
    }

    /// `init` and offline `ldif import`; the import's duration.
    fn init_and_import(&self, node: &PaNode, ldif: &Path, accounts: usize) -> Duration {
        self.cli(
            node,
            &["init", "--admin-password", ADMIN_PW],
            COMMAND_TIMEOUT,
        );
        let t = Instant::now();
        let ldif = ldif.to_str().expect("utf-8 temp path");
        self.cli(
            node,
            &["ldif", "import", ldif],
            Duration::from_secs(120 + accounts as u64 / 200),
        );
        t.elapsed()
    }

    /// Spawn `run` or `join` and wait for `ready`.
    fn start(&self, lab: &mut Lab, node: &mut PaNode, args: &[&str], timeout: Duration) {
        let lines = lab.spawn(&node.name, self.cmd(args, &node.config));
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = line.strip_prefix("node: ") {
                        node.id = v.trim().parse().expect("node id");
                    }
                    if line.trim() == "ready" {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{} (`pigeonair {}`) did not print `ready` within {timeout:?}",
                    node.name,
                    args.join(" ")
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    lab.check_alive(&node.name);
                    panic!("{} closed its stdout before `ready`", node.name);
                }
            }
        }
        assert!(node.id != 0, "{} printed no `node: ID` line", node.name);
    }

    fn status(&self, via: &PaNode) -> Result<StatusView, String> {
        let out = common::run_within(
            self.cmd(&["status", "--json"], &via.config),
            COMMAND_TIMEOUT,
        )?;
        serde_json::from_str(&out).map_err(|e| format!("status JSON: {e}: {out}"))
    }

    /// Poll `status --json` through `via` until `probe` accepts it; panics with the
    /// last view after `timeout`.
    fn wait_status<T>(
        &self,
        via: &PaNode,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&StatusView) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.status(via) {
                Ok(v) => match probe(&v) {
                    Some(t) => return t,
                    None => v.brief(),
                },
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting until {what}; last status via {}: {last}",
                via.name
            );
            std::thread::sleep(STATUS_POLL);
        }
    }

    /// Wait until the node reports a snapshot and a purged log: what `run` does after an
    /// offline import so that joining nodes receive the imported entries.
    fn wait_published(&self, node: &PaNode, timeout: Duration) {
        self.wait_status(
            node,
            "the offline import is in a snapshot (snapshot_index and purged_index set)",
            timeout,
            |v| {
                v.nodes
                    .iter()
                    .all(|n| n.snapshot_index.is_some() && n.purged_index.is_some())
                    .then_some(())
            },
        )
    }

    /// Wait until `expect` voters agree on a leader, applied index and digest; the
    /// leader's id and term.
    fn wait_converged(&self, via: &PaNode, expect: usize, timeout: Duration) -> (u64, u64) {
        self.wait_status(
            via,
            &format!("{expect} voters agree on the leader, applied index and digest"),
            timeout,
            |v| v.converged(expect),
        )
    }
}

// ---------------------------------------------------------------------------------
// LDAP client

fn connect(url: &str) -> Result<LdapConn, String> {
    let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(5));
    LdapConn::with_settings(settings, url).map_err(|e| format!("connect {url}: {e}"))
}

fn bind(c: &mut LdapConn, dn: &str, pw: &str) -> Result<(), String> {
    let r = c
        .with_timeout(OP_TIMEOUT)
        .simple_bind(dn, pw)
        .map_err(|e| format!("bind {dn}: {e}"))?;
    common::check_rc("bind", dn, &r)
}

fn connect_admin(url: &str) -> Result<LdapConn, String> {
    let mut c = connect(url)?;
    bind(&mut c, ADMIN_DN, ADMIN_PW)?;
    Ok(c)
}

fn user_dn(uid: &str) -> String {
    format!("uid={uid},{PEOPLE_DN}")
}

/// Search `(mail=userK@example.org)` from the suffix; Ok when exactly userK comes back.
fn search_mail(c: &mut LdapConn, k: usize) -> Result<(), String> {
    let filter = format!("(mail=user{k}@{MAIL_DOMAIN})");
    let r = c
        .with_timeout(OP_TIMEOUT)
        .search(SUFFIX, Scope::Subtree, &filter, vec!["mail", "mailHost"])
        .map_err(|e| format!("search {filter}: {e}"))?;
    common::check_rc("search", &filter, &r.1)?;
    if r.0.len() != 1 {
        return Err(format!("search {filter}: {} entries", r.0.len()));
    }
    let e = SearchEntry::construct(r.0.into_iter().next().expect("one entry"));
    let want = user_dn(&format!("user{k}"));
    if !e.dn.eq_ignore_ascii_case(&want) || !e.attrs.contains_key("mailHost") {
        return Err(format!("search {filter}: unexpected entry {}", e.dn));
    }
    Ok(())
}

fn add_account(c: &mut LdapConn, uid: &str, hash: &str) -> Result<(), String> {
    let mail = format!("{uid}@{MAIL_DOMAIN}");
    let host = format!("node1.{MAIL_DOMAIN}");
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<String>>();
    let attrs = vec![
        (
            "objectClass".to_string(),
            set(&["top", "inetOrgPerson", "inetLocalMailRecipient"]),
        ),
        ("uid".to_string(), set(&[uid])),
        ("cn".to_string(), set(&[uid])),
        ("sn".to_string(), set(&["Bench"])),
        ("mail".to_string(), set(&[&mail])),
        ("mailLocalAddress".to_string(), set(&[&mail])),
        ("mailHost".to_string(), set(&[&host])),
        ("userPassword".to_string(), set(&[hash])),
    ];
    let dn = user_dn(uid);
    let r = c
        .with_timeout(OP_TIMEOUT)
        .add(&dn, attrs)
        .map_err(|e| format!("add {dn}: {e}"))?;
    common::check_rc("add", &dn, &r)
}

fn modify_description(c: &mut LdapConn, k: usize, text: &str) -> Result<(), String> {
    let dn = user_dn(&format!("user{k}"));
    let mods = vec![Mod::Replace(
        "description".to_string(),
        HashSet::from([text.to_string()]),
    )];
    let r = c
        .with_timeout(OP_TIMEOUT)
        .modify(&dn, mods)
        .map_err(|e| format!("modify {dn}: {e}"))?;
    common::check_rc("modify", &dn, &r)
}

// ---------------------------------------------------------------------------------
// Workloads

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Search,
    Bind,
    Add,
    Modify,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Search => "search mail=",
            Op::Bind => "bind (argon2id)",
            Op::Add => "add account",
            Op::Modify => "modify description",
        }
    }

    fn writes(self) -> bool {
        matches!(self, Op::Add | Op::Modify)
    }
}

#[derive(Clone, Copy)]
struct Row {
    op: Op,
    conns: usize,
}

const ROWS: [Row; 10] = [
    Row {
        op: Op::Search,
        conns: 1,
    },
    Row {
        op: Op::Search,
        conns: 4,
    },
    Row {
        op: Op::Search,
        conns: 16,
    },
    Row {
        op: Op::Bind,
        conns: 1,
    },
    Row {
        op: Op::Bind,
        conns: 4,
    },
    Row {
        op: Op::Bind,
        conns: 16,
    },
    Row {
        op: Op::Add,
        conns: 1,
    },
    Row {
        op: Op::Add,
        conns: 4,
    },
    Row {
        op: Op::Modify,
        conns: 1,
    },
    Row {
        op: Op::Modify,
        conns: 4,
    },
];

/// Where a workload sends its requests.
struct Target {
    name: &'static str,
    /// Searches and binds: connection `t` goes to `read_urls[t % len]`.
    read_urls: Vec<String>,
    /// Adds and modifies.
    write_url: String,
    /// The server processes, whose CPU time is charged to the target.
    pids: Vec<u32>,
}

/// User plus system CPU time of processes, from `/proc/PID/stat` (Linux; `None`
/// elsewhere). The kernel reports it in USER_HZ ticks, 100 per second.
fn cpu_time(pids: &[u32]) -> Option<Duration> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (in parentheses): state is field 3, utime 14,
        // stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    }
    Some(Duration::from_millis(ticks * 10))
}

/// splitmix64: the same sequence of accounts for every target.
struct Picker(u64);

impl Picker {
    fn new(row: usize, thread: usize) -> Picker {
        Picker((((row as u64) << 32) | thread as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % n as u64) as usize
    }
}

#[derive(Default)]
struct WorkerOut {
    ok: u64,
    errors: u64,
    first_errors: Vec<String>,
    latencies_ns: Vec<u64>,
    finished: Option<Instant>,
}

fn note(errors: &mut Vec<String>, e: String) {
    if errors.len() < 3 {
        errors.push(e);
    }
}

/// What one row on one target measured.
struct Measure {
    ok: u64,
    errors: u64,
    first_errors: Vec<String>,
    elapsed: Duration,
    /// Sorted.
    latencies_ns: Vec<u64>,
    /// CPU time of the target's server processes during the row.
    server_cpu: Option<Duration>,
    /// CPU time of this process (the clients) during the row.
    client_cpu: Option<Duration>,
}

impl Measure {
    fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU microseconds per successful operation.
    fn cpu_us_per_op(&self, cpu: Option<Duration>) -> String {
        match cpu {
            Some(c) if self.ok > 0 => format!("{:.0}", c.as_secs_f64() * 1e6 / self.ok as f64),
            _ => "-".to_string(),
        }
    }

    fn p99_ms(&self) -> f64 {
        pct(&self.latencies_ns, 99.0) as f64 / 1e6
    }
}

/// The UTC time of day (`HH:MM:SS.mmm`), to line progress up with the nodes' logs.
fn clock() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = t.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        t.subsec_millis()
    )
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Plan<'a> {
    accounts: usize,
    seconds: f64,
    max_ops: u64,
    hashes: &'a [String],
}

/// Run `row` against `target`: `row.conns` threads, each with its own connection,
/// started together, stopping at `plan.seconds` or when `plan.max_ops` are claimed.
fn measure(plan: &Plan, target: &Target, row_index: usize, row: Row) -> Measure {
    let claimed = Arc::new(AtomicU64::new(0));
    // Passed twice: once every connection is open (and bound), then to start together.
    let barrier = Arc::new(Barrier::new(row.conns + 1));
    let handles: Vec<_> = (0..row.conns)
        .map(|t| {
            let url = if row.op.writes() {
                target.write_url.clone()
            } else {
                target.read_urls[t % target.read_urls.len()].clone()
            };
            let (claimed, barrier) = (claimed.clone(), barrier.clone());
            let (accounts, max_ops, hashes) = (plan.accounts, plan.max_ops, plan.hashes.to_vec());
            let duration = Duration::from_secs_f64(plan.seconds);
            std::thread::spawn(move || {
                let mut out = WorkerOut::default();
                let conn = match row.op {
                    Op::Bind => connect(&url),
                    _ => connect_admin(&url),
                };
                barrier.wait();
                barrier.wait();
                let mut c = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        out.errors += 1;
                        note(&mut out.first_errors, e);
                        out.finished = Some(Instant::now());
                        return out;
                    }
                };
                let started = Instant::now();
                let mut pick = Picker::new(row_index, t);
                let mut seq = 0u64;
                while started.elapsed() < duration
                    && claimed.fetch_add(1, Ordering::Relaxed) < max_ops
                {
                    seq += 1;
                    let op_start = Instant::now();
                    let result = match row.op {
                        Op::Search => search_mail(&mut c, pick.below(accounts)),
                        Op::Bind => {
                            let k = pick.below(accounts);
                            bind(&mut c, &user_dn(&format!("user{k}")), &password_of(k))
                        }
                        Op::Add => {
                            let uid = format!("new-r{row_index}-t{t}-{seq}");
                            add_account(&mut c, &uid, &hashes[seq as usize % hashes.len()])
                        }
                        Op::Modify => modify_description(
                            &mut c,
                            pick.below(accounts),
                            &format!("ldap_load r{row_index} t{t} {seq}"),
                        ),
                    };
                    let took = op_start.elapsed();
                    match result {
                        Ok(()) => {
                            out.ok += 1;
                            out.latencies_ns.push(took.as_nanos() as u64);
                        }
                        Err(e) => {
                            out.errors += 1;
                            note(&mut out.first_errors, e);
                            // A broken connection is not retried: the error counts.
                            if c.with_timeout(OP_TIMEOUT).simple_bind("", "").is_err() {
                                break;
                            }
                            if row.op != Op::Bind {
                                if let Err(e) = bind(&mut c, ADMIN_DN, ADMIN_PW) {
                                    note(&mut out.first_errors, e);
                                    break;
                                }
                            }
                        }
                    }
                }
                out.finished = Some(Instant::now());
                let _ = c.unbind();
                out
            })
        })
        .collect();
    let self_pid = [std::process::id()];
    barrier.wait();
    let (server_before, client_before) = (cpu_time(&target.pids), cpu_time(&self_pid));
    barrier.wait();
    let started = Instant::now();
    let outs: Vec<WorkerOut> = handles
        .into_iter()
        .map(|h| h.join().expect("a load thread panicked"))
        .collect();
    let delta =
        |before: Option<Duration>, after: Option<Duration>| Some(after?.saturating_sub(before?));
    let server_cpu = delta(server_before, cpu_time(&target.pids));
    let client_cpu = delta(client_before, cpu_time(&self_pid));
    let finished = outs
        .iter()
        .filter_map(|o| o.finished)
        .max()
        .unwrap_or(started);
    let mut m = Measure {
        ok: outs.iter().map(|o| o.ok).sum(),
        errors: outs.iter().map(|o| o.errors).sum(),
        first_errors: Vec::new(),
        elapsed: finished.saturating_duration_since(started),
        latencies_ns: outs
            .iter()
            .flat_map(|o| o.latencies_ns.iter().copied())
            .collect(),
        server_cpu,
        client_cpu,
    };
    for o in outs {
        for e in o.first_errors {
            note(&mut m.first_errors, e);
        }
    }
    m.latencies_ns.sort_unstable();
    m
}

// ---------------------------------------------------------------------------------
// Report

fn ratio(pa: &Measure, slapd: &Measure) -> f64 {
    pa.ops_per_sec() / slapd.ops_per_sec().max(1e-9)
}

fn cell(m: &Measure) -> String {
    let mut s = format!("{:.0} | {:.2}", m.ops_per_sec(), m.p99_ms());
    if m.errors > 0 {
        s.push_str(&format!(" ({} ERRORS)", m.errors));
    }
    s
}

fn print_table(results: &[(Row, [Measure; 3])]) {
    println!(
        "| workload | conns | slapd ops/s | slapd p99 ms | PigeonAir 1 node ops/s | p99 ms \
         | PigeonAir 3 nodes ops/s | p99 ms | 1 node / slapd | 3 nodes / slapd |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (row, [s, p1, p3]) in results {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} |",
            row.op.label(),
            row.conns,
            cell(s),
            cell(p1),
            cell(p3),
            ratio(p1, s),
            ratio(p3, s)
        );
    }
}

/// CPU time per operation: the server processes (for 3 nodes, all three) and this
/// process's client threads.
fn print_cpu_table(results: &[(Row, [Measure; 3])]) {
    println!(
        "| workload | conns | slapd server / client CPU us/op | PigeonAir 1 node server / client \
         | PigeonAir 3 nodes (all nodes) server / client |"
    );
    println!("|---|--:|--:|--:|--:|");
    for (row, ms) in results {
        let c: Vec<String> = ms
            .iter()
            .map(|m| {
                format!(
                    "{} / {}",
                    m.cpu_us_per_op(m.server_cpu),
                    m.cpu_us_per_op(m.client_cpu)
                )
            })
            .collect();
        println!(
            "| {} | {} | {} | {} | {} |",
            row.op.label(),
            row.conns,
            c[0],
            c[1],
            c[2]
        );
    }
}

/// Print the goal check; whether every goal was met.
fn print_goals(results: &[(Row, [Measure; 3])]) -> bool {
    let mut all = true;
    let mut check = |what: String, rows: Vec<(String, f64, bool)>, goal: f64| {
        if rows.is_empty() {
            println!("  {what} >= {goal:.1}: not measured (--rows)");
            all = false;
            return;
        }
        let met = rows.iter().all(|(_, r, clean)| *r >= goal && *clean);
        all &= met;
        let detail: Vec<String> = rows
            .iter()
            .map(|(n, r, clean)| format!("{n} {r:.2}{}", if *clean { "" } else { " (errors)" }))
            .collect();
        println!(
            "  {what} >= {goal:.1}: {}   ({})",
            if met { "met" } else { "NOT met" },
            detail.join(", ")
        );
    };
    let clean = |ms: &[&Measure]| ms.iter().all(|m| m.errors == 0);
    for (topo, idx) in [("1 node", 1usize), ("3 nodes", 2)] {
        let rows = results
            .iter()
            .filter(|(r, _)| r.op == Op::Search)
            .map(|(r, m)| {
                (
                    format!("{} conns", r.conns),
                    ratio(&m[idx], &m[0]),
                    clean(&[&m[0], &m[idx]]),
                )
            })
            .collect();
        check(
            format!("search ops/s ratio PigeonAir {topo} / slapd, every concurrency,"),
            rows,
            SEARCH_GOAL,
        );
    }
    let rows = results
        .iter()
        .filter(|(r, _)| r.op.writes())
        .map(|(r, m)| {
            (
                format!("{} {}", r.op.label(), r.conns),
                ratio(&m[2], &m[0]),
                clean(&[&m[0], &m[2]]),
            )
        })
        .collect();
    check(
        "add and modify ops/s ratio PigeonAir 3 nodes / slapd".to_string(),
        rows,
        WRITE_GOAL_3,
    );
    all
}

// ---------------------------------------------------------------------------------

fn main() {
    let o = opts();
    let ol = find_openldap();
    let bin = common::pigeonair_binary(o.bench_mode, "ldap_load");
    let pa = PigeonAir { bin };
    let mut lab = Lab::new("ldap_load", o.keep);
    eprintln!(
        "ldap_load: {} mode, {} accounts, {} s or {} ops per row, in {}",
        if o.bench_mode {
            "bench"
        } else {
            "test (smoke)"
        },
        o.accounts,
        o.seconds,
        o.max_ops,
        lab.root.display()
    );

    let t = Instant::now();
    let hashes = password_hashes();
    let admin_hash = String::from_utf8(pigeonair::directory::password::hash(ADMIN_PW.as_bytes()))
        .expect("an ASCII hash");
    let ldif = lab.root.join("accounts.ldif");
    write_accounts_ldif(&ldif, o.accounts, &hashes);
    eprintln!(
        "ldap_load: {} argon2id hashes and the LDIF in {:.1} s",
        PASSWORDS + 1,
        t.elapsed().as_secs_f64()
    );

    // slapd
    let slapd_load = start_slapd(&mut lab, &ol, &ldif, &admin_hash);
    eprintln!(
        "ldap_load: slapadd of {} accounts: {:.1} s",
        o.accounts,
        slapd_load.as_secs_f64()
    );
    {
        // slapd must really verify the argon2id hash: the right password binds, a
        // wrong one does not (only here: a failed bind would slow PigeonAir's binds).
        let url = ldap_url(SLAPD_HOST);
        let mut c = connect(&url).expect("LDAP to slapd");
        bind(&mut c, &user_dn("user1"), &password_of(1))
            .expect("slapd refused an account's bind with the argon2id hash");
        let wrong = bind(&mut c, &user_dn("user1"), "not-the-password");
        assert!(wrong.is_err(), "slapd accepted a wrong password");
    }

    // PigeonAir, one node.
    let mut single = pa.node(&lab, &o, 0);
    let pa1_load = pa.init_and_import(&single, &ldif, o.accounts);
    eprintln!(
        "ldap_load: PigeonAir ldif import of {} accounts (1 node): {:.1} s",
        o.accounts,
        pa1_load.as_secs_f64()
    );
    let ready = Duration::from_secs(120 + o.accounts as u64 / 500);
    pa.start(&mut lab, &mut single, &["run"], ready);
    pa.wait_published(&single, ready);
    pa.wait_converged(&single, 1, COMMAND_TIMEOUT);

    // PigeonAir, three nodes: the first imports, the others join and catch up.
    let mut cluster: Vec<PaNode> = (1..=3).map(|i| pa.node(&lab, &o, i)).collect();
    let pa3_load = pa.init_and_import(&cluster[0], &ldif, o.accounts);
    eprintln!(
        "ldap_load: PigeonAir ldif import of {} accounts (first of 3 nodes): {:.1} s",
        o.accounts,
        pa3_load.as_secs_f64()
    );
    pa.start(&mut lab, &mut cluster[0], &["run"], ready);
    let t = Instant::now();
    // A node that joins before the import is in a snapshot is sent only the log, so it
    // would never hold the imported accounts: wait for the snapshot first.
    pa.wait_published(&cluster[0], ready);
    eprintln!(
        "ldap_load: the import is in a snapshot {:.1} s after `run` printed ready",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let peer = format!("{}:{CLUSTER_PORT}", cluster[0].host);
    for i in 1..3 {
        let token = pa.cli(&cluster[0], &["token", "create"], COMMAND_TIMEOUT);
        let token = token.trim().to_string();
        assert!(token.starts_with("PA1."), "unexpected token {token:?}");
        pa.start(
            &mut lab,
            &mut cluster[i],
            &["join", "--token", &token, "--peer", &peer],
            ready,
        );
    }
    let first_leader = pa.wait_converged(&cluster[0], 3, ready);
    eprintln!(
        "ldap_load: nodes 2 and 3 joined and all three agree (digests equal) after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let leader_index = |id: u64| {
        cluster
            .iter()
            .position(|n| n.id == id)
            .expect("the leader is one of the three")
    };
    let mut leader = leader_index(first_leader.0);
    // Terms and leaders seen at each check: a change means an election during the run.
    let mut leaders_seen = vec![first_leader];
    let cluster_pids: Vec<u32> = cluster.iter().map(|n| lab.pid(&n.name)).collect();
    let cluster_target = |leader: usize| Target {
        name: "PigeonAir 3 nodes",
        read_urls: if o.spread_reads {
            cluster.iter().map(|n| ldap_url(&n.host)).collect()
        } else {
            vec![ldap_url(&cluster[leader].host)]
        },
        write_url: ldap_url(&cluster[leader].host),
        pids: cluster_pids.clone(),
    };

    let mut targets = [
        Target {
            name: "slapd",
            read_urls: vec![ldap_url(SLAPD_HOST)],
            write_url: ldap_url(SLAPD_HOST),
            pids: vec![lab.pid("slapd")],
        },
        Target {
            name: "PigeonAir 1 node",
            read_urls: vec![ldap_url(&single.host)],
            write_url: ldap_url(&single.host),
            pids: vec![lab.pid(&single.name)],
        },
        cluster_target(leader),
    ];
    // Every target answers with the loaded data and takes an account's bind.
    for target in &targets {
        let k = o.accounts - 1;
        let mut c = connect_admin(&target.read_urls[0])
            .unwrap_or_else(|e| panic!("{}: administrator bind: {e}", target.name));
        search_mail(&mut c, k).unwrap_or_else(|e| panic!("{}: {e}", target.name));
        bind(&mut c, &user_dn(&format!("user{k}")), &password_of(k))
            .unwrap_or_else(|e| panic!("{}: account bind: {e}", target.name));
    }

    let plan = Plan {
        accounts: o.accounts,
        seconds: o.seconds,
        max_ops: o.max_ops,
        hashes: &hashes,
    };
    // A short unreported search pass per target, so no target meets a cold cache first.
    for target in &targets {
        let warm = Plan {
            seconds: (o.seconds / 2.0).min(1.0),
            ..plan
        };
        let _ = measure(
            &warm,
            target,
            99,
            Row {
                op: Op::Search,
                conns: 4,
            },
        );
    }

    let mut results: Vec<(Row, [Measure; 3])> = Vec::new();
    for (ri, row) in ROWS.iter().enumerate() {
        if !o.ops.contains(&row.op) {
            continue;
        }
        let mut ms: Vec<Measure> = Vec::new();
        for ti in 0..targets.len() {
            if ti == 2 {
                // Send the cluster's row to the leader reported just before it.
                let now = pa.wait_converged(&cluster[leader], 3, ready);
                if now != *leaders_seen.last().expect("a first leader") {
                    leaders_seen.push(now);
                    leader = leader_index(now.0);
                    targets[2] = cluster_target(leader);
                }
            }
            let target = &targets[ti];
            let m = measure(&plan, target, ri, *row);
            eprintln!(
                "ldap_load: {} {} x{} on {}: {:.0} ops/s, p99 {:.2} ms, {} ok, {} errors, \
                 CPU per op: server {} us, clients {} us{}",
                clock(),
                row.op.label(),
                row.conns,
                target.name,
                m.ops_per_sec(),
                m.p99_ms(),
                m.ok,
                m.errors,
                m.cpu_us_per_op(m.server_cpu),
                m.cpu_us_per_op(m.client_cpu),
                if m.first_errors.is_empty() {
                    String::new()
                } else {
                    format!(" (first: {:?})", m.first_errors)
                }
            );
            ms.push(m);
        }
        if row.op.writes() {
            // Let the followers finish applying before the next row is measured.
            let now = pa.wait_converged(&cluster[leader], 3, ready);
            if now != *leaders_seen.last().expect("a first leader") {
                leaders_seen.push(now);
                leader = leader_index(now.0);
                targets[2] = cluster_target(leader);
            }
        }
        for name in [
            "slapd",
            "pigeonair-1",
            "pigeonair-3-n1",
            "pigeonair-3-n2",
            "pigeonair-3-n3",
        ] {
            lab.check_alive(name);
        }
        let ms: [Measure; 3] = ms.try_into().unwrap_or_else(|_| unreachable!());
        results.push((*row, ms));
    }
    let last = pa.wait_converged(&cluster[leader], 3, ready);
    if last != *leaders_seen.last().expect("a first leader") {
        leaders_seen.push(last);
    }

    println!();
    println!(
        "ldap_load: {} accounts; each row at most {} s or {} ops; one ldap3 connection per thread; \
         PigeonAir 3 nodes: reads via {}, writes via the leader",
        o.accounts,
        o.seconds,
        o.max_ops,
        if o.spread_reads {
            "all three nodes (round robin)"
        } else {
            "the leader"
        },
    );
    let seen: Vec<String> = leaders_seen
        .iter()
        .map(|(id, term)| format!("node {} (term {term})", leader_index(*id) + 1))
        .collect();
    println!(
        "PigeonAir 3 nodes: leader {}{}",
        seen.join(" -> "),
        if seen.len() > 1 {
            "  (LEADER CHANGED during the run; each row went to the leader reported just before it)"
        } else {
            ", no election during the run"
        }
    );
    println!(
        "load: slapadd {:.1} s; PigeonAir ldif import {:.1} s (1 node), {:.1} s (first of 3 nodes)",
        slapd_load.as_secs_f64(),
        pa1_load.as_secs_f64(),
        pa3_load.as_secs_f64()
    );
    println!();
    print_table(&results);
    println!();
    print_cpu_table(&results);
    println!();
    println!("goals:");
    let met = print_goals(&results);
    let errors: u64 = results
        .iter()
        .flat_map(|(_, ms)| ms.iter())
        .map(|m| m.errors)
        .sum();
    if errors > 0 {
        println!("RUN HAD {errors} ERRORS (see the rows marked ERRORS and the log above)");
    } else {
        println!("no errors: every response was checked");
    }
    if !met {
        println!("(goals not met are reported, not failed)");
    }
    drop(lab);
    assert_eq!(errors, 0, "the run had errors");
}

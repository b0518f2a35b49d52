//! Import scale benchmark: what N accounts (1,000,000 by default) cost in PigeonAir and in
//! OpenLDAP's slapd (back-mdb), on the same machine, in the same run, with the same data.
//!
//! 1. Write one LDIF of N accounts `uid=userK,ou=people,dc=example.org,ou=domains,
//!    dc=pigeonair` (plus the domain and `ou=people`), every account with the same
//!    precomputed argon2id `userPassword` (`{ARGON2}$argon2id$...`, made by PigeonAir's
//!    own password code).
//! 2. PigeonAir, one node on `127.0.33.1`: `init`, then `ldif import` timed, its peak RSS
//!    (GNU `/usr/bin/time -f %M` when present, else `VmHWM` polled every 50 ms) and the
//!    data directory's size (sum of file sizes and of allocated blocks). Then `run`; wait
//!    until it answers an LDAP bind, then until its first-start work settles (after an
//!    offline import the node writes a snapshot: `raft-snapshot.bin` exists and keeps
//!    its size for 2 s, at most 10 min); `VmRSS`/`VmHWM` of the node; a bounded number of
//!    indexed searches `(mail=userK@example.org)` and `(uid=userK)` for random K as the
//!    administrator over one `ldap3` connection, each checked to return exactly userK;
//!    memory and disk again. The node is stopped before slapd's turn.
//! 3. slapd: the suffix and `ou=domains` with a first `slapadd`, then the same LDIF with
//!    `slapadd -q` (quick mode, as usual for bulk loads) timed, peak RSS and disk the
//!    same way; `slapd -d 0` on `127.0.33.9`, the same searches and memory readings.
//! 4. One table with both servers and the ratios PigeonAir/slapd, then the goal line:
//!    indexed searches under 1 ms (PigeonAir's p99) at N accounts.
//!
//! slapd indexes `objectClass`, `uid`, `mail` and `mailLocalAddress` for equality;
//! PigeonAir keeps its default indexes, which cover those and more (see `INDEX_NOTE`).
//!
//! `cargo bench --bench import_scale` uses the optimised `pigeonair` cargo built with
//! it, with 1,000,000 accounts (`-- --accounts N`, `-- --searches N`, `-- --keep`;
//! `PIGEONAIR_BENCH_ACCOUNTS=N` also sets the count). Without `--bench` (`cargo test
//! --benches`) a smoke pass runs with 2,000 accounts and the test-profile binary.
//! slapd missing is an error in both modes. Every child process is killed when the
//! program ends, also on a panic.

mod common;

use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Lab;
use ldap3::{LdapConn, LdapConnSettings, Scope, SearchEntry};

const ADMIN_DN: &str = "cn=admin,ou=system,dc=pigeonair";
const ADMIN_PW: &str = "import-scale-admin-pw";
const USER_PW: &str = "import-scale-user-pw";
const SUFFIX: &str = "dc=pigeonair";
const DOMAIN_DN: &str = "dc=example.org,ou=domains,dc=pigeonair";
const PEOPLE_DN: &str = "ou=people,dc=example.org,ou=domains,dc=pigeonair";
const MAIL_DOMAIN: &str = "example.org";

const PA_HOST: &str = "127.0.33.1";
const SLAPD_HOST: &str = "127.0.33.9";
const LDAP_PORT: u16 = 3389;
const CLUSTER_PORT: u16 = 7400;

/// slapd's indexes: equality on these, nothing else.
const SLAPD_INDEXED: [&str; 4] = ["objectClass", "uid", "mail", "mailLocalAddress"];
/// slapd's back-mdb map size: 16 GiB.
const SLAPD_MAXSIZE: u64 = 16 << 30;
const INDEX_NOTE: &str = "slapd indexes objectClass, uid, mail, mailLocalAddress (eq); \
     PigeonAir keeps its defaults, which also index mail and cn for substrings (trigrams) \
     and mailAlternateAddress, mailHost, member, uniqueMember, entryUUID (eq)";

/// Searches are fast when the latency's 99th percentile is under this.
const SEARCH_GOAL_US: u64 = 1_000;
/// Searches done before the measured ones (on the same connection), not reported.
const WARMUP_SEARCHES: usize = 20;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node may take to write its first snapshot after start.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(600);
/// The snapshot file must keep its size this long.
const SETTLE_STABLE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------
// Options

struct Opts {
    accounts: usize,
    searches: usize,
    keep: bool,
    bench_mode: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let env_accounts = std::env::var("PIGEONAIR_BENCH_ACCOUNTS")
        .ok()
        .map(|v| v.parse().expect("PIGEONAIR_BENCH_ACCOUNTS=N"));
    let mut o = Opts {
        accounts: env_accounts.unwrap_or(if bench_mode { 1_000_000 } else { 2_000 }),
        searches: if bench_mode { 2_000 } else { 200 },
        keep: false,
        bench_mode,
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
            "--accounts" => o.accounts = value("--accounts").parse().expect("--accounts N"),
            "--searches" => o.searches = value("--searches").parse().expect("--searches N"),
            other => eprintln!("import_scale: ignoring argument {other:?}"),
        }
    }
    assert!(o.accounts >= 10, "--accounts must be at least 10");
    assert!(
        (1..=1_000_000).contains(&o.searches),
        "--searches must be in 1..=1000000"
    );
    o
}

// ---------------------------------------------------------------------------------
// OpenLDAP installation

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

/// GNU time, when `/usr/bin/time -f %M` works here.
fn gnu_time() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/time");
    let ok = Command::new(&p)
        .args(["-f", "%M", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(p)
}

// ---------------------------------------------------------------------------------
// Processes

/// The direct children of `pid` (Linux `/proc/PID/task/PID/children`).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A one-shot child killed (with its own children: `/usr/bin/time` does not pass a
/// kill on) when dropped, also during a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            for grandchild in children_of(self.0.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &grandchild.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// What running a load command cost.
struct RunCost {
    wall: Duration,
    /// Peak resident set of the loader, KiB.
    peak_kib: Option<u64>,
    /// User plus system CPU seconds (GNU time only).
    cpu_secs: Option<f64>,
    /// How the peak was measured.
    how: &'static str,
}

/// Run `program args` to completion (at most `timeout`), stderr appended to `log`,
/// measuring its wall time, peak RSS and CPU time.
fn run_measured(
    program: &Path,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
    log: &Path,
    timeout: Duration,
) -> RunCost {
    let time = gnu_time();
    let stats = log.with_extension("time");
    let mut cmd = match &time {
        Some(t) => {
            let mut c = Command::new(t);
            c.arg("-f")
                .arg("%M %U %S")
                .arg("-o")
                .arg(&stats)
                .arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args).envs(env.iter().copied());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let name = program.file_name().unwrap_or_default().to_string_lossy();
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
    let mut guard = KillOnDrop(child);
    let deadline = started + timeout;
    let mut polled_hwm: Option<u64> = None;
    let status = loop {
        if let Some(s) = guard.0.try_wait().expect("waiting for a child") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not finish within {timeout:?}; log {}:\n{}",
            log.display(),
            common::log_tail(log, 20)
        );
        if time.is_none() {
            if let Some(m) = proc_mem(guard.0.id()) {
                polled_hwm = polled_hwm.max(Some(m.hwm_kib));
            }
        }
        std::thread::sleep(POLL);
    };
    let wall = started.elapsed();
    drop(guard);
    assert!(
        status.success(),
        "{name} {:?} failed ({status}); log {}:\n{}",
        args,
        log.display(),
        common::log_tail(log, 20)
    );
    match time {
        Some(_) => {
            let text = std::fs::read_to_string(&stats).unwrap_or_default();
            let f: Vec<&str> = text
                .lines()
                .last()
                .unwrap_or_default()
                .split_whitespace()
                .collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
            RunCost {
                wall,
                peak_kib: num(0).map(|v| v as u64),
                cpu_secs: num(1).zip(num(2)).map(|(u, s)| u + s),
                how: "GNU time %M (max RSS)",
            }
        }
        None => RunCost {
            wall,
            peak_kib: polled_hwm,
            cpu_secs: None,
            how: "VmHWM polled every 50 ms",
        },
    }
}

// ---------------------------------------------------------------------------------
// Measurements of processes and files

/// Memory figures of a process from `/proc/PID/status`, KiB.
#[derive(Clone, Copy, Debug)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
}

fn proc_mem(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:").unwrap_or(0),
        file_kib: field("RssFile:").unwrap_or(0) + field("RssShmem:").unwrap_or(0),
    })
}

/// User plus system CPU time of a process, from `/proc/PID/stat` (USER_HZ = 100).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Apparent size (sum of file lengths) and allocated size (`st_blocks * 512`).
#[derive(Clone, Copy, Debug, Default)]
struct Disk {
    apparent: u64,
    allocated: u64,
}

impl std::ops::AddAssign for Disk {
    fn add_assign(&mut self, o: Disk) {
        self.apparent += o.apparent;
        self.allocated += o.allocated;
    }
}

/// The size of a file or of everything below a directory (at most 10,000 entries).
fn disk_usage(path: &Path) -> Disk {
    let mut total = Disk::default();
    let mut stack = vec![path.to_path_buf()];
    let mut seen = 0usize;
    while let Some(p) = stack.pop() {
        seen += 1;
        assert!(
            seen <= 10_000,
            "more than 10,000 files under {}",
            path.display()
        );
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        } else {
            total += Disk {
                apparent: meta.len(),
                allocated: meta.blocks() * 512,
            };
        }
    }
    total
}

/// The size of each top-level file or directory under `dir`, largest first.
fn disk_breakdown(dir: &Path) -> String {
    let mut parts: Vec<(String, Disk)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        disk_usage(&e.path()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    parts.sort_by_key(|(_, d)| std::cmp::Reverse(d.allocated));
    parts
        .iter()
        .map(|(n, d)| format!("{n} {} / {}", mib(d.apparent), mib(d.allocated)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn kib_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------
// Data

fn user_dn(k: usize) -> String {
    format!("uid=user{k},{PEOPLE_DN}")
}

/// The domain, `ou=people` and the accounts: the entries both servers load, all with
/// the same password hash.
fn write_accounts_ldif(path: &Path, accounts: usize, hash: &str) {
    let mut out = BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).expect("creating the LDIF"),
    );
    write!(
        out,
        "dn: {DOMAIN_DN}\nobjectClass: top\nobjectClass: domain\ndc: {MAIL_DOMAIN}\n\n\
         dn: {PEOPLE_DN}\nobjectClass: top\nobjectClass: organizationalUnit\nou: people\n\n"
    )
    .expect("writing the LDIF");
    for k in 0..accounts {
        write!(
            out,
            "dn: uid=user{k},{PEOPLE_DN}\n\
             objectClass: top\n\
             objectClass: inetOrgPerson\n\
             objectClass: inetLocalMailRecipient\n\
             uid: user{k}\n\
             cn: user{k}\n\
             sn: Bench\n\
             mail: user{k}@{MAIL_DOMAIN}\n\
             mailLocalAddress: user{k}@{MAIL_DOMAIN}\n\
             mailHost: node1.{MAIL_DOMAIN}\n\
             userPassword: {hash}\n\n"
        )
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
// LDAP client and the search measurement

fn connect_admin(url: &str) -> Result<LdapConn, String> {
    let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(5));
    let mut c =
        LdapConn::with_settings(settings, url).map_err(|e| format!("connect {url}: {e}"))?;
    let r = c
        .with_timeout(OP_TIMEOUT)
        .simple_bind(ADMIN_DN, ADMIN_PW)
        .map_err(|e| format!("bind {ADMIN_DN}: {e}"))?;
    common::check_rc("bind", ADMIN_DN, &r)?;
    Ok(c)
}

#[derive(Clone, Copy)]
enum Key {
    Mail,
    Uid,
}

impl Key {
    fn filter(self, k: usize) -> String {
        match self {
            Key::Mail => format!("(mail=user{k}@{MAIL_DOMAIN})"),
            Key::Uid => format!("(uid=user{k})"),
        }
    }
}

/// Search for account `k` from the suffix; panics unless exactly userK comes back.
fn search_one(c: &mut LdapConn, key: Key, k: usize, server: &str) {
    let filter = key.filter(k);
    let r = c
        .with_timeout(OP_TIMEOUT)
        .search(SUFFIX, Scope::Subtree, &filter, vec!["mail", "mailHost"])
        .unwrap_or_else(|e| panic!("{server}: search {filter}: {e}"));
    assert_eq!(
        r.1.rc, 0,
        "{server}: search {filter}: rc {} {}",
        r.1.rc, r.1.text
    );
    assert_eq!(
        r.0.len(),
        1,
        "{server}: search {filter}: {} entries, not 1",
        r.0.len()
    );
    let e = SearchEntry::construct(r.0.into_iter().next().expect("one entry"));
    assert!(
        e.dn.eq_ignore_ascii_case(&user_dn(k)) && e.attrs.contains_key("mailHost"),
        "{server}: search {filter}: unexpected entry {} {:?}",
        e.dn,
        e.attrs
    );
}

/// splitmix64: the same accounts for both servers.
struct Picker(u64);

impl Picker {
    fn new(seed: u64) -> Picker {
        Picker(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED)
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

/// Latencies of searches, microseconds, sorted.
struct Lat(Vec<u64>);

impl Lat {
    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

/// `searches` searches by `key` for random accounts over one administrator connection,
/// after `WARMUP_SEARCHES` unreported ones.
fn measure_searches(url: &str, key: Key, o: &Opts, server: &str) -> Lat {
    let mut c = connect_admin(url).unwrap_or_else(|e| panic!("{server}: {e}"));
    let mut pick = Picker::new(match key {
        Key::Mail => 1,
        Key::Uid => 2,
    });
    for _ in 0..WARMUP_SEARCHES {
        search_one(&mut c, key, pick.below(o.accounts), server);
    }
    let mut lat = Vec::with_capacity(o.searches);
    for _ in 0..o.searches {
        let k = pick.below(o.accounts);
        let t = Instant::now();
        search_one(&mut c, key, k, server);
        lat.push(t.elapsed().as_micros() as u64);
    }
    let _ = c.unbind();
    lat.sort_unstable();
    Lat(lat)
}

/// Poll an administrator bind until it works; the time it took.
fn wait_ldap(lab: &mut Lab, name: &str, url: &str, timeout: Duration) -> Duration {
    lab.wait_admin_bind(name, timeout, POLL, || {
        connect_admin(url).map(|mut c| {
            let _ = c.unbind();
        })
    })
}

// ---------------------------------------------------------------------------------
// One server's results

#[derive(Default)]
struct Result1 {
    import: Option<RunCost>,
    disk_import: Disk,
    /// From spawning the server until it answered a bind.
    start: Duration,
    /// From answering until the first-start work settled (PigeonAir).
    settle: Option<Duration>,
    settle_note: String,
    /// CPU time the server used from its start until settled.
    cpu_settled: Option<Duration>,
    mem_settled: Option<Mem>,
    disk_settled: Disk,
    mail: Option<Lat>,
    uid: Option<Lat>,
    mem_after: Option<Mem>,
    disk_after: Disk,
}

fn measure_running(lab: &mut Lab, name: &str, url: &str, pid: u32, o: &Opts, r: &mut Result1) {
    r.mail = Some(measure_searches(url, Key::Mail, o, name));
    r.uid = Some(measure_searches(url, Key::Uid, o, name));
    lab.check_alive(name);
    r.mem_after = proc_mem(pid);
}

// ---------------------------------------------------------------------------------
// PigeonAir

fn pa_log_env() -> String {
    std::env::var("PIGEONAIR_LOG").unwrap_or_else(|_| "warn,pigeonair::cluster::member=info".into())
}

fn run_pigeonair(lab: &mut Lab, bin: &Path, ldif: &Path, o: &Opts) -> Result1 {
    let data = lab.root.join("pigeonair-data");
    let config = lab.root.join("pigeonair.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"import-scale\"\ndata_dir = {data:?}\n\n\
             [ldap]\nlisten = [\"{PA_HOST}:{LDAP_PORT}\"]\n\n\
             [cluster]\nlisten = \"{PA_HOST}:{CLUSTER_PORT}\"\n",
            data = data.to_str().expect("utf-8 temp path"),
        ),
    )
    .expect("writing the node config");
    let mut init = Command::new(bin);
    init.args(["init", "--config"])
        .arg(&config)
        .args(["--admin-password", ADMIN_PW]);
    common::run_within(init, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("pigeonair init: {e}"));

    let mut r = Result1::default();
    eprintln!(
        "import_scale: pigeonair ldif import of {} accounts",
        o.accounts
    );
    let cost = run_measured(
        bin,
        &[
            "ldif".as_ref(),
            "import".as_ref(),
            ldif.as_os_str(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
        &[("PIGEONAIR_LOG", "warn")],
        &lab.root.join("pigeonair-import.log"),
        import_timeout(o.accounts),
    );
    eprintln!(
        "import_scale: pigeonair ldif import: {:.1} s",
        cost.wall.as_secs_f64()
    );
    r.import = Some(cost);
    r.disk_import = disk_usage(&data);
    println!("PigeonAir after import: {}", disk_breakdown(&data));

    let mut run = Command::new(bin);
    run.args(["run", "--config"])
        .arg(&config)
        .env("PIGEONAIR_LOG", pa_log_env());
    let _ = lab.spawn("pigeonair", run);
    let pid = lab.pid("pigeonair");
    let url = format!("ldap://{PA_HOST}:{LDAP_PORT}");
    r.start = wait_ldap(lab, "pigeonair", &url, Duration::from_secs(300));
    eprintln!(
        "import_scale: pigeonair answers LDAP {:.2} s after start; waiting for its first snapshot",
        r.start.as_secs_f64()
    );

    // First-start work: the snapshot of the imported directory.
    let snap = data.join("raft-snapshot.bin");
    // A snapshot being written: `raft-snapshot*.tmp` beside it.
    let writing = || {
        std::fs::read_dir(&data)
            .map(|rd| {
                rd.filter_map(|e| e.ok()).any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("raft-snapshot") && n.ends_with(".tmp")
                })
            })
            .unwrap_or(false)
    };
    let started = Instant::now();
    let mut last: Option<(u64, Instant)> = None;
    loop {
        lab.check_alive("pigeonair");
        let size = std::fs::metadata(&snap).ok().map(|m| m.len());
        match (size, last) {
            (Some(s), Some((ls, since))) if s == ls && !writing() => {
                if since.elapsed() >= SETTLE_STABLE {
                    // When the final size was first seen (to the 200 ms poll).
                    r.settle = Some(since.saturating_duration_since(started));
                    r.settle_note = format!("raft-snapshot.bin {}", mib(s));
                    break;
                }
            }
            (Some(s), _) => last = Some((s, Instant::now())),
            (None, _) => last = None,
        }
        if started.elapsed() >= SETTLE_TIMEOUT {
            r.settle_note = format!(
                "NOT settled: no stable raft-snapshot.bin within {SETTLE_TIMEOUT:?} (size {size:?})"
            );
            eprintln!("import_scale: WARNING: pigeonair {}", r.settle_note);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    r.cpu_settled = cpu_time(pid);
    r.mem_settled = proc_mem(pid);
    r.disk_settled = disk_usage(&data);
    let published = std::fs::read_to_string(lab.root.join("pigeonair.log"))
        .unwrap_or_default()
        .contains("offline import published in a snapshot");
    eprintln!(
        "import_scale: pigeonair settled after {:.1} s ({}); log says published: {published}",
        r.settle.unwrap_or_default().as_secs_f64(),
        r.settle_note
    );
    if !published {
        r.settle_note
            .push_str("; the log has no \"offline import published in a snapshot\"");
    }
    println!("PigeonAir after settle: {}", disk_breakdown(&data));

    measure_running(lab, "pigeonair", &url, pid, o, &mut r);
    r.disk_after = disk_usage(&data);
    println!("PigeonAir after searches: {}", disk_breakdown(&data));
    lab.stop("pigeonair");
    r
}

fn import_timeout(accounts: usize) -> Duration {
    Duration::from_secs(300 + accounts as u64 / 250)
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
         directory {}\nmaxsize {SLAPD_MAXSIZE}\n",
        db.display()
    ));
    for a in SLAPD_INDEXED {
        text.push_str(&format!("index {a} eq\n"));
    }
    text
}

fn run_slapd(lab: &mut Lab, ol: &OpenLdap, ldif: &Path, admin_hash: &str, o: &Opts) -> Result1 {
    let db = lab.root.join("slapd-db");
    std::fs::create_dir_all(&db).expect("slapd db dir");
    let conf = lab.root.join("slapd.conf");
    std::fs::write(&conf, slapd_config(ol, &db, admin_hash)).expect("slapd.conf");
    let base = lab.root.join("slapd-base.ldif");
    write_slapd_base_ldif(&base);
    let mut c = Command::new(&ol.slapadd);
    c.arg("-f").arg(&conf).arg("-q").arg("-l").arg(&base);
    common::run_within(c, COMMAND_TIMEOUT)
        .unwrap_or_else(|e| panic!("slapadd of the base entries: {e}"));

    let mut r = Result1::default();
    eprintln!("import_scale: slapadd -q of {} accounts", o.accounts);
    let cost = run_measured(
        &ol.slapadd,
        &[
            "-f".as_ref(),
            conf.as_os_str(),
            "-q".as_ref(),
            "-l".as_ref(),
            ldif.as_os_str(),
        ],
        &[],
        &lab.root.join("slapadd.log"),
        import_timeout(o.accounts),
    );
    eprintln!("import_scale: slapadd: {:.1} s", cost.wall.as_secs_f64());
    r.import = Some(cost);
    r.disk_import = disk_usage(&db);
    println!("slapd after slapadd: {}", disk_breakdown(&db));

    let url = format!("ldap://{SLAPD_HOST}:{LDAP_PORT}");
    let mut cmd = Command::new(&ol.slapd);
    cmd.args(["-d", "0", "-h"])
        .arg(format!("{url}/"))
        .arg("-f")
        .arg(&conf);
    let _ = lab.spawn("slapd", cmd);
    let pid = lab.pid("slapd");
    r.start = wait_ldap(lab, "slapd", &url, COMMAND_TIMEOUT);
    r.cpu_settled = cpu_time(pid);
    r.mem_settled = proc_mem(pid);
    r.disk_settled = disk_usage(&db);
    measure_running(lab, "slapd", &url, pid, o, &mut r);
    r.disk_after = disk_usage(&db);
    lab.stop("slapd");
    r
}

// ---------------------------------------------------------------------------------
// Report

/// One row: label, PigeonAir, slapd, ratio.
type Row = (String, String, String, String);

fn ratio(pa: Option<f64>, slapd: Option<f64>) -> String {
    match (pa, slapd) {
        (Some(p), Some(s)) if s > 0.0 => format!("{:.2}", p / s),
        _ => "-".to_string(),
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".to_string())
}

fn scalar(
    out: &mut Vec<Row>,
    label: &str,
    p: Option<f64>,
    s: Option<f64>,
    fmt: &dyn Fn(f64) -> String,
) {
    out.push((label.to_string(), opt(p, fmt), opt(s, fmt), ratio(p, s)));
}

fn disk_row(out: &mut Vec<Row>, label: &str, p: Disk, s: Disk) {
    out.push((
        label.to_string(),
        format!("{} / {}", mib(p.apparent), mib(p.allocated)),
        format!("{} / {}", mib(s.apparent), mib(s.allocated)),
        format!(
            "{} / {}",
            ratio(Some(p.apparent as f64), Some(s.apparent as f64)),
            ratio(Some(p.allocated as f64), Some(s.allocated as f64))
        ),
    ));
}

fn rows(pa: &Result1, sl: &Result1) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    let secs = |v: f64| format!("{v:.1} s");
    let mibf = |v: f64| format!("{:.1} MiB", v / 1024.0);
    let us = |v: f64| format!("{v:.0}");
    let (ip, is) = (pa.import.as_ref(), sl.import.as_ref());
    scalar(
        &mut out,
        "import time (wall)",
        ip.map(|c| c.wall.as_secs_f64()),
        is.map(|c| c.wall.as_secs_f64()),
        &secs,
    );
    scalar(
        &mut out,
        "import CPU (user+sys)",
        ip.and_then(|c| c.cpu_secs),
        is.and_then(|c| c.cpu_secs),
        &secs,
    );
    scalar(
        &mut out,
        "import peak RSS",
        ip.and_then(|c| c.peak_kib).map(|v| v as f64),
        is.and_then(|c| c.peak_kib).map(|v| v as f64),
        &mibf,
    );
    disk_row(
        &mut out,
        "disk after import (apparent / allocated)",
        pa.disk_import,
        sl.disk_import,
    );
    scalar(
        &mut out,
        "start until LDAP answers",
        Some(pa.start.as_secs_f64()),
        Some(sl.start.as_secs_f64()),
        &|v| format!("{v:.2} s"),
    );
    scalar(
        &mut out,
        "first-start snapshot on disk (after answering)",
        pa.settle.map(|d| d.as_secs_f64()),
        sl.settle.map(|d| d.as_secs_f64()),
        &secs,
    );
    scalar(
        &mut out,
        "server CPU from start to settled",
        pa.cpu_settled.map(|d| d.as_secs_f64()),
        sl.cpu_settled.map(|d| d.as_secs_f64()),
        &secs,
    );
    disk_row(
        &mut out,
        "disk after settle (apparent / allocated)",
        pa.disk_settled,
        sl.disk_settled,
    );
    type Field = fn(&Mem) -> u64;
    let fields: [(&str, bool, Field); 6] = [
        ("running VmRSS after settle", false, |m| m.rss_kib),
        ("running VmHWM after settle", false, |m| m.hwm_kib),
        ("running VmRSS after searches", true, |m| m.rss_kib),
        ("running VmHWM after searches", true, |m| m.hwm_kib),
        ("  of which RssAnon (after searches)", true, |m| m.anon_kib),
        ("  of which RssFile+RssShmem (after searches)", true, |m| {
            m.file_kib
        }),
    ];
    for (label, after, f) in fields {
        let mem = |r: &Result1| {
            let m = if after { r.mem_after } else { r.mem_settled };
            m.as_ref().map(|m| f(m) as f64)
        };
        scalar(&mut out, label, mem(pa), mem(sl), &mibf);
    }
    disk_row(
        &mut out,
        "disk after searches (apparent / allocated)",
        pa.disk_after,
        sl.disk_after,
    );
    type Lats = fn(&Result1) -> Option<&Lat>;
    let keys: [(&str, Lats); 2] = [("mail", |r| r.mail.as_ref()), ("uid", |r| r.uid.as_ref())];
    for (name, get) in keys {
        for (what, p) in [("p50", 50.0), ("p99", 99.0), ("max", 100.0)] {
            let v = |r: &Result1| get(r).map(|l| l.pct(p) as f64);
            scalar(
                &mut out,
                &format!("search ({name}=) {what}, us"),
                v(pa),
                v(sl),
                &us,
            );
        }
    }
    out
}

fn print_table(rows: &[Row]) {
    println!("| | PigeonAir | slapd | PigeonAir / slapd |");
    println!("|---|--:|--:|--:|");
    for (l, p, s, r) in rows {
        println!("| {l} | {p} | {s} | {r} |");
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------

fn main() {
    let o = opts();
    let ol = find_openldap();
    let bin = common::pigeonair_binary(o.bench_mode, "import_scale");
    let mut lab = Lab::new("import_scale", o.keep);
    let load_before = loadavg();
    eprintln!(
        "import_scale: {} mode, {} accounts, {} searches per filter, in {}; load average {}",
        if o.bench_mode {
            "bench"
        } else {
            "test (smoke)"
        },
        o.accounts,
        o.searches,
        lab.root.display(),
        load_before
    );

    let t = Instant::now();
    let user_hash = String::from_utf8(pigeonair::directory::password::hash(USER_PW.as_bytes()))
        .expect("an ASCII hash");
    let admin_hash = String::from_utf8(pigeonair::directory::password::hash(ADMIN_PW.as_bytes()))
        .expect("an ASCII hash");
    let ldif = lab.root.join("accounts.ldif");
    write_accounts_ldif(&ldif, o.accounts, &user_hash);
    let ldif_size = std::fs::metadata(&ldif).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "import_scale: the LDIF ({}) in {:.1} s",
        mib(ldif_size),
        t.elapsed().as_secs_f64()
    );

    let pa = run_pigeonair(&mut lab, &bin, &ldif, &o);
    let sl = run_slapd(&mut lab, &ol, &ldif, &admin_hash, &o);
    let load_after = loadavg();

    let how = |r: &Result1| r.import.as_ref().map(|c| c.how).unwrap_or("-");
    println!();
    println!(
        "import_scale: {} accounts (LDIF {}, {} entries with the domain and ou=people), {}",
        o.accounts,
        mib(ldif_size),
        o.accounts + 2,
        if o.bench_mode {
            "release build"
        } else {
            "SMOKE PASS (test-profile pigeonair)"
        }
    );
    println!(
        "PigeonAir: `pigeonair ldif import` (default batch), default cache_mb; slapd: back-mdb, \
         `slapadd -q` (quick mode: no consistency checks, no sync until the end), maxsize {} GiB",
        SLAPD_MAXSIZE >> 30
    );
    println!("indexes: {INDEX_NOTE}");
    println!(
        "peak RSS: PigeonAir {}, slapadd {}; searches: {} per filter per server after {} \
         unreported, random K, one administrator connection, base {SUFFIX} subtree, each \
         checked to return exactly uid=userK",
        how(&pa),
        how(&sl),
        o.searches,
        WARMUP_SEARCHES
    );
    println!(
        "PigeonAir first start: {}",
        if pa.settle_note.is_empty() {
            "-".to_string()
        } else {
            pa.settle_note.clone()
        }
    );
    println!("load average before {load_before}, after {load_after}");
    println!();
    print_table(&rows(&pa, &sl));
    println!();
    let (mail, uid) = (
        pa.mail.as_ref().expect("measured"),
        pa.uid.as_ref().expect("measured"),
    );
    let worst_p99 = mail.pct(99.0).max(uid.pct(99.0));
    println!(
        "goal: indexed searches under 1 ms at {} accounts: {}   (PigeonAir p99 mail= {} us, \
         uid= {} us; p50 mail= {} us, uid= {} us)",
        o.accounts,
        if worst_p99 < SEARCH_GOAL_US {
            "met"
        } else {
            "NOT met"
        },
        mail.pct(99.0),
        uid.pct(99.0),
        mail.pct(50.0),
        uid.pct(50.0),
    );
    if let Some(m) = pa.mem_after {
        println!(
            "PigeonAir node after searches: VmRSS {} (RssAnon {}, RssFile+Shmem {})",
            kib_mib(m.rss_kib),
            kib_mib(m.anon_kib),
            kib_mib(m.file_kib)
        );
    }
    drop(lab);
}

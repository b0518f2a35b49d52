//! Mail in under load: messages accepted per second (250 after DATA) and messages
//! stored per second (counted in the Maildirs), PigeonAir against Postfix delivering
//! over LMTP to Dovecot, private instances of Debian's packages on this machine, in
//! the same run. Both fsync before the 250 (Postfix's queue file, PigeonAir's spool)
//! and before a message counts as stored (Dovecot `mail_fsync = always`, PigeonAir's
//! Maildir write).
//!
//! Each row sends 4 KiB messages to alice@example.org over C connections (4, 16), one
//! SMTP transaction after another on each connection (EHLO once, then MAIL, RCPT,
//! DATA; no pipelining), bounded by a message count and a time limit; then waits until
//! every accepted message is in the Maildir and checks each Message-ID is there once.
//! Accept latency is from the end of the data to the 250.
//!
//! `cargo bench --bench smtp_load` runs the full pass; without `--bench`
//! (`cargo test --benches`) a smoke pass of a few messages runs. Postfix, Dovecot and
//! dovecot-lmtpd come from `.ci/install-deps`; a missing one is named, and the bench
//! fails.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{find_program, run_within, Lab};

const MESSAGE_BYTES: usize = 4096;

struct Options {
    bench_mode: bool,
    messages: usize,
    row_time: Duration,
    connections: Vec<usize>,
}

fn options() -> Options {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    Options {
        bench_mode,
        messages: if bench_mode { 4000 } else { 20 },
        row_time: Duration::from_secs(if bench_mode { 30 } else { 10 }),
        connections: if bench_mode { vec![4, 16] } else { vec![4] },
    }
}

/// One system under test: where to send, and where the recipient's Maildir is.
struct Target {
    name: &'static str,
    smtp: String,
    maildir: PathBuf,
}

struct Row {
    system: &'static str,
    connections: usize,
    accepted: usize,
    refused: usize,
    accept_secs: f64,
    stored_secs: f64,
    lost: usize,
    duplicated: usize,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() {
    let o = options();
    let mut lab = Lab::new("smtp_load", false);
    // Dovecot's mail processes run as the dovecot user and must reach the lab.
    set_mode(&lab.root, 0o755);
    let pigeonair = start_pigeonair(&mut lab, o.bench_mode);
    let peer = start_postfix_dovecot(&mut lab);
    let mut rows = Vec::new();
    for &c in &o.connections {
        for target in [&pigeonair, &peer] {
            let row = load(target, c, &o);
            print_row(&row);
            rows.push(row);
        }
    }
    println!();
    println!("ratio PigeonAir / Postfix+Dovecot (stored messages per second):");
    for &c in &o.connections {
        let find = |s: &str| rows.iter().find(|r| r.system == s && r.connections == c);
        if let (Some(p), Some(q)) = (find(pigeonair.name), find(peer.name)) {
            let rate = |r: &Row| r.accepted as f64 / r.stored_secs;
            println!(
                "  {c:>2} connections: {:.2}x stored/s, {:.2}x accepted/s, p99 accept {:.2} ms vs {:.2} ms",
                rate(p) / rate(q),
                (p.accepted as f64 / p.accept_secs) / (q.accepted as f64 / q.accept_secs),
                p.p99_ms,
                q.p99_ms
            );
        }
    }
    let lost: usize = rows.iter().map(|r| r.lost + r.duplicated).sum();
    assert_eq!(lost, 0, "messages lost or stored twice (see the table)");
    stop_postfix(&lab);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn start_pigeonair(lab: &mut Lab, bench_mode: bool) -> Target {
    let bin = common::pigeonair_binary(bench_mode, "smtp_load");
    let data = lab.root.join("pigeonair");
    let mut cmd = Command::new(bin);
    cmd.args(["quickstart", "--data-dir"]).arg(&data).args([
        "--admin-password",
        "bench-admin-pw",
        "--ldap-listen",
        "127.0.0.1:0",
        "--ldaps-listen",
        "127.0.0.1:0",
        "--cluster-listen",
        "127.0.0.1:0",
        "--smtp-listen",
        "127.0.0.1:0",
        "--submission-listen",
        "127.0.0.1:0",
        "--submissions-listen",
        "127.0.0.1:0",
    ]);
    cmd.env("RUST_LOG", "warn");
    let lines = lab.spawn("pigeonair", cmd);
    let (mut smtp, mut maildirs) = (None, None);
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("pigeonair quickstart did not start"));
        let t = line.trim();
        if let Some(v) = t.strip_prefix("smtp:") {
            smtp = Some(v.trim().trim_start_matches("smtp://").to_string());
        } else if let Some(v) = t.strip_prefix("maildirs:") {
            maildirs = Some(PathBuf::from(v.trim()));
        } else if t == "ready" {
            break;
        }
    }
    let maildir = maildirs
        .expect("maildirs line")
        .join("example.org/alice/Maildir");
    Target {
        name: "PigeonAir",
        smtp: smtp.expect("smtp line"),
        maildir,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn require(program: &str, package: &str) -> PathBuf {
    find_program(program).unwrap_or_else(|| {
        panic!("smtp_load needs {program}: apt-get install {package} (.ci/install-deps does)")
    })
}

fn start_postfix_dovecot(lab: &mut Lab) -> Target {
    let dovecot = require("dovecot", "dovecot-core");
    let postfix = require("postfix", "postfix");
    assert!(
        Path::new("/usr/lib/dovecot/lmtp").exists(),
        "smtp_load needs Dovecot's LMTP server: apt-get install dovecot-lmtpd (.ci/install-deps does)"
    );
    let root = lab.root.clone();
    let mail = root.join("dovecot-mail");
    for d in ["dovecot-run", "dovecot-state", "dovecot-mail"] {
        std::fs::create_dir_all(root.join(d)).expect("dovecot dirs");
    }
    let chown = Command::new("chown")
        .args(["-R", "dovecot:dovecot"])
        .arg(&mail)
        .status()
        .expect("chown");
    assert!(chown.success(), "chown of the Dovecot mail root");
    let lmtp_port = free_port();
    let conf = root.join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "base_dir = {run}\nstate_dir = {state}\nlog_path = {root}/dovecot.log\n\
             protocols = lmtp\nlisten = 127.0.0.1\nssl = no\n\
             first_valid_uid = 1\nmail_uid = dovecot\nmail_gid = dovecot\n\
             mail_location = maildir:{mail}/%d/%n/Maildir\nmail_fsync = always\n\
             passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
             userdb {{\n  driver = static\n  args = uid=dovecot gid=dovecot home={mail}/%d/%n\n}}\n\
             service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {lmtp_port}\n  }}\n  process_min_avail = 4\n}}\n",
            run = root.join("dovecot-run").display(),
            state = root.join("dovecot-state").display(),
            root = root.display(),
            mail = mail.display(),
        ),
    )
    .expect("dovecot.conf");
    let mut cmd = Command::new(&dovecot);
    cmd.arg("-F").arg("-c").arg(&conf);
    lab.spawn("dovecot", cmd);
    wait_port(lab, "dovecot", lmtp_port);

    let smtp_port = free_port();
    let pf = root.join("postfix");
    std::fs::create_dir_all(&pf).expect("postfix config dir");
    for d in ["postfix-queue", "postfix-data"] {
        std::fs::create_dir_all(root.join(d)).expect("postfix dirs");
    }
    let chown = Command::new("chown")
        .arg("postfix:postfix")
        .arg(root.join("postfix-data"))
        .status()
        .expect("chown");
    assert!(chown.success(), "chown of Postfix's data directory");
    std::fs::write(
        pf.join("main.cf"),
        format!(
            "compatibility_level = 3.6\nqueue_directory = {root}/postfix-queue\n\
             data_directory = {root}/postfix-data\ncommand_directory = /usr/sbin\n\
             daemon_directory = /usr/lib/postfix/sbin\nshlib_directory = /usr/lib/postfix\n\
             meta_directory = /etc/postfix\nmail_owner = postfix\nsetgid_group = postdrop\n\
             inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmyhostname = postfix.bench.test\n\
             mydestination =\nvirtual_mailbox_domains = example.org\n\
             virtual_transport = lmtp:inet:127.0.0.1:{lmtp_port}\n\
             smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination\n\
             mynetworks = 127.0.0.0/8\nmaillog_file = {root}/postfix.log\nmaillog_file_prefixes = {root}\nbiff = no\n\
             smtpd_client_connection_count_limit = 0\nsmtpd_client_message_rate_limit = 0\n\
             default_process_limit = 100\nlmtp_destination_concurrency_limit = 16\n\
             alias_maps =\nalias_database =\n",
            root = root.display()
        ),
    )
    .expect("main.cf");
    let services = [
        format!("127.0.0.1:{smtp_port} inet n - n - - smtpd"),
        "pickup unix n - n 60 1 pickup".into(),
        "cleanup unix n - n - 0 cleanup".into(),
        "qmgr unix n - n 300 1 qmgr".into(),
        "rewrite unix - - n - - trivial-rewrite".into(),
        "bounce unix - - n - 0 bounce".into(),
        "defer unix - - n - 0 bounce".into(),
        "trace unix - - n - 0 bounce".into(),
        "verify unix - - n - 1 verify".into(),
        "flush unix n - n 1000? 0 flush".into(),
        "proxymap unix - - n - - proxymap".into(),
        "smtp unix - - n - - smtp".into(),
        "relay unix - - n - - smtp".into(),
        "showq unix n - n - - showq".into(),
        "error unix - - n - - error".into(),
        "retry unix - - n - - error".into(),
        "discard unix - - n - - discard".into(),
        "lmtp unix - - n - - lmtp".into(),
        "anvil unix - - n - 1 anvil".into(),
        "scache unix - - n - 1 scache".into(),
        "postlog unix-dgram n - n - 1 postlogd".into(),
    ];
    std::fs::write(pf.join("master.cf"), services.join("\n") + "\n").expect("master.cf");
    let mut check = Command::new(&postfix);
    check.arg("-c").arg(&pf).arg("check");
    if let Err(e) = run_within(check, Duration::from_secs(60)) {
        panic!(
            "postfix check: {e}\n{}",
            common::log_tail(&root.join("postfix.log"), 20)
        );
    }
    let mut cmd = Command::new(&postfix);
    cmd.arg("-c").arg(&pf).arg("start-fg");
    lab.spawn("postfix", cmd);
    wait_port(lab, "postfix", smtp_port);
    let version = |c: Command| run_within(c, Duration::from_secs(10)).unwrap_or_default();
    let mut dv = Command::new(&dovecot);
    dv.arg("--version");
    let mut pv = Command::new("postconf");
    pv.args(["-d", "mail_version"]);
    println!(
        "peer: Postfix {} (queue fsync before 250) -> LMTP -> Dovecot {} (mail_fsync = always)",
        version(pv).trim().trim_start_matches("mail_version = "),
        version(dv).trim()
    );
    Target {
        name: "Postfix+Dovecot",
        smtp: format!("127.0.0.1:{smtp_port}"),
        maildir: mail.join("example.org/alice/Maildir"),
    }
}

fn stop_postfix(lab: &Lab) {
    let mut stop = Command::new("postfix");
    stop.arg("-c").arg(lab.root.join("postfix")).arg("stop");
    let _ = run_within(stop, Duration::from_secs(30));
}

/// Wait until `port` accepts connections (the server `name` must stay alive).
fn wait_port(lab: &mut Lab, name: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        lab.check_alive(name);
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} does not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Message-ID of every message file in a Maildir (new/ and cur/), with counts.
fn stored_ids(maildir: &Path) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            if let Some(id) = text
                .lines()
                .find_map(|l| l.strip_prefix("Message-ID: "))
                .map(|v| v.trim().to_string())
            {
                *ids.entry(id).or_insert(0) += 1;
            }
        }
    }
    ids
}

fn count_files(maildir: &Path) -> usize {
    ["new", "cur"]
        .iter()
        .map(|s| {
            std::fs::read_dir(maildir.join(s))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum()
}

fn message(id: &str) -> Vec<u8> {
    let mut m = format!(
        "From: bench@remote.test\r\nTo: alice@example.org\r\nSubject: load\r\nMessage-ID: {id}\r\n\r\n"
    )
    .into_bytes();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    while m.len() + line.len() <= MESSAGE_BYTES - 3 {
        m.extend_from_slice(line);
    }
    m.extend_from_slice(b".\r\n");
    m
}

struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut c = Conn { stream, reader };
        c.expect("greeting", 220);
        c.send(b"EHLO bench.test\r\n");
        c.expect("EHLO", 250);
        c
    }

    fn send(&mut self, b: &[u8]) {
        self.stream.write_all(b).expect("write");
    }

    /// The code of the next whole reply.
    fn reply(&mut self) -> u16 {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return 0;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            }
        }
    }

    fn expect(&mut self, what: &str, code: u16) {
        let got = self.reply();
        assert_eq!(got, code, "{what}");
    }
}

fn load(target: &Target, connections: usize, o: &Options) -> Row {
    let tag = format!(
        "{}-{connections}",
        target.name.replace('+', "-").to_lowercase()
    );
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let base = count_files(&target.maildir);
    let started = Instant::now();
    let stop_at = started + o.row_time;
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (next, results, addr, tag) = (
                next.clone(),
                results.clone(),
                target.smtp.clone(),
                tag.clone(),
            );
            let limit = o.messages;
            std::thread::spawn(move || {
                let mut c = Conn::open(&addr);
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= limit || Instant::now() >= stop_at {
                        break;
                    }
                    let id = format!("<{tag}-{i}@bench.test>");
                    c.send(b"MAIL FROM:<bench@remote.test>\r\n");
                    c.expect("MAIL", 250);
                    c.send(b"RCPT TO:<alice@example.org>\r\n");
                    c.expect("RCPT", 250);
                    c.send(b"DATA\r\n");
                    c.expect("DATA", 354);
                    let body = message(&id);
                    c.send(&body);
                    let t = Instant::now();
                    let code = c.reply();
                    mine.push((id, code, t.elapsed()));
                }
                c.send(b"QUIT\r\n");
                results.lock().unwrap().extend(mine);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread");
    }
    let accept_secs = started.elapsed().as_secs_f64();
    let results = Arc::try_unwrap(results).ok().unwrap().into_inner().unwrap();
    let accepted: Vec<&(String, u16, Duration)> = results.iter().filter(|r| r.1 == 250).collect();
    let refused = results.len() - accepted.len();
    // Stored: poll the Maildir (a directory listing) until it holds every accepted
    // message of this row; then check them one by one.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stored_secs;
    loop {
        stored_secs = started.elapsed().as_secs_f64();
        if count_files(&target.maildir) >= base + accepted.len() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let ids = stored_ids(&target.maildir);
    let lost = accepted.iter().filter(|r| !ids.contains_key(&r.0)).count();
    let duplicated = accepted
        .iter()
        .filter(|r| ids.get(&r.0).copied().unwrap_or(0) > 1)
        .count();
    let mut lat: Vec<f64> = accepted.iter().map(|r| r.2.as_secs_f64() * 1e3).collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Row {
        system: target.name,
        connections,
        accepted: accepted.len(),
        refused,
        accept_secs,
        stored_secs,
        lost,
        duplicated,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

fn print_row(r: &Row) {
    println!(
        "{:<16} {:>2} conns: {:>5} accepted ({} refused) {:>8.0} accepted/s {:>8.0} stored/s  accept p50 {:.2} ms p99 {:.2} ms  lost {} twice {}",
        r.system,
        r.connections,
        r.accepted,
        r.refused,
        r.accepted as f64 / r.accept_secs,
        r.accepted as f64 / r.stored_secs,
        r.p50_ms,
        r.p99_ms,
        r.lost,
        r.duplicated
    );
}

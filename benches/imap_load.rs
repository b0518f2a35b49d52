//! Mail out over IMAP under load: PigeonAir against a private Dovecot (Debian's
//! packages) on this machine, in the same run, on the same 4 KiB messages.
//!
//! 1. Dovecot: `dovecot -F -c CONF` with its own `base_dir`, `state_dir` and logs in a
//!    temporary directory, IMAP and LMTP on loopback ports, Maildir, a passwd-file with
//!    an `{SSHA}` password for alice@example.org, the auth cache on (PigeonAir caches
//!    verified logins), login processes in high-performance mode and `imap` processes
//!    reused and started in advance (see `DovecotSetup::conf`). Run as root, the mail
//!    processes run as the `dovecot` user; run as anyone else, everything runs as that
//!    user.
//! 2. PigeonAir: `pigeonair quickstart` (the binary cargo built with the bench) with
//!    every listener on an ephemeral loopback port; the administrator replaces alice's
//!    `userPassword` with the same kind of `{SSHA}` value and raises the per-account and
//!    per-address IMAP connection limits (`imap.maxConnectionsPerAccount`,
//!    `imap.maxConnectionsPerAddress`) to 100, as Dovecot's `mail_max_userip_connections`.
//! 3. The INBOX: the same N messages (1,000 of 4 KiB each) delivered to each, over SMTP
//!    to PigeonAir and over LMTP to Dovecot (4 connections each); then the Maildirs are
//!    polled until they hold all N.
//! 4. A checked session on each (message count, FETCH responses, size of message 1),
//!    which is also the warm-up: Dovecot builds its index at the first SELECT.
//! 5. Rows at 1, 4 and 16 connections (one OS thread each), alternating the systems:
//!    each thread runs sessions one after another, every session being connect, LOGIN,
//!    SELECT INBOX, FETCH 1:* FLAGS, FETCH 1 BODY[], LOGOUT and the server's close;
//!    every reply is checked. A row stops after `--max-sessions` sessions or
//!    `--seconds`, whichever comes first. Sessions per second, latency, and the CPU
//!    time the servers and this process spent per session (from `/proc`).
//! 6. On one connection, `FETCH 1:* BODYSTRUCTURE` of all N messages, once to warm up
//!    and then `--runs` times; the median.
//!
//! The client is a small hand-rolled IMAP client over `TcpStream` (TCP_NODELAY): tagged
//! commands, replies read up to the tagged line, `{n}` literals read as n bytes. Only
//! loopback addresses are used.
//!
//! `cargo bench --bench imap_load` runs the full pass (optimised `pigeonair`); without
//! `--bench` (`cargo test --benches`) a smoke pass runs on 50 messages with short rows.
//! Options after `--`: `--messages N`, `--seconds S`, `--max-sessions N`,
//! `--connections 1,4,16`, `--runs N`, `--keep` (keep the temporary directory),
//! `--dovecot-defaults` (Dovecot's own process model: a login process and an `imap`
//! process started for every session).
//! Dovecot, its IMAP server and its LMTP server come from `.ci/install-deps`; when one
//! is missing the bench fails and says so.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{find_program, run_within, Lab};
use ldap3::{LdapConn, LdapConnSettings, Mod};
use sha1::{Digest, Sha1};

const USER: &str = "alice@example.org";
const PASSWORD: &str = "imap-load-pw";
const ADMIN_PW: &str = "imap-load-admin-pw";
/// The `{SSHA}` salt of the bench password, the same on both sides.
const SALT: &[u8] = b"imapload";
/// The size of each message as sent (headers and body, without the SMTP dot).
const MESSAGE_BYTES: usize = 4096;
/// The goal: PigeonAir's sessions per second at least this times Dovecot's at 16
/// connections.
const GOAL_RATIO: f64 = 5.0;
const GOAL_CONNECTIONS: usize = 16;
/// Connections per account and per address both servers allow.
const CONNECTION_LIMIT: usize = 100;
/// Connections that deliver the INBOX.
const DELIVERY_CONNECTIONS: usize = 4;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to close the connection after LOGOUT's OK.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

const INSTALL_HINT: &str = "run `bash .ci/install-deps` (as root) to install dovecot-core, dovecot-imapd and dovecot-lmtpd";

// ---------------------------------------------------------------------------------
// Options

struct Options {
    bench_mode: bool,
    keep: bool,
    messages: usize,
    connections: Vec<usize>,
    row_time: Duration,
    row_sessions: usize,
    bodystructure_runs: usize,
    dovecot_defaults: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let mut o = Options {
        bench_mode,
        keep: false,
        messages: if bench_mode { 1000 } else { 50 },
        connections: if bench_mode {
            vec![1, 4, 16]
        } else {
            vec![1, 4]
        },
        row_time: Duration::from_secs(if bench_mode { 20 } else { 2 }),
        row_sessions: if bench_mode { 20_000 } else { 100 },
        bodystructure_runs: if bench_mode { 7 } else { 2 },
        dovecot_defaults: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> String {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        let number = |name: &str, v: String| -> usize {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: a number, not {v:?}"))
        };
        match a.as_str() {
            "--keep" => o.keep = true,
            "--dovecot-defaults" => o.dovecot_defaults = true,
            "--messages" => o.messages = number(a, value(a)).max(1),
            "--max-sessions" => o.row_sessions = number(a, value(a)).max(1),
            "--runs" => o.bodystructure_runs = number(a, value(a)).max(1),
            "--seconds" => {
                let v = value(a);
                let s: f64 = v
                    .parse()
                    .unwrap_or_else(|_| panic!("--seconds: a number, not {v:?}"));
                o.row_time = Duration::from_secs_f64(s.max(0.1));
            }
            "--connections" => {
                o.connections = value(a)
                    .split(',')
                    .map(|c| number("--connections", c.trim().to_string()).max(1))
                    .collect();
            }
            // `--bench` (cargo bench) and whatever else cargo passes.
            _ => {}
        }
    }
    o
}

// ---------------------------------------------------------------------------------
// The systems under test

/// One system under test: its IMAP address, the INBOX's Maildir, and the process whose
/// CPU time (with its children's) is charged to it.
struct Target {
    name: &'static str,
    imap: SocketAddr,
    maildir: PathBuf,
    pid: u32,
}

fn main() {
    let o = options();
    let mut lab = Lab::new("imap_load", o.keep);
    // Dovecot's processes run as the dovecot user (under root) and must reach the lab.
    set_mode(&lab.root, 0o755);

    let (dovecot, lmtp) = start_dovecot(&mut lab, &o);
    let (pigeonair, smtp) = start_pigeonair(&mut lab, o.bench_mode);

    let started = Instant::now();
    deliver(&smtp, "EHLO", o.messages);
    wait_stored(&mut lab, "pigeonair", &pigeonair.maildir, o.messages);
    let pa_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    deliver(&lmtp, "LHLO", o.messages);
    wait_stored(&mut lab, "dovecot", &dovecot.maildir, o.messages);
    println!(
        "INBOX: {} messages of {} bytes delivered to each (PigeonAir over SMTP {:.1} s, Dovecot over LMTP {:.1} s)",
        o.messages,
        MESSAGE_BYTES,
        pa_secs,
        started.elapsed().as_secs_f64()
    );

    // The checked session, which is also the warm-up.
    for t in [&pigeonair, &dovecot] {
        match session(t.imap, o.messages) {
            Ok(s) => println!(
                "{:<9} warm-up session: {} messages, {} FLAGS, message 1 is {} bytes: {}",
                t.name, s.exists, s.flags, s.body_bytes, s.body_fetch_line
            ),
            Err(e) => panic!("{}: the first session failed: {e}", t.name),
        }
    }
    println!();

    let mut rows = Vec::new();
    for &c in &o.connections {
        for t in [&pigeonair, &dovecot] {
            let row = load(t, c, &o);
            print_row(&row);
            rows.push(row);
        }
    }

    println!();
    let mut bodystructure = Vec::new();
    for t in [&pigeonair, &dovecot] {
        let times = match fetch_bodystructure(t, o.messages, o.bodystructure_runs) {
            Ok(b) => b,
            Err(e) => panic!("{}: FETCH 1:* BODYSTRUCTURE failed: {e}", t.name),
        };
        println!(
            "{:<9} FETCH 1:* BODYSTRUCTURE of {} messages: median {:.2} ms (min {:.2}, max {:.2}; {} runs after a warm-up; {} reply bytes); message 1: {}",
            t.name,
            o.messages,
            times.median_ms(),
            times.ms[0],
            times.ms[times.ms.len() - 1],
            times.ms.len(),
            times.reply_bytes,
            times.first
        );
        bodystructure.push(times);
    }

    println!();
    println!("ratio PigeonAir / Dovecot:");
    let mut goal = None;
    for &c in &o.connections {
        let find = |s: &str| rows.iter().find(|r| r.system == s && r.connections == c);
        if let (Some(p), Some(d)) = (find(pigeonair.name), find(dovecot.name)) {
            let ratio = p.per_sec() / d.per_sec().max(1e-9);
            println!(
                "  {c:>2} connections: {ratio:.2}x sessions/s, p99 {:.2} ms vs {:.2} ms",
                p.percentile_ms(0.99),
                d.percentile_ms(0.99)
            );
            if c == GOAL_CONNECTIONS {
                goal = Some(ratio);
            }
        }
    }
    let (p, d) = (&bodystructure[0], &bodystructure[1]);
    println!(
        "  FETCH 1:* BODYSTRUCTURE: {:.2}x (Dovecot's median time over PigeonAir's: {:.2} ms vs {:.2} ms)",
        d.median_ms() / p.median_ms().max(1e-9),
        p.median_ms(),
        d.median_ms()
    );
    match goal {
        Some(r) => println!(
            "goal: sessions/s PigeonAir >= {GOAL_RATIO}x Dovecot at {GOAL_CONNECTIONS} connections: {} ({r:.2}x)",
            if r >= GOAL_RATIO { "met" } else { "NOT met" }
        ),
        None => println!("goal: not measured (no {GOAL_CONNECTIONS}-connection row)"),
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| r.errors > 0).collect();
    assert!(
        failed.is_empty(),
        "failed sessions: {}",
        failed
            .iter()
            .map(|r| format!(
                "{} at {} connections: {} ({})",
                r.system,
                r.connections,
                r.errors,
                r.first_errors.join("; ")
            ))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `{SSHA}` of the bench password: base64 of SHA-1(password + salt) followed by the
/// salt, as slappasswd and doveadm pw write it.
fn ssha() -> String {
    let mut h = Sha1::new();
    h.update(PASSWORD.as_bytes());
    h.update(SALT);
    let mut raw = h.finalize().to_vec();
    raw.extend_from_slice(SALT);
    format!(
        "{{SSHA}}{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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
            "{name} does not listen on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_within(cmd, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{program} {}: {e}", args.join(" ")))
        .trim()
        .to_string()
}

/// Start the private Dovecot; its IMAP target and its LMTP address.
fn start_dovecot(lab: &mut Lab, o: &Options) -> (Target, String) {
    let dovecot = find_program("dovecot")
        .unwrap_or_else(|| panic!("imap_load needs Dovecot (dovecot not found): {INSTALL_HINT}"));
    for (program, package) in [
        ("/usr/lib/dovecot/imap", "dovecot-imapd"),
        ("/usr/lib/dovecot/imap-login", "dovecot-imapd"),
        ("/usr/lib/dovecot/lmtp", "dovecot-lmtpd"),
    ] {
        assert!(
            Path::new(program).exists(),
            "imap_load needs {program} from {package}: {INSTALL_HINT}"
        );
    }
    let root = lab.root.clone();
    let mail = root.join("dovecot-mail");
    for d in ["dovecot-run", "dovecot-state", "dovecot-mail"] {
        std::fs::create_dir_all(root.join(d)).expect("dovecot dirs");
    }
    // Dovecot refuses mail processes as root: under root they run as the dovecot user
    // (its login processes as dovenull, Debian's defaults); otherwise every process
    // runs as the user running the bench, without chroots.
    let as_root = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0)
    };
    let mail_user = if as_root {
        "dovecot".to_string()
    } else {
        command_output("id", &["-un"])
    };
    let uid = command_output("id", &["-u", &mail_user]);
    let gid = command_output("id", &["-g", &mail_user]);
    let unprivileged = (!as_root).then(|| (mail_user.clone(), command_output("id", &["-gn"])));
    if as_root {
        let chown = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(&mail)
            .status()
            .expect("chown");
        assert!(chown.success(), "chown of the Dovecot mail root");
    }
    let users = root.join("dovecot-users");
    std::fs::write(
        &users,
        format!(
            "{USER}:{}:{uid}:{gid}::{}::\n",
            ssha(),
            mail.join("example.org/alice").display()
        ),
    )
    .expect("passwd-file");
    let setup = DovecotSetup {
        root: root.clone(),
        users,
        imap_port: free_port(),
        lmtp_port: free_port(),
        unprivileged,
        processes: (!o.dovecot_defaults).then(|| {
            (
                std::thread::available_parallelism().map_or(2, |n| n.get()),
                o.connections.iter().copied().max().unwrap_or(1),
            )
        }),
    };
    let conf = root.join("dovecot.conf");
    std::fs::write(&conf, setup.conf()).expect("dovecot.conf");
    let mut cmd = Command::new(&dovecot);
    cmd.arg("-F").arg("-c").arg(&conf);
    lab.spawn("dovecot", cmd);
    wait_port(lab, "dovecot", setup.imap_port);
    wait_port(lab, "dovecot", setup.lmtp_port);
    let mut v = Command::new(&dovecot);
    v.arg("--version");
    let processes = match setup.processes {
        Some((login, imap)) => format!(
            "imap-login service_count = 0, process_min_avail = {login}; \
             imap service_count = 1000, process_min_avail = {imap}"
        ),
        None => "Dovecot's process defaults: a login and an imap process per session".into(),
    };
    println!(
        "peer: Dovecot {} (passwd-file {{SSHA}}, auth_cache_size = 16M; {processes}; mail processes as {mail_user})",
        run_within(v, Duration::from_secs(10))
            .unwrap_or_default()
            .trim()
    );
    let target = Target {
        name: "Dovecot",
        imap: SocketAddr::from(([127, 0, 0, 1], setup.imap_port)),
        maildir: mail.join("example.org/alice/Maildir"),
        pid: lab.pid("dovecot"),
    };
    (target, format!("127.0.0.1:{}", setup.lmtp_port))
}

/// What Dovecot's configuration depends on.
struct DovecotSetup {
    root: PathBuf,
    /// The passwd-file (passdb and userdb).
    users: PathBuf,
    imap_port: u16,
    lmtp_port: u16,
    /// Not run as root: the user and group every process runs as.
    unprivileged: Option<(String, String)>,
    /// Login and imap processes started in advance, or Dovecot's defaults (`None`).
    processes: Option<(usize, usize)>,
}

impl DovecotSetup {
    /// Dovecot's configuration. Besides the private paths and loopback ports:
    /// plain-text LOGIN allowed (as PigeonAir allows it on loopback), info logging off
    /// (PigeonAir runs with warnings only), the auth cache on, and, unless
    /// `--dovecot-defaults`, the process model of Dovecot's performance advice: login
    /// processes serving many connections each (`service_count = 0`, one per core
    /// started in advance) and `imap` processes reused for 1000 sessions each, as many
    /// started in advance as the bench has connections, so no session waits for a
    /// fork. Dovecot's defaults start a login process and an `imap` process for every
    /// connection.
    fn conf(&self) -> String {
        let (run_as, chroot) = match &self.unprivileged {
            Some((user, group)) => (
                format!(
                    "default_login_user = {user}\ndefault_internal_user = {user}\n\
                     default_internal_group = {group}\n\
                     service anvil {{\n  chroot =\n}}\nservice ipc {{\n  chroot =\n}}\n"
                ),
                "  chroot =\n",
            ),
            None => (String::new(), ""),
        };
        let (login, imap) = match self.processes {
            Some((login, imap)) => (
                format!("  service_count = 0\n  process_min_avail = {login}\n"),
                format!("  service_count = 1000\n  process_min_avail = {imap}\n"),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "base_dir = {root}/dovecot-run\n\
             state_dir = {root}/dovecot-state\n\
             log_path = {root}/dovecot.log\n\
             info_log_path = /dev/null\n\
             protocols = imap lmtp\n\
             listen = 127.0.0.1\n\
             ssl = no\n\
             disable_plaintext_auth = no\n\
             auth_mechanisms = plain\n\
             auth_cache_size = 16M\n\
             auth_cache_ttl = 1 hours\n\
             first_valid_uid = 1\n\
             first_valid_gid = 1\n\
             {run_as}\
             mail_location = maildir:{root}/dovecot-mail/%d/%n/Maildir\n\
             mail_max_userip_connections = {CONNECTION_LIMIT}\n\
             passdb {{\n  driver = passwd-file\n  args = {users}\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {users}\n}}\n\
             service imap-login {{\n\
             \x20 inet_listener imap {{\n    address = 127.0.0.1\n    port = {imap_port}\n  }}\n\
             \x20 inet_listener imaps {{\n    port = 0\n  }}\n\
             {chroot}{login}\
             }}\n\
             service imap {{\n\
             \x20 process_limit = {CONNECTION_LIMIT}\n\
             {imap}\
             }}\n\
             service lmtp {{\n\
             \x20 inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {lmtp_port}\n  }}\n\
             }}\n",
            root = self.root.display(),
            users = self.users.display(),
            imap_port = self.imap_port,
            lmtp_port = self.lmtp_port,
        )
    }
}

/// Start `pigeonair quickstart`, give alice the `{SSHA}` password and raise the IMAP
/// connection limits; its IMAP target and its SMTP address.
fn start_pigeonair(lab: &mut Lab, bench_mode: bool) -> (Target, String) {
    let bin = common::pigeonair_binary(bench_mode, "imap_load");
    let data = lab.root.join("pigeonair");
    let mut cmd = Command::new(bin);
    cmd.args(["quickstart", "--data-dir"]).arg(&data);
    cmd.args(["--admin-password", ADMIN_PW]);
    for flag in [
        "--ldap-listen",
        "--ldaps-listen",
        "--cluster-listen",
        "--smtp-listen",
        "--submission-listen",
        "--submissions-listen",
        "--pop3-listen",
        "--pop3s-listen",
        "--imap-listen",
        "--imaps-listen",
    ] {
        cmd.args([flag, "127.0.0.1:0"]);
    }
    cmd.env("RUST_LOG", "warn");
    let lines = lab.spawn("pigeonair", cmd);
    let (mut ldap, mut smtp, mut imap, mut maildirs) = (None, None, None, None);
    let (mut admin, mut suffix, mut account) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            lab.check_alive("pigeonair");
            panic!("pigeonair quickstart did not print `ready` within 60 s");
        };
        let t = line.trim();
        let value = |prefix: &str| t.strip_prefix(prefix).map(|v| v.trim().to_string());
        // The address of a `name: scheme://host:port (...)` line.
        let addr = |v: String, scheme: &str| {
            v.trim_start_matches(scheme)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        };
        if let Some(v) = value("ldap:") {
            ldap = Some(addr(v, "ldap://"));
        } else if let Some(v) = value("smtp:") {
            smtp = Some(addr(v, "smtp://"));
        } else if let Some(v) = value("imap:") {
            imap = Some(addr(v, "imap://"));
        } else if let Some(v) = value("maildirs:") {
            maildirs = Some(PathBuf::from(v));
        } else if let Some(v) = value("admin:") {
            admin = Some(v);
        } else if let Some(v) = value("suffix:") {
            suffix = Some(v);
        } else if let Some(v) = value("account:") {
            // `mail dn password: pw`
            let mut w = v.split_whitespace();
            if w.next() == Some(USER) {
                account = w.next().map(str::to_string);
            }
        } else if t == "ready" {
            break;
        }
    }
    let imap = imap.unwrap_or_else(|| {
        panic!("pigeonair quickstart printed no `imap:` line: this binary has no IMAP listener")
    });
    let imap: SocketAddr = imap
        .parse()
        .unwrap_or_else(|_| panic!("the imap: line's address {imap:?}"));
    let ldap = format!("ldap://{}", ldap.expect("an ldap: line"));
    let admin = admin.expect("an admin: line");
    let suffix = suffix.expect("a suffix: line");
    let account = account.unwrap_or_else(|| panic!("no account: line for {USER}"));

    let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(5));
    let mut c = LdapConn::with_settings(settings, &ldap)
        .unwrap_or_else(|e| panic!("connect to PigeonAir's LDAP at {ldap}: {e}"));
    let r = c
        .simple_bind(&admin, ADMIN_PW)
        .unwrap_or_else(|e| panic!("bind {admin}: {e}"));
    common::check_rc("bind", &admin, &r).unwrap_or_else(|e| panic!("{e}"));
    let r = c
        .modify(
            &account,
            vec![Mod::Replace(
                "userPassword".to_string(),
                HashSet::from([ssha()]),
            )],
        )
        .unwrap_or_else(|e| panic!("modify {account}: {e}"));
    common::check_rc("modify", &account, &r).unwrap_or_else(|e| panic!("{e}"));
    let cluster = format!("cn=cluster,ou=system,{suffix}");
    let r = c
        .modify(
            &cluster,
            vec![Mod::Add(
                "pigeonairSetting".to_string(),
                HashSet::from([
                    format!("imap.maxConnectionsPerAccount={CONNECTION_LIMIT}"),
                    format!("imap.maxConnectionsPerAddress={CONNECTION_LIMIT}"),
                ]),
            )],
        )
        .unwrap_or_else(|e| panic!("modify {cluster}: {e}"));
    common::check_rc("modify", &cluster, &r).unwrap_or_else(|e| panic!("{e}"));
    let _ = c.unbind();

    let target = Target {
        name: "PigeonAir",
        imap,
        maildir: maildirs
            .expect("a maildirs: line")
            .join("example.org/alice/Maildir"),
        pid: lab.pid("pigeonair"),
    };
    (target, smtp.expect("an smtp: line"))
}

// ---------------------------------------------------------------------------------
// Populating the INBOX

/// Message `i`: MESSAGE_BYTES of headers and text, CRLF lines, no line starting with
/// a dot.
fn message(i: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Bench Sender <bench@remote.test>\r\nTo: Alice <{USER}>\r\n\
         Subject: imap load message {i}\r\nDate: Fri, 04 Dec 2026 12:00:00 +0000\r\n\
         Message-ID: <imap-load-{i}@bench.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    .into_bytes();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    while m.len() + line.len() <= MESSAGE_BYTES {
        m.extend_from_slice(line);
    }
    let pad = MESSAGE_BYTES - m.len();
    if pad >= 2 {
        m.extend(std::iter::repeat_n(b'x', pad - 2));
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// An SMTP or LMTP client connection.
struct Smtp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Smtp {
    fn open(addr: &str, hello: &str) -> Smtp {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(IO_TIMEOUT)).ok();
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut c = Smtp { stream, reader };
        c.expect("greeting", 220);
        c.send(format!("{hello} bench.test\r\n").as_bytes());
        c.expect(hello, 250);
        c
    }

    fn send(&mut self, b: &[u8]) {
        self.stream.write_all(b).expect("write");
    }

    /// The code and last line of the next whole reply.
    fn reply(&mut self) -> (u16, String) {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return (0, "connection closed".into());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (code, line.trim_end().to_string());
            }
        }
    }

    fn expect(&mut self, what: &str, code: u16) {
        let (got, line) = self.reply();
        assert_eq!(got, code, "{what}: {line}");
    }
}

/// Deliver messages 0..count to alice over SMTP (`EHLO`) or LMTP (`LHLO`), on
/// DELIVERY_CONNECTIONS connections.
fn deliver(addr: &str, hello: &'static str, count: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..DELIVERY_CONNECTIONS)
        .map(|_| {
            let (next, addr) = (next.clone(), addr.to_string());
            std::thread::spawn(move || {
                let mut c = Smtp::open(&addr, hello);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    c.send(b"MAIL FROM:<bench@remote.test>\r\n");
                    c.expect("MAIL", 250);
                    c.send(format!("RCPT TO:<{USER}>\r\n").as_bytes());
                    c.expect("RCPT", 250);
                    c.send(b"DATA\r\n");
                    c.expect("DATA", 354);
                    let mut m = message(i);
                    m.extend_from_slice(b".\r\n");
                    c.send(&m);
                    c.expect("end of data", 250);
                }
                c.send(b"QUIT\r\n");
            })
        })
        .collect();
    for t in threads {
        if t.join().is_err() {
            panic!("delivering the INBOX to {addr} failed (see above)");
        }
    }
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

/// Poll the Maildir until it holds `count` messages (the server `name` must stay up).
fn wait_stored(lab: &mut Lab, name: &str, maildir: &Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = count_files(maildir);
        if n >= count {
            assert_eq!(
                n,
                count,
                "{name}: {} holds more than {count} messages",
                maildir.display()
            );
            return;
        }
        lab.check_alive(name);
        assert!(
            Instant::now() < deadline,
            "{name}: {} holds {n} of {count} messages after 120 s",
            maildir.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------
// The IMAP client

/// What the untagged responses to one command held.
#[derive(Default)]
struct Reply {
    /// `* N FETCH` responses.
    fetches: usize,
    /// The last `* N EXISTS`.
    exists: Option<usize>,
    /// Bytes of the literals.
    literal_bytes: usize,
    /// Bytes of the whole reply.
    bytes: usize,
    /// The first FETCH response's text (literals shown as `{n}`), when asked for.
    first_fetch: Option<String>,
}

struct Imap {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
    literal: Vec<u8>,
    tag: u32,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

/// `n` when the line ends in a literal's `{n}` (or `{n+}`).
fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&c| c == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl Imap {
    fn connect(addr: SocketAddr) -> Result<Imap, String> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        s.set_read_timeout(Some(IO_TIMEOUT)).ok();
        s.set_write_timeout(Some(IO_TIMEOUT)).ok();
        let reader =
            BufReader::with_capacity(64 * 1024, s.try_clone().map_err(|e| format!("clone: {e}"))?);
        let mut c = Imap {
            writer: s,
            reader,
            line: Vec::with_capacity(256),
            literal: Vec::new(),
            tag: 0,
        };
        c.read_line("greeting")?;
        if !c.line.starts_with(b"* OK") {
            return Err(format!("greeting: {}", text(&c.line)));
        }
        Ok(c)
    }

    fn read_line(&mut self, what: &str) -> Result<(), String> {
        self.line.clear();
        match self.reader.read_until(b'\n', &mut self.line) {
            Ok(0) => Err(format!("{what}: connection closed")),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("{what}: {e}")),
        }
    }

    /// Send `cmd` under a new tag and read the reply up to its tagged line, which must
    /// be OK.
    fn command(&mut self, cmd: &str, keep_first_fetch: bool) -> Result<Reply, String> {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        self.writer
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .map_err(|e| format!("{cmd}: {e}"))?;
        let mut reply = Reply::default();
        loop {
            self.read_line(cmd)?;
            reply.bytes += self.line.len();
            if self.line.starts_with(tag.as_bytes()) && self.line.get(tag.len()) == Some(&b' ') {
                return if self.line[tag.len() + 1..].starts_with(b"OK") {
                    Ok(reply)
                } else {
                    Err(format!("{cmd}: {}", text(&self.line)))
                };
            }
            let mut first_fetch = false;
            if let Some(rest) = self.line.strip_prefix(b"* ") {
                // `* N FETCH ...`, `* N EXISTS`
                let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
                if digits > 0 {
                    let word = &rest[digits..];
                    if word.starts_with(b" FETCH ") {
                        reply.fetches += 1;
                        first_fetch = keep_first_fetch && reply.first_fetch.is_none();
                    } else if word.starts_with(b" EXISTS") {
                        reply.exists = std::str::from_utf8(&rest[..digits])
                            .ok()
                            .and_then(|n| n.parse().ok());
                    }
                }
            }
            let mut shown = first_fetch.then(|| text(&self.line));
            // A response goes on after each literal.
            while let Some(n) = literal_len(&self.line) {
                self.literal.resize(n, 0);
                self.reader
                    .read_exact(&mut self.literal)
                    .map_err(|e| format!("{cmd}: a literal of {n} bytes: {e}"))?;
                reply.literal_bytes += n;
                reply.bytes += n;
                self.read_line(cmd)?;
                reply.bytes += self.line.len();
                if let Some(s) = shown.as_mut() {
                    s.push_str(" ... ");
                    s.push_str(&text(&self.line));
                }
            }
            if shown.is_some() {
                reply.first_fetch = shown;
            }
        }
    }

    fn login(&mut self) -> Result<(), String> {
        self.command(&format!("LOGIN \"{USER}\" \"{PASSWORD}\""), false)
            .map(|_| ())
    }

    /// SELECT INBOX; the message count.
    fn select(&mut self, expect: usize) -> Result<(), String> {
        let r = self.command("SELECT INBOX", false)?;
        match r.exists {
            Some(n) if n == expect => Ok(()),
            other => Err(format!("SELECT INBOX: {other:?} EXISTS, expected {expect}")),
        }
    }

    /// LOGOUT, then wait for the server to close the connection (RFC 3501 6.1.3), so
    /// the connection's TIME_WAIT lands on the server's side as in real use.
    fn logout(mut self) -> Result<(), String> {
        self.command("LOGOUT", false)?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(CLOSE_TIMEOUT))
            .ok();
        let mut rest = [0u8; 512];
        loop {
            match self.reader.read(&mut rest) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("no close after LOGOUT: {e}")),
            }
        }
    }
}

/// What a checked session saw.
struct SessionSeen {
    exists: usize,
    flags: usize,
    body_bytes: usize,
    body_fetch_line: String,
}

/// One session: connect, LOGIN, SELECT INBOX, FETCH 1:* FLAGS, FETCH 1 BODY[], LOGOUT,
/// the close.
fn session(addr: SocketAddr, messages: usize) -> Result<SessionSeen, String> {
    let mut c = Imap::connect(addr)?;
    c.login()?;
    c.select(messages)?;
    let flags = c.command("FETCH 1:* FLAGS", false)?;
    if flags.fetches != messages {
        return Err(format!(
            "FETCH 1:* FLAGS: {} responses for {messages} messages",
            flags.fetches
        ));
    }
    let body = c.command("FETCH 1 BODY[]", true)?;
    if body.fetches == 0 || body.literal_bytes < MESSAGE_BYTES {
        return Err(format!(
            "FETCH 1 BODY[]: {} responses, {} literal bytes",
            body.fetches, body.literal_bytes
        ));
    }
    c.logout()?;
    Ok(SessionSeen {
        exists: messages,
        flags: flags.fetches,
        body_bytes: body.literal_bytes,
        body_fetch_line: body.first_fetch.unwrap_or_default(),
    })
}

// ---------------------------------------------------------------------------------
// Measuring

/// User plus system CPU time of a process, with that of its children: the live ones
/// (Dovecot's services are the master's children) and the exited ones it waited for.
/// From `/proc` (Linux); the kernel counts in USER_HZ ticks, 100 per second.
fn tree_cpu(pid: u32) -> Option<Duration> {
    fn stat(pid: &str) -> Option<(u64, u64)> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name (in parentheses): state is field 3, ppid 4, utime 14,
        // stime 15, cutime 16, cstime 17.
        let f: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
        let ppid = f.get(1)?.parse().ok()?;
        let ticks = f[11..15]
            .iter()
            .map(|v| v.parse::<u64>().unwrap_or(0))
            .sum();
        Some((ppid, ticks))
    }
    let (_, mut ticks) = stat(&pid.to_string())?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Some((ppid, t)) = stat(name) {
            if ppid == u64::from(pid) {
                ticks += t;
            }
        }
    }
    Some(Duration::from_millis(ticks * 10))
}

fn own_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

struct Row {
    system: &'static str,
    connections: usize,
    ok: usize,
    errors: usize,
    first_errors: Vec<String>,
    elapsed: Duration,
    /// Session latencies, sorted.
    latencies: Vec<Duration>,
    server_cpu: Option<Duration>,
    client_cpu: Option<Duration>,
}

impl Row {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
        self.latencies[i].as_secs_f64() * 1e3
    }

    fn cpu_per_session(&self, cpu: Option<Duration>) -> String {
        match cpu {
            Some(c) if self.ok > 0 => format!("{:.0}", c.as_secs_f64() * 1e6 / self.ok as f64),
            _ => "-".into(),
        }
    }
}

/// One row: `connections` threads running sessions until the row's count or time is
/// used up.
fn load(t: &Target, connections: usize, o: &Options) -> Row {
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(connections + 1));
    let (limit, row_time, messages, addr) = (o.row_sessions, o.row_time, o.messages, t.imap);
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (next, barrier) = (next.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors = Vec::new();
                let mut failed = 0;
                barrier.wait();
                let stop_at = Instant::now() + row_time;
                loop {
                    let now = Instant::now();
                    if now >= stop_at || next.fetch_add(1, Ordering::Relaxed) >= limit {
                        break;
                    }
                    match session(addr, messages) {
                        Ok(_) => latencies.push(now.elapsed()),
                        Err(e) => {
                            failed += 1;
                            if errors.len() < 3 {
                                errors.push(e);
                            }
                        }
                    }
                }
                (latencies, failed, errors, Instant::now())
            })
        })
        .collect();
    let (server0, client0) = (tree_cpu(t.pid), own_cpu());
    barrier.wait();
    let started = Instant::now();
    let mut row = Row {
        system: t.name,
        connections,
        ok: 0,
        errors: 0,
        first_errors: Vec::new(),
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        server_cpu: None,
        client_cpu: None,
    };
    let mut last = started;
    for th in threads {
        let (latencies, failed, errors, finished) = th.join().expect("a client thread");
        row.ok += latencies.len();
        row.latencies.extend(latencies);
        row.errors += failed;
        row.first_errors
            .extend(errors.into_iter().take(3 - row.first_errors.len().min(3)));
        last = last.max(finished);
    }
    row.elapsed = last - started;
    row.server_cpu = tree_cpu(t.pid)
        .zip(server0)
        .map(|(b, a)| b.saturating_sub(a));
    row.client_cpu = own_cpu().zip(client0).map(|(b, a)| b.saturating_sub(a));
    row.latencies.sort();
    row
}

fn print_row(r: &Row) {
    println!(
        "{:<9} {:>2} conns: {:>6} sessions in {:>5.1} s {:>8.1} sessions/s  p50 {:>6.2} ms p99 {:>6.2} ms  CPU/session server {:>5} µs client {:>5} µs  errors {}{}",
        r.system,
        r.connections,
        r.ok,
        r.elapsed.as_secs_f64(),
        r.per_sec(),
        r.percentile_ms(0.50),
        r.percentile_ms(0.99),
        r.cpu_per_session(r.server_cpu),
        r.cpu_per_session(r.client_cpu),
        r.errors,
        if r.first_errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.first_errors.join("; "))
        }
    );
}

/// `FETCH 1:* BODYSTRUCTURE` timings, in ms, sorted.
struct Timings {
    ms: Vec<f64>,
    reply_bytes: usize,
    first: String,
}

impl Timings {
    fn median_ms(&self) -> f64 {
        self.ms[self.ms.len() / 2]
    }
}

fn fetch_bodystructure(t: &Target, messages: usize, runs: usize) -> Result<Timings, String> {
    let mut c = Imap::connect(t.imap)?;
    c.login()?;
    c.select(messages)?;
    let check = |r: &Reply| {
        if r.fetches == messages {
            Ok(())
        } else {
            Err(format!(
                "{} BODYSTRUCTURE responses for {messages} messages",
                r.fetches
            ))
        }
    };
    let warm = c.command("FETCH 1:* BODYSTRUCTURE", true)?;
    check(&warm)?;
    let mut ms = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let r = c.command("FETCH 1:* BODYSTRUCTURE", false)?;
        ms.push(started.elapsed().as_secs_f64() * 1e3);
        check(&r)?;
    }
    c.logout()?;
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(Timings {
        ms,
        reply_bytes: warm.bytes,
        first: warm.first_fetch.unwrap_or_default(),
    })
}

//! Starts a real `pigeonair quickstart` node for a test and runs the client tools that
//! talk to it.
//!
//! Every test gets its own node in its own temporary data directory, listening on an
//! ephemeral loopback port, so tests never see each other's entries. The node is killed
//! when the [`Node`] is dropped; if the test is failing at that moment, the last lines the
//! node wrote to stderr are printed to help find out why.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a node may take to print `ready`.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long one client tool may run before the test gives up on it.
const TOOL_DEADLINE: Duration = Duration::from_secs(120);
/// How many lines of the node's stderr are kept to print when a test fails.
const TAIL_LINES: usize = 200;

/// The admin password every test node is started with.
pub const ADMIN_PASSWORD: &str = "Adm1n-Secret-pw";

/// A demo account that quickstart creates and prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its mail address, e.g. `alice@example.org`.
    pub mail: String,
    /// Its DN.
    pub dn: String,
    /// The password quickstart printed for it.
    pub password: String,
}

type Tail = Arc<Mutex<VecDeque<String>>>;

/// A running quickstart node.
pub struct Node {
    child: Option<Child>,
    data_dir: tempfile::TempDir,
    /// `ldap://127.0.0.1:PORT`, as printed by the node.
    pub url: String,
    /// `ldaps://127.0.0.1:PORT`, as printed by the node.
    pub ldaps_url: String,
    /// The SMTP (MX) listener, `127.0.0.1:PORT`, as printed by the node.
    pub smtp: String,
    /// The submission listener (STARTTLS, AUTH).
    pub submission: String,
    /// The implicit-TLS submission listener.
    pub submissions: String,
    /// The POP3 listener (STLS).
    pub pop3: String,
    /// The POP3 listener with implicit TLS.
    pub pop3s: String,
    /// The IMAP listener (STARTTLS).
    pub imap: String,
    /// The IMAP listener with implicit TLS.
    pub imaps: String,
    /// The root of the node's Maildirs.
    pub maildirs: std::path::PathBuf,
    /// The self-signed certificate of the public listeners.
    pub tls_cert: std::path::PathBuf,
    /// The host part of [`Node::url`].
    pub host: String,
    /// The port part of [`Node::url`].
    pub port: u16,
    /// The directory suffix, `dc=pigeonair`.
    pub suffix: String,
    /// The administrator's DN.
    pub admin_dn: String,
    /// The administrator's password.
    pub admin_pw: String,
    /// The demo accounts, in the order quickstart printed them (alice, bob).
    pub accounts: Vec<Account>,
    stdout_tail: Tail,
    stderr_tail: Tail,
    /// The thread draining the node's stderr into `stderr_tail`; it ends at EOF.
    stderr_reader: Option<thread::JoinHandle<()>>,
}

impl Node {
    /// Start a node with a fresh, empty data directory and wait until it is ready.
    pub fn start() -> Node {
        let data_dir = tempfile::Builder::new()
            .prefix("pigeonair-it-")
            .tempdir()
            .expect("create a temporary data directory");
        let mut node = Node {
            child: None,
            data_dir,
            url: String::new(),
            ldaps_url: String::new(),
            smtp: String::new(),
            submission: String::new(),
            submissions: String::new(),
            pop3: String::new(),
            pop3s: String::new(),
            imap: String::new(),
            imaps: String::new(),
            maildirs: Default::default(),
            tls_cert: Default::default(),
            host: String::new(),
            port: 0,
            suffix: String::new(),
            admin_dn: String::new(),
            admin_pw: ADMIN_PASSWORD.to_string(),
            accounts: Vec::new(),
            stdout_tail: Arc::default(),
            stderr_tail: Arc::default(),
            stderr_reader: None,
        };
        node.spawn();
        node
    }

    /// The demo account `alice@example.org`.
    pub fn alice(&self) -> &Account {
        self.account("alice@example.org")
    }

    /// The demo account `bob@example.org`.
    pub fn bob(&self) -> &Account {
        self.account("bob@example.org")
    }

    /// The messages in the Maildir (INBOX, new/ and cur/) of `local@example.org`, as
    /// text.
    pub fn maildir(&self, local: &str) -> Vec<String> {
        let root = self
            .maildirs
            .join("example.org")
            .join(local)
            .join("Maildir");
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(root.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                if let Ok(bytes) = std::fs::read(e.path()) {
                    out.push(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
        }
        out
    }

    /// Wait (at most `timeout`) until `local@example.org`'s Maildir holds a message
    /// containing `needle`, and return it.
    #[track_caller]
    pub fn wait_for_mail(&self, local: &str, needle: &str, timeout: Duration) -> String {
        let mut found = None;
        let ok = wait_until(timeout, || {
            found = self.maildir(local).into_iter().find(|m| m.contains(needle));
            found.is_some()
        });
        assert!(
            ok,
            "no message with {needle:?} in {local}'s Maildir within {timeout:?}: {:?}",
            self.maildir(local)
        );
        found.unwrap()
    }

    /// Apply `ldif` (change records) as the administrator with `ldapmodify`.
    #[track_caller]
    pub fn ldapmodify(&self, ldif: &str) {
        run_with_input(
            "ldapmodify",
            &[
                "-x",
                "-H",
                &self.url,
                "-D",
                &self.admin_dn,
                "-w",
                &self.admin_pw,
            ],
            Some(ldif),
        )
        .assert_ok();
    }

    fn account(&self, mail: &str) -> &Account {
        self.accounts
            .iter()
            .find(|a| a.mail == mail)
            .unwrap_or_else(|| panic!("quickstart printed no account {mail}: {:?}", self.accounts))
    }

    /// The data directory the node was started with.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// Stop the node (SIGTERM, then SIGKILL if it does not exit within 10 s) and start
    /// it again on the same data directory. The port may change: read [`Node::url`] again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kill the node with SIGKILL, as a power cut or the OOM killer would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // std's Child::kill sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the node process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last lines the node wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap();
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn stop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        // SIGTERM through kill(1): the tests do not link libc.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        wait_exit(child, Duration::from_secs(10));
    }

    fn spawn(&mut self) {
        let bin = env!("CARGO_BIN_EXE_pigeonair");
        let data = self
            .data_dir
            .path()
            .to_str()
            .expect("utf-8 temp path")
            .to_string();
        let mut child = Command::new(bin)
            .args([
                "quickstart",
                "--data-dir",
                &data,
                "--admin-password",
                &self.admin_pw,
                "--ldap-listen",
                "127.0.0.1:0",
                "--cluster-listen",
                "127.0.0.1:0",
                "--ldaps-listen",
                "127.0.0.1:0",
                "--smtp-listen",
                "127.0.0.1:0",
                "--submission-listen",
                "127.0.0.1:0",
                "--submissions-listen",
                "127.0.0.1:0",
                "--pop3-listen",
                "127.0.0.1:0",
                "--pop3s-listen",
                "127.0.0.1:0",
                "--imap-listen",
                "127.0.0.1:0",
                "--imaps-listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));

        // Both pipes are drained for the whole life of the child, so it never blocks on
        // a full pipe; stdout lines also go to `lines` for the startup banner.
        let (tx, lines) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let stdout_tail = self.stdout_tail.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                push_tail(&stdout_tail, &line);
                let _ = tx.send(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let stderr_tail = self.stderr_tail.clone();
        self.stderr_reader = Some(thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                push_tail(&stderr_tail, &line);
            }
        }));
        self.child = Some(child);
        self.read_banner(&lines);
    }

    fn read_banner(&mut self, lines: &Receiver<String>) {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut banner = Vec::new();
        let mut url = None;
        let mut ldaps_url = None;
        let mut admin_dn = None;
        let mut suffix = None;
        let mut accounts = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => self.startup_failed(
                    &banner,
                    &format!("no `ready` line within {STARTUP_DEADLINE:?}"),
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self
                        .child
                        .take()
                        .and_then(|c| wait_exit(c, Duration::from_secs(5)).0);
                    self.startup_failed(
                        &banner,
                        &format!("stdout closed before `ready` (exit status: {status:?})"),
                    )
                }
            };
            banner.push(line.clone());
            let trimmed = line.trim();
            if trimmed == "ready" {
                break;
            }
            if let Some(v) = trimmed.strip_prefix("ldap:") {
                url = Some(v.trim().to_string());
            } else if let Some(v) = trimmed.strip_prefix("ldaps:") {
                ldaps_url = Some(v.trim().to_string());
            } else if let Some(v) = trimmed.strip_prefix("smtp:") {
                self.smtp = v.trim().trim_start_matches("smtp://").to_string();
            } else if let Some(v) = trimmed.strip_prefix("submission:") {
                let v = v.trim().trim_start_matches("smtp://");
                self.submission = v.split_whitespace().next().unwrap_or_default().to_string();
            } else if let Some(v) = trimmed.strip_prefix("submissions:") {
                let v = v.trim().trim_start_matches("smtps://");
                self.submissions = v.split_whitespace().next().unwrap_or_default().to_string();
            } else if let Some(v) = trimmed.strip_prefix("pop3:") {
                let v = v.trim().trim_start_matches("pop3://");
                self.pop3 = v.split_whitespace().next().unwrap_or_default().to_string();
            } else if let Some(v) = trimmed.strip_prefix("pop3s:") {
                self.pop3s = v.trim().trim_start_matches("pop3s://").to_string();
            } else if let Some(v) = trimmed.strip_prefix("imap:") {
                let v = v.trim().trim_start_matches("imap://");
                self.imap = v.split_whitespace().next().unwrap_or_default().to_string();
            } else if let Some(v) = trimmed.strip_prefix("imaps:") {
                self.imaps = v.trim().trim_start_matches("imaps://").to_string();
            } else if let Some(v) = trimmed.strip_prefix("maildirs:") {
                self.maildirs = v.trim().into();
            } else if let Some(v) = trimmed.strip_prefix("tls cert:") {
                self.tls_cert = v.split_whitespace().next().unwrap_or_default().into();
            } else if let Some(v) = trimmed.strip_prefix("suffix:") {
                suffix = Some(v.trim().to_string());
            } else if let Some(v) = trimmed.strip_prefix("admin:") {
                admin_dn = Some(v.trim().to_string());
            } else if let Some(v) = trimmed.strip_prefix("password:") {
                assert_eq!(
                    v.trim(),
                    self.admin_pw,
                    "printed admin password: {banner:#?}"
                );
            } else if let Some(v) = trimmed.strip_prefix("account:") {
                let words: Vec<&str> = v.split_whitespace().collect();
                match words.as_slice() {
                    [mail, dn, "password:", pw] => accounts.push(Account {
                        mail: mail.to_string(),
                        dn: dn.to_string(),
                        password: pw.to_string(),
                    }),
                    _ => self.startup_failed(&banner, &format!("unparsable account line {line:?}")),
                }
            }
        }
        if banner.first().map(|l| l.trim()) != Some("PigeonAir quickstart node is up.") {
            self.startup_failed(&banner, "the banner does not start as documented");
        }
        let Some(url) = url else {
            self.startup_failed(&banner, "no `ldap:` line")
        };
        let Some(hostport) = url.strip_prefix("ldap://") else {
            self.startup_failed(&banner, "the ldap line is not an ldap:// URL")
        };
        let hostport = hostport.trim_end_matches('/');
        let Some((host, port)) = hostport.rsplit_once(':') else {
            self.startup_failed(&banner, "the ldap URL has no port")
        };
        let Ok(port) = port.parse::<u16>() else {
            self.startup_failed(&banner, "the ldap URL's port is not a number")
        };
        if port == 0 {
            self.startup_failed(&banner, "the node printed port 0, not the port it bound");
        }
        self.url = url.clone();
        self.ldaps_url = ldaps_url.unwrap_or_default();
        self.host = host.to_string();
        self.port = port;
        self.suffix = suffix.unwrap_or_default();
        self.admin_dn = admin_dn.unwrap_or_default();
        // A restarted node may leave the demo accounts out; keep what the first start said.
        if !accounts.is_empty() || self.accounts.is_empty() {
            self.accounts = accounts;
        }
        assert_eq!(self.suffix, "dc=pigeonair", "banner: {banner:#?}");
        assert_eq!(
            self.admin_dn, "cn=admin,ou=system,dc=pigeonair",
            "banner: {banner:#?}"
        );
    }

    fn startup_failed(&mut self, banner: &[String], why: &str) -> ! {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The node is gone, so its stderr ends: the tail is complete once the reader
        // has seen that.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        panic!(
            "pigeonair quickstart did not come up: {why}\n--- stdout so far ---\n{}\n--- stderr (last lines) ---\n{}",
            banner.join("\n"),
            self.stderr_tail()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let running = self.is_running();
        self.kill9();
        if thread::panicking() {
            let stdout = self
                .stdout_tail
                .lock()
                .unwrap()
                .iter()
                .cloned()
                .collect::<Vec<_>>();
            eprintln!(
                "--- node {} (was running: {running}) stdout (last lines) ---\n{}\n--- stderr (last lines) ---\n{}",
                self.url,
                stdout.join("\n"),
                self.stderr_tail()
            );
        }
    }
}

fn push_tail(tail: &Tail, line: &str) {
    let mut t = tail.lock().unwrap();
    if t.len() == TAIL_LINES {
        t.pop_front();
    }
    t.push_back(line.to_string());
}

/// Ask `cond` until it holds or `timeout` has passed; returns whether it held.
///
/// This is the harness's one polling loop, for state a test can only observe by asking
/// the node: every `cond` that goes through it queries the node or runs a client
/// against it, and that round trip paces the loop. A process's exit is waited for with
/// [`wait_exit`] instead. `cond` is asked once more when the deadline is reached.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// Wait until `child` exits, at most `timeout`; past it, kill it (SIGKILL through
/// kill(1): the tests do not link libc) and reap it. Returns its exit status and
/// whether it exited by itself in time.
pub fn wait_exit(mut child: Child, timeout: Duration) -> (Option<ExitStatus>, bool) {
    let pid = child.id().to_string();
    let (tx, exited) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait().ok());
    });
    match exited.recv_timeout(timeout) {
        Ok(status) => (status, true),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            (exited.recv().ok().flatten(), false)
        }
    }
}

/// What a tool printed and how it exited.
#[derive(Debug)]
pub struct ToolOutput {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    /// The exit code; -1 when killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Panic with the whole output unless the tool exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.status.success(), "`{}` failed:\n{self}", self.command);
        self
    }

    /// Panic with the whole output unless the tool exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), code, "`{}` exit code:\n{self}", self.command);
        self
    }

    /// stdout followed by stderr.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for ToolOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl From<(String, Output)> for ToolOutput {
    fn from((command, o): (String, Output)) -> Self {
        ToolOutput {
            command,
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Where to get a tool a test needs. A missing tool fails the test: it is never skipped.
fn install_hint(cmd: &str) -> &'static str {
    if cmd.starts_with("ldap") {
        "install ldap-utils (the CI script does)"
    } else if cmd == "swaks" || cmd == "curl" {
        "apt-get install swaks curl (the CI script does)"
    } else if cmd.starts_with("python") {
        "install python3 and `pip install ldap3` (the CI script does)"
    } else {
        "install it (the CI script should)"
    }
}

/// Run `cmd args`, wait for it (at most two minutes) and return what it printed.
/// Panics with an install hint when the tool is not installed.
pub fn run(cmd: &str, args: &[&str]) -> ToolOutput {
    run_with_input(cmd, args, None)
}

/// Like [`run`], writing `input` to the tool's stdin.
pub fn run_with_input(cmd: &str, args: &[&str], input: Option<&str>) -> ToolOutput {
    let command = std::iter::once(cmd)
        .chain(args.iter().copied())
        .map(|a| {
            if a.is_empty() || a.contains(' ') {
                format!("'{a}'")
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = match Command::new(cmd)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{cmd} not found: {}", install_hint(cmd))
        }
        Err(e) => panic!("cannot run {cmd}: {e}"),
    };
    let writer = input.map(|text| {
        let mut stdin = child.stdin.take().unwrap();
        let text = text.to_string();
        thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        })
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let (status, finished) = wait_exit(child, TOOL_DEADLINE);
    let status = status.expect("wait for tool");
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let output = ToolOutput::from((
        command,
        Output {
            status,
            stdout,
            stderr,
        },
    ));
    assert!(
        finished,
        "`{}` did not finish within {TOOL_DEADLINE:?}:\n{output}",
        output.command
    );
    output
}

/// One entry of LDIF output.
#[derive(Debug, Clone, Default)]
pub struct LdifEntry {
    pub dn: String,
    /// Attribute descriptions and values in the order printed (values base64-decoded).
    pub attrs: Vec<(String, String)>,
}

impl LdifEntry {
    /// Every value of `attr` (case-insensitive name).
    pub fn get(&self, attr: &str) -> Vec<&str> {
        self.attrs
            .iter()
            .filter(|(a, _)| a.eq_ignore_ascii_case(attr))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of `attr`; panics if there is not exactly one.
    #[track_caller]
    pub fn one(&self, attr: &str) -> &str {
        let v = self.get(attr);
        assert_eq!(v.len(), 1, "{attr} of {}: {:?}", self.dn, self.attrs);
        v[0]
    }

    /// Whether the entry has `attr` at all.
    pub fn has(&self, attr: &str) -> bool {
        self.attrs.iter().any(|(a, _)| a.eq_ignore_ascii_case(attr))
    }

    /// The attribute names present, lower-cased, without duplicates.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self
            .attrs
            .iter()
            .map(|(a, _)| a.to_ascii_lowercase())
            .collect();
        n.dedup();
        n
    }
}

/// Parse the LDIF that ldapsearch prints: comments and blocks without a `dn:` (such as
/// `version: 1` or the `search:`/`result:` trailer) are skipped; folded lines are
/// unfolded and `attr:: base64` values decoded.
pub fn parse_ldif(text: &str) -> Vec<LdifEntry> {
    use base64::Engine;
    let mut entries = Vec::new();
    for block in text.split("\n\n") {
        // Unfold continuation lines (a line starting with one space continues the last).
        let mut lines: Vec<String> = Vec::new();
        for raw in block.lines() {
            if raw.starts_with('#') {
                continue;
            }
            if let Some(cont) = raw.strip_prefix(' ') {
                if let Some(last) = lines.last_mut() {
                    last.push_str(cont);
                    continue;
                }
            }
            if !raw.is_empty() {
                lines.push(raw.to_string());
            }
        }
        let mut entry: Option<LdifEntry> = None;
        for line in lines {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            let value = if let Some(b64) = rest.strip_prefix(':') {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .unwrap_or_else(|e| panic!("bad base64 in LDIF line {line:?}: {e}"));
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                rest.strip_prefix(' ').unwrap_or(rest).to_string()
            };
            if name.eq_ignore_ascii_case("dn") && entry.is_none() {
                entry = Some(LdifEntry {
                    dn: value,
                    attrs: Vec::new(),
                });
            } else if let Some(e) = entry.as_mut() {
                e.attrs.push((name.to_string(), value));
            }
        }
        if let Some(e) = entry {
            entries.push(e);
        }
    }
    entries
}

/// An `ldap3` connection to the node (10 s connect timeout), not yet bound.
pub fn ldap_conn(node: &Node) -> ldap3::LdapConn {
    let settings = ldap3::LdapConnSettings::new().set_conn_timeout(Duration::from_secs(10));
    ldap3::LdapConn::with_settings(settings, &node.url)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", node.url))
}

/// An `ldap3` connection bound as `dn`; panics unless the bind succeeds.
#[track_caller]
pub fn bound_conn(node: &Node, dn: &str, pw: &str) -> ldap3::LdapConn {
    let mut conn = ldap_conn(node);
    let res = conn
        .simple_bind(dn, pw)
        .unwrap_or_else(|e| panic!("bind as {dn}: {e}"));
    assert_eq!(res.rc, 0, "bind as {dn}: {res:?}");
    conn
}

/// An `ldap3` connection bound as the administrator.
#[track_caller]
pub fn admin_conn(node: &Node) -> ldap3::LdapConn {
    bound_conn(node, &node.admin_dn, &node.admin_pw)
}

/// A node started with `pigeonair init` + `pigeonair run` on a configuration file, for
/// tests that need settings quickstart does not offer.
pub struct ConfiguredNode {
    child: Child,
    /// `ldap://127.0.0.1:PORT`.
    pub url: String,
    /// The administrator's password.
    pub admin_pw: String,
    _dir: tempfile::TempDir,
}

impl Drop for ConfiguredNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a node whose `[ldap]` section holds `ldap_settings` (TOML lines) besides an
/// ephemeral listener.
pub fn start_configured(ldap_settings: &str) -> ConfiguredNode {
    let dir = tempfile::Builder::new()
        .prefix("pigeonair-cfg-")
        .tempdir()
        .expect("a temporary directory");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = \"{}\"\n[ldap]\nlisten = [\"127.0.0.1:0\"]\n{ldap_settings}\n[cluster]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write the configuration");
    let bin = env!("CARGO_BIN_EXE_pigeonair");
    let out = Command::new(bin)
        .args(["init", "--admin-password", ADMIN_PASSWORD, "--config"])
        .arg(&config)
        .output()
        .expect("run init");
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the node");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let mut url = String::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the node printed `ready` in time");
        if let Some(u) = line.strip_prefix("ldap: ") {
            url = u.to_string();
        }
        if line == "ready" {
            break;
        }
    }
    ConfiguredNode {
        child,
        url,
        admin_pw: ADMIN_PASSWORD.to_string(),
        _dir: dir,
    }
}

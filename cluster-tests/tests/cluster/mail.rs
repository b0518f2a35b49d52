//! Mail across a three-voter cluster, one account homed on each node: whichever node's
//! SMTP takes a message, it ends up in the Maildir on the account's home node and
//! nowhere else; a message for a home node that is down waits in the accepting node's
//! queue and is delivered once it is back; and messages acknowledged with 250 just
//! before the accepting node is SIGKILLed are each delivered exactly once after it
//! restarts.
//!
//! Mail is sent with Python's `smtplib` (`python3` must be installed), as a client
//! would send it. Each test's cluster is on subnet 18 with hosts of its own
//! (`127.0.18.1-3`, `.11-13`, `.21-23`), so the three run in parallel.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::harness::{admin_conn, poll_until, TestCluster, SUFFIX};

const SUBNET: u8 = 18;
/// The mail domain every account is in.
const DOMAIN: &str = "mail.test";
/// The envelope sender of every test message (a remote sender, as MX mail has).
const SENDER: &str = "sender@client.example.net";
/// How long a whole SMTP conversation of one `send` may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long delivery between running nodes may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends the messages given as JSON in argv[2] to argv[1] (`host:port`) over one SMTP
/// connection, one MAIL/RCPT/DATA transaction each, and prints one JSON line per
/// message with the reply codes as soon as its DATA is answered.
const SMTP_CLIENT: &str = r#"
import email.policy, json, smtplib, sys
from email.message import EmailMessage

host, port = sys.argv[1].rsplit(":", 1)
mails = json.loads(sys.argv[2])
s = smtplib.SMTP(host, int(port), local_hostname="client.example.net", timeout=30)
code, _ = s.ehlo()
if code != 250:
    sys.exit("EHLO answered %d" % code)
for m in mails:
    msg = EmailMessage()
    msg["From"] = m["from"]
    msg["To"] = m["to"]
    msg["Subject"] = m["subject"]
    msg["Message-ID"] = m["message_id"]
    msg.set_content(m["body"])
    reply = {"message_id": m["message_id"], "rcpt": None, "data": None}
    reply["mail"], text = s.mail(m["from"])
    if reply["mail"] == 250:
        reply["rcpt"], text = s.rcpt(m["to"])
        if reply["rcpt"] in (250, 251):
            reply["data"], text = s.data(msg.as_bytes(policy=email.policy.SMTP))
        else:
            s.rset()
    else:
        s.rset()
    reply["text"] = text.decode("utf-8", "replace")
    print(json.dumps(reply), flush=True)
try:
    s.quit()
except Exception:
    pass  # the server may be gone: a test kills it right after the last reply
"#;

/// A message to send: its Message-ID (with the angle brackets) and its recipient.
#[derive(Debug, Clone)]
struct Mail {
    message_id: String,
    to: String,
}

impl Mail {
    /// A message for `to` with a Message-ID no other message of any run has.
    fn to(to: &str, tag: &str) -> Mail {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        Mail {
            message_id: format!(
                "<{tag}-{n}-{}-{nanos}@client.example.net>",
                std::process::id()
            ),
            to: to.to_string(),
        }
    }
}

/// The server's answers to one message's transaction.
#[derive(Debug, Clone)]
struct Reply {
    message_id: String,
    mail: u64,
    rcpt: Option<u64>,
    data: Option<u64>,
    text: String,
}

impl Reply {
    fn accepted(&self) -> bool {
        self.mail == 250 && self.rcpt == Some(250) && self.data == Some(250)
    }

    /// `<id>: MAIL 250, RCPT 550, DATA -: last reply text`.
    fn describe(&self) -> String {
        let code = |c: Option<u64>| c.map_or("-".to_string(), |c| c.to_string());
        format!(
            "{}: MAIL {}, RCPT {}, DATA {}: {}",
            self.message_id,
            self.mail,
            code(self.rcpt),
            code(self.data),
            self.text
        )
    }
}

/// Panic naming every reply of `replies` that is not a 250 to MAIL, RCPT and DATA.
#[track_caller]
fn assert_all_accepted(who: &str, replies: &[Reply]) {
    let refused: Vec<String> = replies
        .iter()
        .filter(|r| !r.accepted())
        .map(Reply::describe)
        .collect();
    assert!(
        refused.is_empty(),
        "{who} did not accept {} of {} messages:\n{}",
        refused.len(),
        replies.len(),
        refused.join("\n")
    );
}

/// Send `mails` to the SMTP server at `addr` over one connection; `after` is called
/// with each message's reply as soon as it arrives (before the next one is sent).
/// Panics if `python3` cannot be run or the client fails before every message is
/// answered.
#[track_caller]
fn send(addr: &str, mails: &[Mail], mut after: impl FnMut(usize, &Reply)) -> Vec<Reply> {
    let list: Vec<Value> = mails
        .iter()
        .map(|m| {
            json!({
                "from": SENDER,
                "to": m.to,
                "subject": format!("cluster test {}", m.message_id),
                "message_id": m.message_id,
                "body": format!("Hello {}, this is {}.\n", m.to, m.message_id),
            })
        })
        .collect();
    let mut child = Command::new("python3")
        .args(["-c", SMTP_CLIENT, addr, &Value::Array(list).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("python3 not runnable ({e}): these tests send mail with Python's smtplib; install python3")
        });
    let mut err_pipe = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + SEND_TIMEOUT;
    let mut replies = Vec::new();
    while replies.len() < mails.len() {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("SMTP client printed {line:?}: {e}"));
                let reply = Reply {
                    message_id: v["message_id"].as_str().unwrap_or_default().to_string(),
                    mail: v["mail"].as_u64().unwrap_or_default(),
                    rcpt: v["rcpt"].as_u64(),
                    data: v["data"].as_u64(),
                    text: v["text"].as_str().unwrap_or_default().to_string(),
                };
                assert_eq!(
                    reply.message_id,
                    mails[replies.len()].message_id,
                    "the SMTP client answered out of order"
                );
                after(replies.len(), &reply);
                replies.push(reply);
            }
            Err(e) => {
                if e == RecvTimeoutError::Timeout {
                    let _ = child.kill();
                }
                let status = child.wait().expect("reap the SMTP client");
                panic!(
                    "the SMTP client to {addr} stopped after {} of {} messages ({status}; {e:?}):\n{}",
                    replies.len(),
                    mails.len(),
                    stderr.join().unwrap_or_default()
                );
            }
        }
    }
    // Every message is answered: only QUIT is left, which is bounded by the client's
    // 30 s socket timeout.
    let _ = child.wait();
    replies
}

/// Send `mails` to node `i`'s SMTP and panic unless every one is accepted with 250.
#[track_caller]
fn send_accepted(c: &TestCluster, i: usize, mails: &[Mail]) {
    let replies = send(&c.smtp_addr(i), mails, |_, _| {});
    assert_all_accepted(&format!("node {i}'s SMTP"), &replies);
}

fn account_dn(uid: &str) -> String {
    format!("uid={uid},ou=people,{}", domain_dn())
}

fn domain_dn() -> String {
    format!("dc={DOMAIN},ou=domains,{SUFFIX}")
}

fn address(uid: &str) -> String {
    format!("{uid}@{DOMAIN}")
}

/// Add the domain and `u1`, `u2`, `u3` homed on `n1`, `n2`, `n3` through node 1, and
/// wait until every node's replica resolves all three.
fn add_accounts(c: &TestCluster) {
    let mut conn = c.ldap(1);
    let mut add = |dn: String, attrs: Vec<(&str, HashSet<&str>)>| {
        conn.with_timeout(Duration::from_secs(15))
            .add(&dn, attrs)
            .unwrap_or_else(|e| panic!("add {dn}: {e}"))
            .success()
            .unwrap_or_else(|e| panic!("add {dn}: {e}"));
    };
    add(
        domain_dn(),
        vec![
            (
                "objectClass",
                HashSet::from(["top", "domain", "pigeonairMailDomain"]),
            ),
            ("dc", HashSet::from([DOMAIN])),
        ],
    );
    add(
        format!("ou=people,{}", domain_dn()),
        vec![
            ("objectClass", HashSet::from(["top", "organizationalUnit"])),
            ("ou", HashSet::from(["people"])),
        ],
    );
    for n in 1..=3 {
        let uid = format!("u{n}");
        let mail = address(&uid);
        let home = format!("n{n}");
        let password = format!("pw-{uid}-secret");
        add(
            account_dn(&uid),
            vec![
                (
                    "objectClass",
                    HashSet::from([
                        "top",
                        "inetOrgPerson",
                        "inetLocalMailRecipient",
                        "pigeonairMailAccount",
                    ]),
                ),
                ("uid", HashSet::from([uid.as_str()])),
                ("cn", HashSet::from([uid.as_str()])),
                ("sn", HashSet::from([uid.as_str()])),
                ("mail", HashSet::from([mail.as_str()])),
                ("mailHost", HashSet::from([home.as_str()])),
                ("userPassword", HashSet::from([password.as_str()])),
            ],
        );
    }
    for i in c.running() {
        wait_for(
            &format!("node {i}'s replica has the three accounts"),
            Duration::from_secs(30),
            || {
                let mut conn = admin_conn(&c.url(i))?;
                let (entries, _) = conn
                    .with_timeout(Duration::from_secs(10))
                    .search(
                        &domain_dn(),
                        ldap3::Scope::Subtree,
                        "(objectClass=pigeonairMailAccount)",
                        vec!["mail", "mailHost"],
                    )
                    .and_then(|r| r.success())
                    .map_err(|e| e.to_string())?;
                let found: Vec<(String, String)> = entries
                    .into_iter()
                    .map(ldap3::SearchEntry::construct)
                    .map(|e| {
                        let first = |a: &str| {
                            e.attrs
                                .get(a)
                                .and_then(|v| v.first())
                                .cloned()
                                .unwrap_or_default()
                        };
                        (first("mail"), first("mailHost"))
                    })
                    .collect();
                let want =
                    (1..=3).all(|n| found.contains(&(address(&format!("u{n}")), format!("n{n}"))));
                want.then_some(()).ok_or_else(|| format!("{found:?}"))
            },
        );
    }
}

/// Poll `probe` until it returns `Ok`, at most `timeout`; on timeout panic with what
/// the last `Err` said.
#[track_caller]
fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::from("no answer yet");
    let got = poll_until(Instant::now() + timeout, || match probe() {
        Ok(v) => Some(v),
        Err(e) => {
            last = e;
            None
        }
    });
    got.unwrap_or_else(|| panic!("timed out after {timeout:?} waiting until {what}; last: {last}"))
}

/// Three voters on `127.0.18.(base+i)` with the accounts in every replica.
fn mail_cluster(base: u8) -> TestCluster {
    let c = TestCluster::new(SUBNET)
        .with_host_base(base)
        .start_three_voters();
    add_accounts(&c);
    c
}

/// The INBOX `new/` folder of `uid`'s Maildir in node `i`'s store.
fn inbox(c: &TestCluster, i: usize, uid: &str) -> PathBuf {
    c.data_dir(i)
        .join("mail")
        .join(DOMAIN)
        .join(uid)
        .join("Maildir")
        .join("new")
}

/// Every file under `root` (recursively; nothing if it does not exist) whose bytes
/// contain `needle`. Files that vanish while being read are skipped.
fn files_containing(root: &Path, needle: &str) -> Vec<PathBuf> {
    let needle = needle.as_bytes();
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    if let Ok(bytes) = std::fs::read(&path) {
                        if bytes.windows(needle.len()).any(|w| w == needle) {
                            found.push(path);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    found.sort();
    found
}

/// How many files in `dir` hold each of `ids` (an id in no file is absent).
fn copies_by_id(dir: &Path, ids: &[&str]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        for id in ids {
            if bytes.windows(id.len()).any(|w| w == id.as_bytes()) {
                *counts.entry(id.to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// The queue of node `i` (empty once it has delivered everything it accepted).
fn queue_len(c: &TestCluster, i: usize) -> Result<usize, String> {
    c.queue(i).map(|q| q.len())
}

/// Wait until the queues of `senders` are empty and every message of `mails` is in its
/// recipient's home INBOX (the `u<n>` account is homed on node `n`); then assert each
/// is there exactly once and in no other node's data directory.
#[track_caller]
fn assert_delivered_home_only(
    c: &TestCluster,
    senders: &[usize],
    mails: &[Mail],
    timeout: Duration,
) {
    let home_of = |m: &Mail| -> (usize, String) {
        let uid = m.to.split('@').next().unwrap().to_string();
        (uid[1..].parse().expect("u<n>"), uid)
    };
    let counts = wait_for(
        "the senders' queues are empty and every message is in its home INBOX",
        timeout,
        || {
            for &i in senders {
                let n = queue_len(c, i).map_err(|e| format!("queue list on node {i}: {e}"))?;
                if n > 0 {
                    return Err(format!("node {i} still queues {n} messages"));
                }
            }
            let mut counts = BTreeMap::new();
            for m in mails {
                let (home, uid) = home_of(m);
                let n = copies_by_id(&inbox(c, home, &uid), &[&m.message_id])
                    .remove(&m.message_id)
                    .unwrap_or(0);
                if n == 0 {
                    return Err(format!(
                        "{} for {} is not on node {home}",
                        m.message_id, m.to
                    ));
                }
                counts.insert(m.message_id.clone(), n);
            }
            Ok(counts)
        },
    );
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "messages stored more than once: {twice:?}"
    );
    // The accepting node removes its spooled copy once delivery succeeded; give it the
    // moment between the home node's reply and the removal.
    wait_for(
        "no node but the home node holds any of the messages",
        Duration::from_secs(10),
        || {
            let _ = c.queue(senders[0]); // paces the loop with a round trip
            let mut stray = Vec::new();
            for m in mails {
                let (home, _) = home_of(m);
                for i in (1..=3).filter(|i| *i != home) {
                    stray.extend(files_containing(&c.data_dir(i), &m.message_id));
                }
            }
            stray
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("copies outside the home nodes: {stray:?}"))
        },
    );
}

#[test]
fn mail_is_stored_on_the_account_home_node_only() {
    let c = mail_cluster(0);

    // u1 is homed on n1; node 3 takes the message.
    let first = Mail::to(&address("u1"), "home");
    send_accepted(&c, 3, std::slice::from_ref(&first));
    assert_delivered_home_only(&c, &[3], std::slice::from_ref(&first), DELIVERY_TIMEOUT);
    let stored = files_containing(&inbox(&c, 1, "u1"), &first.message_id);
    let text = std::fs::read_to_string(&stored[0]).expect("read the stored message");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0] == format!("Return-Path: <{SENDER}>")
            && lines[1] == format!("Delivered-To: {}", address("u1"))
            && lines[2].starts_with("Received: from client.example.net")
            && text.contains("by n3 (PigeonAir)")
            && text.contains(&format!("Message-ID: {}", first.message_id)),
        "stored message does not start with Return-Path, Delivered-To and node 3's Received:\n{text}"
    );

    // Every account through every node's SMTP.
    let started = Instant::now();
    let mut all = Vec::new();
    for via in 1..=3 {
        let mails: Vec<Mail> = (1..=3)
            .map(|n| Mail::to(&address(&format!("u{n}")), &format!("via{via}")))
            .collect();
        send_accepted(&c, via, &mails);
        all.extend(mails);
    }
    assert_delivered_home_only(&c, &[1, 2, 3], &all, DELIVERY_TIMEOUT);
    for n in 1..=3 {
        let uid = format!("u{n}");
        let files = std::fs::read_dir(inbox(&c, n, &uid))
            .expect("INBOX")
            .count();
        assert_eq!(files, 4 - usize::from(n != 1), "{uid}'s INBOX on node {n}");
    }
    eprintln!(
        "mail home_only: 1 + 9 messages delivered to their home nodes only; the 9 in {} ms",
        started.elapsed().as_millis()
    );

    // POP3 serves each account on its home node; elsewhere a temporary refusal (the
    // proxies that route a login home come with a later issue).
    for via in 1..=3 {
        let out = pop3_stat(&c.pop3_addr(via), &address("u1"), "pw-u1-secret");
        if via == 1 {
            assert_eq!(out.trim(), "stat 4", "u1 on its home node");
        } else {
            assert!(
                out.starts_with("refused -ERR [SYS/TEMP]"),
                "u1 through node {via}: {out}"
            );
        }
        // IMAP the same: the INBOX on the home node, `NO [UNAVAILABLE]` elsewhere.
        let out = imap_exists(&c.imap_addr(via), &address("u1"), "pw-u1-secret");
        if via == 1 {
            assert_eq!(out.trim(), "exists 4", "u1 over IMAP on its home node");
        } else {
            assert!(
                out.starts_with("refused [UNAVAILABLE]"),
                "u1 over IMAP through node {via}: {out}"
            );
        }
    }
}

/// Log in with Python's imaplib and print `exists N` for INBOX, or `refused <reply>`.
fn imap_exists(addr: &str, user: &str, password: &str) -> String {
    let script = "import imaplib, sys\nh, p = sys.argv[1].rsplit(':', 1)\nc = imaplib.IMAP4(h, int(p))\n\
                  try:\n    c.login(sys.argv[2], sys.argv[3])\n    print('exists', c.select('INBOX')[1][0].decode())\n    c.logout()\n\
                  except imaplib.IMAP4.error as e:\n    m = e.args[0]\n    print('refused', m.decode() if isinstance(m, bytes) else m)\n";
    let out = Command::new("python3")
        .args(["-c", script, addr, user, password])
        .output()
        .expect("python3 (for imaplib) must be installed");
    assert!(
        out.status.success(),
        "imaplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Log in with Python's poplib and print `stat N`, or `refused <reply>`.
fn pop3_stat(addr: &str, user: &str, password: &str) -> String {
    let script = "import poplib, sys\nh, p = sys.argv[1].rsplit(':', 1)\nc = poplib.POP3(h, int(p))\n\
                  c.user(sys.argv[2])\ntry:\n    c.pass_(sys.argv[3])\n    print('stat', c.stat()[0])\n    c.quit()\n\
                  except poplib.error_proto as e:\n    print('refused', e.args[0].decode())\n";
    let out = Command::new("python3")
        .args(["-c", script, addr, user, password])
        .output()
        .expect("python3 (for poplib) must be installed");
    assert!(
        out.status.success(),
        "poplib: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn mail_for_a_down_home_node_is_queued_until_it_returns() {
    let mut c = mail_cluster(10);
    c.kill9(1);

    let mail = Mail::to(&address("u1"), "down");
    send_accepted(&c, 3, std::slice::from_ref(&mail));
    // The queue shows the message deferred after a failed attempt, and no store has it.
    let deferred = wait_for(
        "node 3's queue shows a failed delivery attempt to u1",
        Duration::from_secs(30),
        || {
            let q = c.queue(3)?;
            let rcpt = q
                .iter()
                .flat_map(|m| m["recipients"].as_array().cloned().unwrap_or_default())
                .find(|r| r["rcpt"].as_str() == Some(address("u1").as_str()));
            match rcpt {
                Some(r)
                    if r["attempts"].as_u64().unwrap_or(0) >= 1
                        && r["done"] == false
                        && r["last_error"].is_string() =>
                {
                    Ok(r)
                }
                _ => Err(format!("{q:?}")),
            }
        },
    );
    for i in 1..=3 {
        let stored = files_containing(&c.data_dir(i).join("mail"), &mail.message_id);
        assert!(
            stored.is_empty(),
            "with node 1 down the message is already in node {i}'s store: {stored:?}"
        );
    }
    assert_eq!(queue_len(&c, 3), Ok(1), "node 3 queues the one message");

    c.restart(1);
    let back = Instant::now();
    assert_delivered_home_only(
        &c,
        &[3],
        std::slice::from_ref(&mail),
        Duration::from_secs(60),
    );
    eprintln!(
        "mail down_home: deferred with {:?} after {} attempt(s); delivered {} ms after node 1 was back",
        deferred["last_error"],
        deferred["attempts"],
        back.elapsed().as_millis()
    );
}

#[test]
fn mail_acknowledged_before_a_sigkill_is_delivered_exactly_once() {
    const N: usize = 40;
    let mut c = mail_cluster(20);
    let mails: Vec<Mail> = (0..N).map(|_| Mail::to(&address("u1"), "kill")).collect();
    let addr = c.smtp_addr(3);
    let mut killed_at = None;
    let replies = send(&addr, &mails, |k, reply| {
        if k == N - 1 && reply.accepted() {
            c.kill9(3);
            killed_at = Some(Instant::now());
        }
    });
    assert_all_accepted("node 3's SMTP", &replies);
    assert!(killed_at.is_some(), "node 3 was killed after the last 250");
    let ids: Vec<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    let before_restart = copies_by_id(&inbox(&c, 1, "u1"), &ids).len();

    c.restart(3);
    let restarted = Instant::now();
    assert_delivered_home_only(&c, &[3], &mails, Duration::from_secs(60));
    let counts = copies_by_id(&inbox(&c, 1, "u1"), &ids);
    let missing: Vec<&&str> = ids.iter().filter(|id| !counts.contains_key(**id)).collect();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "after the restart: missing {missing:?}, stored more than once {twice:?}"
    );
    let files = std::fs::read_dir(inbox(&c, 1, "u1"))
        .expect("INBOX")
        .count();
    assert_eq!(files, N, "u1's INBOX holds exactly the {N} messages");
    eprintln!(
        "mail sigkill: {N} accepted, {before_restart} already on node 1 when node 3 was killed; \
         the rest delivered {} ms after the restart, each exactly once",
        restarted.elapsed().as_millis()
    );

    // Again with the home node down, so that all N wait in node 3's spool when it is
    // killed: they must survive the kill and each arrive once after both return.
    c.kill9(1);
    let waiting: Vec<Mail> = (0..N)
        .map(|_| Mail::to(&address("u1"), "spooled"))
        .collect();
    let replies = send(&addr, &waiting, |k, reply| {
        if k == N - 1 && reply.accepted() {
            c.kill9(3);
        }
    });
    assert_all_accepted("node 3's SMTP with node 1 down", &replies);
    c.restart(3);
    c.restart(1);
    assert_delivered_home_only(&c, &[3], &waiting, Duration::from_secs(60));
    let ids: Vec<&str> = waiting.iter().map(|m| m.message_id.as_str()).collect();
    let counts = copies_by_id(&inbox(&c, 1, "u1"), &ids);
    assert!(
        counts.len() == N && counts.values().all(|n| *n == 1),
        "spooled through a SIGKILL: {counts:?}"
    );
}

/// A PROXY protocol v2 header (haproxy's binary format) for a TCP/IPv4 client.
fn proxy_v2(client: [u8; 4], client_port: u16, server: [u8; 4], server_port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client);
    h.extend_from_slice(&server);
    h.extend_from_slice(&client_port.to_be_bytes());
    h.extend_from_slice(&server_port.to_be_bytes());
    h
}

/// Read one whole SMTP reply ("" when the server closed).
fn smtp_reply(r: &mut BufReader<std::net::TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

#[test]
fn a_balancers_proxy_header_gives_the_client_address_and_its_rules() {
    use std::io::Write;
    let base = 30;
    let host = format!("127.0.{SUBNET}.{}", base + 1);
    let mut c = TestCluster::new(SUBNET)
        .with_host_base(base)
        .with_mail_settings(&format!(
        "submission_listen = [\"{host}:2587\"]\nproxy_protocol_from = [\"127.0.0.1\", \"{host}\"]\n"
    ));
    c.init();
    c.start(1);
    add_accounts(&c);
    let connect = |port: u16| {
        let s = std::net::TcpStream::connect((host.as_str(), port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        (s, r)
    };
    let ip = |h: &str| -> [u8; 4] {
        let a: std::net::Ipv4Addr = h.parse().unwrap();
        a.octets()
    };
    // A client the balancer says is 192.0.2.7: not loopback, so no AUTH in the clear.
    let (mut s, mut r) = connect(2587);
    s.write_all(&proxy_v2([192, 0, 2, 7], 40000, ip(&host), 2587))
        .unwrap();
    assert!(smtp_reply(&mut r).starts_with("220 "));
    s.write_all(b"EHLO client.example.net\r\n").unwrap();
    let ehlo = smtp_reply(&mut r);
    assert!(
        !ehlo.contains("AUTH"),
        "AUTH offered in the clear to a remote client: {ehlo}"
    );
    s.write_all(b"AUTH PLAIN AHUxQG1haWwudGVzdABwdy11MS1zZWNyZXQ=\r\n")
        .unwrap();
    let auth = smtp_reply(&mut r);
    assert!(auth.starts_with("538 5.7.11"), "{auth}");
    // The same login from a loopback client (per the header) is accepted in the clear.
    let (mut s, mut r) = connect(2587);
    s.write_all(&proxy_v2([127, 0, 0, 9], 40001, ip(&host), 2587))
        .unwrap();
    smtp_reply(&mut r);
    s.write_all(b"EHLO lo\r\nAUTH PLAIN AHUxQG1haWwudGVzdABwdy11MS1zZWNyZXQ=\r\n")
        .unwrap();
    smtp_reply(&mut r);
    let auth = smtp_reply(&mut r);
    assert!(auth.starts_with("235 "), "{auth}");
    // Mail through the MX port names the real client in its Received: header.
    let (mut s, mut r) = connect(2525);
    s.write_all(&proxy_v2([198, 51, 100, 23], 40002, ip(&host), 2525))
        .unwrap();
    smtp_reply(&mut r);
    s.write_all(
        b"EHLO mx.example.net\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<u1@mail.test>\r\nDATA\r\n\
          Message-ID: <proxied@example.net>\r\n\r\nvia a balancer\r\n.\r\nQUIT\r\n",
    )
    .unwrap();
    let replies: Vec<String> = (0..6).map(|_| smtp_reply(&mut r)).collect();
    assert!(replies[4].starts_with("250 "), "{replies:?}");
    let stored = wait_for("the proxied message is stored", DELIVERY_TIMEOUT, || {
        files_containing(&inbox(&c, 1, "u1"), "<proxied@example.net>")
            .into_iter()
            .next()
            .ok_or_else(|| "not yet".to_string())
    });
    let text = std::fs::read_to_string(stored).unwrap();
    assert!(text.contains("([198.51.100.23])"), "{text}");
    // A trusted balancer's connection without a header is dropped, not served.
    let (mut s, mut r) = connect(2525);
    s.write_all(b"EHLO no-header.example.net\r\n").unwrap();
    let mut rest = String::new();
    let _ = r.read_to_string(&mut rest);
    assert!(rest.is_empty(), "served without a PROXY header: {rest:?}");
}

#[test]
fn with_shared_storage_every_node_stores_straight_into_the_shared_root() {
    let c = TestCluster::new(SUBNET).with_host_base(40);
    let root = c.scratch("shared-maildirs");
    std::fs::create_dir_all(&root).expect("the shared root");
    let c = c
        .with_mail_settings(&format!(
            "storage = \"shared\"\nshared_root = {:?}\n",
            root.display().to_string()
        ))
        .start_three_voters();
    add_accounts(&c);
    // Every node takes mail for every account at once; none is handed to a home node.
    let mails: Vec<Vec<Mail>> = (1..=3)
        .map(|_| {
            (0..10)
                .map(|k| Mail::to(&address(&format!("u{}", k % 3 + 1)), "shared"))
                .collect()
        })
        .collect();
    std::thread::scope(|s| {
        for (i, batch) in mails.iter().enumerate() {
            let addr = c.smtp_addr(i + 1);
            s.spawn(move || {
                let replies = send(&addr, batch, |_, _| {});
                assert_all_accepted(&addr, &replies);
            });
        }
    });
    let all: Vec<&Mail> = mails.iter().flatten().collect();
    let ids: Vec<&str> = all.iter().map(|m| m.message_id.as_str()).collect();
    let counts = wait_for(
        "every message is in the shared root",
        DELIVERY_TIMEOUT,
        || {
            let mut counts = BTreeMap::new();
            for uid in ["u1", "u2", "u3"] {
                let new = root.join(DOMAIN).join(uid).join("Maildir").join("new");
                counts.extend(copies_by_id(&new, &ids));
            }
            if counts.len() == ids.len() {
                Ok(counts)
            } else {
                Err(format!("{} of {} stored", counts.len(), ids.len()))
            }
        },
    );
    assert!(
        counts.values().all(|n| *n == 1),
        "a message stored twice: {counts:?}"
    );
    // Each message is in its recipient's mailbox, and no node kept a local copy.
    for m in &all {
        let uid = m.to.split('@').next().unwrap();
        let new = root.join(DOMAIN).join(uid).join("Maildir").join("new");
        assert_eq!(
            copies_by_id(&new, &[m.message_id.as_str()]).len(),
            1,
            "{} in {uid}",
            m.message_id
        );
    }
    for i in 1..=3 {
        assert!(
            files_containing(&c.data_dir(i).join("mail"), "@client.example.net").is_empty(),
            "node {i} stored mail in its own data directory"
        );
    }
}

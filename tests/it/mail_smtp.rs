//! Mail in through the node's SMTP listeners, with Python's `smtplib`, `swaks` and raw
//! sockets: what lands in which Maildir, and the replies a sender sees.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::{run, run_with_input, wait_until, Node, ToolOutput};

const DELIVERY: Duration = Duration::from_secs(20);

/// Run a Python script with the node's addresses in its environment-free argv:
/// `sys.argv[1..]` = smtp, submission, submissions, cert, alice's password.
fn python(node: &Node, script: &str) -> ToolOutput {
    let cert = node.tls_cert.to_string_lossy().into_owned();
    let out = run_with_input(
        "python3",
        &[
            "-",
            &node.smtp,
            &node.submission,
            &node.submissions,
            &cert,
            &node.alice().password,
        ],
        Some(script),
    );
    assert_eq!(out.code(), 0, "python failed:\n{out}");
    out
}

const PRELUDE: &str = r#"
import smtplib, ssl, sys
smtp, sub, subs, cert, alice_pw = sys.argv[1:6]
def hp(a):
    h, p = a.rsplit(":", 1)
    return h, int(p)
def tls():
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
    return ctx
"#;

#[test]
fn smtplib_delivers_to_an_account_and_to_both_members_of_a_list() {
    let node = Node::start();
    let out = python(
        &node,
        &format!(
            "{PRELUDE}
s = smtplib.SMTP(*hp(smtp))
code, caps = s.ehlo('client.test')
assert code == 250, caps
caps = caps.decode()
for ext in ['PIPELINING', 'SIZE', '8BITMIME', 'ENHANCEDSTATUSCODES', 'STARTTLS', 'SMTPUTF8', 'CHUNKING']:
    assert ext in caps, (ext, caps)
assert 'AUTH' not in caps, caps
refused = s.sendmail('sender@remote.test', ['alice@example.org'],
    b'Subject: for alice\\r\\nMessage-ID: <one@remote.test>\\r\\n\\r\\nHello Alice.\\r\\n')
assert refused == {{}}, refused
refused = s.sendmail('sender@remote.test', ['team@example.org', 'nobody@example.org'],
    b'Subject: for the team\\r\\nMessage-ID: <team@remote.test>\\r\\n\\r\\nHello team.\\r\\n')
print('refused', refused)
s.quit()
"
        ),
    );
    assert!(
        out.stdout.contains("'nobody@example.org': (550, b'5.1.1"),
        "unknown recipient: {out}"
    );
    let mail = node.wait_for_mail("alice", "<one@remote.test>", DELIVERY);
    assert!(mail.starts_with("Return-Path: <sender@remote.test>\r\nDelivered-To: alice@example.org\r\nReceived: from client.test ([127.0.0.1])"), "{mail}");
    assert!(mail.ends_with("\r\n\r\nHello Alice.\r\n"), "{mail:?}");
    for member in ["alice", "bob"] {
        let copy = node.wait_for_mail(member, "<team@remote.test>", DELIVERY);
        assert!(
            copy.contains(&format!("Delivered-To: {member}@example.org")),
            "{copy}"
        );
    }
    // Each member got one copy.
    assert_eq!(
        node.maildir("bob")
            .iter()
            .filter(|m| m.contains("<team@remote.test>"))
            .count(),
        1
    );
}

#[test]
fn relay_is_refused_and_submission_needs_auth_and_the_users_own_address() {
    let node = Node::start();
    let out = python(
        &node,
        &format!(
            "{PRELUDE}
s = smtplib.SMTP(*hp(smtp))
s.ehlo()
try:
    s.sendmail('x@remote.test', ['victim@elsewhere.test'], b'Subject: relay\\r\\n\\r\\n')
    print('relayed')
except smtplib.SMTPRecipientsRefused as e:
    print('relay', e.recipients)
try:
    s.login('alice@example.org', alice_pw)
except smtplib.SMTPNotSupportedError:
    print('no auth on mx')
s.quit()

s = smtplib.SMTP(*hp(sub))
s.ehlo()
code, _ = s.mail('alice@example.org')
print('unauthenticated mail', code)
s.rset()
s.starttls(context=tls())
s.ehlo()
assert 'AUTH' in s.esmtp_features.get('auth', '') or 'PLAIN' in s.esmtp_features.get('auth', ''), s.esmtp_features
try:
    s.login('alice@example.org', 'wrong password')
except smtplib.SMTPAuthenticationError as e:
    print('wrong password', e.smtp_code)
s.login('alice@example.org', alice_pw)
try:
    s.sendmail('bob@example.org', ['bob@example.org'], b'Subject: forged\\r\\n\\r\\n')
except smtplib.SMTPSenderRefused as e:
    print('forged sender', e.smtp_code, e.smtp_error)
s.sendmail('alice@example.org', ['bob@example.org'], b'Subject: submitted\\r\\nMessage-ID: <sub@example.org>\\r\\n\\r\\nHi Bob.\\r\\n')
s.quit()

s = smtplib.SMTP_SSL(*hp(subs), context=tls())
s.login('alice@example.org', alice_pw)
s.sendmail('alice@example.org', ['bob@example.org'], b'Subject: implicit\\r\\nMessage-ID: <tls@example.org>\\r\\n\\r\\nOver TLS.\\r\\n')
s.quit()
"
        ),
    );
    let o = &out.stdout;
    assert!(
        o.contains("relay {'victim@elsewhere.test': (554, b'5.7.1"),
        "{out}"
    );
    assert!(o.contains("no auth on mx"), "{out}");
    assert!(o.contains("unauthenticated mail 530"), "{out}");
    assert!(o.contains("wrong password 535"), "{out}");
    assert!(o.contains("forged sender 553 b'5.7.1"), "{out}");
    let mail = node.wait_for_mail("bob", "<sub@example.org>", DELIVERY);
    assert!(
        mail.contains("with ESMTPSA"),
        "TLS and AUTH are recorded: {mail}"
    );
    assert!(mail.contains("using TLSv1."), "{mail}");
    node.wait_for_mail("bob", "<tls@example.org>", DELIVERY);
}

#[test]
fn swaks_sends_to_alice_and_submits_over_starttls() {
    let node = Node::start();
    run(
        "swaks",
        &[
            "--server",
            &node.smtp,
            "--from",
            "someone@remote.test",
            "--to",
            "alice@example.org",
            "--header",
            "Subject: swaks to alice",
        ],
    )
    .assert_ok();
    node.wait_for_mail("alice", "Subject: swaks to alice", DELIVERY);
    run(
        "swaks",
        &[
            "--server",
            &node.submission,
            "-tls",
            "--auth-user",
            "alice@example.org",
            "--auth-password",
            &node.alice().password,
            "--from",
            "alice@example.org",
            "--to",
            "bob@example.org",
            "--header",
            "Subject: swaks submission",
        ],
    )
    .assert_ok();
    node.wait_for_mail("bob", "Subject: swaks submission", DELIVERY);
    // swaks exits 24 when the server refuses the recipient.
    let refused = run(
        "swaks",
        &[
            "--server",
            &node.smtp,
            "--from",
            "a@remote.test",
            "--to",
            "nobody@example.org",
        ],
    );
    assert_eq!(refused.code(), 24, "{refused}");
    assert!(refused.stdout.contains("550 5.1.1"), "{refused}");
}

/// A raw SMTP connection, reading replies line by line.
struct Raw {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut raw = Raw { stream, reader };
        assert!(raw.reply().starts_with("220 "));
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// One whole reply (continuation lines joined), or "" when the server closed.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }
}

#[test]
fn pipelined_commands_are_answered_in_order_and_bdat_delivers() {
    let node = Node::start();
    let mut c = Raw::connect(&node.smtp);
    let chunk = "Message-ID: <bdat@remote.test>\r\n\r\nchunked\r\n";
    let all = format!(
        "EHLO raw.test\r\nMAIL FROM:<p@remote.test>\r\nRCPT TO:<nobody@example.org>\r\n\
         RCPT TO:<bob@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n\
         Subject: pipelined\r\nMessage-ID: <pipe@remote.test>\r\n\r\n..leading dot\r\n.\r\n\
         MAIL FROM:<p@remote.test>\r\nRCPT TO:<alice@example.org>\r\nBDAT {} LAST\r\n{chunk}QUIT\r\n",
        chunk.len()
    );
    c.send(all.as_bytes());
    let codes: Vec<String> = (0..11).map(|_| c.reply()).collect();
    let firsts: Vec<&str> = codes.iter().map(|r| &r[..3]).collect();
    assert_eq!(
        firsts,
        ["250", "250", "550", "250", "554", "354", "250", "250", "250", "250", "221"],
        "{codes:#?}"
    );
    let mail = node.wait_for_mail("bob", "<pipe@remote.test>", DELIVERY);
    assert!(
        mail.ends_with("\r\n\r\n.leading dot\r\n"),
        "dot-unstuffed: {mail:?}"
    );
    let mail = node.wait_for_mail("alice", "<bdat@remote.test>", DELIVERY);
    assert!(mail.ends_with("\r\n\r\nchunked\r\n"), "{mail:?}");
}

#[test]
fn bad_commands_get_errors_and_an_endless_line_closes_only_that_connection() {
    let node = Node::start();
    let mut c = Raw::connect(&node.smtp);
    c.send(b"EHLO raw.test\r\n");
    assert!(c.reply().starts_with("250-"));
    c.send(b"FROBNICATE\r\n");
    assert!(c.reply().starts_with("500 5.5.1"));
    c.send(b"MAIL FROM:<<<@@>\r\n");
    assert!(c.reply().starts_with("501 "));
    c.send(b"RCPT TO:<alice@example.org>\r\n");
    assert!(c.reply().starts_with("503 5.5.1"), "RCPT before MAIL");
    // An endless command line, in pieces: 500 5.5.2, then the connection ends.
    let mut endless = Raw::connect(&node.smtp);
    for _ in 0..10 {
        if endless.stream.write_all(&[b'A'; 1024]).is_err() {
            break;
        }
    }
    let reply = endless.reply();
    assert!(reply.starts_with("500 5.5.2"), "{reply:?}");
    assert!(endless.closed());
    // The node goes on serving, the first connection included.
    c.send(b"NOOP\r\n");
    assert!(c.reply().starts_with("250"));
    let mut again = Raw::connect(&node.smtp);
    again.send(b"QUIT\r\n");
    assert!(again.reply().starts_with("221"));
}

#[test]
fn oversized_messages_get_552_once_the_cluster_lowers_the_limit() {
    let node = Node::start();
    let ldif = "dn: cn=cluster,ou=system,dc=pigeonair\nchangetype: modify\nadd: pigeonairSetting\npigeonairSetting: smtp.maxMessageBytes=10000\n-\n";
    node.ldapmodify(ldif);
    // The new limit is announced in EHLO once the node applied it.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let mut c = Raw::connect(&node.smtp);
            c.send(b"EHLO x\r\n");
            c.reply().contains("SIZE 10000")
        }),
        "smtp.maxMessageBytes not applied"
    );
    let big = "x".repeat(70);
    let body: String = (0..200).map(|_| format!("{big}\r\n")).collect();
    let out = python(
        &node,
        &format!(
            "{PRELUDE}
s = smtplib.SMTP(*hp(smtp))
s.ehlo()
try:
    s.sendmail('a@remote.test', ['alice@example.org'], 'Subject: big\\r\\n\\r\\n' + '''{body}''')
    print('accepted')
except smtplib.SMTPSenderRefused as e:
    print('refused', e.smtp_code, e.smtp_error)
s.quit()
"
        ),
    );
    // smtplib sends SIZE= when offered, so the refusal comes at MAIL FROM.
    assert!(out.stdout.contains("refused 552 b'5.3.4"), "{out}");
    // Without SIZE=, the message is read and refused at its end.
    let mut c = Raw::connect(&node.smtp);
    c.send(b"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n");
    for _ in 0..3 {
        c.reply();
    }
    assert!(c.reply().starts_with("354"));
    c.send(body.as_bytes());
    c.send(b".\r\nNOOP\r\n");
    assert!(c.reply().starts_with("552 5.3.4"));
    assert!(c.reply().starts_with("250"), "the session goes on");
    assert!(node
        .maildir("alice")
        .iter()
        .all(|m| !m.contains("Subject: big")));
}

#[test]
fn a_full_mailbox_refuses_with_452_and_the_queue_commands_show_and_drop_a_waiting_message() {
    let node = Node::start();
    let ldif = format!(
        "dn: {}\nchangetype: modify\nreplace: mailQuotaCount\nmailQuotaCount: 1\n-\n",
        node.bob().dn
    );
    node.ldapmodify(&ldif);
    let send = |to: &str, id: &str| {
        let mut c = Raw::connect(&node.smtp);
        c.send(format!("EHLO q\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<{to}>\r\n").as_bytes());
        c.reply();
        c.reply();
        let rcpt = c.reply();
        if rcpt.starts_with("250") {
            c.send(format!("DATA\r\nMessage-ID: <{id}>\r\n\r\nx\r\n.\r\n").as_bytes());
            assert!(c.reply().starts_with("354"));
            assert!(c.reply().starts_with("250"));
        }
        rcpt
    };
    assert!(send("bob@example.org", "first@q").starts_with("250"));
    node.wait_for_mail("bob", "<first@q>", DELIVERY);
    let full = send("bob@example.org", "second@q");
    assert!(full.starts_with("452 4.2.2"), "{full}");

    // A message for outside the cluster waits in the queue (no outbound yet).
    let config = node.data_dir().join("pigeonair.toml");
    let config = config.to_str().unwrap();
    run(
        "python3",
        &[
            "-c",
            "import smtplib,sys; s=smtplib.SMTP(*sys.argv[1].rsplit(':',1)); s.login('alice@example.org', sys.argv[2]); \
             s.sendmail('alice@example.org', ['friend@elsewhere.test'], b'Subject: out\\r\\n\\r\\nx\\r\\n'); s.quit()",
            &node.submission,
            &node.alice().password,
        ],
    )
    .assert_ok();
    let bin = env!("CARGO_BIN_EXE_pigeonair");
    let mut listed = String::new();
    assert!(
        wait_until(DELIVERY, || {
            listed = run(bin, &["queue", "list", "--config", config])
                .assert_ok()
                .stdout
                .clone();
            listed.contains("friend@elsewhere.test  attempts 1")
        }),
        "{listed}"
    );
    assert!(
        listed.contains("outbound delivery is not enabled"),
        "{listed}"
    );
    let id = listed.split_whitespace().next().unwrap().to_string();
    let retried = run(bin, &["queue", "retry", &id, "--config", config]);
    assert!(
        retried.assert_ok().stdout.contains("1 recipients due now"),
        "{retried}"
    );
    assert!(
        wait_until(DELIVERY, || {
            run(bin, &["queue", "list", "--config", config])
                .stdout
                .contains("attempts 2")
        }),
        "the retry was not attempted"
    );
    run(bin, &["queue", "delete", &id, "--config", config]).assert_ok();
    let after = run(bin, &["queue", "list", "--config", config]);
    assert!(
        after.assert_ok().stdout.contains("the queue is empty"),
        "{after}"
    );
    let missing = run(bin, &["queue", "delete", &id, "--config", config]);
    assert_ne!(missing.code(), 0, "{missing}");
}

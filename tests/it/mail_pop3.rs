//! Reading mail with Python's `poplib` (RFC 1939): list, UIDL, TOP, RETR, DELE, the
//! maildrop lock, wrong passwords, and deletions that last.

use std::time::Duration;

use crate::harness::{run, run_with_input, Node};

const DELIVERY: Duration = Duration::from_secs(20);

fn deliver(node: &Node, n: usize) {
    let script = format!(
        "import smtplib, sys\n\
         h, p = sys.argv[1].rsplit(':', 1)\n\
         s = smtplib.SMTP(h, int(p))\n\
         for i in range({n}):\n\
         \x20   s.sendmail('x@remote.test', ['alice@example.org'], ('Subject: m%d\\r\\nMessage-ID: <pop%d@remote.test>\\r\\n\\r\\nbody %d line 1\\r\\n.starts with a dot\\r\\nline 3\\r\\n' % (i, i, i)).encode())\n\
         s.quit()\n"
    );
    let out = run_with_input("python3", &["-", &node.smtp], Some(&script));
    assert_eq!(out.code(), 0, "{out}");
    for i in 0..n {
        node.wait_for_mail("alice", &format!("<pop{i}@remote.test>"), DELIVERY);
    }
}

const CLIENT: &str = r#"
import poplib, ssl, sys
addr, addrs, cert, user, pw, action = sys.argv[1:7]
h, p = addr.rsplit(":", 1)
if action == "wrong":
    c = poplib.POP3(h, int(p))
    c.user(user)
    try:
        c.pass_("not the password")
        print("accepted")
    except poplib.error_proto as e:
        print("refused", e.args[0].decode())
    sys.exit(0)
if action == "tls":
    h, p = addrs.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
    c = poplib.POP3_SSL(h, int(p), context=ctx)
else:
    c = poplib.POP3(h, int(p))
caps = c.capa()
print("capa", sorted(caps))
c.user(user)
c.pass_(pw)
count, size = c.stat()
print("stat", count, size)
print("uidl", [u.decode() for u in c.uidl()[1]])
if action == "read":
    top = c.top(1, 1)[1]
    print("top", [l.decode() for l in top])
    body = c.retr(2)[1]
    print("retr", [l.decode() for l in body])
    try:
        c2 = poplib.POP3(h, int(p))
        c2.user(user)
        c2.pass_(pw)
        print("second session opened")
    except poplib.error_proto as e:
        print("second", e.args[0].decode())
    c.dele(1)
    c.quit()
elif action == "tls":
    c.quit()
"#;

fn client(node: &Node, action: &str) -> String {
    let cert = node.tls_cert.to_string_lossy().into_owned();
    let a = node.alice();
    let out = run_with_input(
        "python3",
        &[
            "-",
            &node.pop3,
            &node.pop3s,
            &cert,
            &a.mail,
            &a.password,
            action,
        ],
        Some(CLIENT),
    );
    assert_eq!(out.code(), 0, "{out}");
    out.stdout
}

#[test]
fn poplib_lists_reads_and_deletes_and_a_second_session_is_refused() {
    let mut node = Node::start();
    deliver(&node, 3);
    let out = client(&node, "read");
    assert!(
        out.contains("'TOP'") && out.contains("'UIDL'") && out.contains("'RESP-CODES'"),
        "{out}"
    );
    assert!(out.contains("stat 3 "), "{out}");
    let uidl_line = out
        .lines()
        .find(|l| l.starts_with("uidl"))
        .unwrap()
        .to_string();
    assert_eq!(uidl_line.matches(", ").count() + 1, 3, "{out}");
    // TOP 1 1: the header, the blank line, the first body line.
    assert!(
        out.contains("'Subject: m0', 'Message-ID: <pop0@remote.test>', '', 'body 0 line 1']"),
        "{out}"
    );
    // RETR is dot-unstuffed by poplib back to the stored text.
    assert!(
        out.contains("'body 1 line 1', '.starts with a dot', 'line 3']"),
        "{out}"
    );
    assert!(out.contains("second -ERR [IN-USE]"), "{out}");

    // The deletion happened at QUIT, and the UIDs of the others are unchanged.
    let again = client(&node, "list");
    assert!(again.contains("stat 2 "), "{again}");
    // "uidl ['1 <uid>', '2 <uid>', ...]": the UIDs in message order.
    let before: Vec<&str> = uidl_line
        .split('\'')
        .filter(|s| s.starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|s| s.split(' ').nth(1))
        .collect();
    assert_eq!(before.len(), 3, "{uidl_line}");
    for uid in &before[1..] {
        assert!(again.contains(uid), "UID {uid} changed: {again}");
    }
    assert!(!node
        .maildir("alice")
        .iter()
        .any(|m| m.contains("<pop0@remote.test>")));

    let wrong = client(&node, "wrong");
    assert!(wrong.contains("refused -ERR [AUTH]"), "{wrong}");
    let tls = client(&node, "tls");
    assert!(tls.contains("stat 2 "), "over implicit TLS: {tls}");

    // After a restart the deletion holds and the UIDs are the same.
    node.restart();
    let restarted = client(&node, "list");
    assert!(restarted.contains("stat 2 "), "{restarted}");
    for uid in &before[1..] {
        assert!(
            restarted.contains(uid),
            "UID {uid} changed across a restart: {restarted}"
        );
    }
    assert!(!restarted.contains(before[0]), "{restarted}");
}

#[test]
fn nopop_accounts_get_mail_but_no_pop3() {
    let node = Node::start();
    let bob = node.bob().clone();
    node.ldapmodify(&format!(
        "dn: {}\nchangetype: modify\nreplace: accountStatus\naccountStatus: nopop\n-\n",
        bob.dn
    ));
    let script = "import smtplib, poplib, sys\n\
                  h, p = sys.argv[1].rsplit(':', 1)\n\
                  s = smtplib.SMTP(h, int(p)); s.sendmail('x@remote.test', ['bob@example.org'], b'Message-ID: <nopop@x>\\r\\n\\r\\nhi\\r\\n'); s.quit()\n\
                  h, p = sys.argv[2].rsplit(':', 1)\n\
                  c = poplib.POP3(h, int(p)); c.user(sys.argv[3])\n\
                  try:\n    c.pass_(sys.argv[4]); print('logged in')\n\
                  except poplib.error_proto as e:\n    print('refused', e.args[0].decode())\n";
    let out = run_with_input(
        "python3",
        &["-", &node.smtp, &node.pop3, &bob.mail, &bob.password],
        Some(script),
    );
    assert_eq!(out.code(), 0, "{out}");
    assert!(
        out.stdout.contains("refused -ERR [AUTH] POP3 is disabled"),
        "{out}"
    );
    node.wait_for_mail("bob", "<nopop@x>", DELIVERY);
}

#[test]
fn curl_reads_pop3() {
    let node = Node::start();
    deliver(&node, 1);
    let a = node.alice();
    let user = format!("{}:{}", a.mail, a.password);
    let list = run(
        "curl",
        &["-s", "--user", &user, &format!("pop3://{}/", node.pop3)],
    );
    assert!(list.assert_ok().stdout.starts_with("1 "), "{list}");
    let msg = run(
        "curl",
        &["-s", "--user", &user, &format!("pop3://{}/1", node.pop3)],
    );
    assert!(
        msg.assert_ok()
            .stdout
            .contains("Message-ID: <pop0@remote.test>"),
        "{msg}"
    );
}

#[test]
fn the_cluster_idle_timeout_closes_a_silent_session() {
    use std::io::{BufRead, BufReader};
    let node = Node::start();
    node.ldapmodify(
        "dn: cn=cluster,ou=system,dc=pigeonair\nchangetype: modify\nadd: pigeonairSetting\npigeonairSetting: pop3.idleTimeoutSecs=1\n-\n",
    );
    let closed_when_idle = || {
        let stream = std::net::TcpStream::connect(&node.pop3).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(4)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut greeting = String::new();
        reader.read_line(&mut greeting).unwrap();
        assert!(greeting.starts_with("+OK "), "{greeting}");
        // Say nothing: the node ends the session after a second.
        let mut line = String::new();
        reader.read_line(&mut line).is_ok() && line.starts_with("-ERR [SYS/TEMP] idle")
    };
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), closed_when_idle),
        "pop3.idleTimeoutSecs=1 did not close a silent session"
    );
}

//! Reading mail over IMAP4rev1 (RFC 3501) with the clients people use: Python's
//! `imaplib` (folders, SELECT, FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE, APPEND, STATUS,
//! QUOTA, IDLE, two sessions on one mailbox, UIDs across a restart, logins over TLS),
//! `curl`, `fetchmail`, and raw bytes (LITERAL+, SASL-IR, malformed input).
//!
//! Mail comes in over SMTP as it does for users. Each Python script asserts what it
//! checks itself and prints `imaplib`'s protocol trace on stderr, which is shown when the
//! script fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine;

use crate::harness::{run, run_with_input, wait_until, Node, ToolOutput};

/// How long a message accepted over SMTP may take to reach the Maildir.
const DELIVERY: Duration = Duration::from_secs(20);
/// How long a raw connection waits for a reply before the test calls it a hang.
const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// Start a node and check that it serves IMAP.
fn imap_node() -> Node {
    let node = Node::start();
    assert!(
        !node.imap.is_empty() && !node.imaps.is_empty(),
        "the node printed no `imap:`/`imaps:` line: is the IMAP server started by the node? (imap {:?}, imaps {:?})",
        node.imap,
        node.imaps
    );
    node
}

// ---------------------------------------------------------------------------------------
// Mail in.

const HELLO: &str = concat!(
    "From: Carol Example <carol@remote.test>\r\n",
    "To: Alice <alice@example.org>\r\n",
    "Subject: hello imap\r\n",
    "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n",
    "Message-ID: <imap0@remote.test>\r\n",
    "\r\n",
    "first body\r\n",
    "line two\r\n",
);

const LUNCH: &str = concat!(
    "From: Carol Example <carol@remote.test>\r\n",
    "To: alice@example.org\r\n",
    "Cc: bob@example.org\r\n",
    "Subject: lunch plans\r\n",
    "Date: Wed, 03 Jan 2024 12:00:00 +0000\r\n",
    "Message-ID: <imap2@remote.test>\r\n",
    "\r\n",
    "pizza at noon\r\n",
);

/// A multipart message with a text part and a ~3 KB base64 attachment.
fn report() -> String {
    let mut m = String::from(concat!(
        "From: Dave <dave@remote.test>\r\n",
        "To: alice@example.org\r\n",
        "Subject: quarterly report\r\n",
        "Date: Tue, 02 Jan 2024 11:00:00 +0000\r\n",
        "Message-ID: <imap1@remote.test>\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: multipart/mixed; boundary=\"b1\"\r\n",
        "\r\n",
        "--b1\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        "\r\n",
        "see the attached zebra figures\r\n",
        "--b1\r\n",
        "Content-Type: application/octet-stream; name=\"data.bin\"\r\n",
        "Content-Transfer-Encoding: base64\r\n",
        "\r\n",
    ));
    for _ in 0..40 {
        m.push_str(&"A".repeat(76));
        m.push_str("\r\n");
    }
    m.push_str("--b1--\r\n");
    m
}

/// The Message-ID of `message`, angle brackets included.
fn message_id(message: &str) -> &str {
    let start = message
        .find("Message-ID: ")
        .expect("the message has a Message-ID")
        + 12;
    let len = message[start..].find("\r\n").unwrap();
    &message[start..start + len]
}

/// Send `message` to `local@example.org` over SMTP with `smtplib` and wait until it is
/// in the Maildir.
fn deliver(node: &Node, local: &str, message: &str) {
    let script = "import smtplib, sys\n\
                  h, p = sys.argv[1].rsplit(':', 1)\n\
                  s = smtplib.SMTP(h, int(p), timeout=30)\n\
                  s.sendmail('sender@remote.test', [sys.argv[2]], sys.stdin.buffer.read())\n\
                  s.quit()\n";
    let to = format!("{local}@example.org");
    let out = run_with_input("python3", &["-c", script, &node.smtp, &to], Some(message));
    assert_eq!(out.code(), 0, "smtplib:\n{out}");
    node.wait_for_mail(local, message_id(message), DELIVERY);
}

/// HELLO, the report and LUNCH to alice, one after the other, so that they are messages
/// 1, 2 and 3 of her INBOX.
fn deliver_three(node: &Node) {
    deliver(node, "alice", HELLO);
    deliver(node, "alice", &report());
    deliver(node, "alice", LUNCH);
}

// ---------------------------------------------------------------------------------------
// imaplib.

/// What every imaplib script starts with: the node's addresses and the demo accounts
/// from argv, and helpers to read IMAP data.
const PRELUDE: &str = r#"
import base64, datetime, imaplib, re, smtplib, socket, ssl, sys, time

imaplib.Debug = 4
IMAP, IMAPS, SMTP, CERT, ALICE, ALICE_PW, BOB, BOB_PW = sys.argv[1:9]
ARGS = sys.argv[9:]
DEADLINE = 30

def hp(addr):
    h, p = addr.rsplit(":", 1)
    return h, int(p)

def tls():
    ctx = ssl.create_default_context(cafile=CERT)
    ctx.check_hostname = False
    return ctx

def ok(r, what=""):
    typ, dat = r
    assert typ == "OK", ("expected OK", what, typ, dat)
    return dat

def connect():
    return imaplib.IMAP4(*hp(IMAP), timeout=DEADLINE)

def login(user=None, pw=None):
    c = connect()
    ok(c.login(user or ALICE, pw or ALICE_PW), "LOGIN")
    return c

def send_mail(to, raw):
    s = smtplib.SMTP(*hp(SMTP), timeout=DEADLINE)
    s.sendmail("sender@remote.test", [to], raw)
    s.quit()

LITERAL = re.compile(rb"\{(\d+)\}\r\n")

def parse(b, i=0):
    """IMAP data: atoms and numbers as bytes, quoted strings and literals as bytes, NIL
    as None, parenthesised lists as lists. Returns (values, index after)."""
    vals = []
    while i < len(b):
        ch = b[i:i + 1]
        if ch in (b" ", b"\r", b"\n"):
            i += 1
        elif ch == b"(":
            sub, i = parse(b, i + 1)
            vals.append(sub)
        elif ch == b")":
            return vals, i + 1
        elif ch == b'"':
            i += 1
            s = bytearray()
            while i < len(b) and b[i:i + 1] != b'"':
                if b[i:i + 1] == b"\\":
                    i += 1
                s += b[i:i + 1]
                i += 1
            vals.append(bytes(s))
            i += 1
        elif ch == b"{":
            m = LITERAL.match(b, i)
            assert m, ("not a literal", b[i:i + 40])
            end = m.end() + int(m.group(1))
            vals.append(b[m.end():end])
            i = end
        else:
            j, depth = i, 0
            while j < len(b):
                c = b[j:j + 1]
                if c == b"[":
                    depth += 1
                elif c == b"]":
                    depth -= 1
                elif depth == 0 and c in (b" ", b"(", b")", b"\r", b"\n"):
                    break
                j += 1
            atom = b[i:j]
            vals.append(None if atom.upper() == b"NIL" else atom)
            i = j
    return vals, i

def values(b):
    return parse(b)[0]

def joined(dat, start):
    """imaplib's data for one kind of response, one bytes string per response: a literal
    comes as a (line, literal) pair followed by the rest of its response."""
    out = []
    for d in dat:
        if d is None:
            continue
        piece = d[0] + b"\r\n" + d[1] if isinstance(d, tuple) else d
        if out and not re.match(start, piece):
            out[-1] += piece
        else:
            out.append(piece)
    return out

def fetched(dat):
    """FETCH responses as {sequence number: {ITEM NAME: value}}."""
    out = {}
    for r in joined(dat, rb"\d+ \("):
        v = values(r)
        items = out.setdefault(int(v[0]), {})
        for k, x in zip(v[1][0::2], v[1][1::2]):
            items[k.decode().upper()] = x
    return out

def fetch(c, seqset, items, uid=False):
    if uid:
        dat = ok(c.uid("FETCH", seqset, items), ("UID FETCH", seqset, items))
    else:
        dat = ok(c.fetch(seqset, items), ("FETCH", seqset, items))
    return fetched(dat)

def store(c, seqset, op, flags, uid=False):
    if uid:
        dat = ok(c.uid("STORE", seqset, op, flags), ("UID STORE", seqset, op, flags))
    else:
        dat = ok(c.store(seqset, op, flags), ("STORE", seqset, op, flags))
    return fetched(dat)

def item(m, prefix):
    """The value of the one item of FETCH data `m` whose name starts with `prefix`."""
    found = [v for k, v in m.items() if k.startswith(prefix)]
    assert len(found) == 1, ("one item", prefix, m)
    return found[0]

def flagset(v):
    return {f.decode().lower() for f in v}

def flags(c, seqset):
    return {n: flagset(m["FLAGS"]) for n, m in fetch(c, seqset, "(FLAGS)").items()}

def nums(dat):
    return sorted(int(x) for d in dat if d for x in d.split())

def search(c, criteria, charset=None):
    return nums(ok(c.search(charset, criteria), ("SEARCH", criteria)))

def uid_search(c, criteria):
    return nums(ok(c.uid("SEARCH", criteria), ("UID SEARCH", criteria)))

def uids(c):
    return uid_search(c, "ALL")

def quote(b):
    return '"' + b.decode().replace("\\", "\\\\").replace('"', '\\"') + '"'

def boxes(c, cmd="list", pattern="*"):
    """{name: lower-case attributes} from LIST (or LSUB) "" pattern."""
    out = {}
    for r in joined(ok(getattr(c, cmd)('""', pattern), (cmd, pattern)), rb"\("):
        attrs, _sep, name = values(r)
        out[name.decode()] = flagset(attrs)
    return out

def status(c, box, what="(MESSAGES UIDNEXT UNSEEN)"):
    dat = ok(c.status(box, what), ("STATUS", box, what))
    v = values(dat[-1])
    return {k.decode().upper(): int(x) for k, x in zip(v[1][0::2], v[1][1::2])}

def code(c, name):
    """The words of the last [name ...] response code, taken from imaplib's store."""
    got = c.untagged_responses.pop(name, None)
    assert got, ("no [%s] response code" % name, c.untagged_responses)
    return got[-1].split()

def uidset(s):
    out = []
    for part in s.split(b","):
        a, _, b = part.partition(b":")
        a, b = int(a), int(b or a)
        out.extend(range(min(a, b), max(a, b) + 1))
    return out

def internaldate(v):
    return time.mktime(imaplib.Internaldate2tuple(b'INTERNALDATE "' + v + b'"'))

def refused(fn):
    """The error text of an imaplib call that must fail."""
    try:
        r = fn()
    except imaplib.IMAP4.error as e:
        return str(e)
    raise AssertionError(("accepted", r))

def read_until(c, pattern, what, stop=None):
    """Read raw lines (as while idling) until one matches `pattern`, within DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    seen = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        c.sock.settimeout(left)
        try:
            line = c.readline()
        except (socket.timeout, TimeoutError):
            break
        if not line:
            raise AssertionError((what, "the server closed the connection", seen))
        seen.append(line)
        m = re.match(pattern, line)
        if m:
            c.sock.settimeout(DEADLINE)
            return m
        assert not (stop and re.match(stop, line)), (what, seen)
    raise AssertionError((what, "not within %d s" % DEADLINE, seen))

def noop_until(c, name, pred, what):
    """NOOP until the untagged `name` responses gathered so far satisfy `pred`."""
    deadline = time.monotonic() + DEADLINE
    got = []
    while True:
        ok(c.noop(), "NOOP")
        got += c.untagged_responses.pop(name, [])
        if pred(got):
            return got
        assert time.monotonic() < deadline, (what, "not within %d s" % DEADLINE, got)
"#;

/// Run `script` (after [`PRELUDE`]) with python3; `args` become `ARGS`. Returns stdout.
fn python(node: &Node, script: &str, args: &[&str]) -> String {
    let cert = node.tls_cert.to_string_lossy().into_owned();
    let (a, b) = (node.alice(), node.bob());
    let mut argv = vec![
        "-",
        node.imap.as_str(),
        node.imaps.as_str(),
        node.smtp.as_str(),
        cert.as_str(),
        a.mail.as_str(),
        a.password.as_str(),
        b.mail.as_str(),
        b.password.as_str(),
    ];
    argv.extend_from_slice(args);
    let out = run_with_input("python3", &argv, Some(&[PRELUDE, script].concat()));
    assert_eq!(out.code(), 0, "the imaplib script failed:\n{out}");
    out.stdout
}

const LIST_SELECT_FETCH: &str = r#"
c = connect()
caps = set(c.capabilities)
for cap in ("IMAP4REV1", "STARTTLS", "AUTH=PLAIN", "SASL-IR", "LITERAL+"):
    assert cap in caps, ("not announced before login", cap, caps)
assert "LOGINDISABLED" not in caps, ("LOGIN is allowed on loopback", caps)
ok(c.login(ALICE, ALICE_PW))
caps = set(b" ".join(ok(c.capability())).decode().upper().split())
for cap in ("IMAP4REV1", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "ENABLE", "ID",
            "QUOTA", "SPECIAL-USE", "LITERAL+"):
    assert cap in caps, ("not announced after login", cap, caps)

personal, others, shared = values(ok(c.namespace())[0])
assert personal and personal[0][0] == b"", ("the personal namespace is the root", personal)
delim = personal[0][1]
typ, dat = c.xatom("ID", '("name" "imaplib")')
assert typ == "OK" and c.untagged_responses.pop("ID", None), ("ID", typ, dat)
e = login()
ok(e._simple_command("ENABLE", "CONDSTORE"), "ENABLE")
e.logout()

# LIST: INBOX and the special-use folders every account has.
lst = boxes(c)
assert "INBOX" in lst, lst
for name, use in (("Sent", "\\sent"), ("Drafts", "\\drafts"), ("Trash", "\\trash"),
                  ("Junk", "\\junk"), ("Archive", "\\archive")):
    assert use in lst.get(name, set()), ("special-use attribute", name, use, lst)
(root,) = joined(ok(c.list('""', '""')), rb"\(")
attrs, sep, name = values(root)
assert "\\noselect" in flagset(attrs) and name == b"" and sep == delim, ('LIST "" ""', root, delim)
top = boxes(c, pattern="%")
assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= set(top), top
assert [n.upper() for n in boxes(c, pattern="inbox")] == ["INBOX"], "INBOX is case-insensitive"
assert boxes(c, pattern="NoSuchBox*") == {}

# SELECT
exists = ok(c.select("INBOX"))
u = c.untagged_responses
assert exists == [b"3"], ("EXISTS", exists)
assert u.get("RECENT") == [b"3"], ("the first session sees all three as recent", u)
uidvalidity = int(u["UIDVALIDITY"][0])
uidnext = int(u["UIDNEXT"][0])
assert uidvalidity > 0, u
system = {"\\seen", "\\answered", "\\flagged", "\\deleted", "\\draft"}
assert system <= flagset(values(u["FLAGS"][0])[0]), ("FLAGS", u["FLAGS"])
assert system <= flagset(values(u["PERMANENTFLAGS"][0])[0]), ("PERMANENTFLAGS", u["PERMANENTFLAGS"])
assert "READ-WRITE" in u, ("SELECT is read-write", u)

# FETCH: UID FLAGS RFC822.SIZE INTERNALDATE
f = fetch(c, "1:3", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
assert sorted(f) == [1, 2, 3], f
uid = [int(f[n]["UID"]) for n in (1, 2, 3)]
assert uid == sorted(set(uid)) and uidnext > uid[-1], ("UIDs ascend below UIDNEXT", uid, uidnext)
for n in (1, 2, 3):
    fl = flagset(f[n]["FLAGS"])
    assert "\\recent" in fl and "\\seen" not in fl, (n, fl)
    assert abs(internaldate(f[n]["INTERNALDATE"]) - time.time()) < 86400, f[n]
assert int(f[1]["RFC822.SIZE"]) < 2000 < int(f[2]["RFC822.SIZE"]), f

# ENVELOPE
carol = [[b"Carol Example", None, b"carol", b"remote.test"]]
env = fetch(c, "1", "(ENVELOPE)")[1]["ENVELOPE"]
assert env == [b"Mon, 01 Jan 2024 10:00:00 +0000", b"hello imap", carol, carol, carol,
               [[b"Alice", None, b"alice", b"example.org"]], None, None, None,
               b"<imap0@remote.test>"], env
env = fetch(c, "3", "(ENVELOPE)")[3]["ENVELOPE"]
assert env[1] == b"lunch plans" and env[6] == [[None, None, b"bob", b"example.org"]], env

# BODYSTRUCTURE
def low(v):
    return v.lower() if isinstance(v, bytes) else v
bs = fetch(c, "1", "(BODYSTRUCTURE)")[1]["BODYSTRUCTURE"]
assert [low(x) for x in bs[:2]] == [b"text", b"plain"], bs
assert [low(x) for x in bs[2]] == [b"charset", b"us-ascii"], ("the default charset", bs)
assert bs[3] is None and bs[4] is None and low(bs[5]) == b"7bit", bs
assert int(bs[6]) == len(b"first body\r\nline two\r\n") and int(bs[7]) == 2, ("size and lines", bs)
bs = fetch(c, "2", "(BODYSTRUCTURE)")[2]["BODYSTRUCTURE"]
parts = [p for p in bs if isinstance(p, list) and p and isinstance(p[0], bytes) and len(p) > 6]
assert len(parts) == 2, ("two parts", bs)
text, data = parts
assert [low(x) for x in text[:2]] == [b"text", b"plain"], bs
assert [low(x) for x in text[2]] == [b"charset", b"utf-8"], bs
assert [low(x) for x in data[:2]] == [b"application", b"octet-stream"], bs
assert [low(x) for x in data[2]] == [b"name", b"data.bin"] and low(data[5]) == b"base64", bs
rest = bs[2:]
assert low(rest[0]) == b"mixed" and low(rest[1][0]) == b"boundary" and rest[1][1] == b"b1", bs
body = fetch(c, "2", "(BODY)")[2]["BODY"]
assert isinstance(body[0], list) and low(body[2]) == b"mixed", ("BODY", body)

# BODY.PEEK[HEADER.FIELDS (SUBJECT)]
f = fetch(c, "1:3", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
got = {n: item(m, "BODY[HEADER.FIELDS") for n, m in f.items()}
assert got == {1: b"Subject: hello imap\r\n\r\n", 2: b"Subject: quarterly report\r\n\r\n",
               3: b"Subject: lunch plans\r\n\r\n"}, got

# BODY.PEEK[] and RFC822.SIZE agree; RFC822.HEADER is the header with its blank line.
f = fetch(c, "1:3", "(RFC822.SIZE BODY.PEEK[])")
for n, m in f.items():
    assert int(m["RFC822.SIZE"]) == len(m["BODY[]"]), (n, m["RFC822.SIZE"], len(m["BODY[]"]))
whole = f[1]["BODY[]"]
assert whole.endswith(b"\r\n\r\nfirst body\r\nline two\r\n"), whole
assert b"\r\nMessage-ID: <imap0@remote.test>\r\n" in whole, whole
header = fetch(c, "1", "(RFC822.HEADER)")[1]["RFC822.HEADER"]
assert whole.startswith(header) and header.endswith(b"\r\n\r\n") and b"first body" not in header, header
assert fetch(c, "1", "(BODY.PEEK[HEADER])")[1]["BODY[HEADER]"] == header

# Parts and partial fetches.
m = fetch(c, "1", "(BODY.PEEK[TEXT]<0.5>)")[1]
assert m.get("BODY[TEXT]<0>") == b"first", m
m = fetch(c, "1", "(BODY.PEEK[TEXT]<6.100>)")[1]
assert m.get("BODY[TEXT]<6>") == b"body\r\nline two\r\n", m
m = fetch(c, "1", "(BODY.PEEK[TEXT]<1000.10>)")[1]
assert m.get("BODY[TEXT]<1000>") == b"", ("past the end: an empty string", m)
m = fetch(c, "1", "(BODY.PEEK[]<0.10>)")[1]
assert m.get("BODY[]<0>") == whole[:10], m
m = fetch(c, "1", "(BODY.PEEK[1])")[1]
assert m.get("BODY[1]") == b"first body\r\nline two\r\n", ("a single-part message has part 1", m)
m = fetch(c, "2", "(BODY.PEEK[1] BODY.PEEK[2.MIME])")[2]
assert m["BODY[1]"] == b"see the attached zebra figures", m
mime = m["BODY[2.MIME]"]
assert b"Content-Transfer-Encoding: base64\r\n" in mime and mime.endswith(b"\r\n\r\n"), mime

# None of that set \Seen; BODY[TEXT] does.
assert all("\\seen" not in fl for fl in flags(c, "1:3").values()), flags(c, "1:3")
m = fetch(c, "1", "(BODY[TEXT])")[1]
assert m["BODY[TEXT]"] == b"first body\r\nline two\r\n", m
assert "\\seen" in flags(c, "1")[1], flags(c, "1")
assert all("\\seen" not in flags(c, str(n))[n] for n in (2, 3))

# UID FETCH answers with UIDs; a UID that does not exist answers nothing.
f = fetch(c, str(uid[1]), "(FLAGS)", uid=True)
assert list(f) == [2] and int(f[2]["UID"]) == uid[1], f
assert fetch(c, str(uidnext + 100), "(FLAGS)", uid=True) == {}

# EXAMINE in a second session: read-only, nothing recent for it, no \Seen from reading.
d = login()
assert ok(d.select("INBOX", readonly=True)) == [b"3"]
assert "READ-ONLY" in d.untagged_responses, d.untagged_responses
assert d.untagged_responses.get("RECENT") == [b"0"], ("the first session has them", d.untagged_responses)
assert int(d.untagged_responses["UIDVALIDITY"][0]) == uidvalidity
assert fetch(d, "2", "(BODY[TEXT])")[2]["BODY[TEXT]"].startswith(b"--b1\r\n")
assert "\\seen" not in flags(d, "2")[2], "EXAMINE changes no flags"
# STORE may be refused (NO) or ignored, but it changes nothing.
typ, dat = d.store("2", "+FLAGS", "(\\Flagged)")
assert typ in ("NO", "OK"), ("STORE in a read-only mailbox", typ, dat)
assert "\\flagged" not in flags(d, "2")[2] and "\\flagged" not in flags(c, "2")[2], "EXAMINE is read-only"
assert d.logout()[0] == "BYE"

print("body1", base64.b64encode(whole).decode())
assert c.logout()[0] == "BYE"
"#;

#[test]
fn imaplib_lists_selects_and_fetches_delivered_mail() {
    let node = imap_node();
    deliver_three(&node);
    let out = python(&node, LIST_SELECT_FETCH, &[]);
    // BODY[] is the stored message, byte for byte.
    let b64 = out
        .lines()
        .find_map(|l| l.strip_prefix("body1 "))
        .unwrap_or_else(|| panic!("{out}"));
    let body = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let stored = node.wait_for_mail("alice", "<imap0@remote.test>", DELIVERY);
    assert_eq!(String::from_utf8_lossy(&body), stored);
}

const STORE_SEARCH: &str = r#"
c = login()
ok(c.select("INBOX"))
f = fetch(c, "1:3", "(UID)")
uid = [int(f[n]["UID"]) for n in (1, 2, 3)]

r = store(c, "1", "+FLAGS", "(\\Seen \\Flagged)")
assert {"\\seen", "\\flagged"} <= flagset(r[1]["FLAGS"]), r
assert store(c, "2", "+FLAGS.SILENT", "(\\Flagged)") == {}, "+FLAGS.SILENT answers no FETCH"
r = store(c, "1", "-FLAGS", "(\\Flagged)")
assert "\\seen" in flagset(r[1]["FLAGS"]) and "\\flagged" not in flagset(r[1]["FLAGS"]), r
r = store(c, "3", "FLAGS", "(\\Answered)")
assert flagset(r[3]["FLAGS"]) - {"\\recent"} == {"\\answered"}, r
r = store(c, str(uid[2]), "+FLAGS", "(\\Draft)", uid=True)
assert int(r[3]["UID"]) == uid[2] and "\\draft" in flagset(r[3]["FLAGS"]), ("UID STORE", r)
now = {n: fl - {"\\recent"} for n, fl in flags(c, "1:3").items()}
assert now == {1: {"\\seen"}, 2: {"\\flagged"}, 3: {"\\answered", "\\draft"}}, now

def day(delta):
    return time.strftime("%d-%b-%Y", time.gmtime(time.time() + delta * 86400))

for criteria, want in [
    ("ALL", [1, 2, 3]),
    ("UNSEEN", [2, 3]),
    ("SEEN", [1]),
    ("FLAGGED", [2]),
    ("UNFLAGGED", [1, 3]),
    ("ANSWERED", [3]),
    ("UNANSWERED", [1, 2]),
    ("DRAFT", [3]),
    ("DELETED", []),
    ("RECENT", [1, 2, 3]),
    ("NEW", [2, 3]),
    ('SUBJECT "lunch"', [3]),
    ("SUBJECT IMAP", [1]),
    ("FROM carol", [1, 3]),
    ('FROM "dave@remote.test"', [2]),
    ("TO alice", [1, 2, 3]),
    ("CC bob", [3]),
    ("BODY zebra", [2]),
    ("BODY pizza", [3]),
    ("BODY quarterly", []),
    ("TEXT quarterly", [2]),
    ("HEADER Message-ID imap2", [3]),
    ("LARGER 2000", [2]),
    ("SMALLER 2000", [1, 3]),
    ("SINCE " + day(-2), [1, 2, 3]),
    ("SINCE " + day(2), []),
    ("BEFORE " + day(-2), []),
    ("SENTBEFORE 2-Jan-2024", [1]),
    ("SENTON 2-Jan-2024", [2]),
    ("SENTSINCE 3-Jan-2024", [3]),
    ("OR FLAGGED ANSWERED", [2, 3]),
    ("NOT SEEN", [2, 3]),
    ("2:3 UNANSWERED", [2]),
    ("*", [3]),
    ("UID %d" % uid[1], [2]),
    ("UID %d:%d" % (uid[0], uid[1]), [1, 2]),
    ("(FROM carol SMALLER 2000) UNSEEN", [3]),
]:
    got = search(c, criteria)
    assert got == want, ("SEARCH", criteria, got, want)

for criteria, want in [
    ("UID %d:%d" % (uid[0], uid[1]), uid[:2]),
    ("UID %d:*" % uid[2], [uid[2]]),
    # n:* always includes the last message, even when n is past every UID (RFC 3501 6.4.8).
    ("UID %d:*" % (uid[2] + 1000), [uid[2]]),
    ("1:2", uid[:2]),
    ("FLAGGED", [uid[1]]),
]:
    got = uid_search(c, criteria)
    assert got == want, ("UID SEARCH", criteria, got, want)

assert search(c, 'SUBJECT "lunch"', charset="UTF-8") == [3]
try:
    typ, dat = c.search("X-NO-SUCH-CHARSET", "ALL")
except imaplib.IMAP4.error as e:
    raise AssertionError(("an unknown charset is NO [BADCHARSET], not BAD", e))
assert typ == "NO" and "BADCHARSET" in c.untagged_responses, (typ, dat)
print("searched")
"#;

#[test]
fn imaplib_stores_flags_and_searches() {
    let node = imap_node();
    deliver_three(&node);
    let out = python(&node, STORE_SEARCH, &[]);
    assert!(out.contains("searched"), "{out}");
}

const COPY_MOVE_APPEND: &str = r#"
c = login()
ok(c.select("INBOX"))
inbox_uv = int(c.untagged_responses["UIDVALIDITY"][0])
uidnext = int(c.untagged_responses["UIDNEXT"][0])
u1, u2, u3 = uids(c)
ok(c.store("1", "+FLAGS.SILENT", "(\\Seen)"))
ok(c.store("2", "+FLAGS.SILENT", "(\\Flagged)"))

# COPY keeps the originals; COPYUID maps them to their UIDs in Archive.
ok(c.copy("1:2", "Archive"), "COPY")
auv, src, dst = code(c, "COPYUID")
src, dst = uidset(src), uidset(dst)
assert src == [u1, u2] and len(set(dst)) == 2, ("COPYUID", src, dst)
copied = dict(zip(src, dst))
assert uids(c) == [u1, u2, u3]
st = status(c, "Archive")
assert st["MESSAGES"] == 2 and st["UNSEEN"] == 1 and st["UIDNEXT"] > max(dst), st

# MOVE: COPYUID, and the source message is expunged.
c.untagged_responses.clear()
ok(c.uid("MOVE", str(u3), "Trash"), "UID MOVE")
assert c.untagged_responses.pop("EXPUNGE", None) == [b"3"], ("MOVE expunges message 3", c.untagged_responses)
tuv, src, dst = code(c, "COPYUID")
assert uidset(src) == [u3] and len(uidset(dst)) == 1, ("COPYUID of MOVE", src, dst)
moved = uidset(dst)[0]
assert uids(c) == [u1, u2]
assert status(c, "Trash")["MESSAGES"] == 1

# EXPUNGE removes what is \Deleted.
ok(c.store("2", "+FLAGS.SILENT", "(\\Deleted)"))
assert ok(c.expunge()) == [b"2"]
assert uids(c) == [u1]

# APPEND answers APPENDUID; UID EXPUNGE removes only the UIDs it names.
def append(c, box, flags, raw, when=None):
    ok(c.append(box, flags, when, raw), ("APPEND", box))
    v, u = code(c, "APPENDUID")
    return int(v), int(u)
v, a1 = append(c, "INBOX", "(\\Deleted)", b"Subject: doomed\r\nMessage-ID: <doomed@example.org>\r\n\r\nx\r\n")
_, a2 = append(c, "INBOX", "(\\Deleted)", b"Subject: kept\r\nMessage-ID: <kept@example.org>\r\n\r\nx\r\n")
assert v == inbox_uv and uidnext <= a1 < a2, ("APPENDUID", inbox_uv, uidnext, v, a1, a2)
ok(c.noop())
assert uids(c) == [u1, a1, a2], uids(c)
c.untagged_responses.clear()
ok(c.uid("EXPUNGE", str(a1)), "UID EXPUNGE")
assert c.untagged_responses.pop("EXPUNGE", None) == [b"2"], c.untagged_responses
assert uids(c) == [u1, a2]

# APPEND to Drafts with flags and a date; read it back in another session.
draft = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: draft one\r\n"
         b"Message-ID: <draft1@example.org>\r\n\r\nunfinished thoughts\r\n")
when = datetime.datetime(2024, 1, 5, 9, 30, 0, tzinfo=datetime.timezone.utc)
duv, duid = append(c, "Drafts", "(\\Draft \\Seen)", draft, when)
d = login()
assert ok(d.select("Drafts", readonly=True)) == [b"1"]
assert int(d.untagged_responses["UIDVALIDITY"][0]) == duv, ("APPENDUID's UIDVALIDITY", duv, d.untagged_responses)
(m,) = fetch(d, str(duid), "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])", uid=True).values()
assert int(m["UID"]) == duid and m["BODY[]"] == draft, m
assert int(m["RFC822.SIZE"]) == len(draft), m
assert {"\\draft", "\\seen"} <= flagset(m["FLAGS"]), m
assert internaldate(m["INTERNALDATE"]) == when.timestamp(), m["INTERNALDATE"]

# The copies kept their flags; the moved message is in Trash under COPYUID's UID.
ok(d.select("Archive", readonly=True))
assert int(d.untagged_responses["UIDVALIDITY"][0]) == int(auv)
got = {int(m["UID"]): m for m in fetch(d, "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])").values()}
assert sorted(got) == sorted(copied.values()), (got, copied)
assert "\\seen" in flagset(got[copied[u1]]["FLAGS"]), got
assert b"<imap0@remote.test>" in item(got[copied[u1]], "BODY[HEADER.FIELDS"), got
assert "\\flagged" in flagset(got[copied[u2]]["FLAGS"]), got
assert b"<imap1@remote.test>" in item(got[copied[u2]], "BODY[HEADER.FIELDS"), got
ok(d.select("Trash", readonly=True))
assert int(d.untagged_responses["UIDVALIDITY"][0]) == int(tuv)
(m,) = fetch(d, str(moved), "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])", uid=True).values()
assert b"<imap2@remote.test>" in item(m, "BODY[HEADER.FIELDS"), m
d.logout()

# A folder that does not exist: NO [TRYCREATE].
typ, dat = c.append("NoSuchFolder", None, None, draft)
assert typ == "NO" and b"TRYCREATE" in b" ".join(dat), ("APPEND to a missing folder", typ, dat)
typ, dat = c.copy("1", "NoSuchFolder")
assert typ == "NO" and b"TRYCREATE" in b" ".join(dat), ("COPY to a missing folder", typ, dat)

ok(c.check(), "CHECK")
ok(c.unselect(), "UNSELECT")
st = status(c, "INBOX")
assert st == {"MESSAGES": 2, "UIDNEXT": st["UIDNEXT"], "UNSEEN": 1} and st["UIDNEXT"] > a2, st

# CLOSE expunges; UNSELECT does not.
ok(c.select("Trash"))
ok(c.store("1", "+FLAGS.SILENT", "(\\Deleted)"))
ok(c.close(), "CLOSE")
assert status(c, "Trash")["MESSAGES"] == 0
ok(c.select("Archive"))
ok(c.store("1", "+FLAGS.SILENT", "(\\Deleted)"))
ok(c.unselect(), "UNSELECT")
assert status(c, "Archive")["MESSAGES"] == 2

# GETQUOTAROOT INBOX: the directory's 1 GiB limit, and what the folders hold.
roots, quotas = ok(c.getquotaroot("INBOX"))
box, *names = values(roots[0])
assert box.upper() == b"INBOX" and names, ("QUOTAROOT", roots)
name, res = values(quotas[0])
assert name == names[0], (roots, quotas)
res = {k.decode().upper(): (int(a), int(b)) for k, a, b in zip(res[0::3], res[1::3], res[2::3])}
used, limit = res["STORAGE"]
assert limit == 1073741824 // 1024, ("the limit in KiB", res)
total = 0
for box, attrs in boxes(c).items():
    if "\\noselect" in attrs:
        continue
    if int(ok(c.select(box, readonly=True))[0]):
        total += sum(int(m["RFC822.SIZE"]) for m in fetch(c, "1:*", "(RFC822.SIZE)").values())
assert total > 4000 and abs(used - total / 1024) <= 1, ("usage in KiB", used, total)
(q,) = ok(c.getquota(quote(name)))
assert values(q)[1][:3] == [b"STORAGE", str(used).encode(), str(limit).encode()], q
print("quota", used, limit)
"#;

#[test]
fn imaplib_copies_moves_expunges_appends_and_reports_the_quota() {
    let node = imap_node();
    deliver_three(&node);
    let out = python(&node, COPY_MOVE_APPEND, &[]);
    assert!(out.contains("quota "), "{out}");
}

const FOLDERS: &str = r#"
c = login()
(root,) = joined(ok(c.list('""', '""')), rb"\(")
delim = values(root)[1].decode()
child = "Projects" + delim + "2024"
ok(c.create("Projects"), "CREATE")
ok(c.create(child), "CREATE")
typ, dat = c.create("Projects")
assert typ == "NO", ("CREATE of an existing folder", typ, dat)
typ, dat = c.create("Sent")
assert typ == "NO", ("CREATE of Sent", typ, dat)
lst = boxes(c)
assert "Projects" in lst and child in lst, lst
ok(c.append(child, None, None, b"Subject: filed\r\nMessage-ID: <filed@example.org>\r\n\r\nkeep me\r\n"))

# SUBSCRIBE and LSUB
ok(c.subscribe("Projects"), "SUBSCRIBE")
assert "Projects" in boxes(c, "lsub"), boxes(c, "lsub")
ok(c.unsubscribe("Projects"), "UNSUBSCRIBE")
assert "Projects" not in boxes(c, "lsub"), boxes(c, "lsub")

# RENAME takes the subfolder and its mail along.
ok(c.rename("Projects", "Work"), "RENAME")
lst = boxes(c)
moved = "Work" + delim + "2024"
assert "Work" in lst and moved in lst and "Projects" not in lst and child not in lst, lst
assert status(c, moved)["MESSAGES"] == 1
ok(c.select(moved))
assert b"<filed@example.org>" in item(fetch(c, "1", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")[1], "BODY[HEADER.FIELDS")
ok(c.unselect())
typ, dat = c.rename("Work", "Archive")
assert typ == "NO", ("RENAME onto an existing folder", typ, dat)
typ, dat = c.select("Projects")
assert typ == "NO", ("SELECT of a renamed folder", typ, dat)

# DELETE: the subfolder, then the folder; INBOX and missing folders cannot be deleted.
typ, dat = c.delete("INBOX")
assert typ == "NO", ("DELETE INBOX", typ, dat)
typ, dat = c.delete("NoSuchFolder")
assert typ == "NO", ("DELETE of a missing folder", typ, dat)
ok(c.delete(moved), "DELETE")
ok(c.delete("Work"), "DELETE")
lst = boxes(c)
assert not any(n.startswith("Work") or n.startswith("Projects") for n in lst), lst
assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= set(lst), lst

# A folder three levels down: "%" shows its top level (RFC 3501 6.3.8).
deep = delim.join(["Deep", "a", "b"])
ok(c.create(deep), "CREATE")
assert "Deep" in boxes(c, pattern="%"), boxes(c, pattern="%")
assert deep in boxes(c), boxes(c)

print("folders done")
"#;

const RENAME_INBOX: &str = r#"
c = login()
ok(c.append("INBOX", None, None, b"Subject: old\r\nMessage-ID: <old@example.org>\r\n\r\nold\r\n"))
ok(c.rename("INBOX", "OldInbox"), "RENAME INBOX")
assert status(c, "OldInbox")["MESSAGES"] == 1
assert status(c, "INBOX")["MESSAGES"] == 0
ok(c.select("INBOX"), "INBOX is still there")
print("renamed")
"#;

#[test]
fn imaplib_creates_renames_and_deletes_folders() {
    let node = imap_node();
    let out = python(&node, FOLDERS, &[]);
    assert!(out.contains("folders done"), "{out}");
}

/// RFC 3501 6.3.5: "Renaming INBOX is permitted, and has special behavior": its
/// messages move to the new folder and INBOX stays, empty.
#[test]
fn rename_inbox_moves_its_messages_and_leaves_inbox_empty() {
    let node = imap_node();
    let out = python(&node, RENAME_INBOX, &[]);
    assert!(out.contains("renamed"), "{out}");
}

const QUOTA_FROM_DIRECTORY: &str = r#"
def quota(c):
    roots, quotas = ok(c.getquotaroot("INBOX"))
    name, res = values(quotas[0])
    return {k.decode().upper(): (int(a), int(b)) for k, a, b in zip(res[0::3], res[1::3], res[2::3])}

c = login()
deadline = time.monotonic() + DEADLINE
while True:
    res = quota(c)
    if res.get("MESSAGE", (0, 0))[1] == 4 and res.get("STORAGE", (0, 0))[1] == 2048:
        break
    assert time.monotonic() < deadline, ("the directory's new quota is not reported", res)
assert res["MESSAGE"][0] == 3, ("three messages", res)
msg = b"Subject: one more\r\nMessage-ID: <one-more@example.org>\r\n\r\nx\r\n"
ok(c.append("INBOX", None, None, msg), "APPEND within the quota")
assert quota(c)["MESSAGE"] == (4, 4), quota(c)
typ, dat = c.append("INBOX", None, None, msg)
assert typ == "NO" and b"[OVERQUOTA]" in b" ".join(dat), ("APPEND over the quota (RFC 9208 4.3)", typ, dat)
assert quota(c)["MESSAGE"] == (4, 4), quota(c)
print("quota", res)
"#;

#[test]
fn the_quota_follows_the_directory_and_a_full_mailbox_refuses_append() {
    let node = imap_node();
    deliver_three(&node);
    node.ldapmodify(&format!(
        "dn: {}\nchangetype: modify\nreplace: mailQuotaSize\nmailQuotaSize: 2097152\n-\nreplace: mailQuotaCount\nmailQuotaCount: 4\n-\n",
        node.alice().dn
    ));
    let out = python(&node, QUOTA_FROM_DIRECTORY, &[]);
    assert!(out.contains("quota "), "{out}");
}

// ---------------------------------------------------------------------------------------
// IDLE, and two sessions on one mailbox.

const IDLE: &str = r#"
c = login()
exists = int(ok(c.select("INBOX"))[0])
c.send(b"I1 IDLE\r\n")
read_until(c, rb"\+", "the IDLE continuation", stop=rb"I1 ")
send_mail(ALICE, b"Subject: wake up\r\nMessage-ID: <idle@remote.test>\r\n\r\nnew mail\r\n")
m = read_until(c, rb"\* (\d+) EXISTS", "EXISTS for a delivery while idling", stop=rb"I1 ")
assert int(m.group(1)) == exists + 1, m.group(0)
print("woken by", m.group(0).decode().strip())

# Another session's flag change reaches the idling one too (RFC 2177).
d = login()
ok(d.select("INBOX"))
ok(d.store("1", "+FLAGS", "(\\Flagged)"))
m = read_until(c, rb"\* 1 FETCH \(.*FLAGS \(([^)]*)\)", "FETCH for the other session's STORE", stop=rb"I1 ")
assert "\\flagged" in m.group(1).decode().lower(), m.group(0)
d.logout()

c.send(b"DONE\r\n")
m = read_until(c, rb"I1 (OK|NO|BAD)", "the tagged reply to DONE")
assert m.group(1) == b"OK", m.group(0)
f = fetch(c, str(exists + 1), "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
assert b"<idle@remote.test>" in item(f[exists + 1], "BODY[HEADER.FIELDS"), f
c.logout()
"#;

#[test]
fn idle_is_woken_by_a_delivery_and_by_another_sessions_store() {
    let node = imap_node();
    deliver(&node, "alice", HELLO);
    let out = python(&node, IDLE, &[]);
    assert!(out.contains("woken by * 2 EXISTS"), "{out}");
}

const TWO_SESSIONS: &str = r#"
a = login()
b = login()
ok(a.select("INBOX"))
ok(b.select("INBOX"))

def flag_of(got, n):
    return flagset(fetched(got).get(n, {}).get("FLAGS", []))

ok(a.store("1", "+FLAGS", "(\\Flagged)"))
noop_until(b, "FETCH", lambda g: "\\flagged" in flag_of(g, 1), "B sees A set \\Flagged on 1")
ok(a.store("1", "-FLAGS", "(\\Flagged)"))
noop_until(b, "FETCH", lambda g: fetched(g).get(1) and "\\flagged" not in flag_of(g, 1), "B sees A clear \\Flagged on 1")
ok(b.store("3", "+FLAGS", "(\\Answered)"))
noop_until(a, "FETCH", lambda g: "\\answered" in flag_of(g, 3), "A sees B set \\Answered on 3")

ok(a.store("2", "+FLAGS.SILENT", "(\\Deleted)"))
assert ok(a.expunge()) == [b"2"]
got = noop_until(b, "EXPUNGE", lambda g: g, "B sees the EXPUNGE")
assert got == [b"2"], got
f = fetch(b, "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
ids = [item(m, "BODY[HEADER.FIELDS") for n, m in sorted(f.items())]
assert len(ids) == 2 and b"<imap0@" in ids[0] and b"<imap2@" in ids[1], ids
assert uids(a) == uids(b)

send_mail(ALICE, b"Subject: third\r\nMessage-ID: <third@remote.test>\r\n\r\nx\r\n")
noop_until(b, "EXISTS", lambda g: b"3" in g, "B sees the new message")
noop_until(a, "EXISTS", lambda g: b"3" in g, "A sees the new message")
print("sessions agree")
"#;

#[test]
fn two_sessions_see_each_others_flags_expunges_and_new_mail() {
    let node = imap_node();
    deliver_three(&node);
    let out = python(&node, TWO_SESSIONS, &[]);
    assert!(out.contains("sessions agree"), "{out}");
}

// ---------------------------------------------------------------------------------------
// UIDs across a restart.

const PREPARE: &str = r#"
c = login()
ok(c.create("Keep"))
ok(c.select("INBOX"))
ok(c.copy("1:2", "Keep"))
ok(c.store("2", "+FLAGS", "(\\Flagged \\Seen)"))
ok(c.store("1", "+FLAGS.SILENT", "(\\Deleted)"))
assert ok(c.expunge()) == [b"1"]
c.logout()
"#;

const SNAPSHOT: &str = r#"
c = login()
for box in ("INBOX", "Keep"):
    n = int(ok(c.select(box, readonly=True))[0])
    u = c.untagged_responses
    print(box, "uidvalidity", u["UIDVALIDITY"][0].decode(), "uidnext", u["UIDNEXT"][0].decode())
    if n:
        f = fetch(c, "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        for seq, m in sorted(f.items()):
            mid = item(m, "BODY[HEADER.FIELDS").decode().split(":", 1)[1].strip()
            print(box, seq, "uid", int(m["UID"]), mid, " ".join(sorted(flagset(m["FLAGS"]) - {"\\recent"})))
c.logout()
"#;

#[test]
fn uids_and_uidvalidity_survive_a_restart() {
    let mut node = imap_node();
    deliver_three(&node);
    python(&node, PREPARE, &[]);
    let before = python(&node, SNAPSHOT, &[]);
    assert_eq!(
        before.lines().count(),
        2 + 2 + 2,
        "two folders with two messages each: {before}"
    );
    node.restart();
    assert!(!node.imap.is_empty(), "no imap line after the restart");
    let after = python(&node, SNAPSHOT, &[]);
    assert_eq!(after, before, "the IMAP view changed across a restart");

    // A new message gets a UID no message had before.
    deliver(
        &node,
        "alice",
        "Subject: later\r\nMessage-ID: <later@remote.test>\r\n\r\nx\r\n",
    );
    let later = python(&node, SNAPSHOT, &[]);
    let uidnext: u64 = before
        .lines()
        .find(|l| l.starts_with("INBOX uidvalidity"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{before}"));
    let new_uid: u64 = later
        .lines()
        .find(|l| l.contains("<later@remote.test>"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{later}"));
    assert!(
        new_uid >= uidnext,
        "UID {new_uid} < UIDNEXT {uidnext}:\n{later}"
    );
    for line in before.lines().filter(|l| l.starts_with("INBOX ")) {
        if line.contains("uidvalidity") {
            let uv = line.split_whitespace().nth(2).unwrap();
            assert!(
                later.contains(&format!("INBOX uidvalidity {uv} ")),
                "{later}"
            );
        } else {
            assert!(later.contains(line), "{line:?} changed: {later}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Logins.

const LOGINS: &str = r#"
c = connect()
msg = refused(lambda: c.login(ALICE, "not the password"))
assert "[AUTHENTICATIONFAILED]" in msg, msg
print("wrong password:", msg)
ok(c.login(ALICE, ALICE_PW), "LOGIN after a failed one")
ok(c.select("INBOX"))
c.logout()

c = connect()
msg = refused(lambda: c.login("nobody@example.org", "whatever"))
assert "[AUTHENTICATIONFAILED]" in msg, ("an unknown user looks like a wrong password", msg)

c = connect()
msg = refused(lambda: c.authenticate("PLAIN", lambda _: b"\0" + ALICE.encode() + b"\0wrong"))
assert "[AUTHENTICATIONFAILED]" in msg, msg
c = connect()
ok(c.authenticate("PLAIN", lambda _: b"\0" + ALICE.encode() + b"\0" + ALICE_PW.encode()), "AUTHENTICATE PLAIN")
ok(c.select("INBOX"))
c.logout()

# Implicit TLS.
s = imaplib.IMAP4_SSL(*hp(IMAPS), ssl_context=tls(), timeout=DEADLINE)
assert s.sock.version().startswith("TLSv1"), s.sock.version()
ok(s.login(ALICE, ALICE_PW), "LOGIN over imaps")
print("imaps exists", ok(s.select("INBOX"))[0].decode())
s.logout()

# STARTTLS on the plain port.
t = connect()
assert "STARTTLS" in t.capabilities, t.capabilities
ok(t.starttls(ssl_context=tls()), "STARTTLS")
assert t.sock.version().startswith("TLSv1"), t.sock.version()
ok(t.login(ALICE, ALICE_PW), "LOGIN after STARTTLS")
print("starttls exists", ok(t.select("INBOX"))[0].decode())
t.logout()
"#;

const HOMED_ELSEWHERE: &str = r#"
deadline = time.monotonic() + DEADLINE
while True:
    c = connect()
    try:
        c.login(BOB, BOB_PW)
        c.logout()
    except imaplib.IMAP4.error as e:
        msg = str(e)
        break
    assert time.monotonic() < deadline, "bob still logs in here after his mailHost moved"
assert "[UNAVAILABLE]" in msg, msg
print("homed elsewhere:", msg)
"#;

#[test]
fn logins_wrong_passwords_tls_and_accounts_homed_elsewhere() {
    let node = imap_node();
    deliver(&node, "alice", HELLO);
    let out = python(&node, LOGINS, &[]);
    assert!(out.contains("imaps exists 1"), "{out}");
    assert!(out.contains("starttls exists 1"), "{out}");

    node.ldapmodify(&format!(
        "dn: {}\nchangetype: modify\nreplace: mailHost\nmailHost: node2\n-\n",
        node.bob().dn
    ));
    let out = python(&node, HOMED_ELSEWHERE, &[]);
    assert!(out.contains("homed elsewhere: "), "{out}");
}

// ---------------------------------------------------------------------------------------
// curl and fetchmail.

#[test]
fn curl_fetches_lists_searches_and_appends() {
    let node = imap_node();
    deliver(&node, "alice", HELLO);
    deliver(&node, "alice", LUNCH);
    let a = node.alice();
    let user = format!("{}:{}", a.mail, a.password);
    let base = format!("imap://{}", node.imap);
    let curl = |url: &str, extra: &[&str]| {
        let mut args = vec![
            "-s",
            "-S",
            "--max-time",
            "60",
            "--user",
            &user,
            "--url",
            url,
        ];
        args.extend_from_slice(extra);
        run("curl", &args)
    };

    let msg = curl(&format!("{base}/INBOX;UID=1"), &[]);
    let text = &msg.assert_ok().stdout;
    assert!(
        text.contains("Message-ID: <imap0@remote.test>\r\n")
            && text.ends_with("first body\r\nline two\r\n"),
        "{msg}"
    );
    let second = curl(&format!("{base}/INBOX;MAILINDEX=2"), &[]);
    assert!(
        second.assert_ok().stdout.contains("pizza at noon"),
        "{second}"
    );
    let body = curl(&format!("{base}/INBOX/;UID=1/;SECTION=TEXT"), &[]);
    assert_eq!(
        body.assert_ok().stdout,
        "first body\r\nline two\r\n",
        "{body}"
    );

    let list = curl(&format!("{base}/"), &[]);
    let listed: Vec<&str> = list.assert_ok().stdout.lines().collect();
    for name in ["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"] {
        assert!(
            listed
                .iter()
                .map(|l| l.trim_end())
                .any(|l| l.starts_with("* LIST ")
                    && (l.ends_with(&format!(" {name}")) || l.ends_with(&format!(" \"{name}\"")))),
            "{name} not listed: {list}"
        );
    }
    let search = curl(&format!("{base}/INBOX?SUBJECT%20lunch"), &[]);
    assert_eq!(
        search.assert_ok().stdout.trim_end(),
        "* SEARCH 2",
        "{search}"
    );

    // Upload (APPEND), then read it back.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("draft.eml");
    std::fs::write(
        &file,
        "Subject: from curl\r\nMessage-ID: <curl@example.org>\r\n\r\nuploaded\r\n",
    )
    .unwrap();
    curl(&format!("{base}/Drafts"), &["-T", file.to_str().unwrap()]).assert_ok();
    let status = curl(&format!("{base}/"), &["-X", "STATUS Drafts (MESSAGES)"]);
    assert!(
        status.assert_ok().stdout.contains("MESSAGES 1)"),
        "{status}"
    );
    let draft = curl(&format!("{base}/Drafts;MAILINDEX=1"), &[]);
    assert!(
        draft.assert_ok().stdout.contains("<curl@example.org>"),
        "{draft}"
    );

    // Over implicit TLS and STARTTLS, verifying the node's certificate.
    let cert = node.tls_cert.to_str().unwrap();
    let tls = curl(
        &format!("imaps://{}/INBOX;UID=1", node.imaps),
        &["--cacert", cert],
    );
    assert!(
        tls.assert_ok().stdout.contains("<imap0@remote.test>"),
        "{tls}"
    );
    let starttls = curl(
        &format!("{base}/INBOX;UID=2"),
        &["--ssl-reqd", "--cacert", cert],
    );
    assert!(
        starttls.assert_ok().stdout.contains("<imap2@remote.test>"),
        "{starttls}"
    );

    // A wrong password: CURLE_LOGIN_DENIED.
    let wrong = run(
        "curl",
        &[
            "-s",
            "--max-time",
            "60",
            "--user",
            "alice@example.org:wrong",
            "--url",
            &format!("{base}/"),
        ],
    );
    wrong.assert_code(67);
}

/// Run fetchmail on a run-control file whose poll entry is `poll`; the file (mode
/// 0600, as fetchmail insists) and fetchmail's pid and id files live in `dir`.
fn fetchmail(dir: &std::path::Path, poll: &str) -> ToolOutput {
    use std::os::unix::fs::PermissionsExt;
    let rc = dir.join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set pidfile \"{}\"\nset idfile \"{}\"\nset no bouncemail\n{poll}\n",
            dir.join("fetchmail.pid").display(),
            dir.join("fetchids").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    if std::process::Command::new("fetchmail")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("fetchmail not found: apt-get install fetchmail (.ci/install-deps does)");
    }
    run(
        "fetchmail",
        &["-f", rc.to_str().unwrap(), "-v", "--nosyslog"],
    )
}

const INBOX_COUNT: &str = r#"
c = login()
print("inbox", status(c, "INBOX")["MESSAGES"])
"#;

#[test]
fn fetchmail_downloads_over_imap_and_pop3_and_deletes_on_the_server() {
    let node = imap_node();
    deliver_three(&node);
    let dir = tempfile::tempdir().unwrap();
    let mbox = dir.path().join("mbox");
    let a = node.alice();
    let cert = node.tls_cert.display();
    let entry = |addr: &str, protocol: &str, tls: &str| {
        let (host, port) = addr.rsplit_once(':').unwrap();
        format!(
            "poll {host} service {port} protocol {protocol}\n  user \"{}\" password \"{}\"\n  {tls} sslcertck sslcertfile \"{cert}\" sslcommonname localhost\n  mda \"cat >> {}\"\n",
            a.mail,
            a.password,
            mbox.display()
        )
    };
    let mailbox = || std::fs::read_to_string(&mbox).unwrap_or_default();

    // IMAP after STARTTLS.
    let out = fetchmail(
        dir.path(),
        &entry(&node.imap, "IMAP", "sslproto \"TLS1.2+\""),
    );
    assert_eq!(out.code(), 0, "fetchmail over IMAP + STARTTLS:\n{out}");
    let got = mailbox();
    for id in [
        "<imap0@remote.test>",
        "<imap1@remote.test>",
        "<imap2@remote.test>",
    ] {
        assert_eq!(got.matches(id).count(), 1, "{id} in {got}\n{out}");
    }
    assert!(got.contains("see the attached zebra figures"), "{got}");
    // Without `keep` fetchmail deleted them on the server.
    assert!(
        python(&node, INBOX_COUNT, &[]).contains("inbox 0"),
        "fetchmail left mail on the server:\n{out}"
    );
    // Nothing new: exit code 1.
    let again = fetchmail(
        dir.path(),
        &entry(&node.imap, "IMAP", "sslproto \"TLS1.2+\""),
    );
    assert_eq!(again.code(), 1, "a second run finds no mail:\n{again}");

    // IMAP over implicit TLS.
    deliver(
        &node,
        "alice",
        "Subject: over imaps\r\nMessage-ID: <fm-imaps@remote.test>\r\n\r\nx\r\n",
    );
    let out = fetchmail(dir.path(), &entry(&node.imaps, "IMAP", "ssl"));
    assert_eq!(out.code(), 0, "fetchmail over imaps:\n{out}");
    assert!(mailbox().contains("<fm-imaps@remote.test>"), "{out}");

    // POP3 with STLS.
    deliver(
        &node,
        "alice",
        "Subject: over pop3\r\nMessage-ID: <fm-pop3@remote.test>\r\n\r\nx\r\n",
    );
    let out = fetchmail(
        dir.path(),
        &entry(&node.pop3, "POP3", "sslproto \"TLS1.2+\""),
    );
    assert_eq!(out.code(), 0, "fetchmail over POP3:\n{out}");
    assert!(mailbox().contains("<fm-pop3@remote.test>"), "{out}");
    assert!(
        wait_until(DELIVERY, || node.maildir("alice").is_empty()),
        "POP3 left mail on the server: {:?}",
        node.maildir("alice")
    );
}

// ---------------------------------------------------------------------------------------
// Raw bytes.

/// What reading one response line gave.
#[derive(Debug)]
enum Reply {
    Line(String),
    Closed,
    TimedOut,
}

/// A raw IMAP connection that keeps a transcript for failure messages.
struct Raw {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    transcript: String,
}

impl Raw {
    /// Connect and read the `* OK` greeting.
    fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(RAW_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(RAW_TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut raw = Raw {
            stream,
            reader,
            transcript: String::new(),
        };
        match raw.read() {
            Reply::Line(l) if l.starts_with("* OK") => {}
            other => panic!("no greeting from {addr}: {other:?}"),
        }
        raw
    }

    /// Connect and log in as `account`.
    fn logged_in(addr: &str, mail: &str, password: &str) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.expect("L1", &format!("LOGIN \"{mail}\" \"{password}\""), "OK");
        raw
    }

    /// Send `bytes`; false when the server no longer takes them.
    fn send(&mut self, bytes: &[u8]) -> bool {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
        self.transcript
            .push_str(&format!("C: {}\n", shown.trim_end()));
        self.stream.write_all(bytes).is_ok()
    }

    /// One response line, with any literals in it read along.
    fn read(&mut self) -> Reply {
        let mut line = Vec::new();
        loop {
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) => {
                    self.transcript.push_str("S: <closed>\n");
                    return Reply::Closed;
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    self.transcript.push_str("S: <silent>\n");
                    return Reply::TimedOut;
                }
                Err(_) => {
                    self.transcript.push_str("S: <reset>\n");
                    return Reply::Closed;
                }
            }
            match literal_len(&line) {
                Some(n) => {
                    let mut buf = vec![0; n];
                    if self.reader.read_exact(&mut buf).is_err() {
                        return Reply::Closed;
                    }
                    line.extend(buf);
                }
                None => break,
            }
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        self.transcript
            .push_str(&format!("S: {}\n", text.trim_end()));
        Reply::Line(text)
    }

    /// Lines up to and including the one tagged `tag`; panics if the server closes the
    /// connection or stays silent first.
    #[track_caller]
    fn until(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            match self.read() {
                Reply::Line(l) => {
                    let done = l.starts_with(&format!("{tag} "));
                    lines.push(l);
                    if done {
                        return lines;
                    }
                }
                other => panic!(
                    "waiting for the reply tagged {tag}: {other:?}\n{}",
                    self.transcript
                ),
            }
        }
    }

    /// Send `tag text` and return the reply's lines.
    #[track_caller]
    fn command(&mut self, tag: &str, text: &str) -> Vec<String> {
        self.send(format!("{tag} {text}\r\n").as_bytes());
        self.until(tag)
    }

    /// Send `tag text` and check that the tagged reply's status is one of `statuses`
    /// (`"OK"`, `"NO|BAD"`); returns the reply's lines.
    #[track_caller]
    fn expect(&mut self, tag: &str, text: &str, statuses: &str) -> Vec<String> {
        let lines = self.command(tag, text);
        let status = tagged_status(&lines, tag);
        assert!(
            statuses.split('|').any(|s| s == status),
            "`{tag} {text}` answered {status}, not {statuses}\n{}",
            self.transcript
        );
        lines
    }
}

/// The length of the literal `line` announces at its end (`{n}\r\n`).
fn literal_len(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?;
    let inner = text.strip_suffix("}\r\n")?;
    let open = inner.rfind('{')?;
    inner[open + 1..].parse().ok()
}

/// The status word (`OK`, `NO`, `BAD`) of the line tagged `tag`.
fn tagged_status<'a>(lines: &'a [String], tag: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{tag} ")))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("")
}

/// The number in the `* n EXISTS` line of `lines`.
fn exists(lines: &[String]) -> usize {
    lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("* ")
                .and_then(|r| r.trim_end().strip_suffix(" EXISTS"))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no EXISTS in {lines:?}"))
}

#[test]
fn literal_plus_sasl_ir_and_literal_logins_over_raw_bytes() {
    let node = imap_node();
    let a = node.alice();
    let plain =
        |pw: &str| base64::engine::general_purpose::STANDARD.encode(format!("\0{}\0{pw}", a.mail));

    // SASL-IR: the credentials on the AUTHENTICATE line.
    let mut c = Raw::connect(&node.imap);
    let lines = c.expect(
        "a1",
        &format!("AUTHENTICATE PLAIN {}", plain("wrong")),
        "NO",
    );
    assert!(
        lines.last().unwrap().contains("[AUTHENTICATIONFAILED]"),
        "{}",
        c.transcript
    );
    // A cancelled exchange is BAD (RFC 3501 6.2.2); an unknown mechanism is NO.
    c.send(b"a2 AUTHENTICATE PLAIN\r\n");
    match c.read() {
        Reply::Line(l) if l.starts_with('+') => {}
        other => panic!(
            "no continuation for AUTHENTICATE PLAIN: {other:?}\n{}",
            c.transcript
        ),
    }
    c.send(b"*\r\n");
    let lines = c.until("a2");
    assert_eq!(tagged_status(&lines, "a2"), "BAD", "{}", c.transcript);
    c.expect("a3", "AUTHENTICATE X-NO-SUCH-MECH", "NO");
    c.expect(
        "a4",
        &format!("AUTHENTICATE PLAIN {}", plain(&a.password)),
        "OK",
    );

    // LITERAL+: APPEND without waiting for a continuation.
    let msg = "Subject: literal plus\r\nMessage-ID: <lplus@example.org>\r\n\r\nno round trip\r\n";
    c.send(format!("a5 APPEND Drafts (\\Seen) {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes());
    let lines = c.until("a5");
    assert!(
        lines.iter().all(|l| !l.starts_with('+')),
        "a continuation for a non-synchronizing literal:\n{}",
        c.transcript
    );
    assert_eq!(tagged_status(&lines, "a5"), "OK", "{}", c.transcript);
    let appenduid = lines.last().unwrap();
    let uid: String = appenduid
        .split("[APPENDUID ")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .and_then(|r| r.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no APPENDUID: {}", c.transcript))
        .to_string();
    let lines = c.expect("a6", "SELECT Drafts", "OK");
    assert_eq!(exists(&lines), 1, "{}", c.transcript);
    let lines = c.expect("a7", &format!("UID FETCH {uid} (FLAGS BODY.PEEK[])"), "OK");
    let fetched = lines.concat();
    assert!(fetched.contains(msg), "{}", c.transcript);
    assert!(fetched.contains("\\Seen"), "{}", c.transcript);
    c.expect("a8", "LOGOUT", "OK");

    // LOGIN with synchronizing literals.
    let mut c = Raw::connect(&node.imap);
    c.send(format!("b1 LOGIN {{{}}}\r\n", a.mail.len()).as_bytes());
    match c.read() {
        Reply::Line(l) if l.starts_with('+') => {}
        other => panic!("no continuation for a literal: {other:?}\n{}", c.transcript),
    }
    c.send(format!("{} {{{}}}\r\n", a.mail, a.password.len()).as_bytes());
    match c.read() {
        Reply::Line(l) if l.starts_with('+') => {}
        other => panic!("no continuation for a literal: {other:?}\n{}", c.transcript),
    }
    c.send(format!("{}\r\n", a.password).as_bytes());
    let lines = c.until("b1");
    assert_eq!(tagged_status(&lines, "b1"), "OK", "{}", c.transcript);
}

#[test]
fn malformed_input_gets_bad_and_the_server_stays_up() {
    let mut node = imap_node();
    deliver(&node, "alice", HELLO);
    let a = node.alice().clone();

    // Garbage before login: BAD (tagged or untagged), and the connection goes on.
    let mut c = Raw::connect(&node.imap);
    c.send(b"garbage\r\n");
    match c.read() {
        Reply::Line(l) if l.contains(" BAD") => {}
        other => panic!("`garbage` answered {other:?}\n{}", c.transcript),
    }
    c.expect("a0", "NOOP", "OK");
    c.send(b"\r\n");
    c.expect("a1", "NOOP", "OK"); // an empty line may be ignored or get a BAD first

    // Each bad command on a connection of its own (a server may close one that keeps
    // sending errors), followed by a good one on the same connection.
    let before_login = [
        ("FROBNICATE", "BAD"),
        ("LOGIN", "BAD"),
        ("LOGIN \"unterminated", "BAD"),
        ("SELECT INBOX", "BAD|NO"),
        ("FETCH 1 (FLAGS)", "BAD|NO"),
    ];
    for (command, statuses) in before_login {
        let mut c = Raw::connect(&node.imap);
        c.expect("x1", command, statuses);
        c.expect("x2", "NOOP", "OK");
    }
    let mut junk = Raw::connect(&node.imap);
    junk.send(b"\xff\xfe\x00 junk\r\n");
    match junk.read() {
        Reply::Line(l) if l.contains(" BAD") => {}
        other => panic!("binary junk answered {other:?}\n{}", junk.transcript),
    }
    junk.expect("x2", "NOOP", "OK");

    // And once a mailbox is selected.
    let selected = [
        ("FETCH 1:x (FLAGS)", "BAD"),
        ("FETCH 1 (FLAGS", "BAD"),
        ("FETCH 1 (NO-SUCH-ITEM)", "BAD"),
        ("STORE 1 +FLAGS (\\Bogus", "BAD"),
        ("SEARCH FROBNICATE", "BAD"),
        ("UID FETCH 0:-1 (FLAGS)", "BAD"),
        ("FETCH 99999 (FLAGS)", "BAD|NO"),
        ("COPY 1", "BAD"),
    ];
    for (command, statuses) in selected {
        let mut c = Raw::logged_in(&node.imap, &a.mail, &a.password);
        let lines = c.expect("x0", "SELECT INBOX", "OK");
        assert_eq!(exists(&lines), 1, "{}", c.transcript);
        c.expect("x1", command, statuses);
        c.expect("x2", "NOOP", "OK");
    }

    // An enormous synchronizing literal is refused at once, not waited for.
    let mut big = Raw::connect(&node.imap);
    big.send(b"c1 LOGIN {999999999}\r\n");
    match big.read() {
        Reply::Line(l)
            if l.starts_with("c1 BAD") || l.starts_with("c1 NO") || l.starts_with("* BYE") => {}
        other => panic!(
            "a {{999999999}} literal answered {other:?}, not BAD/NO\n{}",
            big.transcript
        ),
    }
    // The refused literal's bytes never come; the next line is a command, if the
    // server kept the connection.
    big.send(b"c2 NOOP\r\n");
    match big.read() {
        Reply::Line(l) if l.starts_with("c2 OK") => {}
        Reply::Closed => {}
        other => panic!("after the refused literal: {other:?}\n{}", big.transcript),
    }
    let mut big = Raw::logged_in(&node.imap, &a.mail, &a.password);
    big.send(b"c3 APPEND INBOX {999999999}\r\n");
    match big.read() {
        Reply::Line(l)
            if l.starts_with("c3 BAD") || l.starts_with("c3 NO") || l.starts_with("* BYE") => {}
        other => panic!(
            "APPEND of a {{999999999}} literal answered {other:?}, not BAD/NO\n{}",
            big.transcript
        ),
    }

    // A literal cut off by a disconnect appends nothing.
    let mut cut = Raw::logged_in(&node.imap, &a.mail, &a.password);
    cut.send(b"d1 APPEND INBOX {200}\r\n");
    match cut.read() {
        Reply::Line(l) if l.starts_with('+') => {}
        other => panic!("no continuation for APPEND: {other:?}\n{}", cut.transcript),
    }
    cut.send(b"Subject: cut off\r\n\r\nonly part of");
    drop(cut);

    // A line without an end: an error or a closed connection, not a hang.
    let mut endless = Raw::connect(&node.imap);
    let chunk = [b'A'; 1024];
    for _ in 0..100 {
        if !endless.send(&chunk) {
            break;
        }
    }
    match endless.read() {
        Reply::Line(l) if l.contains("BAD") || l.contains("BYE") => {}
        Reply::Closed => {}
        other => panic!(
            "100 KiB without CRLF answered {other:?}: neither an error nor a close\n{}",
            endless.transcript
        ),
    }

    // The node serves on, the first connection included, and the cut APPEND left
    // nothing behind.
    assert!(node.is_running(), "the node died");
    c.expect("a2", "NOOP", "OK");
    let mut again = Raw::logged_in(&node.imap, &a.mail, &a.password);
    let lines = again.expect("e1", "SELECT INBOX", "OK");
    assert_eq!(exists(&lines), 1, "{}", again.transcript);
    again.expect("e2", "LOGOUT", "OK");
    assert!(
        !node
            .maildir("alice")
            .iter()
            .any(|m| m.contains("Subject: cut off")),
        "a cut-off APPEND was stored"
    );
}

//! Bad input over a raw socket and through a client library: the node answers with the
//! right result code or closes that one connection, and keeps serving everyone else.

use crate::harness::{admin_conn, ldap_conn, run, Node};
use ldap3::{LdapConn, Scope, SearchEntry};
use rasn_ldap::{
    AttributeValueAssertion, AuthenticationChoice, BindRequest, Filter, LdapMessage, ProtocolOp,
    ResultCode, SearchRequest, SearchRequestDerefAliases, SearchRequestScope, UnbindRequest,
};
use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

const PEOPLE: &str = "ou=people,dc=example.org,ou=domains,dc=pigeonair";
const NOTICE_OF_DISCONNECTION: &[u8] = b"1.3.6.1.4.1.1466.20036";
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

fn raw(node: &Node) -> TcpStream {
    let s = TcpStream::connect((node.host.as_str(), node.port)).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Read until the server closes the connection; returns what it sent before closing.
/// A reset counts as closed. Panics if the connection is still open after the deadline.
#[track_caller]
fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let deadline = Instant::now() + CLOSE_DEADLINE;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: the server kept the connection open for {CLOSE_DEADLINE:?} (it sent {} bytes)",
            got.len()
        );
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return got
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("{what}: read failed: {e}"),
        }
    }
}

/// Whatever the server sent before closing must be LDAP: at most a Notice of
/// Disconnection (an unsolicited ExtendedResponse with message id 0).
#[track_caller]
fn assert_only_notice(bytes: &[u8], what: &str) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = frame_len(rest)
            .unwrap_or_else(|| panic!("{what}: the server sent a partial PDU: {bytes:02x?}"));
        let msg: LdapMessage = rasn::ber::decode(&rest[..len]).unwrap_or_else(|e| {
            panic!("{what}: the server sent something that is not LDAP ({e}): {bytes:02x?}")
        });
        assert_eq!(msg.message_id, 0, "{what}: {msg:?}");
        match &msg.protocol_op {
            ProtocolOp::ExtendedResp(r) => {
                assert_eq!(
                    r.response_name.as_deref(),
                    Some(NOTICE_OF_DISCONNECTION),
                    "{what}: {msg:?}"
                );
                assert_ne!(r.result_code, ResultCode::Success, "{what}: {msg:?}");
            }
            other => panic!("{what}: unexpected unsolicited message {other:?}"),
        }
        rest = &rest[len..];
    }
}

/// The length of the BER SEQUENCE at the start of `buf`, if all of it is there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 2 {
        return None;
    }
    let l0 = buf[1];
    let (header, len) = if l0 < 0x80 {
        (2, l0 as usize)
    } else {
        let n = (l0 & 0x7f) as usize;
        if buf.len() < 2 + n {
            return None;
        }
        (
            2 + n,
            buf[2..2 + n]
                .iter()
                .fold(0usize, |a, &b| a << 8 | b as usize),
        )
    };
    (buf.len() >= header + len).then_some(header + len)
}

/// A search through an already open connection: proves the node still serves it.
#[track_caller]
fn still_serves(conn: &mut LdapConn, node: &Node) {
    let (entries, res) = conn
        .search(
            "dc=pigeonair",
            Scope::Subtree,
            "(mail=alice@example.org)",
            vec!["uid"],
        )
        .expect("search on the other connection")
        .success()
        .expect("search on the other connection");
    assert_eq!(res.rc, 0);
    assert_eq!(entries.len(), 1);
    // and a brand new client is served too
    let out = run(
        "ldapwhoami",
        &[
            "-x",
            "-H",
            &node.url,
            "-D",
            &node.admin_dn,
            "-w",
            &node.admin_pw,
        ],
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), format!("dn:{}", node.admin_dn));
}

#[test]
fn garbage_closes_only_that_connection() {
    let node = Node::start();
    let mut other = admin_conn(&node);
    still_serves(&mut other, &node);

    for (what, garbage) in [
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: ldap.example.org\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        ),
        (
            "bad BER inside a SEQUENCE",
            vec![0x30, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
        (
            "a SEQUENCE that is no LDAPMessage",
            vec![0x30, 0x06, 0x04, 0x01, 0x41, 0x04, 0x01, 0x42],
        ),
        (
            "indefinite length",
            vec![0x30, 0x80, 0x02, 0x01, 0x01, 0x00, 0x00],
        ),
    ] {
        let mut s = raw(&node);
        s.write_all(&garbage).unwrap();
        let sent = read_until_closed(&mut s, what);
        assert_only_notice(&sent, what);
        still_serves(&mut other, &node);
    }
}

#[test]
fn truncated_pdu_is_closed_cleanly() {
    let node = Node::start();
    let mut other = admin_conn(&node);
    // The header announces 100 bytes; 8 follow, then the client stops sending.
    let mut s = raw(&node);
    s.write_all(&[0x30, 0x64, 0x02, 0x01, 0x01, 0x60, 0x5f, 0x02, 0x01, 0x03])
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let sent = read_until_closed(&mut s, "truncated PDU");
    assert_only_notice(&sent, "truncated PDU");
    still_serves(&mut other, &node);
}

#[test]
fn oversized_pdu_is_refused_without_reading_it() {
    let node = Node::start();
    let mut other = admin_conn(&node);
    let mut s = raw(&node);
    // A SEQUENCE announcing 2 MiB (the default limit is 1 MiB); only 64 KiB follow, so a
    // server that waited for all of it would never close.
    let mut pdu = vec![0x30, 0x83, 0x20, 0x00, 0x00, 0x02, 0x01, 0x01];
    pdu.resize(64 * 1024, b'x');
    match s.write_all(&pdu) {
        Ok(()) => {}
        // the server may already have closed and reset the connection
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
        Err(e) => panic!("write: {e}"),
    }
    let sent = read_until_closed(&mut s, "oversized PDU");
    assert_only_notice(&sent, "oversized PDU");
    still_serves(&mut other, &node);

    // A large but allowed request (a 512 KiB attribute value) is still accepted.
    let dn = format!("uid=big,{PEOPLE}");
    let big = "y".repeat(512 * 1024);
    let res = other
        .add(
            &dn,
            vec![
                ("objectClass", HashSet::from(["inetOrgPerson"])),
                ("uid", HashSet::from(["big"])),
                ("cn", HashSet::from(["Big"])),
                ("sn", HashSet::from(["Big"])),
                ("description", HashSet::from([big.as_str()])),
            ],
        )
        .unwrap();
    assert_eq!(res.rc, 0, "{res:?}");
    let (entries, _) = other
        .search(&dn, Scope::Base, "(objectClass=*)", vec!["description"])
        .unwrap()
        .success()
        .unwrap();
    let e = SearchEntry::construct(entries.into_iter().next().unwrap());
    assert_eq!(e.attrs["description"][0].len(), big.len());
}

fn person<'a>(uid: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, HashSet<&'a str>)> {
    let mut attrs: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (a, v) in [
        ("objectClass", "inetOrgPerson"),
        ("objectClass", "inetLocalMailRecipient"),
        ("objectClass", "pigeonairMailAccount"),
        ("uid", uid),
        ("cn", uid),
        ("sn", uid),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        attrs.entry(a).or_default().insert(v);
    }
    attrs.into_iter().collect()
}

#[test]
fn schema_violations_get_their_result_codes() {
    let node = Node::start();
    let mut conn = admin_conn(&node);
    let add = |conn: &mut LdapConn, dn: &str, attrs: Vec<(&str, HashSet<&str>)>| -> u32 {
        conn.add(dn, attrs).expect("add").rc
    };

    // objectClassViolation (65): inetOrgPerson without its MUST sn
    let dn = format!("uid=nosn,{PEOPLE}");
    let rc = add(
        &mut conn,
        &dn,
        vec![
            ("objectClass", HashSet::from(["inetOrgPerson"])),
            ("uid", HashSet::from(["nosn"])),
            ("cn", HashSet::from(["No Sn"])),
        ],
    );
    assert_eq!(rc, 65, "missing sn");
    // ... and with no structural class at all
    let rc = add(
        &mut conn,
        &format!("uid=aux,{PEOPLE}"),
        vec![
            ("objectClass", HashSet::from(["inetLocalMailRecipient"])),
            ("uid", HashSet::from(["aux"])),
        ],
    );
    assert_eq!(rc, 65, "no structural object class");
    // ... and an attribute no class allows
    let rc = add(&mut conn, &format!("uid=notallowed,{PEOPLE}"), {
        let mut a = person("notallowed", &[]);
        a.retain(|(n, _)| *n != "objectClass");
        a.push(("objectClass", HashSet::from(["inetOrgPerson"])));
        a.push(("mailHost", HashSet::from(["node1.example.org"])));
        a
    });
    assert_eq!(rc, 65, "mailHost without inetLocalMailRecipient");

    // undefinedAttributeType (17)
    let rc = add(
        &mut conn,
        &format!("uid=undef,{PEOPLE}"),
        person("undef", &[("nosuchattr", "x")]),
    );
    assert_eq!(rc, 17, "nosuchattr");

    // invalidAttributeSyntax (21): an Integer attribute given letters
    let rc = add(
        &mut conn,
        &format!("uid=syntax,{PEOPLE}"),
        person("syntax", &[("mailQuotaSize", "abc")]),
    );
    assert_eq!(rc, 21, "mailQuotaSize: abc");

    // constraintViolation (19): two values of a SINGLE-VALUE attribute
    let rc = add(
        &mut conn,
        &format!("uid=twohosts,{PEOPLE}"),
        person(
            "twohosts",
            &[("mailHost", "a.example.org"), ("mailHost", "b.example.org")],
        ),
    );
    assert_eq!(rc, 19, "two mailHost values");

    // entryAlreadyExists (68)
    let rc = add(&mut conn, &node.alice().dn.clone(), person("alice", &[]));
    assert_eq!(rc, 68, "alice again");

    // noSuchObject (32): a missing parent, a missing search base
    let rc = add(
        &mut conn,
        &format!("uid=orphan,ou=missing,{PEOPLE}"),
        person("orphan", &[]),
    );
    assert_eq!(rc, 32, "missing parent");
    let res = conn
        .search(
            &format!("ou=missing,{PEOPLE}"),
            Scope::Subtree,
            "(objectClass=*)",
            vec!["1.1"],
        )
        .unwrap();
    assert_eq!(res.1.rc, 32, "missing base: {:?}", res.1);
    assert!(res.0.is_empty());
    // matchedDN names the nearest existing ancestor
    assert_eq!(
        res.1.matched.to_ascii_lowercase(),
        PEOPLE.to_ascii_lowercase()
    );

    // None of the failed adds left anything behind.
    let (entries, _) = conn
        .search(
            "dc=pigeonair",
            Scope::Subtree,
            "(|(uid=nosn)(uid=aux)(uid=notallowed)(uid=undef)(uid=syntax)(uid=twohosts)(uid=orphan))",
            vec!["1.1"],
        )
        .unwrap()
        .success()
        .unwrap();
    assert!(entries.is_empty(), "a refused add left entries behind");

    // The same rules hold for modify.
    let alice = node.alice().dn.clone();
    let modify = |conn: &mut LdapConn, m: Vec<ldap3::Mod<&str>>| -> u32 {
        conn.modify(&alice, m).expect("modify").rc
    };
    assert_eq!(
        modify(
            &mut conn,
            vec![ldap3::Mod::Replace("mailQuotaSize", HashSet::from(["abc"]))]
        ),
        21
    );
    assert_eq!(
        modify(
            &mut conn,
            vec![ldap3::Mod::Replace(
                "mailHost",
                HashSet::from(["a.example.org", "b.example.org"])
            )]
        ),
        19
    );
    assert_eq!(
        modify(&mut conn, vec![ldap3::Mod::Delete("sn", HashSet::new())]),
        65
    );
    assert_eq!(
        modify(
            &mut conn,
            vec![ldap3::Mod::Add("nosuchattr", HashSet::from(["x"]))]
        ),
        17
    );
    // a modify is atomic: a valid change next to an invalid one is not applied
    assert_eq!(
        modify(
            &mut conn,
            vec![
                ldap3::Mod::Replace("cn", HashSet::from(["Changed Alice"])),
                ldap3::Mod::Replace("mailQuotaSize", HashSet::from(["abc"])),
            ]
        ),
        21
    );
    let (entries, _) = conn
        .search(&alice, Scope::Base, "(objectClass=*)", vec!["cn", "sn"])
        .unwrap()
        .success()
        .unwrap();
    let e = SearchEntry::construct(entries.into_iter().next().unwrap());
    assert_ne!(
        e.attrs["cn"],
        vec!["Changed Alice"],
        "a failed modify was half applied"
    );
    assert_eq!(e.attrs["sn"].len(), 1);
    // modify of a missing entry
    let rc = conn
        .modify(
            &format!("uid=ghost,{PEOPLE}"),
            vec![ldap3::Mod::Replace("cn", HashSet::from(["x"]))],
        )
        .unwrap()
        .rc;
    assert_eq!(rc, 32);

    // invalidCredentials (49)
    let mut c = ldap_conn(&node);
    assert_eq!(
        c.simple_bind(&node.admin_dn, "not-the-password")
            .unwrap()
            .rc,
        49
    );
    // and the node is fine
    still_serves(&mut conn, &node);
}

fn search_request(base: &str, scope: SearchRequestScope, filter: Filter) -> SearchRequest {
    SearchRequest::new(
        base.into(),
        scope,
        SearchRequestDerefAliases::NeverDerefAliases,
        0,
        0,
        false,
        filter,
        vec!["mail".into()],
    )
}

fn equality(attr: &str, value: &str) -> Filter {
    Filter::EqualityMatch(AttributeValueAssertion::new(
        attr.into(),
        value.as_bytes().to_vec().into(),
    ))
}

/// Read one LDAPMessage from the stream, buffering what comes after it.
#[track_caller]
fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> LdapMessage {
    loop {
        if let Some(len) = frame_len(buf) {
            let msg: LdapMessage = rasn::ber::decode(&buf[..len]).expect("decode a response");
            buf.drain(..len);
            return msg;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no complete response before the deadline");
        s.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn pipelined_searches_on_one_connection_each_get_their_answer() {
    let node = Node::start();
    let mut s = raw(&node);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = Vec::new();

    let bind = LdapMessage::new(
        1,
        ProtocolOp::BindRequest(BindRequest::new(
            3,
            node.admin_dn.as_str().into(),
            AuthenticationChoice::Simple(node.admin_pw.as_bytes().to_vec().into()),
        )),
    );
    s.write_all(&rasn::ber::encode(&bind).unwrap()).unwrap();
    let resp = read_message(&mut s, &mut buf, deadline);
    assert_eq!(resp.message_id, 1);
    match resp.protocol_op {
        ProtocolOp::BindResponse(r) => assert_eq!(r.result_code, ResultCode::Success, "{r:?}"),
        other => panic!("expected a BindResponse, got {other:?}"),
    }

    // Three searches back to back in one write, before any answer is read.
    let requests = [
        (
            2u32,
            search_request(
                "dc=pigeonair",
                SearchRequestScope::WholeSubtree,
                equality("mail", "alice@example.org"),
            ),
        ),
        (
            3,
            search_request(
                "dc=pigeonair",
                SearchRequestScope::WholeSubtree,
                equality("mail", "bob@example.org"),
            ),
        ),
        (
            4,
            search_request(
                PEOPLE,
                SearchRequestScope::SingleLevel,
                Filter::Present("objectClass".into()),
            ),
        ),
    ];
    let mut bytes = Vec::new();
    for (id, req) in &requests {
        bytes.extend(
            rasn::ber::encode(&LdapMessage::new(
                *id,
                ProtocolOp::SearchRequest(req.clone()),
            ))
            .unwrap(),
        );
    }
    s.write_all(&bytes).unwrap();

    let mut entries: HashMap<u32, Vec<String>> = HashMap::new();
    let mut done: HashMap<u32, ResultCode> = HashMap::new();
    while done.len() < 3 {
        let msg = read_message(&mut s, &mut buf, deadline);
        let id = msg.message_id;
        assert!(
            (2..=4).contains(&id),
            "a response with message id {id}: {msg:?}"
        );
        assert!(
            !done.contains_key(&id),
            "a response for {id} after its SearchResultDone"
        );
        match msg.protocol_op {
            ProtocolOp::SearchResEntry(e) => entries
                .entry(id)
                .or_default()
                .push(e.object_name.0.to_ascii_lowercase()),
            ProtocolOp::SearchResDone(d) => {
                done.insert(id, d.0.result_code);
            }
            other => panic!("unexpected response to search {id}: {other:?}"),
        }
    }
    assert!(done.values().all(|c| *c == ResultCode::Success), "{done:?}");
    assert_eq!(
        entries.get(&2),
        Some(&vec![node.alice().dn.to_ascii_lowercase()])
    );
    assert_eq!(
        entries.get(&3),
        Some(&vec![node.bob().dn.to_ascii_lowercase()])
    );
    let people: HashSet<&String> = entries
        .get(&4)
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    assert!(
        people.contains(&node.alice().dn.to_ascii_lowercase())
            && people.contains(&node.bob().dn.to_ascii_lowercase()),
        "{people:?}"
    );

    // Unbind: the server closes the connection without answering.
    s.write_all(
        &rasn::ber::encode(&LdapMessage::new(
            5,
            ProtocolOp::UnbindRequest(UnbindRequest),
        ))
        .unwrap(),
    )
    .unwrap();
    let rest = read_until_closed(&mut s, "after unbind");
    assert!(
        rest.is_empty() && buf.is_empty(),
        "the server answered an unbind: {rest:02x?}"
    );
    let mut other = ldap_conn(&node);
    assert_eq!(
        other
            .simple_bind(&node.admin_dn, &node.admin_pw)
            .unwrap()
            .rc,
        0
    );
}

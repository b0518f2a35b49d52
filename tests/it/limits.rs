//! Abuse limits: failed binds slow down and the right password still works; the
//! per-address connection cap refuses the excess connection with a clear result while
//! the node keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{start_configured, wait_until, Node};

fn bind(url: &str, dn: &str, pw: &str) -> (u32, Duration) {
    let started = Instant::now();
    let mut conn = ldap3::LdapConn::new(url).expect("connect");
    let rc = conn.simple_bind(dn, pw).map(|r| r.rc).unwrap_or(u32::MAX);
    let _ = conn.unbind();
    (rc, started.elapsed())
}

#[test]
fn failed_binds_slow_down_and_the_right_password_still_works() {
    let node = Node::start();
    let alice = node.alice().clone();
    let (rc, first) = bind(&node.url, &alice.dn, "wrong-1");
    assert_eq!(rc, 49);
    let mut last = first;
    for i in 2..=10 {
        let (rc, took) = bind(&node.url, &alice.dn, &format!("wrong-{i}"));
        assert_eq!(rc, 49, "wrong password {i}");
        last = took;
    }
    assert!(
        last > first + Duration::from_millis(500),
        "the tenth failed bind ({last:?}) takes measurably longer than the first ({first:?})"
    );
    let (rc, _) = bind(&node.url, &alice.dn, &alice.password);
    assert_eq!(rc, 0, "the right password still works after the failures");
    let (rc, after) = bind(&node.url, &alice.dn, &alice.password);
    assert_eq!(rc, 0);
    assert!(
        after < last,
        "a success resets the delay ({after:?} after {last:?})"
    );
}

/// Read until EOF or a deadline; the bytes the server sent.
fn read_all(mut s: TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn per_address_cap_refuses_the_excess_connection() {
    let node = start_configured("max_connections_per_address = 3");
    let addr = node.url.trim_start_matches("ldap://").to_string();
    // Three connections held open, proven live with a whoami each.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = ldap3::LdapConn::new(&node.url).expect("connect within the cap");
        c.simple_bind("cn=admin,ou=system,dc=pigeonair", &node.admin_pw)
            .unwrap()
            .success()
            .unwrap();
        held.push(c);
    }
    // The fourth gets a Notice of Disconnection with result busy (51), then EOF.
    let mut s = TcpStream::connect(&addr).unwrap();
    let _ = s.write_all(&[]);
    let answer = read_all(s);
    assert!(!answer.is_empty(), "the refused connection is told why");
    assert!(
        answer.windows(3).any(|w| w == [0x0a, 0x01, 51]),
        "the notice carries resultCode busy (51): {answer:02x?}"
    );
    // The node keeps serving: a held connection still works, and a slot frees on close.
    let (rs, _) = held[0]
        .search(
            "dc=pigeonair",
            ldap3::Scope::Base,
            "(objectClass=*)",
            vec!["1.1"],
        )
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(rs.len(), 1);
    drop(held.pop());
    let usable = wait_until(Duration::from_secs(10), || {
        ldap3::LdapConn::new(&node.url)
            .ok()
            .and_then(|mut c| {
                c.simple_bind("cn=admin,ou=system,dc=pigeonair", &node.admin_pw)
                    .ok()
            })
            .is_some_and(|r| r.rc == 0)
    });
    assert!(usable, "a freed slot is usable again");
}

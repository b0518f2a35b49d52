use super::*;
use crate::directory::entry::Attribute;
use crate::directory::schema::Schema;
use crate::directory::{DirectoryCommand, DirectorySettings, WriteMeta};

pub(crate) fn add(dir: &Directory, dn: &str, attrs: &[(&str, &[&str])]) {
    let attrs = attrs
        .iter()
        .map(|(name, values)| Attribute::new(name, values.iter().copied()))
        .collect();
    let cmd = DirectoryCommand::Add {
        dn: dn.to_string(),
        attrs,
        meta: WriteMeta::now("cn=admin,ou=system,dc=pigeonair"),
    };
    dir.apply(&cmd).unwrap_or_else(|e| panic!("{dn}: {e}"));
}

/// A replica with example.org: alice (two more addresses, a forward), bob
/// (disabled), carol (nolocal, forwarding to dave@remote.test), the list team@
/// (alice, bob, a nested list, a foreign member), a loop, a catch-all for
/// catch.test, and two nodes in ou=nodes.
pub(crate) fn directory() -> (tempfile::TempDir, Directory) {
    let tmp = tempfile::tempdir().unwrap();
    let settings = DirectorySettings {
        suffix: "dc=pigeonair".into(),
        indexes: crate::config::default_indexes(),
        cache_bytes: 16 << 20,
    };
    let dir = Directory::open(tmp.path(), Schema::builtin(), &settings).unwrap();
    add(
        &dir,
        "dc=pigeonair",
        &[("objectClass", &["top", "domain"]), ("dc", &["pigeonair"])],
    );
    for ou in ["domains", "nodes"] {
        add(
            &dir,
            &format!("ou={ou},dc=pigeonair"),
            &[
                ("objectClass", &["top", "organizationalUnit"]),
                ("ou", &[ou]),
            ],
        );
    }
    for domain in ["example.org", "catch.test"] {
        let d = format!("dc={domain},ou=domains,dc=pigeonair");
        add(
            &dir,
            &d,
            &[
                ("objectClass", &["top", "domain", "pigeonairMailDomain"]),
                ("dc", &[domain]),
            ],
        );
        for ou in ["people", "aliases"] {
            add(
                &dir,
                &format!("ou={ou},{d}"),
                &[
                    ("objectClass", &["top", "organizationalUnit"]),
                    ("ou", &[ou]),
                ],
            );
        }
    }
    let people = "ou=people,dc=example.org,ou=domains,dc=pigeonair";
    let aliases = "ou=aliases,dc=example.org,ou=domains,dc=pigeonair";
    let account = [
        "top",
        "inetOrgPerson",
        "inetLocalMailRecipient",
        "pigeonairMailAccount",
    ];
    add(
        &dir,
        &format!("uid=alice,{people}"),
        &[
            ("objectClass", &account),
            ("uid", &["alice"]),
            ("cn", &["Alice"]),
            ("sn", &["L"]),
            ("mail", &["Alice@Example.org"]),
            ("mailLocalAddress", &["a.liddell@example.org"]),
            ("mailAlternateAddress", &["wonder@example.org"]),
            ("mailHost", &["node1"]),
            ("mailQuotaSize", &["1000"]),
            ("mailQuotaCount", &["10"]),
            ("userPassword", &["secret"]),
        ],
    );
    add(
        &dir,
        &format!("uid=bob,{people}"),
        &[
            ("objectClass", &account),
            ("uid", &["bob"]),
            ("cn", &["Bob"]),
            ("sn", &["D"]),
            ("mail", &["bob@example.org"]),
            ("mailHost", &["node2"]),
            ("accountStatus", &["disabled"]),
            ("userPassword", &["bobpw"]),
        ],
    );
    add(
        &dir,
        &format!("uid=carol,{people}"),
        &[
            ("objectClass", &account),
            ("uid", &["carol"]),
            ("cn", &["Carol"]),
            ("sn", &["C"]),
            ("mail", &["carol@example.org"]),
            ("mailForwardingAddress", &["dave@remote.test"]),
            ("deliveryMode", &["nolocal"]),
        ],
    );
    let alias = |cn: &str, mail: &str, members: &[&str]| {
        add(
            &dir,
            &format!("cn={cn},{aliases}"),
            &[
                ("objectClass", &["top", "pigeonairMailAlias"]),
                ("cn", &[cn]),
                ("mail", &[mail]),
                ("mailForwardingAddress", members),
            ],
        );
    };
    alias(
        "team",
        "team@example.org",
        &[
            "alice@example.org",
            "inner@example.org",
            "friend@remote.test",
        ],
    );
    alias(
        "inner",
        "inner@example.org",
        &["carol@example.org", "ALICE@example.org", "team@example.org"],
    );
    alias("loop1", "loop1@example.org", &["loop2@example.org"]);
    alias("loop2", "loop2@example.org", &["loop1@example.org"]);
    add(
        &dir,
        "cn=all,ou=aliases,dc=catch.test,ou=domains,dc=pigeonair",
        &[
            ("objectClass", &["top", "pigeonairMailAlias"]),
            ("cn", &["all"]),
            ("mail", &["@catch.test"]),
            ("mailForwardingAddress", &["alice@example.org"]),
        ],
    );
    for (id, name, service) in [
        (1, "node1", "smtp=10.0.0.1:25"),
        (2, "node2", "smtp=10.0.0.2:25"),
    ] {
        add(
            &dir,
            &format!("cn=node-{id},ou=nodes,dc=pigeonair"),
            &[
                ("objectClass", &["top", "pigeonairNode"]),
                ("cn", &[&format!("node-{id}")]),
                ("pigeonairNodeId", &[&id.to_string()]),
                ("pigeonairNodeName", &[name]),
                ("pigeonairAddress", &[&format!("cluster=10.0.0.{id}:7400")]),
                ("pigeonairService", &[service]),
            ],
        );
    }
    (tmp, dir)
}

fn accounts(r: Resolution) -> Vec<String> {
    match r {
        Resolution::Delivers(t) => t
            .into_iter()
            .map(|t| match t {
                Target::Account(a) => a.mailbox.to_text(),
                Target::External(e) => format!("external:{e}"),
            })
            .collect(),
        other => panic!("expected targets, got {other:?}"),
    }
}

#[test]
fn every_address_of_an_account_reaches_it_in_any_case_and_with_a_tag() {
    let (_tmp, dir) = directory();
    for address in [
        "alice@example.org",
        "ALICE@EXAMPLE.ORG",
        "<Alice@Example.org>",
        "a.liddell@example.org",
        "wonder@example.org",
        "alice+news@example.org",
    ] {
        let Resolution::Delivers(t) = resolve_recipient(&dir, address).unwrap() else {
            panic!("{address} reaches nothing");
        };
        let [Target::Account(a)] = t.as_slice() else {
            panic!("{address}: {t:?}")
        };
        assert_eq!(
            a.mailbox.to_text(),
            "alice@example.org",
            "the mailbox path is normalised"
        );
        assert_eq!(a.home.as_deref(), Some("node1"));
        assert_eq!(
            a.quota,
            Quota {
                bytes: Some(1000),
                count: Some(10)
            }
        );
        assert_eq!(a.status, AccountStatus::Active);
        assert!(a.store_locally && a.follow_forwards);
    }
    assert_eq!(
        resolve_recipient(&dir, "nobody@example.org").unwrap(),
        Resolution::Unknown
    );
    assert_eq!(
        resolve_recipient(&dir, "not an address").unwrap(),
        Resolution::Unknown
    );
    assert_eq!(
        resolve_recipient(&dir, "x@elsewhere.test").unwrap(),
        Resolution::Foreign
    );
    assert_eq!(
        resolve_recipient(&dir, "x@Example.org.").unwrap(),
        Resolution::Unknown
    );
}

#[test]
fn aliases_nest_without_loops_or_duplicates_and_keep_foreign_members() {
    let (_tmp, dir) = directory();
    assert_eq!(
        accounts(resolve_recipient(&dir, "team@example.org").unwrap()),
        [
            "alice@example.org",
            "carol@example.org",
            "external:friend@remote.test"
        ]
    );
    // A loop of two lists reaches nothing and ends.
    assert_eq!(
        resolve_recipient(&dir, "loop1@example.org").unwrap(),
        Resolution::Unknown
    );
    // The catch-all takes any address of its domain.
    assert_eq!(
        accounts(resolve_recipient(&dir, "whoever@catch.test").unwrap()),
        ["alice@example.org"]
    );
}

#[test]
fn status_delivery_mode_and_forwards_are_reported() {
    let (_tmp, dir) = directory();
    let Resolution::Delivers(t) = resolve_recipient(&dir, "bob@example.org").unwrap() else {
        panic!()
    };
    let [Target::Account(bob)] = t.as_slice() else {
        panic!()
    };
    assert_eq!(bob.status, AccountStatus::Disabled);
    let Resolution::Delivers(t) = resolve_recipient(&dir, "carol@example.org").unwrap() else {
        panic!()
    };
    let [Target::Account(carol)] = t.as_slice() else {
        panic!()
    };
    assert!(!carol.store_locally);
    assert_eq!(carol.forwards, ["dave@remote.test"]);
    assert_eq!(carol.home, None);
}

#[test]
fn home_nodes_and_service_endpoints_come_from_the_directory() {
    let (_tmp, dir) = directory();
    assert_eq!(
        home_of(&dir, "wonder@example.org").unwrap().as_deref(),
        Some("node1")
    );
    assert_eq!(home_of(&dir, "nobody@example.org").unwrap(), None);
    assert_eq!(
        service_endpoints(&dir, "node2", "cluster").unwrap(),
        ["10.0.0.2:7400"]
    );
    assert_eq!(
        service_endpoints(&dir, "node-1", "smtp").unwrap(),
        ["10.0.0.1:25"]
    );
    assert!(service_endpoints(&dir, "node2", "imap").unwrap().is_empty());
    assert!(service_endpoints(&dir, "node9", "cluster")
        .unwrap()
        .is_empty());
}

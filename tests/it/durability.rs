//! Acknowledged writes survive SIGKILL: a write the client saw succeed is on disk.

use crate::harness::{admin_conn, bound_conn, Node};
use ldap3::{Mod, Scope, SearchEntry};
use std::collections::HashSet;

const N: usize = 200;

#[test]
fn acknowledged_writes_survive_kill9() {
    let mut node = Node::start();
    let alice = node.alice().clone();
    let base = "ou=durable,dc=example.org,ou=domains,dc=pigeonair";
    {
        let mut conn = admin_conn(&node);
        let res = conn
            .add(
                base,
                vec![
                    ("objectClass", HashSet::from(["organizationalUnit"])),
                    ("ou", HashSet::from(["durable"])),
                ],
            )
            .unwrap();
        assert_eq!(res.rc, 0, "{res:?}");
        for i in 0..N {
            let uid = format!("d{i:03}");
            let mail = format!("{uid}@example.org");
            let dn = format!("uid={uid},{base}");
            let res = conn
                .add(
                    &dn,
                    vec![
                        ("objectClass", HashSet::from(["inetOrgPerson"])),
                        ("uid", HashSet::from([uid.as_str()])),
                        ("cn", HashSet::from([uid.as_str()])),
                        ("sn", HashSet::from(["Durable"])),
                        ("mail", HashSet::from([mail.as_str()])),
                    ],
                )
                .unwrap();
            assert_eq!(res.rc, 0, "add {dn}: {res:?}");
        }
        // a modify, a delete and a rename, each acknowledged
        let res = conn
            .modify(
                &alice.dn,
                vec![
                    Mod::Replace("mailQuotaSize", HashSet::from(["777"])),
                    Mod::Add("mailAlternateAddress", HashSet::from(["al@example.org"])),
                ],
            )
            .unwrap();
        assert_eq!(res.rc, 0, "{res:?}");
        let res = conn.delete(&format!("uid=d000,{base}")).unwrap();
        assert_eq!(res.rc, 0, "{res:?}");
        let res = conn
            .modifydn(&format!("uid=d001,{base}"), "uid=d001x", true, None)
            .unwrap();
        assert_eq!(res.rc, 0, "{res:?}");
        // no unbind: the connection dies with the node
    }

    node.kill9();
    node.restart();

    let mut conn = admin_conn(&node);
    let (entries, res) = conn
        .search(
            base,
            Scope::OneLevel,
            "(objectClass=inetOrgPerson)",
            vec!["uid"],
        )
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(res.rc, 0);
    let uids: HashSet<String> = entries
        .into_iter()
        .map(SearchEntry::construct)
        .map(|e| e.attrs["uid"][0].clone())
        .collect();
    let mut want: HashSet<String> = (2..N).map(|i| format!("d{i:03}")).collect();
    want.insert("d001x".into());
    let missing: Vec<_> = want.difference(&uids).collect();
    let extra: Vec<_> = uids.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "after kill -9 and restart: missing {missing:?}, unexpected {extra:?}"
    );

    // indexes came back with the entries
    let (found, _) = conn
        .search(
            "dc=pigeonair",
            Scope::Subtree,
            "(mail=d150@example.org)",
            vec!["1.1"],
        )
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(found.len(), 1);

    let (found, _) = conn
        .search(
            &alice.dn,
            Scope::Base,
            "(objectClass=*)",
            vec!["mailQuotaSize", "mailAlternateAddress"],
        )
        .unwrap()
        .success()
        .unwrap();
    let a = SearchEntry::construct(found.into_iter().next().unwrap());
    assert_eq!(a.attrs.get("mailQuotaSize"), Some(&vec!["777".to_string()]));
    assert_eq!(
        a.attrs.get("mailAlternateAddress"),
        Some(&vec!["al@example.org".to_string()])
    );
    let (found, _) = conn
        .search(
            "dc=pigeonair",
            Scope::Subtree,
            "(mailAlternateAddress=al@example.org)",
            vec!["1.1"],
        )
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(found.len(), 1, "the index lost the acknowledged modify");

    // the demo accounts still bind with what quickstart printed the first time
    drop(bound_conn(&node, &alice.dn, &alice.password));
}

#[test]
fn restart_keeps_data_and_accepts_writes() {
    let mut node = Node::start();
    let first_url = node.url.clone();
    let dn = "ou=before-restart,dc=example.org,ou=domains,dc=pigeonair";
    let mut conn = admin_conn(&node);
    let res = conn
        .add(
            dn,
            vec![
                ("objectClass", HashSet::from(["organizationalUnit"])),
                ("ou", HashSet::from(["before-restart"])),
            ],
        )
        .unwrap();
    assert_eq!(res.rc, 0, "{res:?}");
    drop(conn);

    node.restart();
    assert!(node.is_running());
    let mut conn = admin_conn(&node);
    let (found, _) = conn
        .search(dn, Scope::Base, "(objectClass=*)", vec!["ou"])
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(
        found.len(),
        1,
        "entry lost over a clean restart (was {first_url}, now {})",
        node.url
    );
    // quickstart on an existing data dir does not create the demo data twice
    let (found, _) = conn
        .search(
            "dc=pigeonair",
            Scope::Subtree,
            "(mail=alice@example.org)",
            vec!["1.1"],
        )
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(found.len(), 1);
    let res = conn.delete(dn).unwrap();
    assert_eq!(res.rc, 0, "{res:?}");
}

//! The node as a Rust program sees it through the `ldap3` crate.

use crate::harness::{admin_conn, bound_conn, ldap_conn, Node};
use ldap3::exop::{PasswordModify, PasswordModifyResp, WhoAmI, WhoAmIResp};
use ldap3::{Mod, Scope, SearchEntry};
use std::collections::HashSet;

const PEOPLE: &str = "ou=people,dc=example.org,ou=domains,dc=pigeonair";

fn set<'a>(values: &[&'a str]) -> HashSet<&'a str> {
    values.iter().copied().collect()
}

/// Search and return the entries; panics unless the result is success.
#[track_caller]
fn search(
    conn: &mut ldap3::LdapConn,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[&str],
) -> Vec<SearchEntry> {
    let (entries, _) = conn
        .search(base, scope, filter, attrs.to_vec())
        .unwrap_or_else(|e| panic!("search {base} {filter}: {e}"))
        .success()
        .unwrap_or_else(|e| panic!("search {base} {filter}: {e}"));
    entries.into_iter().map(SearchEntry::construct).collect()
}

#[test]
fn admin_binds_and_finds_alice_by_mail() {
    let node = Node::start();
    let mut conn = admin_conn(&node);
    let (exop, res) = conn.extended(WhoAmI).unwrap().success().unwrap();
    assert_eq!(res.rc, 0);
    let who: WhoAmIResp = exop.parse();
    assert_eq!(who.authzid, format!("dn:{}", node.admin_dn));

    let found = search(
        &mut conn,
        "dc=pigeonair",
        Scope::Subtree,
        "(mail=alice@example.org)",
        &["uid", "mail", "mailHost", "objectClass", "userPassword"],
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    let alice = &found[0];
    assert_eq!(alice.dn, node.alice().dn);
    assert_eq!(alice.attrs["uid"], vec!["alice"]);
    assert_eq!(alice.attrs["mail"], vec!["alice@example.org"]);
    assert_eq!(
        alice.attrs.get("mailHost").map(Vec::len),
        Some(1),
        "mailHost: {alice:#?}"
    );
    let classes: HashSet<String> = alice.attrs["objectClass"]
        .iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    for c in [
        "inetorgperson",
        "inetlocalmailrecipient",
        "pigeonairmailaccount",
    ] {
        assert!(classes.contains(c), "{c} missing: {classes:?}");
    }
    let pw = alice
        .attrs
        .get("userPassword")
        .unwrap_or_else(|| panic!("the admin should read userPassword: {alice:#?}"));
    assert!(pw[0].starts_with("{ARGON2}$argon2id$"), "{pw:?}");

    // Bob sees alice's entry but not her password.
    let mut bob = bound_conn(&node, &node.bob().dn, &node.bob().password);
    let found = search(
        &mut bob,
        "dc=pigeonair",
        Scope::Subtree,
        "(mail=alice@example.org)",
        &["*"],
    );
    assert_eq!(found.len(), 1);
    assert!(!found[0].attrs.contains_key("userPassword"), "{found:#?}");
    assert!(!found[0].bin_attrs.contains_key("userPassword"));
    conn.unbind().unwrap();
}

#[test]
fn add_modify_rename_delete_round_trip() {
    let node = Node::start();
    let mut conn = admin_conn(&node);
    let dn = format!("uid=rusty,{PEOPLE}");
    let res = conn
        .add(
            &dn,
            vec![
                (
                    "objectClass",
                    set(&[
                        "inetOrgPerson",
                        "inetLocalMailRecipient",
                        "pigeonairMailAccount",
                    ]),
                ),
                ("uid", set(&["rusty"])),
                ("cn", set(&["Rusty Crab"])),
                ("sn", set(&["Crab"])),
                ("mail", set(&["rusty@example.org"])),
                ("mailHost", set(&["node1.example.org"])),
                ("mailQuotaSize", set(&["100"])),
                ("userPassword", set(&["rusty-pw"])),
            ],
        )
        .unwrap();
    assert_eq!(res.rc, 0, "add: {res:?}");

    let res = conn
        .modify(
            &dn,
            vec![
                Mod::Add("mailAlternateAddress", set(&["crab@example.org"])),
                Mod::Replace("cn", set(&["Rusty Lobster"])),
                Mod::Increment("mailQuotaSize", "23"),
                Mod::Add("deliveryMode", set(&["noforward"])),
                Mod::Replace("accountStatus", set(&["active"])),
            ],
        )
        .unwrap();
    assert_eq!(res.rc, 0, "modify: {res:?}");
    let found = search(
        &mut conn,
        "dc=pigeonair",
        Scope::Subtree,
        "(mailAlternateAddress=crab@example.org)",
        &["cn", "mailQuotaSize", "deliveryMode", "accountStatus"],
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].dn, dn);
    assert_eq!(found[0].attrs["cn"], vec!["Rusty Lobster"]);
    assert_eq!(found[0].attrs["mailQuotaSize"], vec!["123"]);
    assert_eq!(found[0].attrs["deliveryMode"], vec!["noforward"]);
    assert_eq!(found[0].attrs["accountStatus"], vec!["active"]);

    // An indexed attribute replaced: the index follows it (and a modify that leaves it
    // alone, as the one above, kept it).
    let by_mail = |conn: &mut ldap3::LdapConn, mail: &str| -> Vec<String> {
        let filter = format!("(mail={mail})");
        search(conn, "dc=pigeonair", Scope::Subtree, &filter, &["1.1"])
            .into_iter()
            .map(|e| e.dn)
            .collect()
    };
    assert_eq!(by_mail(&mut conn, "rusty@example.org"), vec![dn.clone()]);
    for (old, new) in [
        ("rusty@example.org", "rusty.crab@example.org"),
        ("rusty.crab@example.org", "rusty@example.org"),
    ] {
        let res = conn
            .modify(&dn, vec![Mod::Replace("mail", set(&[new]))])
            .unwrap();
        assert_eq!(res.rc, 0, "modify mail to {new}: {res:?}");
        assert_eq!(by_mail(&mut conn, new), vec![dn.clone()]);
        assert!(by_mail(&mut conn, old).is_empty(), "{old} still finds it");
    }

    // compare through the crate
    let cmp = conn.compare(&dn, "mail", "rusty@example.org").unwrap();
    assert!(cmp.equal().unwrap());
    let cmp = conn.compare(&dn, "mail", "crabby@example.org").unwrap();
    assert!(!cmp.equal().unwrap());

    // the new account binds, and changes its own password with Password Modify
    let mut rusty = bound_conn(&node, &dn, "rusty-pw");
    let (_, res) = rusty
        .extended(PasswordModify {
            user_id: None,
            old_pass: Some("rusty-pw"),
            new_pass: Some("rusty-pw-2"),
        })
        .unwrap()
        .success()
        .unwrap();
    assert_eq!(res.rc, 0);
    drop(bound_conn(&node, &dn, "rusty-pw-2"));

    // the admin has one generated
    let (exop, _) = conn
        .extended(PasswordModify {
            user_id: Some(&dn),
            old_pass: None,
            new_pass: None,
        })
        .unwrap()
        .success()
        .unwrap();
    let generated: PasswordModifyResp = exop.parse();
    assert!(!generated.gen_pass.is_empty());
    drop(bound_conn(&node, &dn, &generated.gen_pass));

    // rename
    let res = conn.modifydn(&dn, "uid=rusty2", true, None).unwrap();
    assert_eq!(res.rc, 0, "modifydn: {res:?}");
    let new_dn = format!("uid=rusty2,{PEOPLE}");
    let found = search(&mut conn, &new_dn, Scope::Base, "(objectClass=*)", &["uid"]);
    assert_eq!(found[0].attrs["uid"], vec!["rusty2"]);

    // delete attribute values, then the entry
    let res = conn
        .modify(
            &new_dn,
            vec![
                Mod::Delete("mailAlternateAddress", HashSet::new()),
                Mod::Delete("deliveryMode", set(&["noforward"])),
            ],
        )
        .unwrap();
    assert_eq!(res.rc, 0, "modify delete: {res:?}");
    let found = search(&mut conn, &new_dn, Scope::Base, "(objectClass=*)", &["*"]);
    assert!(!found[0].attrs.contains_key("mailAlternateAddress"));
    assert!(!found[0].attrs.contains_key("deliveryMode"));

    let res = conn.delete(&new_dn).unwrap();
    assert_eq!(res.rc, 0, "delete: {res:?}");
    let res = conn
        .search(&new_dn, Scope::Base, "(objectClass=*)", vec!["1.1"])
        .unwrap();
    assert_eq!(res.1.rc, 32, "search of a deleted entry: {:?}", res.1);
    let found = search(
        &mut conn,
        "dc=pigeonair",
        Scope::Subtree,
        "(|(mail=rusty@example.org)(uid=rusty*))",
        &["1.1"],
    );
    assert!(found.is_empty(), "{found:#?}");
    // a deleted account no longer binds
    let mut gone = ldap_conn(&node);
    let res = gone.simple_bind(&new_dn, &generated.gen_pass).unwrap();
    assert_eq!(res.rc, 49, "{res:?}");
}

#[test]
fn failed_binds_are_invalid_credentials() {
    let node = Node::start();
    let mut conn = ldap_conn(&node);
    let res = conn.simple_bind(&node.admin_dn, "wrong-password").unwrap();
    assert_eq!(res.rc, 49, "{res:?}");
    let res = conn
        .simple_bind(&node.alice().dn, &node.bob().password)
        .unwrap();
    assert_eq!(res.rc, 49, "{res:?}");
    // a DN that does not exist gives the same answer: no hint that it is missing
    let res = conn
        .simple_bind(&format!("uid=nobody,{PEOPLE}"), "whatever")
        .unwrap();
    assert_eq!(res.rc, 49, "{res:?}");
    // an empty password with a DN is an unauthenticated bind (RFC 4513 5.1.2): refused
    let res = conn.simple_bind(&node.alice().dn, "").unwrap();
    assert_ne!(res.rc, 0, "unauthenticated bind accepted: {res:?}");
    // the connection is still usable afterwards
    let res = conn
        .simple_bind(&node.alice().dn, &node.alice().password)
        .unwrap();
    assert_eq!(res.rc, 0, "{res:?}");
    let (exop, _) = conn.extended(WhoAmI).unwrap().success().unwrap();
    let who: WhoAmIResp = exop.parse();
    assert_eq!(who.authzid, format!("dn:{}", node.alice().dn));

    // an account may not write someone else's entry: insufficientAccessRights (50)
    let res = conn
        .modify(&node.bob().dn, vec![Mod::Replace("cn", set(&["Not Bob"]))])
        .unwrap();
    assert_eq!(res.rc, 50, "{res:?}");
}

/// Split an RFC 4512 description into tokens: `(`, `)`, quoted strings (quotes kept),
/// and bare words.
fn tokens(def: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = def.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {}
            '(' | ')' => out.push(c.to_string()),
            '\'' => {
                let mut s = String::from("'");
                for c in chars.by_ref() {
                    s.push(c);
                    if c == '\'' {
                        break;
                    }
                }
                out.push(s);
            }
            _ => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n == ' ' || n == '(' || n == ')' {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(s);
            }
        }
    }
    out
}

/// Check that `def` is a well-formed description: parenthesised, numeric OID first,
/// balanced; return its NAMEs.
#[track_caller]
fn parse_definition(def: &str) -> (String, Vec<String>) {
    let t = tokens(def);
    assert!(
        t.first().map(String::as_str) == Some("(") && t.last().map(String::as_str) == Some(")"),
        "not parenthesised: {def:?}"
    );
    let oid = &t[1];
    assert!(
        oid.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "first element is not a numeric OID: {def:?}"
    );
    let mut depth = 0i32;
    for tok in &t {
        match tok.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            _ => {}
        }
        assert!(depth >= 0, "unbalanced: {def:?}");
    }
    assert_eq!(depth, 0, "unbalanced: {def:?}");
    let mut names = Vec::new();
    if let Some(i) = t.iter().position(|x| x == "NAME") {
        if t[i + 1] == "(" {
            for n in &t[i + 2..] {
                if n == ")" {
                    break;
                }
                names.push(n.trim_matches('\'').to_string());
            }
        } else {
            names.push(t[i + 1].trim_matches('\'').to_string());
        }
    }
    (oid.clone(), names)
}

#[test]
fn schema_is_readable_from_the_subschema_subentry() {
    let node = Node::start();
    let mut conn = ldap_conn(&node);
    // anonymous may read the subschema subentry; find it through the Root DSE first.
    let dse = search(
        &mut conn,
        "",
        Scope::Base,
        "(objectClass=*)",
        &["subschemaSubentry"],
    );
    assert_eq!(dse.len(), 1);
    let subschema = dse[0].attrs["subschemaSubentry"][0].clone();
    assert!(
        subschema.eq_ignore_ascii_case("cn=Subschema"),
        "{subschema}"
    );

    let found = search(
        &mut conn,
        &subschema,
        Scope::Base,
        "(objectClass=subschema)",
        &["attributeTypes", "objectClasses"],
    );
    assert_eq!(found.len(), 1);
    let at = &found[0].attrs["attributeTypes"];
    let oc = &found[0].attrs["objectClasses"];
    assert!(at.len() > 50, "only {} attributeTypes", at.len());
    assert!(oc.len() > 10, "only {} objectClasses", oc.len());

    let mut attr_oids = std::collections::HashMap::new();
    for def in at {
        let (oid, names) = parse_definition(def);
        for n in names {
            attr_oids.insert(n.to_ascii_lowercase(), (oid.clone(), def.clone()));
        }
    }
    let (mail_oid, mail_def) = &attr_oids["mail"];
    assert_eq!(mail_oid, "0.9.2342.19200300.100.1.3");
    assert!(mail_def.contains("'mail'"), "{mail_def}");
    assert!(mail_def.contains("caseIgnoreIA5Match"), "{mail_def}");
    let (host_oid, host_def) = &attr_oids["mailhost"];
    assert_eq!(host_oid, "2.16.840.1.113730.3.1.18");
    assert!(host_def.contains("NAME 'mailHost'"), "{host_def}");
    assert!(host_def.contains("SINGLE-VALUE"), "{host_def}");
    assert_eq!(attr_oids["mailquotasize"].0, "1.3.6.1.4.1.7914.1.2.1.15");
    assert_eq!(attr_oids["uid"].0, "0.9.2342.19200300.100.1.1");
    assert_eq!(attr_oids["userid"].0, "0.9.2342.19200300.100.1.1");
    assert_eq!(attr_oids["entryuuid"].0, "1.3.6.1.1.16.4");

    let mut class_defs = std::collections::HashMap::new();
    for def in oc {
        let (oid, names) = parse_definition(def);
        for n in names {
            class_defs.insert(n.to_ascii_lowercase(), (oid.clone(), def.clone()));
        }
    }
    let (iop_oid, iop_def) = &class_defs["inetorgperson"];
    assert_eq!(iop_oid, "2.16.840.1.113730.3.2.2");
    assert!(iop_def.contains("NAME 'inetOrgPerson'"), "{iop_def}");
    assert!(iop_def.contains("SUP organizationalPerson"), "{iop_def}");
    assert!(iop_def.contains("STRUCTURAL"), "{iop_def}");
    let (_, rec_def) = &class_defs["inetlocalmailrecipient"];
    assert!(rec_def.contains("AUXILIARY"), "{rec_def}");
    assert!(class_defs.contains_key("pigeonairmailaccount"));
    assert!(class_defs.contains_key("domain"));
}

//! Access control as an ISP's customers meet it: anonymous clients see only the Root DSE
//! and the schema; an account reads its domain but not others' passwords and cannot
//! change other entries; a domain administrator manages its own domain only.

use crate::harness::{parse_ldif, run_with_input, Node, ToolOutput};

const EXAMPLE: &str = "dc=example.org,ou=domains,dc=pigeonair";

fn as_user(
    node: &Node,
    who: Option<(&str, &str)>,
    tool: &str,
    args: &[&str],
    input: Option<&str>,
) -> ToolOutput {
    let mut full: Vec<&str> = vec!["-x", "-H", &node.url];
    if let Some((dn, pw)) = who {
        full.extend(["-D", dn, "-w", pw]);
    }
    full.extend_from_slice(args);
    run_with_input(tool, &full, input)
}

#[test]
fn anonymous_sees_only_the_root_dse_and_the_schema() {
    let node = Node::start();
    let root = as_user(
        &node,
        None,
        "ldapsearch",
        &["-LLL", "-b", "", "-s", "base", "namingContexts"],
        None,
    );
    root.assert_ok();
    assert!(
        root.stdout.contains("namingContexts: dc=pigeonair"),
        "{root}"
    );
    let schema = as_user(
        &node,
        None,
        "ldapsearch",
        &["-LLL", "-b", "cn=Subschema", "-s", "base", "objectClasses"],
        None,
    );
    schema.assert_ok();
    assert!(schema.stdout.contains("inetOrgPerson"), "{schema}");
    for base in [
        "dc=pigeonair",
        EXAMPLE,
        &node.alice().dn.clone(),
        "ou=system,dc=pigeonair",
    ] {
        let out = as_user(
            &node,
            None,
            "ldapsearch",
            &["-LLL", "-b", base, "(objectClass=*)"],
            None,
        );
        assert_eq!(
            out.code(),
            32,
            "anonymous gets noSuchObject for {base}, as if it did not exist: {out}"
        );
        assert!(parse_ldif(&out.stdout).is_empty());
    }
    // Binding still works: anonymous has `auth` on passwords.
    let alice = node.alice().clone();
    as_user(
        &node,
        Some((&alice.dn, &alice.password)),
        "ldapwhoami",
        &[],
        None,
    )
    .assert_ok();
}

#[test]
fn accounts_read_their_domain_but_not_passwords_and_change_only_themselves() {
    let node = Node::start();
    let (alice, bob) = (node.alice().clone(), node.bob().clone());
    let me = Some((alice.dn.as_str(), alice.password.as_str()));
    let out = as_user(
        &node,
        me,
        "ldapsearch",
        &["-LLL", "-b", &bob.dn, "-s", "base", "*"],
        None,
    );
    out.assert_ok();
    let entries = parse_ldif(&out.stdout);
    assert_eq!(
        entries.len(),
        1,
        "alice reads bob's entry (same domain): {out}"
    );
    assert_eq!(entries[0].one("mail"), "bob@example.org");
    assert!(
        !entries[0].has("userPassword"),
        "but never his userPassword: {out}"
    );
    let out = as_user(
        &node,
        me,
        "ldapsearch",
        &["-LLL", "-b", &alice.dn, "-s", "base", "userPassword"],
        None,
    );
    assert!(
        !out.stdout.contains("userPassword"),
        "not even her own: {out}"
    );
    let out = as_user(
        &node,
        me,
        "ldapcompare",
        &[&bob.dn, "userPassword:guess"],
        None,
    );
    assert_eq!(
        out.code(),
        50,
        "compare on bob's password is refused: {out}"
    );

    // alice cannot change bob's entry, nor hers beyond the password.
    let change_bob = format!(
        "dn: {}\nchangetype: modify\nreplace: cn\ncn: Mallory\n-\n",
        bob.dn
    );
    let out = as_user(&node, me, "ldapmodify", &[], Some(&change_bob));
    assert_eq!(out.code(), 50, "alice may not modify bob: {out}");
    let change_self = format!(
        "dn: {}\nchangetype: modify\nreplace: mailHost\nmailHost: elsewhere\n-\n",
        alice.dn
    );
    let out = as_user(&node, me, "ldapmodify", &[], Some(&change_self));
    assert_eq!(out.code(), 50, "alice may not move her own mailbox: {out}");
    let out = as_user(&node, me, "ldappasswd", &["-s", "stolen", &bob.dn], None);
    assert_ne!(out.code(), 0, "alice may not set bob's password: {out}");

    // Her own password she changes with ldappasswd.
    as_user(
        &node,
        me,
        "ldappasswd",
        &["-a", &alice.password, "-s", "alice-new-secret"],
        None,
    )
    .assert_ok();
    as_user(
        &node,
        Some((&alice.dn, "alice-new-secret")),
        "ldapwhoami",
        &[],
        None,
    )
    .assert_ok();
}

#[test]
fn a_domain_administrator_manages_its_domain_only() {
    let node = Node::start();
    let admin = Some((node.admin_dn.as_str(), node.admin_pw.as_str()));
    let bob = node.bob().clone();
    // The cluster administrator makes bob the administrator of example.org and creates
    // a second domain.
    let setup = format!(
        "dn: cn=admins,{EXAMPLE}\nchangetype: add\nobjectClass: groupOfNames\ncn: admins\nmember: {bob}\n\n\
         dn: {EXAMPLE}\nchangetype: modify\nadd: pigeonairAdminGroup\npigeonairAdminGroup: cn=admins,{EXAMPLE}\n-\n\n\
         dn: dc=other.example,ou=domains,dc=pigeonair\nchangetype: add\nobjectClass: domain\nobjectClass: pigeonairMailDomain\ndc: other.example\n\n\
         dn: ou=people,dc=other.example,ou=domains,dc=pigeonair\nchangetype: add\nobjectClass: organizationalUnit\nou: people\n",
        bob = bob.dn
    );
    as_user(&node, admin, "ldapmodify", &[], Some(&setup)).assert_ok();

    let as_bob = Some((bob.dn.as_str(), bob.password.as_str()));
    let in_domain = format!(
        "dn: uid=dora,ou=people,{EXAMPLE}\nobjectClass: inetOrgPerson\nuid: dora\ncn: Dora\nsn: D\nmail: dora@example.org\nuserPassword: dora-pw\n"
    );
    as_user(&node, as_bob, "ldapadd", &[], Some(&in_domain)).assert_ok();
    as_user(
        &node,
        Some((&format!("uid=dora,ou=people,{EXAMPLE}"), "dora-pw")),
        "ldapwhoami",
        &[],
        None,
    )
    .assert_ok();

    let elsewhere = "dn: uid=eve,ou=people,dc=other.example,ou=domains,dc=pigeonair\nobjectClass: inetOrgPerson\nuid: eve\ncn: Eve\nsn: E\n";
    let out = as_user(&node, as_bob, "ldapadd", &[], Some(elsewhere));
    assert!(
        out.code() == 32 || out.code() == 50,
        "bob may not add in another domain (hidden or refused): {out}"
    );
    let out = as_user(
        &node,
        admin,
        "ldapsearch",
        &["-LLL", "-b", "dc=pigeonair", "(uid=eve)", "dn"],
        None,
    );
    assert!(
        parse_ldif(&out.stdout).is_empty(),
        "nothing was added: {out}"
    );
}

#[test]
fn a_paged_search_shows_an_account_what_a_plain_one_does() {
    let node = Node::start();
    let (alice, bob) = (node.alice().clone(), node.bob().clone());
    let me = Some((alice.dn.as_str(), alice.password.as_str()));
    let search = |extra: &[&str]| {
        let mut args = vec!["-o", "ldif-wrap=no", "-b", "dc=pigeonair"];
        args.extend_from_slice(extra);
        args.extend(["(objectClass=*)", "*"]);
        let out = as_user(&node, me, "ldapsearch", &args, None);
        out.assert_ok();
        out
    };
    let plain = search(&["-LLL"]);
    let paged = search(&["-E", "pr=1/noprompt"]);
    let dns = |out: &ToolOutput| -> Vec<String> {
        let mut dns: Vec<String> = parse_ldif(&out.stdout)
            .iter()
            .map(|e| e.dn.to_lowercase())
            .collect();
        dns.sort();
        dns
    };
    let (plain_dns, paged_dns) = (dns(&plain), dns(&paged));
    assert!(
        plain_dns.contains(&bob.dn.to_lowercase()),
        "alice sees bob: {plain}"
    );
    // Her domain and the containers above it; nothing of ou=system or other domains.
    let domain = EXAMPLE.to_lowercase();
    assert!(
        plain_dns
            .iter()
            .all(|dn| dn.ends_with(&domain) || domain.ends_with(dn.as_str())),
        "alice sees only her domain: {plain_dns:?}"
    );
    assert_eq!(paged_dns, plain_dns, "page by page, the same entries");
    assert!(
        !paged.stdout.contains("userPassword"),
        "and no password on any page: {paged}"
    );
    let pages = paged
        .stdout
        .lines()
        .filter(|l| *l == "result: 0 Success")
        .count();
    assert!(
        pages >= paged_dns.len(),
        "one entry per page: {pages} pages for {} entries",
        paged_dns.len()
    );
}

//! The node as OpenLDAP's ldap-utils see it: what an operator types and checks.

use crate::harness::{parse_ldif, run_with_input, LdifEntry, Node, ToolOutput};
use std::collections::HashSet;

const DOMAINS: &str = "ou=domains,dc=pigeonair";
const EXAMPLE: &str = "dc=example.org,ou=domains,dc=pigeonair";
const PEOPLE: &str = "ou=people,dc=example.org,ou=domains,dc=pigeonair";

/// Who a tool binds as.
#[derive(Clone, Copy)]
enum As<'a> {
    Anonymous,
    User(&'a str, &'a str),
}

fn admin(node: &Node) -> As<'_> {
    As::User(&node.admin_dn, &node.admin_pw)
}

fn alice(node: &Node) -> As<'_> {
    As::User(&node.alice().dn, &node.alice().password)
}

/// Run an ldap-utils tool against the node: `tool -x -H URL [-D DN -w PW] args...`.
fn tool(node: &Node, who: As, name: &str, args: &[&str]) -> ToolOutput {
    tool_input(node, who, name, args, None)
}

fn tool_input(node: &Node, who: As, name: &str, args: &[&str], input: Option<&str>) -> ToolOutput {
    let mut full: Vec<&str> = vec!["-x", "-H", &node.url];
    if let As::User(dn, pw) = who {
        full.extend(["-D", dn, "-w", pw]);
    }
    full.extend_from_slice(args);
    run_with_input(name, &full, input)
}

/// `ldapsearch -LLL -o ldif-wrap=no args...`; returns the output and the parsed entries.
fn search(node: &Node, who: As, args: &[&str]) -> (ToolOutput, Vec<LdifEntry>) {
    let mut full = vec!["-LLL", "-o", "ldif-wrap=no"];
    full.extend_from_slice(args);
    let out = tool(node, who, "ldapsearch", &full);
    let entries = parse_ldif(&out.stdout);
    (out, entries)
}

/// A search that must succeed.
#[track_caller]
fn search_ok(node: &Node, who: As, args: &[&str]) -> Vec<LdifEntry> {
    let (out, entries) = search(node, who, args);
    out.assert_ok();
    entries
}

/// The one entry at `dn` (base scope) as the admin sees it, with the given attributes.
#[track_caller]
fn read_entry(node: &Node, dn: &str, attrs: &[&str]) -> LdifEntry {
    let mut args = vec!["-b", dn, "-s", "base", "(objectClass=*)"];
    args.extend_from_slice(attrs);
    let entries = search_ok(node, admin(node), &args);
    assert_eq!(entries.len(), 1, "base search of {dn}: {entries:#?}");
    entries.into_iter().next().unwrap()
}

/// Whether `dn` exists, as the admin sees it (base search: 0 found, 32 not found).
#[track_caller]
fn exists(node: &Node, dn: &str) -> bool {
    let (out, entries) = search(node, admin(node), &["-b", dn, "-s", "base", "1.1"]);
    match out.code() {
        0 => {
            assert_eq!(entries.len(), 1, "{out}");
            true
        }
        32 => false,
        _ => panic!("base search of {dn} failed unexpectedly:\n{out}"),
    }
}

#[track_caller]
fn ldapadd(node: &Node, ldif: &str) -> ToolOutput {
    let out = tool_input(node, admin(node), "ldapadd", &[], Some(ldif));
    out.assert_ok();
    out
}

#[track_caller]
fn ldapmodify(node: &Node, ldif: &str) -> ToolOutput {
    let out = tool_input(node, admin(node), "ldapmodify", &[], Some(ldif));
    out.assert_ok();
    out
}

/// LDIF for a mail account `uid` under `parent`, with `extra` lines appended.
fn account_ldif(parent: &str, uid: &str, domain: &str, extra: &str) -> String {
    format!(
        "dn: uid={uid},{parent}\n\
         objectClass: top\n\
         objectClass: person\n\
         objectClass: organizationalPerson\n\
         objectClass: inetOrgPerson\n\
         objectClass: inetLocalMailRecipient\n\
         objectClass: pigeonairMailAccount\n\
         uid: {uid}\n\
         cn: {uid} Test\n\
         sn: Test\n\
         mail: {uid}@{domain}\n\
         mailHost: node1.{domain}\n\
         {extra}\n"
    )
}

fn ou_ldif(ou: &str, parent: &str) -> String {
    format!("dn: ou={ou},{parent}\nobjectClass: organizationalUnit\nou: {ou}\n\n")
}

fn sorted(mut v: Vec<&str>) -> Vec<&str> {
    v.sort();
    v
}

fn dns(entries: &[LdifEntry]) -> Vec<String> {
    let mut d: Vec<String> = entries.iter().map(|e| e.dn.to_ascii_lowercase()).collect();
    d.sort();
    d
}

#[test]
fn ldapadd_new_domain_then_find_account_by_mail() {
    let node = Node::start();
    let domain = format!("dc=test.example,{DOMAINS}");
    let people = format!("ou=people,{domain}");
    let mut ldif = format!(
        "dn: {domain}\n\
         objectClass: domain\n\
         objectClass: pigeonairMailDomain\n\
         dc: test.example\n\
         pigeonairDomainStatus: active\n\n"
    );
    ldif += &ou_ldif("people", &domain);
    // carol names only her structural class and auxiliaries: the superclasses are implied.
    ldif += &format!(
        "dn: uid=carol,{people}\n\
         objectClass: inetOrgPerson\n\
         objectClass: inetLocalMailRecipient\n\
         objectClass: pigeonairMailAccount\n\
         uid: carol\n\
         cn: Carol Test\n\
         sn: Test\n\
         mail: carol@test.example\n\
         mailHost: node1.test.example\n\
         mailQuotaSize: 1048576\n\
         userPassword: carol-pw\n\n"
    );
    ldif += &account_ldif(&people, "dave", "test.example", "userPassword: dave-pw\n");
    ldif += &account_ldif(&people, "erin", "test.example", "userPassword: erin-pw\n");
    let out = ldapadd(&node, &ldif);
    assert_eq!(
        out.stdout.matches("adding new entry").count(),
        5,
        "ldapadd should report 5 added entries:\n{out}"
    );

    let found = search_ok(
        &node,
        admin(&node),
        &["-b", "dc=pigeonair", "(mail=carol@test.example)"],
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    let carol = &found[0];
    assert_eq!(carol.dn, format!("uid=carol,{people}"));
    assert_eq!(carol.one("uid"), "carol");
    assert_eq!(carol.one("cn"), "Carol Test");
    assert_eq!(carol.one("sn"), "Test");
    assert_eq!(carol.one("mail"), "carol@test.example");
    assert_eq!(carol.one("mailHost"), "node1.test.example");
    assert_eq!(carol.one("mailQuotaSize"), "1048576");
    let classes: HashSet<String> = carol
        .get("objectClass")
        .iter()
        .map(|c| c.to_ascii_lowercase())
        .collect();
    for c in [
        "inetorgperson",
        "inetlocalmailrecipient",
        "pigeonairmailaccount",
    ] {
        assert!(classes.contains(c), "objectClass {c} missing: {classes:?}");
    }

    // mail matches case-insensitively (caseIgnoreIA5Match), as an MTA lookup expects.
    let found = search_ok(
        &node,
        admin(&node),
        &["-b", "dc=pigeonair", "(mail=CAROL@Test.Example)", "1.1"],
    );
    assert_eq!(dns(&found), vec![format!("uid=carol,{people}")]);

    let all = search_ok(
        &node,
        admin(&node),
        &["-b", &domain, "(objectClass=inetOrgPerson)", "mail"],
    );
    let mut mails: Vec<&str> = all.iter().map(|e| e.one("mail")).collect();
    mails.sort();
    assert_eq!(
        mails,
        vec![
            "carol@test.example",
            "dave@test.example",
            "erin@test.example"
        ]
    );

    // The new domain is a sibling of the demo domain.
    let domains = search_ok(
        &node,
        admin(&node),
        &["-b", DOMAINS, "-s", "one", "(objectClass=*)", "dc"],
    );
    let mut names: Vec<&str> = domains.iter().map(|e| e.one("dc")).collect();
    names.sort();
    assert_eq!(names, vec!["example.org", "test.example"]);
}

#[test]
fn paged_search_returns_each_of_1000_entries_once() {
    let node = Node::start();
    let bulk = format!("ou=bulk,{EXAMPLE}");
    let mut ldif = ou_ldif("bulk", EXAMPLE);
    for i in 0..1000 {
        ldif += &format!(
            "dn: uid=user{i:04},{bulk}\n\
             objectClass: inetOrgPerson\n\
             uid: user{i:04}\n\
             cn: User {i}\n\
             sn: Bulk\n\
             mail: user{i:04}@example.org\n\n"
        );
    }
    ldapadd(&node, &ldif);

    // No -L: ldapsearch then prints each page's result and paged-results control.
    let out = tool(
        &node,
        admin(&node),
        "ldapsearch",
        &[
            "-o",
            "ldif-wrap=no",
            "-E",
            "pr=10/noprompt",
            "-b",
            &bulk,
            "-s",
            "one",
            "(objectClass=inetOrgPerson)",
            "1.1",
        ],
    );
    out.assert_ok();
    let dn_lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("dn: ") || l.starts_with("dn:: "))
        .collect();
    let unique: HashSet<&str> = dn_lines.iter().copied().collect();
    assert_eq!(
        dn_lines.len(),
        1000,
        "expected 1000 dn lines, got {}",
        dn_lines.len()
    );
    assert_eq!(unique.len(), 1000, "some entries came more than once");
    for i in [0, 1, 500, 999] {
        let want = format!("dn: uid=user{i:04},{bulk}");
        assert!(unique.contains(want.as_str()), "{want} missing");
    }

    // It really paged: every page is its own search with its own result, none of more
    // than 10 entries, so there are at least 100 of them, each ending in success.
    let results: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("result: "))
        .collect();
    assert!(
        results.len() >= 100,
        "expected at least 100 pages, got {} results:\n{}",
        results.len(),
        &out.stdout[out.stdout.len().saturating_sub(3000)..]
    );
    assert!(
        results.iter().all(|r| *r == "result: 0 Success"),
        "{results:?}"
    );
    let cookies = out.stdout.matches("pagedresults: ").count();
    assert!(
        cookies >= 100,
        "expected a paged-results control with every page, saw {cookies}"
    );
    let mut page = 0;
    for line in out.stdout.lines() {
        if line.starts_with("dn: ") {
            page += 1;
            assert!(page <= 10, "a page held more than 10 entries");
        } else if line.starts_with("result: ") {
            page = 0;
        }
    }
}

#[test]
fn ldapmodify_add_replace_delete_increment() {
    let node = Node::start();
    let dn = format!("uid=modtest,{PEOPLE}");
    ldapadd(
        &node,
        &account_ldif(
            PEOPLE,
            "modtest",
            "example.org",
            "mailQuotaSize: 1000\ndescription: to be removed\nmailAlternateAddress: m1@example.org\n",
        ),
    );

    // add a value
    ldapmodify(
        &node,
        &format!(
            "dn: {dn}\nchangetype: modify\nadd: mailAlternateAddress\nmailAlternateAddress: m2@example.org\n-\n"
        ),
    );
    let e = read_entry(&node, &dn, &["mailAlternateAddress"]);
    assert_eq!(
        sorted(e.get("mailAlternateAddress")),
        vec!["m1@example.org", "m2@example.org"]
    );

    // replace two attributes in one modify
    ldapmodify(
        &node,
        &format!(
            "dn: {dn}\nchangetype: modify\nreplace: cn\ncn: Renamed Person\n-\nreplace: mailQuotaSize\nmailQuotaSize: 2048\n-\n"
        ),
    );
    let e = read_entry(&node, &dn, &["cn", "mailQuotaSize"]);
    assert_eq!(e.get("cn"), vec!["Renamed Person"]);
    assert_eq!(e.get("mailQuotaSize"), vec!["2048"]);

    // delete one value
    ldapmodify(
        &node,
        &format!(
            "dn: {dn}\nchangetype: modify\ndelete: mailAlternateAddress\nmailAlternateAddress: m1@example.org\n-\n"
        ),
    );
    let e = read_entry(&node, &dn, &["mailAlternateAddress"]);
    assert_eq!(e.get("mailAlternateAddress"), vec!["m2@example.org"]);

    // delete a whole attribute
    ldapmodify(
        &node,
        &format!("dn: {dn}\nchangetype: modify\ndelete: description\n-\n"),
    );
    let e = read_entry(&node, &dn, &["*"]);
    assert!(!e.has("description"), "description still there: {e:#?}");
    assert_eq!(e.get("mailAlternateAddress"), vec!["m2@example.org"]);
    assert_eq!(e.one("uid"), "modtest");

    // increment (RFC 4525)
    ldapmodify(
        &node,
        &format!("dn: {dn}\nchangetype: modify\nincrement: mailQuotaSize\nmailQuotaSize: 5\n-\n"),
    );
    let e = read_entry(&node, &dn, &["mailQuotaSize"]);
    assert_eq!(e.get("mailQuotaSize"), vec!["2053"]);

    // the search index follows the changes
    let found = search_ok(
        &node,
        admin(&node),
        &[
            "-b",
            EXAMPLE,
            "(mailAlternateAddress=m2@example.org)",
            "1.1",
        ],
    );
    assert_eq!(dns(&found), vec![dn.to_ascii_lowercase()]);
    let found = search_ok(
        &node,
        admin(&node),
        &[
            "-b",
            EXAMPLE,
            "(mailAlternateAddress=m1@example.org)",
            "1.1",
        ],
    );
    assert!(found.is_empty(), "{found:#?}");

    // deleting a value the entry does not have fails with noSuchAttribute (16)
    let out = tool_input(
        &node,
        admin(&node),
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {dn}\nchangetype: modify\ndelete: mailAlternateAddress\nmailAlternateAddress: nope@example.org\n-\n"
        )),
    );
    out.assert_code(16);
    assert!(out.stderr.contains("No such attribute (16)"), "{out}");
}

#[test]
fn ldapmodrdn_renames_and_moves_a_subtree() {
    let node = Node::start();
    let old = format!("uid=carol,{PEOPLE}");
    ldapadd(
        &node,
        &account_ldif(PEOPLE, "carol", "example.org", "userPassword: carol-pw\n"),
    );

    let out = tool(
        &node,
        admin(&node),
        "ldapmodrdn",
        &["-r", &old, "uid=carol2"],
    );
    out.assert_ok();
    let new = format!("uid=carol2,{PEOPLE}");
    assert!(!exists(&node, &old), "{old} still exists after the rename");
    let e = read_entry(&node, &new, &["uid", "mail"]);
    assert_eq!(
        e.get("uid"),
        vec!["carol2"],
        "deleteoldrdn should drop the old uid value"
    );
    assert_eq!(e.one("mail"), "carol@example.org");
    let found = search_ok(
        &node,
        admin(&node),
        &["-b", "dc=pigeonair", "(uid=carol2)", "1.1"],
    );
    assert_eq!(dns(&found), vec![new.to_ascii_lowercase()]);
    let found = search_ok(
        &node,
        admin(&node),
        &["-b", "dc=pigeonair", "(uid=carol)", "1.1"],
    );
    assert!(found.is_empty(), "{found:#?}");
    // the renamed account still binds
    tool(&node, As::User(&new, "carol-pw"), "ldapwhoami", &[]).assert_ok();

    // Move ou=x, which has a child, under ou=target.
    let x = format!("ou=x,{EXAMPLE}");
    let target = format!("ou=target,{EXAMPLE}");
    let mut ldif = ou_ldif("x", EXAMPLE);
    ldif += &ou_ldif("target", EXAMPLE);
    ldif += &account_ldif(&x, "child", "example.org", "");
    ldapadd(&node, &ldif);
    let out = tool(
        &node,
        admin(&node),
        "ldapmodrdn",
        &["-r", "-s", &target, &x, "ou=x"],
    );
    out.assert_ok();
    let moved = format!("ou=x,{target}");
    let child = format!("uid=child,{moved}");
    assert!(!exists(&node, &x), "{x} still exists after the move");
    assert!(
        !exists(&node, &format!("uid=child,{x}")),
        "the child kept its old DN"
    );
    assert!(exists(&node, &moved));
    let e = read_entry(&node, &child, &["uid", "mail"]);
    assert_eq!(e.one("mail"), "child@example.org");
    let found = search_ok(
        &node,
        admin(&node),
        &["-b", "dc=pigeonair", "(uid=child)", "1.1"],
    );
    assert_eq!(dns(&found), vec![child.to_ascii_lowercase()]);
    let under_target = search_ok(
        &node,
        admin(&node),
        &["-b", &target, "(objectClass=*)", "1.1"],
    );
    assert_eq!(dns(&under_target), {
        let mut v = vec![
            target.to_ascii_lowercase(),
            moved.to_ascii_lowercase(),
            child.to_ascii_lowercase(),
        ];
        v.sort();
        v
    });
}

#[test]
fn ldapdelete_refuses_a_non_leaf_then_deletes_leaf_first() {
    let node = Node::start();
    let tree = format!("ou=tree,{EXAMPLE}");
    let leaf = format!("uid=leaf,{tree}");
    let mut ldif = ou_ldif("tree", EXAMPLE);
    ldif += &account_ldif(&tree, "leaf", "example.org", "");
    ldapadd(&node, &ldif);

    let out = tool(&node, admin(&node), "ldapdelete", &[&tree]);
    out.assert_code(66);
    assert!(
        out.stderr
            .contains("Operation not allowed on non-leaf (66)"),
        "{out}"
    );
    assert!(exists(&node, &tree));
    assert!(exists(&node, &leaf));

    tool(&node, admin(&node), "ldapdelete", &[&leaf]).assert_ok();
    assert!(!exists(&node, &leaf));
    tool(&node, admin(&node), "ldapdelete", &[&tree]).assert_ok();
    assert!(!exists(&node, &tree));

    // deleting what is gone: noSuchObject (32)
    let out = tool(&node, admin(&node), "ldapdelete", &[&tree]);
    out.assert_code(32);
    assert!(out.stderr.contains("No such object (32)"), "{out}");
}

#[test]
fn ldapcompare_true_and_false() {
    let node = Node::start();
    let dn = node.alice().dn.clone();
    let out = tool(
        &node,
        admin(&node),
        "ldapcompare",
        &[&dn, "mail:alice@example.org"],
    );
    out.assert_code(6);
    assert_eq!(out.stdout.trim(), "TRUE", "{out}");

    // mail compares with caseIgnoreIA5Match
    let out = tool(
        &node,
        admin(&node),
        "ldapcompare",
        &[&dn, "mail:ALICE@Example.ORG"],
    );
    out.assert_code(6);
    assert_eq!(out.stdout.trim(), "TRUE", "{out}");

    let out = tool(
        &node,
        admin(&node),
        "ldapcompare",
        &[&dn, "mail:nobody@example.org"],
    );
    out.assert_code(5);
    assert_eq!(out.stdout.trim(), "FALSE", "{out}");

    // an account may compare on another's entry too (read access)
    let out = tool(
        &node,
        alice(&node),
        "ldapcompare",
        &[&node.bob().dn, "uid:bob"],
    );
    out.assert_code(6);
    assert_eq!(out.stdout.trim(), "TRUE", "{out}");
}

#[test]
fn ldapwhoami_admin_and_account() {
    let node = Node::start();
    let out = tool(&node, admin(&node), "ldapwhoami", &[]);
    out.assert_ok();
    assert_eq!(
        out.stdout.trim(),
        "dn:cn=admin,ou=system,dc=pigeonair",
        "{out}"
    );

    let out = tool(&node, alice(&node), "ldapwhoami", &[]);
    out.assert_ok();
    assert_eq!(
        out.stdout.trim(),
        format!("dn:{}", node.alice().dn),
        "{out}"
    );
    assert_eq!(
        node.alice().dn,
        "uid=alice,ou=people,dc=example.org,ou=domains,dc=pigeonair"
    );

    // anonymous is the empty authzId
    let out = tool(&node, As::Anonymous, "ldapwhoami", &[]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "anonymous", "{out}");
}

#[test]
fn ldappasswd_admin_sets_account_changes_own_and_generated() {
    let node = Node::start();
    let bob = node.bob().clone();
    let alice = node.alice().clone();

    // The admin sets bob's password.
    let out = tool(
        &node,
        admin(&node),
        "ldappasswd",
        &["-s", "bob-new-pw", &bob.dn],
    );
    out.assert_ok();
    let out = tool(&node, As::User(&bob.dn, "bob-new-pw"), "ldapwhoami", &[]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), format!("dn:{}", bob.dn));
    let out = tool(&node, As::User(&bob.dn, &bob.password), "ldapwhoami", &[]);
    out.assert_code(49);
    assert!(out.stderr.contains("Invalid credentials (49)"), "{out}");

    // Alice changes her own password, giving the old one.
    let out = tool(
        &node,
        As::User(&alice.dn, &alice.password),
        "ldappasswd",
        &["-a", &alice.password, "-s", "alice-new-pw"],
    );
    out.assert_ok();
    tool(
        &node,
        As::User(&alice.dn, "alice-new-pw"),
        "ldapwhoami",
        &[],
    )
    .assert_ok();
    tool(
        &node,
        As::User(&alice.dn, &alice.password),
        "ldapwhoami",
        &[],
    )
    .assert_code(49);

    // A wrong old password is refused and changes nothing.
    let out = tool(
        &node,
        As::User(&alice.dn, "alice-new-pw"),
        "ldappasswd",
        &["-a", "not-my-password", "-s", "hijacked"],
    );
    assert_ne!(out.code(), 0, "a wrong old password was accepted:\n{out}");
    tool(&node, As::User(&alice.dn, "hijacked"), "ldapwhoami", &[]).assert_code(49);
    tool(
        &node,
        As::User(&alice.dn, "alice-new-pw"),
        "ldapwhoami",
        &[],
    )
    .assert_ok();

    // Alice may not set bob's password.
    let out = tool(
        &node,
        As::User(&alice.dn, "alice-new-pw"),
        "ldappasswd",
        &["-s", "stolen", &bob.dn],
    );
    assert_ne!(out.code(), 0, "alice set bob's password:\n{out}");
    tool(&node, As::User(&bob.dn, "stolen"), "ldapwhoami", &[]).assert_code(49);

    // Without -s the server generates a password and returns it.
    let out = tool(&node, admin(&node), "ldappasswd", &[&bob.dn]);
    out.assert_ok();
    let generated = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("New password: "))
        .unwrap_or_else(|| panic!("no `New password:` line:\n{out}"))
        .trim()
        .to_string();
    assert!(
        generated.len() >= 8,
        "generated password too short: {generated:?}"
    );
    let out = tool(&node, As::User(&bob.dn, &generated), "ldapwhoami", &[]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), format!("dn:{}", bob.dn));
    tool(&node, As::User(&bob.dn, "bob-new-pw"), "ldapwhoami", &[]).assert_code(49);
}

#[test]
fn root_dse_and_subschema() {
    let node = Node::start();
    for attrs in [vec!["+"], vec!["*", "+"]] {
        let mut args = vec!["-b", "", "-s", "base", "(objectClass=*)"];
        args.extend(attrs.iter().copied());
        let entries = search_ok(&node, As::Anonymous, &args);
        assert_eq!(entries.len(), 1, "{entries:#?}");
        let dse = &entries[0];
        assert_eq!(dse.dn, "", "the Root DSE has the empty DN");
        assert!(
            dse.get("namingContexts").contains(&"dc=pigeonair"),
            "{dse:#?}"
        );
        assert!(dse.get("supportedLDAPVersion").contains(&"3"), "{dse:#?}");
        let ext = dse.get("supportedExtension");
        assert!(
            ext.contains(&"1.3.6.1.4.1.4203.1.11.1"),
            "password modify missing: {ext:?}"
        );
        assert!(
            ext.contains(&"1.3.6.1.4.1.4203.1.11.3"),
            "whoami missing: {ext:?}"
        );
        assert!(
            dse.get("supportedControl")
                .contains(&"1.2.840.113556.1.4.319"),
            "paged results missing: {dse:#?}"
        );
        assert_eq!(dse.get("subschemaSubentry"), vec!["cn=Subschema"]);
        assert!(!dse.get("vendorName").is_empty(), "{dse:#?}");
    }

    let entries = search_ok(
        &node,
        As::Anonymous,
        &[
            "-b",
            "cn=Subschema",
            "-s",
            "base",
            "(objectClass=subschema)",
            "objectClasses",
            "attributeTypes",
            "ldapSyntaxes",
            "matchingRules",
            "matchingRuleUse",
        ],
    );
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let schema = &entries[0];
    assert!(
        schema.dn.eq_ignore_ascii_case("cn=Subschema"),
        "{}",
        schema.dn
    );
    let at = schema.get("attributeTypes");
    let oc = schema.get("objectClasses");
    assert!(
        at.iter()
            .any(|d| d.contains("2.16.840.1.113730.3.1.18") && d.contains("'mailHost'")),
        "no mailHost in {} attributeTypes",
        at.len()
    );
    assert!(
        oc.iter()
            .any(|d| d.contains("2.16.840.1.113730.3.2.2") && d.contains("'inetOrgPerson'")),
        "no inetOrgPerson in {} objectClasses",
        oc.len()
    );
    assert!(
        at.iter().any(|d| d.contains("'pigeonairNodeId'")),
        "pigeonair.schema not published"
    );
    assert!(
        !schema.get("ldapSyntaxes").is_empty(),
        "no ldapSyntaxes published"
    );
    assert!(
        !schema.get("matchingRules").is_empty(),
        "no matchingRules published"
    );
    for d in at.iter().chain(oc.iter()) {
        assert!(
            d.starts_with("( ") && d.ends_with(" )"),
            "not an RFC 4512 description: {d:?}"
        );
    }

    // "+" on the subschema subentry returns the same definitions.
    let entries = search_ok(
        &node,
        As::Anonymous,
        &["-b", "cn=Subschema", "-s", "base", "(objectClass=*)", "+"],
    );
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].get("attributeTypes").len(), at.len());
    assert_eq!(entries[0].get("objectClasses").len(), oc.len());
}

#[test]
fn user_password_is_hashed_and_hidden_from_accounts() {
    let node = Node::start();
    let dn = format!("uid=newbie,{PEOPLE}");
    ldapadd(
        &node,
        &account_ldif(PEOPLE, "newbie", "example.org", "userPassword: s3cret\n"),
    );

    let e = read_entry(&node, &dn, &["userPassword"]);
    let stored = e.one("userPassword");
    assert!(
        stored.starts_with("{ARGON2}$argon2id$v=19$"),
        "userPassword stored as {stored:?}"
    );
    assert!(!stored.contains("s3cret"));

    let out = tool(&node, As::User(&dn, "s3cret"), "ldapwhoami", &[]);
    out.assert_ok();
    assert_eq!(out.stdout.trim(), format!("dn:{dn}"));
    tool(&node, As::User(&dn, "S3cret"), "ldapwhoami", &[]).assert_code(49);

    // The demo accounts' passwords are hashed too.
    let bob = read_entry(&node, &node.bob().dn, &["userPassword"]);
    assert!(
        bob.one("userPassword").starts_with("{ARGON2}$argon2id$"),
        "{bob:#?}"
    );

    // Alice reads bob's entry but never his userPassword, asked for or not.
    for attrs in [
        vec![],
        vec!["userPassword"],
        vec!["*", "+"],
        vec!["userPassword", "mail"],
    ] {
        let mut args = vec![
            "-b",
            node.bob().dn.as_str(),
            "-s",
            "base",
            "(objectClass=*)",
        ];
        args.extend(attrs.iter().copied());
        let entries = search_ok(&node, alice(&node), &args);
        assert_eq!(
            entries.len(),
            1,
            "alice cannot read bob's entry: {entries:#?}"
        );
        assert!(
            !entries[0].has("userPassword"),
            "alice saw bob's userPassword with attributes {attrs:?}: {:#?}",
            entries[0]
        );
    }
    let entries = search_ok(
        &node,
        alice(&node),
        &[
            "-b",
            &dn,
            "-s",
            "base",
            "(objectClass=*)",
            "mail",
            "userPassword",
        ],
    );
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].one("mail"), "newbie@example.org");
    assert!(!entries[0].has("userPassword"), "{:#?}", entries[0]);

    // Nor can she test a guess with compare: that would be a password oracle.
    let bob_dn = node.bob().dn.clone();
    let bob_pw = format!("userPassword:{}", node.bob().password);
    let out = tool(&node, alice(&node), "ldapcompare", &[&bob_dn, &bob_pw]);
    assert_eq!(out.code(), 50, "alice compared bob's password:\n{out}");
    assert!(!out.stdout.contains("TRUE"), "{out}");

    // Nor find which other entries have one by filtering on it (the filter item is
    // Undefined for an attribute she may not read, as in OpenLDAP).
    let entries = search_ok(
        &node,
        alice(&node),
        &["-b", "dc=pigeonair", "(userPassword=*)", "1.1"],
    );
    let others: Vec<&str> = entries
        .iter()
        .map(|e| e.dn.as_str())
        .filter(|dn| !dn.eq_ignore_ascii_case(&node.alice().dn))
        .collect();
    assert!(
        others.is_empty(),
        "alice can tell who has a userPassword by filtering on it: {others:?}"
    );
    // Anonymous sees nothing below the Root DSE and the schema: the base itself is
    // answered as missing.
    let (out, entries) = search(
        &node,
        As::Anonymous,
        &["-b", "dc=pigeonair", "(userPassword=*)", "1.1"],
    );
    out.assert_code(32);
    assert!(
        entries.is_empty(),
        "anonymous can tell who has a userPassword by filtering on it: {entries:#?}"
    );
}

#[test]
fn operational_attributes_of_an_added_entry() {
    let node = Node::start();
    let dn = format!("uid=opattr,{PEOPLE}");
    ldapadd(&node, &account_ldif(PEOPLE, "opattr", "example.org", ""));

    let e = read_entry(&node, &dn, &["+"]);
    for attr in [
        "entryUUID",
        "createTimestamp",
        "modifyTimestamp",
        "creatorsName",
        "modifiersName",
        "entryDN",
        "hasSubordinates",
        "structuralObjectClass",
        "subschemaSubentry",
    ] {
        assert_eq!(e.get(attr).len(), 1, "{attr} missing or repeated: {e:#?}");
    }
    assert!(
        !e.has("uid"),
        "\"+\" alone returned user attributes: {e:#?}"
    );
    assert_eq!(e.one("creatorsName"), "cn=admin,ou=system,dc=pigeonair");
    assert_eq!(e.one("modifiersName"), "cn=admin,ou=system,dc=pigeonair");
    assert_eq!(e.one("entryDN"), dn);
    assert_eq!(e.one("hasSubordinates"), "FALSE");
    assert!(e
        .one("structuralObjectClass")
        .eq_ignore_ascii_case("inetOrgPerson"));
    assert_eq!(e.one("subschemaSubentry"), "cn=Subschema");
    let uuid = e.one("entryUUID");
    assert!(
        uuid.len() == 36 && uuid.chars().filter(|c| *c == '-').count() == 4,
        "entryUUID {uuid:?}"
    );
    let created = e.one("createTimestamp").to_string();
    assert!(
        created.len() >= 15
            && created.ends_with('Z')
            && created[..14].bytes().all(|b| b.is_ascii_digit()),
        "createTimestamp {created:?} is not GeneralizedTime"
    );
    assert!(e.one("modifyTimestamp") >= created.as_str());

    // A parent has subordinates; a modify by alice updates modifiersName.
    let people = read_entry(&node, PEOPLE, &["hasSubordinates"]);
    assert_eq!(people.one("hasSubordinates"), "TRUE");
    // A filter on it sees it too, without asking for the attribute: the parent matches
    // TRUE and not FALSE, the leaf the other way round.
    for (filter, want) in [
        ("(hasSubordinates=TRUE)", vec![PEOPLE.to_string()]),
        ("(hasSubordinates=FALSE)", vec![dn.clone()]),
    ] {
        let mut found: Vec<String> = [PEOPLE, dn.as_str()]
            .into_iter()
            .filter(|base| {
                !search_ok(
                    &node,
                    admin(&node),
                    &["-b", base, "-s", "base", filter, "1.1"],
                )
                .is_empty()
            })
            .map(str::to_string)
            .collect();
        found.sort();
        assert_eq!(found, want, "{filter}");
    }
    let alice_dn = node.alice().dn.clone();
    let out = tool_input(
        &node,
        alice(&node),
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {alice_dn}\nchangetype: modify\nreplace: userPassword\nuserPassword: alice-changed\n-\n"
        )),
    );
    out.assert_ok();
    let a = read_entry(
        &node,
        &alice_dn,
        &["modifiersName", "modifyTimestamp", "createTimestamp"],
    );
    assert_eq!(a.one("modifiersName"), alice_dn);
    assert!(a.one("modifyTimestamp") >= a.one("createTimestamp"));
    tool(
        &node,
        As::User(&alice_dn, "alice-changed"),
        "ldapwhoami",
        &[],
    )
    .assert_ok();

    // "*" and "+" together return both kinds; the entry's own attributes are untouched.
    let both = read_entry(&node, &dn, &["*", "+"]);
    assert!(both.has("uid") && both.has("entryUUID"), "{both:#?}");
    assert_eq!(both.one("entryUUID"), uuid);
    let plain = read_entry(&node, &dn, &[]);
    assert!(
        !plain.has("entryUUID") && !plain.has("createTimestamp"),
        "{plain:#?}"
    );
}

#[test]
fn search_scopes_limits_and_filters() {
    let node = Node::start();
    let base = format!("ou=search,{EXAMPLE}");
    let a = format!("ou=a,{base}");
    let b = format!("ou=b,{base}");
    let mut ldif = ou_ldif("search", EXAMPLE);
    ldif += &ou_ldif("a", &base);
    ldif += &ou_ldif("b", &base);
    ldif += &account_ldif(
        &a,
        "sa1",
        "example.org",
        "description: a haystack with a needle in it\nmailQuotaSize: 100\n",
    );
    ldif += &account_ldif(
        &a,
        "sa2",
        "example.org",
        "description: just hay\nmailQuotaSize: 200\n",
    );
    ldif += &account_ldif(
        &a,
        "alice",
        "search.example",
        "description: another alice\n",
    );
    ldif += &account_ldif(&b, "sb1", "example.org", "description: NEEDLE in caps\n");
    ldif += &account_ldif(&b, "sb2", "example.org", "");
    ldapadd(&node, &ldif);
    let count = |args: &[&str]| -> usize {
        let mut full = vec!["-b", base.as_str()];
        full.extend_from_slice(args);
        search_ok(&node, admin(&node), &full).len()
    };

    assert_eq!(count(&["-s", "base", "(objectClass=*)", "1.1"]), 1);
    assert_eq!(count(&["-s", "one", "(objectClass=*)", "1.1"]), 2);
    assert_eq!(count(&["-s", "sub", "(objectClass=*)", "1.1"]), 8);
    assert_eq!(
        count(&["-s", "sub", "(objectClass=inetOrgPerson)", "1.1"]),
        5
    );

    // Size limit: 2 entries, then sizeLimitExceeded (4).
    let (out, entries) = search(
        &node,
        admin(&node),
        &["-z", "2", "-b", &base, "(objectClass=*)", "1.1"],
    );
    out.assert_code(4);
    assert_eq!(entries.len(), 2, "{out}");
    assert!(out.all().contains("Size limit exceeded (4)"), "{out}");

    // typesOnly: names without values.
    let (out, entries) = search(
        &node,
        admin(&node),
        &["-A", "-b", &a, "-s", "one", "(uid=sa1)", "uid", "mail"],
    );
    out.assert_ok();
    assert_eq!(entries.len(), 1, "{out}");
    for line in out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("dn:") && !l.is_empty())
    {
        assert!(
            line == "uid:" || line == "mail:",
            "typesOnly returned a value: {line:?}\n{out}"
        );
    }
    assert!(out.stdout.lines().any(|l| l == "uid:"), "{out}");

    // 1.1: only DNs.
    let entries = search_ok(
        &node,
        admin(&node),
        &["-b", &base, "(objectClass=*)", "1.1"],
    );
    assert_eq!(entries.len(), 8);
    assert!(entries.iter().all(|e| e.attrs.is_empty()), "{entries:#?}");

    // Attribute selection returns what was asked for.
    let entries = search_ok(&node, admin(&node), &["-b", &a, "(uid=sa1)", "mail", "cn"]);
    assert_eq!(entries.len(), 1);
    let mut names = entries[0].names();
    names.sort();
    assert_eq!(names, vec!["cn", "mail"], "{:#?}", entries[0]);

    let uids = |filter: &str| -> Vec<String> {
        let entries = search_ok(&node, admin(&node), &["-b", &base, filter, "uid"]);
        let mut v: Vec<String> = entries
            .iter()
            .flat_map(|e| e.get("uid").into_iter().map(str::to_string))
            .collect();
        v.sort();
        v
    };
    // substring on an attribute that is not indexed, case-insensitive
    assert_eq!(uids("(description=*needle*)"), vec!["sa1", "sb1"]);
    assert_eq!(uids("(description=just*)"), vec!["sa2"]);
    assert_eq!(uids("(description=*caps)"), vec!["sb1"]);
    assert_eq!(
        uids("(&(objectClass=inetOrgPerson)(!(uid=alice)))"),
        vec!["sa1", "sa2", "sb1", "sb2"]
    );
    assert_eq!(
        uids("(|(uid=sa1)(uid=sb2)(uid=nobody))"),
        vec!["sa1", "sb2"]
    );
    assert_eq!(
        uids("(&(mail=*@example.org)(description=*))"),
        vec!["sa1", "sa2", "sb1"]
    );
    // ordering: createTimestamp has generalizedTimeOrderingMatch
    assert_eq!(
        uids("(&(uid=*)(createTimestamp>=19700101000000Z))").len(),
        5
    );
    assert!(uids("(&(uid=*)(createTimestamp<=19700101000000Z))").is_empty());
    assert!(uids("(createTimestamp>=99991231235959Z)").is_empty());
    // approximate match: the exact value matches (a phonetic rule may match more)
    assert!(uids("(cn~=sa2 Test)").contains(&"sa2".to_string()));
    assert!(uids("(cn~=Zyxwvut)").is_empty());
    // extensible match with a named rule
    assert_eq!(uids("(uid:caseExactMatch:=alice)"), vec!["alice"]);
    assert!(uids("(uid:caseExactMatch:=ALICE)").is_empty());
    assert_eq!(uids("(uid=ALICE)"), vec!["alice"]);
    // dn-attributes extensible match: (ou:dn:=b) selects the entries under ou=b
    assert_eq!(uids("(&(uid=*)(ou:dn:=b))"), vec!["sb1", "sb2"]);
    // absolute true and false filters (RFC 4526, advertised in supportedFeatures)
    assert_eq!(uids("(&)").len(), 5);
    assert!(uids("(|)").is_empty());
    // presence and absence
    assert_eq!(uids("(&(uid=*)(!(description=*)))"), vec!["sb2"]);
    assert_eq!(uids("(mailQuotaSize=200)"), vec!["sa2"]);

    // A missing base is noSuchObject (32).
    let (out, _) = search(
        &node,
        admin(&node),
        &["-b", &format!("ou=missing,{base}"), "(objectClass=*)"],
    );
    out.assert_code(32);
    assert!(out.all().contains("No such object (32)"), "{out}");

    // Anonymous sees none of it (default access): the base answers as missing.
    let (out, entries) = search(&node, As::Anonymous, &["-b", &a, "(uid=sa1)", "mail"]);
    out.assert_code(32);
    assert!(entries.is_empty());
}

//! Cluster-wide settings live in the directory (`pigeonairSetting` values of
//! `cn=cluster,ou=system,<suffix>`): an administrator changes them with ldapmodify and
//! the node applies them while it runs.

use std::time::Duration;

use crate::harness::{run_with_input, wait_until, Node, ToolOutput};

const SETTINGS: &str = "cn=cluster,ou=system,dc=pigeonair";
const PEOPLE: &str = "ou=people,dc=example.org,ou=domains,dc=pigeonair";

fn search(node: &Node, who: Option<(&str, &str)>) -> ToolOutput {
    let mut args: Vec<&str> = vec!["-x", "-LLL", "-H", &node.url];
    if let Some((dn, pw)) = who {
        args.extend(["-D", dn, "-w", pw]);
    }
    args.extend(["-b", PEOPLE, "(objectClass=inetOrgPerson)", "uid"]);
    run_with_input("ldapsearch", &args, None)
}

fn set(node: &Node, change: &str) {
    node.ldapmodify(&format!(
        "dn: {SETTINGS}\nchangetype: modify\n{change}\n-\n"
    ));
}

fn eventually(what: &str, check: impl FnMut() -> bool) {
    assert!(
        wait_until(Duration::from_secs(10), check),
        "{what} did not happen in time"
    );
}

#[test]
fn limits_and_access_rules_change_while_the_node_runs() {
    let node = Node::start();
    let alice = node.alice().clone();
    let me = Some((alice.dn.as_str(), alice.password.as_str()));
    let out = search(&node, me);
    out.assert_ok();
    assert_eq!(
        out.stdout.matches("uid: ").count(),
        2,
        "alice sees both accounts of her domain: {out}"
    );

    set(
        &node,
        "add: pigeonairSetting\npigeonairSetting: ldap.sizeLimit=1",
    );
    eventually("the size limit of 1", || {
        let out = search(&node, me);
        out.code() == 4 && out.stdout.matches("uid: ").count() == 1
    });

    // Replace the access rules: anyone may read the domains (but not passwords).
    let anonymous_before = search(&node, None);
    assert_eq!(
        anonymous_before.code(),
        32,
        "anonymous sees nothing by default: {anonymous_before}"
    );
    set(&node, "add: pigeonairSetting\npigeonairSetting: acl=to subtree=\"ou=domains,dc=pigeonair\" attrs=\"!userPassword\" by * read");
    eventually("anonymous reads under the new rules", || {
        let out = search(&node, None);
        out.code() == 4 && out.stdout.contains("uid: ")
    });

    // Back to the defaults when the rules are removed.
    set(&node, "delete: pigeonairSetting\npigeonairSetting: acl=to subtree=\"ou=domains,dc=pigeonair\" attrs=\"!userPassword\" by * read");
    eventually("the default rules again", || {
        search(&node, None).code() == 32
    });
}

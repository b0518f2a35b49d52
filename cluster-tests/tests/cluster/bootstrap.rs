//! Building a cluster the way an operator does: `init` one node, join two more with
//! tokens until there are three voters, then join two learners; a write taken by a
//! learner is readable on it at once and on every node soon after.

use std::process::Command;
use std::time::Duration;

use crate::harness::{TestCluster, ADMIN_DN, ADMIN_PW, SUFFIX};

const SUBNET: u8 = 11;

fn ldap_tool(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{} not runnable ({e}): install ldap-utils", args[0]))
}

/// `ldapsearch` on `url` for `ou=<name>`: whether the entry is there.
fn ldapsearch_finds(url: &str, name: &str) -> bool {
    let out = ldap_tool(&[
        "ldapsearch",
        "-x",
        "-LLL",
        "-H",
        url,
        "-D",
        ADMIN_DN,
        "-w",
        ADMIN_PW,
        "-b",
        SUFFIX,
        &format!("(ou={name})"),
        "dn",
    ]);
    assert!(
        out.status.success(),
        "ldapsearch on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).contains(&format!("dn: ou={name},{SUFFIX}"))
}

#[test]
fn three_voters_then_two_learners_and_a_learner_write_reaches_everyone() {
    let mut c = TestCluster::new(SUBNET);
    c.init();
    c.start(1);
    for i in 2..=3 {
        let token = c.token(1, &[]);
        c.join(i, &token);
    }
    let view = c.wait_voters(&[1, 2, 3], Duration::from_secs(30));
    let leader = view.agreed_leader().expect("a leader");
    for n in &view.up {
        assert_eq!(
            n.leader,
            Some(leader),
            "node {} follows the agreed leader",
            n.id
        );
        assert!(n.learners.is_empty(), "no learners yet: {n:?}");
    }

    // One token for two joins: both become learners, the voters stay three.
    let token = c.token(1, &["--uses", "2"]);
    c.join(4, &token);
    c.join(5, &token);
    let all = [1, 2, 3, 4, 5];
    c.wait_converged(&all, Duration::from_secs(30));
    let mut voters: Vec<u64> = [1, 2, 3].iter().map(|i| c.id(*i)).collect();
    voters.sort_unstable();
    let mut learners: Vec<u64> = [4, 5].iter().map(|i| c.id(*i)).collect();
    learners.sort_unstable();
    let view = c.status(5).expect("status through a learner");
    assert!(view.down.is_empty(), "every node answers: {view:?}");
    assert_eq!(view.up.len(), 5);
    for n in &view.up {
        assert_eq!(n.voters, voters, "voters on node {}", n.id);
        assert_eq!(n.learners, learners, "learners on node {}", n.id);
        if learners.contains(&n.id) {
            assert_eq!(n.role, "learner", "node {} is a learner", n.id);
        }
    }
    assert!(view.agreed_leader().is_some_and(|l| voters.contains(&l)));

    // A write through a learner: forwarded to the leader, visible on the learner as
    // soon as it is acknowledged, then everywhere.
    let ldif = c.scratch("from-learner.ldif");
    std::fs::write(
        &ldif,
        format!(
            "dn: ou=from-learner,{SUFFIX}\nobjectClass: organizationalUnit\nou: from-learner\n"
        ),
    )
    .unwrap();
    let add = ldap_tool(&[
        "ldapadd",
        "-x",
        "-H",
        &c.url(5),
        "-D",
        ADMIN_DN,
        "-w",
        ADMIN_PW,
        "-f",
        ldif.to_str().unwrap(),
    ]);
    assert!(
        add.status.success(),
        "ldapadd on a learner: {}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert!(
        ldapsearch_finds(&c.url(5), "from-learner"),
        "read-your-writes on the learner that took the write"
    );
    for i in all {
        crate::harness::wait_until(
            &format!("node {i} has the learner's write"),
            Duration::from_secs(15),
            || ldapsearch_finds(&c.url(i), "from-learner").then_some(()),
        );
    }
    let (applied, digest) = c.wait_converged(&all, Duration::from_secs(30));
    eprintln!(
        "bootstrap: 5 nodes converged at index {applied}, digest {}",
        &digest[..16]
    );
}

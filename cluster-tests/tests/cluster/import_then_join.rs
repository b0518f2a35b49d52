//! An offline `ldif import` on a one-node cluster, then `run` and at once a join: the
//! new node must receive the imported entries (they are not in the Raft log, only in a
//! snapshot, which the first node must publish before it takes joins).

use std::time::Duration;

use crate::harness::TestCluster;

const SUBNET: u8 = 17;
const ENTRIES: usize = 500;

#[test]
fn a_node_joining_right_after_an_offline_import_gets_the_imported_entries() {
    let mut c = TestCluster::new(SUBNET);
    c.init();
    let ldif = c.scratch("import.ldif");
    let mut text = String::from(
        "dn: ou=imported,dc=pigeonair\nobjectClass: organizationalUnit\nou: imported\n\n",
    );
    for k in 0..ENTRIES {
        text.push_str(&format!(
            "dn: ou=imp-{k},ou=imported,dc=pigeonair\nobjectClass: organizationalUnit\nou: imp-{k}\n\n"
        ));
    }
    std::fs::write(&ldif, text).unwrap();
    c.cli_ok(1, &["ldif", "import", ldif.to_str().unwrap()]);
    c.start(1);
    // By `ready` the import is in a snapshot and the log behind it purged.
    let view = c.status(1).expect("status of node 1");
    let me = view.node(c.id(1)).expect("node 1 in its status");
    assert!(
        me.snapshot_index.is_some() && me.purged_index.is_some(),
        "the import is published before `ready`: {me:?}"
    );
    // No waiting for anything: join as soon as node 1 says `ready`.
    let token = c.token(1, &[]);
    c.join(2, &token);
    c.wait_converged(&[1, 2], Duration::from_secs(60));
    for i in [1, 2] {
        let found = c.entries_with_prefix(i, "imp");
        assert_eq!(found.len(), ENTRIES, "node {i} holds every imported entry");
    }
}

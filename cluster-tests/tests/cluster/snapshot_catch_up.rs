//! With `snapshot_every = 50`, a follower that is down while more than 300 entries are
//! written finds the log it needs purged on the leader, so it can only catch up by
//! installing a snapshot; after a restart it converges to the same digest.

use std::time::Duration;

use crate::harness::{wait_until, TestCluster, WriteLoad};

const SUBNET: u8 = 14;

#[test]
fn a_follower_behind_the_purged_log_catches_up_by_snapshot() {
    let mut c = TestCluster::new(SUBNET).with_cluster_settings("snapshot_every = 50");
    c.init();
    c.start(1);
    for i in 2..=3 {
        let token = c.token(1, &[]);
        c.join(i, &token);
    }
    let all = [1, 2, 3];
    c.wait_voters(&all, Duration::from_secs(30));
    let leader = c.wait_leader(&all, Duration::from_secs(30));
    let follower = *all.iter().find(|i| **i != leader).unwrap();
    let (stopped_at, _) = c.wait_converged(&all, Duration::from_secs(30));
    c.kill9(follower);

    let live: Vec<usize> = c.running();
    let urls: Vec<String> = live.iter().map(|i| c.url(*i)).collect();
    let load = WriteLoad::start(&urls, "snap", 2_000, Duration::from_secs(120));
    load.wait_acked_since(load.started(), 300, Duration::from_secs(90));
    let purged = wait_until(
        "the leader's log is purged beyond the stopped follower",
        Duration::from_secs(60),
        || {
            let view = c.status(live[0]).ok()?;
            let leader = view.node(view.agreed_leader()?)?;
            leader
                .purged_index
                .filter(|p| *p > stopped_at)
                .map(|p| (p, leader.snapshot_index))
        },
    );
    let report = load.stop();
    assert!(
        report.acked.len() > 300,
        "wrote {} entries",
        report.acked.len()
    );
    eprintln!(
        "snapshot_catch_up: follower node {follower} stopped at index {stopped_at}; leader purged to {} (snapshot {:?}) after {} writes",
        purged.0,
        purged.1,
        report.acked.len()
    );

    c.restart(follower);
    let (applied, digest) = c.wait_converged(&all, Duration::from_secs(60));
    let view = c.status(follower).expect("status through the follower");
    let me = view.node(c.id(follower)).expect("the follower answers");
    let snapshot = me
        .snapshot_index
        .unwrap_or_else(|| panic!("the follower has a snapshot: {me:?}"));
    assert!(
        snapshot > stopped_at,
        "the follower's snapshot ({snapshot}) covers entries it never had in its log (after {stopped_at})"
    );
    c.assert_all_present(&all, "snap", &report.dns());
    eprintln!(
        "snapshot_catch_up: converged at index {applied} (digest {}), follower snapshot_index {snapshot}",
        &digest[..16]
    );
}

//! SIGKILL a follower while writes flow, keep writing, restart it: it catches up to the
//! same applied index and digest and has every acknowledged write.

use std::time::{Duration, Instant};

use crate::harness::{TestCluster, WriteLoad};

const SUBNET: u8 = 13;

#[test]
fn a_killed_follower_catches_up_after_restart() {
    let mut c = TestCluster::three_voters(SUBNET);
    let all = [1, 2, 3];
    let leader = c.wait_leader(&all, Duration::from_secs(30));
    let follower = *all.iter().find(|i| **i != leader).unwrap();
    let writers: Vec<String> = all
        .iter()
        .filter(|i| **i != follower)
        .map(|i| c.url(*i))
        .collect();
    let load = WriteLoad::start(&writers, "cc", 20_000, Duration::from_secs(90));
    load.wait_acked_since(load.started(), 20, Duration::from_secs(30));

    c.kill9(follower);
    let killed_at = Instant::now();
    load.wait_acked_since(killed_at, 100, Duration::from_secs(30));
    let behind = c.status(leader).expect("status through the leader");
    let leader_applied = behind
        .node(c.id(leader))
        .map(|n| n.applied)
        .unwrap_or_default();

    c.restart(follower);
    let back_at = Instant::now();
    load.wait_acked_since(back_at, 20, Duration::from_secs(30));
    let report = load.stop();

    let (applied, digest) = c.wait_converged(&all, Duration::from_secs(60));
    assert!(applied >= leader_applied);
    c.assert_all_present(&[follower], "cc", &report.dns());
    c.assert_all_present(&all, "cc", &report.dns());
    eprintln!(
        "crash_catch_up: node {follower} rejoined and converged at index {applied} (digest {}); \
         {} writes acked, failures {:?}, longest gap {} ms",
        &digest[..16],
        report.acked.len(),
        report.failures,
        report.longest_gap().as_millis()
    );
}

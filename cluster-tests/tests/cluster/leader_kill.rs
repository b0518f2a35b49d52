//! SIGKILL the leader of a three-voter cluster while every node takes writes, five
//! times over: a new leader is elected, writes resume, the old leader comes back with
//! `run`, and every acknowledged write is on every node with equal digests.

use std::time::{Duration, Instant};

use crate::harness::{TestCluster, WriteLoad};

const SUBNET: u8 = 12;
const ROUNDS: usize = 5;

#[test]
fn acknowledged_writes_survive_five_leader_kills() {
    let mut c = TestCluster::three_voters(SUBNET);
    let all = [1, 2, 3];
    let urls: Vec<String> = all.iter().map(|i| c.url(*i)).collect();
    let mut summary = Vec::new();
    // Adds of never-before-sent DNs that were answered entryAlreadyExists (68), and
    // whether the entry is on the replicas.
    let mut phantom_conflicts = Vec::new();
    for round in 1..=ROUNDS {
        let leader = c.wait_leader(&all, Duration::from_secs(30));
        let prefix = format!("lk{round}");
        let load = WriteLoad::start(&urls, &prefix, 5_000, Duration::from_secs(90));
        load.wait_acked_since(load.started(), 20, Duration::from_secs(30));

        let killed_at = Instant::now();
        c.kill9(leader);
        let survivors: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
        let new_leader = c.wait_leader(&survivors, Duration::from_secs(30));
        let failover = killed_at.elapsed();
        assert_ne!(new_leader, leader);
        let elected_at = Instant::now();
        load.wait_acked_since(elected_at, 20, Duration::from_secs(30));

        c.restart(leader);
        let back_at = Instant::now();
        load.wait_acked_since(back_at, 10, Duration::from_secs(30));
        let report = load.stop();

        c.wait_converged(&all, Duration::from_secs(60));
        c.assert_all_present(&all, &prefix, &report.dns());
        let conflicts: Vec<&String> = report
            .refused
            .iter()
            .filter(|(_, rc)| *rc == 68)
            .map(|(dn, _)| dn)
            .collect();
        if !conflicts.is_empty() {
            let present = c.entries_with_prefix(1, &prefix);
            for dn in conflicts {
                phantom_conflicts.push((dn.clone(), present.contains(&dn.to_ascii_lowercase())));
            }
        }
        let gap = report.longest_gap();
        eprintln!(
            "leader_kill round {round}: killed node {leader} (id {}), node {new_leader} (id {}) leads after {} ms; \
             longest gap between acks {} ms; {} acked, failures {:?}",
            c.id(leader),
            c.id(new_leader),
            failover.as_millis(),
            gap.as_millis(),
            report.acked.len(),
            report.failures,
        );
        assert!(
            gap < Duration::from_secs(10),
            "round {round}: writes stalled for {gap:?}"
        );
        summary.push((failover.as_millis(), gap.as_millis()));
    }
    eprintln!("leader_kill: (time to new leader ms, longest write gap ms) per round: {summary:?}");
    // Each add above carried a DN no client had sent before, so "already exists" can
    // only mean the write path applied the client's add and then answered a retry of it.
    assert!(
        phantom_conflicts.is_empty(),
        "adds of fresh DNs were answered entryAlreadyExists (68) across leader kills \
         (DN, present on the replicas): {phantom_conflicts:?}"
    );
}

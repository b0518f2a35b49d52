//! `pigeonair drill` on a live three-voter cluster moves leadership, loses no write and
//! no read, and ends with equal digests; on a one-node cluster it refuses to start.

use std::time::Duration;

use serde_json::Value;

use crate::harness::TestCluster;

const SUBNET: u8 = 16;

#[test]
fn the_failover_drill_passes_on_three_voters_and_refuses_on_one() {
    let c = TestCluster::three_voters(SUBNET);
    let out = c.cli(1, &["drill", "--json", "--settle-secs", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "drill: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("a JSON report");
    eprintln!("drill report: {report}");
    assert_eq!(report["failed_reads"], 0, "{report}");
    assert_eq!(report["lost_writes"], 0, "{report}");
    assert_eq!(report["digests_agree"], true, "{report}");
    assert!(
        report["writes_acked"].as_u64().unwrap_or_default() > 0,
        "{report}"
    );
    let old = report["old_leader"].as_u64().expect("old_leader");
    let new = report["new_leader"].as_u64().expect("new_leader");
    assert_ne!(old, new, "leadership moved");
    assert_eq!(report["nodes"].as_array().map(Vec::len), Some(3));
    c.wait_converged(&[1, 2, 3], Duration::from_secs(30));
    assert_eq!(
        c.wait_leader(&[1, 2, 3], Duration::from_secs(30)),
        c.index_of(new),
        "the drill's new leader still leads"
    );

    let mut single = TestCluster::new(SUBNET).with_host_base(100);
    single.init();
    single.start(1);
    let out = single.cli(1, &["drill", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a drill on one voter must refuse");
    assert!(stderr.contains("voter"), "the refusal says why: {stderr}");
}

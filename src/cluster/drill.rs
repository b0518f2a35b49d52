//! The failover drill: on a live cluster, move leadership away from the leader while
//! writing and reading through every node, and measure what users would notice.
//!
//! Steps: check every member answers and the cluster can lose a voter (at least three
//! voters); start one writer and one reader per node (through the node's own write
//! path and its local replica); make the leader fall silent (it stops sending
//! heartbeats) until the others elect a new one; keep going for a while; then check that every acknowledged write is on every node and that all
//! directory digests agree. Drill entries live under `ou=drill-<time>,ou=system` and are
//! removed afterwards.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::admin::{AdminReply, AdminRequest, NodeStatus};
use super::transport::{Dialer, Service, TlsIdentity};
use super::types::NodeId;
use crate::config::Config;
use crate::directory::entry::Attribute;
use crate::directory::{DirectoryCommand, WriteMeta};

/// What the drill measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrillReport {
    /// Members at the start: (id, address).
    pub nodes: Vec<(NodeId, String)>,
    /// The leader before the drill.
    pub old_leader: NodeId,
    /// The leader after it.
    pub new_leader: Option<NodeId>,
    /// From the leader falling silent until a new leader was seen, in milliseconds.
    pub time_to_new_leader_ms: u64,
    /// The longest time between two acknowledged writes (across all writers), in ms.
    pub longest_write_gap_ms: u64,
    /// Writes acknowledged.
    pub writes_acked: u64,
    /// Writes that failed (each retried by the writer).
    pub writes_failed: u64,
    /// Reads that succeeded.
    pub reads_ok: u64,
    /// Reads that failed (should be zero: reads are local).
    pub failed_reads: u64,
    /// Acknowledged writes missing on some node afterwards (must be zero).
    pub lost_writes: u64,
    /// Whether every node's directory digest agreed at the end.
    pub digests_agree: bool,
}

impl DrillReport {
    /// A human-readable report.
    pub fn to_text(&self) -> String {
        format!(
            "failover drill on {} nodes\n  leader:                {} -> {}\n  time to new leader:    {} ms\n  longest write gap:     {} ms\n  writes acked / failed: {} / {}\n  reads ok / failed:     {} / {}\n  lost acked writes:     {}\n  digests agree:         {}\n",
            self.nodes.len(),
            self.old_leader,
            self.new_leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
            self.time_to_new_leader_ms,
            self.longest_write_gap_ms,
            self.writes_acked,
            self.writes_failed,
            self.reads_ok,
            self.failed_reads,
            self.lost_writes,
            if self.digests_agree { "yes" } else { "NO" },
        )
    }
}

async fn call(dialer: &Dialer, addr: &str, req: &AdminRequest) -> Result<AdminReply, String> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        dialer.call::<_, AdminReply>(addr, Service::STATUS, req),
    )
    .await
    {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

async fn cluster_status(
    dialer: &Dialer,
    addr: &str,
) -> Result<Vec<(NodeId, String, Result<NodeStatus, String>)>, String> {
    match call(dialer, addr, &AdminRequest::ClusterStatus).await? {
        AdminReply::Cluster(c) => Ok(c),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

async fn status(dialer: &Dialer, addr: &str) -> Result<NodeStatus, String> {
    match call(dialer, addr, &AdminRequest::Status).await? {
        AdminReply::Status(s) => Ok(*s),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Run the drill through the node configured in `config`.
pub async fn run(
    config: &Config,
    identity: &TlsIdentity,
    settle: Duration,
) -> Result<DrillReport, String> {
    let dialer = Arc::new(Dialer::new(identity).map_err(|e| e.to_string())?);
    let local = config.cluster.advertised();
    let members = cluster_status(&dialer, &local).await?;
    let mut statuses = Vec::new();
    for (id, addr, s) in &members {
        match s {
            Ok(s) => statuses.push(s.clone()),
            Err(e) => return Err(format!("node {id} at {addr} is not healthy: {e}")),
        }
    }
    let leader = statuses
        .iter()
        .find(|s| s.role == "leader")
        .ok_or("the cluster has no leader")?
        .clone();
    if leader.voters.len() < 3 {
        return Err(format!(
            "the cluster has {} voter(s); a drill needs at least 3 so it can lose one",
            leader.voters.len()
        ));
    }
    let nodes: Vec<(NodeId, String)> = members
        .iter()
        .map(|(id, addr, _)| (*id, addr.clone()))
        .collect();
    let suffix = config.directory.suffix.clone();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let container = format!("ou=drill-{stamp},ou=system,{suffix}");
    let actor = format!("cn=drill,ou=system,{suffix}");
    let add = |dn: String, attrs: Vec<Attribute>| DirectoryCommand::Add {
        dn,
        attrs,
        meta: WriteMeta::now(&actor),
    };
    match call(
        &dialer,
        &leader.addr,
        &AdminRequest::Write(add(
            container.clone(),
            vec![
                Attribute::new("objectClass", ["top", "organizationalUnit"]),
                Attribute::new("ou", [format!("drill-{stamp}")]),
            ],
        )),
    )
    .await?
    {
        AdminReply::Written(Ok(())) => {}
        other => return Err(format!("could not create the drill container: {other:?}")),
    }

    // Readers start once every node has the container (replication is asynchronous
    // to followers, and a read on a node that has not applied it yet is not a failure).
    let replicated = Instant::now() + Duration::from_secs(10);
    for (id, addr) in &nodes {
        loop {
            if let Ok(AdminReply::Counted(_)) =
                call(&dialer, addr, &AdminRequest::Count(container.clone())).await
            {
                break;
            }
            if Instant::now() > replicated {
                return Err(format!(
                    "node {id} did not receive the drill's first write in time"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let acked_dns: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let failed_writes = Arc::new(AtomicU64::new(0));
    let reads_ok = Arc::new(AtomicU64::new(0));
    let failed_reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (id, addr) in nodes.clone() {
        let writer = {
            let (dialer, stop, acks, acked_dns, failed) = (
                dialer.clone(),
                stop.clone(),
                acks.clone(),
                acked_dns.clone(),
                failed_writes.clone(),
            );
            let (container, actor, addr) = (container.clone(), actor.clone(), addr.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                // Bounded: at most 100,000 writes per writer, and it stops when told.
                while !stop.load(Ordering::Relaxed) && n < 100_000 {
                    let dn = format!("cn=w{id}-{n},{container}");
                    let cmd = DirectoryCommand::Add {
                        dn: dn.clone(),
                        attrs: vec![
                            Attribute::new("objectClass", ["top", "applicationProcess"]),
                            Attribute::new("cn", [format!("w{id}-{n}")]),
                        ],
                        meta: WriteMeta::now(&actor),
                    };
                    match call(&dialer, &addr, &AdminRequest::Write(cmd)).await {
                        Ok(AdminReply::Written(Ok(()))) => {
                            acks.lock().map(|mut a| a.push(Instant::now())).ok();
                            acked_dns.lock().map(|mut a| a.push(dn)).ok();
                            n += 1;
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        };
        tasks.push(writer);
        let (dialer, stop, ok, failed) = (
            dialer.clone(),
            stop.clone(),
            reads_ok.clone(),
            failed_reads.clone(),
        );
        let container = container.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                match call(&dialer, &addr, &AdminRequest::Count(container.clone())).await {
                    Ok(AdminReply::Counted(_)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The leader falls silent (no heartbeats, no replication) until another is elected.
    let target = statuses
        .iter()
        .find(|s| s.id != leader.id && leader.voters.contains(&s.id))
        .ok_or("no follower voter")?
        .clone();
    let elect_at = Instant::now();
    match call(&dialer, &leader.addr, &AdminRequest::StepDown).await? {
        AdminReply::Done => {}
        other => return Err(format!("the leader did not step down: {other:?}")),
    }
    let mut new_leader = None;
    let mut time_to_new_leader = Duration::ZERO;
    while elect_at.elapsed() < Duration::from_secs(15) {
        if let Ok(s) = status(&dialer, &target.addr).await {
            if let Some(l) = s.leader.filter(|l| *l != leader.id && s.term > leader.term) {
                new_leader = Some(l);
                time_to_new_leader = elect_at.elapsed();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(settle).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    let mut times = acks.lock().map(|a| a.clone()).unwrap_or_default();
    times.sort();
    let longest_gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let acked: Vec<String> = acked_dns.lock().map(|a| a.clone()).unwrap_or_default();

    // Convergence: every node applies everything, then counts and digests must agree.
    let expected = acked.len() + 1;
    let mut lost = 0u64;
    let mut digests_agree = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut counts = Vec::new();
        let mut digests = Vec::new();
        for (_, addr) in &nodes {
            if let Ok(AdminReply::Counted(c)) =
                call(&dialer, addr, &AdminRequest::Count(container.clone())).await
            {
                counts.push(c);
            }
            if let Ok(s) = status(&dialer, addr).await {
                digests.push(s.digest);
            }
        }
        lost = counts
            .iter()
            .map(|c| expected.saturating_sub(*c) as u64)
            .max()
            .unwrap_or(expected as u64);
        digests_agree = digests.len() == nodes.len() && digests.windows(2).all(|w| w[0] == w[1]);
        if lost == 0 && digests_agree && counts.len() == nodes.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Clean up (best effort, through the new leader's write path).
    let cleanup_addr = new_leader
        .and_then(|l| nodes.iter().find(|(i, _)| *i == l))
        .map(|(_, a)| a.clone())
        .unwrap_or(local.clone());
    for dn in acked.iter().chain(std::iter::once(&container)) {
        let _ = call(
            &dialer,
            &cleanup_addr,
            &AdminRequest::Write(DirectoryCommand::Delete {
                dn: dn.clone(),
                meta: WriteMeta::now(&actor),
            }),
        )
        .await;
    }

    Ok(DrillReport {
        nodes,
        old_leader: leader.id,
        new_leader,
        time_to_new_leader_ms: time_to_new_leader.as_millis() as u64,
        longest_write_gap_ms: longest_gap.as_millis() as u64,
        writes_acked: acked.len() as u64,
        writes_failed: failed_writes.load(Ordering::Relaxed),
        reads_ok: reads_ok.load(Ordering::Relaxed),
        failed_reads: failed_reads.load(Ordering::Relaxed),
        lost_writes: lost,
        digests_agree,
    })
}

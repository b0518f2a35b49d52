//! This node as a member of the cluster: its Raft instance, its cluster port, and the
//! write path that sends every directory change through the replicated log.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::admin::{self, AdminReply, AdminRequest, NodeStatus};
use super::join::{self, JoinGrant, JoinReply, JoinRequest};
use super::log_store::LogStore;
use super::network::{serve_raft, Network};
use super::pki::{ClusterCa, PkiFiles};
use super::state_machine::{Checkpoint, StateMachine};
use super::transport::{self, Conn, Dialer, Service, Services};
use super::types::{ClusterNode, ClusterRequest, NodeId, Raft};
use super::ClusterError;
use crate::config::Config;
use crate::directory::entry::Attribute;
use crate::directory::{DirError, Directory, DirectoryCommand, WriteMeta, WritePath};

/// What a node remembers of its membership (`cluster-state.toml` in its data directory).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberState {
    /// The cluster's id.
    pub cluster_id: String,
    /// This node's id.
    pub node_id: NodeId,
}

impl MemberState {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("cluster-state.toml")
    }

    /// Load the state of an initialised or joined node.
    pub fn load(data_dir: &Path) -> Result<MemberState, ClusterError> {
        let p = Self::path(data_dir);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            ClusterError::State(format!(
                "{}: {e} (is this node initialised or joined?)",
                p.display()
            ))
        })?;
        toml::from_str(&text).map_err(|e| ClusterError::State(format!("{}: {e}", p.display())))
    }

    /// Save it durably.
    pub fn save(&self, data_dir: &Path) -> Result<(), ClusterError> {
        let p = Self::path(data_dir);
        let text = toml::to_string(self).map_err(|e| ClusterError::State(e.to_string()))?;
        crate::durable::write_atomic(&p, text.as_bytes(), crate::durable::Access::Public)
            .map_err(|e| ClusterError::State(format!("{}: {e}", p.display())))
    }
}

/// Messages of the write-forwarding service.
#[derive(Debug, Serialize, Deserialize)]
pub enum WriteReply {
    /// Committed and applied on the leader at this log index, with this outcome.
    Applied {
        /// The entry's log index.
        index: u64,
        /// The directory's result.
        result: Result<(), DirError>,
    },
    /// The receiver is not the leader (and knows this one, if any).
    NotLeader(Option<String>),
    /// The write could not be proposed (the outcome is unknown only if this says so).
    Failed(String),
}

/// This node's membership in the cluster.
pub struct Cluster {
    /// The Raft handle.
    pub raft: Raft,
    /// This node's id.
    pub node_id: NodeId,
    /// The cluster id.
    pub cluster_id: String,
    name: String,
    advertise: String,
    data_dir: PathBuf,
    suffix: String,
    sm: StateMachine,
    dialer: Arc<Dialer>,
    write_timeout: Duration,
    /// The address the cluster port is bound to (when serving).
    pub cluster_addr: Option<std::net::SocketAddr>,
    shutdown: watch::Sender<bool>,
    muted: Arc<std::sync::atomic::AtomicBool>,
    /// Turns true when this node first accepts AppendEntries from a leader.
    heard_leader: watch::Sender<bool>,
    /// The last directory digest and the applied index it was computed at.
    digest_cache: Mutex<Option<(u64, String)>>,
}

fn raft_config(config: &Config, cluster_id: &str) -> Result<Arc<openraft::Config>, ClusterError> {
    let c = &config.cluster;
    let rc = openraft::Config {
        cluster_name: cluster_id.to_string(),
        heartbeat_interval: c.heartbeat_ms,
        election_timeout_min: c.election_timeout_min_ms,
        election_timeout_max: c.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(c.snapshot_every),
        max_in_snapshot_log_to_keep: 100,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    Ok(Arc::new(
        rc.validate()
            .map_err(|e| ClusterError::Raft(e.to_string()))?,
    ))
}

/// Directory metadata set by an offline `ldif import` until a snapshot holds it.
pub const OFFLINE_IMPORT: &str = "offline_import";

/// The number of members recorded in a directory's replicated membership (0 before
/// the first membership entry was applied).
pub fn member_count(dir: &Directory) -> usize {
    dir.meta(super::state_machine::META_MEMBERSHIP)
        .ok()
        .flatten()
        .and_then(|raw| {
            bincode::serde::decode_from_slice::<openraft::StoredMembership<NodeId, ClusterNode>, _>(
                &raw,
                bincode::config::standard(),
            )
            .ok()
        })
        .map(|(m, _)| m.membership().nodes().count())
        .unwrap_or(0)
}

/// The voter target of the cluster (a cluster-wide setting in the directory).
pub const DEFAULT_VOTER_TARGET: usize = 3;

/// A restarted voter stays out of elections until it hears from a leader (`heard`
/// turns true on the first accepted AppendEntries), or `grace` passes (the whole
/// cluster is starting). Without this a node that restarts while a leader is healthy may
/// time out before the leader's replication reaches it, campaign with a higher term and
/// unseat that leader (openraft 0.9 has no pre-vote).
fn hold_elections_until_heard(raft: &Raft, mut heard: watch::Receiver<bool>, grace: Duration) {
    let voters = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    if voters < 2 {
        return;
    }
    raft.runtime_config().elect(false);
    let raft = raft.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(grace, heard.wait_for(|h| *h)).await;
        raft.runtime_config().elect(true);
    });
}

impl Cluster {
    /// Start this node's Raft and, when `port` is given, its cluster port, serving the
    /// cluster's own services and those registered in `port`.
    pub async fn start(
        config: &Config,
        dir: Arc<Directory>,
        port: Option<Services>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let data_dir = config.node.data_dir.clone();
        let state = MemberState::load(&data_dir)?;
        let identity = PkiFiles::new(&data_dir).load_identity()?;
        let log_store =
            LogStore::open(&data_dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
        let sm = StateMachine::open_with(
            dir.clone(),
            &data_dir,
            Checkpoint::from_config(&config.cluster),
        )
        .map_err(|e| ClusterError::Storage(e.to_string()))?;
        let dialer = Arc::new(Dialer::new(&identity)?);
        let muted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let raft = Raft::new(
            state.node_id,
            raft_config(config, &state.cluster_id)?,
            Network::new(
                dialer.clone(),
                muted.clone(),
                Duration::from_millis(config.cluster.heartbeat_ms),
            ),
            log_store,
            sm.clone(),
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let (heard_leader, heard) = watch::channel(false);
        hold_elections_until_heard(
            &raft,
            heard,
            Duration::from_millis(4 * config.cluster.election_timeout_max_ms),
        );
        let (shutdown, rx) = watch::channel(false);
        let mut cluster = Cluster {
            raft,
            node_id: state.node_id,
            cluster_id: state.cluster_id,
            name: config.node.name.clone(),
            advertise: config.cluster.advertised(),
            data_dir,
            suffix: config.directory.suffix.clone(),
            sm,
            dialer,
            write_timeout: Duration::from_millis(config.cluster.write_timeout_ms),
            cluster_addr: None,
            shutdown,
            muted,
            heard_leader,
            digest_cache: Mutex::new(None),
        };
        let listener = if port.is_some() {
            let addr = config.cluster.listen;
            let listen_error = |source| ClusterError::Listen { addr, source };
            let l = TcpListener::bind(addr).await.map_err(listen_error)?;
            let bound = l.local_addr().map_err(listen_error)?;
            cluster.cluster_addr = Some(bound);
            if config.cluster.advertise.is_none() && config.cluster.listen.port() == 0 {
                // An ephemeral port: others can only reach what was actually bound.
                cluster.advertise = bound.to_string();
            }
            Some(l)
        } else {
            None
        };
        let cluster = Arc::new(cluster);
        // An offline import is put into a snapshot before the cluster port opens: a node
        // that joined first would get only the log, which does not hold the imported
        // entries, and never see them.
        if cluster
            .sm
            .directory()
            .meta(OFFLINE_IMPORT)
            .ok()
            .flatten()
            .is_some()
        {
            cluster.publish_offline_import().await;
        }
        if let (Some(listener), Some(extra)) = (listener, port) {
            let server = transport::server_config(&identity)?;
            let mut services = cluster.own_services()?;
            services.extend(extra)?;
            tokio::spawn(transport::serve(listener, server, Arc::new(services), rx));
            let c = cluster.clone();
            tokio::spawn(async move { c.register_self().await });
        }
        tokio::spawn(maintain_voters(cluster.clone()));
        Ok(cluster)
    }

    /// Stop Raft and the cluster port.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let _ = self.raft.shutdown().await;
    }

    /// Create a new cluster in `config.node.data_dir`: its id, CA, this node's
    /// certificate (node 1) and a one-voter membership. Then start it (with the cluster
    /// port when `port` is given, as [`Cluster::start`]) so the caller can write the
    /// first entries.
    pub async fn create(
        config: &Config,
        dir: Arc<Directory>,
        port: Option<Services>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let data_dir = &config.node.data_dir;
        let cluster_id = uuid::Uuid::new_v4().to_string();
        let ca = ClusterCa::generate(&cluster_id)?;
        let hosts = vec![host_of(&config.cluster.advertised())];
        let cert = ca.issue_node(1, &config.node.name, &hosts)?;
        let files = PkiFiles::new(data_dir);
        files.save_ca(&ca)?;
        files.save_node(&cert)?;
        MemberState {
            cluster_id,
            node_id: 1,
        }
        .save(data_dir)?;
        let cluster = Cluster::start(config, dir, port).await?;
        let mut members = BTreeMap::new();
        members.insert(
            1,
            ClusterNode {
                name: config.node.name.clone(),
                addr: cluster.advertise.clone(),
            },
        );
        let raft_error = |e: &dyn std::fmt::Display| ClusterError::Raft(e.to_string());
        cluster
            .raft
            .initialize(members)
            .await
            .map_err(|e| raft_error(&e))?;
        cluster
            .raft
            .wait(Some(Duration::from_secs(10)))
            .state(ServerState::Leader, "the first node leads")
            .await
            .map_err(|e| raft_error(&e))?;
        Ok(cluster)
    }

    /// Join a cluster through `peer` with a token; on success this node's identity and
    /// membership state are written to its data directory.
    pub async fn join(config: &Config, token: &str, peer: &str) -> Result<JoinGrant, ClusterError> {
        let token = join::JoinToken::parse(token).map_err(ClusterError::Join)?;
        let req = JoinRequest {
            token_id: token.id.clone(),
            secret: token.secret.clone(),
            name: config.node.name.clone(),
            advertise: config.cluster.advertised(),
        };
        let mut target = peer.to_string();
        for _ in 0..5 {
            let mut conn = transport::connect_pinned(&target, &token.ca_fingerprint, Service::JOIN)
                .await
                .map_err(|e| {
                    ClusterError::Join(format!(
                        "cannot reach {target} with this token's CA pinned: {e}"
                    ))
                })?;
            let reply: JoinReply = conn
                .call(&req)
                .await
                .map_err(|e| ClusterError::Join(format!("join request to {target} failed: {e}")))?;
            match reply {
                JoinReply::Accepted(grant) => {
                    let files = PkiFiles::new(&config.node.data_dir);
                    let ca = ClusterCa::from_pem(&grant.ca_pem, &grant.ca_key_pem)?;
                    files.save_ca(&ca)?;
                    files.save_node(&super::pki::NodeCert {
                        cert_pem: grant.cert_pem.clone(),
                        key_pem: grant.key_pem.clone(),
                    })?;
                    MemberState {
                        cluster_id: grant.cluster_id.clone(),
                        node_id: grant.node_id,
                    }
                    .save(&config.node.data_dir)?;
                    return Ok(*grant);
                }
                JoinReply::Redirect { leader: Some(l) } => target = l,
                JoinReply::Redirect { leader: None } => {
                    return Err(ClusterError::Join(
                        "the cluster has no leader right now; try again".into(),
                    ))
                }
                JoinReply::Refused(why) => {
                    return Err(ClusterError::Join(format!("join refused: {why}")))
                }
            }
        }
        Err(ClusterError::Join(
            "too many redirects while looking for the leader".into(),
        ))
    }

    /// The state machine (applied index, directory).
    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }

    /// The leader's cluster address, if one is known.
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Send a command through the log: proposed here when this node leads, otherwise
    /// forwarded to the leader. Returns once the entry is committed (on a majority's
    /// disks) and applied on this node's replica. While no leader is known it waits up
    /// to the write timeout, then fails with `unavailable`; a command that was never
    /// proposed is never applied.
    pub async fn write(&self, cmd: DirectoryCommand) -> Result<(), DirError> {
        let deadline = Instant::now() + self.write_timeout;
        let mut delay = Duration::from_millis(20);
        let unavailable = || DirError::Unavailable("no leader could take the write in time".into());
        // One id for every attempt: the log applies a retried write at most once.
        let request = ClusterRequest::Directory {
            id: uuid::Uuid::new_v4().to_string(),
            cmd,
        };
        let mut metrics = self.raft.metrics();
        loop {
            // The leader this attempt goes to; after a failure, a new one ends the wait.
            let tried = metrics.borrow_and_update().current_leader;
            let left = deadline.saturating_duration_since(Instant::now());
            let proposed =
                match tokio::time::timeout(left, self.raft.client_write(request.clone())).await {
                    Ok(r) => r,
                    // Proposed here but not committed in time: this node lost its majority.
                    Err(_) => return Err(unavailable()),
                };
            match proposed {
                Ok(resp) => return resp.data.0,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let Some(node) = f.leader_node {
                        let left = deadline.saturating_duration_since(Instant::now());
                        let forwarded =
                            self.dialer
                                .call::<_, WriteReply>(&node.addr, Service::WRITE, &request);
                        let reply = match tokio::time::timeout(left, forwarded).await {
                            Ok(r) => r,
                            Err(_) => return Err(unavailable()),
                        };
                        match reply {
                            Ok(WriteReply::Applied { index, result }) => {
                                let left = deadline
                                    .saturating_duration_since(Instant::now())
                                    .max(Duration::from_secs(1));
                                return match tokio::time::timeout(left, self.sm.wait_applied(index))
                                    .await
                                {
                                    Ok(()) => result,
                                    Err(_) => Err(DirError::Unavailable(
                                        "the write was committed but this replica is behind".into(),
                                    )),
                                };
                            }
                            Ok(WriteReply::NotLeader(_)) | Err(_) => {}
                            Ok(WriteReply::Failed(why)) => return Err(DirError::Unavailable(why)),
                        }
                    }
                }
                Err(e) => {
                    return Err(DirError::Unavailable(format!(
                        "the cluster cannot take writes: {e}"
                    )))
                }
            }
            if Instant::now() + delay >= deadline {
                return Err(unavailable());
            }
            // Back off, but go again at once when a different leader becomes known: after
            // a failover the write resumes as soon as this node hears the new leader.
            let _ = tokio::time::timeout(
                delay,
                metrics.wait_for(|m| m.current_leader.is_some() && m.current_leader != tried),
            )
            .await;
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    /// After an offline `ldif import` (which wrote the directory without going through
    /// the log), take a snapshot and purge the log behind it, so nodes that join later
    /// start from a snapshot that holds the imported entries.
    async fn publish_offline_import(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader == Some(self.node_id) {
                let target = self.sm.applied_index();
                if self.raft.trigger().snapshot().await.is_err() {
                    return;
                }
                let waited = self
                    .raft
                    .wait(Some(Duration::from_secs(30)))
                    .metrics(
                        |m| m.snapshot.is_some_and(|s| s.index >= target),
                        "snapshot after import",
                    )
                    .await;
                if waited.is_ok() {
                    let _ = self.raft.trigger().purge_log(target).await;
                    let dir = self.sm.directory().clone();
                    let _ =
                        tokio::task::spawn_blocking(move || dir.clear_meta(OFFLINE_IMPORT)).await;
                    tracing::info!(index = target, "offline import published in a snapshot");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Write (or refresh) this node's entry in `ou=nodes`: the service map.
    async fn register_self(&self) {
        let dn = format!("cn=node-{},ou=nodes,{}", self.node_id, self.suffix);
        for _ in 0..600 {
            let role = if self.is_voter() { "voter" } else { "learner" };
            let attrs = vec![
                Attribute::new("objectClass", ["top", "pigeonairNode"]),
                Attribute::new("cn", [format!("node-{}", self.node_id)]),
                Attribute::new("pigeonairNodeId", [self.node_id.to_string()]),
                Attribute::new("pigeonairNodeName", [self.name.clone()]),
                Attribute::new("pigeonairNodeRole", [role]),
                Attribute::new("pigeonairAddress", [format!("cluster={}", self.advertise)]),
            ];
            let exists = self
                .sm
                .directory()
                .view()
                .ok()
                .and_then(|v| v.find(&dn).ok().flatten())
                .is_some();
            let cmd = if exists {
                DirectoryCommand::Modify {
                    dn: dn.clone(),
                    changes: attrs
                        .into_iter()
                        .filter(|a| {
                            a.name != "objectClass" && a.name != "cn" && a.name != "pigeonairNodeId"
                        })
                        .map(|a| crate::directory::Change {
                            op: crate::directory::ChangeOp::Replace,
                            attr: a.name,
                            values: a.values,
                        })
                        .collect(),
                    meta: WriteMeta::now(&dn),
                }
            } else {
                DirectoryCommand::Add {
                    dn: dn.clone(),
                    attrs,
                    meta: WriteMeta::now(&dn),
                }
            };
            match self.write(cmd).await {
                Ok(()) | Err(DirError::AlreadyExists) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "registering this node in ou=nodes; will retry")
                }
            }
            if *self.shutdown.subscribe().borrow() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn is_voter(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.node_id)
    }

    /// The directory digest, computed again only when the applied index moved: `status`
    /// is polled, and hashing a million entries takes seconds.
    fn digest(&self) -> String {
        let applied = self.sm.applied_index();
        let mut cached = self.digest_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((index, digest)) = cached.as_ref() {
            if *index == applied {
                return digest.clone();
            }
        }
        let digest = self.sm.directory().digest().unwrap_or_default();
        *cached = Some((applied, digest.clone()));
        digest
    }

    /// This node's view of itself.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Shutdown => "shutdown",
            _ if voters.contains(&self.node_id) => "follower",
            _ => "learner",
        };
        let replication = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map(|l| l.index)))
                    .collect()
            })
            .unwrap_or_default();
        let last_contact_ms = m.millis_since_quorum_ack;
        NodeStatus {
            id: self.node_id,
            name: self.name.clone(),
            addr: self.advertise.clone(),
            role: role.to_string(),
            term: m.current_term,
            leader: m.current_leader,
            applied: self.sm.applied_index(),
            last_log: m.last_log_index.unwrap_or(0),
            voters: voters.into_iter().collect(),
            learners,
            replication,
            millis_since_quorum_ack: last_contact_ms,
            digest: self.digest(),
            members: membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            counters: crate::metrics::snapshot()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    /// Ask another member for its status over the cluster port.
    pub async fn peer_status(&self, addr: &str) -> Result<NodeStatus, String> {
        match self
            .dialer
            .call::<_, AdminReply>(addr, Service::STATUS, &AdminRequest::Status)
            .await
        {
            Ok(AdminReply::Status(s)) => Ok(*s),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn handle_join(&self, req: JoinRequest) -> JoinReply {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader != Some(self.node_id) {
            return JoinReply::Redirect {
                leader: self.leader_addr(),
            };
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let dn = join::token_dn(&self.suffix, &req.token_id);
        let entry = self
            .sm
            .directory()
            .view()
            .ok()
            .and_then(|v| v.find(&dn).ok().flatten());
        let left = match join::check(entry.as_ref(), &req.token_id, &req.secret, now) {
            Ok(n) => n,
            Err(refusal) => {
                tracing::warn!(token = %req.token_id, node = %req.name, reason = %refusal, "join refused");
                return JoinReply::Refused(refusal.to_string());
            }
        };
        // Spend one use through the log before admitting the node.
        let spend = DirectoryCommand::Modify {
            dn,
            changes: vec![crate::directory::Change {
                op: crate::directory::ChangeOp::Replace,
                attr: "pigeonairTokenUses".into(),
                values: vec![(left - 1).to_string().into_bytes()],
            }],
            meta: WriteMeta::now(&format!(
                "cn=node-{},ou=nodes,{}",
                self.node_id, self.suffix
            )),
        };
        if let Err(e) = self.write(spend).await {
            return JoinReply::Refused(format!("could not record the token's use: {e}"));
        }
        let membership = m.membership_config.membership().clone();
        let node_id = membership.nodes().map(|(id, _)| *id).max().unwrap_or(0) + 1;
        let files = PkiFiles::new(&self.data_dir);
        let issued = files.load_ca().and_then(|ca| {
            let cert = ca.issue_node(node_id, &req.name, &[host_of(&req.advertise)])?;
            Ok((ca, cert))
        });
        let (ca, cert) = match issued {
            Ok(x) => x,
            Err(e) => {
                return JoinReply::Refused(format!("this node cannot sign certificates: {e}"))
            }
        };
        let node = ClusterNode {
            name: req.name.clone(),
            addr: req.advertise.clone(),
        };
        if let Err(e) = self.raft.add_learner(node_id, node.clone(), false).await {
            return JoinReply::Refused(format!("could not add the node: {e}"));
        }
        tracing::info!(node_id, name = %req.name, addr = %req.advertise, "node joined as a learner");
        let members = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        JoinReply::Accepted(Box::new(JoinGrant {
            node_id,
            cluster_id: self.cluster_id.clone(),
            ca_pem: ca.cert_pem.clone(),
            ca_key_pem: ca.key_pem().to_string(),
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            members,
        }))
    }

    /// The cluster-wide voter target (`voterTarget=` in `cn=cluster,ou=system`).
    pub fn voter_target(&self) -> usize {
        crate::settings::ClusterSettings::read(self.sm.directory())
            .voter_target
            .unwrap_or(DEFAULT_VOTER_TARGET)
            .clamp(1, 5)
    }

    async fn handle_admin(self: &Arc<Self>, req: AdminRequest) -> AdminReply {
        admin::handle(self, req).await
    }

    /// Step down as leader for a drill: fall silent (no Raft RPCs out) until another
    /// leader is elected, or at most `limit`. False when this node does not lead.
    pub fn step_down(self: &Arc<Self>, limit: Duration) -> bool {
        if self.raft.metrics().borrow().current_leader != Some(self.node_id) {
            return false;
        }
        self.muted.store(true, std::sync::atomic::Ordering::Relaxed);
        let me = self.clone();
        tokio::spawn(async move {
            let id = me.node_id;
            let _ = me
                .raft
                .wait(Some(limit))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != id),
                    "another leader",
                )
                .await;
            me.muted.store(false, std::sync::atomic::Ordering::Relaxed);
        });
        true
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The suffix of the directory.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// The dialer (for admin fan-out).
    pub fn dialer(&self) -> &Arc<Dialer> {
        &self.dialer
    }
}

/// On the leader: while the cluster has fewer voters than its target, promote a learner
/// whose log has caught up. Runs for the node's life; idle unless this node leads.
async fn maintain_voters(cluster: Arc<Cluster>) {
    let mut shutdown = cluster.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
        let m = cluster.raft.metrics().borrow().clone();
        if m.current_leader != Some(cluster.node_id) {
            continue;
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.len() >= cluster.voter_target() {
            continue;
        }
        let last = m.last_log_index.unwrap_or(0);
        let caught_up = |id: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id))
                .and_then(|l| l.map(|l| l.index))
                .is_some_and(|i| i + 10 >= last)
        };
        let Some(learner) = membership.learner_ids().find(caught_up) else {
            continue;
        };
        let mut next = voters.clone();
        next.insert(learner);
        match cluster.raft.change_membership(next, false).await {
            Ok(_) => tracing::info!(node_id = learner, "promoted to voter"),
            Err(e) => tracing::warn!(node_id = learner, error = %e, "promotion to voter failed"),
        }
    }
}

fn host_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').to_string())
        .unwrap_or_else(|| addr.to_string())
}

impl Cluster {
    /// The cluster's own services on its port, each served by a method of this node.
    fn own_services(self: &Arc<Self>) -> Result<Services, ClusterError> {
        let mut services = Services::new();
        let c = self.clone();
        services.register(
            Service::RAFT,
            Arc::new(move |conn: Conn| {
                let c = c.clone();
                async move { serve_raft(c.raft.clone(), conn.stream, &c.heard_leader).await }
            }),
        )?;
        let c = self.clone();
        services.register(
            Service::WRITE,
            Arc::new(move |conn: Conn| c.clone().serve_writes(conn)),
        )?;
        let c = self.clone();
        services.register(
            Service::JOIN,
            Arc::new(move |conn: Conn| c.clone().serve_join(conn)),
        )?;
        let c = self.clone();
        services.register(
            Service::STATUS,
            Arc::new(move |conn: Conn| c.clone().serve_status(conn)),
        )?;
        Ok(services)
    }

    /// Writes forwarded by other nodes: propose each, answer its outcome.
    async fn serve_writes(self: Arc<Self>, mut conn: Conn) {
        loop {
            let req: ClusterRequest = match conn.recv().await {
                Ok(Some(r)) => r,
                _ => return,
            };
            let proposed =
                tokio::time::timeout(self.write_timeout, self.raft.client_write(req)).await;
            let Ok(proposed) = proposed else {
                let _ = conn
                    .send(&WriteReply::Failed("not committed in time".into()))
                    .await;
                return;
            };
            let reply = match proposed {
                Ok(resp) => WriteReply::Applied {
                    index: resp.log_id.index,
                    result: resp.data.0,
                },
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    WriteReply::NotLeader(f.leader_node.map(|n| n.addr))
                }
                Err(e) => WriteReply::Failed(e.to_string()),
            };
            if conn.send(&reply).await.is_err() {
                return;
            }
        }
    }

    /// One join request from a node that holds a token.
    async fn serve_join(self: Arc<Self>, mut conn: Conn) {
        let req: JoinRequest = match conn.recv().await {
            Ok(Some(r)) => r,
            _ => return,
        };
        let reply = self.handle_join(req).await;
        let _ = conn.send(&reply).await;
    }

    /// Operator requests (status, tokens, node removal, the drill's).
    async fn serve_status(self: Arc<Self>, mut conn: Conn) {
        loop {
            let req: AdminRequest = match conn.recv().await {
                Ok(Some(r)) => r,
                _ => return,
            };
            let reply = self.handle_admin(req).await;
            if conn.send(&reply).await.is_err() {
                return;
            }
        }
    }
}

impl WritePath for Cluster {
    fn write(
        &self,
        cmd: DirectoryCommand,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), DirError>> + Send + '_>>
    {
        Box::pin(Cluster::write(self, cmd))
    }
}

//! The operator's requests over the cluster port (ALPN `pa-status/1`): status, join
//! tokens, node removal, leadership moves. Only holders of a cluster certificate reach
//! this service; the CLI uses the local node's own certificate.

use std::collections::BTreeSet;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

use super::join::{self, JoinToken, TokenInfo};
use super::member::Cluster;
use super::pki::PkiFiles;
use super::transport::Service;
use super::types::NodeId;
use crate::directory::filter::Filter;
use crate::directory::{DirectoryCommand, Scope, SearchRequest, WriteMeta};

/// One node's view of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Cluster address.
    pub addr: String,
    /// leader, follower, learner or candidate.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Last applied log index.
    pub applied: u64,
    /// Last log index.
    pub last_log: u64,
    /// Voter ids.
    pub voters: Vec<NodeId>,
    /// Learner ids.
    pub learners: Vec<NodeId>,
    /// On a leader: each member's matched log index.
    pub replication: Vec<(NodeId, Option<u64>)>,
    /// On a leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Digest of the directory's content.
    pub digest: String,
    /// Every member's id and address.
    pub members: Vec<(NodeId, String)>,
    /// The last log index covered by this node's latest snapshot.
    pub snapshot_index: Option<u64>,
    /// The last log index purged from this node's log.
    pub purged_index: Option<u64>,
    /// The node's counters (connections, binds, refusals, searches, writes).
    pub counters: Vec<(String, u64)>,
}

/// An operator request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    /// This node's status.
    Status,
    /// Every member's status, gathered by the receiving node.
    ClusterStatus,
    /// Make a join token.
    CreateToken {
        /// Validity in seconds.
        ttl_secs: u64,
        /// How many joins it allows.
        uses: u32,
    },
    /// List join tokens.
    ListTokens,
    /// Revoke a join token by id.
    RevokeToken(String),
    /// Take a node out of the membership.
    RemoveNode(NodeId),
    /// Have this node call an election now (moves leadership to it if its log is
    /// up to date: the failover drill uses it).
    Elect,
    /// Step down if this node leads: it falls silent until another leader is elected.
    StepDown,
    /// Write through this node's write path (forwarded to the leader as needed).
    Write(DirectoryCommand),
    /// Count the entries of a subtree on this node's replica (a local read).
    Count(String),
}

/// The answer to an [`AdminRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminReply {
    /// A node's status (boxed: the other replies are small).
    Status(Box<NodeStatus>),
    /// Every member: its status, or why it could not be reached.
    Cluster(Vec<(NodeId, String, Result<NodeStatus, String>)>),
    /// A new token.
    Token(String),
    /// The tokens.
    Tokens(Vec<TokenInfo>),
    /// Done.
    Done,
    /// The outcome of a `Write`.
    Written(Result<(), crate::directory::DirError>),
    /// The result of a `Count`.
    Counted(usize),
    /// Failed, with the reason.
    Error(String),
}

/// Handle one request on this node.
pub async fn handle(cluster: &std::sync::Arc<Cluster>, req: AdminRequest) -> AdminReply {
    let actor = format!("cn=node-{},ou=nodes,{}", cluster.node_id, cluster.suffix());
    match req {
        AdminRequest::Status => AdminReply::Status(Box::new(cluster.status())),
        AdminRequest::ClusterStatus => {
            let me = cluster.status();
            let mut out = Vec::new();
            for (id, addr) in me.members.clone() {
                let s = if id == cluster.node_id {
                    Ok(me.clone())
                } else {
                    cluster.peer_status(&addr).await
                };
                out.push((id, addr, s));
            }
            AdminReply::Cluster(out)
        }
        AdminRequest::CreateToken { ttl_secs, uses } => {
            let fp = match PkiFiles::new(cluster.data_dir())
                .load_ca_cert()
                .and_then(|pem| super::pki::fingerprint_of_pem(&pem))
            {
                Ok(fp) => fp,
                Err(e) => return AdminReply::Error(format!("reading the CA certificate: {e}")),
            };
            let token = JoinToken::generate(&fp);
            if let Err(e) = ensure_tokens_container(cluster, &actor).await {
                return AdminReply::Error(e);
            }
            match cluster
                .write(join::create_command(
                    cluster.suffix(),
                    &token,
                    ttl_secs,
                    uses,
                    &actor,
                ))
                .await
            {
                Ok(()) => AdminReply::Token(token.to_string()),
                Err(e) => AdminReply::Error(e.to_string()),
            }
        }
        AdminRequest::ListTokens => {
            let base = join::tokens_dn(cluster.suffix());
            let filter = Filter::Equality("objectClass".into(), b"pigeonairJoinToken".to_vec());
            let mut tokens = Vec::new();
            let view = match cluster.state_machine().directory().view() {
                Ok(v) => v,
                Err(e) => return AdminReply::Error(e.to_string()),
            };
            let req = SearchRequest {
                base: &base,
                scope: Scope::One,
                filter: &filter,
                size_limit: 0,
                deadline: None,
                view: None,
                subordinates: false,
                keep: None,
            };
            match view.search(&req, |_, e| {
                tokens.extend(join::token_info(&e));
                true
            }) {
                Ok(_) | Err(crate::directory::DirError::NoSuchObject { .. }) => {
                    AdminReply::Tokens(tokens)
                }
                Err(e) => AdminReply::Error(e.to_string()),
            }
        }
        AdminRequest::RevokeToken(id) => {
            match cluster
                .write(DirectoryCommand::Delete {
                    dn: join::token_dn(cluster.suffix(), &id),
                    meta: WriteMeta::now(&actor),
                })
                .await
            {
                Ok(()) => AdminReply::Done,
                Err(crate::directory::DirError::NoSuchObject { .. }) => {
                    AdminReply::Error(format!("no token {id}"))
                }
                Err(e) => AdminReply::Error(e.to_string()),
            }
        }
        AdminRequest::RemoveNode(id) => remove_node(cluster, id).await,
        AdminRequest::StepDown => match cluster.step_down(std::time::Duration::from_secs(10)) {
            true => AdminReply::Done,
            false => AdminReply::Error("this node is not the leader".into()),
        },
        AdminRequest::Write(cmd) => AdminReply::Written(cluster.write(cmd).await),
        AdminRequest::Count(base) => {
            let filter = Filter::Present("objectClass".into());
            let view = match cluster.state_machine().directory().view() {
                Ok(v) => v,
                Err(e) => return AdminReply::Error(e.to_string()),
            };
            let mut n = 0usize;
            let req = SearchRequest {
                base: &base,
                scope: Scope::Subtree,
                filter: &filter,
                size_limit: 0,
                deadline: None,
                view: None,
                subordinates: false,
                keep: None,
            };
            match view.search(&req, |_, _| {
                n += 1;
                true
            }) {
                Ok(_) => AdminReply::Counted(n),
                Err(e) => AdminReply::Error(e.to_string()),
            }
        }
        AdminRequest::Elect => match cluster.raft.trigger().elect().await {
            Ok(()) => AdminReply::Done,
            Err(e) => AdminReply::Error(e.to_string()),
        },
    }
}

async fn ensure_tokens_container(cluster: &Cluster, actor: &str) -> Result<(), String> {
    let dn = join::tokens_dn(cluster.suffix());
    let exists = cluster
        .state_machine()
        .directory()
        .view()
        .ok()
        .and_then(|v| v.find(&dn).ok().flatten())
        .is_some();
    if exists {
        return Ok(());
    }
    let cmd = DirectoryCommand::Add {
        dn,
        attrs: vec![
            crate::directory::entry::Attribute::new("objectClass", ["top", "organizationalUnit"]),
            crate::directory::entry::Attribute::new("ou", ["tokens"]),
        ],
        meta: WriteMeta::now(actor),
    };
    match cluster.write(cmd).await {
        Ok(()) | Err(crate::directory::DirError::AlreadyExists) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

async fn remove_node(cluster: &Cluster, id: NodeId) -> AdminReply {
    let m = cluster.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    if membership.get_node(&id).is_none() {
        return AdminReply::Error(format!("node {id} is not a member"));
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().filter(|v| *v != id).collect();
    if voters.is_empty() {
        return AdminReply::Error("the last voter cannot be removed".into());
    }
    // Demote (if a voter), then drop it as a learner.
    let step1 = cluster.raft.change_membership(voters, false).await;
    let step2 = match step1 {
        Ok(_) => {
            cluster
                .raft
                .change_membership(
                    openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                    false,
                )
                .await
        }
        Err(e) => Err(e),
    };
    match step2 {
        Ok(_) => AdminReply::Done,
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_node {
            Some(leader) => match cluster
                .dialer()
                .call::<_, AdminReply>(&leader.addr, Service::STATUS, &AdminRequest::RemoveNode(id))
                .await
            {
                Ok(r) => r,
                Err(e) => AdminReply::Error(format!("forwarding to the leader: {e}")),
            },
            None => AdminReply::Error("no leader right now".into()),
        },
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::LearnerNotFound(_),
        ))) => AdminReply::Done,
        Err(e) => AdminReply::Error(e.to_string()),
    }
}

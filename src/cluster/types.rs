//! openraft's type configuration for PigeonAir.

use serde::{Deserialize, Serialize};

use crate::directory::{DirError, DirectoryCommand};

/// A node's id in the Raft group.
pub type NodeId = u64;

/// What the cluster knows of a member: where its cluster port is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// The node's name.
    pub name: String,
    /// `host:port` of its cluster port.
    pub addr: String,
}

impl std::fmt::Display for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// A replicated request: one entry of the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterRequest {
    /// A directory change, with the id its writer gave it: a retried write (after a
    /// lost answer) carries the same id and is applied at most once.
    Directory {
        /// Unique per logical write.
        id: String,
        /// The change.
        cmd: DirectoryCommand,
    },
}

/// The outcome of applying one entry: the directory's own result, decided the same way
/// on every replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterResponse(pub Result<(), DirError>);

impl Default for ClusterResponse {
    fn default() -> Self {
        ClusterResponse(Ok(()))
    }
}

openraft::declare_raft_types!(
    /// PigeonAir's Raft types.
    pub TypeConfig:
        D = ClusterRequest,
        R = ClusterResponse,
        NodeId = NodeId,
        Node = ClusterNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of a node.
pub type Raft = openraft::Raft<TypeConfig>;

//! The cluster: the directory replicated with Raft (openraft), the cluster port's
//! transport (TLS 1.3 with client certificates from the cluster CA, ALPN per service),
//! join tokens, membership and write forwarding.
//!
//! Layout:
//! - `types`: openraft's type configuration and the replicated request;
//! - `log_store`: the Raft log in append-only segment files;
//! - `state_machine`: the directory as state machine;
//! - `pki`: the cluster CA and node certificates; `transport`: framed TLS connections;
//! - `network`: openraft's network over the transport.
//!
//! The cluster port serves the cluster's own services (raft, write, join, status) and
//! whatever other layers register in a [`transport::Services`] passed to
//! [`Cluster::start`]: the cluster never imports them.

pub mod admin;
pub mod drill;
pub mod join;
pub mod log_store;
pub mod member;
pub mod network;
pub mod pki;
pub mod state_machine;
pub mod transport;
pub mod types;

pub use member::Cluster;

/// Why this node could not create, start or join a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The node's membership state (`cluster-state.toml`) cannot be read or written.
    #[error("{0}")]
    State(String),
    /// The node's certificates or the cluster CA cannot be loaded, made or saved.
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    /// The cluster port's TLS or a connection to another node failed.
    #[error("{0}")]
    Transport(#[from] transport::TransportError),
    /// The Raft log or the state machine could not be opened.
    #[error("{0}")]
    Storage(String),
    /// openraft refused: its configuration, the first membership, a wait for a leader.
    #[error("raft: {0}")]
    Raft(String),
    /// The cluster port could not be bound.
    #[error("cluster: cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// Joining was refused or could not complete.
    #[error("{0}")]
    Join(String),
    /// The directory could not be written while setting the cluster up.
    #[error("{0}")]
    Directory(String),
}

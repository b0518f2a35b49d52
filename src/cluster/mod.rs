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

//! The cluster: the directory replicated with Raft (openraft), the cluster port's
//! transport (TLS 1.3 with client certificates from the cluster CA, ALPN per service),
//! join tokens, membership and write forwarding.
//!
//! Layout:
//! - `types`: openraft's type configuration and the replicated request;
//! - `log_store`: the Raft log on redb; `state_machine`: the directory as state machine;
//! - `pki`: the cluster CA and node certificates; `transport`: framed TLS connections;
//! - `network`: openraft's network over the transport.

pub mod join;
pub mod log_store;
pub mod state_machine;
pub mod types;

//! PigeonAir: a mail cluster whose nodes each carry a replica of an LDAP directory.
//!
//! # Layout
//!
//! Dependencies point down this list only (a layer uses those below it):
//!
//! - [`node`]: wires one node: opens the directory, starts the cluster and each
//!   service, follows the cluster-wide settings, shuts down; [`quickstart`] and
//!   [`offline`] (LDIF import and export on a stopped node) build on it;
//! - [`mail`]: SMTP in (MX and submission), the spool and its queue runner, the
//!   Maildir++ store, LMTP between nodes over the cluster port;
//! - [`ldap`]: the LDAPv3 front end (sans-IO codec, a session per connection, one file
//!   per operation);
//! - [`cluster`]: Raft (openraft) over the directory, the cluster CA, the cluster port
//!   with its registry of services, join tokens, status, the drill;
//! - [`auth`]: identities, password checks, access rules, hashing slots: what every
//!   front end authenticates and authorises with;
//! - [`net`]: what every public listener shares: TLS, the accept loop with its
//!   connection caps, per-address limits and the login throttle;
//! - [`directory`]: the data model and its storage (DNs, schema, filters, indexes,
//!   access rules, passwords, redb); no network code;
//! - [`config`] (the node's TOML file), [`settings`] (cluster-wide settings in the
//!   directory), [`ldif`] (RFC 2849), [`durable`] (atomic, synced files), [`metrics`].

pub mod auth;
pub mod cluster;
pub mod config;
pub mod directory;
pub mod durable;
pub mod ldap;
pub mod ldif;
pub mod mail;
pub mod metrics;
pub mod net;
pub mod node;
pub mod offline;
pub mod quickstart;
pub mod settings;
#[cfg(test)]
mod testing;

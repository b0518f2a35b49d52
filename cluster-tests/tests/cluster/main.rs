//! Multi-process tests of whole PigeonAir clusters: real `pigeonair` processes on
//! distinct loopback addresses, driven with the CLI and real LDAP clients (see
//! `harness.rs`).
//!
//! Each test owns a loopback subnet, so the tests run in parallel: node `i` listens on
//! `127.0.S.i` (LDAP 3389, cluster 7400). Taken: 11 bootstrap, 12 leader_kill,
//! 13 crash_catch_up, 14 snapshot_catch_up, 15 join_refusals, 16 drill,
//! 17 import_then_join, 18 mail (each of its three tests on hosts of its own: .1-.3,
//! .11-.13, .21-.23, .31, .41-.43; SMTP on 2525); `partition`
//! runs its nodes in network namespaces of its own (10.77.0.x inside them)
//! (`single_node` uses ephemeral ports on 127.0.0.1).

mod harness;

mod bootstrap;
mod crash_catch_up;
mod drill;
mod import_then_join;
mod join_refusals;
mod leader_kill;
mod mail;
mod partition;
mod single_node;
mod snapshot_catch_up;

//! SMTP in: the MX and submission listeners, and the LMTP service other nodes deliver
//! to over the cluster port.
//!
//! [`session`] is the protocol, sans I/O; [`server`] runs it on sockets and answers
//! its questions from the directory, the login check and the spool; [`proxy`] reads
//! the PROXY protocol v2 header a balancer sends.

pub mod proxy;
pub mod server;
pub mod session;

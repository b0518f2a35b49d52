//! POP3 (RFC 1939) on the Maildir store: [`session`] is the protocol, sans I/O;
//! [`server`] runs it on sockets, with the maildrop lock.

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod server;
pub mod session;

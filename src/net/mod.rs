//! What every network service of a node shares, whatever its protocol: TLS for the
//! public listeners ([`tls`]), the accept loop with its connection caps ([`listener`]),
//! and the per-address limits ([`limits`]). LDAP uses it today; SMTP, IMAP and POP3
//! use the same pieces, so a node's limits and TLS behave alike on every port.
//!
//! Nothing here knows a protocol: a protocol plugs in through
//! [`listener::Protocol`] and answers its own refusals.

pub(crate) mod der;
pub mod limits;
pub mod listener;
pub mod tls;

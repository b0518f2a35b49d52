//! IMAP4rev1 (RFC 3501) on the Maildir store, with the extensions clients use:
//! IDLE, NAMESPACE, UIDPLUS, MOVE, UNSELECT, ENABLE, ID, QUOTA (from the directory),
//! SPECIAL-USE, LITERAL+, SASL-IR.
//!
//! - [`mime`]: ENVELOPE, BODYSTRUCTURE and `BODY[section]` from `mail-parser`.
//! - [`session`]: one session's state (not authenticated, authenticated, selected)
//!   and the commands, over [`crate::mail::store`]; no sockets.
//! - [`server`]: the listeners, the login, STARTTLS, IDLE and the I/O, with the
//!   wire format parsed and written by `imap-codec` through `imap-next`'s server flow.

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod mime;
pub mod server;
pub mod session;

//! Mail: SMTP in, the spool, the store, delivery between nodes, POP3 out.
//!
//! The path of a message (DESIGN.md §5):
//!
//! 1. [`smtp`]: a client or a remote MTA speaks SMTP to any node (MX on 25,
//!    submission on 587 and 465). Each recipient is checked against the node's
//!    replica with [`crate::directory::routing::resolve_recipient`]; aliases are
//!    expanded there, so every spooled recipient is one final mailbox or one
//!    external address.
//! 2. [`spool`]: the message and its envelope are fsynced before the 250.
//! 3. [`queue`]: the queue runner hands each pending recipient to [`deliver`], retries
//!    temporary failures with backoff and bounces ([`bounce`]) what fails for good.
//! 4. [`deliver`]: a mailbox whose home node (`mailHost`) is this node, or any mailbox
//!    with shared storage, is written by [`store`]; one homed elsewhere is handed to
//!    its home node over the cluster port with LMTP ([`lmtp`]), which stores it the
//!    same way.
//!
//! Delivery is idempotent: a copy is named after its queue id, so a recipient
//! delivered again after a crash is not stored twice.

pub mod admin;
pub mod bounce;
pub mod deliver;
pub mod imap;
pub mod lmtp;
pub mod pop3;
pub mod queue;
pub mod smtp;
pub mod spool;
pub mod store;

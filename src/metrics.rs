//! Counters of what a node did, for `pigeonair status` and (later) `/metrics`.
//!
//! Each counter is a process-wide atomic; `snapshot()` reads them all by name.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident => $text:literal: $doc:literal),* $(,)?) => {
        $(
            #[doc = $doc]
            pub static $name: AtomicU64 = AtomicU64::new(0);
        )*
        /// Every counter with its name.
        pub fn snapshot() -> Vec<(&'static str, u64)> {
            vec![$(($text, $name.load(Ordering::Relaxed))),*]
        }
    };
}

counters! {
    LDAP_CONNECTIONS => "ldap_connections_total": "LDAP connections accepted.",
    LDAP_REFUSED_TOTAL_CAP => "ldap_connections_refused_total_cap": "Connections refused: the node's connection cap was reached.",
    LDAP_REFUSED_ADDRESS_CAP => "ldap_connections_refused_address_cap": "Connections refused: the per-address cap was reached.",
    LDAP_IDLE_CLOSED => "ldap_connections_idle_closed": "Connections closed after the idle timeout.",
    LDAP_BINDS_OK => "ldap_binds_ok": "Successful binds.",
    LDAP_BINDS_FAILED => "ldap_binds_failed": "Binds refused for wrong credentials.",
    LDAP_BINDS_THROTTLED => "ldap_binds_throttled": "Binds delayed because of earlier failures.",
    LDAP_BINDS_CLEAR_REFUSED => "ldap_binds_refused_unencrypted": "Simple binds refused on unencrypted connections.",
    LDAP_SEARCHES => "ldap_searches": "Search operations.",
    LDAP_SEARCH_LIMITED => "ldap_searches_limited": "Searches stopped by a size or time limit.",
    LDAP_WRITES => "ldap_writes": "Write operations (add, modify, delete, rename).",
    LDAP_WRITES_FAILED => "ldap_writes_failed": "Write operations that failed.",
    LDAP_PROTOCOL_ERRORS => "ldap_protocol_errors": "Connections closed for malformed or oversized PDUs.",
    SMTP_CONNECTIONS => "smtp_connections_total": "SMTP connections accepted (MX and submission).",
    SMTP_REFUSED => "smtp_connections_refused": "SMTP connections refused by a connection cap.",
    SMTP_ACCEPTED => "smtp_messages_accepted": "Messages accepted into the spool (250 after DATA or BDAT).",
    SMTP_REJECTED_RCPT => "smtp_recipients_rejected": "RCPT commands refused (unknown, disabled, relay, quota, limit).",
    SMTP_AUTH_OK => "smtp_auth_ok": "Successful SMTP AUTH logins.",
    SMTP_AUTH_FAILED => "smtp_auth_failed": "SMTP AUTH logins refused.",
    MAIL_DELIVERED => "mail_delivered": "Recipient deliveries that reached their mailbox.",
    MAIL_DEFERRED => "mail_deferred": "Recipient delivery attempts deferred for a retry.",
    MAIL_FAILED => "mail_failed": "Recipient deliveries that failed for good (bounced).",
    MAIL_STORED => "mail_copies_stored": "Copies written into a Maildir on this node.",
    LMTP_SENT => "lmtp_handovers": "LMTP sessions that handed mail to a home node.",
    POP3_CONNECTIONS => "pop3_connections_total": "POP3 connections accepted.",
    POP3_LOGINS_FAILED => "pop3_logins_failed": "POP3 logins refused.",
    IMAP_CONNECTIONS => "imap_connections_total": "IMAP connections accepted.",
    IMAP_LOGINS => "imap_logins": "IMAP logins accepted.",
    IMAP_LOGINS_FAILED => "imap_logins_failed": "IMAP logins refused.",
    LMTP_RECEIVED => "lmtp_recipients_stored": "Recipients stored from LMTP on the cluster port.",
}

/// Add one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

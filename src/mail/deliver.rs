//! Final delivery of spooled mail: into the mailbox's Maildir when this node holds
//! it (its home node, or any node with shared storage), else over LMTP to its home
//! node.
//!
//! A spooled recipient's [`Destination::Mailbox`] names the account's primary
//! address; it is resolved again here, so a `mailHost` changed since acceptance is
//! followed, and a disabled or deleted account fails for good. Copies are stored with
//! [`Mailbox::deliver_once`] keyed by the queue id, so a repeated attempt after a
//! crash finds the first copy instead of storing a second one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::lmtp;
use super::queue::{Deliver, Outcome};
use super::spool::{Destination, Envelope};
use super::store::{DeliveryKey, FolderName, MailStore, Quota, StoreError};
use crate::cluster::transport::Dialer;
use crate::directory::routing::{self, Account, AccountStatus, Resolution, Target};
use crate::directory::Directory;
use crate::net::listener::BoxFuture;

/// Where a mailbox is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In this node's store.
    Here(Account),
    /// On its home node, named by `mailHost`.
    Home(String, Account),
}

/// Why a mailbox cannot take mail at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaced {
    /// No account holds the address (any more).
    Unknown,
    /// The address is outside the cluster's domains (a bounce to a remote sender).
    Foreign,
    /// The account is disabled.
    Disabled,
    /// The directory could not be read (temporary).
    Directory(String),
}

/// Final delivery for one node.
pub struct Delivery {
    directory: Arc<Directory>,
    store: MailStore,
    shared: bool,
    node_name: String,
    hostname: String,
    dialer: Arc<Dialer>,
    lmtp_timeout: Duration,
}

impl Delivery {
    /// Delivery into `store` for the node named `node_name`; `shared` when every node
    /// writes the same root. Other nodes are reached with `dialer` (the cluster port's
    /// client), each connection given `lmtp_timeout`.
    pub fn new(
        directory: Arc<Directory>,
        store: MailStore,
        shared: bool,
        node_name: String,
        hostname: String,
        dialer: Arc<Dialer>,
        lmtp_timeout: Duration,
    ) -> Delivery {
        Delivery {
            directory,
            store,
            shared,
            node_name,
            hostname,
            dialer,
            lmtp_timeout,
        }
    }

    /// The directory replica it resolves with.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// The store this node writes.
    pub fn store(&self) -> &MailStore {
        &self.store
    }

    /// Where the mailbox of `address` (an account's address) is written.
    pub fn locate(&self, address: &str) -> Result<Location, Unplaced> {
        let resolved = routing::resolve_recipient(&self.directory, address)
            .map_err(|e| Unplaced::Directory(e.to_string()))?;
        let account = match resolved {
            Resolution::Delivers(targets) => targets.into_iter().find_map(|t| match t {
                Target::Account(a) => Some(a),
                Target::External(_) => None,
            }),
            Resolution::Foreign => return Err(Unplaced::Foreign),
            Resolution::Unknown => None,
        };
        let Some(account) = account else {
            return Err(Unplaced::Unknown);
        };
        if account.status == AccountStatus::Disabled {
            return Err(Unplaced::Disabled);
        }
        Ok(self.location_of(account))
    }

    /// Where an account already resolved is written: here (its home node, or any node
    /// with shared storage) or on its home node.
    pub fn location_of(&self, account: Account) -> Location {
        match &account.home {
            Some(home) if !self.shared && !home.eq_ignore_ascii_case(&self.node_name) => {
                Location::Home(home.clone(), account)
            }
            _ => Location::Here(account),
        }
    }

    /// Whether `account`'s mailbox here could take one more message of `size` bytes
    /// (the RCPT-time check; `Err` is the reply text's reason).
    pub fn room_for(&self, account: &Account, size: u64) -> Result<(), StoreError> {
        let mailbox = self
            .store
            .mailbox(&account.mailbox.domain, &account.mailbox.local)?;
        mailbox.quota_check(size, &quota_of(account)).map(|_| ())
    }

    async fn deliver_all(
        &self,
        env: &Envelope,
        message: &[u8],
        indexes: &[usize],
        maybe_stored: bool,
    ) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; indexes.len()];
        let mut here: Vec<(usize, Account)> = Vec::new();
        let mut remote: BTreeMap<String, Vec<(usize, Account)>> = BTreeMap::new();
        for (slot, &i) in indexes.iter().enumerate() {
            let r = &env.recipients[i];
            let outside = |a: &str| {
                Outcome::Deferred(format!(
                    "4.4.0 <{a}> is outside the cluster and outbound delivery is not enabled on this node"
                ))
            };
            let address = match &r.destination {
                Destination::Mailbox(a) => a,
                Destination::External(a) => {
                    outcomes[slot] = Some(outside(a));
                    continue;
                }
            };
            match self.locate(address) {
                Ok(Location::Here(account)) => here.push((slot, account)),
                Ok(Location::Home(node, account)) => {
                    remote.entry(node).or_default().push((slot, account))
                }
                Err(Unplaced::Unknown) => {
                    outcomes[slot] = Some(Outcome::Failed(format!(
                        "5.1.1 <{address}>: no such user here"
                    )))
                }
                Err(Unplaced::Disabled) => {
                    outcomes[slot] = Some(Outcome::Failed(format!(
                        "5.2.1 <{address}>: mailbox disabled"
                    )))
                }
                Err(Unplaced::Directory(e)) => {
                    outcomes[slot] = Some(Outcome::Deferred(format!("4.3.0 directory: {e}")))
                }
                // A bounce to a remote sender waits for the outbound queue like any
                // external address.
                Err(Unplaced::Foreign) => outcomes[slot] = Some(outside(address)),
            }
        }
        if !here.is_empty() {
            let store = self.store.clone();
            let (id, sender, at_micros) = (
                env.id.clone(),
                env.sender.clone(),
                accepted_micros(&env.id, env.received_at),
            );
            let message = message.to_vec();
            let stored = tokio::task::spawn_blocking(move || {
                let key = DeliveryKey {
                    token: &id,
                    at_micros,
                    maybe_stored,
                };
                here.into_iter()
                    .map(|(slot, account)| {
                        (slot, store_copy(&store, &account, &sender, &message, &key))
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            match stored {
                Ok(list) => {
                    for (slot, outcome) in list {
                        outcomes[slot] = Some(outcome);
                    }
                }
                Err(e) => tracing::error!(error = %e, "the store task failed"),
            }
        }
        for (node, group) in remote {
            let accounts: Vec<String> = group.iter().map(|(_, a)| a.mailbox.to_text()).collect();
            let result = self
                .hand_over(&node, env, message, &accounts, maybe_stored)
                .await;
            match result {
                Ok(replies) => {
                    for ((slot, _), outcome) in group.iter().zip(replies) {
                        outcomes[*slot] = Some(outcome);
                    }
                }
                Err(why) => {
                    tracing::warn!(%node, id = %env.id, %why, "home node unreachable; the message stays queued");
                    for (slot, _) in &group {
                        outcomes[*slot] =
                            Some(Outcome::Deferred(format!("4.4.1 home node {node}: {why}")));
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Deferred("4.3.0 not attempted".into())))
            .collect()
    }

    /// Give `env`'s message for `mailboxes` to the home node `node` over LMTP.
    async fn hand_over(
        &self,
        node: &str,
        env: &Envelope,
        message: &[u8],
        mailboxes: &[String],
        maybe_stored: bool,
    ) -> Result<Vec<Outcome>, String> {
        let endpoints = routing::service_endpoints(&self.directory, node, "cluster")
            .map_err(|e| format!("directory: {e}"))?;
        let Some(endpoint) = endpoints.first() else {
            return Err("no cluster address in ou=nodes".into());
        };
        let job = lmtp::Handover {
            hostname: &self.hostname,
            queue_id: &env.id,
            maybe_stored,
            sender: &env.sender,
            recipients: mailboxes,
            message,
        };
        let replies = tokio::time::timeout(
            self.lmtp_timeout + Duration::from_secs(60),
            lmtp::hand_over(&self.dialer, endpoint, &job),
        )
        .await
        .map_err(|_| "LMTP timed out".to_string())?
        .map_err(|e| e.to_string())?;
        crate::metrics::inc(&crate::metrics::LMTP_SENT);
        Ok(replies
            .into_iter()
            .map(|r| {
                let text = format!("{} {}", r.status, r.text);
                match r.code {
                    200..=299 => Outcome::Delivered,
                    500..=599 => Outcome::Failed(text),
                    _ => Outcome::Deferred(text),
                }
            })
            .collect())
    }
}

impl Deliver for Delivery {
    fn deliver<'a>(
        &'a self,
        envelope: &'a Envelope,
        message: &'a [u8],
        indexes: &'a [usize],
        maybe_stored: bool,
    ) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(self.deliver_all(envelope, message, indexes, maybe_stored))
    }
}

/// Store one copy for `account` in `store`, with `Return-Path:` and `Delivered-To:`
/// in front. Blocking: call it off the async runtime.
pub fn store_copy(
    store: &MailStore,
    account: &Account,
    sender: &str,
    message: &[u8],
    key: &DeliveryKey<'_>,
) -> Outcome {
    let mailbox = match store.mailbox(&account.mailbox.domain, &account.mailbox.local) {
        Ok(m) => m,
        Err(e) => return Outcome::Failed(format!("5.1.3 {e}")),
    };
    let mut copy = Vec::with_capacity(message.len() + 128);
    copy.extend_from_slice(format!("Return-Path: <{sender}>\r\n").as_bytes());
    copy.extend_from_slice(format!("Delivered-To: {}\r\n", account.mailbox).as_bytes());
    copy.extend_from_slice(message);
    match mailbox.deliver_once(&FolderName::inbox(), &copy, &quota_of(account), key) {
        Ok(done) => {
            if done.again {
                tracing::info!(mailbox = %account.mailbox, file = %done.file_name, "already stored by an earlier attempt");
            }
            crate::metrics::inc(&crate::metrics::MAIL_STORED);
            Outcome::Delivered
        }
        Err(StoreError::OverQuota) => Outcome::Deferred("4.2.2 mailbox over quota".into()),
        Err(e) => {
            tracing::error!(mailbox = %account.mailbox, error = %e, "cannot store a message");
            Outcome::Deferred(format!("4.3.0 cannot store the message: {e}"))
        }
    }
}

/// The store's quota for an account.
pub fn quota_of(account: &Account) -> Quota {
    Quota {
        max_bytes: account.quota.bytes,
        max_count: account.quota.count,
    }
}

/// When the message with this queue id was accepted, in microseconds: a queue id
/// starts with it in hex; `received_at` (seconds) stands in for an id that does not.
pub fn accepted_micros(queue_id: &str, received_at: u64) -> u64 {
    queue_id
        .get(..14)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or(received_at.saturating_mul(1_000_000))
}

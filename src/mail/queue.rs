//! The queue runner: delivers every pending recipient of the spool, retries temporary
//! failures with backoff, and bounces what failed for good or outlived the retry
//! window back to the sender.
//!
//! The runner reads the spool at start (so a node restarted after a crash resumes every
//! pending delivery), is told of each newly accepted message, and wakes for the next
//! retry. A message is handled by one task at a time; up to [`PARALLEL`] messages are
//! delivered at once. A recipient is marked done only after its delivery reported
//! success, which the delivery reports only once it is durable.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};

use super::bounce;
use super::spool::{unix_now, Destination, Envelope, Recipient, Spool, SpoolError};
use crate::net::listener::BoxFuture;

/// Messages delivered at once.
const PARALLEL: usize = 16;

/// What one delivery attempt of one recipient came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored durably.
    Delivered,
    /// Failed for now; tried again later.
    Deferred(String),
    /// Failed for good; bounced.
    Failed(String),
}

/// Delivers spooled messages: the pipeline behind the queue.
pub trait Deliver: Send + Sync + 'static {
    /// Deliver `message` to the recipients of `envelope` at `indexes` (the pending
    /// ones); one outcome per index, in order. [`Outcome::Delivered`] promises the copy
    /// is on disk where it belongs; a repeated call for the same (queue id, index)
    /// after a crash must not store a second copy. `maybe_stored` is true when an
    /// earlier attempt may have stored some copies (a retry, or a message found in
    /// the spool at start), so the store must look for them.
    fn deliver<'a>(
        &'a self,
        envelope: &'a Envelope,
        message: &'a [u8],
        indexes: &'a [usize],
        maybe_stored: bool,
    ) -> BoxFuture<'a, Vec<Outcome>>;
}

/// How long to wait before the next attempt and when to give up.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The wait after the first failure; it doubles with each further one.
    pub first: Duration,
    /// The longest wait between attempts.
    pub max: Duration,
    /// A recipient still failing this long after acceptance is bounced.
    pub window: Duration,
}

impl RetryPolicy {
    fn wait_after(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        self.first.saturating_mul(1u32 << exp).min(self.max)
    }
}

/// The handle other parts of the node use: tell the runner about new messages, ask it
/// to retry now.
#[derive(Clone)]
pub struct Queue {
    spool: Arc<Spool>,
    wake: mpsc::UnboundedSender<Option<String>>,
    /// Messages an attempt (or a deletion) is working on.
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Why an operator's queue command was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The spool failed or has no such message.
    #[error("{0}")]
    Spool(#[from] SpoolError),
    /// A delivery attempt holds the message right now.
    #[error("message {0} is being delivered right now; try again")]
    Busy(String),
}

impl Queue {
    /// The spool behind the queue.
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// A message was accepted into the spool: deliver it now.
    pub fn queued(&self, id: &str) {
        let _ = self.wake.send(Some(id.to_string()));
    }

    /// Try every pending recipient of message `id` (of every message when `None`)
    /// now, whatever its backoff says; returns how many recipients are due now.
    /// Messages an attempt holds right now are left to it.
    pub fn retry(&self, id: Option<&str>) -> Result<usize, QueueError> {
        let envelopes = match id {
            Some(id) => vec![self.spool.envelope(id)?],
            None => self.spool.envelopes()?,
        };
        let mut n = 0;
        let mut woken = Vec::new();
        for mut env in envelopes {
            let Some(_claim) = self.claim(&env.id) else {
                if id.is_some() {
                    return Err(QueueError::Busy(env.id));
                }
                continue;
            };
            // Read again under the claim: an attempt may have just finished.
            env = match self.spool.envelope(&env.id) {
                Ok(e) => e,
                Err(SpoolError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            for r in env.recipients.iter_mut().filter(|r| !r.done) {
                r.next_attempt = 0;
                n += 1;
            }
            self.spool.update(&env)?;
            woken.push(env.id);
        }
        // Woken once the claims are released, so the runner does not find them busy.
        for id in woken {
            let _ = self.wake.send(Some(id));
        }
        Ok(n)
    }

    /// Remove message `id` from the queue without delivering it further (no bounce).
    pub fn delete(&self, id: &str) -> Result<(), QueueError> {
        let Some(_claim) = self.claim(id) else {
            return Err(QueueError::Busy(id.to_string()));
        };
        self.spool.remove(id)?;
        tracing::warn!(%id, "message deleted from the queue by an operator");
        Ok(())
    }

    /// Every queued message.
    pub fn list(&self) -> Result<Vec<Envelope>, QueueError> {
        Ok(self.spool.envelopes()?)
    }

    fn claim(&self, id: &str) -> Option<Claim> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.insert(id.to_string()).then(|| Claim {
            busy: self.busy.clone(),
            id: id.to_string(),
        })
    }
}

/// Holds a message against the runner while an operator's command changes it.
struct Claim {
    busy: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

struct Runner {
    spool: Arc<Spool>,
    deliver: Arc<dyn Deliver>,
    policy: RetryPolicy,
    /// The node's name for bounces.
    hostname: String,
    busy: Arc<Mutex<HashSet<String>>>,
    /// Messages found in the spool at start: an attempt before the restart may have
    /// stored copies without recording them.
    recovered: Mutex<HashSet<String>>,
    slots: Arc<Semaphore>,
    wake: mpsc::UnboundedSender<Option<String>>,
}

/// Start the queue runner over `spool`; it stops when `shutdown` turns true.
pub fn start(
    spool: Arc<Spool>,
    deliver: Arc<dyn Deliver>,
    policy: RetryPolicy,
    hostname: String,
    shutdown: watch::Receiver<bool>,
) -> (Queue, tokio::task::JoinHandle<()>) {
    let (wake, rx) = mpsc::unbounded_channel();
    let busy = Arc::new(Mutex::new(HashSet::new()));
    let runner = Arc::new(Runner {
        spool: spool.clone(),
        deliver,
        policy,
        hostname,
        busy: busy.clone(),
        recovered: Mutex::new(HashSet::new()),
        slots: Arc::new(Semaphore::new(PARALLEL)),
        wake: wake.clone(),
    });
    let task = tokio::spawn(runner.run(rx, shutdown));
    (Queue { spool, wake, busy }, task)
}

impl Runner {
    async fn run(
        self: Arc<Self>,
        mut wake: mpsc::UnboundedReceiver<Option<String>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // (due time, id) of every message with a pending recipient.
        let mut due: BTreeSet<(u64, String)> = BTreeSet::new();
        self.rescan(&mut due);
        self.recovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(due.iter().map(|(_, id)| id.clone()));
        loop {
            let now = unix_now();
            while let Some((at, id)) = due.first().cloned() {
                if at > now {
                    break;
                }
                due.pop_first();
                self.clone().spawn_attempt(id).await;
            }
            let sleep = due
                .first()
                .map(|(at, _)| {
                    Duration::from_secs(at.saturating_sub(now)).max(Duration::from_millis(50))
                })
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.changed() => return,
                got = wake.recv() => match got {
                    Some(Some(id)) => { due.insert((0, id)); }
                    Some(None) => self.rescan(&mut due),
                    None => return,
                },
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Schedule every spooled message by its earliest pending recipient.
    fn rescan(&self, due: &mut BTreeSet<(u64, String)>) {
        due.clear();
        match self.spool.envelopes() {
            Ok(list) => {
                for env in list {
                    if let Some(at) = next_due(&env) {
                        due.insert((at, env.id));
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the spool"),
        }
    }

    async fn spawn_attempt(self: Arc<Self>, id: String) {
        if !self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone())
        {
            return;
        }
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            let next = self.attempt(&id).await;
            drop(slot);
            self.busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if let Some(at) = next {
                // Re-enter the schedule through the wake channel: the runner owns it.
                let runner = self.clone();
                let wait = at.saturating_sub(unix_now());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    let _ = runner.wake.send(Some(id));
                });
            }
        });
    }

    /// One attempt at a message's due recipients; returns when to try again, if ever.
    async fn attempt(&self, id: &str) -> Option<u64> {
        let mut env = match self.spool.envelope(id) {
            Ok(e) => e,
            Err(SpoolError::NotFound(_)) => return None,
            Err(e) => {
                tracing::error!(%id, error = %e, "cannot read a queued message");
                return None;
            }
        };
        let now = unix_now();
        let indexes: Vec<usize> = env
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.done && r.next_attempt <= now)
            .map(|(i, _)| i)
            .collect();
        if !indexes.is_empty() {
            let message = match self.spool.message(id) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(%id, error = %e, "cannot read a queued message");
                    return None;
                }
            };
            let recovered = self
                .recovered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            let maybe_stored = recovered || indexes.iter().any(|&i| env.recipients[i].attempts > 0);
            let outcomes = self
                .deliver
                .deliver(&env, &message, &indexes, maybe_stored)
                .await;
            for (i, outcome) in indexes.iter().zip(outcomes) {
                self.record(&mut env, *i, outcome, now);
            }
        }
        if env.finished() {
            self.bounce_failures(&env);
            if let Err(e) = self.spool.remove(id) {
                tracing::error!(%id, error = %e, "cannot remove a delivered message");
            }
            return None;
        }
        if let Err(e) = self.spool.update(&env) {
            tracing::error!(%id, error = %e, "cannot record delivery progress");
        }
        next_due(&env)
    }

    fn record(&self, env: &mut Envelope, i: usize, outcome: Outcome, now: u64) {
        let received_at = env.received_at;
        let id = env.id.clone();
        let r = &mut env.recipients[i];
        r.attempts += 1;
        match outcome {
            Outcome::Delivered => {
                tracing::info!(%id, rcpt = %r.rcpt, "delivered");
                crate::metrics::inc(&crate::metrics::MAIL_DELIVERED);
                r.done = true;
                r.last_error = None;
            }
            Outcome::Failed(why) => {
                tracing::warn!(%id, rcpt = %r.rcpt, %why, "delivery failed for good");
                crate::metrics::inc(&crate::metrics::MAIL_FAILED);
                r.done = true;
                r.failed = true;
                r.last_error = Some(why);
            }
            Outcome::Deferred(why) => {
                crate::metrics::inc(&crate::metrics::MAIL_DEFERRED);
                if now.saturating_sub(received_at) >= self.policy.window.as_secs() {
                    tracing::warn!(%id, rcpt = %r.rcpt, %why, "retry window over; bouncing");
                    r.done = true;
                    r.failed = true;
                    r.last_error = Some(format!("{why} (gave up after {} attempts)", r.attempts));
                } else {
                    tracing::info!(%id, rcpt = %r.rcpt, %why, "delivery deferred");
                    let wait = self.policy.wait_after(r.attempts);
                    r.next_attempt = now + wait.as_secs().max(1);
                    r.last_error = Some(why);
                }
            }
        }
    }

    /// Send the sender a delivery status notification for the recipients that failed
    /// (never for a bounce itself: its sender is empty).
    fn bounce_failures(&self, env: &Envelope) {
        let failed: Vec<&Recipient> = env.recipients.iter().filter(|r| r.failed).collect();
        if failed.is_empty() || env.sender.is_empty() {
            return;
        }
        let message = self.spool.message(&env.id).unwrap_or_default();
        let dsn = bounce::report(&self.hostname, env, &failed, &message);
        let bounce = Envelope {
            id: super::spool::new_queue_id(),
            sender: String::new(),
            received_at: unix_now(),
            size: dsn.len() as u64,
            // Resolved at delivery like any recipient: a local sender's mailbox, or
            // outside the cluster.
            recipients: vec![Recipient::new(
                env.sender.clone(),
                Destination::Mailbox(env.sender.clone()),
            )],
        };
        match self.spool.accept(&bounce, &dsn) {
            Ok(()) => {
                let _ = self.wake.send(Some(bounce.id.clone()));
            }
            Err(e) => tracing::error!(error = %e, "cannot queue a bounce"),
        }
    }
}

/// The earliest time a pending recipient of `env` is due, if any is pending.
fn next_due(env: &Envelope) -> Option<u64> {
    env.recipients
        .iter()
        .filter(|r| !r.done)
        .map(|r| r.next_attempt)
        .min()
}

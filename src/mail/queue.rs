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
    // The spool is read before this returns, so what it holds now (left by the last
    // run) is told apart from what sessions accept from here on.
    let mut due: BTreeSet<(u64, String)> = BTreeSet::new();
    runner.rescan(&mut due);
    runner
        .recovered
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(due.iter().map(|(_, id)| id.clone()));
    let task = tokio::spawn(runner.run(due, rx, shutdown));
    (Queue { spool, wake, busy }, task)
}

impl Runner {
    /// `due`: (due time, id) of every message with a pending recipient.
    async fn run(
        self: Arc<Self>,
        mut due: BTreeSet<(u64, String)>,
        mut wake: mpsc::UnboundedReceiver<Option<String>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::mail::spool::new_queue_id;

    /// Defers every first attempt, then delivers; fails `bad@` for good. Records
    /// what it was given.
    #[derive(Default)]
    struct Script {
        calls: AtomicUsize,
        seen: Mutex<Vec<(String, Vec<usize>, bool)>>,
        /// (sender, first recipient, message) of every call.
        envelopes: Mutex<Vec<(String, String, Vec<u8>)>>,
    }

    impl Deliver for Script {
        fn deliver<'a>(
            &'a self,
            env: &'a Envelope,
            message: &'a [u8],
            indexes: &'a [usize],
            maybe_stored: bool,
        ) -> BoxFuture<'a, Vec<Outcome>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                self.seen
                    .lock()
                    .unwrap()
                    .push((env.id.clone(), indexes.to_vec(), maybe_stored));
                self.envelopes.lock().unwrap().push((
                    env.sender.clone(),
                    env.recipients[0].rcpt.clone(),
                    message.to_vec(),
                ));
                indexes
                    .iter()
                    .map(|&i| match env.recipients[i].rcpt.as_str() {
                        r if r.starts_with("bad@") => Outcome::Failed("5.1.1 no such user".into()),
                        _ if n == 0 => Outcome::Deferred("4.4.1 home node down".into()),
                        _ => Outcome::Delivered,
                    })
                    .collect()
            })
        }
    }

    fn envelope(rcpts: &[&str]) -> Envelope {
        Envelope {
            id: new_queue_id(),
            sender: "sender@remote.test".into(),
            received_at: unix_now(),
            size: 5,
            recipients: rcpts
                .iter()
                .map(|r| Recipient::new(r.to_string(), Destination::Mailbox(r.to_string())))
                .collect(),
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "{what} did not happen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_deferred_recipient_is_retried_and_a_failed_one_bounced_to_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let script = Arc::new(Script::default());
        let policy = RetryPolicy {
            first: Duration::from_secs(1),
            max: Duration::from_secs(1),
            window: Duration::from_secs(3600),
        };
        let (_stop, shutdown) = watch::channel(false);
        let (queue, _task) = start(
            spool.clone(),
            script.clone(),
            policy,
            "mx.test".into(),
            shutdown,
        );
        let env = envelope(&["alice@example.org", "bad@example.org"]);
        spool.accept(&env, b"hello").unwrap();
        queue.queued(&env.id);

        // First attempt: alice deferred, bad@ failed; the message stays for alice.
        until("the first attempt", || {
            spool.envelope(&env.id).is_ok_and(|e| e.recipients[1].done)
        })
        .await;
        let after_first = spool.envelope(&env.id).unwrap();
        assert!(!after_first.recipients[0].done);
        assert_eq!(after_first.recipients[0].attempts, 1);
        assert!(after_first.recipients[1].failed);
        // The retry delivers alice only, knowing an earlier attempt happened.
        until("the retry", || spool.envelope(&env.id).is_err()).await;
        let seen = script.seen.lock().unwrap().clone();
        let ours: Vec<_> = seen.iter().filter(|(id, ..)| *id == env.id).collect();
        assert_eq!(ours[0].1, [0, 1]);
        assert!(!ours[0].2, "a fresh message is not a repeat");
        assert_eq!(ours[1].1, [0]);
        assert!(ours[1].2, "a retry may find earlier copies");

        // The bounce: from the null sender to the original sender, naming bad@.
        until("the bounce's delivery", || {
            script
                .envelopes
                .lock()
                .unwrap()
                .iter()
                .any(|(sender, ..)| sender.is_empty())
        })
        .await;
        let envelopes = script.envelopes.lock().unwrap().clone();
        let (_, to, dsn) = envelopes
            .iter()
            .find(|(sender, ..)| sender.is_empty())
            .unwrap();
        assert_eq!(to, "sender@remote.test");
        let dsn = String::from_utf8_lossy(dsn);
        assert!(
            dsn.contains("Final-Recipient: rfc822; bad@example.org"),
            "{dsn}"
        );
        assert!(
            !dsn.contains("alice@example.org"),
            "only the failed recipient: {dsn}"
        );
    }

    #[tokio::test]
    async fn a_message_found_in_the_spool_at_start_may_have_been_stored() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let env = envelope(&["alice@example.org"]);
        spool.accept(&env, b"hello").unwrap();
        let script = Arc::new(Script::default());
        script.calls.store(1, Ordering::SeqCst);
        let policy = RetryPolicy {
            first: Duration::from_secs(1),
            max: Duration::from_secs(1),
            window: Duration::from_secs(3600),
        };
        let (_stop, shutdown) = watch::channel(false);
        let (_queue, _task) = start(
            spool.clone(),
            script.clone(),
            policy,
            "mx.test".into(),
            shutdown,
        );
        until("delivery after a restart", || {
            spool.envelope(&env.id).is_err()
        })
        .await;
        let seen = script.seen.lock().unwrap().clone();
        assert_eq!(seen, [(env.id.clone(), vec![0], true)]);
    }
}

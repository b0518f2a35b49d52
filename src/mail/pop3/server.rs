//! POP3 on sockets: the listeners, the login (the shared [`Authority`] with its
//! cache and throttle), the maildrop lock, and the store operations a session asks
//! for.
//!
//! The maildrop is the account's INBOX on this node. It is locked for the session
//! with an exclusive `flock` on `pigeonair-pop3.lock` in the Maildir, so a second
//! session (on this node, or on another node of a shared root) gets `[IN-USE]` and two
//! sessions can never both delete. At login new/ moves to cur/; deletions happen at
//! QUIT only (RFC 1939's UPDATE state).

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use super::session::{Answer, Listed, Question, Session, SessionConfig, Step};
use crate::auth::Authority;
use crate::mail::deliver::Delivery;
use crate::mail::store::{Folder, FolderName};
use crate::metrics::{self, inc};
use crate::net::listener::{BoxFuture, Protocol, Refusal};
use crate::net::tls::ListenerTls;

/// How long a POP3 client may stay silent by default (RFC 1939 asks for at least 10
/// minutes).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(600);

/// The POP3 limits in force: the node's under the cluster's `pop3.*` settings.
#[derive(Debug, Clone, Copy)]
pub struct Pop3Limits {
    /// Connections per client address.
    pub max_per_address: usize,
    /// How long a silent client is kept.
    pub idle: Duration,
}

impl Pop3Limits {
    /// `local_per_address` (the node's `[mail]` value) under the cluster's settings.
    pub fn new(local_per_address: usize, cluster: &crate::settings::Pop3Settings) -> Pop3Limits {
        Pop3Limits {
            max_per_address: cluster
                .max_connections_per_address
                .unwrap_or(local_per_address),
            idle: cluster
                .idle_timeout_secs
                .map_or(DEFAULT_IDLE, Duration::from_secs),
        }
    }
}

/// One POP3 listener, plain (STLS offered with a certificate) or implicit TLS.
pub struct Pop3Listener {
    /// Logins.
    pub auth: Arc<Authority>,
    /// The store and where each account lives.
    pub delivery: Arc<Delivery>,
    /// The name in the greeting.
    pub hostname: String,
    /// The limits in force, shared by the node's POP3 listeners and replaced when the
    /// cluster settings change.
    pub limits: Arc<std::sync::RwLock<Pop3Limits>>,
    /// The listener's TLS.
    pub tls: ListenerTls,
}

impl Protocol for Pop3Listener {
    fn name(&self) -> &'static str {
        "pop3"
    }

    fn max_connections_per_address(&self) -> usize {
        self.limits().max_per_address
    }

    fn refuse(&self, mut stream: TcpStream, why: Refusal) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let line = format!("-ERR [SYS/TEMP] {}\r\n", why.text());
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(line.as_bytes()))
                .await;
        })
    }

    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        session: u64,
        shutdown: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        let span = tracing::info_span!("pop3", session, %peer);
        Box::pin(
            self.serve_connection(stream, peer.ip(), shutdown)
                .instrument(span),
        )
    }
}

impl Pop3Listener {
    fn limits(&self) -> Pop3Limits {
        *self.limits.read().unwrap_or_else(|p| p.into_inner())
    }

    async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: IpAddr,
        shutdown: watch::Receiver<bool>,
    ) {
        inc(&metrics::POP3_CONNECTIONS);
        let config = |stls, tls| SessionConfig {
            hostname: self.hostname.clone(),
            peer,
            stls,
            tls,
        };
        let mut maildrop = Maildrop { peer, open: None };
        match &self.tls {
            ListenerTls::Implicit(acceptor) => {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream)).await
                else {
                    return;
                };
                self.run(
                    tls,
                    Session::new(config(false, true)),
                    &mut maildrop,
                    shutdown,
                )
                .await;
            }
            ListenerTls::Plain(acceptor) => {
                let session = Session::new(config(acceptor.is_some(), false));
                let upgrade = self
                    .run(stream, session, &mut maildrop, shutdown.clone())
                    .await;
                if let (Some((stream, mut session)), Some(acceptor)) = (upgrade, acceptor) {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    session.tls_started();
                    self.run(tls, session, &mut maildrop, shutdown).await;
                }
            }
        }
    }

    /// Drive `session` until it closes; on STLS hand back the stream and session.
    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        mut stream: S,
        mut session: Session,
        maildrop: &mut Maildrop,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<(S, Session)> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match session.step() {
                Step::Ask(q) => {
                    let answer = self.answer(maildrop, q).await;
                    session.answer(answer);
                }
                Step::NeedInput => {
                    let out = session.take_output();
                    if stream.write_all(&out).await.is_err() {
                        return None;
                    }
                    let read = tokio::select! {
                        r = tokio::time::timeout(self.limits().idle, stream.read(&mut buf)) => r,
                        _ = shutdown.changed() => return None,
                    };
                    match read {
                        Ok(Ok(n)) if n > 0 => session.feed(&buf[..n]),
                        Ok(_) => return None,
                        Err(_) => {
                            let _ = stream
                                .write_all(b"-ERR [SYS/TEMP] idle too long, closing\r\n")
                                .await;
                            return None;
                        }
                    }
                }
                Step::StartTls => {
                    let out = session.take_output();
                    let _ = stream.write_all(&out).await;
                    return Some((stream, session));
                }
                Step::Close => {
                    let out = session.take_output();
                    let _ = stream.write_all(&out).await;
                    let _ = stream.shutdown().await;
                    return None;
                }
            }
        }
    }

    async fn answer(&self, maildrop: &mut Maildrop, q: Question) -> Answer {
        match q {
            Question::Login { user, password } => {
                let Some(login) = self
                    .auth
                    .authenticate(&user, &password, maildrop.peer)
                    .await
                else {
                    inc(&metrics::POP3_LOGINS_FAILED);
                    return Answer::Opened(Err("[AUTH] invalid user name or password".into()));
                };
                if pop_disabled(&self.delivery, &login.identity.dn) {
                    inc(&metrics::POP3_LOGINS_FAILED);
                    return Answer::Opened(Err("[AUTH] POP3 is disabled for this account".into()));
                }
                let delivery = self.delivery.clone();
                let address = login.mailbox.to_text();
                let opened = tokio::task::spawn_blocking(move || open(&delivery, &address)).await;
                match opened {
                    Ok(Ok((folder, lock, listed))) => {
                        tracing::info!(user = %user, messages = listed.len(), "maildrop opened");
                        maildrop.open = Some((folder, lock));
                        Answer::Opened(Ok(listed))
                    }
                    Ok(Err(why)) => Answer::Opened(Err(why)),
                    Err(_) => Answer::Opened(Err("[SYS/TEMP] internal error".into())),
                }
            }
            Question::Message { id } => {
                let Some((folder, _)) = &maildrop.open else {
                    return Answer::Message(Err("no maildrop".into()));
                };
                let folder = folder.clone();
                match tokio::task::spawn_blocking(move || folder.read(&id)).await {
                    Ok(Ok(bytes)) => Answer::Message(Ok(bytes)),
                    Ok(Err(e)) => Answer::Message(Err(format!("[SYS/TEMP] {e}"))),
                    Err(_) => Answer::Message(Err("[SYS/TEMP] internal error".into())),
                }
            }
            Question::Commit { deleted } => {
                let Some((folder, lock)) = maildrop.open.take() else {
                    return Answer::Committed(Ok(()));
                };
                let done = tokio::task::spawn_blocking(move || {
                    let mut failed = None;
                    for id in &deleted {
                        if let Err(e) = folder.expunge(id) {
                            failed = Some(e.to_string());
                        }
                    }
                    drop(lock);
                    failed.map_or(Ok(()), Err)
                })
                .await;
                Answer::Committed(done.unwrap_or_else(|_| Err("internal error".into())))
            }
        }
    }
}

/// Whether the account's `accountStatus` is `nopop` (qmail-ldap: mail is delivered,
/// POP3 refused).
fn pop_disabled(delivery: &Delivery, dn: &str) -> bool {
    let entry = delivery
        .directory()
        .view()
        .ok()
        .and_then(|v| v.find(dn).ok().flatten());
    entry.is_some_and(|e| {
        e.first_str("accountStatus")
            .is_some_and(|s| s.eq_ignore_ascii_case("nopop"))
    })
}

/// The open maildrop of a session and the lock that keeps it.
struct Maildrop {
    peer: IpAddr,
    open: Option<(Folder, File)>,
}

/// Open and lock the INBOX of `address` on this node: its messages in delivery order.
fn open(delivery: &Delivery, address: &str) -> Result<(Folder, File, Vec<Listed>), String> {
    use crate::mail::deliver::Location;
    let account = match delivery.locate(address) {
        Ok(Location::Here(a)) => a,
        Ok(Location::Home(home, _)) => {
            return Err(format!(
                "[SYS/TEMP] this mailbox is served by {home}; connect there"
            ))
        }
        Err(_) => return Err("[AUTH] no mailbox for this login".into()),
    };
    let mailbox = delivery
        .store()
        .mailbox(&account.mailbox.domain, &account.mailbox.local)
        .map_err(|e| format!("[SYS/PERM] {e}"))?;
    let inbox = FolderName::inbox();
    mailbox
        .ensure_folder(&inbox)
        .map_err(|e| format!("[SYS/TEMP] {e}"))?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(mailbox.path().join("pigeonair-pop3.lock"))
        .map_err(|e| format!("[SYS/TEMP] {e}"))?;
    if lock.try_lock().is_err() {
        return Err("[IN-USE] the maildrop is in use by another session".into());
    }
    let folder = mailbox
        .open_folder(&inbox)
        .map_err(|e| format!("[SYS/TEMP] {e}"))?;
    folder.take_new().map_err(|e| format!("[SYS/TEMP] {e}"))?;
    let listed = folder
        .scan()
        .map_err(|e| format!("[SYS/TEMP] {e}"))?
        .into_iter()
        .map(|m| Listed {
            id: m.id,
            size: m.size,
        })
        .collect();
    Ok((folder, lock, listed))
}

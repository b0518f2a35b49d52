//! SMTP on sockets: the MX and submission listeners, the LMTP service on the cluster
//! port, and the answers to the session's questions.
//!
//! A session's questions are answered here: AUTH by [`Authority::authenticate`]
//! (its cache and throttle), RCPT by the typed directory API on the local replica,
//! and the message by the spool, fsynced before the reply. LMTP sessions (other nodes
//! handing over mail for the accounts homed here) store each copy directly.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use super::proxy;
use super::session::{
    Answer, Mode, Question, RecipientVerdict, Reply, Session, SessionConfig, Step, Transaction,
};
use crate::auth::Authority;
use crate::cluster::transport::Conn;
use crate::config::MailConfig;
use crate::directory::routing::{self, AccountStatus, Resolution, Target};
use crate::mail::deliver::{self, Delivery, Location, Unplaced};
use crate::mail::lmtp;
use crate::mail::queue::{Outcome, Queue};
use crate::mail::spool::{unix_now, Destination, Envelope, Recipient};
use crate::mail::store::{DeliveryKey, StoreError};
use crate::metrics::{self, inc};
use crate::net::limits::AddressSlots;
use crate::net::listener::{BoxFuture, Protocol, Refusal};
use crate::net::tls::{self, ListenerTls};
use crate::settings::SmtpSettings;

/// The limits in force (the node's `[mail]` values under the cluster's `smtp.*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message in bytes.
    pub max_message_bytes: usize,
    /// Most recipients of one message.
    pub max_recipients: usize,
    /// Connections per client address.
    pub max_connections_per_address: usize,
    /// How long a command may take to arrive.
    pub command_timeout: Duration,
    /// How long the client may pause inside the data.
    pub data_timeout: Duration,
}

impl Limits {
    /// The node's values, overridden by the cluster's.
    pub fn new(local: &MailConfig, cluster: &SmtpSettings) -> Limits {
        Limits {
            max_message_bytes: cluster.max_message_bytes.unwrap_or(local.max_message_bytes),
            max_recipients: cluster.max_recipients.unwrap_or(local.max_recipients),
            max_connections_per_address: cluster
                .max_connections_per_address
                .unwrap_or(local.max_connections_per_address),
            command_timeout: Duration::from_secs(
                cluster
                    .command_timeout_secs
                    .unwrap_or(local.command_timeout_secs),
            ),
            data_timeout: Duration::from_secs(
                cluster.data_timeout_secs.unwrap_or(local.data_timeout_secs),
            ),
        }
    }
}

/// What every SMTP and LMTP session of a node shares.
pub struct MailContext {
    /// The node's `[mail]` configuration.
    pub config: MailConfig,
    /// The name in greetings and headers.
    pub hostname: String,
    /// Logins.
    pub auth: Arc<Authority>,
    /// The spool's queue.
    pub queue: Queue,
    /// Final delivery (and where each mailbox is).
    pub delivery: Arc<Delivery>,
    /// The limits in force, replaced when the cluster settings change.
    pub limits: RwLock<Limits>,
    /// Connections per client address, over all SMTP listeners.
    pub address_slots: Arc<AddressSlots>,
    /// Turns true when the node stops (LMTP sessions end with it).
    pub shutdown: watch::Receiver<bool>,
}

impl MailContext {
    /// The limits now.
    pub fn limits(&self) -> Limits {
        *self.limits.read().unwrap_or_else(|p| p.into_inner())
    }

    fn session_config(
        &self,
        mode: Mode,
        peer: IpAddr,
        starttls: bool,
        tls: Option<String>,
    ) -> SessionConfig {
        let limits = self.limits();
        SessionConfig {
            mode,
            hostname: self.hostname.clone(),
            peer,
            max_message_bytes: limits.max_message_bytes,
            max_recipients: limits.max_recipients,
            starttls,
            tls,
        }
    }
}

/// One SMTP listener: MX or submission, plain (STARTTLS when a certificate is
/// configured) or implicit TLS.
pub struct SmtpListener {
    /// The shared context.
    pub ctx: Arc<MailContext>,
    /// MX or submission.
    pub mode: Mode,
    /// The listener's TLS.
    pub tls: ListenerTls,
}

impl Protocol for SmtpListener {
    fn name(&self) -> &'static str {
        match self.mode {
            Mode::Mx => "smtp",
            Mode::Submission => "submission",
            Mode::Lmtp => "lmtp",
        }
    }

    fn max_connections_per_address(&self) -> usize {
        self.ctx.limits().max_connections_per_address
    }

    fn refuse(&self, mut stream: TcpStream, why: Refusal) -> BoxFuture<'static, ()> {
        inc(&metrics::SMTP_REFUSED);
        Box::pin(async move {
            let line = format!("421 4.7.0 {}\r\n", why.text());
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
        let span = tracing::info_span!("smtp", session, %peer, mode = self.name());
        Box::pin(
            self.serve_connection(stream, peer, shutdown)
                .instrument(span),
        )
    }
}

impl SmtpListener {
    async fn serve_connection(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) {
        inc(&metrics::SMTP_CONNECTIONS);
        let mut client = peer.ip();
        if self.ctx.config.proxy_protocol_from.contains(&peer.ip()) {
            let header =
                tokio::time::timeout(Duration::from_secs(10), proxy::read_header(&mut stream))
                    .await;
            match header {
                Ok(Ok(Some(real))) => {
                    tracing::debug!(client = %real, "PROXY header from the balancer");
                    client = real.ip();
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "refused: bad PROXY header from a balancer");
                    return;
                }
                Err(_) => {
                    tracing::warn!("refused: no PROXY header from a balancer in time");
                    return;
                }
            }
        }
        let answers = FrontAnswers {
            ctx: self.ctx.clone(),
            peer: client,
        };
        match &self.tls {
            ListenerTls::Implicit(acceptor) => {
                let tls =
                    match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let summary = summary(&tls);
                let session =
                    Session::new(
                        self.ctx
                            .session_config(self.mode, client, false, Some(summary)),
                    );
                let _ = run(tls, session, &answers, &self.ctx, None, shutdown).await;
            }
            ListenerTls::Plain(acceptor) => {
                let session = Session::new(self.ctx.session_config(
                    self.mode,
                    client,
                    acceptor.is_some(),
                    None,
                ));
                let upgrade = run(
                    stream,
                    session,
                    &answers,
                    &self.ctx,
                    acceptor.as_ref(),
                    shutdown.clone(),
                )
                .await;
                if let Some((stream, mut session, acceptor)) = upgrade {
                    let tls = match tokio::time::timeout(
                        Duration::from_secs(30),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        _ => {
                            tracing::debug!("STARTTLS handshake failed");
                            return;
                        }
                    };
                    session.tls_started(summary(&tls));
                    let _ = run(tls, session, &answers, &self.ctx, None, shutdown).await;
                }
            }
        }
    }
}

fn summary<S>(tls: &tokio_rustls::server::TlsStream<S>) -> String {
    let (version, cipher) = tls::session_summary(tls);
    format!("using {version} with cipher {cipher}")
}

/// Answers a session's questions.
trait Answers: Send + Sync {
    fn answer<'a>(&'a self, question: Question) -> BoxFuture<'a, Answer>;
}

/// Drive `session` over `stream` until it closes; when it asks for STARTTLS and an
/// acceptor is given, hand back the plain stream and the session to upgrade.
async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut stream: S,
    mut session: Session,
    answers: &dyn Answers,
    ctx: &MailContext,
    starttls: Option<&tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<(S, Session, tokio_rustls::TlsAcceptor)> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match session.step() {
            Step::Ask(question) => {
                let answer = answers.answer(question).await;
                session.answer(answer);
            }
            Step::NeedInput => {
                if write_out(&mut stream, &mut session).await.is_err() {
                    return None;
                }
                let limits = ctx.limits();
                let timeout = if session.in_data() {
                    limits.data_timeout
                } else {
                    limits.command_timeout
                };
                let read = tokio::select! {
                    r = tokio::time::timeout(timeout, stream.read(&mut buf)) => r,
                    _ = shutdown.changed() => {
                        let _ = stream.write_all(b"421 4.3.2 shutting down\r\n").await;
                        return None;
                    }
                };
                match read {
                    Ok(Ok(0)) | Ok(Err(_)) => return None,
                    Ok(Ok(n)) => session.feed(&buf[..n]),
                    Err(_) => {
                        tracing::info!("closing: client timed out");
                        session.timed_out();
                    }
                }
            }
            Step::StartTls => {
                if write_out(&mut stream, &mut session).await.is_err() {
                    return None;
                }
                return starttls.map(|a| (stream, session, a.clone()));
            }
            Step::Close => {
                let _ = write_out(&mut stream, &mut session).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.shutdown()).await;
                return None;
            }
        }
    }
}

async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
) -> std::io::Result<()> {
    let out = session.take_output();
    if !out.is_empty() {
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
    Ok(())
}

/// The answers of the public listeners: logins, the recipient check, the spool.
struct FrontAnswers {
    ctx: Arc<MailContext>,
    peer: IpAddr,
}

impl Answers for FrontAnswers {
    fn answer<'a>(&'a self, question: Question) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            match question {
                Question::Authenticate { login, password } => {
                    let found = self
                        .ctx
                        .auth
                        .authenticate(&login, &password, self.peer)
                        .await;
                    match found {
                        Some(l) => {
                            inc(&metrics::SMTP_AUTH_OK);
                            tracing::info!(%login, "authenticated");
                            Answer::Authenticated(Some(
                                l.addresses.iter().map(|a| a.to_text()).collect(),
                            ))
                        }
                        None => {
                            inc(&metrics::SMTP_AUTH_FAILED);
                            tracing::info!(%login, "authentication failed");
                            Answer::Authenticated(None)
                        }
                    }
                }
                Question::Recipient {
                    address,
                    authenticated,
                } => {
                    let ctx = self.ctx.clone();
                    let verdict = tokio::task::spawn_blocking(move || {
                        recipient(&ctx, &address, authenticated)
                    })
                    .await
                    .unwrap_or_else(|_| {
                        RecipientVerdict::Refuse(Reply::new(451, "4.3.0", "internal error"))
                    });
                    if matches!(verdict, RecipientVerdict::Refuse(_)) {
                        inc(&metrics::SMTP_REJECTED_RCPT);
                    }
                    Answer::Recipient(verdict)
                }
                Question::Deliver(transaction) => {
                    Answer::Delivered(vec![self.spool(transaction).await])
                }
            }
        })
    }
}

impl FrontAnswers {
    async fn spool(&self, t: Transaction) -> Reply {
        let recipients: Vec<Recipient> = t
            .recipients
            .iter()
            .flat_map(|r| {
                r.destinations
                    .iter()
                    .map(|d| Recipient::new(r.rcpt.clone(), d.clone()))
            })
            .collect();
        if recipients.is_empty() {
            // Every recipient reached nothing to deliver (an empty alias, say).
            inc(&metrics::SMTP_ACCEPTED);
            return Reply::new(
                250,
                "2.0.0",
                format!("OK, nothing to deliver (id {})", t.id),
            );
        }
        let envelope = Envelope {
            id: t.id.clone(),
            sender: t.sender,
            received_at: unix_now(),
            size: t.message.len() as u64,
            recipients,
        };
        let spool = self.ctx.queue.spool().clone();
        let message = t.message;
        let env = envelope.clone();
        let accepted = tokio::task::spawn_blocking(move || spool.accept(&env, &message)).await;
        match accepted {
            Ok(Ok(())) => {
                inc(&metrics::SMTP_ACCEPTED);
                tracing::info!(id = %t.id, size = envelope.size, recipients = envelope.recipients.len(), "accepted");
                self.ctx.queue.queued(&t.id);
                Reply::new(250, "2.0.0", format!("OK queued as {}", t.id))
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot spool a message");
                Reply::new(
                    451,
                    "4.3.0",
                    "cannot queue the message now; try again later",
                )
            }
            Err(_) => Reply::new(451, "4.3.0", "internal error; try again later"),
        }
    }
}

/// The RCPT check on the local replica (blocking).
fn recipient(ctx: &MailContext, address: &str, authenticated: bool) -> RecipientVerdict {
    let refuse =
        |code, status, text: String| RecipientVerdict::Refuse(Reply::new(code, status, text));
    let resolved = match routing::resolve_recipient(ctx.delivery.directory(), address) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "recipient lookup failed");
            return refuse(
                451,
                "4.3.0",
                "directory unavailable; try again later".into(),
            );
        }
    };
    match resolved {
        Resolution::Foreign if authenticated => {
            RecipientVerdict::Accept(vec![Destination::External(address.to_string())])
        }
        Resolution::Foreign => refuse(554, "5.7.1", format!("<{address}>: relay access denied")),
        Resolution::Unknown => refuse(550, "5.1.1", format!("<{address}>: no such user here")),
        Resolution::Delivers(targets) => {
            let mut destinations = Vec::new();
            let mut disabled = 0;
            let mut accounts = 0;
            for t in targets {
                match t {
                    Target::External(a) => destinations.push(Destination::External(a)),
                    Target::Account(a) => {
                        accounts += 1;
                        if a.status == AccountStatus::Disabled {
                            disabled += 1;
                            continue;
                        }
                        if a.store_locally {
                            // The quota is known here only for a mailbox this node stores.
                            if let Location::Here(a) = ctx.delivery.location_of(a.clone()) {
                                if let Err(StoreError::OverQuota) = ctx.delivery.room_for(&a, 1) {
                                    if accounts == 1 && destinations.is_empty() {
                                        return refuse(
                                            452,
                                            "4.2.2",
                                            format!("<{address}>: mailbox full"),
                                        );
                                    }
                                }
                            }
                            destinations.push(Destination::Mailbox(a.mailbox.to_text()));
                        }
                        if a.follow_forwards {
                            for f in &a.forwards {
                                destinations.push(forward_destination(ctx, f));
                            }
                        }
                    }
                }
            }
            if destinations.is_empty() && disabled > 0 {
                return refuse(550, "5.2.1", format!("<{address}>: mailbox disabled"));
            }
            RecipientVerdict::Accept(destinations)
        }
    }
}

/// A forward to a cluster address goes to that mailbox, any other outside.
fn forward_destination(ctx: &MailContext, forward: &str) -> Destination {
    match routing::resolve_recipient(ctx.delivery.directory(), forward) {
        Ok(Resolution::Delivers(targets)) => targets
            .into_iter()
            .find_map(|t| match t {
                Target::Account(a) => Some(Destination::Mailbox(a.mailbox.to_text())),
                Target::External(_) => None,
            })
            .unwrap_or_else(|| Destination::External(forward.to_string())),
        _ => Destination::External(forward.to_string()),
    }
}

/// Serve one LMTP connection from another node on the cluster port.
pub async fn serve_lmtp(ctx: Arc<MailContext>, conn: Conn) {
    let peer = conn.peer_addr;
    let span = tracing::info_span!("lmtp", %peer, node = ?conn.peer_node);
    async move {
        let answers = LmtpAnswers { ctx: ctx.clone() };
        let session = Session::new(ctx.session_config(
            Mode::Lmtp,
            peer.ip(),
            false,
            Some("cluster mTLS".into()),
        ));
        let shutdown = ctx.shutdown.clone();
        let _ = run(conn.stream, session, &answers, &ctx, None, shutdown).await;
    }
    .instrument(span)
    .await
}

/// The answers of the LMTP service: recipients must be homed here.
struct LmtpAnswers {
    ctx: Arc<MailContext>,
}

impl Answers for LmtpAnswers {
    fn answer<'a>(&'a self, question: Question) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            match question {
                Question::Authenticate { .. } => Answer::Authenticated(None),
                Question::Recipient { address, .. } => {
                    let delivery = self.ctx.delivery.clone();
                    let located =
                        tokio::task::spawn_blocking(move || (delivery.locate(&address), address))
                            .await;
                    let verdict = match located {
                        Ok((Ok(Location::Here(a)), _)) => {
                            RecipientVerdict::Accept(vec![Destination::Mailbox(
                                a.mailbox.to_text(),
                            )])
                        }
                        Ok((Ok(Location::Home(home, _)), address)) => {
                            RecipientVerdict::Refuse(Reply::new(
                                450,
                                "4.4.0",
                                format!("<{address}> is homed on {home}, not here"),
                            ))
                        }
                        Ok((Err(Unplaced::Unknown | Unplaced::Foreign), address)) => {
                            RecipientVerdict::Refuse(Reply::new(
                                550,
                                "5.1.1",
                                format!("<{address}>: no such user here"),
                            ))
                        }
                        Ok((Err(Unplaced::Disabled), address)) => RecipientVerdict::Refuse(
                            Reply::new(550, "5.2.1", format!("<{address}>: mailbox disabled")),
                        ),
                        _ => RecipientVerdict::Refuse(Reply::new(
                            451,
                            "4.3.0",
                            "directory unavailable",
                        )),
                    };
                    Answer::Recipient(verdict)
                }
                Question::Deliver(t) => Answer::Delivered(self.store(t).await),
            }
        })
    }
}

impl LmtpAnswers {
    async fn store(&self, t: Transaction) -> Vec<Reply> {
        let delivery = self.ctx.delivery.clone();
        tokio::task::spawn_blocking(move || {
            let (token, maybe_stored) = match &t.env_id {
                Some(e) => {
                    let (id, again) = lmtp::parse_env_id(e);
                    (id.to_string(), again)
                }
                None => (t.id.clone(), false),
            };
            let key = DeliveryKey {
                token: &token,
                at_micros: deliver::accepted_micros(&token, unix_now()),
                maybe_stored,
            };
            t.recipients
                .iter()
                .map(|r| {
                    let Some(Destination::Mailbox(address)) = r.destinations.first() else {
                        return Reply::new(550, "5.1.1", "no mailbox");
                    };
                    let account = match delivery.locate(address) {
                        Ok(Location::Here(a)) => a,
                        _ => {
                            return Reply::new(
                                450,
                                "4.4.0",
                                format!("<{address}> cannot be stored here now"),
                            )
                        }
                    };
                    match deliver::store_copy(
                        delivery.store(),
                        &account,
                        &t.sender,
                        &t.message,
                        &key,
                    ) {
                        Outcome::Delivered => {
                            inc(&metrics::LMTP_RECEIVED);
                            Reply::new(250, "2.0.0", format!("<{address}> stored"))
                        }
                        Outcome::Deferred(why) => Reply::new(451, "4.3.0", why),
                        Outcome::Failed(why) => Reply::new(550, "5.0.0", why),
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_else(|_| vec![Reply::new(451, "4.3.0", "internal error")])
    }
}

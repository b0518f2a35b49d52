//! IMAP on sockets: the listeners, the I/O loop around `imap-next`'s server flow,
//! the login (the shared [`Authority`], its cache and failed-login throttle),
//! STARTTLS and IDLE.
//!
//! `imap-next` reads commands with their literals (answering `+` to synchronizing
//! literals, refusing ones over the literal limit with a tagged BAD) and encodes the
//! responses; this loop writes them, batching everything a command produced into one
//! write, and runs the commands on the [`Session`]. Store work runs on the runtime's
//! blocking section (`block_in_place`), so one slow disk does not stall other
//! sessions' tasks.
//!
//! IDLE (RFC 2177) waits on the mailbox's change counter (every delivery and change
//! made in this process bumps it) and, for changes made by other processes on a
//! shared root, looks again every [`IDLE_POLL`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use imap_next::imap_types::{
    auth::{AuthMechanism, AuthenticateData},
    command::{Command, CommandBody},
    core::Tag,
    response::{Code, CommandContinuationRequest, Greeting, GreetingKind, Response, Status},
};
use imap_next::server::{Error as FlowError, Event, Options, ResponseHandle, Server};
use imap_next::{Interrupt, Io, State};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::Instrument;

use super::session::{self, bad, bye, no, ok, other_code, Session, SessionConfig, User};
use crate::auth::Authority;
use crate::mail::deliver::{quota_of, Delivery, Location};
use crate::metrics::{self, inc};
use crate::net::listener::{BoxFuture, Protocol, Refusal};
use crate::net::tls::ListenerTls;

/// How long a logged-in client may stay silent by default: RFC 3501 §5.4 asks for at
/// least 30 minutes.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30 * 60);
/// How long a client may stay silent before logging in.
pub const LOGIN_IDLE: Duration = Duration::from_secs(180);
/// How often an IDLE session looks for changes made by other processes.
pub const IDLE_POLL: Duration = Duration::from_secs(5);
/// Longest command line by default, literals excluded (Dovecot's is 64 KiB).
pub const DEFAULT_MAX_LINE: u32 = 64 * 1024;
/// Largest literal by default (APPEND included): 50 MiB.
pub const DEFAULT_MAX_LITERAL: u32 = 50 << 20;
/// Malformed commands in a row after which the session is closed.
const MAX_BAD_IN_A_ROW: u32 = 20;

/// The IMAP limits in force: the node's under the cluster's `imap.*` settings.
#[derive(Debug, Clone, Copy)]
pub struct ImapLimits {
    /// Connections per client address.
    pub max_per_address: usize,
    /// Sessions per account on this node.
    pub max_per_account: usize,
    /// How long a silent logged-in client is kept (never under 30 minutes).
    pub idle: Duration,
    /// Longest command line, literals excluded.
    pub max_line: u32,
    /// Largest literal.
    pub max_literal: u32,
}

impl ImapLimits {
    /// `local_per_address` (the node's `[mail]` value) under the cluster's settings.
    pub fn new(local_per_address: usize, cluster: &crate::settings::ImapSettings) -> ImapLimits {
        ImapLimits {
            max_per_address: cluster
                .max_connections_per_address
                .unwrap_or(local_per_address),
            max_per_account: cluster.max_connections_per_account.unwrap_or(50),
            idle: cluster
                .idle_timeout_secs
                .map_or(DEFAULT_IDLE, Duration::from_secs)
                .max(DEFAULT_IDLE),
            max_line: cluster.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE).max(1024),
            max_literal: cluster.max_literal_bytes.unwrap_or(DEFAULT_MAX_LITERAL),
        }
    }
}

/// Sessions per account on this node, for `imap.maxConnectionsPerAccount`.
#[derive(Debug, Default)]
pub struct AccountSlots {
    held: Mutex<HashMap<String, usize>>,
}

/// One session's place among its account's; given back on drop.
#[derive(Debug)]
pub struct AccountSlot {
    slots: Arc<AccountSlots>,
    account: String,
}

impl AccountSlots {
    /// A place for one more session of `account`, unless it has `max` already.
    pub fn acquire(self: &Arc<Self>, account: &str, max: usize) -> Option<AccountSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(account.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AccountSlot {
            slots: self.clone(),
            account: account.to_owned(),
        })
    }
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.account);
            }
        }
    }
}

/// One IMAP listener, plain (STARTTLS offered with a certificate) or implicit TLS.
pub struct ImapListener {
    /// Logins.
    pub auth: Arc<Authority>,
    /// The store and where each account lives.
    pub delivery: Arc<Delivery>,
    /// The name in the greeting.
    pub hostname: String,
    /// The limits in force, shared by the node's IMAP listeners and replaced when the
    /// cluster settings change.
    pub limits: Arc<RwLock<ImapLimits>>,
    /// Sessions per account, shared by the node's IMAP listeners.
    pub accounts: Arc<AccountSlots>,
    /// The listener's TLS.
    pub tls: ListenerTls,
}

impl Protocol for ImapListener {
    fn name(&self) -> &'static str {
        "imap"
    }

    fn max_connections_per_address(&self) -> usize {
        self.limits().max_per_address
    }

    fn refuse(&self, mut stream: TcpStream, why: Refusal) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let line = format!("* BYE [UNAVAILABLE] {}\r\n", why.text());
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
        let span = tracing::info_span!("imap", session, %peer);
        Box::pin(
            self.serve_connection(stream, peer.ip(), shutdown)
                .instrument(span),
        )
    }
}

/// What one connection holds besides the session.
struct Conn {
    peer: IpAddr,
    slot: Option<AccountSlot>,
}

/// How a run of the I/O loop ended.
enum Ended<S> {
    Closed,
    StartTls(S),
}

impl ImapListener {
    fn limits(&self) -> ImapLimits {
        *self.limits.read().unwrap_or_else(|p| p.into_inner())
    }

    async fn serve_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: IpAddr,
        shutdown: watch::Receiver<bool>,
    ) {
        inc(&metrics::IMAP_CONNECTIONS);
        let mut conn = Conn { peer, slot: None };
        match &self.tls {
            ListenerTls::Implicit(acceptor) => {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream)).await
                else {
                    return;
                };
                let mut session = Session::new(SessionConfig {
                    peer,
                    tls: true,
                    starttls: false,
                });
                self.run(tls, &mut session, &mut conn, false, shutdown)
                    .await;
            }
            ListenerTls::Plain(acceptor) => {
                let mut session = Session::new(SessionConfig {
                    peer,
                    tls: false,
                    starttls: acceptor.is_some(),
                });
                let ended = self
                    .run(stream, &mut session, &mut conn, false, shutdown.clone())
                    .await;
                if let (Ended::StartTls(stream), Some(acceptor)) = (ended, acceptor) {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(30), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    session.tls_started();
                    self.run(tls, &mut session, &mut conn, true, shutdown).await;
                }
            }
        }
    }

    /// Drive one session over `stream` until it ends or asks for STARTTLS. After
    /// STARTTLS (`after_tls`) the flow starts afresh, so nothing the client sent in
    /// plain text before the handshake is taken as a command, and no second greeting
    /// is written.
    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        mut stream: S,
        session: &mut Session,
        conn: &mut Conn,
        after_tls: bool,
        mut shutdown: watch::Receiver<bool>,
    ) -> Ended<S> {
        let limits = self.limits();
        let mut options = Options::default();
        options.crlf_relaxed = true;
        options.max_literal_size = limits.max_literal;
        options.max_command_size = limits.max_literal.saturating_add(limits.max_line);
        let _ = options.set_literal_accept_text("ready for the literal".into());
        let _ = options.set_literal_reject_text(format!(
            "literal too large (at most {} bytes)",
            limits.max_literal
        ));
        let greeting = Greeting {
            kind: GreetingKind::Ok,
            code: Some(Code::Capability(session.capabilities())),
            text: session::text(&format!("{} PigeonAir IMAP4rev1 ready", self.hostname)),
        };
        let mut server = Server::new(options, greeting);
        let mut discard_greeting = after_tls;
        let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut buf = vec![0u8; 64 * 1024];
        let mut close_after: Option<ResponseHandle> = None;
        let mut starttls_after: Option<ResponseHandle> = None;
        let mut authenticating: Option<Tag<'static>> = None;
        let mut idling: Option<(Tag<'static>, watch::Receiver<u64>)> = None;
        let mut bad_in_a_row = 0u32;
        // `imap-next` bounds a whole command, literals included, by
        // `max_command_size`; the lines between literals are held to `max_line` here
        // as they arrive, so a client cannot make the server buffer a huge line.
        let mut lines = LineGuard::default();
        loop {
            let event = match server.next() {
                Ok(event) => event,
                Err(Interrupt::Io(Io::Output(bytes))) => {
                    if !discard_greeting {
                        out.extend_from_slice(&bytes);
                    }
                    continue;
                }
                Err(Interrupt::Io(Io::NeedMoreInput)) => {
                    if !out.is_empty() {
                        if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                            return Ended::Closed;
                        }
                        out.clear();
                    }
                    let silent_limit = if session.authenticated() {
                        limits.idle
                    } else {
                        LOGIN_IDLE
                    };
                    let read = match &mut idling {
                        Some((_, changes)) => {
                            tokio::select! {
                                r = tokio::time::timeout(silent_limit, stream.read(&mut buf)) => Some(r),
                                _ = changes.changed() => None,
                                _ = tokio::time::sleep(IDLE_POLL) => None,
                                _ = shutdown.changed() => {
                                    let _ = stream.write_all(b"* BYE the server is shutting down\r\n").await;
                                    return Ended::Closed;
                                }
                            }
                        }
                        None => {
                            tokio::select! {
                                r = tokio::time::timeout(silent_limit, stream.read(&mut buf)) => Some(r),
                                _ = shutdown.changed() => {
                                    let _ = stream.write_all(b"* BYE the server is shutting down\r\n").await;
                                    return Ended::Closed;
                                }
                            }
                        }
                    };
                    match read {
                        None => {
                            // IDLE: something may have changed.
                            let responses = tokio::task::block_in_place(|| session.refresh());
                            match responses {
                                Ok(responses) => {
                                    if let Some(h) = enqueue(&mut server, responses) {
                                        close_after = Some(h);
                                    }
                                }
                                Err(e) => tracing::warn!(error = %e, "refresh during IDLE failed"),
                            }
                        }
                        Some(Ok(Ok(n))) if n > 0 => {
                            let chunk = &buf[..n];
                            if !lines.feed(chunk, limits.max_line as usize) {
                                let _ = stream.write_all(b"* BYE command line too long\r\n").await;
                                return Ended::Closed;
                            }
                            server.enqueue_input(chunk);
                        }
                        Some(Ok(_)) => return Ended::Closed,
                        Some(Err(_)) => {
                            let _ = stream
                                .write_all(b"* BYE idle for too long, closing\r\n")
                                .await;
                            return Ended::Closed;
                        }
                    }
                    continue;
                }
                Err(Interrupt::Error(e)) => {
                    bad_in_a_row += 1;
                    match e {
                        FlowError::LiteralTooLong { .. } => {
                            // imap-next answered the tagged BAD already.
                            tracing::info!("literal over the limit refused");
                        }
                        FlowError::CommandTooLong { discarded_bytes }
                        | FlowError::MalformedMessage { discarded_bytes }
                        | FlowError::ExpectedCrlfGotLf { discarded_bytes } => {
                            let bytes = discarded_bytes.declassify();
                            let response = match tag_of(bytes) {
                                Some(tag) => bad(&tag, "the command could not be parsed"),
                                None => Response::Status(Status::Untagged(
                                    imap_next::imap_types::response::StatusBody {
                                        kind: imap_next::imap_types::response::StatusKind::Bad,
                                        code: None,
                                        text: session::text("the command could not be parsed"),
                                    },
                                )),
                            };
                            enqueue(&mut server, vec![response]);
                        }
                    }
                    if bad_in_a_row >= MAX_BAD_IN_A_ROW {
                        let h = server.enqueue_status(bye("too many malformed commands"));
                        close_after = Some(h);
                    }
                    continue;
                }
            };
            match event {
                Event::GreetingSent { .. } => discard_greeting = false,
                Event::ResponseSent { handle, .. } => {
                    if Some(handle) == starttls_after {
                        if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                            return Ended::Closed;
                        }
                        return Ended::StartTls(stream);
                    }
                    if Some(handle) == close_after {
                        let _ = stream.write_all(&out).await;
                        let _ = stream.shutdown().await;
                        return Ended::Closed;
                    }
                }
                Event::CommandReceived { command } => {
                    bad_in_a_row = 0;
                    match self.command(session, conn, command).await {
                        Handled::Responses(responses) => {
                            if let Some(h) = enqueue(&mut server, responses) {
                                close_after = Some(h);
                            }
                        }
                        Handled::StartTls(response) => {
                            starttls_after = Some(server.enqueue_status(status_of(response)));
                        }
                        Handled::Logout(tag) => {
                            server.enqueue_status(bye("logging out"));
                            let h =
                                server.enqueue_status(match ok(&tag, None, "LOGOUT completed") {
                                    Response::Status(s) => s,
                                    _ => unreachable!("ok() is a status"),
                                });
                            close_after = Some(h);
                        }
                    }
                }
                Event::CommandAuthenticateReceived {
                    command_authenticate,
                } => {
                    bad_in_a_row = 0;
                    let tag = command_authenticate.tag;
                    let refusal = if session.authenticated() {
                        Some(bad(&tag, "already logged in"))
                    } else if !session.login_allowed() {
                        Some(no(
                            &tag,
                            Some(other_code("PRIVACYREQUIRED")),
                            "use TLS first",
                        ))
                    } else if command_authenticate.mechanism != AuthMechanism::Plain {
                        Some(no(&tag, None, "only AUTHENTICATE PLAIN is offered"))
                    } else {
                        None
                    };
                    if let Some(refusal) = refusal {
                        let _ = server.authenticate_finish(status_of(refusal));
                        continue;
                    }
                    match command_authenticate.initial_response {
                        Some(initial) => {
                            let status = self
                                .sasl_plain(session, conn, &tag, initial.declassify())
                                .await;
                            let _ = server.authenticate_finish(status_of(status));
                        }
                        None => {
                            authenticating = Some(tag);
                            let _ = server.authenticate_continue(
                                CommandContinuationRequest::base64(b"".as_slice()),
                            );
                        }
                    }
                }
                Event::AuthenticateDataReceived { authenticate_data } => {
                    let Some(tag) = authenticating.take() else {
                        continue;
                    };
                    let status = match authenticate_data {
                        AuthenticateData::Cancel => bad(&tag, "authentication cancelled"),
                        AuthenticateData::Continue(data) => {
                            self.sasl_plain(session, conn, &tag, data.declassify())
                                .await
                        }
                    };
                    let _ = server.authenticate_finish(status_of(status));
                }
                Event::IdleCommandReceived { tag } => {
                    bad_in_a_row = 0;
                    let Some(user) = session.user() else {
                        let _ =
                            server.idle_reject(status_of(bad(&tag, "IDLE needs a login first")));
                        continue;
                    };
                    let changes = user.mailbox.watch();
                    let _ = server.idle_accept(
                        CommandContinuationRequest::basic(None, "idling")
                            .expect("a valid continuation text"),
                    );
                    // Anything that changed before the watch began is reported now.
                    match tokio::task::block_in_place(|| session.refresh()) {
                        Ok(responses) => {
                            if let Some(h) = enqueue(&mut server, responses) {
                                close_after = Some(h);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "refresh at IDLE failed"),
                    }
                    idling = Some((tag, changes));
                }
                Event::IdleDoneReceived => {
                    if let Some((tag, _)) = idling.take() {
                        enqueue(&mut server, vec![ok(&tag, None, "IDLE terminated")]);
                    }
                }
            }
        }
    }

    async fn command(
        &self,
        session: &mut Session,
        conn: &mut Conn,
        command: Command<'static>,
    ) -> Handled {
        let tag = command.tag.clone();
        match command.body {
            CommandBody::Logout => Handled::Logout(tag),
            CommandBody::StartTLS => {
                let available = matches!(&self.tls, ListenerTls::Plain(Some(_)));
                if session.authenticated() || session.tls() || !available {
                    Handled::Responses(vec![bad(&tag, "STARTTLS is not available here")])
                } else {
                    Handled::StartTls(ok(&tag, None, "begin TLS negotiation now"))
                }
            }
            CommandBody::Login { username, password } => {
                if session.authenticated() {
                    return Handled::Responses(vec![bad(&tag, "already logged in")]);
                }
                if !session.login_allowed() {
                    return Handled::Responses(vec![no(
                        &tag,
                        Some(other_code("PRIVACYREQUIRED")),
                        "LOGIN is disabled before STARTTLS",
                    )]);
                }
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let status = self
                    .login(session, conn, &tag, &user, password.declassify().as_ref())
                    .await;
                Handled::Responses(vec![status])
            }
            body => {
                let command = Command { tag, body };
                Handled::Responses(tokio::task::block_in_place(|| session.execute(command)))
            }
        }
    }

    async fn sasl_plain(
        &self,
        session: &mut Session,
        conn: &mut Conn,
        tag: &Tag<'static>,
        decoded: &[u8],
    ) -> Response<'static> {
        match crate::auth::sasl_plain(decoded) {
            Ok((user, password)) => self.login(session, conn, tag, &user, &password).await,
            Err(crate::auth::PlainError::Malformed) => bad(tag, "malformed PLAIN response"),
            Err(crate::auth::PlainError::OtherIdentity) => no(
                tag,
                Some(other_code("AUTHORIZATIONFAILED")),
                "the authorization identity differs from the login",
            ),
        }
    }

    /// Check a login and open its mailbox: the tagged answer.
    async fn login(
        &self,
        session: &mut Session,
        conn: &mut Conn,
        tag: &Tag<'static>,
        user: &str,
        password: &[u8],
    ) -> Response<'static> {
        let Some(login) = self.auth.authenticate(user, password, conn.peer).await else {
            inc(&metrics::IMAP_LOGINS_FAILED);
            tracing::info!(user, "IMAP login refused");
            return no(
                tag,
                Some(other_code("AUTHENTICATIONFAILED")),
                "invalid user name or password",
            );
        };
        let address = login.mailbox.to_text();
        let account = match self.delivery.locate(&address) {
            Ok(Location::Here(account)) => account,
            Ok(Location::Home(home, _)) => {
                inc(&metrics::IMAP_LOGINS_FAILED);
                return no(
                    tag,
                    Some(other_code("UNAVAILABLE")),
                    &format!("this mailbox is served by {home}; try again later"),
                );
            }
            Err(_) => {
                inc(&metrics::IMAP_LOGINS_FAILED);
                return no(
                    tag,
                    Some(other_code("UNAVAILABLE")),
                    "no mailbox for this login",
                );
            }
        };
        let Some(slot) = self
            .accounts
            .acquire(&address, self.limits().max_per_account)
        else {
            inc(&metrics::IMAP_LOGINS_FAILED);
            return no(
                tag,
                Some(other_code("LIMIT")),
                "too many sessions for this account",
            );
        };
        let store = self.delivery.store().clone();
        let opened = tokio::task::block_in_place(|| {
            User::open(
                &store,
                &address,
                &account.mailbox.domain,
                &account.mailbox.local,
                quota_of(&account),
            )
        });
        match opened {
            Ok(user) => {
                inc(&metrics::IMAP_LOGINS);
                tracing::info!(user = %address, "IMAP login");
                session.logged_in(user);
                conn.slot = Some(slot);
                ok(
                    tag,
                    Some(Code::Capability(session.capabilities())),
                    "logged in",
                )
            }
            Err(e) => {
                tracing::warn!(user = %address, error = %e, "cannot open the mailbox");
                no(
                    tag,
                    Some(other_code("UNAVAILABLE")),
                    "the mailbox cannot be opened now",
                )
            }
        }
    }
}

/// What [`ImapListener::command`] decided.
enum Handled {
    Responses(Vec<Response<'static>>),
    StartTls(Response<'static>),
    Logout(Tag<'static>),
}

fn status_of(response: Response<'static>) -> Status<'static> {
    match response {
        Response::Status(s) => s,
        _ => unreachable!("the session's helpers build statuses"),
    }
}

/// Queue `responses` in order; the handle of the last one when a BYE is among them
/// (the session ends once it is sent).
fn enqueue(server: &mut Server, responses: Vec<Response<'static>>) -> Option<ResponseHandle> {
    let mut bye = false;
    let mut last = None;
    for response in responses {
        last = Some(match response {
            Response::Data(d) => server.enqueue_data(d),
            Response::Status(s) => {
                bye |= matches!(s, Status::Bye(_));
                server.enqueue_status(s)
            }
            Response::CommandContinuationRequest(c) => server.enqueue_continuation_request(c),
        });
    }
    if bye {
        last
    } else {
        None
    }
}

/// The tag a malformed command started with, if it is a valid tag.
fn tag_of(bytes: &[u8]) -> Option<Tag<'static>> {
    let end = bytes
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')?;
    Tag::try_from(bytes[..end].to_vec()).ok()
}

/// Follows the input just far enough to know how long the current line is: the
/// bytes of a literal (announced by a line ending in `{n}` or `{n+}`) do not count.
/// It parses nothing else; `imap-next` does the parsing.
#[derive(Debug, Default)]
struct LineGuard {
    line: usize,
    literal_left: u64,
    /// The last bytes of the current line, to read a `{n}` at its end.
    tail: Vec<u8>,
}

impl LineGuard {
    /// Take `chunk`; false when a line grew past `max`.
    fn feed(&mut self, mut chunk: &[u8], max: usize) -> bool {
        while !chunk.is_empty() {
            if self.literal_left > 0 {
                let skip = (self.literal_left.min(chunk.len() as u64)) as usize;
                self.literal_left -= skip as u64;
                chunk = &chunk[skip..];
                continue;
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    self.remember(&chunk[..at]);
                    if self.line + at > max {
                        return false;
                    }
                    self.literal_left = literal_announced(&self.tail).unwrap_or(0);
                    self.line = 0;
                    self.tail.clear();
                    chunk = &chunk[at + 1..];
                }
                None => {
                    self.line += chunk.len();
                    self.remember(chunk);
                    return self.line <= max;
                }
            }
        }
        true
    }

    fn remember(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > 32 {
            self.tail.drain(..self.tail.len() - 32);
        }
    }
}

/// The size of the literal a line (without its LF) ends by announcing.
fn literal_announced(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits
        .strip_suffix(b"+")
        .or(digits.strip_suffix(b"-"))
        .unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

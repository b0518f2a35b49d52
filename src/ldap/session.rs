//! One LDAP connection: the only code that touches its socket.
//!
//! Requests are read and framed here; each operation runs as its own task so several
//! can be outstanding at once (answers may come back out of order, each with its own
//! message id). Responses from all tasks go through one channel to the writer task.
//! A bind first waits for the outstanding operations, as RFC 4511 section 4.2.1 asks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rasn_ldap::{Control, LdapMessage, ProtocolOp, ResultCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::codec::{self, CodecError};
use super::{bind, controls, extended, Identity, LdapContext};

/// Where an operation sends its responses.
#[derive(Clone)]
pub struct Reply {
    /// The request's message id.
    pub id: u32,
    tx: mpsc::Sender<Vec<u8>>,
    /// Set when the client abandoned the operation.
    pub cancelled: Arc<AtomicBool>,
}

impl Reply {
    /// Send one response message.
    pub async fn send(&self, op: ProtocolOp, ctrls: Option<Vec<Control>>) {
        let mut msg = LdapMessage::new(self.id, op);
        msg.controls = ctrls;
        let _ = self.tx.send(codec::encode(&msg)).await;
    }

    /// The encoding of one response message to this request (for [`Reply::send_bytes`]).
    pub fn encode(&self, op: ProtocolOp) -> Vec<u8> {
        codec::encode(&LdapMessage::new(self.id, op))
    }

    /// Send already encoded response messages (one or more, back to back) in one piece.
    pub async fn send_bytes(&self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            let _ = self.tx.send(bytes).await;
        }
    }

    /// Send encoded messages from a blocking thread; false when the connection is gone
    /// or the operation was abandoned.
    pub fn send_bytes_blocking(&self, bytes: Vec<u8>) -> bool {
        if self.cancelled.load(Ordering::Relaxed) {
            return false;
        }
        self.tx.blocking_send(bytes).is_ok()
    }

    /// True when the client abandoned the operation.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// Per-connection state shared with the operations.
#[derive(Default)]
pub struct SessionState {
    /// Paged searches in progress, by cookie.
    pub paged: Mutex<HashMap<u64, super::search::PagedSearch>>,
    /// The next cookie.
    pub next_cookie: Mutex<u64>,
}

/// Refuse a connection beyond a cap with a Notice of Disconnection (`busy`).
pub async fn refuse_busy(mut stream: TcpStream, why: &'static str) {
    let notice = codec::notice_of_disconnection(ResultCode::Busy, why);
    let _ = stream.write_all(&notice).await;
    let _ = stream.shutdown().await;
}

/// What a session knows about its transport.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The connection is encrypted (LDAPS, or after StartTLS).
    pub secure: bool,
    /// StartTLS may be requested on this connection.
    pub start_tls: bool,
    /// Simple binds with a password are refused unless the connection is secure.
    pub require_tls_for_bind: bool,
    /// The names in the verified TLS client certificate, if one was presented.
    pub client_cert: Option<Arc<crate::net::tls::ClientNames>>,
}

/// How a session ended.
pub enum SessionEnd<S> {
    /// The connection is closed (unbind, disconnect, protocol error, shutdown).
    Closed,
    /// The client asked for StartTLS and was told to go ahead: here is the stream to
    /// run the TLS handshake on, and who the client was bound as.
    StartTls(S, Identity),
}

/// Serve one connection until the client unbinds or disconnects, a protocol error
/// occurs, the node shuts down, or StartTLS hands the stream back for the handshake.
pub async fn run<S>(
    ctx: Arc<LdapContext>,
    stream: S,
    conn: ConnInfo,
    identity: Identity,
    mut shutdown: watch::Receiver<bool>,
) -> SessionEnd<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let peer = conn.peer;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    let writer = tokio::spawn(async move {
        // Responses already queued go out in one write (one segment, one wake-up of the
        // client) instead of one write each.
        const COALESCE: usize = 64 * 1024;
        while let Some(mut bytes) = rx.recv().await {
            while bytes.len() < COALESCE {
                match rx.try_recv() {
                    Ok(more) => bytes.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.flush().await;
        wr
    });
    let mut identity = identity;
    let mut start_tls = false;
    let state = Arc::new(SessionState::default());
    let mut tasks: JoinSet<u32> = JoinSet::new();
    let mut outstanding: HashMap<u32, Arc<AtomicBool>> = HashMap::new();
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let max = ctx.config.max_pdu_bytes;
    'conn: loop {
        // Handle every complete message in the buffer.
        loop {
            let n = match codec::frame_len(&buf, max) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    protocol_error(&tx, &e, peer).await;
                    break 'conn;
                }
            };
            let msg = match codec::decode(&buf[..n]) {
                Ok(m) => m,
                Err(e) => match super::modify::decode_with_increment(&buf[..n]) {
                    // A modify with RFC 4525 increment, which rasn-ldap cannot name.
                    Some((id, ctrls, dn, changes)) if id != 0 => {
                        buf.drain(..n);
                        let cancelled = Arc::new(AtomicBool::new(false));
                        let reply = Reply {
                            id,
                            tx: tx.clone(),
                            cancelled: cancelled.clone(),
                        };
                        let probe = ProtocolOp::ModifyRequest(rasn_ldap::ModifyRequest {
                            object: dn.as_str().into(),
                            changes: Vec::new(),
                        });
                        if let Some(bad) = controls::unknown_critical(&ctrls, &probe) {
                            super::error::reject(
                                &reply,
                                &probe,
                                ResultCode::UnavailableCriticalExtension,
                                &format!("critical control {bad} is not supported"),
                            )
                            .await;
                            continue;
                        }
                        outstanding.insert(id, cancelled);
                        let (ctx, who) = (ctx.clone(), identity.clone());
                        tasks.spawn(async move {
                            super::modify::handle_changes(&ctx, &who, &reply, dn, changes).await;
                            id
                        });
                        continue;
                    }
                    _ => {
                        protocol_error(&tx, &e, peer).await;
                        break 'conn;
                    }
                },
            };
            buf.drain(..n);
            while let Some(done) = tasks.try_join_next() {
                if let Ok(id) = done {
                    outstanding.remove(&id);
                }
            }
            if msg.message_id == 0 {
                protocol_error(
                    &tx,
                    &CodecError::Malformed("message id 0 is reserved".into()),
                    peer,
                )
                .await;
                break 'conn;
            }
            // Back-pressure: at most max_outstanding operations at once.
            while tasks.len() >= ctx.config.max_outstanding {
                if let Some(Ok(id)) = tasks.join_next().await {
                    outstanding.remove(&id);
                }
            }
            let id = msg.message_id;
            let cancelled = Arc::new(AtomicBool::new(false));
            let reply = Reply {
                id,
                tx: tx.clone(),
                cancelled: cancelled.clone(),
            };
            // A critical control we do not know fails the request (RFC 4511 section 4.1.11).
            let ctrls = msg.controls.clone().unwrap_or_default();
            if let Some(bad) = controls::unknown_critical(&ctrls, &msg.protocol_op) {
                super::error::reject(
                    &reply,
                    &msg.protocol_op,
                    ResultCode::UnavailableCriticalExtension,
                    &format!("critical control {bad} is not supported"),
                )
                .await;
                continue;
            }
            match msg.protocol_op {
                ProtocolOp::UnbindRequest(_) => break 'conn,
                ProtocolOp::AbandonRequest(a) => {
                    if let Some(flag) = outstanding.get(&a.0) {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                ProtocolOp::BindRequest(req) => {
                    // Finish (or abandon) everything in flight first.
                    while let Some(done) = tasks.join_next().await {
                        if let Ok(id) = done {
                            outstanding.remove(&id);
                        }
                    }
                    state.paged.lock().map(|mut p| p.clear()).ok();
                    identity = bind::handle(&ctx, &reply, req, &conn).await;
                }
                ProtocolOp::ExtendedReq(req) if extended::is_start_tls(&req) => {
                    let refusal = if !conn.start_tls {
                        Some((
                            ResultCode::ProtocolError,
                            "StartTLS is not available on this connection",
                        ))
                    } else if !buf.is_empty() {
                        Some((ResultCode::ProtocolError, "data after the StartTLS request"))
                    } else {
                        None
                    };
                    if let Some((code, message)) = refusal {
                        reply
                            .send(
                                ProtocolOp::ExtendedResp(extended::response(
                                    code, message, None, None,
                                )),
                                None,
                            )
                            .await;
                        continue;
                    }
                    // RFC 4511 section 4.14.1: nothing may be outstanding.
                    while let Some(done) = tasks.join_next().await {
                        if let Ok(id) = done {
                            outstanding.remove(&id);
                        }
                    }
                    reply
                        .send(
                            ProtocolOp::ExtendedResp(extended::response(
                                ResultCode::Success,
                                "",
                                Some(extended::START_TLS),
                                None,
                            )),
                            None,
                        )
                        .await;
                    start_tls = true;
                    break 'conn;
                }
                ProtocolOp::SearchRequest(req) => {
                    // Most searches are answered on the spot, without a task of their own.
                    match super::search::start(&ctx, &identity, &reply, req, &ctrls) {
                        super::search::Started::Answered(bytes) => reply.send_bytes(bytes).await,
                        super::search::Started::Pending(pending) => {
                            outstanding.insert(id, cancelled);
                            let ctx = ctx.clone();
                            let who = identity.clone();
                            let state = state.clone();
                            tasks.spawn(async move {
                                pending.run(&ctx, &who, &state, &reply).await;
                                id
                            });
                        }
                    }
                }
                op => {
                    outstanding.insert(id, cancelled);
                    let ctx = ctx.clone();
                    let who = identity.clone();
                    let state = state.clone();
                    tasks.spawn(async move {
                        dispatch(&ctx, &who, &state, &reply, op, ctrls).await;
                        id
                    });
                }
            }
        }
        let idle = ctx.live().idle_timeout_secs;
        let idle_limit = async {
            if idle == 0 || !tasks.is_empty() {
                std::future::pending::<()>().await
            }
            tokio::time::sleep(std::time::Duration::from_secs(idle)).await
        };
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = shutdown.changed() => break 'conn,
            _ = idle_limit => {
                tracing::info!(%peer, "closing an idle connection");
                crate::metrics::inc(&crate::metrics::LDAP_IDLE_CLOSED);
                let _ = tx.send(codec::notice_of_disconnection(ResultCode::Unavailable, "idle timeout")).await;
                break 'conn;
            }
        };
        match read {
            Ok(0) => {
                // The client closed its side: finish what it asked for, then close.
                while let Some(done) = tasks.join_next().await {
                    if let Ok(id) = done {
                        outstanding.remove(&id);
                    }
                }
                break;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%peer, error = %e, "read failed");
                break;
            }
        }
        if buf.capacity() > 4 * max {
            buf.shrink_to(max);
        }
    }
    for flag in outstanding.values() {
        flag.store(true, Ordering::Relaxed);
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let Ok(mut wr) = writer.await else {
        return SessionEnd::Closed;
    };
    if start_tls {
        return SessionEnd::StartTls(rd.unsplit(wr), identity);
    }
    let _ = wr.shutdown().await;
    SessionEnd::Closed
}

async fn protocol_error(tx: &mpsc::Sender<Vec<u8>>, e: &CodecError, peer: SocketAddr) {
    crate::metrics::inc(&crate::metrics::LDAP_PROTOCOL_ERRORS);
    tracing::info!(%peer, error = %e, "closing connection after a protocol error");
    let _ = tx
        .send(codec::notice_of_disconnection(
            ResultCode::ProtocolError,
            &e.to_string(),
        ))
        .await;
}

/// Run one operation (not bind, unbind or abandon).
pub async fn dispatch(
    ctx: &Arc<LdapContext>,
    who: &Identity,
    state: &Arc<SessionState>,
    reply: &Reply,
    op: ProtocolOp,
    ctrls: Vec<Control>,
) {
    match op {
        ProtocolOp::SearchRequest(req) => {
            super::search::handle(ctx, who, state, reply, req, &ctrls).await
        }
        ProtocolOp::CompareRequest(req) => super::compare::handle(ctx, who, reply, req).await,
        ProtocolOp::AddRequest(req) => super::add::handle(ctx, who, reply, req).await,
        ProtocolOp::ModifyRequest(req) => super::modify::handle(ctx, who, reply, req).await,
        ProtocolOp::DelRequest(req) => super::delete::handle(ctx, who, reply, req).await,
        ProtocolOp::ModDnRequest(req) => super::modify_dn::handle(ctx, who, reply, req).await,
        ProtocolOp::ExtendedReq(req) => super::extended::handle(ctx, who, reply, req).await,
        other => {
            // A response PDU or an unknown request from a client: answer as RFC 4511
            // section 4.1.1 allows, with a protocol error on an ExtendedResponse.
            tracing::debug!(op = ?std::mem::discriminant(&other), "unexpected PDU from client");
            reply
                .send(
                    ProtocolOp::ExtendedResp(extended::response(
                        ResultCode::ProtocolError,
                        "unexpected PDU",
                        None,
                        None,
                    )),
                    None,
                )
                .await;
        }
    }
}

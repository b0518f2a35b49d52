//! LMTP between nodes (RFC 2033 with CHUNKING, RFC 3030), over the cluster port's
//! `pa-lmtp/1` service: mutual TLS with cluster certificates, as for Raft.
//!
//! The sending node (the one that spooled the message) opens a connection to the
//! home node and sends `LHLO`, `MAIL FROM:<sender> ENVID=<queue id>`, one `RCPT TO`
//! per mailbox and the message in one `BDAT <size> LAST` (no dot-stuffing); the home
//! node answers once per recipient after storing (or refusing) each copy. The
//! `ENVID` is the sender's queue id, which names the stored file, so a message handed
//! over twice (the sender crashed before recording the first success) is stored once;
//! `.r` after it says an earlier attempt may have stored it.
//!
//! The serving side is the SMTP session in LMTP mode ([`super::smtp::server`]).

use smtp_proto::response::parser::ResponseReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::smtp::session::Reply;
use crate::cluster::transport::{Dialer, Service, TransportError};

/// The cluster port's LMTP service.
pub const SERVICE: Service = Service::new("lmtp", b"pa-lmtp/1");

/// Why a handover failed as a whole (the message stays queued).
#[derive(Debug, thiserror::Error)]
pub enum LmtpError {
    /// The home node could not be reached.
    #[error("cannot reach the home node: {0}")]
    Connect(#[from] TransportError),
    /// The connection failed midway.
    #[error("LMTP i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The home node answered something LMTP does not allow here.
    #[error("LMTP: {0}")]
    Protocol(String),
}

/// One message for some mailboxes of one home node.
pub struct Handover<'a> {
    /// This node's name, for LHLO.
    pub hostname: &'a str,
    /// The queue id.
    pub queue_id: &'a str,
    /// An earlier attempt may have stored copies.
    pub maybe_stored: bool,
    /// The envelope sender.
    pub sender: &'a str,
    /// The mailboxes (primary addresses).
    pub recipients: &'a [String],
    /// The message.
    pub message: &'a [u8],
}

/// The `ENVID` of a handover; [`parse_env_id`] reads it back.
pub fn env_id(queue_id: &str, maybe_stored: bool) -> String {
    if maybe_stored {
        format!("{queue_id}.r")
    } else {
        queue_id.to_string()
    }
}

/// The queue id and retry mark of an `ENVID`.
pub fn parse_env_id(env_id: &str) -> (&str, bool) {
    match env_id.strip_suffix(".r") {
        Some(id) => (id, true),
        None => (env_id, false),
    }
}

/// Hand a message over to the node at `endpoint`: one reply per recipient, in order.
pub async fn hand_over(
    dialer: &Dialer,
    endpoint: &str,
    job: &Handover<'_>,
) -> Result<Vec<Reply>, LmtpError> {
    let conn = dialer.connect(endpoint, SERVICE).await?;
    let mut stream = conn.into_stream();
    let mut replies = Replies::default();
    expect(replies.next(&mut stream).await?, 220, "greeting")?;
    let mut out = format!("LHLO {}\r\n", job.hostname);
    stream.write_all(out.as_bytes()).await?;
    expect(replies.next(&mut stream).await?, 250, "LHLO")?;
    // MAIL, the RCPTs and the data in one write (PIPELINING and CHUNKING).
    out.clear();
    out.push_str(&format!(
        "MAIL FROM:<{}> ENVID={}\r\n",
        job.sender,
        env_id(job.queue_id, job.maybe_stored)
    ));
    for r in job.recipients {
        out.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    out.push_str(&format!("BDAT {} LAST\r\n", job.message.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(job.message);
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    let mail = replies.next(&mut stream).await?;
    let mut rcpt = Vec::with_capacity(job.recipients.len());
    for _ in job.recipients {
        rcpt.push(replies.next(&mut stream).await?);
    }
    if mail.code != 250 {
        // Every recipient gets the MAIL reply; the BDAT was answered with an error too.
        return Ok(vec![mail; job.recipients.len()]);
    }
    let accepted = rcpt.iter().filter(|r| r.is_positive()).count();
    let mut out = Vec::with_capacity(job.recipients.len());
    if accepted == 0 {
        let _ = replies.next(&mut stream).await;
        out = rcpt;
    } else {
        let mut data = Vec::with_capacity(accepted);
        for _ in 0..accepted {
            data.push(replies.next(&mut stream).await?);
        }
        let mut data = data.into_iter();
        for r in rcpt {
            out.push(if r.is_positive() {
                data.next().unwrap_or(r)
            } else {
                r
            });
        }
    }
    let _ = stream.write_all(b"QUIT\r\n").await;
    let _ = stream.shutdown().await;
    Ok(out)
}

fn expect(reply: Reply, code: u16, what: &str) -> Result<(), LmtpError> {
    if reply.code == code {
        Ok(())
    } else {
        Err(LmtpError::Protocol(format!(
            "{what}: {} {} {}",
            reply.code, reply.status, reply.text
        )))
    }
}

/// Reads replies off a stream, parsed by `smtp-proto`.
#[derive(Default)]
struct Replies {
    buf: Vec<u8>,
    receiver: ResponseReceiver,
}

impl Replies {
    async fn next<S: tokio::io::AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Reply, LmtpError> {
        loop {
            if !self.buf.is_empty() {
                let mut it = self.buf.iter();
                let parsed = self.receiver.parse(&mut it);
                let rest = it.as_slice().to_vec();
                self.buf = rest;
                match parsed {
                    Ok(r) => {
                        self.receiver.reset();
                        return Ok(reply_of(r));
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {}
                    Err(e) => return Err(LmtpError::Protocol(format!("unreadable reply: {e:?}"))),
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(LmtpError::Protocol(
                    "the home node closed the connection".into(),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn reply_of(r: smtp_proto::Response<String>) -> Reply {
    let [a, b, c] = r.esc;
    let status = if a == 0 {
        format!("{}.0.0", r.code / 100)
    } else {
        format!("{a}.{b}.{c}")
    };
    Reply::new(r.code, status, r.message)
}

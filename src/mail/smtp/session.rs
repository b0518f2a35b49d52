//! One SMTP or LMTP session, sans I/O: bytes in, replies out, and questions for the
//! caller where the session needs the directory, the password check or the spool.
//!
//! The caller feeds what it read ([`Session::feed`]) and calls [`Session::step`]
//! until it says [`Step::NeedInput`]; replies collect in [`Session::take_output`],
//! written before the next read (so pipelined commands are answered in order, in as
//! few writes as the client allows: RFC 2920). A [`Step::Ask`] is answered with
//! [`Session::answer`] before the next step. Commands are parsed by `smtp-proto`.
//!
//! Reply codes follow RFC 5321 and the enhanced codes of RFC 3463; the ones the
//! directory decides (unknown user, disabled account, relay, quota) come back from
//! the caller as a [`Reply`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use smtp_proto::request::receiver::{
    BdatReceiver, DataReceiver, DummyDataReceiver, LineReceiver, RequestReceiver,
};
use smtp_proto::{Error as ParseError, Request};

use crate::mail::spool::Destination;

/// Which service a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// MX: mail from other servers, for this cluster's addresses only; no AUTH.
    Mx,
    /// Submission: authenticated users, to anywhere.
    Submission,
    /// LMTP between nodes (RFC 2033): LHLO, one reply per recipient after the data.
    Lmtp,
}

/// What a session is configured with when it starts.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The service.
    pub mode: Mode,
    /// This node's name in the greeting and `Received:`.
    pub hostname: String,
    /// The client's address (from PROXY protocol when a balancer sent one).
    pub peer: IpAddr,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most recipients of one message.
    pub max_recipients: usize,
    /// STARTTLS can be offered (a certificate is configured, TLS not yet on).
    pub starttls: bool,
    /// The connection is already encrypted: its protocol and cipher, for `Received:`.
    pub tls: Option<String>,
}

/// An SMTP reply: code, enhanced status code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code (`5.1.1`).
    pub status: Cow<'static, str>,
    /// The text.
    pub text: String,
}

impl Reply {
    /// A reply.
    pub fn new(code: u16, status: impl Into<Cow<'static, str>>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: status.into(),
            text: text.into(),
        }
    }

    /// Whether the code is 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        let text = self.text.replace(['\r', '\n'], " ");
        let line = if self.status.is_empty() {
            format!("{} {}\r\n", self.code, text)
        } else {
            format!("{} {} {}\r\n", self.code, self.status, text)
        };
        out.extend_from_slice(line.as_bytes());
    }
}

/// What the caller decided about one RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientVerdict {
    /// Accepted: the final destinations it reaches (an alias may reach several).
    Accept(Vec<Destination>),
    /// Refused with this reply.
    Refuse(Reply),
}

/// What the session asks the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// Check a login and password (AUTH PLAIN or LOGIN). Answer with
    /// [`Answer::Authenticated`].
    Authenticate {
        /// The authentication identity (an address or a uid).
        login: String,
        /// The password.
        password: Vec<u8>,
    },
    /// May this recipient be accepted, and where does it go? Answer with
    /// [`Answer::Recipient`].
    Recipient {
        /// The address as given (without angle brackets).
        address: String,
        /// The session is authenticated (so a foreign domain may be relayed to).
        authenticated: bool,
    },
    /// Spool this message (fsynced before answering). Answer with
    /// [`Answer::Delivered`].
    Deliver(Transaction),
}

/// The caller's answer to a [`Question`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The login's addresses when the password was right (a submitted message's
    /// sender must be one of them), `None` when it was wrong.
    Authenticated(Option<Vec<String>>),
    /// The recipient's verdict.
    Recipient(RecipientVerdict),
    /// The outcome: one reply for SMTP; for LMTP one per accepted recipient, in order.
    Delivered(Vec<Reply>),
}

/// One accepted recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRecipient {
    /// The address as given in RCPT TO.
    pub rcpt: String,
    /// Where it goes.
    pub destinations: Vec<Destination>,
}

/// A message ready to spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The queue id the session gave it (named in `Received:` and in the reply).
    pub id: String,
    /// The envelope sender (empty for the null sender).
    pub sender: String,
    /// The `ENVID` the client gave (LMTP between nodes carries the sender's queue id).
    pub env_id: Option<String>,
    /// The accepted recipients, in order.
    pub recipients: Vec<AcceptedRecipient>,
    /// The message, with this hop's `Received:` header first (SMTP modes).
    pub message: Vec<u8>,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write the pending output, then read and [`Session::feed`] more input.
    NeedInput,
    /// Answer this, then step again.
    Ask(Question),
    /// Write the pending output, start TLS, then call [`Session::tls_started`].
    StartTls,
    /// Write the pending output and close the connection.
    Close,
}

/// The longest command line, CRLF included (RFC 5321 allows 512 octets plus what
/// extensions add; smtp-proto's bound for a line split over reads is the same).
const MAX_COMMAND_LINE: usize = smtp_proto::request::receiver::MAX_LINE_LENGTH;

/// The most errors a session may make before it is closed.
const MAX_ERRORS: u32 = 20;

enum State {
    Command,
    Data(DataReceiver),
    /// Reading the rest of a message that is refused at its end.
    DataDiscard(DummyDataReceiver, Reply),
    Bdat(BdatReceiver),
    BdatDiscard(DummyDataReceiver, bool),
    /// AUTH PLAIN waiting for its response line.
    AuthPlain(LineReceiver<()>),
    /// AUTH LOGIN waiting for the user name, then the password.
    AuthLogin(LineReceiver<()>, Option<String>),
    /// Waiting for the caller's answer.
    Asked,
    Closed,
}

/// The transaction being built: MAIL FROM to the end of the data.
#[derive(Default)]
struct Envelope {
    sender: Option<String>,
    env_id: Option<String>,
    recipients: Vec<AcceptedRecipient>,
    /// RCPT TOs tried (accepted or not): the recipient limit counts these.
    tried: usize,
    message: Vec<u8>,
    /// BDAT made the message too large: refused when the last chunk arrives.
    oversized: bool,
}

/// The question the caller is answering.
enum Pending {
    None,
    Auth(String),
    Rcpt(String),
    /// A message with this many recipients.
    Deliver(usize),
}

/// One SMTP/LMTP session.
pub struct Session {
    pending: Pending,
    config: SessionConfig,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    commands: RequestReceiver,
    helo: Option<String>,
    esmtp: bool,
    /// The authenticated login and its addresses.
    login: Option<(String, Vec<String>)>,
    envelope: Envelope,
    errors: u32,
}

impl Session {
    /// A new session; the greeting is already in the output.
    pub fn new(config: SessionConfig) -> Session {
        let mut s = Session {
            pending: Pending::None,
            config,
            state: State::Command,
            input: Vec::new(),
            output: Vec::new(),
            commands: RequestReceiver::default(),
            helo: None,
            esmtp: false,
            login: None,
            envelope: Envelope::default(),
            errors: 0,
        };
        let kind = if s.config.mode == Mode::Lmtp {
            "LMTP"
        } else {
            "ESMTP"
        };
        let greeting = format!("220 {} {kind} PigeonAir\r\n", s.config.hostname);
        s.output.extend_from_slice(greeting.as_bytes());
        s
    }

    /// Bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Replies to write, taken out of the session.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Whether the client is sending message data (the data timeout applies).
    pub fn in_data(&self) -> bool {
        matches!(
            self.state,
            State::Data(_) | State::DataDiscard(..) | State::Bdat(_) | State::BdatDiscard(..)
        )
    }

    /// The authenticated login, if any.
    pub fn login(&self) -> Option<&str> {
        self.login.as_ref().map(|(l, _)| l.as_str())
    }

    /// TLS is now on (after [`Step::StartTls`]): the session starts over, as RFC 3207
    /// says, without a greeting.
    pub fn tls_started(&mut self, summary: String) {
        self.config.tls = Some(summary);
        self.config.starttls = false;
        self.helo = None;
        self.esmtp = false;
        self.envelope = Envelope::default();
        self.state = State::Command;
    }

    /// The client went away or timed out: a `421` for the log's sake, and close.
    pub fn timed_out(&mut self) {
        self.reply(
            421,
            "4.4.2",
            format!("{} timeout, closing", self.config.hostname),
        );
        self.state = State::Closed;
    }

    fn reply(&mut self, code: u16, status: &'static str, text: impl Into<String>) {
        Reply::new(code, status, text).write_to(&mut self.output);
    }

    fn error(&mut self, code: u16, status: &'static str, text: impl Into<String>) -> Option<Step> {
        self.reply(code, status, text);
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.reply(421, "4.7.0", "too many errors, closing");
            self.state = State::Closed;
            return Some(Step::Close);
        }
        None
    }

    /// Whether AUTH may be used now: submission only, and only under TLS except from
    /// a loopback client (the LDAP rule).
    fn auth_usable(&self) -> bool {
        self.config.mode == Mode::Submission
            && (self.config.tls.is_some() || self.config.peer.is_loopback())
    }

    /// Run until the session needs input, a question answered, TLS, or the end.
    pub fn step(&mut self) -> Step {
        let input = std::mem::take(&mut self.input);
        let mut bytes = input.iter();
        let step = self.run(&mut bytes);
        self.input = bytes.as_slice().to_vec();
        step
    }

    fn run(&mut self, bytes: &mut std::slice::Iter<'_, u8>) -> Step {
        loop {
            match &mut self.state {
                State::Closed => return Step::Close,
                State::Asked => return Step::NeedInput,
                State::Data(receiver) => {
                    let done = receiver.ingest(bytes, &mut self.envelope.message);
                    if self.envelope.message.len() > self.config.max_message_bytes {
                        let refusal = too_large(self.config.max_message_bytes);
                        self.envelope = Envelope::default();
                        if done {
                            refusal.write_to(&mut self.output);
                            self.state = State::Command;
                        } else {
                            let rest = DummyDataReceiver::new_data(receiver);
                            self.state = State::DataDiscard(rest, refusal);
                        }
                        continue;
                    }
                    if !done {
                        return Step::NeedInput;
                    }
                    return self.message_complete();
                }
                State::DataDiscard(receiver, reply) => {
                    if !receiver.ingest(bytes) {
                        return Step::NeedInput;
                    }
                    let reply = reply.clone();
                    reply.write_to(&mut self.output);
                    self.envelope = Envelope::default();
                    self.state = State::Command;
                }
                State::Bdat(receiver) => {
                    let done = receiver.ingest(bytes, &mut self.envelope.message);
                    if !done {
                        return Step::NeedInput;
                    }
                    let last = receiver.is_last;
                    self.state = State::Command;
                    if last {
                        return self.message_complete();
                    }
                    let n = self.envelope.message.len();
                    self.reply(250, "2.0.0", format!("{n} octets received"));
                }
                State::BdatDiscard(receiver, last) => {
                    if !receiver.ingest(bytes) {
                        return Step::NeedInput;
                    }
                    let last = *last;
                    self.state = State::Command;
                    if last {
                        too_large(self.config.max_message_bytes).write_to(&mut self.output);
                        self.envelope = Envelope::default();
                    } else {
                        self.reply(250, "2.0.0", "chunk received");
                    }
                }
                State::AuthPlain(line) => {
                    if !line.ingest(bytes) {
                        if line.buf.len() >= smtp_proto::request::receiver::MAX_LINE_LENGTH {
                            self.state = State::Command;
                            return self.line_too_long();
                        }
                        return Step::NeedInput;
                    }
                    let text = std::mem::take(&mut line.buf);
                    self.state = State::Command;
                    if let Some(step) = self.auth_plain_response(&text) {
                        return step;
                    }
                }
                State::AuthLogin(line, user) => {
                    if !line.ingest(bytes) {
                        if line.buf.len() >= smtp_proto::request::receiver::MAX_LINE_LENGTH {
                            self.state = State::Command;
                            return self.line_too_long();
                        }
                        return Step::NeedInput;
                    }
                    let text = std::mem::take(&mut line.buf);
                    let user = user.take();
                    self.state = State::Command;
                    if let Some(step) = self.auth_login_response(&text, user) {
                        return step;
                    }
                }
                State::Command => {
                    let rest = bytes.as_slice();
                    if rest.is_empty() {
                        return Step::NeedInput;
                    }
                    // smtp-proto bounds a line split over reads; one that arrives
                    // whole is bounded here.
                    let line_end = rest.iter().position(|&b| b == b'\n');
                    if line_end.unwrap_or(rest.len()) >= MAX_COMMAND_LINE {
                        return self.line_too_long();
                    }
                    let parsed = self.commands.ingest(bytes).map(Request::into_owned);
                    match parsed {
                        Ok(request) => {
                            if let Some(step) = self.command(request, bytes) {
                                return step;
                            }
                        }
                        Err(ParseError::NeedsMoreData { .. }) => return Step::NeedInput,
                        Err(ParseError::ResponseTooLong) => return self.line_too_long(),
                        Err(e) => {
                            let (code, status, text) = parse_error_reply(&e);
                            if let Some(step) = self.error(code, status, text) {
                                return step;
                            }
                        }
                    }
                }
            }
        }
    }

    fn line_too_long(&mut self) -> Step {
        self.reply(500, "5.5.2", "line too long");
        self.state = State::Closed;
        Step::Close
    }

    /// One command; `Some` when the caller must act before the next one.
    fn command(
        &mut self,
        request: Request<String>,
        bytes: &mut std::slice::Iter<'_, u8>,
    ) -> Option<Step> {
        let lmtp = self.config.mode == Mode::Lmtp;
        match request {
            Request::Ehlo { host } if !lmtp => self.hello(host, true),
            Request::Lhlo { host } if lmtp => self.hello(host, true),
            Request::Helo { host } if !lmtp => self.hello(host, false),
            Request::Ehlo { .. } | Request::Helo { .. } => {
                return self.error(500, "5.5.1", "this is LMTP: use LHLO")
            }
            Request::Lhlo { .. } => return self.error(500, "5.5.1", "LHLO is for LMTP"),
            Request::StartTls => {
                if !self.config.starttls {
                    return self.error(502, "5.5.1", "STARTTLS not offered");
                }
                // Anything pipelined after STARTTLS came in the clear: drop it (RFC 3207).
                *bytes = [].iter();
                self.reply(220, "2.0.0", "ready to start TLS");
                return Some(Step::StartTls);
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, initial_response),
            Request::Mail { from } => return self.mail(from),
            Request::Rcpt { to } => return self.rcpt(to.address),
            Request::Data => {
                if let Some(step) = self.data_allowed() {
                    return step;
                }
                self.reply(354, "", "end data with <CR><LF>.<CR><LF>");
                self.envelope.message.clear();
                self.state = State::Data(DataReceiver::new());
            }
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                if let Some(step) = self.data_allowed() {
                    // The chunk still follows: read past it.
                    self.state = State::BdatDiscard(DummyDataReceiver::new_bdat(chunk_size), false);
                    if let State::BdatDiscard(r, _) = &mut self.state {
                        if r.ingest(bytes) {
                            self.state = State::Command;
                        }
                    }
                    return step;
                }
                let total = self.envelope.message.len().saturating_add(chunk_size);
                if self.envelope.oversized || total > self.config.max_message_bytes {
                    self.envelope.oversized = true;
                    self.envelope.message = Vec::new();
                    self.state =
                        State::BdatDiscard(DummyDataReceiver::new_bdat(chunk_size), is_last);
                } else {
                    self.envelope.message.reserve(chunk_size);
                    self.state = State::Bdat(BdatReceiver::new(chunk_size, is_last));
                }
            }
            Request::Rset => {
                self.envelope = Envelope::default();
                self.reply(250, "2.0.0", "reset");
            }
            Request::Noop { .. } => self.reply(250, "2.0.0", "OK"),
            Request::Vrfy { .. } => self.reply(
                252,
                "2.5.0",
                "cannot verify, but will accept and attempt delivery",
            ),
            Request::Expn { .. } => return self.error(502, "5.5.1", "EXPN not available"),
            Request::Help { .. } => self.reply(214, "2.0.0", "see RFC 5321"),
            Request::Quit => {
                self.reply(221, "2.0.0", "bye");
                self.state = State::Closed;
                return Some(Step::Close);
            }
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                return self.error(502, "5.5.1", "command not implemented")
            }
        }
        None
    }

    fn hello(&mut self, host: String, extended: bool) {
        self.helo = Some(host.clone());
        self.esmtp = extended;
        self.envelope = Envelope::default();
        let name = &self.config.hostname;
        if !extended {
            let line = format!("250 {name} greets {host}\r\n");
            self.output.extend_from_slice(line.as_bytes());
            return;
        }
        let mut lines = vec![format!("{name} greets {host}")];
        lines.push("PIPELINING".into());
        lines.push(format!("SIZE {}", self.config.max_message_bytes));
        lines.push("8BITMIME".into());
        lines.push("ENHANCEDSTATUSCODES".into());
        lines.push("SMTPUTF8".into());
        lines.push("CHUNKING".into());
        if self.config.starttls {
            lines.push("STARTTLS".into());
        }
        if self.auth_usable() && self.login.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let _ = write!(Output(&mut self.output), "250{sep}{line}\r\n");
        }
    }

    fn auth(&mut self, mechanism: u64, initial: String) -> Option<Step> {
        if self.config.mode != Mode::Submission {
            return self.error(503, "5.5.1", "AUTH is offered on the submission port only");
        }
        if !self.auth_usable() {
            return self.error(
                538,
                "5.7.11",
                "encryption required for authentication: STARTTLS first",
            );
        }
        if self.login.is_some() {
            return self.error(503, "5.5.1", "already authenticated");
        }
        if !self.esmtp {
            return self.error(503, "5.5.1", "EHLO first");
        }
        if self.envelope.sender.is_some() {
            return self.error(503, "5.5.1", "AUTH not allowed during a mail transaction");
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN => {
                if initial.is_empty() {
                    self.output.extend_from_slice(b"334 \r\n");
                    self.state = State::AuthPlain(LineReceiver::new(()));
                    None
                } else if initial == "=" {
                    self.auth_plain_response(b"")
                } else {
                    self.auth_plain_response(initial.as_bytes())
                }
            }
            smtp_proto::AUTH_LOGIN => {
                if initial.is_empty() {
                    self.output.extend_from_slice(b"334 VXNlcm5hbWU6\r\n");
                    self.state = State::AuthLogin(LineReceiver::new(()), None);
                    None
                } else {
                    self.auth_login_response(initial.as_bytes(), None)
                }
            }
            _ => self.error(504, "5.5.4", "unrecognised authentication mechanism"),
        }
    }

    fn auth_plain_response(&mut self, line: &[u8]) -> Option<Step> {
        let line = trim_line(line);
        if line == b"*" {
            return self.error(501, "5.0.0", "authentication cancelled");
        }
        let Some(decoded) = decode64(line) else {
            return self.error(501, "5.5.2", "cannot decode the response");
        };
        match crate::auth::sasl_plain(&decoded) {
            Ok((login, password)) => self.ask_authenticate(login, password),
            Err(crate::auth::PlainError::Malformed) => {
                self.error(501, "5.5.2", "malformed PLAIN response")
            }
            Err(crate::auth::PlainError::OtherIdentity) => self.error(
                535,
                "5.7.8",
                "authorisation identity differs from the login",
            ),
        }
    }

    fn auth_login_response(&mut self, line: &[u8], user: Option<String>) -> Option<Step> {
        let line = trim_line(line);
        if line == b"*" {
            return self.error(501, "5.0.0", "authentication cancelled");
        }
        let Some(decoded) = decode64(line) else {
            return self.error(501, "5.5.2", "cannot decode the response");
        };
        match user {
            None => {
                let user = String::from_utf8_lossy(&decoded).into_owned();
                self.output.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                self.state = State::AuthLogin(LineReceiver::new(()), Some(user));
                None
            }
            Some(user) => self.ask_authenticate(user, decoded),
        }
    }

    fn ask_authenticate(&mut self, login: String, password: Vec<u8>) -> Option<Step> {
        self.state = State::Asked;
        self.pending = Pending::Auth(login.clone());
        Some(Step::Ask(Question::Authenticate { login, password }))
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> Option<Step> {
        if self.helo.is_none() {
            return self.error(503, "5.5.1", "EHLO or HELO first");
        }
        if self.envelope.sender.is_some() {
            return self.error(503, "5.5.1", "nested MAIL command");
        }
        if self.config.mode == Mode::Submission && self.login.is_none() {
            return self.error(530, "5.7.0", "authentication required");
        }
        if from.size > self.config.max_message_bytes {
            return self.error(552, "5.3.4", too_large(self.config.max_message_bytes).text);
        }
        if let Some((_, addresses)) = &self.login {
            let ok = addresses
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&from.address));
            if !ok {
                let text = format!(
                    "<{}>: sender address not owned by the authenticated user",
                    from.address
                );
                return self.error(553, "5.7.1", text);
            }
        }
        self.envelope = Envelope {
            sender: Some(from.address),
            env_id: from.env_id,
            ..Envelope::default()
        };
        self.reply(250, "2.1.0", "sender OK");
        None
    }

    fn rcpt(&mut self, address: String) -> Option<Step> {
        if self.envelope.sender.is_none() {
            return self.error(503, "5.5.1", "MAIL first");
        }
        if self.envelope.tried >= self.config.max_recipients {
            // Not an error to count: RFC 5321 §4.5.3.1.10 expects clients to go on.
            self.reply(452, "4.5.3", "too many recipients");
            return None;
        }
        self.envelope.tried += 1;
        self.state = State::Asked;
        self.pending = Pending::Rcpt(address.clone());
        Some(Step::Ask(Question::Recipient {
            address,
            authenticated: self.login.is_some(),
        }))
    }

    fn data_allowed(&mut self) -> Option<Option<Step>> {
        if self.envelope.sender.is_none() {
            return Some(self.error(503, "5.5.1", "MAIL first"));
        }
        if self.envelope.recipients.is_empty() {
            return Some(self.error(554, "5.5.1", "no valid recipients"));
        }
        None
    }

    fn message_complete(&mut self) -> Step {
        let env = std::mem::take(&mut self.envelope);
        let id = crate::mail::spool::new_queue_id();
        let mut message = Vec::with_capacity(env.message.len() + 512);
        if self.config.mode != Mode::Lmtp {
            message.extend_from_slice(self.received_header(&id, &env).as_bytes());
        }
        message.extend_from_slice(&env.message);
        let count = env.recipients.len();
        self.state = State::Asked;
        self.pending = Pending::Deliver(count);
        Step::Ask(Question::Deliver(Transaction {
            id,
            sender: env.sender.unwrap_or_default(),
            env_id: env.env_id,
            recipients: env.recipients,
            message,
        }))
    }

    fn received_header(&self, id: &str, env: &Envelope) -> String {
        let helo = self.helo.as_deref().unwrap_or("unknown");
        let with = match (self.esmtp, self.config.tls.is_some(), self.login.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, false, true) => "ESMTPA",
            (true, true, false) => "ESMTPS",
            (true, true, true) => "ESMTPSA",
        };
        let mut h = format!(
            "Received: from {} ([{}])\r\n\tby {} (PigeonAir) with {with} id {id}",
            sanitize(helo),
            self.config.peer,
            self.config.hostname
        );
        if let Some(tls) = &self.config.tls {
            let _ = write!(h, "\r\n\t({})", sanitize(tls));
        }
        if env.recipients.len() == 1 {
            let _ = write!(h, "\r\n\tfor <{}>", sanitize(&env.recipients[0].rcpt));
        }
        let date = mail_builder::headers::date::Date::new(crate::mail::spool::unix_now() as i64);
        let _ = write!(h, "; {}\r\n", date.to_rfc822());
        h
    }

    /// The caller's answer to the last [`Step::Ask`].
    pub fn answer(&mut self, answer: Answer) {
        let pending = std::mem::replace(&mut self.pending, Pending::None);
        self.state = State::Command;
        match (pending, answer) {
            (Pending::Auth(login), Answer::Authenticated(Some(addresses))) => {
                self.login = Some((login, addresses));
                self.reply(235, "2.7.0", "authentication successful");
            }
            (Pending::Auth(_), Answer::Authenticated(None)) => {
                // error() closes the session itself after too many failures.
                let _ = self.error(535, "5.7.8", "authentication credentials invalid");
            }
            (Pending::Rcpt(rcpt), Answer::Recipient(RecipientVerdict::Accept(destinations))) => {
                let mut fresh = Vec::new();
                for d in destinations {
                    let dup = self
                        .envelope
                        .recipients
                        .iter()
                        .flat_map(|r| r.destinations.iter())
                        .chain(fresh.iter())
                        .any(|seen| seen == &d);
                    if !dup {
                        fresh.push(d);
                    }
                }
                self.envelope.recipients.push(AcceptedRecipient {
                    rcpt,
                    destinations: fresh,
                });
                self.reply(250, "2.1.5", "recipient OK");
            }
            (Pending::Rcpt(_), Answer::Recipient(RecipientVerdict::Refuse(reply))) => {
                reply.write_to(&mut self.output);
            }
            (Pending::Deliver(count), Answer::Delivered(replies)) => {
                if self.config.mode == Mode::Lmtp {
                    for i in 0..count {
                        let reply =
                            replies
                                .get(i)
                                .or(replies.last())
                                .cloned()
                                .unwrap_or_else(|| {
                                    Reply::new(451, "4.3.0", "no answer from the store")
                                });
                        reply.write_to(&mut self.output);
                    }
                } else {
                    let reply = replies
                        .into_iter()
                        .next()
                        .unwrap_or_else(|| Reply::new(451, "4.3.0", "no answer from the spool"));
                    reply.write_to(&mut self.output);
                }
            }
            (_, answer) => {
                tracing::error!(?answer, "an answer to no question; closing the session");
                self.reply(421, "4.3.0", "internal error, closing");
                self.state = State::Closed;
            }
        }
    }
}

/// A `fmt::Write` over the output buffer.
struct Output<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Output<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn too_large(max: usize) -> Reply {
    Reply::new(
        552,
        "5.3.4",
        format!("message too big: the limit is {max} bytes"),
    )
}

fn parse_error_reply(e: &ParseError) -> (u16, &'static str, String) {
    match e {
        ParseError::UnknownCommand => (500, "5.5.1", "command not recognised".into()),
        ParseError::InvalidSenderAddress => (501, "5.1.7", "bad sender address syntax".into()),
        ParseError::InvalidRecipientAddress => {
            (501, "5.1.3", "bad recipient address syntax".into())
        }
        ParseError::SyntaxError { syntax } => (501, "5.5.4", format!("syntax: {syntax}")),
        ParseError::InvalidParameter { param } => {
            (501, "5.5.4", format!("invalid parameter {param}"))
        }
        ParseError::UnsupportedParameter { param } => (
            504,
            "5.5.4",
            format!("unsupported parameter {}", sanitize(param)),
        ),
        _ => (500, "5.5.2", "syntax error".into()),
    }
}

/// Text from the client made safe for a header or a reply: printable ASCII only.
fn sanitize(s: &str) -> String {
    s.chars()
        .take(255)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn trim_line(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &line[..end]
}

fn decode64(text: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests;

//! One POP3 session (RFC 1939, CAPA of RFC 2449, STLS of RFC 2595, AUTH PLAIN of RFC
//! 5034, RESP-CODES and AUTH-RESP-CODE), sans I/O: lines in, responses out, and
//! questions for the caller where the session needs the login check, a message or the
//! commit of its deletions.
//!
//! The caller feeds bytes ([`Session::feed`]), steps until [`Step::NeedInput`], and
//! writes [`Session::take_output`] before reading again. POP3 has no literals or
//! nesting: a command is one line of at most [`MAX_LINE`] octets, a keyword and up to
//! two arguments.

use std::net::IpAddr;

/// The longest command line accepted, CRLF included (RFC 2449 allows 255 octets;
/// AUTH PLAIN responses need more).
pub const MAX_LINE: usize = 2048;

/// What the session is started with.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The name in the greeting.
    pub hostname: String,
    /// The client's address.
    pub peer: IpAddr,
    /// STLS can be offered.
    pub stls: bool,
    /// The connection is encrypted.
    pub tls: bool,
}

/// One message of the maildrop as the session numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The store's id: the UIDL.
    pub id: String,
    /// Its size in octets.
    pub size: u64,
}

/// What the session asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// Check the login and open (and lock) its maildrop. Answer with
    /// [`Answer::Opened`].
    Login {
        /// The user.
        user: String,
        /// The password.
        password: Vec<u8>,
    },
    /// The message `id`. Answer with [`Answer::Message`].
    Message {
        /// Its id.
        id: String,
    },
    /// QUIT in the transaction state: remove these messages and release the maildrop.
    /// Answer with [`Answer::Committed`].
    Commit {
        /// The ids marked deleted.
        deleted: Vec<String>,
    },
}

/// The caller's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The maildrop in order, or the `-ERR` text (with its response code).
    Opened(Result<Vec<Listed>, String>),
    /// The message's bytes, or why not.
    Message(Result<Vec<u8>, String>),
    /// The deletions are done, or why not.
    Committed(Result<(), String>),
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write the output, read more.
    NeedInput,
    /// Answer, then step again.
    Ask(Question),
    /// Write the output, start TLS, call [`Session::tls_started`].
    StartTls,
    /// Write the output and close.
    Close,
}

enum State {
    Authorization {
        user: Option<String>,
    },
    /// AUTH PLAIN sent `+ `: the next line is the response.
    AuthPlain,
    Transaction {
        messages: Vec<Listed>,
        deleted: Vec<bool>,
    },
    Closed,
}

enum Pending {
    None,
    Login,
    /// RETR (`None`) or TOP with this many body lines.
    Message(Option<usize>),
    Commit,
}

/// The most errors before the session is closed.
const MAX_ERRORS: u32 = 20;

/// One POP3 session.
pub struct Session {
    config: SessionConfig,
    state: State,
    pending: Pending,
    input: Vec<u8>,
    output: Vec<u8>,
    errors: u32,
}

impl Session {
    /// A new session; the greeting is already in the output.
    pub fn new(config: SessionConfig) -> Session {
        let greeting = format!("+OK {} POP3 PigeonAir ready\r\n", config.hostname);
        Session {
            config,
            state: State::Authorization { user: None },
            pending: Pending::None,
            input: Vec::new(),
            output: greeting.into_bytes(),
            errors: 0,
        }
    }

    /// Bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The responses to write.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Whether a maildrop is open (so the caller must release it at the end).
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Transaction { .. })
    }

    /// TLS is on after [`Step::StartTls`].
    pub fn tls_started(&mut self) {
        self.config.tls = true;
        self.config.stls = false;
    }

    fn ok(&mut self, text: &str) {
        self.output
            .extend_from_slice(format!("+OK {text}\r\n").as_bytes());
    }

    fn err(&mut self, text: &str) -> Option<Step> {
        self.output
            .extend_from_slice(format!("-ERR {text}\r\n").as_bytes());
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.output
                .extend_from_slice(b"-ERR too many errors, closing\r\n");
            self.state = State::Closed;
            return Some(Step::Close);
        }
        None
    }

    /// Whether a password may be sent: under TLS, or from loopback (the LDAP rule).
    fn login_allowed(&self) -> bool {
        self.config.tls || self.config.peer.is_loopback()
    }

    /// Run until the session needs input, an answer, TLS or the end.
    pub fn step(&mut self) -> Step {
        loop {
            if matches!(self.state, State::Closed) {
                return Step::Close;
            }
            if !matches!(self.pending, Pending::None) {
                return Step::NeedInput;
            }
            let Some(end) = self.input.iter().position(|&b| b == b'\n') else {
                if self.input.len() >= MAX_LINE {
                    self.output.extend_from_slice(b"-ERR line too long\r\n");
                    self.state = State::Closed;
                    return Step::Close;
                }
                return Step::NeedInput;
            };
            if end + 1 > MAX_LINE {
                self.output.extend_from_slice(b"-ERR line too long\r\n");
                self.state = State::Closed;
                return Step::Close;
            }
            let line: Vec<u8> = self.input.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(step) = self.line(line) {
                return step;
            }
        }
    }

    fn line(&mut self, line: &str) -> Option<Step> {
        if matches!(self.state, State::AuthPlain) {
            self.state = State::Authorization { user: None };
            return self.auth_plain(line.trim());
        }
        let mut words = line.splitn(3, ' ');
        let keyword = words.next().unwrap_or("").to_ascii_uppercase();
        let arg1 = words.next().map(str::to_string);
        let arg2 = words.next().map(str::to_string);
        let login_allowed = self.login_allowed();
        match (&mut self.state, keyword.as_str()) {
            (_, "CAPA") => {
                let mut caps = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
                if matches!(self.state, State::Authorization { .. }) {
                    if self.config.stls {
                        caps.push("STLS");
                    }
                    if self.login_allowed() {
                        caps.extend(["USER", "SASL PLAIN"]);
                    }
                }
                let mut out = String::from("+OK capability list follows\r\n");
                for c in caps {
                    out.push_str(c);
                    out.push_str("\r\n");
                }
                out.push_str("IMPLEMENTATION PigeonAir\r\n.\r\n");
                self.output.extend_from_slice(out.as_bytes());
                None
            }
            (_, "QUIT") => {
                if let State::Transaction { messages, deleted } = &self.state {
                    let ids = messages
                        .iter()
                        .zip(deleted)
                        .filter(|(_, d)| **d)
                        .map(|(m, _)| m.id.clone())
                        .collect();
                    self.pending = Pending::Commit;
                    return Some(Step::Ask(Question::Commit { deleted: ids }));
                }
                self.ok("bye");
                self.state = State::Closed;
                Some(Step::Close)
            }
            (_, "NOOP") => {
                self.ok("");
                None
            }
            (State::Authorization { .. }, "STLS") => {
                if !self.config.stls {
                    return self.err("STLS not available");
                }
                self.input.clear();
                self.ok("begin TLS negotiation");
                Some(Step::StartTls)
            }
            (State::Authorization { user }, "USER") => {
                let Some(name) = arg1 else {
                    return self.err("USER needs a name");
                };
                if !login_allowed {
                    return self.err("[AUTH] use STLS before sending a password");
                }
                *user = Some(name);
                self.ok("send PASS");
                None
            }
            (State::Authorization { user }, "PASS") => {
                let Some(name) = user.take() else {
                    return self.err("USER first");
                };
                // The password is the rest of the line: it may hold spaces.
                let password = line.get(5..).unwrap_or("").as_bytes().to_vec();
                self.ask_login(name, password)
            }
            (State::Authorization { .. }, "AUTH") => {
                match arg1.map(|m| m.to_ascii_uppercase()).as_deref() {
                    None => {
                        self.output
                            .extend_from_slice(b"+OK methods follow\r\nPLAIN\r\n.\r\n");
                        None
                    }
                    Some("PLAIN") => {
                        if !login_allowed {
                            return self.err("[AUTH] use STLS before authenticating");
                        }
                        match arg2 {
                            Some(initial) => self.auth_plain(initial.trim()),
                            None => {
                                self.output.extend_from_slice(b"+ \r\n");
                                self.state = State::AuthPlain;
                                None
                            }
                        }
                    }
                    Some(_) => self.err("unsupported mechanism"),
                }
            }
            (State::Transaction { messages, deleted }, "STAT") => {
                let (n, size) = messages
                    .iter()
                    .zip(deleted.iter())
                    .filter(|(_, d)| !**d)
                    .fold((0, 0), |(n, s), (m, _)| (n + 1, s + m.size));
                self.ok(&format!("{n} {size}"));
                None
            }
            (State::Transaction { messages, deleted }, "LIST" | "UIDL") => {
                let uidl = keyword == "UIDL";
                let show = |i: usize, m: &Listed| {
                    if uidl {
                        format!("{} {}", i + 1, m.id)
                    } else {
                        format!("{} {}", i + 1, m.size)
                    }
                };
                if let Some(arg) = arg1 {
                    return match number(&arg, messages, deleted) {
                        Some(i) => {
                            let text = show(i, &messages[i]);
                            self.ok(&text);
                            None
                        }
                        None => self.err("no such message"),
                    };
                }
                let mut out = String::from("+OK listing follows\r\n");
                for (i, m) in messages.iter().enumerate().filter(|(i, _)| !deleted[*i]) {
                    out.push_str(&show(i, m));
                    out.push_str("\r\n");
                }
                out.push_str(".\r\n");
                self.output.extend_from_slice(out.as_bytes());
                None
            }
            (State::Transaction { messages, deleted }, "RETR" | "TOP") => {
                let Some(i) = arg1.as_deref().and_then(|a| number(a, messages, deleted)) else {
                    return self.err("no such message");
                };
                let lines = if keyword == "TOP" {
                    match arg2
                        .as_deref()
                        .map(str::trim)
                        .and_then(|n| n.parse::<usize>().ok())
                    {
                        Some(n) => Some(n),
                        None => return self.err("TOP needs a message and a line count"),
                    }
                } else {
                    None
                };
                let id = messages[i].id.clone();
                self.pending = Pending::Message(lines);
                Some(Step::Ask(Question::Message { id }))
            }
            (State::Transaction { messages, deleted }, "DELE") => {
                match arg1.as_deref().and_then(|a| number(a, messages, deleted)) {
                    Some(i) => {
                        deleted[i] = true;
                        self.ok(&format!("message {} deleted", i + 1));
                        None
                    }
                    None => self.err("no such message"),
                }
            }
            (State::Transaction { deleted, .. }, "RSET") => {
                deleted.iter_mut().for_each(|d| *d = false);
                self.ok("");
                None
            }
            (State::Transaction { .. }, "USER" | "PASS" | "AUTH" | "STLS") => {
                self.err("already authenticated")
            }
            (
                State::Authorization { .. },
                "STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "DELE" | "RSET",
            ) => self.err("[AUTH] log in first"),
            _ => self.err("unknown command"),
        }
    }

    fn auth_plain(&mut self, response: &str) -> Option<Step> {
        use base64::Engine as _;
        if response == "*" {
            return self.err("authentication cancelled");
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(response) else {
            return self.err("cannot decode the response");
        };
        match crate::auth::sasl_plain(&decoded) {
            Ok((user, password)) => self.ask_login(user, password),
            Err(crate::auth::PlainError::Malformed) => self.err("malformed PLAIN response"),
            Err(crate::auth::PlainError::OtherIdentity) => {
                self.err("[AUTH] authorization identity differs from the login")
            }
        }
    }

    fn ask_login(&mut self, user: String, password: Vec<u8>) -> Option<Step> {
        self.pending = Pending::Login;
        Some(Step::Ask(Question::Login { user, password }))
    }

    /// The caller's answer to the last question.
    pub fn answer(&mut self, answer: Answer) {
        let pending = std::mem::replace(&mut self.pending, Pending::None);
        match (pending, answer) {
            (Pending::Login, Answer::Opened(Ok(messages))) => {
                let n = messages.len();
                let size: u64 = messages.iter().map(|m| m.size).sum();
                self.state = State::Transaction {
                    deleted: vec![false; n],
                    messages,
                };
                self.ok(&format!("maildrop has {n} messages ({size} octets)"));
            }
            (Pending::Login, Answer::Opened(Err(why))) => {
                self.state = State::Authorization { user: None };
                let _ = self.err(&why);
            }
            (Pending::Message(lines), Answer::Message(Ok(bytes))) => {
                self.ok("message follows");
                write_dot_stuffed(&mut self.output, &bytes, lines);
            }
            (Pending::Message(_), Answer::Message(Err(why))) => {
                let _ = self.err(&why);
            }
            (Pending::Commit, Answer::Committed(result)) => {
                match result {
                    Ok(()) => self.ok("bye"),
                    Err(why) => {
                        let _ = self.err(&format!(
                            "[SYS/TEMP] some deleted messages not removed: {why}"
                        ));
                    }
                }
                self.state = State::Closed;
            }
            _ => {
                self.output
                    .extend_from_slice(b"-ERR [SYS/PERM] internal error\r\n");
                self.state = State::Closed;
            }
        }
    }
}

/// The index of message number `arg` (1-based) if it exists and is not deleted.
fn number(arg: &str, messages: &[Listed], deleted: &[bool]) -> Option<usize> {
    let n: usize = arg.trim().parse().ok()?;
    let i = n.checked_sub(1)?;
    (i < messages.len() && !deleted[i]).then_some(i)
}

/// `message` as a multi-line response: lines ending CRLF, a leading `.` doubled, the
/// terminating `.`; with `body_lines`, the header, the blank line and that many body
/// lines only (TOP).
pub fn write_dot_stuffed(out: &mut Vec<u8>, message: &[u8], body_lines: Option<usize>) {
    let mut in_body = false;
    let mut body = 0usize;
    for raw in message.split_inclusive(|&b| b == b'\n') {
        if in_body {
            if body_lines.is_some_and(|max| body >= max) {
                break;
            }
            body += 1;
        }
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && !in_body {
            in_body = true;
        }
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(
        s: &mut Session,
        input: &str,
        mut answer: impl FnMut(&Question) -> Answer,
    ) -> (String, Step) {
        s.feed(input.as_bytes());
        loop {
            match s.step() {
                Step::Ask(q) => s.answer(answer(&q)),
                step => return (String::from_utf8(s.take_output()).unwrap(), step),
            }
        }
    }

    fn maildrop(q: &Question) -> Answer {
        match q {
            Question::Login { password, .. } if password == b"pw" => Answer::Opened(Ok(vec![
                Listed {
                    id: "a1".into(),
                    size: 30,
                },
                Listed {
                    id: "b2".into(),
                    size: 12,
                },
            ])),
            Question::Login { .. } => Answer::Opened(Err("[AUTH] invalid login".into())),
            Question::Message { id } if id == "a1" => {
                Answer::Message(Ok(b"Subject: x\r\n\r\nline1\r\n.dot\r\nline3\r\n".to_vec()))
            }
            Question::Message { .. } => Answer::Message(Ok(b"S: y\r\n\r\nz\r\n".to_vec())),
            Question::Commit { deleted } => {
                assert_eq!(deleted, &["b2".to_string()]);
                Answer::Committed(Ok(()))
            }
        }
    }

    fn config(peer: &str) -> SessionConfig {
        SessionConfig {
            hostname: "pop.test".into(),
            peer: peer.parse().unwrap(),
            stls: true,
            tls: false,
        }
    }

    #[test]
    fn a_session_lists_reads_deletes_and_commits_at_quit() {
        let mut s = Session::new(config("127.0.0.1"));
        let (out, _) = drive(&mut s, "USER alice\r\nPASS wrong\r\nUSER alice\r\nPASS pw\r\nSTAT\r\nUIDL\r\nTOP 1 1\r\nRETR 1\r\nDELE 2\r\nLIST\r\nRETR 2\r\nQUIT\r\n", maildrop);
        assert!(out.contains("-ERR [AUTH] invalid login\r\n"), "{out}");
        assert!(out.contains("+OK 2 42\r\n"), "{out}");
        assert!(
            out.contains("+OK listing follows\r\n1 a1\r\n2 b2\r\n.\r\n"),
            "{out}"
        );
        assert!(
            out.contains("+OK message follows\r\nSubject: x\r\n\r\nline1\r\n.\r\n"),
            "TOP: {out}"
        );
        assert!(
            out.contains("line1\r\n..dot\r\nline3\r\n.\r\n"),
            "dot-stuffed: {out}"
        );
        assert!(
            out.contains("+OK listing follows\r\n1 30\r\n.\r\n"),
            "{out}"
        );
        assert!(
            out.contains("-ERR no such message"),
            "a deleted message is gone: {out}"
        );
        assert!(out.ends_with("+OK bye\r\n"), "{out}");
    }

    #[test]
    fn passwords_need_tls_off_loopback_and_bad_input_is_bounded() {
        let mut s = Session::new(config("192.0.2.1"));
        let (out, _) = drive(
            &mut s,
            "CAPA\r\nUSER alice\r\nAUTH PLAIN AGFsaWNlAHB3\r\nRETR 1\r\n",
            maildrop,
        );
        assert!(
            out.contains("STLS\r\n") && !out.contains("SASL PLAIN"),
            "{out}"
        );
        assert!(
            out.contains("-ERR [AUTH] use STLS before sending a password"),
            "{out}"
        );
        assert!(
            out.contains("-ERR [AUTH] use STLS before authenticating"),
            "{out}"
        );
        assert!(out.contains("-ERR [AUTH] log in first"), "{out}");
        let (out, step) = drive(&mut s, "STLS\r\nUSER injected\r\n", maildrop);
        assert_eq!(step, Step::StartTls);
        assert!(out.ends_with("+OK begin TLS negotiation\r\n"));
        s.tls_started();
        let (out, _) = drive(&mut s, "AUTH PLAIN\r\nAGFsaWNlAHB3\r\n", maildrop);
        assert!(
            out.ends_with("+ \r\n+OK maildrop has 2 messages (42 octets)\r\n"),
            "{out}"
        );
        let (out, step) = drive(&mut s, &"X".repeat(MAX_LINE + 10), maildrop);
        assert_eq!(step, Step::Close);
        assert!(out.contains("-ERR line too long"));
    }
}

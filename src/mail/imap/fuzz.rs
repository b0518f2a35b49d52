//! An entry point for fuzzing the IMAP command path: arbitrary bytes through
//! `imap-next`'s server flow (the `imap-codec` parser, literals, AUTHENTICATE and
//! IDLE continuations) into a logged-in [`Session`] on a throw-away Maildir holding a
//! few messages, simple and MIME.
//!
//! `fuzz/fuzz_targets/imap_session.rs` calls [`session_bytes`]; the unit tests run it
//! over seeded random and mutated commands on every `cargo test`. LOGIN, STARTTLS and
//! LOGOUT, which the I/O layer runs against the directory and the socket, are
//! answered here without either; everything else is the real session.

use std::path::PathBuf;

use imap_next::imap_types::command::CommandBody;
use imap_next::imap_types::response::{Greeting, Status};
use imap_next::server::{Event, Options, Server};
use imap_next::{Interrupt, Io, State};

use super::session::{ok, Session, SessionConfig, User};
use crate::mail::store::{FolderName, MailStore, Quota};

/// Messages every fuzz run starts with.
const MESSAGES: [&[u8]; 3] = [
    b"From: A <a@example.net>\r\nTo: alice@example.org\r\nSubject: one\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <1@x>\r\n\r\nbody one\r\n",
    b"From: =?utf-8?q?B=C3=A9?= <b@example.net>\r\nSubject: two\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"x.bin\"\r\n\r\nAAEC\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--b--\r\n",
    b"no header at all",
];

/// The most events one run handles, so an input cannot loop forever.
const MAX_EVENTS: usize = 10_000;

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch() -> Scratch {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    // Memory-backed where there is one: a run creates and removes a whole Maildir.
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "pigeonair-imap-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    Scratch(dir)
}

/// Feed `data` to a fresh, logged-in session with a selected-able INBOX of three
/// messages; returns the bytes the server answered. Never panics on any input.
pub fn session_bytes(data: &[u8]) -> Vec<u8> {
    let dir = scratch();
    let store = MailStore::open(&dir.0)
        .expect("the scratch store opens")
        .with_host_name("fuzz");
    let quota = Quota {
        max_bytes: Some(1 << 20),
        max_count: Some(100),
    };
    let user = User::open(&store, "alice@example.org", "example.org", "alice", quota)
        .expect("the fuzz mailbox opens");
    for message in MESSAGES {
        user.mailbox
            .deliver(&FolderName::inbox(), message, &quota)
            .expect("a fuzz message is stored");
    }
    let mut session = Session::new(SessionConfig {
        peer: std::net::IpAddr::from([127, 0, 0, 1]),
        tls: true,
        starttls: false,
    });
    session.logged_in(user);
    let mut options = Options::default();
    options.crlf_relaxed = true;
    options.max_literal_size = 64 * 1024;
    options.max_command_size = 128 * 1024;
    let greeting = Greeting::ok(None, "fuzz").expect("a valid greeting");
    let mut server = Server::new(options, greeting);
    server.enqueue_input(data);
    let mut out = Vec::new();
    for _ in 0..MAX_EVENTS {
        match server.next() {
            Ok(Event::CommandReceived { command }) => {
                let tag = command.tag.clone();
                let responses = match command.body {
                    CommandBody::Login { .. } | CommandBody::StartTLS | CommandBody::Logout => {
                        vec![ok(&tag, None, "done")]
                    }
                    body => session.execute(imap_next::imap_types::command::Command { tag, body }),
                };
                for response in responses {
                    match response {
                        imap_next::imap_types::response::Response::Data(d) => {
                            server.enqueue_data(d);
                        }
                        imap_next::imap_types::response::Response::Status(s) => {
                            server.enqueue_status(s);
                        }
                        imap_next::imap_types::response::Response::CommandContinuationRequest(
                            c,
                        ) => {
                            server.enqueue_continuation_request(c);
                        }
                    }
                }
            }
            Ok(Event::CommandAuthenticateReceived {
                command_authenticate,
            }) => {
                let status = ok(&command_authenticate.tag, None, "done");
                if let imap_next::imap_types::response::Response::Status(s) = status {
                    let _ = server.authenticate_finish(s);
                }
            }
            Ok(Event::AuthenticateDataReceived { .. }) => {
                let _ = server
                    .authenticate_finish(Status::no(None, None, "no").expect("a valid status"));
            }
            Ok(Event::IdleCommandReceived { tag }) => {
                let _ = server.idle_accept(
                    imap_next::imap_types::response::CommandContinuationRequest::basic(
                        None, "idling",
                    )
                    .expect("a valid continuation"),
                );
                if let Ok(responses) = session.refresh() {
                    for r in responses {
                        if let imap_next::imap_types::response::Response::Data(d) = r {
                            server.enqueue_data(d);
                        }
                    }
                }
                let _ = tag;
            }
            Ok(_) => {}
            Err(Interrupt::Io(Io::Output(bytes))) => out.extend_from_slice(&bytes),
            Err(Interrupt::Io(Io::NeedMoreInput)) => break,
            Err(Interrupt::Error(_)) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(out: &[u8]) -> String {
        String::from_utf8_lossy(out).into_owned()
    }

    /// Commands a client sends, each of which must get its tagged answer.
    const SCRIPT: &[&str] = &[
        "a1 CAPABILITY\r\n",
        "a2 LIST \"\" *\r\n",
        "a3 SELECT INBOX\r\n",
        "a4 FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)\r\n",
        "a5 FETCH 2 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[3.HEADER] BODY[HEADER.FIELDS (SUBJECT)]<0.5>)\r\n",
        "a6 STORE 1 +FLAGS (\\Seen \\Flagged)\r\n",
        "a7 UID SEARCH UNSEEN\r\n",
        "a8 SEARCH OR SUBJECT two BODY hello\r\n",
        "a9 COPY 1:2 Archive\r\n",
        "b1 UID MOVE 3 Trash\r\n",
        "b2 APPEND Drafts (\\Draft) {11+}\r\nSubject: d\r\n\r\n",
        "b3 STATUS Drafts (MESSAGES UIDNEXT UNSEEN)\r\n",
        "b4 CREATE Folder\r\n",
        "d1 CREATE Folder.Sub\r\n",
        "b5 RENAME Folder Other\r\n",
        "b6 LIST \"\" Other*\r\n",
        "b7 GETQUOTAROOT INBOX\r\n",
        "b8 STORE 1 +FLAGS.SILENT (\\Deleted)\r\n",
        "b9 EXPUNGE\r\n",
        "c1 NAMESPACE\r\n",
        "c2 ID NIL\r\n",
        "c3 NOOP\r\n",
        "c4 CLOSE\r\n",
    ];

    #[test]
    fn a_client_session_gets_every_answer() {
        let input: String = SCRIPT.concat();
        let out = text(&session_bytes(input.as_bytes()));
        for line in SCRIPT {
            let tag = line.split(' ').next().unwrap();
            assert!(
                out.contains(&format!("\r\n{tag} OK")),
                "no OK for {line:?}:\n{out}"
            );
        }
        for expected in [
            "* 3 EXISTS",
            "BODYSTRUCTURE ((\"TEXT\" \"PLAIN\"",
            "[COPYUID ",
            "[APPENDUID ",
            "* 1 EXPUNGE",
            "\\Drafts",
            "Other.Sub",
            "* QUOTA \"\" (STORAGE ",
            "* SEARCH 2",
        ] {
            assert!(out.contains(expected), "{expected:?} missing:\n{out}");
        }
    }

    #[test]
    fn malformed_and_oversized_input_gets_bad_and_the_session_goes_on() {
        let input = b"\x00\x01garbage\r\nx1 FETCH\r\nx2 SELECT {99999999}\r\nx3 NOOP\r\n";
        let out = text(&session_bytes(input));
        assert!(out.contains("x2 BAD"), "{out}");
        assert!(out.contains("x3 OK"), "{out}");
    }

    /// Seeded mutations of the script (bytes flipped, dropped, duplicated, cut): the
    /// session must never panic. Bounded: 300 inputs.
    #[test]
    fn mutated_sessions_never_panic() {
        let base: Vec<u8> = SCRIPT.concat().into_bytes();
        let mut rng = crate::testing::XorShift::new(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let input = crate::testing::mutate(base.clone(), &mut rng);
            session_bytes(&input);
        }
    }
}

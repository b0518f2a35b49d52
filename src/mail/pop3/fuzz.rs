//! An entry point for fuzzing POP3: arbitrary bytes through a [`Session`], its
//! questions answered as the server would for a maildrop of three messages.
//!
//! `fuzz/fuzz_targets/pop3_session.rs` calls [`session_bytes`]; the unit tests run it
//! over seeded random and mutated sessions on every `cargo test`.

use super::session::{Answer, Listed, Question, Session, SessionConfig, Step};

const MESSAGES: [&[u8]; 3] = [
    b"Subject: one\r\n\r\nline 1\r\n.dot\r\nline 3\r\n",
    b"Subject: two\r\n\r\n",
    b"no header",
];

/// The most steps one run takes, so an input cannot loop forever.
const MAX_STEPS: usize = 10_000;

/// Feed `data` to a fresh session (STLS offered, loopback peer), answer what it asks,
/// and return what it wrote. Never panics on any input.
pub fn session_bytes(data: &[u8]) -> Vec<u8> {
    let mut session = Session::new(SessionConfig {
        hostname: "fuzz".into(),
        peer: std::net::IpAddr::from([127, 0, 0, 1]),
        stls: true,
        tls: false,
    });
    session.feed(data);
    let mut out = Vec::new();
    for _ in 0..MAX_STEPS {
        match session.step() {
            Step::Ask(Question::Login { password, .. }) => {
                let answer = if password == b"secret" {
                    Ok(MESSAGES
                        .iter()
                        .enumerate()
                        .map(|(i, m)| Listed {
                            id: format!("id{i}"),
                            size: m.len() as u64,
                        })
                        .collect())
                } else {
                    Err("[AUTH] invalid user name or password".into())
                };
                session.answer(Answer::Opened(answer));
            }
            Step::Ask(Question::Message { id }) => {
                let found = id
                    .strip_prefix("id")
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| MESSAGES.get(n));
                session.answer(Answer::Message(
                    found.map(|m| m.to_vec()).ok_or_else(|| "gone".into()),
                ));
            }
            Step::Ask(Question::Commit { .. }) => session.answer(Answer::Committed(Ok(()))),
            Step::StartTls => {
                out.extend(session.take_output());
                session.tls_started();
            }
            Step::NeedInput | Step::Close => {
                out.extend(session.take_output());
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &[u8] = b"CAPA\r\nUSER alice@example.org\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL 1\r\nTOP 1 1\r\nRETR 1\r\nDELE 3\r\nRSET\r\nNOOP\r\nQUIT\r\n";

    #[test]
    fn a_client_session_gets_every_answer() {
        let out = String::from_utf8_lossy(&session_bytes(SCRIPT)).into_owned();
        assert!(out.contains("+OK 3 "), "{out}");
        assert!(out.contains("..dot"), "dot-stuffed TOP: {out}");
        assert_eq!(out.matches("-ERR").count(), 0, "{out}");
    }

    /// Seeded mutations (bytes flipped, dropped, duplicated, cut, long lines): the
    /// session must never panic. Bounded: 2,000 inputs.
    #[test]
    fn mutated_sessions_never_panic() {
        let mut rng = crate::testing::XorShift::new(0x2545_f491_4f6c_dd1d);
        for round in 0..2000 {
            let mut input = SCRIPT.to_vec();
            if round % 100 == 0 {
                input.splice(10..10, std::iter::repeat_n(b'x', 70_000));
            }
            let input = crate::testing::mutate(input, &mut rng);
            session_bytes(&input);
        }
    }
}

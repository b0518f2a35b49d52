use super::*;

fn config(mode: Mode, peer: &str) -> SessionConfig {
    SessionConfig {
        mode,
        hostname: "mx.test".into(),
        peer: peer.parse().unwrap(),
        max_message_bytes: 1000,
        max_recipients: 2,
        starttls: true,
        tls: None,
    }
}

/// Feed `input`, answer every question with `answer`, and return the output text
/// and the last step.
fn drive(
    s: &mut Session,
    input: &str,
    mut answer: impl FnMut(&Question) -> Answer,
) -> (String, Step) {
    s.feed(input.as_bytes());
    let mut out = Vec::new();
    loop {
        match s.step() {
            Step::Ask(q) => {
                let a = answer(&q);
                s.answer(a);
            }
            step => {
                out.extend(s.take_output());
                return (String::from_utf8(out).unwrap(), step);
            }
        }
    }
}

fn accept_all(q: &Question) -> Answer {
    match q {
        Question::Recipient { address, .. } if address.starts_with("nobody") => Answer::Recipient(
            RecipientVerdict::Refuse(Reply::new(550, "5.1.1", "no such user")),
        ),
        Question::Recipient { address, .. } => {
            Answer::Recipient(RecipientVerdict::Accept(vec![Destination::Mailbox(
                address.clone(),
            )]))
        }
        Question::Authenticate { login, password } => Answer::Authenticated(
            (login == "alice@example.org" && password == b"pw").then(|| vec![login.clone()]),
        ),
        Question::Deliver(_) => Answer::Delivered(vec![Reply::new(250, "2.0.0", "queued")]),
    }
}

fn codes(out: &str) -> Vec<String> {
    out.lines().map(|l| l[..3].to_string()).collect()
}

#[test]
fn pipelined_commands_are_answered_in_order_and_the_message_carries_received() {
    let mut s = Session::new(config(Mode::Mx, "192.0.2.1"));
    let mut delivered = None;
    let (out, step) = drive(
        &mut s,
        "EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.org>\r\n\
         RCPT TO:<nobody@example.org>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
        |q| {
            if let Question::Deliver(t) = q {
                delivered = Some(t.clone());
            }
            accept_all(q)
        },
    );
    assert_eq!(step, Step::Close);
    let c = codes(&out);
    let ehlo_lines = out
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("250-"))
        .count()
        + 1;
    assert_eq!(&c[..1], ["220"]);
    assert_eq!(
        &c[1 + ehlo_lines..],
        ["250", "250", "550", "354", "250", "221"],
        "{out}"
    );
    assert!(
        out.contains("250-PIPELINING") && out.contains("250-CHUNKING") && out.contains("STARTTLS")
    );
    assert!(!out.contains("AUTH"), "no AUTH on MX: {out}");
    let t = delivered.unwrap();
    assert_eq!(t.sender, "a@remote.test");
    assert_eq!(t.recipients.len(), 1);
    let text = String::from_utf8(t.message).unwrap();
    assert!(
        text.starts_with("Received: from client.test ([192.0.2.1])\r\n\tby mx.test"),
        "{text}"
    );
    assert!(
        text.ends_with("Subject: x\r\n\r\n.dot\r\n"),
        "dot-unstuffed: {text:?}"
    );
}

#[test]
fn auth_needs_tls_except_on_loopback_and_the_sender_must_be_the_users() {
    let mut s = Session::new(config(Mode::Submission, "192.0.2.1"));
    let (out, _) = drive(
        &mut s,
        "EHLO c\r\nAUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHB3\r\n",
        accept_all,
    );
    assert!(
        !out.contains("AUTH PLAIN"),
        "not offered in the clear: {out}"
    );
    assert!(out.contains("538 5.7.11"), "{out}");
    let (out, _) = drive(&mut s, "MAIL FROM:<alice@example.org>\r\n", accept_all);
    assert!(out.starts_with("530 5.7.0"), "{out}");

    let mut s = Session::new(config(Mode::Submission, "127.0.0.1"));
    let (out, _) = drive(
        &mut s,
        "EHLO c\r\nAUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n\r\n",
        accept_all,
    );
    assert!(
        out.contains("AUTH PLAIN LOGIN") && out.contains("535 5.7.8"),
        "{out}"
    );
    // AUTH LOGIN in two steps.
    let (out, _) = drive(
        &mut s,
        "AUTH LOGIN\r\nYWxpY2VAZXhhbXBsZS5vcmc=\r\ncHc=\r\n",
        accept_all,
    );
    assert_eq!(codes(&out), ["334", "334", "235"], "{out}");
    let (out, _) = drive(
        &mut s,
        "MAIL FROM:<bob@example.org>\r\nMAIL FROM:<ALICE@example.org>\r\n",
        accept_all,
    );
    assert_eq!(codes(&out), ["553", "250"], "{out}");
}

#[test]
fn auth_is_refused_on_mx_and_starttls_drops_pipelined_plaintext() {
    let mut s = Session::new(config(Mode::Mx, "127.0.0.1"));
    let (out, _) = drive(
        &mut s,
        "EHLO c\r\nAUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHB3\r\n",
        accept_all,
    );
    assert!(
        out.ends_with("503 5.5.1 AUTH is offered on the submission port only\r\n"),
        "{out}"
    );
    let (out, step) = drive(&mut s, "STARTTLS\r\nMAIL FROM:<injected@x>\r\n", accept_all);
    assert_eq!(step, Step::StartTls);
    assert!(out.starts_with("220 2.0.0"));
    s.tls_started("using TLSv1.3".into());
    let (out, step) = drive(&mut s, "", accept_all);
    assert_eq!(
        (out.as_str(), step),
        ("", Step::NeedInput),
        "the injected command is gone"
    );
    let (out, _) = drive(&mut s, "MAIL FROM:<a@b>\r\n", accept_all);
    assert!(out.starts_with("503"), "EHLO again after TLS: {out}");
}

#[test]
fn limits_size_recipients_and_line_length() {
    let mut s = Session::new(config(Mode::Mx, "192.0.2.1"));
    let (out, _) = drive(
        &mut s,
        "EHLO c\r\nMAIL FROM:<a@b> SIZE=5000\r\n",
        accept_all,
    );
    assert!(
        out.ends_with("552 5.3.4 message too big: the limit is 1000 bytes\r\n"),
        "{out}"
    );
    let body = "x".repeat(1500);
    let input = format!(
        "MAIL FROM:<a@b>\r\nRCPT TO:<r1@x>\r\nRCPT TO:<r2@x>\r\nRCPT TO:<r3@x>\r\nDATA\r\n{body}\r\n.\r\nNOOP\r\n"
    );
    let (out, _) = drive(&mut s, &input, accept_all);
    assert_eq!(
        codes(&out),
        ["250", "250", "250", "452", "354", "552", "250"],
        "{out}"
    );
    // BDAT past the limit is read and refused at the last chunk.
    let input = format!(
        "MAIL FROM:<a@b>\r\nRCPT TO:<r1@x>\r\nBDAT 600\r\n{}BDAT 600 LAST\r\n{}NOOP\r\n",
        "y".repeat(600),
        "z".repeat(600)
    );
    let (out, _) = drive(&mut s, &input, accept_all);
    assert_eq!(codes(&out), ["250", "250", "250", "552", "250"], "{out}");
    let (out, step) = drive(
        &mut s,
        &format!("NOOP {}\r\n", "a".repeat(5000)),
        accept_all,
    );
    assert_eq!(step, Step::Close);
    assert!(out.starts_with("500 5.5.2"), "{out}");
}

#[test]
fn bdat_chunks_make_one_message_and_garbage_gets_errors_not_panics() {
    let mut s = Session::new(config(Mode::Mx, "192.0.2.1"));
    let mut got = Vec::new();
    let (out, _) = drive(
        &mut s,
        "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<r@x>\r\nBDAT 5\r\nhelloBDAT 6 LAST\r\n world",
        |q| {
            if let Question::Deliver(t) = q {
                got = t.message.clone();
            }
            accept_all(q)
        },
    );
    assert!(
        out.ends_with("250 2.0.0 5 octets received\r\n250 2.0.0 queued\r\n"),
        "{out}"
    );
    assert!(got.ends_with(b"hello world"));
    let (out, _) = drive(
        &mut s,
        "DATA\r\nFOO bar\r\nMAIL FROM:<<<>\r\nRCPT TO:<x>\r\n\x00\x01\r\n",
        accept_all,
    );
    let c = codes(&out);
    assert_eq!(c[0], "503", "{out}");
    assert!(c[1..].iter().all(|c| c.starts_with('5')), "{out}");
    // After enough errors the session ends.
    let (_, step) = drive(&mut s, &"BOGUS\r\n".repeat(30), accept_all);
    assert_eq!(step, Step::Close);
}

#[test]
fn lmtp_answers_once_per_recipient_after_the_data() {
    let mut s = Session::new(config(Mode::Lmtp, "10.0.0.2"));
    let (out, _) = drive(&mut s, "EHLO x\r\nLHLO node3\r\nMAIL FROM:<a@b> ENVID=0abc.r\r\nRCPT TO:<alice@x>\r\nRCPT TO:<bob@x>\r\nBDAT 3 LAST\r\nabc", |q| match q {
        Question::Deliver(t) => {
            assert_eq!(t.env_id.as_deref(), Some("0abc.r"));
            assert_eq!(t.message, b"abc", "no Received: added between nodes");
            Answer::Delivered(vec![Reply::new(250, "2.0.0", "stored"), Reply::new(452, "4.2.2", "full")])
        }
        q => accept_all(q),
    });
    assert!(out.contains("500 5.5.1 this is LMTP"), "{out}");
    assert!(
        out.ends_with("250 2.0.0 stored\r\n452 4.2.2 full\r\n"),
        "{out}"
    );
}

//! Bounces: a delivery status notification (RFC 3464) for the recipients that failed,
//! sent to the envelope sender with the null sender, built with mail-builder.

use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;

use super::spool::{unix_now, Envelope, Recipient};

/// How much of the original message a bounce returns: its header only.
fn header_of(message: &[u8]) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| message.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(message.len());
    &message[..end]
}

/// The DSN for `failed` recipients of `env`, from `MAILER-DAEMON@<hostname>`: a
/// human-readable part, the `message/delivery-status` part with one block per
/// recipient (action `failed`, status 5.0.0 or the enhanced code the failure carried),
/// and the original message's header.
pub fn report(hostname: &str, env: &Envelope, failed: &[&Recipient], original: &[u8]) -> Vec<u8> {
    let mut text = format!(
        "This is the mail system at {hostname}.\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\r\n"
    );
    let mut status = format!(
        "Reporting-MTA: dns; {hostname}\r\nX-PigeonAir-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        env.id,
        Date::new(env.received_at as i64).to_rfc822()
    );
    for r in failed {
        let why = r.last_error.as_deref().unwrap_or("delivery failed");
        text.push_str(&format!("<{}>: {why}\r\n", r.rcpt));
        let code = enhanced_code(why).unwrap_or("5.0.0");
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {code}\r\nDiagnostic-Code: smtp; {}\r\n",
            r.rcpt,
            why.replace(['\r', '\n'], " ")
        ));
    }
    let parts = vec![
        MimePart::new(ContentType::new("text/plain"), BodyPart::Text(text.into())),
        MimePart::new(
            ContentType::new("message/delivery-status"),
            BodyPart::Text(status.into()),
        ),
        MimePart::new(
            ContentType::new("text/rfc822-headers"),
            BodyPart::Binary(header_of(original).to_vec().into()),
        ),
    ];
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        BodyPart::Multipart(parts),
    );
    let from = format!("MAILER-DAEMON@{hostname}");
    MessageBuilder::new()
        .from(("Mail Delivery System", from.as_str()))
        .to(env.sender.as_str())
        .subject("Undelivered Mail Returned to Sender")
        .date(Date::new(unix_now() as i64))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(report)
        .write_to_vec()
        .unwrap_or_default()
}

/// The enhanced status code (`5.1.1`) at the start of a failure text, if any.
fn enhanced_code(why: &str) -> Option<&str> {
    let code = why.split_whitespace().find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })?;
    code.starts_with(['4', '5']).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::spool::Destination;

    #[test]
    fn a_report_names_each_failed_recipient_and_returns_the_header() {
        let mut r = Recipient::new(
            "gone@example.org".into(),
            Destination::Mailbox("gone@example.org".into()),
        );
        r.last_error = Some("550 5.1.1 user unknown".into());
        let env = Envelope {
            id: "abc".into(),
            sender: "alice@example.org".into(),
            received_at: 1_700_000_000,
            size: 10,
            recipients: vec![r.clone()],
        };
        let original = b"Subject: hi\r\nMessage-ID: <x@y>\r\n\r\nsecret body\r\n";
        let dsn = String::from_utf8(report("mx.example.org", &env, &[&r], original)).unwrap();
        assert!(dsn.contains("multipart/report"), "{dsn}");
        assert!(
            dsn.contains("Final-Recipient: rfc822; gone@example.org"),
            "{dsn}"
        );
        assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
        assert!(dsn.contains("Message-ID: <x@y>"), "{dsn}");
        assert!(!dsn.contains("secret body"), "{dsn}");
        assert!(dsn.contains("To: <alice@example.org>") || dsn.contains("alice@example.org"));
    }
}

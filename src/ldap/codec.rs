//! LDAP message framing: BER-encoded `LDAPMessage`s over a byte stream (sans-IO).
//!
//! [`frame_len`] reads the outer SEQUENCE header to learn how long the next message is,
//! so the session can refuse an oversized PDU before reading it and wait for more bytes
//! when a message is incomplete. [`decode`] turns one complete frame into a message;
//! rasn's decoder is wrapped so that no input can take the node down.

use rasn_ldap::{ExtendedResponse, LdapMessage, LdapResult, ProtocolOp, ResultCode};

/// Why a byte stream is not a sequence of LDAP messages. Each closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not BER for an LDAPMessage.
    #[error("malformed PDU: {0}")]
    Malformed(String),
    /// The message is larger than the configured maximum.
    #[error("PDU of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced size.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// The total length (header and content) of the message at the start of `buf`:
/// `Ok(None)` when more bytes are needed to know.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, CodecError> {
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    if tag != 0x30 {
        return Err(CodecError::Malformed(format!(
            "expected a SEQUENCE, got tag 0x{tag:02x}"
        )));
    }
    let Some(&l0) = buf.get(1) else {
        return Ok(None);
    };
    let (header, len) = if l0 < 0x80 {
        (2usize, l0 as usize)
    } else if l0 == 0x80 {
        return Err(CodecError::Malformed(
            "indefinite length is not allowed in LDAP".into(),
        ));
    } else {
        let n = (l0 & 0x7f) as usize;
        if n > 4 {
            return Err(CodecError::TooLarge {
                size: usize::MAX,
                max,
            });
        }
        if buf.len() < 2 + n {
            return Ok(None);
        }
        let len = buf[2..2 + n]
            .iter()
            .fold(0usize, |a, &b| a << 8 | b as usize);
        (2 + n, len)
    };
    let total = header + len;
    if total > max {
        return Err(CodecError::TooLarge { size: total, max });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Decode one complete frame.
pub fn decode(frame: &[u8]) -> Result<LdapMessage, CodecError> {
    // rasn is not known to panic on bad input, but a panic here must never reach the
    // node: it is caught and treated as malformed input.
    let res = std::panic::catch_unwind(|| rasn::ber::decode::<LdapMessage>(frame));
    match res {
        Ok(Ok(msg)) => Ok(msg),
        Ok(Err(e)) => Err(CodecError::Malformed(e.to_string())),
        Err(_) => Err(CodecError::Malformed("undecodable PDU".into())),
    }
}

/// Encode a message.
pub fn encode(msg: &LdapMessage) -> Vec<u8> {
    rasn::ber::encode(msg).unwrap_or_default()
}

/// The Notice of Disconnection (RFC 4511 section 4.4.1), sent before closing a
/// connection because of a protocol error.
pub fn notice_of_disconnection(code: ResultCode, message: &str) -> Vec<u8> {
    let resp = ExtendedResponse {
        result_code: code,
        matched_dn: "".into(),
        diagnostic_message: message.into(),
        referral: None,
        response_name: Some(b"1.3.6.1.4.1.1466.20036".to_vec().into()),
        response_value: None,
    };
    encode(&LdapMessage::new(0, ProtocolOp::ExtendedResp(resp)))
}

/// An `LDAPResult` with a code and a diagnostic message.
pub fn result(code: ResultCode, matched: &str, message: &str) -> LdapResult {
    LdapResult::new(code, matched.into(), message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(frame_len(&[], 100), Ok(None));
        assert_eq!(frame_len(&[0x30], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 3, 1, 2], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 3, 1, 2, 3, 9], 100), Ok(Some(5)));
        assert_eq!(frame_len(&[0x30, 0x82, 0x01], 1000), Ok(None));
        assert!(matches!(
            frame_len(&[0x30, 0x83, 0x20, 0, 0], 1 << 20),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(matches!(
            frame_len(&[0x04, 1], 100),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            frame_len(&[0x30, 0x80], 100),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 12345u64;
        for len in 0..400 {
            let mut buf = vec![0x30u8, len as u8];
            for _ in 0..len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                buf.push((seed >> 33) as u8);
            }
            let _ = decode(&buf);
        }
    }
}

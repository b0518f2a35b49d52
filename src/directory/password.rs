//! Password storage schemes for `userPassword`.
//!
//! New passwords are stored as `{ARGON2}$argon2id$v=19$m=...,t=...,p=...$salt$hash`, the
//! form OpenLDAP's argon2 module writes, so a directory exported from PigeonAir imports
//! into other servers and back. Binds verify `{ARGON2}`, `{SSHA}`, `{SHA}` and, for
//! imported data only, `{CLEARTEXT}`/unprefixed values.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use rand::RngCore;
use sha1::{Digest, Sha1};

/// Argon2id memory cost in KiB (the argon2 crate's recommended default).
pub const ARGON2_M_COST: u32 = 19 * 1024;
/// Argon2id passes.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;

/// True when a stored value already names a scheme (`{XYZ}...`), so it must not be
/// hashed again.
pub fn is_hashed(stored: &[u8]) -> bool {
    let Some(rest) = stored.strip_prefix(b"{") else {
        return false;
    };
    let Some(end) = rest.iter().position(|&c| c == b'}') else {
        return false;
    };
    let scheme = &rest[..end];
    !scheme.is_empty()
        && scheme
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
}

/// Hash a clear-text password with a fresh random salt.
pub fn hash(clear: &[u8]) -> Vec<u8> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    hash_with_salt(clear, &salt)
}

/// Hash with a given salt (deterministic; used by tests and by [`hash`]).
pub fn hash_with_salt(clear: &[u8], salt: &[u8]) -> Vec<u8> {
    let params = Params::new(ARGON2_M_COST, ARGON2_T_COST, ARGON2_P_COST, Some(32))
        .expect("valid argon2 parameters");
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(clear, salt, &mut out)
        .expect("argon2 with a 16-byte salt");
    format!(
        "{{ARGON2}}$argon2id$v=19$m={ARGON2_M_COST},t={ARGON2_T_COST},p={ARGON2_P_COST}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    )
    .into_bytes()
}

/// Check a clear-text password against a stored `userPassword` value. Unknown schemes
/// never verify.
pub fn verify(clear: &[u8], stored: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(stored) else {
        return false;
    };
    if let Some(phc) = strip_scheme(s, "ARGON2") {
        return verify_argon2(clear, phc);
    }
    if let Some(b64) = strip_scheme(s, "SSHA") {
        let Ok(raw) = STANDARD.decode(b64.trim()) else {
            return false;
        };
        if raw.len() <= 20 {
            return false;
        }
        let (digest, salt) = raw.split_at(20);
        let mut h = Sha1::new();
        h.update(clear);
        h.update(salt);
        return constant_time_eq(&h.finalize(), digest);
    }
    if let Some(b64) = strip_scheme(s, "SHA") {
        let Ok(raw) = STANDARD.decode(b64.trim()) else {
            return false;
        };
        return constant_time_eq(&Sha1::digest(clear), &raw);
    }
    if let Some(clear_stored) = strip_scheme(s, "CLEARTEXT") {
        return constant_time_eq(clear, clear_stored.as_bytes());
    }
    if is_hashed(stored) {
        return false;
    }
    constant_time_eq(clear, stored)
}

fn strip_scheme<'a>(s: &'a str, scheme: &str) -> Option<&'a str> {
    let rest = s.strip_prefix('{')?;
    let (name, value) = rest.split_once('}')?;
    name.eq_ignore_ascii_case(scheme).then_some(value)
}

fn verify_argon2(clear: &[u8], phc: &str) -> bool {
    // $argon2id$v=19$m=..,t=..,p=..$salt$hash
    let parts: Vec<&str> = phc.split('$').collect();
    let (alg, ver, params, salt, hash) = match parts.as_slice() {
        ["", alg, ver, params, salt, hash] => (*alg, *ver, *params, *salt, *hash),
        ["", alg, params, salt, hash] => (*alg, "v=16", *params, *salt, *hash),
        _ => return false,
    };
    let algorithm = match alg {
        "argon2id" => Algorithm::Argon2id,
        "argon2i" => Algorithm::Argon2i,
        "argon2d" => Algorithm::Argon2d,
        _ => return false,
    };
    let version = match ver {
        "v=19" => Version::V0x13,
        "v=16" => Version::V0x10,
        _ => return false,
    };
    let (mut m, mut t, mut p) = (0u32, 0u32, 0u32);
    for kv in params.split(',') {
        match kv.split_once('=') {
            Some(("m", v)) => m = v.parse().unwrap_or(0),
            Some(("t", v)) => t = v.parse().unwrap_or(0),
            Some(("p", v)) => p = v.parse().unwrap_or(0),
            _ => return false,
        }
    }
    // Refuse absurd costs from imported data rather than exhaust memory.
    if m > 4 * 1024 * 1024 || t > 64 || p > 64 {
        return false;
    }
    let (Ok(salt), Ok(expected)) = (decode_b64_lenient(salt), decode_b64_lenient(hash)) else {
        return false;
    };
    if expected.len() < 4 || expected.len() > 1024 {
        return false;
    }
    let Ok(params) = Params::new(m, t, p, Some(expected.len())) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    if Argon2::new(algorithm, version, params)
        .hash_password_into(clear, &salt, &mut out)
        .is_err()
    {
        return false;
    }
    constant_time_eq(&out, &expected)
}

fn decode_b64_lenient(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD_NO_PAD.decode(s.trim_end_matches('='))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A random password for Password Modify requests that ask the server to generate one:
/// 16 characters from an unambiguous alphabet (about 90 bits).
pub fn generate() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_round_trip() {
        let h = hash(b"secret");
        assert!(h.starts_with(b"{ARGON2}$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify(b"secret", &h));
        assert!(!verify(b"Secret", &h));
    }

    #[test]
    fn verifies_rfc9106_style_reference_hash() {
        // argon2id, password "password", salt "somesalt", m=64, t=2, p=1 (reference CLI output).
        let stored = b"{ARGON2}$argon2id$v=19$m=64,t=2,p=1$c29tZXNhbHQ$+6qpn0Sx+Ta+8pz5s0cH0QSJi1pgu/fGUVOCL8NjTlk";
        let mut out = [0u8; 32];
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 2, 1, Some(32)).unwrap(),
        )
        .hash_password_into(b"password", b"somesalt", &mut out)
        .unwrap();
        let ours = format!(
            "{{ARGON2}}$argon2id$v=19$m=64,t=2,p=1$c29tZXNhbHQ${}",
            STANDARD_NO_PAD.encode(out)
        );
        assert!(verify(b"password", ours.as_bytes()));
        assert_eq!(verify(b"password", stored), ours.as_bytes() == stored);
    }

    #[test]
    fn ssha_and_sha() {
        // {SSHA} of "secret" with salt "salt".
        let mut h = Sha1::new();
        h.update(b"secret");
        h.update(b"salt");
        let mut raw = h.finalize().to_vec();
        raw.extend_from_slice(b"salt");
        let ssha = format!("{{SSHA}}{}", STANDARD.encode(&raw));
        assert!(verify(b"secret", ssha.as_bytes()));
        assert!(!verify(b"secreT", ssha.as_bytes()));
        // {SHA} of "secret", as slappasswd -h {SHA} prints it.
        assert!(verify(b"secret", b"{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="));
        assert!(!verify(b"other", b"{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="));
    }

    #[test]
    fn unknown_scheme_never_verifies() {
        assert!(!verify(b"{CRYPT}x", b"{CRYPT}x"));
        assert!(is_hashed(b"{CRYPT}x"));
        assert!(!is_hashed(b"plain"));
    }

    #[test]
    fn generated_passwords_differ() {
        assert_ne!(generate(), generate());
        assert_eq!(generate().len(), 16);
    }
}

//! Join tokens and the join handshake's messages.
//!
//! A token reads `PA1.<token-id>.<secret>.<sha256 of the CA certificate>`. The directory
//! stores only the SHA-256 of the secret, with an expiry and a use count, under
//! `ou=tokens,ou=system,<suffix>`, so a token is replicated, listed and revoked like any
//! other entry. A joining node pins the CA by the fingerprint in its token before it
//! sends the secret.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::types::{ClusterNode, NodeId};
use crate::directory::entry::{Attribute, StoredEntry};
use crate::directory::schema::{parse_generalized_time, GeneralizedTime};
use crate::directory::{DirectoryCommand, WriteMeta};

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The public id (names the directory entry).
    pub id: String,
    /// The secret (only its hash is stored).
    pub secret: String,
    /// Lower-case hex SHA-256 of the cluster CA certificate (DER).
    pub ca_fingerprint: String,
}

const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyz23456789";

fn random_text(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char)
        .collect()
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl JoinToken {
    /// A fresh token for a cluster whose CA has this fingerprint.
    pub fn generate(ca_fingerprint: &str) -> JoinToken {
        JoinToken {
            id: random_text(10),
            secret: random_text(32),
            ca_fingerprint: ca_fingerprint.to_string(),
        }
    }

    /// Parse `PA1.<id>.<secret>.<fingerprint>`.
    pub fn parse(s: &str) -> Result<JoinToken, String> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        match parts.as_slice() {
            ["PA1", id, secret, fp]
                if !id.is_empty()
                    && !secret.is_empty()
                    && fp.len() == 64
                    && fp.bytes().all(|c| c.is_ascii_hexdigit())
                    && id.bytes().all(|c| c.is_ascii_alphanumeric()) =>
            {
                Ok(JoinToken {
                    id: id.to_string(),
                    secret: secret.to_string(),
                    ca_fingerprint: fp.to_ascii_lowercase(),
                })
            }
            _ => Err("not a PigeonAir join token (expected PA1.<id>.<secret>.<ca-sha256>)".into()),
        }
    }

    /// The SHA-256 of the secret, as stored.
    pub fn secret_hash(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PA1.{}.{}.{}", self.id, self.secret, self.ca_fingerprint)
    }
}

/// The DN of the container of tokens.
pub fn tokens_dn(suffix: &str) -> String {
    format!("ou=tokens,ou=system,{suffix}")
}

/// The DN of a token's entry.
pub fn token_dn(suffix: &str, id: &str) -> String {
    format!("cn={id},{}", tokens_dn(suffix))
}

/// The command that stores a new token valid for `ttl_secs` and `uses` joins.
pub fn create_command(
    suffix: &str,
    token: &JoinToken,
    ttl_secs: u64,
    uses: u32,
    actor: &str,
) -> DirectoryCommand {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let expires = GeneralizedTime::from_unix(now + ttl_secs as i64, 0).canonical();
    DirectoryCommand::Add {
        dn: token_dn(suffix, &token.id),
        attrs: vec![
            Attribute::new("objectClass", ["top", "pigeonairJoinToken"]),
            Attribute::new("cn", [&token.id]),
            Attribute::new("pigeonairTokenId", [&token.id]),
            Attribute::new("pigeonairTokenHash", [token.secret_hash()]),
            Attribute::new("pigeonairTokenExpires", [expires]),
            Attribute::new("pigeonairTokenUses", [uses.to_string()]),
        ],
        meta: WriteMeta::now(actor),
    }
}

/// Why a token does not admit a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TokenRefusal {
    /// No token with that id (never made, or revoked).
    #[error("unknown or revoked join token")]
    Unknown,
    /// Past its expiry.
    #[error("the join token has expired")]
    Expired,
    /// No uses left.
    #[error("the join token has been used up")]
    UsedUp,
    /// The secret does not match.
    #[error("the join token's secret is wrong")]
    Forged,
}

/// A token entry as listed by `pigeonair token list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The token id.
    pub id: String,
    /// Expiry (Generalized Time).
    pub expires: String,
    /// Joins left.
    pub uses: u32,
}

/// Read a token entry.
pub fn token_info(e: &StoredEntry) -> Option<TokenInfo> {
    Some(TokenInfo {
        id: e.first_str("pigeonairTokenId")?.to_string(),
        expires: e.first_str("pigeonairTokenExpires")?.to_string(),
        uses: e.first_str("pigeonairTokenUses")?.parse().ok()?,
    })
}

/// Check a presented token against its stored entry (`None`: no entry); on success
/// returns the uses left before this join.
pub fn check(
    entry: Option<&StoredEntry>,
    token_id: &str,
    secret: &str,
    now_unix: i64,
) -> Result<u32, TokenRefusal> {
    let e = entry.ok_or(TokenRefusal::Unknown)?;
    let info = token_info(e).ok_or(TokenRefusal::Unknown)?;
    if info.id != token_id {
        return Err(TokenRefusal::Unknown);
    }
    let stored = e.first_str("pigeonairTokenHash").unwrap_or_default();
    let presented = sha256_hex(secret.as_bytes());
    let same = stored.len() == presented.len()
        && stored
            .bytes()
            .zip(presented.bytes())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0;
    if !same {
        return Err(TokenRefusal::Forged);
    }
    let expires = parse_generalized_time(&info.expires).ok_or(TokenRefusal::Expired)?;
    if expires <= GeneralizedTime::from_unix(now_unix, 0) {
        return Err(TokenRefusal::Expired);
    }
    if info.uses == 0 {
        return Err(TokenRefusal::UsedUp);
    }
    Ok(info.uses)
}

/// What a joining node sends (over a connection pinned to the cluster CA).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token id.
    pub token_id: String,
    /// The token secret.
    pub secret: String,
    /// The new node's name.
    pub name: String,
    /// Its cluster address as others should dial it.
    pub advertise: String,
}

/// The answer to a [`JoinRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinReply {
    /// Admitted as a learner.
    Accepted(Box<JoinGrant>),
    /// This node is not the leader; ask that one.
    Redirect {
        /// The leader's cluster address, if known.
        leader: Option<String>,
    },
    /// Refused, with the reason.
    Refused(String),
}

/// What an admitted node receives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinGrant {
    /// Its node id.
    pub node_id: NodeId,
    /// The cluster's id.
    pub cluster_id: String,
    /// The CA certificate.
    pub ca_pem: String,
    /// The CA key (every voter can sign joins once it leads).
    pub ca_key_pem: String,
    /// The node's certificate.
    pub cert_pem: String,
    /// The node's key.
    pub key_pem: String,
    /// The members when it was admitted.
    pub members: Vec<(NodeId, ClusterNode)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_rejects() {
        let t = JoinToken::generate(&"ab".repeat(32));
        assert_eq!(JoinToken::parse(&t.to_string()).unwrap(), t);
        assert!(JoinToken::parse("PA1.x.y.z").is_err());
        assert!(JoinToken::parse("PA2.a.b.".to_string().as_str()).is_err());
    }

    #[test]
    fn checks_each_refusal() {
        let t = JoinToken::generate(&"cd".repeat(32));
        let DirectoryCommand::Add { dn, attrs, .. } =
            create_command("dc=p", &t, 3600, 1, "cn=admin")
        else {
            panic!()
        };
        let mut e = StoredEntry {
            dn,
            key: String::new(),
            attrs,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(check(Some(&e), &t.id, &t.secret, now), Ok(1));
        assert_eq!(
            check(Some(&e), &t.id, "wrong", now),
            Err(TokenRefusal::Forged)
        );
        assert_eq!(
            check(None, &t.id, &t.secret, now),
            Err(TokenRefusal::Unknown)
        );
        assert_eq!(
            check(Some(&e), &t.id, &t.secret, now + 7200),
            Err(TokenRefusal::Expired)
        );
        e.set("pigeonairTokenUses", vec![b"0".to_vec()]);
        assert_eq!(
            check(Some(&e), &t.id, &t.secret, now),
            Err(TokenRefusal::UsedUp)
        );
    }
}

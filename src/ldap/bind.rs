//! Bind (RFC 4511 section 4.2, RFC 4513): anonymous and simple.

use rasn_ldap::{AuthenticationChoice, BindRequest, BindResponse, ProtocolOp, ResultCode};

use super::session::{ConnInfo, Reply};
use super::{Identity, LdapContext};
use crate::directory::dn::Dn;
use crate::directory::password;

fn response(code: ResultCode, message: &str) -> ProtocolOp {
    ProtocolOp::BindResponse(BindResponse::new(
        code,
        "".into(),
        message.into(),
        None,
        None,
    ))
}

/// Handle a bind; returns the connection's identity afterwards (anonymous on failure,
/// as RFC 4513 section 4 asks).
pub async fn handle(
    ctx: &LdapContext,
    reply: &Reply,
    req: BindRequest,
    conn: &ConnInfo,
) -> Identity {
    if req.version != 3 {
        reply
            .send(
                response(ResultCode::ProtocolError, "only LDAPv3 is supported"),
                None,
            )
            .await;
        return Identity::default();
    }
    let (name, password) = match req.authentication {
        AuthenticationChoice::Simple(pw) => (req.name.0, pw.to_vec()),
        AuthenticationChoice::Sasl(creds) if creds.mechanism.0.eq_ignore_ascii_case("PLAIN") => {
            match plain_identity(ctx, creds.credentials.as_deref().unwrap_or_default()).await {
                Some((dn, pw)) => (dn, pw),
                None => {
                    crate::metrics::inc(&crate::metrics::LDAP_BINDS_FAILED);
                    reply
                        .send(
                            response(ResultCode::InvalidCredentials, "invalid credentials"),
                            None,
                        )
                        .await;
                    return Identity::default();
                }
            }
        }
        _ => {
            reply
                .send(
                    response(
                        ResultCode::AuthMethodNotSupported,
                        "supported SASL mechanisms: PLAIN",
                    ),
                    None,
                )
                .await;
            return Identity::default();
        }
    };
    if name.is_empty() && password.is_empty() {
        reply.send(response(ResultCode::Success, ""), None).await;
        return Identity::default();
    }
    if conn.require_tls_for_bind && !conn.secure {
        crate::metrics::inc(&crate::metrics::LDAP_BINDS_CLEAR_REFUSED);
        tracing::warn!(peer = %conn.peer, dn = %name, "simple bind refused on an unencrypted connection");
        reply
            .send(
                response(
                    ResultCode::ConfidentialityRequired,
                    "use TLS (LDAPS or StartTLS) to bind with a password",
                ),
                None,
            )
            .await;
        return Identity::default();
    }
    if password.is_empty() {
        // An unauthenticated bind (RFC 4513 section 5.1.2) is refused.
        reply
            .send(
                response(
                    ResultCode::UnwillingToPerform,
                    "unauthenticated bind (DN with no password) not allowed",
                ),
                None,
            )
            .await;
        return Identity::default();
    }
    // Failed binds slow down further binds for the same DN and from the same address.
    let dn_key = Dn::parse(&name)
        .ok()
        .and_then(|d| ctx.dir.schema().dn_key(&d).ok())
        .unwrap_or_else(|| name.to_ascii_lowercase());
    let delay = ctx.throttle.delay(&dn_key, conn.peer.ip());
    if !delay.is_zero() {
        crate::metrics::inc(&crate::metrics::LDAP_BINDS_THROTTLED);
        tokio::time::sleep(delay).await;
    }
    match verify(ctx, &name, password).await {
        Some(identity) => {
            tracing::info!(dn = %identity.dn, "bind");
            crate::metrics::inc(&crate::metrics::LDAP_BINDS_OK);
            ctx.throttle.succeeded(&dn_key, conn.peer.ip());
            reply.send(response(ResultCode::Success, ""), None).await;
            identity
        }
        None => {
            tracing::warn!(dn = %name, peer = %conn.peer, "bind failed: invalid credentials");
            crate::metrics::inc(&crate::metrics::LDAP_BINDS_FAILED);
            ctx.throttle.failed(&dn_key, conn.peer.ip());
            reply
                .send(
                    response(ResultCode::InvalidCredentials, "invalid credentials"),
                    None,
                )
                .await;
            Identity::default()
        }
    }
}

/// Check a DN and password; the identity when they match. The same answer (None) for
/// a missing entry, no password and a wrong password, so nothing leaks.
pub async fn verify(ctx: &LdapContext, name: &str, password: Vec<u8>) -> Option<Identity> {
    // The rules must grant `auth` on the entry's password to an anonymous requester;
    // the cluster administrators may always authenticate, so no rule set can lock them
    // out.
    let key = Dn::parse(name)
        .ok()
        .and_then(|d| ctx.dir.schema().dn_key(&d).ok())?;
    let admin = ctx.admin_keys.contains(&key);
    if !admin {
        let checker = super::access::Checker::new(ctx, &ctx.dir, &Identity::default()).ok()?;
        if !checker.may_bind_as(name) {
            return None;
        }
    }
    let dir = ctx.dir.clone();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let entry = dir.view().ok()?.find(&name).ok()??;
        let stored = entry.get("userPassword")?;
        let ok = stored.values.iter().any(|v| password::verify(&password, v));
        ok.then(|| Identity {
            dn: entry.dn.clone(),
            admin,
            key,
        })
    })
    .await
    .ok()
    .flatten()
}

/// SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL password`. The authentication id is
/// a DN (`dn:` prefix optional) or a user name (`u:` prefix optional) matched against
/// `mail` and then `uid`, which must name exactly one entry. An authorization id other
/// than the authenticated identity (proxy authorization) is refused. Returns the DN and
/// the password to check.
async fn plain_identity(ctx: &LdapContext, message: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut parts = message.split(|&b| b == 0);
    let (authzid, authcid, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || authcid.is_empty() || password.is_empty() {
        return None;
    }
    let authcid = std::str::from_utf8(authcid).ok()?.to_string();
    let authzid = std::str::from_utf8(authzid).ok()?.to_string();
    let dir = ctx.dir.clone();
    let dn = tokio::task::spawn_blocking(move || -> Option<String> {
        let id = authcid.strip_prefix("u:").unwrap_or(&authcid);
        if let Some(dn) = authcid.strip_prefix("dn:").map(str::to_string).or_else(|| {
            Dn::parse(&authcid)
                .ok()
                .filter(|d| !d.is_root() && authcid.contains('='))
                .map(|_| authcid.clone())
        }) {
            return Some(dn);
        }
        let view = dir.view().ok()?;
        let base = dir.suffix().to_string();
        for attr in ["mail", "uid"] {
            let filter =
                crate::directory::filter::Filter::Equality(attr.into(), id.as_bytes().to_vec());
            let mut found = Vec::new();
            let req = crate::directory::SearchRequest {
                base: &base,
                scope: crate::directory::Scope::Subtree,
                filter: &filter,
                size_limit: 2,
                deadline: None,
                view: None,
            };
            let _ = view.search(&req, |_, e| {
                found.push(e.dn);
                true
            });
            match found.len() {
                1 => return found.pop(),
                0 => continue,
                _ => return None,
            }
        }
        None
    })
    .await
    .ok()??;
    let same = authzid.is_empty()
        || authzid
            .strip_prefix("dn:")
            .is_some_and(|z| z.eq_ignore_ascii_case(&dn))
        || authzid
            == format!(
                "u:{}",
                String::from_utf8_lossy(message.split(|&b| b == 0).nth(1).unwrap_or_default())
            );
    same.then(|| (dn, password.to_vec()))
}

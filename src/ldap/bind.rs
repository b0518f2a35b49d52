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
    let password = match req.authentication {
        AuthenticationChoice::Simple(pw) => pw.to_vec(),
        _ => {
            reply
                .send(
                    response(
                        ResultCode::AuthMethodNotSupported,
                        "SASL mechanisms are not supported yet",
                    ),
                    None,
                )
                .await;
            return Identity::default();
        }
    };
    let name = req.name.0;
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
    // The rules must grant `auth` on the entry's password to an anonymous requester.
    let checker = super::access::Checker::new(ctx, &ctx.dir, &Identity::default()).ok()?;
    if !checker.may_bind_as(name) {
        return None;
    }
    drop(checker);
    let dir = ctx.dir.clone();
    let admin_keys = ctx.admin_keys.clone();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let dn = Dn::parse(&name).ok()?;
        let key = dir.schema().dn_key(&dn).ok()?;
        let entry = dir.view().ok()?.find(&name).ok()??;
        let stored = entry.get("userPassword")?;
        let ok = stored.values.iter().any(|v| password::verify(&password, v));
        ok.then(|| Identity {
            dn: entry.dn.clone(),
            admin: admin_keys.contains(&key),
            key,
        })
    })
    .await
    .ok()
    .flatten()
}

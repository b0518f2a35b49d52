//! Bind (RFC 4511 section 4.2, RFC 4513): anonymous, simple, SASL PLAIN and SASL
//! EXTERNAL (a verified TLS client certificate).

use rasn_ldap::{AuthenticationChoice, BindRequest, BindResponse, ProtocolOp, ResultCode};

use super::session::{ConnInfo, Reply};
use super::{Identity, LdapContext};
use crate::directory::dn::Dn;

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
        AuthenticationChoice::Sasl(creds) if creds.mechanism.0.eq_ignore_ascii_case("EXTERNAL") => {
            return external(
                ctx,
                reply,
                creds.credentials.as_deref().unwrap_or_default(),
                conn,
            )
            .await;
        }
        _ => {
            reply
                .send(
                    response(
                        ResultCode::AuthMethodNotSupported,
                        "supported SASL mechanisms: PLAIN, EXTERNAL",
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
    let delay = ctx.auth.throttle.delay(&dn_key, conn.peer.ip());
    if !delay.is_zero() {
        crate::metrics::inc(&crate::metrics::LDAP_BINDS_THROTTLED);
        tokio::time::sleep(delay).await;
    }
    match ctx.auth.verify(&name, password).await {
        Some(identity) => {
            tracing::info!(dn = %identity.dn, "bind");
            crate::metrics::inc(&crate::metrics::LDAP_BINDS_OK);
            ctx.auth.throttle.succeeded(&dn_key, conn.peer.ip());
            reply.send(response(ResultCode::Success, ""), None).await;
            identity
        }
        None => {
            tracing::warn!(dn = %name, peer = %conn.peer, "bind failed: invalid credentials");
            crate::metrics::inc(&crate::metrics::LDAP_BINDS_FAILED);
            ctx.auth.throttle.failed(&dn_key, conn.peer.ip());
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

/// SASL EXTERNAL (RFC 4422 appendix A, RFC 4513 section 5.2.3): the identity is the
/// entry the connection's TLS client certificate names. The authorization id, if any,
/// must be `dn:` of that same entry.
async fn external(ctx: &LdapContext, reply: &Reply, authzid: &[u8], conn: &ConnInfo) -> Identity {
    let Some(names) = conn.client_cert.clone() else {
        reply
            .send(
                response(
                    ResultCode::InappropriateAuthentication,
                    "SASL EXTERNAL needs a TLS client certificate (LDAPS or StartTLS)",
                ),
                None,
            )
            .await;
        return Identity::default();
    };
    let subject = names.subject.clone();
    let refuse = |message: &'static str| async move {
        tracing::warn!(peer = %conn.peer, %subject, "EXTERNAL bind refused: {message}");
        crate::metrics::inc(&crate::metrics::LDAP_BINDS_FAILED);
        reply
            .send(response(ResultCode::InvalidCredentials, message), None)
            .await;
        Identity::default()
    };
    let Some(identity) = certificate_identity(ctx, &names).await else {
        return refuse("the client certificate names no entry of this directory").await;
    };
    let authzid = String::from_utf8_lossy(authzid);
    let same = authzid.is_empty()
        || authzid.strip_prefix("dn:").is_some_and(|z| {
            Dn::parse(z)
                .ok()
                .and_then(|d| ctx.dir.schema().dn_key(&d).ok())
                .is_some_and(|k| k == identity.key)
        });
    if !same {
        return refuse("the authorization id must be the certificate's own entry").await;
    }
    if !identity.admin {
        let allowed = ctx
            .auth
            .checker(&Identity::default())
            .is_ok_and(|c| c.may_bind_as(&identity.dn));
        if !allowed {
            return refuse("the access rules do not allow this entry to bind").await;
        }
    }
    tracing::info!(dn = %identity.dn, subject = %names.subject, "EXTERNAL bind");
    crate::metrics::inc(&crate::metrics::LDAP_BINDS_OK);
    reply.send(response(ResultCode::Success, ""), None).await;
    identity
}

/// The entry a client certificate names: the DN of an `ldap:///<dn>` alternative name
/// (what `pigeonair cert issue` writes), else the subject read as a DN, else the one
/// entry whose `mail` is an e-mail address of the certificate. It must exist.
async fn certificate_identity(
    ctx: &LdapContext,
    names: &crate::net::tls::ClientNames,
) -> Option<Identity> {
    let dir = ctx.dir.clone();
    let names = names.clone();
    let found = tokio::task::spawn_blocking(move || -> Option<(String, String)> {
        let view = dir.view().ok()?;
        let by_dn = names
            .ldap_dns
            .iter()
            .chain(std::iter::once(&names.subject))
            .find_map(|dn| view.find(dn).ok().flatten());
        let entry_dn = match by_dn {
            Some(entry) => entry.dn,
            None => names.emails.iter().find_map(|mail| {
                let mut found = entries_with(&dir, &view, "mail", mail);
                (found.len() == 1).then(|| found.pop()).flatten()
            })?,
        };
        let key = dir.schema().dn_key(&Dn::parse(&entry_dn).ok()?).ok()?;
        Some((entry_dn, key))
    })
    .await
    .ok()??;
    let (dn, key) = found;
    Some(Identity {
        admin: ctx.auth.is_admin(&key),
        dn,
        key,
    })
}

/// The DNs of the entries under the suffix whose `attr` equals `value`: none, one, or
/// two when there are several.
fn entries_with(
    dir: &crate::directory::Directory,
    view: &crate::directory::DirView<'_>,
    attr: &str,
    value: &str,
) -> Vec<String> {
    let filter = crate::directory::filter::Filter::Equality(attr.into(), value.as_bytes().to_vec());
    let base = dir.suffix().to_string();
    let mut found = Vec::new();
    let req = crate::directory::SearchRequest {
        base: &base,
        scope: crate::directory::Scope::Subtree,
        filter: &filter,
        size_limit: 2,
        deadline: None,
        view: None,
        subordinates: false,
        keep: None,
    };
    let _ = view.search(&req, |_, e| {
        found.push(e.dn);
        true
    });
    found
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
        for attr in ["mail", "uid"] {
            let mut found = entries_with(&dir, &view, attr, id);
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

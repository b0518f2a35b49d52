//! Extended operations: Who am I? (RFC 4532) and Password Modify (RFC 3062). Any other
//! request name gets protocolError, as RFC 4511 section 4.12 says.

use rasn::prelude::*;
use rasn_ldap::{ExtendedRequest, ExtendedResponse, ProtocolOp, ResultCode};

use super::session::Reply;
use super::{Identity, LdapContext};
use crate::directory::dn::Dn;
use crate::directory::{password, Change, ChangeOp, DirectoryCommand, WriteMeta};

/// Password Modify.
pub const PASSWORD_MODIFY: &str = "1.3.6.1.4.1.4203.1.11.1";
/// Who am I?
pub const WHO_AM_I: &str = "1.3.6.1.4.1.4203.1.11.3";
/// StartTLS (answered by the session).
pub const START_TLS: &str = "1.3.6.1.4.1.1466.20037";
/// The extended operations PigeonAir offers, for the Root DSE.
pub const SUPPORTED: &[&str] = &[PASSWORD_MODIFY, WHO_AM_I];

/// `PasswdModifyRequestValue` of RFC 3062.
#[derive(AsnType, Decode, Encode, Debug, Default)]
pub struct PasswdModifyRequestValue {
    /// Whose password (a DN); absent: the bound user.
    #[rasn(tag(context, 0))]
    pub user_identity: Option<OctetString>,
    /// The current password.
    #[rasn(tag(context, 1))]
    pub old_passwd: Option<OctetString>,
    /// The new password; absent: the server generates one.
    #[rasn(tag(context, 2))]
    pub new_passwd: Option<OctetString>,
}

/// `PasswdModifyResponseValue` of RFC 3062.
#[derive(AsnType, Decode, Encode, Debug, Default)]
pub struct PasswdModifyResponseValue {
    /// The generated password.
    #[rasn(tag(context, 0))]
    pub gen_passwd: Option<OctetString>,
}

/// An extended response.
pub fn response(
    code: ResultCode,
    message: &str,
    name: Option<&str>,
    value: Option<Vec<u8>>,
) -> ExtendedResponse {
    ExtendedResponse {
        result_code: code,
        matched_dn: "".into(),
        diagnostic_message: message.into(),
        referral: None,
        response_name: name.map(|n| OctetString::from(n.as_bytes().to_vec())),
        response_value: value.map(OctetString::from),
    }
}

/// True for a StartTLS request.
pub fn is_start_tls(req: &ExtendedRequest) -> bool {
    req.request_name.as_ref() == START_TLS.as_bytes()
}

/// Handle an extended request.
pub async fn handle(ctx: &LdapContext, who: &Identity, reply: &Reply, req: ExtendedRequest) {
    let name = String::from_utf8_lossy(&req.request_name).into_owned();
    let resp = match name.as_str() {
        WHO_AM_I => {
            let authz = if who.is_anonymous() {
                Vec::new()
            } else {
                format!("dn:{}", who.dn).into_bytes()
            };
            response(ResultCode::Success, "", None, Some(authz))
        }
        PASSWORD_MODIFY => password_modify(ctx, who, req.request_value.map(|v| v.to_vec())).await,
        _ => response(
            ResultCode::ProtocolError,
            "unsupported extended operation",
            None,
            None,
        ),
    };
    reply.send(ProtocolOp::ExtendedResp(resp), None).await;
}

async fn password_modify(
    ctx: &LdapContext,
    who: &Identity,
    value: Option<Vec<u8>>,
) -> ExtendedResponse {
    let req = match value {
        None => PasswdModifyRequestValue::default(),
        Some(v) => match rasn::ber::decode::<PasswdModifyRequestValue>(&v) {
            Ok(r) => r,
            Err(_) => {
                return response(
                    ResultCode::ProtocolError,
                    "malformed password modify request",
                    None,
                    None,
                )
            }
        },
    };
    let target = match &req.user_identity {
        Some(id) => String::from_utf8_lossy(id).into_owned(),
        None if who.is_anonymous() => {
            return response(
                ResultCode::UnwillingToPerform,
                "bind first or name the user",
                None,
                None,
            );
        }
        None => who.dn.clone(),
    };
    let schema = ctx.dir.schema();
    let Some(target_key) = Dn::parse(&target).ok().and_then(|d| schema.dn_key(&d).ok()) else {
        return response(ResultCode::NoSuchObject, "no such user", None, None);
    };
    let _ = target_key;
    // The same rule as a modify of the target's userPassword.
    if let Err(e) = crate::auth::access::authorize(
        &ctx.auth,
        who,
        crate::auth::access::Operation::Modify {
            dn: &target,
            attrs: vec!["userPassword"],
        },
    ) {
        let r = super::error::result_of(&e);
        return response(r.result_code, &r.diagnostic_message, None, None);
    }
    if let Some(old) = &req.old_passwd {
        if ctx.auth.verify(&target, old.to_vec()).await.is_none() {
            return response(
                ResultCode::InvalidCredentials,
                "the old password is not right",
                None,
                None,
            );
        }
    }
    let (new, generated) = match &req.new_passwd {
        Some(p) if !p.is_empty() => (p.to_vec(), None),
        _ => {
            let g = password::generate();
            (g.clone().into_bytes(), Some(g))
        }
    };
    let Some(hashed) = ctx.auth.hashing.run(move || password::hash(&new)).await else {
        return response(ResultCode::Other, "hashing the password failed", None, None);
    };
    let cmd = DirectoryCommand::Modify {
        dn: target,
        changes: vec![Change {
            op: ChangeOp::Replace,
            attr: "userPassword".into(),
            values: vec![hashed],
        }],
        meta: WriteMeta::now(&who.dn),
    };
    match ctx.write(cmd).await {
        Ok(()) => {
            let value = generated.map(|g| {
                rasn::ber::encode(&PasswdModifyResponseValue {
                    gen_passwd: Some(OctetString::from(g.into_bytes())),
                })
                .unwrap_or_default()
            });
            response(ResultCode::Success, "", None, value)
        }
        Err(e) => {
            let r = super::error::result_of(&e);
            response(r.result_code, &r.diagnostic_message, None, None)
        }
    }
}

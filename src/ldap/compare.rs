//! Compare (RFC 4511 section 4.10).

use rasn_ldap::{CompareRequest, CompareResponse, ProtocolOp, ResultCode};

use std::sync::Arc;

use super::error::result_of;
use super::session::Reply;
use super::{codec, Identity, LdapContext};
use crate::auth::access::Checker;
use crate::directory::eval::{evaluate, Truth};
use crate::directory::filter::Filter;
use crate::directory::DirError;

/// Handle a compare request.
pub async fn handle(ctx: &Arc<LdapContext>, who: &Identity, reply: &Reply, req: CompareRequest) {
    let dir = ctx.dir.clone();
    let (ctx, who) = (ctx.clone(), who.clone());
    let result = tokio::task::spawn_blocking(move || {
        let schema = dir.schema();
        let attr = req.ava.attribute_desc.0;
        let Some(at) = schema.attr(&attr) else {
            return codec::result(
                ResultCode::UndefinedAttributeType,
                "",
                "attribute type is not defined",
            );
        };
        if at.equality.is_none() {
            return codec::result(
                ResultCode::InappropriateMatching,
                "",
                "attribute has no equality matching rule",
            );
        }
        let checker = match Checker::new(&ctx.auth, &who) {
            Ok(c) => c,
            Err(e) => return result_of(&e),
        };
        // A hidden entry answers like a missing one; a visible one needs compare right.
        let entry = match checker.visible(&req.entry.0) {
            Ok(e) => e,
            Err(e) => return result_of(&e),
        };
        if !checker.with(|acl, w, a| acl.may_compare(schema, w, &entry, at.name(), a)) {
            return result_of(&DirError::InsufficientAccess);
        }
        let filter = Filter::Equality(attr, req.ava.assertion_value.to_vec());
        match evaluate(schema, &filter, &entry, 0) {
            Truth::True => codec::result(ResultCode::CompareTrue, "", ""),
            Truth::False if entry.get(at.name()).is_none() => {
                codec::result(ResultCode::NoSuchAttribute, "", "no such attribute")
            }
            Truth::False => codec::result(ResultCode::CompareFalse, "", ""),
            Truth::Undefined => codec::result(
                ResultCode::InvalidAttributeSyntax,
                "",
                "assertion value is not valid",
            ),
        }
    })
    .await
    .unwrap_or_else(|_| codec::result(ResultCode::Other, "", "compare failed"));
    reply
        .send(ProtocolOp::CompareResponse(CompareResponse(result)), None)
        .await;
}

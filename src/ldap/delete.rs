//! Delete (RFC 4511 section 4.8).

use rasn_ldap::{DelRequest, DelResponse, ProtocolOp, ResultCode};

use super::error::result_of;
use super::session::Reply;
use super::{codec, Identity, LdapContext};
use crate::auth::access::{authorize, Operation};
use crate::directory::{DirectoryCommand, WriteMeta};

/// Handle a delete request.
pub async fn handle(ctx: &LdapContext, who: &Identity, reply: &Reply, req: DelRequest) {
    let result = if let Err(e) = authorize(&ctx.auth, who, Operation::Delete { dn: &req.0 .0 }) {
        result_of(&e)
    } else {
        match ctx
            .write(DirectoryCommand::Delete {
                dn: req.0 .0,
                meta: WriteMeta::now(&who.dn),
            })
            .await
        {
            Ok(()) => codec::result(ResultCode::Success, "", ""),
            Err(e) => result_of(&e),
        }
    };
    reply
        .send(ProtocolOp::DelResponse(DelResponse(result)), None)
        .await;
}

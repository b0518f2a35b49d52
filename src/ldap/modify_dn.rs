//! Modify DN (RFC 4511 section 4.9): rename, and move with the whole subtree.

use rasn_ldap::{ModifyDnRequest, ModifyDnResponse, ProtocolOp, ResultCode};

use super::error::result_of;
use super::session::Reply;
use super::{codec, Identity, LdapContext};
use crate::auth::access::{authorize, Operation};
use crate::directory::dn::Dn;
use crate::directory::{DirectoryCommand, WriteMeta};

/// Handle a modify DN request.
pub async fn handle(ctx: &LdapContext, who: &Identity, reply: &Reply, req: ModifyDnRequest) {
    let new_dn = {
        let parent = match &req.new_superior {
            Some(s) => s.0.clone(),
            None => Dn::parse(&req.entry.0)
                .map(|d| d.parent().to_string())
                .unwrap_or_default(),
        };
        if parent.is_empty() {
            req.new_rdn.0.clone()
        } else {
            format!("{},{parent}", req.new_rdn.0)
        }
    };
    let result = if let Err(e) = authorize(
        &ctx.auth,
        who,
        Operation::Rename {
            dn: &req.entry.0,
            new_dn,
        },
    ) {
        result_of(&e)
    } else {
        let cmd = DirectoryCommand::ModifyDn {
            dn: req.entry.0,
            new_rdn: req.new_rdn.0,
            delete_old_rdn: req.delete_old_rdn,
            new_superior: req.new_superior.map(|s| s.0),
            meta: WriteMeta::now(&who.dn),
        };
        match ctx.write(cmd).await {
            Ok(()) => codec::result(ResultCode::Success, "", ""),
            Err(e) => result_of(&e),
        }
    };
    reply
        .send(ProtocolOp::ModDnResponse(ModifyDnResponse(result)), None)
        .await;
}

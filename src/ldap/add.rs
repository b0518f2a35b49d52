//! Add (RFC 4511 section 4.7).

use rasn_ldap::{AddRequest, AddResponse, ProtocolOp, ResultCode};

use super::error::result_of;
use super::session::Reply;
use super::{codec, Identity, LdapContext};
use crate::auth::access::{authorize, Operation};
use crate::directory::entry::Attribute;
use crate::directory::{DirectoryCommand, WriteMeta};

/// Handle an add request.
pub async fn handle(ctx: &LdapContext, who: &Identity, reply: &Reply, req: AddRequest) {
    let send = |r| reply.send(ProtocolOp::AddResponse(AddResponse(r)), None);
    let mut attrs = Vec::with_capacity(req.attributes.len());
    for a in req.attributes {
        let values: Vec<Vec<u8>> = a.vals.into_vec().into_iter().map(|v| v.to_vec()).collect();
        attrs.push(Attribute {
            name: a.r#type.0,
            values,
        });
    }
    if let Err(e) = authorize(
        &ctx.auth,
        who,
        Operation::Add {
            dn: &req.entry.0,
            attrs: &attrs,
        },
    ) {
        send(result_of(&e)).await;
        return;
    }
    // Clear-text passwords are hashed once the add is allowed.
    let attrs = match ctx
        .hash_passwords(attrs, |a| Some((a.name.as_str(), &mut a.values)))
        .await
    {
        Ok(attrs) => attrs,
        Err(refused) => {
            send(refused).await;
            return;
        }
    };
    let cmd = DirectoryCommand::Add {
        dn: req.entry.0,
        attrs,
        meta: WriteMeta::now(&who.dn),
    };
    let result = match ctx.write(cmd).await {
        Ok(()) => codec::result(ResultCode::Success, "", ""),
        Err(e) => result_of(&e),
    };
    send(result).await;
}

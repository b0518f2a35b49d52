//! Modify (RFC 4511 section 4.6) with increment (RFC 4525).

use rasn_ldap::{ChangeOperation, ModifyRequest, ModifyResponse, ProtocolOp, ResultCode};

use super::error::result_of;
use super::session::Reply;
use super::{codec, Identity, LdapContext};
use crate::auth::access::{authorize, Operation};
use crate::directory::{Change, ChangeOp, DirectoryCommand, WriteMeta};

/// The three operations rasn-ldap names; increment arrives through
/// [`decode_with_increment`].
fn op_of(op: ChangeOperation) -> ChangeOp {
    match op {
        ChangeOperation::Add => ChangeOp::Add,
        ChangeOperation::Delete => ChangeOp::Delete,
        ChangeOperation::Replace => ChangeOp::Replace,
    }
}

/// One change of a request.
fn change_of(op: ChangeOp, modification: rasn_ldap::PartialAttribute) -> Change {
    let values: Vec<Vec<u8>> = modification
        .vals
        .into_vec()
        .into_iter()
        .map(|v| v.to_vec())
        .collect();
    Change {
        op,
        attr: modification.r#type.0,
        values,
    }
}

/// Handle a modify request.
pub async fn handle(ctx: &LdapContext, who: &Identity, reply: &Reply, req: ModifyRequest) {
    let mut changes = Vec::with_capacity(req.changes.len());
    for c in req.changes {
        changes.push(change_of(op_of(c.operation), c.modification));
    }
    handle_changes(ctx, who, reply, req.object.0, changes).await;
}

mod wire {
    //! A ModifyRequest whose operation is read as a plain ENUMERATED number, so RFC 4525's
    //! `increment` (3) decodes; rasn-ldap's own enum stops at replace (2).
    use rasn::prelude::*;
    use rasn_ldap::{Controls, LdapString, PartialAttribute};

    #[derive(AsnType, Decode, Debug)]
    pub struct Message {
        pub message_id: u32,
        pub op: Request,
        #[rasn(tag(0))]
        pub controls: Option<Controls>,
    }

    #[derive(AsnType, Decode, Debug)]
    #[rasn(tag(application, 6))]
    pub struct Request {
        pub object: LdapString,
        pub changes: Vec<Item>,
    }

    #[derive(AsnType, Decode, Debug)]
    pub struct Item {
        #[rasn(tag(universal, 10))]
        pub operation: Integer,
        pub modification: PartialAttribute,
    }
}

/// A modify request decoded with RFC 4525 increments: (message id, controls, DN, changes).
pub type ModifyWithIncrement = (u32, Vec<rasn_ldap::Control>, String, Vec<Change>);

/// Decode a frame that rasn-ldap refused as a modify request carrying `increment`.
pub fn decode_with_increment(frame: &[u8]) -> Option<ModifyWithIncrement> {
    let msg = std::panic::catch_unwind(|| rasn::ber::decode::<wire::Message>(frame))
        .ok()?
        .ok()?;
    let mut changes = Vec::new();
    for item in msg.op.changes {
        let op = match i64::try_from(&item.operation).ok()? {
            0 => ChangeOp::Add,
            1 => ChangeOp::Delete,
            2 => ChangeOp::Replace,
            3 => ChangeOp::Increment,
            _ => return None,
        };
        changes.push(change_of(op, item.modification));
    }
    Some((
        msg.message_id,
        msg.controls.unwrap_or_default(),
        msg.op.object.0,
        changes,
    ))
}

/// Apply a modify decoded by [`decode_with_increment`].
pub async fn handle_changes(
    ctx: &LdapContext,
    who: &Identity,
    reply: &Reply,
    dn: String,
    changes: Vec<Change>,
) {
    let attrs: Vec<&str> = changes.iter().map(|c| c.attr.as_str()).collect();
    let allowed = authorize(&ctx.auth, who, Operation::Modify { dn: &dn, attrs });
    let changes = match allowed {
        // The clear-text passwords that changes add or put in place.
        Ok(()) => {
            ctx.hash_passwords(changes, |c| match c.op {
                ChangeOp::Add | ChangeOp::Replace => Some((c.attr.as_str(), &mut c.values)),
                _ => None,
            })
            .await
        }
        Err(e) => Err(result_of(&e)),
    };
    let result = match changes {
        Err(refused) => refused,
        Ok(changes) => {
            match ctx
                .write(DirectoryCommand::Modify {
                    dn,
                    changes,
                    meta: WriteMeta::now(&who.dn),
                })
                .await
            {
                Ok(()) => codec::result(ResultCode::Success, "", ""),
                Err(e) => result_of(&e),
            }
        }
    };
    reply
        .send(ProtocolOp::ModifyResponse(ModifyResponse(result)), None)
        .await;
}

//! Directory errors to LDAP results, in one place.

use rasn_ldap::{
    AddResponse, BindResponse, CompareResponse, DelResponse, LdapResult, ModifyDnResponse,
    ModifyResponse, ProtocolOp, ResultCode, SearchResultDone,
};

use super::codec;
use super::extended;
use super::session::Reply;
use crate::directory::schema::Violation;
use crate::directory::DirError;

/// The LDAP result for a directory error. Messages are short and reveal nothing about
/// the configuration; storage failures are logged, not shown.
pub fn result_of(e: &DirError) -> LdapResult {
    let (code, matched) = match e {
        DirError::NoSuchObject { matched } => (ResultCode::NoSuchObject, matched.as_str()),
        DirError::AlreadyExists => (ResultCode::EntryAlreadyExists, ""),
        DirError::NotAllowedOnNonLeaf => (ResultCode::NotAllowedOnNonLeaf, ""),
        DirError::NotAllowedOnRdn(_) => (ResultCode::NotAllowedOnRdn, ""),
        DirError::ObjectClassModsProhibited(_) => (ResultCode::ObjectClassModsProhibited, ""),
        DirError::NoSuchAttribute(_) => (ResultCode::NoSuchAttribute, ""),
        DirError::AttributeOrValueExists(_) => (ResultCode::AttributeOrValueExists, ""),
        DirError::Schema(v) => (
            match v {
                Violation::UndefinedAttribute(_) => ResultCode::UndefinedAttributeType,
                Violation::InvalidSyntax(_) => ResultCode::InvalidAttributeSyntax,
                Violation::ObjectClass(_) => ResultCode::ObjectClassViolation,
                Violation::Constraint(_) | Violation::NoUserModification(_) => {
                    ResultCode::ConstraintViolation
                }
                Violation::InvalidDn(_) => ResultCode::InvalidDnSyntax,
                Violation::Naming(_) => ResultCode::NamingViolation,
                Violation::InappropriateMatching(_) => ResultCode::InappropriateMatching,
            },
            "",
        ),
        DirError::UnwillingToPerform(_) => (ResultCode::UnwillingToPerform, ""),
        DirError::Unavailable(_) => (ResultCode::Unavailable, ""),
        DirError::InsufficientAccess => (ResultCode::InsufficientAccessRights, ""),
        DirError::SizeLimit => (ResultCode::SizeLimitExceeded, ""),
        DirError::TimeLimit => (ResultCode::TimeLimitExceeded, ""),
        DirError::Store(s) => {
            tracing::error!(error = %s, "directory storage failed");
            return codec::result(ResultCode::Other, "", "internal error");
        }
    };
    codec::result(code, matched, &e.to_string())
}

/// The response operation that answers a request, carrying `result`.
pub fn response_for(request: &ProtocolOp, result: LdapResult) -> ProtocolOp {
    match request {
        ProtocolOp::BindRequest(_) => ProtocolOp::BindResponse(BindResponse::new(
            result.result_code,
            result.matched_dn,
            result.diagnostic_message,
            None,
            None,
        )),
        ProtocolOp::SearchRequest(_) => ProtocolOp::SearchResDone(SearchResultDone(result)),
        ProtocolOp::ModifyRequest(_) => ProtocolOp::ModifyResponse(ModifyResponse(result)),
        ProtocolOp::AddRequest(_) => ProtocolOp::AddResponse(AddResponse(result)),
        ProtocolOp::DelRequest(_) => ProtocolOp::DelResponse(DelResponse(result)),
        ProtocolOp::ModDnRequest(_) => ProtocolOp::ModDnResponse(ModifyDnResponse(result)),
        ProtocolOp::CompareRequest(_) => ProtocolOp::CompareResponse(CompareResponse(result)),
        _ => ProtocolOp::ExtendedResp(extended::response(
            result.result_code,
            &result.diagnostic_message,
            None,
            None,
        )),
    }
}

/// Answer a request with an error result (nothing for abandon and unbind, which have
/// no response).
pub async fn reject(reply: &Reply, request: &ProtocolOp, code: ResultCode, message: &str) {
    if matches!(
        request,
        ProtocolOp::AbandonRequest(_) | ProtocolOp::UnbindRequest(_)
    ) {
        return;
    }
    reply
        .send(
            response_for(request, codec::result(code, "", message)),
            None,
        )
        .await;
}

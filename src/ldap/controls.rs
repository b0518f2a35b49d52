//! Request and response controls.

use rasn::prelude::*;
use rasn_ldap::{Control, ProtocolOp};

/// Simple Paged Results (RFC 2696).
pub const PAGED_RESULTS: &str = "1.2.840.113556.1.4.319";
/// ManageDsaIT (RFC 3296): accepted; PigeonAir holds no referrals.
pub const MANAGE_DSA_IT: &str = "2.16.840.1.113730.3.4.2";

/// The controls PigeonAir understands, for the Root DSE.
pub const SUPPORTED: &[&str] = &[PAGED_RESULTS, MANAGE_DSA_IT];

/// `realSearchControlValue ::= SEQUENCE { size INTEGER, cookie OCTET STRING }`
#[derive(AsnType, Decode, Encode, Debug, Clone, PartialEq, Eq)]
pub struct PagedResultsValue {
    /// Requested page size (request) or estimated total (response).
    pub size: Integer,
    /// Empty on the first request and the last response.
    pub cookie: OctetString,
}

/// The OID of the first critical control that is unknown or does not apply to the
/// operation.
pub fn unknown_critical(ctrls: &[Control], op: &ProtocolOp) -> Option<String> {
    for c in ctrls {
        let oid = String::from_utf8_lossy(&c.control_type).into_owned();
        let known = match oid.as_str() {
            PAGED_RESULTS => matches!(op, ProtocolOp::SearchRequest(_)),
            MANAGE_DSA_IT => true,
            _ => false,
        };
        if c.criticality && !known {
            return Some(oid);
        }
    }
    None
}

/// The paged-results request in a control list: (page size, cookie), or an error
/// message when the control is malformed.
pub fn paged_request(ctrls: &[Control]) -> Option<Result<(usize, Vec<u8>), String>> {
    let c = ctrls
        .iter()
        .find(|c| c.control_type.as_ref() == PAGED_RESULTS.as_bytes())?;
    let Some(value) = &c.control_value else {
        return Some(Err("paged results control without a value".into()));
    };
    Some(match rasn::ber::decode::<PagedResultsValue>(value) {
        Ok(v) => {
            let size: i64 = (&v.size).try_into().unwrap_or(-1);
            if size < 0 {
                Err("negative page size".into())
            } else {
                Ok((size as usize, v.cookie.to_vec()))
            }
        }
        Err(_) => Err("malformed paged results control".into()),
    })
}

/// A paged-results response control.
pub fn paged_response(total: usize, cookie: &[u8]) -> Control {
    let value = PagedResultsValue {
        size: Integer::from(total as i64),
        cookie: OctetString::from(cookie.to_vec()),
    };
    Control::new(
        OctetString::from(PAGED_RESULTS.as_bytes().to_vec()),
        false,
        Some(OctetString::from(
            rasn::ber::encode(&value).unwrap_or_default(),
        )),
    )
}

//! LDAPv3 front end.
pub mod filter_wire;

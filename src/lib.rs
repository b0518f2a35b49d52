//! PigeonAir: a mail cluster whose nodes each carry a replica of an LDAP directory.
pub mod cluster;
pub mod config;
pub mod directory;
pub mod ldap;
pub mod ldif;
pub mod metrics;
pub mod node;
pub mod settings;

//! Integration tests: each test starts a real `pigeonair quickstart` node on an ephemeral
//! port and talks to it with clients others wrote (ldap-utils, the `ldap3` crate,
//! Python's `ldap3` and `smtplib`, `swaks`) or with raw bytes.

mod harness;

mod access;
mod bad_input;
mod durability;
mod ldap_tools;
mod ldif_cli;
mod limits;
mod mail_imap;
mod mail_interop;
mod mail_pop3;
mod mail_smtp;
mod python_client;
mod rust_client;
mod settings;
mod tls;

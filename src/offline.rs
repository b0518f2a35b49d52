//! Work on a stopped node's data: LDIF import into the directory and LDIF export from
//! it (`pigeonair ldif import|export`).
//!
//! An import commits in large transactions synced once at the end and is allowed only
//! on a one-node cluster: it bypasses the Raft log, so the node marks its directory
//! ([`crate::cluster::member::OFFLINE_IMPORT`]) and publishes a snapshot at its next
//! start, before any node can join and miss the imported entries.

use std::io::{BufRead, Write};

use crate::config::Config;
use crate::directory::dn::Dn;
use crate::directory::entry::Attribute;
use crate::directory::filter::Filter;
use crate::directory::{
    hash_clear_passwords, Change, ChangeOp, DirError, DirectoryCommand, Scope, SearchRequest,
    WriteMeta,
};
use crate::ldif::{self, LdifError, LdifRecord, ModOp};
use crate::node::{self, NodeError};

/// Why an import or export stopped.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The node's data could not be opened.
    #[error("{0}")]
    Node(#[from] NodeError),
    /// The node belongs to a cluster of several nodes: an offline import would bypass
    /// replication.
    #[error("this node belongs to a cluster of several nodes; an offline import would bypass replication. Import on a single-node cluster before others join, or load the data through LDAP (ldapadd)")]
    Replicated,
    /// The LDIF input is malformed; the records before it were imported.
    #[error("{error} (the {imported} records before it were imported)")]
    Ldif {
        /// What is wrong.
        error: LdifError,
        /// Records imported before it.
        imported: usize,
    },
    /// A record could not be applied; the records before it were imported.
    #[error("record {}: {error} (the {imported} records before it were imported)", imported + 1)]
    Record {
        /// Why the directory refused it.
        error: DirError,
        /// Records imported before it.
        imported: usize,
    },
    /// The export base is not a DN.
    #[error("--base: {0}")]
    Base(String),
    /// The directory could not be read or marked.
    #[error("{0}")]
    Directory(String),
    /// Writing the output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The directory command an LDIF record stands for, on behalf of `actor`: clear-text
/// passwords are hashed, repeated attributes gathered into one.
pub fn command_of(record: LdifRecord, actor: &str) -> DirectoryCommand {
    let meta = WriteMeta::now(actor);
    let attrs_of = |attrs: Vec<(String, Vec<u8>)>| {
        let mut out: Vec<Attribute> = Vec::new();
        for (name, value) in attrs {
            match out.iter_mut().find(|a| a.name.eq_ignore_ascii_case(&name)) {
                Some(a) => a.values.push(value),
                None => out.push(Attribute {
                    name,
                    values: vec![value],
                }),
            }
        }
        for a in &mut out {
            hash_clear_passwords(&a.name, &mut a.values);
        }
        out
    };
    match record {
        LdifRecord::Entry { dn, attrs } | LdifRecord::Add { dn, attrs } => DirectoryCommand::Add {
            dn,
            attrs: attrs_of(attrs),
            meta,
        },
        LdifRecord::Delete { dn } => DirectoryCommand::Delete { dn, meta },
        LdifRecord::Modify { dn, mods } => DirectoryCommand::Modify {
            dn,
            changes: mods
                .into_iter()
                .map(|m| {
                    let op = match m.op {
                        ModOp::Add => ChangeOp::Add,
                        ModOp::Delete => ChangeOp::Delete,
                        ModOp::Replace => ChangeOp::Replace,
                        ModOp::Increment => ChangeOp::Increment,
                    };
                    let mut values = m.values;
                    if op != ChangeOp::Delete {
                        hash_clear_passwords(&m.attr, &mut values);
                    }
                    Change {
                        op,
                        attr: m.attr,
                        values,
                    }
                })
                .collect(),
            meta,
        },
        LdifRecord::ModRdn {
            dn,
            new_rdn,
            delete_old_rdn,
            new_superior,
        } => DirectoryCommand::ModifyDn {
            dn,
            new_rdn,
            delete_old_rdn,
            new_superior,
            meta,
        },
    }
}

/// Apply the LDIF records read from `input` to the stopped node's directory, `batch`
/// records a transaction, calling `progress` with the count so far. Returns the number
/// of records imported.
pub fn import(
    config: &Config,
    input: impl BufRead,
    batch: usize,
    progress: impl FnMut(usize),
) -> Result<usize, OfflineError> {
    let dir = node::open_directory(config)?;
    if crate::cluster::member::member_count(&dir) > 1 {
        return Err(OfflineError::Replicated);
    }
    dir.set_meta(crate::cluster::member::OFFLINE_IMPORT, b"1")
        .map_err(|e| OfflineError::Directory(e.0))?;
    let actor = config.admin_dn();
    let mut parse_error = None;
    let records = ldif::LdifReader::new(input).map_while(|r| match r {
        Ok(rec) => Some(rec),
        Err(e) => {
            parse_error = Some(e);
            None
        }
    });
    let cmds = records.map(|r| command_of(r, &actor));
    match dir.apply_bulk(cmds, batch.max(1), progress) {
        Ok(imported) => match parse_error {
            Some(error) => Err(OfflineError::Ldif { error, imported }),
            None => Ok(imported),
        },
        Err((imported, error)) => Err(OfflineError::Record { error, imported }),
    }
}

/// Write the stopped node's directory (or the subtree at `base`) to `out` as LDIF,
/// with operational attributes when `operational`. Returns the number of entries.
pub fn export<W: Write>(
    config: &Config,
    base: Option<&str>,
    operational: bool,
    out: &mut W,
) -> Result<usize, OfflineError> {
    let dir = node::open_directory(config)?;
    let base = base.unwrap_or(&config.directory.suffix).to_string();
    Dn::parse(&base).map_err(|e| OfflineError::Base(e.to_string()))?;
    ldif::write_version(out)?;
    let filter = Filter::Present("objectClass".into());
    let view = dir
        .view()
        .map_err(|e| OfflineError::Directory(e.to_string()))?;
    let schema = dir.schema().clone();
    let mut io_error = None;
    let mut n = 0usize;
    view.search(
        &SearchRequest {
            base: &base,
            scope: Scope::Subtree,
            filter: &filter,
            size_limit: 0,
            deadline: None,
            view: None,
            subordinates: false,
            keep: None,
        },
        |_, e| {
            let attrs: Vec<(String, Vec<u8>)> = e
                .attrs
                .iter()
                .filter(|a| {
                    !crate::directory::VIRTUAL_ATTRS
                        .iter()
                        .any(|v| v.eq_ignore_ascii_case(&a.name))
                })
                .filter(|a| {
                    operational || schema.attr(&a.name).is_some_and(|t| !t.is_operational())
                })
                .flat_map(|a| a.values.iter().map(|v| (a.name.clone(), v.clone())))
                .collect();
            n += 1;
            match ldif::write_entry(out, &e.dn, &attrs) {
                Ok(()) => true,
                Err(err) => {
                    io_error = Some(err);
                    false
                }
            }
        },
    )
    .map_err(|e| OfflineError::Directory(e.to_string()))?;
    if let Some(e) = io_error {
        return Err(e.into());
    }
    out.flush()?;
    Ok(n)
}

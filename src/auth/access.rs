//! Access control for every front end: the glue between a connection's identity, the
//! directory's rules (`directory::acl`) and the node's replica. Checks run on the node
//! that takes the request, against its own replica, before a write becomes a command.
//! An entry the requester may not see is answered exactly like a missing one.

use crate::directory::acl::{Acl, AclContext, LookupContext, Requester};
use crate::directory::dn::Dn;
use crate::directory::entry::StoredEntry;
use crate::directory::{DirError, DirView, Directory};

use super::{Authority, Identity};

/// What one request needs to ask access questions: the rules, the requester, and
/// group/domain lookups in a snapshot of the replica.
pub struct Checker<'d> {
    /// The rules in force when the request started.
    rules: std::sync::Arc<Acl>,
    /// Who asks.
    pub who: Requester,
    dir: &'d Directory,
    lookups: DirView<'d>,
}

impl<'d> Checker<'d> {
    /// A checker for one request.
    pub fn new(auth: &'d Authority, who: &Identity) -> Result<Checker<'d>, DirError> {
        let dir: &'d Directory = auth.directory();
        Ok(Checker {
            rules: auth.rules(),
            who: auth.requester(who),
            dir,
            lookups: dir.view()?,
        })
    }

    /// The snapshot of the replica this checker reads (one per request: searches read
    /// their entries from it too).
    pub fn view(&self) -> &DirView<'d> {
        &self.lookups
    }

    /// Run `f` with an access context over this checker's snapshot.
    pub fn with<R>(&self, f: impl FnOnce(&Acl, &Requester, &dyn AclContext) -> R) -> R {
        let lookup = |dn: &str| self.lookups.find(dn).ok().flatten();
        let actx = LookupContext::new(self.dir.schema(), &lookup);
        f(&self.rules, &self.who, &actx)
    }

    /// The answer for a missing or invisible entry: noSuchObject, matchedDN the nearest
    /// visible ancestor.
    pub fn missing(&self, dn: &str) -> DirError {
        let schema = self.dir.schema();
        let Some(key) = Dn::parse(dn).ok().and_then(|d| schema.dn_key(&d).ok()) else {
            return DirError::NoSuchObject {
                matched: String::new(),
            };
        };
        let lookup = |dn: &str| self.lookups.find(dn).ok().flatten();
        self.with(|acl, who, actx| acl.deny_as_missing(schema, who, &key, &lookup, actx))
    }

    /// The entry at `dn` if it exists and is visible; otherwise the noSuchObject answer.
    pub fn visible(&self, dn: &str) -> Result<StoredEntry, DirError> {
        let schema = self.dir.schema();
        match self.lookups.find(dn)? {
            Some(e) if self.with(|acl, who, actx| acl.can_see_entry(schema, who, &e, actx)) => {
                Ok(e)
            }
            _ => Err(self.missing(dn)),
        }
    }

    /// May the requester bind as the entry at `dn` (auth right on its userPassword)?
    pub fn may_bind_as(&self, dn: &str) -> bool {
        let schema = self.dir.schema();
        match self.lookups.find(dn).ok().flatten() {
            Some(e) => self.with(|acl, who, actx| acl.may_auth(schema, who, &e, actx)),
            None => false,
        }
    }

    /// Refuse with insufficientAccessRights unless `ok`.
    pub fn require(ok: bool) -> Result<(), DirError> {
        if ok {
            Ok(())
        } else {
            Err(DirError::InsufficientAccess)
        }
    }

    /// The entry a write would create at `dn` with `attrs` (for checking rules on it).
    pub fn candidate(
        &self,
        dn: &str,
        attrs: &[crate::directory::entry::Attribute],
    ) -> Result<StoredEntry, DirError> {
        let parsed = Dn::parse(dn)
            .map_err(|e| crate::directory::schema::Violation::InvalidDn(e.to_string()))?;
        let key = self.dir.schema().dn_key(&parsed)?;
        Ok(StoredEntry {
            dn: dn.to_string(),
            key,
            attrs: attrs.to_vec(),
        })
    }
}

/// A write (or compare) to authorise.
pub enum Operation<'a> {
    /// Add an entry with these attributes.
    Add {
        /// Its DN.
        dn: &'a str,
        /// Its attributes.
        attrs: &'a [crate::directory::entry::Attribute],
    },
    /// Change these attributes of an entry.
    Modify {
        /// The entry.
        dn: &'a str,
        /// The attributes changed.
        attrs: Vec<&'a str>,
    },
    /// Delete an entry.
    Delete {
        /// The entry.
        dn: &'a str,
    },
    /// Rename or move an entry.
    Rename {
        /// The entry.
        dn: &'a str,
        /// Its new DN.
        new_dn: String,
    },
}

/// Decide whether `who` may do `op`: `Ok`, insufficientAccessRights, or noSuchObject
/// when the entry (or the new entry's parent) is hidden from the requester. Reads a
/// snapshot of the replica; cluster administrators pass without a lookup.
pub fn authorize(auth: &Authority, who: &Identity, op: Operation<'_>) -> Result<(), DirError> {
    if who.admin {
        return Ok(());
    }
    let schema = auth.directory().schema();
    let c = Checker::new(auth, who)?;
    match op {
        Operation::Add { dn, attrs } => {
            let parent = Dn::parse(dn)
                .map(|d| d.parent().to_string())
                .unwrap_or_default();
            c.visible(&parent)?;
            let candidate = c.candidate(dn, attrs)?;
            Checker::require(c.with(|acl, w, a| acl.may_write_entry(schema, w, &candidate, a)))
        }
        Operation::Modify { dn, attrs } => {
            let e = c.visible(dn)?;
            Checker::require(c.with(|acl, w, a| {
                attrs
                    .iter()
                    .all(|attr| acl.may_write_attr(schema, w, &e, attr, a))
            }))
        }
        Operation::Delete { dn } => {
            let e = c.visible(dn)?;
            Checker::require(c.with(|acl, w, a| acl.may_write_entry(schema, w, &e, a)))
        }
        Operation::Rename { dn, new_dn } => {
            let e = c.visible(dn)?;
            let moved = c.candidate(&new_dn, &e.attrs)?;
            Checker::require(c.with(|acl, w, a| {
                acl.may_write_entry(schema, w, &e, a) && acl.may_write_entry(schema, w, &moved, a)
            }))
        }
    }
}

//! Access control: who may do what to which entry and attribute of the directory.
//!
//! Pure logic: no storage, no network. The caller hands over the entry, the identity
//! that asks ([`Requester`]) and an [`AclContext`] that answers group membership from
//! the stored directory; [`Acl::access`] gives back the [`Right`] the requester holds.
//!
//! # The model
//!
//! An [`Acl`] is an ordered list of rules. A rule has a target (`what`: a part of the
//! tree, an optional filter on the entry and a set of attributes) and `by` clauses
//! (`who`: a class of requesters, and the right they get). For an (entry, attribute),
//! the rules are tried in order; the first rule whose target matches *and* which has a
//! `by` clause matching the requester decides, with that clause's right. A rule whose
//! target matches but none of whose `by` clauses names the requester passes the question
//! on to the next rule; `by * none` ends the search there. When no rule decides, the
//! answer is [`Right::NONE`].
//!
//! Two identities stand outside the rules: a cluster administrator
//! ([`Requester::admin`]) holds every right on everything, and a service identity
//! ([`Requester::service`]) never holds more than `read`, whatever a rule grants. And a
//! bound requester always has `read` on its own entry (the entry itself, not its
//! attributes), so that self-searches and `ldapwhoami`-style lookups work under any
//! rule set.
//!
//! # Rights
//!
//! The privileges are `auth` (`x`: bind with the entry's `userPassword`), `compare`
//! (`c`), `search` (`s`: use the attribute in a filter; on the entry itself: the entry
//! is visible), `read` (`r`: read the values) and `write` (`w`: add, modify, delete,
//! rename). The levels `none < auth < compare < search < read < write` each include the
//! privileges of the ones before; an explicit set such as `=xw` grants exactly the
//! privileges named (here: bind with the password and change it, never read it back).
//!
//! # The text form
//!
//! One rule per line; a line that begins with white space continues the rule above;
//! blank lines and lines whose first non-blank character is `#` are ignored.
//!
//! ```text
//! rule    = "to" what 1*("by" who access)
//! what    = "*" | 1*( subtree="DN" | base="DN" | children="DN"
//!                   | filter="(RFC 4515 filter)" | attrs="LIST" )
//! LIST    = "*" | ["!"] name *("," name)     ; "!": every attribute except these
//! name    = an attribute type (its subtypes count) | "entry" (the entry itself)
//! who     = "*" | "anonymous" | "authenticated" | "self" | "service"
//!         | "domain-admins" | dn="DN" | group="DN" | same-branch="DN"
//! access  = "none" | "auth" | "compare" | "search" | "read" | "write"
//!         | "=" 1*("x" | "c" | "s" | "r" | "w")
//! ```
//!
//! A target without a DN clause covers the whole tree; without `attrs` it covers every
//! attribute and the entry itself. `subtree` is the entry and everything below it,
//! `base` the entry alone, `children` everything strictly below it. Quoted values are
//! taken verbatim, DN escapes included; a backslash keeps the next character from
//! closing the quote. Example:
//!
//! ```text
//! to subtree="ou=domains,dc=pigeonair" filter="(objectClass=inetOrgPerson)" attrs="!userPassword"
//!     by self write
//!     by domain-admins write
//!     by authenticated read
//!     by * none
//! ```
//!
//! `who` classes: `anonymous` (not bound), `authenticated` (any bound identity), `self`
//! (the entry is the requester's own), `service` (a service identity), `domain-admins`
//! (members of a group named by `pigeonairAdminGroup` on the nearest
//! `pigeonairMailDomain` entry at or above the target), `dn` (that identity),
//! `group` (members of that group: `member` or `uniqueMember`, not nested) and
//! `same-branch` (bound requesters whose own entry lies in the same branch below DN as
//! the target, i.e. below the same child of DN: for `ou=domains,<suffix>`, the same
//! mail domain).
//!
//! # What the caller answers (hide, don't leak)
//!
//! An entry the requester cannot see (no `search` on the entry itself) must look
//! exactly like an entry that does not exist. So:
//!
//! | operation | entry not visible | visible, right missing |
//! |---|---|---|
//! | search | base: noSuchObject (32) from [`Acl::deny_as_missing`]; other entries are skipped | attributes without `read` are left out; the filter sees only attributes with `search` ([`Acl::searchable_entry`]) |
//! | compare | noSuchObject (32) | insufficientAccessRights (50) |
//! | modify | noSuchObject (32) | insufficientAccessRights (50) |
//! | delete, modify DN | noSuchObject (32) | insufficientAccessRights (50) |
//! | add | parent: noSuchObject (32) | insufficientAccessRights (50), checked *before* whether the DN is taken |
//! | bind | invalidCredentials (49) | invalidCredentials (49): never say which |
//!
//! A missing entry and an invisible one both go through [`Acl::deny_as_missing`], so
//! the matchedDN is the same in both cases.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::dn::Dn;
use super::entry::StoredEntry;
use super::eval;
use super::filter::Filter;
use super::schema::Schema;
use super::DirError;

/// The default rules, with `{suffix}` for the naming context's DN and
/// `{service_password}` for the service identities' right on `userPassword` (`read`
/// when [`AclOptions::service_reads_passwords`], else `auth`). [`Acl::defaults`] is
/// exactly [`Acl::parse`] of this text after [`default_rules_text`] filled both in.
pub const DEFAULT_RULES: &str = r#"# PigeonAir's default access rules. Cluster administrators are not bound by them;
# service identities never get more than read; anonymous requesters get nothing but
# binds. Nodes (ou=nodes) and system entries (ou=system) have no rule that shows them,
# so only cluster administrators see them (and each identity its own entry).

# Passwords of accounts: anyone may bind with one; the account itself and its domain's
# administrators may change it; nobody reads it back.
to subtree="ou=domains,{suffix}" attrs="userPassword"
    by self =xw
    by domain-admins =xw
    by service {service_password}
    by * auth

# Passwords of everything else (administrators and service identities under ou=system).
to subtree="{suffix}" attrs="userPassword"
    by self =xw
    by * auth

# A domain's administrators may neither hand their domain to another group nor delete
# or rename the domain entry.
to subtree="ou=domains,{suffix}" filter="(objectClass=pigeonairMailDomain)" attrs="entry,pigeonairAdminGroup"
    by domain-admins read

# Postfix and Dovecot lookups: the routing attributes of every domain, nothing else.
to subtree="ou=domains,{suffix}" attrs="entry,objectClass,uid,mail,mailLocalAddress,mailAlternateAddress,mailHost,mailRoutingAddress,mailForwardingAddress,mailQuotaSize,mailQuotaCount,deliveryMode,accountStatus,homeDirectory,uidNumber,gidNumber,cn"
    by service read

# A domain: its administrators write everything in it, its accounts read it.
to subtree="ou=domains,{suffix}"
    by domain-admins write
    by self read
    by same-branch="ou=domains,{suffix}" read

# The naming context and the domains container, so that searches based there work for
# accounts; what lies below stays hidden unless a rule above shows it.
to base="{suffix}" attrs="entry,objectClass,dc,o"
    by authenticated read
to base="ou=domains,{suffix}" attrs="entry,objectClass,ou"
    by authenticated read

# Every identity reads its own entry (service identities and administrators under
# ou=system included); its password is covered above.
to subtree="{suffix}"
    by self read
"#;

/// Switches of the default rules (cluster-wide settings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AclOptions {
    /// Service identities may read `userPassword` under `ou=domains` (for a Dovecot
    /// passdb that verifies hashes itself instead of binding as the user).
    pub service_reads_passwords: bool,
}

/// The default rules for a suffix (given as a DN) and options: [`DEFAULT_RULES`] with
/// its placeholders filled in.
pub fn default_rules_text(suffix_dn: &str, options: &AclOptions) -> String {
    let service_password = if options.service_reads_passwords {
        "read"
    } else {
        "auth"
    };
    DEFAULT_RULES
        .replace("{suffix}", suffix_dn)
        .replace("{service_password}", service_password)
}

/// One privilege of a [`Right`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// Bind using the entry's `userPassword` (`x`).
    Auth,
    /// Compare values (`c`).
    Compare,
    /// Use the attribute in a filter; on the entry itself: see the entry (`s`).
    Search,
    /// Read the values (`r`).
    Read,
    /// Add, modify, delete, rename (`w`).
    Write,
}

impl Privilege {
    const ALL: [Privilege; 5] = [
        Privilege::Auth,
        Privilege::Compare,
        Privilege::Search,
        Privilege::Read,
        Privilege::Write,
    ];

    fn bit(self) -> u8 {
        match self {
            Privilege::Auth => 1,
            Privilege::Compare => 2,
            Privilege::Search => 4,
            Privilege::Read => 8,
            Privilege::Write => 16,
        }
    }

    fn letter(self) -> char {
        match self {
            Privilege::Auth => 'x',
            Privilege::Compare => 'c',
            Privilege::Search => 's',
            Privilege::Read => 'r',
            Privilege::Write => 'w',
        }
    }
}

/// A set of privileges. The named levels (`NONE` to `WRITE`) each hold the privileges
/// of the levels before them; [`Right::of`] builds any other set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Right(u8);

impl Right {
    /// No access at all.
    pub const NONE: Right = Right(0);
    /// Bind with the entry's password.
    pub const AUTH: Right = Right(0b1);
    /// `AUTH` and compare.
    pub const COMPARE: Right = Right(0b11);
    /// `COMPARE` and search (visibility, use in filters).
    pub const SEARCH: Right = Right(0b111);
    /// `SEARCH` and read.
    pub const READ: Right = Right(0b1111);
    /// Everything.
    pub const WRITE: Right = Right(0b11111);

    const LEVELS: [(&'static str, Right); 6] = [
        ("none", Right::NONE),
        ("auth", Right::AUTH),
        ("compare", Right::COMPARE),
        ("search", Right::SEARCH),
        ("read", Right::READ),
        ("write", Right::WRITE),
    ];

    /// Exactly the given privileges.
    pub fn of(privileges: &[Privilege]) -> Right {
        Right(privileges.iter().fold(0, |acc, p| acc | p.bit()))
    }

    /// True when the set holds the privilege.
    pub fn allows(self, p: Privilege) -> bool {
        self.0 & p.bit() != 0
    }

    /// The privileges held by both.
    pub fn intersect(self, other: Right) -> Right {
        Right(self.0 & other.0)
    }

    /// The privileges held by either.
    pub fn union(self, other: Right) -> Right {
        Right(self.0 | other.0)
    }

    /// Parse a level name (`read`) or an explicit set (`=xw`, `=0` for none); `None`
    /// for anything else.
    pub fn parse(s: &str) -> Option<Right> {
        if let Some(letters) = s.strip_prefix('=') {
            if letters == "0" {
                return Some(Right::NONE);
            }
            if letters.is_empty() {
                return None;
            }
            let mut r = Right::NONE;
            for c in letters.chars() {
                let p = Privilege::ALL
                    .into_iter()
                    .find(|p| p.letter() == c.to_ascii_lowercase())?;
                r = r.union(Right::of(&[p]));
            }
            return Some(r);
        }
        Right::LEVELS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, r)| *r)
    }
}

impl fmt::Display for Right {
    /// The level name when the set is a level, else the `=letters` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((name, _)) = Right::LEVELS.iter().find(|(_, r)| r == self) {
            return f.write_str(name);
        }
        f.write_str("=")?;
        for p in Privilege::ALL {
            if self.allows(p) {
                write!(f, "{}", p.letter())?;
            }
        }
        Ok(())
    }
}

/// The identity a request is made as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requester {
    /// The bound DN as the client gave it; empty for anonymous.
    pub dn: String,
    /// The bound DN's key (see `Schema::dn_key`); empty for anonymous.
    pub key: String,
    /// A cluster administrator: every right on everything, no rule consulted.
    pub admin: bool,
    /// A read-only service identity (Dovecot, Postfix lookups): never more than `read`.
    pub service: bool,
}

impl Requester {
    /// The anonymous requester.
    pub fn anonymous() -> Requester {
        Requester::default()
    }

    /// A bound identity that is neither administrator nor service; fails on a DN that
    /// does not parse or names an undefined attribute.
    pub fn bound(schema: &Schema, dn: &str) -> Result<Requester, String> {
        let parsed = Dn::parse(dn).map_err(|e| e.to_string())?;
        let key = schema.dn_key(&parsed).map_err(|e| e.to_string())?;
        Ok(Requester {
            dn: dn.to_string(),
            key,
            admin: false,
            service: false,
        })
    }

    /// True when no identity is bound.
    pub fn is_anonymous(&self) -> bool {
        self.key.is_empty() && self.dn.is_empty()
    }
}

/// What access control needs to know from the stored directory. Answers come from the
/// replica as stored, never from an entry a request is about to add or change (else a
/// client could name itself administrator of the domain it is adding).
pub trait AclContext {
    /// True when the group entry `group_dn` exists and one of its `member` or
    /// `uniqueMember` values names `member_dn` (not nested; false for an empty DN).
    fn is_member(&self, group_dn: &str, member_dn: &str) -> bool;

    /// The `pigeonairAdminGroup` values of the nearest stored entry with object class
    /// `pigeonairMailDomain` at or above `entry_key` (empty when there is none, or it
    /// names no group).
    fn domain_admin_groups(&self, entry_key: &str) -> Vec<String>;
}

/// An entry fetched by DN from the stored directory (`None`: no such entry).
pub type EntryLookup<'a> = dyn Fn(&str) -> Option<StoredEntry> + 'a;

/// An [`AclContext`] that reads entries through a lookup closure (for example
/// `|dn| view.find(dn).ok().flatten()`) and remembers what it found, so that a search
/// asking for thousands of entries looks each group and domain up once. Meant to live
/// for one request.
pub struct LookupContext<'a> {
    schema: &'a Schema,
    lookup: &'a EntryLookup<'a>,
    keys: RefCell<HashMap<String, Option<String>>>,
    members: RefCell<HashMap<(String, String), bool>>,
    domains: RefCell<HashMap<String, Option<Vec<String>>>>,
}

impl<'a> LookupContext<'a> {
    /// A context that fetches entries through `lookup`.
    pub fn new(schema: &'a Schema, lookup: &'a EntryLookup<'a>) -> LookupContext<'a> {
        LookupContext {
            schema,
            lookup,
            keys: RefCell::new(HashMap::new()),
            members: RefCell::new(HashMap::new()),
            domains: RefCell::new(HashMap::new()),
        }
    }

    fn key(&self, dn: &str) -> Option<String> {
        if let Some(k) = self.keys.borrow().get(dn) {
            return k.clone();
        }
        let k = key_of(self.schema, dn);
        self.keys.borrow_mut().insert(dn.to_string(), k.clone());
        k
    }
}

impl AclContext for LookupContext<'_> {
    fn is_member(&self, group_dn: &str, member_dn: &str) -> bool {
        if member_dn.is_empty() {
            return false;
        }
        let (Some(group_key), Some(member_key)) = (self.key(group_dn), self.key(member_dn)) else {
            return false;
        };
        let cache_key = (group_key, member_key);
        if let Some(&known) = self.members.borrow().get(&cache_key) {
            return known;
        }
        let found = (self.lookup)(group_dn)
            .is_some_and(|g| group_has_member(self.schema, &g, &cache_key.1));
        self.members.borrow_mut().insert(cache_key, found);
        found
    }

    fn domain_admin_groups(&self, entry_key: &str) -> Vec<String> {
        for k in ancestors_and_self(entry_key) {
            let cached = self.domains.borrow().get(k).cloned();
            let found = match cached {
                Some(found) => found,
                None => {
                    let found = (self.lookup)(&dn_of_key(k))
                        .and_then(|e| admin_groups_of_domain(self.schema, &e));
                    self.domains
                        .borrow_mut()
                        .insert(k.to_string(), found.clone());
                    found
                }
            };
            if let Some(groups) = found {
                return groups;
            }
        }
        Vec::new()
    }
}

/// An [`AclContext`] from facts gathered beforehand for one requester: the groups it
/// belongs to and the admin groups of the domains concerned. Questions about any other
/// member DN are answered `false`.
#[derive(Debug, Clone, Default)]
pub struct KnownMemberships {
    member_dn: String,
    groups: Vec<String>,
    domains: BTreeMap<String, Vec<String>>,
}

impl KnownMemberships {
    /// No memberships yet, for the requester `who`.
    pub fn new(who: &Requester) -> KnownMemberships {
        KnownMemberships {
            member_dn: who.dn.clone(),
            ..KnownMemberships::default()
        }
    }

    /// The requester is a member of this group (given by its DN key).
    pub fn add_group(&mut self, group_key: &str) {
        self.groups.push(group_key.to_string());
    }

    /// The domain entry with this key names these admin groups (DNs).
    pub fn add_domain(&mut self, domain_key: &str, admin_groups: Vec<String>) {
        self.domains.insert(domain_key.to_string(), admin_groups);
    }

    /// Resolve group DNs to keys with `schema` when asked: see [`AclContext`].
    pub fn with_schema<'s>(&'s self, schema: &'s Schema) -> impl AclContext + 's {
        KnownWithSchema {
            known: self,
            schema,
        }
    }
}

struct KnownWithSchema<'s> {
    known: &'s KnownMemberships,
    schema: &'s Schema,
}

impl AclContext for KnownWithSchema<'_> {
    fn is_member(&self, group_dn: &str, member_dn: &str) -> bool {
        if member_dn.is_empty() || member_dn != self.known.member_dn {
            return false;
        }
        key_of(self.schema, group_dn).is_some_and(|k| self.known.groups.contains(&k))
    }

    fn domain_admin_groups(&self, entry_key: &str) -> Vec<String> {
        ancestors_and_self(entry_key)
            .find_map(|k| self.known.domains.get(k).cloned())
            .unwrap_or_default()
    }
}

/// The DN (normalised form) of a DN key: its RDNs leaf first, joined by commas.
pub fn dn_of_key(key: &str) -> String {
    key.split_terminator('\0')
        .rev()
        .collect::<Vec<_>>()
        .join(",")
}

fn key_of(schema: &Schema, dn: &str) -> Option<String> {
    schema.dn_key(&Dn::parse(dn).ok()?).ok()
}

/// The key itself and the keys of its ancestors, nearest first (the root's empty key
/// excluded).
fn ancestors_and_self(key: &str) -> impl Iterator<Item = &str> {
    key.char_indices()
        .filter(|(_, c)| *c == '\0')
        .map(move |(i, _)| &key[..=i])
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
}

fn has_class(schema: &Schema, e: &StoredEntry, class: &str) -> bool {
    let wanted = schema.class(class).map(|c| c.oid.as_str());
    e.get("objectClass").is_some_and(|a| {
        a.values.iter().any(|v| {
            let v = String::from_utf8_lossy(v);
            v.eq_ignore_ascii_case(class)
                || wanted.is_some_and(|oid| schema.class(&v).is_some_and(|c| c.oid == oid))
        })
    })
}

fn admin_groups_of_domain(schema: &Schema, e: &StoredEntry) -> Option<Vec<String>> {
    if !has_class(schema, e, "pigeonairMailDomain") {
        return None;
    }
    Some(
        e.get("pigeonairAdminGroup")
            .map(|a| {
                a.values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn group_has_member(schema: &Schema, group: &StoredEntry, member_key: &str) -> bool {
    ["member", "uniqueMember"].iter().any(|name| {
        group.get(name).is_some_and(|a| {
            a.values.iter().any(|v| {
                let v = String::from_utf8_lossy(v);
                // uniqueMember may carry a `#'0101'B` unique identifier after the DN.
                let dn = match v.rfind("#'") {
                    Some(i) if v.ends_with("'B") => &v[..i],
                    _ => &v[..],
                };
                key_of(schema, dn).is_some_and(|k| k == member_key)
            })
        })
    })
}

/// Which entries a rule covers, relative to its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhatScope {
    /// The base entry alone.
    Base,
    /// Everything strictly below the base.
    Children,
    /// The base and everything below it.
    Subtree,
}

/// Attribute types named in a rule, resolved by the schema.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttrList {
    /// The entry itself (the `entry` pseudo-attribute) is named.
    pub entry: bool,
    /// The OIDs of the named types; their subtypes count too.
    pub oids: Vec<String>,
}

impl AttrList {
    fn contains(&self, schema: &Schema, attr: Option<&str>) -> bool {
        let Some(name) = attr else {
            return self.entry;
        };
        let mut cur = schema.attr(name);
        for _ in 0..32 {
            match cur {
                Some(at) if self.oids.contains(&at.oid) => return true,
                Some(at) => cur = at.sup.as_deref().and_then(|s| schema.attr(s)),
                None => return false,
            }
        }
        false
    }
}

/// The attributes a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrSet {
    /// Every attribute and the entry itself.
    All,
    /// Only these.
    Only(AttrList),
    /// Everything (the entry itself included) but these.
    AllExcept(AttrList),
}

impl AttrSet {
    fn contains(&self, schema: &Schema, attr: Option<&str>) -> bool {
        match self {
            AttrSet::All => true,
            AttrSet::Only(list) => list.contains(schema, attr),
            AttrSet::AllExcept(list) => !list.contains(schema, attr),
        }
    }
}

/// The target of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct What {
    /// The key of the base DN (empty: the whole tree).
    pub base_key: String,
    /// Which entries relative to the base.
    pub scope: WhatScope,
    /// Only entries this filter is true for.
    pub filter: Option<Filter>,
    /// Which attributes.
    pub attrs: AttrSet,
}

impl What {
    fn covers_key(&self, key: &str) -> bool {
        match self.scope {
            WhatScope::Base => key == self.base_key,
            WhatScope::Children => {
                key.len() > self.base_key.len() && key.starts_with(&self.base_key)
            }
            WhatScope::Subtree => key.starts_with(&self.base_key),
        }
    }
}

/// A class of requesters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Everyone (`*`).
    Anyone,
    /// Requesters that are not bound.
    Anonymous,
    /// Any bound identity.
    Authenticated,
    /// The requester whose own entry is the target.
    SelfEntry,
    /// Service identities.
    Service,
    /// Members of the admin groups of the target's domain.
    DomainAdmins,
    /// One identity.
    Dn {
        /// Its DN key.
        key: String,
    },
    /// Members of a group entry.
    Group {
        /// The group's DN.
        dn: String,
    },
    /// Bound requesters whose own entry lies below the same child of the base as the
    /// target (for `ou=domains,<suffix>`: the same mail domain).
    SameBranch {
        /// The key of the base.
        base_key: String,
    },
}

/// One `by` clause: a class of requesters and the right it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct By {
    /// Who.
    pub who: Who,
    /// The right.
    pub right: Right,
}

/// One rule: a target and its `by` clauses, tried in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// What the rule covers.
    pub what: What,
    /// Who gets which right.
    pub by: Vec<By>,
}

/// Answers worked out once per entry and reused across its attributes.
#[derive(Default)]
struct Memo {
    domain_admin: Option<bool>,
    filters: Vec<(usize, bool)>,
    groups: Vec<(usize, usize, bool)>,
}

/// An ordered rule set. Build it once (parsing is not free) and share it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Acl {
    rules: Vec<Rule>,
}

impl Acl {
    /// Every attribute the rules' filters name; `None` when one can look at any.
    pub fn filter_attributes(&self) -> Option<Vec<&str>> {
        let mut out = Vec::new();
        for f in self.rules.iter().filter_map(|r| r.what.filter.as_ref()) {
            if f.reads_every_attribute() {
                return None;
            }
            out.extend(f.attributes());
        }
        Some(out)
    }

    /// True when some rule's filter can look at attribute `name`.
    pub fn filters_mention(&self, name: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.what.filter.as_ref().is_some_and(|f| f.mentions(name)))
    }

    /// The default rules ([`DEFAULT_RULES`]) for a naming context, given by its DN key
    /// (a DN string is accepted too). A suffix the rules cannot be written for gives an
    /// empty rule set: nobody but cluster administrators gets anything.
    pub fn defaults(schema: &Schema, suffix_key: &str, options: &AclOptions) -> Acl {
        let suffix_dn = if suffix_key.contains('\0') {
            dn_of_key(suffix_key)
        } else {
            suffix_key.to_string()
        };
        Acl::parse(schema, &default_rules_text(&suffix_dn, options)).unwrap_or_default()
    }

    /// Parse rules in the text form (see the module documentation). Errors begin with
    /// `line N:`, N the line of the offending word.
    pub fn parse(schema: &Schema, text: &str) -> Result<Acl, String> {
        let mut rules = Vec::new();
        let mut current: Vec<Token> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                if current.is_empty() {
                    return Err(format!(
                        "line {n}: an indented line continues a rule, but no rule began"
                    ));
                }
            } else if !current.is_empty() {
                rules.push(parse_rule(schema, &std::mem::take(&mut current))?);
            }
            tokenize(line, n, &mut current)?;
        }
        if !current.is_empty() {
            rules.push(parse_rule(schema, &current)?);
        }
        Ok(Acl { rules })
    }

    /// The rules, in the order they are tried.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The right `who` holds on `attr` of `entry` (`None`: the entry itself, which
    /// governs visibility, add, delete and rename). `entry` is the entry as stored, or
    /// for an add the entry as it would be stored.
    pub fn access(
        &self,
        schema: &Schema,
        who: &Requester,
        entry: &StoredEntry,
        attr: Option<&str>,
        ctx: &dyn AclContext,
    ) -> Right {
        self.decide(schema, who, entry, attr, ctx, &mut Memo::default())
    }

    fn decide(
        &self,
        schema: &Schema,
        who: &Requester,
        entry: &StoredEntry,
        attr: Option<&str>,
        ctx: &dyn AclContext,
        memo: &mut Memo,
    ) -> Right {
        if who.admin {
            return Right::WRITE;
        }
        let mut right = Right::NONE;
        'rules: for (i, rule) in self.rules.iter().enumerate() {
            if !rule.what.covers_key(&entry.key) || !rule.what.attrs.contains(schema, attr) {
                continue;
            }
            if let Some(f) = &rule.what.filter {
                let hit = match memo.filters.iter().find(|(r, _)| *r == i) {
                    Some(&(_, hit)) => hit,
                    None => {
                        let hit = eval::matches(schema, f, entry);
                        memo.filters.push((i, hit));
                        hit
                    }
                };
                if !hit {
                    continue;
                }
            }
            for (j, by) in rule.by.iter().enumerate() {
                if self.who_matches(&by.who, (i, j), who, entry, ctx, memo) {
                    right = by.right;
                    break 'rules;
                }
            }
        }
        let bound = !who.is_anonymous();
        if attr.is_none() && bound && entry.key == who.key {
            right = right.union(Right::READ);
        }
        if who.service {
            right = right.intersect(Right::READ);
        }
        right
    }

    fn who_matches(
        &self,
        class: &Who,
        at: (usize, usize),
        who: &Requester,
        entry: &StoredEntry,
        ctx: &dyn AclContext,
        memo: &mut Memo,
    ) -> bool {
        let bound = !who.is_anonymous();
        match class {
            Who::Anyone => true,
            Who::Anonymous => !bound,
            Who::Authenticated => bound,
            Who::SelfEntry => bound && entry.key == who.key,
            Who::Service => who.service,
            Who::Dn { key } => bound && who.key == *key,
            Who::SameBranch { base_key } => {
                bound
                    && who.key.len() > base_key.len()
                    && who.key.starts_with(base_key.as_str())
                    && who.key[base_key.len()..].find('\0').is_some_and(|end| {
                        entry.key.starts_with(&who.key[..base_key.len() + end + 1])
                    })
            }
            Who::DomainAdmins => {
                if !bound {
                    return false;
                }
                if let Some(known) = memo.domain_admin {
                    return known;
                }
                let found = ctx
                    .domain_admin_groups(&entry.key)
                    .iter()
                    .any(|g| ctx.is_member(g, &who.dn));
                memo.domain_admin = Some(found);
                found
            }
            Who::Group { dn } => {
                if !bound {
                    return false;
                }
                if let Some(&(_, _, known)) = memo.groups.iter().find(|(r, b, _)| (*r, *b) == at) {
                    return known;
                }
                let found = ctx.is_member(dn, &who.dn);
                memo.groups.push((at.0, at.1, found));
                found
            }
        }
    }

    /// True when the entry is visible to `who` (`search` on the entry itself). An
    /// invisible entry must be answered exactly like a missing one: see
    /// [`Acl::deny_as_missing`].
    pub fn can_see_entry(
        &self,
        schema: &Schema,
        who: &Requester,
        entry: &StoredEntry,
        ctx: &dyn AclContext,
    ) -> bool {
        self.access(schema, who, entry, None, ctx)
            .allows(Privilege::Search)
    }

    /// The names of the entry's attributes `who` may read, in the entry's order; empty
    /// when the entry is not visible.
    pub fn visible_attrs(
        &self,
        schema: &Schema,
        who: &Requester,
        entry: &StoredEntry,
        ctx: &dyn AclContext,
    ) -> Vec<String> {
        self.kept_attrs(schema, who, entry, ctx, Privilege::Read)
            .map(|e| e.attrs.into_iter().map(|a| a.name).collect())
            .unwrap_or_default()
    }

    /// The entry with only the attributes `who` may read, to return to a client;
    /// `None` when the entry is not visible.
    pub fn readable_entry(
        &self,
        schema: &Schema,
        who: &Requester,
        entry: &StoredEntry,
        ctx: &dyn AclContext,
    ) -> Option<StoredEntry> {
        self.kept_attrs(schema, who, entry, ctx, Privilege::Read)
    }

    /// The entry with only the attributes `who` may search, to evaluate a client's
    /// filter on (an attribute it may not search counts as absent); `None` when the
    /// entry is not visible.
    pub fn searchable_entry(
        &self,
        schema: &Schema,
        who: &Requester,
        entry: &StoredEntry,
        ctx: &dyn AclContext,
    ) -> Option<StoredEntry> {
        self.kept_attrs(schema, who, entry, ctx, Privilege::Search)
    }

    fn kept_attrs(
        &self,
        schema: &Schema,
        who: &Requester,
        entry: &StoredEntry,
        ctx: &dyn AclContext,
        needed: Privilege,
    ) -> Option<StoredEntry> {
        let mut memo = Memo::default();
        if !self
            .decide(schema, who, entry, None, ctx, &mut memo)
            .allows(Privilege::Search)
        {
            return None;
        }
        let attrs = entry
            .attrs
            .iter()
            .filter(|a| {
                self.decide(schema, who, entry, Some(&a.name), ctx, &mut memo)
                    .allows(needed)
            })
            .cloned()
            .collect();
        Some(StoredEntry {
            dn: entry.dn.clone(),
            key: entry.key.clone(),
            attrs,
        })
    }

    /// True when `who` may add, delete or rename the entry (`write` on the entry
    /// itself). For an add, pass the entry as it would be stored; for a rename, ask for
    /// the entry at its old place and at its new one.
    pub fn may_write_entry(
        &self,
        schema: &Schema,
        who: &Requester,
        entry: &StoredEntry,
        ctx: &dyn AclContext,
    ) -> bool {
        self.access(schema, who, entry, None, ctx)
            .allows(Privilege::Write)
    }

    /// True when `who` may change the values of `attr` of the entry (modify: every
    /// attribute a change names must pass).
    pub fn may_write_attr(
        &self,
        schema: &Schema,
        who: &Requester,
        entry: &StoredEntry,
        attr: &str,
        ctx: &dyn AclContext,
    ) -> bool {
        self.access(schema, who, entry, Some(attr), ctx)
            .allows(Privilege::Write)
    }

    /// True when `who` may compare values of `attr` of the entry. Check
    /// [`Acl::can_see_entry`] first: an invisible entry is noSuchObject, a visible one
    /// without this right insufficientAccessRights.
    pub fn may_compare(
        &self,
        schema: &Schema,
        who: &Requester,
        entry: &StoredEntry,
        attr: &str,
        ctx: &dyn AclContext,
    ) -> bool {
        self.access(schema, who, entry, Some(attr), ctx)
            .allows(Privilege::Compare)
    }

    /// True when a bind as `entry` with its `userPassword` is allowed. Pass the
    /// identity the connection holds (a Bind starts from anonymous, RFC 4513 section
    /// 4). Whether refused here, for a wrong password or for a missing entry, the
    /// answer is invalidCredentials (49).
    pub fn may_auth(
        &self,
        schema: &Schema,
        who: &Requester,
        entry: &StoredEntry,
        ctx: &dyn AclContext,
    ) -> bool {
        self.access(schema, who, entry, Some("userPassword"), ctx)
            .allows(Privilege::Auth)
    }

    /// The answer for an operation on `target_key` when that entry does not exist *or*
    /// is not visible to `who`: noSuchObject, with matchedDN the nearest ancestor `who`
    /// can see, so the two cases cannot be told apart. `lookup` fetches stored entries
    /// by DN.
    pub fn deny_as_missing(
        &self,
        schema: &Schema,
        who: &Requester,
        target_key: &str,
        lookup: &EntryLookup<'_>,
        ctx: &dyn AclContext,
    ) -> DirError {
        let matched = ancestors_and_self(target_key)
            .skip(1)
            .find_map(|k| lookup(&dn_of_key(k)).filter(|e| self.can_see_entry(schema, who, e, ctx)))
            .map(|e| e.dn)
            .unwrap_or_default();
        DirError::NoSuchObject { matched }
    }
}

/// A word of the text form, with the line it was found on.
struct Token {
    line: usize,
    kind: TokenKind,
}

enum TokenKind {
    /// A bare word (`to`, `by`, `self`, `read`, `=xw`, `*`).
    Word(String),
    /// `key=value` or `key="value"`, the key lower-cased.
    Pair(String, String),
}

fn tokenize(line: &str, n: usize, out: &mut Vec<Token>) -> Result<(), String> {
    let b = line.as_bytes();
    let len = b.len();
    let mut i = 0;
    loop {
        while i < len && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == len {
            return Ok(());
        }
        let start = i;
        while i < len && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'"' {
            i += 1;
        }
        let key = &line[start..i];
        if i < len && b[i] == b'"' {
            return Err(format!("line {n}: unexpected quote after {key:?}"));
        }
        if i == len || b[i] != b'=' {
            out.push(Token {
                line: n,
                kind: TokenKind::Word(key.to_string()),
            });
            continue;
        }
        i += 1; // '='
        let value = if i < len && b[i] == b'"' {
            i += 1;
            let vs = i;
            loop {
                if i >= len {
                    return Err(format!("line {n}: a quoted value is not closed"));
                }
                match b[i] {
                    b'\\' => i += 2,
                    b'"' => break,
                    _ => i += 1,
                }
            }
            let value = &line[vs..i];
            i += 1; // closing quote
            if i < len && !b[i].is_ascii_whitespace() {
                return Err(format!(
                    "line {n}: expected a space after the closing quote"
                ));
            }
            value
        } else {
            let vs = i;
            while i < len && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            &line[vs..i]
        };
        let kind = if key.is_empty() {
            TokenKind::Word(format!("={value}"))
        } else {
            TokenKind::Pair(key.to_ascii_lowercase(), value.to_string())
        };
        out.push(Token { line: n, kind });
    }
}

fn parse_rule(schema: &Schema, tokens: &[Token]) -> Result<Rule, String> {
    let first_line = tokens.first().map_or(0, |t| t.line);
    let last_line = tokens.last().map_or(first_line, |t| t.line);
    let mut it = tokens.iter().peekable();
    match it.next() {
        Some(Token {
            kind: TokenKind::Word(w),
            ..
        }) if w.eq_ignore_ascii_case("to") => {}
        _ => return Err(format!("line {first_line}: a rule begins with \"to\"")),
    }
    let mut dn: Option<(String, WhatScope)> = None;
    let mut filter: Option<Filter> = None;
    let mut attrs: Option<AttrSet> = None;
    let mut star = false;
    let mut clauses = 0usize;
    while let Some(t) = it.peek() {
        let n = t.line;
        match &t.kind {
            TokenKind::Word(w) if w.eq_ignore_ascii_case("by") => break,
            TokenKind::Word(w) if w == "*" => star = true,
            TokenKind::Word(w) => {
                return Err(format!("line {n}: unknown target {w:?}"));
            }
            TokenKind::Pair(k, v) => {
                let scope = match k.as_str() {
                    "subtree" => Some(WhatScope::Subtree),
                    "base" => Some(WhatScope::Base),
                    "children" => Some(WhatScope::Children),
                    _ => None,
                };
                if let Some(scope) = scope {
                    if dn.is_some() {
                        return Err(format!("line {n}: a rule names one base DN"));
                    }
                    dn = Some((parse_dn_key(schema, v, n)?, scope));
                } else if k == "filter" {
                    if filter.is_some() {
                        return Err(format!("line {n}: a rule has one filter"));
                    }
                    filter = Some(Filter::parse(v).map_err(|e| format!("line {n}: {e}"))?);
                } else if k == "attrs" {
                    if attrs.is_some() {
                        return Err(format!("line {n}: a rule has one attrs list"));
                    }
                    attrs = Some(parse_attrs(schema, v, n)?);
                } else {
                    return Err(format!("line {n}: unknown target {k:?}"));
                }
            }
        }
        clauses += 1;
        it.next();
    }
    if star && clauses > 1 {
        return Err(format!(
            "line {first_line}: \"to *\" stands alone; name a DN, filter or attrs instead"
        ));
    }
    if clauses == 0 {
        return Err(format!(
            "line {first_line}: \"to\" needs a target (\"*\", subtree=, base=, children=, filter=, attrs=)"
        ));
    }
    let (base_key, scope) = dn.unwrap_or((String::new(), WhatScope::Subtree));
    let what = What {
        base_key,
        scope,
        filter,
        attrs: attrs.unwrap_or(AttrSet::All),
    };
    let mut by = Vec::new();
    while let Some(t) = it.next() {
        match &t.kind {
            TokenKind::Word(w) if w.eq_ignore_ascii_case("by") => {}
            _ => return Err(format!("line {}: expected \"by\"", t.line)),
        }
        let Some(who_tok) = it.next() else {
            return Err(format!("line {}: \"by\" needs a requester", t.line));
        };
        let who = parse_who(schema, who_tok)?;
        let Some(right_tok) = it.next() else {
            return Err(format!(
                "line {}: \"by\" needs an access level after the requester",
                who_tok.line
            ));
        };
        let right = match &right_tok.kind {
            TokenKind::Word(w) => Right::parse(w),
            TokenKind::Pair(..) => None,
        }
        .ok_or_else(|| {
            format!(
                "line {}: unknown access (none, auth, compare, search, read, write or =xcsrw)",
                right_tok.line
            )
        })?;
        by.push(By { who, right });
    }
    if by.is_empty() {
        return Err(format!(
            "line {last_line}: a rule needs at least one \"by\""
        ));
    }
    Ok(Rule { what, by })
}

fn parse_who(schema: &Schema, t: &Token) -> Result<Who, String> {
    let n = t.line;
    match &t.kind {
        TokenKind::Word(w) => match w.to_ascii_lowercase().as_str() {
            "*" => Ok(Who::Anyone),
            "anonymous" => Ok(Who::Anonymous),
            "authenticated" | "users" => Ok(Who::Authenticated),
            "self" => Ok(Who::SelfEntry),
            "service" => Ok(Who::Service),
            "domain-admins" => Ok(Who::DomainAdmins),
            _ => Err(format!("line {n}: unknown requester {w:?}")),
        },
        TokenKind::Pair(k, v) => match k.as_str() {
            "dn" => Ok(Who::Dn {
                key: parse_dn_key(schema, v, n)?,
            }),
            "group" => {
                parse_dn_key(schema, v, n)?;
                Ok(Who::Group { dn: v.clone() })
            }
            "same-branch" => Ok(Who::SameBranch {
                base_key: parse_dn_key(schema, v, n)?,
            }),
            _ => Err(format!("line {n}: unknown requester {k:?}")),
        },
    }
}

fn parse_dn_key(schema: &Schema, dn: &str, n: usize) -> Result<String, String> {
    let parsed = Dn::parse(dn).map_err(|e| format!("line {n}: {e}"))?;
    schema.dn_key(&parsed).map_err(|e| format!("line {n}: {e}"))
}

fn parse_attrs(schema: &Schema, v: &str, n: usize) -> Result<AttrSet, String> {
    let v = v.trim();
    if v == "*" {
        return Ok(AttrSet::All);
    }
    let (except, list) = match v.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let mut out = AttrList::default();
    for name in list.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(format!("line {n}: empty attribute name in attrs"));
        }
        if name.eq_ignore_ascii_case("entry") {
            out.entry = true;
            continue;
        }
        let at = schema
            .attr(name)
            .ok_or_else(|| format!("line {n}: unknown attribute {name:?}"))?;
        out.oids.push(at.oid.clone());
    }
    Ok(if except {
        AttrSet::AllExcept(out)
    } else {
        AttrSet::Only(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::entry::Attribute;

    const SUFFIX: &str = "dc=pigeonair";
    const EXAMPLE: &str = "dc=example.org,ou=domains,dc=pigeonair";
    const OTHER: &str = "dc=other.net,ou=domains,dc=pigeonair";

    struct World {
        schema: Schema,
        entries: BTreeMap<String, StoredEntry>,
    }

    impl World {
        fn new() -> World {
            let schema = Schema::builtin();
            let mut w = World {
                schema,
                entries: BTreeMap::new(),
            };
            w.add(
                SUFFIX,
                &[
                    ("objectClass", &["dcObject", "organization"]),
                    ("dc", &["pigeonair"]),
                    ("o", &["PigeonAir"]),
                ],
            );
            w.add(
                "ou=domains,dc=pigeonair",
                &[
                    ("objectClass", &["organizationalUnit"]),
                    ("ou", &["domains"]),
                ],
            );
            w.add(
                "ou=system,dc=pigeonair",
                &[
                    ("objectClass", &["organizationalUnit"]),
                    ("ou", &["system"]),
                ],
            );
            w.add(
                "ou=nodes,dc=pigeonair",
                &[("objectClass", &["organizationalUnit"]), ("ou", &["nodes"])],
            );
            w.add(
                "cn=node1,ou=nodes,dc=pigeonair",
                &[
                    ("objectClass", &["pigeonairNode"]),
                    ("cn", &["node1"]),
                    ("pigeonairNodeId", &["1"]),
                ],
            );
            w.add(
                "cn=postfix,ou=system,dc=pigeonair",
                &[
                    (
                        "objectClass",
                        &["applicationProcess", "simpleSecurityObject"],
                    ),
                    ("cn", &["postfix"]),
                    ("userPassword", &["{SSHA}x"]),
                ],
            );
            for (domain, admins_attr, admin) in [
                (
                    EXAMPLE,
                    "member",
                    "uid=carol,ou=people,dc=example.org,ou=domains,dc=pigeonair",
                ),
                (
                    OTHER,
                    "uniqueMember",
                    "uid=erin,ou=people,dc=other.net,ou=domains,dc=pigeonair#'0101'B",
                ),
            ] {
                let dc = domain.split(',').next().unwrap().trim_start_matches("dc=");
                let group = format!("cn=admins,{domain}");
                w.add(
                    domain,
                    &[
                        ("objectClass", &["domain", "pigeonairMailDomain"]),
                        ("dc", &[dc]),
                        ("pigeonairAdminGroup", &[group.as_str()]),
                        ("description", &["a customer"]),
                    ],
                );
                w.add(
                    &format!("ou=people,{domain}"),
                    &[
                        ("objectClass", &["organizationalUnit"]),
                        ("ou", &["people"]),
                    ],
                );
                let class = if admins_attr == "member" {
                    "groupOfNames"
                } else {
                    "groupOfUniqueNames"
                };
                w.add(
                    &group,
                    &[
                        ("objectClass", &[class]),
                        ("cn", &["admins"]),
                        (admins_attr, &[admin]),
                    ],
                );
            }
            for (uid, domain) in [
                ("alice", EXAMPLE),
                ("bob", EXAMPLE),
                ("carol", EXAMPLE),
                ("dave", OTHER),
                ("erin", OTHER),
            ] {
                let dc = domain.split(',').next().unwrap().trim_start_matches("dc=");
                let mail = format!("{uid}@{dc}");
                w.add(
                    &format!("uid={uid},ou=people,{domain}"),
                    &[
                        ("objectClass", &["inetOrgPerson", "inetLocalMailRecipient"]),
                        ("uid", &[uid]),
                        ("cn", &[uid]),
                        ("sn", &[uid]),
                        ("mail", &[mail.as_str()]),
                        ("mailHost", &["node1.pigeonair.test"]),
                        ("telephoneNumber", &["+1 555 0100"]),
                        ("userPassword", &["{ARGON2}$argon2id$secret"]),
                    ],
                );
            }
            w
        }

        fn add(&mut self, dn: &str, attrs: &[(&str, &[&str])]) {
            let key = self.schema.dn_key(&Dn::parse(dn).unwrap()).unwrap();
            let attrs = attrs
                .iter()
                .map(|(name, values)| Attribute::new(name, values.iter()))
                .collect();
            self.entries.insert(
                key.clone(),
                StoredEntry {
                    dn: dn.to_string(),
                    key,
                    attrs,
                },
            );
        }

        fn entry(&self, dn: &str) -> &StoredEntry {
            let key = key_of(&self.schema, dn).unwrap();
            self.entries
                .get(&key)
                .unwrap_or_else(|| panic!("no entry {dn}"))
        }

        fn lookup(&self) -> impl Fn(&str) -> Option<StoredEntry> + '_ {
            move |dn: &str| key_of(&self.schema, dn).and_then(|k| self.entries.get(&k).cloned())
        }

        fn user(&self, uid: &str, domain: &str) -> Requester {
            Requester::bound(&self.schema, &format!("uid={uid},ou=people,{domain}")).unwrap()
        }

        fn service(&self) -> Requester {
            Requester {
                service: true,
                ..Requester::bound(&self.schema, "cn=postfix,ou=system,dc=pigeonair").unwrap()
            }
        }

        /// The right `who` holds on `attr` of the entry `dn`, membership read from the
        /// stored entries.
        fn right(&self, acl: &Acl, who: &Requester, dn: &str, attr: Option<&str>) -> Right {
            let lookup = self.lookup();
            let ctx = LookupContext::new(&self.schema, &lookup);
            acl.access(&self.schema, who, self.entry(dn), attr, &ctx)
        }

        fn defaults(&self) -> Acl {
            let key = key_of(&self.schema, SUFFIX).unwrap();
            Acl::defaults(&self.schema, &key, &AclOptions::default())
        }
    }

    fn person(uid: &str, domain: &str) -> String {
        format!("uid={uid},ou=people,{domain}")
    }

    #[test]
    fn anonymous_sees_nothing_under_domains_but_may_bind() {
        let w = World::new();
        let acl = w.defaults();
        let anon = Requester::anonymous();
        let alice = person("alice", EXAMPLE);
        for dn in [SUFFIX, "ou=domains,dc=pigeonair", EXAMPLE, alice.as_str()] {
            assert_eq!(w.right(&acl, &anon, dn, None), Right::NONE, "{dn}");
        }
        assert_eq!(w.right(&acl, &anon, &alice, Some("mail")), Right::NONE);
        assert_eq!(
            w.right(&acl, &anon, &alice, Some("userPassword")),
            Right::AUTH
        );
        let lookup = w.lookup();
        let ctx = LookupContext::new(&w.schema, &lookup);
        assert!(acl.may_auth(&w.schema, &anon, w.entry(&alice), &ctx));
        assert!(!acl.may_compare(&w.schema, &anon, w.entry(&alice), "userPassword", &ctx));
        assert!(acl
            .visible_attrs(&w.schema, &anon, w.entry(&alice), &ctx)
            .is_empty());
        // Service identities bind too.
        let postfix = w.entry("cn=postfix,ou=system,dc=pigeonair");
        assert!(acl.may_auth(&w.schema, &anon, postfix, &ctx));
        assert!(!acl.can_see_entry(&w.schema, &anon, postfix, &ctx));
    }

    #[test]
    fn alice_reads_bob_but_not_his_password() {
        let w = World::new();
        let acl = w.defaults();
        let alice = w.user("alice", EXAMPLE);
        let bob = person("bob", EXAMPLE);
        assert_eq!(w.right(&acl, &alice, &bob, None), Right::READ);
        assert_eq!(w.right(&acl, &alice, &bob, Some("mail")), Right::READ);
        assert_eq!(
            w.right(&acl, &alice, &bob, Some("userPassword")),
            Right::AUTH
        );
        let lookup = w.lookup();
        let ctx = LookupContext::new(&w.schema, &lookup);
        let seen = acl.visible_attrs(&w.schema, &alice, w.entry(&bob), &ctx);
        assert!(seen.iter().any(|a| a == "mail"));
        assert!(!seen.iter().any(|a| a == "userPassword"));
        let searchable = acl
            .searchable_entry(&w.schema, &alice, w.entry(&bob), &ctx)
            .unwrap();
        assert!(searchable.get("userPassword").is_none());
        assert!(!acl.may_write_entry(&w.schema, &alice, w.entry(&bob), &ctx));
        // The domain and the containers above are visible, so searches based there work.
        assert!(acl.can_see_entry(&w.schema, &alice, w.entry(EXAMPLE), &ctx));
        assert!(acl.can_see_entry(&w.schema, &alice, w.entry(SUFFIX), &ctx));
        assert!(acl.can_see_entry(&w.schema, &alice, w.entry("ou=domains,dc=pigeonair"), &ctx));
    }

    #[test]
    fn alice_cannot_see_another_domain_or_the_system() {
        let w = World::new();
        let acl = w.defaults();
        let alice = w.user("alice", EXAMPLE);
        let dave = person("dave", OTHER);
        assert_eq!(w.right(&acl, &alice, &dave, None), Right::NONE);
        assert_eq!(w.right(&acl, &alice, &dave, Some("mail")), Right::NONE);
        assert_eq!(w.right(&acl, &alice, OTHER, None), Right::NONE);
        for dn in [
            "ou=nodes,dc=pigeonair",
            "cn=node1,ou=nodes,dc=pigeonair",
            "ou=system,dc=pigeonair",
            "cn=postfix,ou=system,dc=pigeonair",
        ] {
            assert_eq!(w.right(&acl, &alice, dn, None), Right::NONE, "{dn}");
        }
        // Hidden entries answer like missing ones: matchedDN stops at what she sees.
        let lookup = w.lookup();
        let ctx = LookupContext::new(&w.schema, &lookup);
        let key = key_of(&w.schema, &dave).unwrap();
        match acl.deny_as_missing(&w.schema, &alice, &key, &lookup, &ctx) {
            DirError::NoSuchObject { matched } => assert_eq!(matched, "ou=domains,dc=pigeonair"),
            other => panic!("{other:?}"),
        }
        match acl.deny_as_missing(&w.schema, &Requester::anonymous(), &key, &lookup, &ctx) {
            DirError::NoSuchObject { matched } => assert_eq!(matched, ""),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn alice_changes_her_password_but_never_reads_it() {
        let w = World::new();
        let acl = w.defaults();
        let alice_dn = person("alice", EXAMPLE);
        let alice = w.user("alice", EXAMPLE);
        let own = w.right(&acl, &alice, &alice_dn, Some("userPassword"));
        assert!(own.allows(Privilege::Write));
        assert!(own.allows(Privilege::Auth));
        assert!(!own.allows(Privilege::Read));
        assert!(!own.allows(Privilege::Compare));
        assert_eq!(own.to_string(), "=xw");
        // Her own entry: she reads it, but does not change it.
        assert_eq!(w.right(&acl, &alice, &alice_dn, None), Right::READ);
        assert_eq!(w.right(&acl, &alice, &alice_dn, Some("mail")), Right::READ);
        // Bob's password: bind only.
        let lookup = w.lookup();
        let ctx = LookupContext::new(&w.schema, &lookup);
        let bob = w.entry(&person("bob", EXAMPLE));
        assert!(!acl.may_write_attr(&w.schema, &alice, bob, "userPassword", &ctx));
        let readable = acl
            .readable_entry(&w.schema, &alice, w.entry(&alice_dn), &ctx)
            .unwrap();
        assert!(readable.get("userPassword").is_none());
        assert!(readable.get("mail").is_some());
    }

    #[test]
    fn domain_admin_writes_its_domain_only() {
        let w = World::new();
        let acl = w.defaults();
        let carol = w.user("carol", EXAMPLE);
        let lookup = w.lookup();
        let ctx = LookupContext::new(&w.schema, &lookup);
        let bob = w.entry(&person("bob", EXAMPLE));
        assert!(acl.may_write_entry(&w.schema, &carol, bob, &ctx));
        assert!(acl.may_write_attr(&w.schema, &carol, bob, "mail", &ctx));
        let pw = acl.access(&w.schema, &carol, bob, Some("userPassword"), &ctx);
        assert!(pw.allows(Privilege::Write) && !pw.allows(Privilege::Read));
        // The domain entry: its description yes; its admin group and its existence no.
        let domain = w.entry(EXAMPLE);
        assert!(acl.may_write_attr(&w.schema, &carol, domain, "description", &ctx));
        assert!(!acl.may_write_attr(&w.schema, &carol, domain, "pigeonairAdminGroup", &ctx));
        assert!(acl
            .access(&w.schema, &carol, domain, Some("pigeonairAdminGroup"), &ctx)
            .allows(Privilege::Read));
        assert!(!acl.may_write_entry(&w.schema, &carol, domain, &ctx));
        assert!(acl.can_see_entry(&w.schema, &carol, domain, &ctx));
        // A new account in her domain: allowed; in another domain: not.
        let mut new = bob.clone();
        new.dn = person("zoe", EXAMPLE);
        new.key = key_of(&w.schema, &new.dn).unwrap();
        assert!(acl.may_write_entry(&w.schema, &carol, &new, &ctx));
        new.dn = person("zoe", OTHER);
        new.key = key_of(&w.schema, &new.dn).unwrap();
        assert!(!acl.may_write_entry(&w.schema, &carol, &new, &ctx));
        let dave = w.entry(&person("dave", OTHER));
        assert!(!acl.may_write_entry(&w.schema, &carol, dave, &ctx));
        assert!(!acl.can_see_entry(&w.schema, &carol, dave, &ctx));
        // Erin administers other.net through uniqueMember (with a UID suffix).
        let erin = w.user("erin", OTHER);
        assert!(acl.may_write_entry(&w.schema, &erin, dave, &ctx));
        assert!(!acl.may_write_entry(&w.schema, &erin, bob, &ctx));
        // A plain account is no admin.
        let alice = w.user("alice", EXAMPLE);
        assert!(!acl.may_write_entry(&w.schema, &alice, bob, &ctx));
    }

    #[test]
    fn known_memberships_answer_like_lookups() {
        let w = World::new();
        let acl = w.defaults();
        let carol = w.user("carol", EXAMPLE);
        let mut known = KnownMemberships::new(&carol);
        known.add_group(&key_of(&w.schema, &format!("cn=admins,{EXAMPLE}")).unwrap());
        known.add_domain(
            &key_of(&w.schema, EXAMPLE).unwrap(),
            vec![format!("cn=admins,{EXAMPLE}")],
        );
        let ctx = known.with_schema(&w.schema);
        let bob = w.entry(&person("bob", EXAMPLE));
        assert!(acl.may_write_entry(&w.schema, &carol, bob, &ctx));
        let alice = w.user("alice", EXAMPLE);
        assert!(!acl.may_write_entry(&w.schema, &alice, bob, &ctx));
    }

    #[test]
    fn service_reads_routing_but_not_passwords_unless_told() {
        let w = World::new();
        let acl = w.defaults();
        let svc = w.service();
        let bob = person("bob", EXAMPLE);
        let dave = person("dave", OTHER);
        assert_eq!(w.right(&acl, &svc, &bob, Some("mailHost")), Right::READ);
        assert_eq!(w.right(&acl, &svc, &dave, Some("mail")), Right::READ);
        assert_eq!(w.right(&acl, &svc, &bob, None), Right::READ);
        assert_eq!(
            w.right(&acl, &svc, &bob, Some("telephoneNumber")),
            Right::NONE
        );
        assert!(!w
            .right(&acl, &svc, &bob, Some("userPassword"))
            .allows(Privilege::Read));
        assert_eq!(
            w.right(&acl, &svc, "cn=node1,ou=nodes,dc=pigeonair", None),
            Right::NONE
        );
        // Its own entry is visible to it, nothing else of the system.
        assert_eq!(
            w.right(&acl, &svc, "cn=postfix,ou=system,dc=pigeonair", None),
            Right::READ
        );

        let key = key_of(&w.schema, SUFFIX).unwrap();
        let opts = AclOptions {
            service_reads_passwords: true,
        };
        let acl = Acl::defaults(&w.schema, &key, &opts);
        assert!(w
            .right(&acl, &svc, &bob, Some("userPassword"))
            .allows(Privilege::Read));
        // Read-only, whatever a rule says.
        let generous = Acl::parse(&w.schema, "to * by * write").unwrap();
        assert_eq!(
            w.right(&generous, &svc, &bob, Some("mailHost")),
            Right::READ
        );
    }

    #[test]
    fn cluster_admin_holds_everything() {
        let w = World::new();
        let acl = w.defaults();
        let admin = Requester {
            admin: true,
            ..Requester::bound(&w.schema, "cn=root,ou=system,dc=pigeonair").unwrap()
        };
        for dn in [
            SUFFIX,
            "cn=node1,ou=nodes,dc=pigeonair",
            &person("dave", OTHER),
        ] {
            assert_eq!(w.right(&acl, &admin, dn, None), Right::WRITE);
            assert_eq!(
                w.right(&acl, &admin, dn, Some("userPassword")),
                Right::WRITE
            );
        }
    }

    #[test]
    fn defaults_are_the_parsed_text() {
        let w = World::new();
        for opts in [
            AclOptions::default(),
            AclOptions {
                service_reads_passwords: true,
            },
        ] {
            let parsed = Acl::parse(&w.schema, &default_rules_text(SUFFIX, &opts)).unwrap();
            let key = key_of(&w.schema, SUFFIX).unwrap();
            assert_eq!(Acl::defaults(&w.schema, &key, &opts), parsed);
            assert_eq!(Acl::defaults(&w.schema, SUFFIX, &opts), parsed);
            assert!(!parsed.rules().is_empty());
        }
    }

    #[test]
    fn custom_rules_from_text() {
        let w = World::new();
        let text = r#"
# accounts: owners write, other.net's admins read, everyone bound may search
to subtree="ou=domains,dc=pigeonair" filter="(objectClass=inetOrgPerson)" attrs="!userPassword"
    by self write
    by group="cn=admins,dc=other.net,ou=domains,dc=pigeonair" read
    by authenticated search
    by * none
to base="dc=example.org,ou=domains,dc=pigeonair" attrs="entry,name"
    by dn="UID=Bob,ou=people,dc=example.org,ou=domains,dc=pigeonair" =cr
to children="ou=nodes,dc=pigeonair" by users compare
"#;
        let acl = Acl::parse(&w.schema, text).unwrap();
        assert_eq!(acl.rules().len(), 3);
        let alice_dn = person("alice", EXAMPLE);
        let alice = w.user("alice", EXAMPLE);
        let bob = w.user("bob", EXAMPLE);
        let erin = w.user("erin", OTHER);
        assert_eq!(w.right(&acl, &alice, &alice_dn, Some("cn")), Right::WRITE);
        assert_eq!(w.right(&acl, &erin, &alice_dn, Some("mail")), Right::READ);
        assert_eq!(w.right(&acl, &bob, &alice_dn, Some("mail")), Right::SEARCH);
        assert_eq!(
            w.right(&acl, &Requester::anonymous(), &alice_dn, Some("mail")),
            Right::NONE
        );
        // userPassword is not covered: nobody gets anything on it.
        assert_eq!(
            w.right(&acl, &alice, &alice_dn, Some("userPassword")),
            Right::NONE
        );
        // The filter: the domain entry is no inetOrgPerson.
        assert_eq!(
            w.right(&acl, &alice, EXAMPLE, Some("description")),
            Right::NONE
        );
        // base scope, a DN written in another case, subtypes of `name` (dc is not one).
        let c_r = Right::of(&[Privilege::Compare, Privilege::Read]);
        assert_eq!(w.right(&acl, &bob, EXAMPLE, None), c_r);
        assert_eq!(w.right(&acl, &bob, EXAMPLE, Some("cn")), c_r);
        assert_eq!(w.right(&acl, &bob, EXAMPLE, Some("dc")), Right::NONE);
        assert_eq!(w.right(&acl, &alice, EXAMPLE, None), Right::NONE);
        // children scope excludes the base.
        assert_eq!(
            w.right(&acl, &alice, "cn=node1,ou=nodes,dc=pigeonair", None),
            Right::COMPARE
        );
        assert_eq!(
            w.right(&acl, &alice, "ou=nodes,dc=pigeonair", None),
            Right::NONE
        );
    }

    #[test]
    fn parse_errors_name_the_line() {
        let schema = Schema::builtin();
        let cases = [
            ("to * by * read\nto * by * sometimes\n", "line 2:"),
            ("# c\n\nto attrs=\"noSuchAttr\" by * read\n", "line 3:"),
            ("to *\n    by * read\n    by nobody read\n", "line 3:"),
            ("to filter=\"(objectClass=\" by * read\n", "line 1:"),
            ("to * by * read\n\nfrom * by * read\n", "line 3:"),
            ("to subtree=\"dc=x\"\n", "line 1:"),
            (
                "to * by * read\nto subtree=\"not a dn\" by * read\n",
                "line 2:",
            ),
            ("    by * read\n", "line 1:"),
            ("to * by * read\nto base=\"dc=x by * read\n", "line 2:"),
            ("to * by * =xq\n", "line 1:"),
            ("to by * read\n", "line 1:"),
        ];
        for (text, line) in cases {
            let err = Acl::parse(&schema, text).unwrap_err();
            assert!(err.starts_with(line), "{text:?}: {err}");
        }
    }

    #[test]
    fn rights_parse_and_print() {
        for s in [
            "none", "auth", "compare", "search", "read", "write", "=xw", "=cr",
        ] {
            assert_eq!(Right::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Right::parse("=0"), Some(Right::NONE));
        assert_eq!(Right::parse("=xcsrw"), Some(Right::WRITE));
        assert!(Right::READ.allows(Privilege::Search));
        assert!(!Right::READ.allows(Privilege::Write));
        assert_eq!(Right::parse("="), None);
        assert_eq!(Right::parse("everything"), None);
    }
}

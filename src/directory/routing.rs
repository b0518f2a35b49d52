//! The typed directory API the mail services read through: which account or alias an
//! address reaches, where an account's mailbox lives, and which node offers which
//! service. Everything reads the local replica through its indexes: no LDAP encoding,
//! no socket, no round trip to another node.
//!
//! The directory layout it reads (DESIGN.md §3):
//! - a mail domain is `dc=<domain>,ou=domains,<suffix>`; mail for any other domain is
//!   [`Resolution::Foreign`];
//! - an account is an entry under its domain with `mail` (its primary address),
//!   optionally `mailLocalAddress` and `mailAlternateAddress` (more addresses),
//!   `mailHost` (its home node's name), `mailQuotaSize` / `mailQuotaCount`,
//!   `mailForwardingAddress`, `deliveryMode`, `accountStatus`;
//! - an alias or list is a `pigeonairMailAlias` entry (under `ou=aliases` by
//!   convention) whose `mail` / `mailLocalAddress` addresses go to every
//!   `mailForwardingAddress`: accounts, other aliases (nested, loops cut) or foreign
//!   addresses;
//! - the address `@<domain>` on an account or alias makes it the domain's catch-all;
//! - a node is `cn=node-<id>,ou=nodes,<suffix>` with `pigeonairNodeName`,
//!   `pigeonairAddress: cluster=<host:port>` and `pigeonairService: <name>=<host:port>`.
//!
//! Case: the domain is matched case-insensitively, and so is the local part (the
//! matching rule of `mail` is caseIgnoreIA5Match); the mailbox path uses the account's
//! primary address in lower case. A `+tag` subaddress reaches the address without the
//! tag when no entry holds the tagged address itself.

use super::entry::StoredEntry;
use super::filter::Filter;
use super::{DirError, DirView, Directory, Scope, SearchRequest};

/// How many aliases deep an expansion may go before it is cut as a loop.
const MAX_ALIAS_DEPTH: usize = 16;
/// The most targets one address may expand to.
const MAX_TARGETS: usize = 10_000;

/// A mail address as the directory matches it: both parts in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// The local part, lower case.
    pub local: String,
    /// The domain, lower case, without a trailing dot.
    pub domain: String,
}

impl Address {
    /// Split `addr` (`local@domain`, angle brackets and surrounding space allowed) and
    /// normalise it; `None` without an `@`, with an empty part or with characters no
    /// address may hold (control characters, space, `/`).
    pub fn parse(addr: &str) -> Option<Address> {
        let addr = addr.trim().trim_start_matches('<').trim_end_matches('>');
        let (local, domain) = addr.rsplit_once('@')?;
        let domain = domain.trim_end_matches('.');
        let bad = |s: &str| {
            s.is_empty()
                || s.chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == '/' || c == '\\')
        };
        if bad(local) || bad(domain) || domain.starts_with('.') || domain.contains("..") {
            return None;
        }
        Some(Address {
            local: local.to_lowercase(),
            domain: domain.to_lowercase(),
        })
    }

    /// `local@domain`.
    pub fn to_text(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }

    /// The address without its `+tag` subaddress, if it has one.
    pub fn without_tag(&self) -> Option<Address> {
        let (base, _) = self.local.split_once('+')?;
        (!base.is_empty()).then(|| Address {
            local: base.to_string(),
            domain: self.domain.clone(),
        })
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// An account's mailbox quota from the directory (`None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// `mailQuotaSize`: bytes.
    pub bytes: Option<u64>,
    /// `mailQuotaCount`: messages.
    pub count: Option<u64>,
}

/// Whether an account takes mail (`accountStatus`, qmail-ldap values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    /// `active`, `nopop` (mail is delivered; `nopop` only keeps POP3 out), or absent.
    Active,
    /// `disabled`, `noaccess`, `deleted` or any other value: mail is refused.
    Disabled,
}

/// An account an address reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its entry.
    pub dn: String,
    /// Its primary address (`mail`), normalised: where its Maildir lives.
    pub mailbox: Address,
    /// Its home node's name (`mailHost`); `None` when it has none.
    pub home: Option<String>,
    /// Its quota.
    pub quota: Quota,
    /// Where a copy goes as well (`mailForwardingAddress`).
    pub forwards: Vec<String>,
    /// `deliveryMode` does not say `nolocal`: a copy is stored in the mailbox.
    pub store_locally: bool,
    /// `deliveryMode` does not say `noforward`: forwards are followed.
    pub follow_forwards: bool,
    /// `accountStatus`.
    pub status: AccountStatus,
}

/// Where mail to one address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local account.
    Account(Account),
    /// An address outside this cluster's domains (an alias member or a forward).
    External(String),
}

/// What an address is to this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Not one of this cluster's domains: relaying, for an authenticated sender only.
    Foreign,
    /// One of this cluster's domains, but no account or alias holds the address.
    Unknown,
    /// It reaches these targets (aliases expanded, duplicates removed), in order.
    Delivers(Vec<Target>),
}

/// The DN of a domain's entry.
fn domain_dn(dir: &Directory, domain: &str) -> String {
    format!("dc={domain},ou=domains,{}", dir.suffix())
}

/// What an address reaches: see the module documentation for the rules.
pub fn resolve_recipient(dir: &Directory, address: &str) -> Result<Resolution, DirError> {
    let Some(addr) = Address::parse(address) else {
        return Ok(Resolution::Unknown);
    };
    let view = dir.view()?;
    if !is_local_domain(dir, &view, &addr.domain)? {
        return Ok(Resolution::Foreign);
    }
    let mut expansion = Expansion {
        dir,
        view: &view,
        targets: Vec::new(),
        seen: Vec::new(),
    };
    if !expansion.address(&addr, 0)? {
        return Ok(Resolution::Unknown);
    }
    Ok(if expansion.targets.is_empty() {
        Resolution::Unknown
    } else {
        Resolution::Delivers(expansion.targets)
    })
}

/// Whether `domain` is one of this cluster's mail domains.
pub fn is_local_domain(
    dir: &Directory,
    view: &DirView<'_>,
    domain: &str,
) -> Result<bool, DirError> {
    // Only a host name can be a mail domain here (no address literal, nothing that
    // would read as more than one RDN).
    let host_name = !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
    if !host_name {
        return Ok(false);
    }
    match view.find(&domain_dn(dir, domain)) {
        Ok(found) => Ok(found.is_some()),
        Err(DirError::Schema(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The home node of the account an address reaches (its first account target), if it
/// has one.
pub fn home_of(dir: &Directory, address: &str) -> Result<Option<String>, DirError> {
    Ok(match resolve_recipient(dir, address)? {
        Resolution::Delivers(targets) => targets.into_iter().find_map(|t| match t {
            Target::Account(a) => a.home,
            Target::External(_) => None,
        }),
        _ => None,
    })
}

/// The `host:port` endpoints at which the node named `node` (its `pigeonairNodeName`,
/// as `mailHost` names it, or `node-<id>`) offers `service`: `cluster` is its cluster
/// port, any other name one of its `pigeonairService` values.
pub fn service_endpoints(
    dir: &Directory,
    node: &str,
    service: &str,
) -> Result<Vec<String>, DirError> {
    let view = dir.view()?;
    let base = format!("ou=nodes,{}", dir.suffix());
    let filter = Filter::Or(vec![
        Filter::Equality("pigeonairNodeName".into(), node.as_bytes().to_vec()),
        Filter::Equality("cn".into(), node.as_bytes().to_vec()),
    ]);
    let (attr, prefix) = if service == "cluster" {
        ("pigeonairAddress", "cluster=".to_string())
    } else {
        ("pigeonairService", format!("{service}="))
    };
    let mut out = Vec::new();
    let found = search(&view, &base, &filter, 0, |e| {
        for v in e.get(attr).map(|a| a.values.as_slice()).unwrap_or_default() {
            let v = String::from_utf8_lossy(v);
            if let Some(endpoint) = v.strip_prefix(&prefix) {
                out.push(endpoint.to_string());
            }
        }
    });
    match found {
        Ok(()) | Err(DirError::NoSuchObject { .. }) => Ok(out),
        Err(e) => Err(e),
    }
}

/// Run a subtree search of the replica, handing `each` every match (at most
/// `size_limit` of them, 0 for no limit).
pub(crate) fn search(
    view: &DirView<'_>,
    base: &str,
    filter: &Filter,
    size_limit: usize,
    mut each: impl FnMut(StoredEntry),
) -> Result<(), DirError> {
    let req = SearchRequest {
        base,
        scope: Scope::Subtree,
        filter,
        size_limit,
        deadline: None,
        view: None,
        subordinates: false,
        keep: None,
    };
    view.search(&req, |_, e| {
        each(e);
        true
    })
    .map(|_| ())
}

/// One expansion of an address into its targets.
struct Expansion<'a, 'd> {
    dir: &'a Directory,
    view: &'a DirView<'d>,
    targets: Vec<Target>,
    /// Entries (DN keys in lower case) and external addresses already taken.
    seen: Vec<String>,
}

impl Expansion<'_, '_> {
    /// Expand `addr` (a local-domain address); false when nothing holds it.
    fn address(&mut self, addr: &Address, depth: usize) -> Result<bool, DirError> {
        let mut entries = self.entries_for(addr)?;
        if entries.is_empty() {
            if let Some(base) = addr.without_tag() {
                entries = self.entries_for(&base)?;
            }
        }
        if entries.is_empty() {
            let catch_all = Address {
                local: String::new(),
                domain: addr.domain.clone(),
            };
            entries = self.entries_for(&catch_all)?;
        }
        if entries.is_empty() {
            return Ok(false);
        }
        for e in entries {
            self.entry(e, depth)?;
        }
        Ok(true)
    }

    /// The entries under the address's domain that hold it (`@domain` when the local
    /// part is empty).
    fn entries_for(&self, addr: &Address) -> Result<Vec<StoredEntry>, DirError> {
        let value = if addr.local.is_empty() {
            format!("@{}", addr.domain)
        } else {
            addr.to_text()
        };
        let filter = Filter::Or(
            ["mail", "mailLocalAddress", "mailAlternateAddress"]
                .into_iter()
                .map(|a| Filter::Equality(a.into(), value.as_bytes().to_vec()))
                .collect(),
        );
        let mut found = Vec::new();
        let base = domain_dn(self.dir, &addr.domain);
        match search(self.view, &base, &filter, 0, |e| found.push(e)) {
            Ok(()) | Err(DirError::NoSuchObject { .. }) => Ok(found),
            Err(e) => Err(e),
        }
    }

    fn entry(&mut self, e: StoredEntry, depth: usize) -> Result<(), DirError> {
        let key = e.key.clone();
        if self.seen.contains(&key) || self.targets.len() >= MAX_TARGETS {
            return Ok(());
        }
        self.seen.push(key);
        if has_class(&e, "pigeonairMailAlias") {
            if status_of(&e) == AccountStatus::Disabled {
                return Ok(());
            }
            if depth >= MAX_ALIAS_DEPTH {
                tracing::warn!(alias = %e.dn, "alias expansion cut: nested too deep (a loop?)");
                return Ok(());
            }
            for member in values(&e, "mailForwardingAddress") {
                self.member(&member, depth + 1)?;
            }
            return Ok(());
        }
        if let Some(account) = account_of(&e) {
            self.targets.push(Target::Account(account));
        }
        Ok(())
    }

    /// One member of an alias: a local address (expanded again) or an external one.
    fn member(&mut self, member: &str, depth: usize) -> Result<(), DirError> {
        let Some(addr) = Address::parse(member) else {
            return Ok(());
        };
        if is_local_domain(self.dir, self.view, &addr.domain)? {
            if !self.address(&addr, depth)? {
                tracing::warn!(%member, "an alias member names no account or alias");
            }
            return Ok(());
        }
        let text = addr.to_text();
        if !self.seen.contains(&text) {
            self.seen.push(text);
            self.targets
                .push(Target::External(member.trim().to_string()));
        }
        Ok(())
    }
}

fn has_class(e: &StoredEntry, class: &str) -> bool {
    e.get("objectClass").is_some_and(|a| {
        a.values
            .iter()
            .any(|v| v.eq_ignore_ascii_case(class.as_bytes()))
    })
}

fn values(e: &StoredEntry, attr: &str) -> Vec<String> {
    e.get(attr)
        .map(|a| {
            a.values
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn number(e: &StoredEntry, attr: &str) -> Option<u64> {
    e.first_str(attr)
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
}

fn status_of(e: &StoredEntry) -> AccountStatus {
    match e
        .first_str("accountStatus")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("active") | Some("nopop") => AccountStatus::Active,
        Some(_) => AccountStatus::Disabled,
    }
}

/// The account an entry is, when it has a usable primary address.
fn account_of(e: &StoredEntry) -> Option<Account> {
    let mailbox = e.first_str("mail").and_then(Address::parse)?;
    let modes: Vec<String> = values(e, "deliveryMode")
        .into_iter()
        .map(|m| m.to_ascii_lowercase())
        .collect();
    Some(Account {
        dn: e.dn.clone(),
        mailbox,
        home: e.first_str("mailHost").map(str::to_string),
        quota: Quota {
            bytes: number(e, "mailQuotaSize"),
            count: number(e, "mailQuotaCount"),
        },
        forwards: values(e, "mailForwardingAddress"),
        store_locally: !modes.iter().any(|m| m == "nolocal"),
        follow_forwards: !modes.iter().any(|m| m == "noforward"),
        status: status_of(e),
    })
}

#[cfg(test)]
pub(crate) mod tests;

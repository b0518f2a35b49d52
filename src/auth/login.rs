//! Mail logins (SMTP AUTH, IMAP, POP3, the proxies): a user name or address and a
//! password, checked against the local replica.
//!
//! A verified (login, password) pair is remembered so that a client that logs in again
//! and again (a mail client polling, a proxy in front of a backend) does not cost an
//! argon2 verify each time. What is remembered is the entry and a fingerprint of its
//! stored `userPassword` values; every use reads the entry again from the replica and
//! trusts the cache only while the fingerprint is the same and the account is active.
//! So a password change or a disabled account takes effect at once, on every node, as
//! soon as that node's replica has applied the change: nothing needs to be told to
//! forget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{Authority, Identity};
use crate::directory::entry::StoredEntry;
use crate::directory::filter::Filter;
use crate::directory::routing::Address;
use crate::directory::{password, DirView, Directory};

/// How long a verified pair is trusted without another verify.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// The most pairs remembered; past this the oldest half is dropped.
const CACHE_MAX: usize = 50_000;

/// A successful mail login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Who logged in (the account's entry).
    pub identity: Identity,
    /// The account's primary address: its mailbox.
    pub mailbox: Address,
    /// Its home node (`mailHost`).
    pub home: Option<String>,
    /// Every address the account may send as (`mail`, `mailLocalAddress`,
    /// `mailAlternateAddress`), normalised; catch-all forms (`@domain`) excluded.
    pub addresses: Vec<Address>,
}

#[derive(Clone)]
struct Verified {
    dn: String,
    fingerprint: [u8; 32],
    at: Instant,
}

/// The remembered (login, password) pairs.
#[derive(Default)]
pub struct LoginCache {
    pairs: Mutex<HashMap<(String, [u8; 32]), Verified>>,
    hits: std::sync::atomic::AtomicU64,
}

impl LoginCache {
    /// How many logins were answered from the cache (no argon2 verify).
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn get(&self, key: &(String, [u8; 32])) -> Option<Verified> {
        let pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        pairs
            .get(key)
            .filter(|v| v.at.elapsed() < CACHE_TTL)
            .cloned()
    }

    fn put(&self, key: (String, [u8; 32]), v: Verified) {
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        if pairs.len() >= CACHE_MAX {
            let mut ages: Vec<Instant> = pairs.values().map(|v| v.at).collect();
            ages.sort();
            let cut = ages[ages.len() / 2];
            pairs.retain(|_, v| v.at > cut);
        }
        pairs.insert(key, v);
    }

    fn forget(&self, key: &(String, [u8; 32])) {
        self.pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The fingerprint of an entry's stored passwords.
fn password_fingerprint(e: &StoredEntry) -> Option<[u8; 32]> {
    let values = &e.get("userPassword")?.values;
    let parts: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    Some(sha256(&parts))
}

/// The one account entry a login names: an address held by an account (`mail`,
/// `mailLocalAddress`, `mailAlternateAddress`), else a `uid` under the domains. `None`
/// when nothing or more than one entry matches.
fn account_entry(dir: &Directory, view: &DirView<'_>, login: &str) -> Option<StoredEntry> {
    let base = format!("ou=domains,{}", dir.suffix());
    let filter = match Address::parse(login) {
        Some(addr) => {
            let value = addr.to_text().into_bytes();
            Filter::Or(
                ["mail", "mailLocalAddress", "mailAlternateAddress"]
                    .into_iter()
                    .map(|a| Filter::Equality(a.into(), value.clone()))
                    .collect(),
            )
        }
        None => Filter::Equality("uid".into(), login.as_bytes().to_vec()),
    };
    let mut found = Vec::new();
    // A size limit of 2 tells one match from several.
    let _ = crate::directory::routing::search(view, &base, &filter, 2, |e| found.push(e));
    found.retain(|e| e.get("userPassword").is_some());
    (found.len() == 1).then(|| found.pop()).flatten()
}

fn login_of(auth: &Authority, e: &StoredEntry) -> Option<Login> {
    let mailbox = e.first_str("mail").and_then(Address::parse)?;
    let mut addresses: Vec<Address> = ["mail", "mailLocalAddress", "mailAlternateAddress"]
        .iter()
        .flat_map(|a| e.get(a).map(|a| a.values.clone()).unwrap_or_default())
        .filter_map(|v| Address::parse(&String::from_utf8_lossy(&v)))
        .collect();
    addresses.dedup();
    let key = auth.dn_key(&e.dn)?;
    Some(Login {
        identity: Identity {
            dn: e.dn.clone(),
            admin: auth.is_admin(&key),
            key,
        },
        mailbox,
        home: e.first_str("mailHost").map(str::to_string),
        addresses,
    })
}

fn active(e: &StoredEntry) -> bool {
    !matches!(
        e.first_str("accountStatus").map(str::to_ascii_lowercase).as_deref(),
        Some(s) if !matches!(s, "active" | "nopop")
    )
}

impl Authority {
    /// Check a mail login (a full address or a uid) and its password against the local
    /// replica, as a client at `peer` asks. `None` for an unknown login, a wrong
    /// password, a disabled account or one the access rules do not let authenticate;
    /// failed logins slow down the next ones for this login and from this address, as
    /// LDAP binds do. A pair verified before and still matching the replica is answered
    /// without another argon2 verify (see the module documentation).
    pub async fn authenticate(&self, login: &str, pass: &[u8], peer: IpAddr) -> Option<Login> {
        let throttle_key = format!("login:{}", login.to_lowercase());
        let delay = self.throttle.delay(&throttle_key, peer);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let result = self.check_login(login, pass).await;
        match &result {
            Some(_) => self.throttle.succeeded(&throttle_key, peer),
            None => self.throttle.failed(&throttle_key, peer),
        }
        result
    }

    async fn check_login(&self, login: &str, pass: &[u8]) -> Option<Login> {
        if login.is_empty() || pass.is_empty() {
            return None;
        }
        let cache_key = (login.to_lowercase(), sha256(&[pass]));
        let view = self.directory().view().ok()?;
        let entry = account_entry(self.directory(), &view, login)?;
        drop(view);
        if !active(&entry) {
            return None;
        }
        if !self
            .checker(&Identity::default())
            .ok()?
            .may_bind_as(&entry.dn)
        {
            return None;
        }
        let fingerprint = password_fingerprint(&entry)?;
        if let Some(v) = self.login_cache.get(&cache_key) {
            if v.dn == entry.dn && v.fingerprint == fingerprint {
                self.login_cache
                    .hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return login_of(self, &entry);
            }
            self.login_cache.forget(&cache_key);
        }
        let stored = entry.get("userPassword")?.values.clone();
        let clear = pass.to_vec();
        let ok = self
            .hashing
            .run(move || stored.iter().any(|v| password::verify(&clear, v)))
            .await?;
        if !ok {
            return None;
        }
        self.login_cache.put(
            cache_key,
            Verified {
                dn: entry.dn.clone(),
                fingerprint,
                at: Instant::now(),
            },
        );
        login_of(self, &entry)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::auth::Authority;
    use crate::directory::acl::AclOptions;
    use crate::directory::routing::tests::directory;
    use crate::directory::{Change, ChangeOp, DirectoryCommand, WriteMeta};

    fn authority(dir: crate::directory::Directory) -> Authority {
        Authority::new(
            Arc::new(dir),
            &["cn=admin,ou=system,dc=pigeonair".to_string()],
            &[],
            AclOptions::default(),
            Duration::from_millis(50),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn logins_by_address_or_uid_and_a_cache_that_follows_the_entry() {
        let (_tmp, dir) = directory();
        let auth = authority(dir);
        let peer = "127.0.0.1".parse().unwrap();
        let login = auth
            .authenticate("ALICE@example.org", b"secret", peer)
            .await
            .unwrap();
        assert_eq!(login.mailbox.to_text(), "alice@example.org");
        assert_eq!(login.home.as_deref(), Some("node1"));
        let addresses: Vec<String> = login.addresses.iter().map(|a| a.to_text()).collect();
        assert_eq!(
            addresses,
            [
                "alice@example.org",
                "a.liddell@example.org",
                "wonder@example.org"
            ]
        );
        assert!(
            auth.authenticate("alice", b"secret", peer).await.is_some(),
            "by uid"
        );
        assert!(auth
            .authenticate("wonder@example.org", b"secret", peer)
            .await
            .is_some());
        assert!(auth
            .authenticate("alice@example.org", b"wrong", peer)
            .await
            .is_none());
        assert!(
            auth.authenticate("bob@example.org", b"bobpw", peer)
                .await
                .is_none(),
            "disabled"
        );
        assert!(auth
            .authenticate("nobody@example.org", b"x", peer)
            .await
            .is_none());
        assert!(
            auth.authenticate("carol@example.org", b"", peer)
                .await
                .is_none(),
            "no password"
        );

        let hits = auth.login_cache.hits();
        assert!(auth
            .authenticate("alice@example.org", b"secret", peer)
            .await
            .is_some());
        assert_eq!(
            auth.login_cache.hits(),
            hits + 1,
            "a repeated login is answered from the cache"
        );

        // A new password takes effect at once: the cached pair no longer matches.
        let change = DirectoryCommand::Modify {
            dn: "uid=alice,ou=people,dc=example.org,ou=domains,dc=pigeonair".into(),
            changes: vec![Change {
                op: ChangeOp::Replace,
                attr: "userPassword".into(),
                values: vec![b"fresh".to_vec()],
            }],
            meta: WriteMeta::now("cn=admin,ou=system,dc=pigeonair"),
        };
        auth.directory().apply(&change).unwrap();
        assert!(auth
            .authenticate("alice@example.org", b"secret", peer)
            .await
            .is_none());
        assert!(auth
            .authenticate("alice@example.org", b"fresh", peer)
            .await
            .is_some());
    }
}

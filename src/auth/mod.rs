//! Who a client is and what it may do, for every protocol of a node: identities,
//! password checks against the local replica, the access rules in force, and the
//! slots that password hashing runs on. The LDAP front end binds through it; the mail
//! services' logins (SMTP AUTH, IMAP, POP3) use the same checks, so a failed login
//! slows down alike on every port.
//!
//! - [`Authority`]: the node's administrators and service identities, its access rules
//!   (changed live by cluster settings), password verification, the login throttle;
//! - [`access`]: the access questions of one request ([`access::Checker`]) and the
//!   authorisation of writes ([`access::authorize`]);
//! - [`hashing`]: where argon2 runs ([`hashing::HashSlots`]);
//! - [`login`]: mail logins by address or uid, with a cache of verified pairs.

pub mod access;
pub mod hashing;
pub mod login;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::directory::acl::{Acl, AclOptions, Requester};
use crate::directory::dn::Dn;
use crate::directory::{password, DirError, Directory};
use crate::net::limits::LoginThrottle;

use hashing::HashSlots;

/// Who a connection is authenticated as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The entry's DN as stored in the directory (empty: anonymous).
    pub dn: String,
    /// Its normalised key (empty: anonymous).
    pub key: String,
    /// An administrator: may read and write everything.
    pub admin: bool,
}

impl Identity {
    /// True when not authenticated.
    pub fn is_anonymous(&self) -> bool {
        self.dn.is_empty()
    }
}

/// Why an [`Authority`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A configured identity is not a valid DN.
    #[error("{what}: {dn}: {message}")]
    BadDn {
        /// The setting that names it.
        what: &'static str,
        /// The DN as configured.
        dn: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The node's authentication and access policy over its replica.
pub struct Authority {
    dir: Arc<Directory>,
    admin_keys: Vec<String>,
    service_keys: Vec<String>,
    options: AclOptions,
    acl: RwLock<Arc<Acl>>,
    /// Where password hashing and verification run.
    pub hashing: HashSlots,
    /// Failed-login delays, per login and per client address.
    pub throttle: LoginThrottle,
    /// Mail logins verified recently (see [`login`]).
    pub login_cache: login::LoginCache,
}

impl Authority {
    /// An authority for a replica: `admin_dns` have every right, `service_dns` (Dovecot,
    /// Postfix) read the mail routing attributes (and passwords when
    /// `options.service_reads_passwords`); failed logins wait at most `login_delay_max`.
    /// The access rules are the defaults until [`Authority::set_rules`].
    pub fn new(
        dir: Arc<Directory>,
        admin_dns: &[String],
        service_dns: &[String],
        options: AclOptions,
        login_delay_max: Duration,
    ) -> Result<Authority, AuthError> {
        let keys = |what: &'static str, dns: &[String]| -> Result<Vec<String>, AuthError> {
            dns.iter()
                .map(|dn| {
                    let bad = |message: String| AuthError::BadDn {
                        what,
                        dn: dn.clone(),
                        message,
                    };
                    let parsed = Dn::parse(dn).map_err(|e| bad(e.to_string()))?;
                    dir.schema().dn_key(&parsed).map_err(|e| bad(e.to_string()))
                })
                .collect()
        };
        let admin_keys = keys("administrators", admin_dns)?;
        let service_keys = keys("ldap.service_dns", service_dns)?;
        let acl = RwLock::new(Arc::new(Self::default_rules(&dir, &options)));
        Ok(Authority {
            admin_keys,
            service_keys,
            options,
            acl,
            dir,
            hashing: HashSlots::per_cpu(),
            throttle: LoginThrottle::new(login_delay_max),
            login_cache: login::LoginCache::default(),
        })
    }

    fn default_rules(dir: &Directory, options: &AclOptions) -> Acl {
        Acl::defaults(dir.schema(), &dir.suffix().to_string(), options)
    }

    /// The replica the checks read.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.dir
    }

    /// The access rules in force now.
    pub fn rules(&self) -> Arc<Acl> {
        self.acl.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Put the cluster's access rules (their text form) in force, or the defaults when
    /// `None`. Rules that do not parse are logged and the rules in force are kept.
    pub fn set_rules(&self, text: Option<&str>) {
        let acl = match text {
            Some(text) => match Acl::parse(self.dir.schema(), text) {
                Ok(acl) => acl,
                Err(e) => {
                    tracing::error!(error = %e, "the cluster's access rules do not parse; keeping the rules in force");
                    return;
                }
            },
            None => Self::default_rules(&self.dir, &self.options),
        };
        *self.acl.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(acl);
    }

    /// The normalised key of a DN, if it parses.
    pub fn dn_key(&self, dn: &str) -> Option<String> {
        Dn::parse(dn)
            .ok()
            .and_then(|d| self.dir.schema().dn_key(&d).ok())
    }

    /// True for the normalised key of a cluster administrator.
    pub fn is_admin(&self, key: &str) -> bool {
        self.admin_keys.iter().any(|k| k == key)
    }

    /// The requester the access rules see for an identity.
    pub fn requester(&self, who: &Identity) -> Requester {
        Requester {
            dn: who.dn.clone(),
            key: who.key.clone(),
            admin: who.admin,
            service: !who.key.is_empty() && self.service_keys.contains(&who.key),
        }
    }

    /// The access questions of one request by `who`, over a fresh snapshot.
    pub fn checker(&self, who: &Identity) -> Result<access::Checker<'_>, DirError> {
        access::Checker::new(self, who)
    }

    /// Check a DN and password; the identity when they match. The same answer (`None`)
    /// for a missing entry, an entry without a password and a wrong password, so
    /// nothing leaks. The access rules must grant `auth` on the entry's password to an
    /// anonymous requester; the cluster administrators may always authenticate, so no
    /// rule set can lock them out. The check runs on the hashing slots.
    pub async fn verify(&self, name: &str, password: Vec<u8>) -> Option<Identity> {
        let key = self.dn_key(name)?;
        let admin = self.is_admin(&key);
        if !admin && !self.checker(&Identity::default()).ok()?.may_bind_as(name) {
            return None;
        }
        let dir = self.dir.clone();
        let name = name.to_string();
        self.hashing
            .run(move || {
                let entry = dir.view().ok()?.find(&name).ok()??;
                let stored = entry.get("userPassword")?;
                let ok = stored.values.iter().any(|v| password::verify(&password, v));
                ok.then(|| Identity {
                    dn: entry.dn.clone(),
                    admin,
                    key,
                })
            })
            .await
            .flatten()
    }
}

/// Why a SASL PLAIN response (RFC 4616) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainError {
    /// Not `authzid NUL authcid NUL password`.
    Malformed,
    /// An authorization identity other than the login: acting for another user is
    /// not offered.
    OtherIdentity,
}

/// The login and password of a decoded SASL PLAIN response, the one parse every
/// protocol's AUTH PLAIN uses.
pub fn sasl_plain(decoded: &[u8]) -> Result<(String, Vec<u8>), PlainError> {
    let mut parts = decoded.splitn(3, |&b| b == 0);
    let (Some(authz), Some(authc), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed);
    };
    if !authz.is_empty() && !authz.eq_ignore_ascii_case(authc) {
        return Err(PlainError::OtherIdentity);
    }
    Ok((
        String::from_utf8_lossy(authc).into_owned(),
        password.to_vec(),
    ))
}

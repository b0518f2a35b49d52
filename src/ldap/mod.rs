//! LDAPv3 front end over the directory (RFC 4511), PDUs with rasn-ldap.
//!
//! Layout:
//! - `codec`: BER framing and decoding, sans-IO;
//! - `session`: one connection: reads requests, runs them (several at once), writes
//!   responses through one channel, enforces the limits;
//! - one file per operation: `bind`, `search`, `compare`, `add`, `modify`, `delete`,
//!   `modify_dn`, `extended`; `rootdse` serves the Root DSE and `cn=Subschema`;
//! - `controls` decodes and encodes request and response controls;
//! - `error` maps directory errors to LDAP result codes, in one place.

pub mod access;
pub mod add;
pub mod bind;
pub mod codec;
pub mod compare;
pub mod controls;
pub mod delete;
pub mod error;
pub mod extended;
pub mod filter_wire;
pub mod fuzz;
pub mod limits;
pub mod modify;
pub mod modify_dn;
pub mod rootdse;
pub mod search;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::config::LdapConfig;
use crate::directory::{DirError, Directory, DirectoryCommand, WritePath};

/// Who a connection is bound as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The bound DN as stored in the directory (empty: anonymous).
    pub dn: String,
    /// Its normalised key (empty: anonymous).
    pub key: String,
    /// An administrator: may read and write everything.
    pub admin: bool,
}

impl Identity {
    /// True when not bound.
    pub fn is_anonymous(&self) -> bool {
        self.dn.is_empty()
    }
}

/// What every connection of one LDAP server shares.
pub struct LdapContext {
    /// The node's directory replica.
    pub dir: Arc<Directory>,
    /// Settings.
    pub config: LdapConfig,
    /// Normalised keys of the administrator DNs.
    pub admin_keys: Vec<String>,
    /// Where writes go.
    pub writes: Arc<dyn WritePath>,
    /// Failed-bind delays.
    pub throttle: limits::BindThrottle,
    /// Connections per client address.
    pub address_slots: Arc<limits::AddressSlots>,
    /// Where password hashing and verification run.
    pub hashing: limits::HashSlots,
    /// Settings that cluster-wide settings may change while the node runs.
    live: std::sync::RwLock<Arc<Live>>,
    /// Normalised keys of the read-only service identities (Dovecot, Postfix).
    pub service_keys: Vec<String>,
}

impl LdapContext {
    /// A context for a directory; `admin_dns` are the DNs with full rights.
    pub fn new(
        dir: Arc<Directory>,
        writes: Arc<dyn WritePath>,
        config: LdapConfig,
        admin_dns: &[String],
    ) -> Result<LdapContext, String> {
        let mut admin_keys = Vec::new();
        for dn in admin_dns {
            let parsed = crate::directory::dn::Dn::parse(dn).map_err(|e| e.to_string())?;
            admin_keys.push(dir.schema().dn_key(&parsed).map_err(|e| e.to_string())?);
        }
        let throttle =
            limits::BindThrottle::new(std::time::Duration::from_millis(config.bind_delay_max_ms));
        let mut service_keys = Vec::new();
        for dn in &config.service_dns {
            let parsed = crate::directory::dn::Dn::parse(dn)
                .map_err(|e| format!("ldap.service_dns: {e}"))?;
            service_keys.push(
                dir.schema()
                    .dn_key(&parsed)
                    .map_err(|e| format!("ldap.service_dns: {e}"))?,
            );
        }
        let options = crate::directory::acl::AclOptions {
            service_reads_passwords: config.service_reads_passwords,
        };
        let suffix = dir.suffix().to_string();
        let acl = crate::directory::acl::Acl::defaults(dir.schema(), &suffix, &options);
        let live = std::sync::RwLock::new(Arc::new(Live::from_config(&config, acl)));
        Ok(LdapContext {
            dir,
            config,
            admin_keys,
            writes,
            throttle,
            address_slots: Arc::new(limits::AddressSlots::default()),
            hashing: limits::HashSlots::per_cpu(),
            live,
            service_keys,
        })
    }

    /// The settings in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Apply cluster-wide settings over this node's configuration. Access rules that do
    /// not parse are logged and the rules in force are kept.
    pub fn apply_settings(&self, s: &crate::settings::ClusterSettings) {
        let current = self.live();
        let acl = match &s.acl {
            Some(text) => match crate::directory::acl::Acl::parse(self.dir.schema(), text) {
                Ok(acl) => acl,
                Err(e) => {
                    tracing::error!(error = %e, "the cluster's access rules do not parse; keeping the rules in force");
                    current.acl.clone()
                }
            },
            None => {
                let options = crate::directory::acl::AclOptions {
                    service_reads_passwords: self.config.service_reads_passwords,
                };
                crate::directory::acl::Acl::defaults(
                    self.dir.schema(),
                    &self.dir.suffix().to_string(),
                    &options,
                )
            }
        };
        let mut live = Live::from_config(&self.config, acl);
        live.size_limit = s.size_limit.unwrap_or(live.size_limit);
        live.time_limit_secs = s.time_limit_secs.unwrap_or(live.time_limit_secs);
        live.max_connections_per_address = s
            .max_connections_per_address
            .unwrap_or(live.max_connections_per_address);
        live.idle_timeout_secs = s.idle_timeout_secs.unwrap_or(live.idle_timeout_secs);
        self.throttle
            .set_max_delay(std::time::Duration::from_millis(
                s.bind_delay_max_ms.unwrap_or(self.config.bind_delay_max_ms),
            ));
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
    }

    /// Apply a write through the node's write path: durable when this returns `Ok`.
    pub async fn write(&self, cmd: DirectoryCommand) -> Result<(), DirError> {
        crate::metrics::inc(&crate::metrics::LDAP_WRITES);
        let r = self.writes.write(cmd).await;
        if r.is_err() {
            crate::metrics::inc(&crate::metrics::LDAP_WRITES_FAILED);
        }
        r
    }

    /// Hash the clear-text `userPassword` values among `items` on the hashing slots
    /// (off the async threads); `password_values` gives an item's attribute and the
    /// values to hash, if any. `Err` holds the result to answer when hashing failed.
    pub async fn hash_passwords<T: Send + 'static>(
        &self,
        mut items: Vec<T>,
        password_values: PasswordValues<T>,
    ) -> Result<Vec<T>, rasn_ldap::LdapResult> {
        let clear = items.iter_mut().any(|i| {
            password_values(i)
                .is_some_and(|(attr, values)| crate::directory::has_clear_passwords(attr, values))
        });
        if !clear {
            return Ok(items);
        }
        let hashed = self.hashing.run(move || {
            for i in &mut items {
                if let Some((attr, values)) = password_values(i) {
                    crate::directory::hash_clear_passwords(attr, values);
                }
            }
            items
        });
        hashed.await.ok_or_else(|| {
            codec::result(
                rasn_ldap::ResultCode::Other,
                "",
                "hashing the password failed",
            )
        })
    }
}

/// An item's attribute name and the values [`LdapContext::hash_passwords`] may hash.
pub type PasswordValues<T> = fn(&mut T) -> Option<(&str, &mut Vec<Vec<u8>>)>;

/// How a listener handles TLS.
#[derive(Clone)]
pub enum ListenerTls {
    /// Plain LDAP; StartTLS offered when an acceptor is given.
    Plain(Option<tokio_rustls::TlsAcceptor>),
    /// LDAPS: TLS from the first byte.
    Implicit(tokio_rustls::TlsAcceptor),
}

/// Settings that may change while the node runs.
#[derive(Debug, Clone)]
pub struct Live {
    /// The access rules.
    pub acl: crate::directory::acl::Acl,
    /// Search size limit for non-administrators (0: none).
    pub size_limit: usize,
    /// Search time limit in seconds (0: none).
    pub time_limit_secs: u64,
    /// Connections per client address.
    pub max_connections_per_address: usize,
    /// Idle timeout in seconds (0: never).
    pub idle_timeout_secs: u64,
}

impl Live {
    fn from_config(c: &LdapConfig, acl: crate::directory::acl::Acl) -> Live {
        Live {
            acl,
            size_limit: c.size_limit,
            time_limit_secs: c.time_limit_secs,
            max_connections_per_address: c.max_connections_per_address,
            idle_timeout_secs: c.idle_timeout_secs,
        }
    }
}

/// Serve LDAP on a bound listener until `shutdown` turns true.
pub async fn serve(
    ctx: Arc<LdapContext>,
    listener: TcpListener,
    tls: ListenerTls,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(ctx.config.max_connections));
    let mut next_session = 0u64;
    let loopback = listener
        .local_addr()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    let require_tls_for_bind = ctx.config.require_tls_for_bind.unwrap_or(!loopback);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        next_session += 1;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: the node's connection cap is reached");
            crate::metrics::inc(&crate::metrics::LDAP_REFUSED_TOTAL_CAP);
            tokio::spawn(session::refuse_busy(stream, "too many connections"));
            continue;
        };
        let Some(address_slot) = ctx
            .address_slots
            .take(peer.ip(), ctx.live().max_connections_per_address)
        else {
            tracing::warn!(%peer, "connection refused: too many connections from this address");
            crate::metrics::inc(&crate::metrics::LDAP_REFUSED_ADDRESS_CAP);
            tokio::spawn(session::refuse_busy(
                stream,
                "too many connections from your address",
            ));
            continue;
        };
        crate::metrics::inc(&crate::metrics::LDAP_CONNECTIONS);
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let id = next_session;
        let span = tracing::info_span!("ldap", session = id, %peer);
        let tls = tls.clone();
        tokio::spawn(
            async move {
                serve_connection(ctx, stream, peer, tls, require_tls_for_bind, shutdown).await;
                drop(address_slot);
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn serve_connection(
    ctx: Arc<LdapContext>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: ListenerTls,
    require_tls_for_bind: bool,
    shutdown: watch::Receiver<bool>,
) {
    let handshake = std::time::Duration::from_secs(10);
    let mut conn = session::ConnInfo {
        peer,
        secure: false,
        start_tls: false,
        require_tls_for_bind,
        client_cert: None,
    };
    let acceptor = match tls {
        ListenerTls::Implicit(acceptor) => {
            let Ok(Ok(tls_stream)) = tokio::time::timeout(handshake, acceptor.accept(stream)).await
            else {
                tracing::info!(%peer, "TLS handshake failed");
                return;
            };
            conn.secure = true;
            conn.client_cert = client_cert(&tls_stream);
            session::run(ctx, tls_stream, conn, Identity::default(), shutdown).await;
            return;
        }
        ListenerTls::Plain(acceptor) => acceptor,
    };
    conn.start_tls = acceptor.is_some();
    let end = session::run(
        ctx.clone(),
        stream,
        conn.clone(),
        Identity::default(),
        shutdown.clone(),
    )
    .await;
    if let (session::SessionEnd::StartTls(stream, identity), Some(acceptor)) = (end, acceptor) {
        match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
            Ok(Ok(tls_stream)) => {
                let conn = session::ConnInfo {
                    secure: true,
                    start_tls: false,
                    client_cert: client_cert(&tls_stream),
                    ..conn
                };
                session::run(ctx, tls_stream, conn, identity, shutdown).await;
            }
            _ => tracing::info!(%peer, "StartTLS handshake failed"),
        }
    }
}

/// The names in the client's certificate, when it presented one (rustls has verified it
/// against the trusted client CAs already).
fn client_cert<S>(
    tls: &tokio_rustls::server::TlsStream<S>,
) -> Option<Arc<crate::cluster::pki::ClientNames>> {
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    crate::cluster::pki::client_names(cert).map(Arc::new)
}

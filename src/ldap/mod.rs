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

pub mod add;
pub mod bind;
pub mod codec;
pub mod compare;
pub mod controls;
pub mod delete;
pub mod error;
pub mod extended;
pub mod filter_wire;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod modify;
pub mod modify_dn;
pub mod rootdse;
pub mod search;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::auth::{Authority, Identity};
use crate::config::LdapConfig;
use crate::directory::{DirError, Directory, DirectoryCommand, WritePath};
use crate::net::limits::AddressSlots;
use crate::net::listener::{self, BoxFuture, Protocol, Refusal};
use crate::net::tls::{client_cert, ListenerTls};
use crate::settings::LdapSettings;

/// What every connection of one LDAP server shares.
pub struct LdapContext {
    /// The node's directory replica.
    pub dir: Arc<Directory>,
    /// Settings.
    pub config: LdapConfig,
    /// Identities, passwords and access rules.
    pub auth: Arc<Authority>,
    /// Where writes go.
    pub writes: Arc<dyn WritePath>,
    /// Connections per client address, over all LDAP listeners.
    pub address_slots: Arc<AddressSlots>,
    /// Settings that cluster-wide settings may change while the node runs.
    live: std::sync::RwLock<Arc<Live>>,
}

impl LdapContext {
    /// A context for a directory whose logins and access rules `auth` decides.
    pub fn new(
        dir: Arc<Directory>,
        writes: Arc<dyn WritePath>,
        config: LdapConfig,
        auth: Arc<Authority>,
    ) -> LdapContext {
        let live = std::sync::RwLock::new(Arc::new(Live::from_config(&config)));
        LdapContext {
            dir,
            config,
            auth,
            writes,
            address_slots: Arc::new(AddressSlots::default()),
            live,
        }
    }

    /// The settings in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Apply the cluster-wide LDAP settings over this node's configuration.
    pub fn apply_settings(&self, s: &LdapSettings) {
        let mut live = Live::from_config(&self.config);
        live.size_limit = s.size_limit.unwrap_or(live.size_limit);
        live.time_limit_secs = s.time_limit_secs.unwrap_or(live.time_limit_secs);
        live.max_connections_per_address = s
            .max_connections_per_address
            .unwrap_or(live.max_connections_per_address);
        live.idle_timeout_secs = s.idle_timeout_secs.unwrap_or(live.idle_timeout_secs);
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
        let hashed = self.auth.hashing.run(move || {
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

/// Settings that may change while the node runs.
#[derive(Debug, Clone)]
pub struct Live {
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
    fn from_config(c: &LdapConfig) -> Live {
        Live {
            size_limit: c.size_limit,
            time_limit_secs: c.time_limit_secs,
            max_connections_per_address: c.max_connections_per_address,
            idle_timeout_secs: c.idle_timeout_secs,
        }
    }
}

/// One LDAP listener: its TLS and whether it demands TLS before a password bind.
struct LdapListener {
    ctx: Arc<LdapContext>,
    tls: ListenerTls,
    require_tls_for_bind: bool,
}

impl Protocol for LdapListener {
    fn name(&self) -> &'static str {
        "ldap"
    }

    fn max_connections_per_address(&self) -> usize {
        self.ctx.live().max_connections_per_address
    }

    fn refuse(&self, stream: TcpStream, why: Refusal) -> BoxFuture<'static, ()> {
        crate::metrics::inc(match why {
            Refusal::TotalCap => &crate::metrics::LDAP_REFUSED_TOTAL_CAP,
            Refusal::AddressCap => &crate::metrics::LDAP_REFUSED_ADDRESS_CAP,
        });
        Box::pin(session::refuse_busy(stream, why.text()))
    }

    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        session: u64,
        shutdown: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        crate::metrics::inc(&crate::metrics::LDAP_CONNECTIONS);
        let span = tracing::info_span!("ldap", session, %peer);
        Box::pin(
            serve_connection(
                self.ctx.clone(),
                stream,
                peer,
                self.tls.clone(),
                self.require_tls_for_bind,
                shutdown,
            )
            .instrument(span),
        )
    }
}

/// Serve LDAP on a bound listener until `shutdown` turns true.
pub async fn serve(
    ctx: Arc<LdapContext>,
    listener: TcpListener,
    tls: ListenerTls,
    shutdown: watch::Receiver<bool>,
) {
    let loopback = listener
        .local_addr()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    let require_tls_for_bind = ctx.config.require_tls_for_bind.unwrap_or(!loopback);
    let max_connections = ctx.config.max_connections;
    let address_slots = ctx.address_slots.clone();
    let protocol = Arc::new(LdapListener {
        ctx,
        tls,
        require_tls_for_bind,
    });
    listener::serve(protocol, listener, max_connections, address_slots, shutdown).await;
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

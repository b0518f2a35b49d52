//! One node: opens the directory, starts the cluster and the enabled services, follows
//! the cluster-wide settings, shuts down cleanly.
//!
//! Each service (LDAP today; the mail services next) is started by one function here
//! from a [`ServiceContext`] and returns what it bound and the tasks it runs; the
//! node keeps the list. Services get the cluster-wide settings through a
//! [`SettingsWatch`] and apply their own part when it changes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{AuthError, Authority};
use crate::cluster::{transport, Cluster, ClusterError};
use crate::config::Config;
use crate::config::Storage;
use crate::directory::acl::AclOptions;
use crate::directory::dn::Dn;
use crate::directory::schema::Schema;
use crate::directory::WritePath;
use crate::directory::{Directory, DirectorySettings, OpenError};
use crate::ldap::{self, LdapContext};
use crate::mail::deliver::Delivery;
use crate::mail::imap::server::{AccountSlots, ImapLimits, ImapListener};
use crate::mail::pop3::server::{Pop3Limits, Pop3Listener};
use crate::mail::queue::{self, RetryPolicy};
use crate::mail::smtp::server::{self, Limits, MailContext, SmtpListener};
use crate::mail::smtp::session::Mode;
use crate::mail::spool::Spool;
use crate::mail::store::MailStore;
use crate::net::limits::AddressSlots;
use crate::net::tls::{self, ListenerTls, TlsError};
use crate::settings::{ClusterSettings, SettingsWatch};

/// Why a node could not start (or its data could not be opened).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The schema files cannot be loaded.
    #[error("schema: {0}")]
    Schema(String),
    /// The directory cannot be opened.
    #[error("{0}")]
    Directory(#[from] OpenError),
    /// The directory is behind the Raft log and could not be caught up.
    #[error("catching the directory up with the raft log: {0}")]
    CatchUp(String),
    /// The cluster-wide index settings cannot be applied.
    #[error("the cluster's index settings: {0}")]
    Indexes(String),
    /// The cluster could not be created, started or joined.
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    /// An administrator or service identity in the configuration is not valid.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// A listener's TLS certificate or key cannot be used.
    #[error("{service} TLS: {source}")]
    Tls {
        /// The service.
        service: &'static str,
        /// What is wrong.
        source: TlsError,
    },
    /// A listener could not be bound.
    #[error("{service}: cannot listen on {addr}: {source}")]
    Listen {
        /// The service.
        service: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// A file or directory of the node's data cannot be created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The base entries of a new cluster could not be written.
    #[error("{0}")]
    Bootstrap(String),
}

/// Open the node's directory as its configuration says, caught up with the node's Raft
/// log (see [`crate::cluster::state_machine::catch_up`]).
pub fn open_directory(config: &Config) -> Result<Directory, NodeError> {
    let schema = match &config.directory.schema_dir {
        Some(dir) => Schema::load_dir(dir).map_err(|e| NodeError::Schema(e.to_string()))?,
        None => Schema::builtin(),
    };
    std::fs::create_dir_all(&config.node.data_dir).map_err(|source| NodeError::Io {
        path: config.node.data_dir.clone(),
        source,
    })?;
    let settings = DirectorySettings {
        suffix: config.directory.suffix.clone(),
        indexes: config.directory.indexes.clone(),
        cache_bytes: config.directory.cache_bytes(),
    };
    let dir = Directory::open(&config.node.data_dir, schema, &settings)?;
    // A crash may have left committed entries of the log unapplied (applies are synced
    // in checkpoints): apply them before anyone reads the directory.
    crate::cluster::state_machine::catch_up(&dir, &config.node.data_dir)
        .map_err(|e| NodeError::CatchUp(e.to_string()))?;
    Ok(dir)
}

/// Publish the cluster-wide settings on `publish` whenever the replica changes them.
async fn follow_settings(
    cluster: Arc<Cluster>,
    publish: watch::Sender<Arc<ClusterSettings>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = cluster.state_machine().subscribe_settings();
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let dir = cluster.state_machine().directory().clone();
        let Ok(now) = tokio::task::spawn_blocking(move || ClusterSettings::read(&dir)).await else {
            continue;
        };
        let last = publish.borrow().clone();
        if *last != now {
            if now.indexes != last.indexes {
                tracing::info!("the cluster's index settings changed; this node applies them at its next start");
            }
            let _ = publish.send(Arc::new(now));
        }
    }
}

/// What every service of a node is started with.
pub struct ServiceContext {
    /// The node's configuration.
    pub config: Config,
    /// The directory replica.
    pub directory: Arc<Directory>,
    /// The node's cluster membership (its write path among others).
    pub cluster: Arc<Cluster>,
    /// Identities, passwords, access rules.
    pub auth: Arc<Authority>,
    /// The cluster-wide settings, current and changing.
    pub settings: SettingsWatch,
    /// Turns true when the node stops.
    pub shutdown: watch::Receiver<bool>,
}

/// A listener a service has bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The service and its flavour (`ldap`, `ldaps`, ...).
    pub service: &'static str,
    /// The bound address.
    pub addr: SocketAddr,
}

/// What a started service reports: its listeners and the tasks to wait for at
/// shutdown.
#[derive(Default)]
pub struct Started {
    /// The listeners it bound.
    pub listening: Vec<Listening>,
    /// Its tasks.
    pub tasks: Vec<JoinHandle<()>>,
}

impl ServiceContext {
    /// Bind `addr` for `service`: the listener and what the node reports of it.
    pub async fn listen(
        &self,
        service: &'static str,
        addr: SocketAddr,
    ) -> Result<(TcpListener, Listening), NodeError> {
        let failed = |source| NodeError::Listen {
            service,
            addr,
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(failed)?;
        let bound = listener.local_addr().map_err(failed)?;
        Ok((
            listener,
            Listening {
                service,
                addr: bound,
            },
        ))
    }

    /// The TLS acceptor for a service's listeners when a certificate and key are
    /// configured. Client certificates are asked for (optional) when `client_cas`
    /// names any CA.
    pub fn tls_acceptor(
        &self,
        service: &'static str,
        cert_key: (Option<&Path>, Option<&Path>),
        client_cas: &[PathBuf],
    ) -> Result<Option<tokio_rustls::TlsAcceptor>, NodeError> {
        let (Some(cert), Some(key)) = cert_key else {
            return Ok(None);
        };
        tls::server_acceptor(cert, key, client_cas)
            .map(Some)
            .map_err(|source| NodeError::Tls { service, source })
    }
}

/// The LDAP front end: its listeners (StartTLS offered on the plain ones when a
/// certificate is configured), settings applied live.
async fn start_ldap(services: &ServiceContext) -> Result<Started, NodeError> {
    let config = &services.config;
    let ctx = Arc::new(LdapContext::new(
        services.directory.clone(),
        services.cluster.clone(),
        config.ldap.clone(),
        services.auth.clone(),
    ));
    let current = services.settings.borrow().clone();
    ctx.apply_settings(&current.ldap);
    let mut started = Started::default();
    started.tasks.push(tokio::spawn(follow_ldap_settings(
        ctx.clone(),
        services.settings.clone(),
    )));
    // SASL EXTERNAL: client certificates from the cluster CA or a configured CA.
    let cluster_ca = crate::cluster::pki::PkiFiles::new(&config.node.data_dir).ca_cert_path();
    let client_cas: Vec<PathBuf> = std::iter::once(cluster_ca)
        .filter(|p| p.exists())
        .chain(config.ldap.tls_client_ca.iter().cloned())
        .collect();
    let acceptor = services.tls_acceptor(
        "ldap",
        (
            config.ldap.tls_cert.as_deref(),
            config.ldap.tls_key.as_deref(),
        ),
        &client_cas,
    )?;
    let listeners = config
        .ldap
        .listen
        .iter()
        .map(|a| (a, false))
        .chain(config.ldap.listen_tls.iter().map(|a| (a, true)));
    for (addr, implicit) in listeners {
        let tls = ListenerTls::new(&acceptor, implicit);
        let service = match tls {
            ListenerTls::Implicit(_) => "ldaps",
            ListenerTls::Plain(_) => "ldap",
        };
        let (listener, listening) = services.listen(service, *addr).await?;
        started.listening.push(listening);
        started.tasks.push(tokio::spawn(ldap::serve(
            ctx.clone(),
            listener,
            tls,
            services.shutdown.clone(),
        )));
    }
    Ok(started)
}

/// Apply the LDAP part of the cluster settings (and the access rules and the login
/// delay the LDAP binds use) whenever they change.
async fn follow_ldap_settings(ctx: Arc<LdapContext>, mut settings: SettingsWatch) {
    loop {
        let now = settings.borrow_and_update().clone();
        ctx.auth.set_rules(now.acl.as_deref());
        ctx.auth
            .throttle
            .set_max_delay(std::time::Duration::from_millis(
                now.ldap
                    .bind_delay_max_ms
                    .unwrap_or(ctx.config.bind_delay_max_ms),
            ));
        ctx.apply_settings(&now.ldap);
        tracing::debug!("cluster settings applied to LDAP");
        if settings.changed().await.is_err() {
            return;
        }
    }
}

/// A cluster-port handler of the mail service (LMTP from other nodes, the queue's
/// operator commands). Registered before the cluster starts, served once the mail
/// service is up (until then a connection is closed; LMTP senders retry).
fn mail_handler(
    slot: Arc<OnceLock<Arc<MailContext>>>,
    serve: fn(Arc<MailContext>, transport::Conn) -> transport::BoxFuture<'static, ()>,
) -> Arc<dyn transport::Handler> {
    Arc::new(move |conn: transport::Conn| {
        let ctx = slot.get().cloned();
        async move {
            match ctx {
                Some(ctx) => serve(ctx, conn).await,
                None => {
                    tracing::info!(peer = %conn.peer_addr, "mail connection before the mail service started; closed")
                }
            }
        }
    })
}

/// The mail service: the store, the spool and its queue runner, the LMTP service on
/// the cluster port, and the SMTP listeners (MX and submission) the configuration
/// names; limits follow the cluster settings live.
async fn start_mail(
    services: &ServiceContext,
    lmtp: &OnceLock<Arc<MailContext>>,
) -> Result<Started, NodeError> {
    let config = &services.config;
    let mail = &config.mail;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NodeError::Io { path, source }
    };
    let root = match mail.storage {
        Storage::Local => {
            let root = config.node.data_dir.join("mail");
            std::fs::create_dir_all(&root).map_err(io(&root))?;
            root
        }
        Storage::Shared => mail.shared_root.clone().unwrap_or_default(),
    };
    let store = MailStore::open(&root)
        .map_err(|e| NodeError::Io {
            path: root.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .with_host_name(&config.node.name);
    let spool_dir = config.node.data_dir.join("spool");
    let spool = Spool::open(&spool_dir).map_err(|e| NodeError::Io {
        path: spool_dir.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let hostname = config.mail_hostname();
    let delivery = Arc::new(Delivery::new(
        services.directory.clone(),
        store,
        mail.storage == Storage::Shared,
        config.node.name.clone(),
        hostname.clone(),
        services.cluster.dialer().clone(),
        std::time::Duration::from_millis(mail.lmtp_connect_timeout_ms),
    ));
    let policy = RetryPolicy {
        first: std::time::Duration::from_secs(mail.retry_first_secs),
        max: std::time::Duration::from_secs(mail.retry_max_secs),
        window: std::time::Duration::from_secs(mail.retry_window_secs),
    };
    let mut started = Started::default();
    let (queue, runner) = queue::start(
        Arc::new(spool),
        delivery.clone(),
        policy,
        hostname.clone(),
        services.shutdown.clone(),
    );
    started.tasks.push(runner);
    let limits = Limits::new(mail, &services.settings.borrow().smtp);
    let ctx = Arc::new(MailContext {
        config: mail.clone(),
        hostname,
        auth: services.auth.clone(),
        queue,
        delivery,
        limits: std::sync::RwLock::new(limits),
        address_slots: Arc::new(AddressSlots::default()),
        shutdown: services.shutdown.clone(),
    });
    let _ = lmtp.set(ctx.clone());
    started.tasks.push(tokio::spawn(follow_smtp_settings(
        ctx.clone(),
        services.settings.clone(),
    )));
    let acceptor = services.tls_acceptor(
        "smtp",
        (mail.tls_cert.as_deref(), mail.tls_key.as_deref()),
        &[],
    )?;
    let listeners = mail
        .smtp_listen
        .iter()
        .map(|a| (a, "smtp", Mode::Mx, false))
        .chain(
            mail.submission_listen
                .iter()
                .map(|a| (a, "submission", Mode::Submission, false)),
        )
        .chain(
            mail.submissions_listen
                .iter()
                .map(|a| (a, "submissions", Mode::Submission, true)),
        );
    for (addr, service, mode, implicit) in listeners {
        let (listener, listening) = services.listen(service, *addr).await?;
        started.listening.push(listening);
        let protocol = Arc::new(SmtpListener {
            ctx: ctx.clone(),
            mode,
            tls: ListenerTls::new(&acceptor, implicit),
        });
        started.tasks.push(tokio::spawn(crate::net::listener::serve(
            protocol,
            listener,
            mail.max_connections,
            ctx.address_slots.clone(),
            services.shutdown.clone(),
        )));
    }
    let pop3_limits = Arc::new(std::sync::RwLock::new(Pop3Limits::new(
        mail.max_connections_per_address,
        &services.settings.borrow().pop3,
    )));
    let per_address = mail.max_connections_per_address;
    started.tasks.push(tokio::spawn(follow_limits(
        pop3_limits.clone(),
        move |now| Pop3Limits::new(per_address, &now.pop3),
        services.settings.clone(),
    )));
    let pop3 = |tls| {
        Arc::new(Pop3Listener {
            auth: services.auth.clone(),
            delivery: ctx.delivery.clone(),
            hostname: ctx.hostname.clone(),
            limits: pop3_limits.clone(),
            tls,
        })
    };
    let pop3_listeners = mail
        .pop3_listen
        .iter()
        .map(|a| (a, "pop3", false))
        .chain(mail.pop3s_listen.iter().map(|a| (a, "pop3s", true)));
    let pop3_slots = Arc::new(AddressSlots::default());
    for (addr, service, implicit) in pop3_listeners {
        let (listener, listening) = services.listen(service, *addr).await?;
        started.listening.push(listening);
        let protocol = pop3(ListenerTls::new(&acceptor, implicit));
        started.tasks.push(tokio::spawn(crate::net::listener::serve(
            protocol,
            listener,
            mail.max_connections,
            pop3_slots.clone(),
            services.shutdown.clone(),
        )));
    }
    let imap_limits = Arc::new(std::sync::RwLock::new(ImapLimits::new(
        per_address,
        &services.settings.borrow().imap,
    )));
    started.tasks.push(tokio::spawn(follow_limits(
        imap_limits.clone(),
        move |now| ImapLimits::new(per_address, &now.imap),
        services.settings.clone(),
    )));
    let imap_accounts = Arc::new(AccountSlots::default());
    let imap_listeners = mail
        .imap_listen
        .iter()
        .map(|a| (a, "imap", false))
        .chain(mail.imaps_listen.iter().map(|a| (a, "imaps", true)));
    let imap_slots = Arc::new(AddressSlots::default());
    for (addr, service, implicit) in imap_listeners {
        let (listener, listening) = services.listen(service, *addr).await?;
        started.listening.push(listening);
        let protocol = Arc::new(ImapListener {
            auth: services.auth.clone(),
            delivery: ctx.delivery.clone(),
            hostname: ctx.hostname.clone(),
            limits: imap_limits.clone(),
            accounts: imap_accounts.clone(),
            tls: ListenerTls::new(&acceptor, implicit),
        });
        started.tasks.push(tokio::spawn(crate::net::listener::serve(
            protocol,
            listener,
            mail.max_connections,
            imap_slots.clone(),
            services.shutdown.clone(),
        )));
    }
    Ok(started)
}

/// Keep a service's limits equal to `make(the cluster settings)` as they change.
async fn follow_limits<T>(
    limits: Arc<std::sync::RwLock<T>>,
    make: impl Fn(&crate::settings::ClusterSettings) -> T,
    mut settings: SettingsWatch,
) {
    loop {
        let now = settings.borrow_and_update().clone();
        *limits.write().unwrap_or_else(|p| p.into_inner()) = make(&now);
        if settings.changed().await.is_err() {
            return;
        }
    }
}

/// Apply the `smtp.*` cluster settings whenever they change.
async fn follow_smtp_settings(ctx: Arc<MailContext>, mut settings: SettingsWatch) {
    loop {
        let now = settings.borrow_and_update().clone();
        *ctx.limits.write().unwrap_or_else(|p| p.into_inner()) =
            Limits::new(&ctx.config, &now.smtp);
        if settings.changed().await.is_err() {
            return;
        }
    }
}

/// The `pigeonairService` values of this node's entry in `ou=nodes`: each listener as
/// `<service>=<host:port>` (an unspecified bind address is given as the cluster
/// port's host), and `lmtp=` the cluster port that serves LMTP.
fn service_map_values(cluster: &Cluster, listening: &[Listening]) -> Vec<String> {
    let cluster_addr = cluster.cluster_addr;
    let mut values: Vec<String> = listening
        .iter()
        .map(|l| {
            let addr = match cluster_addr {
                Some(c) if l.addr.ip().is_unspecified() => SocketAddr::new(c.ip(), l.addr.port()),
                _ => l.addr,
            };
            format!("{}={addr}", l.service)
        })
        .collect();
    if let Some(c) = cluster_addr {
        values.push(format!("lmtp={c}"));
    }
    values
}

/// Publish this node's services in its `ou=nodes` entry (the service map other nodes
/// and `pigeonair status` read) once the cluster has registered the entry, and
/// whenever it differs (a restart on other ports).
async fn advertise_services(
    cluster: Arc<Cluster>,
    values: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::directory::{Change, ChangeOp, DirectoryCommand, WriteMeta};
    let dn = format!("cn=node-{},ou=nodes,{}", cluster.node_id, cluster.suffix());
    let mut wanted: Vec<Vec<u8>> = values.into_iter().map(String::into_bytes).collect();
    wanted.sort();
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        let current = cluster
            .state_machine()
            .directory()
            .view()
            .ok()
            .and_then(|v| v.find(&dn).ok().flatten());
        if let Some(entry) = current {
            let mut have = entry
                .get("pigeonairService")
                .map(|a| a.values.clone())
                .unwrap_or_default();
            have.sort();
            if have == wanted {
                return;
            }
            let cmd = DirectoryCommand::Modify {
                dn: dn.clone(),
                changes: vec![Change {
                    op: ChangeOp::Replace,
                    attr: "pigeonairService".into(),
                    values: wanted.clone(),
                }],
                meta: WriteMeta::now(&dn),
            };
            match cluster.write(cmd).await {
                Ok(()) => {
                    tracing::info!("services published in the service map");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "cannot publish the service map yet"),
            }
        }
        // The entry appears once the cluster has a leader and this node registered.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

/// A running node.
pub struct Node {
    /// The directory replica.
    pub directory: Arc<Directory>,
    /// This node's membership in the cluster.
    pub cluster: Arc<Cluster>,
    /// Every listener the node's services bound, in the order they started.
    pub listening: Vec<Listening>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a brand-new cluster's first node writes (init and quickstart).
pub struct NewCluster {
    /// The administrator's password.
    pub admin_password: String,
    /// Add the demo domain and accounts.
    pub demo: bool,
}

/// Create a cluster in `config.node.data_dir`: its CA, the first node, the base of the
/// directory (written through the log). Returns the running cluster (with its port
/// when `port` is given, as [`Cluster::start`]) and the demo accounts.
pub async fn create_cluster(
    config: &Config,
    directory: Arc<Directory>,
    new: &NewCluster,
    port: Option<transport::Services>,
) -> Result<(Arc<Cluster>, Vec<DemoAccount>), NodeError> {
    let cluster = Cluster::create(config, directory.clone(), port).await?;
    let accounts = bootstrap(
        &*cluster,
        directory.suffix(),
        &cluster.cluster_id,
        &config.admin_dn(),
        &new.admin_password,
        new.demo,
    )
    .await?;
    Ok((cluster, accounts))
}

impl Node {
    /// Open storage, join the cluster's Raft group and start the services. With `new`,
    /// first create a cluster whose first node this is.
    pub async fn start(
        config: &Config,
        new: Option<&NewCluster>,
    ) -> Result<(Node, Vec<DemoAccount>), NodeError> {
        let mut directory = open_directory(config)?;
        let settings = ClusterSettings::read(&directory);
        if let Some(indexes) = &settings.indexes {
            directory.use_indexes(indexes).map_err(NodeError::Indexes)?;
        }
        let directory = Arc::new(directory);
        // Services other layers serve on the cluster port register here.
        let mut port = transport::Services::new();
        let lmtp = Arc::new(std::sync::OnceLock::new());
        port.register(
            crate::mail::lmtp::SERVICE,
            mail_handler(lmtp.clone(), |ctx, conn| {
                Box::pin(server::serve_lmtp(ctx, conn))
            }),
        )
        .map_err(ClusterError::from)?;
        port.register(
            crate::mail::admin::SERVICE,
            mail_handler(lmtp.clone(), |ctx, conn| {
                Box::pin(crate::mail::admin::serve(ctx.queue.clone(), conn))
            }),
        )
        .map_err(ClusterError::from)?;
        let (cluster, accounts) = match new {
            Some(n) => create_cluster(config, directory.clone(), n, Some(port)).await?,
            None => (
                Cluster::start(config, directory.clone(), Some(port)).await?,
                Vec::new(),
            ),
        };
        let (shutdown, rx) = watch::channel(false);
        let auth = Arc::new(Authority::new(
            directory.clone(),
            &[config.admin_dn()],
            &config.ldap.service_dns,
            AclOptions {
                service_reads_passwords: config.ldap.service_reads_passwords,
            },
            std::time::Duration::from_millis(config.ldap.bind_delay_max_ms),
        )?);
        // The settings may have changed while the cluster caught up.
        let (publish, settings) = watch::channel(Arc::new(ClusterSettings::read(&directory)));
        let mut tasks = vec![tokio::spawn(follow_settings(
            cluster.clone(),
            publish,
            rx.clone(),
        ))];
        let services = ServiceContext {
            config: config.clone(),
            directory: directory.clone(),
            cluster: cluster.clone(),
            auth,
            settings,
            shutdown: rx,
        };
        let mut listening = Vec::new();
        for started in [
            start_ldap(&services).await?,
            start_mail(&services, &lmtp).await?,
        ] {
            listening.extend(started.listening);
            tasks.extend(started.tasks);
        }
        tasks.push(tokio::spawn(advertise_services(
            cluster.clone(),
            service_map_values(&cluster, &listening),
            services.shutdown.clone(),
        )));
        let node = Node {
            directory,
            cluster,
            listening,
            shutdown,
            tasks,
        };
        Ok((node, accounts))
    }

    /// The addresses bound for `service` (`ldap`, `ldaps`, ...).
    pub fn addrs(&self, service: &str) -> Vec<SocketAddr> {
        self.listening
            .iter()
            .filter(|l| l.service == service)
            .map(|l| l.addr)
            .collect()
    }

    /// Stop accepting, close sessions, stop Raft.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.cluster.shutdown().await;
    }
}

/// Run until SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// True when a data directory already holds a directory database.
pub fn is_initialised(data_dir: &Path) -> bool {
    data_dir.join("directory.redb").exists() || data_dir.join("cluster-state.toml").exists()
}

/// An account made by [`bootstrap`] for the demo domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DemoAccount {
    /// Its mail address.
    pub mail: String,
    /// Its DN.
    pub dn: String,
    /// Its password, in clear (printed once by quickstart).
    pub password: String,
}

async fn add(
    writes: &dyn WritePath,
    admin: &str,
    dn: String,
    attrs: &[(&str, &[&str])],
) -> Result<(), NodeError> {
    use crate::directory::entry::Attribute;
    use crate::directory::{hash_clear_passwords, DirectoryCommand, WriteMeta};
    let attrs = attrs
        .iter()
        .map(|(name, values)| {
            let mut values: Vec<Vec<u8>> = values.iter().map(|v| v.as_bytes().to_vec()).collect();
            hash_clear_passwords(name, &mut values);
            Attribute {
                name: name.to_string(),
                values,
            }
        })
        .collect();
    writes
        .write(DirectoryCommand::Add {
            dn: dn.clone(),
            attrs,
            meta: WriteMeta::now(admin),
        })
        .await
        .map_err(|e| NodeError::Bootstrap(format!("{dn}: {e}")))
}

/// Create the base of the tree: the suffix, `ou=domains`, `ou=nodes`, `ou=system` with
/// `ou=tokens`, the cluster settings entry and the administrator; with `demo`, the
/// domain example.org with alice and bob, the list `team@` (both) and `postmaster@`
/// (alice).
pub async fn bootstrap(
    writes: &dyn WritePath,
    suffix_dn: &Dn,
    cluster_id: &str,
    admin_dn: &str,
    admin_password: &str,
    demo: bool,
) -> Result<Vec<DemoAccount>, NodeError> {
    let suffix = suffix_dn.to_string();
    let first = suffix_dn
        .rdn()
        .and_then(|r| r.0.first())
        .ok_or_else(|| NodeError::Bootstrap("empty suffix".into()))?;
    let first_value = String::from_utf8_lossy(&first.value).into_owned();
    let top_class = match first.attr.to_ascii_lowercase().as_str() {
        "dc" => vec!["top", "domain"],
        "o" => vec!["top", "organization"],
        "ou" => vec!["top", "organizationalUnit"],
        other => {
            return Err(NodeError::Bootstrap(format!(
                "a suffix whose RDN is {other}= is not supported; use dc=, o= or ou="
            )))
        }
    };
    let naming = first.attr.clone();
    add(
        writes,
        admin_dn,
        suffix.clone(),
        &[
            ("objectClass", &top_class),
            (naming.as_str(), &[first_value.as_str()]),
        ],
    )
    .await?;
    for ou in ["domains", "nodes", "system"] {
        add(
            writes,
            admin_dn,
            format!("ou={ou},{suffix}"),
            &[
                ("objectClass", &["top", "organizationalUnit"]),
                ("ou", &[ou]),
            ],
        )
        .await?;
    }
    let admin = crate::directory::dn::Dn::parse(admin_dn)
        .map_err(|e| NodeError::Bootstrap(format!("{admin_dn}: {e}")))?;
    let admin_cn = admin
        .rdn()
        .and_then(|r| r.0.first())
        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
        .unwrap_or_default();
    add(
        writes,
        admin_dn,
        admin_dn.to_string(),
        &[
            (
                "objectClass",
                &["top", "organizationalRole", "simpleSecurityObject"],
            ),
            ("cn", &[admin_cn.as_str()]),
            ("description", &["PigeonAir cluster administrator"]),
            ("userPassword", &[admin_password]),
        ],
    )
    .await?;
    add(
        writes,
        admin_dn,
        format!("ou=tokens,ou=system,{suffix}"),
        &[
            ("objectClass", &["top", "organizationalUnit"]),
            ("ou", &["tokens"]),
        ],
    )
    .await?;
    let voter_target = format!(
        "voterTarget={}",
        crate::cluster::member::DEFAULT_VOTER_TARGET
    );
    add(
        writes,
        admin_dn,
        format!("cn=cluster,ou=system,{suffix}"),
        &[
            (
                "objectClass",
                &["top", "applicationProcess", "pigeonairSettings"],
            ),
            ("cn", &["cluster"]),
            ("pigeonairClusterId", &[cluster_id]),
            ("pigeonairSetting", &[voter_target.as_str()]),
        ],
    )
    .await?;
    if !demo {
        return Ok(Vec::new());
    }
    let domain = format!("dc=example.org,ou=domains,{suffix}");
    add(
        writes,
        admin_dn,
        domain.clone(),
        &[
            ("objectClass", &["top", "domain", "pigeonairMailDomain"]),
            ("dc", &["example.org"]),
            ("description", &["Demo domain"]),
        ],
    )
    .await?;
    for ou in ["people", "aliases"] {
        add(
            writes,
            admin_dn,
            format!("ou={ou},{domain}"),
            &[
                ("objectClass", &["top", "organizationalUnit"]),
                ("ou", &[ou]),
            ],
        )
        .await?;
    }
    let mut accounts = Vec::new();
    for (uid, cn, sn) in [
        ("alice", "Alice Liddell", "Liddell"),
        ("bob", "Bob Dobbs", "Dobbs"),
    ] {
        let password = crate::directory::password::generate();
        let mail = format!("{uid}@example.org");
        let dn = format!("uid={uid},ou=people,{domain}");
        add(
            writes,
            admin_dn,
            dn.clone(),
            &[
                (
                    "objectClass",
                    &[
                        "top",
                        "inetOrgPerson",
                        "inetLocalMailRecipient",
                        "pigeonairMailAccount",
                    ],
                ),
                ("uid", &[uid]),
                ("cn", &[cn]),
                ("sn", &[sn]),
                ("mail", &[mail.as_str()]),
                ("mailHost", &["node1"]),
                ("mailQuotaSize", &["1073741824"]),
                ("accountStatus", &["active"]),
                ("userPassword", &[password.as_str()]),
            ],
        )
        .await?;
        accounts.push(DemoAccount { mail, dn, password });
    }
    for (cn, mail, members, description) in [
        (
            "team",
            "team@example.org",
            &["alice@example.org", "bob@example.org"][..],
            "Demo list: alice and bob",
        ),
        (
            "postmaster",
            "postmaster@example.org",
            &["alice@example.org"][..],
            "RFC 5321 postmaster",
        ),
    ] {
        add(
            writes,
            admin_dn,
            format!("cn={cn},ou=aliases,{domain}"),
            &[
                ("objectClass", &["top", "pigeonairMailAlias"]),
                ("cn", &[cn]),
                ("mail", &[mail]),
                ("mailForwardingAddress", members),
                ("description", &[description]),
            ],
        )
        .await?;
    }
    Ok(accounts)
}

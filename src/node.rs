//! One node: opens the directory, starts the enabled services, shuts down cleanly.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::directory::dn::Dn;
use crate::directory::schema::Schema;
use crate::directory::WritePath;
use crate::directory::{Directory, DirectorySettings};
use crate::ldap::{self, LdapContext};

/// Open the node's directory as its configuration says, caught up with the node's Raft
/// log (see [`crate::cluster::state_machine::catch_up`]).
pub fn open_directory(config: &Config) -> Result<Directory, String> {
    let schema = match &config.directory.schema_dir {
        Some(dir) => Schema::load_dir(dir).map_err(|e| e.to_string())?,
        None => Schema::builtin(),
    };
    std::fs::create_dir_all(&config.node.data_dir)
        .map_err(|e| format!("{}: {e}", config.node.data_dir.display()))?;
    let settings = DirectorySettings {
        suffix: config.directory.suffix.clone(),
        indexes: config.directory.indexes.clone(),
        cache_bytes: config.directory.cache_bytes(),
    };
    let dir = Directory::open(&config.node.data_dir, schema, &settings)?;
    // A crash may have left committed entries of the log unapplied (applies are synced
    // in checkpoints): apply them before anyone reads the directory.
    crate::cluster::state_machine::catch_up(&dir, &config.node.data_dir)
        .map_err(|e| format!("catching the directory up with the raft log: {e}"))?;
    Ok(dir)
}

/// Apply the cluster-wide settings whenever the replica changes them.
async fn follow_settings(
    ctx: Arc<LdapContext>,
    cluster: Arc<Cluster>,
    mut last: crate::settings::ClusterSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = cluster.state_machine().subscribe_settings();
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let dir = cluster.state_machine().directory().clone();
        let Ok(now) =
            tokio::task::spawn_blocking(move || crate::settings::ClusterSettings::read(&dir)).await
        else {
            continue;
        };
        if now != last {
            if now.indexes != last.indexes {
                tracing::info!("the cluster's index settings changed; this node applies them at its next start");
            }
            ctx.apply_settings(&now);
            tracing::info!("cluster settings applied");
            last = now;
        }
    }
}

/// The TLS acceptor for LDAPS and StartTLS, when a certificate is configured.
pub fn ldap_tls_acceptor(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&config.ldap.tls_cert, &config.ldap.tls_key) else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Client certificates (SASL EXTERNAL) are asked for but optional; one that is
    // presented must chain to the cluster CA or a configured client CA.
    let mut roots = rustls::RootCertStore::empty();
    let cluster_ca = crate::cluster::pki::PkiFiles::new(&config.node.data_dir).ca_cert_path();
    let ca_files = std::iter::once(cluster_ca.clone())
        .filter(|p| p.exists())
        .chain(config.ldap.tls_client_ca.iter().cloned());
    for file in ca_files {
        for cert in
            CertificateDer::pem_file_iter(&file).map_err(|e| format!("{}: {e}", file.display()))?
        {
            let cert = cert.map_err(|e| format!("{}: {e}", file.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", file.display()))?;
        }
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if roots.is_empty() {
        builder.with_no_client_auth()
    } else {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("ldap TLS client CAs: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    };
    let server = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("ldap TLS certificate: {e}"))?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}

/// A running node.
pub struct Node {
    /// The directory replica.
    pub directory: Arc<Directory>,
    /// This node's membership in the cluster.
    pub cluster: Arc<Cluster>,
    /// The addresses the LDAP listeners are bound to.
    pub ldap_addrs: Vec<SocketAddr>,
    /// The addresses the LDAPS listeners are bound to.
    pub ldaps_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a brand-new cluster's first node writes (init and quickstart).
pub struct NewCluster {
    /// The administrator's password.
    pub admin_password: String,
    /// Add the demo domain and accounts.
    pub demo: bool,
}

/// Create a cluster in `config.node.data_dir`: its CA, the first node, the base of the
/// directory (written through the log). Returns the running cluster (without the
/// cluster port when `serve` is false) and the demo accounts.
pub async fn create_cluster(
    config: &Config,
    directory: Arc<Directory>,
    new: &NewCluster,
    serve: bool,
) -> Result<(Arc<Cluster>, Vec<DemoAccount>), String> {
    let cluster = Cluster::create(config, directory.clone(), serve).await?;
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
    ) -> Result<(Node, Vec<DemoAccount>), String> {
        let mut directory = open_directory(config)?;
        let settings = crate::settings::ClusterSettings::read(&directory);
        if let Some(indexes) = &settings.indexes {
            directory
                .use_indexes(indexes)
                .map_err(|e| format!("the cluster's index settings: {e}"))?;
        }
        let directory = Arc::new(directory);
        let (cluster, accounts) = match new {
            Some(n) => create_cluster(config, directory.clone(), n, true).await?,
            None => (
                Cluster::start(config, directory.clone(), true).await?,
                Vec::new(),
            ),
        };
        let (shutdown, rx) = watch::channel(false);
        let ctx = Arc::new(LdapContext::new(
            directory.clone(),
            cluster.clone(),
            config.ldap.clone(),
            &[config.admin_dn()],
        )?);
        ctx.apply_settings(&settings);
        tokio::spawn(follow_settings(
            ctx.clone(),
            cluster.clone(),
            settings,
            rx.clone(),
        ));
        let acceptor = ldap_tls_acceptor(config)?;
        let mut ldap_addrs = Vec::new();
        let mut ldaps_addrs = Vec::new();
        let mut tasks = Vec::new();
        let listeners = config
            .ldap
            .listen
            .iter()
            .map(|a| (a, false))
            .chain(config.ldap.listen_tls.iter().map(|a| (a, true)));
        for (addr, implicit) in listeners {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("ldap: cannot listen on {addr}: {e}"))?;
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            let tls = match (&acceptor, implicit) {
                (Some(a), true) => {
                    ldaps_addrs.push(bound);
                    ldap::ListenerTls::Implicit(a.clone())
                }
                (a, _) => {
                    ldap_addrs.push(bound);
                    ldap::ListenerTls::Plain(a.clone())
                }
            };
            tasks.push(tokio::spawn(ldap::serve(
                ctx.clone(),
                listener,
                tls,
                rx.clone(),
            )));
        }
        let node = Node {
            directory,
            cluster,
            ldap_addrs,
            ldaps_addrs,
            shutdown,
            tasks,
        };
        Ok((node, accounts))
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
) -> Result<(), String> {
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
        .map_err(|e| format!("{dn}: {e}"))
}

/// Create the base of the tree: the suffix, `ou=domains`, `ou=nodes`, `ou=system` with
/// `ou=tokens`, the cluster settings entry and the administrator; with `demo`, the
/// domain example.org with alice and bob.
pub async fn bootstrap(
    writes: &dyn WritePath,
    suffix_dn: &Dn,
    cluster_id: &str,
    admin_dn: &str,
    admin_password: &str,
    demo: bool,
) -> Result<Vec<DemoAccount>, String> {
    let suffix = suffix_dn.to_string();
    let first = suffix_dn
        .rdn()
        .and_then(|r| r.0.first())
        .ok_or("empty suffix")?;
    let first_value = String::from_utf8_lossy(&first.value).into_owned();
    let top_class = match first.attr.to_ascii_lowercase().as_str() {
        "dc" => vec!["top", "domain"],
        "o" => vec!["top", "organization"],
        "ou" => vec!["top", "organizationalUnit"],
        other => {
            return Err(format!(
                "a suffix whose RDN is {other}= is not supported; use dc=, o= or ou="
            ))
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
    let admin = crate::directory::dn::Dn::parse(admin_dn).map_err(|e| e.to_string())?;
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
    Ok(accounts)
}

//! `pigeonair quickstart`: a one-node cluster with demo data on unprivileged ports, in
//! one data directory, that starts again with the same credentials.
//!
//! The first start creates the cluster, a self-signed certificate for the public
//! listeners (`tls/ldap-cert.pem`), the demo domain with its accounts, and writes the
//! generated credentials to `quickstart-credentials.toml` and the node's configuration
//! to `pigeonair.toml` (both mode 0600), so that the CLI's other commands work on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::durable::{write_atomic, Access};
use crate::node::{self, DemoAccount, NewCluster, Node, NodeError};

/// Where a quickstart node keeps its data and listens.
#[derive(Debug, Clone)]
pub struct Quickstart {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The administrator's password at the first start (generated when `None`).
    pub admin_password: Option<String>,
    /// LDAP (StartTLS offered).
    pub ldap: SocketAddr,
    /// LDAPS.
    pub ldaps: SocketAddr,
    /// The cluster port.
    pub cluster: SocketAddr,
    /// SMTP, the MX listener (STARTTLS offered).
    pub smtp: SocketAddr,
    /// Submission with STARTTLS.
    pub submission: SocketAddr,
    /// Submission with implicit TLS.
    pub submissions: SocketAddr,
    /// POP3 (STLS offered).
    pub pop3: SocketAddr,
    /// POP3 with implicit TLS.
    pub pop3s: SocketAddr,
    /// IMAP (STARTTLS offered).
    pub imap: SocketAddr,
    /// IMAP with implicit TLS.
    pub imaps: SocketAddr,
}

/// What quickstart remembers between starts: the credentials it generated.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    /// The administrator's password.
    pub admin_password: String,
    /// The demo accounts and their passwords.
    pub accounts: Vec<DemoAccount>,
}

/// Why quickstart could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    /// The node could not start.
    #[error("{0}")]
    Node(#[from] NodeError),
    /// The data directory holds a node that quickstart did not make.
    #[error("{data_dir} holds data but no {creds}; use `pigeonair run` for it")]
    NotQuickstart {
        /// The data directory.
        data_dir: String,
        /// The missing credentials file.
        creds: String,
    },
    /// A file of the data directory could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> QuickstartError {
    QuickstartError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl Quickstart {
    /// The node's configuration: the listeners above, the certificate under `tls/`
    /// (LDAP and SMTP share it), mail stored under `<data_dir>/mail`.
    pub fn config(&self) -> Config {
        let mut config = Config::default();
        config.node.data_dir = self.data_dir.clone();
        config.ldap.listen = vec![self.ldap];
        config.ldap.listen_tls = vec![self.ldaps];
        config.cluster.listen = self.cluster;
        let (cert, key) = self.cert_paths();
        config.ldap.tls_cert = Some(cert.clone());
        config.ldap.tls_key = Some(key.clone());
        config.mail.smtp_listen = vec![self.smtp];
        config.mail.submission_listen = vec![self.submission];
        config.mail.submissions_listen = vec![self.submissions];
        config.mail.pop3_listen = vec![self.pop3];
        config.mail.pop3s_listen = vec![self.pop3s];
        config.mail.imap_listen = vec![self.imap];
        config.mail.imaps_listen = vec![self.imaps];
        config.mail.tls_cert = Some(cert);
        config.mail.tls_key = Some(key);
        config.mail.hostname = Some("localhost".into());
        config
    }

    /// The self-signed certificate and key of the public listeners.
    pub fn cert_paths(&self) -> (PathBuf, PathBuf) {
        let tls = self.data_dir.join("tls");
        (tls.join("ldap-cert.pem"), tls.join("ldap-key.pem"))
    }

    /// The node's configuration file, written at the first start.
    pub fn config_path(&self) -> PathBuf {
        self.data_dir.join("pigeonair.toml")
    }

    fn creds_path(&self) -> PathBuf {
        self.data_dir.join("quickstart-credentials.toml")
    }

    /// Make the self-signed certificate when it is missing.
    fn ensure_certificate(&self) -> Result<(), QuickstartError> {
        let (cert_path, key_path) = self.cert_paths();
        if cert_path.exists() {
            return Ok(());
        }
        let dir = cert_path.parent().unwrap_or(&self.data_dir);
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        let hosts = vec![
            "localhost".to_string(),
            self.ldap.ip().to_string(),
            self.ldaps.ip().to_string(),
            self.smtp.ip().to_string(),
        ];
        let cert = crate::cluster::pki::self_signed_server(&hosts)
            .map_err(|e| file_error(&cert_path, e))?;
        write_atomic(&key_path, cert.key_pem.as_bytes(), Access::Private)
            .map_err(|e| file_error(&key_path, e))?;
        write_atomic(&cert_path, cert.cert_pem.as_bytes(), Access::Private)
            .map_err(|e| file_error(&cert_path, e))
    }

    /// Start the node: create it with demo data at the first start, or run the one
    /// this data directory holds with the credentials remembered then.
    pub async fn start(&self) -> Result<(Node, Credentials), QuickstartError> {
        let config = self.config();
        self.ensure_certificate()?;
        let creds_path = self.creds_path();
        if node::is_initialised(&self.data_dir) {
            let text = std::fs::read_to_string(&creds_path).map_err(|_| {
                QuickstartError::NotQuickstart {
                    data_dir: self.data_dir.display().to_string(),
                    creds: creds_path.display().to_string(),
                }
            })?;
            let creds: Credentials =
                toml::from_str(&text).map_err(|e| file_error(&creds_path, e))?;
            let (node, _) = Node::start(&config, None).await?;
            self.write_config(&config, &node)?;
            return Ok((node, creds));
        }
        let admin_password = self
            .admin_password
            .clone()
            .unwrap_or_else(crate::directory::password::generate);
        let new = NewCluster {
            admin_password: admin_password.clone(),
            demo: true,
        };
        let (node, accounts) = Node::start(&config, Some(&new)).await?;
        let creds = Credentials {
            admin_password,
            accounts,
        };
        let text = toml::to_string(&creds).map_err(|e| file_error(&creds_path, e))?;
        write_atomic(&creds_path, text.as_bytes(), Access::Private)
            .map_err(|e| file_error(&creds_path, e))?;
        self.write_config(&config, &node)?;
        Ok((node, creds))
    }

    /// Write the node's configuration for the CLI's other commands, at every start,
    /// with the cluster port it bound (an ephemeral `:0` would name nothing).
    fn write_config(&self, config: &Config, node: &Node) -> Result<(), QuickstartError> {
        let mut written = config.clone();
        if let Some(bound) = node.cluster.cluster_addr {
            written.cluster.listen = bound;
        }
        let config_path = self.config_path();
        write_atomic(&config_path, written.to_toml().as_bytes(), Access::Private)
            .map_err(|e| file_error(&config_path, e))
    }
}

//! The node's configuration file (TOML): one serde tree, defaults in one place,
//! `validate()` reporting every problem at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration of one node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Local settings of this node.
    pub node: NodeConfig,
    /// The directory.
    pub directory: DirectoryConfig,
    /// The LDAP front end.
    pub ldap: LdapConfig,
    /// The cluster port and Raft timing.
    pub cluster: ClusterConfig,
    /// SMTP in, the spool and the mail store.
    pub mail: MailConfig,
}

/// Where a node keeps the mailboxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Each account's Maildir is on its home node (`mailHost`), under
    /// `<data_dir>/mail`; other nodes hand its mail over with LMTP.
    #[default]
    Local,
    /// Every node stores straight into `shared_root`, a file system all of them mount.
    Shared,
}

/// SMTP in, the spool and the mail store (local to the node; the limits are
/// overridden by the cluster-wide `smtp.*` settings).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// The name in greetings, `Received:` headers and bounces (default: the node's name).
    pub hostname: Option<String>,
    /// MX listeners: mail from other servers to this cluster's addresses (port 25).
    pub smtp_listen: Vec<SocketAddr>,
    /// Submission listeners with STARTTLS (port 587): authenticated users.
    pub submission_listen: Vec<SocketAddr>,
    /// Submission listeners with implicit TLS (port 465); need `tls_cert`.
    pub submissions_listen: Vec<SocketAddr>,
    /// POP3 listeners (port 110; STLS offered with a certificate).
    pub pop3_listen: Vec<SocketAddr>,
    /// POP3 listeners with implicit TLS (port 995); need `tls_cert`.
    pub pop3s_listen: Vec<SocketAddr>,
    /// IMAP listeners (port 143; STARTTLS offered with a certificate).
    pub imap_listen: Vec<SocketAddr>,
    /// IMAP listeners with implicit TLS (port 993); need `tls_cert`.
    pub imaps_listen: Vec<SocketAddr>,
    /// PEM certificate chain for STARTTLS and implicit TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// `local` or `shared`.
    pub storage: Storage,
    /// The shared Maildir root (`storage = "shared"`); it must exist.
    pub shared_root: Option<PathBuf>,
    /// Largest message accepted, in bytes (`smtp.maxMessageBytes`).
    pub max_message_bytes: usize,
    /// Most recipients of one message (`smtp.maxRecipients`).
    pub max_recipients: usize,
    /// Most SMTP connections at once, over all listeners.
    pub max_connections: usize,
    /// Most SMTP connections from one client address (`smtp.maxConnectionsPerAddress`).
    pub max_connections_per_address: usize,
    /// How long a client may take to send a command (`smtp.commandTimeoutSecs`).
    pub command_timeout_secs: u64,
    /// How long a client may pause inside DATA or BDAT (`smtp.dataTimeoutSecs`).
    pub data_timeout_secs: u64,
    /// Balancers whose connections start with a PROXY protocol v2 header; the client
    /// address it carries is the one logged, limited and written in `Received:`.
    pub proxy_protocol_from: Vec<std::net::IpAddr>,
    /// The wait before the second delivery attempt, in seconds; it doubles each time.
    pub retry_first_secs: u64,
    /// The longest wait between delivery attempts, in seconds.
    pub retry_max_secs: u64,
    /// How long a message is retried before it is bounced, in seconds (5 days).
    pub retry_window_secs: u64,
    /// How long connecting to another node's LMTP service may take, in milliseconds.
    pub lmtp_connect_timeout_ms: u64,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            hostname: None,
            smtp_listen: Vec::new(),
            submission_listen: Vec::new(),
            submissions_listen: Vec::new(),
            pop3_listen: Vec::new(),
            pop3s_listen: Vec::new(),
            imap_listen: Vec::new(),
            imaps_listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
            storage: Storage::Local,
            shared_root: None,
            max_message_bytes: 25 << 20,
            max_recipients: 1000,
            max_connections: 2048,
            max_connections_per_address: 32,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            proxy_protocol_from: Vec::new(),
            retry_first_secs: 60,
            retry_max_secs: 3600,
            retry_window_secs: 5 * 24 * 3600,
            lmtp_connect_timeout_ms: 3000,
        }
    }
}

impl MailConfig {
    /// Whether any SMTP listener is configured.
    pub fn enabled(&self) -> bool {
        !(self.smtp_listen.is_empty()
            && self.submission_listen.is_empty()
            && self.submissions_listen.is_empty())
    }
}

/// The cluster port and Raft timing (local to the node).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Where the cluster port listens.
    pub listen: SocketAddr,
    /// The `host:port` other nodes use to reach this one (default: `listen`).
    pub advertise: Option<String>,
    /// Leader heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout range, in milliseconds. openraft 0.9 also makes the upper end
    /// the leader lease: a follower campaigns `max + a random timeout in the range` after
    /// the last heartbeat. The defaults (30, 100-200) give a new leader 300-400 ms after
    /// a leader dies on a LAN; raise all three together across slower links.
    pub election_timeout_min_ms: u64,
    /// Upper end of the election timeout range.
    pub election_timeout_max_ms: u64,
    /// How long a write waits for a leader before failing with `unavailable`.
    pub write_timeout_ms: u64,
    /// Take a snapshot after this many log entries, and purge the log behind it. A
    /// snapshot copies the whole directory (at 1,000,000 accounts 667 MiB and about 5 s
    /// of CPU), so it should be rare next to the writes; the log it lets grow is about
    /// half a kilobyte per entry, replayed at start.
    pub snapshot_every: u64,
    /// Applied writes are made durable in the directory (a checkpoint) at least this
    /// often while there are any, in milliseconds. Safety does not depend on it: the Raft
    /// log holds every entry since the last checkpoint, and a restart applies those
    /// again. A checkpoint holds up applies while it writes out the pages they changed
    /// (about 11 ms after 100 modifies, 62 ms after 1,000, on the development machine).
    pub checkpoint_interval_ms: u64,
    /// A checkpoint is also due once this many entries were applied since the last one.
    pub checkpoint_max_entries: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: "127.0.0.1:7400".parse().expect("a valid literal address"),
            advertise: None,
            heartbeat_ms: 30,
            election_timeout_min_ms: 100,
            election_timeout_max_ms: 200,
            write_timeout_ms: 5000,
            snapshot_every: 50_000,
            checkpoint_interval_ms: 1000,
            checkpoint_max_entries: 1000,
        }
    }
}

impl ClusterConfig {
    /// The address other nodes use to reach this one.
    pub fn advertised(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

/// Local settings of this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The node's name (shown in status and the node entry).
    pub name: String,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
}

/// The directory's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// The naming context.
    pub suffix: String,
    /// redb page cache, in MiB. 0 (the default): a quarter of the machine's memory, at
    /// least 64 MiB. The cache only takes memory for pages actually read, so a directory
    /// smaller than that stays wholly in memory and costs only its own size.
    pub cache_mb: usize,
    /// A directory of `*.schema` files to load instead of the built-in schema.
    pub schema_dir: Option<PathBuf>,
    /// Indexed attributes: name to a comma list of `eq`, `pres`, `sub`.
    pub indexes: BTreeMap<String, String>,
}

/// The LDAP front end's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapConfig {
    /// Addresses to listen on (empty: LDAP is off).
    pub listen: Vec<SocketAddr>,
    /// The largest PDU accepted, in bytes.
    pub max_pdu_bytes: usize,
    /// The most connections served at once.
    pub max_connections: usize,
    /// The most requests outstanding on one connection.
    pub max_outstanding: usize,
    /// The most entries one search returns to a non-administrator (0: no limit).
    pub size_limit: usize,
    /// The longest a search may run, in seconds (0: no limit).
    pub time_limit_secs: u64,
    /// The most connections from one client address.
    pub max_connections_per_address: usize,
    /// Close a connection with nothing outstanding after this many idle seconds (0: never).
    pub idle_timeout_secs: u64,
    /// The longest delay failed binds build up, in milliseconds.
    pub bind_delay_max_ms: u64,
    /// DNs of read-only service identities (Dovecot, Postfix lookups): they read the
    /// mail routing attributes of every domain.
    pub service_dns: Vec<String>,
    /// Service identities may also read `userPassword` (for password lookups).
    pub service_reads_passwords: bool,
    /// The scheme name service identities see on argon2id hashes (Dovecot's `ARGON2ID`;
    /// empty string: OpenLDAP's `ARGON2` as stored).
    pub service_argon2_prefix: Option<String>,
    /// LDAPS listeners (TLS from the first byte).
    pub listen_tls: Vec<SocketAddr>,
    /// The server certificate chain (PEM); enables LDAPS and StartTLS.
    pub tls_cert: Option<PathBuf>,
    /// The server key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Refuse simple binds on unencrypted connections (default: on, except on loopback
    /// listeners).
    pub require_tls_for_bind: Option<bool>,
    /// CA certificates (PEM files) whose client certificates may bind with SASL
    /// EXTERNAL, besides the cluster CA (`pigeonair cert issue`), which is always
    /// trusted.
    pub tls_client_ca: Vec<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "node1".into(),
            data_dir: PathBuf::from("./pigeonair-data"),
        }
    }
}

/// The indexes a mail directory needs for its lookups.
pub fn default_indexes() -> BTreeMap<String, String> {
    [
        ("objectClass", "eq"),
        ("uid", "eq"),
        ("mail", "eq,sub"),
        ("mailLocalAddress", "eq"),
        ("mailAlternateAddress", "eq"),
        ("mailHost", "eq"),
        ("cn", "eq,sub"),
        ("member", "eq"),
        ("uniqueMember", "eq"),
        ("entryUUID", "eq"),
    ]
    .into_iter()
    .map(|(a, k)| (a.to_string(), k.to_string()))
    .collect()
}

impl DirectoryConfig {
    /// The redb cache size in bytes (see [`DirectoryConfig::cache_mb`]).
    pub fn cache_bytes(&self) -> usize {
        const MIB: usize = 1 << 20;
        if self.cache_mb > 0 {
            return self.cache_mb.saturating_mul(MIB);
        }
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            })
            .map(|kib| kib.saturating_mul(1024))
            .unwrap_or(0);
        (total / 4).max(64 * MIB)
    }
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            suffix: "dc=pigeonair".into(),
            cache_mb: 0,
            schema_dir: None,
            indexes: default_indexes(),
        }
    }
}

impl Default for LdapConfig {
    fn default() -> Self {
        LdapConfig {
            listen: vec!["127.0.0.1:3389".parse().expect("a valid literal address")],
            max_pdu_bytes: 1 << 20,
            max_connections: 4096,
            max_outstanding: 64,
            size_limit: 1000,
            time_limit_secs: 60,
            max_connections_per_address: 256,
            idle_timeout_secs: 900,
            bind_delay_max_ms: 2000,
            service_dns: Vec::new(),
            service_reads_passwords: false,
            service_argon2_prefix: Some("ARGON2ID".into()),
            listen_tls: Vec::new(),
            tls_cert: None,
            tls_key: None,
            require_tls_for_bind: None,
            tls_client_ca: Vec::new(),
        }
    }
}

impl Config {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config
            .validate()
            .map_err(|problems| format!("{}:\n  {}", path.display(), problems.join("\n  ")))?;
        Ok(config)
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration always serialises")
    }

    /// Every problem with the configuration.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.node.name.trim().is_empty() {
            problems.push("node.name must not be empty".to_string());
        }
        if crate::directory::dn::Dn::parse(&self.directory.suffix)
            .map(|d| d.is_root())
            .unwrap_or(true)
        {
            problems.push(format!(
                "directory.suffix {:?} is not a non-empty DN",
                self.directory.suffix
            ));
        }
        if self.ldap.max_pdu_bytes < 1024 {
            problems.push("ldap.max_pdu_bytes must be at least 1024".into());
        }
        if self.ldap.max_connections == 0 {
            problems.push("ldap.max_connections must be at least 1".into());
        }
        if self.ldap.max_outstanding == 0 {
            problems.push("ldap.max_outstanding must be at least 1".into());
        }
        if self.ldap.tls_cert.is_some() != self.ldap.tls_key.is_some() {
            problems.push("ldap.tls_cert and ldap.tls_key go together".into());
        }
        if !self.ldap.listen_tls.is_empty() && self.ldap.tls_cert.is_none() {
            problems.push("ldap.listen_tls needs ldap.tls_cert and ldap.tls_key".into());
        }
        let m = &self.mail;
        if m.tls_cert.is_some() != m.tls_key.is_some() {
            problems.push("mail.tls_cert and mail.tls_key go together".into());
        }
        let implicit_tls = !(m.submissions_listen.is_empty()
            && m.pop3s_listen.is_empty()
            && m.imaps_listen.is_empty());
        if implicit_tls && m.tls_cert.is_none() {
            problems.push(
                "mail.submissions_listen, mail.pop3s_listen and mail.imaps_listen need mail.tls_cert and mail.tls_key"
                    .into(),
            );
        }
        if m.storage == Storage::Shared && m.shared_root.is_none() {
            problems.push("mail.storage = \"shared\" needs mail.shared_root".into());
        }
        if m.max_message_bytes < 1024 || m.max_recipients == 0 || m.max_connections == 0 {
            problems.push(
                "mail: max_message_bytes >= 1024, max_recipients and max_connections >= 1".into(),
            );
        }
        if m.retry_first_secs == 0 || m.retry_max_secs < m.retry_first_secs {
            problems.push("mail: need 0 < retry_first_secs <= retry_max_secs".into());
        }
        let c = &self.cluster;
        if c.heartbeat_ms == 0
            || c.election_timeout_min_ms <= c.heartbeat_ms
            || c.election_timeout_max_ms <= c.election_timeout_min_ms
        {
            problems.push("cluster: need 0 < heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms".into());
        }
        if c.snapshot_every < 10 {
            problems.push("cluster.snapshot_every must be at least 10".into());
        }
        if c.checkpoint_interval_ms < 10 {
            problems.push("cluster.checkpoint_interval_ms must be at least 10".into());
        }
        if c.checkpoint_max_entries == 0 {
            problems.push("cluster.checkpoint_max_entries must be at least 1".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The name this node uses in SMTP greetings, `Received:` headers and bounces.
    pub fn mail_hostname(&self) -> String {
        self.mail
            .hostname
            .clone()
            .unwrap_or_else(|| self.node.name.clone())
    }

    /// The administrator's DN for this configuration's suffix.
    pub fn admin_dn(&self) -> String {
        format!("cn=admin,ou=system,{}", self.directory.suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_and_validates() {
        let c = Config::default();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert!(back.validate().is_ok());
        assert_eq!(back.ldap.max_pdu_bytes, 1 << 20);
    }

    #[test]
    fn reports_every_problem() {
        let mut c = Config::default();
        c.node.name = " ".into();
        c.directory.suffix = "".into();
        c.ldap.max_connections = 0;
        assert_eq!(c.validate().unwrap_err().len(), 3);
    }

    #[test]
    fn checkpoint_settings_are_read_and_checked() {
        let c: Config = toml::from_str(
            "[cluster]\ncheckpoint_interval_ms = 250\ncheckpoint_max_entries = 100\n",
        )
        .unwrap();
        assert!(c.validate().is_ok());
        let policy = crate::cluster::state_machine::Checkpoint::from_config(&c.cluster);
        assert_eq!(policy.interval, std::time::Duration::from_millis(250));
        assert_eq!(policy.max_entries, 100);

        let c: Config =
            toml::from_str("[cluster]\ncheckpoint_interval_ms = 0\ncheckpoint_max_entries = 0\n")
                .unwrap();
        let problems = c.validate().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("checkpoint_interval_ms"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("checkpoint_max_entries"),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("[ldap]\nlisten_on = []\n").is_err());
    }
}

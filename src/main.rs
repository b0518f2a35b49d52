//! The `pigeonair` command: parses arguments, loads configuration, calls the library.

use std::io::{BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use pigeonair::cluster::admin::{AdminReply, AdminRequest};
use pigeonair::cluster::pki::PkiFiles;
use pigeonair::cluster::transport::{Dialer, Service};
use pigeonair::cluster::Cluster;
use pigeonair::config::Config;
use pigeonair::directory::dn::Dn;
use pigeonair::durable::{write_atomic, Access};
use pigeonair::node::{self, NewCluster, Node};
use pigeonair::offline;
use pigeonair::quickstart::Quickstart;

#[derive(Parser)]
#[command(
    name = "pigeonair",
    version,
    about = "PigeonAir: a mail cluster with a replicated LDAP directory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start a one-node cluster with demo data on unprivileged ports, in the foreground.
    Quickstart {
        /// Where to keep the data.
        #[arg(long, default_value = "./pigeonair-data")]
        data_dir: PathBuf,
        /// The administrator's password (first start only; generated when absent).
        #[arg(long)]
        admin_password: Option<String>,
        /// The LDAP listener address.
        #[arg(long, default_value = "127.0.0.1:3389")]
        ldap_listen: SocketAddr,
        /// The LDAPS listener address.
        #[arg(long, default_value = "127.0.0.1:3636")]
        ldaps_listen: SocketAddr,
        /// The cluster port's address.
        #[arg(long, default_value = "127.0.0.1:7400")]
        cluster_listen: SocketAddr,
        /// The SMTP (MX) listener address.
        #[arg(long, default_value = "127.0.0.1:2525")]
        smtp_listen: SocketAddr,
        /// The submission (STARTTLS) listener address.
        #[arg(long, default_value = "127.0.0.1:2587")]
        submission_listen: SocketAddr,
        /// The submission (implicit TLS) listener address.
        #[arg(long, default_value = "127.0.0.1:2465")]
        submissions_listen: SocketAddr,
        /// The POP3 listener address.
        #[arg(long, default_value = "127.0.0.1:1110")]
        pop3_listen: SocketAddr,
        /// The POP3 (implicit TLS) listener address.
        #[arg(long, default_value = "127.0.0.1:1995")]
        pop3s_listen: SocketAddr,
        /// The IMAP listener address.
        #[arg(long, default_value = "127.0.0.1:1143")]
        imap_listen: SocketAddr,
        /// The IMAP (implicit TLS) listener address.
        #[arg(long, default_value = "127.0.0.1:1993")]
        imaps_listen: SocketAddr,
    },
    /// Create a node's configuration (if the file is missing) and its directory.
    Init {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The administrator's password (generated and printed when absent).
        #[arg(long)]
        admin_password: Option<String>,
    },
    /// Run a node in the foreground until interrupted.
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Join an existing cluster with a token, then run this node in the foreground.
    Join {
        /// The configuration file of the new node.
        #[arg(long)]
        config: PathBuf,
        /// A token from `pigeonair token create`.
        #[arg(long)]
        token: String,
        /// The cluster address of any member (`host:port`).
        #[arg(long)]
        peer: String,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Cluster membership.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Every node of the cluster: role, term, leader, applied index, lag, digest.
    Status {
        /// The configuration file of a local node.
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// This node's mail queue: messages waiting for delivery.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Run a measured failover drill on the live cluster.
    Drill {
        /// The configuration file of a local node.
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How long to keep writing after the leader change, in seconds.
        #[arg(long, default_value_t = 3)]
        settle_secs: u64,
    },
    /// Import or export the directory as LDIF (the node must be stopped).
    Ldif {
        #[command(subcommand)]
        command: LdifCommand,
    },
    /// TLS client certificates for SASL EXTERNAL binds.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issue a client certificate, signed by the cluster CA, that binds as an entry.
    Issue {
        /// The entry the certificate binds as (written into it as `ldap:///<dn>`).
        #[arg(long)]
        dn: String,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write its private key (PEM, mode 0600).
        #[arg(long)]
        key: PathBuf,
        /// How long it is valid, in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// The configuration file of a local voter (which holds the CA key).
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a join token and print it.
    Create {
        /// The configuration file of a local node.
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
        /// How long it is valid (`30m`, `1h`, `2d`).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many joins it allows.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// List join tokens.
    List {
        /// The configuration file of a local node.
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
    },
    /// Revoke a join token.
    Revoke {
        /// The token id (the part after `PA1.`).
        id: String,
        /// The configuration file of a local node.
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Take a node out of the cluster's membership.
    Remove {
        /// The node id.
        id: u64,
        /// The configuration file of a local node.
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Every queued message with its pending recipients and their last error.
    List {
        /// The configuration file of a local node.
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Try a message (or every message) again now.
    Retry {
        /// The queue id; every message when absent.
        id: Option<String>,
        /// The configuration file of a local node.
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
    },
    /// Drop a message from the queue, without delivering or bouncing it.
    Delete {
        /// The queue id.
        id: String,
        /// The configuration file of a local node.
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum LdifCommand {
    /// Apply an LDIF file (entries or change records) in large transactions.
    Import {
        /// The LDIF file.
        file: PathBuf,
        /// The configuration file.
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
        /// Records per transaction.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
    /// Write the directory (or a subtree) as LDIF.
    Export {
        /// The configuration file.
        #[arg(long, default_value = "pigeonair.toml")]
        config: PathBuf,
        /// The subtree to export (default: the whole naming context).
        #[arg(long)]
        base: Option<String>,
        /// Include operational attributes (entryUUID, timestamps, ...).
        #[arg(long)]
        operational: bool,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PIGEONAIR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main() {
        eprintln!("pigeonair: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().command {
        Command::Quickstart {
            data_dir,
            admin_password,
            ldap_listen,
            ldaps_listen,
            cluster_listen,
            smtp_listen,
            submission_listen,
            submissions_listen,
            pop3_listen,
            pop3s_listen,
            imap_listen,
            imaps_listen,
        } => quickstart(Quickstart {
            data_dir,
            admin_password,
            ldap: ldap_listen,
            ldaps: ldaps_listen,
            cluster: cluster_listen,
            smtp: smtp_listen,
            submission: submission_listen,
            submissions: submissions_listen,
            pop3: pop3_listen,
            pop3s: pop3s_listen,
            imap: imap_listen,
            imaps: imaps_listen,
        }),
        Command::Init {
            config,
            admin_password,
        } => init(&config, admin_password),
        Command::Run { config } => run(&config),
        Command::Join {
            config,
            token,
            peer,
        } => join(&config, &token, &peer),
        Command::Token {
            command: TokenCommand::Create { config, ttl, uses },
        } => {
            let ttl_secs = parse_duration(&ttl)?;
            match admin_call(&config, AdminRequest::CreateToken { ttl_secs, uses })? {
                AdminReply::Token(t) => {
                    println!("{t}");
                    Ok(())
                }
                other => bail!("{}", reply_error(other)),
            }
        }
        Command::Token {
            command: TokenCommand::List { config },
        } => match admin_call(&config, AdminRequest::ListTokens)? {
            AdminReply::Tokens(list) => {
                println!("{:<12} {:<17} USES", "ID", "EXPIRES");
                for t in list {
                    println!("{:<12} {:<17} {}", t.id, t.expires, t.uses);
                }
                Ok(())
            }
            other => bail!("{}", reply_error(other)),
        },
        Command::Token {
            command: TokenCommand::Revoke { id, config },
        } => match admin_call(&config, AdminRequest::RevokeToken(id))? {
            AdminReply::Done => Ok(()),
            other => bail!("{}", reply_error(other)),
        },
        Command::Node {
            command: NodeCommand::Remove { id, config },
        } => match admin_call(&config, AdminRequest::RemoveNode(id))? {
            AdminReply::Done => {
                println!("node {id} removed");
                Ok(())
            }
            other => bail!("{}", reply_error(other)),
        },
        Command::Status { config, json } => status(&config, json),
        Command::Queue { command } => queue(command),
        Command::Drill {
            config,
            json,
            settle_secs,
        } => drill(&config, json, settle_secs),
        Command::Ldif {
            command:
                LdifCommand::Import {
                    file,
                    config,
                    batch,
                },
        } => import(&file, &config, batch),
        Command::Ldif {
            command:
                LdifCommand::Export {
                    config,
                    base,
                    operational,
                    output,
                },
        } => export(&config, base, operational, output),
        Command::Cert {
            command:
                CertCommand::Issue {
                    dn,
                    cert,
                    key,
                    days,
                    config,
                },
        } => issue_client_cert(&config, &dn, &cert, &key, days),
    }
}

/// `pigeonair cert issue`: a client certificate naming `dn`, signed with the cluster CA
/// key this node holds.
fn issue_client_cert(
    config_path: &Path,
    dn: &str,
    cert_path: &Path,
    key_path: &Path,
    days: u64,
) -> Result<()> {
    let config = Config::load(config_path).map_err(anyhow::Error::msg)?;
    let parsed = Dn::parse(dn).map_err(|e| anyhow::anyhow!("{dn}: {e}"))?;
    let Some(rdn) = parsed.rdn() else {
        bail!("a client certificate needs a DN, not the root");
    };
    if days == 0 || days > 3650 {
        bail!("--days must be between 1 and 3650");
    }
    let files = PkiFiles::new(&config.node.data_dir);
    if !files.has_ca_key() {
        bail!(
            "{} has no cluster CA key; issue client certificates on a voter",
            files.dir().display()
        );
    }
    let ca = files.load_ca().map_err(|e| anyhow::anyhow!("{e}"))?;
    let common_name = rdn
        .0
        .first()
        .map(|ava| String::from_utf8_lossy(&ava.value).into_owned())
        .unwrap_or_default();
    let issued = ca
        .issue_client(
            &parsed.to_string(),
            &common_name,
            std::time::Duration::from_secs(days * 24 * 3600),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    write_private(key_path, &issued.key_pem)?;
    std::fs::write(cert_path, &issued.cert_pem)
        .with_context(|| format!("writing {}", cert_path.display()))?;
    println!(
        "certificate for {parsed} in {} (key {}), valid {days} days; issuer {}",
        cert_path.display(),
        key_path.display(),
        files.ca_cert_path().display()
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn quickstart(q: Quickstart) -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let (node, creds) = q.start().await?;
        let config = q.config();
        let (cert_path, _) = q.cert_paths();
        let mut out = std::io::stdout().lock();
        writeln!(out, "PigeonAir quickstart node is up.")?;
        for addr in node.addrs("ldap") {
            writeln!(out, "  ldap:      ldap://{addr}")?;
        }
        for addr in node.addrs("ldaps") {
            writeln!(out, "  ldaps:     ldaps://{addr}")?;
        }
        for addr in node.addrs("smtp") {
            writeln!(out, "  smtp:      smtp://{addr}")?;
        }
        for addr in node.addrs("submission") {
            writeln!(out, "  submission: smtp://{addr} (STARTTLS, AUTH)")?;
        }
        for addr in node.addrs("submissions") {
            writeln!(out, "  submissions: smtps://{addr} (implicit TLS, AUTH)")?;
        }
        for addr in node.addrs("pop3") {
            writeln!(out, "  pop3:      pop3://{addr} (STLS)")?;
        }
        for addr in node.addrs("pop3s") {
            writeln!(out, "  pop3s:     pop3s://{addr}")?;
        }
        for addr in node.addrs("imap") {
            writeln!(out, "  imap:      imap://{addr} (STARTTLS)")?;
        }
        for addr in node.addrs("imaps") {
            writeln!(out, "  imaps:     imaps://{addr}")?;
        }
        writeln!(out, "  maildirs:  {}", q.data_dir.join("mail").display())?;
        writeln!(
            out,
            "  tls cert:  {} (self-signed; LDAPTLS_CACERT={0})",
            cert_path.display()
        )?;
        writeln!(
            out,
            "  client certificates (SASL EXTERNAL): pigeonair cert issue --config {} --dn DN --cert c.pem --key k.pem",
            q.config_path().display()
        )?;
        if let Some(addr) = node.cluster.cluster_addr {
            writeln!(out, "  cluster:   {addr}")?;
        }
        writeln!(out, "  suffix:    {}", config.directory.suffix)?;
        writeln!(out, "  admin:     {}", config.admin_dn())?;
        writeln!(out, "  password:  {}", creds.admin_password)?;
        for a in &creds.accounts {
            writeln!(
                out,
                "  account:   {} {} password: {}",
                a.mail, a.dn, a.password
            )?;
        }
        writeln!(out, "  data:      {}", q.data_dir.display())?;
        writeln!(out, "ready")?;
        out.flush()?;
        drop(out);
        node::wait_for_signal().await;
        node.shutdown().await;
        Ok(())
    })
}

/// Write a file only its owner may read, durably.
fn write_private(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes(), Access::Private)
        .with_context(|| format!("writing {}", path.display()))
}

fn init(config_path: &Path, admin_password: Option<String>) -> Result<()> {
    if !config_path.exists() {
        let config = Config::default();
        write_private(config_path, &config.to_toml())?;
        println!("wrote a default configuration to {}", config_path.display());
    }
    let config = Config::load(config_path).map_err(anyhow::Error::msg)?;
    if node::is_initialised(&config.node.data_dir) {
        bail!("{} is already initialised", config.node.data_dir.display());
    }
    let generated = admin_password.is_none();
    let password = admin_password.unwrap_or_else(pigeonair::directory::password::generate);
    let cluster_id = runtime()?.block_on(async {
        let dir = std::sync::Arc::new(node::open_directory(&config)?);
        let new = NewCluster {
            admin_password: password.clone(),
            demo: false,
        };
        let (cluster, _) = node::create_cluster(&config, dir, &new, None).await?;
        let id = cluster.cluster_id.clone();
        cluster.shutdown().await;
        Ok::<_, anyhow::Error>(id)
    })?;
    println!(
        "initialised {} as the first node of cluster {cluster_id}",
        config.node.data_dir.display()
    );
    println!("  admin:     {}", config.admin_dn());
    if generated {
        println!("  password:  {password}");
    }
    Ok(())
}

fn run(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path).map_err(anyhow::Error::msg)?;
    if !node::is_initialised(&config.node.data_dir) {
        bail!(
            "{} is not initialised: run `pigeonair init --config {}` first, or `pigeonair join`",
            config.node.data_dir.display(),
            config_path.display()
        );
    }
    runtime()?.block_on(serve_node(&config))
}

async fn serve_node(config: &Config) -> Result<()> {
    let (node, _) = Node::start(config, None).await?;
    for l in &node.listening {
        println!("{}: {}://{}", l.service, l.service, l.addr);
    }
    if let Some(addr) = node.cluster.cluster_addr {
        println!("cluster: {addr}");
    }
    println!("node: {}", node.cluster.node_id);
    println!("ready");
    let _ = std::io::stdout().flush();
    node::wait_for_signal().await;
    node.shutdown().await;
    Ok(())
}

fn join(config_path: &Path, token: &str, peer: &str) -> Result<()> {
    let config = Config::load(config_path).map_err(anyhow::Error::msg)?;
    if node::is_initialised(&config.node.data_dir) {
        bail!(
            "{} already belongs to a cluster; run it with `pigeonair run`",
            config.node.data_dir.display()
        );
    }
    std::fs::create_dir_all(&config.node.data_dir)?;
    runtime()?.block_on(async {
        let grant = Cluster::join(&config, token, peer).await?;
        println!(
            "joined cluster {} as node {}",
            grant.cluster_id, grant.node_id
        );
        serve_node(&config).await
    })
}

fn parse_duration(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad duration {s:?} (use 30m, 1h, 2d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => bail!("bad duration unit {other:?} (use s, m, h or d)"),
    };
    Ok(n * mult)
}

fn reply_error(reply: AdminReply) -> String {
    match reply {
        AdminReply::Error(e) => e,
        other => format!("unexpected reply: {other:?}"),
    }
}

fn queue(command: QueueCommand) -> Result<()> {
    use pigeonair::mail::admin::{QueueReply, QueueRequest};
    let (config, request, json) = match command {
        QueueCommand::List { config, json } => (config, QueueRequest::List, json),
        QueueCommand::Retry { id, config } => (config, QueueRequest::Retry(id), false),
        QueueCommand::Delete { id, config } => (config, QueueRequest::Delete(id), false),
    };
    let reply: QueueReply = node_call(&config, pigeonair::mail::admin::SERVICE, &request)?;
    match reply {
        QueueReply::List(list) if json => println!("{}", serde_json::to_string_pretty(&list)?),
        QueueReply::List(list) => {
            if list.is_empty() {
                println!("the queue is empty");
            }
            for env in &list {
                let sender = if env.sender.is_empty() {
                    "<>"
                } else {
                    env.sender.as_str()
                };
                println!(
                    "{}  {} bytes  from {sender}  accepted {}",
                    env.id, env.size, env.received_at
                );
                for r in env.recipients.iter().filter(|r| !r.done) {
                    println!(
                        "    {}  attempts {}  next {}  {}",
                        r.rcpt,
                        r.attempts,
                        r.next_attempt,
                        r.last_error.as_deref().unwrap_or("not tried yet")
                    );
                }
            }
        }
        QueueReply::Retried(n) => println!("{n} recipients due now"),
        QueueReply::Deleted(id) => println!("deleted {id}"),
        QueueReply::Error(e) => bail!("{e}"),
    }
    Ok(())
}

/// Send one request to one of the local node's cluster-port services with the node's
/// own certificate.
fn node_call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    config_path: &Path,
    service: Service,
    req: &Req,
) -> Result<Resp> {
    let config = Config::load(config_path).map_err(anyhow::Error::msg)?;
    let identity = PkiFiles::new(&config.node.data_dir)
        .load_identity()
        .map_err(|e| anyhow::anyhow!("{e} (run this on a node, with its configuration)"))?;
    runtime()?.block_on(async {
        let dialer = Dialer::new(&identity).map_err(|e| anyhow::anyhow!("{e}"))?;
        let addr = config.cluster.advertised();
        dialer
            .call::<_, Resp>(&addr, service, req)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the node at {addr}: {e}"))
    })
}

/// Send one request to the local node's cluster port with the node's own certificate.
fn admin_call(config_path: &Path, req: AdminRequest) -> Result<AdminReply> {
    node_call(config_path, Service::STATUS, &req)
}

fn status(config_path: &Path, json: bool) -> Result<()> {
    let reply = admin_call(config_path, AdminRequest::ClusterStatus)?;
    let AdminReply::Cluster(members) = reply else {
        bail!("{}", reply_error(reply))
    };
    if json {
        let list: Vec<serde_json::Value> = members
            .iter()
            .map(|(id, addr, s)| match s {
                Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                Err(e) => serde_json::json!({ "id": id, "addr": addr, "error": e }),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "nodes": list }))?
        );
        return Ok(());
    }
    let leader_last = members
        .iter()
        .filter_map(|(_, _, s)| s.as_ref().ok())
        .find(|s| s.role == "leader")
        .map(|s| s.last_log);
    println!(
        "{:<4} {:<10} {:<22} {:<10} {:>5} {:>6} {:>8} {:>5}  DIGEST",
        "ID", "NAME", "ADDRESS", "ROLE", "TERM", "LEADER", "APPLIED", "LAG"
    );
    for (id, addr, s) in &members {
        match s {
            Ok(s) => {
                let lag = leader_last
                    .map(|l| l.saturating_sub(s.applied).to_string())
                    .unwrap_or_else(|| "?".into());
                let leader = s
                    .leader
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<4} {:<10} {:<22} {:<10} {:>5} {:>6} {:>8} {:>5}  {}",
                    s.id,
                    s.name,
                    s.addr,
                    s.role,
                    s.term,
                    leader,
                    s.applied,
                    lag,
                    &s.digest[..s.digest.len().min(16)]
                );
            }
            Err(e) => println!("{id:<4} {:<10} {addr:<22} unreachable: {e}", "?"),
        }
    }
    Ok(())
}

fn drill(config_path: &Path, json: bool, settle_secs: u64) -> Result<()> {
    let config = Config::load(config_path).map_err(anyhow::Error::msg)?;
    let identity = PkiFiles::new(&config.node.data_dir)
        .load_identity()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = runtime()?
        .block_on(pigeonair::cluster::drill::run(
            &config,
            &identity,
            std::time::Duration::from_secs(settle_secs),
        ))
        .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    if report.failed_reads > 0 || !report.digests_agree {
        bail!("the drill found problems");
    }
    Ok(())
}

fn import(file: &Path, config_path: &Path, batch: usize) -> Result<()> {
    let config = Config::load(config_path).map_err(anyhow::Error::msg)?;
    let input = BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    );
    let started = Instant::now();
    let result = offline::import(&config, input, batch, |n| {
        eprint!("\rimported {n} records");
    });
    eprintln!();
    let n = result.with_context(|| file.display().to_string())?;
    println!(
        "imported {n} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn export(
    config_path: &Path,
    base: Option<String>,
    operational: bool,
    output: Option<PathBuf>,
) -> Result<()> {
    let config = Config::load(config_path).map_err(anyhow::Error::msg)?;
    let mut out: Box<dyn Write> = match &output {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let n = offline::export(&config, base.as_deref(), operational, &mut out)?;
    if output.is_some() {
        eprintln!("exported {n} entries");
    }
    Ok(())
}

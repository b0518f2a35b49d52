//! Cluster-wide settings: what is the same on every node lives in the replicated
//! directory, as `pigeonairSetting: key=value` values of `cn=cluster,ou=system,<suffix>`,
//! so a joining node inherits them. A node's own TOML file holds the local defaults
//! that these override.
//!
//! Keys: `voterTarget`, `index` (`index=mail:eq,sub`, one value per attribute; when any
//! is present they replace the local index list, applied at the node's next start),
//! `acl` (the whole access rule text, replacing the defaults), and the LDAP limits
//! `ldap.sizeLimit`, `ldap.timeLimitSecs`, `ldap.maxConnectionsPerAddress`,
//! `ldap.idleTimeoutSecs`, `ldap.bindDelayMaxMs`, and the SMTP limits
//! `smtp.maxMessageBytes`, `smtp.maxRecipients`, `smtp.maxConnectionsPerAddress`,
//! `smtp.commandTimeoutSecs`, `smtp.dataTimeoutSecs`, and the POP3 limits
//! `pop3.maxConnectionsPerAddress`, `pop3.idleTimeoutSecs`, and the IMAP limits
//! `imap.maxConnectionsPerAddress`, `imap.maxConnectionsPerAccount`,
//! `imap.idleTimeoutSecs`, `imap.maxLineBytes`, `imap.maxLiteralBytes` (applied live to
//! new sessions). One login
//! throttle, `ldap.bindDelayMaxMs`, slows failed logins of every protocol. Each service's keys
//! share a prefix and are parsed into that service's part of [`ClusterSettings`].
//!
//! A node reads the settings at start and publishes every change on a
//! [`SettingsWatch`]; each service subscribes and applies its own part live.

use std::collections::BTreeMap;

use std::sync::Arc;

use tokio::sync::watch;

use crate::directory::Directory;

/// The settings in force, as every service of a node sees them: the receiving half of
/// the node's settings channel. `borrow()` gives the current settings, `changed()`
/// waits for the next change.
pub type SettingsWatch = watch::Receiver<Arc<ClusterSettings>>;

/// The DN of the settings entry.
pub fn settings_dn(suffix: &str) -> String {
    format!("cn=cluster,ou=system,{suffix}")
}

/// The settings found in the directory (absent keys: use the local defaults). Keys
/// with a service's prefix (`ldap.`) belong to that service's part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Target number of voters.
    pub voter_target: Option<usize>,
    /// Indexed attributes (name to `eq,pres,sub`).
    pub indexes: Option<BTreeMap<String, String>>,
    /// Access rules in their text form.
    pub acl: Option<String>,
    /// The LDAP front end's keys (`ldap.*`).
    pub ldap: LdapSettings,
    /// The SMTP service's keys (`smtp.*`).
    pub smtp: SmtpSettings,
    /// The POP3 service's keys (`pop3.*`).
    pub pop3: Pop3Settings,
    /// The IMAP service's keys (`imap.*`).
    pub imap: ImapSettings,
}

/// The IMAP service's cluster-wide keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImapSettings {
    /// Connections per client address (`imap.maxConnectionsPerAddress`).
    pub max_connections_per_address: Option<usize>,
    /// Sessions per account on this node (`imap.maxConnectionsPerAccount`).
    pub max_connections_per_account: Option<usize>,
    /// How long a silent client is kept, in seconds (`imap.idleTimeoutSecs`; at least
    /// 1800, as RFC 3501 asks).
    pub idle_timeout_secs: Option<u64>,
    /// Longest command line, literals excluded (`imap.maxLineBytes`).
    pub max_line_bytes: Option<u32>,
    /// Largest literal, APPEND included (`imap.maxLiteralBytes`).
    pub max_literal_bytes: Option<u32>,
}

impl ImapSettings {
    /// Take one key (without its `imap.` prefix); false when it is not an IMAP key.
    fn set(&mut self, key: &str, value: &str) -> bool {
        let full = format!("imap.{key}");
        match key {
            "maxConnectionsPerAddress" => {
                self.max_connections_per_address = number(&full, value).map(|n| n as usize)
            }
            "maxConnectionsPerAccount" => {
                self.max_connections_per_account = number(&full, value).map(|n| n as usize)
            }
            "idleTimeoutSecs" => self.idle_timeout_secs = number(&full, value),
            "maxLineBytes" => self.max_line_bytes = number(&full, value).map(|n| n as u32),
            "maxLiteralBytes" => self.max_literal_bytes = number(&full, value).map(|n| n as u32),
            _ => return false,
        }
        true
    }
}

/// The POP3 service's cluster-wide keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pop3Settings {
    /// Connections per client address (`pop3.maxConnectionsPerAddress`).
    pub max_connections_per_address: Option<usize>,
    /// How long a silent client is kept, in seconds (`pop3.idleTimeoutSecs`).
    pub idle_timeout_secs: Option<u64>,
}

impl Pop3Settings {
    /// Take one key (without its `pop3.` prefix); false when it is not a POP3 key.
    fn set(&mut self, key: &str, value: &str) -> bool {
        let full = format!("pop3.{key}");
        match key {
            "maxConnectionsPerAddress" => {
                self.max_connections_per_address = number(&full, value).map(|n| n as usize)
            }
            "idleTimeoutSecs" => self.idle_timeout_secs = number(&full, value),
            _ => return false,
        }
        true
    }
}

/// The SMTP service's cluster-wide keys (absent: the node's `[mail]` values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmtpSettings {
    /// Largest message in bytes (`smtp.maxMessageBytes`).
    pub max_message_bytes: Option<usize>,
    /// Most recipients per message (`smtp.maxRecipients`).
    pub max_recipients: Option<usize>,
    /// Connections per client address (`smtp.maxConnectionsPerAddress`).
    pub max_connections_per_address: Option<usize>,
    /// Command timeout in seconds (`smtp.commandTimeoutSecs`).
    pub command_timeout_secs: Option<u64>,
    /// Timeout inside DATA/BDAT in seconds (`smtp.dataTimeoutSecs`).
    pub data_timeout_secs: Option<u64>,
}

impl SmtpSettings {
    /// Take one key (without its `smtp.` prefix); false when it is not an SMTP key.
    fn set(&mut self, key: &str, value: &str) -> bool {
        let full = format!("smtp.{key}");
        let n = || number(&full, value);
        match key {
            "maxMessageBytes" => self.max_message_bytes = n().map(|n| n as usize),
            "maxRecipients" => self.max_recipients = n().map(|n| n as usize),
            "maxConnectionsPerAddress" => {
                self.max_connections_per_address = n().map(|n| n as usize)
            }
            "commandTimeoutSecs" => self.command_timeout_secs = n(),
            "dataTimeoutSecs" => self.data_timeout_secs = n(),
            _ => return false,
        }
        true
    }
}

/// The LDAP front end's cluster-wide keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LdapSettings {
    /// Search size limit for non-administrators (`ldap.sizeLimit`).
    pub size_limit: Option<usize>,
    /// Search time limit in seconds (`ldap.timeLimitSecs`).
    pub time_limit_secs: Option<u64>,
    /// Connections per client address (`ldap.maxConnectionsPerAddress`).
    pub max_connections_per_address: Option<usize>,
    /// Idle timeout in seconds (`ldap.idleTimeoutSecs`).
    pub idle_timeout_secs: Option<u64>,
    /// Longest failed-bind delay in milliseconds (`ldap.bindDelayMaxMs`).
    pub bind_delay_max_ms: Option<u64>,
}

/// A number-valued key's value, or `None` (logged) when it is not a number.
fn number(key: &str, value: &str) -> Option<u64> {
    let n = value.trim().parse().ok();
    if n.is_none() {
        tracing::warn!(
            setting = key,
            value,
            "cluster setting is not a number; ignored"
        );
    }
    n
}

impl LdapSettings {
    /// Take one key (without its `ldap.` prefix); false when it is not an LDAP key.
    fn set(&mut self, key: &str, value: &str) -> bool {
        let full = |k: &str| format!("ldap.{k}");
        match key {
            "sizeLimit" => self.size_limit = number(&full(key), value).map(|n| n as usize),
            "timeLimitSecs" => self.time_limit_secs = number(&full(key), value),
            "maxConnectionsPerAddress" => {
                self.max_connections_per_address = number(&full(key), value).map(|n| n as usize)
            }
            "idleTimeoutSecs" => self.idle_timeout_secs = number(&full(key), value),
            "bindDelayMaxMs" => self.bind_delay_max_ms = number(&full(key), value),
            _ => return false,
        }
        true
    }
}

impl ClusterSettings {
    /// Parse `key=value` strings; unknown keys and bad numbers are logged and skipped.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> ClusterSettings {
        let mut s = ClusterSettings::default();
        for v in values {
            let Some((key, value)) = v.split_once('=') else {
                tracing::warn!(setting = v, "cluster setting without '='; ignored");
                continue;
            };
            let key = key.trim();
            let known = match key.split_once('.') {
                Some(("ldap", rest)) => s.ldap.set(rest, value),
                Some(("smtp", rest)) => s.smtp.set(rest, value),
                Some(("pop3", rest)) => s.pop3.set(rest, value),
                Some(("imap", rest)) => s.imap.set(rest, value),
                Some(_) => false,
                None => match key {
                    "voterTarget" => {
                        s.voter_target = number(key, value).map(|n| n as usize);
                        true
                    }
                    "index" => {
                        if let Some((attr, kinds)) = value.split_once(':') {
                            s.indexes
                                .get_or_insert_with(BTreeMap::new)
                                .insert(attr.trim().to_string(), kinds.trim().to_string());
                        }
                        true
                    }
                    "acl" => {
                        s.acl = Some(value.to_string());
                        true
                    }
                    _ => false,
                },
            };
            if !known {
                tracing::warn!(setting = key, "unknown cluster setting; ignored");
            }
        }
        s
    }

    /// Read the settings from a directory replica (empty when the entry is missing).
    pub fn read(dir: &Directory) -> ClusterSettings {
        let dn = settings_dn(&dir.suffix().to_string());
        let entry = dir.view().ok().and_then(|v| v.find(&dn).ok().flatten());
        let values: Vec<String> = entry
            .and_then(|e| {
                e.get("pigeonairSetting").map(|a| {
                    a.values
                        .iter()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect()
                })
            })
            .unwrap_or_default();
        ClusterSettings::parse(values.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys_and_skips_the_rest() {
        let s = ClusterSettings::parse([
            "voterTarget=5",
            "index=mail:eq,sub",
            "index=uid:eq",
            "ldap.sizeLimit=10",
            "acl=to * by * read",
            "bogus=1",
            "ldap.timeLimitSecs=x",
            "smtp.maxRecipients=3",
            "noequals",
        ]);
        assert_eq!(s.voter_target, Some(5));
        assert_eq!(s.indexes.as_ref().unwrap().get("mail").unwrap(), "eq,sub");
        assert_eq!(s.indexes.as_ref().unwrap().len(), 2);
        assert_eq!(s.ldap.size_limit, Some(10));
        assert_eq!(s.acl.as_deref(), Some("to * by * read"));
        assert_eq!(s.ldap.time_limit_secs, None);
        assert_eq!(s.smtp.max_recipients, Some(3));
    }
}

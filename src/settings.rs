//! Cluster-wide settings: what is the same on every node lives in the replicated
//! directory, as `pigeonairSetting: key=value` values of `cn=cluster,ou=system,<suffix>`,
//! so a joining node inherits them. A node's own TOML file holds the local defaults
//! that these override.
//!
//! Keys: `voterTarget`, `index` (`index=mail:eq,sub`, one value per attribute; when any
//! is present they replace the local index list, applied at the node's next start),
//! `acl` (the whole access rule text, replacing the defaults), and the LDAP limits
//! `ldap.sizeLimit`, `ldap.timeLimitSecs`, `ldap.maxConnectionsPerAddress`,
//! `ldap.idleTimeoutSecs`, `ldap.bindDelayMaxMs` (applied live).

use std::collections::BTreeMap;

use crate::directory::Directory;

/// The DN of the settings entry.
pub fn settings_dn(suffix: &str) -> String {
    format!("cn=cluster,ou=system,{suffix}")
}

/// The settings found in the directory (absent keys: use the local defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Target number of voters.
    pub voter_target: Option<usize>,
    /// Indexed attributes (name to `eq,pres,sub`).
    pub indexes: Option<BTreeMap<String, String>>,
    /// Access rules in their text form.
    pub acl: Option<String>,
    /// Search size limit for non-administrators.
    pub size_limit: Option<usize>,
    /// Search time limit in seconds.
    pub time_limit_secs: Option<u64>,
    /// Connections per client address.
    pub max_connections_per_address: Option<usize>,
    /// Idle timeout in seconds.
    pub idle_timeout_secs: Option<u64>,
    /// Longest failed-bind delay in milliseconds.
    pub bind_delay_max_ms: Option<u64>,
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
            let num = |what: &str| -> Option<u64> {
                let n = value.trim().parse().ok();
                if n.is_none() {
                    tracing::warn!(
                        setting = what,
                        value,
                        "cluster setting is not a number; ignored"
                    );
                }
                n
            };
            match key.trim() {
                "voterTarget" => s.voter_target = num(key).map(|n| n as usize),
                "index" => {
                    if let Some((attr, kinds)) = value.split_once(':') {
                        s.indexes
                            .get_or_insert_with(BTreeMap::new)
                            .insert(attr.trim().to_string(), kinds.trim().to_string());
                    }
                }
                "acl" => s.acl = Some(value.to_string()),
                "ldap.sizeLimit" => s.size_limit = num(key).map(|n| n as usize),
                "ldap.timeLimitSecs" => s.time_limit_secs = num(key),
                "ldap.maxConnectionsPerAddress" => {
                    s.max_connections_per_address = num(key).map(|n| n as usize)
                }
                "ldap.idleTimeoutSecs" => s.idle_timeout_secs = num(key),
                "ldap.bindDelayMaxMs" => s.bind_delay_max_ms = num(key),
                other => tracing::warn!(setting = other, "unknown cluster setting; ignored"),
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
            "noequals",
        ]);
        assert_eq!(s.voter_target, Some(5));
        assert_eq!(s.indexes.as_ref().unwrap().get("mail").unwrap(), "eq,sub");
        assert_eq!(s.indexes.as_ref().unwrap().len(), 2);
        assert_eq!(s.size_limit, Some(10));
        assert_eq!(s.acl.as_deref(), Some("to * by * read"));
        assert_eq!(s.time_limit_secs, None);
    }
}

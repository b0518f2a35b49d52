//! Maildir file names: unique across processes and hosts sharing one root, and what a
//! name says about its message (id, size, flags).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Flags;

/// Deliveries made by this process so far: the `Q` field.
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// A name no other process on any host has used or will use:
/// `<secs>.M<usecs>P<pid>Q<counter>R<random>.<host>,S=<size>`. `host` must already be
/// escaped by [`escape_host`]. Microseconds are zero-padded so that names made in one
/// second sort in the order they were made.
pub(super) fn unique(host: &str, size: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let counter = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    // Each RandomState is seeded from the OS once per thread and then stepped, so the
    // hash differs per call and cannot be predicted by another process.
    let mut random = RandomState::new().build_hasher();
    random.write_u128(now.as_nanos());
    random.write_u64(counter);
    format!(
        "{}.M{:06}P{}Q{}R{:016x}.{},S={}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        counter,
        random.finish(),
        host,
        size
    )
}

/// The name of a repeatable delivery: `<secs>.M<usecs>K<token>.<host>,S=<size>`, the
/// same for every attempt with the same `token` (a queue id, alphanumeric) and
/// acceptance time, so that a second attempt finds the first one's file.
pub(super) fn keyed(at_micros: u64, token: &str, host: &str, size: u64) -> String {
    format!(
        "{}.M{:06}K{}.{},S={}",
        at_micros / 1_000_000,
        at_micros % 1_000_000,
        token,
        host,
        size
    )
}

/// `raw` made safe inside a file name: `/`, `:` and `,` as `\057`, `\072`, `\054`
/// (as Dovecot writes them), `localhost` when empty.
pub(super) fn escape_host(raw: &str) -> String {
    if raw.is_empty() {
        return "localhost".to_owned();
    }
    raw.replace('/', r"\057")
        .replace(':', r"\072")
        .replace(',', r"\054")
}

/// What a message file name says.
pub(super) struct NameParts<'a> {
    /// The name before the info (`:2,...`): stable across flag changes.
    pub id: &'a str,
    /// The `S=` size, when the name has one.
    pub size: Option<u64>,
    /// The flags after `:2,` (none when the name has no such info).
    pub flags: Flags,
}

/// Split a message file name into id, size and flags.
pub(super) fn parse(name: &str) -> NameParts<'_> {
    let (id, info) = name.split_once(':').unwrap_or((name, ""));
    let size = id
        .split(',')
        .skip(1)
        .find_map(|field| field.strip_prefix("S=")?.parse().ok());
    let flags = info
        .strip_prefix("2,")
        .map(Flags::from_letters)
        .unwrap_or_default();
    NameParts { id, size, flags }
}

/// The delivery time a name starts with, in seconds; names that do not start with one
/// sort last.
pub(super) fn seconds(id: &str) -> u64 {
    id.split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

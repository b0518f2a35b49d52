//! Abuse limits shared by every protocol: failed logins (LDAP binds, SMTP AUTH, IMAP
//! and POP3 logins) slow down per login and per client address, with a delay that
//! grows with each failure and resets on success; connections are capped per client
//! address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failures are forgotten after this long without another.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The first failure's delay; each further failure doubles it, up to the maximum.
const FIRST_DELAY: Duration = Duration::from_millis(25);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Tracks failed logins. A login is whatever names the account tried: a normalised
/// DN for LDAP, an address or user name for the mail protocols.
#[derive(Debug)]
pub struct LoginThrottle {
    max_delay_ms: std::sync::atomic::AtomicU64,
    by_login: Mutex<HashMap<String, Failures>>,
    by_addr: Mutex<HashMap<IpAddr, Failures>>,
}

fn delay_for(count: u32, max: Duration) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    let exp = (count - 1).min(16);
    (FIRST_DELAY * 2u32.pow(exp)).min(max)
}

impl LoginThrottle {
    /// A throttle whose delay never exceeds `max_delay`.
    pub fn new(max_delay: Duration) -> LoginThrottle {
        LoginThrottle {
            max_delay_ms: std::sync::atomic::AtomicU64::new(max_delay.as_millis() as u64),
            by_login: Mutex::new(HashMap::new()),
            by_addr: Mutex::new(HashMap::new()),
        }
    }

    /// Change the longest delay.
    pub fn set_max_delay(&self, max_delay: Duration) {
        self.max_delay_ms.store(
            max_delay.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn count<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, Failures>>, key: &K) -> u32 {
        let map = map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|f| f.last.elapsed() < FORGET_AFTER)
            .map(|f| f.count)
            .unwrap_or(0)
    }

    /// How long to wait before checking a password for this login from this address.
    pub fn delay(&self, login: &str, addr: IpAddr) -> Duration {
        let n =
            Self::count(&self.by_login, &login.to_string()).max(Self::count(&self.by_addr, &addr));
        delay_for(
            n,
            Duration::from_millis(self.max_delay_ms.load(std::sync::atomic::Ordering::Relaxed)),
        )
    }

    fn bump<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, Failures>>, key: K) {
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, f| f.last.elapsed() < FORGET_AFTER);
        }
        let e = map.entry(key).or_insert(Failures {
            count: 0,
            last: Instant::now(),
        });
        if e.last.elapsed() >= FORGET_AFTER {
            e.count = 0;
        }
        e.count = e.count.saturating_add(1);
        e.last = Instant::now();
    }

    /// Record a failed login.
    pub fn failed(&self, login: &str, addr: IpAddr) {
        Self::bump(&self.by_login, login.to_string());
        Self::bump(&self.by_addr, addr);
    }

    /// Record a successful login: both counters start over.
    pub fn succeeded(&self, login: &str, addr: IpAddr) {
        self.by_login
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(login);
        self.by_addr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
    }
}

/// Counts open connections per client address.
#[derive(Debug, Default)]
pub struct AddressSlots {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's hold on its address slot; released on drop.
pub struct AddressSlot {
    slots: Arc<AddressSlots>,
    addr: IpAddr,
}

impl AddressSlots {
    /// Take a slot for `addr`, or `None` when it already has `cap` connections.
    pub fn take(self: &Arc<Self>, addr: IpAddr, cap: usize) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(addr).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            slots: self.clone(),
            addr,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_reset() {
        let t = LoginThrottle::new(Duration::from_secs(2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(t.delay("k", ip), Duration::ZERO);
        t.failed("k", ip);
        let first = t.delay("k", ip);
        for _ in 0..9 {
            t.failed("k", ip);
        }
        assert!(t.delay("k", ip) > first);
        assert!(t.delay("k", ip) <= Duration::from_secs(2));
        // Another login from the same address is slowed too; another address for this login too.
        assert!(t.delay("other", ip) > Duration::ZERO);
        assert!(t.delay("k", "192.0.2.2".parse().unwrap()) > Duration::ZERO);
        t.succeeded("k", ip);
        assert_eq!(t.delay("k", ip), Duration::ZERO);
    }

    #[test]
    fn address_slots_cap_and_release() {
        let s = Arc::new(AddressSlots::default());
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let a = s.take(ip, 2).unwrap();
        let _b = s.take(ip, 2).unwrap();
        assert!(s.take(ip, 2).is_none());
        drop(a);
        assert!(s.take(ip, 2).is_some());
    }
}

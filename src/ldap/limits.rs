//! Abuse limits: failed binds slow down per bound DN and per client address, with a
//! delay that grows with each failure and resets on success; connections are capped
//! per client address.

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

/// Tracks failed binds.
#[derive(Debug)]
pub struct BindThrottle {
    max_delay_ms: std::sync::atomic::AtomicU64,
    by_dn: Mutex<HashMap<String, Failures>>,
    by_addr: Mutex<HashMap<IpAddr, Failures>>,
}

fn delay_for(count: u32, max: Duration) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    let exp = (count - 1).min(16);
    (FIRST_DELAY * 2u32.pow(exp)).min(max)
}

impl BindThrottle {
    /// A throttle whose delay never exceeds `max_delay`.
    pub fn new(max_delay: Duration) -> BindThrottle {
        BindThrottle {
            max_delay_ms: std::sync::atomic::AtomicU64::new(max_delay.as_millis() as u64),
            by_dn: Mutex::new(HashMap::new()),
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

    /// How long to wait before checking a bind for this DN key from this address.
    pub fn delay(&self, dn_key: &str, addr: IpAddr) -> Duration {
        let n =
            Self::count(&self.by_dn, &dn_key.to_string()).max(Self::count(&self.by_addr, &addr));
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

    /// Record a failed bind.
    pub fn failed(&self, dn_key: &str, addr: IpAddr) {
        Self::bump(&self.by_dn, dn_key.to_string());
        Self::bump(&self.by_addr, addr);
    }

    /// Record a successful bind: both counters start over.
    pub fn succeeded(&self, dn_key: &str, addr: IpAddr) {
        self.by_dn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(dn_key);
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

/// Password hashing and verification (argon2id: tens of milliseconds of CPU each) run
/// on the blocking pool, at most one per CPU at a time. A storm of binds then waits its
/// turn here instead of crowding out the node's other threads, its Raft heartbeats
/// among them.
pub struct HashSlots(Arc<tokio::sync::Semaphore>);

impl HashSlots {
    /// At most `n` (at least one) at a time.
    pub fn new(n: usize) -> HashSlots {
        HashSlots(Arc::new(tokio::sync::Semaphore::new(n.max(1))))
    }

    /// One per CPU.
    pub fn per_cpu() -> HashSlots {
        HashSlots::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Run `f` on the blocking pool once a slot is free; the slot is held until `f`
    /// returns, even if the caller stops waiting. `None` if `f` panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let slot = self.0.clone().acquire_owned().await.ok()?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            f()
        })
        .await
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_reset() {
        let t = BindThrottle::new(Duration::from_secs(2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(t.delay("k", ip), Duration::ZERO);
        t.failed("k", ip);
        let first = t.delay("k", ip);
        for _ in 0..9 {
            t.failed("k", ip);
        }
        assert!(t.delay("k", ip) > first);
        assert!(t.delay("k", ip) <= Duration::from_secs(2));
        // Another DN from the same address is slowed too; another address for this DN too.
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

    /// However many ask at once, at most the slots' number of hashes run together, and
    /// every one of them runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_runs_at_most_its_slots_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let slots = Arc::new(HashSlots::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (slots, running, most) = (slots.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    slots
                        .run(move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            let hash =
                                crate::directory::password::hash(format!("pw{i}").as_bytes());
                            running.fetch_sub(1, Ordering::SeqCst);
                            hash
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            let hash = t.await.unwrap().expect("the hash ran");
            assert!(crate::directory::password::is_hashed(&hash));
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} hashes ran at once");
    }
}

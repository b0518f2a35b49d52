//! Password hashing and verification off the async threads, a bounded number at once.

use std::sync::Arc;

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

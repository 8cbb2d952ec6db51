//! The one place password key derivation runs (Argon2; doc/architecture.md,
//! "Limits": every resource a client can make the server spend is bounded). Each Argon2 run takes tens of
//! MiB and hundreds of milliseconds of one core by design, so a burst of
//! logins must not start them all at once: at most `threads` run at a
//! time, at most `queue` more wait, and any further one is refused at
//! once ([`KdfBusy`]; IMAP answers `NO [UNAVAILABLE]`).
//!
//! Invariants:
//! - The permits travel into the blocking closure: a caller that gives up
//!   (its connection closed) does not free a slot while its Argon2 still
//!   runs, so memory is bounded by `threads` runs whatever clients do.
//! - Admission never waits: a full queue is an immediate refusal, so a
//!   flood costs the server neither memory nor time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;

/// The pool is full: too many key derivations are running or waiting.
#[derive(Debug, thiserror::Error)]
#[error("too many password checks at once; try again shortly")]
pub struct KdfBusy;

/// A bounded pool for Argon2 runs; cheap to share (`Arc`).
#[derive(Debug)]
pub struct KdfPool {
    /// One permit per run at a time.
    running: Arc<Semaphore>,
    /// One permit per run admitted (running or waiting).
    admitted: Arc<Semaphore>,
    threads: usize,
    queue: usize,
    /// Runs started since the pool was made, for metrics and tests.
    runs: Arc<AtomicU64>,
}

impl KdfPool {
    /// Waiting runs per thread in the default pool: with Argon2 at a few
    /// hundred milliseconds, the last one admitted waits a few seconds.
    pub const DEFAULT_QUEUE_PER_THREAD: usize = 8;

    /// A pool running `threads` derivations at a time with `queue` more
    /// waiting (`threads` at least 1).
    pub fn new(threads: usize, queue: usize) -> Arc<KdfPool> {
        let threads = threads.max(1);
        Arc::new(KdfPool {
            running: Arc::new(Semaphore::new(threads)),
            admitted: Arc::new(Semaphore::new(threads + queue)),
            threads,
            queue,
            runs: Arc::new(AtomicU64::new(0)),
        })
    }

    /// One thread per core, [`Self::DEFAULT_QUEUE_PER_THREAD`] waiting per
    /// thread.
    pub fn with_default_size() -> Arc<KdfPool> {
        let threads = Self::default_threads();
        KdfPool::new(threads, threads * Self::DEFAULT_QUEUE_PER_THREAD)
    }

    /// The number of cores (1 if unknown).
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Derivations started so far.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Runs `f` (an Argon2 derivation) on the blocking pool when a thread
    /// is free; refused at once if `threads + queue` are already admitted.
    /// A panic in `f` is resumed here.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, KdfBusy> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| KdfBusy)?;
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphores are never closed");
        let runs = self.runs.clone();
        let task = tokio::task::spawn_blocking(move || {
            // Held until the derivation ends, even if the caller is gone.
            let _permits = (admitted, running);
            runs.fetch_add(1, Ordering::Relaxed);
            f()
        });
        match task.await {
            Ok(value) => Ok(value),
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Cancelled: the runtime is shutting down.
                Err(_) => Err(KdfBusy),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;

    /// Blocks the calling (blocking-pool) thread until `gate` opens.
    fn wait_for(gate: &AtomicBool) {
        while !gate.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_at_most_threads_at_once_and_refuses_past_the_queue() {
        let pool = KdfPool::new(2, 3);
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        // Holds every run until the test has seen the whole burst admitted.
        let gate = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (pool, now, peak, gate) = (pool.clone(), now.clone(), peak.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                pool.run(move || {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    wait_for(&gate);
                    now.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        // Wait until all five are admitted (two running, three waiting).
        while pool.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(pool.run(|| ()).await, Err(KdfBusy)));
        // Two run (and wait at the gate); no third starts meanwhile.
        while now.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        gate.store(true, Ordering::SeqCst);
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(pool.runs(), 5);
        // Everything was given back.
        pool.run(|| ()).await.unwrap();
        assert_eq!(pool.admitted.available_permits(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_giving_up_keeps_its_slot_until_the_run_ends() {
        let pool = KdfPool::new(1, 0);
        let gate = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let (p, g, s) = (pool.clone(), gate.clone(), started.clone());
        let task = tokio::spawn(async move {
            p.run(move || {
                s.fetch_add(1, Ordering::SeqCst);
                wait_for(&g);
            })
            .await
        });
        while started.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        assert!(
            matches!(pool.run(|| ()).await, Err(KdfBusy)),
            "the abandoned run still holds its slot"
        );
        gate.store(true, Ordering::SeqCst);
        while pool.admitted.available_permits() == 0 {
            tokio::task::yield_now().await;
        }
        pool.run(|| ()).await.unwrap();
    }
}

//! The configuration in force: one [`Policy`] at a time, replaced whole by a reload
//! ([`crate::ops::reload`]). Sessions hold the policy they started a batch with and check one
//! atomic generation number before each batch, so a request is never routed by one
//! configuration and counted or refused by another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::config::Settings;
use crate::policy::keyspace::PerKeyspace;

/// One configuration, whole: what a batch of requests is judged by.
pub(crate) struct Policy {
    /// 1 for the configuration the process started with, one more per applied reload.
    pub generation: u64,
    pub settings: Settings,
    /// Refusals and degraded replies per keyspace, indexed like `settings.keyspaces`.
    pub per_keyspace: PerKeyspace,
}

/// The policy in force, replaced whole by a reload.
pub(crate) struct Live {
    current: RwLock<Arc<Policy>>,
    /// The current policy's generation, read without the lock on every batch.
    generation: AtomicU64,
    /// One reload at a time.
    reloading: Mutex<()>,
}

impl Live {
    pub(crate) fn new(settings: Settings) -> Live {
        let per_keyspace = PerKeyspace::new(&settings.keyspaces);
        Live {
            current: RwLock::new(Arc::new(Policy {
                generation: 1,
                settings,
                per_keyspace,
            })),
            generation: AtomicU64::new(1),
            reloading: Mutex::new(()),
        }
    }

    /// The policy in force.
    pub(crate) fn current(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The generation of the policy in force: a session whose policy is older takes the new
    /// one before its next batch.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Holds off every other reload while the guard lives.
    pub(crate) fn one_at_a_time(&self) -> MutexGuard<'_, ()> {
        self.reloading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `policy` in force: sessions take it before their next batch.
    pub(crate) fn install(&self, policy: Policy) {
        let generation = policy.generation;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        self.generation.store(generation, Ordering::Release);
    }
}

//! Shared sandbox state: accepted keys, the live (atomically updatable) config, the fault queue
//! and the request journal.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::SandboxConfig;
use crate::fault::FaultQueue;
use crate::journal::Journal;
use crate::tasks::TaskStore;
use crate::text::fnv64;

pub struct SandboxState {
    pub keys: Vec<String>,
    pub live: LiveConfig,
    pub faults: FaultQueue,
    pub journal: Journal,
    /// Suno tasks by id.
    pub suno: TaskStore<crate::suno::Task>,
    /// Midjourney tasks by id.
    pub midjourney: TaskStore<crate::midjourney::Task>,
    pub fal: TaskStore<crate::fal::Task>,
    pub jimeng: TaskStore<crate::jimeng::Task>,
    /// Udio tasks by id.
    pub udio: TaskStore<crate::udio::Task>,
    /// Luma generations by id.
    pub luma: TaskStore<crate::luma::Generation>,
    /// Kling tasks by id, and the key pair its JWTs are checked with.
    pub kling: TaskStore<crate::kling::Task>,
    pub kling_access_key: String,
    pub kling_secret_key: String,
    calls: AtomicU64,
}

/// Default `task_ms`: how long a Suno task takes from submission to its terminal status.
pub const DEFAULT_TASK_MS: u64 = 3000;

impl SandboxState {
    pub fn new(config: SandboxConfig) -> Self {
        Self {
            keys: config.keys,
            live: LiveConfig {
                latency_ms: AtomicU64::new(config.latency_ms),
                stream_chunks: AtomicUsize::new(config.stream_chunks),
                chunk_delay_ms: AtomicU64::new(config.chunk_delay_ms),
                task_ms: AtomicU64::new(DEFAULT_TASK_MS),
            },
            faults: FaultQueue::default(),
            journal: Journal::default(),
            suno: TaskStore::default(),
            midjourney: TaskStore::default(),
            fal: TaskStore::default(),
            jimeng: TaskStore::default(),
            udio: TaskStore::default(),
            luma: TaskStore::default(),
            kling: TaskStore::default(),
            kling_access_key: config.kling_access_key,
            kling_secret_key: config.kling_secret_key,
            calls: AtomicU64::new(0),
        }
    }

    /// A seed for the ids of one call: the body hash mixed with a per-process call counter, so
    /// two identical requests still get distinct ids while a run stays reproducible.
    pub fn call_seed(&self, body: &[u8]) -> u64 {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        fnv64(body) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// The part of the config that `PUT /__sandbox/config` may change while running.
pub struct LiveConfig {
    pub latency_ms: AtomicU64,
    pub stream_chunks: AtomicUsize,
    pub chunk_delay_ms: AtomicU64,
    /// Duration of a Suno task (submission to `SUCCESS`/`FAILURE`), read at submission.
    pub task_ms: AtomicU64,
}

#[derive(Serialize)]
pub struct LiveConfigView {
    pub latency_ms: u64,
    pub stream_chunks: usize,
    pub chunk_delay_ms: u64,
    pub task_ms: u64,
}

impl LiveConfig {
    pub fn view(&self) -> LiveConfigView {
        LiveConfigView {
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
            stream_chunks: self.stream_chunks.load(Ordering::Relaxed),
            chunk_delay_ms: self.chunk_delay_ms.load(Ordering::Relaxed),
            task_ms: self.task_ms.load(Ordering::Relaxed),
        }
    }
}

/// Unix milliseconds, for task timelines.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Unix seconds, for `created` fields.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

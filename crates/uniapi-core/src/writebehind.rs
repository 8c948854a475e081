//! Write-behind: the request path hands records to a queue and moves on; one task writes them to SQL in
//! batches — on a tick (`FLUSH_INTERVAL`), when a batch is full, when someone waits for a flush, and once
//! more on close. Request logs and ledger entries both go through it; they differ only in their SQL and in
//! what a database failure may cost (logs may be dropped after retries, money never).
//!
//! A record is pushed onto a locked `Vec` and nobody is woken for it: the writer is woken only when a
//! batch is full, a flush is asked for, or the queue closes, and otherwise finds the records on its tick.
//! (A channel woke the writer task for every record, twice a request: measured with callgrind, see
//! `bench/README.md`.)

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::store::StoreError;

/// The longest a record waits in memory: what a kill can lose.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// Records queued past which new requests wait ([`Queue::room`]) until the writer catches up: when the
/// database cannot take what the requests produce (measured: SQLite on the request path's core at
/// 256 connections), the backlog would otherwise grow by ~1.5 KB a request for as long as the load
/// lasts. Waiting requests bound memory and slow the load to what the database takes.
pub const HIGH_WATER: usize = 8_192;

/// Where a batch goes and how hard to try.
pub trait Destination: Send + Sync + 'static {
    type Record: Send + Sync + 'static;
    /// Records written per transaction at most.
    const BATCH: usize;
    /// Records queued at most; past it new ones are dropped (and counted). `None`: never drop.
    const CAPACITY: Option<usize>;
    /// Attempts before a failing batch is dropped; `None`: retry until the database takes it.
    const ATTEMPTS: Option<u32>;
    const WHAT: &'static str;
    fn write(&self, batch: &[Self::Record]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What producers have handed over and the writer has not taken yet.
struct Pending<R> {
    records: Vec<R>,
    /// Flushes waiting for every record pushed before them.
    waiters: Vec<oneshot::Sender<()>>,
    /// `Writer::finish` was called: write what is here, then stop.
    closing: bool,
    /// The writer took its last records: later ones are dropped.
    closed: bool,
}

struct Shared<R> {
    pending: Mutex<Pending<R>>,
    /// Wakes the writer before its tick.
    wake: Notify,
    /// Records pushed and not yet written (or dropped by the writer).
    queued: AtomicUsize,
    /// Woken whenever the writer has written a batch.
    drained: Notify,
    dropped: AtomicUsize,
}

impl<R> Shared<R> {
    fn new() -> Arc<Shared<R>> {
        Arc::new(Shared {
            pending: Mutex::new(Pending {
                records: Vec::new(),
                waiters: Vec::new(),
                closing: false,
                closed: false,
            }),
            wake: Notify::new(),
            queued: AtomicUsize::new(0),
            drained: Notify::new(),
            dropped: AtomicUsize::new(0),
        })
    }

    fn pending(&self) -> MutexGuard<'_, Pending<R>> {
        // the lock is held for a push or a swap, which cannot leave the vectors half changed
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The producers' side: cheap to clone, never blocks.
pub struct Queue<R> {
    shared: Arc<Shared<R>>,
    /// Records at which the writer is woken rather than left to its tick.
    batch: usize,
    capacity: Option<usize>,
    what: &'static str,
}

impl<R> Clone for Queue<R> {
    fn clone(&self) -> Self {
        Queue {
            shared: self.shared.clone(),
            batch: self.batch,
            capacity: self.capacity,
            what: self.what,
        }
    }
}

/// The writer task; `finish` writes what is queued and stops it.
pub struct Writer<R> {
    shared: Arc<Shared<R>>,
    handle: tokio::task::JoinHandle<()>,
}

pub fn spawn<D: Destination>(destination: D) -> (Queue<D::Record>, Writer<D::Record>) {
    let shared = Shared::new();
    let handle = tokio::spawn(run(destination, shared.clone()));
    let queue = Queue {
        shared: shared.clone(),
        batch: D::BATCH,
        capacity: D::CAPACITY,
        what: D::WHAT,
    };
    (queue, Writer { shared, handle })
}

impl<R: Send + 'static> Queue<R> {
    pub fn push(&self, record: R) {
        let shared = &*self.shared;
        let full = self
            .capacity
            .is_some_and(|c| shared.queued.load(Ordering::Relaxed) >= c);
        if !full {
            // counted before the writer can see it, since the writer subtracts once it is written
            shared.queued.fetch_add(1, Ordering::Relaxed);
            let mut pending = shared.pending();
            if !pending.closed {
                pending.records.push(record);
                let wake = pending.records.len() == self.batch;
                drop(pending);
                if wake {
                    shared.wake.notify_one();
                }
                return;
            }
            drop(pending);
            shared.queued.fetch_sub(1, Ordering::Relaxed);
        }
        let n = shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::error!(
                dropped = n,
                what = self.what,
                "write-behind queue full or closed; records dropped"
            );
        }
    }

    /// Returns at once unless [`HIGH_WATER`] records are waiting for the database; then waits until the
    /// writer has brought the backlog below it.
    pub async fn room(&self) {
        let shared = &*self.shared;
        while shared.queued.load(Ordering::Relaxed) >= HIGH_WATER {
            // registered before the check: a batch written in between still wakes it
            let drained = shared.drained.notified();
            if shared.queued.load(Ordering::Relaxed) < HIGH_WATER {
                return;
            }
            drained.await;
        }
    }

    /// Waits until everything pushed before this call is in the database.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending();
            if pending.closed {
                return;
            }
            pending.waiters.push(tx);
        }
        self.shared.wake.notify_one();
        let _ = rx.await;
    }
}

impl<R> Writer<R> {
    /// Writes out everything queued so far and stops, even while queues are still alive.
    pub async fn finish(self) {
        self.shared.pending().closing = true;
        self.shared.wake.notify_one();
        let _ = self.handle.await;
    }
}

/// A taken vector keeps its allocation for the next swap unless a burst made it this many batches big.
const KEEP_BATCHES: usize = 4;

async fn run<D: Destination>(destination: D, shared: Arc<Shared<D::Record>>) {
    let mut spare: Vec<D::Record> = Vec::with_capacity(D::BATCH);
    let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = ticker.tick() => {}
        }
        // everyone else gone (queues and the writer handle): nothing more can come
        let orphaned = Arc::strong_count(&shared) == 1;
        let (mut records, waiters, last) = {
            let mut pending = shared.pending();
            let last = pending.closing || orphaned;
            pending.closed = last;
            std::mem::swap(&mut pending.records, &mut spare);
            (spare, std::mem::take(&mut pending.waiters), last)
        };
        for batch in records.chunks(D::BATCH) {
            write(&destination, batch).await;
            shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            shared.drained.notify_waiters();
        }
        records.clear();
        if records.capacity() > KEEP_BATCHES * D::BATCH {
            records = Vec::with_capacity(D::BATCH);
        }
        spare = records;
        for done in waiters {
            let _ = done.send(());
        }
        if last {
            return;
        }
    }
}

async fn write<D: Destination>(destination: &D, batch: &[D::Record]) {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match destination.write(batch).await {
            Ok(()) => return,
            Err(e) if D::ATTEMPTS.is_some_and(|max| attempt >= max) => {
                tracing::error!(error = %e, records = batch.len(), what = D::WHAT, "dropping a batch after repeated database errors");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, records = batch.len(), attempt, what = D::WHAT, "writing a batch failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A queue whose records a test reads back instead of writing them.
#[cfg(test)]
pub fn captured<R: Send + 'static>() -> (Queue<R>, Captured<R>) {
    let shared = Shared::new();
    let queue = Queue {
        shared: shared.clone(),
        batch: usize::MAX,
        capacity: None,
        what: "test",
    };
    (queue, Captured(shared))
}

#[cfg(test)]
pub struct Captured<R>(Arc<Shared<R>>);

#[cfg(test)]
impl<R> Captured<R> {
    pub fn drain(&mut self) -> Vec<R> {
        let records = std::mem::take(&mut self.0.pending().records);
        self.0.queued.fetch_sub(records.len(), Ordering::Relaxed);
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database that remembers the size of every batch it took, and takes one only when the gate
    /// (if there is one) lets it.
    struct Recorder<const BATCH: usize> {
        gate: Option<Arc<tokio::sync::Semaphore>>,
        batches: Arc<Mutex<Vec<usize>>>,
    }

    impl<const BATCH: usize> Recorder<BATCH> {
        fn new(gate: Option<Arc<tokio::sync::Semaphore>>) -> (Self, Arc<Mutex<Vec<usize>>>) {
            let batches = Arc::new(Mutex::new(Vec::new()));
            let recorder = Recorder {
                gate,
                batches: batches.clone(),
            };
            (recorder, batches)
        }
    }

    impl<const BATCH: usize> Destination for Recorder<BATCH> {
        type Record = u32;
        const BATCH: usize = BATCH;
        const CAPACITY: Option<usize> = None;
        const ATTEMPTS: Option<u32> = None;
        const WHAT: &'static str = "test records";

        async fn write(&self, batch: &[u32]) -> Result<(), StoreError> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("the gate stays open").forget();
            }
            self.batches.lock().expect("not poisoned").push(batch.len());
            Ok(())
        }
    }

    #[tokio::test]
    async fn requests_wait_for_room_while_the_database_is_far_behind() {
        let open = Arc::new(tokio::sync::Semaphore::new(0));
        let (recorder, batches) = Recorder::<512>::new(Some(open.clone()));
        let (queue, writer) = spawn(recorder);
        let written = || batches.lock().expect("not poisoned").iter().sum::<usize>();
        // below the high-water mark nobody waits
        for n in 0..(HIGH_WATER as u32 - 1) {
            queue.push(n);
        }
        tokio::time::timeout(Duration::from_millis(50), queue.room())
            .await
            .expect("room below the high-water mark");
        // at the mark, a request waits while the database takes nothing
        queue.push(0);
        queue.push(0);
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.room().await }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!waiting.is_finished(), "the backlog is at the mark");
        // the database takes batches again: the waiter goes on once the backlog is under the mark
        open.add_permits(1_000);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("room once the writer catches up")
            .unwrap();
        writer.finish().await;
        assert_eq!(written(), HIGH_WATER + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn records_wait_for_the_tick_a_full_batch_or_a_flush() {
        let (recorder, batches) = Recorder::<4>::new(None);
        let written = || batches.lock().expect("not poisoned").clone();
        let (queue, writer) = spawn(recorder);
        tokio::time::sleep(Duration::from_millis(1)).await; // the first, immediate tick passes
        // fewer than a batch: nobody is woken, the tick takes them
        queue.push(1);
        queue.push(2);
        tokio::time::sleep(FLUSH_INTERVAL / 2).await;
        assert_eq!(written(), Vec::<usize>::new());
        tokio::time::sleep(FLUSH_INTERVAL).await;
        assert_eq!(written(), vec![2]);
        // a full batch wakes the writer before the tick
        for n in 0..4 {
            queue.push(n);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(written(), vec![2, 4]);
        // a flush waits for exactly what was pushed before it, written in batches
        for n in 0..6 {
            queue.push(n);
        }
        tokio::time::timeout(Duration::from_millis(5), queue.flush())
            .await
            .expect("a flush does not wait for the tick");
        assert_eq!(written(), vec![2, 4, 4, 2]);
        // finishing writes what is left; the closed queue drops what comes after, counted
        queue.push(9);
        writer.finish().await;
        assert_eq!(written(), vec![2, 4, 4, 2, 1]);
        queue.push(10);
        assert_eq!(queue.shared.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(queue.shared.queued.load(Ordering::Relaxed), 0);
        tokio::time::timeout(Duration::from_millis(5), queue.flush())
            .await
            .expect("a flush on a closed queue returns at once");
    }
}

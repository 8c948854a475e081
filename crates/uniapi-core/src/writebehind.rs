//! Write-behind: the request path hands records to a queue and moves on; one task writes them to SQL in
//! batches — on a tick (`FLUSH_INTERVAL`), when a batch is full, when someone waits for a flush, and once
//! more on close. Request logs and ledger entries both go through it; they differ only in their SQL and in
//! what a database failure may cost (logs may be dropped after retries, money never).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

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

enum Message<R> {
    Record(R),
    Flush(oneshot::Sender<()>),
    Close,
}

/// The producers' side: cheap to clone, never blocks.
pub struct Queue<R> {
    tx: mpsc::UnboundedSender<Message<R>>,
    queued: Arc<AtomicUsize>,
    /// Woken whenever the writer has written a batch.
    drained: Arc<Notify>,
    dropped: Arc<AtomicUsize>,
    capacity: Option<usize>,
    what: &'static str,
}

impl<R> Clone for Queue<R> {
    fn clone(&self) -> Self {
        Queue {
            tx: self.tx.clone(),
            queued: self.queued.clone(),
            drained: self.drained.clone(),
            dropped: self.dropped.clone(),
            capacity: self.capacity,
            what: self.what,
        }
    }
}

/// The writer task; `finish` writes what is queued and stops it.
pub struct Writer<R> {
    tx: mpsc::UnboundedSender<Message<R>>,
    handle: tokio::task::JoinHandle<()>,
}

pub fn spawn<D: Destination>(destination: D) -> (Queue<D::Record>, Writer<D::Record>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(Notify::new());
    let handle = tokio::spawn(run(destination, rx, queued.clone(), drained.clone()));
    let queue = Queue {
        tx: tx.clone(),
        queued,
        drained,
        dropped: Default::default(),
        capacity: D::CAPACITY,
        what: D::WHAT,
    };
    (queue, Writer { tx, handle })
}

impl<R: Send + 'static> Queue<R> {
    pub fn push(&self, record: R) {
        let full = self
            .capacity
            .is_some_and(|c| self.queued.load(Ordering::Relaxed) >= c);
        if full || self.tx.send(Message::Record(record)).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(
                    dropped = n,
                    what = self.what,
                    "write-behind queue full or closed; records dropped"
                );
            }
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns at once unless [`HIGH_WATER`] records are waiting for the database; then waits until the
    /// writer has brought the backlog below it.
    pub async fn room(&self) {
        while self.queued.load(Ordering::Relaxed) >= HIGH_WATER {
            // registered before the check: a batch written in between still wakes it
            let drained = self.drained.notified();
            if self.queued.load(Ordering::Relaxed) < HIGH_WATER {
                return;
            }
            drained.await;
        }
    }

    /// Waits until everything pushed before this call is in the database.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

impl<R> Writer<R> {
    /// Writes out everything queued so far and stops, even while queues are still alive.
    pub async fn finish(self) {
        let _ = self.tx.send(Message::Close);
        let _ = self.handle.await;
    }
}

async fn run<D: Destination>(
    destination: D,
    mut rx: mpsc::UnboundedReceiver<Message<D::Record>>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) {
    let mut batch: Vec<D::Record> = Vec::with_capacity(D::BATCH);
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closed = false;
    while !closed {
        let due = tokio::select! {
            message = rx.recv() => match message {
                Some(Message::Record(record)) => { batch.push(record); false }
                Some(Message::Flush(done)) => { waiters.push(done); true }
                Some(Message::Close) | None => { closed = true; true }
            },
            _ = ticker.tick() => true,
        };
        if !(due || batch.len() >= D::BATCH) {
            continue;
        }
        // write everything queued up to now, a batch at a time
        loop {
            while batch.len() < D::BATCH {
                match rx.try_recv() {
                    Ok(Message::Record(record)) => batch.push(record),
                    Ok(Message::Flush(done)) => waiters.push(done),
                    Ok(Message::Close) => closed = true,
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            write(&destination, &batch).await;
            queued.fetch_sub(batch.len(), Ordering::Relaxed);
            drained.notify_waiters();
            batch.clear();
        }
        for done in waiters.drain(..) {
            let _ = done.send(());
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
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Queue {
        tx,
        queued: Default::default(),
        drained: Default::default(),
        dropped: Default::default(),
        capacity: None,
        what: "test",
    };
    (queue, Captured(rx))
}

#[cfg(test)]
pub struct Captured<R>(mpsc::UnboundedReceiver<Message<R>>);

#[cfg(test)]
impl<R> Captured<R> {
    pub fn drain(&mut self) -> Vec<R> {
        let mut out = Vec::new();
        while let Ok(message) = self.0.try_recv() {
            if let Message::Record(record) = message {
                out.push(record);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database that takes batches only while the test lets it.
    struct Gated {
        open: Arc<tokio::sync::Semaphore>,
        written: Arc<AtomicUsize>,
    }

    impl Destination for Gated {
        type Record = u32;
        const BATCH: usize = 512;
        const CAPACITY: Option<usize> = None;
        const ATTEMPTS: Option<u32> = None;
        const WHAT: &'static str = "test records";

        async fn write(&self, batch: &[u32]) -> Result<(), StoreError> {
            self.open
                .acquire()
                .await
                .expect("the gate stays open")
                .forget();
            self.written.fetch_add(batch.len(), Ordering::Relaxed);
            Ok(())
        }
    }

    #[tokio::test]
    async fn requests_wait_for_room_while_the_database_is_far_behind() {
        let open = Arc::new(tokio::sync::Semaphore::new(0));
        let written = Arc::new(AtomicUsize::new(0));
        let (queue, writer) = spawn(Gated {
            open: open.clone(),
            written: written.clone(),
        });
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
        assert_eq!(written.load(Ordering::Relaxed), HIGH_WATER + 1);
    }
}

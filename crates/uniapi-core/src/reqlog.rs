//! The request-log writer: the request path hands a record to a channel and moves on; one task writes
//! records to SQL in batches. On a clean shutdown every queued record is flushed; a kill loses at most
//! what arrived since the last flush (one `FLUSH_INTERVAL`).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::Store;
use crate::store::logs::RequestLog;

pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
const BATCH: usize = 500;
/// Past this many queued records new ones are dropped (and counted) rather than grow memory without bound.
const QUEUE: usize = 100_000;

enum Message {
    Log(Box<RequestLog>),
    Flush(oneshot::Sender<()>),
    /// Write what is queued and stop; records sent later are dropped.
    Close,
}

#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<Message>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

pub struct LogWriter {
    tx: mpsc::Sender<Message>,
    handle: tokio::task::JoinHandle<()>,
}

impl LogSink {
    pub fn spawn(store: Store) -> (LogSink, LogWriter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(run(store, rx));
        (
            LogSink {
                tx: tx.clone(),
                dropped: Default::default(),
            },
            LogWriter { tx, handle },
        )
    }

    pub fn record(&self, log: RequestLog) {
        if self.tx.try_send(Message::Log(Box::new(log))).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "request-log queue full or closed; records dropped"
                );
            }
        }
    }

    /// Waits until everything recorded before this call is in the database.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

impl LogWriter {
    /// Writes out everything queued so far and stops the writer, even while sinks are still alive.
    pub async fn finish(self) {
        let _ = self.tx.send(Message::Close).await;
        let _ = self.handle.await;
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Message>) {
    let mut batch: Vec<RequestLog> = Vec::with_capacity(BATCH);
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closed = tokio::select! {
            message = rx.recv() => match message {
                Some(Message::Log(log)) => { batch.push(*log); false }
                Some(Message::Flush(done)) => { waiters.push(done); false }
                Some(Message::Close) | None => true,
            },
            _ = ticker.tick() => { write(&store, &mut batch).await; false }
        };
        if closed || batch.len() >= BATCH || !waiters.is_empty() {
            // take whatever else is already queued before writing
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(Message::Log(log)) => batch.push(*log),
                    Ok(Message::Flush(done)) => waiters.push(done),
                    Ok(Message::Close) | Err(_) => break,
                }
            }
            write(&store, &mut batch).await;
            if batch.is_empty() {
                for done in waiters.drain(..) {
                    let _ = done.send(());
                }
            }
        }
        if closed && batch.is_empty() {
            return;
        }
    }
}

async fn write(store: &Store, batch: &mut Vec<RequestLog>) {
    if batch.is_empty() {
        return;
    }
    for attempt in 0..3u64 {
        match store.insert_logs(batch).await {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, rows = batch.len(), attempt, "writing request logs failed");
                tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            }
        }
    }
    tracing::error!(
        rows = batch.len(),
        "request logs dropped after repeated database errors"
    );
    batch.clear();
}

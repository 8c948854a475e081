//! The request-log writer: the request path hands a record over and moves on; records reach SQL in
//! batches through `writebehind`. A clean shutdown writes every queued record; a kill loses at most
//! one `FLUSH_INTERVAL`. Logs are worth less than memory: past 100,000 queued records new ones are
//! dropped, and a batch the database refuses three times is dropped (both are logged).

use crate::store::logs::RequestLog;
use crate::store::{Store, StoreError};
use crate::writebehind::{self, Destination, Queue, Writer};

pub use crate::writebehind::FLUSH_INTERVAL;

struct Logs(Store);

impl Destination for Logs {
    type Record = RequestLog;
    /// A full batch is what the store writes in its long statements (`store::LARGE_BATCH`).
    const BATCH: usize = crate::store::LARGE_BATCH;
    const CAPACITY: Option<usize> = Some(100_000);
    const ATTEMPTS: Option<u32> = Some(3);
    const WHAT: &'static str = "request logs";

    async fn write(&self, batch: &[RequestLog]) -> Result<(), StoreError> {
        self.0.insert_logs(batch).await
    }
}

#[derive(Clone)]
pub struct LogSink(Queue<RequestLog>);

pub type LogWriter = Writer<RequestLog>;

impl LogSink {
    pub fn spawn(store: Store) -> (LogSink, LogWriter) {
        let (queue, writer) = writebehind::spawn(Logs(store));
        (LogSink(queue), writer)
    }

    pub fn record(&self, log: RequestLog) {
        self.0.push(log);
    }

    /// Waits until everything recorded before this call is in the database.
    pub async fn flush(&self) {
        self.0.flush().await;
    }

    /// Waits while the database is far behind the logs (see [`crate::writebehind::HIGH_WATER`]).
    pub async fn room(&self) {
        self.0.room().await;
    }
}

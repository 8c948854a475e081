//! `AppState`: a cheap clone of the shared parts every handler needs.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::billing::ledger::Ledger;
use crate::billing::limits::Limiter;
use crate::catalog::{Catalog, HealthBook};
use crate::config::Config;
use crate::reqlog::LogSink;
use crate::store::{Store, StoreResult};
use crate::upstream::Upstream;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: Config,
    pub store: Store,
    pub catalog: ArcSwap<Catalog>,
    pub health: HealthBook,
    pub upstream: Upstream,
    pub logs: LogSink,
    pub ledger: Arc<Ledger>,
    pub limiter: Limiter,
    /// SHA-256 of the admin key.
    pub admin_key_digest: String,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Where a request that will be logged and charged waits while the database is far behind the
    /// write-behind queues: memory stays bounded and the load slows to what the database takes.
    pub async fn backlog_room(&self) {
        self.logs.room().await;
        self.ledger.room().await;
    }

    pub async fn new(
        config: Config,
        store: Store,
        logs: LogSink,
        ledger: Arc<Ledger>,
        admin_key_digest: String,
    ) -> StoreResult<AppState> {
        let health = HealthBook::default();
        let catalog = Catalog::load(&store, &health).await?;
        let upstream = Upstream::new(&config.routing);
        Ok(AppState(Arc::new(Shared {
            config,
            store,
            catalog: ArcSwap::from_pointee(catalog),
            health,
            upstream,
            logs,
            ledger,
            limiter: Limiter::default(),
            admin_key_digest,
        })))
    }

    /// Rebuilds the in-memory catalog from the store: changes apply to the next request.
    pub async fn reload(&self) -> StoreResult<()> {
        let catalog = Catalog::load(&self.store, &self.health).await?;
        // entries still queued would make stored balances look older than memory; memory stays authoritative
        self.ledger.sync(self.store.openings().await?);
        self.catalog.store(Arc::new(catalog));
        Ok(())
    }
}

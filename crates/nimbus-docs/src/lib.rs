//! Docs: partitioned JSON documents (the Cosmos DB / DynamoDB part). Containers declared in the
//! manifest or made through the API; items with a string `id` unique per partition key value;
//! ETags for optimistic concurrency; patches; transactional batches within a partition; a read
//! feed and a change feed; TTL; queries in a subset of Cosmos DB's SQL dialect, vector search
//! included.
//!
//! Everything is kept as records of `nimbus-store` (`model.rs` says which), so both backends
//! (SQLite, PostgreSQL) behave alike by construction, and the query language is evaluated here,
//! once: the store only narrows the candidates (partition, id, declared index).
//!
//! - `model.rs`: containers, record keys, system properties;
//! - `engine.rs`: the operations (`Docs`);
//! - `patch.rs`: partial updates;
//! - `query/`: the query language (parse → plan → evaluate);
//! - `vectors.rs`: the in-memory vectors behind nearest-neighbour queries;
//! - `api.rs`: the REST API under `/_nimbus/docs`.

mod api;
mod engine;
mod model;
mod patch;
pub mod query;
mod vectors;

pub use api::router;
pub use engine::{BatchOp, Docs, DocsError, MAX_DEPTH, MAX_ITEM_BYTES, PAGE_BYTES, Page, QUERY_TIME_LIMIT};
pub use model::{Container, from_manifest};
pub use patch::PatchOp;

use std::time::Duration;

impl Docs {
    /// The component for the manifest's `[docs]`, with its TTL purger running in the background
    /// (one node at a time, under a lease) until [`Docs::shutdown`].
    pub fn start(manifest: &nimbus_config::Manifest, store: std::sync::Arc<dyn nimbus_store::Store>) -> Self {
        let docs = Docs::new(store, from_manifest(&manifest.docs));
        let purger = docs.clone();
        let holder = nimbus_api::hex(&rand::random::<[u8; 8]>());
        docs.tasks.every("ttl-purger", Duration::from_secs(5), move || {
            let (purger, holder) = (purger.clone(), holder.clone());
            async move { purger.purge_round(&holder).await }
        });
        docs
    }

    /// Stops the TTL purger (a round in progress finishes) within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.tasks.shutdown(grace).await;
    }

    /// One purge round, if this node holds the purge lease.
    async fn purge_round(&self, holder: &str) {
        match self.store.claim("docs-ttl-purge", holder, Duration::from_secs(30)).await {
            Ok(Some(_lease)) => {
                while let Ok(n) = self.purge_expired(500).await {
                    if n == 0 {
                        break;
                    }
                    tracing::debug!(purged = n, "expired items purged");
                }
                if let Err(e) = self.purge_tombstones(500).await {
                    tracing::warn!(error = %e, "cannot purge tombstones");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot claim the TTL purge lease"),
        }
    }
}

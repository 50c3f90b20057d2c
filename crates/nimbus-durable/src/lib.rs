//! Durable orchestrations (the Durable Functions part): code-first, event-sourced workflows that
//! chain activities, fan out and in, wait for timers and external events, and survive crashes.
//!
//! The orchestrator code runs in workers by replay (PROTOCOL.md §7); this crate keeps each
//! instance's append-only history in `nimbus-store`, runs the engine that turns a step's actions
//! into work (activities through the [`nimbus_api::Invoke`] port, timers, sub-orchestrations), and
//! serves the management API.
//!
//! - `model.rs`: the records and their keys;
//! - `engine.rs`: partitions under leases, steps, activities, timers;
//! - `instances.rs`: start, read, list, raise, terminate, purge;
//! - `api.rs`: the REST API under `/_nimbus/durable`.

mod api;
mod engine;
mod instances;
mod model;

use std::sync::Arc;
use std::time::Duration;

pub use engine::DurableError;
pub use instances::{Filter, Listed};
pub use model::{Instance, Status};

/// The component: its engine runs in the background from [`Durable::start`] to
/// [`Durable::shutdown`].
pub struct Durable {
    engine: Arc<engine::Engine>,
    base: String,
}

impl Durable {
    /// Starts the engine. `version` is stamped on the instances started here (`[durable] version`);
    /// `base` is the node's public URL, for the management links.
    pub fn start(
        store: Arc<dyn nimbus_store::Store>,
        invoker: nimbus_api::Invoker,
        version: String,
        base: &str,
    ) -> Self {
        let engine = Arc::new(engine::Engine::new(store, invoker, version));
        engine.tasks.spawn(engine.clone().run());
        Self { engine, base: base.to_owned() }
    }

    /// The management API, for callers that `authenticate` recognises.
    pub fn router(&self, authenticate: nimbus_api::Authenticate) -> axum::Router {
        api::router(self.engine.clone(), authenticate, &self.base)
    }

    /// Stops the engine (steps in flight are abandoned: their inbox stays, so they run again) and
    /// gives up its partitions for another node.
    pub async fn shutdown(&self, grace: Duration) {
        self.engine.tasks.shutdown(grace).await;
        self.engine.release_all().await;
    }

    pub async fn start_instance(
        &self,
        name: &str,
        id: Option<String>,
        input: serde_json::Value,
    ) -> Result<String, DurableError> {
        self.engine.start(name, id, input, None).await
    }

    pub async fn instance(&self, id: &str) -> Result<Instance, DurableError> {
        self.engine.get(id).await
    }

    pub async fn history(&self, id: &str) -> Result<Vec<serde_json::Value>, DurableError> {
        Ok(self.engine.history(id).await?)
    }
}

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
//! - `instances.rs`: start, read, list, raise, terminate, suspend, rewind, restart, purge;
//! - `payloads.rs`: values above 64 KB as blobs, referred to from history;
//! - `api.rs`: the REST API under `/_nimbus/durable`.

mod api;
mod engine;
mod instances;
mod model;
mod payloads;

use std::sync::Arc;
use std::time::Duration;

pub use engine::DurableError;
pub use instances::{Filter, Listed};
pub use model::{Instance, Status, partition};

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
        blobs: nimbus_blob::Blobs,
        invoker: nimbus_api::Invoker,
        version: String,
        base: &str,
    ) -> Self {
        let payloads = payloads::Payloads::new(Some(blobs));
        let engine = Arc::new(engine::Engine::new(store, invoker, version, payloads));
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

    /// The management operations without an engine running: for the CLI, which works on the store
    /// directly (the node serving the app runs what it writes). Starts do not check names here.
    pub fn offline(store: Arc<dyn nimbus_store::Store>, blobs: nimbus_blob::Blobs, version: String) -> Self {
        let payloads = payloads::Payloads::new(Some(blobs));
        let mut engine = engine::Engine::new(store, Arc::new(NoWorkers), version, payloads);
        engine.checks_names = false;
        Self { engine: Arc::new(engine), base: String::new() }
    }

    pub async fn start_instance(
        &self,
        name: &str,
        id: Option<String>,
        input: serde_json::Value,
        version: Option<String>,
    ) -> Result<String, DurableError> {
        self.engine.start(name, id, input, version).await
    }

    /// An instance, its input and output as values (not references to payloads).
    pub async fn instance(&self, id: &str) -> Result<Instance, DurableError> {
        self.engine.get_resolved(id, true).await
    }

    pub async fn list(&self, filter: &Filter, top: usize, continuation: Option<&str>) -> Result<Listed, DurableError> {
        self.engine.list(filter, top, continuation).await
    }

    pub async fn history(&self, id: &str) -> Result<Vec<serde_json::Value>, DurableError> {
        self.engine.get(id).await?;
        Ok(self.engine.history(id).await?)
    }

    pub async fn raise(&self, id: &str, event: &str, data: serde_json::Value) -> Result<(), DurableError> {
        self.engine.raise(id, event, data).await
    }

    pub async fn terminate(&self, id: &str, reason: serde_json::Value) -> Result<(), DurableError> {
        self.engine.terminate(id, reason).await
    }

    pub async fn suspend(&self, id: &str, suspend: bool, reason: serde_json::Value) -> Result<(), DurableError> {
        self.engine.suspend(id, suspend, reason).await
    }

    pub async fn rewind(&self, id: &str, reason: serde_json::Value) -> Result<(), DurableError> {
        self.engine.rewind(id, reason).await
    }

    pub async fn restart(&self, id: &str, new_id: bool) -> Result<String, DurableError> {
        self.engine.restart(id, new_id).await
    }

    pub async fn purge(&self, id: &str) -> Result<(), DurableError> {
        self.engine.purge(id).await
    }
}

/// The invoker of [`Durable::offline`]: no code runs there.
struct NoWorkers;

impl nimbus_api::Invoke for NoWorkers {
    fn invoke(&self, call: nimbus_api::Call) -> nimbus_api::InvokeFuture {
        let function = call.function;
        Box::pin(
            async move { Err(nimbus_api::InvokeError::Unavailable { function, reason: "no workers run here".into() }) },
        )
    }

    fn functions(&self) -> Vec<nimbus_api::Declared> {
        Vec::new()
    }
}

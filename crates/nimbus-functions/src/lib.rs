//! Functions: user code in worker processes (Python, Node.js, or any command serving HTTP on a
//! Unix socket), reached through per-function instance pools that scale by in-flight requests.
//!
//! At start the component writes the SDKs into the data dir, asks each SDK worker for its index
//! (PROTOCOL.md §2), builds the route table, and warms `min_instances`. Its [`Functions::router`]
//! is the node's fallback: it serves function routes and answers a JSON 404 for the rest.

mod access;
mod asynchronous;
mod by_name;
mod cgroup;
mod error;
mod generation;
mod index;
mod instance;
mod invoke;
mod pool;
mod routes;
mod sandbox;
mod sdk;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use nimbus_config::AppConfig;
use nimbus_store::Store;

pub use error::FunctionsError;

use crate::pool::Pool;
use crate::routes::RouteTable;

/// A function as the node serves it.
#[derive(Debug, Clone)]
pub struct FunctionInfo {
    pub name: String,
    pub worker: String,
    pub runtime: &'static str,
    /// What fires it. A command worker is one HTTP function whose trigger names its first route.
    pub trigger: nimbus_api::Trigger,
    /// The route patterns it serves: its HTTP trigger's, every `routes` entry of a command
    /// worker, none for other triggers.
    pub routes: Vec<String>,
}

impl FunctionInfo {
    /// The methods its HTTP trigger takes (empty: all, or not an HTTP function).
    pub fn methods(&self) -> &[String] {
        match &self.trigger {
            nimbus_api::Trigger::Http { methods, .. } => methods,
            _ => &[],
        }
    }
}

pub(crate) struct Target {
    pool: Arc<Pool>,
    /// The function's own timeout; [`Inner::policy`] caps it by the route's.
    timeout: Duration,
    /// How the edge's metrics label requests this function served.
    label: Arc<str>,
    duration: metrics::Histogram,
}

pub(crate) struct Inner {
    list: Vec<FunctionInfo>,
    routes: RouteTable,
    functions: HashMap<String, Target>,
    max_request_body: u64,
    /// The gateway's timeout for routes whose `[[routes]]` entry sets none.
    request_timeout: Duration,
    store: Arc<dyn Store>,
    async_retention: Duration,
    /// Asynchronous invocations running in the background (shutdown waits for them).
    pub(crate) background: std::sync::atomic::AtomicUsize,
}

/// What the `[[routes]]` entry of a request asks of its invocation.
#[derive(Clone, Copy)]
pub(crate) struct Policy {
    pub timeout: Duration,
    /// For asynchronous invocations the gateway's HTTP timeout does not apply; the function's does.
    pub async_timeout: Duration,
    pub respond_async: bool,
    pub max_body: u64,
}

impl Inner {
    fn new(
        routes: RouteTable,
        functions: HashMap<String, Target>,
        list: Vec<FunctionInfo>,
        manifest: &nimbus_config::Manifest,
        store: Arc<dyn Store>,
    ) -> Result<Self, FunctionsError> {
        Ok(Self {
            list,
            routes,
            functions,
            max_request_body: manifest.server.max_request_body.0,
            request_timeout: manifest.server.request_timeout.get(),
            store,
            async_retention: manifest.server.async_retention.get(),
            background: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The route's settings (the gateway's, else the server's defaults) applied to the function:
    /// its own timeout capped by the route's.
    fn policy(&self, target: &Target, route: Option<&nimbus_api::RoutePolicy>) -> Policy {
        let route = route.copied().unwrap_or(nimbus_api::RoutePolicy {
            timeout: self.request_timeout,
            own_timeout: None,
            respond_async: false,
            max_body: self.max_request_body,
            semantic_cache: false,
        });
        Policy {
            timeout: target.timeout.min(route.timeout),
            async_timeout: target.timeout.min(route.own_timeout.unwrap_or(target.timeout)),
            respond_async: route.respond_async,
            max_body: route.max_body,
        }
    }
}

pub struct Functions {
    shared: Arc<Shared>,
    data_dir: PathBuf,
    store: Arc<dyn Store>,
    ids: Arc<AtomicU64>,
    tokens: access::Tokens,
    /// The reaper (scale-in), the sweeper of asynchronous results, and reloads' drains.
    tasks: nimbus_api::Tasks,
    /// Cgroups and confinement of instances, the same for every generation.
    host: generation::Host,
    reloading: tokio::sync::Mutex<()>,
    /// Replaced generations, possibly still draining; closed at shutdown.
    retired: std::sync::Mutex<Vec<Arc<Inner>>>,
}

/// What the router reads per request: the current generation of functions. A reload swaps it.
pub(crate) struct Shared {
    current: RwLock<Arc<Inner>>,
}

impl Shared {
    pub(crate) fn current(&self) -> Arc<Inner> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Functions {
    /// Indexes the app's workers, builds the route table and warms `min_instances`. `worker_user`
    /// is who instances run as when the node runs as root (default `nobody`).
    pub async fn start(
        app: &AppConfig,
        data_dir: &Path,
        store: Arc<dyn Store>,
        worker_user: Option<&str>,
    ) -> Result<Self, FunctionsError> {
        let ids = Arc::new(AtomicU64::new(1));
        let tokens = access::Tokens::default();
        let cgroups = cgroup::Cgroups::open(data_dir, true).map(Arc::new);
        if cgroups.is_none() {
            tracing::warn!(
                "no writable cgroup v2 hierarchy: instances run in their process group only, and processes that \
                 leave it (setsid, double fork) can outlive their instance"
            );
        }
        let sandbox = sandbox::Confinement::new(worker_user)?;
        if !app.manifest.workers.is_empty() {
            tracing::info!("{}", sandbox.describe());
        }
        let host = generation::Host { cgroups, sandbox };
        let inner = Arc::new(generation::build(app, data_dir, store.clone(), ids.clone(), &tokens, &host, true).await?);
        let shared = Arc::new(Shared { current: RwLock::new(inner) });
        let tasks = nimbus_api::Tasks::new("functions");
        let ticking = shared.clone();
        tasks.every("reaper", Duration::from_millis(250), move || {
            for target in ticking.current().functions.values() {
                target.pool.scale_in();
            }
            std::future::ready(())
        });
        let sweeping = shared.clone();
        tasks.every("async-sweeper", Duration::from_secs(60), move || {
            let inner = sweeping.current();
            async move { asynchronous::sweep(&inner).await }
        });
        Ok(Self {
            shared,
            data_dir: data_dir.to_path_buf(),
            store,
            ids,
            tokens,
            tasks,
            host,
            reloading: tokio::sync::Mutex::new(()),
            retired: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The Unix socket on which the node serves the platform API to its workers: the binary
    /// listens there and accepts the tokens [`Functions::worker`] knows.
    pub fn platform_socket(&self) -> PathBuf {
        generation::platform_socket(&generation::socket_dir_path(&self.data_dir))
    }

    /// The worker instance (and so the function, with its grants) a platform token belongs to.
    pub fn worker(&self, token: &str) -> Option<nimbus_api::Principal> {
        self.tokens.check(token)
    }

    /// The functions the node serves, for the banner and the admin API.
    pub fn list(&self) -> Vec<FunctionInfo> {
        self.shared.current().list.clone()
    }

    /// Serves function routes; answers a JSON 404/405 for paths and methods no function takes.
    pub fn router(&self) -> Router {
        Router::new().fallback(invoke::handle).with_state(self.shared.clone())
    }

    /// Invokes functions by name (the [`nimbus_api::Invoke`] port), for the binary to hand to
    /// other components. Follows reloads.
    pub fn invoker(&self) -> nimbus_api::Invoker {
        Arc::new(by_name::ByName { shared: self.shared.clone() })
    }

    /// `GET /_nimbus/invocations/{id}`: the status, then the stored response, of an asynchronous
    /// invocation. Its id is unguessable (128 random bits), so the URL itself is the capability.
    pub fn invocations_router(&self) -> Router {
        Router::new()
            .route("/_nimbus/invocations/{id}", axum::routing::get(asynchronous::status))
            .with_state(self.shared.clone())
    }

    /// Whether some function's route matches `path` (any method), for the gateway's default
    /// policy: a function route no `[[routes]]` entry covers requires a token. Follows reloads.
    pub fn route_probe(&self) -> impl Fn(&str) -> bool + Send + Sync + 'static {
        let shared = self.shared.clone();
        move |path| shared.current().routes.serves(path)
    }

    /// `GET /_nimbus/admin/functions`: each function with its route and its pool's state. The
    /// binary puts it behind the admin token.
    pub fn admin_router(&self) -> Router {
        Router::new()
            .route(
                "/_nimbus/admin/functions",
                axum::routing::get(|axum::extract::State(shared): axum::extract::State<Arc<Shared>>| async move {
                    let inner = shared.current();
                    let functions: Vec<serde_json::Value> = inner
                        .list
                        .iter()
                        .map(|f| {
                            let target = inner.functions.get(&f.name);
                            serde_json::json!({
                                "name": f.name,
                                "worker": f.worker,
                                "runtime": f.runtime,
                                "trigger": f.trigger,
                                "routes": f.routes,
                                "timeoutSeconds": target.map(|t| t.timeout.as_secs_f64()),
                                "pool": target.map(|t| t.pool.stats()),
                            })
                        })
                        .collect();
                    axum::Json(serde_json::json!({ "functions": functions }))
                }),
            )
            .with_state(self.shared.clone())
    }

    /// Re-reads the app's workers (after its files changed): new instances start and take new
    /// requests; the old ones finish what they have in flight or queued, then stop. If the new code
    /// does not index, the old generation keeps serving and the error is returned.
    pub async fn reload(&self, app: &AppConfig) -> Result<Vec<FunctionInfo>, FunctionsError> {
        let _one_at_a_time = self.reloading.lock().await;
        let fresh = Arc::new(
            generation::build(
                app,
                &self.data_dir,
                self.store.clone(),
                self.ids.clone(),
                &self.tokens,
                &self.host,
                false,
            )
            .await?,
        );
        let list = fresh.list.clone();
        let old = std::mem::replace(&mut *self.shared.current.write().unwrap_or_else(|p| p.into_inner()), fresh);
        {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            retired.retain(|generation| generation.functions.values().any(|t| !t.pool.is_closed()));
            retired.push(old.clone());
        }
        self.tasks.spawn_to_end(async move {
            // Requests that read the old generation just before the swap (and asynchronous
            // invocations) hold it: wait until only the retired list and this task do.
            let longest = old.functions.values().map(|t| t.timeout).max().unwrap_or_default();
            let deadline = tokio::time::Instant::now() + longest;
            while Arc::strong_count(&old) > 2 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let drains = old.functions.values().map(|t| t.pool.drain(remaining));
            futures_util::future::join_all(drains).await;
        });
        Ok(list)
    }

    /// Stops every instance, once the server has drained its requests and the asynchronous
    /// invocations still running have finished (at most `grace` in all); then the background
    /// tasks (reaper, sweeper, reloads' drains, which the closed pools end).
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let mut generations = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        generations.push(self.shared.current());
        while generations.iter().any(|g| g.background.load(std::sync::atomic::Ordering::Acquire) > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let closing = generations.iter().flat_map(|g| g.functions.values().map(|t| t.pool.close()));
        futures_util::future::join_all(closing).await;
        self.tasks.shutdown(deadline.saturating_duration_since(tokio::time::Instant::now())).await;
        if let Some(cgroups) = &self.host.cgroups {
            cgroups.remove().await;
        }
    }
}

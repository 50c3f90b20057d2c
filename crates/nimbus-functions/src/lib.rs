//! Functions: user code in worker processes (Python, Node.js, or any command serving HTTP on a
//! Unix socket), reached through per-function instance pools that scale by in-flight requests.
//!
//! At start the component writes the SDKs into the data dir, asks each SDK worker for its index
//! (PROTOCOL.md §2), builds the route table, and warms `min_instances`. Its [`Functions::router`]
//! is the node's fallback: it serves function routes and answers a JSON 404 for the rest.

mod asynchronous;
mod error;
mod instance;
mod invoke;
mod pool;
mod routes;
mod sdk;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use nimbus_config::{AppConfig, FunctionSection, Runtime, WorkerSection};
use nimbus_store::Store;

pub use error::FunctionsError;

use crate::instance::{Instance, LaunchSpec};
use crate::pool::{Limits, Pool};
use crate::routes::RouteTable;

/// Defaults follow Azure Functions Flex Consumption where it has one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DEFAULT_MAX_INSTANCES: u32 = 10;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEFAULT_QUEUE_LIMIT: u32 = 100;
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A function as the node serves it.
#[derive(Debug, Clone)]
pub struct FunctionInfo {
    pub name: String,
    pub worker: String,
    pub runtime: &'static str,
    pub route: String,
    pub methods: Vec<String>,
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
    /// `[[routes]]` entries by path pattern (the "function" of each entry is its index), for their timeouts.
    policies: RouteTable,
    policy_settings: Vec<(Option<Duration>, bool)>,
    /// The gateway's timeout for routes whose `[[routes]]` entry sets none.
    request_timeout: Duration,
    store: Arc<dyn Store>,
    async_retention: Duration,
    /// Asynchronous invocations running in the background (shutdown waits for them).
    pub(crate) background: std::sync::atomic::AtomicUsize,
}

/// What the `[[routes]]` entry of a request asks of its invocation.
pub(crate) struct Policy {
    pub timeout: Duration,
    /// For asynchronous invocations the gateway's HTTP timeout does not apply; the function's does.
    pub async_timeout: Duration,
    pub respond_async: bool,
}

impl Inner {
    fn new(
        routes: RouteTable,
        functions: HashMap<String, Target>,
        list: Vec<FunctionInfo>,
        manifest: &nimbus_config::Manifest,
        store: Arc<dyn Store>,
    ) -> Result<Self, FunctionsError> {
        let mut policies = RouteTable::default();
        let mut policy_settings = Vec::new();
        for (i, route) in manifest.routes.iter().enumerate() {
            policies
                .add(&route.path, &route.methods, &i.to_string())
                .map_err(|e| FunctionsError::Config(format!("routes[{i}]: {e}")))?;
            policy_settings.push((route.timeout.map(|t| t.get()), route.respond_async));
        }
        Ok(Self {
            list,
            routes,
            functions,
            max_request_body: manifest.server.max_request_body.0,
            policies,
            policy_settings,
            request_timeout: manifest.server.request_timeout.get(),
            store,
            async_retention: manifest.server.async_retention.get(),
            background: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The route's settings: the function's own timeout capped by the route's (per-route, else the
    /// gateway default), and whether the route answers asynchronously.
    fn policy(&self, target: &Target, method: &axum::http::Method, path: &str) -> Policy {
        let (route_timeout, respond_async) = match self.policies.find(method, path) {
            routes::Match::Found { function: index, .. } => {
                index.parse::<usize>().ok().and_then(|i| self.policy_settings.get(i).copied()).unwrap_or((None, false))
            }
            _ => (None, false),
        };
        Policy {
            timeout: target.timeout.min(route_timeout.unwrap_or(self.request_timeout)),
            async_timeout: target.timeout.min(route_timeout.unwrap_or(target.timeout)),
            respond_async,
        }
    }
}

pub struct Functions {
    shared: Arc<Shared>,
    data_dir: PathBuf,
    store: Arc<dyn Store>,
    ids: Arc<AtomicU64>,
    reaper: tokio::task::JoinHandle<()>,
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
    /// Indexes the app's workers, builds the route table and warms `min_instances`.
    pub async fn start(app: &AppConfig, data_dir: &Path, store: Arc<dyn Store>) -> Result<Self, FunctionsError> {
        let ids = Arc::new(AtomicU64::new(1));
        let inner = Arc::new(build(app, data_dir, store.clone(), ids.clone(), true).await?);
        let shared = Arc::new(Shared { current: RwLock::new(inner) });
        let ticking = shared.clone();
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut ticks: u64 = 0;
            loop {
                tick.tick().await;
                let inner = ticking.current();
                for target in inner.functions.values() {
                    target.pool.scale_in();
                }
                ticks += 1;
                if ticks % 240 == 1 {
                    tokio::spawn(async move { asynchronous::sweep(&inner).await });
                }
            }
        });
        Ok(Self {
            shared,
            data_dir: data_dir.to_path_buf(),
            store,
            ids,
            reaper,
            reloading: tokio::sync::Mutex::new(()),
            retired: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The functions the node serves, for the banner and the admin API.
    pub fn list(&self) -> Vec<FunctionInfo> {
        self.shared.current().list.clone()
    }

    /// Serves function routes; answers a JSON 404/405 for paths and methods no function takes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/_nimbus/invocations/{id}", axum::routing::get(asynchronous::status))
            .fallback(invoke::handle)
            .with_state(self.shared.clone())
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
                                "route": f.route,
                                "methods": f.methods,
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
        let fresh = Arc::new(build(app, &self.data_dir, self.store.clone(), self.ids.clone(), false).await?);
        let list = fresh.list.clone();
        let old = std::mem::replace(&mut *self.shared.current.write().unwrap_or_else(|p| p.into_inner()), fresh);
        {
            let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            retired.retain(|generation| generation.functions.values().any(|t| !t.pool.is_closed()));
            retired.push(old.clone());
        }
        tokio::spawn(async move {
            // Requests that read the old generation just before the swap (and asynchronous
            // invocations) hold it: wait until only the retired list and this task do.
            let longest = old.functions.values().map(|t| t.timeout).max().unwrap_or_default();
            let deadline = tokio::time::Instant::now() + longest;
            while Arc::strong_count(&old) > 2 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let drains: Vec<_> = old
                .functions
                .values()
                .map(|t| {
                    let pool = t.pool.clone();
                    tokio::spawn(async move { pool.drain(remaining).await })
                })
                .collect();
            for drain in drains {
                let _ = drain.await;
            }
        });
        Ok(list)
    }

    /// Stops every instance, once the server has drained its requests and the asynchronous
    /// invocations still running have finished (at most `grace`).
    pub async fn shutdown(&self, grace: Duration) {
        self.reaper.abort();
        let mut generations = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        generations.push(self.shared.current());
        let deadline = tokio::time::Instant::now() + grace;
        while generations.iter().any(|g| g.background.load(std::sync::atomic::Ordering::Acquire) > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let closing: Vec<Arc<Pool>> =
            generations.iter().flat_map(|g| g.functions.values().map(|t| t.pool.clone())).collect();
        let handles: Vec<_> = closing.into_iter().map(|p| tokio::spawn(async move { p.close().await })).collect();
        for handle in handles {
            let _ = handle.await;
        }
    }
}

/// One generation of functions: index the workers, build routes and pools, warm `min_instances`.
async fn build(
    app: &AppConfig,
    data_dir: &Path,
    store: Arc<dyn Store>,
    ids: Arc<AtomicU64>,
    first: bool,
) -> Result<Inner, FunctionsError> {
    let manifest = &app.manifest;
    let mut routes = RouteTable::default();
    let mut functions = HashMap::new();
    let mut list = Vec::new();
    if manifest.workers.is_empty() {
        check_function_names(&manifest.functions, &list)?;
        return Inner::new(routes, functions, list, manifest, store);
    }

    let socket_dir = socket_dir(data_dir, first)?;
    let sdk = sdk::install(data_dir).map_err(|source| FunctionsError::Io {
        context: format!("cannot write the SDKs into {}", data_dir.display()),
        source,
    })?;
    let mut specs = BTreeMap::new();
    for (name, worker) in &manifest.workers {
        let spec = launch_spec(app, name, worker, &sdk, &socket_dir).await?;
        specs.insert(name.clone(), (spec, worker));
    }

    // Index every SDK worker at once; command workers declare their routes in the manifest.
    let mut indexing = Vec::new();
    for (name, (spec, worker)) in &specs {
        if worker.runtime != Runtime::Command {
            let (name, spec) = (name.clone(), spec.clone());
            let id = format!("{name}-index-{}", ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            indexing.push(tokio::spawn(async move { (name.clone(), index(&spec, &name, &id).await) }));
        }
    }
    let mut indexed = BTreeMap::new();
    for handle in indexing {
        let (name, result) = handle.await.map_err(|e| FunctionsError::Config(format!("indexing failed: {e}")))?;
        indexed.insert(name, result?);
    }
    for (name, (_, worker)) in &specs {
        match worker.runtime {
            Runtime::Command => list.push(FunctionInfo {
                name: name.clone(),
                worker: name.clone(),
                runtime: "command",
                route: worker.routes.join(", "),
                methods: Vec::new(),
            }),
            runtime => {
                for f in indexed.remove(name).unwrap_or_default() {
                    list.push(FunctionInfo {
                        runtime: if runtime == Runtime::Python { "python" } else { "node" },
                        worker: name.clone(),
                        ..f
                    });
                }
            }
        }
    }
    check_function_names(&manifest.functions, &list)?;

    for info in &list {
        let (spec, worker) = &specs[&info.worker];
        let route_patterns: Vec<&str> = if worker.runtime == Runtime::Command {
            worker.routes.iter().map(String::as_str).collect()
        } else {
            vec![info.route.as_str()]
        };
        for pattern in route_patterns {
            routes.add(pattern, &info.methods, &info.name).map_err(FunctionsError::Config)?;
        }
        if functions.contains_key(&info.name) {
            return Err(FunctionsError::Config(format!("function `{}` is declared twice", info.name)));
        }
        let settings = manifest.functions.get(&info.name);
        let limits = limits(settings, worker.runtime);
        let timeout = settings.and_then(|s| s.timeout).map_or(DEFAULT_TIMEOUT, |t| t.get());
        let pool = Pool::new(info.name.clone(), spec.clone(), limits, ids.clone());
        let label = format!("function:{}", info.name).into();
        let duration = metrics::histogram!("nimbus_function_duration_seconds", "function" => info.name.clone());
        functions.insert(info.name.clone(), Target { pool, timeout, label, duration });
    }

    let warming = functions.values().map(|t| t.pool.clone()).collect::<Vec<_>>();
    let warm = warming.iter().map(|p| {
        let p = p.clone();
        tokio::spawn(async move { p.warm().await })
    });
    for handle in warm.collect::<Vec<_>>() {
        let _ = handle.await;
    }
    Inner::new(routes, functions, list, manifest, store)
}

fn check_function_names(
    settings: &BTreeMap<String, FunctionSection>,
    list: &[FunctionInfo],
) -> Result<(), FunctionsError> {
    for name in settings.keys() {
        if !list.iter().any(|f| &f.name == name) {
            let declared = list.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(FunctionsError::Config(format!(
                "[functions.{name}] in nimbus.toml names no function the workers declare (declared: {})",
                if declared.is_empty() { "none" } else { &declared }
            )));
        }
    }
    Ok(())
}

fn limits(settings: Option<&FunctionSection>, runtime: Runtime) -> Limits {
    let default = FunctionSection::default();
    let s = settings.unwrap_or(&default);
    // Python: many small instances, one request each; Node and commands multiplex.
    let concurrency = s.concurrency.unwrap_or(if runtime == Runtime::Python { 1 } else { 16 });
    Limits {
        min: s.min_instances,
        max: s.max_instances.unwrap_or(DEFAULT_MAX_INSTANCES.max(s.min_instances)),
        concurrency,
        idle_timeout: s.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.get()),
        queue_limit: s.queue_limit.unwrap_or(DEFAULT_QUEUE_LIMIT),
        queue_timeout: s.queue_timeout.map_or(DEFAULT_QUEUE_TIMEOUT, |d| d.get()),
    }
}

/// Sockets live in the data dir unless its path is too long for a Unix socket address (108
/// bytes); then in a private folder under /tmp named after it. On the first start, stale sockets of a
/// previous run (which held the same data dir lock) are removed.
fn socket_dir(data_dir: &Path, clean: bool) -> Result<PathBuf, FunctionsError> {
    let preferred = data_dir.join("run");
    let dir = if preferred.as_os_str().len() + 24 < 108 {
        preferred
    } else {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data_dir.hash(&mut h);
        std::env::temp_dir().join(format!("nimbus-{}-{:016x}", nix::unistd::getuid(), h.finish()))
    };
    let io =
        |source| FunctionsError::Io { context: format!("cannot prepare the socket folder {}", dir.display()), source };
    std::fs::create_dir_all(&dir).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    for entry in std::fs::read_dir(&dir).map_err(io)?.flatten() {
        if clean && entry.path().extension().is_some_and(|e| e == "sock") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(dir)
}

async fn launch_spec(
    app: &AppConfig,
    name: &str,
    worker: &WorkerSection,
    sdk: &sdk::SdkPaths,
    socket_dir: &Path,
) -> Result<LaunchSpec, FunctionsError> {
    let mut env: Vec<(String, String)> = Vec::new();
    env.push(("PATH".into(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())));
    for (k, v) in &worker.env {
        env.push((k.clone(), v.value().to_owned()));
    }
    let with_path = |env: &mut Vec<(String, String)>, key: &str, dir: &Path| {
        let dir = dir.display().to_string();
        match env.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = format!("{dir}:{v}"),
            None => env.push((key.to_owned(), dir)),
        }
    };
    let entry = || -> Result<String, FunctionsError> {
        let entry =
            worker.entry.as_ref().ok_or_else(|| FunctionsError::Config(format!("workers.{name}: missing `entry`")))?;
        if !app.dir.join(entry).is_file() {
            return Err(FunctionsError::Config(format!(
                "workers.{name}.entry: {} does not exist in {}",
                entry.display(),
                app.dir.display()
            )));
        }
        Ok(entry.display().to_string())
    };
    let (program, args) = match worker.runtime {
        Runtime::Python => {
            with_path(&mut env, "PYTHONPATH", &sdk.python);
            env.push(("PYTHONUNBUFFERED".into(), "1".into()));
            env.push(("NIMBUS_ENTRY".into(), entry()?));
            let python = interpreter(
                app,
                name,
                worker.python.as_deref(),
                "python3",
                &["-c", "import sys; print(sys.executable)"],
            )
            .await?;
            (python, vec!["-m".to_owned(), "nimbus".to_owned()])
        }
        Runtime::Node => {
            with_path(&mut env, "NODE_PATH", &sdk.node);
            env.push(("NIMBUS_ENTRY".into(), entry()?));
            let node = interpreter(app, name, worker.node.as_deref(), "node", &["-e", "console.log(process.execPath)"])
                .await?;
            (node, vec![sdk.node.join("nimbus/worker.js").display().to_string()])
        }
        Runtime::Command => {
            let (program, args) = worker
                .command
                .split_first()
                .ok_or_else(|| FunctionsError::Config(format!("workers.{name}: missing `command`")))?;
            (PathBuf::from(program), args.to_vec())
        }
    };
    Ok(LaunchSpec {
        worker: name.to_owned(),
        program,
        args,
        env,
        cwd: app.dir.clone(),
        socket_dir: socket_dir.to_path_buf(),
        start_timeout: worker.start_timeout.map_or(START_TIMEOUT, |d| d.get()),
    })
}

/// The interpreter's real path, resolved once: version-manager shims on PATH cost tens of
/// milliseconds on every start.
async fn interpreter(
    app: &AppConfig,
    worker: &str,
    configured: Option<&Path>,
    default: &str,
    probe: &[&str],
) -> Result<PathBuf, FunctionsError> {
    let candidate = match configured {
        Some(p) if p.components().count() > 1 || p.is_absolute() => app.dir.join(p),
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(default),
    };
    let out =
        tokio::process::Command::new(&candidate).args(probe).current_dir(&app.dir).output().await.map_err(|e| {
            FunctionsError::Start {
                worker: worker.to_owned(),
                reason: format!("cannot run {}: {e}", candidate.display()),
            }
        })?;
    let resolved = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || resolved.is_empty() {
        return Err(FunctionsError::Start {
            worker: worker.to_owned(),
            reason: format!(
                "{} did not report its path: {}",
                candidate.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(PathBuf::from(resolved))
}

/// Starts a short-lived instance and asks it which functions it declares (PROTOCOL.md §2).
async fn index(spec: &LaunchSpec, worker: &str, id: &str) -> Result<Vec<FunctionInfo>, FunctionsError> {
    let instance = Instance::start(spec, id, None)
        .await
        .map_err(|e| FunctionsError::Start { worker: worker.to_owned(), reason: e.to_string() })?;
    let answer = instance.get_json("/_nimbus/worker/index").await;
    instance.stop().await;
    let answer = answer.map_err(|reason| FunctionsError::Index { worker: worker.to_owned(), reason })?;
    let bad = |reason: String| FunctionsError::Index { worker: worker.to_owned(), reason };
    if answer.get("protocol").and_then(|p| p.as_u64()) != Some(1) {
        return Err(bad(format!("unsupported protocol {:?} (this host speaks 1)", answer.get("protocol"))));
    }
    let functions =
        answer.get("functions").and_then(|f| f.as_array()).ok_or_else(|| bad("no `functions` list".into()))?;
    let mut out = Vec::new();
    for f in functions {
        let name = f.get("name").and_then(|n| n.as_str()).ok_or_else(|| bad("a function without a name".into()))?;
        let trigger = f.get("trigger").ok_or_else(|| bad(format!("function `{name}` has no trigger")))?;
        if trigger.get("type").and_then(|t| t.as_str()) != Some("http") {
            tracing::warn!(worker, function = name, "trigger type not served yet; skipping");
            continue;
        }
        let route =
            trigger.get("route").and_then(|r| r.as_str()).ok_or_else(|| bad(format!("`{name}` has no route")))?;
        let methods = trigger
            .get("methods")
            .and_then(|m| m.as_array())
            .map(|m| m.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        out.push(FunctionInfo {
            name: name.to_owned(),
            worker: worker.to_owned(),
            runtime: "",
            route: route.to_owned(),
            methods,
        });
    }
    Ok(out)
}

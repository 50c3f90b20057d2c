//! Building one generation of functions: resolve each worker's interpreter and launch spec, index
//! the SDK workers, build the route table and one pool per function, warm `min_instances`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use nimbus_api::{Declared, Trigger};
use nimbus_config::{AppConfig, FunctionSection, Runtime, WorkerSection};
use nimbus_store::Store;

use crate::access::{Access, Tokens};
use crate::instance::{Instance, LaunchSpec};
use crate::pool::{Limits, Pool};
use crate::routes::RouteTable;
use crate::sandbox::{Confinement, Rules, WorkerUser};
use crate::{FunctionInfo, FunctionsError, Inner, Target, sdk};

/// Defaults follow Azure Functions Flex Consumption where it has one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DEFAULT_MAX_INSTANCES: u32 = 10;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEFAULT_QUEUE_LIMIT: u32 = 100;
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the node gives every generation's instances: cgroups, when it can make them, and how
/// they are confined.
pub(crate) struct Host {
    pub cgroups: Option<Arc<crate::cgroup::Cgroups>>,
    pub sandbox: Confinement,
}

/// One generation of functions: index the workers, build routes and pools, warm `min_instances`.
pub(crate) async fn build(
    app: &AppConfig,
    data_dir: &Path,
    store: Arc<dyn Store>,
    ids: Arc<AtomicU64>,
    tokens: &Tokens,
    host: &Host,
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

    let socket_dir = socket_dir(data_dir, first, host.sandbox.user)?;

    let sdk = sdk::install(data_dir, host.sandbox.user.is_some()).map_err(|source| FunctionsError::Io {
        context: format!("cannot write the SDKs into {}", data_dir.display()),
        source,
    })?;
    let mut specs = BTreeMap::new();
    for (name, worker) in &manifest.workers {
        let spec = launch_spec(app, data_dir, name, worker, &sdk, &socket_dir, host).await?;
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
            // A command worker is one function: the HTTP server serving the manifest's routes.
            Runtime::Command => list.push(FunctionInfo {
                name: name.clone(),
                worker: name.clone(),
                runtime: "command",
                trigger: Trigger::Http {
                    route: worker.routes.first().map(ToString::to_string).unwrap_or_default(),
                    methods: Vec::new(),
                },
                routes: worker.routes.iter().map(ToString::to_string).collect(),
            }),
            runtime => {
                for declared in indexed.remove(name).unwrap_or_default() {
                    let routes = match &declared.trigger {
                        Trigger::Http { route, .. } => vec![route.clone()],
                        _ => Vec::new(),
                    };
                    list.push(FunctionInfo {
                        name: declared.name,
                        worker: name.clone(),
                        runtime: if runtime == Runtime::Python { "python" } else { "node" },
                        trigger: declared.trigger,
                        routes,
                    });
                }
            }
        }
    }
    check_function_names(&manifest.functions, &list)?;

    for info in &list {
        let (spec, worker) = &specs[&info.worker];
        let methods = match &info.trigger {
            Trigger::Http { methods, .. } => methods.as_slice(),
            _ => &[],
        };
        // A command worker's routes arrive parsed from the manifest; an SDK worker's from its index.
        let patterns = match worker.runtime {
            Runtime::Command => worker.routes.clone(),
            _ => info.routes.iter().map(|r| nimbus_config::PathPattern::parse(r)).collect::<Result<_, _>>().map_err(
                |e| FunctionsError::Index {
                    worker: info.worker.clone(),
                    reason: format!("function `{}`: route {e}", info.name),
                },
            )?,
        };
        for pattern in patterns {
            routes.add(pattern, methods, &info.name).map_err(FunctionsError::Config)?;
        }
        if !matches!(
            info.trigger,
            Trigger::Http { .. }
                | Trigger::Activity {}
                | Trigger::Orchestrator {}
                | Trigger::Timer { .. }
                | Trigger::Queue { .. }
        ) {
            tracing::warn!(
                function = %info.name,
                trigger = info.trigger.kind(),
                "nothing in this version fires {} triggers by themselves; invoke the function by name \
                 (POST /_nimbus/admin/functions/{}/invoke)",
                info.trigger.kind(),
                info.name
            );
        }
        if functions.contains_key(&info.name) {
            return Err(FunctionsError::Config(format!("function `{}` is declared twice", info.name)));
        }
        let settings = manifest.functions.get(&info.name);
        let limits = limits(settings, worker.runtime);
        let timeout = settings.and_then(|s| s.timeout).map_or(DEFAULT_TIMEOUT, |t| t.get());
        let grants: Option<Arc<[nimbus_api::Grant]>> = settings.map(|s| s.grants.clone().into());
        let access =
            Access { tokens: tokens.clone(), socket: platform_socket(&socket_dir), grants: grants.unwrap_or_default() };
        let pool = Pool::new(info.name.clone(), spec.clone(), access, limits, ids.clone());
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

/// Where the host serves the platform API to its workers (beside their sockets).
pub(crate) fn platform_socket(socket_dir: &Path) -> PathBuf {
    socket_dir.join("platform.sock")
}

/// Sockets live in the data dir unless its path is too long for a Unix socket address (108
/// bytes; an instance's is `<dir>/<16 hex>/worker.sock`); then in a private folder under /tmp
/// named after it.
pub(crate) fn socket_dir_path(data_dir: &Path) -> PathBuf {
    let preferred = data_dir.join("run");
    if preferred.as_os_str().len() + 32 < 108 {
        preferred
    } else {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data_dir.hash(&mut h);
        std::env::temp_dir().join(format!("nimbus-{}-{:016x}", nix::unistd::getuid(), h.finish()))
    }
}

/// The socket folder, private to the host's user; with a worker user, others may pass through it
/// (0711) to their own instance's folder and the platform socket, but not list it. On the first
/// start, what a previous run (which held the same data dir lock) left is removed.
fn socket_dir(data_dir: &Path, clean: bool, user: Option<WorkerUser>) -> Result<PathBuf, FunctionsError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = socket_dir_path(data_dir);
    let io =
        |source| FunctionsError::Io { context: format!("cannot prepare the socket folder {}", dir.display()), source };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mode = if user.is_some() { 0o711 } else { 0o700 };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    if user.is_some() && dir.starts_with(data_dir) {
        // Its files stay 0600 and its folders 0700: passing through reveals nothing.
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o711)).map_err(io)?;
    }
    for entry in std::fs::read_dir(&dir).map_err(io)?.flatten() {
        let path = entry.path();
        if clean && path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else if clean && path.extension().is_some_and(|e| e == "sock") {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(dir)
}

async fn launch_spec(
    app: &AppConfig,
    data_dir: &Path,
    name: &str,
    worker: &WorkerSection,
    sdk: &sdk::SdkPaths,
    socket_dir: &Path,
    host: &Host,
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
    let user = host.sandbox.user;
    let (program, args, paths) = match worker.runtime {
        Runtime::Python => {
            with_path(&mut env, "PYTHONPATH", &sdk.python);
            env.push(("PYTHONUNBUFFERED".into(), "1".into()));
            env.push(("NIMBUS_ENTRY".into(), entry()?));
            let probe = Probe { app, worker: name, env: &env, user };
            let (python, paths) = probe.interpreter(worker.python.as_deref(), "python3", PYTHON_PROBE).await?;
            (python, vec!["-m".to_owned(), "nimbus".to_owned()], paths)
        }
        Runtime::Node => {
            with_path(&mut env, "NODE_PATH", &sdk.node);
            env.push(("NIMBUS_ENTRY".into(), entry()?));
            let probe = Probe { app, worker: name, env: &env, user };
            let (node, paths) = probe.interpreter(worker.node.as_deref(), "node", NODE_PROBE).await?;
            (node, vec![sdk.node.join("nimbus/worker.js").display().to_string()], paths)
        }
        Runtime::Command => {
            let (program, args) = worker
                .command
                .split_first()
                .ok_or_else(|| FunctionsError::Config(format!("workers.{name}: missing `command`")))?;
            (PathBuf::from(program), args.to_vec(), Vec::new())
        }
    };
    let sandbox = if worker.sandbox.enabled && host.sandbox.landlock_abi > 0 {
        // A command runs from PATH or the app folder: its installation is where it resolves.
        let resolved = which(&program, &env).unwrap_or_else(|| app.dir.join(&program));
        let rules =
            Rules::new(&app.dir, data_dir, &[&sdk.python, &sdk.node], &resolved, &paths, name, &worker.sandbox)?;
        Some(Arc::new(rules))
    } else {
        None
    };
    Ok(LaunchSpec {
        worker: name.to_owned(),
        program,
        args,
        env,
        cwd: app.dir.clone(),
        data_dir: data_dir.to_path_buf(),
        socket_dir: socket_dir.to_path_buf(),
        start_timeout: worker.start_timeout.map_or(START_TIMEOUT, |d| d.get()),
        cgroups: host.cgroups.clone(),
        sandbox,
        user: host.sandbox.user,
    })
}

/// Prints the interpreter's real path, then the folders it loads code from.
const PYTHON_PROBE: &[&str] = &[
    "-c",
    "import sys, site; print(sys.executable); \
     [print(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, site.getusersitepackages(), *sys.path} if p]",
];
const NODE_PROBE: &[&str] =
    &["-e", "console.log(process.execPath); for (const p of require('module').globalPaths) console.log(p)"];

/// The program's path as the worker's PATH resolves it.
fn which(program: &Path, env: &[(String, String)]) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return None;
    }
    let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str())?;
    std::env::split_paths(path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// How a worker's interpreter is asked where it lives: with the worker's environment, as the
/// worker's user (so that one it cannot run fails here, with a clear message).
struct Probe<'a> {
    app: &'a AppConfig,
    worker: &'a str,
    env: &'a [(String, String)],
    user: Option<WorkerUser>,
}

impl Probe<'_> {
    /// The interpreter's real path, resolved once (version-manager shims on PATH cost tens of
    /// milliseconds on every start), and the folders it loads code from (for the sandbox).
    async fn interpreter(
        &self,
        configured: Option<&Path>,
        default: &str,
        probe: &[&str],
    ) -> Result<(PathBuf, Vec<PathBuf>), FunctionsError> {
        let candidate = match configured {
            Some(p) if p.components().count() > 1 || p.is_absolute() => self.app.dir.join(p),
            Some(p) => p.to_path_buf(),
            None => PathBuf::from(default),
        };
        let mut cmd = tokio::process::Command::new(&candidate);
        cmd.args(probe)
            .current_dir(&self.app.dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some(user) = self.user {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let as_user = self.user.map(|u| format!(" as uid {}", u.uid)).unwrap_or_default();
        let failed = |reason: String| FunctionsError::Start { worker: self.worker.to_owned(), reason };
        let out = cmd.output().await.map_err(|e| {
            failed(format!(
                "cannot run {}{as_user}: {e}{}",
                candidate.display(),
                if self.user.is_some() {
                    "; install it where that user can read it, or start the node with --worker-user"
                } else {
                    ""
                }
            ))
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines().map(str::trim).filter(|l| !l.is_empty());
        match lines.next() {
            Some(resolved) if out.status.success() => Ok((PathBuf::from(resolved), lines.map(PathBuf::from).collect())),
            _ => Err(failed(format!(
                "{}{as_user} did not report its path: {}",
                candidate.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }
}

/// Starts a short-lived instance and asks it which functions it declares (PROTOCOL.md §2).
async fn index(spec: &LaunchSpec, worker: &str, id: &str) -> Result<Vec<Declared>, FunctionsError> {
    let instance = Instance::start(spec, id, None)
        .await
        .map_err(|e| FunctionsError::Start { worker: worker.to_owned(), reason: e.to_string() })?;
    let answer = instance.get_json("/_nimbus/worker/index").await;
    instance.stop().await;
    let answer = answer.map_err(|reason| FunctionsError::Index { worker: worker.to_owned(), reason })?;
    crate::index::parse(answer).map_err(|reason| FunctionsError::Index { worker: worker.to_owned(), reason })
}

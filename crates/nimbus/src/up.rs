//! `nimbus up`: load the manifest, take the data dir, open the store, wire the components into
//! one router, serve on one port until SIGINT/SIGTERM, then drain.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use nimbus_gateway::{AdminToken, NodeInfo, Platform, ShutdownOutcome};
use nimbus_store::Migration;
use tokio::net::TcpListener;

use crate::Failure;
use crate::cli::UpArgs;
use crate::data_dir::DataDir;

const DEFAULT_PORT: u16 = 7071;

/// Every component's migrations, in the order they apply.
pub(crate) fn migrations() -> Vec<Migration> {
    nimbus_store::CORE_MIGRATIONS.to_vec()
}

pub fn run(args: UpArgs) -> Result<(), Failure> {
    let started = Instant::now();
    let _log_guard = crate::logging::init(args.log_format);
    let config = nimbus_config::load(&args.dir).map_err(Failure::Config)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    let result = runtime.block_on(serve(args, config, started));
    // Tasks still running past the drain (requests dropped at the end of the grace period, store
    // calls on the blocking pool) get a moment to finish, no more.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result.map_err(Failure::Other)
}

async fn serve(args: UpArgs, config: nimbus_config::AppConfig, started: Instant) -> anyhow::Result<()> {
    let signals = StopSignals::listen()?;
    let manifest = &config.manifest;
    let data_dir = DataDir::open(&args.data_dir.clone().unwrap_or_else(|| config.dir.join(".nimbus")))?;

    let host = args.host.unwrap_or(manifest.server.host);
    let port = args.port.or(manifest.server.port).unwrap_or(DEFAULT_PORT);
    let listener = bind(host.0, port).await?;
    let addr = listener.local_addr()?;

    let store_url = args.store.clone().or_else(|| manifest.store.url.as_ref().map(|u| u.url()));
    let store_url = store_url.unwrap_or_else(|| "sqlite".into());
    let store = nimbus_store::open(&store_url, &data_dir.path, &migrations()).await?;
    let (admin_token, token_path, token_created) = AdminToken::load_or_create(&data_dir.path)?;
    // The node's own background work: metrics upkeep, the platform socket, the file watcher.
    let node_tasks = nimbus_api::Tasks::new("node");
    let metrics = nimbus_gateway::install_metrics(&node_tasks).map_err(anyhow::Error::msg)?;

    let functions = Arc::new(
        nimbus_functions::Functions::start(&config, &data_dir.path, store.clone(), args.worker_user.as_deref()).await?,
    );
    let _watcher = match args.watch {
        true => Some(crate::watch::start(config.dir.clone(), data_dir.path.clone(), functions.clone(), &node_tasks)?),
        false => None,
    };

    let platform = Platform {
        store: store.clone(),
        admin_token,
        metrics,
        node: Arc::new(NodeInfo {
            app: config.name(),
            version: env!("CARGO_PKG_VERSION"),
            data_dir: data_dir.path.clone(),
            started,
        }),
    };
    let admin_token = platform.admin_token.clone();
    let identity = match &manifest.identity {
        Some(_) => Some(nimbus_identity::Identity::start(&config, node_url(addr), store.clone()).await?),
        None => None,
    };
    let own_issuer = identity.as_ref().map(|id| {
        let keys = id.clone();
        nimbus_gateway::LocalIssuer {
            issuer: id.issuer().to_owned(),
            audience: id.audience().to_owned(),
            jwks: Arc::new(move || keys.jwks()),
        }
    });
    let gateway = nimbus_gateway::Gateway::start(manifest, &config.name(), store.clone(), own_issuer)?;
    // Signed URLs name the node's public URL (`[identity] issuer`, else its own address), never a Host header.
    let public_url = identity.as_ref().map_or_else(|| node_url(addr), |id| id.issuer().to_owned());
    let blobs = open_blobs(&config, &data_dir.path, store.clone()).await?.start(&manifest.blob, &public_url);
    let published = match manifest.site.as_ref().and_then(|s| s.dir.as_ref()) {
        Some(dir) => {
            let dir = config.dir.join(dir);
            let done = nimbus_blob::publish(&blobs, &dir)
                .await
                .with_context(|| format!("cannot publish [site] dir {}", dir.display()))?;
            tracing::info!(uploaded = done.uploaded, unchanged = done.unchanged, deleted = done.deleted, dir = %dir.display(), "site published");
            Some(dir)
        }
        None => None,
    };
    let site = nimbus_blob::Site::new(blobs.clone(), manifest.site.as_ref());
    let listed = functions.clone();
    let ai = match &manifest.ai {
        Some(section) => Some(
            nimbus_ai::Ai::new(section, &config.dir, store.clone(), manifest.server.trusted_proxies.clone())
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let backends = nimbus_gateway::Backends {
        functions: functions.router(),
        serves_function: Arc::new(functions.route_probe()),
        site: site.router(),
        operations: Arc::new(move || operations(&listed.list())),
        ai: ai.as_ref().map(|ai| ai.router()),
    };
    let invoker = functions.invoker();
    let durable = nimbus_durable::Durable::start(
        store.clone(),
        blobs.clone(),
        invoker.clone(),
        manifest.durable.version.clone(),
        &public_url,
    );
    let triggers = nimbus_triggers::Triggers::start(store.clone(), invoker.clone());
    let mut admin = functions
        .admin_router()
        .merge(nimbus_gateway::keys_admin_router(gateway.keys().clone()))
        .merge(nimbus_gateway::invoke_admin_router(invoker));
    // On the public port only the admin token opens the platform API; on the private platform
    // socket, workers' scoped tokens do too.
    let admin_auth: nimbus_api::Authenticate = {
        let token = admin_token.clone();
        Arc::new(move |headers: &axum::http::HeaderMap| {
            nimbus_api::bearer(headers).filter(|t| token.matches(t)).map(|_| nimbus_api::Principal::Admin)
        })
    };
    let worker_auth: nimbus_api::Authenticate = {
        let (admin, functions) = (admin_auth.clone(), functions.clone());
        Arc::new(move |headers: &axum::http::HeaderMap| {
            admin(headers).or_else(|| nimbus_api::bearer(headers).and_then(|t| functions.worker(t)))
        })
    };
    let docs = nimbus_docs::Docs::start(manifest, store.clone());
    let component_apis = nimbus_blob::api_router(blobs.clone(), admin_auth.clone())
        .merge(nimbus_docs::router(docs.clone(), admin_auth.clone()))
        .merge(durable.router(admin_auth.clone()))
        .merge(triggers.router(admin_auth));
    let mut platform_api = nimbus_blob::api_router(blobs.clone(), worker_auth.clone())
        .merge(nimbus_docs::router(docs.clone(), worker_auth.clone()))
        .merge(durable.router(worker_auth.clone()))
        .merge(triggers.router(worker_auth.clone()));
    if let Some(ai) = &ai {
        platform_api = platform_api.merge(ai.platform_router(worker_auth));
    }
    serve_platform(functions.platform_socket(), platform_api, addr, &node_tasks)?;
    if let Some(identity) = &identity {
        admin = admin.merge(identity.admin_router());
    }
    if let Some(ai) = &ai {
        admin = admin.merge(ai.admin_router());
    }
    let mut routes = nimbus_gateway::platform_routes(platform)
        .merge(nimbus_gateway::admin_only(admin, admin_token))
        .merge(functions.invocations_router())
        .merge(component_apis)
        .merge(gateway.openapi_router(&backends))
        .fallback_service(gateway.router(backends));
    if let Some(identity) = &identity {
        routes = match gateway.global_cors() {
            Some(cors) => routes.merge(identity.router().layer(cors)),
            None => routes.merge(identity.router()),
        };
    }
    let app = nimbus_gateway::edge(routes);

    let issuer = identity.as_ref().map(|id| id.issuer().to_owned());
    print_banner(
        &config,
        addr,
        (&token_path, token_created),
        store.as_ref(),
        &data_dir,
        &functions.list(),
        issuer.as_deref(),
    );
    if let Some(dir) = &published {
        println!("  site           http://{addr}/ (from {})", dir.display());
    }
    tracing::info!(%addr, startup_ms = started.elapsed().as_secs_f64() * 1000.0, "ready");

    let grace = manifest.server.shutdown_grace.get();
    let outcome = nimbus_gateway::serve(listener, app, shutdown_signal(signals), grace).await?;
    // One grace period in all, from the signal, shared in this order: the HTTP drain (above);
    // the file watcher (no reload while stopping); the durable engine (no new steps or activities:
    // what it had in flight runs again wherever its partitions go next); functions (asynchronous
    // invocations finish, then workers stop); the components' background work; the node's own
    // (platform socket, metrics upkeep); last, the store closes as it is dropped.
    let deadline = SIGNALLED.get().copied().unwrap_or_else(Instant::now) + grace;
    let left = || deadline.saturating_duration_since(Instant::now());
    drop(_watcher);
    durable.shutdown(left()).await;
    tracing::info!(component = "durable", "stopped");
    triggers.shutdown(left()).await;
    tracing::info!(component = "triggers", "stopped");
    functions.shutdown(left()).await;
    tracing::info!(component = "functions", "stopped");
    gateway.shutdown(left()).await;
    tracing::info!(component = "gateway", "stopped");
    docs.shutdown(left()).await;
    tracing::info!(component = "docs", "stopped");
    if let Some(ai) = &ai {
        ai.shutdown(left()).await;
        tracing::info!(component = "ai", "stopped");
    }
    blobs.shutdown(left()).await;
    tracing::info!(component = "blob", "stopped");
    if let Some(identity) = &identity {
        identity.shutdown(left()).await;
        tracing::info!(component = "identity", "stopped");
    }
    node_tasks.shutdown(left()).await;
    tracing::info!(component = "node", "stopped");
    match outcome {
        ShutdownOutcome::Drained => tracing::info!("stopped"),
        ShutdownOutcome::GraceExpired => tracing::warn!("stopped after the grace period with requests unfinished"),
    }
    drop(data_dir);
    Ok(())
}

/// Serves the platform API to the node's workers on a Unix socket in the node's socket folder. Signed URLs made there name the node's own address.
fn serve_platform(
    socket: std::path::PathBuf,
    api: axum::Router,
    addr: SocketAddr,
    tasks: &nimbus_api::Tasks,
) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on the platform socket {}", socket.display()))?;
    // Any instance may connect (a worker user's too): its folder decides who reaches the socket,
    // the instance's token what it may do there.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .with_context(|| format!("cannot open the platform socket {} to workers", socket.display()))?;
    }
    let host = axum::http::HeaderValue::from_str(node_url(addr).trim_start_matches("http://"))?;
    let app = nimbus_gateway::edge(api).layer(axum::middleware::map_request(move |mut req: axum::extract::Request| {
        let host = host.clone();
        async move {
            req.headers_mut().insert(axum::http::header::HOST, host);
            req
        }
    }));
    let stopping = tasks.stopping();
    tasks.spawn_to_end(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopping).await {
            tracing::error!(error = %e, "the platform socket stopped serving");
        }
    });
    Ok(())
}

/// Function routes as the OpenAPI document lists them (a command worker serves several).
fn operations(functions: &[nimbus_functions::FunctionInfo]) -> Vec<nimbus_gateway::Operation> {
    functions
        .iter()
        .flat_map(|f| {
            f.routes.iter().map(|route| nimbus_gateway::Operation {
                path: route.clone(),
                methods: f.methods().to_vec(),
                function: f.name.clone(),
            })
        })
        .collect()
}

const S3_ENV: &str = "; S3 takes AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ENDPOINT_URL \
                      (AWS_ALLOW_HTTP=true for http://) from the environment";
const AZURE_ENV: &str = "; Azure takes AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or \
                         AZURE_STORAGE_USE_EMULATOR=true for Azurite) from the environment";

/// The object store for blobs and the site: `[store] blobs` = "file" (the data dir's `blobs/`,
/// the default), "file:///path", "s3://bucket[/prefix]" or "az://container[/prefix]" (credentials
/// and endpoint from the environment). A cloud backend is probed with a write before use, so a
/// wrong URL, endpoint or credentials stop the start with the reason.
pub(crate) async fn open_blobs(
    config: &nimbus_config::AppConfig,
    data_dir: &std::path::Path,
    store: Arc<dyn nimbus_store::Store>,
) -> anyhow::Result<nimbus_blob::Blobs> {
    use nimbus_config::BlobsUrl;
    let (url, hint) = match &config.manifest.store.blobs {
        None | Some(BlobsUrl::File) => return Ok(nimbus_blob::Blobs::local(&data_dir.join("blobs"), store)?),
        Some(BlobsUrl::Dir(dir)) => return Ok(nimbus_blob::Blobs::local(dir, store)?),
        Some(BlobsUrl::S3(url)) => (url, S3_ENV),
        Some(BlobsUrl::Azure(url)) => (url, AZURE_ENV),
    };
    let written = url.written();
    let blobs = nimbus_blob::Blobs::remote(url.value(), store)
        .map_err(|e| anyhow::anyhow!("[store] blobs = \"{written}\": {e}{hint}"))?;
    blobs
        .check(std::time::Duration::from_secs(20))
        .await
        .map_err(|e| anyhow::anyhow!("[store] blobs = \"{written}\": cannot write to it: {e}{hint}"))?;
    Ok(blobs)
}

/// This node's URL as clients on this machine reach it: the issuer of its tokens unless
/// `[identity] issuer` names the public one.
fn node_url(addr: SocketAddr) -> String {
    match addr.ip() {
        ip if ip.is_unspecified() => format!("http://localhost:{}", addr.port()),
        _ => format!("http://{addr}"),
    }
}

async fn bind(ip: std::net::IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "port {port} on {ip} is already in use; stop the other server or choose another with --port (0 picks a free one)"
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("not allowed to listen on {addr} (ports below 1024 need privileges); choose another with --port")
        }
        _ => anyhow::Error::new(e).context(format!("cannot listen on {addr}")),
    })
}

fn print_banner(
    config: &nimbus_config::AppConfig,
    addr: SocketAddr,
    (token_path, token_created): (&std::path::Path, bool),
    store: &dyn nimbus_store::Store,
    data_dir: &DataDir,
    functions: &[nimbus_functions::FunctionInfo],
    issuer: Option<&str>,
) {
    let url = format!("http://{addr}");
    let mut banner = format!(
        "Nimbus {version} · app \"{app}\"\n\
         \x20 listening on   {url}\n\
         \x20 platform API   {url}/_nimbus/\n\
         \x20 health         {url}/_nimbus/health\n\
         \x20 admin token    {token}{new}\n\
         \x20 store          {backend} {location}\n\
         \x20 data dir       {data}\n",
        version = env!("CARGO_PKG_VERSION"),
        app = config.name(),
        token = token_path.display(),
        new = if token_created { " (new)" } else { "" },
        backend = store.kind().as_str(),
        location = store.location(),
        data = data_dir.path.display(),
    );
    if let Some(issuer) = issuer {
        banner.push_str(&format!("  OIDC discovery {issuer}/.well-known/openid-configuration\n"));
    }
    banner.push_str(&format!("  OpenAPI        {url}/_nimbus/openapi.json\n"));
    let containers: Vec<&str> = config.manifest.docs.containers.keys().map(String::as_str).collect();
    if !containers.is_empty() {
        banner.push_str(&format!("  documents      {url}/_nimbus/docs/ ({})\n", containers.join(", ")));
    }
    if let Some(ai) = &config.manifest.ai {
        // The prefix OpenAI's SDKs take as `base_url`: the route's path without its `*`.
        let routes = config.manifest.routes.iter().filter(|r| r.backend == nimbus_config::Backend::Ai);
        let bases: Vec<String> = routes
            .map(|r| format!("{url}{}", r.path.to_string().trim_end_matches('*').trim_end_matches('/')))
            .collect();
        let mut backends: Vec<&str> = ai.backends.iter().map(|b| b.name.as_str()).collect();
        if ai.local().is_some() {
            backends.push("local");
        }
        banner.push_str(&format!("  AI (OpenAI)    {} (backends {})\n", bases.join(" "), backends.join(", ")));
    }
    for f in functions {
        let serves = match &f.trigger {
            nimbus_api::Trigger::Http { .. } => {
                let methods = if f.methods().is_empty() { "*".to_owned() } else { f.methods().join(",") };
                let routes: Vec<String> = f.routes.iter().map(|r| format!("{url}{r}")).collect();
                format!("{methods} {}", routes.join(" "))
            }
            trigger => format!("{} trigger", trigger.kind()),
        };
        banner.push_str(&format!("  function       {} {serves} ({}, worker {})\n", f.name, f.runtime, f.worker));
    }
    match &config.manifest_path {
        Some(p) => banner.push_str(&format!("  manifest       {}\n", p.display())),
        None => banner.push_str("  manifest       none (defaults)\n"),
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes());
    let _ = out.flush();
}

/// When the first stop signal arrived.
static SIGNALLED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// SIGINT and SIGTERM, listened for from the start of `serve`: a signal that arrives while the
/// node is still starting stops it cleanly too (instead of the default action, which kills it).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM. A second signal during the drain stops at once.
async fn shutdown_signal(mut signals: StopSignals) {
    signals.next().await;
    let _ = SIGNALLED.set(Instant::now());
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("second signal: stopping now");
        std::process::exit(130);
    });
}

//! The shape of `nimbus.toml`, section by section. Every table refuses unknown keys; every value
//! is read into the type its consumers use (a grant, a method, a path pattern, a URL…), so a
//! component takes it as it is and never parses it again. Defaults live here so that a folder
//! without a manifest runs with the same values a manifest would get.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;

use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::{
    Backend, BlobsUrl, ByteSize, Duration, EnvString, Grant, JsonPath, LimitKey, Origins, PathPattern, StoreUrl,
};

/// The whole manifest as written. Cross-field rules are checked by [`crate::validate`].
/// `[queues]` is refused before this is read (see [`crate::parse`]): this version has none.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub app: AppSection,
    #[serde(default)]
    pub server: ServerSection,
    pub site: Option<SiteSection>,
    pub identity: Option<IdentitySection>,
    /// The code: each worker is a process kind (Python, Node.js or any command).
    #[serde(default)]
    pub workers: BTreeMap<String, WorkerSection>,
    /// Hosting settings per function, by the name the function has in code.
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionSection>,
    /// Gateway policies by path pattern.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub docs: DocsSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub blob: BlobSection,
    #[serde(default)]
    pub durable: DurableSection,
    /// The AI gateway (`/v1/*`, OpenAI-compatible); off without this section.
    pub ai: Option<AiSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiSection {
    /// The OpenAI-compatible services that answer, tried by `priority`, shared by `weight`.
    #[serde(default)]
    pub backends: Vec<AiBackend>,
    /// Attempts after the first when every backend failed (429, 5xx, no connection), waiting as
    /// `Retry-After` says (at most 10 s) or backing off.
    #[serde(default = "two")]
    pub retries: u32,
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    /// Tokens (prompt and completion) per window, per key: a request's estimate is reserved
    /// before any backend is called (`429` when it does not fit) and settled with its usage after.
    pub token_limit: Option<TokenLimit>,
    /// Tokens per calendar day or month (UTC), per key, reserved and settled the same way.
    pub quota: Option<TokenQuota>,
    /// The embedded provider (on by itself when no backend is listed).
    pub local: Option<AiLocal>,
    /// The semantic cache, for routes with `semantic_cache = true` (and the implicit `/v1/*`).
    pub cache: Option<AiCache>,
}

impl AiSection {
    /// `[ai.local]` as it applies: as written, or its defaults when no backend is listed.
    pub fn local(&self) -> Option<AiLocal> {
        match &self.local {
            Some(local) => Some(local.clone()),
            None if self.backends.is_empty() => Some(AiLocal::default()),
            None => None,
        }
    }
}

/// `[ai.local]`: a chat model from a GGUF file and a sentence-embedding model, run in the node.
/// Paths are relative to the app folder; the defaults are in the models folder (`$NIMBUS_MODELS`,
/// else `~/.cache/nimbus/models`, where `scripts/models.sh` puts them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiLocal {
    /// Any GGUF of the llama architecture; default `SmolLM2-135M-Instruct.Q4_1.gguf`.
    pub chat: Option<PathBuf>,
    /// A BERT sentence-embedding model's folder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`); default `all-MiniLM-L6-v2`.
    pub embeddings: Option<PathBuf>,
    /// Among the backends: lower first.
    #[serde(default = "one")]
    pub priority: u32,
    /// Answers generated at once (a token each in turn).
    #[serde(default = "four")]
    pub max_active: usize,
    /// Requests waiting for their turn; past them the local model answers `429` (the next
    /// backend is tried).
    #[serde(default = "sixty_four")]
    pub queue: usize,
}

impl Default for AiLocal {
    fn default() -> Self {
        Self { chat: None, embeddings: None, priority: one(), max_active: four(), queue: sixty_four() }
    }
}

/// `[ai.cache]`: a chat answer is kept, and given again to a request whose last message means the
/// same (cosine similarity of their embeddings at least `similarity`), whose earlier messages and
/// other parameters are the same, within `scope` and `ttl`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiCache {
    #[serde(default = "default_similarity")]
    pub similarity: f64,
    #[serde(default = "default_cache_ttl")]
    pub ttl: Duration,
    #[serde(default)]
    pub scope: CacheScope,
    /// Answers kept at most (in each node's memory); the oldest go first.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
    /// The sentence-embedding model's folder, as `[ai.local] embeddings` (the same model by default).
    pub embeddings: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// Each user (token `sub`, else API key) has their own answers.
    #[default]
    User,
    /// Every caller shares them.
    Global,
}

fn default_similarity() -> f64 {
    0.95
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_cache_entries() -> usize {
    10_000
}

fn four() -> usize {
    4
}

fn sixty_four() -> usize {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimit {
    /// `sub`, `api_key`, `claim:<name>`, `route`, `ip` or `header:<name>`, as for `rate_limit`.
    pub key: LimitKey,
    pub tokens: NonZeroU64,
    pub per: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenQuota {
    pub key: LimitKey,
    pub tokens: NonZeroU64,
    pub per: QuotaPeriod,
}

fn two() -> u32 {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiBackend {
    /// Names the backend in metrics, logs and `owned_by` (letters, digits, `-`, `_`).
    pub name: String,
    /// The API's base URL, e.g. `https://api.openai.com/v1`, `http://127.0.0.1:11434/v1` (Ollama), or
    /// for Azure OpenAI `https://<resource>.openai.azure.com/openai` with `api_version`.
    #[serde(deserialize_with = "crate::web::base_url")]
    pub url: http::Uri,
    /// Sent as `Authorization: Bearer` (as `api-key` to Azure OpenAI); write `${ENV}`. Clients and
    /// workers never see it.
    pub api_key: Option<EnvString>,
    /// Azure OpenAI: its `api-version` query parameter; the model names the deployment.
    pub api_version: Option<String>,
    /// The models it serves, as clients name them; none (and no `model_map`) means any.
    #[serde(default)]
    pub models: Vec<String>,
    /// Aliases: the name a client uses to the name this backend knows, e.g. `{ fast = "gpt-4o-mini" }`.
    #[serde(default)]
    pub model_map: BTreeMap<String, String>,
    /// Lower first; a higher priority serves only while every lower one fails.
    #[serde(default = "one")]
    pub priority: u32,
    /// Share among backends of one priority.
    #[serde(default = "one_nonzero")]
    pub weight: NonZeroU32,
    /// Until the answer's head (non-streamed: its whole body); a stream then runs as long as it sends.
    #[serde(default = "default_ai_timeout")]
    pub timeout: Duration,
}

fn one() -> u32 {
    1
}

fn one_nonzero() -> NonZeroU32 {
    NonZeroU32::MIN
}

fn default_ai_timeout() -> Duration {
    Duration::from_secs(120)
}

impl AiBackend {
    /// Whether it serves `model` (as a client names it).
    pub fn serves(&self, model: &str) -> bool {
        (self.models.is_empty() && self.model_map.is_empty())
            || self.models.iter().any(|m| m == model)
            || self.model_map.contains_key(model)
    }

    /// The name this backend knows `model` by.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map.get(model).map_or(model, String::as_str)
    }
}

/// A backend that fails `failures` times in a row is left out for `cool_down`, then tried again
/// with one request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreaker {
    pub failures: NonZeroU32,
    pub cool_down: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self { failures: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN), cool_down: Duration::from_secs(30) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurableSection {
    /// Stamped on each new orchestration instance; code reads it as `ctx.version`.
    #[serde(default = "first_version")]
    pub version: String,
}

impl Default for DurableSection {
    fn default() -> Self {
        Self { version: first_version() }
    }
}

fn first_version() -> String {
    "1".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    /// Defaults to the app folder's name.
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on; `127.0.0.1` unless the app is meant to be reached from elsewhere.
    pub host: crate::ListenHost,
    /// Defaults to 7071; `--port` and `NIMBUS_PORT` override it.
    pub port: Option<u16>,
    /// How long in-flight requests may run on after SIGINT/SIGTERM before the server stops anyway.
    pub shutdown_grace: Duration,
    /// Largest request body accepted (413 beyond it).
    pub max_request_body: ByteSize,
    /// How long a request may run at the gateway unless its `[[routes]]` entry says otherwise.
    pub request_timeout: Duration,
    /// How long the results of asynchronous invocations stay readable.
    pub async_retention: Duration,
    /// The proxies in front of the node (CIDR networks): only a peer in one of them may name the
    /// client's address in `X-Forwarded-For`; from any other peer the header is ignored.
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            host: crate::ListenHost(std::net::Ipv4Addr::LOCALHOST.into()),
            port: None,
            shutdown_grace: Duration::from_secs(30),
            max_request_body: ByteSize::mb(100),
            request_timeout: Duration::from_secs(5 * 60),
            async_retention: Duration::from_secs(24 * 3600),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// Folder (relative to the app) published to the `$web` container at start.
    pub dir: Option<PathBuf>,
    /// Unknown non-file paths answer `index.html` with 200.
    #[serde(default)]
    pub spa: bool,
    #[serde(default = "default_index_document")]
    pub index_document: String,
    pub error_document: Option<String>,
    /// `Cache-Control` values by glob, e.g. `"assets/**" = "public, max-age=31536000, immutable"`,
    /// in the manifest's order: the first glob that matches a path gives its header.
    #[serde(default, deserialize_with = "crate::web::cache_rules")]
    pub cache_control: Vec<(globset::Glob, http::HeaderValue)>,
}

fn default_index_document() -> String {
    "index.html".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// The `aud` of access tokens for this app's API.
    pub audience: Option<String>,
    /// Public issuer URL when the node sits behind a proxy; defaults to the node's own URL.
    pub issuer: Option<String>,
    #[serde(default = "yes")]
    pub signup: bool,
    /// Shown on the hosted pages; defaults to the app name.
    pub display_name: Option<String>,
    /// A CSS file (relative to the app) that themes the hosted pages.
    pub css: Option<PathBuf>,
    pub access_token_ttl: Option<Duration>,
    pub id_token_ttl: Option<Duration>,
    pub refresh_token_ttl: Option<Duration>,
    /// How long an authorization code may wait to be exchanged (default 60 s).
    pub code_ttl: Option<Duration>,
    /// How long a browser stays signed in (default 24 h).
    pub session_ttl: Option<Duration>,
    #[serde(default)]
    pub clients: Vec<ClientSection>,
    #[serde(default)]
    pub providers: Vec<ProviderSection>,
    pub smtp: Option<SmtpSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    pub id: String,
    /// Public clients (single-page apps) use PKCE and have no secret.
    #[serde(default)]
    pub public: bool,
    pub secret: Option<EnvString>,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub grant_types: Vec<GrantType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<EnvString>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    pub username: Option<EnvString>,
    pub password: Option<EnvString>,
    pub from: String,
}

fn default_smtp_port() -> u16 {
    587
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Python,
    Node,
    Command,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    pub runtime: Runtime,
    /// The file the SDK worker loads (python and node runtimes).
    pub entry: Option<PathBuf>,
    /// The author's own interpreter, e.g. `.venv/bin/python`.
    pub python: Option<PathBuf>,
    pub node: Option<PathBuf>,
    /// For `runtime = "command"`: argv of an HTTP server; `{socket}` is replaced by its socket path.
    #[serde(default)]
    pub command: Vec<String>,
    /// For `runtime = "command"`: the routes the server answers.
    #[serde(default)]
    pub routes: Vec<crate::PathPattern>,
    /// Environment given to the worker (it gets nothing else but `NIMBUS_*` and `PATH`).
    #[serde(default)]
    pub env: BTreeMap<String, EnvString>,
    /// How long an instance may take to accept connections on its socket (default 30s).
    pub start_timeout: Option<Duration>,
    /// How its instances are confined (Landlock): what they may read and write beyond the
    /// defaults, or `enabled = false` to run them unconfined.
    #[serde(default)]
    pub sandbox: SandboxSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Folders or files its instances may also read (relative to the app folder).
    #[serde(default)]
    pub read: Vec<PathBuf>,
    /// Folders or files its instances may also write.
    #[serde(default)]
    pub write: Vec<PathBuf>,
}

impl Default for SandboxSection {
    fn default() -> Self {
        Self { enabled: true, read: Vec::new(), write: Vec::new() }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSection {
    /// Instances kept warm; 0 lets the function scale to zero.
    #[serde(default)]
    pub min_instances: u32,
    pub max_instances: Option<u32>,
    /// Requests one instance serves at once; the default depends on the runtime.
    pub concurrency: Option<u32>,
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub queue_limit: Option<u32>,
    pub queue_timeout: Option<Duration>,
    /// What the function may reach through the platform API, e.g. `docs:conversations:rw`.
    #[serde(default)]
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Jwt,
    ApiKey,
    Anonymous,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Path pattern: `/api/items/{id}`, with an optional trailing `*`.
    pub path: PathPattern,
    /// Empty means every method.
    #[serde(default, deserialize_with = "crate::web::methods")]
    pub methods: Vec<Method>,
    pub auth: Option<AuthMode>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Claim values the token must carry, e.g. `{ tenant = "acme" }`; a claim that is an array must
    /// contain the value.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    pub rate_limit: Option<RateLimit>,
    pub quota: Option<Quota>,
    /// CORS for this route; `[gateway.cors]` applies where a route has none.
    pub cors: Option<CorsSection>,
    /// Largest request body on this route (413 beyond it); `[server] max_request_body` otherwise.
    pub max_body: Option<ByteSize>,
    pub timeout: Option<Duration>,
    /// Answer `202 Accepted` with a status URL at once and run the function in the background, as
    /// `Prefer: respond-async` does for one request.
    #[serde(default, rename = "async")]
    pub respond_async: bool,
    /// AI routes: answer from `[ai.cache]` when a similar request was answered.
    #[serde(default)]
    pub semantic_cache: bool,
    /// Where the request goes after the policies: `function` (the default), `site`, or an upstream
    /// `http(s)://` base URL (reverse proxy).
    #[serde(default)]
    pub backend: Backend,
    /// Replaces the part of the path that `path` matches before its trailing `*`: with
    /// `path = "/legacy/*"` and `rewrite_prefix = "/v1"`, `/legacy/a` reaches the backend as `/v1/a`.
    pub rewrite_prefix: Option<String>,
    #[serde(default)]
    pub request_headers: HeaderTransform,
    #[serde(default)]
    pub response_headers: HeaderTransform,
}

impl RouteSection {
    /// A route with every setting at its default (a token required).
    pub fn new(path: PathPattern, backend: Backend) -> Self {
        Self {
            path,
            methods: Vec::new(),
            auth: None,
            scopes: Vec::new(),
            roles: Vec::new(),
            claims: BTreeMap::new(),
            rate_limit: None,
            quota: None,
            cors: None,
            max_body: None,
            timeout: None,
            respond_async: false,
            semantic_cache: false,
            backend,
            rewrite_prefix: None,
            request_headers: HeaderTransform::default(),
            response_headers: HeaderTransform::default(),
        }
    }
}

/// Headers set (replacing any present) and removed on the way through.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderTransform {
    /// In the manifest's order; a name appears once.
    #[serde(default, deserialize_with = "crate::web::header_map")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(default, deserialize_with = "crate::web::header_names")]
    pub remove: Vec<HeaderName>,
}

/// A number of requests per calendar period (UTC), counted in the store so that it survives
/// restarts and is shared by every node.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// What the quota is counted per, as for `rate_limit`.
    pub key: LimitKey,
    pub requests: NonZeroU64,
    pub per: QuotaPeriod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPeriod {
    Day,
    Month,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSection {
    /// Allowed origins (`https://app.example.com`), or `["*"]` for any (not with `credentials`).
    #[serde(default)]
    pub origins: Origins,
    /// Allowed methods; defaults to the route's methods, else the common ones.
    #[serde(default, deserialize_with = "crate::web::methods")]
    pub methods: Vec<Method>,
    /// Request headers a browser may send; defaults to `authorization` and `content-type`.
    #[serde(default, deserialize_with = "crate::web::header_names")]
    pub headers: Vec<HeaderName>,
    /// Response headers a script may read.
    #[serde(default, deserialize_with = "crate::web::header_names")]
    pub expose_headers: Vec<HeaderName>,
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// What a limit is counted per: `ip`, `sub`, `api_key`, `header:<name>`, `claim:<name>` or
    /// `route` (everyone together).
    pub key: LimitKey,
    pub requests: NonZeroU32,
    pub per: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    #[serde(default)]
    pub issuers: Vec<IssuerSection>,
    /// CORS for every route without its own `cors`.
    pub cors: Option<CorsSection>,
    /// Clock skew tolerated when checking a token's `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self { issuers: Vec::new(), cors: None, leeway: default_leeway() }
    }
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    pub issuer: String,
    /// The `aud` tokens must carry; defaults to `[identity] audience`.
    pub audience: Option<String>,
    /// Where the signing keys are; found through the issuer's discovery document when absent.
    pub jwks_uri: Option<String>,
    /// Allowed signing algorithms; defaults to what the issuer's keys declare (never `none`).
    #[serde(default)]
    pub algorithms: Vec<crate::TokenAlgorithm>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocsSection {
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSection {
    /// JSON path of the partition key, e.g. `/userId`.
    pub partition_key: JsonPath,
    pub default_ttl: Option<Duration>,
    /// Each entry is a set of paths whose values are unique together within a partition.
    #[serde(default)]
    pub unique_keys: Vec<Vec<JsonPath>>,
    /// Paths indexed for query narrowing, e.g. `/status`.
    #[serde(default)]
    pub indexes: Vec<JsonPath>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite` (default: a file in the data dir), `sqlite:///path/to/file.db` or `postgres://…`.
    pub url: Option<StoreUrl>,
    /// `file` (default: the data dir), `file:///path`, `s3://…` or `az://…`.
    pub blobs: Option<BlobsUrl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobSection {
    /// Largest object a `PUT` through the blob API (token or signed URL) may upload; 413 beyond it.
    #[serde(deserialize_with = "positive_size")]
    pub max_object_size: ByteSize,
    /// Containers whose objects are public web content: served inline whatever their type. Objects
    /// of other containers with an active type (HTML, SVG, script…) are served as attachments.
    /// Every object under `/_nimbus/blob/` is sandboxed (`Content-Security-Policy: sandbox`) anyway;
    /// `$web`, served by the site, needs no entry.
    pub web_containers: Vec<BlobContainer>,
}

impl Default for BlobSection {
    fn default() -> Self {
        Self { max_object_size: ByteSize(5_000_000_000), web_containers: Vec::new() }
    }
}

fn positive_size<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<ByteSize, D::Error> {
    let size = ByteSize::deserialize(deserializer)?;
    match size.0 {
        0 => Err(serde::de::Error::custom("the size must be at least 1 byte")),
        _ => Ok(size),
    }
}

/// A blob container's name, as S3 names buckets: 3-63 lowercase letters, digits and `-`, not
/// starting or ending with `-`. (`$web`, the site's container, is not one a manifest lists.)
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobContainer(String);

impl BlobContainer {
    /// Whether `name` is a container name by the rule above (the blob API checks the names in
    /// its paths with this too).
    pub fn is_valid(name: &str) -> bool {
        (3..=63).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-')
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        if name == "$web" {
            return Err("\"$web\" is the site's container, served by the site: it needs no entry here".into());
        }
        match Self::is_valid(name) {
            true => Ok(Self(name.to_owned())),
            false => Err(format!(
                "\"{}\" is not a container name (3-63 of a-z, 0-9 and -, not starting or ending with -)",
                name.escape_debug()
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BlobContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> Deserialize<'de> for BlobContainer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::from_str(deserializer, BlobContainer::parse)
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address is a network of one
/// (`/32`, `/128`). Bits beyond the prefix must be zero: `10.0.0.1/8` is refused, not guessed at.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        use std::net::IpAddr;
        let (address, prefix) = match s.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            format!(
                "\"{}\" is not an IP network (e.g. \"10.0.0.0/8\", \"fd00::/8\" or \"192.0.2.7\")",
                s.escape_debug()
            )
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("\"{}\": the prefix length must be 0 to {max}", s.escape_debug())),
            },
        };
        let cidr = Self { network, prefix };
        let masked = cidr.masked(network);
        if masked != network {
            return Err(format!(
                "\"{s}\" has bits set beyond its /{prefix} prefix: did you mean \"{masked}/{prefix}\"?"
            ));
        }
        Ok(cidr)
    }

    /// `ip` with the bits beyond this network's prefix cleared.
    fn masked(&self, ip: std::net::IpAddr) -> std::net::IpAddr {
        use std::net::IpAddr;
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, as a
    /// dual-stack socket reports IPv4 peers) counts as the IPv4 address it maps.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == self.network
    }

    pub fn network(&self) -> std::net::IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl std::fmt::Debug for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::from_str(deserializer, Cidr::parse)
    }
}

#[cfg(test)]
mod cidr_tests {
    use super::Cidr;

    #[test]
    fn parses_networks_and_matches_addresses() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains([10, 200, 1, 2].into()));
        assert!(!net.contains([11, 0, 0, 1].into()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped");
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert_eq!((one.to_string(), one.contains([192, 0, 2, 7].into())), ("192.0.2.7/32".into(), true));
        assert!(!one.contains([192, 0, 2, 8].into()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fdff::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains([8, 8, 8, 8].into()));
        assert!(Cidr::parse("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
        for bad in
            ["", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/+8", "fd00::/129", "10.0.0/8", "example.com", "10.0.0.1/8"]
        {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(Cidr::parse("10.0.0.1/8").unwrap_err().contains("did you mean \"10.0.0.0/8\""));
    }
}

//! Blobs: containers of objects, and the static website served from the `$web` container.
//!
//! An object's bytes live in an `object_store` backend (the local directory `<data dir>/blobs` by
//! default; or S3, an S3-compatible server, or Azure Blob Storage: [`Blobs::remote`]) under a fresh
//! name per write (`data/<id>`); its metadata (size, content type, ETag = SHA-256 of the content,
//! last-modified, user metadata, where the bytes are) is a record in the store (namespace `blob`,
//! key `<container>/<key>`), so every backend lists, ranges and serves the site alike. A write
//! streams the body to the backend (up to 5 MiB as one put, larger as a multipart upload in 5 MiB
//! parts; LocalFileSystem writes a temporary file and renames it, S3 and Azure show nothing before
//! the upload completes), hashing as it goes, and only then commits the record: an upload cut off
//! midway, or a crash, never leaves a half object visible. The bytes a record no longer points to
//! are deleted after the commit.
//!
//! - `api.rs`: the REST API under `/_nimbus/blob/{container}/{key…}`;
//! - `site.rs`: the static website (index and error documents, SPA fallback, compressed variants
//!   chosen by `Accept-Encoding`, Cache-Control rules);
//! - `conditional.rs`: RFC 9110 preconditions and ranges for a GET or HEAD, shared by the site and
//!   the API;
//! - `compress.rs`: the brotli and gzip variants deploys make, and `Accept-Encoding`;
//! - `deploy.rs`: versioned site deploys (changed files uploaded, `$web` switched in one commit,
//!   rollback to the previous deploy);
//! - `publish.rs`: `[site] dir` published into `$web` at start, as a deploy;
//! - `range.rs`: the `Range` header;
//! - `sweep.rs`: the background sweep of orphaned bytes (uploaded, never committed).
//!
//! Signed URLs (HMAC-SHA256 of method, container, key, expiry and an optional size bound, with a
//! key kept in the store) open one object for one method for a while; they name the node's public
//! URL ([`Blobs::start`]), never the request's `Host`.

mod api;
mod compress;
mod conditional;
mod deploy;
mod publish;
mod range;
mod site;
mod sweep;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use nimbus_store::{Expect, Store, StoreError, Write};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use api::router as api_router;
pub use deploy::{DEFAULT_KEEP, DeployInfo, Deployed, Progress, deploy, list as deployments, rollback};
pub use publish::{file_chunks, publish};
pub use site::Site;

const NS: &str = "blob";
/// The container the static website is served from.
pub const SITE_CONTAINER: &str = "$web";
/// The container of durable orchestrations' large payloads (`nimbus-durable`).
pub const DURABLE_CONTAINER: &str = "$durable";

/// What a path segment may keep unencoded (RFC 3986's unreserved characters).
const UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// What the store keeps about an object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub content_type: String,
    /// Hex SHA-256 of the content.
    pub etag: String,
    /// Unix seconds.
    pub last_modified: u64,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// The record in the store: the object's facts and where its bytes are in the backend.
#[derive(Clone, Serialize, Deserialize)]
pub struct Stored {
    #[serde(flatten)]
    pub info: ObjectInfo,
    data: String,
}

/// Objects up to this size are kept in memory once read; their bytes never change (every write
/// gets a new name), so the cache needs no invalidation.
const SMALL: u64 = 256 * 1024;
const SMALL_TOTAL: usize = 64 * 1024 * 1024;
/// Uploads go in parts of this size: S3's minimum for all parts but the last.
const PART: usize = 5 * 1024 * 1024;

#[derive(Default)]
struct SmallCache {
    by_data: std::collections::HashMap<String, Bytes>,
    bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{0}")]
    Invalid(String),
    #[error("the object is larger than the {0}-byte limit")]
    TooLarge(u64),
    #[error("no object \"{0}\"")]
    NotFound(String),
    #[error("the range is outside the object")]
    Range,
    #[error("the upload was cut off")]
    Incomplete,
    #[error("the disk is full")]
    DiskFull,
    #[error("object backend: {0}")]
    Backend(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> Self {
        let text = e.to_string();
        if text.contains("No space left on device") || text.contains("os error 28") {
            return Self::DiskFull;
        }
        Self::Backend(text)
    }
}

/// A readable object: its record and its bytes (whole or the requested range).
pub struct Download {
    pub info: ObjectInfo,
    pub range: std::ops::Range<u64>,
    pub body: futures_util::stream::BoxStream<'static, Result<Bytes, object_store::Error>>,
    /// The same bytes at hand when the object is small (kept in memory): a response can then send
    /// them with its head in one write.
    pub whole: Option<Bytes>,
}

#[derive(Clone)]
pub struct Blobs {
    backend: Arc<dyn ObjectStore>,
    store: Arc<dyn Store>,
    /// The HMAC key of signed URLs, made once and kept in the store (every node signs alike).
    secret: Arc<tokio::sync::OnceCell<aws_lc_rs::hmac::Key>>,
    /// The local backend's directory: large objects are read from it directly, in big chunks.
    local_root: Option<std::path::PathBuf>,
    small: Arc<std::sync::Mutex<SmallCache>>,
    settings: Arc<Settings>,
    /// The orphan sweep, when started by [`Blobs::start`].
    tasks: nimbus_api::Tasks,
}

/// What the API serves by: `[blob]` and the node's public URL.
struct Settings {
    /// `[blob] max_object_size`: the largest upload through the API.
    max_object_size: u64,
    /// `[blob] web_containers`: objects served inline whatever their type.
    web_containers: std::collections::BTreeSet<String>,
    /// The URL clients reach the node at (no trailing `/`), which signed URLs start with; empty
    /// until [`Blobs::start`] (then a signed URL is its path alone).
    public_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        let section = nimbus_config::BlobSection::default();
        Self {
            max_object_size: section.max_object_size.0,
            web_containers: Default::default(),
            public_url: String::new(),
        }
    }
}

impl Blobs {
    /// The local backend in `dir` (made if missing).
    pub fn local(dir: &std::path::Path, store: Arc<dyn Store>) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BlobError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let backend = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            backend: Arc::new(backend),
            store,
            secret: Arc::default(),
            local_root: Some(dir.canonicalize().unwrap_or_else(|_| dir.to_owned())),
            small: Arc::default(),
            settings: Arc::default(),
            tasks: nimbus_api::Tasks::new("blob"),
        })
    }

    /// A cloud backend: `s3://bucket[/prefix]` (Amazon S3 or an S3-compatible server) or
    /// `az://container[/prefix]` (Azure Blob Storage). Credentials, region and endpoint come from
    /// the standard environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, …; `AZURE_STORAGE_ACCOUNT_NAME`,
    /// `AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_ENDPOINT`, `AZURE_STORAGE_USE_EMULATOR`, …), or
    /// the platform's (instance roles, managed identities), so no secret is written in the
    /// manifest. Objects go under the prefix when there is one. Nothing is sent yet: see
    /// [`Blobs::check`].
    pub fn remote(url: &str, store: Arc<dyn Store>) -> Result<Self, BlobError> {
        let invalid = |why: &str| BlobError::Invalid(why.to_owned());
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("not a URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("the bucket or container name is missing"));
        }
        let backend: Arc<dyn ObjectStore> = match scheme {
            "s3" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| invalid(&e.to_string()))?,
            ),
            "az" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .build()
                    .map_err(|e| invalid(&e.to_string()))?,
            ),
            _ => return Err(invalid("use s3://bucket[/prefix] or az://container[/prefix]")),
        };
        let prefix = prefix.trim_end_matches('/');
        let backend = match prefix {
            "" => backend,
            _ => {
                let prefix = ObjectPath::parse(prefix).map_err(|e| invalid(&format!("bad prefix: {e}")))?;
                Arc::new(object_store::prefix::PrefixStore::new(backend, prefix))
            }
        };
        Ok(Self {
            backend,
            store,
            secret: Arc::default(),
            local_root: None,
            small: Arc::default(),
            settings: Arc::default(),
            tasks: nimbus_api::Tasks::new("blob"),
        })
    }

    /// The component as a node serves it: `[blob]`'s settings, signed URLs that start with
    /// `public_url` (the node's public URL: `[identity] issuer`, else its own address), and the
    /// sweep of orphaned bytes running in the background (one node at a time, under a lease) until
    /// [`Blobs::shutdown`]. The CLI uses the backend without calling this.
    pub fn start(mut self, section: &nimbus_config::BlobSection, public_url: &str) -> Self {
        self.settings = Arc::new(Settings {
            max_object_size: section.max_object_size.0,
            web_containers: section.web_containers.iter().map(|c| c.as_str().to_owned()).collect(),
            public_url: public_url.trim_end_matches('/').to_owned(),
        });
        sweep::start(&self);
        self
    }

    /// Stops the orphan sweep (a sweep in progress stops at its next object) within `grace`.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.tasks.shutdown(grace).await;
    }

    /// Whether objects of `container` are public web content (served inline): `$web` and the
    /// containers `[blob] web_containers` lists.
    pub fn is_web_container(&self, container: &str) -> bool {
        container == SITE_CONTAINER || self.settings.web_containers.contains(container)
    }

    /// `[blob] max_object_size`, in bytes.
    pub fn max_object_size(&self) -> u64 {
        self.settings.max_object_size
    }

    /// Writes and deletes a probe object, so that a backend that cannot be reached or written to
    /// (no credentials, a wrong endpoint, a missing bucket) is found at start, not at the first
    /// upload. Gives up after `within`.
    pub async fn check(&self, within: std::time::Duration) -> Result<(), BlobError> {
        let probe = ObjectPath::from(format!("nimbus-probe-{}", nimbus_api::hex(&rand::random::<[u8; 8]>())));
        let attempt = async {
            self.backend.put(&probe, PutPayload::new()).await?;
            self.backend.delete(&probe).await?;
            Ok::<_, object_store::Error>(())
        };
        match tokio::time::timeout(within, attempt).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(BlobError::Backend(format!("no answer within {within:?}"))),
        }
    }

    async fn signing_key(&self) -> Result<&aws_lc_rs::hmac::Key, BlobError> {
        self.secret
            .get_or_try_init(|| async {
                const KEY: &str = "signing-secret"; // no `/`: never an object's record
                let fresh = rand::random::<[u8; 32]>().to_vec();
                match self.store.commit(vec![Write::put(NS, KEY, fresh).expect(Expect::Absent)]).await {
                    Ok(_) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(BlobError::Store(e)),
                }
                let record = self
                    .store
                    .get(NS, KEY)
                    .await?
                    .ok_or_else(|| BlobError::Backend("signing secret vanished".into()))?;
                Ok(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &record.value))
            })
            .await
    }

    /// What a signature covers, one line each. Neither containers nor keys hold a line break
    /// (`check_key` refuses control characters), so a text with a size bound never equals one
    /// without; and a URL signed before size bounds existed verifies as it did.
    fn signed_text(method: &axum::http::Method, container: &str, key: &str, exp: u64, max_size: Option<u64>) -> String {
        match max_size {
            None => format!("{method}\n{container}\n{key}\n{exp}"),
            Some(max) => format!("{method}\n{container}\n{key}\n{exp}\nmaxsize={max}"),
        }
    }

    /// A path with a signature that allows `method` (GET or PUT) on one object for `seconds`; a
    /// PUT may be bounded to `max_size` bytes (`maxsize` in the query, covered by the signature).
    pub async fn sign(
        &self,
        method: &axum::http::Method,
        container: &str,
        key: &str,
        seconds: u64,
        max_size: Option<u64>,
    ) -> Result<String, BlobError> {
        check_container(container)?;
        check_key(key)?;
        let exp = now() + seconds;
        let text = Self::signed_text(method, container, key, exp, max_size);
        let tag = aws_lc_rs::hmac::sign(self.signing_key().await?, text.as_bytes());
        let sig = nimbus_api::hex(tag.as_ref());
        let encoded: Vec<String> =
            key.split('/').map(|s| percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()).collect();
        let container = percent_encoding::utf8_percent_encode(container, UNRESERVED);
        let bound = max_size.map(|m| format!("&maxsize={m}")).unwrap_or_default();
        Ok(format!("/_nimbus/blob/{container}/{}?exp={exp}{bound}&sig={sig}", encoded.join("/")))
    }

    /// A path from [`Blobs::sign`] as a URL: the node's public URL, never a request's `Host`.
    pub fn public_url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.public_url)
    }

    /// Checks a signed URL's `exp`, `maxsize` and `sig` for `method` on `container/key`: 403 when
    /// expired, tampered with, or signed for another object or method.
    pub async fn verify(
        &self,
        method: &axum::http::Method,
        container: &str,
        key: &str,
        exp: u64,
        max_size: Option<u64>,
        sig: &str,
    ) -> Result<(), nimbus_api::ApiError> {
        use axum::http::StatusCode;
        let forbidden = |code: &'static str, m: &str| nimbus_api::ApiError::new(StatusCode::FORBIDDEN, code, m);
        if exp <= now() {
            return Err(forbidden("signature_expired", "the signed URL has expired"));
        }
        let tag: Vec<u8> =
            (0..sig.len() / 2).filter_map(|i| u8::from_str_radix(sig.get(2 * i..2 * i + 2)?, 16).ok()).collect();
        let key_ = self.signing_key().await.map_err(|_| nimbus_api::ApiError::internal())?;
        let text = Self::signed_text(method, container, key, exp, max_size);
        aws_lc_rs::hmac::verify(key_, text.as_bytes(), &tag).map_err(|_| {
            forbidden("invalid_signature", "the signature does not match this object, method, expiry and size bound")
        })
    }

    /// Streams `body` into `container/key`; the object becomes visible whole, or not at all.
    pub async fn put<S, E>(
        &self,
        container: &str,
        key: &str,
        content_type: Option<&str>,
        metadata: BTreeMap<String, String>,
        body: S,
    ) -> Result<ObjectInfo, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        self.put_within(container, key, content_type, metadata, body, u64::MAX).await
    }

    /// [`Blobs::put`] of at most `limit` bytes: a body that goes past it stops there with
    /// [`BlobError::TooLarge`], and what was written of it goes.
    pub async fn put_within<S, E>(
        &self,
        container: &str,
        key: &str,
        content_type: Option<&str>,
        metadata: BTreeMap<String, String>,
        body: S,
        limit: u64,
    ) -> Result<ObjectInfo, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        check_container(container)?;
        let stored = self.write(key, content_type, metadata, body, limit).await?;
        let info = stored.info.clone();
        self.commit_object(container, key, stored).await?;
        Ok(info)
    }

    /// Points `container/key` at freshly written bytes; the bytes it pointed at before go (unless a
    /// kept site deploy refers to them), and so do the new ones if the commit fails.
    async fn commit_object(&self, container: &str, key: &str, stored: Stored) -> Result<(), BlobError> {
        let record_key = format!("{container}/{key}");
        let previous = self.store.get(NS, &record_key).await?;
        let value = serde_json::to_vec(&stored).expect("object info serializes");
        if let Err(e) = self.store.commit(vec![Write::put(NS, &record_key, value)]).await {
            self.forget(&stored.data).await;
            return Err(e.into());
        }
        if let Some(old) = previous.and_then(|r| serde_json::from_slice::<Stored>(&r.value).ok()) {
            self.replaced(container, &old.data).await;
        }
        Ok(())
    }

    /// Streams `body` into fresh bytes in the backend and answers the record that would point at
    /// them; nothing refers to them until that record is committed. A body longer than `limit`
    /// stops at the chunk that passes it, and nothing of it is kept.
    pub(crate) async fn write<S, E>(
        &self,
        key: &str,
        content_type: Option<&str>,
        metadata: BTreeMap<String, String>,
        mut body: S,
        limit: u64,
    ) -> Result<Stored, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        check_key(key)?;
        let data = format!("data/{}", nimbus_api::hex(&rand::random::<[u8; 16]>()));
        let path = ObjectPath::from(data.as_str());
        // The first PART bytes are held back: a smaller object is one `put` (one request to a
        // cloud backend); a larger one a multipart upload in PART-sized parts (S3's minimum).
        let mut first: Vec<Bytes> = Vec::new();
        let mut upload: Option<WriteMultipart> = None;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "upload cut off");
                    if let Some(upload) = upload {
                        let _ = upload.abort().await;
                    }
                    return Err(BlobError::Incomplete);
                }
            };
            size += chunk.len() as u64;
            if size > limit {
                if let Some(upload) = upload {
                    let _ = upload.abort().await;
                }
                return Err(BlobError::TooLarge(limit));
            }
            hasher.update(&chunk);
            match &mut upload {
                Some(multipart) => {
                    if let Err(e) = multipart.wait_for_capacity(4).await {
                        if let Some(upload) = upload.take() {
                            let _ = upload.abort().await;
                        }
                        return Err(e.into());
                    }
                    multipart.put(chunk);
                }
                None => {
                    first.push(chunk);
                    if size >= PART as u64 {
                        let mut multipart =
                            WriteMultipart::new_with_chunk_size(self.backend.put_multipart(&path).await?, PART);
                        first.drain(..).for_each(|b| multipart.put(b));
                        upload = Some(multipart);
                    }
                }
            }
        }
        match upload {
            Some(multipart) => multipart.finish().await?,
            None => self.backend.put(&path, PutPayload::from_iter(first)).await?,
        };
        let info = ObjectInfo {
            key: key.to_owned(),
            size,
            content_type: content_type
                .map(str::to_owned)
                .unwrap_or_else(|| mime_guess::from_path(key).first_or_octet_stream().essence_str().to_owned()),
            etag: nimbus_api::hex(&hasher.finalize()),
            last_modified: now(),
            metadata,
        };
        Ok(Stored { info, data })
    }

    /// Bytes a `container` record no longer points to: deleted, unless a kept site deploy
    /// still refers to them (`$web` only).
    async fn replaced(&self, container: &str, data: &str) {
        if container == SITE_CONTAINER {
            match deploy::deployed(self, data).await {
                Ok(false) => {}
                Ok(true) => return,
                Err(e) => {
                    tracing::warn!(data, error = %e, "cannot tell whether a deploy keeps these bytes; keeping them");
                    return;
                }
            }
        }
        self.forget(data).await;
    }

    /// Copies `from_container/from_key` (bytes, content type, metadata) to `container/key`.
    pub async fn copy(
        &self,
        from_container: &str,
        from_key: &str,
        container: &str,
        key: &str,
    ) -> Result<ObjectInfo, BlobError> {
        check_container(container)?;
        check_key(key)?;
        let source = self.stored(from_container, from_key).await?;
        let data = format!("data/{}", nimbus_api::hex(&rand::random::<[u8; 16]>()));
        match &self.local_root {
            // object_store hard-links a local copy, so the copy would be as old as its source
            // before its record exists: the orphan sweep goes by age. A copy of its own is young.
            Some(root) => {
                let (from, to) = (root.join(&source.data), root.join(&data));
                tokio::task::spawn_blocking(move || copy_file(&from, &to))
                    .await
                    .map_err(|e| BlobError::Backend(e.to_string()))??;
            }
            None => {
                self.backend.copy(&ObjectPath::from(source.data.as_str()), &ObjectPath::from(data.as_str())).await?
            }
        }
        let info = ObjectInfo { key: key.to_owned(), last_modified: now(), ..source.info };
        let stored = Stored { info: info.clone(), data };
        self.commit_object(container, key, stored).await?;
        Ok(info)
    }

    pub async fn head(&self, container: &str, key: &str) -> Result<ObjectInfo, BlobError> {
        Ok(self.stored(container, key).await?.info)
    }

    /// An object's record, to [`Blobs::open`] without reading it again.
    pub async fn find(&self, container: &str, key: &str) -> Result<Stored, BlobError> {
        self.stored(container, key).await
    }

    async fn stored(&self, container: &str, key: &str) -> Result<Stored, BlobError> {
        check_container(container)?;
        check_key(key)?;
        let record = self.store.get(NS, &format!("{container}/{key}")).await?;
        let record = record.ok_or_else(|| BlobError::NotFound(key.to_owned()))?;
        serde_json::from_slice(&record.value).map_err(|e| BlobError::Backend(format!("unreadable record: {e}")))
    }

    /// The object's bytes, or those of `range` (a byte range `start..end`, end exclusive).
    pub async fn get(
        &self,
        container: &str,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Download, BlobError> {
        let stored = self.stored(container, key).await?;
        self.open(stored, range).await
    }

    /// The bytes of a found object, whole or the requested range.
    pub async fn open(&self, stored: Stored, range: Option<std::ops::Range<u64>>) -> Result<Download, BlobError> {
        let Stored { info, data } = stored;
        let range = match range {
            Some(r) if r.start >= info.size || r.start >= r.end => return Err(BlobError::Range),
            Some(r) => r.start..r.end.min(info.size),
            None => 0..info.size,
        };
        if info.size == 0 {
            return Ok(Download {
                info,
                range,
                body: futures_util::stream::empty().boxed(),
                whole: Some(Bytes::new()),
            });
        }
        if info.size <= SMALL {
            let bytes = self.small_bytes(&data).await?;
            let part = bytes.slice(range.start as usize..range.end as usize);
            let stream = futures_util::stream::once({
                let part = part.clone();
                async { Ok(part) }
            });
            return Ok(Download { info, range, body: stream.boxed(), whole: Some(part) });
        }
        let body = match &self.local_root {
            Some(root) => local_stream(root.join(&data), range.clone()).await?,
            None => {
                let options = GetOptions {
                    range: (range != (0..info.size)).then(|| GetRange::Bounded(range.clone())),
                    ..GetOptions::default()
                };
                self.backend.get_opts(&ObjectPath::from(data.as_str()), options).await?.into_stream()
            }
        };
        Ok(Download { info, range, body, whole: None })
    }

    fn uncache(&self, data: &str) {
        let mut cache = self.small.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gone) = cache.by_data.remove(data) {
            cache.bytes -= gone.len();
        }
    }

    async fn small_bytes(&self, data: &str) -> Result<Bytes, BlobError> {
        let hit = self.small.lock().unwrap_or_else(|p| p.into_inner()).by_data.get(data).cloned();
        if let Some(hit) = hit {
            return Ok(hit);
        }
        let bytes = self.backend.get(&ObjectPath::from(data)).await?.bytes().await?;
        let mut cache = self.small.lock().unwrap_or_else(|p| p.into_inner());
        if cache.bytes + bytes.len() > SMALL_TOTAL {
            *cache = SmallCache::default();
        }
        cache.bytes += bytes.len();
        cache.by_data.insert(data.to_owned(), bytes.clone());
        Ok(bytes)
    }

    pub async fn delete(&self, container: &str, key: &str) -> Result<(), BlobError> {
        check_container(container)?;
        check_key(key)?;
        let record_key = format!("{container}/{key}");
        let record = self.store.get(NS, &record_key).await?.ok_or_else(|| BlobError::NotFound(key.to_owned()))?;
        self.store.commit(vec![Write::delete(NS, &record_key).expect(Expect::Version(record.version))]).await?;
        if let Ok(old) = serde_json::from_slice::<Stored>(&record.value) {
            self.replaced(container, &old.data).await;
        }
        Ok(())
    }

    /// Objects whose keys start with `prefix`, after `after`, at most `limit`; with a delimiter,
    /// keys that go on past it are rolled up into common prefixes.
    pub async fn list(
        &self,
        container: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Listing, BlobError> {
        check_container(container)?;
        let base = format!("{container}/");
        let mut listing = Listing::default();
        let mut cursor = after.map(|a| format!("{base}{a}"));
        while listing.objects.len() + listing.prefixes.len() < limit {
            let page = self.store.list(NS, &format!("{base}{prefix}"), cursor.as_deref(), 500).await?;
            let done = page.len() < 500;
            for record in &page {
                let key = &record.key[base.len()..];
                cursor = Some(record.key.clone());
                if let Some(d) = delimiter.filter(|d| !d.is_empty())
                    && let Some(at) = key[prefix.len()..].find(d)
                {
                    let rolled = key[..prefix.len() + at + d.len()].to_owned();
                    if listing.prefixes.last() != Some(&rolled) {
                        listing.prefixes.push(rolled);
                    }
                } else if let Ok(stored) = serde_json::from_slice::<Stored>(&record.value) {
                    listing.objects.push(stored.info);
                }
                if listing.objects.len() + listing.prefixes.len() >= limit {
                    listing.continuation = Some(key.to_owned());
                    return Ok(listing);
                }
            }
            if done {
                break;
            }
        }
        Ok(listing)
    }

    async fn forget(&self, data: &str) {
        self.uncache(data);
        if let Err(e) = self.backend.delete(&ObjectPath::from(data)).await {
            tracing::warn!(data, error = %e, "cannot delete replaced object bytes");
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Listing {
    pub objects: Vec<ObjectInfo>,
    pub prefixes: Vec<String>,
    /// Pass back as `continuation` for the next page.
    pub continuation: Option<String>,
}

/// Container names as S3 buckets: 3-63 lowercase letters, digits and `-` (the manifest's rule,
/// [`nimbus_config::BlobContainer`]); or the platform's own, `$web` and `$durable`.
pub fn check_container(name: &str) -> Result<(), BlobError> {
    let ok = name == SITE_CONTAINER || name == DURABLE_CONTAINER || nimbus_config::BlobContainer::is_valid(name);
    if ok {
        Ok(())
    } else {
        Err(BlobError::Invalid(format!("\"{name}\" is not a container name (3-63 of a-z, 0-9, -)")))
    }
}

/// Keys are paths inside their container: no empty, `.` or `..` segments, no `\` or control
/// characters, at most 1024 bytes; so that no key can name anything outside its container.
pub fn check_key(key: &str) -> Result<(), BlobError> {
    let bad = key.is_empty()
        || key.len() > 1024
        || key.starts_with('/')
        || key.chars().any(|c| c.is_control() || c == '\\')
        || key.split('/').any(|s| s.is_empty() || s == "." || s == "..");
    if bad { Err(BlobError::Invalid(format!("\"{}\" is not an object key", key.escape_debug()))) } else { Ok(()) }
}

/// Copies a local file to a staging name beside `to`, then renames it into place (as object_store
/// writes), so `to` is never seen half written.
fn copy_file(from: &std::path::Path, to: &std::path::Path) -> Result<(), BlobError> {
    let failed = |e: std::io::Error| match e.raw_os_error() {
        Some(28) => BlobError::DiskFull,
        _ => BlobError::Backend(format!("cannot copy {}: {e}", from.display())),
    };
    let mut staged = to.as_os_str().to_owned();
    staged.push("#0");
    let staged = std::path::PathBuf::from(staged);
    let copied = std::fs::copy(from, &staged).and_then(|_| std::fs::rename(&staged, to));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&staged);
        return Err(failed(e));
    }
    Ok(())
}

/// A range of a local file in 256 KiB reads (object_store's local reader takes 8 KiB at a time).
async fn local_stream(
    path: std::path::PathBuf,
    range: std::ops::Range<u64>,
) -> Result<futures_util::stream::BoxStream<'static, Result<Bytes, object_store::Error>>, BlobError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file =
        tokio::fs::File::open(&path).await.map_err(|e| BlobError::Backend(format!("{}: {e}", path.display())))?;
    file.seek(std::io::SeekFrom::Start(range.start)).await.map_err(|e| BlobError::Backend(e.to_string()))?;
    let left = range.end - range.start;
    Ok(futures_util::stream::try_unfold((file, left), |(mut file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let mut buf = vec![0; left.min(256 * 1024) as usize];
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| object_store::Error::Generic { store: "local", source: Box::new(e) })?;
        if n == 0 {
            return Err(object_store::Error::Generic {
                store: "local",
                source: "the file is shorter than its record".into(),
            });
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), (file, left - n as u64))))
    })
    .boxed())
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_keys_that_climb_and_bad_container_names() {
        for bad in ["", "/a", "a/../b", "..", "a//b", "a\\b", "a\0b", "a/./b", "a/"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "docs/index.html", "a..b/c", ".hidden/x"] {
            assert!(check_key(good).is_ok(), "{good:?}");
        }
        assert!(check_container("$web").is_ok());
        assert!(check_container("uploads-2").is_ok());
        for bad in ["ab", "Upper", "-x-", "a_b", "../x"] {
            assert!(check_container(bad).is_err(), "{bad}");
        }
    }
}

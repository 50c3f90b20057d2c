//! The sweep of orphaned bytes: `data/<id>` objects no record refers to. A write puts the bytes
//! first and commits the record after, so a crash (or a lost connection to the store) between the
//! two leaves bytes nothing points at; on the local backend a crash mid-upload also leaves the
//! upload's staging file (`data/<id>#<n>`). Once an hour (cluster-wide: the time of the last sweep
//! is a record), one node at a time (under the lease [`LEASE`]) reads which bytes the `blob`
//! records and the kept site deploys refer to, then lists the backend's `data/` objects and
//! deletes those that are unreferenced and older than [`ORPHAN_AGE`]. A node also sweeps once
//! when it starts, whenever the last sweep was (a restart is when a crash is found out).
//!
//! The age is what keeps bytes whose record is still to come: an upload in progress, a deploy
//! uploading its files before it switches the site. Every write makes fresh bytes (the local
//! backend's copies too: copied, not hard-linked, so they are as young as their record), and a
//! record only ever comes to point at bytes that were just written or that a record or kept deploy
//! already refers to; so bytes that are old and unreferenced when the references were read stay
//! unreferenced. A record that cannot be read stops the sweep: unknown references delete nothing.
//!
//! Not covered: S3 multipart uploads that were never completed or aborted (a bucket lifecycle rule,
//! `AbortIncompleteMultipartUpload`, removes them); Azure drops uncommitted blocks itself.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use nimbus_store::{Lease, Write};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use crate::{BlobError, Blobs, NS, Stored};

/// How often a node looks whether a sweep is due.
const TICK: Duration = Duration::from_secs(10 * 60);
/// How often the bytes are swept, by whichever node.
const PERIOD: Duration = Duration::from_secs(3600);
/// Unreferenced bytes younger than this are left: their record may still come. A day, so that a
/// site deploy uploading for hours, or an upload that stalls, keeps its bytes.
pub(crate) const ORPHAN_AGE: Duration = Duration::from_secs(24 * 3600);
const LEASE: &str = "blob-orphan-sweep";
const LEASE_TTL: Duration = Duration::from_secs(10 * 60);
/// The record of the last sweep's end (Unix seconds, by the store's clock). No `/`: never an
/// object's record.
const LAST: &str = "orphan-sweep";

/// Runs the sweep in `blobs`' tasks: looked at every [`TICK`], the first time at once (and
/// then due whenever the last sweep was).
pub(crate) fn start(blobs: &Blobs) {
    let sweeper = blobs.clone();
    let holder = nimbus_api::hex(&rand::random::<[u8; 8]>());
    let mut first = true;
    blobs.tasks.every("orphan-sweep", TICK, move || {
        let (sweeper, holder) = (sweeper.clone(), holder.clone());
        let at_start = std::mem::replace(&mut first, false);
        async move {
            // Shutdown stops a sweep at its next await: deletes are one object each.
            let stopping = sweeper.tasks.stopping();
            tokio::select! {
                _ = stopping => {}
                _ = sweeper.sweep_round(&holder, at_start) => {}
            }
        }
    });
}

/// What one sweep did.
#[derive(Debug, Default)]
struct Swept {
    /// Objects (and staging files) looked at.
    seen: u64,
    /// Deleted: old and unreferenced.
    deleted: u64,
}

impl Blobs {
    /// Sweeps if one is due (or `at_start`) and this node gets the lease.
    async fn sweep_round(&self, holder: &str, at_start: bool) {
        match self.sweep_due().await {
            Ok(true) => {}
            Ok(false) if at_start => {}
            Ok(false) => return,
            Err(e) => return tracing::warn!(error = %e, "cannot tell whether the orphan sweep is due"),
        }
        let lease = match self.store.claim(LEASE, holder, LEASE_TTL).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(e) => return tracing::warn!(error = %e, "cannot claim the orphan sweep lease"),
        };
        // Another node may have swept while this one waited for the lease.
        if at_start || matches!(self.sweep_due().await, Ok(true)) {
            match self.sweep(lease.clone()).await {
                Ok(swept) => {
                    tracing::info!(seen = swept.seen, deleted = swept.deleted, "orphaned blob bytes swept");
                    let at = self.store.clock().now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    let writes = vec![Write::holding(&lease), Write::put(NS, LAST, at.to_string().into_bytes())];
                    if let Err(e) = self.store.commit(writes).await {
                        tracing::warn!(error = %e, "cannot record the orphan sweep");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the orphan sweep stopped"),
            }
        }
        if let Err(e) = self.store.release(&lease).await {
            tracing::debug!(error = %e, "cannot release the orphan sweep lease");
        }
    }

    async fn sweep_due(&self) -> Result<bool, BlobError> {
        let Some(record) = self.store.get(NS, LAST).await? else { return Ok(true) };
        let last = std::str::from_utf8(&record.value).ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let now = self.store.clock().now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(now.saturating_sub(last) >= PERIOD.as_secs())
    }

    /// Deletes the `data/` objects older than [`ORPHAN_AGE`] that nothing refers to. Stops when
    /// the lease is lost.
    async fn sweep(&self, mut lease: Lease) -> Result<Swept, BlobError> {
        let cutoff = SystemTime::now() - ORPHAN_AGE;
        let referenced = self.referenced().await?;
        let mut swept = Swept::default();
        let mut renewed = std::time::Instant::now();
        let mut objects = self.data_objects().await?;
        while let Some(object) = objects.next().await {
            let (name, modified) = object?;
            swept.seen += 1;
            if renewed.elapsed() > LEASE_TTL / 3 {
                lease = self
                    .store
                    .renew(&lease, LEASE_TTL)
                    .await?
                    .ok_or_else(|| BlobError::Backend("the orphan sweep lease was lost".into()))?;
                renewed = std::time::Instant::now();
            }
            if modified >= cutoff {
                continue;
            }
            // A staging file (`data/<id>#<n>`, local backend) is never an object's bytes: the
            // upload that wrote it is over or stalled for a day.
            let staging = name.contains('#');
            if !staging && referenced.contains(&name) {
                continue;
            }
            match (staging, &self.local_root) {
                (true, Some(root)) => {
                    let path = root.join(&name);
                    tokio::fs::remove_file(&path)
                        .await
                        .map_err(|e| BlobError::Backend(format!("{}: {e}", path.display())))?;
                }
                (true, None) => continue,
                (false, _) => {
                    self.uncache(&name);
                    self.backend.delete(&ObjectPath::from(name.as_str())).await?;
                }
            }
            tracing::debug!(data = %name, "orphaned bytes deleted");
            swept.deleted += 1;
        }
        Ok(swept)
    }

    /// Every `data/<id>` the `blob` records and the kept site deploys refer to. Records are read
    /// before deploys: bytes only move from a deploy to the records while the deploy keeps them.
    async fn referenced(&self) -> Result<HashSet<String>, BlobError> {
        let mut data = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(NS, "", after.as_deref(), 1000).await?;
            for record in &page {
                // Keys without `/` are the component's own (the signing secret, the last sweep).
                if !record.key.contains('/') {
                    continue;
                }
                let stored: Stored = serde_json::from_slice(&record.value)
                    .map_err(|e| BlobError::Backend(format!("unreadable record {}: {e}", record.key)))?;
                data.insert(stored.data);
            }
            match page.last() {
                Some(last) if page.len() == 1000 => after = Some(last.key.clone()),
                _ => break,
            }
        }
        data.extend(crate::deploy::kept_data(self).await?);
        Ok(data)
    }

    /// The backend's `data/` objects with their last-modified times. On the local backend, the
    /// directory itself, so that staging files of uploads cut off by a crash are seen too.
    async fn data_objects(
        &self,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<(String, SystemTime), BlobError>>, BlobError> {
        if let Some(root) = &self.local_root {
            let dir = root.join("data");
            let files = tokio::task::spawn_blocking(move || local_files(&dir))
                .await
                .map_err(|e| BlobError::Backend(e.to_string()))??;
            return Ok(futures_util::stream::iter(files.into_iter().map(Ok)).boxed());
        }
        let listed = self.backend.list(Some(&ObjectPath::from("data"))).map(|meta| {
            let meta = meta?;
            let seconds = u64::try_from(meta.last_modified.timestamp()).unwrap_or(0);
            Ok((meta.location.to_string(), UNIX_EPOCH + Duration::from_secs(seconds)))
        });
        Ok(listed.boxed())
    }
}

/// The files of the local backend's `data/` folder as (`data/<name>`, modified).
fn local_files(dir: &std::path::Path) -> Result<Vec<(String, SystemTime)>, BlobError> {
    let io = |e: std::io::Error| BlobError::Backend(format!("{}: {e}", dir.display()));
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // deleted meanwhile
            Err(e) => return Err(io(e)),
        };
        let Ok(name) = entry.file_name().into_string() else { continue };
        if meta.is_file() {
            files.push((format!("data/{name}"), meta.modified().map_err(io)?));
        }
    }
    Ok(files)
}

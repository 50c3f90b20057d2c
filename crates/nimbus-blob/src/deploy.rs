//! Versioned site deploys: `nimbus site deploy DIR` and `[site] dir` at start upload the files whose
//! content changed (by SHA-256), then switch `$web` to the new set of files in ONE store commit, so
//! a visitor gets either the old site or the new one, never a mix of half of each. Every deploy is
//! kept as a snapshot (namespace `site`, `deploy/<id>`: every file's record); `rollback` commits the
//! previous snapshot back, at once, with no upload (its bytes are still there). Bytes are deleted
//! only when neither the live site nor a kept deploy refers to them.
//!
//! Each compressible file gets brotli and gzip variants (`compress.rs`) made as it is uploaded and
//! switched in the same commit, so every deploy (and a rollback to it) serves variants of its own
//! files; an unchanged file keeps the variants it has. They are not counted as files.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use nimbus_store::{Expect, StoreError, Write};
use serde::{Deserialize, Serialize};

use crate::compress::{Coding, VARIANT_OF};
use crate::{BlobError, Blobs, NS, SITE_CONTAINER, Stored};

const SITE_NS: &str = "site";
const CURRENT: &str = "current";
/// Deploys kept for rollback unless told otherwise.
pub const DEFAULT_KEEP: usize = 5;

/// One deploy as the store keeps it.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    id: u64,
    /// Unix seconds.
    created: u64,
    /// Where it came from: a folder, "[site] dir", "before the first deploy", "rollback to 3".
    source: String,
    files: BTreeMap<String, Stored>,
}

#[derive(Serialize, Deserialize)]
struct Current {
    id: u64,
}

/// A deploy as listed.
#[derive(Debug, Clone, Serialize)]
pub struct DeployInfo {
    pub id: u64,
    pub created: u64,
    pub source: String,
    pub files: usize,
    pub bytes: u64,
    pub current: bool,
}

/// What a deploy did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Deployed {
    /// None when nothing changed (no new deploy was recorded).
    pub id: Option<u64>,
    pub uploaded: usize,
    pub unchanged: usize,
    pub deleted: usize,
}

/// How a deploy reports progress.
pub enum Progress {
    /// The total bytes of the folder's files, once known.
    Total(u64),
    /// A file of this many bytes was hashed and, if it changed, uploaded.
    Done(u64),
}

/// Deploys `dir` as the site: changed files are uploaded, then `$web` switches in one commit. With
/// `prune`, objects whose file is gone are removed; without, they stay. Keeps `keep` deploys.
pub async fn deploy(
    blobs: &Blobs,
    dir: &Path,
    source: &str,
    prune: bool,
    keep: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Deployed, BlobError> {
    let files = crate::publish::files(dir)?;
    progress(Progress::Total(files.iter().map(|(_, _, size)| size).sum()));
    let (live, current) = live_site(blobs).await?;
    let in_folder: HashSet<&str> = files.iter().map(|(key, _, _)| key.as_str()).collect();
    let compress = crate::compress::enabled();
    let mut result = Deployed::default();
    let mut next: BTreeMap<String, Stored> = if prune { BTreeMap::new() } else { live.clone() };
    let mut uploaded_data = Vec::new();
    // Compressions under way, oldest first, at most one per core.
    let mut compressing = std::collections::VecDeque::new();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    for (key, path, size) in &files {
        let digest =
            crate::publish::hash(path).await.map_err(|e| BlobError::Invalid(format!("{}: {e}", path.display())))?;
        if let Some(same) = live.get(key).filter(|s| s.info.etag == digest) {
            next.insert(key.clone(), same.clone());
            result.unchanged += 1;
        } else {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| BlobError::Invalid(format!("{}: {e}", path.display())))?;
            let chunks = Box::pin(crate::file_chunks(file));
            let stored = match blobs.write(key, None, BTreeMap::new(), chunks, u64::MAX).await {
                Ok(stored) => stored,
                Err(e) => {
                    discard(blobs, &uploaded_data).await;
                    return Err(e);
                }
            };
            uploaded_data.push(stored.data.clone());
            next.insert(key.clone(), stored);
            result.uploaded += 1;
        }
        // A precompressed file of the folder stands for its coding; the others are made.
        let compressible = compress && crate::compress::compressible(key, *size);
        let wanted: Vec<Coding> = Coding::ALL
            .into_iter()
            .filter(|c| compressible && !in_folder.contains(format!("{key}{}", c.suffix()).as_str()))
            .collect();
        let missing = keep_variants(key, &digest, &wanted, &live, &mut next);
        if !missing.is_empty() {
            let data = match tokio::fs::read(path).await {
                Ok(data) => bytes::Bytes::from(data),
                Err(e) => {
                    discard(blobs, &uploaded_data).await;
                    return Err(BlobError::Invalid(format!("{}: {e}", path.display())));
                }
            };
            for coding in missing {
                let data = data.clone();
                let task = tokio::task::spawn_blocking(move || coding.encode(&data));
                compressing.push_back(Compressing {
                    key: key.clone(),
                    digest: digest.clone(),
                    coding,
                    size: *size,
                    task,
                });
            }
        }
        if let Err(e) = settle(blobs, &mut compressing, cores, &mut next, &mut uploaded_data).await {
            discard(blobs, &uploaded_data).await;
            return Err(e);
        }
        progress(Progress::Done(*size));
    }
    if let Err(e) = settle(blobs, &mut compressing, 0, &mut next, &mut uploaded_data).await {
        discard(blobs, &uploaded_data).await;
        return Err(e);
    }
    result.deleted = live.iter().filter(|(k, old)| !next.contains_key(*k) && !is_variant(old)).count();
    if site_writes(&live, &next).is_empty() {
        return Ok(result);
    }
    let replaced = replaced(&live, &next);
    match switch(blobs, &live, current, next, source).await {
        Ok(id) => result.id = Some(id),
        Err(e) => {
            discard(blobs, &uploaded_data).await;
            return Err(e);
        }
    }
    collect(blobs, keep, replaced).await?;
    Ok(result)
}

/// Keeps in `next` the variants of one file (`key`, with content `digest`) in the codings `wanted`
/// that live ones made from the same content provide; variants made for other content, or in a
/// coding no longer wanted, leave it. Answers the codings still to make.
fn keep_variants(
    key: &str,
    digest: &str,
    wanted: &[Coding],
    live: &BTreeMap<String, Stored>,
    next: &mut BTreeMap<String, Stored>,
) -> Vec<Coding> {
    let made_for = |s: &Stored| s.info.metadata.get(VARIANT_OF).cloned();
    let mut missing = Vec::new();
    for coding in Coding::ALL {
        let name = format!("{key}{}", coding.suffix());
        if next.get(&name).and_then(made_for).is_some_and(|of| of != digest || !wanted.contains(&coding)) {
            next.remove(&name);
        }
        if !wanted.contains(&coding) {
            continue;
        }
        match live.get(&name).filter(|v| made_for(v).as_deref() == Some(digest)) {
            Some(same) => {
                next.insert(name, same.clone());
            }
            None => missing.push(coding),
        }
    }
    missing
}

/// Stores the variants made, oldest first, until at most `keep` are still being made; the bytes
/// written go to `written`.
async fn settle(
    blobs: &Blobs,
    compressing: &mut std::collections::VecDeque<Compressing>,
    keep: usize,
    next: &mut BTreeMap<String, Stored>,
    written: &mut Vec<String>,
) -> Result<(), BlobError> {
    while compressing.len() > keep {
        let job = compressing.pop_front().expect("more than `keep` under way");
        written.extend(job.store(blobs, next).await?);
    }
    Ok(())
}

/// A variant being made on a blocking thread (compression takes a core: files are compressed side
/// by side while the deploy goes on hashing and uploading).
struct Compressing {
    key: String,
    digest: String,
    coding: Coding,
    size: u64,
    task: tokio::task::JoinHandle<Vec<u8>>,
}

impl Compressing {
    /// Waits for the variant and, when it saves 10 %, writes it and puts it into `next`; answers
    /// the bytes written.
    async fn store(self, blobs: &Blobs, next: &mut BTreeMap<String, Stored>) -> Result<Option<String>, BlobError> {
        let compressed = self.task.await.map_err(|e| BlobError::Backend(format!("compressing {}: {e}", self.key)))?;
        if !crate::compress::worth_keeping(self.size as usize, compressed.len()) {
            return Ok(None);
        }
        let name = format!("{}{}", self.key, self.coding.suffix());
        let metadata = BTreeMap::from([(VARIANT_OF.to_owned(), self.digest)]);
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(compressed))]);
        let stored = blobs.write(&name, None, metadata, body, u64::MAX).await?;
        let data = stored.data.clone();
        next.insert(name, stored);
        Ok(Some(data))
    }
}

/// Whether a record is a variant a deploy made (it belongs to its file, not counted as one).
fn is_variant(stored: &Stored) -> bool {
    stored.info.metadata.contains_key(VARIANT_OF)
}

/// Returns the site to the deploy before the current one; answers its id.
pub async fn rollback(blobs: &Blobs) -> Result<u64, BlobError> {
    let (live, current) = live_site(blobs).await?;
    let Some((current_id, _)) = current else {
        return Err(BlobError::Invalid("nothing to roll back: the site has no deploys yet".into()));
    };
    let earlier = snapshots(blobs).await?.into_iter().filter(|s| s.id < current_id).max_by_key(|s| s.id);
    let Some(target) = earlier else {
        return Err(BlobError::Invalid(format!("deploy {current_id} is the oldest one kept: nothing to roll back to")));
    };
    let mut writes = site_writes(&live, &target.files);
    writes.push(current_write(current, target.id));
    commit_switch(blobs, writes).await?;
    // Objects put into `$web` by the API since the deploy belong to no deploy: they go now.
    collect(blobs, usize::MAX, replaced(&live, &target.files)).await?;
    Ok(target.id)
}

/// Every kept deploy, newest first.
pub async fn list(blobs: &Blobs) -> Result<Vec<DeployInfo>, BlobError> {
    let current = current_deploy(blobs).await?.map(|(id, _)| id);
    let mut out: Vec<DeployInfo> = snapshots(blobs)
        .await?
        .into_iter()
        .map(|s| DeployInfo {
            id: s.id,
            created: s.created,
            source: s.source,
            files: s.files.values().filter(|f| !is_variant(f)).count(),
            bytes: s.files.values().filter(|f| !is_variant(f)).map(|f| f.info.size).sum(),
            current: current == Some(s.id),
        })
        .collect();
    out.sort_by_key(|d| std::cmp::Reverse(d.id));
    Ok(out)
}

/// Whether a kept deploy refers to these bytes (so replacing or deleting a `$web` object through
/// the API must leave them).
pub(crate) async fn deployed(blobs: &Blobs, data: &str) -> Result<bool, BlobError> {
    Ok(snapshots(blobs).await?.iter().any(|s| s.files.values().any(|f| f.data == data)))
}

/// The bytes every kept deploy refers to, for the orphan sweep: all of them (paged) or an error;
/// a snapshot that cannot be read is an error, not a deploy without files.
pub(crate) async fn kept_data(blobs: &Blobs) -> Result<HashSet<String>, BlobError> {
    let mut data = HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = blobs.store.list(SITE_NS, "deploy/", after.as_deref(), 100).await?;
        for record in &page {
            let snapshot: Snapshot = serde_json::from_slice(&record.value)
                .map_err(|e| BlobError::Backend(format!("unreadable deploy {}: {e}", record.key)))?;
            data.extend(snapshot.files.into_values().map(|f| f.data));
        }
        match page.last() {
            Some(last) if page.len() == 100 => after = Some(last.key.clone()),
            _ => return Ok(data),
        }
    }
}

async fn snapshots(blobs: &Blobs) -> Result<Vec<Snapshot>, BlobError> {
    Ok(blobs
        .store
        .list(SITE_NS, "deploy/", None, 10_000)
        .await?
        .into_iter()
        .filter_map(|r| serde_json::from_slice::<Snapshot>(&r.value).ok())
        .collect())
}

/// The current deploy's id, with the version of the record that says so.
async fn current_deploy(blobs: &Blobs) -> Result<Option<(u64, u64)>, BlobError> {
    let record = blobs.store.get(SITE_NS, CURRENT).await?;
    Ok(record.and_then(|r| serde_json::from_slice::<Current>(&r.value).ok().map(|c| (c.id, r.version))))
}

/// The live `$web` records, and the current deploy's id with the version of its record.
async fn live_site(blobs: &Blobs) -> Result<(BTreeMap<String, Stored>, Option<(u64, u64)>), BlobError> {
    let current = current_deploy(blobs).await?;
    let prefix = format!("{SITE_CONTAINER}/");
    let mut live = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = blobs.store.list(NS, &prefix, after.as_deref(), 1000).await?;
        let done = page.len() < 1000;
        for record in &page {
            if let Ok(stored) = serde_json::from_slice::<Stored>(&record.value) {
                live.insert(record.key[prefix.len()..].to_owned(), stored);
            }
        }
        after = page.last().map(|r| r.key.clone());
        if done {
            return Ok((live, current));
        }
    }
}

/// Records the new deploy and switches `$web` to it in one commit; a concurrent deploy (the
/// current deploy moved meanwhile) makes this one fail rather than mix the two.
async fn switch(
    blobs: &Blobs,
    live: &BTreeMap<String, Stored>,
    current: Option<(u64, u64)>,
    files: BTreeMap<String, Stored>,
    source: &str,
) -> Result<u64, BlobError> {
    let newest = blobs.store.list(SITE_NS, "deploy/", None, 10_000).await?;
    let mut id = newest.iter().filter_map(|r| r.key["deploy/".len()..].parse::<u64>().ok()).max().unwrap_or(0) + 1;
    let mut writes = Vec::new();
    if current.is_none() && !live.is_empty() {
        // The first deploy over objects put there another way: keep them as a deploy to return to.
        let before =
            Snapshot { id, created: crate::now(), source: "before the first deploy".into(), files: live.clone() };
        writes.push(snapshot_write(&before)?);
        id += 1;
    }
    writes.extend(site_writes(live, &files));
    let snapshot = Snapshot { id, created: crate::now(), source: source.to_owned(), files };
    writes.push(snapshot_write(&snapshot)?);
    writes.push(current_write(current, id));
    commit_switch(blobs, writes).await?;
    Ok(id)
}

fn snapshot_write(snapshot: &Snapshot) -> Result<Write, BlobError> {
    let value = serde_json::to_vec(snapshot).map_err(|e| BlobError::Backend(e.to_string()))?;
    Ok(Write::put(SITE_NS, &format!("deploy/{:020}", snapshot.id), value).expect(Expect::Absent))
}

fn current_write(current: Option<(u64, u64)>, id: u64) -> Write {
    let value = serde_json::to_vec(&Current { id }).expect("serializes");
    let expect = current.map_or(Expect::Absent, |(_, version)| Expect::Version(version));
    Write::put(SITE_NS, CURRENT, value).expect(expect)
}

/// The puts and deletes that turn the live `$web` records into `files`.
fn site_writes(live: &BTreeMap<String, Stored>, files: &BTreeMap<String, Stored>) -> Vec<Write> {
    let record = |key: &str| format!("{SITE_CONTAINER}/{key}");
    let mut writes = Vec::new();
    for (key, stored) in files {
        if live.get(key).is_none_or(|old| old.data != stored.data) {
            let value = serde_json::to_vec(stored).expect("object info serializes");
            writes.push(Write::put(NS, &record(key), value));
        }
    }
    for key in live.keys().filter(|k| !files.contains_key(*k)) {
        writes.push(Write::delete(NS, &record(key)));
    }
    writes
}

async fn commit_switch(blobs: &Blobs, writes: Vec<Write>) -> Result<(), BlobError> {
    match blobs.store.commit(writes).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => {
            Err(BlobError::Invalid("another deploy or rollback switched the site meanwhile; run it again".into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The bytes of live records that `files` replaces or drops.
fn replaced(live: &BTreeMap<String, Stored>, files: &BTreeMap<String, Stored>) -> Vec<String> {
    live.iter()
        .filter(|(key, old)| files.get(*key).is_none_or(|new| new.data != old.data))
        .map(|(_, old)| old.data.clone())
        .collect()
}

/// Drops deploys beyond the newest `keep` (the current one is the newest or kept anyway), then
/// deletes the bytes among `candidates` and the dropped deploys' that neither the live site nor a
/// kept deploy refers to.
async fn collect(blobs: &Blobs, keep: usize, mut candidates: Vec<String>) -> Result<(), BlobError> {
    let mut kept = snapshots(blobs).await?;
    kept.sort_by_key(|s| std::cmp::Reverse(s.id));
    let current = current_deploy(blobs).await?.map(|(id, _)| id);
    let mut dropped = kept.split_off(keep.max(1).min(kept.len()));
    if let Some(at) = dropped.iter().position(|s| current == Some(s.id)) {
        kept.push(dropped.remove(at));
    }
    if !dropped.is_empty() {
        let writes = dropped.iter().map(|s| Write::delete(SITE_NS, &format!("deploy/{:020}", s.id))).collect();
        blobs.store.commit(writes).await?;
        candidates.extend(dropped.iter().flat_map(|s| s.files.values()).map(|f| f.data.clone()));
    }
    let (live, _) = live_site(blobs).await?;
    let referenced: HashSet<&str> =
        live.values().chain(kept.iter().flat_map(|s| s.files.values())).map(|f| f.data.as_str()).collect();
    let unreferenced: BTreeSet<&String> = candidates.iter().filter(|d| !referenced.contains(d.as_str())).collect();
    for data in unreferenced {
        blobs.forget(data).await;
    }
    Ok(())
}

async fn discard(blobs: &Blobs, data: &[String]) {
    for d in data {
        blobs.forget(d).await;
    }
}

//! `[site] dir` published into `$web` at start: files whose content differs from the stored
//! object (by SHA-256) are uploaded, objects whose file is gone are deleted. The folder is the
//! source of truth while the app runs with it.

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::{BlobError, Blobs, SITE_CONTAINER};

/// What a publication changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Published {
    pub uploaded: usize,
    pub unchanged: usize,
    pub deleted: usize,
}

pub async fn publish(blobs: &Blobs, dir: &Path) -> Result<Published, BlobError> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files).map_err(|e| BlobError::Invalid(format!("[site] dir {}: {e}", dir.display())))?;
    let mut result = Published::default();
    let mut keys = BTreeSet::new();
    for (key, path) in files {
        if crate::check_key(&key).is_err() {
            tracing::warn!(file = %path.display(), "skipping a file whose name is not an object key");
            continue;
        }
        keys.insert(key.clone());
        let digest = hash(&path).await.map_err(|e| BlobError::Invalid(format!("{}: {e}", path.display())))?;
        match blobs.head(SITE_CONTAINER, &key).await {
            Ok(info) if info.etag == digest => {
                result.unchanged += 1;
                continue;
            }
            Ok(_) | Err(BlobError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let file =
            tokio::fs::File::open(&path).await.map_err(|e| BlobError::Invalid(format!("{}: {e}", path.display())))?;
        blobs.put(SITE_CONTAINER, &key, None, Default::default(), Box::pin(file_chunks(file))).await?;
        result.uploaded += 1;
    }
    let mut after: Option<String> = None;
    loop {
        let listing = blobs.list(SITE_CONTAINER, "", None, after.as_deref(), 1000).await?;
        for object in &listing.objects {
            if !keys.contains(&object.key) {
                blobs.delete(SITE_CONTAINER, &object.key).await?;
                result.deleted += 1;
            }
        }
        match listing.continuation {
            Some(next) => after = Some(next),
            None => return Ok(result),
        }
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, std::path::PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(root, &entry.path(), out)?;
        } else if kind.is_file() {
            let rel = entry.path().strip_prefix(root).expect("below the root").to_string_lossy().replace('\\', "/");
            out.push((rel, entry.path()));
        }
    }
    Ok(())
}

async fn hash(path: &Path) -> std::io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(nimbus_api::hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// A file's contents as a stream of 256 KiB chunks, for uploads.
pub fn file_chunks(file: tokio::fs::File) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

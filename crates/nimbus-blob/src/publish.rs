//! `[site] dir` published into `$web` at start, as a deploy (`deploy.rs`) that prunes: files
//! whose content differs from the stored object (by SHA-256) are uploaded, objects whose file is
//! gone are deleted, all visible at once. The folder is the source of truth while the app runs
//! with it.

use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::BlobError;
use crate::deploy::{DEFAULT_KEEP, Deployed};

/// Publishes `dir` as a deploy that prunes (the folder is the whole site); nothing is recorded when
/// nothing changed.
pub async fn publish(blobs: &crate::Blobs, dir: &Path) -> Result<Deployed, BlobError> {
    crate::deploy::deploy(blobs, dir, "[site] dir", true, DEFAULT_KEEP, &|_| {}).await
}

/// The folder's files as (object key, path, size); files whose names are not object keys are
/// skipped with a warning.
pub(crate) fn files(dir: &Path) -> Result<Vec<(String, std::path::PathBuf, u64)>, BlobError> {
    let mut found = Vec::new();
    collect(dir, dir, &mut found).map_err(|e| BlobError::Invalid(format!("{}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for (key, path) in found {
        if crate::check_key(&key).is_err() {
            tracing::warn!(file = %path.display(), "skipping a file whose name is not an object key");
            continue;
        }
        let size = std::fs::metadata(&path).map_err(|e| BlobError::Invalid(format!("{}: {e}", path.display())))?.len();
        out.push((key, path, size));
    }
    out.sort();
    Ok(out)
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

pub(crate) async fn hash(path: &Path) -> std::io::Result<String> {
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

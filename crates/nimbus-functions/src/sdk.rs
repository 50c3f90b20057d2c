//! The SDKs shipped inside the binary, written into the data dir at start so workers can import
//! them (`PYTHONPATH=<data dir>/sdk/python`, `NODE_PATH=<data dir>/sdk/node`).

use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));

pub(crate) struct SdkPaths {
    pub python: PathBuf,
    pub node: PathBuf,
}

/// Writes the SDK files that are missing or differ; atomically, so a worker never imports a half
/// written file.
pub(crate) fn install(data_dir: &Path) -> std::io::Result<SdkPaths> {
    let root = data_dir.join("sdk");
    for (rel, contents) in SDK_FILES {
        let path = root.join(rel);
        if std::fs::read(&path).is_ok_and(|existing| existing == *contents) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, contents)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(SdkPaths { python: root.join("python"), node: root.join("node") })
}

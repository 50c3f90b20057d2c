//! The SDKs shipped inside the binary, written into the data dir at start so workers can import
//! them (`PYTHONPATH=<data dir>/sdk/python`, `NODE_PATH=<data dir>/sdk/node`).

use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));

pub(crate) struct SdkPaths {
    pub python: PathBuf,
    pub node: PathBuf,
}

/// Writes the SDK files that are missing or differ; atomically, so a worker never imports a half
/// written file. With `public`, workers running as another user must read them (they hold no
/// secret: they are in the binary).
pub(crate) fn install(data_dir: &Path, public: bool) -> std::io::Result<SdkPaths> {
    use std::os::unix::fs::PermissionsExt;
    let root = data_dir.join("sdk");
    let (dir_mode, file_mode) = if public { (0o755, 0o644) } else { (0o700, 0o600) };
    for (rel, contents) in SDK_FILES {
        let path = root.join(rel);
        if !std::fs::read(&path).is_ok_and(|existing| existing == *contents) {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, contents)?;
            std::fs::rename(&tmp, &path)?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file_mode))?;
        for dir in path.ancestors().skip(1).take_while(|d| d.starts_with(&root)) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))?;
        }
    }
    Ok(SdkPaths { python: root.join("python"), node: root.join("node") })
}
